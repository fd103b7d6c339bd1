//! Helpers shared by the fake-upstream test modules (`pull`, `faults`, `api`):
//! an HTTP client for regcache, a raw HTTP/1.1 request for paths a URL library
//! would normalize, a small image (config + layer + manifest) seeded into a
//! [`FakeUpstream`], OCI error checks and data-directory inspection.
//!
//! Only talks to 127.0.0.1; starts nothing itself (tests own their servers).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use sha2::{Digest as _, Sha256};

use crate::support::fake::FakeUpstream;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
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

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn random_bytes(n: usize) -> Bytes {
    let mut v = vec![0u8; n];
    rand::fill(&mut v[..]);
    Bytes::from(v)
}

/// One image in the fake: a config blob, a layer blob and a manifest by tag.
#[derive(Debug, Clone)]
pub struct Image {
    pub repo: String,
    pub tag: String,
    pub config: Bytes,
    pub config_digest: String,
    pub layer: Bytes,
    pub layer_digest: String,
    pub manifest: Bytes,
    pub manifest_digest: String,
}

/// Seeds `repo:tag` with a random layer of `layer_size` bytes.
pub fn seed_image(fake: &FakeUpstream, repo: &str, tag: &str, layer_size: usize) -> Image {
    let config = Bytes::from(format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"nonce":"{}"}}"#,
        hex::encode(random_bytes(8))
    ));
    let layer = random_bytes(layer_size);
    let config_digest = fake.put_blob(repo, config.clone());
    let layer_digest = fake.put_blob(repo, layer.clone());
    let manifest = manifest_json(&config_digest, config.len(), &layer_digest, layer.len());
    let manifest_digest = fake.put_manifest(repo, Some(tag), OCI_MANIFEST, manifest.clone());
    Image {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        config,
        config_digest,
        layer,
        layer_digest,
        manifest,
        manifest_digest,
    }
}

pub fn manifest_json(config: &str, config_size: usize, layer: &str, layer_size: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{config}","size":{config_size}}},"layers":[{{"mediaType":"{OCI_LAYER}","digest":"{layer}","size":{layer_size}}}]}}"#
    ))
}

/// A config.toml for one default upstream at `url` with the given `tag_ttl`.
pub fn config_toml(url: &str, tag_ttl: &str) -> String {
    config_toml_with(url, tag_ttl, "30s", "")
}

/// Same, with an `idle_timeout` and `extra` lines for the `[[upstream]]` table.
pub fn config_toml_with(url: &str, tag_ttl: &str, idle_timeout: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "./unused"
[[upstream]]
name = "registry.k8s.io"
url = "{url}"
default = true
aliases = ["k8s.gcr.io"]
tag_ttl = "{tag_ttl}"
connect_timeout = "5s"
idle_timeout = "{idle_timeout}"
{extra}
"#
    )
}

/// A config.toml with three upstreams at the given URLs: `registry.k8s.io`
/// (the default, alias `k8s.gcr.io`), `docker.io` and `ghcr.io`.
pub fn three_upstreams_toml(k8s: &str, hub: &str, ghcr: &str) -> String {
    let others = format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{hub}\"\n\
         [[upstream]]\nname = \"ghcr.io\"\nurl = \"{ghcr}\"\n"
    );
    config_toml_with(k8s, "5m", "30s", &others)
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

/// Where regcache commits content with this digest.
pub fn blob_file(data_dir: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest");
    data_dir.join("blobs").join(alg).join(&hex[..2]).join(hex)
}

/// Files in `<data>/tmp`.
pub fn tmp_files(data_dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(data_dir.join("tmp")) {
        Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    }
}

/// Polls `check` until it is true; fails the test after [`WAIT`].
pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
