//! Test-only fakes for the upstream tests: HTTP servers on 127.0.0.1 (port 0)
//! that record every request they see, raw TCP servers that misbehave, and
//! helpers to build responses. Every server runs as a task that is aborted
//! when its handle drops, so no test leaves a listener behind.
//!
//! Nothing here ever talks to anything but 127.0.0.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::Url;

use crate::config::{Credentials, Secret, UpstreamConfig};

/// Aborts a server task when dropped.
#[derive(Debug)]
pub(crate) struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One request as a fake server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) headers: HeaderMap,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn authorization(&self) -> Option<&str> {
        self.header("authorization")
    }

    /// The decoded values of query parameter `name`.
    pub(crate) fn query_values(&self, name: &str) -> Vec<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .collect()
    }
}

/// A listening socket whose address is known before its handler exists, so
/// fakes can redirect to each other in cycles.
pub(crate) struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Bound {
    pub(crate) async fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self { listener, addr }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Serves every request with `handler`, recording it first.
    pub(crate) fn serve<F>(self, handler: F) -> Fake
    where
        F: Fn(&Seen) -> Response + Send + Sync + 'static,
    {
        let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handler = Arc::new(handler);
        let recorder = Arc::clone(&log);
        let app = Router::new().fallback(move |request: Request| {
            let handler = Arc::clone(&handler);
            let recorder = Arc::clone(&recorder);
            async move {
                let seen = Seen {
                    method: request.method().clone(),
                    path: request.uri().path().to_owned(),
                    query: request.uri().query().unwrap_or("").to_owned(),
                    headers: request.headers().clone(),
                };
                recorder.lock().unwrap().push(seen.clone());
                handler(&seen)
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(self.listener, app).await;
        });
        Fake {
            addr: self.addr,
            log,
            _task: TaskGuard(task),
        }
    }
}

/// A running fake HTTP server with its request log.
pub(crate) struct Fake {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    _task: TaskGuard,
}

impl Fake {
    pub(crate) async fn start<F>(handler: F) -> Self
    where
        F: Fn(&Seen) -> Response + Send + Sync + 'static,
    {
        Bound::new().await.serve(handler)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    pub(crate) fn hits(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Requests whose path starts with `prefix`.
    pub(crate) fn seen_under(&self, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.starts_with(prefix))
            .collect()
    }

    pub(crate) fn saw_authorization(&self) -> bool {
        self.seen().iter().any(|s| s.authorization().is_some())
    }
}

/// A raw TCP server that answers every connection with `reply` and then
/// either closes it (`hold` = None) or keeps it open silently for `hold`.
pub(crate) async fn raw_server(reply: &'static [u8], hold: Option<Duration>) -> (Url, TaskGuard) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(reply).await;
                if let Some(hold) = hold {
                    tokio::time::sleep(hold).await;
                }
            });
        }
    });
    (url.parse().unwrap(), TaskGuard(task))
}

/// A 127.0.0.1 port with nothing listening: bound, then released.
pub(crate) async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

pub(crate) fn config(url: &str) -> UpstreamConfig {
    UpstreamConfig {
        name: "test.example".into(),
        url: url.parse().unwrap(),
        default: true,
        aliases: Vec::new(),
        tag_ttl: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        revalidate_timeout: Duration::from_secs(5),
        rate_limit_reserve: crate::upstream::DEFAULT_RESERVE,
        circuit: Default::default(),
        credentials: None,
        egress: Default::default(),
        probe_image: None,
    }
}

pub(crate) fn with_credentials(mut config: UpstreamConfig) -> UpstreamConfig {
    config.credentials = Some(Credentials {
        username: "robot".into(),
        password: Secret::new("hunter2"),
    });
    config
}

/// `Basic base64("robot:hunter2")`.
pub(crate) const ROBOT_BASIC: &str = "Basic cm9ib3Q6aHVudGVyMg==";

pub(crate) fn status(code: u16) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    response
}

pub(crate) fn redirect(code: u16, location: &str) -> Response {
    with_header(status(code), header::LOCATION.as_str(), location)
}

pub(crate) fn body(content_type: &str, bytes: impl Into<Body>) -> Response {
    let mut response = Response::new(bytes.into());
    let value = HeaderValue::from_str(content_type).unwrap();
    response.headers_mut().insert(header::CONTENT_TYPE, value);
    response
}

/// 401 with one `WWW-Authenticate` line.
pub(crate) fn challenge(value: &str) -> Response {
    with_header(status(401), "www-authenticate", value)
}

pub(crate) fn with_header(mut response: Response, name: &str, value: &str) -> Response {
    let name = header::HeaderName::from_bytes(name.as_bytes()).unwrap();
    let value = HeaderValue::from_str(value).unwrap();
    response.headers_mut().append(name, value);
    response
}
