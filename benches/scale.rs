//! How regcache behaves as its store grows: for each size given (blobs), it
//! builds a data directory of that many real blob files plus their manifests,
//! tags and repository links (`scale/data.rs`), then measures the real release
//! binary on it:
//!
//! - start-up until `/readyz` answers, the first time, after a clean stop
//!   (SIGTERM) and after `kill -9` (each start reconciles the index with the
//!   files), and the server's peak RSS (VmHWM) after start;
//! - hit latency p50/p99 of manifests by digest, by tag and of blobs picked at
//!   random over the whole set (one client in sequence, then a few at once),
//!   and the peak RSS after them;
//! - one eviction pass of the running server (`regcache gc --to` 97 % of the
//!   bytes, through the admin socket) and the peak RSS after it;
//! - `regcache ls`, `ls --json`, `stats`, `verify` (server stopped): wall time
//!   and peak RSS (`/usr/bin/time`).
//!
//! It prints a block per size and then one table with each figure's ratio to
//! the first size. It asserts only that every answer was right (a 200 with the
//! digest's bytes); the figures are read by people (BENCHMARKS.md, "Scale").
//!
//! ```sh
//! cargo bench --bench scale                          # 1 000 and 100 000 blobs
//! cargo bench --bench scale -- 1000 100000 1000000   # the BENCHMARKS.md table
//! cargo bench --bench scale -- --requests 500 1000   # fewer requests per kind
//! # iterating on the eviction pass at a million blobs:
//! cargo bench --bench scale -- --keep /var/tmp/scale --evict-only 1000000
//! cargo bench --bench scale -- --keep /var/tmp/scale --evict-only \
//!     --regcache /path/to/other/regcache 1000000     # another build, same data
//! ```
//!
//! The data directory goes under `$TMPDIR` (about 4.5 GiB per million blobs:
//! one 4 KiB block per file, plus the index) and is deleted at the end of each
//! size. After the build (or the copy) it runs `sync`, untimed, so that the
//! writeback of gigabytes of new files does not run beside the measurements.
//!
//! Options for iterating, none of which changes what a figure means:
//!
//! - `--keep DIR`: the store of each size is built once into `DIR/<blobs>`
//!   and kept; every run measures a fresh copy of it (`cp -a` into
//!   `$TMPDIR`, deleted at the end as usual), so nothing measured ever runs on
//!   a store a previous run changed. The "build" figure is then the copy's
//!   time. The files of a copy are laid out in `cp`'s order rather than in
//!   the order the build wrote them; the rows are the same.
//! - `--evict-only`: start (first, after a clean stop), hits, the eviction
//!   pass, then a clean stop; no start after `kill -9`, no operator commands.
//! - `--regcache PATH`: measure that binary instead of the one cargo built
//!   with the bench (a release build of another commit: before/after pairs
//!   from the same machine, the same data and the same bench code).

#[path = "scale/data.rs"]
mod data;
#[path = "scale/hits.rs"]
mod hits;
#[path = "scale/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use server::Server;

/// Figures of one size, for the closing table.
#[derive(Debug, Default)]
struct Figures {
    blobs: usize,
    files: u64,
    build_s: f64,
    start_first_s: f64,
    start_clean_s: f64,
    start_killed_s: f64,
    rss_start: f64,
    rss_hits: f64,
    rss_evict: f64,
    rss_killed: f64,
    p50: [f64; 3],
    p99: [f64; 3],
    concurrent_p99: f64,
    evict_s: f64,
    evicted: String,
    commands: Vec<(String, f64, f64)>,
    /// The store was copied from `--keep`, not built: `build_s` is the copy.
    copied: bool,
}

struct Args {
    sizes: Vec<usize>,
    requests: usize,
    clients: usize,
    keep: Option<PathBuf>,
    evict_only: bool,
}

fn args() -> Args {
    let mut args = Args {
        sizes: Vec::new(),
        requests: 2000,
        clients: 4,
        keep: None,
        evict_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--requests" => args.requests = number(it.next()),
            "--clients" => args.clients = number(it.next()),
            "--keep" => args.keep = Some(it.next().expect("--keep DIR").into()),
            "--evict-only" => args.evict_only = true,
            "--regcache" => server::use_binary(it.next().expect("--regcache PATH").into()),
            // `cargo bench` passes `--bench` to every bench program.
            a if a.starts_with('-') => {}
            a => args.sizes.push(number(Some(a.to_owned()))),
        }
    }
    if args.sizes.is_empty() {
        args.sizes = vec![1000, 100_000];
    }
    args
}

fn number(arg: Option<String>) -> usize {
    arg.and_then(|a| a.parse().ok())
        .expect("sizes and --requests/--clients are whole numbers")
}

fn main() {
    let args = args();
    println!("CPU: {} ({} cores)", cpu_model(), cores());
    println!("binary: {}", server::binary().display());
    let mut all = Vec::new();
    for &blobs in &args.sizes {
        all.push(measure(blobs, &args));
    }
    print_table(&all);
}

/// Writes back what the build or the copy left dirty (gigabytes at a million
/// blobs) before anything is timed: otherwise the writeback runs beside the
/// start-ups and the hits, and their tails measure the disk's queue.
fn settle_writeback() {
    let started = Instant::now();
    let status = Command::new("sync").status().expect("run sync");
    assert!(status.success(), "sync: {status}");
    println!(
        "sync (not timed)                 {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn measure(blobs: usize, args: &Args) -> Figures {
    let root = tempfile::Builder::new()
        .prefix("regcache-scale-")
        .tempdir()
        .expect("temp dir");
    let data = root.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (built, build_s, copied) = match &args.keep {
        None => {
            println!("\n== {blobs} blobs: building in {}", data.display());
            let started = Instant::now();
            let built = runtime.block_on(data::build(&data, blobs));
            (built, started.elapsed().as_secs_f64(), false)
        }
        Some(keep) => {
            let kept = kept_store(&runtime, keep, blobs);
            println!(
                "\n== {blobs} blobs: copying {} to {}",
                kept.display(),
                data.display()
            );
            let started = Instant::now();
            let status = Command::new("cp")
                .arg("-a")
                .arg(&kept)
                .arg(&data)
                .status()
                .expect("run cp");
            assert!(status.success(), "cp -a {}: {status}", kept.display());
            let took = started.elapsed().as_secs_f64();
            (runtime.block_on(data::describe(blobs)), took, true)
        }
    };
    settle_writeback();
    let mut f = Figures {
        blobs,
        files: built.files,
        build_s,
        copied,
        ..Figures::default()
    };
    println!(
        "{} {} files ({} images, {} MiB) in {:.1} s",
        if copied { "copied" } else { "built" },
        built.files,
        built.images.len(),
        built.bytes >> 20,
        f.build_s
    );

    let port = server::free_port();
    let config = server::write_config(root.path(), &data, port);
    let log = root.path().join("regcache.log");
    let (first, took) = Server::start(&config, port, &log);
    f.start_first_s = took.as_secs_f64();
    first.stop();

    let (server, took) = Server::start(&config, port, &log);
    f.start_clean_s = took.as_secs_f64();
    f.rss_start = server.peak_rss_mib();
    let result = runtime.block_on(hits::run(
        &server.url(),
        &built.images,
        args.requests,
        args.clients,
    ));
    for (i, (_, latencies)) in result.sequential.iter().enumerate() {
        f.p50[i] = latencies.quantile_ms(0.5);
        f.p99[i] = latencies.quantile_ms(0.99);
    }
    f.concurrent_p99 = result.concurrent.quantile_ms(0.99);
    println!(
        "hits: {} sequential per kind, then {} clients × {} ({} requests)",
        result.sequential[0].1.len(),
        result.clients,
        args.requests,
        result.concurrent.len()
    );
    f.rss_hits = server.peak_rss_mib();

    let target = built.bytes / 100 * 97;
    let (took, _, report) = run_command(&config, &["gc", "--to", &target.to_string()]);
    f.evict_s = took.as_secs_f64();
    f.evicted = report
        .lines()
        .rev()
        .find(|l| l.starts_with("usage"))
        .unwrap_or("?")
        .to_owned();
    f.rss_evict = server.peak_rss_mib();
    // The server's own account of the pass (its phases, when it logs them).
    if let Some(line) = std::fs::read_to_string(&log).ok().and_then(|l| {
        l.lines()
            .rev()
            .find(|l| l.contains("evicted least recently used content"))
            .map(str::to_owned)
    }) {
        println!("server: {line}");
    }
    if args.evict_only {
        server.stop();
        print_size(&f);
        println!("deleting {}", root.path().display());
        drop(root);
        return f;
    }
    server.kill_9();

    let (server, took) = Server::start(&config, port, &log);
    f.start_killed_s = took.as_secs_f64();
    f.rss_killed = server.peak_rss_mib();
    server.stop();

    for command in [&["ls"][..], &["ls", "--json"], &["stats"], &["verify"]] {
        let (took, rss, _) = run_command(&config, command);
        f.commands
            .push((command.join(" "), took.as_secs_f64(), rss));
    }
    print_size(&f);
    // A million files take minutes to delete: the figures are out first.
    println!("deleting {}", root.path().display());
    drop(root);
    f
}

/// The kept store of `blobs` blobs under `keep` (its `data` directory),
/// built there first unless a previous run completed it.
fn kept_store(runtime: &tokio::runtime::Runtime, keep: &Path, blobs: usize) -> PathBuf {
    let dir = keep.join(blobs.to_string());
    let data = dir.join("data");
    let complete = dir.join("complete");
    if !complete.exists() {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove an incomplete kept store");
        }
        std::fs::create_dir_all(&dir).expect("kept store directory");
        println!(
            "\n== {blobs} blobs: building the kept store {}",
            data.display()
        );
        let started = Instant::now();
        runtime.block_on(data::build(&data, blobs));
        println!("built in {:.1} s", started.elapsed().as_secs_f64());
        std::fs::write(&complete, b"").expect("mark the kept store complete");
    }
    data
}

/// Runs `regcache <args> --config <config>` under `/usr/bin/time`: wall time,
/// peak RSS in MiB, and its standard output.
fn run_command(config: &Path, args: &[&str]) -> (Duration, f64, String) {
    let rss_file = tempfile::NamedTempFile::new().expect("temp file");
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(rss_file.path())
        .arg(server::binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run regcache under /usr/bin/time");
    let took = started.elapsed();
    assert!(
        output.status.success(),
        "regcache {args:?}: {}",
        output.status
    );
    let kib: f64 = std::fs::read_to_string(rss_file.path())
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
        .expect("peak RSS from /usr/bin/time");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (took, kib / 1024.0, stdout)
}

fn print_size(f: &Figures) {
    println!("-- {} blobs ({} files with manifests)", f.blobs, f.files);
    let build = if f.copied { "copy (--keep)" } else { "build" };
    println!("{build:<30}{:>9.1} s", f.build_s);
    println!("start, first                  {:>9.2} s", f.start_first_s);
    println!(
        "start, after a clean stop     {:>9.2} s   peak RSS {:.0} MiB",
        f.start_clean_s, f.rss_start
    );
    if f.start_killed_s > 0.0 {
        println!(
            "start, after kill -9          {:>9.2} s   peak RSS {:.0} MiB",
            f.start_killed_s, f.rss_killed
        );
    }
    for (i, kind) in hits::KINDS.iter().enumerate() {
        println!(
            "hit {:<26}p50 {:>6.3} ms   p99 {:>6.3} ms",
            format!("{kind:?}"),
            f.p50[i],
            f.p99[i]
        );
    }
    println!(
        "hit, concurrent clients       p99 {:>6.3} ms   peak RSS after hits {:.0} MiB",
        f.concurrent_p99, f.rss_hits
    );
    println!(
        "eviction pass (gc, server)    {:>9.2} s   peak RSS {:.0} MiB   {}",
        f.evict_s, f.rss_evict, f.evicted
    );
    for (command, took, rss) in &f.commands {
        println!("regcache {command:<20} {took:>9.2} s   peak RSS {rss:.0} MiB");
    }
}

/// One line per figure, one column per size, and the ratio of the last size
/// to the first.
fn print_table(all: &[Figures]) {
    if all.is_empty() {
        return;
    }
    let mut rows: Vec<(String, Vec<f64>)> = vec![
        (
            if all.iter().any(|f| f.copied) {
                "build or copy (s)".into()
            } else {
                "build (s)".into()
            },
            all.iter().map(|f| f.build_s).collect(),
        ),
        (
            "start, first (s)".into(),
            all.iter().map(|f| f.start_first_s).collect(),
        ),
        (
            "start, clean stop (s)".into(),
            all.iter().map(|f| f.start_clean_s).collect(),
        ),
        (
            "start, kill -9 (s)".into(),
            all.iter().map(|f| f.start_killed_s).collect(),
        ),
        (
            "RSS after start (MiB)".into(),
            all.iter().map(|f| f.rss_start).collect(),
        ),
        (
            "RSS after hits (MiB)".into(),
            all.iter().map(|f| f.rss_hits).collect(),
        ),
        (
            "RSS after eviction (MiB)".into(),
            all.iter().map(|f| f.rss_evict).collect(),
        ),
    ];
    for (i, kind) in hits::KINDS.iter().enumerate() {
        rows.push((
            format!("{kind:?} p50 (ms)"),
            all.iter().map(|f| f.p50[i]).collect(),
        ));
        rows.push((
            format!("{kind:?} p99 (ms)"),
            all.iter().map(|f| f.p99[i]).collect(),
        ));
    }
    rows.push((
        "concurrent p99 (ms)".into(),
        all.iter().map(|f| f.concurrent_p99).collect(),
    ));
    rows.push((
        "eviction pass (s)".into(),
        all.iter().map(|f| f.evict_s).collect(),
    ));
    for (c, (command, _, _)) in all[0].commands.iter().enumerate() {
        rows.push((
            format!("{command} (s)"),
            all.iter().map(|f| f.commands[c].1).collect(),
        ));
        rows.push((
            format!("{command} RSS (MiB)"),
            all.iter().map(|f| f.commands[c].2).collect(),
        ));
    }
    println!("\n== scale: one column per size; ratio = last / first");
    print!("| {:<26} |", "blobs");
    for f in all {
        print!(" {:>10} |", f.blobs);
    }
    println!(" ratio |");
    print!("|{}|", "-".repeat(28));
    for _ in all {
        print!("{}|", "-".repeat(12));
    }
    println!("-------|");
    // Figures a run skipped (`--evict-only`) are zero everywhere.
    for (name, values) in rows
        .into_iter()
        .filter(|(_, v)| v.iter().any(|&x| x != 0.0))
    {
        print!("| {name:<26} |");
        for v in &values {
            print!(" {:>10} |", short(*v));
        }
        let ratio = values[values.len() - 1] / values[0];
        println!(" {ratio:>5.1} |");
    }
}

/// Three significant figures, enough for a table read by people.
fn short(v: f64) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v if v >= 1.0 => format!("{v:.2}"),
        v => format!("{v:.3}"),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
