//! [`FaultProxy`]: an HTTP/1.1 proxy on 127.0.0.1 in front of the origin that
//! streams every answer through, except that a `rate` fraction of requests
//! gets one fault, chosen at random among those that fit the request:
//! **hang** (the request is read, no answer for 90 s, then the connection
//! closes), **drop** (the connection closes without an answer), **cut** (the
//! body stops part-way and the connection closes), **stall** (part of the
//! body, then nothing for 90 s), **flip** (one body byte XORed), **5xx** (500,
//! 502 or 503), **429** with `Retry-After: 1`, and for manifests **html** (a
//! captive portal's `200 text/html`). It counts requests and faults by kind,
//! runs on its own one-thread runtime (so the clients' hashing cannot delay
//! it), only ever forwards to the loopback origin it was given, and stops on
//! drop.
//!
//! The tests have a switchable fault proxy (tests/it/support/fault_proxy.rs);
//! this one differs in what a soak needs: random faults per request, faults
//! inside streamed bodies, and dropped connections (hyper closes a connection
//! whose service returns an error, which axum's handlers cannot do).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode, header};
use rand::Rng as _;

/// How long a hang or a stall lasts before the connection is closed: longer
/// than any timeout regcache is given, short enough not to pile up.
const HANG: Duration = Duration::from_secs(90);
const HTML_PAGE: &str = "<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in to the network.</body></html>";

/// The faults, in the order of [`FaultProxy::counts`].
pub const KINDS: [&str; 8] = ["hang", "drop", "cut", "stall", "flip", "5xx", "429", "html"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Hang,
    Drop,
    Cut,
    Stall,
    Flip,
    Status,
    TooMany,
    Html,
}

const ALL: [Fault; 8] = [
    Fault::Hang,
    Fault::Drop,
    Fault::Cut,
    Fault::Stall,
    Fault::Flip,
    Fault::Status,
    Fault::TooMany,
    Fault::Html,
];

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

#[derive(Debug)]
struct Shared {
    target: String,
    rate: f64,
    client: reqwest::Client,
    requests: AtomicU64,
    counts: [AtomicU64; 8],
}

/// The running proxy; dropping it stops it and everything it holds.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Forwards to `target` (`http://127.0.0.1:PORT`), faulting `rate` of the requests.
    pub fn start(target: &str, rate: f64) -> FaultProxy {
        assert!(
            target.starts_with("http://127.0.0.1:"),
            "the fault proxy forwards to loopback only: {target}"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("fault proxy runtime");
        let shared = Arc::new(Shared {
            target: target.to_owned(),
            rate,
            client: reqwest::Client::builder()
                .no_proxy()
                .http1_only()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("fault proxy client"),
            requests: AtomicU64::new(0),
            counts: Default::default(),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind fault proxy");
        let addr = listener.local_addr().expect("fault proxy address");
        runtime.spawn(accept_loop(listener, Arc::clone(&shared)));
        FaultProxy {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests that reached the proxy.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Faults injected, by kind (in the order of [`KINDS`]).
    pub fn counts(&self) -> [u64; 8] {
        std::array::from_fn(|i| self.shared.counts[i].load(Ordering::Relaxed))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { handle(&shared, request).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The fault for this request, if any: only faults that can happen to it (no
/// body faults for a HEAD, HTML only for manifests).
fn choose(shared: &Shared, request: &Request<hyper::body::Incoming>) -> Option<Fault> {
    let mut rng = rand::rng();
    if !rng.random_bool(shared.rate) {
        return None;
    }
    let manifest = request.uri().path().contains("/manifests/");
    let head = request.method() == hyper::Method::HEAD;
    let fits: Vec<Fault> = ALL
        .into_iter()
        .filter(|f| match f {
            Fault::Cut | Fault::Stall | Fault::Flip => !head,
            Fault::Html => manifest,
            _ => true,
        })
        .collect();
    Some(fits[rng.random_range(0..fits.len())])
}

async fn handle(
    shared: &Shared,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let fault = choose(shared, &request);
    if let Some(fault) = fault {
        shared.counts[ALL.iter().position(|f| *f == fault).expect("a fault")]
            .fetch_add(1, Ordering::Relaxed);
    }
    match fault {
        Some(Fault::Hang) => {
            tokio::time::sleep(HANG).await;
            Err(closed("hang"))
        }
        Some(Fault::Drop) => Err(closed("drop")),
        Some(Fault::Status) => {
            let status = [500, 502, 503][rand::rng().random_range(0..3)];
            Ok(answer(
                StatusCode::from_u16(status).expect("5xx"),
                &[],
                "injected",
            ))
        }
        Some(Fault::TooMany) => Ok(answer(
            StatusCode::TOO_MANY_REQUESTS,
            &[(header::RETRY_AFTER, "1")],
            "slow down",
        )),
        Some(Fault::Html) => Ok(answer(
            StatusCode::OK,
            &[(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            HTML_PAGE,
        )),
        body_fault => forward(shared, request, body_fault).await,
    }
}

fn closed(why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        format!("injected {why}"),
    )
}

fn answer(
    status: StatusCode,
    headers: &[(header::HeaderName, &str)],
    body: &str,
) -> Response<Body> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(name, *value);
    }
    response
        .body(
            Full::new(Bytes::from(body.to_owned()))
                .map_err(|e: Infallible| match e {})
                .boxed_unsync(),
        )
        .expect("injected answer")
}

/// Sends the request on and streams the answer back, with `fault` (cut,
/// stall or flip) applied to its body.
async fn forward(
    shared: &Shared,
    request: Request<hyper::body::Incoming>,
    fault: Option<Fault>,
) -> Result<Response<Body>, std::io::Error> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut headers = request.headers().clone();
    for hop in [header::HOST, header::CONNECTION, header::TRANSFER_ENCODING] {
        headers.remove(hop);
    }
    let upstream = shared
        .client
        .request(request.method().clone(), format!("{}{path}", shared.target))
        .headers(headers)
        .send()
        .await
        .map_err(|e| std::io::Error::other(format!("origin: {e}")))?;
    let mut response = Response::builder().status(upstream.status());
    for (name, value) in upstream.headers() {
        if name != header::CONNECTION && name != header::TRANSFER_ENCODING {
            response = response.header(name, value);
        }
    }
    let length = upstream.content_length().unwrap_or(0);
    // Where the fault strikes: a byte inside the body (none for an empty one).
    let at = (length > 0).then(|| rand::rng().random_range(0..length));
    let mut sent = 0u64;
    let stream = upstream.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        let start = sent;
        sent += chunk.len() as u64;
        Ok::<_, std::io::Error>((start, chunk))
    });
    let body = match (fault, at) {
        (Some(fault @ (Fault::Cut | Fault::Stall | Fault::Flip)), Some(at)) => {
            faulted(stream, fault, at).boxed()
        }
        _ => stream.map(|r| r.map(|(_, c)| Frame::data(c))).boxed(),
    };
    Ok(response
        .body(StreamBody::new(body).boxed_unsync())
        .expect("forwarded answer"))
}

type Chunks = futures_util::stream::BoxStream<'static, Result<(u64, Bytes), std::io::Error>>;

/// The body with `fault` at byte `at`: up to `at` and then an error (cut), up
/// to `at` and then 90 s of nothing and an error (stall), or every byte with
/// the one at `at` flipped.
fn faulted(
    stream: impl futures_util::Stream<Item = Result<(u64, Bytes), std::io::Error>> + Send + 'static,
    fault: Fault,
    at: u64,
) -> futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>> {
    let chunks: Chunks = stream.boxed();
    futures_util::stream::unfold((chunks, false), move |(mut chunks, done)| async move {
        if done {
            return None;
        }
        let (start, chunk) = match chunks.next().await? {
            Ok(c) => c,
            Err(e) => return Some((Err(e), (chunks, true))),
        };
        let end = start + chunk.len() as u64;
        if !(start..end).contains(&at) {
            return Some((Ok(Frame::data(chunk)), (chunks, false)));
        }
        let offset = (at - start) as usize;
        match fault {
            Fault::Flip => {
                let mut bytes = chunk.to_vec();
                bytes[offset] ^= 0x01;
                Some((Ok(Frame::data(Bytes::from(bytes))), (chunks, false)))
            }
            Fault::Stall if offset > 0 => {
                // Send the part before `at`; the next poll stalls.
                Some((Ok(Frame::data(chunk.slice(..offset))), (stalled(), false)))
            }
            Fault::Stall => {
                tokio::time::sleep(HANG).await;
                Some((Err(closed("stall")), (chunks, true)))
            }
            _ if offset > 0 => Some((Ok(Frame::data(chunk.slice(..offset))), (cut(), false))),
            _ => Some((Err(closed("cut")), (chunks, true))),
        }
    })
    .boxed()
}

/// A stream that waits [`HANG`] and then fails.
fn stalled() -> Chunks {
    futures_util::stream::once(async {
        tokio::time::sleep(HANG).await;
        Err(closed("stall"))
    })
    .boxed()
}

/// A stream that fails at once.
fn cut() -> Chunks {
    futures_util::stream::once(async { Err(closed("cut")) }).boxed()
}
