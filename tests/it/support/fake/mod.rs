//! [`FakeUpstream`]: an in-process registry.k8s.io look-alike for the integration
//! tests, on its own tokio runtime (so sync tests that shell out and async tests
//! can both use it), listening on three 127.0.0.1 ports and stopped on drop:
//!
//! - **front** (registry.k8s.io / archeio): `/v2/` answers 200; every other
//!   `/v2/<rest>` is a 307 to the registry host's `/v2/<AR_PREFIX>/<rest>`, with
//!   the query string dropped, as archeio does.
//! - **registry** (Artifact Registry): manifests, tags/list and blob requests for
//!   `/v2/<AR_PREFIX>/<name>/...`; a blob GET/HEAD answers 302 with a *relative*
//!   `Location: /artifacts-downloads/...`, which this host then 302s to storage.
//!   [`FakeUpstream::k8s_like_with_token`] makes it demand a Bearer token from
//!   its own `/v2/token` endpoint.
//! - **storage** (S3/GCS): serves the blob bytes (HEAD, GET, `Range`) and records
//!   a violation if a request ever carries `Authorization`.
//!
//! Content is what the test puts in ([`FakeUpstream::put_blob`],
//! [`FakeUpstream::put_manifest`]); blob bodies are streamed as slices of the
//! stored `Bytes`, never copied per request, so multi-GiB blobs are fine. Every
//! request is recorded (for hit counts) and faults can be switched on: down,
//! a status for everything, wrong bytes, a cut body (every time, or once), a
//! paused or throttled body, a blob answer held back before its headers; and
//! Docker Hub's pull quota on manifest GETs ([`FakeUpstream::set_pull_quota`]).
//!
//! [`FakeUpstream::k8s_like_tls`] serves the same chain over TLS, the three
//! hosts on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (so a proxy ACL, which matches
//! hosts and not ports, can tell them apart), with the caller's rustls server
//! configuration (its certificate and its ALPN offer, so HTTP/2 or HTTP/1.1).
//!
//! It never talks to anything but loopback and never outlives its handle; it
//! panics on drop (outside an existing panic) if a violation was recorded.
//!
//! This file holds the state and the test-facing API; `hosts` the three hosts'
//! handlers, `token` the token flow, `faults` the fault switches and what they
//! do to connections and bodies.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::http::Method;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

/// The fault switches and what they do to connections and bodies.
mod faults;
/// The three hosts' handlers: front (archeio), registry (Artifact Registry), storage.
mod hosts;
/// Docker Hub's pull quota (ratelimit headers, 429) on the registry host.
mod quota;
/// The registry host's token endpoint and its Bearer challenge.
mod token;

use faults::{FakeListener, Faults};
use hosts::{HostState, handle};

/// The path the front host prepends on its 307 (archeio's `UPSTREAM_REGISTRY_PATH`).
pub const AR_PREFIX: &str = "k8s-artifacts-prod/images";
/// Bytes per body chunk when no throttle is set.
const CHUNK: usize = 256 * 1024;

/// Which of the fake's hosts saw a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    Front,
    Registry,
    Storage,
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub host: Host,
    pub method: Method,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
    /// HTTP/1.1 or HTTP/2.
    pub version: axum::http::Version,
}

/// What a blob's bytes are: stored bytes, or one block repeated (a 1 GiB blob
/// without 1 GiB of memory).
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Bytes),
    Repeat { block: Bytes, count: u64 },
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Repeat { block, count } => block.len() as u64 * count,
        }
    }

    #[allow(dead_code)] // clippy wants it beside len()
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `sha256:<hex>` of the whole content.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        match self {
            Content::Bytes(b) => hasher.update(b),
            Content::Repeat { block, count } => {
                for _ in 0..*count {
                    hasher.update(block);
                }
            }
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }

    /// Bytes from `start`, at most up to `end` (may be shorter: a repeated
    /// content's slice never crosses a block boundary). Zero-copy.
    fn slice(&self, start: u64, end: u64) -> Bytes {
        match self {
            Content::Bytes(b) => b.slice(start as usize..end as usize),
            Content::Repeat { block, .. } => {
                let block_len = block.len() as u64;
                let offset = start % block_len;
                let take = (end - start).min(block_len - offset);
                block.slice(offset as usize..(offset + take) as usize)
            }
        }
    }
}

#[derive(Debug, Clone)]
struct StoredManifest {
    media_type: String,
    bytes: Bytes,
}

#[derive(Debug, Default)]
struct FakeState {
    blobs: HashMap<String, Content>,
    blob_links: HashSet<(String, String)>,
    manifests: HashMap<(String, String), StoredManifest>,
    tags: BTreeMap<(String, String), String>,
    /// Referrers indexes by (repository, subject digest); others get an empty one.
    referrers: HashMap<(String, String), Bytes>,
    seen: Vec<Seen>,
    violations: Vec<String>,
    /// Issued token → the scope it grants.
    tokens: HashMap<String, String>,
    /// Download token → digest.
    downloads: HashMap<String, String>,
    sent: HashMap<String, u64>,
    faults: Faults,
    tag_page_size: Option<usize>,
    /// Docker Hub's pull quota, when switched on.
    quota: Option<quota::PullQuota>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<FakeState>,
    down: AtomicBool,
    /// Bumped whenever a pause is lifted or the fake goes down.
    wake: tokio::sync::watch::Sender<u64>,
    counter: AtomicU64,
    auth: bool,
    /// `http` or `https`, in every URL the hosts hand out.
    scheme: &'static str,
    front: SocketAddr,
    registry: SocketAddr,
    storage: SocketAddr,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        self.wake.send_modify(|n| *n += 1);
    }
}

/// The fake upstream; see the module documentation.
#[derive(Debug)]
pub struct FakeUpstream {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeUpstream {
    /// Anonymous registry.k8s.io-like chain: front 307 → registry 302 (relative)
    /// → registry 302 → storage.
    pub fn k8s_like() -> Self {
        Self::start(false, None)
    }

    /// The same chain over TLS with `tls` on each host (127.0.0.1, .2 and .3).
    pub fn k8s_like_tls(tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start(false, Some(tls))
    }

    /// Same, but the registry host demands a Bearer token from its `/v2/token`.
    pub fn k8s_like_with_token() -> Self {
        Self::start(true, None)
    }

    fn start(auth: bool, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let bind = |ip: &str| {
            let listener = std::net::TcpListener::bind((ip, 0)).expect("bind fake upstream");
            listener.set_nonblocking(true).expect("nonblocking");
            let addr = listener.local_addr().expect("local addr");
            (listener, addr)
        };
        let ips = match tls {
            Some(_) => ["127.0.0.1", "127.0.0.2", "127.0.0.3"],
            None => ["127.0.0.1"; 3],
        };
        let (front_l, front) = bind(ips[0]);
        let (registry_l, registry) = bind(ips[1]);
        let (storage_l, storage) = bind(ips[2]);
        let shared = Arc::new(Shared {
            state: Mutex::new(FakeState::default()),
            down: AtomicBool::new(false),
            wake: tokio::sync::watch::Sender::new(0),
            counter: AtomicU64::new(0),
            auth,
            scheme: if tls.is_some() { "https" } else { "http" },
            front,
            registry,
            storage,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-upstream")
            .enable_all()
            .build()
            .expect("fake upstream runtime");
        for (listener, host) in [
            (front_l, Host::Front),
            (registry_l, Host::Registry),
            (storage_l, Host::Storage),
        ] {
            let shared = Arc::clone(&shared);
            let tls = tls.clone();
            runtime.spawn(async move {
                let tcp = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let listener = FakeListener::new(tcp, tls, Arc::clone(&shared));
                let app = Router::new()
                    .fallback(handle)
                    .with_state(HostState { shared, host });
                let _ = axum::serve(listener, app).await;
            });
        }
        FakeUpstream {
            shared,
            runtime: Some(runtime),
        }
    }

    /// The front URL, to pass as `--upstream`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.shared.scheme, self.shared.front)
    }

    /// `http(s)://<addr>` of one of the hosts.
    #[allow(dead_code)] // for tests that talk to a host directly
    pub fn host_url(&self, host: Host) -> String {
        let addr = match host {
            Host::Front => self.shared.front,
            Host::Registry => self.shared.registry,
            Host::Storage => self.shared.storage,
        };
        format!("{}://{addr}", self.shared.scheme)
    }

    /// Stores a blob for `repo` (the client-visible name, e.g. `pause`); returns
    /// its `sha256:` digest.
    pub fn put_blob(&self, repo: &str, bytes: Bytes) -> String {
        self.put_content(repo, Content::Bytes(bytes))
    }

    /// Stores any [`Content`] as a blob of `repo`; returns its digest.
    pub fn put_content(&self, repo: &str, content: Content) -> String {
        let digest = content.digest();
        self.put_content_with_digest(repo, &digest, content);
        digest
    }

    /// Stores content under a digest the caller computed (skips hashing).
    pub fn put_content_with_digest(&self, repo: &str, digest: &str, content: Content) {
        let mut state = self.shared.state();
        state.blobs.insert(digest.to_owned(), content);
        state
            .blob_links
            .insert((repo.to_owned(), digest.to_owned()));
    }

    /// Makes an already stored blob available in another repository too.
    pub fn link_blob(&self, repo: &str, digest: &str) {
        self.shared
            .state()
            .blob_links
            .insert((repo.to_owned(), digest.to_owned()));
    }

    /// Stores a manifest for `repo`, pointing `tag` at it if given (moving the
    /// tag if it existed); returns its digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: Bytes,
    ) -> String {
        let digest = Content::Bytes(bytes.clone()).digest();
        let mut state = self.shared.state();
        state.manifests.insert(
            (repo.to_owned(), digest.clone()),
            StoredManifest {
                media_type: media_type.to_owned(),
                bytes,
            },
        );
        if let Some(tag) = tag {
            state
                .tags
                .insert((repo.to_owned(), tag.to_owned()), digest.clone());
        }
        digest
    }

    /// Removes a tag (the upstream then answers 404 for it).
    pub fn delete_tag(&self, repo: &str, tag: &str) {
        self.shared
            .state()
            .tags
            .remove(&(repo.to_owned(), tag.to_owned()));
    }

    /// Answer tags/list in pages of `n` with a relative `Link` to the next page.
    pub fn set_tag_page_size(&self, n: Option<usize>) {
        self.shared.state().tag_page_size = n;
    }

    /// Requests seen on any host whose path contains `path_contains`. One blob
    /// GET through the chain is seen by every host it crosses (front, registry
    /// and storage all have the digest in their path); use [`Self::hits_on`] to
    /// count one host.
    pub fn hits(&self, path_contains: &str) -> usize {
        self.count(|s| s.path.contains(path_contains))
    }

    /// Requests seen on `host` with `method` whose path contains `path_contains`.
    pub fn hits_on(&self, host: Host, method: Method, path_contains: &str) -> usize {
        self.count(|s| s.host == host && s.method == method && s.path.contains(path_contains))
    }

    /// Requests matching `pred`.
    pub fn count(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.shared.state().seen.iter().filter(|s| pred(s)).count()
    }

    /// Every request seen so far, in order.
    /// The `Range` header of every storage GET of `digest`, in order.
    pub fn storage_gets(&self, digest: &str) -> Vec<Option<String>> {
        self.requests()
            .into_iter()
            .filter(|s| {
                s.host == Host::Storage && s.method == Method::GET && s.path.contains(digest)
            })
            .map(|s| s.range)
            .collect()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.shared.state().seen.clone()
    }

    /// Total requests seen so far (to compare before/after).
    pub fn total_hits(&self) -> usize {
        self.shared.state().seen.len()
    }

    /// Body bytes storage has sent for `digest` so far (all requests).
    pub fn sent(&self, digest: &str) -> u64 {
        self.shared
            .state()
            .sent
            .get(digest)
            .copied()
            .unwrap_or_default()
    }

    /// What went wrong on the fake's side (Authorization to storage, bad tokens).
    pub fn violations(&self) -> Vec<String> {
        self.shared.state().violations.clone()
    }

    /// Answer `GET /v2/<repo>/referrers/<subject>` with `index`, whatever the
    /// `artifactType` query (as a registry that does not filter).
    pub fn put_referrers(&self, repo: &str, subject: &str, index: Bytes) {
        let key = (repo.to_owned(), subject.to_owned());
        self.shared.state().referrers.insert(key, index);
    }

    /// Panics with the recorded violations, if any.
    pub fn assert_no_violations(&self) {
        let violations = self.violations();
        assert!(
            violations.is_empty(),
            "fake upstream violations: {violations:#?}"
        );
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.set_down(true);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        if !std::thread::panicking() {
            self.assert_no_violations();
        }
    }
}
