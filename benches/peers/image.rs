//! The test image `bench/app:v1`: an OCI manifest whose layers are a 4 KiB, a
//! 6 MiB and a 1 GiB blob of seeded pseudo-random bytes, pushed to the origin
//! over its HTTP push API. The big blob is generated while it streams to the
//! registry (one chunk in memory at a time) and hashed on the way.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest as _, Sha256};

pub const REPO: &str = "bench/app";
pub const TAG: &str = "v1";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// What containerd sends for a manifest by tag: every manifest type it can use.
pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const GEN_CHUNK: usize = 1 << 20;

/// What was pushed, for checking answers.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub manifest: Bytes,
    pub manifest_digest: String,
    pub small: Bytes,
    pub small_digest: String,
    pub medium: Bytes,
    pub medium_digest: String,
    pub big_size: u64,
    pub big_digest: String,
}

impl Seeded {
    pub fn manifest_path() -> String {
        format!("/v2/{REPO}/manifests/{TAG}")
    }
    pub fn blob_path(digest: &str) -> String {
        format!("/v2/{REPO}/blobs/{digest}")
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn random_bytes(seed: u64, len: usize) -> Bytes {
    let mut data = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
    Bytes::from(data)
}

/// Pushes the image to `base` (the origin registry) and returns its digests.
pub async fn seed(http: &reqwest::Client, base: &str, big_size: u64) -> Seeded {
    let small = random_bytes(1, 4 * 1024);
    let medium = random_bytes(2, 6 * 1024 * 1024);
    let small_digest = sha256(&small);
    let medium_digest = sha256(&medium);
    let config = Bytes::from_static(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let config_digest = sha256(&config);
    for (digest, bytes) in [
        (&small_digest, &small),
        (&medium_digest, &medium),
        (&config_digest, &config),
    ] {
        put_blob(http, base, digest, bytes.clone()).await;
    }
    let big_digest = push_big_blob(http, base, big_size).await;
    let manifest = Bytes::from(
        serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [
                {"mediaType": LAYER, "digest": small_digest, "size": small.len()},
                {"mediaType": LAYER, "digest": medium_digest, "size": medium.len()},
                {"mediaType": LAYER, "digest": big_digest, "size": big_size},
            ],
        }))
        .expect("manifest json"),
    );
    let manifest_digest = sha256(&manifest);
    let put = http
        .put(format!("{base}/v2/{REPO}/manifests/{TAG}"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .expect("put manifest");
    assert_eq!(put.status(), 201, "put manifest: {:?}", put.text().await);
    Seeded {
        manifest,
        manifest_digest,
        small,
        small_digest,
        medium,
        medium_digest,
        big_size,
        big_digest,
    }
}

async fn start_upload(http: &reqwest::Client, base: &str) -> url::Url {
    let start = http
        .post(format!("{base}/v2/{REPO}/blobs/uploads/"))
        .send()
        .await
        .expect("start upload");
    assert_eq!(start.status(), 202, "start upload: {start:?}");
    location(base, &start)
}

fn location(base: &str, response: &reqwest::Response) -> url::Url {
    let location = response
        .headers()
        .get("location")
        .expect("upload Location")
        .to_str()
        .expect("ascii Location");
    url::Url::parse(base)
        .and_then(|b| b.join(location))
        .expect("upload URL")
}

async fn put_blob(http: &reqwest::Client, base: &str, digest: &str, bytes: Bytes) {
    let mut url = start_upload(http, base).await;
    url.query_pairs_mut().append_pair("digest", digest);
    let put = http
        .put(url)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .expect("put blob");
    assert_eq!(put.status(), 201, "put blob {digest}");
}

/// One PATCH whose body is generated (and hashed) as it is sent, then the
/// closing PUT with the digest: the blob is never whole in memory.
async fn push_big_blob(http: &reqwest::Client, base: &str, size: u64) -> String {
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let url = start_upload(http, base).await;
    let patch = http
        .patch(url)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(generated(
            size,
            Arc::clone(&hasher),
        )))
        .send()
        .await
        .expect("patch big blob");
    assert_eq!(patch.status(), 202, "patch big blob: {patch:?}");
    let digest = format!(
        "sha256:{}",
        hex::encode(hasher.lock().unwrap().clone().finalize())
    );
    let mut url = location(base, &patch);
    url.query_pairs_mut().append_pair("digest", &digest);
    let put = http.put(url).send().await.expect("close upload");
    assert_eq!(
        put.status(),
        201,
        "close big upload: {:?}",
        put.text().await
    );
    digest
}

/// `size` seeded pseudo-random bytes in 1 MiB chunks, each fed to `hasher`.
fn generated(
    size: u64,
    hasher: Arc<Mutex<Sha256>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let rng = SmallRng::seed_from_u64(0x5eed_1618);
    futures_util::stream::unfold((rng, 0u64), move |(mut rng, sent)| {
        let hasher = Arc::clone(&hasher);
        async move {
            if sent == size {
                return None;
            }
            let len = GEN_CHUNK.min((size - sent) as usize);
            let mut chunk = vec![0u8; len];
            rng.fill_bytes(&mut chunk);
            hasher.lock().unwrap().update(&chunk);
            Some((Ok(Bytes::from(chunk)), (rng, sent + len as u64)))
        }
    })
}
