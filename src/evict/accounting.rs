//! The budget's accounting in a serving process: committed and reserved bytes,
//! the reservations of fills in flight ([`Reservation`], released when
//! dropped), and the digests being committed ([`CommitGuard`]) or evicted, which
//! exclude each other. Committed + reserved never exceeds `max_size`; a re-read
//! of the index never overwrites a local change that raced with it.
//!
//! It never deletes anything: eviction is `pass`'s.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Evictor, lock};
use crate::oci::Digest;

/// Committed and reserved bytes, as this process knows them.
#[derive(Debug, Default)]
pub(super) struct Usage {
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
    pub(super) fn begin_change(&mut self) {
        self.changing += 1;
        self.generation += 1;
    }

    pub(super) fn end_change(&mut self) {
        self.changing = self.changing.saturating_sub(1);
        self.generation += 1;
    }

    /// Committed and reserved bytes.
    pub(super) fn totals(&self) -> (u64, u64) {
        (self.committed, self.reserved)
    }

    /// The committed bytes the index holds, at start-up.
    pub(super) fn set_committed(&mut self, committed: u64) {
        self.committed = committed;
        self.generation += 1;
    }

    /// Evicted content no longer counts; returns the committed bytes left.
    pub(super) fn remove_committed(&mut self, freed: u64) -> u64 {
        self.committed = self.committed.saturating_sub(freed);
        self.generation += 1;
        self.committed
    }
}

/// Digests being committed (by count) and being evicted: a digest is never in both.
#[derive(Debug, Default)]
pub(super) struct Busy {
    committing: HashMap<Digest, usize>,
    evicting: HashSet<Digest>,
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

impl Evictor {
    /// Marks the digests `choose` picks as being evicted (`choose` is told
    /// which digests commits hold, never to be picked) and begins a change of
    /// usage; both end when the returned [`Marked`] drops.
    pub(super) fn mark_evicting(
        &self,
        choose: impl FnOnce(&dyn Fn(&Digest) -> bool) -> Vec<Digest>,
    ) -> Marked<'_> {
        lock(&self.usage).begin_change();
        let mut busy = lock(&self.busy);
        let digests = choose(&|d| busy.committing.contains_key(d));
        busy.evicting.extend(digests.iter().cloned());
        Marked {
            evictor: self,
            digests,
        }
    }

    /// Whether a commit of `digest` is under way (an eviction pass must not pick it).
    pub(super) fn is_committing(&self, digest: &Digest) -> bool {
        lock(&self.busy).committing.contains_key(digest)
    }

    /// Reserves `bytes` for a fill about to write them, evicting first if they
    /// would not fit under `max_size` or in the file system's free space.
    pub async fn reserve(self: &Arc<Self>, bytes: u64) -> Admission {
        if bytes > self.budget.max_size() {
            return Admission::TooLarge;
        }
        if let Some(r) = self.try_reserve(bytes) {
            return Admission::Reserved(r);
        }
        if let Err(e) = self.pass(self.budget.max_size(), bytes).await {
            tracing::warn!(error = %e, "eviction failed");
        }
        if let Some(r) = self.try_reserve(bytes) {
            return Admission::Reserved(r);
        }
        self.free_disk_for(bytes).await;
        match self.try_reserve(bytes) {
            Some(r) => Admission::Reserved(r),
            None => Admission::NoRoom,
        }
    }

    /// Bytes the file system is short of for `bytes` more beyond the fills
    /// already reserved (which may not have written theirs yet).
    fn disk_shortfall(&self, bytes: u64, reserved: u64) -> u64 {
        match super::disk::space(self.store.blobs_dir()) {
            Some(space) => (bytes + reserved).saturating_sub(space.available),
            None => 0,
        }
    }

    /// Evicts least recently used content until the file system has room for
    /// `bytes` (the budget alone would have allowed them).
    async fn free_disk_for(&self, bytes: u64) {
        let (committed, reserved) = lock(&self.usage).totals();
        let short = self.disk_shortfall(bytes, reserved);
        if short == 0 {
            return;
        }
        tracing::warn!(
            bytes,
            short,
            "the file system is fuller than the cache budget assumes; evicting to make room"
        );
        if let Err(e) = self.collect_to(committed.saturating_sub(short)).await {
            tracing::warn!(error = %e, "eviction failed");
        }
    }

    /// The file system's free space (statvfs), if it can be asked.
    pub fn disk_available(&self) -> Option<u64> {
        super::disk::space(self.store.blobs_dir()).map(|space| space.available)
    }

    /// A fill ran out of disk space anyway (ENOSPC: something other than the
    /// cache filled the disk): evicts least recently used content until the
    /// file system has room for `bytes`, so the next fill can be cached.
    pub async fn make_room_on_disk(&self, bytes: u64) {
        self.free_disk_for(bytes).await;
    }

    fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let reserved = lock(&self.usage).totals().1;
        // Asked outside the lock: a statvfs is a system call.
        if self.disk_shortfall(bytes, reserved) > 0 {
            return None;
        }
        let mut usage = lock(&self.usage);
        if usage.committed + usage.reserved + bytes > self.budget.max_size() {
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
            // Registered before the check, so an eviction ending in between
            // still wakes this commit.
            let evicted = self.evicted.notified();
            tokio::pin!(evicted);
            evicted.as_mut().enable();
            {
                let mut busy = lock(&self.busy);
                if !busy.evicting.contains(digest) {
                    *busy.committing.entry(digest.clone()).or_default() += 1;
                    lock(&self.usage).begin_change();
                    break;
                }
            }
            evicted.await;
        }
        CommitGuard {
            evictor: Arc::clone(self),
            digest: digest.clone(),
        }
    }

    /// Re-reads committed bytes from the index (another process may have deleted
    /// content), unless a local change was under way or started meanwhile.
    pub(super) async fn refresh_usage(&self) {
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
}

impl Reservation {
    /// Grows the reservation by `more` bytes (a body without Content-Length),
    /// evicting if needed, when the budget and the file system's free space
    /// both hold them. False if there is no room: the fill writes no more.
    pub async fn grow(&mut self, more: u64) -> bool {
        let evictor = Arc::clone(&self.evictor);
        let total = self.bytes + more;
        if total > evictor.budget.max_size() {
            return false;
        }
        for attempt in 0..2 {
            if attempt == 1 {
                evictor.free_disk_for(more).await;
            }
            if !self.disk_holds(more) {
                continue;
            }
            {
                let mut usage = lock(&evictor.usage);
                if usage.committed + usage.reserved + more <= evictor.budget.max_size() {
                    usage.reserved += more;
                    usage.generation += 1;
                    self.bytes = total;
                    return true;
                }
            }
            if attempt == 0 {
                if let Err(e) = evictor.pass(evictor.budget.max_size(), more).await {
                    tracing::warn!(error = %e, "eviction failed");
                }
            }
        }
        false
    }

    /// Whether the file system's free space holds `more` bytes beside the
    /// other fills' reservations (this one's bytes are written already).
    fn disk_holds(&self, more: u64) -> bool {
        let reserved = lock(&self.evictor.usage).totals().1;
        let others = reserved.saturating_sub(self.bytes);
        self.evictor.disk_shortfall(more, others) == 0
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
            usage.committed + usage.reserved > self.evictor.budget.high()
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
pub(super) struct Marked<'a> {
    evictor: &'a Evictor,
    pub(super) digests: Vec<Digest>,
}

impl Drop for Marked<'_> {
    fn drop(&mut self) {
        let mut busy = lock(&self.evictor.busy);
        for digest in &self.digests {
            busy.evicting.remove(digest);
        }
        drop(busy);
        lock(&self.evictor.usage).end_change();
        // Commits of these digests waiting in `commit_guard` may go on.
        self.evictor.evicted.notify_waiters();
    }
}
