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
//! paused or throttled body, a blob answer held back before its headers.
//!
//! [`FakeUpstream::k8s_like_tls`] serves the same chain over TLS, the three
//! hosts on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (so a proxy ACL, which matches
//! hosts and not ports, can tell them apart), with the caller's rustls server
//! configuration (its certificate and its ALPN offer, so HTTP/2 or HTTP/1.1).
//!
//! It never talks to anything but loopback and never outlives its handle; it
//! panics on drop (outside an existing panic) if a violation was recorded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

/// The fault switches.
#[derive(Debug, Default)]
struct Faults {
    fail_status: Option<u16>,
    wrong_bytes: HashSet<String>,
    cut_after: HashMap<String, u64>,
    cut_once: HashMap<String, u64>,
    pause_after: HashMap<String, u64>,
    throttle: Option<(usize, Duration)>,
    hold_manifests: bool,
    no_content_length: bool,
    hold_blobs: HashSet<String>,
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

    /// Unreachable: while down, new connections are closed at once and open
    /// ones fail on their next read or write.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        self.shared.wake();
    }

    /// Answer every request on every host with this status (e.g. 500).
    pub fn set_fail_status(&self, status: Option<u16>) {
        self.shared.state().faults.fail_status = status;
    }

    /// Hold every manifest request at the registry host until released.
    pub fn hold_manifests(&self, hold: bool) {
        self.shared.state().faults.hold_manifests = hold;
        self.shared.wake();
    }

    /// Hold every storage request (GET or HEAD) for blob `digest` before it is
    /// answered (it is recorded as seen first), until released: the fill that
    /// sent it waits for the upstream's headers meanwhile.
    pub fn hold_blob(&self, digest: &str, hold: bool) {
        {
            let mut state = self.shared.state();
            if hold {
                state.faults.hold_blobs.insert(digest.to_owned());
            } else {
                state.faults.hold_blobs.remove(digest);
            }
        }
        self.shared.wake();
    }

    /// Storage sends blob bodies without Content-Length (chunked), as some CDNs do.
    pub fn set_no_content_length(&self, on: bool) {
        self.shared.state().faults.no_content_length = on;
    }

    /// Serve `digest` (blob or manifest) with its last byte changed, same length.
    pub fn set_wrong_bytes(&self, digest: &str, on: bool) {
        let mut state = self.shared.state();
        if on {
            state.faults.wrong_bytes.insert(digest.to_owned());
        } else {
            state.faults.wrong_bytes.remove(digest);
        }
    }

    /// Cut the connection after `n` body bytes of blob `digest`.
    pub fn set_cut_after(&self, digest: &str, n: Option<u64>) {
        let mut state = self.shared.state();
        match n {
            Some(n) => state.faults.cut_after.insert(digest.to_owned(), n),
            None => state.faults.cut_after.remove(digest),
        };
    }

    /// Cut the connection at byte `n` of blob `digest` once: the first GET whose
    /// body would cross byte `n` is cut there, later ones are served whole.
    pub fn set_cut_once(&self, digest: &str, n: u64) {
        self.shared
            .state()
            .faults
            .cut_once
            .insert(digest.to_owned(), n);
    }

    /// Send `n` body bytes of blob `digest`, then wait until [`Self::resume`].
    pub fn pause_after(&self, digest: &str, n: u64) {
        self.shared
            .state()
            .faults
            .pause_after
            .insert(digest.to_owned(), n);
    }

    /// Lets paused bodies of `digest` continue.
    pub fn resume(&self, digest: &str) {
        self.shared.state().faults.pause_after.remove(digest);
        self.shared.wake();
    }

    /// Send blob bodies in chunks of `chunk` bytes with `delay` before each.
    pub fn set_throttle(&self, throttle: Option<(usize, Duration)>) {
        self.shared.state().faults.throttle = throttle;
    }

    /// Forgets every issued token: the next request with one gets a 401.
    pub fn revoke_tokens(&self) {
        self.shared.state().tokens.clear();
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

/// Accepts connections (over TLS when configured), dropping them at once
/// while the fake is down.
struct FakeListener {
    local: SocketAddr,
    shared: Arc<Shared>,
    accepted: Accepted,
}

enum Accepted {
    Plain(tokio::net::TcpListener),
    /// Connections whose TLS handshake succeeded, from a task that accepts
    /// and handshakes each connection on its own (a stalled or failed
    /// handshake holds up nobody else).
    Tls(tokio::sync::mpsc::Receiver<(FakeStream, SocketAddr)>),
}

/// What a connection is read from: plain TCP or TLS over it.
trait FakeStreamIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> FakeStreamIo for T {}
type FakeStream = Box<dyn FakeStreamIo>;

impl FakeListener {
    fn new(
        tcp: tokio::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        shared: Arc<Shared>,
    ) -> Self {
        let local = tcp.local_addr().expect("local addr");
        let accepted = match tls {
            None => Accepted::Plain(tcp),
            Some(config) => Accepted::Tls(spawn_tls_acceptor(tcp, config)),
        };
        Self {
            local,
            shared,
            accepted,
        }
    }
}

fn spawn_tls_acceptor(
    tcp: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio::sync::mpsc::Receiver<(FakeStream, SocketAddr)> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, addr)) = tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = acceptor.accept(stream);
                // A client that rejects our certificate ends the handshake;
                // that is the test's business, not an error here.
                if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), handshake).await
                {
                    let _ = tx.send((Box::new(tls) as FakeStream, addr)).await;
                }
            });
        }
    });
    rx
}

impl axum::serve::Listener for FakeListener {
    type Io = FakeIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (FakeIo, SocketAddr) {
        loop {
            let (stream, addr) = match &mut self.accepted {
                Accepted::Plain(tcp) => match tokio::net::TcpListener::accept(tcp).await {
                    Ok((stream, addr)) => (Box::new(stream) as FakeStream, addr),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                Accepted::Tls(rx) => match rx.recv().await {
                    Some(accepted) => accepted,
                    None => std::future::pending().await,
                },
            };
            if self.shared.down.load(Ordering::SeqCst) {
                drop(stream);
                continue;
            }
            let io = FakeIo {
                stream,
                shared: Arc::clone(&self.shared),
            };
            return (io, addr);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// A connection that fails every read and write while the fake is down.
struct FakeIo {
    stream: FakeStream,
    shared: Arc<Shared>,
}

impl FakeIo {
    fn check(&self) -> io::Result<()> {
        if self.shared.down.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "fake upstream is down",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for FakeIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for FakeIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[derive(Clone)]
struct HostState {
    shared: Arc<Shared>,
    host: Host,
}

async fn handle(State(hs): State<HostState>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let headers = request.headers().clone();
    let header_str = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let seen = Seen {
        host: hs.host,
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        authorization: header_str(header::AUTHORIZATION),
        range: header_str(header::RANGE),
        version: request.version(),
    };
    let fail_status = {
        let mut state = hs.shared.state();
        if hs.host != Host::Registry {
            if let Some(auth) = &seen.authorization {
                let what = format!(
                    "{:?} got Authorization {auth:?} on {method} {path}",
                    hs.host
                );
                state.violations.push(what);
            }
        }
        state.seen.push(seen);
        state.faults.fail_status
    };
    if let Some(status) = fail_status {
        return oci_error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "UNKNOWN",
            "injected failure",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "Only GET and HEAD are allowed.",
        );
    }
    let head = method == Method::HEAD;
    if hs.host == Host::Registry && path.contains("/manifests/") {
        let mut wake = hs.shared.wake.subscribe();
        while hs.shared.state().faults.hold_manifests && !hs.shared.down.load(Ordering::SeqCst) {
            if wake.changed().await.is_err() {
                break;
            }
        }
    }
    if hs.host == Host::Storage {
        let mut wake = hs.shared.wake.subscribe();
        let held = || {
            let state = hs.shared.state();
            state
                .faults
                .hold_blobs
                .iter()
                .any(|d| path.contains(d.as_str()))
        };
        while held() && !hs.shared.down.load(Ordering::SeqCst) {
            if wake.changed().await.is_err() {
                break;
            }
        }
    }
    match hs.host {
        Host::Front => front(&hs.shared, &path),
        Host::Registry => registry(&hs.shared, &path, &query, &headers, head),
        Host::Storage => storage(&hs.shared, &path, &headers, head),
    }
}

/// archeio: `/v2/` 200, `_catalog` 404, everything else under `/v2/` a 307.
fn front(shared: &Shared, path: &str) -> Response {
    if path == "/v2" || path == "/v2/" {
        return Response::builder()
            .status(StatusCode::OK)
            .header("docker-distribution-api-version", "registry/2.0")
            .header(header::CONTENT_LENGTH, 0)
            .body(Body::empty())
            .expect("response");
    }
    if path.starts_with("/v2/_catalog") {
        return plain(StatusCode::NOT_FOUND, "_catalog is not supported");
    }
    match path.strip_prefix("/v2/") {
        Some(rest) => redirect(
            StatusCode::TEMPORARY_REDIRECT,
            &format!(
                "{}://{}/v2/{AR_PREFIX}/{rest}",
                shared.scheme, shared.registry
            ),
        ),
        None => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Artifact Registry: token endpoint, auth check, manifests, tags, blob 302s.
fn registry(shared: &Shared, path: &str, query: &str, headers: &HeaderMap, head: bool) -> Response {
    if path == "/v2/token" {
        return token(shared, query);
    }
    if let Some(download) = path.strip_prefix("/artifacts-downloads/") {
        let token = download.rsplit('/').next().unwrap_or_default();
        let digest = shared.state().downloads.get(token).cloned();
        return match digest {
            Some(digest) => redirect(
                StatusCode::FOUND,
                &format!(
                    "{}://{}/containers/images/{digest}",
                    shared.scheme, shared.storage
                ),
            ),
            None => plain(StatusCode::NOT_FOUND, "no such download"),
        };
    }
    if path == "/v2" || path == "/v2/" {
        if shared.auth {
            return challenge(shared, None);
        }
        return json(StatusCode::OK, "{}");
    }
    let Some(rest) = path.strip_prefix(&format!("/v2/{AR_PREFIX}/")) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "not under the AR prefix",
        );
    };
    let Some((name, op, arg)) = split(rest) else {
        return oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "unknown path");
    };
    if shared.auth {
        let granted = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| shared.state().tokens.get(t).cloned());
        let want = format!("repository:{AR_PREFIX}/{name}:pull");
        match granted {
            Some(scope) if scope.split(' ').any(|s| s == want) => {}
            Some(scope) => {
                shared
                    .state()
                    .violations
                    .push(format!("token for {scope:?} used for {want:?}"));
                return challenge(shared, Some(name));
            }
            None => return challenge(shared, Some(name)),
        }
    }
    match op {
        "manifests" => manifest(shared, name, arg, head),
        "blobs" => {
            let linked = shared
                .state()
                .blob_links
                .contains(&(name.to_owned(), arg.to_owned()));
            if !linked {
                return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown");
            }
            let n = shared.counter.fetch_add(1, Ordering::SeqCst);
            let token = format!("dl{n}x{}", arg.replace(':', "-"));
            shared
                .state()
                .downloads
                .insert(token.clone(), arg.to_owned());
            // Relative, as AR sends it: it must resolve against this host.
            redirect(
                StatusCode::FOUND,
                &format!(
                    "/artifacts-downloads/namespaces/k8s-artifacts-prod/repositories/images/downloads/{token}"
                ),
            )
        }
        "tags" => tags(shared, name, query),
        "referrers" => {
            let key = (name.to_owned(), arg.to_owned());
            let stored = shared.state().referrers.get(&key).cloned();
            let empty = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
            let body = stored.map_or_else(
                || empty.to_owned(),
                |b| String::from_utf8_lossy(&b).into_owned(),
            );
            json(StatusCode::OK, &body).map_content_type("application/vnd.oci.image.index.v1+json")
        }
        _ => oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "unknown path"),
    }
}

/// `<name>/manifests/<ref>`, `<name>/blobs/<digest>`, `<name>/referrers/<d>`,
/// `<name>/tags/list` → (name, op, arg).
fn split(rest: &str) -> Option<(&str, &str, &str)> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some((name, "tags", ""));
    }
    for op in ["manifests", "blobs", "referrers"] {
        if let Some(at) = rest.rfind(&format!("/{op}/")) {
            return Some((&rest[..at], op, &rest[at + op.len() + 2..]));
        }
    }
    None
}

fn manifest(shared: &Shared, name: &str, reference: &str, head: bool) -> Response {
    let state = shared.state();
    let digest = if reference.contains(':') {
        reference.to_owned()
    } else {
        match state.tags.get(&(name.to_owned(), reference.to_owned())) {
            Some(d) => d.clone(),
            None => return oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "unknown tag"),
        }
    };
    let Some(m) = state.manifests.get(&(name.to_owned(), digest.clone())) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "unknown manifest",
        );
    };
    let mut bytes = m.bytes.clone();
    if state.faults.wrong_bytes.contains(&digest) {
        bytes = flip_last(&bytes);
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &m.media_type)
        .header(header::CONTENT_LENGTH, bytes.len())
        .header("docker-content-digest", &digest)
        .header(header::ETAG, format!("\"{digest}\""))
        .body(if head {
            Body::empty()
        } else {
            Body::from(bytes)
        })
        .expect("response")
}

fn tags(shared: &Shared, name: &str, query: &str) -> Response {
    let state = shared.state();
    let all: Vec<&str> = state
        .tags
        .keys()
        .filter(|(repo, _)| repo == name)
        .map(|(_, tag)| tag.as_str())
        .collect();
    if all.is_empty() {
        return oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "repository unknown");
    }
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let last = params.get("last").cloned();
    let n = params
        .get("n")
        .and_then(|n| n.parse::<usize>().ok())
        .or(state.tag_page_size);
    let rest: Vec<&str> = all
        .into_iter()
        .filter(|t| last.as_deref().is_none_or(|l| *t > l))
        .collect();
    let page: Vec<&str> = rest.iter().take(n.unwrap_or(usize::MAX)).copied().collect();
    let body = serde_json::json!({ "name": format!("{AR_PREFIX}/{name}"), "tags": page });
    let mut response = json(StatusCode::OK, &body.to_string());
    if let (Some(n), Some(last)) = (n, page.last()) {
        if rest.len() > page.len() {
            let link =
                format!("</v2/{AR_PREFIX}/{name}/tags/list?last={last}&n={n}>; rel=\"next\"");
            response
                .headers_mut()
                .insert(header::LINK, HeaderValue::from_str(&link).expect("link"));
        }
    }
    response
}

/// The token endpoint: a token for the requested scopes.
fn token(shared: &Shared, query: &str) -> Response {
    if !shared.auth {
        return plain(StatusCode::NOT_FOUND, "no token service");
    }
    let scopes: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect();
    let n = shared.counter.fetch_add(1, Ordering::SeqCst);
    let token = format!("fake-token-{n}");
    shared
        .state()
        .tokens
        .insert(token.clone(), scopes.join(" "));
    json(
        StatusCode::OK,
        &serde_json::json!({ "token": token, "expires_in": 300 }).to_string(),
    )
}

fn challenge(shared: &Shared, name: Option<&str>) -> Response {
    let realm = format!("{}://{}/v2/token", shared.scheme, shared.registry);
    let value = match name {
        Some(name) => format!(
            "Bearer realm=\"{realm}\",service=\"{}\",scope=\"repository:{AR_PREFIX}/{name}:pull\"",
            shared.registry
        ),
        None => format!("Bearer realm=\"{realm}\""),
    };
    let mut response = oci_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "not authenticated: No valid credential was supplied.",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&value).expect("challenge"),
    );
    response
}

/// Storage: the bytes, with Range; never wants an Authorization header.
fn storage(shared: &Arc<Shared>, path: &str, headers: &HeaderMap, head: bool) -> Response {
    let Some(digest) = path.strip_prefix("/containers/images/") else {
        return plain(StatusCode::NOT_FOUND, "NoSuchKey");
    };
    let digest = digest.replace("%3A", ":").replace("%3a", ":");
    let (content, wrong, cut, chunked) = {
        let state = shared.state();
        let Some(content) = state.blobs.get(&digest).cloned() else {
            return plain(StatusCode::NOT_FOUND, "NoSuchKey");
        };
        (
            content,
            state.faults.wrong_bytes.contains(&digest),
            state.faults.cut_after.get(&digest).copied(),
            state.faults.no_content_length,
        )
    };
    let size = content.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| parse_range(r, size));
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", &digest)
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::ACCEPT_RANGES, "bytes");
    let (start, end) = match range {
        Some(Ok((start, end))) => {
            builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            );
            (start, end)
        }
        Some(Err(())) => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .body(Body::empty())
                .expect("response");
        }
        None => {
            builder = builder.status(StatusCode::OK);
            (0, size)
        }
    };
    if !chunked {
        builder = builder.header(header::CONTENT_LENGTH, end - start);
    }
    if head {
        return builder.body(Body::empty()).expect("response");
    }
    let once = {
        let mut state = shared.state();
        match state.faults.cut_once.get(&digest).copied() {
            Some(at) if (start..end).contains(&at) => state.faults.cut_once.remove(&digest),
            _ => None,
        }
    };
    let cut = match (cut, once) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let body = BodyState {
        shared: Arc::clone(shared),
        digest,
        content,
        pos: start,
        end,
        wrong,
        cut,
        done: false,
    };
    let stream = futures_util::stream::unfold(body, |mut body| async move {
        let item = body.next().await?;
        Some((item, body))
    });
    builder.body(Body::from_stream(stream)).expect("response")
}

/// `bytes=a-b`, `a-`, `-n` → `Ok((start, end_exclusive))`; unsatisfiable → `Err`.
fn parse_range(value: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return Some(Err(()));
        }
        return Some(Ok((size.saturating_sub(n), size)));
    }
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        size
    } else {
        b.parse::<u64>().ok()?.saturating_add(1).min(size)
    };
    if start >= size || end <= start {
        return Some(Err(()));
    }
    Some(Ok((start, end)))
}

/// A blob body in flight, with its faults.
struct BodyState {
    shared: Arc<Shared>,
    digest: String,
    content: Content,
    pos: u64,
    end: u64,
    wrong: bool,
    cut: Option<u64>,
    done: bool,
}

impl BodyState {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.done || self.pos >= self.end {
            return None;
        }
        if self.cut.is_some_and(|cut| self.pos >= cut) {
            self.done = true;
            // hyper drops what it still buffers when a body fails; waiting here
            // (the body is Pending, so hyper flushes) lets every byte before the
            // cut reach the client, as on a real connection that breaks.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Some(Err(io::Error::other("fake upstream cut the body")));
        }
        // Wait while paused at this offset.
        let mut wake = self.shared.wake.subscribe();
        let pause_at = loop {
            if self.shared.down.load(Ordering::SeqCst) {
                self.done = true;
                return Some(Err(io::Error::other("fake upstream is down")));
            }
            let pause = self
                .shared
                .state()
                .faults
                .pause_after
                .get(&self.digest)
                .copied();
            match pause {
                Some(at) if self.pos >= at => {
                    if wake.changed().await.is_err() {
                        self.done = true;
                        return Some(Err(io::Error::other("fake upstream stopped")));
                    }
                }
                other => break other,
            }
        };
        let throttle = self.shared.state().faults.throttle;
        let chunk = match throttle {
            Some((chunk, delay)) => {
                tokio::time::sleep(delay).await;
                chunk
            }
            None => CHUNK,
        };
        let mut until = self.end.min(self.pos + chunk as u64);
        if let Some(cut) = self.cut {
            until = until.min(cut.max(self.pos + 1));
        }
        if let Some(at) = pause_at {
            until = until.min(at.max(self.pos + 1));
        }
        let mut data = self.content.slice(self.pos, until);
        if self.wrong && self.pos + data.len() as u64 == self.content.len() {
            data = flip_last(&data);
        }
        self.pos += data.len() as u64;
        *self
            .shared
            .state()
            .sent
            .entry(self.digest.clone())
            .or_default() += data.len() as u64;
        Some(Ok(data))
    }
}

fn flip_last(bytes: &Bytes) -> Bytes {
    let mut v = bytes.to_vec();
    if let Some(last) = v.last_mut() {
        *last ^= 0xff;
    }
    Bytes::from(v)
}

fn redirect(status: StatusCode, location: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::LOCATION, location)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("response")
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(text))
        .expect("response")
}

fn json(status: StatusCode, body: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body.to_owned()))
        .expect("response")
}

fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
    json(status, &body.to_string())
}

trait ContentTypeExt {
    fn map_content_type(self, value: &'static str) -> Self;
}

impl ContentTypeExt for Response {
    fn map_content_type(mut self, value: &'static str) -> Self {
        self.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
        self
    }
}
