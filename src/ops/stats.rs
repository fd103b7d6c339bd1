//! `regcache stats`: usage against the budget, counts of content, manifests,
//! blobs, repositories and tags, pinned bytes, and the request counters of the
//! server running on the data directory (from `server-stats.json`, only while its
//! pid is alive). The budget is the running server's (what it was started
//! with, flags included) while it runs, else the configuration this command
//! was given; the output says which. Read-only. `--json` prints the same
//! numbers as one object.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use super::format::{Table, human_size};
use super::server_stats::{self, BudgetInfo, OutcomeCount, ServerState};
use crate::config::Config;
use crate::index::{Access, Index, Summary};

/// Everything `stats` reports.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// Sum of the sizes of all committed content.
    pub usage_bytes: u64,
    /// `None`: no budget configured (unlimited).
    pub budget_bytes: Option<u64>,
    /// The budget with its watermarks, and where it comes from.
    pub budget: BudgetInfo,
    pub budget_source: BudgetSource,
    pub content: u64,
    pub manifests: u64,
    pub manifest_bytes: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub repositories: u64,
    pub tags: u64,
    /// Content linked to no repository (adopted after a crash).
    pub unlinked: u64,
    /// `None`: pins are not known to this build.
    pub pinned_bytes: Option<u64>,
    /// How many pins there are, configured (`storage.pins`) and runtime (the index).
    pub pins: PinCounts,
    /// `None`: no server is running on the data directory.
    pub server: Option<ServerInfo>,
}

/// How many pins cover the pinned bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PinCounts {
    pub configured: usize,
    pub runtime: usize,
}

/// Where `stats` took the budget from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetSource {
    /// The running server's `server-stats.json`: what it was started with.
    Server,
    /// The configuration given to `stats` (no server running, or one too old
    /// to say).
    Config,
}

/// The running server's counters since it started.
#[derive(Debug, Serialize)]
pub struct ServerInfo {
    pub pid: u32,
    pub started_at: u64,
    pub updated_at: u64,
    pub outcomes: BTreeMap<String, OutcomeCount>,
    /// Per upstream, every `host:port` reached since the server started.
    pub upstream_hosts: BTreeMap<String, Vec<String>>,
    /// Per upstream, its circuit when the server last wrote its statistics.
    pub upstream_health: BTreeMap<String, crate::upstream::HealthReport>,
    /// What the scrub re-hashed and removed since the server started.
    pub scrub: Option<server_stats::ScrubTotals>,
}

/// Bytes of committed content the configured and the runtime pins cover.
pub async fn pinned_bytes(config: &Config, index: &Index) -> anyhow::Result<Option<u64>> {
    let store = super::attach_store(&config.data_dir)?;
    let pins = config.eviction.pins.with_runtime(index).await?;
    Ok(Some(
        crate::evict::pinned_bytes(index, &store, &pins).await?,
    ))
}

/// Gathers the statistics of `config.data_dir`.
pub async fn gather(config: &Config) -> anyhow::Result<Stats> {
    let data_dir = &config.data_dir;
    let index = super::open_index(data_dir, Access::ReadOnly)?;
    let summary: Summary = index.summary().await?;
    let pinned_bytes = pinned_bytes(config, &index).await?;
    let pins = PinCounts {
        configured: config.eviction.pins.iter().count(),
        runtime: index.pins().await?.len(),
    };
    let running = match server_stats::read(data_dir)? {
        ServerState::Running(s) => Some(s),
        ServerState::NotRunning => None,
    };
    let (budget, budget_source) = match running.as_ref().and_then(|s| s.budget) {
        Some(budget) => (budget, BudgetSource::Server),
        None => (config.eviction.budget.into(), BudgetSource::Config),
    };
    let server = running.map(|s| ServerInfo {
        pid: s.pid,
        started_at: s.started_at,
        updated_at: s.updated_at,
        outcomes: s.outcomes,
        upstream_hosts: s.upstream_hosts,
        upstream_health: s.upstream_health,
        scrub: s.scrub,
    });
    Ok(Stats {
        usage_bytes: summary.content_bytes,
        budget_bytes: Some(budget.max_size),
        budget,
        budget_source,
        content: summary.content,
        manifests: summary.manifests,
        manifest_bytes: summary.manifest_bytes,
        blobs: summary.blobs(),
        blob_bytes: summary.blob_bytes(),
        repositories: summary.repositories,
        tags: summary.tags,
        unlinked: summary.unlinked,
        pinned_bytes,
        pins,
        server,
    })
}

/// Prints the statistics of `config.data_dir` to `out`.
pub async fn run(config: &Config, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let stats = gather(config).await?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &stats)?;
        out.write_all(b"\n")?;
    } else {
        write_text(&stats, out)?;
    }
    out.flush()?;
    Ok(())
}

fn write_text(s: &Stats, out: &mut dyn Write) -> std::io::Result<()> {
    let usage = match s.budget_bytes {
        Some(budget) if budget > 0 => format!(
            "{} of {} ({:.1}%)",
            human_size(s.usage_bytes),
            human_size(budget),
            s.usage_bytes as f64 * 100.0 / budget as f64
        ),
        _ => format!("{} (budget: unlimited)", human_size(s.usage_bytes)),
    };
    let mut table = Table::new(&[("STORE", false), ("", false)]);
    let rows = [
        ("usage", usage),
        ("content", s.content.to_string()),
        (
            "manifests",
            format!("{} ({})", s.manifests, human_size(s.manifest_bytes)),
        ),
        (
            "blobs",
            format!("{} ({})", s.blobs, human_size(s.blob_bytes)),
        ),
        ("repositories", s.repositories.to_string()),
        ("tags", s.tags.to_string()),
        ("unlinked content", s.unlinked.to_string()),
        (
            "pinned",
            format!(
                "{} ({} configured, {} runtime pins; regcache pin ls)",
                s.pinned_bytes
                    .map_or_else(|| "unknown".to_owned(), human_size),
                s.pins.configured,
                s.pins.runtime,
            ),
        ),
    ];
    for (key, value) in rows {
        table.push(vec![key.to_owned(), value]);
    }
    table.write(out)?;
    out.write_all(b"\n")?;
    write_budget_source(s, out)?;
    let Some(server) = &s.server else {
        return out.write_all(b"server: not running (no request counters)\n");
    };
    writeln!(
        out,
        "server: running, pid {}, up {}s; requests since its start:",
        server.pid,
        unix_now().saturating_sub(server.started_at)
    )?;
    let mut table = Table::new(&[("OUTCOME", false), ("REQUESTS", true), ("BYTES", true)]);
    for (name, count) in &server.outcomes {
        table.push(vec![
            name.clone(),
            count.requests.to_string(),
            human_size(count.bytes),
        ]);
    }
    table.write(out)?;
    out.write_all(
        b"\nhosts reached since its start (the egress allowlist; see regcache doctor):\n",
    )?;
    for (upstream, hosts) in &server.upstream_hosts {
        let hosts = if hosts.is_empty() {
            "-".to_owned()
        } else {
            hosts.join(" ")
        };
        writeln!(out, "  {upstream}: {hosts}")?;
    }
    if let Some(scrub) = &server.scrub {
        writeln!(
            out,
            "\nscrub since its start: {} passes, {} files ({}) re-hashed, {} corrupt removed",
            scrub.passes,
            scrub.files,
            human_size(scrub.bytes),
            scrub.removed
        )?;
    }
    write_health(server, out)
}

/// Each upstream's circuit: closed, or open (until when, after what).
fn write_health(server: &ServerInfo, out: &mut dyn Write) -> std::io::Result<()> {
    out.write_all(b"\nupstream circuits:\n")?;
    for (upstream, health) in &server.upstream_health {
        write!(
            out,
            "  {upstream}: {}, {} consecutive failures, opened {} times",
            health.circuit, health.consecutive_failures, health.opened
        )?;
        if let Some(until) = health.open_until {
            write!(out, ", open for {}s more", until.saturating_sub(unix_now()))?;
        }
        match &health.last_failure {
            Some(failure) => writeln!(out, "; last failure: {failure}")?,
            None => writeln!(out)?,
        }
    }
    write_rate_limits(server, out)
}

/// Each upstream's pull quota: what it stated, the GETs spent, any pause.
fn write_rate_limits(server: &ServerInfo, out: &mut dyn Write) -> std::io::Result<()> {
    out.write_all(
        b"
upstream rate limits (manifest GETs):
",
    )?;
    for (upstream, health) in &server.upstream_health {
        let Some(quota) = &health.rate_limit else {
            continue;
        };
        let known = |n: Option<u64>| n.map_or("-".to_owned(), |n| n.to_string());
        write!(
            out,
            "  {upstream}: limit {}, remaining {}, window {}s, reserve {}, GETs spent {}, paused {} times",
            known(quota.limit),
            known(quota.remaining),
            known(quota.window_seconds),
            quota.reserve,
            quota.gets_spent,
            quota.pauses,
        )?;
        match (quota.paused_until, &quota.paused_because) {
            (Some(until), why) => writeln!(
                out,
                "; paused for {}s more, until {until} (unix; {})",
                until.saturating_sub(unix_now()),
                why.as_deref().unwrap_or("-")
            )?,
            _ => writeln!(out)?,
        }
    }
    Ok(())
}

/// The budget's watermarks and where the numbers come from.
fn write_budget_source(s: &Stats, out: &mut dyn Write) -> std::io::Result<()> {
    let b = &s.budget;
    write!(
        out,
        "budget {}: evict past {} ({:.0}%) down to {} ({:.0}%); ",
        human_size(b.max_size),
        human_size(b.high_bytes),
        b.high_watermark * 100.0,
        human_size(b.low_bytes),
        b.low_watermark * 100.0,
    )?;
    match (s.budget_source, &s.server) {
        (BudgetSource::Server, Some(server)) => {
            writeln!(out, "from the running server, pid {}", server.pid)?
        }
        _ => writeln!(out, "from the files, with the configuration given")?,
    }
    writeln!(out, "usage and counts: from the index\n")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
