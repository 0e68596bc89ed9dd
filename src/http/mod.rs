//! The HTTP service (axum): routes of the TEI, OpenAI and CML families plus health, readiness,
//! info, metrics and OpenAPI; auth, body limit, one log line and metrics per request; graceful
//! shutdown. Does no inference itself: embeddings go through the [`Batcher`].

pub mod connections;
pub mod embed;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod types;

use crate::batcher::Batcher;
use crate::engine::{ModelInfo, TextTokenizer};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::{ApiError, ApiFamily, ErrorKind};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use utoipa::OpenApi;

/// Request-size and batching limits clients can hit.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Limits {
    pub max_client_batch_size: usize,
    pub payload_limit: usize,
    pub max_batch_tokens: usize,
    pub max_batch_size: usize,
    pub max_concurrent_requests: usize,
}

/// Provenance of the running model, shown by /info.
#[derive(Clone, Debug, Serialize)]
pub struct BundleInfo {
    pub manifest_sha256: String,
    pub key_fingerprint: String,
    pub key_id: String,
    /// "signed" or "dev-signed".
    pub signature: &'static str,
    pub trusted_keys_pinned: bool,
}

/// Everything handlers share.
pub struct AppState {
    pub batcher: Batcher,
    pub tokenizer: Arc<TextTokenizer>,
    pub model: Arc<ModelInfo>,
    pub limits: Limits,
    pub bundle: BundleInfo,
    /// The hardening report (what is in force), as JSON.
    pub hardening: serde_json::Value,
    pub api_key: Option<String>,
    /// True once serving, false again when shutting down.
    pub ready: Arc<AtomicBool>,
}

impl AppState {
    /// The /info document.
    pub fn info_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model_id": self.model.model_id,
            "revision": self.model.revision,
            "family": self.model.family,
            "pooling": self.model.pooling,
            "normalize": self.model.normalize,
            "dimensions": self.model.dimensions,
            "max_input_tokens": self.model.max_input_tokens,
            "manifest_sha256": self.bundle.manifest_sha256,
            "key_fingerprint": self.bundle.key_fingerprint,
            "key_id": self.bundle.key_id,
            "signature": self.bundle.signature,
            "trusted_keys_pinned": self.bundle.trusted_keys_pinned,
            "device": self.model.device,
            "device_reason": self.model.device_reason,
            "dtype": self.model.dtype,
            "max_forward_tokens": self.model.max_forward_tokens,
            "limits": self.limits,
            "auth": if self.api_key.is_some() { "bearer" } else { "none" },
            "hardening": self.hardening,
            "version": env!("CARGO_PKG_VERSION"),
        })
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sealserve",
        description = "Embeddings from a signed, embedded model: TEI-, OpenAI- and CML-compatible."
    ),
    paths(
        routes::embed,
        routes::openai_embeddings,
        routes::cml_model,
        routes::tokenize,
        routes::health,
        routes::ready,
        routes::info,
        routes::metrics
    ),
    components(schemas(
        types::Input,
        types::EmbedRequest,
        types::OpenAiEmbeddingsRequest,
        types::OpenAiEmbeddingsResponse,
        types::OpenAiEmbedding,
        types::OpenAiUsage,
        types::TokenizeRequest,
        types::CmlModelRequest,
        types::CmlModelResponse,
        types::CmlEmbeddings,
        types::ErrorBody,
        crate::engine::TokenInfo
    ))
)]
struct ApiDoc;

/// The OpenAPI 3 document served at /openapi.json.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// All routes with their middleware.
pub fn router(state: Arc<AppState>) -> Router {
    metrics::handle();
    let protected = Router::new()
        .route("/embed", post(routes::embed))
        .route("/v1/embeddings", post(routes::openai_embeddings))
        .route("/tokenize", post(routes::tokenize))
        .route("/info", get(routes::info))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(routes::openapi))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/model", post(routes::cml_model))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.limits.payload_limit))
        .layer(middleware::from_fn(observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

async fn not_found(request: Request) -> ApiError {
    let path = request.uri().path().to_string();
    ApiError::new(
        ApiFamily::for_path(&path),
        ErrorKind::NotFound,
        format!("no route {path}"),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    let path = request.uri().path().to_string();
    ApiError::new(
        ApiFamily::for_path(&path),
        ErrorKind::MethodNotAllowed,
        format!("{} is not allowed on {path}", request.method()),
    )
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(ApiFamily::Tei, ErrorKind::Internal, "internal error").into_response()
}

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
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
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
async fn require_api_key(
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

/// One log line and the request metrics per request; never logs bodies.
async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let request_bytes = content_length(request.headers());
    let _in_flight = InFlight::enter();
    let response = next.run(request).await;
    let status = response.status();
    let elapsed = started.elapsed();
    ::metrics::counter!(metrics::REQUESTS, "route" => route.clone(), "status" => status.as_u16().to_string()).increment(1);
    ::metrics::histogram!(metrics::REQUEST_SECONDS, "route" => route.clone())
        .record(elapsed.as_secs_f64());
    tracing::info!(
        target: "sealserve::request",
        method = %method,
        route = %route,
        status = status.as_u16(),
        request_bytes,
        response_bytes = response_length(&response),
        millis = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// Counts a request in `sealserve_requests_in_flight` until dropped (also when the client goes
/// away mid-request and the handler future is dropped).
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        ::metrics::gauge!(metrics::IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        ::metrics::gauge!(metrics::IN_FLIGHT).decrement(1.0);
    }
}

/// Body size of a response: exact for the buffered bodies every route returns.
fn response_length(response: &Response) -> u64 {
    use axum::body::HttpBody as _;
    response
        .body()
        .size_hint()
        .exact()
        .unwrap_or_else(|| content_length(response.headers()))
}

fn content_length(headers: &axum::http::HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Serves until SIGTERM/SIGINT, then stops accepting, lets in-flight requests finish for at most
/// `grace`, and returns.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    grace: Duration,
    limits: connections::ConnectionLimits,
) -> std::io::Result<()> {
    let ready = state.ready.clone();
    let stopping = Arc::new(tokio::sync::Notify::new());
    let stop_signal = stopping.clone();
    let app = router(state);
    ready.store(true, Ordering::Release);
    let server = connections::serve(listener, app, limits, async move {
        shutdown_signal().await;
        ready.store(false, Ordering::Release);
        tracing::info!("shutdown requested: no new connections; finishing in-flight requests");
        stop_signal.notify_one();
    });
    let server = std::pin::pin!(async {
        server.await;
        Ok(())
    });
    let deadline = async {
        stopping.notified().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result,
        _ = deadline => {
            tracing::warn!(grace_seconds = grace.as_secs(), "shutdown grace expired with requests still in flight");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
}
