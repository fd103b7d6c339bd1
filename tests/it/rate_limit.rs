//! Docker Hub rate-limit awareness (issue 17, item 3) against the k8s-like
//! fake with Docker Hub's pull quota switched on (`ratelimit-limit:
//! 6;w=6`, counting down per manifest GET, then 429 with `Retry-After`):
//! regcache stops sending manifest requests when the remaining count reaches
//! its `rate_limit_reserve`, serves cached tags without asking, answers
//! misses at once with `TOOMANYREQUESTS` and the reset time, resumes when the
//! window has passed, and pauses the same way on a 429 it did not see coming.
//!
//! The request log (GETs spent, when regcache stopped and resumed) is printed
//! with eprintln so it can be quoted. Talks only to 127.0.0.1; the fake and
//! regcache are dropped by the test.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use crate::support::commands::ok_cmd;
use crate::support::fake::{FakeUpstream, Host};
use crate::support::prometheus::Metrics;
use crate::support::regcache::Regcache;
use crate::support::{Got, Image, OCI_MANIFEST, client, config_toml_with, get, seed_image, send};

const LIMIT: u64 = 6;
/// Long enough that `regcache stats` (its file rewritten every 2 s) sees the
/// pause before it ends, even on a loaded machine.
const WINDOW: Duration = Duration::from_secs(6);
const RESERVE: u64 = 2;
/// Short, so a cached tag is stale (and would be revalidated) during the pause.
const TAG_TTL: &str = "1s";
/// A refused miss must answer at least this fast.
const FAST: f64 = 0.5;

/// The fake with a pull quota, `count` one-layer images `quota/app:t<i>`, and
/// regcache on it with the reserve.
fn setup(count: usize) -> (FakeUpstream, Vec<Image>, Regcache) {
    tokio::task::block_in_place(|| {
        let fake = FakeUpstream::k8s_like();
        fake.set_pull_quota(LIMIT, WINDOW);
        let images = (1..=count)
            .map(|i| seed_image(&fake, "quota/app", &format!("t{i}"), 64))
            .collect();
        let extra = format!("rate_limit_reserve = {RESERVE}");
        let regcache = Regcache::builder()
            .config_toml(config_toml_with(&fake.url(), TAG_TTL, "5s", &extra))
            .start();
        (fake, images, regcache)
    })
}

/// The fake's manifest requests with `method` so far (the registry host).
fn manifest_requests(fake: &FakeUpstream, method: Method) -> usize {
    fake.hits_on(Host::Registry, method, "/manifests/")
}

/// Records each step with its time since the start, for the closing note.
struct RequestLog {
    started: Instant,
    lines: Vec<String>,
}

impl RequestLog {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            lines: vec!["   time  request                   answer  retry-after  took   upstream manifest GETs/HEADs".into()],
        }
    }

    /// GETs `image`'s tag through regcache and logs the answer.
    async fn pull(
        &mut self,
        regcache: &Regcache,
        fake: &FakeUpstream,
        image: &Image,
    ) -> (Got, f64) {
        let url = format!(
            "{}/v2/{}/manifests/{}",
            regcache.url(),
            image.repo,
            image.tag
        );
        let at = self.started.elapsed().as_secs_f64();
        let sent = Instant::now();
        let got = send(client().get(&url).header("accept", OCI_MANIFEST)).await;
        let took = sent.elapsed().as_secs_f64();
        self.lines.push(format!(
            "{at:6.2}s  GET {:<22} {:>6}  {:>11}  {took:4.2}s  {}/{}",
            format!("{}:{}", image.repo, image.tag),
            got.status.as_u16(),
            got.header("retry-after").unwrap_or("-"),
            manifest_requests(fake, Method::GET),
            manifest_requests(fake, Method::HEAD),
        ));
        (got, took)
    }

    fn note(&mut self, what: &str) {
        let at = self.started.elapsed().as_secs_f64();
        self.lines.push(format!("{at:6.2}s  -- {what}"));
    }

    fn print(&self) {
        eprintln!("rate-limit request log:\n{}", self.lines.join("\n"));
    }
}

#[track_caller]
fn assert_manifest(got: &Got, image: &Image) {
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.ok_body(), &image.manifest);
}

/// A refused miss: 429 TOOMANYREQUESTS, fast, with a Retry-After within the window.
#[track_caller]
fn assert_refused(got: &Got, took: f64) -> Duration {
    got.assert_oci_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    assert!(took < FAST, "a refused miss took {took:.2} s");
    let retry_after: u64 = got
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(
        (1..=WINDOW.as_secs()).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    Duration::from_secs(retry_after)
}

/// The default upstream's quota in `regcache stats --json`, once the
/// statistics file (rewritten every 2 s) shows `gets_spent`.
async fn quota_in_stats(regcache: &Regcache, gets_spent: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = ok_cmd(regcache.data_dir(), &["stats", "--json"]).await;
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        let quota = stats["server"]["upstream_health"]["registry.k8s.io"]["rate_limit"].clone();
        if quota["gets_spent"] == gets_spent && !quota["paused_until"].is_null() {
            return quota;
        }
        assert!(
            Instant::now() < deadline,
            "stats never showed the pause: {stats:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_gets_stop_at_the_reserve_and_resume_after_the_window() {
    let (fake, images, regcache) = setup(5);
    let mut log = RequestLog::new();
    // 6 allowed, 2 kept back: the 4th GET leaves 2 and pauses.
    for image in &images[..4] {
        let (got, _) = log.pull(&regcache, &fake, image).await;
        assert_manifest(&got, image);
    }
    assert_eq!(manifest_requests(&fake, Method::GET), 4);
    log.note("remaining 2 = reserve: regcache stops sending manifest requests");

    let (got, took) = log.pull(&regcache, &fake, &images[4]).await;
    let retry_after = assert_refused(&got, took);
    let refused_at = Instant::now();
    assert_eq!(
        manifest_requests(&fake, Method::GET),
        4,
        "the miss was not sent"
    );

    // A cached tag past its TTL: served, and not even a free HEAD asks.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (got, _) = log.pull(&regcache, &fake, &images[0]).await;
    assert_manifest(&got, &images[0]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (
            manifest_requests(&fake, Method::GET),
            manifest_requests(&fake, Method::HEAD)
        ),
        (4, 0),
        "a cached tag was served without asking"
    );

    let quota = quota_in_stats(&regcache, 4).await;
    assert_eq!(
        (quota["limit"].as_u64(), quota["remaining"].as_u64()),
        (Some(LIMIT), Some(RESERVE))
    );
    assert_eq!(quota["window_seconds"], WINDOW.as_secs());
    let human = ok_cmd(regcache.data_dir(), &["stats"]).await;
    let line = format!(
        "registry.k8s.io: limit {LIMIT}, remaining {RESERVE}, window {}s, reserve {RESERVE}, GETs spent 4, paused 1 times; paused for",
        WINDOW.as_secs()
    );
    assert!(human.contains(&line), "{human}");
    // /metrics and the status page show the same quota and the pause.
    let metrics = Metrics::scrape(&regcache.url()).await;
    let upstream = [("upstream", "registry.k8s.io")];
    for (name, value) in [
        ("regcache_upstream_ratelimit_limit", LIMIT),
        ("regcache_upstream_ratelimit_remaining", RESERVE),
        ("regcache_upstream_ratelimit_paused", 1),
        ("regcache_upstream_manifest_gets_total", 4),
        ("regcache_upstream_up", 1),
    ] {
        assert_eq!(metrics.value(name, &upstream), value as f64, "{name}");
    }
    let status = get(&format!("{}/status?format=json", regcache.url())).await;
    let status: serde_json::Value = serde_json::from_slice(status.ok_body()).unwrap();
    let shown = status["upstreams"]
        .as_array()
        .and_then(|all| all.iter().find(|u| u["name"] == "registry.k8s.io"))
        .map(|u| u["rate_limit"].clone())
        .expect("the upstream on the status page");
    assert_eq!(shown["remaining"], RESERVE);
    assert!(!shown["paused_until"].is_null(), "{shown}");

    // Past the reset time the refusal named, the miss goes through.
    tokio::time::sleep((refused_at + retry_after).saturating_duration_since(Instant::now())).await;
    log.note("Retry-After has passed");
    let (got, _) = log.pull(&regcache, &fake, &images[4]).await;
    assert_manifest(&got, &images[4]);
    assert_eq!(manifest_requests(&fake, Method::GET), 5);
    log.print();
    let server_log = regcache.log();
    assert!(server_log.contains("manifest GETs paused"), "{server_log}");
    assert!(server_log.contains("manifest GETs resume"), "{server_log}");
    let stops_and_resumes: Vec<_> = server_log
        .lines()
        .filter(|line| line.contains("upstream::rate_limit"))
        .collect();
    eprintln!("regcache's log of it:\n{}", stops_and_resumes.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_manifest_gets_until_its_retry_after() {
    let (fake, images, regcache) = setup(2);
    let mut log = RequestLog::new();
    let (got, _) = log.pull(&regcache, &fake, &images[0]).await;
    assert_manifest(&got, &images[0]);
    // Another client behind the same address spends the rest of the quota.
    fake.spend_quota(LIMIT);
    log.note("another client spends the quota");
    let (got, took) = log.pull(&regcache, &fake, &images[1]).await;
    let retry_after = assert_refused(&got, took);
    let refused_at = Instant::now();
    assert_eq!(
        manifest_requests(&fake, Method::GET),
        2,
        "that one was sent and met the 429"
    );
    let (got, took) = log.pull(&regcache, &fake, &images[1]).await;
    assert_refused(&got, took);
    assert_eq!(
        manifest_requests(&fake, Method::GET),
        2,
        "after the 429 nothing is sent"
    );

    tokio::time::sleep((refused_at + retry_after).saturating_duration_since(Instant::now())).await;
    log.note("Retry-After has passed");
    let (got, _) = log.pull(&regcache, &fake, &images[1]).await;
    assert_manifest(&got, &images[1]);
    assert_eq!(manifest_requests(&fake, Method::GET), 3);
    log.print();
}
