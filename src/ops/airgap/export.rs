//! `regcache export`: writes the selected tagged images as an OCI image
//! layout, to a directory or streamed into a tar (each blob copied from the
//! store file into the archive, no temp copy). `index.json` comes first in a
//! tar, so a cut archive still says what it was meant to hold. An index
//! whose platforms were not all cached is exported with the platforms that
//! are (the layout spec lets blobs be missing); an image missing any of its
//! blobs is skipped with a warning. Reads the index and store, never writes them.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use serde_json::json;

use super::{CONTAINERD_NAME, OCI_LAYOUT, REF_NAME, blob_name, is_tar, select};
use crate::config::Config;
use crate::index::{Access, Index, TagLink};
use crate::oci::{Digest, MAX_MANIFEST_BYTES, References, media_type};
use crate::ops::format::human_size;
use crate::ops::progress::{ImageBar, Progress};
use crate::store::Store;

/// What an export wrote.
#[derive(Debug, Default)]
pub struct ExportSummary {
    pub images: usize,
    pub skipped: usize,
    /// Files written (manifests and blobs), each once.
    pub files: usize,
    pub bytes: u64,
}

/// One image to export: its name, top manifest and every digest it needs.
#[derive(Debug)]
struct Image {
    name: String,
    top: Digest,
    top_size: u64,
    media_type: String,
    /// Manifests and blobs, top first, each with its size.
    content: Vec<(Digest, u64)>,
}

impl Image {
    /// Bytes of all its manifests and blobs.
    fn bytes(&self) -> u64 {
        self.content.iter().map(|(_, size)| size).sum()
    }
}

/// Exports the tags matching `patterns` (all when empty) to `out`; `bars`
/// shows progress bars (on a terminal).
pub async fn export(
    config: &Config,
    out: &Path,
    patterns: &[String],
    bars: bool,
    log: &mut dyn Write,
) -> anyhow::Result<ExportSummary> {
    let started = Instant::now();
    let patterns = select::parse(patterns, config)?;
    let index = super::super::open_index(&config.data_dir, Access::ReadOnly)?;
    let store = super::super::attach_store(&config.data_dir)?;
    let mut summary = ExportSummary::default();
    let images = selected_images(&index, &store, &patterns, &mut summary, log).await?;
    if images.is_empty() {
        anyhow::bail!("no cached image matches; nothing exported");
    }
    write_layout(out, &images, &store, bars, &mut summary, log)?;
    let skipped = match summary.skipped {
        0 => String::new(),
        n => format!("; {n} skipped"),
    };
    writeln!(
        log,
        "exported {} images ({} files, {}) to {} in {:.1}s{skipped}",
        summary.images,
        summary.files,
        human_size(summary.bytes),
        out.display(),
        started.elapsed().as_secs_f64(),
    )?;
    Ok(summary)
}

/// The images of the tags `patterns` select; those that cannot be exported
/// are counted in `summary` and named in `log`.
async fn selected_images(
    index: &Index,
    store: &Store,
    patterns: &[crate::evict::Pin],
    summary: &mut ExportSummary,
    log: &mut dyn Write,
) -> anyhow::Result<Vec<Image>> {
    let mut images = Vec::new();
    for tag in index.all_tags().await? {
        if !select::selects(patterns, &tag) {
            continue;
        }
        match collect(index, store, &tag).await? {
            Ok(image) => images.push(image),
            Err(why) => {
                summary.skipped += 1;
                writeln!(log, "skipped {}: {why}", full_name(&tag))?;
            }
        }
    }
    Ok(images)
}

/// Writes `index.json`, `oci-layout`, then each image's files (each once).
fn write_layout(
    out: &Path,
    images: &[Image],
    store: &Store,
    bars: bool,
    summary: &mut ExportSummary,
    log: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut sink = Sink::create(out)?;
    sink.add_bytes("index.json", &index_json(images))?;
    sink.add_bytes("oci-layout", OCI_LAYOUT.as_bytes())?;
    let progress = Progress::new(images.len(), bars);
    progress.add_total(images.iter().map(Image::bytes).sum());
    progress.start_blobs();
    let mut written = HashSet::new();
    for image in images {
        let bar = progress.image(&image.name);
        bar.set_length(image.bytes(), image.content.len());
        for (digest, size) in &image.content {
            if !written.insert(digest.clone()) {
                bar.inc(*size);
                continue;
            }
            sink.add_blob(&store.blob_path(digest), &blob_name(digest), *size, &bar)
                .with_context(|| format!("{}: {digest}", image.name))?;
            summary.files += 1;
            summary.bytes += size;
        }
        let size = human_size(image.bytes());
        let line = format!("exported {}  {}  {size}", image.name, image.top);
        progress.finished_to(bar, log, &line)?;
    }
    sink.finish()?;
    progress.clear();
    summary.images = images.len();
    Ok(())
}

fn full_name(tag: &TagLink) -> String {
    format!("{}/{}:{}", tag.upstream, tag.repo, tag.tag)
}

/// The image `tag` points at, or why it cannot be exported.
async fn collect(
    index: &Index,
    store: &Store,
    tag: &TagLink,
) -> anyhow::Result<Result<Image, String>> {
    let Some((top_bytes, top_size)) = manifest(index, store, &tag.digest).await? else {
        return Ok(Err(format!("its manifest {} is not cached", tag.digest)));
    };
    let mut content = vec![(tag.digest.clone(), top_size)];
    let media_type = manifest_media_type(index, &tag.digest, &top_bytes).await?;
    let manifests = match crate::oci::references(&top_bytes) {
        Ok(References::Image(_)) => vec![(tag.digest.clone(), top_bytes)],
        Ok(References::Index(children)) => {
            let mut present = Vec::new();
            for child in children {
                if let Some((bytes, size)) = manifest(index, store, &child.digest).await? {
                    if blobs_cached(index, &bytes).await? {
                        content.push((child.digest.clone(), size));
                        present.push((child.digest, bytes));
                    }
                }
            }
            if present.is_empty() {
                return Ok(Err("none of its platforms is cached".into()));
            }
            present
        }
        Err(e) => return Ok(Err(e.to_string())),
    };
    for (digest, bytes) in &manifests {
        let Ok(References::Image(blobs)) = crate::oci::references(bytes) else {
            return Ok(Err(format!("{digest} is not an image manifest")));
        };
        for blob in blobs {
            let Some(row) = index.content(&blob.digest).await? else {
                return Ok(Err(format!("blob {} is not cached", blob.digest)));
            };
            content.push((blob.digest, row.size));
        }
    }
    let mut seen = HashSet::new();
    content.retain(|(d, _)| seen.insert(d.clone()));
    Ok(Ok(Image {
        name: full_name(tag),
        top: tag.digest.clone(),
        top_size,
        media_type,
        content,
    }))
}

/// A cached manifest's bytes and size.
async fn manifest(
    index: &Index,
    store: &Store,
    digest: &Digest,
) -> anyhow::Result<Option<(bytes::Bytes, u64)>> {
    if index.content(digest).await?.is_none() {
        return Ok(None);
    }
    let bytes = store.read_small(digest, MAX_MANIFEST_BYTES).await?;
    Ok(bytes.map(|b| {
        let len = b.len() as u64;
        (b, len)
    }))
}

/// Whether every blob an image manifest references is cached.
async fn blobs_cached(index: &Index, manifest: &[u8]) -> anyhow::Result<bool> {
    let Ok(References::Image(blobs)) = crate::oci::references(manifest) else {
        return Ok(false);
    };
    for blob in blobs {
        if index.content(&blob.digest).await?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The media type the index recorded, else the one the manifest names.
async fn manifest_media_type(
    index: &Index,
    digest: &Digest,
    bytes: &[u8],
) -> anyhow::Result<String> {
    let recorded = index.content(digest).await?.and_then(|row| row.media_type);
    let named = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_owned));
    Ok(recorded
        .or(named)
        .unwrap_or_else(|| media_type::OCI_MANIFEST.to_owned()))
}

fn index_json(images: &[Image]) -> Vec<u8> {
    let manifests: Vec<_> = images
        .iter()
        .map(|image| {
            json!({
                "mediaType": image.media_type,
                "digest": image.top.to_string(),
                "size": image.top_size,
                "annotations": {
                    REF_NAME: image.name,
                    CONTAINERD_NAME: image.name,
                },
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": manifests,
    });
    serde_json::to_vec_pretty(&index).expect("JSON values serialize")
}

/// Where the layout goes.
enum Sink {
    Dir(PathBuf),
    Tar(tar::Builder<std::io::BufWriter<File>>),
}

impl Sink {
    fn create(out: &Path) -> anyhow::Result<Self> {
        if is_tar(out) {
            let file =
                File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
            let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, file));
            for dir in ["blobs/", "blobs/sha256/"] {
                let mut header = tar::Header::new_ustar();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, dir, std::io::empty())?;
            }
            Ok(Self::Tar(tar))
        } else {
            std::fs::create_dir_all(out.join("blobs"))
                .with_context(|| format!("cannot create {}", out.display()))?;
            Ok(Self::Dir(out.to_owned()))
        }
    }

    fn add_bytes(&mut self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Dir(dir) => std::fs::write(dir.join(name), bytes)?,
            Self::Tar(tar) => tar.append_data(&mut file_header(bytes.len() as u64), name, bytes)?,
        }
        Ok(())
    }

    /// Copies a store file (it must still have `size` bytes), counting its
    /// bytes on `bar`.
    fn add_blob(
        &mut self,
        from: &Path,
        name: &str,
        size: u64,
        bar: &ImageBar,
    ) -> anyhow::Result<()> {
        let file = File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
        let len = file.metadata()?.len();
        anyhow::ensure!(
            len == size,
            "{} has {len} bytes, the index says {size}",
            from.display()
        );
        let mut counted = Counted { inner: file, bar };
        match self {
            Self::Dir(dir) => {
                let target = dir.join(name);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::io::copy(&mut counted, &mut File::create(target)?)?;
            }
            Self::Tar(tar) => tar.append_data(&mut file_header(size), name, counted)?,
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        if let Self::Tar(tar) = self {
            let mut writer = tar.into_inner()?;
            writer.flush()?;
            writer.get_ref().sync_all()?;
        }
        Ok(())
    }
}

/// A reader that counts what passes through it on a progress bar.
struct Counted<'a, R> {
    inner: R,
    bar: &'a ImageBar,
}

impl<R: std::io::Read> std::io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn file_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(size);
    header
}
