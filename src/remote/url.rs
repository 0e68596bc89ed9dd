//! `--model-url`: where a remote bundle lives, parsed once into a closed set of store kinds.
//!
//! Why strict: the URL ends up in logs, `/info` and error lines, so it may carry no credentials
//! (no `user:pass@`, no query string such as a pre-signed token); credentials come from the
//! environment of each store kind instead. A bundle is a folder of files, so every form names a
//! folder (a trailing `/` is implied), except OCI, where it names one artifact by digest.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A remote bundle's location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelUrl {
    /// `s3://bucket/prefix/`: the objects directly under the prefix.
    S3 { bucket: String, prefix: String },
    /// `oci://registry/repository@sha256:<64 hex>`: one OCI artifact, one layer per file.
    /// `oci+http://` talks plain HTTP to the registry (a registry on loopback, say).
    Oci {
        plain_http: bool,
        registry: String,
        repository: String,
        digest: String,
    },
    /// `https://host/prefix/` (or `http://`): the files as `<base><name>`.
    Http { base: String },
    /// `file:///dir/`: the regular files directly in a local folder.
    File { dir: PathBuf },
}

/// A `--model-url` (or `seal publish`/`seal verify` URL) that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--model-url {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

const FORMS: &str =
    "expected s3://bucket/prefix/, oci://registry/repo@sha256:<digest>, https://host/prefix/ or file:///dir/";

impl FromStr for ModelUrl {
    type Err = UrlError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| UrlError {
            url: value.to_string(),
            reason,
        };
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(error(format!("empty; {FORMS}")));
        }
        let (scheme, rest) = trimmed
            .split_once("://")
            .ok_or_else(|| error(format!("no scheme; {FORMS}")))?;
        if rest.contains(['?', '#']) {
            return Err(error(
                "a query string or fragment is not allowed (no pre-signed URLs: credentials come from the environment)".into(),
            ));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') && scheme != "oci" && scheme != "oci+http" {
            return Err(error(
                "credentials in the URL are not allowed (they would be logged); use the store's environment variables".into(),
            ));
        }
        match scheme.to_ascii_lowercase().as_str() {
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() || authority.contains('@') {
                    return Err(error("no bucket name after s3://".into()));
                }
                Ok(ModelUrl::S3 {
                    bucket: bucket.to_string(),
                    prefix: folder(prefix),
                })
            }
            "oci" | "oci+http" => parse_oci(rest, scheme == "oci+http").map_err(error),
            "https" | "http" => {
                if authority.is_empty() {
                    return Err(error("no host".into()));
                }
                let base = if trimmed.ends_with('/') {
                    trimmed.to_string()
                } else {
                    format!("{trimmed}/")
                };
                Ok(ModelUrl::Http { base })
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err(error(
                        "a file URL needs an absolute path: file:///dir/".into(),
                    ));
                }
                Ok(ModelUrl::File {
                    dir: PathBuf::from(rest),
                })
            }
            other => Err(error(format!("unknown scheme {other:?}; {FORMS}"))),
        }
    }
}

/// A key prefix that names a folder: empty (bucket root) or ending in exactly one `/`.
fn folder(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

fn parse_oci(rest: &str, plain_http: bool) -> Result<ModelUrl, String> {
    let (registry, path) = rest
        .split_once('/')
        .ok_or("expected oci://registry/repository@sha256:<digest>")?;
    if registry.is_empty() || registry.contains('@') {
        return Err("no registry host (credentials go in the docker config, not the URL)".into());
    }
    let (repository, digest) = path.split_once('@').ok_or(
        "an OCI bundle is pulled by digest only (tags move): oci://registry/repo@sha256:<digest>, as `seal publish` prints it",
    )?;
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| crate::manifest::is_lower_hex(h, 64))
        .ok_or("the digest must be sha256:<64 lowercase hex>")?;
    if repository.is_empty()
        || !repository
            .split('/')
            .all(|part| !part.is_empty() && part.bytes().all(is_repository_byte))
    {
        return Err(format!(
            "repository {repository:?} is not a valid OCI repository name (lowercase letters, digits, '.', '_', '-', '/')"
        ));
    }
    Ok(ModelUrl::Oci {
        plain_http,
        registry: registry.to_string(),
        repository: repository.to_string(),
        digest: format!("sha256:{hex}"),
    })
}

fn is_repository_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
}

impl ModelUrl {
    /// Where one file of the bundle lives, for messages.
    pub fn object(&self, name: &str) -> String {
        match self {
            ModelUrl::Oci { .. } => format!("{self} layer {name}"),
            _ => format!("{self}{name}"),
        }
    }

    /// The scheme as operators write it.
    pub fn scheme(&self) -> &'static str {
        match self {
            ModelUrl::S3 { .. } => "s3",
            ModelUrl::Oci {
                plain_http: false, ..
            } => "oci",
            ModelUrl::Oci {
                plain_http: true, ..
            } => "oci+http",
            ModelUrl::Http { base } if base.starts_with("http://") => "http",
            ModelUrl::Http { .. } => "https",
            ModelUrl::File { .. } => "file",
        }
    }
}

impl fmt::Display for ModelUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            ModelUrl::Oci {
                registry,
                repository,
                digest,
                ..
            } => write!(f, "{}://{registry}/{repository}@{digest}", self.scheme()),
            ModelUrl::Http { base } => f.write_str(base),
            ModelUrl::File { dir } => {
                let dir = dir.display().to_string();
                let slash = if dir.ends_with('/') { "" } else { "/" };
                write!(f, "file://{dir}{slash}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ModelUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_form_parses_and_prints_back_as_a_folder() {
        assert_eq!(
            parse("s3://models/minilm"),
            ModelUrl::S3 {
                bucket: "models".into(),
                prefix: "minilm/".into()
            }
        );
        assert_eq!(parse("s3://models//a/b//").to_string(), "s3://models/a/b/");
        assert_eq!(parse("s3://models").to_string(), "s3://models/");
        let digest = format!("sha256:{}", "ab".repeat(32));
        let oci = parse(&format!("oci://127.0.0.1:5000/team/minilm@{digest}"));
        assert_eq!(
            oci,
            ModelUrl::Oci {
                plain_http: false,
                registry: "127.0.0.1:5000".into(),
                repository: "team/minilm".into(),
                digest: digest.clone()
            }
        );
        assert_eq!(
            parse(&format!("oci+http://localhost/m@{digest}")).scheme(),
            "oci+http"
        );
        assert_eq!(
            parse("https://host:8443/b/minilm").to_string(),
            "https://host:8443/b/minilm/"
        );
        assert_eq!(
            parse("file:///srv/bundle").object("MANIFEST"),
            "file:///srv/bundle/MANIFEST"
        );
    }

    #[test]
    fn credentials_tags_and_unknown_schemes_are_refused_with_the_reason() {
        for (url, reason) in [
            ("", "empty"),
            ("models/minilm", "no scheme"),
            ("ftp://host/x/", "unknown scheme"),
            ("https://user:pw@host/x/", "credentials"),
            ("https://host/x/?X-Amz-Signature=1", "query string"),
            ("s3:///prefix/", "no bucket"),
            ("oci://registry/repo:latest", "by digest only"),
            ("oci://registry/repo@sha256:abc", "64 lowercase hex"),
            (
                "oci://registry/Repo@sha256:{d}",
                "not a valid OCI repository",
            ),
            ("file://relative/dir", "absolute path"),
        ] {
            let url = url.replace("{d}", &"ab".repeat(32));
            let err = url.parse::<ModelUrl>().unwrap_err().to_string();
            assert!(err.contains(reason), "{url}: {err}");
        }
    }
}
