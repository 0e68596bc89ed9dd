//! A verified, loaded model served in-process over real HTTP (engine thread, batcher, core layer
//! and router as `serve` wires them), for route tests that need no sealed `serve` binary.

use sealserve::batcher::{Backend, Batcher};
use sealserve::bundle::VerifiedBundle;
use sealserve::engine::{Engine, LoadedModel};
use sealserve::harden::{self, HardenLevel};
use sealserve::http::{self, AppState, BundleInfo, SignatureKind};
use sealserve::infer::Infer;
use sealserve::limits::Limits;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Warms `loaded` up and serves it on a free loopback port; returns the base URL and the engine
/// (the caller keeps it alive for as long as it sends requests).
pub async fn serve(
    bundle: &VerifiedBundle<'static>,
    loaded: LoadedModel,
    limits: Limits,
) -> (String, Arc<Engine>) {
    serve_with(bundle, loaded, limits, |engine| engine as Arc<dyn Backend>).await
}

/// [`serve`] with the batcher talking to `backend(engine)` instead of the engine (a test that
/// stands in for a failing or stuck backend).
pub async fn serve_with(
    bundle: &VerifiedBundle<'static>,
    loaded: LoadedModel,
    limits: Limits,
    backend: impl FnOnce(Arc<Engine>) -> Arc<dyn Backend>,
) -> (String, Arc<Engine>) {
    // reqwest (built with rustls-no-provider for the remote-bundle clients) needs one for the
    // test's own clients.
    sealserve::remote::tls::install_crypto_provider();
    loaded.warm_up().expect("warm up");
    let engine = Arc::new(Engine::start(loaded).expect("engine thread"));
    let batcher = Batcher::start(backend(engine.clone()), &limits);
    let state = Arc::new(AppState {
        infer: Infer::new(
            batcher,
            engine.tokenizer().clone(),
            engine.info().clone(),
            limits,
        ),
        bundle: BundleInfo {
            manifest_sha256: "0".repeat(64),
            key_fingerprint: bundle.key_fingerprint.clone(),
            key_id: bundle.key_id.clone(),
            signature: SignatureKind::DevSigned,
            trusted_keys_pinned: false,
            trust: bundle.trust,
            load: sealserve::remote::LoadReport::embedded(bundle),
        },
        hardening: harden::apply(HardenLevel::Off, &[]).expect("hardening off"),
        api_key: None,
        ready: Arc::new(AtomicBool::new(true)),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        axum::serve(listener, http::router(state))
            .await
            .expect("serve")
    });
    (base, engine)
}
