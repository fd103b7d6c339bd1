//! `/metrics` through the real binary against the k8s-like fake, read with a
//! Prometheus text-format parser: after a known sequence (a miss, a hit, a herd
//! of 5, a stale answer, an eviction) every counter has exactly the expected
//! value, the upstream counts match the fake's own request log, `regcache
//! stats` reads the same numbers, and `server.metrics_listen` moves the
//! endpoints off the mirror's port.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;

use crate::support::commands::ok_cmd;
use crate::support::fake::FakeUpstream;
use crate::support::prometheus::{Metrics, labels};
use crate::support::regcache::Regcache;
use crate::support::{WAIT, get, random_bytes, seed_image};

const MIB: usize = 1024 * 1024;

/// One upstream with a 1 s tag TTL and a 3 MiB budget: a fourth MiB evicts.
fn config(url: &str, extra_server: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
{extra_server}
[storage]
data_dir = "./unused"
max_size = "3MiB"
high_watermark = 0.95
low_watermark = 0.85
evict_interval = "1h"
[[upstream]]
name = "registry.k8s.io"
url = "{url}"
default = true
tag_ttl = "1s"
"#
    )
}

/// Scrapes until `check` holds for a scrape (or [`WAIT`] passes).
async fn scrape_until(base: &str, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
    let started = std::time::Instant::now();
    loop {
        let metrics = Metrics::scrape(base).await;
        if check(&metrics) {
            return metrics;
        }
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_after_a_miss_a_hit_a_herd_a_stale_answer_and_an_eviction() {
    let fake = FakeUpstream::k8s_like();
    let x = fake.put_blob("counted-repo", random_bytes(MIB));
    let y = fake.put_blob("counted-repo", random_bytes(MIB));
    let z = fake.put_blob("counted-repo", random_bytes(MIB));
    let image = seed_image(&fake, "pause", "3.9", 10);
    let regcache = Regcache::builder()
        .config_toml(config(&fake.url(), ""))
        .start();
    let base = regcache.url();
    let blob = |digest: &str| format!("{base}/v2/counted-repo/blobs/{digest}");

    let before = Metrics::scrape(&base).await;
    assert!(before.nonzero("regcache_requests_total").is_empty());
    assert_eq!(
        before.value("regcache_cache_budget_bytes", &[]),
        3.0 * MIB as f64
    );

    // A miss, then a hit of the same blob.
    assert_eq!(get(&blob(&x)).await.ok_body().len(), MIB);
    assert_eq!(get(&blob(&x)).await.ok_body().len(), MIB);

    // A herd of 5 on a cold blob the upstream holds: released only once the
    // other four have joined the first one's fill.
    fake.hold_blob(&y, true);
    let herd = tokio::spawn({
        let url = blob(&y);
        async move { join_all((0..5).map(|_| get(&url))).await }
    });
    scrape_until(&base, "4 herd joins", |m| {
        m.value("regcache_herd_joins_total", &[]) == 4.0
    })
    .await;
    let during = Metrics::scrape(&base).await;
    assert_eq!(during.value("regcache_fills_active", &[]), 1.0);
    fake.hold_blob(&y, false);
    for got in herd.await.unwrap() {
        assert_eq!(got.ok_body().len(), MIB);
    }

    // A tag fetched, then past its TTL with the upstream failing: stale.
    let tag = format!("{base}/v2/pause/manifests/3.9");
    assert_eq!(get(&tag).await.ok_body(), &image.manifest);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fake.set_fail_status(Some(500));
    let stale = get(&tag).await;
    assert_eq!(stale.ok_body(), &image.manifest);
    // The revalidation runs in the background: the upstream must still be
    // failing when it gets there (its 500 is counted below).
    regcache.wait_for_log("tag revalidation failed; the cached mapping stays");
    fake.set_fail_status(None);

    // A third MiB passes the high watermark: the least recently used blob (x) goes.
    assert_eq!(get(&blob(&z)).await.ok_body().len(), MIB);
    let m = scrape_until(&base, "one eviction", |m| {
        m.value("regcache_evictions_total", &[]) == 1.0
    })
    .await;

    let req =
        |endpoint: &str, outcome: &str| labels(&[("endpoint", endpoint), ("outcome", outcome)]);
    let expected = [
        (req("blob", "miss"), 3.0),
        (req("blob", "hit"), 1.0),
        (req("blob", "follow"), 4.0),
        (req("manifest", "miss"), 1.0),
        (req("manifest", "stale"), 1.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(m.nonzero("regcache_requests_total"), expected, "{}", m.text);
    let manifest = image.manifest.len() as f64;
    let mib = MIB as f64;
    let served = |source: &str| m.value("regcache_served_bytes_total", &[("source", source)]);
    assert_eq!(served("cache"), mib + manifest);
    assert_eq!(served("fill"), 7.0 * mib + manifest);
    assert_eq!(served("pass"), 0.0);
    assert_eq!(served("none"), 0.0);
    assert_eq!(m.value("regcache_herd_joins_total", &[]), 4.0);
    assert_eq!(m.value("regcache_fills_active", &[]), 0.0);
    assert_eq!(m.value("regcache_fill_duration_seconds_count", &[]), 3.0);
    assert_eq!(m.value("regcache_evicted_bytes_total", &[]), mib);
    assert_eq!(m.value("regcache_cache_bytes", &[]), 2.0 * mib + manifest);
    assert_eq!(m.value("regcache_cache_pinned_bytes", &[]), 0.0);
    assert_eq!(m.value("regcache_index_rows", &[]), 3.0);
    let first_byte: f64 = ["hit", "miss", "follow", "stale"]
        .iter()
        .map(|o| {
            m.value(
                "regcache_time_to_first_byte_seconds_count",
                &[("outcome", o)],
            )
        })
        .sum();
    assert_eq!(first_byte, 10.0);

    // The upstream side, against the fake's own log: every request it saw,
    // one 500 (the revalidation), and every body byte regcache read.
    let upstream = |class: &str| {
        m.value(
            "regcache_upstream_requests_total",
            &[("upstream", "registry.k8s.io"), ("status_class", class)],
        )
    };
    assert_eq!(upstream("5xx"), 1.0);
    assert_eq!(upstream("4xx") + upstream("error") + upstream("1xx"), 0.0);
    let answered = upstream("2xx") + upstream("3xx") + upstream("5xx");
    assert_eq!(answered, fake.total_hits() as f64, "{:#?}", fake.requests());
    assert_eq!(
        m.value(
            "regcache_upstream_received_bytes_total",
            &[("upstream", "registry.k8s.io")]
        ),
        3.0 * mib + manifest
    );
    for family in [
        "regcache_requests_total",
        "regcache_time_to_first_byte_seconds",
    ] {
        assert!(m.has_help(family), "{family} has no HELP");
    }
    // Labels stay low-cardinality: no repository name, no digest.
    assert!(
        !m.text.contains("sha256:") && !m.text.contains("app"),
        "{}",
        m.text
    );

    // `regcache stats` reads the same counters (the server writes them every 2 s).
    let expected_stats = [
        ("miss", 4),
        ("hit", 1),
        ("follow", 4),
        ("stale", 1),
        ("error", 0),
    ];
    let data = regcache.data_dir().to_path_buf();
    let started = std::time::Instant::now();
    loop {
        let out = ok_cmd(&data, &["stats", "--json"]).await;
        let json: serde_json::Value = serde_json::from_str(&out).expect("stats --json");
        let requests = |o: &str| json["server"]["outcomes"][o]["requests"].as_u64();
        if expected_stats.iter().all(|(o, n)| requests(o) == Some(*n)) {
            let bytes = json["server"]["outcomes"]["hit"]["bytes"].as_u64();
            assert_eq!(bytes, Some(MIB as u64));
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "stats never showed {expected_stats:?}: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_metrics_and_status_off_the_mirror_port() {
    let fake = FakeUpstream::k8s_like();
    let port = crate::support::process::free_port();
    let regcache = Regcache::builder()
        .config_toml(config(
            &fake.url(),
            &format!("metrics_listen = \"127.0.0.1:{port}\""),
        ))
        .start();
    let side = format!("http://127.0.0.1:{port}");
    let metrics = Metrics::scrape(&side).await;
    assert_eq!(metrics.value("regcache_herd_joins_total", &[]), 0.0);
    let status = get(&format!("{side}/status?format=json")).await;
    assert_eq!(status.status, StatusCode::OK);
    for path in ["/metrics", "/", "/status"] {
        let on_main = get(&format!("{}{path}", regcache.url())).await;
        assert_eq!(
            on_main.status,
            StatusCode::NOT_FOUND,
            "{path} on the main port"
        );
    }
}
