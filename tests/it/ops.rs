//! Operator commands (`regcache ls`, `stats`, `verify`, `gc`) run as the real
//! binary against data directories filled by real pulls through regcache from
//! the k8s-like fake, while `serve` runs on the same directory and after it
//! stopped; and crash safety: SIGKILL in the middle of concurrent cold fills
//! (with a budget small enough that evictions run meanwhile), then restart,
//! `verify`, index-vs-disk agreement and every image pulling again.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::support::fake::{FakeUpstream, Host};
use crate::support::regcache::Regcache;
use crate::support::{
    Image, blob_file, client, config_toml, get, pull, seed_image, tmp_files, wait_for,
};

const UPSTREAM: &str = "registry.k8s.io";

fn start(fake: &FakeUpstream, extra_args: &[&str]) -> Regcache {
    let mut builder = Regcache::builder().config_toml(config_toml(&fake.url(), "5m"));
    for arg in extra_args {
        builder = builder.arg(*arg);
    }
    builder.start()
}

/// GETs `url` to its end, ignoring every error (the server may be killed).
async fn try_get(url: String) {
    if let Ok(mut response) = client().get(url).send().await {
        while let Ok(Some(_)) = response.chunk().await {}
    }
}

/// Runs `regcache <args> --data <data_dir>`.
async fn regcache_cmd(data_dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(args)
        .arg("--data")
        .arg(data_dir)
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run regcache")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command that must succeed and returns its stdout.
async fn ok(data_dir: &Path, args: &[&str]) -> String {
    let output = regcache_cmd(data_dir, args).await;
    assert!(
        output.status.success(),
        "regcache {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

async fn json(data_dir: &Path, args: &[&str]) -> Value {
    let text = ok(data_dir, args).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}\n{text}"))
}

/// `ls --json` as (upstream, repository, tag, digest, size) tuples.
async fn listing(data_dir: &Path) -> Vec<(String, String, String, String, u64)> {
    let rows = json(data_dir, &["ls", "--json"]).await;
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let mut rows: Vec<_> = rows
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            (
                text(&r["upstream"]),
                text(&r["repository"]),
                text(&r["tag"]),
                text(&r["digest"]),
                r["size"].as_u64().expect("size"),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// What `ls` must list for a pulled image.
fn expected_rows(image: &Image) -> Vec<(String, String, String, String, u64)> {
    let row = |tag: &str, digest: &str, size: usize| {
        (
            UPSTREAM.to_owned(),
            image.repo.clone(),
            tag.to_owned(),
            digest.to_owned(),
            size as u64,
        )
    };
    vec![
        row(&image.tag, &image.manifest_digest, image.manifest.len()),
        row("-", &image.config.digest, image.config.bytes.len()),
        row("-", &image.layer().digest, image.layer().bytes.len()),
    ]
}

/// Every content row of the index (read with SQLite directly), digest → size.
fn index_rows(data_dir: &Path) -> BTreeMap<String, u64> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(data_dir.join("index.db"), flags).unwrap();
    let mut stmt = conn.prepare("SELECT digest, size FROM content").unwrap();
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Every file under `blobs/<alg>/<shard>/`, as digest → size.
fn blob_files(data_dir: &Path) -> BTreeMap<String, u64> {
    let mut files = BTreeMap::new();
    let Ok(algs) = std::fs::read_dir(data_dir.join("blobs")) else {
        return files;
    };
    for alg in algs {
        let alg = alg.unwrap().path();
        for shard in std::fs::read_dir(&alg).unwrap() {
            for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                let file = file.unwrap();
                let digest = format!(
                    "{}:{}",
                    alg.file_name().unwrap().to_string_lossy(),
                    file.file_name().to_string_lossy()
                );
                files.insert(digest, file.metadata().unwrap().len());
            }
        }
    }
    files
}

fn assert_index_matches_disk(data_dir: &Path) {
    let (rows, files) = (index_rows(data_dir), blob_files(data_dir));
    assert_eq!(
        rows, files,
        "index rows (left) vs files under blobs/ (right)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_and_stats_show_what_was_pulled_while_serving_and_after() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100_000);
    let mut regcache = start(&fake, &[]);
    pull(&regcache.url(), &image).await;
    let data = regcache.data_dir().to_path_buf();

    // While serving.
    let mut want = expected_rows(&image);
    want.sort();
    assert_eq!(listing(&data).await, want);
    let table = ok(&data, &["ls"]).await;
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("UPSTREAM"), "{table}");
    assert!(header.contains("LAST ACCESS"), "{table}");
    assert_eq!(lines.count(), 3, "{table}");
    for digest in [
        &image.manifest_digest,
        &image.config.digest,
        &image.layer().digest,
    ] {
        assert!(table.contains(digest.as_str()), "{table}");
    }
    assert!(table.contains("97.7 KiB"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains(&image.manifest_digest) && l.contains(" 3.9 ")),
        "{table}"
    );

    let total =
        (image.manifest.len() + image.config.bytes.len() + image.layer().bytes.len()) as u64;
    // The server writes its counters every 2 s: wait for the three misses.
    let mut stats = Value::Null;
    for _ in 0..100 {
        stats = json(&data, &["stats", "--json"]).await;
        if stats["server"]["outcomes"]["miss"]["requests"].as_u64() >= Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stats["usage_bytes"], total, "{stats:#}");
    assert_eq!(stats["content"], 3);
    assert_eq!(stats["manifests"], 1);
    assert_eq!(stats["blobs"], 2);
    assert_eq!(
        stats["blob_bytes"],
        (image.config.bytes.len() + image.layer().bytes.len()) as u64
    );
    assert_eq!(stats["repositories"], 1);
    assert_eq!(stats["tags"], 1);
    assert_eq!(stats["unlinked"], 0);
    assert_eq!(stats["pinned_bytes"], 0);
    assert!(stats["budget_bytes"].as_u64().is_some(), "{stats:#}");
    assert_eq!(stats["server"]["pid"], regcache.pid());
    assert_eq!(
        stats["server"]["outcomes"]["miss"]["requests"], 3,
        "{stats:#}"
    );

    // A hit is counted too, and the human-readable form shows both.
    get(&format!(
        "{}/v2/pause/blobs/{}",
        regcache.url(),
        image.layer().digest
    ))
    .await;
    let mut text = String::new();
    for _ in 0..100 {
        text = ok(&data, &["stats"]).await;
        if text
            .lines()
            .any(|l| l.starts_with("hit ") && l.contains(" 1 "))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(text.contains("server: running"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("hit ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("usage ")), "{text}");

    // After the server is gone (SIGKILL: its file stays, its pid is dead).
    regcache.stop();
    let stats = json(&data, &["stats", "--json"]).await;
    assert_eq!(stats["server"], Value::Null, "{stats:#}");
    assert_eq!(stats["content"], 3);
    assert!(ok(&data, &["stats"]).await.contains("server: not running"));
    assert_eq!(listing(&data).await, want);

    // --config FILE finds the data directory like `serve` does.
    let config = data.parent().unwrap().join("ops-config.toml");
    let text = config_toml(&fake.url(), "5m").replace(
        "data_dir = \"./unused\"",
        &format!("data_dir = {:?}", data.display().to_string()),
    );
    std::fs::write(&config, text).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["ls", "--json", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let rows: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_refuse_a_directory_without_an_index_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["ls"][..], &["stats"], &["verify"], &["gc"]] {
        let output = regcache_cmd(dir.path(), args).await;
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("no index"), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_removes_a_corrupt_blob_and_the_next_pull_refetches_it() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 200_000);
    let regcache = start(&fake, &[]);
    let base = regcache.url();
    pull(&base, &image).await;
    let data = regcache.data_dir().to_path_buf();

    let clean = ok(&data, &["verify"]).await;
    assert!(clean.contains("verified 3 files"), "{clean}");
    assert!(clean.contains("all good"), "{clean}");

    // Same size, different bytes: only re-hashing can tell.
    let path = blob_file(&data, &image.layer().digest);
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[1000..1010] {
        *b = !*b;
    }
    std::fs::write(&path, &bytes).unwrap();

    // While the server runs on the same directory.
    let output = regcache_cmd(&data, &["verify"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let report = stdout(&output);
    assert!(report.contains(&image.layer().digest), "{report}");
    assert!(report.contains("hashes to"), "{report}");
    assert!(!path.exists());
    let listed = listing(&data).await;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|r| r.3 != image.layer().digest));
    assert_index_matches_disk(&data);

    // A second run finds nothing; the next pull fetches the layer again.
    assert!(ok(&data, &["verify"]).await.contains("all good"));
    let gets = fake.hits_on(Host::Storage, Method::GET, &image.layer().digest);
    pull(&base, &image).await;
    assert_eq!(
        fake.hits_on(Host::Storage, Method::GET, &image.layer().digest),
        gets + 1
    );
    wait_for("the refetched layer to be committed", || path.exists()).await;
    assert_eq!(std::fs::read(&path).unwrap(), image.layer().bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_evicts_down_to_the_given_size_beside_a_running_server() {
    let fake = FakeUpstream::k8s_like();
    let images: Vec<Image> = (0..3)
        .map(|i| seed_image(&fake, &format!("app{i}"), "v1", 300_000))
        .collect();
    let regcache = start(&fake, &[]);
    for image in &images {
        pull(&regcache.url(), image).await;
    }
    let data = regcache.data_dir().to_path_buf();
    let before = json(&data, &["stats", "--json"]).await["usage_bytes"]
        .as_u64()
        .unwrap();

    let report = ok(&data, &["gc", "--to", "400KiB"]).await;
    assert!(report.contains("evicted"), "{report}");
    let after = json(&data, &["stats", "--json"]).await["usage_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        after <= 400 * 1024 && after < before,
        "{before} -> {after}\n{report}"
    );
    assert_index_matches_disk(&data);

    // Everything still pulls (evicted content is fetched again).
    for image in &images {
        pull(&regcache.url(), image).await;
    }
}

/// SIGKILL while several cold fills are in flight (one paused half-way, the others
/// throttled) under a budget small enough that evictions run meanwhile; after a
/// restart: no temp files, `verify` is clean, every index row has its file and
/// every file its row, and every image pulls again with the right bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_fills_and_evictions_then_restart_is_consistent() {
    const LAYER: usize = 3 * 1024 * 1024;
    let fake = FakeUpstream::k8s_like();
    let images: Vec<Image> = (0..8)
        .map(|i| seed_image(&fake, &format!("img{i}"), "v1", LAYER + i))
        .collect();
    // 20 MiB: six layers fit; the fills of the last five make room by evicting
    // the least recently used of the first three.
    let mut regcache = start(&fake, &["--max-size", "20MiB"]);
    for image in &images[..3] {
        pull(&regcache.url(), image).await;
    }

    let paused = images[3].layer().digest.clone();
    fake.pause_after(&paused, 1024 * 1024);
    fake.set_throttle(Some((64 * 1024, Duration::from_millis(4))));
    let base = regcache.url();
    let clients: Vec<_> = images[3..]
        .iter()
        .map(|image| {
            let (base, image) = (base.clone(), image.clone());
            tokio::spawn(async move {
                let repo = &image.repo;
                try_get(format!("{base}/v2/{repo}/manifests/v1")).await;
                try_get(format!("{base}/v2/{repo}/blobs/{}", image.config.digest)).await;
                try_get(format!("{base}/v2/{repo}/blobs/{}", image.layer().digest)).await;
            })
        })
        .collect();
    let data = regcache.data_dir().to_path_buf();
    wait_for("fills to be in flight", || !tmp_files(&data).is_empty()).await;
    // Kill at a different point of the throttled fills each run.
    let jitter = rand::random::<u64>() % 300;
    tokio::time::sleep(Duration::from_millis(jitter)).await;
    regcache.restart();
    for client in clients {
        client.await.unwrap();
    }

    assert!(tmp_files(&data).is_empty(), "{:?}", tmp_files(&data));
    let log = regcache.wait_for_log("store reconciled");
    let reconciled = log.lines().find(|l| l.contains("store reconciled"));
    eprintln!(
        "killed after {jitter} ms; {}",
        reconciled.unwrap_or_default()
    );
    let report = ok(&data, &["verify"]).await;
    assert!(report.contains("all good"), "{report}");
    assert_index_matches_disk(&data);
    let stats = json(&data, &["stats", "--json"]).await;
    assert!(
        stats["usage_bytes"].as_u64().unwrap() <= 20 * 1024 * 1024,
        "{stats:#}"
    );

    fake.set_throttle(None);
    fake.resume(&paused);
    for image in &images {
        pull(&regcache.url(), image).await;
    }
    assert!(ok(&data, &["verify"]).await.contains("all good"));
}

/// The start-up log says in words what reconciliation found and repaired, one
/// fact a line (no Rust debug structs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_log_says_what_reconciliation_repaired() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "v1", 1000);
    let mut regcache = start(&fake, &[]);
    pull(&regcache.url(), &image).await;
    let first = regcache.wait_for_log("store reconciled");
    assert!(
        first.contains("store reconciled: nothing to repair"),
        "{first}"
    );
    assert!(
        first.contains("index: 0 content rows checked against the files"),
        "{first}"
    );

    let data = regcache.data_dir().to_path_buf();
    regcache.stop();
    std::fs::remove_file(blob_file(&data, &image.layer().digest)).unwrap();
    regcache.restart();

    // The restarted process's log: its start-up lines come before "listening".
    let log = regcache.wait_for_log("store reconciled: 1 repair");
    let start_up: Vec<&str> = log
        .lines()
        .take_while(|l| !l.contains("listening"))
        .collect();
    for fact in [
        &format!("data directory: {}", data.display()),
        "index: 3 content rows checked against the files",
        "store: 2 files under blobs/ checked",
        "repaired: dropped 1 index row (file missing)",
        "store reconciled: 1 repair",
    ] {
        assert!(
            start_up.iter().any(|line| line.ends_with(fact)),
            "no line ending {fact:?} in:\n{}",
            start_up.join("\n")
        );
    }
    assert!(!log.contains("ReconcileReport"), "{log}");
}
