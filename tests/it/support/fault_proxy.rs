//! [`FaultProxy`]: an HTTP proxy on 127.0.0.1:<port 0> in front of a real
//! upstream (Debian's `docker-registry`), forwarding every request byte for
//! byte until a fault is switched on: **hang** (the connection is accepted and
//! the request read, but no answer ever comes), **HTML 200** (manifest GETs
//! answer `200 text/html` with a captive portal's page), **429** with a
//! `Retry-After`. It counts the requests that reached it, runs on its
//! own tokio runtime (sync and async tests alike), and stops on drop.
//!
//! It only ever forwards to the loopback URL it was given.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What the proxy does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the upstream.
    None,
    /// Accept, read the request, never answer.
    Hang,
    /// Manifest GETs (and HEADs) answer 200 with an HTML page; the rest is forwarded.
    Html200,
    /// Every request answers 429 with `Retry-After: <secs>`.
    TooManyRequests { retry_after_secs: u64 },
}

/// The captive portal's page (what a misconfigured proxy answers).
pub const HTML_PAGE: &str = "<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in to the network.</body></html>";

#[derive(Debug)]
struct Shared {
    target: String,
    fault: Mutex<Fault>,
    received: AtomicUsize,
    client: reqwest::Client,
}

/// The running proxy. Dropping it stops it (hanging requests are dropped too).
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy forwarding to `target` (`http://127.0.0.1:PORT`).
    pub fn start(target: &str) -> FaultProxy {
        assert!(
            target.starts_with("http://127.0.0.1:"),
            "the fault proxy forwards to loopback only: {target}"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("fault proxy runtime");
        let shared = Arc::new(Shared {
            target: target.trim_end_matches('/').to_owned(),
            fault: Mutex::new(Fault::None),
            received: AtomicUsize::new(0),
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("fault proxy client"),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind fault proxy");
        let addr = listener.local_addr().expect("fault proxy address");
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    /// Requests that reached the proxy (answered, faulted or hanging).
    pub fn received(&self) -> usize {
        self.shared.received.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.received.fetch_add(1, Ordering::SeqCst);
    let fault = *shared.fault.lock().unwrap();
    let is_manifest = request.uri().path().contains("/manifests/");
    match fault {
        Fault::Hang => std::future::pending().await,
        Fault::Html200 if is_manifest => html_page(),
        Fault::TooManyRequests { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after_secs.to_string())],
            "slow down",
        )
            .into_response(),
        Fault::None | Fault::Html200 => forward(&shared, request).await,
    }
}

fn html_page() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        HTML_PAGE,
    )
        .into_response()
}

/// Sends the request on to the upstream and its answer back, whole.
async fn forward(shared: &Shared, request: Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut headers = HeaderMap::new();
    for name in [header::ACCEPT, header::RANGE, header::AUTHORIZATION] {
        if let Some(value) = request.headers().get(&name) {
            headers.insert(name, value.clone());
        }
    }
    let sent = shared
        .client
        .request(request.method().clone(), format!("{}{path}", shared.target))
        .headers(headers)
        .send()
        .await;
    let Ok(upstream) = sent else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = upstream.status();
    let mut answer = Response::builder().status(status);
    for (name, value) in upstream.headers() {
        answer = answer.header(name, value);
    }
    let body = upstream.bytes().await.unwrap_or_default();
    answer.body(Body::from(body)).expect("forwarded response")
}
