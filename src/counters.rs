//! [`Counters`]: what a running server answered, counted by the access log when
//! a response ends: requests by endpoint kind and cache outcome, body bytes by
//! outcome, time to first byte by outcome, and manifest pulls by repository
//! name (for the status page's "most pulled"). The same numbers feed `/metrics`,
//! the status page and `regcache stats` (written to disk by
//! `ops::server_stats`): one source, three views. Counters start at zero with
//! every server start.
//!
//! It must never block a request: counting is a few relaxed atomic adds; only
//! the first pull of a repository name takes a write lock, and a manifest pull
//! of a known name a read lock (blob requests never touch it).

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::metrics::histogram::{Histogram, HistogramSnapshot, TTFB_BOUNDS};

/// Outcome names as logged (`registry::Outcome::as_str`); `error` for answers
/// with a 4xx/5xx status or a body that broke, `none` for other requests
/// without a cache decision (the version check).
pub const OUTCOMES: [&str; 8] = [
    "hit",
    "miss",
    "follow",
    "confirmed",
    "stale",
    "pass",
    "error",
    "none",
];
const ERROR: usize = 6;
const NONE: usize = 7;

/// The kinds of endpoint a request is counted under (a label, never a name).
pub const ENDPOINTS: [&str; 7] = [
    "manifest",
    "blob",
    "tags",
    "referrers",
    "catalog",
    "version",
    "other",
];

/// Repository names remembered for "most pulled": past this many, new names
/// are not counted (memory stays bounded whatever clients ask for).
const MAX_PULLED_NAMES: usize = 10_000;

/// Outcomes whose bytes the upstream did not have to send for this request.
const SAVED: [&str; 4] = ["hit", "confirmed", "stale", "follow"];

/// Requests and bytes sent since the server started.
#[derive(Debug)]
pub struct Counters {
    requests: [[AtomicU64; OUTCOMES.len()]; ENDPOINTS.len()],
    bytes: [AtomicU64; OUTCOMES.len()],
    ttfb: [Histogram; OUTCOMES.len()],
    pulls: RwLock<HashMap<Box<str>, AtomicU64>>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            requests: Default::default(),
            bytes: Default::default(),
            ttfb: std::array::from_fn(|_| Histogram::new(TTFB_BOUNDS)),
            pulls: RwLock::default(),
        }
    }
}

/// One finished request as the access log saw it.
#[derive(Clone, Copy, Debug)]
pub struct Answered<'a> {
    /// The request path (`/v2/...`).
    pub path: &'a str,
    pub is_get: bool,
    pub status: u16,
    /// The cache outcome (`registry::Outcome::as_str`), if there was one.
    pub outcome: Option<&'a str>,
    /// Body bytes sent.
    pub bytes: u64,
    /// Whether the body ended with an error (not a client hanging up).
    pub broken: bool,
    /// From the request's arrival to its response head.
    pub first_byte: Duration,
}

impl Counters {
    /// Counts one finished request.
    pub fn record(&self, answer: &Answered<'_>) {
        let outcome = if answer.status >= 400 || answer.broken {
            ERROR
        } else {
            answer
                .outcome
                .and_then(|o| OUTCOMES.iter().position(|name| *name == o))
                .unwrap_or(NONE)
        };
        let endpoint = endpoint_kind(answer.path);
        self.requests[endpoint][outcome].fetch_add(1, Ordering::Relaxed);
        self.bytes[outcome].fetch_add(answer.bytes, Ordering::Relaxed);
        self.ttfb[outcome].observe(answer.first_byte);
        if ENDPOINTS[endpoint] == "manifest" && answer.is_get && outcome < ERROR {
            if let Some(name) = manifest_repo(answer.path) {
                self.count_pull(&name);
            }
        }
    }

    fn count_pull(&self, name: &str) {
        {
            let pulls = self.pulls.read().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = pulls.get(name) {
                count.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if pulls.len() >= MAX_PULLED_NAMES {
                return;
            }
        }
        let mut pulls = self.pulls.write().unwrap_or_else(|e| e.into_inner());
        pulls
            .entry(name.into())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Requests and bytes by outcome, summed over endpoints (what
    /// `server-stats.json` holds for `regcache stats`).
    pub fn snapshot(&self) -> BTreeMap<String, OutcomeCount> {
        OUTCOMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let count = OutcomeCount {
                    requests: self.requests.iter().map(|e| load(&e[i])).sum(),
                    bytes: load(&self.bytes[i]),
                };
                ((*name).to_owned(), count)
            })
            .collect()
    }

    /// Requests by (endpoint, outcome), every pair, zeros included.
    pub fn requests(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut all = Vec::with_capacity(ENDPOINTS.len() * OUTCOMES.len());
        for (e, endpoint) in ENDPOINTS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                all.push((*endpoint, *outcome, load(&self.requests[e][o])));
            }
        }
        all
    }

    /// Time to first byte by outcome.
    pub fn first_byte(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        OUTCOMES
            .iter()
            .zip(self.ttfb.iter())
            .map(|(name, h)| (*name, h.snapshot()))
            .collect()
    }

    /// The `n` repository names with the most manifest pulls, most first.
    pub fn most_pulled(&self, n: usize) -> Vec<(String, u64)> {
        let pulls = self.pulls.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<(String, u64)> = pulls
            .iter()
            .map(|(name, count)| (name.to_string(), load(count)))
            .collect();
        drop(pulls);
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

/// Where the bytes of each outcome came from: `cache` (hit, confirmed,
/// revalidated, stale), `fill` (miss, follow: fetched from the upstream into
/// the cache while served), `pass` (relayed uncached), `none` (errors and the
/// version check).
pub fn source_of(outcome: &str) -> &'static str {
    match outcome {
        "hit" | "confirmed" | "stale" => "cache",
        "miss" | "follow" => "fill",
        "pass" => "pass",
        _ => "none",
    }
}

/// Bytes the upstream did not send for these answers: cache answers, and
/// followers of a fill (the upstream sent those bytes once, for the miss).
pub fn bytes_saved(outcomes: &BTreeMap<String, OutcomeCount>) -> u64 {
    SAVED
        .iter()
        .filter_map(|o| outcomes.get(*o))
        .map(|c| c.bytes)
        .sum()
}

/// Hits over answered pulls: cache answers (and followers) over every request
/// with a cache decision. `None` before the first.
pub fn hit_ratio(outcomes: &BTreeMap<String, OutcomeCount>) -> Option<f64> {
    let get = |name: &str| outcomes.get(name).map_or(0, |c| c.requests);
    let saved: u64 = SAVED.iter().map(|o| get(o)).sum();
    let decided = saved + get("miss") + get("pass");
    (decided > 0).then(|| saved as f64 / decided as f64)
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// The endpoint kind of a `/v2/` path, from its last two segments (a
/// repository name may hold `blobs` or `manifests` as a component, a reference
/// never holds a `/`).
fn endpoint_kind(path: &str) -> usize {
    let path = path.split('?').next().unwrap_or_default();
    let Some(rest) = path.strip_prefix("/v2") else {
        return ENDPOINTS.len() - 1;
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return 5;
    }
    if rest == "/_catalog" {
        return 4;
    }
    let mut segments = rest.rsplit('/');
    let (_last, before) = (segments.next(), segments.next());
    match before {
        Some("manifests") => 0,
        Some("blobs") => 1,
        Some("tags") => 2,
        Some("referrers") => 3,
        _ => ENDPOINTS.len() - 1,
    }
}

/// The repository name in `/v2/<name>/manifests/<reference>`, percent-decoded
/// as the router decoded it (a successful answer means it was a valid name).
fn manifest_repo(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    let path = path.split('?').next()?;
    let rest = path.strip_prefix("/v2/")?;
    let (name, _reference) = rest.rsplit_once("/manifests/")?;
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .ok()?;
    (!name.is_empty()).then_some(name)
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

    fn answer<'a>(
        path: &'a str,
        status: u16,
        outcome: Option<&'a str>,
        bytes: u64,
    ) -> Answered<'a> {
        Answered {
            path,
            is_get: true,
            status,
            outcome,
            bytes,
            broken: false,
            first_byte: Duration::from_millis(1),
        }
    }

    #[test]
    fn counts_by_outcome_with_errors_and_unknown_as_none() {
        let counters = Counters::default();
        counters.record(&answer("/v2/a/blobs/sha256:1", 200, Some("hit"), 10));
        counters.record(&answer("/v2/a/blobs/sha256:1", 206, Some("hit"), 5));
        counters.record(&answer("/v2/a/manifests/v1", 200, Some("miss"), 100));
        counters.record(&answer("/v2/", 200, None, 2));
        counters.record(&answer("/v2/a/blobs/x", 200, Some("something new"), 1));
        counters.record(&answer("/v2/a/manifests/v2", 404, None, 7));
        let broken = Answered {
            broken: true,
            ..answer("/v2/a/blobs/sha256:2", 200, Some("miss"), 3)
        };
        counters.record(&broken);
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
        assert_eq!(
            get("error"),
            OutcomeCount {
                requests: 2,
                bytes: 10
            }
        );
        assert_eq!(get("stale"), OutcomeCount::default());
        let requests = counters.requests();
        let count = |e: &str, o: &str| {
            requests
                .iter()
                .find(|(en, on, _)| *en == e && *on == o)
                .unwrap()
                .2
        };
        assert_eq!(count("blob", "hit"), 2);
        assert_eq!(count("manifest", "miss"), 1);
        assert_eq!(count("version", "none"), 1);
        assert_eq!(count("manifest", "error"), 1);
        assert_eq!(counters.first_byte()[0].1.count, 2);
    }

    #[test]
    fn endpoint_kinds_come_from_the_last_segments() {
        let kind = |p: &str| ENDPOINTS[endpoint_kind(p)];
        assert_eq!(kind("/v2/"), "version");
        assert_eq!(kind("/v2"), "version");
        assert_eq!(kind("/v2/_catalog?n=1"), "catalog");
        assert_eq!(kind("/v2/blobs/manifests/blobs"), "manifest");
        assert_eq!(kind("/v2/manifests/blobs/sha256:1"), "blob");
        assert_eq!(kind("/v2/a/b/tags/list?n=2"), "tags");
        assert_eq!(kind("/v2/a/referrers/sha256:1"), "referrers");
        assert_eq!(kind("/v2/a"), "other");
        assert_eq!(kind("/metrics"), "other");
    }

    #[test]
    fn manifest_gets_count_as_pulls_of_their_repository() {
        let counters = Counters::default();
        for path in [
            "/v2/lib/a/manifests/v1",
            "/v2/lib/%61/manifests/v2?ns=docker.io",
            "/v2/b/manifests/v1",
        ] {
            counters.record(&answer(path, 200, Some("hit"), 1));
        }
        counters.record(&answer("/v2/b/blobs/sha256:1", 200, Some("hit"), 1));
        counters.record(&answer("/v2/c/manifests/v1", 404, None, 1));
        let head = Answered {
            is_get: false,
            ..answer("/v2/d/manifests/v1", 200, Some("hit"), 0)
        };
        counters.record(&head);
        assert_eq!(
            counters.most_pulled(5),
            vec![("lib/a".to_owned(), 2), ("b".to_owned(), 1)]
        );
    }

    #[test]
    fn saved_bytes_and_hit_ratio() {
        let counters = Counters::default();
        counters.record(&answer("/v2/a/blobs/1", 200, Some("miss"), 100));
        counters.record(&answer("/v2/a/blobs/1", 200, Some("follow"), 100));
        counters.record(&answer("/v2/a/blobs/1", 200, Some("hit"), 100));
        counters.record(&answer("/v2/a/blobs/1", 200, Some("stale"), 10));
        let snap = counters.snapshot();
        assert_eq!(bytes_saved(&snap), 210);
        assert_eq!(hit_ratio(&snap), Some(0.75));
        assert_eq!(hit_ratio(&Counters::default().snapshot()), None);
    }
}
