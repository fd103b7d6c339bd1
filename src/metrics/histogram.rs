//! [`Histogram`]: a fixed-bucket histogram of durations made of relaxed atomics,
//! so observing one is two atomic adds (its bucket and its sum) with no lock:
//! `prometheus-client`'s own histogram takes a lock per observation, which the
//! request path must not. It only counts; `metrics` turns a [`HistogramSnapshot`]
//! into the exposition's cumulative `_bucket` lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Upper bounds (seconds) for time to first byte: a memory hit is well under a
/// millisecond, a cold fill waits for the upstream's first answer.
pub const TTFB_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds (seconds) for a whole fill: from a small manifest to a layer of
/// several GiB.
pub const FILL_BOUNDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

/// Counts of durations per bucket (not cumulative) and their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then the `+Inf` bucket.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let slot = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The current values. Taken bucket by bucket without a lock, so an
    /// observation racing the snapshot may be in its count but not yet its sum.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(self.counts.iter())
            .map(|(bound, count)| {
                cumulative += count.load(Ordering::Relaxed);
                (*bound, cumulative)
            })
            .collect();
        let count = cumulative + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

/// A histogram's values: `buckets` are (upper bound, cumulative count), without
/// `+Inf` (that is `count`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub sum_seconds: f64,
    pub buckets: Vec<(f64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inf_is_the_count() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(100));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(3));
        let snap = h.snapshot();
        assert_eq!(snap.buckets, vec![(0.1, 2), (1.0, 3)]);
        assert_eq!(snap.count, 4);
        assert!(
            (snap.sum_seconds - 3.65).abs() < 1e-9,
            "{}",
            snap.sum_seconds
        );
    }
}
