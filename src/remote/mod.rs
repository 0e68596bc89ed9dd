//! Signed bundles from S3, OCI registries, HTTPS servers or mounted folders, verified and
//! streamed straight into memory: the `--model-url` half of the bundle → verify layer.
//!
//! Order, and why: the signing files (MANIFEST, its signatures, the public keys) are fetched
//! first and checked by seal-core's [`SignedManifest`], the same code that checks an embedded
//! bundle, so the trust anchors decide before a byte of payload is downloaded. The store's
//! listing (where it has one) is then held against MANIFEST: a missing or an extra file is
//! refused up front. Only then is each listed file streamed into a page-aligned anonymous region
//! sized in advance, hashed while it arrives (see [`download`]), compared with MANIFEST, and
//! made read-only. The result is an ordinary [`VerifiedBundle`]: nothing downstream can tell
//! (or needs to know) where the bytes came from, and no byte touched a disk on the way.

pub mod buffer;
pub mod download;
pub mod error;
pub mod file;
pub mod http;
pub mod oci;
pub mod progress;
pub mod publish;
pub mod registry_auth;
pub mod s3;
pub mod store;
pub mod tls;
pub mod url;

use crate::bundle::{
    missing_file, SignedManifest, TrustPolicy, VerifiedBundle, VerifyError, MANIFEST_FILE,
    SIGNING_FILES,
};
use crate::manifest::sha256_hex;
use crate::spec::METADATA_FILE;
pub use error::{FetchError, FetchErrorKind, RemoteError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Listed, Store};
pub use url::ModelUrl;

/// Largest signing file (MANIFEST, signature, key) accepted: they are a few KiB; a store that
/// sends more is not serving a bundle, and is not given memory for it.
pub const SIGNING_FILE_LIMIT: u64 = 1 << 20;
/// Parallel requests by default (`--fetch-connections`).
pub const DEFAULT_CONNECTIONS: std::num::NonZeroUsize = std::num::NonZeroUsize::new(4).unwrap();
/// Longest silence from a store before a request counts as timed out (`--fetch-timeout`).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How to fetch.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// `--ca-file`: trust only these CAs for TLS.
    pub ca_file: Option<PathBuf>,
    /// Parallel range requests in flight.
    pub connections: usize,
    /// Longest silence while connecting or reading before a request is retried.
    pub read_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            ca_file: None,
            connections: DEFAULT_CONNECTIONS.get(),
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }
}

/// What loading a bundle cost, for the startup log and `/info`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LoadReport {
    /// `embedded`, or the `--model-url` it came from.
    pub source: String,
    pub files: usize,
    pub bytes: u64,
    /// From the first request to the verified bundle (for an embedded bundle: hashing).
    pub load_ms: u64,
    pub throughput_mib_s: f64,
    /// Time spent hashing, mostly overlapping the download.
    pub hash_ms: u64,
    /// Parallel requests used (0 for an embedded bundle).
    pub connections: usize,
    /// Requests retried after a transient failure.
    pub retries: u64,
}

impl LoadReport {
    /// The report for the bundle embedded in the binary.
    pub fn embedded(verified: &VerifiedBundle) -> Self {
        Self::new(
            "embedded".into(),
            verified.files.len(),
            verified.bytes_hashed,
            verified.hash_time,
            verified.hash_time,
            0,
            0,
        )
    }

    fn new(
        source: String,
        files: usize,
        bytes: u64,
        elapsed: Duration,
        hash_time: Duration,
        connections: usize,
        retries: u64,
    ) -> Self {
        Self {
            source,
            files,
            bytes,
            load_ms: elapsed.as_millis() as u64,
            throughput_mib_s: (progress::mib(bytes) / elapsed.as_secs_f64().max(1e-6) * 10.0)
                .round()
                / 10.0,
            hash_ms: hash_time.as_millis() as u64,
            connections,
            retries,
        }
    }
}

/// A verified remote bundle and what fetching it cost.
pub struct Fetched {
    pub verified: VerifiedBundle<'static>,
    pub report: LoadReport,
}

/// Every file and folder fetching `url` may read, for `serve`'s start-up Landlock allow-list
/// (which is in force before the fetch starts): the TLS roots (`--ca-file`, else the system
/// store and the folders its links point into), the resolver's files and the libraries glibc
/// may load for them (NSS), the store's credential files (AWS profile files and web identity
/// token, registry auth files) and, for `file://`, the folder itself. Only paths that exist.
pub fn readable_paths(url: &ModelUrl, options: &FetchOptions) -> Vec<PathBuf> {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let var = |name: &str| {
        env.get(name)
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from)
    };
    let mut paths: Vec<PathBuf> = [
        "/etc/resolv.conf",
        "/etc/hosts",
        "/etc/nsswitch.conf",
        "/etc/host.conf",
        "/etc/gai.conf",
        "/run/systemd/resolve",
        "/lib",
        "/lib64",
        "/usr/lib",
        "/usr/lib64",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    paths.extend(options.ca_file.clone());
    // oci-client also builds a default HTTPS client, which reads the system store (see
    // `oci::client`), so an OCI fetch needs it even with --ca-file.
    if options.ca_file.is_none() || matches!(url, ModelUrl::Oci { .. }) {
        {
            paths.extend(
                [
                    "/etc/ssl",
                    "/etc/pki",
                    "/etc/ca-certificates",
                    "/usr/share/ca-certificates",
                    "/usr/local/share/ca-certificates",
                ]
                .into_iter()
                .map(PathBuf::from),
            );
            paths.extend(var("SSL_CERT_FILE"));
            paths.extend(var("SSL_CERT_DIR"));
        }
    }
    match url {
        ModelUrl::S3 { .. } => {
            let aws = var("HOME").map(|home| home.join(".aws"));
            paths.extend(aws);
            paths.extend(var("AWS_CONFIG_FILE"));
            paths.extend(var("AWS_SHARED_CREDENTIALS_FILE"));
            paths.extend(var("AWS_WEB_IDENTITY_TOKEN_FILE"));
        }
        ModelUrl::Oci { .. } => paths.extend(registry_auth::auth_files(&env)),
        ModelUrl::Http { .. } => {}
        ModelUrl::File { dir } => paths.push(dir.clone()),
    }
    paths.retain(|p| p.exists());
    paths
}

/// Fetches and verifies the bundle at `url` (see the module doc for the order of checks).
pub async fn fetch(
    url: &ModelUrl,
    policy: &TrustPolicy,
    options: &FetchOptions,
) -> Result<Fetched, RemoteError> {
    let started = Instant::now();
    let roots = tls::Roots::load(options.ca_file.as_deref())?;
    if matches!(url, ModelUrl::Http { base } if base.starts_with("http://"))
        || matches!(
            url,
            ModelUrl::Oci {
                plain_http: true,
                ..
            }
        )
    {
        tracing::warn!(url = %url, "plain HTTP: the signature still guards the bundle's integrity, but anyone on the path sees what is fetched");
    }
    tracing::info!(url = %url, trust_roots = %roots.origin, "fetching remote bundle");
    let store = Store::open(url, &roots, options).await?;
    let policy_retry = download::RetryPolicy::default();
    let listing = with_retries(&store, &policy_retry, &url.to_string(), || store.list()).await?;

    let signing = signing_files(&store, url, listing.as_ref(), &policy_retry).await?;
    let signed = SignedManifest::verify(&|name| signing.get(name).map(Vec::as_slice))?;
    // A store with a listing shows a missing or an extra file before anything is read.
    if let Some(listing) = listing.as_ref() {
        signed.check_coverage(
            listing
                .keys()
                .map(String::as_str)
                .filter(|n| !SIGNING_FILES.contains(n)),
        )?;
    }
    // sealserve.json decides trust (key pin, dev build, --expect-model): it is fetched, hashed
    // and judged before the payload is sized or a byte of the weights is asked for.
    if signed.manifest().digest(METADATA_FILE).is_none() {
        return Err(VerifyError::Manifest(format!("{METADATA_FILE} is not covered")).into());
    }
    let metadata_region = fetch_metadata(&store, url, &policy_retry).await?;
    signed.check_digest(METADATA_FILE, &sha256_hex(metadata_region.as_slice()))?;
    let accepted = signed.accept(policy, metadata_region.as_slice())?;
    let mut sizes = payload_sizes(&store, url, &signed, listing.as_ref(), &policy_retry).await?;
    sizes.remove(METADATA_FILE);
    let total: u64 = sizes.values().sum();
    tracing::info!(
        files = sizes.len(),
        total_mib = format!("{:.1}", progress::mib(total)),
        "MANIFEST signature verified; fetching the files it lists"
    );

    let mut jobs = Vec::with_capacity(sizes.len());
    for (name, size) in &sizes {
        let len = usize::try_from(*size).map_err(|_| {
            RemoteError::Config(format!("{name}: {size} bytes do not fit in memory"))
        })?;
        jobs.push(download::Job {
            name: name.clone(),
            region: buffer::Region::new(len).map_err(RemoteError::Memory)?,
        });
    }
    let progress = Arc::new(progress::Progress::new(total));
    let (fetched, stats) = {
        let _logger = progress.spawn_logger();
        download::download_all(&store, jobs, options.connections, &policy_retry, &progress).await?
    };
    // Every digest is checked before any region is handed out.
    for file in &fetched {
        signed.check_digest(&file.name, &file.sha256)?;
    }
    let metadata_len = metadata_region.len() as u64;
    let files: BTreeMap<String, &'static [u8]> = fetched
        .into_iter()
        .map(|file| (file.name, file.region.freeze()))
        .chain([(METADATA_FILE.to_string(), metadata_region.freeze())])
        .collect();
    let verified =
        signed.into_verified(accepted, files, stats.bytes + metadata_len, stats.hash_time)?;
    let report = LoadReport::new(
        url.to_string(),
        verified.files.len(),
        verified.bytes_hashed,
        started.elapsed(),
        stats.hash_time,
        options.connections,
        stats.retries,
    );
    Ok(Fetched { verified, report })
}

/// Runs a store request with retries, unless the store's client retries by itself.
async fn with_retries<T, F, Fut>(
    store: &Store,
    policy: &download::RetryPolicy,
    what: &str,
    op: F,
) -> Result<T, FetchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, FetchError>>,
{
    let once = download::RetryPolicy {
        attempts: 1,
        ..*policy
    };
    let policy = if store.retries_internally() || store.is_local() {
        &once
    } else {
        policy
    };
    download::with_retries(policy, what, op).await
}

/// MANIFEST, the signatures, the public keys and the dev-signed marker, whichever exist.
async fn signing_files(
    store: &Store,
    url: &ModelUrl,
    listing: Option<&BTreeMap<String, Listed>>,
    policy: &download::RetryPolicy,
) -> Result<BTreeMap<&'static str, Vec<u8>>, RemoteError> {
    let mut found = BTreeMap::new();
    for name in SIGNING_FILES {
        if listing.is_some_and(|l| !l.contains_key(name)) {
            continue;
        }
        let what = url.object(name);
        let bytes = with_retries(store, policy, &what, || {
            store.read_small(name, SIGNING_FILE_LIMIT)
        })
        .await?;
        if let Some(bytes) = bytes {
            found.insert(name, bytes);
        }
    }
    if !found.contains_key(MANIFEST_FILE) {
        return Err(FetchError::new(
            FetchErrorKind::NotFound,
            url.object(MANIFEST_FILE),
            "no MANIFEST there",
        )
        .into());
    }
    Ok(found)
}

/// The size of every file MANIFEST lists. With a listing, the payload must be exactly what
/// MANIFEST covers (refused as an embedded bundle would be), and an OCI layer addressed by
/// another digest than MANIFEST's is refused before it is downloaded. Without one (HTTP), each
/// file is sized with HEAD and a 404 is a missing file.
async fn payload_sizes(
    store: &Store,
    url: &ModelUrl,
    signed: &SignedManifest,
    listing: Option<&BTreeMap<String, Listed>>,
    policy: &download::RetryPolicy,
) -> Result<BTreeMap<String, u64>, RemoteError> {
    let mut sizes = BTreeMap::new();
    match listing {
        Some(listing) => {
            let present = listing
                .keys()
                .map(String::as_str)
                .filter(|n| !SIGNING_FILES.contains(n));
            signed.check_coverage(present)?;
            for (name, expected) in signed.manifest().entries() {
                let listed = &listing[name];
                if let Some(digest) = &listed.digest {
                    if digest != expected {
                        return Err(VerifyError::DigestMismatch {
                            name: name.to_string(),
                            expected: expected.to_string(),
                            actual: digest.clone(),
                        }
                        .into());
                    }
                }
                sizes.insert(name.to_string(), listed.size);
            }
        }
        None => {
            for (name, _) in signed.manifest().entries() {
                let what = url.object(name);
                match with_retries(store, policy, &what, || store.size(name)).await? {
                    Some(size) => sizes.insert(name.to_string(), size),
                    None => return Err(missing_file(name).into()),
                };
            }
        }
    }
    Ok(sizes)
}

/// `sealserve.json`, read whole into a region of its own (it becomes the verified copy).
async fn fetch_metadata(
    store: &Store,
    url: &ModelUrl,
    policy: &download::RetryPolicy,
) -> Result<buffer::Region, RemoteError> {
    let what = url.object(METADATA_FILE);
    let bytes = with_retries(store, policy, &what, || {
        store.read_small(METADATA_FILE, SIGNING_FILE_LIMIT)
    })
    .await?
    .ok_or_else(|| missing_file(METADATA_FILE))?;
    let mut region = buffer::Region::new(bytes.len()).map_err(RemoteError::Memory)?;
    // SAFETY: the region is `bytes.len()` writable bytes that nothing else references yet.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), region.as_mut_ptr(), bytes.len()) };
    Ok(region)
}
