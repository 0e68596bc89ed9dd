//! Registry credentials for OCI bundles, from where container tools keep them, so a node or a
//! pod that can `podman pull` / `docker pull` can also fetch a bundle:
//!
//! 1. `SEALSERVE_REGISTRY_USERNAME` + `SEALSERVE_REGISTRY_PASSWORD` (e.g. from a Secret or a CML
//!    environment), both or neither;
//! 2. the first auth file that has an entry for the registry: `REGISTRY_AUTH_FILE` (podman,
//!    skopeo, buildah), `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG/config.json`
//!    (a mounted `kubernetes.io/dockerconfigjson` Secret: set `DOCKER_CONFIG` to its folder), or
//!    `~/.docker/config.json`;
//! 3. anonymous.
//!
//! Credential helpers (`credsStore`) are not run: a server should not execute programs to log in.
//! The password is never logged.

use super::error::RemoteError;
use base64::Engine as _;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;

/// How to log in to a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic {
        username: String,
        password: String,
        /// Where they came from, for the log.
        origin: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic {
                username, origin, ..
            } => write!(f, "Basic({username} from {origin})"),
        }
    }
}

impl Credentials {
    /// Where the credentials came from, for the startup log.
    pub fn describe(&self) -> String {
        match self {
            Credentials::Anonymous => "anonymous".into(),
            Credentials::Basic {
                username, origin, ..
            } => format!("user {username} from {origin}"),
        }
    }
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The credentials for `registry` (`host[:port]`) from an environment.
pub fn for_registry(
    registry: &str,
    env: &HashMap<String, String>,
) -> Result<Credentials, RemoteError> {
    let get = |key: &str| env.get(key).filter(|v| !v.is_empty()).cloned();
    match (
        get("SEALSERVE_REGISTRY_USERNAME"),
        get("SEALSERVE_REGISTRY_PASSWORD"),
    ) {
        (Some(username), Some(password)) => {
            return Ok(Credentials::Basic {
                username,
                password,
                origin: "SEALSERVE_REGISTRY_USERNAME/SEALSERVE_REGISTRY_PASSWORD".into(),
            })
        }
        (None, None) => {}
        _ => {
            return Err(RemoteError::Config(
                "set both SEALSERVE_REGISTRY_USERNAME and SEALSERVE_REGISTRY_PASSWORD, or neither"
                    .into(),
            ))
        }
    }
    for path in auth_files(env) {
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(RemoteError::Config(format!(
                    "registry auth file {}: {e}",
                    path.display()
                )))
            }
        };
        let file: AuthFile = serde_json::from_slice(&text).map_err(|e| {
            RemoteError::Config(format!(
                "registry auth file {} is not a docker/containers auth file: {e}",
                path.display()
            ))
        })?;
        let entry = file.auths.iter().find(|(key, _)| host_of(key) == registry);
        if let Some((_, entry)) = entry {
            let origin = path.display().to_string();
            return decode(entry, &origin).map(|(username, password)| Credentials::Basic {
                username,
                password,
                origin,
            });
        }
    }
    Ok(Credentials::Anonymous)
}

/// Auth file keys are `host[:port]`, sometimes written as a URL (`https://host/v1/`).
fn host_of(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn decode(entry: &AuthEntry, origin: &str) -> Result<(String, String), RemoteError> {
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok((user.clone(), password.clone()));
    }
    let bad = || {
        RemoteError::Config(format!(
            "{origin}: the registry entry has no usable \"auth\" (base64 of user:password); credential helpers are not run"
        ))
    };
    let auth = entry.auth.as_deref().ok_or_else(bad)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (user, password) = text.split_once(':').ok_or_else(bad)?;
    Ok((user.to_string(), password.to_string()))
}

pub(crate) fn auth_files(env: &HashMap<String, String>) -> Vec<PathBuf> {
    let get = |key: &str| env.get(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut files = Vec::new();
    files.extend(get("REGISTRY_AUTH_FILE"));
    files.extend(get("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    match get("DOCKER_CONFIG") {
        Some(dir) => files.push(dir.join("config.json")),
        None => files.extend(get("HOME").map(|h| h.join(".docker/config.json"))),
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, String)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn credentials_come_from_env_then_auth_files_then_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker");
        std::fs::create_dir(&docker).unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        std::fs::write(
            docker.join("config.json"),
            format!(
                r#"{{"auths": {{"https://registry.example:5000/v1/": {{"auth": "{auth}"}}}}}}"#
            ),
        )
        .unwrap();
        let docker_dir = docker.display().to_string();
        let found = for_registry(
            "registry.example:5000",
            &env(&[("DOCKER_CONFIG", docker_dir.clone())]),
        )
        .unwrap();
        assert_eq!(
            found,
            Credentials::Basic {
                username: "bob".into(),
                password: "s3cret".into(),
                origin: docker.join("config.json").display().to_string()
            }
        );
        assert!(!format!("{found:?}").contains("s3cret"));
        assert_eq!(
            for_registry("other:5000", &env(&[("DOCKER_CONFIG", docker_dir.clone())])).unwrap(),
            Credentials::Anonymous
        );
        let explicit = for_registry(
            "registry.example:5000",
            &env(&[
                ("DOCKER_CONFIG", docker_dir),
                ("SEALSERVE_REGISTRY_USERNAME", "ci".into()),
                ("SEALSERVE_REGISTRY_PASSWORD", "pw".into()),
            ]),
        )
        .unwrap();
        assert!(matches!(explicit, Credentials::Basic { ref username, .. } if username == "ci"));
        let half = for_registry("r", &env(&[("SEALSERVE_REGISTRY_USERNAME", "ci".into())]));
        assert!(half.is_err());
    }
}
