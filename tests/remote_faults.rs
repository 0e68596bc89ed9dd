//! Transient store failures are retried and the download resumes where it stopped (a 500 once,
//! a connection reset mid-body), over HTTP (our retry loop) and S3 (object_store's, through a
//! fault-injecting proxy in front of moto); permanent ones (403, 404) fail at once with the
//! reason; a store that stops answering times out with one clear line.

mod common;
#[path = "common/remote.rs"]
mod remote;

use remote::{FileServer, Moto, Release, S3Proxy};
use sealserve::bundle::TrustPolicy;
use sealserve::remote::{FetchError, FetchErrorKind, FetchOptions, Fetched, ModelUrl, RemoteError};
use std::time::{Duration, Instant};

const WEIGHTS: &str = "model.safetensors";

fn fetch(url: &str, release: &Release, options: &FetchOptions) -> Result<Fetched, RemoteError> {
    let url: ModelUrl = url.parse().unwrap();
    let policy = TrustPolicy::pinned([release.fingerprint.clone()]);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sealserve::remote::fetch(&url, &policy, options))
}

fn fetch_error(result: Result<Fetched, RemoteError>) -> FetchError {
    match result {
        Err(RemoteError::Fetch(e)) => e,
        Err(other) => panic!("expected a fetch error, got {other}"),
        Ok(_) => panic!("expected a fetch error, got a bundle"),
    }
}

#[test]
fn http_500_and_a_reset_mid_body_are_retried_and_the_range_resumed() {
    let release = Release::tiny();
    let server = FileServer::start(release.dir.path(), None);
    server.faults.fail_once("MANIFEST", 500);
    server.faults.fail_once(WEIGHTS, 503);
    server.faults.cut_once(WEIGHTS);
    let options = FetchOptions {
        connections: 1,
        ..FetchOptions::default()
    };
    let fetched = fetch(&server.base, &release, &options).expect("retried to success");
    assert!(fetched.report.retries >= 1, "{:?}", fetched.report);
    let weights = std::fs::read(release.path(WEIGHTS)).unwrap();
    assert_eq!(fetched.verified.file(WEIGHTS), Some(weights.as_slice()));
    // After the reset, the next request asked for the rest of the file only.
    let seen = server.faults.seen();
    let gets: Vec<&String> = seen
        .iter()
        .filter(|r| r.starts_with(&format!("GET {WEIGHTS}")))
        .collect();
    let resumed = format!(
        "GET {WEIGHTS} bytes={}-{}",
        weights.len() / 2,
        weights.len() - 1
    );
    assert!(
        gets.iter().any(|r| **r == resumed),
        "{gets:?}, expected {resumed}"
    );
}

#[test]
fn http_403_and_404_fail_at_once_with_the_reason() {
    let release = Release::tiny();
    let server = FileServer::start(release.dir.path(), None);
    server.faults.always(WEIGHTS, 403);
    let started = Instant::now();
    let error = fetch_error(fetch(&server.base, &release, &FetchOptions::default()));
    assert_eq!(error.kind, FetchErrorKind::Denied, "{error}");
    let line = error.to_string();
    assert!(line.contains("access denied (HTTP 403 Forbidden"), "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let attempts = server
        .faults
        .seen()
        .iter()
        .filter(|r| r.contains(WEIGHTS))
        .count();
    assert_eq!(
        attempts,
        1,
        "a 403 is not retried: {:?}",
        server.faults.seen()
    );

    let wrong = format!("{}nothing-here/", server.base);
    let error = fetch_error(fetch(&wrong, &release, &FetchOptions::default()));
    assert_eq!(error.kind, FetchErrorKind::NotFound, "{error}");
    assert!(
        error
            .to_string()
            .contains("nothing-here/MANIFEST: not found"),
        "{error}"
    );
}

#[test]
fn a_silent_store_times_out_with_one_clear_line() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _hold = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming().take(16) {
            open.push(stream);
        }
    });
    let release = Release::tiny();
    let options = FetchOptions {
        read_timeout: Duration::from_millis(300),
        ..FetchOptions::default()
    };
    let error = fetch_error(fetch(
        &format!("http://127.0.0.1:{port}/bundle/"),
        &release,
        &options,
    ));
    assert_eq!(error.kind, FetchErrorKind::Timeout, "{error}");
    let line = error.to_string();
    assert!(
        line.contains("timed out") && line.contains("network path"),
        "{line}"
    );
    assert!(!line.contains('\n'));
}

fn seal_verify(url: &str, release: &Release, env: &[(String, String)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_seal"))
        .args(["verify", "--trusted-key", &release.fingerprint, url])
        .env("HOME", "/nonexistent")
        .envs(env.iter().cloned())
        .output()
        .unwrap()
}

#[test]
fn s3_500_and_a_reset_mid_body_are_retried_through_a_faulty_proxy() {
    let moto = Moto::start(&["models"]);
    let release = Release::tiny();
    let proxy = S3Proxy::start(&moto.endpoint);
    // Publish straight to moto.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_seal"))
        .args([
            "publish",
            "--trusted-key",
            &release.fingerprint,
            &release.dir.path().display().to_string(),
            "s3://models/tiny/",
        ])
        .env("HOME", "/nonexistent")
        .envs(moto.env())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    proxy.faults.fail_once(WEIGHTS, 500);
    proxy.faults.cut_once(WEIGHTS);
    let env = moto.env_via(&proxy.endpoint);
    let verified = seal_verify("s3://models/tiny/", &release, &env);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let gets = proxy
        .faults
        .seen()
        .iter()
        .filter(|r| r.starts_with(&format!("GET {WEIGHTS}")))
        .count();
    assert!(
        gets >= 3,
        "500, cut, then success: {:?}",
        proxy.faults.seen()
    );

    proxy.faults.always(WEIGHTS, 403);
    let before = proxy.faults.seen().len();
    let denied = seal_verify("s3://models/tiny/", &release, &env);
    assert_eq!(denied.status.code(), Some(20));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("access denied"), "{stderr}");
    let weights_requests = proxy.faults.seen()[before..]
        .iter()
        .filter(|r| r.contains(WEIGHTS))
        .count();
    assert_eq!(
        weights_requests,
        1,
        "a 403 is not retried: {:?}",
        proxy.faults.seen()
    );
}

#[test]
fn an_unreachable_store_is_retried_then_named_in_one_line() {
    // A port nothing listens on: every connection is refused.
    let port = remote::free_port();
    let release = Release::tiny();
    let started = Instant::now();
    let error = fetch_error(fetch(
        &format!("http://127.0.0.1:{port}/bundle/"),
        &release,
        &FetchOptions::default(),
    ));
    assert_eq!(error.kind, FetchErrorKind::Transient, "{error}");
    let line = error.to_string();
    assert!(
        line.starts_with(&format!(
            "http://127.0.0.1:{port}/bundle/MANIFEST: failed ("
        )),
        "{line}"
    );
    assert!(line.contains("try again later"), "{line}");
    assert!(!line.contains('\n'));
    // Retried with backoff (5 waits of 0.2..5 s) rather than given up at once, and bounded.
    let elapsed = started.elapsed();
    assert!(
        elapsed > Duration::from_secs(3) && elapsed < Duration::from_secs(30),
        "{elapsed:?}"
    );
}

#[test]
fn a_body_that_is_always_cut_short_fails_after_the_retries_and_says_so() {
    let release = Release::tiny();
    let server = FileServer::start(release.dir.path(), None);
    server.faults.cut_always(WEIGHTS);
    let options = FetchOptions {
        connections: 1,
        ..FetchOptions::default()
    };
    let error = fetch_error(fetch(&server.base, &release, &options));
    assert_eq!(error.kind, FetchErrorKind::Transient, "{error}");
    let line = error.to_string();
    assert!(
        line.contains(WEIGHTS) && line.contains("try again later"),
        "{line}"
    );
    assert!(!line.contains('\n'));
    // Each retry resumed where the previous answer stopped, and none was taken as the file.
    let gets = server
        .faults
        .seen()
        .iter()
        .filter(|r| r.starts_with(&format!("GET {WEIGHTS}")))
        .count();
    assert_eq!(gets, 6, "{:?}", server.faults.seen());
}
