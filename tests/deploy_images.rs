//! The images, built and run for real with podman (Debian's podman 4.3 + runc, as root, with the
//! flags this kind of machine needs: vfs storage, runc, cgroupfs, no rlimits), and a real OCI registry
//! (Debian's docker-registry) on 127.0.0.1. Slow (a debootstrap and several image builds), so it
//! runs when SEALSERVE_CI_IMAGES=1, which .ci/run sets.
//!
//! 1. runtime-image/Dockerfile.cpu's final stage (FROM scratch) with the static CPU `serve` built
//!    by this test run (its build stage replaced with `--build-context build=DIR`), run read-only,
//!    as 65532, with every capability dropped and no-new-privileges: /ready, /embed, and the
//!    process' Seccomp, NoNewPrivs, CapEff and Uid lines as the kernel reports them.
//! 2. The image pushed to the registry, its digest taken from `podman push --digestfile` (what
//!    sign.sh --digest-file signs), removed locally, pulled by digest and run again.
//! 3. The `serve` executable pushed as an OCI artifact (runtime-image/oci-artifact.py, the oras
//!    SDK), pulled back by digest, byte-identical and runnable.
//! 4. runtime-image/Dockerfile.cml on a Debian bullseye stand-in for the PBJ base
//!    (scripts/cml-standin-base: glibc 2.31, python3, user cdsw 8536), pulled by digest from the
//!    registry; the final stage's `serve --version` runs under that glibc. Then, as CML would:
//!    the Application (python3 runtime-image/launch_app.py → launch-app.sh → serve on
//!    127.0.0.1:$CDSW_APP_PORT), the Model function (cml_model.predict) and `serve --verify-only`.
//!    SEALSERVE_CML_SERVE selects the binary (the CUDA opt-in path passes the CUDA build, glibc
//!    floor 2.28, which then also starts with --device auto on this GPU-less machine).
//!
//! Every container runs pinned, as deployments do: the test build is dev-signed, so each image
//! gets a copy of `serve` whose bundle is re-signed as a release by a fresh key
//! (tests/common/binary.rs), and that key is the trust anchor at /etc/sealserve/trust
//! (SEALSERVE_TRUSTED_KEYS_DIR, set by the images). No waiver is used.

#[path = "common/deploy.rs"]
mod deploy;

#[allow(dead_code)]
#[path = "common/binary.rs"]
mod binary;

use deploy::*;
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn enabled() -> bool {
    let on = std::env::var("SEALSERVE_CI_IMAGES").as_deref() == Ok("1");
    if !on {
        eprintln!("image tests run with SEALSERVE_CI_IMAGES=1 (.ci/run sets it)");
    }
    on
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// podman with private storage in a temporary folder, so that runs never see each other's images.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::tempdir().expect("tempdir");
        // crun/runc cannot set rlimits without CAP_SYS_RESOURCE here (the machine has no CAP_SYS_RESOURCE).
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .expect("write containers.conf");
        Podman { dir }
    }

    fn cmd(&self) -> Command {
        let mut command = tool("podman");
        command
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("runroot"))
            .args([
                "--storage-driver",
                "vfs",
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
            ]);
        command
    }

    fn ok(&self, args: &[&str]) -> Output {
        run_ok(self.cmd().args(args))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["rm", "--all", "--force", "--time", "0"])
            .output();
    }
}

/// docker-registry (distribution 2.8) on 127.0.0.1, filesystem storage in a temporary folder.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let child = tool("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            child,
            port,
            _dir: dir,
        };
        wait_for(
            &format!("http://127.0.0.1:{port}/v2/"),
            Duration::from_secs(30),
        );
        registry
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls a URL until it answers 2xx.
fn wait_for(url: &str, timeout: Duration) {
    let started = Instant::now();
    while started.elapsed() < timeout {
        let ok = Command::new("curl")
            .args(["-fsS", "-o", "/dev/null", "--max-time", "2", url])
            .status();
        if ok.is_ok_and(|s| s.success()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{url} did not answer within {timeout:?}");
}

fn post_json(url: &str, body: &str) -> Value {
    let out = run_ok(tool("curl").args([
        "-fsS",
        "--max-time",
        "30",
        "-H",
        "content-type: application/json",
        "-d",
        body,
        url,
    ]));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{url}: {e}: {}", text(&out)))
}

fn get_json(url: &str) -> Value {
    let out = run_ok(tool("curl").args(["-fsS", "--max-time", "10", url]));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// /proc/<pid>/status of the container's main process, as the host kernel reports it.
fn process_status(podman: &Podman, container: &str) -> String {
    let pid = podman.ok(&["inspect", "--format", "{{.State.Pid}}", container]);
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    read(Path::new(&format!("/proc/{pid}/status")))
}

fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

fn assert_embeds(port: u16) {
    let embeddings = post_json(
        &format!("http://127.0.0.1:{port}/embed"),
        r#"{"inputs": ["hello"]}"#,
    );
    assert_eq!(
        embeddings[0].as_array().map(Vec::len),
        Some(384),
        "{embeddings}"
    );
}

/// Runs the CPU image hardened, checks it serves and what the kernel says about the process.
fn run_hardened(podman: &Podman, image: &str, trust: &Path, name: &str) {
    let port = free_port();
    let mount = format!("{}:/etc/sealserve/trust:ro", trust.display());
    let port_arg = port.to_string();
    podman.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--network",
        "host",
        "-v",
        &mount,
        image,
        "--host",
        "127.0.0.1",
        "--port",
        &port_arg,
    ]);
    let url = format!("http://127.0.0.1:{port}/ready");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if Command::new("curl")
            .args(["-fsS", "-o", "/dev/null", &url])
            .status()
            .is_ok_and(|s| s.success())
        {
            break;
        }
        let state = podman.ok(&["inspect", "--format", "{{.State.Running}}", name]);
        if String::from_utf8_lossy(&state.stdout).trim() != "true" {
            let logs = podman.cmd().args(["logs", name]).output().expect("logs");
            panic!("{image} exited before it was ready:\n{}", text(&logs));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_embeds(port);
    let status = process_status(podman, name);
    assert_eq!(status_field(&status, "Seccomp"), "2", "{status}");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(status_field(&status, "CapEff"), "0000000000000000");
    assert!(
        status_field(&status, "Uid").starts_with("65532"),
        "{status}"
    );
    let info = get_json(&format!("http://127.0.0.1:{port}/info"));
    assert_eq!(info["device"], "cpu");
    podman.ok(&["stop", "--time", "10", name]);
    podman.ok(&["rm", name]);
}

fn copy_executable(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    std::fs::copy(from, to).expect("copy");
    run_ok(Command::new("chmod").arg("0755").arg(to));
}

#[test]
fn images_build_run_hardened_and_travel_through_a_registry_by_digest() {
    if !enabled() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    // A release-signed copy of the test build; its key is the trust anchor mounted below.
    let (serve, key) = binary::release_signed_copy(work.path(), "serve");
    let podman = Podman::new();
    let registry = Registry::start();
    let host = registry.host();

    // The final stage's inputs as the build stage leaves them: /out/serve and its SBOM.
    let build = work.path().join("build");
    copy_executable(&serve, &build.join("out/serve"));
    run_ok(
        Command::new("bash")
            .arg(repo().join("scripts/sbom-serve"))
            .arg(build.join("out/sbom/serve.cdx.json")),
    );
    let context = work.path().join("context");
    std::fs::create_dir(&context).expect("mkdir");
    let build_context = format!("build={}", build.display());
    podman.ok(&[
        "build",
        "--build-context",
        &build_context,
        "-f",
        runtime_image("Dockerfile.cpu").to_str().unwrap(),
        "-t",
        "localhost/sealserve/serve-cpu:test",
        context.to_str().unwrap(),
    ]);
    // Only public material is mounted.
    let trust = work.path().join("trust");
    std::fs::create_dir(&trust).expect("mkdir");
    std::fs::write(trust.join("model.pub"), key.public_key().to_pem()).expect("write key");
    run_hardened(
        &podman,
        "localhost/sealserve/serve-cpu:test",
        &trust,
        "sealserve-cpu",
    );

    // Push; the digest is what the push reports; pull by digest into an empty store; run again.
    let repository = format!("{host}/sealserve/serve-cpu");
    let digest_file = work.path().join("digest");
    podman.ok(&[
        "push",
        "--tls-verify=false",
        "--digestfile",
        digest_file.to_str().unwrap(),
        "localhost/sealserve/serve-cpu:test",
        &format!("{repository}:0.1.0"),
    ]);
    let digest = read(&digest_file).trim().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    let inspected = run_ok(
        tool("skopeo")
            .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
            .arg(format!("docker://{repository}:0.1.0")),
    );
    assert_eq!(String::from_utf8_lossy(&inspected.stdout).trim(), digest);
    podman.ok(&["rmi", "--force", "localhost/sealserve/serve-cpu:test"]);
    let pinned = format!("{repository}@{digest}");
    podman.ok(&["pull", "--tls-verify=false", &pinned]);
    run_hardened(&podman, &pinned, &trust, "sealserve-cpu-pulled");

    // The executable as an OCI artifact, by digest.
    let pushed = run_ok(
        tool("python3")
            .arg(runtime_image("oci-artifact.py"))
            .args(["push", &format!("{host}/sealserve/serve-bin:0.1.0")])
            .arg(&serve)
            .arg("--insecure"),
    );
    let artifact = String::from_utf8_lossy(&pushed.stdout).trim().to_string();
    assert!(
        artifact.starts_with(&format!("{host}/sealserve/serve-bin@sha256:")),
        "{artifact}"
    );
    let pulled_dir = work.path().join("pulled");
    run_ok(
        tool("python3")
            .arg(runtime_image("oci-artifact.py"))
            .args(["pull", &artifact])
            .arg(&pulled_dir)
            .arg("--insecure"),
    );
    let pulled = pulled_dir.join(serve.file_name().expect("name"));
    assert_eq!(
        std::fs::read(&pulled).expect("pulled"),
        std::fs::read(&serve).expect("serve")
    );
    let verified = run_ok(
        Command::new(&pulled)
            .arg("--verify-only")
            .arg("--trusted-keys-dir")
            .arg(&trust),
    );
    assert!(
        String::from_utf8_lossy(&verified.stdout).starts_with("OK "),
        "{}",
        text(&verified)
    );
    let tampered = Command::new("python3")
        .arg(runtime_image("oci-artifact.py"))
        .args([
            "pull",
            &format!("{host}/sealserve/serve-bin@sha256:{}", "0".repeat(64)),
        ])
        .arg(work.path().join("nothing"))
        .arg("--insecure")
        .output()
        .expect("pull");
    assert!(
        !tampered.status.success(),
        "a digest the registry does not hold was pulled"
    );

    cml_runtime_on_a_bullseye_stand_in(&podman, &registry, work.path());
}

/// Dockerfile.cml built on the stand-in base, then the Application, the Model and --verify-only.
fn cml_runtime_on_a_bullseye_stand_in(podman: &Podman, registry: &Registry, work: &Path) {
    let given = std::env::var_os("SEALSERVE_CML_SERVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_serve")));
    // Re-signed as a release by a fresh key, which the image pins (Dockerfile.cml copies
    // keys/model.pub to /etc/sealserve/trust).
    let binary = work.join("serve-cml");
    copy_executable(&given, &binary);
    let key = (0..64)
        .map(|_| sealserve::signature::SecretKey::generate())
        .find(|key| binary::resign_in_place(&binary, key))
        .expect("a key whose bundle fits serve's section");
    let host = registry.host();
    let base_tar = repo().join("target/cml-standin/bullseye.tar");
    run_ok(
        Command::new("bash")
            .arg(repo().join("scripts/cml-standin-base"))
            .arg(&base_tar),
    );
    // A root file system has no image config; PBJ images set PATH like this.
    podman.ok(&[
        "import",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        base_tar.to_str().unwrap(),
        "localhost/cml-standin:bullseye",
    ]);
    let digest_file = work.join("base-digest");
    podman.ok(&[
        "push",
        "--tls-verify=false",
        "--digestfile",
        digest_file.to_str().unwrap(),
        "localhost/cml-standin:bullseye",
        &format!("{host}/cml-standin:bullseye"),
    ]);
    let base_digest = read(&digest_file).trim().to_string();

    // The signed standalone image's content, as Dockerfile.cml copies it (stage `serve`).
    let serve_stage = work.join("serve-stage");
    copy_executable(&binary, &serve_stage.join("usr/local/bin/serve"));
    std::fs::create_dir_all(serve_stage.join("usr/local/lib/sealserve/cuda")).expect("mkdir");
    std::fs::create_dir_all(serve_stage.join("usr/local/share/sealserve/sbom")).expect("mkdir");
    std::fs::write(
        serve_stage.join("usr/local/share/sealserve/sbom/serve.cdx.json"),
        "{}",
    )
    .expect("write");
    // The build context as Dockerfile.cml.dockerignore lets it through.
    let context = work.join("cml-context");
    for file in ["runtime-image/launch-app.sh", "runtime-image/cml_model.py"] {
        copy_executable(&repo().join(file), &context.join(file));
    }
    // Only the public key goes into the build context.
    std::fs::create_dir_all(context.join("keys")).expect("mkdir");
    std::fs::write(context.join("keys/model.pub"), key.public_key().to_pem()).expect("write key");
    let serve_context = format!("serve={}", serve_stage.display());
    podman.ok(&[
        "build",
        "--tls-verify=false",
        "--build-context",
        &serve_context,
        "--build-arg",
        "SERVE_IMAGE=localhost/sealserve/serve:given-as-build-context",
        "--build-arg",
        &format!("PBJ_IMAGE={host}/cml-standin"),
        "--build-arg",
        &format!("PBJ_DIGEST={base_digest}"),
        "-f",
        runtime_image("Dockerfile.cml").to_str().unwrap(),
        "-t",
        "localhost/sealserve/cml-runtime:test",
        context.to_str().unwrap(),
    ]);
    let image = "localhost/sealserve/cml-runtime:test";
    let labels = podman.ok(&["inspect", "--format", "{{json .Config.Labels}}", image]);
    let labels: Value = serde_json::from_slice(&labels.stdout).expect("labels");
    assert_eq!(labels["com.cloudera.ml.runtime.edition"], "sealserve GPU");

    // The Application, as CML starts it: the project's launch_app.py with the runtime's kernel.
    let port = free_port();
    let project = format!(
        "{}:/home/cdsw/runtime-image:ro",
        repo().join("runtime-image").display()
    );
    let run_as_cml = [
        "--user",
        "8536:8536",
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "-v",
        &project,
    ];
    let app_port = format!("CDSW_APP_PORT={port}");
    podman.ok(&[
        &["run", "-d", "--name", "cml-app", "-e", &app_port][..],
        &run_as_cml[..],
        &[image, "python3", "runtime-image/launch_app.py"][..],
    ]
    .concat());
    wait_for(
        &format!("http://127.0.0.1:{port}/ready"),
        Duration::from_secs(120),
    );
    assert_embeds(port);
    let info = get_json(&format!("http://127.0.0.1:{port}/info"));
    assert_eq!(
        info["device"], "cpu",
        "SEALSERVE_DEVICE=auto on a machine without a GPU: {info}"
    );
    podman.ok(&["stop", "--time", "20", "cml-app"]);
    let exit = podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", "cml-app"]);
    assert_eq!(
        String::from_utf8_lossy(&exit.stdout).trim(),
        "0",
        "SIGTERM is forwarded and serve drains"
    );

    // The Model function, as CML's model runtime imports it.
    let driver = "import json, sys; sys.path.insert(0, 'runtime-image'); import cml_model; \
                  print(json.dumps(cml_model.predict({'inputs': ['hello']})))";
    let model = podman.ok(&[
        &["run", "--rm"][..],
        &run_as_cml[..],
        &[image, "python3", "-c", driver][..],
    ]
    .concat());
    let stdout = String::from_utf8_lossy(&model.stdout);
    let response: Value =
        serde_json::from_str(stdout.lines().last().expect("output")).expect("JSON");
    assert_eq!(
        response["embeddings"][0].as_array().map(Vec::len),
        Some(384),
        "{response}"
    );

    let verify = podman.ok(&[
        &["run", "--rm"][..],
        &run_as_cml[..],
        &[image, "/usr/local/bin/serve", "--verify-only"][..],
    ]
    .concat());
    assert!(
        String::from_utf8_lossy(&verify.stdout).starts_with("OK "),
        "{}",
        text(&verify)
    );
    let glibc = podman.ok(&["run", "--rm", image, "ldd", "--version"]);
    assert!(
        text(&glibc).contains("2.31"),
        "the stand-in is not bullseye's glibc: {}",
        text(&glibc)
    );
}
