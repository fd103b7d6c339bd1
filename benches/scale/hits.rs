//! The hit phase: manifests by digest, manifests by tag and blobs, each of an
//! image picked at random over the whole set, over HTTP/1.1 keep-alive to the
//! running server. First one client asking in sequence (the latency figures),
//! then a few clients at once (the tail under some concurrency). Every answer
//! must be a 200 whose body hashes to the digest asked for (a tag: its
//! manifest's), or the bench stops.

use std::time::{Duration, Instant};

use regcache::oci::Digest;

use crate::data::Image;

/// What is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ManifestByDigest,
    ManifestByTag,
    Blob,
}

pub const KINDS: [Kind; 3] = [Kind::ManifestByDigest, Kind::ManifestByTag, Kind::Blob];

/// Latencies of one kind of request.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// The `q` quantile (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort();
        let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted[at].as_secs_f64() * 1000.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// Sequential latencies per kind, and the latencies of the concurrent phase
/// (all kinds together).
#[derive(Debug)]
pub struct HitResult {
    pub sequential: Vec<(Kind, Latencies)>,
    pub concurrent: Latencies,
    pub clients: usize,
}

/// SplitMix64 again: which image and blob each request asks for.
struct Pick(u64);

impl Pick {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

fn client() -> reqwest::Client {
    // reqwest is built without a crypto provider (regcache installs ring's);
    // plain HTTP needs none, but the builder asks for one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .build()
        .expect("HTTP client")
}

/// `per_kind` sequential requests of each kind (interleaved), then `clients`
/// clients asking `per_kind` requests each, kinds in turn.
pub async fn run(base: &str, images: &[Image], per_kind: usize, clients: usize) -> HitResult {
    let client = client();
    let mut pick = Pick(42);
    let mut sequential: Vec<(Kind, Latencies)> =
        KINDS.iter().map(|&k| (k, Latencies::default())).collect();
    // A few untimed requests open the connection.
    for i in 0..10 {
        ask(&client, base, images, KINDS[i % 3], &mut pick).await;
    }
    for i in 0..per_kind * KINDS.len() {
        let slot = i % KINDS.len();
        let took = ask(&client, base, images, KINDS[slot], &mut pick).await;
        sequential[slot].1.0.push(took);
    }
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (base, client) = (base.to_owned(), client.clone());
            let images: Vec<_> = (0..per_kind)
                .map(|i| {
                    let mut pick = Pick(1000 + (c * per_kind + i) as u64);
                    let image = &images[pick.below(images.len())];
                    request(&base, image, KINDS[i % 3], &mut pick)
                })
                .collect();
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(images.len());
                for (url, accept, want) in images {
                    times.push(timed_get(&client, &url, accept, &want).await);
                }
                times
            })
        })
        .collect();
    let mut concurrent = Latencies::default();
    for task in tasks {
        concurrent.0.extend(task.await.expect("client task"));
    }
    HitResult {
        sequential,
        concurrent,
        clients,
    }
}

async fn ask(
    client: &reqwest::Client,
    base: &str,
    images: &[Image],
    kind: Kind,
    pick: &mut Pick,
) -> Duration {
    let image = &images[pick.below(images.len())];
    let (url, accept, want) = request(base, image, kind, pick);
    timed_get(client, &url, accept, &want).await
}

/// The URL, `Accept` header and expected body digest of one request.
fn request(
    base: &str,
    image: &Image,
    kind: Kind,
    pick: &mut Pick,
) -> (String, Option<&'static str>, Digest) {
    let manifest = Some(regcache::oci::media_type::OCI_MANIFEST);
    let repo = &image.repo;
    match kind {
        Kind::ManifestByDigest => (
            format!("{base}/v2/{repo}/manifests/{}", image.manifest),
            manifest,
            image.manifest.clone(),
        ),
        Kind::ManifestByTag => (
            format!("{base}/v2/{repo}/manifests/{}", image.tag),
            manifest,
            image.manifest.clone(),
        ),
        Kind::Blob => {
            let blob = &image.blobs[pick.below(image.blobs.len())];
            (format!("{base}/v2/{repo}/blobs/{blob}"), None, blob.clone())
        }
    }
}

/// One GET, body read whole; panics on anything but a 200 with the right bytes.
async fn timed_get(
    client: &reqwest::Client,
    url: &str,
    accept: Option<&str>,
    want: &Digest,
) -> Duration {
    let started = Instant::now();
    let mut request = client.get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.expect("GET");
    let status = response.status();
    let body = response.bytes().await.expect("body");
    let took = started.elapsed();
    assert_eq!(status, 200, "GET {url}: {}", String::from_utf8_lossy(&body));
    assert_eq!(&Digest::sha256_of(&body), want, "GET {url}: wrong bytes");
    took
}
