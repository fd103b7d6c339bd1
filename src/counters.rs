//! [`Counters`]: requests and body bytes of a running server by cache outcome,
//! counted by the access log when a response ends, written to disk for
//! `regcache stats` (`ops::server_stats`). Counters start at zero with every
//! server start.
//!
//! It must never block a request: counting is a few relaxed atomic adds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Outcome names as logged (`registry::Outcome::as_str`), and `none` for
/// requests without one (the version check, errors before a cache decision).
const OUTCOMES: [&str; 7] = [
    "hit",
    "miss",
    "follow",
    "confirmed",
    "stale",
    "pass",
    "none",
];

/// Requests and bytes sent since the server started, by outcome.
#[derive(Debug, Default)]
pub struct Counters {
    requests: [AtomicU64; OUTCOMES.len()],
    bytes: [AtomicU64; OUTCOMES.len()],
}

impl Counters {
    /// Counts one finished request (`outcome` as in the access log).
    pub fn record(&self, outcome: Option<&str>, bytes: u64) {
        let slot = outcome
            .and_then(|o| OUTCOMES.iter().position(|name| *name == o))
            .unwrap_or(OUTCOMES.len() - 1);
        self.requests[slot].fetch_add(1, Ordering::Relaxed);
        self.bytes[slot].fetch_add(bytes, Ordering::Relaxed);
    }

    /// The current values, by outcome name.
    pub fn snapshot(&self) -> BTreeMap<String, OutcomeCount> {
        OUTCOMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let count = OutcomeCount {
                    requests: self.requests[i].load(Ordering::Relaxed),
                    bytes: self.bytes[i].load(Ordering::Relaxed),
                };
                ((*name).to_owned(), count)
            })
            .collect()
    }
}

/// Requests answered with one outcome, and the body bytes sent for them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCount {
    pub requests: u64,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_outcome_with_unknown_as_none() {
        let counters = Counters::default();
        counters.record(Some("hit"), 10);
        counters.record(Some("hit"), 5);
        counters.record(Some("miss"), 100);
        counters.record(None, 2);
        counters.record(Some("something new"), 1);
        let snap = counters.snapshot();
        let get = |name: &str| snap[name];
        assert_eq!(
            get("hit"),
            OutcomeCount {
                requests: 2,
                bytes: 15
            }
        );
        assert_eq!(
            get("miss"),
            OutcomeCount {
                requests: 1,
                bytes: 100
            }
        );
        assert_eq!(
            get("none"),
            OutcomeCount {
                requests: 2,
                bytes: 3
            }
        );
        assert_eq!(get("stale"), OutcomeCount::default());
    }
}
