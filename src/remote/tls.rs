//! TLS for remote stores: rustls with ring (no OpenSSL, nothing dynamically linked), and one set
//! of trust roots shared by the S3, HTTPS and OCI clients.
//!
//! Roots: Mozilla's bundle compiled into the binary (so a `FROM scratch` image with no
//! /etc/ssl still reaches public stores) plus whatever the system store holds (SSL_CERT_FILE /
//! SSL_CERT_DIR or the distribution's bundle, so a CA installed on the host works too). With
//! `--ca-file`, only the CAs in that file are trusted, as `curl --cacert` does: an air-gapped
//! cluster's private CA, and nothing else.

use super::error::RemoteError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::time::Duration;

/// Seconds to wait for a TCP connection (and TLS handshake) before retrying.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificates TLS connections to stores are checked against.
#[derive(Clone, Debug)]
pub struct Roots {
    pub certs: Vec<CertificateDer<'static>>,
    /// Where they came from, for the startup log.
    pub origin: String,
}

impl Roots {
    /// The roots for `--ca-file` when given, else the built-in and system roots.
    pub fn load(ca_file: Option<&Path>) -> Result<Self, RemoteError> {
        install_crypto_provider();
        match ca_file {
            Some(path) => {
                let config_error = |reason: String| {
                    RemoteError::Config(format!("--ca-file {}: {reason}", path.display()))
                };
                let bytes = std::fs::read(path).map_err(|e| config_error(e.to_string()))?;
                let certs = CertificateDer::pem_slice_iter(&bytes)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| config_error(format!("not a PEM certificate file ({e})")))?;
                if certs.is_empty() {
                    return Err(config_error(
                        "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
                    ));
                }
                Ok(Self {
                    origin: format!("{} ({} CA certificates)", path.display(), certs.len()),
                    certs,
                })
            }
            None => {
                let mut certs: Vec<CertificateDer<'static>> =
                    webpki_root_certs::TLS_SERVER_ROOT_CERTS.to_vec();
                let builtin = certs.len();
                let system = rustls_native_certs::load_native_certs().certs;
                let system_count = system.len();
                certs.extend(system);
                Ok(Self {
                    certs,
                    origin: format!(
                        "built-in Mozilla roots ({builtin}) + system store ({system_count})"
                    ),
                })
            }
        }
    }

    /// A rustls client configuration trusting these roots. Certificates that do not parse as CA
    /// certificates (some system bundles carry a few) are skipped, as every TLS client does.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, RemoteError> {
        let mut store = rustls::RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(self.certs.iter().cloned());
        if added == 0 {
            return Err(RemoteError::Config(format!(
                "no usable CA certificate in {}",
                self.origin
            )));
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(store)
            .with_no_client_auth();
        // HTTP/1.1 only: parallel range requests then get connections of their own instead of
        // sharing one HTTP/2 connection's flow-control window.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The HTTP client every store uses (object_store and plain HTTPS directly; oci-client builds
    /// its own from the same roots). `read_timeout`: the longest silence while reading an answer
    /// before the request counts as timed out (and is retried).
    pub fn http_client(&self, read_timeout: Duration) -> Result<reqwest::Client, RemoteError> {
        reqwest::Client::builder()
            .use_preconfigured_tls(self.client_config()?)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(read_timeout)
            .http1_only()
            .user_agent(concat!("sealserve/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RemoteError::Config(format!("cannot build the HTTP client: {e}")))
    }
}

/// rustls needs one process-wide crypto provider; we use ring's (reqwest's own default would
/// be aws-lc-rs, a C library). Idempotent.
pub fn install_crypto_provider() {
    // Err only means one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_roots_include_the_built_in_bundle_and_build_a_client() {
        let roots = Roots::load(None).unwrap();
        assert!(
            roots.certs.len() >= webpki_root_certs::TLS_SERVER_ROOT_CERTS.len(),
            "{}",
            roots.origin
        );
        roots.http_client(Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn a_ca_file_without_certificates_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = Roots::load(Some(&path)).unwrap_err();
        assert!(matches!(err, RemoteError::Config(_)), "{err}");
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
        let missing = Roots::load(Some(&dir.path().join("absent.pem"))).unwrap_err();
        assert!(missing.to_string().contains("absent.pem"), "{missing}");
    }
}
