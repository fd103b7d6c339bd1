//! Talking to regcache over HTTP in tests: a client that follows no redirects
//! and does not decompress, responses read to their end with a body that broke
//! recorded (not panicked on), OCI error checks, a raw HTTP/1.1 request for
//! paths a URL library would normalize, and polling with a deadline.
//!
//! Only talks to 127.0.0.1; starts nothing itself (tests own their servers).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

/// How long any wait in these tests may take before it fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// A plain-HTTP client that follows no redirects and does not decompress.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client")
}

/// A response read to its end (or to the error that ended it).
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Set when the body ended with an error instead of a clean end.
    pub body_error: Option<String>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body must have been complete and clean.
    pub fn ok_body(&self) -> &Bytes {
        assert!(
            self.body_error.is_none(),
            "body failed: {:?}",
            self.body_error
        );
        &self.body
    }

    /// Asserts an OCI error response with `status` and `code` (and our API header).
    #[track_caller]
    pub fn assert_oci_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "body: {:?}", self.body);
        assert_eq!(
            self.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
        assert!(
            self.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "{:?}",
            self.headers
        );
        let json: serde_json::Value = serde_json::from_slice(&self.body).expect("OCI JSON body");
        assert_eq!(json["errors"][0]["code"], code, "{json}");
    }
}

/// Sends a request and reads the whole body, recording (not panicking on) a
/// body that ends with an error.
pub async fn send(request: reqwest::RequestBuilder) -> Got {
    let mut response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    let mut body_error = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                body_error = Some(format!("{e:?}"));
                break;
            }
        }
    }
    Got {
        status,
        headers,
        body: Bytes::from(body),
        body_error,
    }
}

pub async fn get(url: &str) -> Got {
    send(client().get(url)).await
}

pub async fn head(url: &str) -> Got {
    send(client().head(url)).await
}

/// A raw HTTP/1.1 request with `target` sent byte for byte (no normalization).
/// Returns the status, the header block (lower-case names) and the body.
pub fn raw(addr: SocketAddr, method: &str, target: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, response[split + 4..].to_vec())
}

/// Polls `check` until it is true; fails the test after [`WAIT`].
pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
