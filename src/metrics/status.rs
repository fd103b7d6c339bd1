//! [`Status`]: the status page's data (the HTML view and `?format=json` are
//! the same value): disk use against the budget, hit ratio and bytes saved
//! since start and over the last hour, requests per second, the largest and the
//! most pulled repositories, fills in progress, recent evictions, pins, and
//! each upstream's traffic, egress hosts, circuit and pull quota.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::history::{WINDOW, difference};
use super::{Observed, TOP, unix_now};
use crate::counters::{self, OutcomeCount};
use crate::evict::DiskUsage;
use crate::index::RepoUsage;
use crate::registry::FillProgress;
use crate::upstream::TrafficSnapshot;

/// How far back "requests per second" looks.
const RATE_SPAN: Duration = Duration::from_secs(60);

/// Everything the status page shows.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Unix seconds.
    pub generated_at: u64,
    pub started_at: u64,
    pub disk: DiskUsage,
    pub since_start: Window,
    /// Over the last hour, or since start if the server is younger.
    pub last_hour: Window,
    /// Requests per second over the last minute (since start if younger).
    pub requests_per_second: f64,
    pub largest_repositories: Vec<RepoUsage>,
    pub most_pulled: Vec<Pulled>,
    pub fills_in_progress: Vec<FillProgress>,
    pub upstreams: Vec<UpstreamStatus>,
}

/// Answers over a span of time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Window {
    pub seconds: u64,
    pub requests: u64,
    /// Cache answers (and fill followers) over requests with a cache decision.
    pub hit_ratio: Option<f64>,
    pub bytes_served: u64,
    /// Bytes served that the upstream did not have to send.
    pub bytes_saved: u64,
    pub outcomes: BTreeMap<String, OutcomeCount>,
}

/// A repository name and its manifest pulls since start (as clients named it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pulled {
    pub repository: String,
    pub pulls: u64,
}

/// One upstream as the status page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub traffic: TrafficSnapshot,
    pub hosts_seen: Vec<String>,
    /// Its circuit (closed, open until when, after what failure).
    pub health: crate::upstream::HealthReport,
    /// The pull quota it states (Docker Hub's `ratelimit-*` headers), the
    /// manifest GETs spent, any pause.
    pub rate_limit: Option<crate::upstream::RateLimitReport>,
}

impl Status {
    /// The status now.
    pub async fn gather(observed: &Observed) -> Result<Status, crate::registry::Error> {
        let activity = observed.activity().await?;
        let now = Instant::now();
        let generated_at = unix_now();
        let uptime = generated_at.saturating_sub(observed.started_at);
        let outcomes = observed.counters.snapshot();
        let since_start = window(uptime, outcomes.clone());
        let last_hour = match observed.history.since(now, WINDOW) {
            Some(then) => window(
                now.duration_since(then.at).as_secs(),
                difference(&outcomes, &then.outcomes),
            ),
            None => since_start.clone(),
        };
        let requests_per_second = match observed.history.since(now, RATE_SPAN) {
            Some(then) if now.duration_since(then.at) >= Duration::from_secs(1) => {
                let diff = difference(&outcomes, &then.outcomes);
                total_requests(&diff) as f64 / now.duration_since(then.at).as_secs_f64()
            }
            _ => since_start.requests as f64 / uptime.max(1) as f64,
        };
        let most_pulled = observed
            .counters
            .most_pulled(TOP)
            .into_iter()
            .map(|(repository, pulls)| Pulled { repository, pulls })
            .collect();
        let upstreams = activity
            .upstreams
            .into_iter()
            .map(|u| {
                let mut health = u.health;
                let rate_limit = health.rate_limit.take();
                UpstreamStatus {
                    name: u.name,
                    traffic: u.traffic,
                    hosts_seen: u.hosts_seen,
                    health,
                    rate_limit,
                }
            })
            .collect();
        Ok(Status {
            generated_at,
            started_at: observed.started_at,
            disk: activity.disk,
            since_start,
            last_hour,
            requests_per_second,
            largest_repositories: activity.largest_repositories,
            most_pulled,
            fills_in_progress: activity.fills.in_progress,
            upstreams,
        })
    }
}

fn window(seconds: u64, outcomes: BTreeMap<String, OutcomeCount>) -> Window {
    Window {
        seconds,
        requests: total_requests(&outcomes),
        hit_ratio: counters::hit_ratio(&outcomes),
        bytes_served: outcomes.values().map(|c| c.bytes).sum(),
        bytes_saved: counters::bytes_saved(&outcomes),
        outcomes,
    }
}

fn total_requests(outcomes: &BTreeMap<String, OutcomeCount>) -> u64 {
    outcomes.values().map(|c| c.requests).sum()
}
