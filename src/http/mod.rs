//! The HTTP service (axum): routes of the TEI, OpenAI and CML families plus health, readiness,
//! info, metrics and OpenAPI; auth, body limit, one log line and metrics per request; graceful
//! shutdown. Does no inference itself: every model route calls the core layer
//! ([`crate::infer::Infer`]) and maps its errors to a status and a family's body (`error`).

pub mod auth;
pub mod connections;
pub mod error;
pub mod generate;
pub mod openai_completions;
pub mod openapi;
pub mod routes;
pub mod types;

use crate::harden::HardenReport;
use crate::infer::Infer;
use crate::telemetry;
pub use auth::{bearer_token, key_matches, unauthorized};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::{ApiError, ApiFamily, ErrorKind};
pub use openapi::openapi_document;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
pub use types::SignatureKind;

/// Provenance of the running model, shown by /info.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BundleInfo {
    pub manifest_sha256: String,
    pub key_fingerprint: String,
    pub key_id: String,
    pub signature: SignatureKind,
    pub trusted_keys_pinned: bool,
    /// How the signing key was accepted: `pinned`, or `unpinned` under `--allow-unpinned`.
    #[schema(value_type = String, example = "pinned")]
    pub trust: crate::bundle::TrustState,
    /// Where the bundle came from and what loading it cost (time, throughput).
    pub load: crate::remote::LoadReport,
}

/// Everything handlers share.
pub struct AppState {
    /// The core layer: validation, admission, tokenization, batching, post-processing.
    pub infer: Infer,
    pub bundle: BundleInfo,
    /// The hardening in force.
    pub hardening: HardenReport,
    pub api_key: Option<String>,
    /// True once serving, false again when shutting down.
    pub ready: Arc<AtomicBool>,
}

/// All routes with their middleware.
pub fn router(state: Arc<AppState>) -> Router {
    telemetry::handle();
    let protected = Router::new()
        .route("/", post(routes::root))
        .route("/embed", post(routes::embed))
        .route("/embed_all", post(routes::embed_all))
        .route("/embed_sparse", post(routes::embed_sparse))
        .route("/predict", post(routes::predict))
        .route("/rerank", post(routes::rerank))
        .route("/similarity", post(routes::similarity))
        .route("/v1/embeddings", post(routes::openai_embeddings))
        .route("/v1/chat/completions", post(routes::generation_only))
        .route("/v1/completions", post(routes::generation_only))
        .route("/generate", post(routes::generation_only))
        .route("/generate_stream", post(routes::generation_only))
        .route("/v1/models", get(routes::openai_models))
        // Model ids contain '/', so the id is the rest of the path.
        .route("/v1/models/{*id}", get(routes::openai_model_by_id))
        .route("/tokenize", post(routes::tokenize))
        .route("/decode", post(routes::decode))
        .route("/info", get(routes::info))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(routes::openapi))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/model", post(routes::cml_model))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(
            state.infer.limits().payload_limit.get(),
        ))
        .layer(middleware::from_fn(observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

pub(crate) async fn not_found(request: Request) -> ApiError {
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
    metrics::counter!(telemetry::REQUESTS, "route" => route.clone(), "status" => status.as_u16().to_string()).increment(1);
    metrics::histogram!(telemetry::REQUEST_SECONDS, "route" => route.clone())
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
        metrics::gauge!(telemetry::IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::IN_FLIGHT).decrement(1.0);
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
    serve_app(listener, router(state), ready, grace, limits).await
}

/// [`serve`] for any router (the generation router, `generate::generation_router`): `ready`
/// turns true once serving and false again at shutdown.
pub async fn serve_app(
    listener: TcpListener,
    app: Router,
    ready: Arc<AtomicBool>,
    grace: Duration,
    limits: connections::ConnectionLimits,
) -> std::io::Result<()> {
    let stopping = Arc::new(tokio::sync::Notify::new());
    let stop_signal = stopping.clone();
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
