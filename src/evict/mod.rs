//! The disk budget: how many bytes of committed content the cache may hold
//! (`storage.max_size`), and least-recently-used eviction between a high and a
//! low watermark. It owns the usage accounting (committed bytes, loaded from the
//! index at start, updated on commit and eviction, re-read from the index on an
//! interval so that a separate `regcache gc` is noticed), the reservations of
//! fills in flight, the access times ([`AccessRecorder`]), the pins ([`Pins`]) and
//! the eviction pass with its interval task.
//!
//! A fill reserves its upstream `Content-Length` before it writes a byte; the
//! reservation is converted to committed bytes at commit and released on
//! failure (drop). A reservation that cannot fit even after evicting is refused,
//! and the fill passes the upstream body through to its client without caching
//! it (never waits: a waiting fill would stall its client and the upstream).
//! So committed + reserved never exceeds `max_size`.
//!
//! An eviction pass flushes access times, picks the least recently used
//! unpinned content from the index, deletes those rows in one transaction (the
//! schema's cascades take their repository links and tags), drops them from the
//! memory caches, and only then deletes the files. It must never delete a file
//! before its row (a row without its file is a hit that cannot be served), never
//! delete content a commit of the same digest is writing at that moment, and
//! never make a reader fail: a client that opened a file keeps reading it after
//! its name is unlinked. LRU order is by `last_access` in unix seconds (the
//! schema's unit), ties broken by insertion order.

mod access;
mod budget;
mod pins;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};

pub use access::AccessRecorder;
pub use budget::Budget;
pub use pins::{Pin, Pins};

use crate::cache::Cache;
use crate::index::{self, Index, LruRow};
use crate::oci::Digest;
use crate::store::{self, Store};

/// How often access times recorded in memory are written to the index.
const ACCESS_FLUSH: Duration = Duration::from_secs(5);

/// Why an eviction pass or a budget query failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Index(#[from] index::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// What one eviction pass (or `regcache gc`) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvictReport {
    /// Committed bytes before and after the pass.
    pub usage_before: u64,
    pub usage_after: u64,
    /// The usage the pass aimed at.
    pub target: u64,
    /// Content deleted, least recently used first, with its size.
    pub evicted: Vec<(Digest, u64)>,
    pub freed_bytes: u64,
    /// Bytes of pinned content (never evicted; counted in the usage).
    pub pinned_bytes: u64,
}

/// Evicts least-recently-used unpinned content until at most `target_bytes` are
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
    let pinned = pins.pinned_digests(index, store).await?;
    let rows = index.content_by_last_access().await?;
    let pinned_bytes = sum_pinned(&rows, &pinned);
    let victims = pick(rows, &pinned, usage, target_bytes, |_| false);
    let evicted = index.remove_contents(victims).await?;
    for (digest, _) in &evicted {
        store.remove(digest).await?;
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

/// Bytes of committed content the pins cover (for `regcache stats`).
pub async fn pinned_bytes(index: &Index, store: &Store, pins: &Pins) -> Result<u64, Error> {
    let pinned = pins.pinned_digests(index, store).await?;
    if pinned.is_empty() {
        return Ok(0);
    }
    let rows = index.content_by_last_access().await?;
    Ok(sum_pinned(&rows, &pinned))
}

fn sum_pinned(rows: &[LruRow], pinned: &HashSet<Digest>) -> u64 {
    rows.iter()
        .filter(|r| pinned.contains(&r.digest))
        .map(|r| r.size)
        .sum()
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

/// Committed and reserved bytes, as this process knows them.
#[derive(Debug, Default)]
struct Usage {
    committed: u64,
    reserved: u64,
    /// Bumped by every local change, so that a re-read of the index that raced
    /// with one is discarded instead of overwriting it.
    generation: u64,
    /// Changes under way whose index rows and accounting are not both done yet
    /// (commits holding a [`CommitGuard`], an eviction pass deleting rows): a
    /// re-read of the index is not applied while any is.
    changing: usize,
}

impl Usage {
    fn begin_change(&mut self) {
        self.changing += 1;
        self.generation += 1;
    }

    fn end_change(&mut self) {
        self.changing = self.changing.saturating_sub(1);
        self.generation += 1;
    }
}

/// Digests being committed (by count) and being evicted: a digest is never in both.
#[derive(Debug, Default)]
struct Busy {
    committing: HashMap<Digest, usize>,
    evicting: HashSet<Digest>,
}

/// The budget enforcer of a serving process. Shared as `Arc<Evictor>`.
#[derive(Debug)]
pub struct Evictor {
    budget: Budget,
    pins: Pins,
    index: Index,
    store: Store,
    cache: Cache,
    usage: Mutex<Usage>,
    busy: Mutex<Busy>,
    access: AccessRecorder,
    /// One pass at a time.
    pass: tokio::sync::Mutex<()>,
    /// Wakes the interval task after a commit passed the high watermark.
    wake: Notify,
}

/// The answer to a fill asking for room.
#[derive(Debug)]
pub enum Admission {
    /// Room is reserved; convert it with [`Reservation::commit`].
    Reserved(Reservation),
    /// Larger than the whole budget: stream without caching.
    TooLarge,
    /// No room even after evicting (pins and other fills hold the rest).
    NoRoom,
}

/// Bytes reserved by a fill in flight; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    evictor: Arc<Evictor>,
    bytes: u64,
}

/// Held while content is renamed into the store and indexed: eviction leaves
/// that digest alone meanwhile (and a commit waits for an eviction of the same
/// digest to finish), so a row is never left without its file.
#[derive(Debug)]
pub struct CommitGuard {
    evictor: Arc<Evictor>,
    digest: Digest,
}

/// The interval task of a serving process; [`EvictionTask::stop`] ends it and
/// writes pending access times.
#[derive(Debug)]
pub struct EvictionTask {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Evictor {
    /// An evictor with no usage known yet: call [`Evictor::load`] before serving.
    pub fn new(budget: Budget, pins: Pins, index: Index, store: Store, cache: Cache) -> Self {
        Self {
            budget,
            pins,
            index,
            store,
            cache,
            usage: Mutex::default(),
            busy: Mutex::default(),
            access: AccessRecorder::default(),
            pass: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
        }
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Committed bytes as this process accounts them.
    pub fn committed(&self) -> u64 {
        lock(&self.usage).committed
    }

    /// Reads the committed bytes from the index, logs the budget and evicts if
    /// the cache starts above its high watermark (a smaller `max_size` than last run).
    pub async fn load(&self) -> Result<(), Error> {
        let committed = self.index.content_bytes().await?;
        lock(&self.usage).committed = committed;
        let pinned = pinned_bytes(&self.index, &self.store, &self.pins).await?;
        tracing::info!(
            max_size = self.budget.max_size,
            high = self.budget.high,
            low = self.budget.low,
            committed,
            pinned,
            "cache budget"
        );
        if committed > self.budget.high {
            self.pass(self.budget.high, 0).await?;
        }
        Ok(())
    }

    /// Records a hit of `digest` in memory (written to the index in batches).
    pub fn touch(&self, digest: &Digest) {
        self.access.record(digest);
    }

    /// Reserves `bytes` for a fill about to write them, evicting first if they
    /// would not fit under `max_size`.
    pub async fn reserve(self: &Arc<Self>, bytes: u64) -> Admission {
        if bytes > self.budget.max_size {
            return Admission::TooLarge;
        }
        if let Some(r) = self.try_reserve(bytes) {
            return Admission::Reserved(r);
        }
        if let Err(e) = self.pass(self.budget.max_size, bytes).await {
            tracing::warn!(error = %e, "eviction failed");
        }
        match self.try_reserve(bytes) {
            Some(r) => Admission::Reserved(r),
            None => Admission::NoRoom,
        }
    }

    fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let mut usage = lock(&self.usage);
        if usage.committed + usage.reserved + bytes > self.budget.max_size {
            return None;
        }
        usage.reserved += bytes;
        usage.generation += 1;
        Some(Reservation {
            evictor: Arc::clone(self),
            bytes,
        })
    }

    /// Marks `digest` as being committed (see [`CommitGuard`]); waits while an
    /// eviction of the same digest is deleting it. Convert the reservation
    /// ([`Reservation::commit`]) before dropping the guard.
    pub async fn commit_guard(self: &Arc<Self>, digest: &Digest) -> CommitGuard {
        loop {
            {
                let mut busy = lock(&self.busy);
                if !busy.evicting.contains(digest) {
                    *busy.committing.entry(digest.clone()).or_default() += 1;
                    lock(&self.usage).begin_change();
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        CommitGuard {
            evictor: Arc::clone(self),
            digest: digest.clone(),
        }
    }

    /// Writes pending access times to the index.
    pub async fn flush_access(&self) {
        if let Err(e) = self.access.flush(&self.index).await {
            tracing::warn!(error = %e, "cannot record access times; will retry");
        }
    }

    /// Re-reads committed bytes from the index (another process may have deleted
    /// content), unless a local change was under way or started meanwhile.
    async fn refresh_usage(&self) {
        let generation = {
            let usage = lock(&self.usage);
            if usage.changing > 0 {
                return;
            }
            usage.generation
        };
        match self.index.content_bytes().await {
            Ok(total) => {
                let mut usage = lock(&self.usage);
                if usage.generation == generation && usage.committed != total {
                    tracing::debug!(
                        from = usage.committed,
                        to = total,
                        "committed bytes re-read from the index"
                    );
                    usage.committed = total;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the cache usage"),
        }
    }

    /// Unless another pass already did it: if committed + reserved + `extra`
    /// exceeds `trigger`, evicts least recently used unpinned content until
    /// committed + reserved + `extra` is at most the low watermark.
    async fn pass(&self, trigger: u64, extra: u64) -> Result<EvictReport, Error> {
        let _one = self.pass.lock().await;
        let (committed, reserved) = {
            let usage = lock(&self.usage);
            (usage.committed, usage.reserved)
        };
        if committed + reserved + extra <= trigger {
            return Ok(EvictReport::default());
        }
        // LRU order must see the latest hits.
        self.flush_access().await;
        let target = self.budget.low.saturating_sub(reserved + extra);
        let pinned = self.pins.pinned_digests(&self.index, &self.store).await?;
        let rows = self.index.content_by_last_access().await?;
        let pinned_bytes = sum_pinned(&rows, &pinned);
        lock(&self.usage).begin_change();
        let mut marked = Marked {
            evictor: self,
            digests: Vec::new(),
        };
        {
            let mut busy = lock(&self.busy);
            let victims = pick(rows, &pinned, committed, target, |d| {
                busy.committing.contains_key(d)
            });
            busy.evicting.extend(victims.iter().cloned());
            marked.digests = victims;
        }
        // Rows first: from here on nothing serves these digests as hits.
        let evicted = self.index.remove_contents(marked.digests.clone()).await?;
        let freed_bytes: u64 = evicted.iter().map(|(_, size)| size).sum();
        let usage_after = {
            let mut usage = lock(&self.usage);
            usage.committed = usage.committed.saturating_sub(freed_bytes);
            usage.generation += 1;
            usage.committed
        };
        let gone: HashSet<Digest> = evicted.iter().map(|(d, _)| d.clone()).collect();
        self.cache.forget_all(&gone).await;
        // Files last; a reader that has one open keeps reading it.
        for digest in &gone {
            if let Err(e) = self.store.remove(digest).await {
                tracing::warn!(%digest, error = %e, "cannot delete an evicted file; its row is gone");
            }
        }
        drop(marked);
        tracing::info!(
            evicted = evicted.len(),
            freed_bytes,
            usage_before = committed,
            usage_after,
            reserved,
            target,
            pinned_bytes,
            "evicted least recently used content"
        );
        if usage_after + reserved + extra > self.budget.low && pinned_bytes > 0 {
            tracing::warn!(
                pinned_bytes,
                low = self.budget.low,
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

    /// Evicts down to the low watermark if usage is past the high one.
    async fn evict_if_over(&self) {
        if let Err(e) = self.pass(self.budget.high, 0).await {
            tracing::warn!(error = %e, "eviction failed");
        }
    }

    /// Starts the interval task: access times flushed every few seconds, usage
    /// re-read and checked every `interval`, and a pass whenever a commit leaves
    /// usage past the high watermark.
    pub fn spawn(self: &Arc<Self>, interval: Duration) -> EvictionTask {
        let (stop, mut stopped) = watch::channel(false);
        let me = Arc::clone(self);
        let handle = tokio::spawn(async move {
            let mut flush = tokio::time::interval(ACCESS_FLUSH);
            let mut check = tokio::time::interval(interval);
            for timer in [&mut flush, &mut check] {
                timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = flush.tick() => me.flush_access().await,
                    _ = check.tick() => {
                        me.refresh_usage().await;
                        me.evict_if_over().await;
                    }
                    () = me.wake.notified() => me.evict_if_over().await,
                }
            }
            me.flush_access().await;
        });
        EvictionTask { stop, handle }
    }
}

impl EvictionTask {
    /// Stops the task after its current step and flushes access times.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.handle.await {
            tracing::warn!(error = %e, "the eviction task failed");
        }
    }
}

impl Reservation {
    /// Grows the reservation by `more` bytes (a body without Content-Length),
    /// evicting if needed. False if there is no room: the fill must give up.
    pub async fn grow(&mut self, more: u64) -> bool {
        let evictor = Arc::clone(&self.evictor);
        let total = self.bytes + more;
        if total > evictor.budget.max_size {
            return false;
        }
        for attempt in 0..2 {
            {
                let mut usage = lock(&evictor.usage);
                if usage.committed + usage.reserved + more <= evictor.budget.max_size {
                    usage.reserved += more;
                    usage.generation += 1;
                    self.bytes = total;
                    return true;
                }
            }
            if attempt == 0 {
                if let Err(e) = evictor.pass(evictor.budget.max_size, more).await {
                    tracing::warn!(error = %e, "eviction failed");
                }
            }
        }
        false
    }

    /// The content is committed and indexed: `size` bytes become committed
    /// bytes (if `new_row`; re-committing indexed content adds nothing) and the
    /// reservation is released.
    pub fn commit(mut self, size: u64, new_row: bool) {
        let over = {
            let mut usage = lock(&self.evictor.usage);
            usage.reserved = usage.reserved.saturating_sub(self.bytes);
            if new_row {
                usage.committed += size;
            }
            usage.generation += 1;
            usage.committed + usage.reserved > self.evictor.budget.high
        };
        self.bytes = 0;
        if over {
            self.evictor.wake.notify_one();
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut usage = lock(&self.evictor.usage);
            usage.reserved = usage.reserved.saturating_sub(self.bytes);
            usage.generation += 1;
        }
    }
}

impl Drop for CommitGuard {
    fn drop(&mut self) {
        let mut busy = lock(&self.evictor.busy);
        if let Some(n) = busy.committing.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                busy.committing.remove(&self.digest);
            }
        }
        lock(&self.evictor.usage).end_change();
    }
}

/// Digests marked as being evicted; unmarked when the pass ends, however it ends.
struct Marked<'a> {
    evictor: &'a Evictor,
    digests: Vec<Digest>,
}

impl Drop for Marked<'_> {
    fn drop(&mut self) {
        let mut busy = lock(&self.evictor.busy);
        for digest in &self.digests {
            busy.evicting.remove(digest);
        }
        lock(&self.evictor.usage).end_change();
    }
}

#[cfg(test)]
mod tests;
