//! `regcache prefetch`: pulls a list of images through a running regcache
//! over HTTP, as a node would, so they are cached before nodes need them:
//! each image's manifest, for an index the manifests of the selected
//! platforms, and every blob, hashed and checked, then discarded. At most
//! `concurrency` requests are in flight at once (and as many images).
//!
//! Content goes only through the server, so routing, single flight, pins and
//! the budget apply as for any client. With `--pin` it also pins each image
//! (exactly its tag or digest, [`super::pin::exact_pattern`]) once its
//! manifests resolved and before its blobs come, so the budget cannot evict
//! the first blobs while the last arrive; an image that then fails has the
//! pin it got removed again. Pins go through [`super::pin::Target`].

mod input;
mod mirror;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use tokio::sync::Semaphore;
use url::Url;

use super::pin::{Target, exact_pattern};
pub use super::progress::Progress;
use crate::oci::{Descriptor, ImageRef, Platform, References};
use crate::ops::format::human_size;
pub use input::{BadLine, references};
use mirror::{Mirror, Source};

/// How to prefetch.
#[derive(Debug, Clone)]
pub struct Options {
    /// The regcache to pull through (`http://127.0.0.1:5000`).
    pub server: Url,
    /// Requests (and images) in flight at once; at least 1.
    pub concurrency: usize,
    /// Platforms to take from an index; empty for all.
    pub platforms: Vec<Platform>,
    /// `--pin`: where each image's pin is recorded.
    pub pins: Option<Target>,
}

/// What one image took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pulled {
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
    /// Of `bytes`, those the server fetched from its upstream for this run
    /// (or joined a fetch of), and those it already held.
    pub from_upstream: u64,
    pub cached: u64,
}

impl Pulled {
    fn add(&mut self, other: &Pulled) {
        self.manifests += other.manifests;
        self.blobs += other.blobs;
        self.bytes += other.bytes;
        self.from_upstream += other.from_upstream;
        self.cached += other.cached;
    }
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Summary {
    pub images: usize,
    pub pulled: Pulled,
    /// `(reference, cause)` of every image that failed.
    pub failed: Vec<(String, String)>,
    /// With `--pin`: the patterns of the images pinned (new or already).
    pub pinned: Vec<String>,
    pub elapsed: Duration,
}

impl Summary {
    /// `prefetched N of M images: ...`, where the bytes came from, and one
    /// line per failure.
    pub fn render(&self) -> String {
        let seconds = self.elapsed.as_secs_f64().max(0.001);
        let p = &self.pulled;
        let mut text = format!(
            "prefetched {} of {} images: {} manifests, {} blobs, {} in {:.1}s ({}/s); \
             {} fetched from upstream, {} already cached",
            self.images - self.failed.len(),
            self.images,
            p.manifests,
            p.blobs,
            human_size(p.bytes),
            seconds,
            human_size((p.bytes as f64 / seconds) as u64),
            human_size(p.from_upstream),
            human_size(p.cached),
        );
        let unknown = p.bytes - p.from_upstream - p.cached;
        if unknown > 0 {
            text.push_str(&format!(
                ", {} not said (no Cache-Status)",
                human_size(unknown)
            ));
        }
        if !self.pinned.is_empty() {
            text.push_str(&format!(
                "\npinned {} images (see regcache pin ls)",
                self.pinned.len()
            ));
        }
        for (reference, cause) in &self.failed {
            text.push_str(&format!("\nfailed: {reference}: {cause}"));
        }
        text
    }
}

/// Pulls every image in `images` through `options.server`: first every
/// image's manifests (so the total, and its ETA, are known), then the blobs.
pub async fn run(
    images: Vec<ImageRef>,
    options: &Options,
    progress: &Progress,
) -> anyhow::Result<Summary> {
    let mirror = Mirror::new(options.server.clone())?;
    let concurrency = options.concurrency.max(1);
    let requests = Semaphore::new(concurrency);
    let started = Instant::now();
    let mut summary = Summary {
        images: images.len(),
        ..Summary::default()
    };
    let resolved = resolve_all(&mirror, images, options, &requests, progress).await;
    progress.start_blobs();
    let mut results = futures_util::stream::iter(resolved)
        .map(|(image, resolved)| {
            let (mirror, requests) = (&mirror, &requests);
            async move {
                let name = image.normalized();
                let bar = progress.image(&name);
                let began = Instant::now();
                let pin = options
                    .pins
                    .as_ref()
                    .map(|target| (target, exact_pattern(&image)));
                let result = match resolved {
                    Ok(resolved) => {
                        let fetch = download(mirror, &image, resolved, concurrency, requests, &bar);
                        match &pin {
                            Some((target, pattern)) => pinned(target, pattern, fetch).await,
                            None => fetch.await,
                        }
                    }
                    Err(e) => Err(e),
                };
                progress.finished(bar, &finished_line(&name, &result, began.elapsed()));
                let pinned = pin.filter(|_| result.is_ok()).map(|(_, pattern)| pattern);
                (name, result, pinned)
            }
        })
        .buffer_unordered(concurrency);
    while let Some((name, result, pinned)) = results.next().await {
        match result {
            Ok(pulled) => summary.pulled.add(&pulled),
            Err(e) => summary.failed.push((name, format!("{e:#}"))),
        }
        summary.pinned.extend(pinned);
    }
    summary.elapsed = started.elapsed();
    progress.clear();
    Ok(summary)
}

/// Every image's manifests, in input order; the total grows as they come.
async fn resolve_all(
    mirror: &Mirror,
    images: Vec<ImageRef>,
    options: &Options,
    requests: &Semaphore,
    progress: &Progress,
) -> Vec<(ImageRef, anyhow::Result<Resolved>)> {
    futures_util::stream::iter(images)
        .map(|image| async move {
            let resolved = resolve(mirror, &image, &options.platforms, requests).await;
            if let Ok(resolved) = &resolved {
                progress.add_total(resolved.bytes());
            }
            (image, resolved)
        })
        .buffered(options.concurrency.max(1))
        .collect()
        .await
}

fn finished_line(name: &str, result: &anyhow::Result<Pulled>, took: Duration) -> String {
    match result {
        Ok(p) => format!(
            "ok      {name}  {} manifests, {} blobs, {} in {:.1}s",
            p.manifests,
            p.blobs,
            human_size(p.bytes),
            took.as_secs_f64()
        ),
        Err(e) => format!("FAILED  {name}  {e:#}"),
    }
}

/// An image whose manifests were fetched: the blobs still to fetch.
#[derive(Debug)]
struct Resolved {
    manifests: u64,
    blobs: Vec<Descriptor>,
}

impl Resolved {
    fn bytes(&self) -> u64 {
        self.blobs.iter().filter_map(|b| b.size).sum()
    }
}

/// The manifest, then for an index the selected platforms' manifests.
async fn resolve(
    mirror: &Mirror,
    image: &ImageRef,
    platforms: &[Platform],
    requests: &Semaphore,
) -> anyhow::Result<Resolved> {
    let reference = match (&image.digest, &image.tag) {
        (Some(digest), _) => digest.to_string(),
        (None, Some(tag)) => tag.to_string(),
        (None, None) => "latest".to_owned(),
    };
    let top = {
        let _permit = requests.acquire().await?;
        mirror
            .manifest(image, &reference, image.digest.as_ref())
            .await?
    };
    let mut manifests = 1;
    let blobs = match crate::oci::references(&top)? {
        References::Image(blobs) => blobs,
        References::Index(children) => {
            let mut blobs = Vec::new();
            for child in select(children, platforms)? {
                let _permit = requests.acquire().await?;
                let fetched = mirror
                    .manifest(image, &child.digest.to_string(), Some(&child.digest))
                    .await?;
                manifests += 1;
                match crate::oci::references(&fetched)? {
                    References::Image(child_blobs) => blobs.extend(child_blobs),
                    References::Index(_) => bail!("{}: an index inside an index", child.digest),
                }
            }
            blobs
        }
    };
    let mut seen = HashSet::new();
    let blobs = blobs
        .into_iter()
        .filter(|b| seen.insert(b.digest.clone()))
        .collect();
    Ok(Resolved { manifests, blobs })
}

/// Pins `pattern`, then runs `download`; if that fails, a pin this call
/// added is removed (one that was there before stays).
async fn pinned(
    target: &Target,
    pattern: &str,
    download: impl Future<Output = anyhow::Result<Pulled>>,
) -> anyhow::Result<Pulled> {
    let patterns = [pattern.to_owned()];
    let (changes, _) = target.add(&patterns, "prefetch").await.context("pinning")?;
    let result = download.await;
    let added = changes.iter().any(|c| c.changed);
    if result.is_err() && added {
        if let Err(e) = target.remove(&patterns).await {
            tracing::warn!(pattern, error = %format!("{e:#}"), "cannot remove the pin of a failed image");
        }
    }
    result
}

/// Every blob of a resolved image, at most `concurrency` at once.
async fn download(
    mirror: &Mirror,
    image: &ImageRef,
    resolved: Resolved,
    concurrency: usize,
    requests: &Semaphore,
    bar: &super::progress::ImageBar,
) -> anyhow::Result<Pulled> {
    let mut pulled = Pulled {
        manifests: resolved.manifests,
        ..Pulled::default()
    };
    bar.set_length(resolved.bytes(), resolved.blobs.len());
    let mut fetches = futures_util::stream::iter(&resolved.blobs)
        .map(|blob| async move {
            let _permit = requests.acquire().await?;
            mirror.blob(image, blob, |n| bar.inc(n)).await
        })
        .buffer_unordered(concurrency);
    while let Some(fetched) = fetches.next().await {
        let (size, source) = fetched?;
        pulled.bytes += size;
        pulled.blobs += 1;
        match source {
            Source::Cache => pulled.cached += size,
            Source::Upstream => pulled.from_upstream += size,
            Source::Unknown => {}
        }
    }
    Ok(pulled)
}

/// The index entries for `platforms` (all of them when none are given).
fn select(children: Vec<Descriptor>, platforms: &[Platform]) -> anyhow::Result<Vec<Descriptor>> {
    if platforms.is_empty() {
        return Ok(children);
    }
    let selected: Vec<Descriptor> = children
        .into_iter()
        .filter(|c| {
            c.platform
                .as_ref()
                .is_some_and(|p| platforms.iter().any(|want| want.selects(p)))
        })
        .collect();
    if selected.is_empty() {
        let wanted: Vec<String> = platforms.iter().map(Platform::to_string).collect();
        bail!("the index has no manifest for {}", wanted.join(", "));
    }
    Ok(selected)
}
