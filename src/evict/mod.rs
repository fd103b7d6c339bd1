//! The disk budget: how many bytes of committed content the cache may hold
//! (`storage.max_size`), and least-recently-used eviction between a high and a
//! low watermark. It owns the usage accounting (committed bytes, loaded from the
//! index at start, updated on commit and eviction, re-read from the index on an
//! interval so that a separate `regcache gc` is noticed), the reservations of
//! fills in flight, the access times ([`AccessRecorder`]), the pins ([`Pins`]:
//! configured, and the runtime ones read from the index at each pass),
//! the eviction pass with its interval task, and what it reports to the status
//! page and `/metrics` (`history`: evictions so far, [`DiskUsage`]).
//!
//! A fill reserves its upstream `Content-Length` before it writes a byte; the
//! reservation is converted to committed bytes at commit and released on
//! failure (drop). A reservation that cannot fit even after evicting is refused,
//! and the fill passes the upstream body through to its client without caching
//! it (never waits: a waiting fill would stall its client and the upstream).
//! So committed + reserved never exceeds `max_size`.
//!
//! An eviction pass flushes access times, picks the least recently used
//! unpinned content from the index and, a batch of victims at a time, deletes
//! their rows in one transaction (the schema's cascades take their repository
//! links and tags), drops them from the memory caches, and only then deletes
//! their files (all of a batch in one blocking task). It must never delete a file
//! before its row (a row without its file is a hit that cannot be served), never
//! delete content a commit of the same digest is writing at that moment, and
//! never make a reader fail: a client that opened a file keeps reading it after
//! its name is unlinked. LRU order is by `last_access` in unix seconds (the
//! schema's unit), ties broken by insertion order.

mod access;
mod accounting;
mod budget;
mod disk;
mod history;
mod pass;
mod pins;
mod task;

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

pub use access::AccessRecorder;
pub use accounting::{Admission, CommitGuard, Reservation};
pub use budget::Budget;
pub use history::{DiskUsage, Eviction};
pub use pass::{collect, pinned_bytes};
pub use pins::{Pin, Pins};
pub use task::EvictionTask;

use crate::cache::Cache;
use crate::index::{self, Index};
use crate::oci::Digest;
use crate::store::{self, Store};
use accounting::{Busy, Usage};
use history::EvictionHistory;

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
    /// Evictions since start, for the status page and `/metrics`.
    history: EvictionHistory,
    /// One pass at a time.
    pass: tokio::sync::Mutex<()>,
    /// Wakes the interval task after a commit passed the high watermark.
    wake: Notify,
    /// Wakes commits waiting for an eviction of their digest to end.
    evicted: Notify,
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
            history: EvictionHistory::default(),
            pass: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            evicted: Notify::new(),
        }
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// The index this evictor deletes from (the admin socket records pins in it).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The store this evictor deletes from.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Committed bytes as this process accounts them.
    pub fn committed(&self) -> u64 {
        lock(&self.usage).totals().0
    }

    /// Reads the committed bytes from the index, logs the budget and evicts if
    /// the cache starts above its high watermark (a smaller `max_size` than last run).
    pub async fn load(&self) -> Result<(), Error> {
        let committed = self.index.content_bytes().await?;
        lock(&self.usage).set_committed(committed);
        let pins = self.pins.with_runtime(&self.index).await?;
        let pinned = pinned_bytes(&self.index, &self.store, &pins).await?;
        tracing::info!(
            max_size = self.budget.max_size(),
            high = self.budget.high(),
            low = self.budget.low(),
            committed,
            pinned,
            "cache budget"
        );
        self.warn_if_larger_than_disk();
        if committed > self.budget.high() {
            self.pass(self.budget.high(), 0).await?;
        }
        Ok(())
    }

    /// A `max_size` the file system cannot hold is only ever reached by
    /// ENOSPC: say so at start (fills are still admitted by the free space).
    fn warn_if_larger_than_disk(&self) {
        let Some(space) = disk::space(self.store.blobs_dir()) else {
            return;
        };
        if self.budget.max_size() > space.total {
            tracing::warn!(
                max_size = self.budget.max_size(),
                filesystem = space.total,
                available = space.available,
                "storage.max_size is larger than the file system holding the data directory; \
                 fills are admitted by its free space"
            );
        }
    }

    /// Records a hit of `digest` in memory (written to the index in batches).
    pub fn touch(&self, digest: &Digest) {
        self.access.record(digest);
    }
}

#[cfg(test)]
mod tests;
