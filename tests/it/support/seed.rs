//! Images seeded into a [`FakeUpstream`] as plain data (a config, one or more
//! random layers, an OCI manifest by tag), and the pull every test makes of
//! them: the manifest by tag, then every blob, each body compared byte for byte
//! and hashed against its digest.
//!
//! Real tar images for real clients are `support::images`.

use bytes::Bytes;
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

use super::fake::FakeUpstream;
use super::http::{client, send};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn random_bytes(n: usize) -> Bytes {
    let mut v = vec![0u8; n];
    rand::fill(&mut v[..]);
    Bytes::from(v)
}

/// A blob as the fake serves it.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub bytes: Bytes,
}

/// One image in the fake: a config blob, its layers and a manifest by tag.
#[derive(Debug, Clone)]
pub struct Image {
    pub repo: String,
    pub tag: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Bytes,
    pub manifest_digest: String,
}

impl Image {
    /// The layer of a one-layer image (what [`seed_image`] makes).
    #[track_caller]
    pub fn layer(&self) -> &Blob {
        assert_eq!(self.layers.len(), 1, "a one-layer image");
        &self.layers[0]
    }

    /// The config, then the layers: every blob a pull fetches, in order.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(&self.layers)
    }
}

/// Seeds `repo:tag` with one random layer of `layer_size` bytes.
pub fn seed_image(fake: &FakeUpstream, repo: &str, tag: &str, layer_size: usize) -> Image {
    seed_layers(fake, repo, tag, &[layer_size])
}

/// Seeds `repo:tag` with a random layer of each of `layer_sizes` bytes.
pub fn seed_layers(fake: &FakeUpstream, repo: &str, tag: &str, layer_sizes: &[usize]) -> Image {
    let put = |bytes: Bytes| Blob {
        digest: fake.put_blob(repo, bytes.clone()),
        bytes,
    };
    // A nonce: two seeded images never share a config (nor its digest).
    let config = put(Bytes::from(format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"nonce":"{}"}}"#,
        hex::encode(random_bytes(8))
    )));
    let layers: Vec<Blob> = layer_sizes.iter().map(|n| put(random_bytes(*n))).collect();
    let manifest = manifest_json(&config, &layers);
    let manifest_digest = fake.put_manifest(repo, Some(tag), OCI_MANIFEST, manifest.clone());
    Image {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        config,
        layers,
        manifest,
        manifest_digest,
    }
}

/// An OCI image manifest naming `config` and `layers`.
fn manifest_json(config: &Blob, layers: &[Blob]) -> Bytes {
    let descriptor = |media_type: &str, blob: &Blob| serde_json::json!({"mediaType": media_type, "digest": blob.digest, "size": blob.bytes.len()});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
    });
    Bytes::from(manifest.to_string())
}

/// Pulls `image` through the regcache at `base` as a client would: the
/// manifest by tag, then every blob; each answer must be 200 with exactly the
/// image's bytes, hashing to their digest.
pub async fn pull(base: &str, image: &Image) {
    pull_via(base, &image.repo, "", image).await;
}

/// [`pull`] with the repository named `name` in the path (a routing prefix,
/// or Docker Hub's short form) and `query` on every request (`?ns=...`).
pub async fn pull_via(base: &str, name: &str, query: &str, image: &Image) {
    let http = client();
    let url = format!("{base}/v2/{name}/manifests/{}{query}", image.tag);
    let got = send(http.get(&url).header("accept", OCI_MANIFEST)).await;
    assert_eq!(got.status, StatusCode::OK, "{url}: {:?}", got.body);
    assert_eq!(got.ok_body(), &image.manifest, "{url}");
    assert_eq!(sha256(got.ok_body()), image.manifest_digest, "{url}");
    for blob in image.blobs() {
        let url = format!("{base}/v2/{name}/blobs/{}{query}", blob.digest);
        let got = send(http.get(&url)).await;
        assert_eq!(got.status, StatusCode::OK, "{url}: {:?}", got.body);
        assert!(got.ok_body() == &blob.bytes, "{url}: wrong bytes");
        assert_eq!(sha256(got.ok_body()), blob.digest, "{url}");
    }
}
