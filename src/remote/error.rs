//! Why fetching a remote bundle failed, sorted into the few kinds an operator acts on: retry
//! (transient), fix credentials (denied), fix the URL (not found), fix trust roots (TLS), fix the
//! network (timeout). Every store's client errors are classified here, so each failure is one
//! line naming the object and what to do, whatever the store.

use crate::bundle::VerifyError;
use crate::exit::Exit;
use std::fmt;

/// What kind of failure a fetch hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchErrorKind {
    /// 404/410: the object is not there.
    NotFound,
    /// 401/403: credentials missing, wrong, or not allowed to read.
    Denied,
    /// No answer (connect or read) in time.
    Timeout,
    /// The TLS handshake failed (unknown issuer, wrong name, expired...).
    Tls,
    /// Worth retrying: 5xx, 408, 429, connection refused or reset, a body cut short.
    Transient,
    /// Anything else (400, a malformed answer): retrying would not help.
    Permanent,
}

impl FetchErrorKind {
    /// True for failures a retry may cure.
    pub fn is_retryable(self) -> bool {
        matches!(self, FetchErrorKind::Transient | FetchErrorKind::Timeout)
    }

    /// The kind an HTTP status means.
    pub fn of_status(status: u16) -> Self {
        match status {
            404 | 410 => FetchErrorKind::NotFound,
            401 | 403 => FetchErrorKind::Denied,
            408 | 429 | 500..=599 => FetchErrorKind::Transient,
            _ => FetchErrorKind::Permanent,
        }
    }

    /// What the operator should check, appended to the error line.
    fn advice(self) -> &'static str {
        match self {
            FetchErrorKind::NotFound => {
                "is --model-url the folder (or artifact) `seal publish` wrote?"
            }
            FetchErrorKind::Denied => {
                "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or web identity for S3; the docker config or SEALSERVE_REGISTRY_USERNAME/SEALSERVE_REGISTRY_PASSWORD for OCI) and what they may read"
            }
            FetchErrorKind::Timeout => "check the network path (and egress policy) to the store",
            FetchErrorKind::Tls => {
                "if the store's certificate comes from a private CA, pass that CA with --ca-file"
            }
            FetchErrorKind::Transient => "the store kept failing; try again later",
            FetchErrorKind::Permanent => "",
        }
    }
}

impl fmt::Display for FetchErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FetchErrorKind::NotFound => "not found",
            FetchErrorKind::Denied => "access denied",
            FetchErrorKind::Timeout => "timed out",
            FetchErrorKind::Tls => "TLS error",
            FetchErrorKind::Transient => "failed",
            FetchErrorKind::Permanent => "failed",
        })
    }
}

/// One failed request (after any retries), as one line.
#[derive(Debug, thiserror::Error)]
pub struct FetchError {
    pub kind: FetchErrorKind,
    /// The object (URL) the request was for.
    pub what: String,
    /// The client's or server's own words.
    pub detail: String,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.what, self.kind, self.detail)?;
        match self.kind.advice() {
            "" => Ok(()),
            advice => write!(f, "; {advice}"),
        }
    }
}

impl FetchError {
    pub fn new(kind: FetchErrorKind, what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind,
            what: what.into(),
            detail: one_line(&detail.into()),
        }
    }

    /// From an HTTP status and the start of the response body.
    pub fn status(what: impl Into<String>, status: u16, body: &str) -> Self {
        let reason = http_reason(status);
        let body = body.trim();
        let detail = if body.is_empty() {
            format!("HTTP {status} {reason}")
        } else {
            format!(
                "HTTP {status} {reason}: {}",
                body.chars().take(300).collect::<String>()
            )
        };
        Self::new(FetchErrorKind::of_status(status), what, detail)
    }

    /// From a reqwest error (HTTPS stores, and what object_store and oci-client report).
    pub fn from_reqwest(what: impl Into<String>, error: &reqwest::Error) -> Self {
        let kind = if chain_has_tls_error(error) {
            FetchErrorKind::Tls
        } else if error.is_timeout() {
            FetchErrorKind::Timeout
        } else if let Some(status) = error.status() {
            FetchErrorKind::of_status(status.as_u16())
        } else if error.is_connect()
            || error.is_request()
            || error.is_body()
            || body_cut_short(error)
        {
            FetchErrorKind::Transient
        } else {
            FetchErrorKind::Permanent
        };
        Self::new(kind, what, error_chain(error))
    }
}

/// True for a body that ended before its length (the connection closed or was reset mid-body),
/// which reqwest reports as a decode error: worth retrying, from where it stopped.
fn body_cut_short(error: &reqwest::Error) -> bool {
    error.is_decode()
        && visit_chain(error, &mut |e| {
            e.downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_incomplete_message() || h.is_body_write_aborted())
                || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                    )
                })
        })
}

/// Every message in an error's source chain, joined, each said once. `io::Error` hides its inner
/// error from `source()`, so it is looked into explicitly.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    visit_chain(error, &mut |e| {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        false
    });
    one_line(&parts.join(": "))
}

/// True when a TLS failure (rustls) is somewhere in the chain.
pub fn chain_has_tls_error(error: &(dyn std::error::Error + 'static)) -> bool {
    visit_chain(error, &mut |e| e.downcast_ref::<rustls::Error>().is_some())
}

fn visit_chain(
    error: &(dyn std::error::Error + 'static),
    found: &mut dyn FnMut(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if found(e) {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if visit_chain(inner, found) {
                return true;
            }
        }
        current = e.source();
    }
    false
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn http_reason(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// Why `remote::fetch` gave up.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The URL or a setting (CA file, credentials source) is unusable: exit 2.
    #[error("{0}")]
    Config(String),
    /// The store could not be read: [`Exit::Fetch`].
    #[error("cannot fetch the bundle: {0}")]
    Fetch(#[from] FetchError),
    /// The bundle was read and refused, with the same reasons and codes as an embedded one.
    #[error(transparent)]
    Refused(#[from] VerifyError),
    /// Memory for the files could not be had.
    #[error("cannot allocate memory for the bundle: {0}")]
    Memory(std::io::Error),
}

impl From<super::url::UrlError> for RemoteError {
    fn from(e: super::url::UrlError) -> Self {
        RemoteError::Config(e.to_string())
    }
}

impl RemoteError {
    /// The process exit code: refusals keep the embedded bundle's codes.
    pub fn exit_code(&self) -> u8 {
        Exit::from(self).code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_sort_into_the_kinds_operators_act_on() {
        for (status, kind) in [
            (404, FetchErrorKind::NotFound),
            (403, FetchErrorKind::Denied),
            (401, FetchErrorKind::Denied),
            (500, FetchErrorKind::Transient),
            (503, FetchErrorKind::Transient),
            (429, FetchErrorKind::Transient),
            (400, FetchErrorKind::Permanent),
        ] {
            assert_eq!(FetchErrorKind::of_status(status), kind, "{status}");
        }
        let denied = FetchError::status(
            "s3://b/p/MANIFEST",
            403,
            "<Error><Code>AccessDenied</Code>\n</Error>",
        );
        let line = denied.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with(
                "s3://b/p/MANIFEST: access denied (HTTP 403 Forbidden: <Error><Code>AccessDenied"
            ),
            "{line}"
        );
        assert!(line.contains("AWS_ACCESS_KEY_ID"), "{line}");
    }

    #[test]
    fn io_errors_are_looked_into() {
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(chain_has_tls_error(&tls));
        assert!(
            error_chain(&tls).contains("UnknownIssuer"),
            "{}",
            error_chain(&tls)
        );
        let plain = std::io::Error::other("connection reset");
        assert!(!chain_has_tls_error(&plain));
    }
}
