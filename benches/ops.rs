//! Times `regcache ls` and `regcache stats` on an index of 100 000 blobs, the
//! scale the operator commands are meant for (aim: under a second each), and
//! then eviction passes (`evict::collect`, what `regcache gc` and the server's
//! evictor run) over that index, each evicting about 3 % of the bytes.
//!
//! ```sh
//! cargo bench --bench ops            # 100 000 blobs, 5 runs each
//! cargo bench --bench ops -- 20000 3 # blobs, runs
//! ```
//!
//! It builds the index through the index API (1 000 repositories of one tagged
//! manifest and 99 blobs each; fake content rows, no files: `ls` and `stats`
//! never read blobs), then runs the real binary with stdout to /dev/null and
//! prints the median wall time of each command. For the eviction passes every
//! row gets a real (empty) file under `blobs/`, so each pass unlinks what it
//! evicts. It prints; it asserts nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use regcache::evict::{Pins, collect};
use regcache::index::{ContentRow, Index};
use regcache::oci::{Digest, RepoName, Tag};
use regcache::store::Store;

const PER_REPO: usize = 100;

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.parse::<usize>().expect("numbers: blobs runs"));
    let blobs = args.next().unwrap_or(100_000);
    let runs = args.next().unwrap_or(5);

    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("blobs")).expect("data dir");
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(build_index(&data, blobs));
    println!(
        "built an index of {blobs} content rows in {:.1?}",
        started.elapsed()
    );

    for args in [
        &["ls"][..],
        &["ls", "--json"],
        &["stats"],
        &["stats", "--json"],
    ] {
        let median = median_run(&data, args, runs);
        println!(
            "regcache {:<12} median of {runs}: {:>7.1} ms",
            args.join(" "),
            median.as_secs_f64() * 1000.0
        );
    }
    runtime.block_on(time_eviction_passes(&data, runs));
}

/// Runs `runs` eviction passes, each down to 97 % of the bytes then committed,
/// and prints each pass and the median.
async fn time_eviction_passes(data: &Path, runs: usize) {
    let index = Index::open(&data.join("index.db")).expect("index");
    let store = Store::open(data).expect("store");
    let rows = index.all_content().await.expect("rows");
    for row in &rows {
        let path = store.blob_path(&row.digest);
        std::fs::create_dir_all(path.parent().unwrap()).expect("shard dir");
        std::fs::File::create(&path).expect("blob file");
    }
    let pins = Pins::default();
    let mut times = Vec::new();
    for _ in 0..runs {
        let before = index.all_content().await.expect("rows").len();
        let usage = index.content_bytes().await.expect("usage");
        let started = Instant::now();
        let report = collect(&index, &store, &pins, usage / 100 * 97)
            .await
            .expect("collect");
        let took = started.elapsed();
        println!(
            "eviction pass over {before} rows: evicted {} rows ({} bytes) in {:.1} ms",
            report.evicted.len(),
            report.freed_bytes,
            took.as_secs_f64() * 1000.0
        );
        times.push(took);
    }
    times.sort();
    println!(
        "eviction pass median of {runs}: {:.1} ms",
        times[times.len() / 2].as_secs_f64() * 1000.0
    );
}

async fn build_index(data: &Path, blobs: usize) {
    let index = Index::open(&data.join("index.db")).expect("index");
    let tag: Tag = "latest".parse().unwrap();
    for r in 0..blobs.div_ceil(PER_REPO) {
        let repo: RepoName = format!("team{}/app{r}", r % 10).parse().unwrap();
        let rows: Vec<ContentRow> = (0..PER_REPO.min(blobs - r * PER_REPO))
            .map(|i| ContentRow {
                digest: Digest::sha256_of(format!("{r}/{i}").as_bytes()),
                size: 1_000 + (r * PER_REPO + i) as u64 * 997 % 50_000_000,
                media_type: (i == 0).then(|| regcache::oci::media_type::OCI_MANIFEST.to_owned()),
            })
            .collect();
        let manifest = rows[0].digest.clone();
        index
            .insert_contents(rows, "registry.k8s.io", &repo)
            .await
            .expect("insert");
        index
            .set_tag("registry.k8s.io", &repo, &tag, &manifest, SystemTime::now())
            .await
            .expect("tag");
    }
}

fn median_run(data: &Path, args: &[&str], runs: usize) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let status = Command::new(env!("CARGO_BIN_EXE_regcache"))
                .args(args)
                .arg("--data")
                .arg(data)
                .stdout(Stdio::null())
                .status()
                .expect("run regcache");
            assert!(status.success(), "regcache {args:?}: {status}");
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}
