//! The limits clients can hit, in one struct: the batcher enforces the batching ones, the core
//! layer the per-request ones, http the body size, and `/info` shows them all. Filled once from
//! the flags (`ServeArgs::limits`).
//!
//! Why non-zero types: a zero limit would refuse every request or stall the queue; clap refuses
//! `0` when the flags are parsed, so no later check is needed.

use serde::Serialize;
use std::num::NonZeroUsize;

/// Request-size, batching and concurrency limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Limits {
    /// Most inputs one request may carry (422 beyond).
    #[schema(value_type = usize, minimum = 1)]
    pub max_client_batch_size: NonZeroUsize,
    /// Largest request body in bytes (413 beyond).
    #[schema(value_type = usize, minimum = 1)]
    pub payload_limit: NonZeroUsize,
    /// Most tokens (sum over inputs) in one engine batch.
    #[schema(value_type = usize, minimum = 1)]
    pub max_batch_tokens: NonZeroUsize,
    /// Most inputs in one engine batch.
    #[schema(value_type = usize, minimum = 1)]
    pub max_batch_size: NonZeroUsize,
    /// Requests in flight before new ones get 429 at once.
    #[schema(value_type = usize, minimum = 1)]
    pub max_concurrent_requests: NonZeroUsize,
}

impl Limits {
    /// The flags' defaults (`serve --help` shows these).
    pub const DEFAULT: Limits = Limits {
        max_client_batch_size: non_zero(64),
        payload_limit: non_zero(2 * 1024 * 1024),
        max_batch_tokens: non_zero(16384),
        max_batch_size: non_zero(256),
        max_concurrent_requests: non_zero(512),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A non-zero constant, checked at compile time.
const fn non_zero(value: usize) -> NonZeroUsize {
    match NonZeroUsize::new(value) {
        Some(value) => value,
        None => panic!("limits are non-zero"),
    }
}
