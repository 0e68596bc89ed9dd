//! `s3://bucket/prefix/`: S3 and S3-compatible stores (the Apache Ozone S3 gateway, MinIO, Ceph
//! RGW, AWS) through object_store's S3 client, which signs every request with SigV4 and retries
//! transient failures (including bodies cut short) with backoff by itself.
//!
//! Configuration is the standard AWS environment, read by object_store: `AWS_ENDPOINT_URL`
//! (path-style addressing unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`), `AWS_REGION` /
//! `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`,
//! web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, as EKS and OpenShift inject),
//! container credentials, and instance metadata last. Added here: static keys, region and
//! `endpoint_url` from an AWS profile (`AWS_PROFILE`, `~/.aws/credentials` and `~/.aws/config`,
//! or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`) when the environment has none, and
//! `AWS_EC2_METADATA_DISABLED=true` honoured as the AWS SDKs do (no instance-metadata lookup).

use super::error::{chain_has_tls_error, error_chain, FetchError, FetchErrorKind, RemoteError};
use super::store::{ByteStream, Listed};
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig,
};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

/// Attempts object_store makes for one request before giving up.
const MAX_RETRIES: usize = 5;

/// A bundle folder in a bucket.
#[derive(Debug)]
pub struct S3Store {
    store: AmazonS3,
    bucket: String,
    prefix: String,
}

/// Hands object_store the HTTP client built from our trust roots (rustls + ring, `--ca-file`).
#[derive(Debug)]
struct Connector(reqwest::Client);

impl object_store::client::HttpConnector for Connector {
    fn connect(
        &self,
        _options: &ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        Ok(object_store::client::HttpClient::new(self.0.clone()))
    }
}

impl S3Store {
    /// The store configured from the process environment.
    pub fn new(bucket: &str, prefix: &str, client: reqwest::Client) -> Result<Self, RemoteError> {
        Self::with_env(bucket, prefix, client, &env_map())
    }

    /// The store configured from `env` instead of the process environment.
    pub fn with_env(
        bucket: &str,
        prefix: &str,
        client: reqwest::Client,
        env: &HashMap<String, String>,
    ) -> Result<Self, RemoteError> {
        let store = builder(bucket, env, client)?
            .build()
            .map_err(|e| RemoteError::Config(format!("S3 client for bucket {bucket}: {e}")))?;
        Ok(Self {
            store,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    fn path(&self, name: &str) -> StorePath {
        StorePath::from(format!("{}{name}", self.prefix))
    }

    fn url(&self, name: &str) -> String {
        format!("s3://{}/{}{name}", self.bucket, self.prefix)
    }

    /// The objects directly under the prefix (not those in deeper "folders").
    pub async fn list(&self) -> Result<BTreeMap<String, Listed>, FetchError> {
        let prefix = self.prefix.trim_end_matches('/');
        let prefix = (!prefix.is_empty()).then(|| StorePath::from(prefix));
        let listing = self
            .store
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(|e| classify(self.url(""), &e))?;
        Ok(listing
            .objects
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_string();
                Some((
                    name,
                    Listed {
                        size: meta.size,
                        digest: None,
                    },
                ))
            })
            .collect())
    }

    /// A whole small object, `None` when absent.
    pub async fn read_small(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchError> {
        let result = match self
            .store
            .get_opts(&self.path(name), GetOptions::default())
            .await
        {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(classify(self.url(name), &e)),
        };
        if result.meta.size > limit {
            return Err(FetchError::new(
                FetchErrorKind::Permanent,
                self.url(name),
                format!("larger than the {limit} bytes a signing file may have"),
            ));
        }
        let bytes = result
            .bytes()
            .await
            .map_err(|e| classify(self.url(name), &e))?;
        Ok(Some(bytes.to_vec()))
    }

    /// The bytes of `range` of an object.
    pub async fn stream(&self, name: &str, range: Range<u64>) -> Result<ByteStream, FetchError> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let url = self.url(name);
        let result = self
            .store
            .get_opts(&self.path(name), options)
            .await
            .map_err(|e| classify(url.clone(), &e))?;
        Ok(result
            .into_stream()
            .map(move |chunk| chunk.map_err(|e| classify(url.clone(), &e)))
            .boxed())
    }

    /// Uploads one object (`seal publish`): a single PUT for small files, a multipart upload
    /// in 16 MiB parts for large ones, so a multi-GB model needs no single huge request.
    pub async fn put(&self, name: &str, path: &std::path::Path) -> Result<(), FetchError> {
        const SINGLE_PUT_LIMIT: u64 = 64 << 20;
        const PART: usize = 16 << 20;
        let url = self.url(name);
        let io_error = |e: std::io::Error| {
            FetchError::new(
                FetchErrorKind::Permanent,
                path.display().to_string(),
                e.to_string(),
            )
        };
        let size = std::fs::metadata(path).map_err(io_error)?.len();
        if size <= SINGLE_PUT_LIMIT {
            let bytes = std::fs::read(path).map_err(io_error)?;
            self.store
                .put(&self.path(name), bytes.into())
                .await
                .map_err(|e| classify(url, &e))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(&self.path(name))
            .await
            .map_err(|e| classify(url.clone(), &e))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
        let mut file = std::fs::File::open(path).map_err(io_error)?;
        let mut buf = vec![0u8; PART];
        loop {
            let read = std::io::Read::read(&mut file, &mut buf).map_err(io_error)?;
            if read == 0 {
                break;
            }
            writer
                .wait_for_capacity(4)
                .await
                .map_err(|e| classify(url.clone(), &e))?;
            writer.write(&buf[..read]);
        }
        writer.finish().await.map_err(|e| classify(url, &e))?;
        Ok(())
    }
}

/// object_store's failures by kind. Its client has already retried whatever was worth it.
fn classify(what: String, error: &object_store::Error) -> FetchError {
    let kind = match error {
        object_store::Error::NotFound { .. } => FetchErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => FetchErrorKind::Denied,
        other if chain_has_tls_error(other) => FetchErrorKind::Tls,
        other if is_timeout(other) => FetchErrorKind::Timeout,
        other => {
            status_in_chain(other).map_or(FetchErrorKind::Permanent, FetchErrorKind::of_status)
        }
    };
    FetchError::new(kind, what, error_chain(error))
}

/// The HTTP status of a failed request that object_store reports as `Generic` (a listing, for
/// one): its retry error is not public, so the status is read from the message it always
/// carries, "... status code: 403 Forbidden ..." (tests/remote_refusals.rs holds it to that).
fn status_in_chain(error: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if let Some(at) = text.find("status code: ") {
            let digits = text.get(at + 13..at + 16)?;
            if let Ok(status) = digits.parse::<u16>() {
                return Some(status);
            }
        }
        current = e.source();
    }
    None
}

fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.downcast_ref::<object_store::client::HttpError>()
            .is_some_and(|h| h.kind() == object_store::client::HttpErrorKind::Timeout)
        {
            return true;
        }
        current = e.source();
    }
    false
}

fn env_map() -> HashMap<String, String> {
    std::env::vars().collect()
}

/// The S3 client configuration for `bucket` from an environment (a map, so tests need not touch
/// the process environment).
fn builder(
    bucket: &str,
    env: &HashMap<String, String>,
    client: reqwest::Client,
) -> Result<AmazonS3Builder, RemoteError> {
    let get = |key: &str| env.get(key).filter(|v| !v.trim().is_empty()).cloned();
    let mut builder = AmazonS3Builder::new();
    // Blank values count as unset (CML and Helm charts set optional variables to ""), so an
    // empty key never becomes a credential that signs every request wrongly.
    for (key, value) in env {
        if key.starts_with("AWS_") && !value.trim().is_empty() {
            if let Ok(config_key) = key.to_ascii_lowercase().parse() {
                builder = builder.with_config(config_key, value.clone());
            }
        }
    }
    let has_keys = get("AWS_ACCESS_KEY_ID").is_some();
    let has_other_source = [
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|k| get(k).is_some());
    let skip_signature = get("AWS_SKIP_SIGNATURE").is_some_and(|v| is_true(&v));
    let profile = Profile::load(env)?;
    if !has_keys && !has_other_source {
        if let Some(profile) = &profile {
            if let (Some(id), Some(secret)) = (
                profile.get("aws_access_key_id"),
                profile.get("aws_secret_access_key"),
            ) {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                if let Some(token) = profile.get("aws_session_token") {
                    builder = builder.with_token(token);
                }
            }
        }
    }
    let region = get("AWS_REGION")
        .or_else(|| get("AWS_DEFAULT_REGION"))
        .or_else(|| profile.as_ref().and_then(|p| p.get("region")));
    if let Some(region) = region {
        builder = builder.with_region(region);
    }
    let endpoint = get("AWS_ENDPOINT_URL")
        .or_else(|| get("AWS_ENDPOINT"))
        .or_else(|| profile.as_ref().and_then(|p| p.get("endpoint_url")));
    if let Some(endpoint) = &endpoint {
        builder = builder.with_endpoint(endpoint);
        // Naming a plain-HTTP endpoint is the choice; object_store would refuse it otherwise.
        if endpoint.starts_with("http://") {
            builder = builder.with_allow_http(true);
        }
    }
    let metadata_disabled = get("AWS_EC2_METADATA_DISABLED").is_some_and(|v| is_true(&v));
    let has_profile_keys = profile
        .as_ref()
        .is_some_and(|p| p.get("aws_access_key_id").is_some());
    if metadata_disabled && !has_keys && !has_other_source && !skip_signature && !has_profile_keys {
        return Err(RemoteError::Config(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN (AWS_EC2_METADATA_DISABLED rules out instance metadata); AWS_SKIP_SIGNATURE=true for a public bucket".into(),
        ));
    }
    Ok(builder
        .with_bucket_name(bucket)
        .with_http_connector(Connector(client))
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: MAX_RETRIES,
            retry_timeout: Duration::from_secs(180),
        }))
}

fn is_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes"
    )
}

/// The settings of one AWS profile, from the shared credentials file and the config file.
#[derive(Debug, Default)]
struct Profile {
    values: HashMap<String, String>,
}

impl Profile {
    fn get(&self, key: &str) -> Option<String> {
        self.values.get(key).cloned()
    }

    /// The profile `AWS_PROFILE` names (else `default`); `None` when neither file has it. A file
    /// that exists but cannot be read is an error: silently ignoring it would pick other
    /// credentials than the operator meant.
    fn load(env: &HashMap<String, String>) -> Result<Option<Self>, RemoteError> {
        let name = env
            .get("AWS_PROFILE")
            .filter(|v| !v.trim().is_empty())
            .cloned()
            .unwrap_or_else(|| "default".into());
        let home = env.get("HOME").map(PathBuf::from);
        let path = |var: &str, default: &str| {
            env.get(var)
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
        };
        let mut found = false;
        let mut profile = Profile::default();
        // In the config file, profiles other than default are headed `[profile NAME]`.
        let config_section = if name == "default" {
            name.clone()
        } else {
            format!("profile {name}")
        };
        for (file, section) in [
            (path("AWS_CONFIG_FILE", "config"), config_section.as_str()),
            (
                path("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
                name.as_str(),
            ),
        ] {
            let Some(file) = file else { continue };
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(RemoteError::Config(format!(
                        "AWS profile file {}: {e}",
                        file.display()
                    )))
                }
            };
            if let Some(values) = ini_section(&text, section) {
                found = true;
                // Credentials file entries win over config file entries, as in the AWS CLI.
                profile.values.extend(values);
            }
        }
        if !found && env.contains_key("AWS_PROFILE") {
            return Err(RemoteError::Config(format!(
                "AWS_PROFILE={name}: no such profile in the AWS config or credentials file"
            )));
        }
        Ok(found.then_some(profile))
    }
}

/// `key = value` pairs of one `[section]` of an INI file (keys lowercased).
fn ini_section(text: &str, wanted: &str) -> Option<HashMap<String, String>> {
    let mut current: Option<String> = None;
    let mut values: Option<HashMap<String, String>> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(section.trim().to_string());
            if current.as_deref() == Some(wanted) {
                values.get_or_insert_with(HashMap::new);
            }
            continue;
        }
        if current.as_deref() != Some(wanted) {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            values
                .get_or_insert_with(HashMap::new)
                .insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::aws::AmazonS3ConfigKey;

    fn client() -> reqwest::Client {
        super::super::tls::Roots::load(None)
            .unwrap()
            .http_client(Duration::from_secs(5))
            .unwrap()
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn profiles_supply_keys_region_and_endpoint_when_the_environment_has_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("credentials"),
            "[default]\naws_access_key_id = DEFAULTKEY\naws_secret_access_key = s\n\n[ozone]\naws_access_key_id = OZONEKEY\naws_secret_access_key = ozone-secret\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("config"),
            "[profile ozone]\nregion = eu-west-3\nendpoint_url = http://ozone-s3g:9878\n",
        )
        .unwrap();
        let home = dir.path().display().to_string();
        let credentials = dir.path().join("credentials").display().to_string();
        let config = dir.path().join("config").display().to_string();
        let files = [
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.as_str()),
            ("AWS_CONFIG_FILE", config.as_str()),
            ("HOME", home.as_str()),
        ];
        let mut vars = env(&files);
        vars.insert("AWS_PROFILE".into(), "ozone".into());
        let b = builder("models", &vars, client()).unwrap();
        assert_eq!(
            b.get_config_value(&AmazonS3ConfigKey::AccessKeyId)
                .as_deref(),
            Some("OZONEKEY")
        );
        assert_eq!(
            b.get_config_value(&AmazonS3ConfigKey::Region).as_deref(),
            Some("eu-west-3")
        );
        assert_eq!(
            b.get_config_value(&AmazonS3ConfigKey::Endpoint).as_deref(),
            Some("http://ozone-s3g:9878")
        );

        // Keys in the environment win over any profile.
        vars.insert("AWS_ACCESS_KEY_ID".into(), "ENVKEY".into());
        vars.insert("AWS_SECRET_ACCESS_KEY".into(), "env-secret".into());
        let b = builder("models", &vars, client()).unwrap();
        assert_eq!(
            b.get_config_value(&AmazonS3ConfigKey::AccessKeyId)
                .as_deref(),
            Some("ENVKEY")
        );

        vars.insert("AWS_PROFILE".into(), "absent".into());
        let err = builder("models", &vars, client()).unwrap_err();
        assert!(err.to_string().contains("AWS_PROFILE=absent"), "{err}");
    }

    #[test]
    fn no_credentials_with_instance_metadata_disabled_is_a_clear_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().display().to_string();
        let vars = env(&[("HOME", &home), ("AWS_EC2_METADATA_DISABLED", "true")]);
        let err = builder("models", &vars, client()).unwrap_err();
        assert!(err.to_string().starts_with("no AWS credentials"), "{err}");
        let public = env(&[
            ("HOME", &home),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_SKIP_SIGNATURE", "true"),
        ]);
        builder("models", &public, client()).unwrap();
    }
}
