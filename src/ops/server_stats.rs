//! The running server's request counters on disk, for `regcache stats`: the
//! server writes its [`Counters`] with its pid, start time and effective disk
//! budget (flags and environment included) to `<data>/server-stats.json` when it
//! starts listening, every few seconds if they changed, and at shutdown, atomically (temp file + rename, so a reader never
//! sees half a file). `stats` shows them only while that pid is alive; counters
//! start at zero with every server start. No fsync: the numbers are ephemeral.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crate::counters::{Counters, OutcomeCount};
use crate::evict::Budget;
use crate::upstream::HealthReport;

/// The file name under the data directory.
pub const FILE_NAME: &str = "server-stats.json";

/// The contents of `server-stats.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    pub pid: u32,
    /// Unix seconds.
    pub started_at: u64,
    pub updated_at: u64,
    pub outcomes: BTreeMap<String, OutcomeCount>,
    /// Per upstream, every `host:port` its requests reached (redirect
    /// targets follow the server's egress address, so this is what a
    /// firewall must allow). Absent in files of older servers.
    #[serde(default)]
    pub upstream_hosts: BTreeMap<String, Vec<String>>,
    /// The budget the server runs with; `None` in a file an older build wrote.
    #[serde(default)]
    pub budget: Option<BudgetInfo>,
    /// Per upstream, its circuit (closed, open until when, the last failure).
    /// Absent in files of older servers.
    #[serde(default)]
    pub upstream_health: BTreeMap<String, HealthReport>,
    /// What the scrub has re-hashed and removed; absent in older files.
    #[serde(default)]
    pub scrub: Option<ScrubTotals>,
}

/// A disk budget as numbers: `max_size` and its watermarks, as fractions and
/// in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetInfo {
    pub max_size: u64,
    pub high_watermark: f64,
    pub low_watermark: f64,
    pub high_bytes: u64,
    pub low_bytes: u64,
}

impl From<Budget> for BudgetInfo {
    fn from(budget: Budget) -> Self {
        Self {
            max_size: budget.max_size(),
            high_watermark: budget.high_watermark(),
            low_watermark: budget.low_watermark(),
            high_bytes: budget.high(),
            low_bytes: budget.low(),
        }
    }
}

pub use crate::registry::ScrubTotals;

/// Where the scrub's totals come from (the registry).
pub type ScrubSource = Arc<dyn Fn() -> ScrubTotals + Send + Sync>;

/// Where the hosts each upstream reached come from (the registry).
pub type HostsSource = Arc<dyn Fn() -> BTreeMap<String, Vec<String>> + Send + Sync>;

/// Where each upstream's circuit comes from (the registry).
pub type HealthSource = Arc<dyn Fn() -> BTreeMap<String, HealthReport> + Send + Sync>;

/// Writes the counters of this process to `<data>/server-stats.json`.
#[derive(Clone)]
pub struct StatsWriter {
    path: PathBuf,
    temp: PathBuf,
    pid: u32,
    started_at: u64,
    budget: BudgetInfo,
    counters: Arc<Counters>,
    hosts: Option<HostsSource>,
    health: Option<HealthSource>,
    scrub: Option<ScrubSource>,
}

impl std::fmt::Debug for StatsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsWriter")
            .field("path", &self.path)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl StatsWriter {
    /// A writer for a server running within `budget`.
    pub fn new(data_dir: &Path, budget: Budget, counters: Arc<Counters>) -> Self {
        Self {
            path: data_dir.join(FILE_NAME),
            temp: data_dir.join(format!(".{FILE_NAME}.tmp")),
            pid: std::process::id(),
            started_at: unix_seconds(SystemTime::now()),
            budget: budget.into(),
            counters,
            hosts: None,
            health: None,
            scrub: None,
        }
    }

    /// Also writes the scrub's totals, read from `scrub`.
    pub fn with_scrub(mut self, scrub: ScrubSource) -> Self {
        self.scrub = Some(scrub);
        self
    }

    /// Also writes the hosts each upstream reached, read from `hosts`.
    pub fn with_hosts(mut self, hosts: HostsSource) -> Self {
        self.hosts = Some(hosts);
        self
    }

    /// Also writes each upstream's circuit, read from `health`.
    pub fn with_health(mut self, health: HealthSource) -> Self {
        self.health = Some(health);
        self
    }

    fn snapshot(&self) -> Snapshot {
        let hosts = self.hosts.as_ref().map(|h| h()).unwrap_or_default();
        let health = self.health.as_ref().map(|h| h()).unwrap_or_default();
        let scrub = self.scrub.as_ref().map(|s| s());
        (self.counters.snapshot(), hosts, health, scrub)
    }

    /// Writes the file now (temp file, then rename over the old one).
    pub async fn write(&self) -> std::io::Result<()> {
        self.write_snapshot(self.snapshot()).await
    }

    async fn write_snapshot(&self, snapshot: Snapshot) -> std::io::Result<()> {
        let (outcomes, upstream_hosts, upstream_health, scrub) = snapshot;
        let stats = ServerStats {
            pid: self.pid,
            started_at: self.started_at,
            updated_at: unix_seconds(SystemTime::now()),
            outcomes,
            upstream_hosts,
            budget: Some(self.budget),
            upstream_health,
            scrub,
        };
        let json = serde_json::to_vec_pretty(&stats).map_err(std::io::Error::other)?;
        tokio::fs::write(&self.temp, json).await?;
        tokio::fs::rename(&self.temp, &self.path).await
    }

    /// Every `every`, rewrites the file if the counters changed, until the task is
    /// dropped. A failed write is logged and retried next time: statistics never
    /// stop the server.
    pub async fn run(self, every: Duration) {
        let start = tokio::time::Instant::now() + every;
        let mut ticker = tokio::time::interval_at(start, every);
        let mut written = None;
        loop {
            ticker.tick().await;
            let snapshot = self.snapshot();
            if written.as_ref() == Some(&snapshot) {
                continue;
            }
            match self.write_snapshot(snapshot.clone()).await {
                Ok(()) => written = Some(snapshot),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot write server statistics");
                }
            }
        }
    }
}

/// What changes in the file: the counters, the hosts seen, the circuits,
/// the scrub's totals.
type Snapshot = (
    BTreeMap<String, OutcomeCount>,
    BTreeMap<String, Vec<String>>,
    BTreeMap<String, HealthReport>,
    Option<ScrubTotals>,
);

/// What `stats` knows about the server on a data directory.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerState {
    /// The file names a live process.
    Running(ServerStats),
    /// No file, or its pid is gone (a stopped or killed server).
    NotRunning,
}

/// Reads `<data>/server-stats.json` and checks its pid is alive (`/proc/<pid>`
/// exists; a recycled pid would show stale numbers until the next server start).
pub fn read(data_dir: &Path) -> anyhow::Result<ServerState> {
    let path = data_dir.join(FILE_NAME);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ServerState::NotRunning),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    };
    let stats: ServerStats = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a statistics file: {e}", path.display()))?;
    if Path::new(&format!("/proc/{}", stats.pid)).exists() {
        Ok(ServerState::Running(stats))
    } else {
        Ok(ServerState::NotRunning)
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_is_read_back_while_the_pid_lives_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), ServerState::NotRunning);

        let counters = Arc::new(Counters::default());
        counters.record(&crate::counters::Answered {
            path: "/v2/a/blobs/sha256:1",
            is_get: true,
            status: 200,
            outcome: Some("follow"),
            bytes: 7,
            broken: false,
            first_byte: Duration::from_millis(1),
        });
        let budget = Budget::new(80 << 20, 0.9, 0.8);
        let writer = StatsWriter::new(dir.path(), budget, Arc::clone(&counters));
        writer.write().await.unwrap();
        let ServerState::Running(stats) = read(dir.path()).unwrap() else {
            panic!("this process is alive");
        };
        assert_eq!(stats.pid, std::process::id());
        let written = stats.budget.expect("the budget is written");
        assert_eq!(written, BudgetInfo::from(budget));
        assert_eq!(written.max_size, 80 << 20);
        assert_eq!(written.high_bytes, budget.high());
        assert_eq!(stats.outcomes["follow"].requests, 1);

        // A pid that cannot exist (above the kernel's pid_max limit of 2^22).
        let dead = ServerStats {
            pid: 1 << 30,
            ..stats
        };
        std::fs::write(
            dir.path().join(FILE_NAME),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        assert_eq!(read(dir.path()).unwrap(), ServerState::NotRunning);
    }

    #[test]
    fn a_file_without_a_budget_still_reads() {
        let old = r#"{"pid": 1, "started_at": 2, "updated_at": 3, "outcomes": {}}"#;
        let stats: ServerStats = serde_json::from_str(old).unwrap();
        assert_eq!(stats.budget, None);
    }
}
