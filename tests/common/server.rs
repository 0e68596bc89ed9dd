//! Runs the real `serve` binary on 127.0.0.1 with an ephemeral port and talks to it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The waiver every test that starts the dev-signed `serve` passes (there is no release key to
/// pin); the trust tests start it without.
pub const UNPINNED: (&str, &str) = ("SEALSERVE_ALLOW_UNPINNED", "1");

/// The `serve` binary the tests launch: this build's, or the one `SEALSERVE_TEST_SERVE` names, so
/// that the binary-level suites (harden_inject, harden_serve, http_connections, http_memory) can
/// re-check a release build (`SEALSERVE_TEST_SERVE=target/release/serve cargo test --test …`,
/// see RELIABILITY.md) without compiling the tests in release.
pub fn serve_binary() -> std::path::PathBuf {
    std::env::var_os("SEALSERVE_TEST_SERVE")
        .map_or_else(|| env!("CARGO_BIN_EXE_serve").into(), Into::into)
}

/// The `serve` binary (see [`serve_binary`]), as every test launches it, with the [`UNPINNED`]
/// waiver: the one place for launch settings every test needs.
pub fn serve_command() -> Command {
    let mut command = Command::new(serve_binary());
    command.env(UNPINNED.0, UNPINNED.1);
    command
}

/// A running `serve` process; killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub port: u16,
    /// Every stderr line (JSON logs), collected in the background.
    pub logs: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `serve --log-format json --host 127.0.0.1 --port 0 <args>` with extra environment
    /// (and the [`UNPINNED`] waiver, which `env` may override), and waits until it listens and
    /// /ready answers 200.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_with(args, env, |_| {})
    }

    /// [`Server::start`] with a last say on the command (e.g. its resource limits).
    pub fn start_with(
        args: &[&str],
        env: &[(&str, &str)],
        customize: impl FnOnce(&mut Command),
    ) -> Server {
        Self::launch(serve_command(), args, env, customize)
    }

    /// [`Server::start`] of another `serve` binary (e.g. the generation build), with the
    /// [`UNPINNED`] waiver.
    pub fn start_binary(binary: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(binary);
        command.env(UNPINNED.0, UNPINNED.1);
        Self::launch(command, args, env, |_| {})
    }

    /// [`Server::start`] of this build's `serve` (see [`serve_binary`]) run through `launcher`
    /// (e.g. `qemu-x86_64 -cpu Nehalem`), waiting up to `ready_within` for /ready: emulated
    /// start-ups take far longer than the usual 30 s.
    pub fn start_under(
        launcher: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        ready_within: Duration,
    ) -> Server {
        let (program, launcher_args) = launcher.split_first().expect("a launcher program");
        let mut command = Command::new(program);
        command.args(launcher_args).arg(serve_binary());
        command.env(UNPINNED.0, UNPINNED.1);
        Self::launch_within(command, args, env, |_| {}, ready_within)
    }

    fn launch(
        command: Command,
        args: &[&str],
        env: &[(&str, &str)],
        customize: impl FnOnce(&mut Command),
    ) -> Server {
        Self::launch_within(command, args, env, customize, Duration::from_secs(30))
    }

    fn launch_within(
        mut command: Command,
        args: &[&str],
        env: &[(&str, &str)],
        customize: impl FnOnce(&mut Command),
        ready_within: Duration,
    ) -> Server {
        command
            .args(["--log-format", "json"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !args.contains(&"--port") && !env.iter().any(|(k, _)| *k == "CDSW_APP_PORT") {
            command.args(["--host", "127.0.0.1", "--port", "0"]);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        customize(&mut command);
        let mut child = command.spawn().expect("spawn serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, logs) = mpsc::channel();
        let (addr_tx, addr_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    if event["message"] == "bound" {
                        let _ =
                            addr_tx.send(event["address"].as_str().unwrap_or_default().to_string());
                    }
                }
                let _ = tx.send(line);
            }
        });
        let address = match addr_rx.recv_timeout(ready_within.max(Duration::from_secs(60))) {
            Ok(address) => address,
            Err(e) => {
                let said: Vec<String> = logs.try_iter().collect();
                panic!(
                    "serve did not report its address in time ({e}); it said:\n{}",
                    said.join("\n")
                );
            }
        };
        let port: u16 = address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
            logs,
        };
        server.wait_ready(ready_within);
        server
    }

    fn wait_ready(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(response) = status_of_get(&format!("{}/ready", self.base)) {
                if response == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("serve never became ready");
    }

    /// URL of a route.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The pid of the process that serves: with `--harden strict|basic` (the default) `serve`
    /// forks once at start-up and `child` is the supervisor; with `--harden off` it is `child`.
    pub fn serving_pid(&self) -> u32 {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok())
            .unwrap_or(pid)
    }

    /// Sends SIGTERM (to the supervisor, which forwards it).
    pub fn terminate(&self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Log lines collected so far.
    pub fn drain_logs(&self) -> Vec<String> {
        self.logs.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal blocking GET returning the status, for polling /ready from synchronous code (the
/// async reqwest client needs a runtime, which `Server::start` callers may not be in).
fn status_of_get(url: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad response"))
}

/// `curl -s -N -X <method> [-d <json body>] [-H <header>...] <url>`: (status, body). Streams
/// (`-N`) arrive whole once the server ends them.
pub fn curl(
    method: &str,
    url: &str,
    body: Option<&serde_json::Value>,
    headers: &[&str],
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-N", "-X", method, "-w", "\n%{http_code}", url]);
    if let Some(body) = body {
        cmd.args([
            "-H",
            "content-type: application/json",
            "-d",
            &body.to_string(),
        ]);
    }
    for header in headers {
        cmd.args(["-H", header]);
    }
    let out = cmd
        .output()
        .expect("curl (install it: apt-get install -y curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}
