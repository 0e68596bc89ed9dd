//! The accept loop and per-connection limits, so that slow or silent clients cannot hold the
//! server's connections (and file descriptors) forever (issue 12, "slowloris").
//!
//! `axum::serve` sets no timer on hyper, so a half-sent request head or a silent connection
//! stays open for good, and nothing caps the number of open connections: with a small `nofile`
//! limit a few hundred slow clients lock every new client out. This module serves the same
//! router through hyper-util's connection builder with:
//!
//! * a **header-read timeout** (hyper's HTTP/1 timer): a request head must arrive complete
//!   within it. hyper starts that timer whenever the connection waits for a request head, so it
//!   also bounds how long an idle HTTP/1 keep-alive connection waits for its next request;
//! * an **idle timeout** for connections with no request in flight: it closes HTTP/2
//!   connections that open no stream (hyper has no HTTP/2 idle timer) and is a second bound
//!   for HTTP/1;
//! * a **body-read timeout**: a request body must be read in full within it (a total deadline,
//!   not a gap between chunks, so a body dripped byte by byte cannot hold its connection);
//! * a **cap on open connections**: at the cap the loop stops accepting (new clients wait in
//!   the kernel's backlog) until a connection closes. The cap is kept below the process's
//!   `nofile` limit, so `accept` does not fail for want of descriptors.
//!
//! Graceful shutdown as before: on the signal the listener closes (new connections are
//! refused), every connection finishes its request in flight and closes.

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Metric names of this module (the lead moves them into `telemetry` when merging).
pub mod metric_names {
    /// Gauge: open client connections.
    pub const OPEN_CONNECTIONS: &str = "sealserve_open_connections";
    /// Counter: connections closed by a timeout, by `kind` (`idle`, `body_read`).
    pub const CONNECTION_TIMEOUTS: &str = "sealserve_connection_timeouts_total";
}

/// Descriptors kept free for everything but client connections (the listener, logs, the
/// runtime's own, files the CUDA driver opens).
const RESERVED_FDS: u64 = 32;

/// What one connection may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request head must arrive complete within this time (also the keep-alive wait of
    /// HTTP/1 connections).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A request body must be read in full within this time.
    pub body_read_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// `max_connections` lowered, when needed, to fit the process's open-file limit (with
    /// `RESERVED_FDS` to spare); returns the limits and whether the cap was lowered.
    pub fn fitted_to_nofile(self) -> (Self, bool) {
        match nofile_limit() {
            Some(nofile) => {
                let room = nofile.saturating_sub(RESERVED_FDS).max(1);
                let room = usize::try_from(room).unwrap_or(usize::MAX);
                if self.max_connections > room {
                    let fitted = ConnectionLimits {
                        max_connections: room,
                        ..self
                    };
                    return (fitted, true);
                }
                (self, false)
            }
            None => (self, false),
        }
    }
}

/// The soft `RLIMIT_NOFILE`, if it is finite.
fn nofile_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Serves `app` on `listener` under `limits` until `shutdown` completes, then closes the
/// listener and waits for every open connection to finish its request in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Dropping `stop_rx` (when `shutdown` completes) tells the connections to wind down.
    let (stop_tx, stop_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(stop_rx);
    });
    // Every connection task holds a receiver; `closed()` resolves when the last one is gone.
    let (done_tx, done_rx) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop_tx.closed() => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let Some((stream, slot)) = accepted else {
            continue;
        };
        let app = app.clone();
        let stop = stop_tx.clone();
        let done = done_rx.clone();
        tokio::spawn(async move {
            ::metrics::gauge!(metric_names::OPEN_CONNECTIONS).increment(1.0);
            serve_connection(stream, app, limits, stop).await;
            ::metrics::gauge!(metric_names::OPEN_CONNECTIONS).decrement(1.0);
            drop(slot);
            drop(done);
        });
    }
    drop(listener);
    drop(done_rx);
    done_tx.closed().await;
}

/// Waits for a free connection slot, then for a client. `None` after an accept error (logged;
/// a short pause when descriptors ran out, so the loop does not spin).
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let slot = slots.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _)) => {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
            Some((stream, slot))
        }
        Err(e) => {
            let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
            tracing::warn!("accept failed: {e}");
            if out_of_fds {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        }
    }
}

/// Requests in flight on one connection and when the last one ended (or the connection opened).
struct Activity {
    in_flight: AtomicUsize,
    last_end: Mutex<Instant>,
}

impl Activity {
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = *self.last_end.lock().unwrap_or_else(|e| e.into_inner());
        Some(last.elapsed())
    }
}

/// Marks one request in flight until dropped (also when the client goes away and hyper drops
/// the handler future).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last_end.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    limits: ConnectionLimits,
    stop: watch::Sender<()>,
) {
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last_end: Mutex::new(Instant::now()),
    });
    let service_activity = activity.clone();
    let body_timeout = limits.body_read_timeout;
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let in_flight = InFlight::enter(&service_activity);
        let large = declared_length(&request) >= LARGE_REQUEST;
        let request = request.map(|body| Body::new(DeadlineBody::new(body, body_timeout)));
        let mut app = app.clone();
        async move {
            // Router is always ready (its poll_ready returns Ready), so no poll_ready first.
            let response = tower_service::Service::call(&mut app, request).await;
            drop(in_flight);
            if large {
                response.map(|response| response.map(|body| Body::new(TrimOnDrop(body))))
            } else {
                response
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let mut connection =
        pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
    let mut stopping = pin!(stop.closed());
    let mut shutting_down = false;
    // An idle connection asked to close gets this long to do so: an HTTP/2 peer that never
    // answers the GOAWAY's PING would otherwise keep it open.
    let mut close_by: Option<Instant> = None;
    let check_every =
        (limits.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(check_every);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection ended: {e}");
                }
                break;
            }
            _ = &mut stopping, if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = ticks.tick() => {
                if let Some(deadline) = close_by {
                    if Instant::now() >= deadline {
                        tracing::debug!("dropping an idle connection that did not close");
                        break;
                    }
                } else if !shutting_down
                    && activity.idle_for().is_some_and(|idle| idle >= limits.idle_timeout)
                {
                    ::metrics::counter!(metric_names::CONNECTION_TIMEOUTS, "kind" => "idle")
                        .increment(1);
                    shutting_down = true;
                    close_by = Some(Instant::now() + limits.idle_timeout.min(Duration::from_secs(5)));
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Request bodies from this size on give their memory back to the kernel once answered
/// ([`crate::memory::release_free_heap`]); smaller ones reuse what the allocator keeps.
const LARGE_REQUEST: u64 = 1 << 20;

/// The request's `Content-Length`, 0 when absent or not a number.
fn declared_length(request: &Request<Incoming>) -> u64 {
    request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The response body of a large request: once hyper has written it (or the client went away)
/// and dropped it, the heap goes back to the kernel ([`crate::memory::release_free_heap`]).
///
/// Why at the drop and not when the handler returns: then the response itself (a `/tokenize`
/// answer to a 2 MiB text is several MiB) and the buffers of requests still in flight were
/// freed after the trim. After a burst of 16 such requests, RSS 10 s later was up to 1.3× what
/// it was before (`tests/http_memory.rs` failed 1 run in 5 on a 2-core AMD EPYC Turin).
struct TrimOnDrop(Body);

impl hyper::body::Body for TrimOnDrop {
    type Data = hyper::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

impl Drop for TrimOnDrop {
    fn drop(&mut self) {
        // The body's own bytes first, then the trim.
        drop(std::mem::replace(&mut self.0, Body::empty()));
        match tokio::runtime::Handle::try_current() {
            // Off the async workers: trimming walks the allocator's arenas.
            Ok(runtime) => {
                runtime.spawn_blocking(crate::memory::release_free_heap);
            }
            Err(_) => crate::memory::release_free_heap(),
        }
    }
}

/// A request body that must be read in full before a deadline set when the request arrived.
struct DeadlineBody {
    body: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(body: Incoming, timeout: Duration) -> Self {
        DeadlineBody {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

/// The body was not read in full within `--body-read-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within --body-read-timeout")]
pub struct BodyReadTimeout;

impl hyper::body::Body for DeadlineBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            ::metrics::counter!(metric_names::CONNECTION_TIMEOUTS, "kind" => "body_read")
                .increment(1);
            return Poll::Ready(Some(Err(Box::new(BodyReadTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
