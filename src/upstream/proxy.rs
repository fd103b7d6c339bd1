//! Forward proxies for the upstream client: the configured (or environment)
//! proxies installed on the reqwest client, so every hop of a redirect chain
//! and every token request goes through them; and, when a proxy refuses a
//! tunnel, one more `CONNECT` to read its answer (hyper-util's tunnel error
//! keeps only "unsuccessful", and an operator needs "403 Filtered"); and a
//! tunnel of our own for the handshake that explains a closed connection.
//!
//! It never logs or returns a proxy's credentials, and never reads the
//! environment itself: `config` resolved the variables already.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Url;

use super::Error;
use super::cause::host_port;
use crate::config::{Proxy, ProxySettings};

/// The longest proxy answer read for its status line.
const MAX_ANSWER: usize = 4096;

/// Installs `settings` on `builder`, replacing reqwest's own reading of the
/// environment (the configuration already did that, with the same variables).
pub(super) fn install(
    builder: reqwest::ClientBuilder,
    settings: &ProxySettings,
) -> Result<reqwest::ClientBuilder, Error> {
    let mut builder = builder.no_proxy();
    let no_proxy = reqwest::NoProxy::from_string(&settings.no_proxy.join(","));
    type ForScheme = fn(Url) -> reqwest::Result<reqwest::Proxy>;
    let proxies: [(Option<&Proxy>, ForScheme); 2] = [
        (settings.https.as_ref(), reqwest::Proxy::https::<Url>),
        (settings.http.as_ref(), reqwest::Proxy::http::<Url>),
    ];
    for (proxy, for_scheme) in proxies {
        let Some(proxy) = proxy else { continue };
        let mut built = for_scheme(proxy.url.clone())
            .map_err(|e| Error::Setup(format!("proxy {}: {e}", proxy.url)))?
            .no_proxy(no_proxy.clone());
        if let Some(c) = &proxy.credentials {
            built = built.basic_auth(&c.username, c.password.expose());
        }
        builder = builder.proxy(built);
    }
    Ok(builder)
}

/// What `proxy` answers to `CONNECT <target host:port>`: its status line
/// without the version (`403 Filtered`), or None if it cannot be read.
pub(super) async fn refusal(
    client: &reqwest::Client,
    proxy: &Proxy,
    target: &Url,
    timeout: Duration,
) -> Option<String> {
    // An https:// proxy would need TLS to the proxy first; not worth it for
    // a diagnosis.
    if proxy.url.scheme() != "http" {
        return None;
    }
    let ask = async {
        let mut stream = TcpStream::connect(host_port(&proxy.url)).await.ok()?;
        stream
            .write_all(&connect_request(client, proxy, target))
            .await
            .ok()?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < MAX_ANSWER {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        status_of(&answer)
    };
    tokio::time::timeout(timeout, ask).await.ok().flatten()
}

/// A tunnel through `proxy` to `target`'s host and port, or None if the proxy
/// cannot be reached or does not answer 200.
pub(super) async fn tunnel(
    client: &reqwest::Client,
    proxy: &Proxy,
    target: &Url,
) -> Option<TcpStream> {
    if proxy.url.scheme() != "http" {
        return None;
    }
    let mut stream = TcpStream::connect(host_port(&proxy.url)).await.ok()?;
    stream
        .write_all(&connect_request(client, proxy, target))
        .await
        .ok()?;
    // Byte by byte up to the blank line: nothing of the tunnel is read.
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") && answer.len() < MAX_ANSWER {
        answer.push(stream.read_u8().await.ok()?);
    }
    let status = status_of(&answer)?;
    status.starts_with("200").then_some(stream)
}

fn connect_request(client: &reqwest::Client, proxy: &Proxy, target: &Url) -> Vec<u8> {
    let target = host_port(target);
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(value) = proxy.credentials.as_ref().and_then(|c| basic(client, c)) {
        if let Ok(value) = value.to_str() {
            request.push_str(&format!("Proxy-Authorization: {value}\r\n"));
        }
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// `Basic <base64>`, encoded by reqwest (no base64 crate for one header).
fn basic(client: &reqwest::Client, c: &crate::config::Credentials) -> Option<HeaderValue> {
    let request = client
        .get("http://proxy.invalid/")
        .basic_auth(&c.username, Some(c.password.expose()))
        .build()
        .ok()?;
    request.headers().get(AUTHORIZATION).cloned()
}

/// `HTTP/1.0 403 Filtered\r\n...` → `403 Filtered`.
fn status_of(answer: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next()?;
    let (version, status) = line.split_once(' ')?;
    version
        .starts_with("HTTP/")
        .then(|| status.trim().to_owned())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            status_of(b"HTTP/1.0 403 Filtered\r\nServer: tinyproxy\r\n\r\n").as_deref(),
            Some("403 Filtered")
        );
        assert_eq!(status_of(b"garbage").as_deref(), None);
        assert_eq!(status_of(b"").as_deref(), None);
    }
}
