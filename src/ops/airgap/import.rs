//! `regcache import`: reads an OCI image layout (a directory, or a tar of one,
//! as `export`, `skopeo copy ... oci:` or `oci-archive:` write them) into the
//! cache of a data directory, beside a running server.
//!
//! Every blob is streamed into a `store::BlobWriter` (a temp file) while it
//! is hashed; nothing is committed until the whole layout was read. Then each
//! image in `index.json` is checked on its own: every manifest and blob it
//! needs must be present with the right digest and size, or the image is
//! refused, naming the blob, and nothing of it is committed or indexed
//! (all-or-nothing per image). A good image's files are committed first, then
//! its rows: content linked to its repository and its tag, under the
//! configured upstream its name's registry routes to, so a server whose
//! upstream is unreachable serves it.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use serde::Deserialize;

use super::REF_NAME;
use super::stage::{Staging, cut_note, stage};
use crate::config::Config;
use crate::index::{Access, ContentRow, Index};
use crate::oci::{Digest, ImageRef, References, RepoName, Tag, media_type};
use crate::ops::format::human_size;

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub images: usize,
    /// `(name, cause)` of every image refused.
    pub failed: Vec<(String, String)>,
    /// Files written (manifests and blobs), each once.
    pub files: usize,
    pub bytes: u64,
    /// Why the archive could not be read to its end, if it could not.
    pub cut: Option<String>,
}

/// One image of `index.json`, checked and ready to commit.
#[derive(Debug)]
struct Plan {
    name: String,
    upstream: String,
    repo: RepoName,
    tag: Option<Tag>,
    top: Digest,
    /// Every digest the image needs, with its media type for manifests.
    content: Vec<(Digest, Option<String>)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Deserialize)]
struct LayoutIndex {
    manifests: Vec<IndexEntry>,
}

/// Imports the layout at `source` into `config`'s data directory; `bars`
/// shows a progress bar while the layout is read (on a terminal).
pub async fn import(
    config: &Config,
    source: &Path,
    bars: bool,
    log: &mut dyn Write,
) -> anyhow::Result<ImportSummary> {
    let started = Instant::now();
    let index = super::super::open_index(&config.data_dir, Access::ReadWrite)?;
    let store = super::super::attach_store(&config.data_dir)?;
    let mut staging = stage(source, &store, bars).await?;
    let Some(index_json) = staging.index_json.take() else {
        anyhow::bail!(
            "{} has no index.json{}; nothing imported",
            source.display(),
            cut_note(&staging)
        );
    };
    let layout: LayoutIndex =
        serde_json::from_slice(&index_json).context("index.json is not an OCI image index")?;
    let mut summary = ImportSummary {
        cut: staging.cut.clone(),
        ..ImportSummary::default()
    };
    for entry in &layout.manifests {
        import_image(entry, config, &index, &mut staging, &mut summary, log).await?;
    }
    if let Some(cut) = &summary.cut {
        writeln!(log, "the archive ends early: {cut}")?;
    }
    writeln!(
        log,
        "imported {} of {} images ({} files, {} new) from {} in {:.1}s",
        summary.images,
        layout.manifests.len(),
        summary.files,
        human_size(summary.bytes),
        source.display(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(summary)
}

/// Checks and commits one image of `index.json`, or records why not.
async fn import_image(
    entry: &IndexEntry,
    config: &Config,
    index: &Index,
    staging: &mut Staging,
    summary: &mut ImportSummary,
    log: &mut dyn Write,
) -> std::io::Result<()> {
    let name = entry
        .annotations
        .get(REF_NAME)
        .cloned()
        .unwrap_or_else(|| entry.digest.clone());
    let result = match plan(entry, config, staging) {
        Ok(plan) => commit(plan, index, staging).await,
        Err(cause) => Err(cause),
    };
    match result {
        Ok((files, bytes)) => {
            summary.images += 1;
            summary.files += files;
            summary.bytes += bytes;
            let new = human_size(bytes);
            writeln!(log, "imported {name}  {}  {new} new", entry.digest)
        }
        Err(cause) => {
            writeln!(log, "FAILED   {name}: {cause}")?;
            summary.failed.push((name, cause));
            Ok(())
        }
    }
}

/// Checks everything `entry` needs, or says what is wrong.
fn plan(entry: &IndexEntry, config: &Config, staging: &Staging) -> Result<Plan, String> {
    let name = entry
        .annotations
        .get(REF_NAME)
        .ok_or_else(|| format!("no {REF_NAME} annotation: no name to serve it under"))?;
    let reference: ImageRef = name.parse().map_err(|e| {
        format!("{REF_NAME} {name:?} is not a full image reference (registry/repository:tag): {e}")
    })?;
    let upstream = config
        .upstreams
        .iter()
        .find(|u| u.answers_to(reference.registry()) || u.answers_to(&reference.host))
        .ok_or_else(|| format!("no configured upstream answers to {}", reference.registry()))?;
    let repo = if upstream.is_docker_hub() {
        reference.repo.clone().in_docker_hub()
    } else {
        reference.repo.clone()
    };
    let top: Digest = entry
        .digest
        .parse()
        .map_err(|e| format!("{}: {e}", entry.digest))?;
    let mut content = Vec::new();
    let top_bytes = check(staging, &top, Some(entry.size))?;
    let top_type = manifest_type(&top_bytes, entry.media_type.as_deref());
    content.push((top.clone(), Some(top_type)));
    match crate::oci::references(&top_bytes).map_err(|e| format!("manifest {top}: {e}"))? {
        References::Image(blobs) => check_blobs(staging, &blobs, &mut content)?,
        References::Index(children) => {
            let mut platforms = 0;
            for child in children {
                // An export of an index whose platforms were not all cached
                // carries the ones that were; a cut archive carries too few.
                if !staging.blobs.contains_key(&child.digest) && staging.cut.is_none() {
                    continue;
                }
                let bytes = check(staging, &child.digest, child.size)?;
                let References::Image(blobs) = crate::oci::references(&bytes)
                    .map_err(|e| format!("manifest {}: {e}", child.digest))?
                else {
                    return Err(format!("{}: an index inside an index", child.digest));
                };
                let kind = manifest_type(&bytes, child.media_type.as_deref());
                content.push((child.digest.clone(), Some(kind)));
                check_blobs(staging, &blobs, &mut content)?;
                platforms += 1;
            }
            if platforms == 0 {
                return Err("the archive holds none of the index's manifests".into());
            }
        }
    }
    Ok(Plan {
        name: name.clone(),
        upstream: upstream.name.clone(),
        repo,
        tag: reference.tag.clone(),
        top,
        content,
    })
}

fn check_blobs(
    staging: &Staging,
    blobs: &[crate::oci::Descriptor],
    content: &mut Vec<(Digest, Option<String>)>,
) -> Result<(), String> {
    for blob in blobs {
        check(staging, &blob.digest, blob.size)?;
        content.push((blob.digest.clone(), None));
    }
    Ok(())
}

/// A staged blob's bytes (if small) when it is present, whole and of `size`.
fn check(staging: &Staging, digest: &Digest, size: Option<u64>) -> Result<Bytes, String> {
    let Some(staged) = staging.blobs.get(digest) else {
        return Err(format!(
            "blob {digest} is not in the archive{}",
            cut_note(staging)
        ));
    };
    if let Some(problem) = &staged.problem {
        return Err(format!("blob {digest}: {problem}"));
    }
    if let Some(size) = size.filter(|&s| s != staged.size) {
        return Err(format!(
            "blob {digest}: {} bytes, the manifest says {size}",
            staged.size
        ));
    }
    Ok(staged.small.clone().unwrap_or_default())
}

/// The manifest's own `mediaType`, else its descriptor's, else OCI's.
fn manifest_type(bytes: &[u8], descriptor: Option<&str>) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
        .or_else(|| descriptor.map(str::to_owned))
        .unwrap_or_else(|| media_type::OCI_MANIFEST.to_owned())
}

/// Commits the image's files, then its rows and tag. Returns the files and
/// bytes committed for it (not those another image committed before).
async fn commit(plan: Plan, index: &Index, staging: &mut Staging) -> Result<(usize, u64), String> {
    let mut rows = Vec::new();
    let (mut files, mut bytes) = (0, 0);
    for (digest, media_type) in &plan.content {
        let staged = staging
            .blobs
            .get_mut(digest)
            .ok_or_else(|| format!("blob {digest} vanished"))?;
        // Content shared with an image imported before is committed once.
        if let Some(writer) = staged.writer.take() {
            writer
                .commit(Some(staged.size))
                .await
                // With its cause: "cannot fsync …: No space left on device".
                .map_err(|e| format!("committing {digest}: {:#}", anyhow::Error::from(e)))?;
            files += 1;
            bytes += staged.size;
        }
        rows.push(ContentRow {
            digest: digest.clone(),
            size: staged.size,
            media_type: media_type.clone(),
        });
    }
    index
        .insert_contents(rows, &plan.upstream, &plan.repo)
        .await
        .map_err(|e| format!("indexing {}: {e}", plan.name))?;
    if let Some(tag) = &plan.tag {
        index
            .set_tag(
                &plan.upstream,
                &plan.repo,
                tag,
                &plan.top,
                SystemTime::now(),
            )
            .await
            .map_err(|e| format!("tagging {}: {e}", plan.name))?;
    }
    Ok((files, bytes))
}
