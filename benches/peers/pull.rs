//! Streaming blob pulls: one client (time to first byte, total time, bytes),
//! and the herd (many clients at once, each hashing while it streams).

use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

/// One streamed GET.
#[derive(Debug, Clone)]
pub struct Pull {
    pub first_byte: Duration,
    pub total: Duration,
    /// `sha256:<hex>` of the body when hashing was asked for.
    pub digest: Option<String>,
}

/// A fresh plain-HTTP client (its own connections; no proxy from the environment).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .build()
        .expect("reqwest client")
}

/// A fresh HTTPS client trusting only the CA in `ca_pem` (HTTP/1.1, as wrk speaks).
pub fn client_trusting(ca_pem: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("bench CA");
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tls_certs_only([root])
        .build()
        .expect("reqwest client")
}

/// GETs `url` on a new connection, counting (and with `hash`, hashing) the
/// body. Panics on a non-200 answer or a length other than `expect_len`.
pub async fn pull(url: &str, expect_len: u64, hash: bool) -> Pull {
    let http = client();
    let started = Instant::now();
    let mut response = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    let mut hasher = hash.then(Sha256::new);
    let mut bytes = 0u64;
    let mut first_byte = None;
    while let Some(chunk) = response
        .chunk()
        .await
        .unwrap_or_else(|e| panic!("body of {url}: {e}"))
    {
        first_byte.get_or_insert_with(|| started.elapsed());
        bytes += chunk.len() as u64;
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
    }
    let total = started.elapsed();
    assert_eq!(bytes, expect_len, "length of {url}");
    Pull {
        first_byte: first_byte.unwrap_or(total),
        total,
        digest: hasher.map(|h| format!("sha256:{}", hex::encode(h.finalize()))),
    }
}

/// The herd's outcome.
#[derive(Debug, Clone)]
pub struct Herd {
    /// From the common start until the last client finished.
    pub total: Duration,
    pub fastest: Duration,
    pub slowest_first_byte: Duration,
    /// Clients whose body hashed to the expected digest.
    pub verified: usize,
}

/// `clients` GETs of `url` started together, each hashing its body; panics if
/// any body is short or hashes to anything but `digest`.
pub async fn herd(url: &str, clients: usize, expect_len: u64, digest: &str) -> Herd {
    // Every client task is spawned and waiting before the common start.
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(clients + 1));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let go = std::sync::Arc::clone(&go);
            let url = url.to_owned();
            tokio::spawn(async move {
                go.wait().await;
                pull(&url, expect_len, true).await
            })
        })
        .collect();
    go.wait().await;
    let started = Instant::now();
    let mut pulls = Vec::new();
    for task in tasks {
        pulls.push(task.await.expect("herd client"));
    }
    let total = started.elapsed();
    let verified = pulls
        .iter()
        .filter(|p| p.digest.as_deref() == Some(digest))
        .count();
    assert_eq!(
        verified,
        clients,
        "herd: {} of {clients} bodies had the wrong digest",
        clients - verified
    );
    Herd {
        total,
        fastest: pulls.iter().map(|p| p.total).min().unwrap_or_default(),
        slowest_first_byte: pulls.iter().map(|p| p.first_byte).max().unwrap_or_default(),
        verified,
    }
}
