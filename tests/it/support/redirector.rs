//! [`Redirector`]: a one-rule upstream front on a loopback address of the
//! test's choice that answers every request with a 307 to `<target><path and
//! query>`, counting requests. With a `target` holding userinfo, on another
//! loopback address or another scheme, it is the hostile or misconfigured
//! redirect the redirect policy must refuse. Stopped on drop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone)]
struct Rule {
    target: String,
    hits: Arc<AtomicUsize>,
}

/// A running redirector; see the module documentation.
#[derive(Debug)]
pub struct Redirector {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Redirector {
    /// Listens on `ip:0` and redirects everything to `target` + the path.
    pub fn start(ip: &str, target: impl Into<String>) -> Self {
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind redirector");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let rule = Rule {
            target: target.into(),
            hits: Arc::clone(&hits),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redirector")
            .enable_all()
            .build()
            .expect("redirector runtime");
        runtime.spawn(async move {
            let tcp = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let app = axum::Router::new().fallback(redirect).with_state(rule);
            let _ = axum::serve(tcp, app).await;
        });
        Redirector {
            addr,
            hits,
            runtime: Some(runtime),
        }
    }

    /// `http://<addr>`, to configure as the upstream URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn redirect(State(rule): State<Rule>, request: Request) -> Response {
    rule.hits.fetch_add(1, Ordering::SeqCst);
    let tail = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let location = format!("{}{tail}", rule.target);
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, location)],
    )
        .into_response()
}

impl Drop for Redirector {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
