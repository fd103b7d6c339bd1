//! [`Activity`]: what the registry reports about itself for `/metrics` and the
//! status page: fills (herd joins, durations, those in progress), each
//! upstream's traffic and the hosts it reached, the disk budget and the
//! largest repositories. It gathers what its parts already count; it never
//! counts anything itself and is never on a request's path.

use serde::Serialize;

use super::fill::FillStats;
use super::{Error, Registry};
use crate::evict::{self, DiskUsage};
use crate::index::RepoUsage;
use crate::upstream::TrafficSnapshot;

/// The registry's side of the status page and `/metrics`, at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Activity {
    pub fills: FillStats,
    pub upstreams: Vec<UpstreamActivity>,
    pub disk: DiskUsage,
    /// Repositories with the most linked bytes, most first.
    pub largest_repositories: Vec<RepoUsage>,
}

/// One configured upstream's traffic since start.
#[derive(Clone, Debug, Serialize)]
pub struct UpstreamActivity {
    pub name: String,
    pub traffic: TrafficSnapshot,
    /// Every `host:port` its requests reached (redirect targets included).
    pub hosts_seen: Vec<String>,
    /// Its circuit and its pull quota (`rate_limit`).
    pub health: crate::upstream::HealthReport,
}

impl Registry {
    /// Gathers the registry's activity; `largest` repositories are listed.
    pub async fn activity(&self, largest: usize) -> Result<Activity, Error> {
        let disk = self.evictor().usage().await.map_err(|e| match e {
            evict::Error::Index(e) => Error::Index(e),
            evict::Error::Store(e) => Error::Store(e),
        })?;
        let largest_repositories = self.local.largest_repositories(largest).await?;
        let upstreams = self
            .routes
            .all()
            .iter()
            .map(|route| UpstreamActivity {
                name: route.name().to_owned(),
                traffic: route.client.traffic(),
                hosts_seen: route.client.hosts_seen(),
                health: route.client.health(),
            })
            .collect();
        Ok(Activity {
            fills: self.fills.stats(),
            upstreams,
            disk,
            largest_repositories,
        })
    }
}
