//! The scrub: a background task that re-hashes every committed file, one
//! pass every `storage.scrub_interval`, reading at most `storage.scrub_rate`
//! bytes per second, and removes content whose file no longer matches its
//! digest or size (through `Local`, so index and memory stay consistent), so
//! a rotten file is found without an operator running `regcache verify`.
//!
//! It never removes content that merely went missing or was evicted meanwhile
//! (reads already handle that), and never stops serving: it only reads files
//! and removes rows that no reader should be given again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Registry;
use super::local::Local;
use crate::config::ScrubConfig;

/// What the scrub has done since the server started.
#[derive(Debug, Default)]
pub struct ScrubCounters {
    passes: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    removed: AtomicU64,
}

/// A copy of [`ScrubCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScrubTotals {
    /// Whole passes finished.
    pub passes: u64,
    /// Files re-hashed and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Corrupt files removed.
    pub removed: u64,
}

impl ScrubCounters {
    pub fn totals(&self) -> ScrubTotals {
        ScrubTotals {
            passes: self.passes.load(Ordering::Relaxed),
            files: self.files.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            removed: self.removed.load(Ordering::Relaxed),
        }
    }
}

impl Registry {
    /// Starts the scrub's task (none when `scrub_interval` is off); it runs
    /// until aborted.
    pub fn spawn_scrub(
        self: &Arc<Self>,
        config: ScrubConfig,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let interval = config.interval?;
        let registry = Arc::clone(self);
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                pass(&registry.local, config.rate, &registry.scrub).await;
            }
        }))
    }

    /// What the scrub has done since start.
    pub fn scrub_totals(&self) -> ScrubTotals {
        self.scrub.totals()
    }
}

/// One pass over every committed file.
async fn pass(local: &Local, rate: u64, counters: &ScrubCounters) {
    let rows = match local.content_rows().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "scrub: cannot list the cached content");
            return;
        }
    };
    let (mut files, mut bytes, mut removed) = (0u64, 0u64, 0u64);
    for row in rows {
        let problem = match local.rehash_paced(&row.digest, rate).await {
            Ok(None) => continue,
            Ok(Some(r)) if r.size != row.size => format!("size {} instead of {}", r.size, row.size),
            Ok(Some(r)) if r.actual != row.digest => format!("hashes to {}", r.actual),
            Ok(Some(r)) => {
                files += 1;
                bytes += r.size;
                counters.files.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(r.size, Ordering::Relaxed);
                continue;
            }
            Err(e) => {
                tracing::warn!(digest = %row.digest, error = %e, "scrub: cannot re-hash");
                continue;
            }
        };
        match local.remove_corrupt(&row.digest).await {
            Ok(()) => {
                removed += 1;
                counters.removed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(digest = %row.digest, problem, "scrub removed corrupt content; the next pull fetches it again");
            }
            Err(e) => {
                tracing::error!(digest = %row.digest, problem, error = %e, "scrub: cannot remove corrupt content")
            }
        }
    }
    counters.passes.fetch_add(1, Ordering::Relaxed);
    tracing::info!(files, bytes, removed, "scrub pass finished");
}
