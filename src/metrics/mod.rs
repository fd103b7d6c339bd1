//! What the server shows about itself: `/metrics` in the Prometheus text
//! format ([`exposition`]) and the status page's data ([`status`]), both read
//! from the same sources at the moment they are asked: the access log's
//! [`Counters`], the registry's [`Activity`] (fills, upstream traffic, disk
//! budget, evictions) and a short [`history`] of the counters for "last hour"
//! figures. `regcache stats` reads the same counters through
//! `ops::server_stats`.
//!
//! It only reads: gathering never changes a count and never sits on a
//! request's path (the request path only bumps atomics, see `counters`). Labels
//! are low-cardinality by construction (endpoint kind, outcome, upstream,
//! status class): never a repository name or a digest.

pub mod exposition;
pub mod histogram;
pub mod history;
pub mod status;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use history::History;

use crate::counters::Counters;
use crate::registry::{Activity, Registry};

/// Repositories listed as "largest" and "most pulled".
const TOP: usize = 10;

/// The sources `/metrics` and the status page read. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Observed {
    pub registry: Arc<Registry>,
    pub counters: Arc<Counters>,
    pub history: Arc<History>,
    /// Unix seconds.
    pub started_at: u64,
}

impl Observed {
    pub fn new(registry: Arc<Registry>, counters: Arc<Counters>, history: Arc<History>) -> Self {
        Self {
            registry,
            counters,
            history,
            started_at: unix_now(),
        }
    }

    /// The registry's activity now.
    pub async fn activity(&self) -> Result<Activity, crate::registry::Error> {
        self.registry.activity(TOP).await
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
