//! The disk budget through the real binary against the k8s-like fake: filling
//! past `max_size` evicts the least recently used image (never a pinned one) and
//! disk usage never exceeds the budget; a download in progress survives the
//! eviction of its file; a blob larger than the budget is streamed uncached;
//! hits record access times in memory, not with a SQLite write each.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.
//! Disk usage is the sum of file sizes under `<data>/blobs`.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::support::fake::{FakeUpstream, Host};
use crate::support::regcache::Regcache;
use crate::support::{Image, blob_file, client, get, pull, seed_image, sha256, tmp_files};

const MIB: u64 = 1024 * 1024;

/// A config with one default upstream at `url`, a budget of `max_size` and `pins`.
/// The interval is long: eviction here is driven by fills, not by a timer.
fn config(url: &str, max_size: &str, pins: &[&str]) -> String {
    let pins: Vec<String> = pins.iter().map(|p| format!("{p:?}")).collect();
    format!(
        r#"[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "./unused"
max_size = "{max_size}"
high_watermark = 0.95
low_watermark = 0.85
evict_interval = "1h"
pins = [{}]
[[upstream]]
name = "registry.k8s.io"
url = "{url}"
default = true
tag_ttl = "1h"
"#,
        pins.join(", ")
    )
}

/// Bytes of every file under `<data>/blobs`.
fn disk_usage(data_dir: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .map(|e| {
                let meta = e.metadata().expect("stat");
                if meta.is_dir() {
                    walk(&e.path())
                } else {
                    meta.len()
                }
            })
            .sum()
    }
    walk(&data_dir.join("blobs"))
}

/// Whether all three files of `image` are on disk (true) or none is (false).
fn cached(data_dir: &Path, image: &Image) -> bool {
    let present: Vec<bool> = [
        &image.manifest_digest,
        &image.config.digest,
        &image.layer().digest,
    ]
    .iter()
    .map(|d| blob_file(data_dir, d).exists())
    .collect();
    assert!(
        present.iter().all(|p| *p == present[0]),
        "{}:{} is half cached: {present:?}",
        image.repo,
        image.tag
    );
    present[0]
}

/// Access times are unix seconds: steps a second apart have a clear LRU order.
async fn next_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_past_the_budget_evicts_the_least_recently_used_image_but_never_a_pin() {
    let fake = FakeUpstream::k8s_like();
    let layer = 2 * MIB as usize;
    let pinned = seed_image(&fake, "pause", "3.9", layer);
    let apps: Vec<Image> = (0..5)
        .map(|i| seed_image(&fake, &format!("app{i}"), "v1", layer))
        .collect();
    let max_size = 10 * MIB;
    let regcache = Regcache::builder()
        .config_toml(config(&fake.url(), "10MiB", &["registry.k8s.io/pause:*"]))
        .start();
    let (base, data) = (regcache.url(), regcache.data_dir().to_path_buf());

    let mut table = vec![];
    let mut step = |what: String, data: &Path| {
        let usage = disk_usage(data);
        table.push(format!("{what:<24} {usage:>10} bytes"));
        assert!(usage <= max_size, "{what}: {usage} > {max_size}");
    };
    // The pinned image first: the oldest of all.
    pull(&base, &pinned).await;
    step("pull pause:3.9 (pinned)".into(), &data);
    for app in &apps[..3] {
        next_second().await;
        pull(&base, app).await;
        step(format!("pull {}", app.repo), &data);
    }
    // app0 is used again: app1 becomes the least recently used.
    next_second().await;
    pull(&base, &apps[0]).await;
    step("re-pull app0 (hits)".into(), &data);
    for app in &apps[3..] {
        next_second().await;
        pull(&base, app).await;
        step(format!("pull {}", app.repo), &data);
    }
    eprintln!("disk usage after each pull (max_size {max_size}):");
    for line in &table {
        eprintln!("  {line}");
    }

    assert!(cached(&data, &pinned), "the pinned image was evicted");
    let survivors: Vec<bool> = apps.iter().map(|a| cached(&data, a)).collect();
    assert_eq!(survivors, [true, false, false, true, true], "app0..app4");
    let log = regcache.log();
    assert!(log.contains("evicted least recently used content"), "{log}");

    // An evicted image comes back from the upstream: its tag went with it.
    let gets = |app: &Image| {
        fake.hits_on(
            Host::Front,
            Method::GET,
            &format!("/v2/{}/manifests/", app.repo),
        )
    };
    assert_eq!(gets(&apps[1]), 1);
    pull(&base, &apps[1]).await;
    assert_eq!(gets(&apps[1]), 2);
    assert_eq!(
        fake.hits_on(Host::Storage, Method::GET, &apps[1].layer().digest),
        2
    );
    assert!(cached(&data, &apps[1]));
    assert!(cached(&data, &pinned));
    assert!(disk_usage(&data) <= max_size);
    fake.assert_no_violations();
}

/// Whether process `pid` holds an open descriptor on a deleted file named `hex`.
fn holds_deleted_file(pid: u32, hex: &str) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| {
            let target = target.to_string_lossy();
            target.contains(hex) && target.ends_with("(deleted)")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_in_progress_survives_the_eviction_of_its_file() {
    let fake = FakeUpstream::k8s_like();
    // Large enough that socket buffers cannot hold the rest of the victim: the
    // server is still reading its file when it is evicted.
    let victim = seed_image(&fake, "victim", "v1", 24 * MIB as usize);
    let next = seed_image(&fake, "next", "v1", 24 * MIB as usize);
    let regcache = Regcache::builder()
        .config_toml(config(&fake.url(), "40MiB", &[]))
        .start();
    let (base, data) = (regcache.url(), regcache.data_dir().to_path_buf());
    pull(&base, &victim).await;
    let victim_file = blob_file(&data, &victim.layer().digest);
    assert!(victim_file.exists());

    // A slow client: it reads the first chunk of the cached layer, then stops.
    let url = format!("{base}/v2/victim/blobs/{}", victim.layer().digest);
    let mut response = client().get(&url).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response
        .chunk()
        .await
        .expect("first chunk")
        .expect("bytes")
        .to_vec();

    // 24 MiB + 24 MiB > 40 MiB: pulling `next` evicts the victim.
    next_second().await;
    pull(&base, &next).await;
    assert!(!victim_file.exists(), "the victim was not evicted");
    assert!(!cached(&data, &victim));
    let hex = victim.layer().digest.split_once(':').unwrap().1;
    assert!(
        holds_deleted_file(regcache.pid(), hex),
        "the download was not reading the evicted file anymore"
    );

    while let Some(chunk) = response.chunk().await.expect("rest of the body") {
        body.extend_from_slice(&chunk);
    }
    assert_eq!(body.len(), victim.layer().bytes.len());
    assert_eq!(sha256(&body), victim.layer().digest);
    assert!(disk_usage(&data) <= 40 * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_larger_than_the_budget_is_streamed_without_caching() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "huge", "v1", 6 * MIB as usize);
    // --max-size wins over the file's max_size.
    let regcache = Regcache::builder()
        .config_toml(config(&fake.url(), "1GiB", &[]))
        .arg("--max-size")
        .arg("4MiB")
        .start();
    let (base, data) = (regcache.url(), regcache.data_dir().to_path_buf());

    let url = format!("{base}/v2/huge/blobs/{}", image.layer().digest);
    // Two clients at once: one gets the fill's body, the other its own.
    let (a, b) = tokio::join!(get(&url), get(&url));
    for got in [&a, &b] {
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(
            got.header("content-length"),
            Some(image.layer().bytes.len().to_string().as_str())
        );
        assert_eq!(sha256(got.ok_body()), image.layer().digest);
    }
    regcache.wait_for_log("blob larger than the cache budget; streaming without caching");
    let ranged = crate::support::send(client().get(&url).header("range", "bytes=100-199")).await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.ok_body(), &image.layer().bytes.slice(100..200));

    assert!(!blob_file(&data, &image.layer().digest).exists());
    assert!(tmp_files(&data).is_empty(), "{:?}", tmp_files(&data));
    // Nothing cached: every request went upstream.
    assert_eq!(
        fake.hits_on(Host::Storage, Method::GET, &image.layer().digest),
        3
    );
    // The rest of the image is cached as usual, within the budget.
    pull(&base, &image).await;
    assert!(blob_file(&data, &image.config.digest).exists());
    assert!(blob_file(&data, &image.manifest_digest).exists());
    assert!(disk_usage(&data) <= 4 * MIB);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fills_reserve_their_size_and_never_overshoot_together() {
    let fake = FakeUpstream::k8s_like();
    let images: Vec<Image> = (0..4)
        .map(|i| seed_image(&fake, &format!("par{i}"), "v1", 3 * MIB as usize))
        .collect();
    let regcache = Regcache::builder()
        .config_toml(config(&fake.url(), "10MiB", &[]))
        .start();
    let (base, data) = (regcache.url(), regcache.data_dir().to_path_buf());
    // Every body stops after 1 MiB: all four fills are in flight at once.
    for image in &images {
        fake.pause_after(&image.layer().digest, MIB);
    }
    let downloads: Vec<_> = images
        .iter()
        .map(|image| {
            let url = format!("{base}/v2/{}/blobs/{}", image.repo, image.layer().digest);
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    crate::support::wait_for("four bodies in flight", || {
        images.iter().all(|i| fake.sent(&i.layer().digest) >= MIB)
    })
    .await;
    for image in &images {
        fake.resume(&image.layer().digest);
    }
    for (image, download) in images.iter().zip(downloads) {
        let got = download.await.expect("download task");
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.ok_body(), &image.layer().bytes);
    }
    // 3 × 3 MiB fit in 10 MiB; the fourth found no room (nothing to evict but
    // the other fills' reservations) and was streamed without caching.
    let cached = images
        .iter()
        .filter(|i| blob_file(&data, &i.layer().digest).exists())
        .count();
    assert_eq!(cached, 3);
    let usage = disk_usage(&data);
    eprintln!("four concurrent 3 MiB fills, 10 MiB budget: {usage} bytes on disk");
    assert!(usage <= 10 * MIB, "{usage}");
    regcache.wait_for_log("no room in the cache budget");
    assert!(tmp_files(&data).is_empty());
}

/// The index's WAL grows by at least one page per write transaction.
fn wal_bytes(data_dir: &Path) -> u64 {
    std::fs::metadata(data_dir.join("index.db-wal")).map_or(0, |m| m.len())
}

fn last_access(data_dir: &Path, digest: &str) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("index.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open index");
    conn.query_row(
        "SELECT last_access FROM content WHERE digest = ?1",
        [digest],
        |row| row.get(0),
    )
    .expect("content row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_record_access_times_in_batches_not_one_write_each() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 1000);
    let mut regcache = Regcache::builder()
        .config_toml(config(&fake.url(), "1GiB", &[]))
        .start();
    let (base, data) = (regcache.url(), regcache.data_dir().to_path_buf());
    pull(&base, &image).await;
    let committed_at = last_access(&data, &image.config.digest);
    next_second().await;

    // 1000 hits on cached content. A SQLite write each would add at least 1000
    // WAL frames (4 KiB each); a batched flush adds a handful.
    let wal_before = wal_bytes(&data);
    let c = client();
    let blob = format!("{base}/v2/pause/blobs/{}", image.config.digest);
    let manifest = format!("{base}/v2/pause/manifests/3.9");
    for i in 0..1000 {
        let url = if i % 2 == 0 { &blob } else { &manifest };
        let got = c.get(url).send().await.expect("hit");
        assert_eq!(got.status(), StatusCode::OK);
        got.bytes().await.expect("body");
    }
    let wal_after = wal_bytes(&data);
    eprintln!("index WAL: {wal_before} bytes before 1000 hits, {wal_after} after");
    assert!(
        wal_after < wal_before + 64 * 4096,
        "1000 hits grew the WAL from {wal_before} to {wal_after} bytes"
    );

    // The batch reaches the index within a few seconds, and survives a restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while last_access(&data, &image.config.digest) <= committed_at {
        assert!(
            std::time::Instant::now() < deadline,
            "access times were never flushed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Hits late in the loop may still be in memory, flushed at the next tick:
    // wait until a whole flush interval passes without a change.
    let mut flushed = last_access(&data, &image.config.digest);
    loop {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let now = last_access(&data, &image.config.digest);
        if now == flushed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "access times kept changing"
        );
        flushed = now;
    }
    regcache.restart();
    assert_eq!(last_access(&data, &image.config.digest), flushed);
}
