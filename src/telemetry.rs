//! Prometheus metrics: every metric name in one place, the recorder installed once per process,
//! and the text rendering `GET /metrics` serves (metrics-exporter-prometheus, no hand-written
//! exposition text).
//!
//! Why a bottom-layer module: the batcher, the core layer and http all record metrics; keeping the
//! names here (and not in `http`) lets every layer record without importing the one above it.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Requests answered, labelled by route and status.
pub const REQUESTS: &str = "sealserve_requests_total";
/// End-to-end request latency, labelled by route.
pub const REQUEST_SECONDS: &str = "sealserve_request_duration_seconds";
/// Requests being handled right now (a good autoscaling signal).
pub const IN_FLIGHT: &str = "sealserve_requests_in_flight";
/// Inputs waiting for the engine.
pub const QUEUE_DEPTH: &str = "sealserve_queue_depth";
/// Inputs per engine batch.
pub const BATCH_SIZE: &str = "sealserve_batch_size";
/// Tokens per engine batch.
pub const BATCH_TOKENS: &str = "sealserve_batch_tokens";
/// Time to tokenize one request.
pub const TOKENIZATION_SECONDS: &str = "sealserve_tokenization_seconds";
/// Time an input waited in the queue.
pub const QUEUE_SECONDS: &str = "sealserve_queue_seconds";
/// Time one engine batch took.
pub const INFERENCE_SECONDS: &str = "sealserve_inference_seconds";
/// Constant 1 with the model, revision, device and dtype as labels (set by `infer::Infer::new`).
pub const MODEL_INFO: &str = "sealserve_model_info";
/// Constant 1 set at startup, labelled `state` (`pinned`/`unpinned`) and `signature`
/// (`signed`/`dev-signed`), so an unpinned or dev-signed deployment shows up on dashboards.
pub const TRUST: &str = "sealserve_trust";

/// Text generation (`crate::generate`'s scheduler): its own names, so an embedding server's
/// dashboards and a generation server's never mix series.
pub mod generate {
    /// Histogram: seconds from submission to the first generated token.
    pub const TIME_TO_FIRST_TOKEN: &str = "sealserve_generate_time_to_first_token_seconds";
    /// Histogram: seconds between consecutive tokens of one sequence.
    pub const INTER_TOKEN_LATENCY: &str = "sealserve_generate_inter_token_latency_seconds";
    /// Counter: tokens generated.
    pub const GENERATED_TOKENS: &str = "sealserve_generate_generated_tokens_total";
    /// Counter: prompt tokens processed (prefill).
    pub const PROMPT_TOKENS: &str = "sealserve_generate_prompt_tokens_total";
    /// Gauge: tokens generated per second over the last step (all sequences).
    pub const TOKENS_PER_SECOND: &str = "sealserve_generate_tokens_per_second";
    /// Histogram: sequences in a step (batch occupancy).
    pub const BATCH_OCCUPANCY: &str = "sealserve_generate_batch_occupancy";
    /// Gauge: requests waiting for a batch slot.
    pub const QUEUE_DEPTH: &str = "sealserve_generate_queue_depth";
    /// Gauge: tokens reserved by the sequences in batch slots (prompt + `max_tokens` each),
    /// against `--max-batch-total-tokens`.
    pub const RESERVED_TOKENS: &str = "sealserve_generate_reserved_tokens";
    /// Histogram: seconds per scheduler step.
    pub const STEP_SECONDS: &str = "sealserve_generate_step_seconds";
    /// Counter: finished requests, label `reason` = stop | length | cancelled | error.
    pub const REQUESTS: &str = "sealserve_generate_requests_total";
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
const TOKEN_BUCKETS: &[f64] = &[
    16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
];

/// The process-wide recorder handle; installed on first use. Later calls (several servers in one
/// test process) share it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), SIZE_BUCKETS))
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(BATCH_TOKENS.into()), TOKEN_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(generate::BATCH_OCCUPANCY.into()),
                    SIZE_BUCKETS,
                )
            })
            .unwrap_or_else(|e| unreachable!("static, non-empty bucket lists are valid: {e}"))
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; ours then simply stays idle.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Prometheus text exposition of everything recorded so far.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}
