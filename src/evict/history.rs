//! What the budget reports to the status page and `/metrics`: evictions since
//! start (count, bytes, the most recent ones) and [`DiskUsage`], the budget's
//! numbers at one moment. Recording an eviction is part of a pass (never of a
//! request); reading never blocks a pass for more than a copy of a short list.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Error, Evictor, lock, pinned_bytes};
use crate::oci::Digest;

/// Evictions kept for the status page.
const RECENT: usize = 20;

/// Evictions since the server started.
#[derive(Debug, Default)]
pub(super) struct EvictionHistory {
    count: AtomicU64,
    bytes: AtomicU64,
    recent: Mutex<VecDeque<Eviction>>,
}

/// One piece of content evicted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Eviction {
    pub digest: String,
    pub size: u64,
    /// Unix seconds.
    pub at: u64,
}

impl EvictionHistory {
    pub(super) fn record(&self, evicted: &[(Digest, u64)]) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let bytes: u64 = evicted.iter().map(|(_, size)| size).sum();
        self.count
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let mut recent = lock(&self.recent);
        // Only the last `RECENT` can stay: a pass of thousands formats no more.
        let kept = evicted.len().saturating_sub(RECENT);
        for (digest, size) in &evicted[kept..] {
            if recent.len() == RECENT {
                recent.pop_back();
            }
            recent.push_front(Eviction {
                digest: digest.to_string(),
                size: *size,
                at,
            });
        }
    }
}

/// The budget's numbers at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DiskUsage {
    /// Bytes of committed content, and bytes reserved by fills in flight.
    pub committed_bytes: u64,
    pub reserved_bytes: u64,
    pub max_size: u64,
    pub high_bytes: u64,
    pub low_bytes: u64,
    /// Committed bytes the pins cover.
    pub pinned_bytes: u64,
    /// Rows in the index's content table.
    pub index_rows: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
    /// Most recent first.
    pub recent_evictions: Vec<Eviction>,
    /// The pin patterns, as configured (`upstream/repo[:tag]`).
    pub pins: Vec<String>,
}

impl Evictor {
    /// The budget, the usage, the pins' share and the evictions so far.
    /// Reads the index (row count, pinned content): for a status view, not a
    /// request.
    pub async fn usage(&self) -> Result<DiskUsage, Error> {
        let (committed_bytes, reserved_bytes) = lock(&self.usage).totals();
        let pinned_bytes = pinned_bytes(&self.index, &self.store, &self.pins).await?;
        let index_rows = self.index.content_rows().await?;
        let recent_evictions = lock(&self.history.recent).iter().cloned().collect();
        let pins = self
            .pins
            .iter()
            .map(|p| match &p.tag {
                Some(tag) => format!("{}/{}:{tag}", p.upstream, p.repo),
                None => format!("{}/{}", p.upstream, p.repo),
            })
            .collect();
        Ok(DiskUsage {
            committed_bytes,
            reserved_bytes,
            max_size: self.budget.max_size(),
            high_bytes: self.budget.high(),
            low_bytes: self.budget.low(),
            pinned_bytes,
            index_rows,
            evictions: self.history.count.load(Ordering::Relaxed),
            evicted_bytes: self.history.bytes.load(Ordering::Relaxed),
            recent_evictions,
            pins,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_evictions_are_newest_first_and_bounded() {
        let history = EvictionHistory::default();
        let digests: Vec<(Digest, u64)> = (0..25u8)
            .map(|n| {
                let digest = format!("sha256:{}", hex::encode([n; 32])).parse().unwrap();
                (digest, u64::from(n))
            })
            .collect();
        history.record(&digests[..5]);
        history.record(&digests[5..]);
        assert_eq!(history.count.load(Ordering::Relaxed), 25);
        assert_eq!(history.bytes.load(Ordering::Relaxed), (0..25).sum::<u64>());
        let recent = lock(&history.recent);
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[0].size, 24);
        assert_eq!(recent[RECENT - 1].size, 5);
    }
}
