//! The CML entry points, run as CML runs them (python3 imports or executes the project's files):
//!
//! - runtime-image/cml_model.py (the CML Model function) against the real `serve`: it starts
//!   serve on a free loopback port, waits for /ready and forwards TEI- and OpenAI-shaped requests;
//!   with `cml.models_v1` present it registers the function through `cml_model`;
//! - against a fake serve: it dispatches to /v1/chat/completions when /info says the model is a
//!   generation model, sends the API key, and fails at import when serve exits early;
//! - launch_app.py → launch-app.sh refuses to run outside a CML Application.
//!
//! The same files inside an image built on a Debian bullseye stand-in for the PBJ runtime are
//! tests/deploy_images.rs.

#[path = "common/deploy.rs"]
mod deploy;

#[allow(dead_code)]
#[path = "common/binary.rs"]
mod binary;

use deploy::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};

/// Imports cml_model from runtime-image/ and prints the JSON of predict(request).
const DRIVER: &str = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import cml_model
result = {"response": cml_model.predict(json.loads(sys.argv[2]))}
try:
    import cml.models_v1 as models
    result["registered"] = models.REGISTERED
except ImportError:
    pass
print(json.dumps(result))
"#;

/// A stand-in for serve: /ready, /info (kind from FAKE_KIND), and echo routes that report the
/// path and Authorization header they saw.
const FAKE_SERVE: &str = r#"#!/usr/bin/env python3
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
if os.environ.get("FAKE_EXIT"):
    sys.exit(int(os.environ["FAKE_EXIT"]))
port = int(sys.argv[sys.argv.index("--port") + 1])
assert sys.argv[sys.argv.index("--host") + 1] == "127.0.0.1"
class Handler(BaseHTTPRequestHandler):
    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        if self.path == "/ready":
            self.reply("ready")
        elif self.path == "/info":
            self.reply({"model_id": "fake/model", "kind": os.environ.get("FAKE_KIND", "embedding")})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.reply({"path": self.path, "body": body, "auth": self.headers.get("authorization")})
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// A fake `cml.models_v1` that records what was registered, as PBJ runtimes' module would.
fn fake_cml_package(dir: &Path) {
    let package = dir.join("cml");
    std::fs::create_dir_all(&package).expect("mkdir");
    std::fs::write(package.join("__init__.py"), "").expect("write");
    std::fs::write(
        package.join("models_v1.py"),
        "REGISTERED = []\ndef cml_model(function):\n    REGISTERED.append(function.__name__)\n    return function\n",
    )
    .expect("write");
}

fn predict(
    serve: &Path,
    request: &Value,
    env: &[(&str, &str)],
    pythonpath: Option<&Path>,
) -> Output {
    let mut command = tool("python3");
    command
        .arg("-c")
        .arg(DRIVER)
        .arg(repo().join("runtime-image"))
        .arg(request.to_string())
        .env("SEALSERVE_SERVE", serve)
        .env("SEALSERVE_CML_READY_TIMEOUT", "120")
        .env_remove("SEALSERVE_ALLOW_UNPINNED")
        .env("SEALSERVE_LOG_FORMAT", "json")
        .env_remove("SEALSERVE_API_KEY")
        // CML sets these for Applications; the Model adapter must not listen there.
        .env("CDSW_APP_PORT", "1")
        .env("PORT", "1");
    if let Some(path) = pythonpath {
        command.env("PYTHONPATH", path);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run python3")
}

fn response(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "cml_model failed: {}",
        text(output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().expect("a line")).expect("JSON")
}

#[test]
fn cml_model_forwards_embedding_requests_to_the_real_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    fake_cml_package(dir.path());
    // Pinned, as in the CML runtime: a release-signed copy of the (dev-signed) test build, its
    // key in the trust folder.
    let (serve, key) = binary::release_signed_copy(dir.path(), "serve");
    let trust = dir.path().join("trust");
    std::fs::create_dir(&trust).expect("mkdir");
    std::fs::write(trust.join("model.pub"), key.public_key().to_pem()).expect("write key");
    let pinned = [("SEALSERVE_TRUSTED_KEYS_DIR", trust.to_str().expect("utf-8"))];
    let serve = serve.as_path();

    let tei = response(&predict(
        serve,
        &json!({"inputs": ["hello", "world"]}),
        &pinned,
        Some(dir.path()),
    ));
    assert_eq!(
        tei["registered"],
        json!(["predict"]),
        "not registered through cml.models_v1"
    );
    let embeddings = tei["response"]["embeddings"]
        .as_array()
        .expect("embeddings");
    assert_eq!(embeddings.len(), 2);
    let first: Vec<f64> = embeddings[0]
        .as_array()
        .expect("vector")
        .iter()
        .map(|x| x.as_f64().expect("f64"))
        .collect();
    assert_eq!(first.len(), 384);
    let norm: f64 = first.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "embedding norm {norm}");
    assert!(
        tei["response"]["model"]
            .as_str()
            .is_some_and(|m| m.contains("MiniLM")),
        "{}",
        tei["response"]["model"]
    );

    // OpenAI shape, and without cml.models_v1 the function is a plain one.
    let openai = response(&predict(serve, &json!({"input": "hello"}), &pinned, None));
    assert!(openai.get("registered").is_none());
    assert_eq!(openai["response"]["object"], "list");
    assert_eq!(
        openai["response"]["data"][0]["embedding"]
            .as_array()
            .map(Vec::len),
        Some(384)
    );
}

#[test]
fn cml_model_dispatches_on_the_model_kind_and_sends_the_api_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("serve");
    std::fs::write(&fake, FAKE_SERVE).expect("write");
    run_ok(Command::new("chmod").arg("+x").arg(&fake));
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});

    let generation = response(&predict(
        &fake,
        &chat,
        &[("FAKE_KIND", "generation"), ("SEALSERVE_API_KEY", "k3y")],
        None,
    ));
    assert_eq!(generation["response"]["path"], "/v1/chat/completions");
    assert_eq!(generation["response"]["body"], chat);
    assert_eq!(generation["response"]["auth"], "Bearer k3y");

    let embedding = response(&predict(&fake, &json!({"inputs": "hi"}), &[], None));
    assert_eq!(embedding["response"]["embeddings"]["path"], "/embed");
    assert_eq!(embedding["response"]["model"], "fake/model");
    assert!(embedding["response"]["embeddings"]["auth"].is_null());

    // serve refusing to start (e.g. no trust anchor) fails the Model at import, with its status.
    let failed = predict(
        &fake,
        &json!({"inputs": "hi"}),
        &[("FAKE_EXIT", "18")],
        None,
    );
    assert!(!failed.status.success());
    assert!(
        text(&failed).contains("serve exited with status 18"),
        "{}",
        text(&failed)
    );
}

#[test]
fn launch_app_refuses_to_run_outside_a_cml_application() {
    let output = tool("python3")
        .arg(runtime_image("launch_app.py"))
        .env_remove("CDSW_APP_PORT")
        .output()
        .expect("launch_app.py");
    assert_eq!(output.status.code(), Some(64), "{}", text(&output));
    assert!(
        text(&output).contains("CDSW_APP_PORT is not set"),
        "{}",
        text(&output)
    );
}

#[test]
fn the_amp_tasks_name_files_and_functions_that_exist() {
    let amp = yaml_doc(&repo().join(".project-metadata.yaml"));
    let tasks = amp["tasks"].as_array().expect("tasks");
    let task = |kind: &str| {
        tasks
            .iter()
            .find(|t| t["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} task"))
    };
    let app = task("start_application");
    assert!(repo().join(str_at(app, "/script")).is_file());
    let build = task("build_model");
    let file = repo().join(str_at(build, "/target_file_path"));
    let function = str_at(build, "/target_function_name");
    assert!(
        read(&file).contains(&format!("\ndef {function}(")),
        "{} defines no {function}()",
        file.display()
    );
    let label = str_at(task("create_model"), "/entity_label");
    assert_eq!(str_at(build, "/entity_label"), label);
    assert_eq!(str_at(task("deploy_model"), "/entity_label"), label);
    // The example request is one the adapter forwards to /embed.
    assert!(build["examples"][0]["request"]["inputs"].is_array());
    for t in tasks {
        if let Some(gpu) = t["gpu"].as_u64() {
            assert_eq!(gpu, 1, "{}: one GPU per server", t["type"]);
        }
    }
}
