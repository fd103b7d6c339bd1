//! Test images built in-process, as plain data: every blob and manifest with its
//! digest and exact bytes, in push order (blobs, then child manifests, then the
//! index), plus what each platform consists of, so tests can compare what a
//! client stored against known digests. Three shapes: an OCI image with three
//! gzip'd tar layers, a multi-arch Docker manifest list (amd64 + arm64, Docker
//! schema2 children) and an OCI image with one 1 GiB layer (generated once per
//! test process and shared). This module only computes bytes: it never starts
//! anything, never touches the network and never writes outside memory.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::sync::OnceLock;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::sha256;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Size of the single file in the big image's layer.
pub const BIG_FILE_SIZE: usize = 1 << 30;

/// A blob (layer or config) and its `sha256:` digest.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub bytes: Bytes,
}

/// A manifest (image manifest or index) with its media type and digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: Bytes,
}

/// One platform's image manifest and what it references.
#[derive(Debug, Clone)]
pub struct Platform {
    /// GOARCH-style architecture: `amd64`, `arm64`.
    pub arch: String,
    pub manifest: String,
    pub config: String,
    /// Compressed layer digests, in order.
    pub layers: Vec<String>,
    /// Uncompressed layer digests (the config's `rootfs.diff_ids`), in order.
    pub diff_ids: Vec<String>,
}

/// A whole image, ready to push: blobs first, then manifests in order (children
/// before the index); `top` is the digest the tag points at.
#[derive(Debug, Clone)]
pub struct Image {
    pub repo: String,
    pub tag: String,
    pub blobs: Vec<Blob>,
    pub manifests: Vec<Manifest>,
    pub top: String,
    pub platforms: Vec<Platform>,
}

impl Image {
    /// Every digest of the image: manifests (index and children) and blobs.
    pub fn all_digests(&self) -> BTreeSet<String> {
        self.manifests
            .iter()
            .map(|m| m.digest.clone())
            .chain(self.blobs.iter().map(|b| b.digest.clone()))
            .collect()
    }

    /// The platform for `arch`; panics if the image has none.
    pub fn platform(&self, arch: &str) -> &Platform {
        self.platforms
            .iter()
            .find(|p| p.arch == arch)
            .unwrap_or_else(|| panic!("{} has no {arch} platform", self.repo))
    }

    /// What a single-platform pull of `arch` stores: the top manifest (the index
    /// if there is one), the platform's manifest, config and layers.
    pub fn digests_for(&self, arch: &str) -> BTreeSet<String> {
        let p = self.platform(arch);
        let mut set: BTreeSet<String> = [self.top.clone(), p.manifest.clone(), p.config.clone()]
            .into_iter()
            .collect();
        set.extend(p.layers.iter().cloned());
        set
    }
}

/// A gzip'd tar layer: compressed bytes and the uncompressed tar's digest.
struct Layer {
    blob: Blob,
    diff_id: String,
}

/// A tar header for a regular file (fixed mode and mtime, so layers are
/// reproducible).
fn file_header(path: &str, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_path(path).expect("tar path");
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    header
}

/// A gzip'd (default level) tar layer of small `(path, contents)` files.
fn layer(files: &[(String, Vec<u8>)]) -> Layer {
    let mut tar = tar::Builder::new(HashingWriter::new(GzEncoder::new(
        Vec::new(),
        Compression::default(),
    )));
    for (path, data) in files {
        let mut header = file_header(path, data.len() as u64);
        tar.append_data(&mut header, path, &data[..])
            .expect("append tar entry");
    }
    let hashing = tar.into_inner().expect("finish tar");
    let diff_id = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    let bytes = Bytes::from(hashing.inner.finish().expect("finish gzip"));
    Layer {
        blob: Blob {
            digest: sha256(&bytes),
            bytes,
        },
        diff_id,
    }
}

/// A small layer of `n` files of random bytes (a few KiB each).
fn small_layer(rng: &mut SmallRng, name: &str, n: usize) -> Layer {
    let files: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let mut data = vec![0u8; 1024 + (rng.next_u32() as usize % 8192)];
            rng.fill_bytes(&mut data);
            (format!("{name}/file-{i}.bin"), data)
        })
        .collect();
    layer(&files)
}

fn config_json(arch: &str, diff_ids: &[String], docker: bool) -> Bytes {
    let mut config = json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": diff_ids.iter().map(|_| json!({"created_by": "regcache interop test"})).collect::<Vec<_>>(),
    });
    if arch == "arm64" {
        config["variant"] = json!("v8");
    }
    if docker {
        // Docker image configs carry a container_config; harmless for OCI.
        config["container_config"] = json!({});
    }
    Bytes::from(serde_json::to_vec(&config).expect("config json"))
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// Builds one platform's config + manifest; pushes blobs and the manifest into
/// the vectors and returns the platform description.
fn platform_image(
    arch: &str,
    layers: Vec<Layer>,
    docker: bool,
    blobs: &mut Vec<Blob>,
    manifests: &mut Vec<Manifest>,
) -> Platform {
    let (manifest_type, config_type, layer_type) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP)
    } else {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP)
    };
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = config_json(arch, &diff_ids, docker);
    let config_digest = sha256(&config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": descriptor(config_type, &config_digest, config.len()),
        "layers": layers
            .iter()
            .map(|l| descriptor(layer_type, &l.blob.digest, l.blob.bytes.len()))
            .collect::<Vec<_>>(),
    });
    let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).expect("manifest json"));
    let manifest_digest = sha256(&manifest);
    let layer_digests = layers.iter().map(|l| l.blob.digest.clone()).collect();
    blobs.extend(layers.into_iter().map(|l| l.blob));
    blobs.push(Blob {
        digest: config_digest.clone(),
        bytes: config,
    });
    manifests.push(Manifest {
        digest: manifest_digest.clone(),
        media_type: manifest_type.to_string(),
        bytes: manifest,
    });
    Platform {
        arch: arch.to_string(),
        manifest: manifest_digest,
        config: config_digest,
        layers: layer_digests,
        diff_ids,
    }
}

fn single_platform(repo: &str, tag: &str, layers: Vec<Layer>) -> Image {
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    let platform = platform_image("amd64", layers, false, &mut blobs, &mut manifests);
    Image {
        repo: repo.to_string(),
        tag: tag.to_string(),
        blobs,
        manifests,
        top: platform.manifest.clone(),
        platforms: vec![platform],
    }
}

/// An OCI image (OCI manifest + config) with three gzip'd tar layers of random
/// files. `seed` makes different calls give different content.
pub fn oci_three_layers(repo: &str, tag: &str, seed: u64) -> Image {
    let mut rng = SmallRng::seed_from_u64(seed);
    let layers = (0..3)
        .map(|i| small_layer(&mut rng, &format!("layer{i}"), 2 + i))
        .collect();
    single_platform(repo, tag, layers)
}

/// A Docker manifest list with linux/amd64 and linux/arm64 Docker schema2
/// images (two layers each, distinct content per platform).
pub fn docker_multi_arch(repo: &str, tag: &str, seed: u64) -> Image {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    let mut platforms = Vec::new();
    for arch in ["amd64", "arm64"] {
        let layers = (0..2)
            .map(|i| small_layer(&mut rng, &format!("{arch}{i}"), 2))
            .collect();
        platforms.push(platform_image(
            arch,
            layers,
            true,
            &mut blobs,
            &mut manifests,
        ));
    }
    let list = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": platforms.iter().map(|p| {
            let m = manifests.iter().find(|m| m.digest == p.manifest).expect("child");
            let mut platform = json!({ "architecture": p.arch, "os": "linux" });
            if p.arch == "arm64" {
                platform["variant"] = json!("v8");
            }
            json!({
                "mediaType": DOCKER_MANIFEST,
                "digest": m.digest,
                "size": m.bytes.len(),
                "platform": platform,
            })
        }).collect::<Vec<_>>(),
    });
    let list = Bytes::from(serde_json::to_vec_pretty(&list).expect("list json"));
    let top = sha256(&list);
    manifests.push(Manifest {
        digest: top.clone(),
        media_type: DOCKER_LIST.to_string(),
        bytes: list,
    });
    Image {
        repo: repo.to_string(),
        tag: tag.to_string(),
        blobs,
        manifests,
        top,
        platforms,
    }
}

/// An OCI image whose only layer is a tar holding one 1 GiB file of
/// pseudo-random bytes, gzip'd without compression (stored deflate blocks, what
/// `Compression::none()` produces), so it stays ~1 GiB. Built once per test
/// process, in a few seconds; every call shares the same bytes (the repository
/// and tag are per call).
pub fn big_layer(repo: &str, tag: &str) -> Image {
    static LAYER: OnceLock<(Blob, String)> = OnceLock::new();
    let (blob, diff_id) = LAYER.get_or_init(big_layer_blob);
    single_platform(
        repo,
        tag,
        vec![Layer {
            blob: blob.clone(),
            diff_id: diff_id.clone(),
        }],
    )
}

/// The big layer and its diff_id. Written by hand rather than through
/// `tar::Builder` + `GzEncoder` + a per-byte RNG: the test crate is built
/// without optimisation and those generic paths took ~12 s per GiB there.
/// The file is a random 1 MiB block repeated, each copy stamped with its index
/// in its first 8 bytes, so no two MiB are alike (a misplaced chunk changes the
/// digest).
fn big_layer_blob() -> (Blob, String) {
    const BLOCK: usize = 1 << 20;
    let mut block = vec![0u8; BLOCK];
    SmallRng::seed_from_u64(0x5eed_1618).fill_bytes(&mut block);
    let mut diff = Sha256::new();
    let mut gz = StoredGzip::with_capacity(BIG_FILE_SIZE + BIG_FILE_SIZE / 1024 + 4096);
    let mut emit = |chunk: &[u8]| {
        diff.update(chunk);
        gz.write(chunk);
    };
    let header = file_header("big/random.bin", BIG_FILE_SIZE as u64);
    emit(header.as_bytes());
    for i in 0..BIG_FILE_SIZE / BLOCK {
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        emit(&block);
    }
    // The file is a multiple of 512 bytes, so no padding; then the two zero
    // records that end a tar archive.
    emit(&[0u8; 1024]);
    let diff_id = format!("sha256:{}", hex::encode(diff.finalize()));
    let bytes = Bytes::from(gz.finish());
    (
        Blob {
            digest: sha256(&bytes),
            bytes,
        },
        diff_id,
    )
}

/// A gzip stream of stored (uncompressed) deflate blocks, RFC 1951 §3.2.4 and
/// RFC 1952.
struct StoredGzip {
    out: Vec<u8>,
    pending: Vec<u8>,
    crc: flate2::Crc,
}

impl StoredGzip {
    const MAX_BLOCK: usize = 65_535;

    fn with_capacity(capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        // Magic, deflate, no flags, no mtime, no extra flags, OS unknown.
        out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        StoredGzip {
            out,
            pending: Vec::with_capacity(Self::MAX_BLOCK),
            crc: flate2::Crc::new(),
        }
    }

    fn write(&mut self, mut data: &[u8]) {
        self.crc.update(data);
        while !data.is_empty() {
            let take = (Self::MAX_BLOCK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == Self::MAX_BLOCK {
                self.block(false);
            }
        }
    }

    fn block(&mut self, last: bool) {
        let len = u16::try_from(self.pending.len()).expect("stored block size");
        self.out.push(u8::from(last));
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(&(!len).to_le_bytes());
        self.out.extend_from_slice(&self.pending);
        self.pending.clear();
    }

    fn finish(mut self) -> Vec<u8> {
        self.block(true);
        self.out.extend_from_slice(&self.crc.sum().to_le_bytes());
        self.out.extend_from_slice(&self.crc.amount().to_le_bytes());
        self.out
    }
}

/// Hashes everything written through it (the uncompressed tar → diff_id).
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn stored_gzip_round_trips() {
    use std::io::Read as _;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut gz = StoredGzip::with_capacity(0);
    gz.write(&data[..70_000]);
    gz.write(&data[70_000..]);
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&gz.finish()[..])
        .read_to_end(&mut decoded)
        .expect("valid gzip");
    assert_eq!(decoded, data);
}
