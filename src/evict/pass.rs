//! The LRU pass: least recently used unpinned content deleted a batch at a
//! time, each batch's rows first (their links and tags cascade), then memory,
//! then files, never a digest a commit holds. [`collect`] is the same pass for `regcache gc` in a separate
//! process. A reader that opened a file keeps reading it after its name goes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::Pins;
use super::{Error, EvictReport, Evictor, lock};
use crate::index::{Index, LruRow};
use crate::oci::Digest;
use crate::store::Store;

/// Rows of the LRU order read per page: a pass holds one page and its
/// victims, never every row (a million rows would be some 150 MiB).
const LRU_PAGE: usize = 4096;

/// Rows `collect` deletes per transaction: a running server's index writes
/// wait at most for one such batch (milliseconds), however much is evicted.
const COLLECT_BATCH: usize = 32;

/// Victims a server's pass handles per step: their rows deleted in one
/// transaction, dropped from memory in one pass, their files unlinked in one
/// blocking task. A trip to the blocking pool per file was a third of a
/// pass's CPU and most of its wall time on a loaded 2-core machine
/// (BENCHMARKS.md, "The eviction pass, profiled"); one transaction for
/// everything would hold the index's writer (and every fill's commit) for
/// all of it.
pub(super) const EVICT_BATCH: usize = 4096;

/// Evicts least-recently-used content not covered by `pins` (the configured
/// ones) nor by the index's runtime pins until at most `target_bytes` are
/// committed: for `regcache gc --to SIZE`, from a process separate from a
/// running `serve` on the same data directory. The server notices the freed
/// space at its next interval; its memory caches may still name deleted content,
/// which it then finds missing and fetches again. Access times the server has
/// not flushed yet (at most a few seconds' worth) are not seen, and the
/// server's commit guards are not either: content the server re-commits at the
/// very moment `collect` deletes it may lose its file, which the server then
/// notices on the next request (missing file → row dropped, fetched again).
pub async fn collect(
    index: &Index,
    store: &Store,
    pins: &Pins,
    target_bytes: u64,
) -> Result<EvictReport, Error> {
    let usage = index.content_bytes().await?;
    let pins = pins.with_runtime(index).await?;
    let pinned = pins.pinned_digests(index, store).await?;
    let pinned_bytes = sum_pinned(index, &pinned).await?;
    let rows = least_recent(index, &pinned, usage, target_bytes, |_| false, LRU_PAGE).await?;
    let victims = pick(rows, &pinned, usage, target_bytes, |_| false);
    let mut evicted = Vec::with_capacity(victims.len());
    // Small transactions: the server's commits wait for each one, not for all.
    for batch in victims.chunks(COLLECT_BATCH) {
        let removed = index.remove_contents(batch.to_vec()).await?;
        let files = removed.iter().map(|(d, _)| d.clone()).collect();
        if let Some((_, e)) = store.remove_all(files).await?.into_iter().next() {
            return Err(e.into());
        }
        evicted.extend(removed);
    }
    let freed_bytes = evicted.iter().map(|(_, size)| size).sum();
    Ok(EvictReport {
        usage_before: usage,
        usage_after: usage.saturating_sub(freed_bytes),
        target: target_bytes,
        evicted,
        freed_bytes,
        pinned_bytes,
    })
}

/// Bytes of committed content `pins` cover, and only those: callers add
/// the runtime pins ([`Pins::with_runtime`]) when they want them.
pub async fn pinned_bytes(index: &Index, store: &Store, pins: &Pins) -> Result<u64, Error> {
    let pinned = pins.pinned_digests(index, store).await?;
    sum_pinned(index, &pinned).await
}

/// Bytes of the committed content among `pinned`.
async fn sum_pinned(index: &Index, pinned: &HashSet<Digest>) -> Result<u64, Error> {
    Ok(index.bytes_of(pinned.iter().cloned().collect()).await?)
}

/// The least recently used rows, read a page at a time, that are neither
/// pinned nor named by `skip`, until their sizes bring `usage` down to
/// `target` (or the rows run out): what [`pick`] chooses from.
async fn least_recent(
    index: &Index,
    pinned: &HashSet<Digest>,
    usage: u64,
    target: u64,
    skip: impl Fn(&Digest) -> bool,
    page_rows: usize,
) -> Result<Vec<LruRow>, Error> {
    let mut left = usage;
    let mut chosen = Vec::new();
    let mut after = None;
    while left > target {
        let (page, next) = index.lru_page(after, page_rows).await?;
        for row in page {
            if left <= target {
                break;
            }
            if pinned.contains(&row.digest) || skip(&row.digest) {
                continue;
            }
            left = left.saturating_sub(row.size);
            chosen.push(row);
        }
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(chosen)
}

/// The least recently used rows (in `rows`' order) to delete so that `usage`
/// drops to `target`, skipping pinned ones and those `skip` names. May fall
/// short when everything left is pinned or skipped.
fn pick(
    rows: Vec<LruRow>,
    pinned: &HashSet<Digest>,
    usage: u64,
    target: u64,
    skip: impl Fn(&Digest) -> bool,
) -> Vec<Digest> {
    let mut left = usage;
    let mut victims = Vec::new();
    for row in rows {
        if left <= target {
            break;
        }
        if pinned.contains(&row.digest) || skip(&row.digest) {
            continue;
        }
        left = left.saturating_sub(row.size);
        victims.push(row.digest);
    }
    victims
}

impl Evictor {
    /// Unless another pass already did it: if committed + reserved + `extra`
    /// exceeds `trigger`, evicts least recently used unpinned content until
    /// committed + reserved + `extra` is at most the low watermark.
    pub(super) async fn pass(&self, trigger: u64, extra: u64) -> Result<EvictReport, Error> {
        let _one = self.pass.lock().await;
        let (committed, reserved) = lock(&self.usage).totals();
        if committed + reserved + extra <= trigger {
            return Ok(EvictReport::default());
        }
        let target = self.budget.low().saturating_sub(reserved + extra);
        self.evict_to(committed, reserved, extra, target).await
    }

    /// `regcache gc` asked through the admin socket: evicts least recently
    /// used unpinned content until at most `target` bytes are committed, like
    /// a pass (commit guards respected, memory dropped with the rows).
    pub async fn collect_to(&self, target: u64) -> Result<EvictReport, Error> {
        let _one = self.pass.lock().await;
        let (committed, reserved) = lock(&self.usage).totals();
        self.evict_to(committed, reserved, 0, target).await
    }

    /// The pass proper, under the pass lock: rows, memory, then files, one
    /// batch of [`EVICT_BATCH`] victims at a time, a batch's files unlinked
    /// beside the next batch's rows. An error stops it after the batches done
    /// so far (accounted and recorded, their files unlinked; their marks end
    /// with it).
    async fn evict_to(
        &self,
        committed: u64,
        reserved: u64,
        extra: u64,
        target: u64,
    ) -> Result<EvictReport, Error> {
        let started = Instant::now();
        // LRU order must see the latest hits.
        self.flush_access().await;
        // Runtime pins are read here, once per pass: added through the admin
        // socket or by another process, they count from the next pass on.
        let pins = self.pins.with_runtime(&self.index).await?;
        let pinned = pins.pinned_digests(&self.index, &self.store).await?;
        let pinned_bytes = sum_pinned(&self.index, &pinned).await?;
        // Candidates skip what commits hold now; `pick` checks again under
        // the lock that marks them (a commit begun meanwhile is skipped, and
        // this pass may then free a little less than it aimed at).
        let skip = |d: &Digest| self.is_committing(d);
        let rows = least_recent(&self.index, &pinned, committed, target, skip, LRU_PAGE).await?;
        let marked =
            self.mark_evicting(|committing| pick(rows, &pinned, committed, target, committing));
        let mut evicted = Vec::with_capacity(marked.digests.len());
        let mut usage_after = committed;
        // Where the time goes, for the log: choosing, rows, memory, files.
        let mut took = [Duration::ZERO; 4];
        took[0] = started.elapsed();
        // A batch at a time, each in the order the invariants want: rows first
        // (from then on nothing serves these digests as hits), memory, files
        // last (a reader that has one open keeps reading it). The files of
        // batch k are unlinked while the rows of batch k + 1 are deleted: the
        // two wait on different things (SQLite's pages, the directories), and
        // one after the other they were the whole pass (BENCHMARKS.md, "Scale").
        let mut batches = marked.digests.chunks(EVICT_BATCH);
        let mut dropped: Vec<(Digest, u64)> = Vec::new();
        loop {
            let next = batches.next();
            let rows = async {
                match next {
                    Some(batch) => Some(self.drop_rows(batch).await),
                    None => None,
                }
            };
            let files = self.unlink(std::mem::take(&mut dropped));
            let (rows, (freed, files_took)) = tokio::join!(rows, files);
            took[3] += files_took;
            // The budget gets the bytes back only once the files are gone: a
            // fill admitted while they still existed took the disk past
            // `max_size` (by up to a batch; the soak saw 100.1 %).
            if freed > 0 {
                usage_after = lock(&self.usage).remove_committed(freed);
            }
            match rows {
                None => break,
                // The batches before are accounted and recorded, and their
                // files are gone; the marks end with the pass.
                Some(Err(e)) => return Err(e),
                Some(Ok((removed, rows_took, memory_took))) => {
                    took[1] += rows_took;
                    took[2] += memory_took;
                    evicted.extend(removed.iter().cloned());
                    dropped = removed;
                }
            }
        }
        let freed_bytes: u64 = evicted.iter().map(|(_, size)| size).sum();
        drop(marked);
        let [choose_s, rows_s, memory_s, files_s] = took.map(|d| d.as_secs_f64());
        let total_s = started.elapsed().as_secs_f64();
        tracing::info!(
            evicted = evicted.len(),
            freed_bytes,
            usage_before = committed,
            usage_after,
            reserved,
            target,
            pinned_bytes,
            choose_s,
            rows_s,
            memory_s,
            files_s,
            total_s,
            "evicted least recently used content"
        );
        if usage_after + reserved + extra > self.budget.low() && pinned_bytes > 0 {
            tracing::warn!(
                pinned_bytes,
                low = self.budget.low(),
                "pinned content keeps the cache above its low watermark"
            );
        }
        Ok(EvictReport {
            usage_before: committed,
            usage_after,
            target,
            evicted,
            freed_bytes,
            pinned_bytes,
        })
    }

    /// Deletes the rows of `batch` (their links and tags cascade), records
    /// them in the history and drops them from memory: from then on nothing
    /// serves them. The rows deleted, with how long the rows and the memory took.
    async fn drop_rows(
        &self,
        batch: &[Digest],
    ) -> Result<(Vec<(Digest, u64)>, Duration, Duration), Error> {
        let started = Instant::now();
        let removed = self.index.remove_contents(batch.to_vec()).await?;
        self.history.record(&removed);
        let rows_done = Instant::now();
        let gone: HashSet<Digest> = removed.iter().map(|(d, _)| d.clone()).collect();
        self.cache.forget_all(&gone).await;
        Ok((removed, rows_done - started, rows_done.elapsed()))
    }

    /// Unlinks the files of rows [`Evictor::drop_rows`] deleted, in one
    /// blocking task: their bytes and how long it took. A file that cannot be
    /// deleted is logged (its row is gone; the next start adopts or deletes it).
    async fn unlink(&self, dropped: Vec<(Digest, u64)>) -> (u64, Duration) {
        if dropped.is_empty() {
            return (0, Duration::ZERO);
        }
        let started = Instant::now();
        let freed = dropped.iter().map(|(_, size)| size).sum();
        let files = dropped.into_iter().map(|(d, _)| d).collect();
        match self.store.remove_all(files).await {
            Ok(failed) => {
                for (digest, e) in failed {
                    tracing::warn!(%digest, error = %e, "cannot delete an evicted file; its row is gone");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot delete evicted files; their rows are gone")
            }
        }
        (freed, started.elapsed())
    }

    /// Evicts down to the low watermark if usage is past the high one.
    pub(super) async fn evict_if_over(&self) {
        if let Err(e) = self.pass(self.budget.high(), 0).await {
            tracing::warn!(error = %e, "eviction failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ContentRow;

    #[tokio::test]
    async fn candidates_are_read_page_by_page_skipping_pinned_and_held_content() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        let mut rows: Vec<ContentRow> = (0..7u8)
            .map(|n| ContentRow {
                digest: Digest::sha256_of(&[n]),
                size: 10,
                media_type: None,
            })
            .collect();
        rows.sort_by(|a, b| a.digest.cmp(&b.digest));
        let digests: Vec<Digest> = rows.iter().map(|r| r.digest.clone()).collect();
        let repo = "app".parse().unwrap();
        index.insert_contents(rows, "up", &repo).await.unwrap();
        // Same access time and size for all: digest order is the LRU order.
        let pinned: HashSet<Digest> = [digests[1].clone()].into();
        let held = digests[2].clone();
        let skip = |d: &Digest| *d == held;
        // 70 bytes down to 35: four rows of 10, none pinned or held, over
        // pages of two rows.
        let chosen = least_recent(&index, &pinned, 70, 35, skip, 2)
            .await
            .unwrap();
        let chosen: Vec<_> = chosen.into_iter().map(|r| r.digest).collect();
        let want = [&digests[0], &digests[3], &digests[4], &digests[5]].map(Clone::clone);
        assert_eq!(chosen, want);
        // Asking for more than there is stops at the last page.
        let all = least_recent(&index, &HashSet::new(), 70, 0, |_| false, 3)
            .await
            .unwrap();
        assert_eq!(all.len(), 7);
    }
}
