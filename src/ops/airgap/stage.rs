//! Reading an OCI image layout for `import`: a tar (gzip-compressed or not)
//! or a directory, entry by entry. `index.json` is kept in memory; every blob
//! is streamed into a `store::BlobWriter` temp file while it is hashed, and
//! kept uncommitted, with what it hashed to, until `import` has checked the
//! images that need it. A tar that ends early is noted, not an error: the
//! images it cut are refused, the others can still be imported.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::Context as _;
use bytes::Bytes;

use super::is_tar;
use crate::oci::{Digest, Hasher, MAX_MANIFEST_BYTES};
use crate::ops::progress::{ImageBar, Progress};
use crate::store::{BlobWriter, Store};

/// A blob read from the layout into a temp file of the store.
#[derive(Debug)]
pub(super) struct Staged {
    /// `None` once committed.
    pub(super) writer: Option<BlobWriter>,
    pub(super) size: u64,
    /// Why the bytes are not the digest's, if they are not.
    pub(super) problem: Option<String>,
    /// The bytes themselves when they are JSON (a manifest or a config) of at
    /// most 4 MiB; layers are never held in memory.
    pub(super) small: Option<Bytes>,
}

/// Everything read from the layout.
#[derive(Debug, Default)]
pub(super) struct Staging {
    pub(super) blobs: HashMap<Digest, Staged>,
    pub(super) index_json: Option<Vec<u8>>,
    pub(super) cut: Option<String>,
}

/// Reads the whole layout into the store's temp files, with a progress bar.
pub(super) async fn stage(source: &Path, store: &Store, bars: bool) -> anyhow::Result<Staging> {
    let mut staging = Staging::default();
    let progress = Progress::new(0, bars);
    let bar = progress.image(&source.display().to_string());
    let reading = if is_tar(source) || source.is_file() {
        let total = std::fs::metadata(source).map(|m| m.len()).unwrap_or(0);
        progress.add_total(total);
        bar.set_length(total, 0);
        progress.start_blobs();
        read_tar(source, store, &mut staging, &bar).await
    } else {
        read_dir(source, store, &mut staging, &progress, &bar).await
    };
    progress.clear();
    reading.map(|()| staging)
}

/// ` (the archive ends early: ...)` when it did, for error messages.
pub(super) fn cut_note(staging: &Staging) -> String {
    staging
        .cut
        .as_ref()
        .map(|cut| format!(" (the archive ends early: {cut})"))
        .unwrap_or_default()
}

/// Stages every entry of a tar (gzip-compressed or not).
async fn read_tar(
    path: &Path,
    store: &Store,
    staging: &mut Staging,
    bar: &ImageBar,
) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut magic = [0u8; 2];
    let gzip = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let file = std::fs::File::open(path)?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().context("reading the archive")?;
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                staging.cut = Some(e.to_string());
                break;
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path()?.to_string_lossy().into_owned();
        let len = entry.header().size()?;
        stage_entry(&name, &mut entry, Some(len), store, staging, bar).await?;
        if staging.cut.is_some() {
            break;
        }
    }
    Ok(())
}

/// Stages `index.json` and every `blobs/<alg>/<hex>` file of a directory.
async fn read_dir(
    dir: &Path,
    store: &Store,
    staging: &mut Staging,
    progress: &Progress,
    bar: &ImageBar,
) -> anyhow::Result<()> {
    let mut names = vec!["index.json".to_owned()];
    let blobs = dir.join("blobs");
    for alg in
        std::fs::read_dir(&blobs).with_context(|| format!("cannot list {}", blobs.display()))?
    {
        let alg = alg?;
        for file in std::fs::read_dir(alg.path())? {
            let file = file?;
            names.push(format!(
                "blobs/{}/{}",
                alg.file_name().to_string_lossy(),
                file.file_name().to_string_lossy()
            ));
        }
    }
    let total: u64 = names
        .iter()
        .filter_map(|name| std::fs::metadata(dir.join(name)).ok())
        .map(|m| m.len())
        .sum();
    progress.add_total(total);
    bar.set_length(total, names.len() - 1);
    progress.start_blobs();
    for name in names {
        let path = dir.join(&name);
        let mut file = std::fs::File::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        stage_entry(&name, &mut file, None, store, staging, bar).await?;
    }
    Ok(())
}

/// Reads one layout file: `index.json` into memory, a blob into the store's
/// tmp/. `len` is the length a tar header announced.
async fn stage_entry(
    name: &str,
    reader: &mut dyn Read,
    len: Option<u64>,
    store: &Store,
    staging: &mut Staging,
    bar: &ImageBar,
) -> anyhow::Result<()> {
    let name = name.trim_start_matches("./");
    if name == "index.json" {
        let mut bytes = Vec::new();
        match reader
            .take(MAX_MANIFEST_BYTES as u64)
            .read_to_end(&mut bytes)
        {
            Ok(_) => staging.index_json = Some(bytes),
            Err(e) => staging.cut = Some(format!("index.json: {e}")),
        }
        return Ok(());
    }
    let Some(digest) = name
        .strip_prefix("blobs/")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(alg, hex)| format!("{alg}:{hex}").parse::<Digest>().ok())
    else {
        return Ok(());
    };
    let staged = stage_blob(&digest, reader, store, &mut staging.cut, bar).await?;
    if let Some(len) = len.filter(|&len| len > staged.size) {
        // A tar cut inside an entry reads as a short entry, not an error.
        staging.cut = Some(format!(
            "inside {digest} after {} of its {len} bytes",
            staged.size
        ));
    }
    staging.blobs.insert(digest, staged);
    Ok(())
}

/// Streams a blob into a `BlobWriter`, hashing it on the way.
async fn stage_blob(
    digest: &Digest,
    reader: &mut dyn Read,
    store: &Store,
    cut: &mut Option<String>,
    bar: &ImageBar,
) -> anyhow::Result<Staged> {
    let mut writer = store.writer(digest.clone()).await?;
    let mut hasher = Hasher::new(digest.algorithm());
    let mut small = Vec::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                *cut = Some(format!("inside {digest} after {size} bytes: {e}"));
                break;
            }
        };
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        hasher.update(&chunk);
        // Only JSON (manifests, configs) is kept to be read; layers never are.
        let json = small.first().or(chunk.first()) == Some(&b'{');
        if json && size + n as u64 <= MAX_MANIFEST_BYTES as u64 {
            small.extend_from_slice(&chunk);
        }
        size += n as u64;
        bar.inc(n as u64);
        writer.write(chunk).await?;
    }
    let actual = hasher.finish();
    let problem = (actual != *digest).then(|| format!("its {size} bytes hash to {actual}"));
    Ok(Staged {
        writer: Some(writer),
        size,
        problem,
        small: (size as usize == small.len()).then(|| Bytes::from(small)),
    })
}
