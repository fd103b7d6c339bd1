//! Builds the data directory the scale bench measures: `images` images of one
//! config blob and nine layer blobs each (one manifest per ten blobs), 30
//! images (tags `v0`…`v29`) per repository, spread over ten namespaces.
//!
//! Every blob and manifest is a real file under `blobs/`, named by the sha256
//! of its bytes, so reconciliation, `verify` and the hit path see a store
//! exactly as regcache writes it. Rows and files agree: each row's size is its
//! file's size (blobs of 16 B to 4 KiB, manifests of about 1 KiB, 2.2 KiB on
//! average). Nothing fakes a 10 TB store: what grows with the store in the
//! code measured is the number of rows and files, not the sizes in them
//! (SQLite integers, eviction targets in bytes), and a store of terabytes with
//! files that are not there would be "repaired" by reconciliation.
//!
//! The files are written without fsync (the bench's own data), the rows through
//! the index API in one transaction per repository. [`describe`] computes the
//! same images (same seed, same digests) without writing anything: what a
//! kept store (`--keep`) needs to be measured again.

use std::path::Path;
use std::time::SystemTime;

use regcache::index::{ContentRow, Index};
use regcache::oci::media_type::OCI_MANIFEST;
use regcache::oci::{Digest, RepoName, Tag};
use regcache::store::Store;

/// Blobs per image: a config and nine layers.
pub const BLOBS_PER_IMAGE: usize = 10;
/// Images (and tags) per repository.
pub const IMAGES_PER_REPO: usize = 30;
/// The upstream the rows belong to (the bench server's only upstream).
pub const UPSTREAM: &str = "registry.k8s.io";

/// One image as the hit phase asks for it.
#[derive(Debug)]
pub struct Image {
    pub repo: String,
    pub tag: String,
    pub manifest: Digest,
    pub blobs: Vec<Digest>,
}

/// What was built.
#[derive(Debug)]
pub struct Built {
    pub images: Vec<Image>,
    /// Files (= content rows): blobs plus manifests.
    pub files: u64,
    pub bytes: u64,
}

/// SplitMix64: reproducible content without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Writes `blobs` blobs (rounded up to whole images) and their manifests, tags
/// and links into `data`.
pub async fn build(data: &Path, blobs: usize) -> Built {
    let store = Store::open(data).expect("store");
    let index = Index::open(&data.join("index.db")).expect("index");
    for shard in 0..=255u8 {
        std::fs::create_dir_all(data.join("blobs/sha256").join(hex::encode([shard])))
            .expect("shard directory");
    }
    generate(blobs, Some((&store, &index))).await
}

/// What [`build`] writes for `blobs`, computed again without writing a file
/// or a row (the bytes are generated and hashed: a few seconds a million).
pub async fn describe(blobs: usize) -> Built {
    generate(blobs, None).await
}

/// The images of `blobs` blobs; written through `to` when given.
async fn generate(blobs: usize, to: Option<(&Store, &Index)>) -> Built {
    let images = blobs.div_ceil(BLOBS_PER_IMAGE);
    let mut rng = Rng(0x5eed);
    let mut built = Built {
        images: Vec::with_capacity(images),
        files: 0,
        bytes: 0,
    };
    for first in (0..images).step_by(IMAGES_PER_REPO) {
        let repo_no = first / IMAGES_PER_REPO;
        let repo: RepoName = format!("team{}/app{repo_no}", repo_no % 10)
            .parse()
            .unwrap();
        let mut rows = Vec::new();
        let mut tags = Vec::new();
        for i in 0..IMAGES_PER_REPO.min(images - first) {
            let image = write_image(to.map(|(s, _)| s), &mut rng, &repo, i, &mut rows);
            tags.push((image.tag.parse::<Tag>().unwrap(), image.manifest.clone()));
            built.images.push(image);
        }
        built.files += rows.len() as u64;
        built.bytes += rows.iter().map(|r| r.size).sum::<u64>();
        let Some((_, index)) = to else {
            continue;
        };
        index
            .insert_contents(rows, UPSTREAM, &repo)
            .await
            .expect("insert rows");
        index
            .set_tags(UPSTREAM, &repo, tags, SystemTime::now())
            .await
            .expect("insert tags");
    }
    built
}

/// Writes one image's blobs and manifest (when given a store), pushing their rows.
fn write_image(
    store: Option<&Store>,
    rng: &mut Rng,
    repo: &RepoName,
    i: usize,
    rows: &mut Vec<ContentRow>,
) -> Image {
    let mut descriptors = Vec::with_capacity(BLOBS_PER_IMAGE);
    let mut blobs = Vec::with_capacity(BLOBS_PER_IMAGE);
    for b in 0..BLOBS_PER_IMAGE {
        let len = 16 + (rng.next() % 4080) as usize;
        let bytes = rng.bytes(len);
        let digest = write_file(store, &bytes);
        rows.push(ContentRow {
            digest: digest.clone(),
            size: len as u64,
            media_type: None,
        });
        let media_type = if b == 0 {
            "application/vnd.oci.image.config.v1+json"
        } else {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        };
        descriptors.push(serde_json::json!({
            "mediaType": media_type, "digest": digest.to_string(), "size": len,
        }));
        blobs.push(digest);
    }
    let layers = descriptors.split_off(1);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptors[0],
        "layers": layers,
        "annotations": { "org.opencontainers.image.ref.name": format!("{repo}:v{i}") },
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = write_file(store, &bytes);
    rows.push(ContentRow {
        digest: digest.clone(),
        size: bytes.len() as u64,
        media_type: Some(OCI_MANIFEST.to_owned()),
    });
    Image {
        repo: repo.to_string(),
        tag: format!("v{i}"),
        manifest: digest,
        blobs,
    }
}

fn write_file(store: Option<&Store>, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256_of(bytes);
    if let Some(store) = store {
        std::fs::write(store.blob_path(&digest), bytes).expect("blob file");
    }
    digest
}
