//! Serving the API's connections within limits: at most `max_connections` at
//! once (past that, idle keep-alive connections are asked to close, and a
//! connection that still finds no slot gets one `503` and is closed), a
//! header-read timeout (hyper's), a keep-alive idle timeout, a number of
//! requests per connection, and a bounded drain at shutdown.
//!
//! It knows connections, not the API: every answer, the 503 and the size
//! refusals included, comes from the router or `api` (which it asks about a
//! request's size before routing it), and it never changes a request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;

use crate::api::auth::ClientAddr;
use crate::config::ConnectionLimits;

/// How long a connection over the limit waits for a slot before its 503.
const SLOT_WAIT: Duration = Duration::from_secs(1);
/// Connections being answered 503 at once; past that they are closed unanswered.
const REFUSALS: usize = 64;

/// Serves `app` on `listener` until `shutdown` completes, then drains open
/// connections for at most `limits.shutdown_timeout`.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let server = Arc::new(Server::new(app, limits));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            (io, addr) = listener.accept() => server.admit(io, addr).await,
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    server.drain().await;
}

/// State shared by the accept loop and every connection task.
struct Server {
    app: Router,
    limits: ConnectionLimits,
    http: auto::Builder<TokioExecutor>,
    slots: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    /// Idle connections close when this counter moves (the limit was
    /// reached). A watch, not a `tokio::sync::Notify`: a connection task that is not
    /// polling at that moment (just spawned, or busy under load) still sees
    /// the change the next time it looks, where `notify_waiters` would be lost.
    reclaim: watch::Sender<u64>,
    /// Becomes true at shutdown.
    stopping: watch::Sender<bool>,
}

impl Server {
    fn new(app: Router, limits: ConnectionLimits) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // The API's own limits answer with an OCI body (`api::limits`);
            // hyper's bare 431 is only for what is far beyond them.
            .max_headers(crate::api::MAX_HEADERS * 4);
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_requests_per_connection.min(256) as u32);
        Self {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            refusals: Arc::new(Semaphore::new(REFUSALS)),
            reclaim: watch::Sender::new(0),
            stopping: watch::Sender::new(false),
            app,
            limits,
            http,
        }
    }

    /// A slot for a new connection: a free one, else one an idle connection
    /// gives back within [`SLOT_WAIT`], else none.
    async fn admit<I>(self: &Arc<Self>, io: I, addr: SocketAddr)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                self.reclaim.send_modify(|generation| *generation += 1);
                let wait = Arc::clone(&self.slots).acquire_owned();
                tokio::time::timeout(SLOT_WAIT, wait)
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        };
        let server = Arc::clone(self);
        match slot {
            Some(slot) => {
                // Subscribed here, before the task runs: a reclaim that comes
                // before its first poll is still seen.
                let reclaim = self.reclaim.subscribe();
                tokio::spawn(async move { server.connection(io, addr, slot, reclaim).await });
            }
            None => match Arc::clone(&self.refusals).try_acquire_owned() {
                Ok(refusal) => {
                    tracing::warn!(client = %addr, max_connections = self.limits.max_connections, "connection limit reached; answering 503");
                    tokio::spawn(async move { server.refuse(io, refusal).await });
                }
                Err(_) => tracing::warn!(client = %addr, "connection limit reached; closed"),
            },
        }
    }

    /// Serves one connection until the client closes it, it idles past
    /// `keepalive_timeout`, it has had `max_requests_per_connection` requests,
    /// it is reclaimed while idle, or shutdown.
    async fn connection<I>(
        &self,
        io: I,
        addr: SocketAddr,
        _slot: OwnedSemaphorePermit,
        reclaim: watch::Receiver<u64>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let service = self.service(addr, Arc::clone(&activity));
        let connection = self
            .http
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        // When to close is decided by a task of its own, woken by shutdown,
        // reclaims and its tick, never by this connection's traffic: polled
        // here, beside the connection, those signals cost a lock on a shared
        // `watch` on every wakeup of a busy connection.
        let (close, mut closing) = tokio::sync::oneshot::channel();
        let _watcher = AbortOnDrop(tokio::spawn(watch_for_close(
            self.stopping.subscribe(),
            reclaim,
            activity,
            self.limits,
            close,
        )));
        tokio::select! {
            biased;
            result = connection.as_mut() => return log_end(addr, result),
            _ = &mut closing => {}
        }
        connection.as_mut().graceful_shutdown();
        log_end(addr, connection.await);
    }

    /// The router for one connection's requests, with the client's address
    /// and its activity recorded.
    fn service(
        &self,
        addr: SocketAddr,
        activity: Arc<Activity>,
    ) -> impl hyper::service::Service<
        http::Request<Incoming>,
        Response = http::Response<Tracked>,
        Error = std::convert::Infallible,
        Future = RouterFuture,
    > + Clone {
        let app = self.app.clone();
        let max = self.limits.max_requests_per_connection;
        hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo(ClientAddr(addr)));
            let busy = activity.begin();
            let last = busy.number >= max;
            let app = app.clone();
            Box::pin(async move {
                let response = match crate::api::refused(&request) {
                    Some(refused) => refused,
                    None => {
                        let Ok(response) = app.oneshot(request.map(axum::body::Body::new)).await;
                        response
                    }
                };
                // The request counts as in flight until its body is sent.
                let mut response = response.map(|body| Tracked { body, _busy: busy });
                if last {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, std::convert::Infallible>(response)
            }) as RouterFuture
        })
    }

    /// One `503` (OCI JSON, `Connection: close`) for a connection over the limit.
    async fn refuse<I>(&self, io: I, _refusal: OwnedSemaphorePermit)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(|_request: http::Request<Incoming>| async {
            let mut response = crate::api::over_capacity();
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            Ok::<_, std::convert::Infallible>(response)
        });
        let connection = self.http.serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let bound = tokio::time::sleep(self.limits.header_read_timeout);
        tokio::select! {
            _ = connection.as_mut() => {}
            () = bound => {}
        }
    }

    /// Asks every connection to finish, then waits until all have closed or
    /// `shutdown_timeout` has passed.
    async fn drain(&self) {
        self.stopping.send_replace(true);
        let all = self.limits.max_connections as u32;
        let closed =
            tokio::time::timeout(self.limits.shutdown_timeout, self.slots.acquire_many(all)).await;
        match closed {
            Ok(_) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                open = self.limits.max_connections - self.slots.available_permits(),
                timeout = ?self.limits.shutdown_timeout,
                "connections still open after shutdown_timeout; exiting"
            ),
        }
    }
}

type RouterFuture = std::pin::Pin<
    Box<dyn Future<Output = Result<http::Response<Tracked>, std::convert::Infallible>> + Send>,
>;

/// A response body that keeps its request in flight until it is dropped
/// (sent or abandoned): a plain wrapper, not another boxed body, forwarding
/// the end of stream and the size hint.
#[derive(Debug)]
pub struct Tracked {
    body: axum::body::Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Waits for a reason to close a connection: shutdown began, idle connections
/// were asked to give their slots back (and this one is idle), or it idled
/// past `keepalive_timeout` or served `max_requests_per_connection`. Then it
/// fires `close`; once the connection has ended (`close` is closed) it returns
/// without firing.
async fn watch_for_close(
    mut stopping: watch::Receiver<bool>,
    mut reclaim: watch::Receiver<u64>,
    activity: Arc<Activity>,
    limits: ConnectionLimits,
    mut close: tokio::sync::oneshot::Sender<()>,
) {
    let mut tick = tokio::time::interval(tick_for(limits.keepalive_timeout));
    loop {
        let closing = tokio::select! {
            _ = stopping.changed() => true,
            _ = reclaim.changed() => activity.is_idle(),
            _ = tick.tick() => {
                activity.idle_for() >= limits.keepalive_timeout
                    || activity.served() >= limits.max_requests_per_connection
            }
            () = close.closed() => return,
        };
        if closing {
            let _ = close.send(());
            return;
        }
    }
}

fn log_end(client: SocketAddr, result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        tracing::debug!(%client, error = %e, "connection ended with an error");
    }
}

/// Aborts a connection's watcher task when the connection's task ends, also
/// when it is dropped mid-way.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often a connection checks its idle time: often enough to close it
/// within a quarter of the timeout of when it should.
fn tick_for(keepalive: Duration) -> Duration {
    (keepalive / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// One connection's requests: how many so far, how many in flight, and since
/// when it has been idle.
#[derive(Debug)]
struct Activity {
    served: AtomicU64,
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// A request in flight; the connection is idle again when the last is dropped.
#[derive(Debug)]
struct Busy {
    activity: Arc<Activity>,
    /// 1 for the connection's first request.
    number: u64,
}

impl Activity {
    fn new() -> Self {
        Self {
            served: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let number = self.served.fetch_add(1, Ordering::SeqCst) + 1;
        Busy {
            activity: Arc::clone(self),
            number,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    /// Zero while a request is in flight.
    fn idle_for(&self) -> Duration {
        if !self.is_idle() {
            return Duration::ZERO;
        }
        self.idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.activity;
        *activity
            .idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Raises the soft open-file limit to the hard one (a connection is a file
/// descriptor, and 1024 is the usual soft default) and logs both; warns when
/// `max_connections` does not fit.
pub fn raise_open_file_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let now = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            before
        }
    };
    let show = |l: Option<u64>| l.map_or("unlimited".to_owned(), |n| n.to_string());
    tracing::info!(
        soft_before = %show(before),
        soft = %show(now),
        hard = %show(limit.maximum),
        "open-file limit (RLIMIT_NOFILE)"
    );
    // Each connection is one descriptor; the store, index and upstream
    // connections need some beside them.
    if let Some(now) = now {
        if (max_connections as u64).saturating_add(256) > now {
            tracing::warn!(
                max_connections,
                open_files = now,
                "server.max_connections plus 256 is more than the open-file limit"
            );
        }
    }
}
