//! [`Local`]: the write-through local side of the registry (distribution's
//! `proxy = local + remote`): the store's files, the index's rows, the memory
//! cache and the disk budget, kept consistent with each other. Every other file
//! of `registry` decides (hit, miss, confirm, revalidate, stale) and asks this
//! one; none of them names the store, the index, the cache or the budget.
//!
//! The invariants it owns, so that no caller has to remember an order:
//! - **Reads** (`local::reads`) go to memory first, then the index (and the
//!   file, on the same blocking thread); what the index answers is
//!   remembered in memory. A row whose file is gone is forgotten (row and
//!   memory) and reported as absent, so the caller fetches it again.
//! - **Writes** go to the index, then to memory (`link`, `set_tag`,
//!   `remove_tag`, `forget`): memory never holds what the index does not, and
//!   is dropped together with the rows.
//! - **Publishing** content ([`Local::publish_blob`], [`Local::publish_manifest`])
//!   holds the commit order in one place: commit guard (eviction leaves the
//!   digest alone), verified rename into `blobs/`, content row with the first
//!   repository link, reservation converted to committed bytes, guard released,
//!   then memory. A row never exists before its file; the budget never counts a
//!   commit twice nor loses a reservation. A row that cannot be written even
//!   after waiting for the index's lock (another process holding it too long)
//!   leaves a verified file without a row: [`Published::Unindexed`], served to
//!   the fill's readers, adopted by the next start-up, never put in memory.
//!
//! It must never decide anything about upstreams, freshness or outcomes.

use std::sync::Arc;
use std::time::SystemTime;

use super::Error;
use crate::cache::Cache;
use crate::evict::{Admission, Budget, Evictor, Reservation};
use crate::index::{ContentRow, Index};
use crate::oci::{Digest, Manifest, RepoName, Tag};
use crate::store::{self, BlobWriter, Store};

mod reads;

pub(super) use reads::LocalBlob;

/// One upstream as the local side names it: `id` keys memory (cheap, stable for
/// the life of the process), `name` keys the index (stable across restarts).
/// Built once per route, so the two can never disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpstreamKey {
    pub(crate) id: usize,
    pub(crate) name: String,
}

/// What publishing verified content did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Published {
    /// The file is in `blobs/` and its row recorded: a hit from now on.
    Indexed { size: u64 },
    /// The file is in `blobs/` (its bytes verified) but its row could not be
    /// written: correct bytes to serve to whoever waits for them, unknown to
    /// later requests until the next start-up's reconciliation adopts the file.
    Unindexed { size: u64 },
}

impl Published {
    pub(super) fn size(self) -> u64 {
        match self {
            Self::Indexed { size } | Self::Unindexed { size } => size,
        }
    }
}

/// The local side: store, index, memory and budget. Cheap to clone (handles).
#[derive(Debug, Clone)]
pub(super) struct Local {
    store: Store,
    index: Index,
    cache: Cache,
    evictor: Arc<Evictor>,
}

impl Local {
    /// The local side over an opened store and index, within `budget`.
    pub(super) fn new(
        store: Store,
        index: Index,
        budget: Budget,
        pins: crate::evict::Pins,
    ) -> Self {
        let cache = Cache::new();
        let evictor = Arc::new(Evictor::new(
            budget,
            pins,
            index.clone(),
            store.clone(),
            cache.clone(),
        ));
        Self {
            store,
            index,
            cache,
            evictor,
        }
    }

    pub(super) fn evictor(&self) -> &Arc<Evictor> {
        &self.evictor
    }

    /// The index answers a query and the store's directories are there.
    pub(super) async fn ready(&self) -> Result<(), Error> {
        self.index.ping().await?;
        self.store.check().await?;
        Ok(())
    }

    /// Records an access of `digest` (in memory; flushed to the index in batches).
    pub(super) fn touch(&self, digest: &Digest) {
        self.evictor.touch(digest);
    }

    /// Room in the budget for `bytes` about to be written (evicting if needed).
    pub(super) async fn reserve(&self, bytes: u64) -> Admission {
        self.evictor.reserve(bytes).await
    }

    /// The file system's free space, for the log.
    pub(super) fn disk_available(&self) -> Option<u64> {
        self.evictor.disk_available()
    }

    /// Starts an eviction pass, in the background, that makes room on the
    /// file system for `bytes` (a fill met a full disk).
    pub(super) fn make_room_on_disk(&self, bytes: u64) {
        let evictor = Arc::clone(&self.evictor);
        tokio::spawn(async move { evictor.make_room_on_disk(bytes).await });
    }

    /// The `limit` repositories with the most linked bytes (the status page).
    pub(super) async fn largest_repositories(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::index::RepoUsage>, Error> {
        Ok(self.index.largest_repositories(limit).await?)
    }

    pub(super) fn budget(&self) -> Budget {
        self.evictor.budget()
    }

    /// Records that the upstream confirmed `repo` has committed content `digest`.
    pub(super) async fn link(
        &self,
        upstream: &UpstreamKey,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(), Error> {
        self.index.link(&upstream.name, repo, digest).await?;
        self.cache.set_linked(upstream.id, repo, digest).await;
        Ok(())
    }

    /// Records that the upstream said at `checked_at` that `tag` is `digest`.
    pub(super) async fn set_tag(
        &self,
        upstream: &UpstreamKey,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        checked_at: SystemTime,
    ) -> Result<(), Error> {
        self.index
            .set_tag(&upstream.name, repo, tag, digest, checked_at)
            .await?;
        self.cache
            .set_tag(upstream.id, repo, tag, digest, checked_at)
            .await;
        Ok(())
    }

    /// Forgets `tag` (the upstream no longer has it).
    pub(super) async fn remove_tag(
        &self,
        upstream: &UpstreamKey,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<(), Error> {
        self.index.remove_tag(&upstream.name, repo, tag).await?;
        self.cache.remove_tag(upstream.id, repo, tag).await;
        Ok(())
    }

    /// Forgets content whose file is gone: its row, then its memory.
    pub(super) async fn forget(&self, digest: &Digest) -> Result<(), Error> {
        self.index.remove_content(digest).await?;
        self.cache.forget(digest).await;
        Ok(())
    }

    /// Every committed piece of content, for the scrub.
    pub(super) async fn content_rows(&self) -> Result<Vec<ContentRow>, Error> {
        Ok(self.index.all_content().await?)
    }

    /// What the committed file of `digest` hashes to now (`None`: no file),
    /// read at most `bytes_per_second` fast.
    pub(super) async fn rehash_paced(
        &self,
        digest: &Digest,
        bytes_per_second: u64,
    ) -> Result<Option<crate::store::Rehash>, Error> {
        let (store, digest) = (self.store.clone(), digest.clone());
        let task = tokio::task::spawn_blocking(move || {
            let mut pace = Pace::new(bytes_per_second);
            store.rehash_paced_blocking(&digest, &mut |n| pace.read(n))
        });
        let rehash = task
            .await
            .map_err(|_| std::io::Error::other("the re-hash task panicked"))??;
        Ok(rehash)
    }

    /// Removes content whose file no longer matches its digest: row, memory,
    /// then file (the order of every removal), so nothing serves it again and
    /// the next request fetches it anew.
    pub(super) async fn remove_corrupt(&self, digest: &Digest) -> Result<(), Error> {
        self.forget(digest).await?;
        self.store.remove(digest).await?;
        Ok(())
    }

    /// A temp file for the bytes of `digest`, hashed as they are written.
    pub(super) async fn writer(&self, digest: Digest) -> Result<BlobWriter, Error> {
        Ok(self.store.writer(digest).await?)
    }

    /// Commits a fill's temp file (size and digest checked) as blob content of
    /// `repo`, converting `reservation`.
    pub(super) async fn publish_blob(
        &self,
        upstream: &UpstreamKey,
        repo: &RepoName,
        writer: BlobWriter,
        expected_size: Option<u64>,
        reservation: Reservation,
    ) -> Result<Published, Error> {
        let digest = writer.expected().clone();
        let commit = writer.commit(expected_size);
        let published = self
            .publish(upstream, repo, &digest, None, reservation, commit)
            .await?;
        if let Published::Indexed { size } = published {
            self.cache.set_blob_size(&digest, size).await;
        }
        Ok(published)
    }

    /// Stores a verified manifest as content of `repo` (and as `tag`'s target,
    /// if given). Without room in the budget it is not stored, only returned.
    pub(super) async fn publish_manifest(
        &self,
        upstream: &UpstreamKey,
        repo: &RepoName,
        manifest: Manifest,
        tag: Option<&Tag>,
    ) -> Result<Arc<Manifest>, Error> {
        let size = manifest.bytes.len() as u64;
        let Admission::Reserved(reservation) = self.reserve(size).await else {
            tracing::warn!(upstream = upstream.name, %repo, digest = %manifest.digest, size, "no room in the cache budget for a manifest; serving it without caching");
            return Ok(Arc::new(manifest));
        };
        let write = async {
            self.store
                .put_small(&manifest.digest, &manifest.bytes)
                .await?;
            Ok(size)
        };
        let media_type = Some(manifest.media_type.clone());
        let published = self
            .publish(
                upstream,
                repo,
                &manifest.digest,
                media_type,
                reservation,
                write,
            )
            .await;
        let published = match published {
            Ok(published) => published,
            // A full disk (or a failing one) must not turn a verified
            // manifest into a 500: it is served, only not cached.
            Err(e @ (Error::Store(_) | Error::Index(_))) => {
                tracing::warn!(upstream = upstream.name, %repo, digest = %manifest.digest, error = %e, "cannot cache a manifest; serving it without caching");
                return Ok(Arc::new(manifest));
            }
            Err(e) => return Err(e),
        };
        let manifest = Arc::new(manifest);
        if let Published::Unindexed { .. } = published {
            // Verified bytes, served; neither memory nor a tag may name
            // content the index does not have.
            return Ok(manifest);
        }
        self.cache.set_manifest(Arc::clone(&manifest)).await;
        if let Some(tag) = tag {
            let set = self
                .set_tag(upstream, repo, tag, &manifest.digest, SystemTime::now())
                .await;
            if let Err(e) = set {
                // The manifest is committed; the tag is resolved upstream again next time.
                tracing::warn!(upstream = upstream.name, %repo, %tag, error = %e, "cannot record a tag; serving its manifest anyway");
            }
        }
        Ok(manifest)
    }

    /// The commit order, in one place: guard, `write` (which renames the
    /// verified file into `blobs/` and returns its size), row and link,
    /// reservation converted, guard released, link in memory. `write` is not
    /// started before the guard is held. An error before the rename is the
    /// caller's (nothing was stored); a failed row after it is not (see
    /// [`Published::Unindexed`]).
    async fn publish(
        &self,
        upstream: &UpstreamKey,
        repo: &RepoName,
        digest: &Digest,
        media_type: Option<String>,
        reservation: Reservation,
        write: impl Future<Output = Result<u64, store::Error>>,
    ) -> Result<Published, Error> {
        // Eviction leaves this digest alone from the rename until the row exists.
        let commit_guard = self.evictor.commit_guard(digest).await;
        let size = write.await.map_err(Error::from_commit)?;
        let row = ContentRow {
            digest: digest.clone(),
            size,
            media_type,
        };
        let new_row = match self.index.insert_content(&row, &upstream.name, repo).await {
            Ok(new_row) => new_row,
            Err(e) => {
                // The file is on disk whether or not it has a row: counting it
                // keeps the budget honest until a restart recounts the disk.
                reservation.commit(size, true);
                tracing::warn!(%digest, %repo, size, error = %e, "verified content stored without its index row; served now, adopted at the next start");
                return Ok(Published::Unindexed { size });
            }
        };
        reservation.commit(size, new_row);
        drop(commit_guard);
        self.cache.set_linked(upstream.id, repo, digest).await;
        Ok(Published::Indexed { size })
    }
}

/// Sleeps a blocking reader so that it reads at most `rate` bytes per second.
struct Pace {
    rate: u64,
    started: std::time::Instant,
    read: u64,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1),
            started: std::time::Instant::now(),
            read: 0,
        }
    }

    fn read(&mut self, n: u64) {
        self.read += n;
        let due = std::time::Duration::from_secs_f64(self.read as f64 / self.rate as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}
