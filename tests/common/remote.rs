//! Fixtures for the remote-bundle tests (tests/remote_*.rs): signed bundle folders, a private
//! CA, real protocol servers on 127.0.0.1 (an HTTPS/HTTP file server and an S3 proxy, both able
//! to inject faults; moto's S3 server with SigV4 enforced; Debian's docker-registry with
//! htpasswd auth over TLS), and a runner for `serve` refusals.
//!
//! Included by those tests as `#[path = "common/remote.rs"] mod remote;` beside `mod common;`,
//! so the other test binaries do not compile its servers.
//!
//! Tools (installed by .ci/run): `moto_server` (PyPI `moto[server]`, found through
//! `SEALSERVE_MOTO_SERVER`, PATH or /opt/sealserve-test/venv), `docker-registry`, `htpasswd`
//! (apache2-utils), `openssl`, `strace`.
#![allow(dead_code)]

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sealserve::bundle::{self, Bundle, SIGNING_FILES};
use sealserve::signature::SecretKey;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests that start servers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs a command, panicking with its output if it fails.
pub fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A private CA and a server certificate for 127.0.0.1 / localhost it signed.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |name: &str| dir.path().join(name);
        let openssl =
            |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir.path()));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=sealserve test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext.cnf");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        Pki {
            ca: p("ca.pem"),
            cert: p("server.pem"),
            key: p("server.key"),
            dir,
        }
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        sealserve::remote::tls::install_crypto_provider();
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .expect("server.pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_file(&self.key).expect("server.key");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// A bundle folder signed by a fresh release key, as `seal export` + a release signer make it.
pub struct Release {
    pub dir: tempfile::TempDir,
    pub key: SecretKey,
    pub fingerprint: String,
}

impl Release {
    /// The payload of `bundle` (every file MANIFEST covers) re-signed with a new key.
    pub fn from_bundle(bundle: &[u8]) -> Release {
        let parsed = Bundle::parse(bundle).expect("parse bundle");
        let dir = tempfile::tempdir().expect("tempdir");
        for entry in parsed.entries() {
            if !SIGNING_FILES.contains(&entry.name.as_str()) {
                let bytes = parsed
                    .read_entry(&entry.name)
                    .expect("read entry")
                    .expect("entry");
                std::fs::write(dir.path().join(&entry.name), bytes).expect("write payload");
            }
        }
        let key = SecretKey::generate();
        let release = Release {
            fingerprint: key.public_key().fingerprint(),
            dir,
            key,
        };
        // A release: the build's signed metadata says dev-signed (this build's ephemeral key);
        // the release key signs a bundle that says it is not, as a release build's does.
        let metadata_path = release.path(sealserve::spec::METADATA_FILE);
        let metadata = std::fs::read(&metadata_path).expect("sealserve.json");
        let mut metadata: serde_json::Value =
            serde_json::from_slice(&metadata).expect("sealserve.json is JSON");
        metadata["dev_signed"] = serde_json::Value::Bool(false);
        std::fs::write(&metadata_path, metadata.to_string()).expect("write sealserve.json");
        release.resign();
        release
    }

    /// Writes MANIFEST and its signing files, signed with this release's key.
    pub fn sign(&self, manifest: &[u8]) {
        let signature = self
            .key
            .sign(manifest, bundle::MANIFEST_FILE, 1_700_000_000);
        for (name, bytes) in bundle::signing_entries(manifest, &signature, &self.key.public_key()) {
            std::fs::write(self.path(&name), bytes).expect("write signing file");
        }
    }

    /// Re-signs the folder as it is now (a new MANIFEST over its files, signed with this
    /// release's key): a bundle whose signature is valid whatever was changed.
    pub fn resign(&self) {
        let manifest = sealserve::seal::manifest_for_dir(self.dir.path()).expect("MANIFEST");
        self.sign(&manifest);
    }

    /// The tiny random-weight BERT (tests/common/tiny.rs).
    pub fn tiny() -> Release {
        let (weights, _) = crate::common::tiny::weights("", None);
        let (bytes, _) = crate::common::tiny::bundle_bytes(&weights, false);
        Release::from_bundle(&bytes)
    }

    /// The real MiniLM bundle of this build, signed by a release key.
    pub fn minilm() -> Release {
        Release::from_bundle(crate::common::bundle_bytes())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn file_url(&self) -> String {
        format!("file://{}/", self.dir.path().display())
    }

    /// Bytes of the payload (everything but signing files).
    pub fn payload_bytes(&self) -> u64 {
        std::fs::read_dir(self.dir.path())
            .expect("list")
            .map(|e| e.expect("entry"))
            .filter(|e| !SIGNING_FILES.contains(&e.file_name().to_string_lossy().as_ref()))
            .map(|e| e.metadata().expect("metadata").len())
            .sum()
    }
}

/// Faults a test server injects, by file name (the last path segment).
#[derive(Default)]
pub struct Faults {
    fail_once: Mutex<HashMap<String, u16>>,
    cut_once: Mutex<HashSet<String>>,
    cut_always: Mutex<HashSet<String>>,
    always: Mutex<HashMap<String, u16>>,
    seen: Mutex<Vec<String>>,
}

impl Faults {
    /// The next request for `name` is answered with `status` (and nothing else).
    pub fn fail_once(&self, name: &str, status: u16) {
        self.fail_once.lock().unwrap().insert(name.into(), status);
    }

    /// The next GET for `name` sends half of its body, then the connection is reset.
    pub fn cut_once(&self, name: &str) {
        self.cut_once.lock().unwrap().insert(name.into());
    }

    /// Every GET for `name` sends half of its body, then the connection is reset.
    pub fn cut_always(&self, name: &str) {
        self.cut_always.lock().unwrap().insert(name.into());
    }

    /// Every request for `name` is answered with `status`.
    pub fn always(&self, name: &str, status: u16) {
        self.always.lock().unwrap().insert(name.into(), status);
    }

    /// `METHOD name [range]` of every request so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// What to do with a request: an error status to answer with, or whether to cut the body.
    fn decide(&self, method: &Method, name: &str, headers: &HeaderMap) -> (Option<u16>, bool) {
        let range = headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        self.seen
            .lock()
            .unwrap()
            .push(format!("{method} {name} {range}").trim().to_string());
        if let Some(status) = self.always.lock().unwrap().get(name) {
            return (Some(*status), false);
        }
        if let Some(status) = self.fail_once.lock().unwrap().remove(name) {
            return (Some(status), false);
        }
        let cut = *method == Method::GET
            && (self.cut_once.lock().unwrap().remove(name)
                || self.cut_always.lock().unwrap().contains(name));
        (None, cut)
    }
}

fn error_response(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, format!("injected {status}")).into_response()
}

/// A body that sends `bytes[..cut]` and then fails, so the server drops the connection. The
/// failure waits a moment, so the first part has left the server (and reached the client's
/// socket) before the connection is torn down: the client then holds exactly `cut` bytes.
fn cut_body(bytes: bytes::Bytes, cut: usize) -> Body {
    let stream = futures_util::stream::unfold(0u8, move |step| {
        let bytes = bytes.clone();
        async move {
            match step {
                0 => Some((Ok(bytes.slice(..cut)), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Some((Err(std::io::Error::other("injected connection reset")), 2))
                }
                _ => None,
            }
        }
    });
    Body::from_stream(stream)
}

/// A server running on a tokio runtime of its own (so blocking tests can use it too).
struct Background {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Background {
    fn new() -> Background {
        Background {
            runtime: Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime"),
            ),
        }
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct TlsListener {
    inner: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.inner.accept().await else {
                continue;
            };
            // A failed handshake (a client refusing our certificate) is the client's business.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Serves a folder's files under `/bundle/` over HTTP or HTTPS, with GET, HEAD and `Range`,
/// and injects [`Faults`].
pub struct FileServer {
    /// `http(s)://127.0.0.1:PORT/bundle/`
    pub base: String,
    pub faults: Arc<Faults>,
    _background: Background,
}

struct FileState {
    dir: PathBuf,
    faults: Arc<Faults>,
}

impl FileServer {
    pub fn start(dir: &Path, tls: Option<&Pki>) -> FileServer {
        let background = Background::new();
        let faults = Arc::new(Faults::default());
        let state = Arc::new(FileState {
            dir: dir.to_path_buf(),
            faults: faults.clone(),
        });
        let app = axum::Router::new().fallback(serve_file).with_state(state);
        let acceptor = tls.map(Pki::acceptor);
        let port = background.runtime().block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            match acceptor {
                Some(acceptor) => {
                    tokio::spawn(async move {
                        let _ = axum::serve(
                            TlsListener {
                                inner: listener,
                                acceptor,
                            },
                            app,
                        )
                        .await;
                    });
                }
                None => {
                    tokio::spawn(async move {
                        let _ = axum::serve(listener, app).await;
                    });
                }
            }
            port
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        FileServer {
            base: format!("{scheme}://127.0.0.1:{port}/bundle/"),
            faults,
            _background: background,
        }
    }
}

async fn serve_file(State(state): State<Arc<FileState>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let Some(name) = path.strip_prefix("/bundle/") else {
        return error_response(404);
    };
    let (status, cut) = state
        .faults
        .decide(request.method(), name, request.headers());
    if let Some(status) = status {
        return error_response(status);
    }
    if name.contains('/') || name.starts_with('.') {
        return error_response(404);
    }
    let Ok(bytes) = std::fs::read(state.dir.join(name)) else {
        return error_response(404);
    };
    let total = bytes.len() as u64;
    let range = request
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    let (status, body, content_range) = match range {
        Some((start, end)) if start < total => {
            let end = end.min(total - 1);
            (
                StatusCode::PARTIAL_CONTENT,
                bytes::Bytes::from(bytes).slice(start as usize..=end as usize),
                Some(format!("bytes {start}-{end}/{total}")),
            )
        }
        Some(_) => return error_response(416),
        None => (StatusCode::OK, bytes::Bytes::from(bytes), None),
    };
    let len = body.len();
    let mut response = if request.method() == Method::HEAD {
        Response::new(Body::empty())
    } else if cut {
        Response::new(cut_body(body, len / 2))
    } else {
        Response::new(Body::from(body))
    };
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("content-length", HeaderValue::from(len));
    headers.insert("accept-ranges", HeaderValue::from_static("bytes"));
    if let Some(range) = content_range {
        headers.insert(
            "content-range",
            HeaderValue::from_str(&range).expect("header"),
        );
    }
    response
}

/// A reverse proxy in front of an S3 server that passes requests through unchanged (SigV4
/// signs the Host header, which it keeps) and injects [`Faults`] on object names.
pub struct S3Proxy {
    /// `http://127.0.0.1:PORT`, to use as AWS_ENDPOINT_URL.
    pub endpoint: String,
    pub faults: Arc<Faults>,
    _background: Background,
}

struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    faults: Arc<Faults>,
}

impl S3Proxy {
    pub fn start(upstream: &str) -> S3Proxy {
        sealserve::remote::tls::install_crypto_provider();
        let background = Background::new();
        let faults = Arc::new(Faults::default());
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::new(),
            faults: faults.clone(),
        });
        let app = axum::Router::new().fallback(proxy).with_state(state);
        let port = background.runtime().block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            port
        });
        S3Proxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            faults,
            _background: background,
        }
    }
}

async fn proxy(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    let method = request.method().clone();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let name = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let (status, cut) = state.faults.decide(&method, &name, request.headers());
    if let Some(status) = status {
        return error_response(status);
    }
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let upstream = state
        .client
        .request(method, format!("{}{path_and_query}", state.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let Ok(upstream) = upstream else {
        return error_response(502);
    };
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let bytes = upstream.bytes().await.unwrap_or_default();
    let len = bytes.len();
    let mut response = if cut && len > 1 {
        Response::new(cut_body(bytes, len / 2))
    } else {
        Response::new(Body::from(bytes))
    };
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name != "transfer-encoding" && name != "connection" {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// Where moto's S3 server is installed (see .ci/run).
fn moto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SEALSERVE_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    for candidate in ["/opt/sealserve-test/venv/bin/moto_server"] {
        if Path::new(candidate).is_file() {
            return PathBuf::from(candidate);
        }
    }
    if let Some(path) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    }) {
        return path;
    }
    panic!("moto_server is required for the S3 tests: python3 -m venv /opt/sealserve-test/venv && /opt/sealserve-test/venv/bin/pip install 'moto[server]' (or set SEALSERVE_MOTO_SERVER); .ci/run installs it");
}

/// A process killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 60 s");
}

/// moto's S3 server with authentication enforced: after the few set-up calls, every request
/// must carry a valid SigV4 signature of the user created here (moto checks the signature and
/// the user's IAM policy).
pub struct Moto {
    _process: Process,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

/// Set-up calls moto answers before it starts enforcing authentication.
const MOTO_UNAUTHENTICATED_CALLS: usize = 3;

impl Moto {
    pub fn start(buckets: &[&str]) -> Moto {
        let port = free_port();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env(
                "INITIAL_NO_AUTH_ACTION_COUNT",
                (MOTO_UNAUTHENTICATED_CALLS + buckets.len()).to_string(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        let process = Process(child);
        wait_for_port(port, "moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let unsigned = |service: &str| {
            format!("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0")
        };
        sealserve::remote::tls::install_crypto_provider();
        let client = reqwest::blocking::Client::new();
        let iam = |form: &[(&str, &str)]| -> String {
            let response = client
                .post(format!("{endpoint}/"))
                .header("authorization", unsigned("iam"))
                .form(form)
                .send()
                .expect("moto IAM call");
            let status = response.status();
            let text = response.text().expect("moto IAM answer");
            assert!(status.is_success(), "moto IAM {form:?}: {status} {text}");
            text
        };
        for bucket in buckets {
            let response = client
                .put(format!("{endpoint}/{bucket}"))
                .header("authorization", unsigned("s3"))
                .send()
                .expect("moto create bucket");
            assert!(
                response.status().is_success(),
                "create bucket {bucket}: {}",
                response.status()
            );
        }
        iam(&[
            ("Action", "CreateUser"),
            ("UserName", "sealserve"),
            ("Version", "2010-05-08"),
        ]);
        iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", "sealserve"),
            ("PolicyName", "s3"),
            (
                "PolicyDocument",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#,
            ),
            ("Version", "2010-05-08"),
        ]);
        let keys = iam(&[
            ("Action", "CreateAccessKey"),
            ("UserName", "sealserve"),
            ("Version", "2010-05-08"),
        ]);
        let field = |tag: &str| {
            keys.split(&format!("<{tag}>"))
                .nth(1)
                .and_then(|rest| rest.split(&format!("</{tag}>")).next())
                .unwrap_or_else(|| panic!("no {tag} in {keys}"))
                .to_string()
        };
        Moto {
            access_key: field("AccessKeyId"),
            secret_key: field("SecretAccessKey"),
            endpoint,
            _process: process,
        }
    }

    /// The AWS environment that reaches this server (through `endpoint`, e.g. a proxy).
    pub fn env_via(&self, endpoint: &str) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), endpoint.into()),
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    pub fn env(&self) -> Vec<(String, String)> {
        self.env_via(&self.endpoint)
    }
}

/// Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 with TLS from `pki` and htpasswd
/// authentication, storage in a temporary folder.
pub struct Registry {
    _process: Process,
    _dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    pub host: String,
    pub username: String,
    pub password: String,
}

impl Registry {
    pub fn start(pki: &Pki) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let username = "sealserve".to_string();
        let password = "registry-secret".to_string();
        let htpasswd = run(Command::new("htpasswd").args(["-Bbn", &username, &password]));
        std::fs::write(dir.path().join("htpasswd"), htpasswd).expect("htpasswd");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {cert}\n    key: {key}\nauth:\n  htpasswd:\n    realm: sealserve-test\n    path: {htpasswd}\n",
            storage = dir.path().join("storage").display(),
            cert = pki.cert.display(),
            key = pki.key.display(),
            htpasswd = dir.path().join("htpasswd").display(),
        );
        std::fs::write(dir.path().join("config.yml"), config).expect("config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker-registry (apt-get install -y docker-registry)");
        let process = Process(child);
        wait_for_port(port, "docker-registry");
        Registry {
            _process: process,
            _dir: dir,
            host: format!("127.0.0.1:{port}"),
            username,
            password,
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SEALSERVE_REGISTRY_USERNAME".into(), self.username.clone()),
            ("SEALSERVE_REGISTRY_PASSWORD".into(), self.password.clone()),
        ]
    }
}

/// How a `serve` run that should not serve ended.
pub struct Refusal {
    pub code: i32,
    pub stderr: String,
}

/// Runs `serve` with these arguments and environment (and nothing inherited from the AWS or
/// registry environment of the test process) and expects it to exit without ever listening.
pub fn serve_refuses(args: &[&str], env: &[(String, String)]) -> Refusal {
    let mut command = Command::new(env!("CARGO_BIN_EXE_serve"));
    command
        .args(["--host", "127.0.0.1", "--port", "0", "--harden", "off"])
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("HOME", "/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn serve");
    let stderr = child.stderr.take().expect("stderr");
    let lines: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = child.wait().expect("serve exits");
    let stderr = lines.join("\n");
    assert!(
        !stderr.contains("\"bound\"") && !stderr.contains(" bound"),
        "serve listened although it should have refused:\n{stderr}"
    );
    Refusal {
        code: status.code().unwrap_or(-1),
        stderr,
    }
}

/// The last line of serve's stderr (its one-line reason).
pub fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or_default()
}
