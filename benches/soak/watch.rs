//! What the soak watches of the regcache process and its data directory:
//! resident memory and open descriptors (`/proc/<pid>/`), CPU seconds, bytes
//! on disk under `blobs/` and `tmp/`, and a few counters from its `/metrics`
//! (evicted bytes, circuit openings, committed and reserved bytes).

use std::path::Path;

/// Linux's USER_HZ: `/proc/<pid>/stat` counts CPU time in 1/100 s.
const TICKS_PER_S: f64 = 100.0;

/// `VmRSS` of `pid`, in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Open file descriptors of `pid`.
pub fn fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// User + system CPU seconds of `pid`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_S)
}

/// Bytes of the files under `data`'s `blobs/` and `tmp/` (what `max_size` bounds).
pub fn disk_bytes(data: &Path) -> u64 {
    ["blobs", "tmp"]
        .iter()
        .map(|d| tree_bytes(&data.join(d)))
        .sum()
}

fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// The counters read from `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metrics {
    pub evicted_bytes: f64,
    pub circuit_opened: f64,
    /// Committed + reserved bytes, regcache's own view of its budget.
    pub accounted_bytes: f64,
}

pub async fn metrics(http: &reqwest::Client, base: &str) -> Option<Metrics> {
    let response = http
        .get(format!("{base}/metrics"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let text = response.text().await.ok()?;
    Some(Metrics {
        evicted_bytes: sum(&text, "regcache_evicted_bytes_total"),
        circuit_opened: sum(&text, "regcache_upstream_circuit_opened_total"),
        accounted_bytes: sum(&text, "regcache_cache_bytes")
            + sum(&text, "regcache_cache_reserved_bytes"),
    })
}

/// The sum of a metric's samples over all label sets.
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Least-squares slope of `(x, y)` points (y per unit of x).
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}
