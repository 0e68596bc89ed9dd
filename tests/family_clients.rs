//! Real clients against the task routes of sealed family fixtures served in-process:
//! `huggingface_hub.InferenceClient.text_classification` (POST / of a classifier) equals the
//! transformers reference, and schemathesis with all its checks finds no failure in the
//! classifier's, re-ranker's and SPLADE model's `/openapi.json`. Pinned clients
//! (scripts/install-test-clients); they fail, never skip, when missing.

mod common;

use common::clients::{clients_dir, run_python};
use common::families;
use sealserve::limits::Limits;
use sealserve::spec::{Family, Pooling, Task};
use std::num::NonZeroUsize;

fn limits() -> Limits {
    let n = |v| NonZeroUsize::new(v).expect("non-zero");
    Limits {
        max_client_batch_size: n(8),
        payload_limit: n(16 * 1024),
        max_batch_tokens: n(512),
        max_batch_size: n(8),
        max_concurrent_requests: n(64),
    }
}

/// Serves the fixture in-process and runs `client` (blocking) with the base URL.
async fn with_server<T: Send + 'static>(
    fixture: &str,
    family: Family,
    task: Task,
    client: impl FnOnce(String) -> T + Send + 'static,
) -> T {
    let bundle = families::sealed(fixture, family, task, Pooling::Cls);
    let loaded = families::load(&bundle).expect("load the sealed fixture");
    let (base, _engine) = common::inproc::serve(&bundle, loaded, limits()).await;
    tokio::task::spawn_blocking(move || client(base))
        .await
        .expect("client thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huggingface_hub_text_classification_equals_transformers() {
    let fixture = "bert-classifier";
    let dir = families::dir(fixture).display().to_string();
    let out = with_server(fixture, Family::Bert, Task::Classify, move |base| {
        run_python(&["check_versions.py"], &clients_dir());
        run_python(&["hf_classify.py", &base, &dir], &clients_dir())
    })
    .await;
    println!("{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_on_the_task_routes() {
    for (fixture, task) in [
        ("bert-classifier", Task::Classify),
        ("bert-reranker", Task::Rerank),
        ("bert-splade", Task::SparseEmbed),
    ] {
        let out = with_server(fixture, Family::Bert, task, |base| {
            common::clients::schemathesis(&format!("{base}/openapi.json"))
        })
        .await;
        println!("{fixture}:\n{out}");
    }
}
