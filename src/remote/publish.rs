//! `seal publish`: uploads a bundle folder's files to S3 or pushes them as an OCI artifact, and
//! says which `--model-url` serves them. The folder is verified first by `seal` (the same checks
//! `serve` makes), so nothing is published that `serve` would refuse.

use super::error::{FetchError, RemoteError};
use super::s3::S3Store;
use super::tls::Roots;
use super::url::ModelUrl;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// Longest silence from the store while publishing.
const PUBLISH_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Where `seal publish` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// `s3://bucket/prefix/`: one object per file under the prefix.
    S3 { bucket: String, prefix: String },
    /// `oci://registry/repo[:tag]`: an artifact, pulled afterwards by the digest printed.
    Oci {
        plain_http: bool,
        registry: String,
        repository: String,
        tag: Option<String>,
    },
}

impl std::str::FromStr for Destination {
    type Err = RemoteError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        let oci = value
            .strip_prefix("oci://")
            .map(|rest| (false, rest))
            .or_else(|| value.strip_prefix("oci+http://").map(|rest| (true, rest)));
        if let Some((plain_http, rest)) = oci {
            let (registry, path) = rest.split_once('/').ok_or_else(|| {
                RemoteError::Config(format!("{value}: expected oci://registry/repository[:tag]"))
            })?;
            let (repository, tag) = match path.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
                _ => (path, None),
            };
            // Reuse the pull-URL rules for the registry and repository names.
            let probe = format!("oci://{registry}/{repository}@sha256:{}", "0".repeat(64));
            probe.parse::<ModelUrl>()?;
            if tag
                .as_deref()
                .is_some_and(|t| t.is_empty() || t.contains('@'))
            {
                return Err(RemoteError::Config(format!(
                    "{value}: a tag is letters, digits, '.', '_', '-'; the digest is what `seal publish` prints"
                )));
            }
            return Ok(Destination::Oci {
                plain_http,
                registry: registry.to_string(),
                repository: repository.to_string(),
                tag,
            });
        }
        match value.parse::<ModelUrl>()? {
            ModelUrl::S3 { bucket, prefix } => Ok(Destination::S3 { bucket, prefix }),
            other => Err(RemoteError::Config(format!(
                "seal publish writes to s3://bucket/prefix/ or oci://registry/repo[:tag], not {}://; to serve a bundle over HTTPS or from a volume, copy the folder there",
                other.scheme()
            ))),
        }
    }
}

/// Publishes `files` (name, local path) and returns the `--model-url` that serves them.
pub async fn publish(
    files: &[(String, PathBuf)],
    destination: &Destination,
    ca_file: Option<&std::path::Path>,
) -> Result<String, RemoteError> {
    let roots = Roots::load(ca_file)?;
    match destination {
        Destination::S3 { bucket, prefix } => {
            let store = S3Store::new(bucket, prefix, roots.http_client(PUBLISH_READ_TIMEOUT)?)?;
            // A folder with objects of another bundle in it would be refused by serve (extra
            // files): refuse to mix, and delete nothing.
            let ours: BTreeSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
            let existing = store.list().await?;
            if let Some(other) = existing.keys().find(|n| !ours.contains(n.as_str())) {
                return Err(RemoteError::Config(format!(
                    "s3://{bucket}/{prefix} already holds {other}, which is not part of this bundle; publish each bundle to a prefix of its own"
                )));
            }
            for (name, path) in files {
                store.put(name, path).await?;
                tracing::info!(object = %format!("s3://{bucket}/{prefix}{name}"), "uploaded");
            }
            Ok(format!("s3://{bucket}/{prefix}"))
        }
        Destination::Oci {
            plain_http,
            registry,
            repository,
            tag,
        } => {
            let client = super::oci::client(*plain_http, &roots, PUBLISH_READ_TIMEOUT)?;
            let (auth, credentials) = super::oci::auth(registry)?;
            tracing::info!(registry = %registry, login = %credentials.describe(), "pushing to OCI registry");
            let digest =
                super::oci::push(&client, &auth, registry, repository, tag.as_deref(), files)
                    .await
                    .map_err(|e: FetchError| RemoteError::Fetch(e))?;
            let scheme = if *plain_http { "oci+http" } else { "oci" };
            Ok(format!("{scheme}://{registry}/{repository}@{digest}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_with_or_without_a_tag() {
        assert_eq!(
            "oci://127.0.0.1:5000/team/minilm:v1"
                .parse::<Destination>()
                .unwrap(),
            Destination::Oci {
                plain_http: false,
                registry: "127.0.0.1:5000".into(),
                repository: "team/minilm".into(),
                tag: Some("v1".into())
            }
        );
        assert!(matches!(
            "oci+http://localhost:5000/minilm"
                .parse::<Destination>()
                .unwrap(),
            Destination::Oci {
                plain_http: true,
                tag: None,
                ..
            }
        ));
        assert_eq!(
            "s3://b/p".parse::<Destination>().unwrap(),
            Destination::S3 {
                bucket: "b".into(),
                prefix: "p/".into()
            }
        );
        let err = "https://host/x/".parse::<Destination>().unwrap_err();
        assert!(err.to_string().contains("not https://"), "{err}");
    }
}
