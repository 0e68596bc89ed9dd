//! API-key authentication: the Bearer check every protected route runs, and the helpers `/model`
//! uses to accept CML's `accessKey` in the body instead.

use super::error::{ApiError, ApiFamily, ErrorKind};
use super::AppState;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// True when no API key is configured, or `presented` equals it (constant-time comparison).
pub fn key_matches(expected: Option<&str>, presented: Option<&str>) -> bool {
    match expected {
        None => true,
        Some(expected) => {
            presented.is_some_and(|token| bool::from(token.as_bytes().ct_eq(expected.as_bytes())))
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // RFC 7235: the auth scheme is case-insensitive.
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// The 401 every family answers with.
pub fn unauthorized(family: ApiFamily) -> ApiError {
    ApiError::new(
        family,
        ErrorKind::Unauthorized,
        "missing or invalid API key: send `Authorization: Bearer <key>`",
    )
}

/// Requires the Bearer token on every route it wraps. (`/model` checks in its handler, because CML
/// clients may send the key as `accessKey` in the body instead.)
pub async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if key_matches(state.api_key.as_deref(), bearer_token(request.headers())) {
        next.run(request).await
    } else {
        unauthorized(ApiFamily::for_path(request.uri().path())).into_response()
    }
}
