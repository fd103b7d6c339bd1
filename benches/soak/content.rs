//! The soak's images: `--repos` repositories (`soak/r00` …) of `--tags` tags
//! each. Every image has its own config blob, a layer shared by all tags of its
//! repository, a layer shared by all repositories (one of four, so blobs are
//! also requested under repositories other than the one that filled them) and
//! two layers of its own; layer sizes are log-uniform between 1 KiB and 32 MiB.
//! A blob's bytes are a function of its seed (64 KiB chunks of seeded
//! pseudo-random bytes), so any range can be regenerated to check an answer
//! without keeping the content in memory. Pushed once to the origin over its
//! HTTP push API (the shared layers are cross-repository mounts).

use std::collections::HashSet;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const CHUNK: u64 = 64 * 1024;
const MIN_LAYER: u64 = 1024;
const MAX_LAYER: u64 = 32 << 20;
/// Layers every repository shares (a base OS image, say).
const SHARED_LAYERS: usize = 4;

/// One blob: its bytes follow from `seed` (layers) or are `literal` (configs).
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    seed: u64,
    literal: Option<Bytes>,
}

impl Blob {
    fn generated(seed: u64, size: u64) -> Blob {
        let mut blob = Blob {
            digest: String::new(),
            size,
            seed,
            literal: None,
        };
        let mut hasher = Sha256::new();
        blob.for_each_chunk(0, size, |c| hasher.update(c));
        blob.digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        blob
    }

    fn literal(bytes: Bytes) -> Blob {
        Blob {
            digest: sha256(&bytes),
            size: bytes.len() as u64,
            seed: 0,
            literal: Some(bytes),
        }
    }

    /// Calls `f` with the bytes `[start, end)` in order, a chunk at a time.
    pub fn for_each_chunk(&self, start: u64, end: u64, mut f: impl FnMut(&[u8])) {
        if let Some(bytes) = &self.literal {
            f(&bytes[start as usize..end as usize]);
            return;
        }
        let mut buf = vec![0u8; CHUNK as usize];
        let mut at = start;
        while at < end {
            let index = at / CHUNK;
            let chunk_start = index * CHUNK;
            let chunk_len = CHUNK.min(self.size - chunk_start) as usize;
            let mut rng =
                SmallRng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            rng.fill_bytes(&mut buf[..chunk_len]);
            let from = (at - chunk_start) as usize;
            let to = ((end - chunk_start) as usize).min(chunk_len);
            f(&buf[from..to]);
            at = chunk_start + to as u64;
        }
    }

    /// The bytes `[start, end)` (at most one range request's worth).
    pub fn range(&self, start: u64, end: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity((end - start) as usize);
        self.for_each_chunk(start, end, |c| out.extend_from_slice(c));
        out
    }

    fn bytes(&self) -> Bytes {
        Bytes::from(self.range(0, self.size))
    }
}

/// One tag of one repository.
#[derive(Debug, Clone)]
pub struct Image {
    pub repo: usize,
    pub tag: String,
    pub manifest: Bytes,
    pub manifest_digest: String,
    /// Config first, then the layers.
    pub blobs: Vec<Blob>,
}

/// Everything pushed, for choosing requests and checking answers.
#[derive(Debug)]
pub struct Content {
    pub repos: usize,
    pub images: Vec<Image>,
    /// Bytes of distinct blobs and manifests.
    pub total_bytes: u64,
}

pub fn repo_name(repo: usize) -> String {
    format!("soak/r{repo:02}")
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// 1 KiB to 32 MiB, log-uniform: as many small layers as big ones.
fn layer_size(rng: &mut SmallRng) -> u64 {
    let (lo, hi) = ((MIN_LAYER as f64).ln(), (MAX_LAYER as f64).ln());
    rng.random_range(lo..hi).exp() as u64
}

impl Content {
    /// The images (deterministic for a given shape; digests computed here).
    pub fn generate(repos: usize, tags: usize) -> Content {
        let mut rng = SmallRng::seed_from_u64(0x50a4);
        let mut seed = 1u64;
        let mut next = |size: u64| {
            seed += 1;
            Blob::generated(seed, size)
        };
        let shared: Vec<Blob> = (0..SHARED_LAYERS)
            .map(|_| next(layer_size(&mut rng)))
            .collect();
        let mut images = Vec::new();
        for repo in 0..repos {
            let repo_layer = next(layer_size(&mut rng));
            for t in 0..tags {
                let tag = format!("v{t}");
                let config = Blob::literal(config_json(repo, &tag));
                let own: Vec<Blob> = (0..2).map(|_| next(layer_size(&mut rng))).collect();
                let layers = [
                    vec![
                        shared[(repo + t) % SHARED_LAYERS].clone(),
                        repo_layer.clone(),
                    ],
                    own,
                ]
                .concat();
                images.push(image(repo, tag, config, layers));
            }
        }
        let mut seen = HashSet::new();
        let mut total_bytes = 0;
        for image in &images {
            total_bytes += image.manifest.len() as u64;
            for blob in &image.blobs {
                if seen.insert(blob.digest.clone()) {
                    total_bytes += blob.size;
                }
            }
        }
        Content {
            repos,
            images,
            total_bytes,
        }
    }

    /// Pushes every image to `base` (the origin).
    pub async fn push(&self, http: &reqwest::Client, base: &str) {
        let mut first_repo: std::collections::HashMap<String, usize> = Default::default();
        let mut uploads = Vec::new();
        let mut mounts = Vec::new();
        for image in &self.images {
            for blob in &image.blobs {
                match first_repo.get(&blob.digest) {
                    None => {
                        first_repo.insert(blob.digest.clone(), image.repo);
                        uploads.push((image.repo, blob.clone()));
                    }
                    Some(&from) if from != image.repo => {
                        mounts.push((image.repo, from, blob.digest.clone()))
                    }
                    Some(_) => {}
                }
            }
        }
        mounts.sort();
        mounts.dedup();
        // Four uploads at a time: each holds one blob (≤ 32 MiB) in memory.
        let uploads = futures_util::stream::iter(uploads.into_iter().map(|(repo, blob)| {
            let http = http.clone();
            let base = base.to_owned();
            async move { upload(&http, &base, repo, &blob).await }
        }));
        use futures_util::StreamExt as _;
        uploads.buffer_unordered(4).collect::<Vec<()>>().await;
        for (repo, from, digest) in mounts {
            mount(http, base, repo, from, &digest).await;
        }
        for image in &self.images {
            let put = http
                .put(format!(
                    "{base}/v2/{}/manifests/{}",
                    repo_name(image.repo),
                    image.tag
                ))
                .header("content-type", OCI_MANIFEST)
                .body(image.manifest.clone())
                .send()
                .await
                .expect("put manifest");
            assert_eq!(
                put.status(),
                201,
                "put manifest {}:{}",
                image.repo,
                image.tag
            );
        }
    }
}

fn config_json(repo: usize, tag: &str) -> Bytes {
    // About 1 KiB, like a small image's config.
    let history: Vec<_> = (0..8)
        .map(|i| serde_json::json!({"created_by": format!("/bin/sh -c step {i} of {repo}:{tag}")}))
        .collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": [format!("SOAK_IMAGE=r{repo:02}:{tag}")]},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": history,
        }))
        .expect("config json"),
    )
}

fn image(repo: usize, tag: String, config: Blob, layers: Vec<Blob>) -> Image {
    let descriptor = |media: &str, blob: &Blob| serde_json::json!({"mediaType": media, "digest": blob.digest, "size": blob.size});
    let manifest = Bytes::from(
        serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": layers.iter().map(|l| descriptor(LAYER, l)).collect::<Vec<_>>(),
        }))
        .expect("manifest json"),
    );
    Image {
        repo,
        tag,
        manifest_digest: sha256(&manifest),
        manifest,
        blobs: [vec![config], layers].concat(),
    }
}

async fn upload(http: &reqwest::Client, base: &str, repo: usize, blob: &Blob) {
    let start = http
        .post(format!("{base}/v2/{}/blobs/uploads/", repo_name(repo)))
        .send()
        .await
        .expect("start upload");
    assert_eq!(start.status(), 202, "start upload: {start:?}");
    let mut url = location(base, &start);
    url.query_pairs_mut().append_pair("digest", &blob.digest);
    let put = http
        .put(url)
        .header("content-type", "application/octet-stream")
        .body(blob.bytes())
        .send()
        .await
        .expect("put blob");
    assert_eq!(put.status(), 201, "put blob {}", blob.digest);
}

async fn mount(http: &reqwest::Client, base: &str, repo: usize, from: usize, digest: &str) {
    let post = http
        .post(format!(
            "{base}/v2/{}/blobs/uploads/?mount={digest}&from={}",
            repo_name(repo),
            repo_name(from)
        ))
        .send()
        .await
        .expect("mount blob");
    assert_eq!(post.status(), 201, "mount {digest} into {repo}: {post:?}");
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
