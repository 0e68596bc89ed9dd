//! `oci://registry/repo@sha256:…`: a bundle stored as an OCI artifact in any registry that
//! speaks the OCI distribution API (distribution/`docker-registry`, Harbor, Quay, Nexus, Zot,
//! ECR, GHCR...), the way ORAS and KServe model artifacts are carried.
//!
//! Layout (documented in README): an OCI image manifest with `artifactType`
//! [`ARTIFACT_TYPE`], the empty config (`application/vnd.oci.empty.v1+json`, `{}`), and one
//! layer per bundle file (MANIFEST, signatures, public keys, payload), each of media type
//! [`LAYER_MEDIA_TYPE`] with its file name in the `org.opencontainers.image.title` annotation
//! (so `oras pull` writes the same folder). A layer's digest is the sha256 of the file, the same
//! value MANIFEST records for it, so the registry's content addressing and the signed MANIFEST
//! agree. The artifact is pulled by the digest of its manifest, which is checked here as well.

use super::error::{error_chain, FetchError, FetchErrorKind, RemoteError};
use super::registry_auth::{self, Credentials};
use super::store::{ByteStream, Listed};
use super::tls::{Roots, CONNECT_TIMEOUT};
use super::url::ModelUrl;
use crate::manifest::{is_plain_file_name, sha256_hex};
use futures_util::StreamExt;
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol,
};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::collections::BTreeMap;
use std::ops::Range;

/// `artifactType` of a sealserve bundle.
pub const ARTIFACT_TYPE: &str = "application/vnd.sealserve.bundle.v1";
/// Media type of every layer (one bundle file, stored as is).
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.sealserve.bundle.file.v1";
/// The annotation holding a layer's file name (the ORAS convention).
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// The OCI "empty" config descriptor's media type, data and digest.
pub const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_CONFIG: &[u8] = b"{}";

/// A bundle artifact in a registry, its manifest read and checked.
pub struct OciStore {
    client: Client,
    reference: Reference,
    url: String,
    layers: BTreeMap<String, OciDescriptor>,
}

impl std::fmt::Debug for OciStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciStore")
            .field("url", &self.url)
            .field("layers", &self.layers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// An oci-client configured with our trust roots and timeouts.
pub fn client(
    plain_http: bool,
    roots: &Roots,
    read_timeout: std::time::Duration,
) -> Result<Client, RemoteError> {
    // oci-client builds a `reqwest::Client::default()` inside every client it makes (and then
    // replaces it with ours), and reqwest's default client panics when the system CA store is
    // empty or unreadable, as in a FROM-scratch image: refuse with what to do instead.
    if rustls_native_certs::load_native_certs().certs.is_empty() {
        return Err(RemoteError::Config(
            "oci:// needs a readable system CA store even with --ca-file (the OCI client library \
             builds a default HTTPS client with it): mount a CA bundle (e.g. Debian's \
             /etc/ssl/certs/ca-certificates.crt from a ConfigMap) and point SSL_CERT_FILE at it"
                .into(),
        ));
    }
    let config = ClientConfig {
        protocol: if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        tls_certs_only: roots
            .certs
            .iter()
            .map(|cert| Certificate {
                encoding: CertificateEncoding::Der,
                data: cert.as_ref().to_vec(),
            })
            .collect(),
        read_timeout: Some(read_timeout),
        connect_timeout: Some(CONNECT_TIMEOUT),
        user_agent: concat!("sealserve/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    Client::try_from(config)
        .map_err(|e| RemoteError::Config(format!("cannot build the OCI client: {e}")))
}

/// The login for a registry, as oci-client takes it.
pub fn auth(registry: &str) -> Result<(RegistryAuth, Credentials), RemoteError> {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let credentials = registry_auth::for_registry(registry, &env)?;
    let auth = match &credentials {
        Credentials::Anonymous => RegistryAuth::Anonymous,
        Credentials::Basic {
            username, password, ..
        } => RegistryAuth::Basic(username.clone(), password.clone()),
    };
    Ok((auth, credentials))
}

impl OciStore {
    /// Reads the artifact's manifest by digest (retrying transient failures), checks that its
    /// bytes hash to that digest, and that it is a sealserve bundle: one titled layer per file.
    pub async fn open(
        url: &ModelUrl,
        roots: &Roots,
        read_timeout: std::time::Duration,
    ) -> Result<Self, RemoteError> {
        let ModelUrl::Oci {
            plain_http,
            registry,
            repository,
            digest,
        } = url
        else {
            return Err(RemoteError::Config(format!("{url} is not an OCI URL")));
        };
        let client = client(*plain_http, roots, read_timeout)?;
        let (auth, credentials) = auth(registry)?;
        tracing::info!(registry = %registry, login = %credentials.describe(), "OCI registry");
        let reference =
            Reference::with_digest(registry.clone(), repository.clone(), digest.clone());
        let what = url.to_string();
        let policy = super::download::RetryPolicy::default();
        let (raw, _) = super::download::with_retries(&policy, &what, || async {
            client
                .pull_manifest_raw(&reference, &auth, &[OCI_IMAGE_MEDIA_TYPE])
                .await
                .map_err(|e| classify(&what, &e))
        })
        .await?;
        let actual = format!("sha256:{}", sha256_hex(&raw));
        if &actual != digest {
            return Err(FetchError::new(
                FetchErrorKind::Permanent,
                &what,
                format!("the registry answered with a manifest whose digest is {actual}"),
            )
            .into());
        }
        let layers = layers_of(&raw).map_err(|reason| {
            RemoteError::Refused(crate::bundle::VerifyError::Malformed(format!(
                "{what} is not a sealserve bundle artifact: {reason}"
            )))
        })?;
        Ok(Self {
            client,
            reference,
            url: what,
            layers,
        })
    }

    /// The files the artifact carries, with the digests its layers are addressed by.
    pub fn list(&self) -> BTreeMap<String, Listed> {
        self.layers
            .iter()
            .map(|(name, layer)| {
                (
                    name.clone(),
                    Listed {
                        size: u64::try_from(layer.size).unwrap_or_default(),
                        digest: layer.digest.strip_prefix("sha256:").map(str::to_string),
                    },
                )
            })
            .collect()
    }

    fn what(&self, name: &str) -> String {
        format!("{} layer {name}", self.url)
    }

    /// A whole small layer, `None` when the artifact has no such file.
    pub async fn read_small(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchError> {
        let Some(layer) = self.layers.get(name) else {
            return Ok(None);
        };
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if size > limit {
            return Err(FetchError::new(
                FetchErrorKind::Permanent,
                self.what(name),
                format!("larger than the {limit} bytes a signing file may have"),
            ));
        }
        if size == 0 {
            return Ok(Some(Vec::new()));
        }
        let mut out = Vec::with_capacity(size as usize);
        let mut stream = self.stream(name, 0..size).await?;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
            if out.len() as u64 > size {
                break;
            }
        }
        Ok(Some(out))
    }

    /// The bytes of `range` of a layer's blob.
    pub async fn stream(&self, name: &str, range: Range<u64>) -> Result<ByteStream, FetchError> {
        let what = self.what(name);
        let layer = self.layers.get(name).ok_or_else(|| {
            FetchError::new(
                FetchErrorKind::NotFound,
                &what,
                "the artifact has no such layer",
            )
        })?;
        let response = self
            .client
            .pull_blob_stream_partial(
                &self.reference,
                layer,
                range.start,
                Some(range.end - range.start),
            )
            .await
            .map_err(|e| classify(&what, &e))?;
        let (stream, whole_object) = match response {
            BlobResponse::Full(stream) => (stream, true),
            BlobResponse::Partial(stream) => (stream, false),
        };
        let error_what = what.clone();
        let stream = stream
            .map(move |chunk| chunk.map_err(|e| classify_body(&error_what, &e)))
            .boxed();
        Ok(if whole_object {
            super::store::window(stream, range.start, range.end - range.start)
        } else {
            stream
        })
    }
}

/// The file name → layer map of a bundle artifact's manifest.
fn layers_of(raw: &[u8]) -> Result<BTreeMap<String, OciDescriptor>, String> {
    let manifest: OciImageManifest =
        serde_json::from_slice(raw).map_err(|e| format!("manifest does not parse ({e})"))?;
    if manifest.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        return Err(format!(
            "artifactType is {:?}, expected {ARTIFACT_TYPE:?}",
            manifest.artifact_type
        ));
    }
    let mut layers = BTreeMap::new();
    for layer in manifest.layers {
        let name = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(TITLE_ANNOTATION))
            .cloned()
            .ok_or_else(|| format!("layer {} has no {TITLE_ANNOTATION}", layer.digest))?;
        if !is_plain_file_name(&name) {
            return Err(format!("layer title {name:?} is not a plain file name"));
        }
        if layer.media_type != LAYER_MEDIA_TYPE {
            return Err(format!(
                "layer {name} has media type {}, expected {LAYER_MEDIA_TYPE}",
                layer.media_type
            ));
        }
        if layer.size < 0 || layer.urls.is_some() {
            return Err(format!("layer {name} has a negative size or external URLs"));
        }
        if layers.insert(name.clone(), layer).is_some() {
            return Err(format!("two layers are titled {name}"));
        }
    }
    Ok(layers)
}

/// The manifest `seal publish` pushes for files `(name, sha256 hex, size)`: deterministic bytes
/// (keys sorted, layers in name order), so publishing the same bundle twice gives one digest.
pub fn manifest_bytes(files: &[(String, String, u64)]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = files
        .iter()
        .map(|(name, sha256, size)| {
            serde_json::json!({
                "mediaType": LAYER_MEDIA_TYPE,
                "digest": format!("sha256:{sha256}"),
                "size": size,
                "annotations": {TITLE_ANNOTATION: name},
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": EMPTY_CONFIG_MEDIA_TYPE,
            "digest": format!("sha256:{}", sha256_hex(EMPTY_CONFIG)),
            "size": EMPTY_CONFIG.len(),
        },
        "layers": layers,
    });
    serde_json::to_vec(&manifest).unwrap_or_default()
}

/// Pushes a bundle folder's files as an artifact to `registry/repository` and returns the
/// manifest digest it is pulled by. Blobs already in the repository are not uploaded again.
pub async fn push(
    client: &Client,
    auth: &RegistryAuth,
    registry: &str,
    repository: &str,
    tag: Option<&str>,
    files: &[(String, std::path::PathBuf)],
) -> Result<String, FetchError> {
    let what = format!("{registry}/{repository}");
    let by_tag = Reference::with_tag(
        registry.to_string(),
        repository.to_string(),
        tag.unwrap_or("latest").to_string(),
    );
    client
        .auth(&by_tag, auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| classify(&what, &e))?;
    let mut described = Vec::new();
    let blobs = files
        .iter()
        .map(|(name, path)| (Some(name.as_str()), path.as_path()));
    let config = std::iter::once((None, std::path::Path::new("")));
    for (name, path) in config.chain(blobs) {
        let data = match name {
            Some(_) => std::fs::read(path).map_err(|e| {
                FetchError::new(
                    FetchErrorKind::Permanent,
                    path.display().to_string(),
                    e.to_string(),
                )
            })?,
            None => EMPTY_CONFIG.to_vec(),
        };
        let digest = format!("sha256:{}", sha256_hex(&data));
        let exists = client
            .blob_exists(&by_tag, &digest)
            .await
            .map_err(|e| classify(&what, &e))?;
        if !exists {
            client
                .push_blob(&by_tag, data.clone(), &digest)
                .await
                .map_err(|e| classify(&format!("{what} blob {digest}"), &e))?;
        }
        if let Some(name) = name {
            described.push((name.to_string(), sha256_hex(&data), data.len() as u64));
        }
    }
    described.sort();
    let manifest = manifest_bytes(&described);
    let digest = format!("sha256:{}", sha256_hex(&manifest));
    let target = match tag {
        Some(_) => by_tag.clone(),
        None => {
            Reference::with_digest(registry.to_string(), repository.to_string(), digest.clone())
        }
    };
    client
        .push_manifest_raw(
            &target,
            manifest,
            reqwest::header::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
        )
        .await
        .map_err(|e| classify(&format!("{what} manifest"), &e))?;
    Ok(digest)
}

/// A failure while a blob's body streams in: a cut connection is worth retrying.
fn classify_body(what: &str, error: &std::io::Error) -> FetchError {
    let reqwest_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<reqwest::Error>());
    match reqwest_error {
        Some(e) => FetchError::from_reqwest(what, e),
        None => FetchError::new(FetchErrorKind::Transient, what, error_chain(error)),
    }
}

/// oci-client's failures by kind.
fn classify(what: &str, error: &OciDistributionError) -> FetchError {
    let kind = match error {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => FetchErrorKind::Denied,
        OciDistributionError::ImageManifestNotFoundError(_) => FetchErrorKind::NotFound,
        OciDistributionError::ServerError { code, .. } => FetchErrorKind::of_status(*code),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::BlobUnknown
                        | OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                FetchErrorKind::NotFound
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Denied | OciErrorCode::Unauthorized))
            {
                FetchErrorKind::Denied
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                FetchErrorKind::Transient
            } else {
                FetchErrorKind::Permanent
            }
        }
        OciDistributionError::RequestError(e) => FetchError::from_reqwest(what, e).kind,
        _ => FetchErrorKind::Permanent,
    };
    FetchError::new(kind, what, error_chain(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_manifests_are_deterministic_and_read_back_as_the_same_files() {
        let files = vec![
            ("MANIFEST".to_string(), "ab".repeat(32), 120),
            ("model.safetensors".to_string(), "cd".repeat(32), 1 << 20),
        ];
        let bytes = manifest_bytes(&files);
        assert_eq!(bytes, manifest_bytes(&files));
        let layers = layers_of(&bytes).unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(
            layers["model.safetensors"].digest,
            format!("sha256:{}", "cd".repeat(32))
        );
        assert_eq!(layers["MANIFEST"].size, 120);
    }

    #[test]
    fn artifacts_that_are_not_bundles_are_refused_with_the_reason() {
        let good = String::from_utf8(manifest_bytes(&[("a".into(), "ab".repeat(32), 1)])).unwrap();
        for (bad, reason) in [
            (good.replace(ARTIFACT_TYPE, "application/x"), "artifactType"),
            (
                good.replace(TITLE_ANNOTATION, "other"),
                "has no org.opencontainers.image.title",
            ),
            (
                good.replace(LAYER_MEDIA_TYPE, "application/x"),
                "media type",
            ),
            (good.replace("\"a\"", "\"../a\""), "plain file name"),
        ] {
            let err = layers_of(bad.as_bytes()).unwrap_err();
            assert!(err.contains(reason), "{err}");
        }
        let twice = manifest_bytes(&[
            ("a".into(), "ab".repeat(32), 1),
            ("a".into(), "cd".repeat(32), 1),
        ]);
        assert!(layers_of(&twice).unwrap_err().contains("two layers"));
    }
}
