//! The soak: regcache under hours-long mixed pulls by many clients, with a
//! disk budget far below the content (eviction all the time), short tag TTLs
//! (revalidation all the time), a frequent scrub, and an upstream that
//! misbehaves at random (hangs, dropped connections, cut and stalled bodies,
//! flipped bytes, 5xx, 429 with `Retry-After`, HTML pages as manifests). It
//! reports errors (what a correct mirror must never do; 0 expected), expected
//! failures of misses meeting a fault (by kind), and every 10 s regcache's
//! resident memory, descriptors, CPU and bytes on disk against `max_size`.
//!
//! ```sh
//! cargo bench --bench soak                     # a 2-minute try
//! cargo bench --bench soak -- --minutes 60     # the soak
//! cargo bench --bench soak -- --help
//! ```
//!
//! It starts its own peers on 127.0.0.1: Debian's `docker-registry` as the
//! origin (the images pushed to it once), the fault proxy in front of it
//! (in-process, `soak/faults.rs`) and the regcache binary built with this
//! bench (the bench profile). Everything it starts is stopped when its guard
//! drops, also on a panic. The table goes to stdout and to
//! `target/soak-<time>.txt`, regcache's log (warnings) to `target/soak-<time>.log`.
//! It exits nonzero when there was an error, regcache died or logged a panic,
//! or the bytes on disk passed `max_size`.

#[path = "soak/clients.rs"]
mod clients;
#[path = "soak/content.rs"]
mod content;
#[path = "soak/faults.rs"]
mod faults;
#[allow(dead_code)]
#[path = "peers/image.rs"]
mod image;
#[allow(dead_code)]
#[path = "peers/procs.rs"]
mod procs;
#[allow(dead_code)]
#[path = "peers/pull.rs"]
mod pull;
#[allow(dead_code)]
#[path = "peers/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "peers/tls.rs"]
mod tls;
#[path = "soak/watch.rs"]
mod watch;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use clients::Pullers;
use content::Content;
use faults::FaultProxy;
use report::fmt;

const MIB: f64 = 1048576.0;

/// Command-line options (after `cargo bench --bench soak --`).
#[derive(Debug, Parser)]
#[command(about = "regcache under mixed pulls, eviction pressure and upstream faults")]
struct Args {
    /// How long the clients pull.
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// Concurrent pullers (each with its own connections).
    #[arg(long, default_value_t = 24)]
    clients: usize,
    /// Repositories pushed to the origin.
    #[arg(long, default_value_t = 40)]
    repos: usize,
    /// Tags per repository.
    #[arg(long, default_value_t = 3)]
    tags: usize,
    /// regcache's `max_size`, MiB (the content is several times larger).
    #[arg(long, default_value_t = 256)]
    max_size_mib: u64,
    /// Fraction of the requests reaching the origin that get a fault.
    #[arg(long, default_value_t = 0.02)]
    fault_rate: f64,
    /// Cap on the body bytes all clients read together, MiB/s (0: none).
    #[arg(long, default_value_t = 64.0)]
    mibps: f64,
    /// Longest pause of a client between two pulls, ms.
    #[arg(long, default_value_t = 300)]
    think_ms: u64,
    /// An answer slower than this to start, or a body stalled this long, is a hang (s).
    #[arg(long, default_value_t = 60)]
    bound_secs: u64,
    /// regcache's `tag_ttl`.
    #[arg(long, default_value = "15s")]
    tag_ttl: String,
    /// regcache's `idle_timeout` (also how long a hanging upstream is waited for).
    #[arg(long, default_value = "5s")]
    idle_timeout: String,
    /// regcache's `scrub_interval`.
    #[arg(long, default_value = "2m")]
    scrub_interval: String,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One row of the table (every 10 s).
#[derive(Debug, Clone, Copy)]
struct Row {
    seconds: f64,
    requests: u64,
    bytes: u64,
    errors: u64,
    expected: u64,
    rss: u64,
    fds: usize,
    disk_now: u64,
    /// Largest bytes on disk seen (sampled every second) since the last row.
    disk_max: u64,
    cpu: f64,
    upstream: u64,
    faults: u64,
    metrics: watch::Metrics,
}

const HEADER: [&str; 13] = [
    "t s",
    "requests",
    "MiB read",
    "errors",
    "expected failures",
    "RSS MiB",
    "fds",
    "disk MiB",
    "disk max MiB",
    "CPU s",
    "upstream requests",
    "faults",
    "evicted MiB",
];

impl Row {
    fn cells(&self) -> Vec<String> {
        vec![
            format!("{:.0}", self.seconds),
            self.requests.to_string(),
            format!("{:.0}", self.bytes as f64 / MIB),
            self.errors.to_string(),
            self.expected.to_string(),
            fmt(self.rss as f64 / MIB),
            self.fds.to_string(),
            fmt(self.disk_now as f64 / MIB),
            fmt(self.disk_max as f64 / MIB),
            fmt(self.cpu),
            self.upstream.to_string(),
            self.faults.to_string(),
            format!("{:.0}", self.metrics.evicted_bytes / MIB),
        ]
    }
}

/// Output that goes to stdout and to the report file.
struct Out {
    file: std::fs::File,
    path: PathBuf,
}

impl Out {
    fn line(&mut self, line: &str) {
        println!("{line}");
        let _ = writeln!(self.file, "{line}");
    }
    fn row(&mut self, cells: &[String]) {
        self.line(&format!("| {} |", cells.join(" | ")));
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let verdict = soak(&args, &runtime);
    runtime.shutdown_timeout(Duration::from_secs(5));
    verdict
}

fn stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn soak(args: &Args, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let started = Instant::now();
    let stamp = stamp();
    let target = target_dir();
    let report_path = target.join(format!("soak-{stamp}.txt"));
    let log_path = target.join(format!("soak-{stamp}.log"));
    let mut out = Out {
        file: std::fs::File::create(&report_path).expect("report file"),
        path: report_path,
    };
    let root = tempfile::tempdir().expect("temp dir");
    eprintln!("soak: working in {}", root.path().display());

    let content = Arc::new(Content::generate(args.repos, args.tags));
    let origin = procs::docker_registry(&root.path().join("origin"), None);
    runtime.block_on(content.push(&pull::client(), &origin.url()));
    eprintln!(
        "soak: pushed {} images, {:.0} MiB of distinct content ({:.0?})",
        content.images.len(),
        content.total_bytes as f64 / MIB,
        started.elapsed()
    );
    let proxy = FaultProxy::start(&origin.url(), args.fault_rate);
    let data = root.path().join("regcache");
    let config = write_config(args, &data, &proxy.url());
    let (mut regcache, lines) = procs::regcache_configured(
        Path::new(env!("CARGO_BIN_EXE_regcache")),
        &config,
        "warn,regcache::app=info",
    );
    let panics = keep_log(lines, &log_path);
    let base = regcache.url();

    header(&mut out, args, &content);
    let pullers = Arc::new(Pullers::new(
        base,
        data.clone(),
        Arc::clone(&content),
        args.mibps,
        Duration::from_secs(args.bound_secs),
        Duration::from_millis(args.think_ms),
    ));
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| runtime.spawn(Arc::clone(&pullers).run(pull::client())))
        .collect();

    let run_for = Duration::from_secs_f64(args.minutes * 60.0);
    let watched = runtime.block_on(watch_loop(
        &mut out,
        &mut regcache,
        &pullers,
        &proxy,
        &data,
        run_for,
    ));
    pullers.stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        // Pulls finish their current request; a client stuck in a hang is cut off.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for task in &tasks {
            task.abort();
        }
    });
    let died = regcache.exited();
    let rows = watched.rows;
    let verdict = summary(
        &mut out,
        args,
        &content,
        &pullers,
        &proxy,
        &rows,
        Ending {
            died,
            panics: panics.load(Ordering::Relaxed),
            disk_max: watched.disk_max,
            pid_cpu: rows.last().map_or(0.0, |r| r.cpu),
            bench_cpu: watch::cpu_seconds(std::process::id()).unwrap_or(0.0),
            origin_cpu: watch::cpu_seconds(origin.pid()).unwrap_or(0.0),
            log: &log_path,
        },
    );
    drop(regcache);
    drop(proxy);
    drop(origin);
    out.line(&format!(
        "\ntable: {}\nregcache log: {}\nwhole run: {:.0?}",
        out.path.display(),
        log_path.display(),
        started.elapsed()
    ));
    verdict
}

/// regcache's config: the budget, TTL, timeouts and scrub of the soak, the
/// fault proxy as the one upstream.
fn write_config(args: &Args, data: &Path, upstream: &str) -> PathBuf {
    let text = format!(
        r#"# Written by benches/soak.rs.
[storage]
data_dir = "{data}"
max_size = "{max}MiB"
evict_interval = "5s"
scrub_interval = "{scrub}"
scrub_rate = "20MiB"

[[upstream]]
name = "soak.test"
url = "{upstream}"
default = true
tag_ttl = "{ttl}"
connect_timeout = "2s"
idle_timeout = "{idle}"
revalidate_timeout = "2s"
# Loopback only, whatever HTTP_PROXY says.
proxy = "none"
"#,
        data = data.display(),
        max = args.max_size_mib,
        scrub = args.scrub_interval,
        ttl = args.tag_ttl,
        idle = args.idle_timeout,
    );
    let path = data.with_extension("toml");
    std::fs::write(&path, text).expect("write regcache config");
    path
}

/// Writes regcache's output lines to `path` from a thread; counts panics.
fn keep_log(lines: std::sync::mpsc::Receiver<String>, path: &Path) -> Arc<AtomicU64> {
    let panics = Arc::new(AtomicU64::new(0));
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("log file"));
    let counted = Arc::clone(&panics);
    std::thread::spawn(move || {
        for line in lines {
            if line.contains("panicked at") {
                counted.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: regcache panicked: {line}");
            }
            let _ = writeln!(file, "{line}");
            let _ = file.flush();
        }
    });
    panics
}

fn header(out: &mut Out, args: &Args, content: &Content) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    out.line("## regcache soak\n");
    out.line(&format!("machine: {cores} cores, {cpu}"));
    out.line(&format!(
        "{} minutes, {} clients (≤ {} MiB/s together), {} images in {} repositories, {:.0} MiB of content, max_size {} MiB, fault rate {}, tag_ttl {}, idle_timeout {}, scrub_interval {}\n",
        args.minutes,
        args.clients,
        args.mibps,
        content.images.len(),
        content.repos,
        content.total_bytes as f64 / MIB,
        args.max_size_mib,
        args.fault_rate,
        args.tag_ttl,
        args.idle_timeout,
        args.scrub_interval
    ));
    out.row(&HEADER.map(String::from));
    out.row(&vec!["---".to_owned(); HEADER.len()]);
}

struct Watched {
    rows: Vec<Row>,
    disk_max: u64,
}

/// Every second: bytes on disk, whether regcache still runs; every 10 s a row.
async fn watch_loop(
    out: &mut Out,
    regcache: &mut procs::Proc,
    pullers: &Pullers,
    proxy: &FaultProxy,
    data: &Path,
    run_for: Duration,
) -> Watched {
    let http = pull::client();
    let base = regcache.url();
    let pid = regcache.pid();
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut disk_max = 0;
    let mut since_row = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut second = 0u64;
    loop {
        tick.tick().await;
        let disk = watch::disk_bytes(data);
        disk_max = disk_max.max(disk);
        since_row = since_row.max(disk);
        if let Some(status) = regcache.exited() {
            out.line(&format!("\nregcache exited: {status}"));
            break;
        }
        let done = started.elapsed() >= run_for;
        if second % 10 == 0 || done {
            let tally = &pullers.tally;
            let row = Row {
                seconds: started.elapsed().as_secs_f64(),
                requests: tally.requests.load(Ordering::Relaxed),
                bytes: tally.bytes.load(Ordering::Relaxed),
                errors: tally.errors.load(Ordering::Relaxed),
                expected: tally.expected.load(Ordering::Relaxed),
                rss: watch::rss(pid).unwrap_or(0),
                fds: watch::fds(pid).unwrap_or(0),
                disk_now: disk,
                disk_max: since_row,
                cpu: watch::cpu_seconds(pid).unwrap_or(0.0),
                upstream: proxy.requests(),
                faults: proxy.counts().iter().sum(),
                metrics: watch::metrics(&http, &base).await.unwrap_or_default(),
            };
            out.row(&row.cells());
            rows.push(row);
            since_row = 0;
        }
        if done {
            break;
        }
        second += 1;
    }
    Watched { rows, disk_max }
}

struct Ending<'a> {
    died: Option<std::process::ExitStatus>,
    panics: u64,
    disk_max: u64,
    pid_cpu: f64,
    /// This process: the clients (hashing every body) and the fault proxy.
    bench_cpu: f64,
    origin_cpu: f64,
    log: &'a Path,
}

fn summary(
    out: &mut Out,
    args: &Args,
    content: &Content,
    pullers: &Pullers,
    proxy: &FaultProxy,
    rows: &[Row],
    end: Ending<'_>,
) -> ExitCode {
    let tally = &pullers.tally;
    let seconds = rows.last().map_or(0.0, |r| r.seconds).max(1.0);
    let requests = tally.requests.load(Ordering::Relaxed);
    let bytes = tally.bytes.load(Ordering::Relaxed) as f64;
    let errors = tally.errors.load(Ordering::Relaxed);
    out.line("\n### Summary\n");
    out.row(&["what".into(), "measured".into()]);
    out.row(&["---".into(), "---".into()]);
    let mut row = |what: &str, measured: String| out.row(&[what.to_owned(), measured]);
    row(
        "requests",
        format!("{requests} ({:.0}/s)", requests as f64 / seconds),
    );
    row(
        "bytes read and checked",
        format!(
            "{:.0} MiB ({:.1} MiB/s)",
            bytes / MIB,
            bytes / MIB / seconds
        ),
    );
    row("errors (0 expected)", errors.to_string());
    row(
        "requests for content known to be cached",
        tally.known_cached.load(Ordering::Relaxed).to_string(),
    );
    row(
        "requests sent again: a kept-alive connection closed before answering",
        tally.resent.load(Ordering::Relaxed).to_string(),
    );
    row(
        "expected failures (misses meeting a fault)",
        tally.expected.load(Ordering::Relaxed).to_string(),
    );
    let faults = proxy.counts();
    row(
        "upstream requests / faults injected",
        format!(
            "{} / {} ({})",
            proxy.requests(),
            faults.iter().sum::<u64>(),
            faults::KINDS
                .iter()
                .zip(faults)
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let rss: Vec<f64> = rows.iter().map(|r| r.rss as f64 / MIB).collect();
    let first = rss.first().copied().unwrap_or(0.0);
    let last = rss.last().copied().unwrap_or(0.0);
    let min = rss.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rss.iter().copied().fold(0.0, f64::max);
    // The slope after the first quarter (caches and pools fill up at first).
    let settled: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.seconds >= seconds / 4.0)
        .map(|r| (r.seconds / 3600.0, r.rss as f64 / MIB))
        .collect();
    row(
        "regcache RSS MiB: first / min / max / last",
        format!(
            "{} / {} / {} / {}",
            fmt(first),
            fmt(min),
            fmt(max),
            fmt(last)
        ),
    );
    row(
        "RSS slope after the first quarter",
        watch::slope(&settled).map_or("–".into(), |s| format!("{} MiB/h", fmt(s))),
    );
    let fds: Vec<usize> = rows.iter().map(|r| r.fds).collect();
    row(
        "open fds: first / max / last",
        format!(
            "{} / {} / {}",
            fds.first().unwrap_or(&0),
            fds.iter().max().unwrap_or(&0),
            fds.last().unwrap_or(&0)
        ),
    );
    let budget = args.max_size_mib << 20;
    let accounted = rows
        .iter()
        .map(|r| r.metrics.accounted_bytes)
        .fold(0.0, f64::max);
    row(
        "bytes on disk (blobs/ + tmp/, every 1 s): max / max_size",
        format!(
            "{} / {} MiB ({:.1} %)",
            fmt(end.disk_max as f64 / MIB),
            args.max_size_mib,
            end.disk_max as f64 * 100.0 / budget as f64
        ),
    );
    row(
        "regcache's committed + reserved (every 10 s): max",
        format!("{} MiB", fmt(accounted / MIB)),
    );
    let last_metrics = rows.last().map(|r| r.metrics).unwrap_or_default();
    row(
        "evicted",
        format!(
            "{:.0} MiB ({:.1}× max_size; content {:.1}× max_size)",
            last_metrics.evicted_bytes / MIB,
            last_metrics.evicted_bytes / budget as f64,
            content.total_bytes as f64 / budget as f64
        ),
    );
    row(
        "upstream circuit openings",
        format!("{:.0}", last_metrics.circuit_opened),
    );
    row(
        "regcache CPU",
        format!(
            "{} s ({:.0} % of one core)",
            fmt(end.pid_cpu),
            end.pid_cpu * 100.0 / seconds
        ),
    );
    row(
        "bench CPU (clients, fault proxy; seeding included) / origin CPU",
        format!("{} s / {} s", fmt(end.bench_cpu), fmt(end.origin_cpu)),
    );
    row("panics in regcache's log", end.panics.to_string());
    row(
        "regcache",
        end.died
            .map_or("running at the end".into(), |s| format!("DIED: {s}")),
    );
    out.line("\nrequests by kind:\n");
    for (kind, n) in clients::REQUEST_KINDS.iter().zip(&tally.by_kind) {
        out.line(&format!("- {kind}: {}", n.load(Ordering::Relaxed)));
    }
    let expected = tally.expected_by_kind.lock().unwrap().clone();
    if !expected.is_empty() {
        out.line("\nexpected failures by kind (count, first example):\n");
        for (kind, (n, example)) in &expected {
            out.line(&format!("- {kind}: {n} — {example}"));
        }
    }
    let lines = tally.error_lines.lock().unwrap().clone();
    if !lines.is_empty() {
        out.line(&format!("\nerrors (first {}):\n", lines.len()));
        for line in &lines {
            out.line(&format!("- {line}"));
        }
    }
    let over_budget = end.disk_max > budget;
    let failed = errors > 0 || end.died.is_some() || end.panics > 0 || over_budget;
    out.line(&format!(
        "\nverdict: {}{}",
        if failed { "FAIL" } else { "PASS" },
        if end.died.is_some() || end.panics > 0 {
            format!(" (see {})", end.log.display())
        } else {
            String::new()
        }
    ));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
