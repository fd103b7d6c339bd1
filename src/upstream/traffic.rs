//! [`Traffic`]: requests an upstream answered, by status class, and the body
//! bytes read from it, for `/metrics` and the status page. Counted per hop
//! (a redirect and its target are two requests) with relaxed atomics; it never
//! changes a request.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Status classes as labels; `error` is a hop that got no answer (refused,
/// timed out, TLS failure).
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// One upstream's traffic since start.
#[derive(Debug, Default)]
pub struct Traffic {
    requests: [AtomicU64; STATUS_CLASSES.len()],
    received_bytes: AtomicU64,
}

/// [`Traffic`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrafficSnapshot {
    /// (status class, requests), every class.
    pub requests: Vec<(&'static str, u64)>,
    pub received_bytes: u64,
}

impl Traffic {
    /// One hop answered with `status`, or none (`None`).
    pub(crate) fn hop(&self, status: Option<u16>) {
        let class = match status {
            Some(s @ 100..=599) => usize::from(s / 100 - 1),
            _ => STATUS_CLASSES.len() - 1,
        };
        self.requests[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Body bytes read from an answer.
    pub(crate) fn received(&self, bytes: usize) {
        self.received_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> TrafficSnapshot {
        TrafficSnapshot {
            requests: STATUS_CLASSES
                .iter()
                .zip(self.requests.iter())
                .map(|(class, n)| (*class, n.load(Ordering::Relaxed)))
                .collect(),
            received_bytes: self.received_bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_by_status_class() {
        let traffic = Traffic::default();
        for status in [Some(200), Some(206), Some(307), Some(404), Some(503), None] {
            traffic.hop(status);
        }
        traffic.received(5);
        let snap = traffic.snapshot();
        assert_eq!(
            snap.requests,
            vec![
                ("1xx", 0),
                ("2xx", 2),
                ("3xx", 1),
                ("4xx", 1),
                ("5xx", 1),
                ("error", 1)
            ]
        );
        assert_eq!(snap.received_bytes, 5);
    }
}
