//! Upstream faults against the real binary: down (unreachable) and 500, stale
//! answers, wrong bytes and cut bodies (aborted client body, nothing cached,
//! recovery), a SIGKILL in the middle of a fill, and the peak RSS of a cold
//! 1 GiB pull. Asserts bytes, statuses, files in the data
//! directory and upstream hit counts; never wall-clock speed.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use reqwest::Method;
use reqwest::StatusCode;

use crate::support::fake::{Content, FakeUpstream, Host};
use crate::support::regcache::Regcache;
use crate::support::{
    Image, blob_file, client, config_toml, get, head, pull, random_bytes, seed_image, sha256,
    tmp_files, wait_for,
};

fn start(fake: &FakeUpstream, tag_ttl: &str) -> Regcache {
    Regcache::builder()
        .config_toml(config_toml(&fake.url(), tag_ttl))
        .start()
}

/// What must still work while the upstream cannot answer, and what must not.
async fn cached_content_survives(base: &str, image: &Image) {
    let by_tag = get(&format!("{base}/v2/pause/manifests/3.9")).await;
    assert_eq!(by_tag.status, StatusCode::OK);
    assert_eq!(by_tag.ok_body(), &image.manifest);
    assert_eq!(
        by_tag.header("docker-content-digest"),
        Some(image.manifest_digest.as_str())
    );
    let by_digest = get(&format!(
        "{base}/v2/pause/manifests/{}",
        image.manifest_digest
    ))
    .await;
    assert_eq!(by_digest.ok_body(), &image.manifest);
    for (digest, bytes) in [
        (&image.config.digest, &image.config.bytes),
        (&image.layer().digest, &image.layer().bytes),
    ] {
        let url = format!("{base}/v2/pause/blobs/{digest}");
        assert_eq!(get(&url).await.ok_body(), bytes);
        assert_eq!(head(&url).await.status, StatusCode::OK);
    }
    // Nothing cached to answer with: 502 UNAVAILABLE, never a hang or a 200.
    let uncached = sha256(b"never pulled");
    get(&format!("{base}/v2/pause/manifests/other-tag"))
        .await
        .assert_oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE");
    get(&format!("{base}/v2/pause/manifests/{uncached}"))
        .await
        .assert_oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE");
    get(&format!("{base}/v2/pause/blobs/{uncached}"))
        .await
        .assert_oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE");
    assert_eq!(
        head(&format!("{base}/v2/pause/blobs/{uncached}"))
            .await
            .status,
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_serves_what_is_cached() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100_000);
    // tag_ttl 0: every tag request asks upstream, so the stale path is taken.
    let regcache = start(&fake, "0s");
    let base = regcache.url();
    pull(&base, &image).await;
    fake.set_down(true);
    cached_content_survives(&base, &image).await;
    regcache.wait_for_log("outcome=\"stale\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_500_serves_what_is_cached() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100_000);
    let regcache = start(&fake, "0s");
    let base = regcache.url();
    pull(&base, &image).await;
    fake.set_fail_status(Some(500));
    let heads_before = fake.hits_on(Host::Front, Method::HEAD, "/manifests/3.9");
    cached_content_survives(&base, &image).await;
    // The stale tag was revalidated (in the background, and failed) rather
    // than served blindly.
    wait_for("the stale tag's revalidation", || {
        fake.hits_on(Host::Front, Method::HEAD, "/manifests/3.9") > heads_before
    })
    .await;
    regcache.wait_for_log("tag revalidation failed; the cached mapping stays");
}

/// A blob fetch that the fake sabotages: the client's body must not end
/// cleanly, nothing may be cached, and the next request goes upstream again
/// (with `gets_per_fill` storage GETs: 1 + the fill's resumes of a cut body).
async fn sabotaged_blob_is_not_cached(
    fake: &FakeUpstream,
    regcache: &Regcache,
    image: &Image,
    gets_per_fill: usize,
) {
    let d = &image.layer().digest;
    let url = format!("{}/v2/pause/blobs/{d}", regcache.url());
    let got = get(&url).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.header("content-length"),
        Some(image.layer().bytes.len().to_string().as_str())
    );
    assert!(
        got.body_error.is_some() || got.body.len() < image.layer().bytes.len(),
        "a sabotaged blob ended cleanly with {} bytes",
        got.body.len()
    );
    assert_ne!(sha256(&got.body), *d);
    // Nothing cached; the fill is over once its temp file is gone.
    wait_for("the failed fill's temp file to go", || {
        tmp_files(regcache.data_dir()).is_empty()
    })
    .await;
    assert!(!blob_file(regcache.data_dir(), d).exists());
    let gets = fake.hits_on(Host::Storage, Method::GET, d);
    let again = get(&url).await;
    assert!(again.body_error.is_some() || again.body.len() < image.layer().bytes.len());
    assert_eq!(
        fake.hits_on(Host::Storage, Method::GET, d),
        gets + gets_per_fill
    );
    assert!(!blob_file(regcache.data_dir(), d).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_blob_bytes_abort_the_client_and_cache_nothing() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 3 * 1024 * 1024);
    let regcache = Regcache::with_upstream(fake.url());
    fake.set_wrong_bytes(&image.layer().digest, true);
    // A bad digest is not resumed: one GET per fill.
    sabotaged_blob_is_not_cached(&fake, &regcache, &image, 1).await;
    fake.set_wrong_bytes(&image.layer().digest, false);
    let got = get(&format!(
        "{}/v2/pause/blobs/{}",
        regcache.url(),
        image.layer().digest
    ))
    .await;
    assert_eq!(got.ok_body(), &image.layer().bytes);
    assert!(blob_file(regcache.data_dir(), &image.layer().digest).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upstream_body_aborts_the_client_and_caches_nothing() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 3 * 1024 * 1024);
    let regcache = Regcache::with_upstream(fake.url());
    fake.set_cut_after(&image.layer().digest, Some(1024 * 1024 + 7));
    // Cut every time: the plain GET and three ranged resumes, then the fill fails.
    sabotaged_blob_is_not_cached(&fake, &regcache, &image, 4).await;
    fake.set_cut_after(&image.layer().digest, None);
    let got = get(&format!(
        "{}/v2/pause/blobs/{}",
        regcache.url(),
        image.layer().digest
    ))
    .await;
    assert_eq!(got.ok_body(), &image.layer().bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_manifest_bytes_are_an_error_and_not_cached() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100);
    let regcache = Regcache::with_upstream(fake.url());
    let base = regcache.url();
    fake.set_wrong_bytes(&image.manifest_digest, true);
    for reference in ["3.9", image.manifest_digest.as_str()] {
        let url = format!("{base}/v2/pause/manifests/{reference}");
        let got = get(&url).await;
        assert!(
            got.status == StatusCode::BAD_GATEWAY || got.status == StatusCode::BAD_REQUEST,
            "{got:?}"
        );
        assert_ne!(got.body, image.manifest);
        let json: serde_json::Value = serde_json::from_slice(&got.body).expect("OCI JSON");
        assert!(json["errors"][0]["code"].is_string());
        assert!(!blob_file(regcache.data_dir(), &image.manifest_digest).exists());
        // Not cached: asked again.
        let gets = fake.hits_on(Host::Front, Method::GET, "/manifests/");
        let again = get(&url).await;
        assert_eq!(again.status, got.status);
        assert_eq!(
            fake.hits_on(Host::Front, Method::GET, "/manifests/"),
            gets + 1
        );
    }
    fake.set_wrong_bytes(&image.manifest_digest, false);
    let got = get(&format!("{base}/v2/pause/manifests/3.9")).await;
    assert_eq!(got.ok_body(), &image.manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_fill_leaves_nothing_half_written() {
    let fake = FakeUpstream::k8s_like();
    let size = 8 * 1024 * 1024;
    let blob = random_bytes(size);
    let digest = fake.put_blob("big", blob.clone());
    fake.pause_after(&digest, 1024 * 1024);
    let mut regcache = Regcache::with_upstream(fake.url());
    let url = format!("{}/v2/big/blobs/{digest}", regcache.url());
    let client_task = tokio::spawn(async move { get(&url).await });
    // Wait until regcache has the first MiB in its temp file.
    let data = regcache.data_dir().to_owned();
    wait_for("a temp file with the first MiB", || {
        tmp_files(&data)
            .iter()
            .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() >= 1024 * 1024))
    })
    .await;
    regcache.restart();
    let cut = client_task.await.unwrap();
    assert!(cut.body_error.is_some() || cut.body.len() < size);
    assert!(
        tmp_files(regcache.data_dir()).is_empty(),
        "temp file survived"
    );
    assert!(!blob_file(regcache.data_dir(), &digest).exists());
    fake.resume(&digest);
    let gets = fake.hits_on(Host::Storage, Method::GET, &digest);
    let got = get(&format!("{}/v2/big/blobs/{digest}", regcache.url())).await;
    assert_eq!(got.ok_body(), &blob);
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, &digest), gets + 1);
    assert!(blob_file(regcache.data_dir(), &digest).exists());
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_1_gib_pull_keeps_peak_rss_under_100_mib() {
    let fake = FakeUpstream::k8s_like();
    let content = Content::Repeat {
        block: random_bytes(1024 * 1024),
        count: 1024,
    };
    let size = content.len();
    let digest = fake.put_content("huge", content);
    let regcache = Regcache::with_upstream(fake.url());
    let started = std::time::Instant::now();
    let mut response = client()
        .get(format!("{}/v2/huge/blobs/{digest}", regcache.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut received = 0u64;
    // What the upstream had sent when the first body bytes reached the client.
    let mut first_byte = None;
    while let Some(chunk) = response.chunk().await.unwrap() {
        first_byte.get_or_insert_with(|| (started.elapsed(), fake.sent(&digest)));
        sha2::Digest::update(&mut hasher, &chunk);
        received += chunk.len() as u64;
    }
    let (ttfb, sent_at_first_byte) = first_byte.expect("a body");
    eprintln!(
        "cold 1 GiB pull: first byte after {ttfb:?} with {:.1} MiB of {} MiB sent upstream; whole body after {:?}",
        sent_at_first_byte as f64 / 1048576.0,
        size / 1048576,
        started.elapsed()
    );
    assert!(
        sent_at_first_byte < size,
        "the first byte waited for the whole upstream body"
    );
    assert_eq!(received, size);
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher))),
        digest
    );
    let peak = peak_rss_kib(regcache.pid());
    eprintln!(
        "regcache peak RSS (VmHWM) after a cold 1 GiB pull: {peak} KiB ({:.1} MiB)",
        peak as f64 / 1024.0
    );
    assert!(peak < 100 * 1024, "VmHWM {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_429_serves_the_cache_or_passes_the_limit_on() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 1000);
    let regcache = start(&fake, "0s");
    let base = regcache.url();
    pull(&base, &image).await;
    fake.set_fail_status(Some(429));
    let got = get(&format!("{base}/v2/pause/manifests/3.9")).await;
    assert_eq!(got.ok_body(), &image.manifest);
    let got = get(&format!("{base}/v2/pause/manifests/other")).await;
    got.assert_oci_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    assert!(got.header("retry-after").is_some(), "{:?}", got.headers);
    let got = get(&format!("{base}/v2/pause/blobs/{}", sha256(b"other"))).await;
    got.assert_oci_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    assert!(got.header("retry-after").is_some(), "{:?}", got.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_falls_back_to_known_tags_when_upstream_is_down() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100);
    seed_image(&fake, "pause", "3.10", 100);
    let regcache = start(&fake, "5m");
    let base = regcache.url();
    pull(&base, &image).await;
    let tags = |got: &crate::support::Got| -> serde_json::Value {
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        serde_json::from_slice::<serde_json::Value>(got.ok_body()).unwrap()["tags"].clone()
    };
    let live = get(&format!("{base}/v2/pause/tags/list")).await;
    assert_eq!(tags(&live), serde_json::json!(["3.10", "3.9"]));
    fake.set_down(true);
    let stale = get(&format!("{base}/v2/pause/tags/list")).await;
    assert_eq!(tags(&stale), serde_json::json!(["3.9"]));
    get(&format!("{base}/v2/never-pulled/tags/list"))
        .await
        .assert_oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_body_is_abandoned_after_the_idle_timeout() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 3 * 1024 * 1024);
    let regcache = Regcache::builder()
        .config_toml(crate::support::config_toml_with(
            &fake.url(),
            "5m",
            "1s",
            "",
        ))
        .start();
    let d = &image.layer().digest;
    fake.pause_after(d, 1024 * 1024);
    let url = format!("{}/v2/pause/blobs/{d}", regcache.url());
    let got = get(&url).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body_error.is_some() || got.body.len() < image.layer().bytes.len());
    wait_for("the stalled fill's temp file to go", || {
        tmp_files(regcache.data_dir()).is_empty()
    })
    .await;
    assert!(!blob_file(regcache.data_dir(), d).exists());
    fake.resume(d);
    assert_eq!(get(&url).await.ok_body(), &image.layer().bytes);
    // The stalled fill: its GET and three resumes (each stalled too); then one.
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, d), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fill_aborts_every_reader() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 3 * 1024 * 1024);
    let regcache = Regcache::with_upstream(fake.url());
    let d = &image.layer().digest;
    fake.set_wrong_bytes(d, true);
    fake.pause_after(d, 1024 * 1024);
    let url = format!("{}/v2/pause/blobs/{d}", regcache.url());
    // Three readers get their headers from the one fill while it is paused.
    let responses = futures_util::future::join_all((0..3).map(|_| client().get(&url).send())).await;
    fake.resume(d);
    for response in responses {
        let mut response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut received = 0;
        let clean_end = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => received += chunk.len(),
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        assert!(
            !clean_end || received < image.layer().bytes.len(),
            "a reader of a failed fill ended cleanly with {received} bytes"
        );
    }
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, d), 1);
    assert!(!blob_file(regcache.data_dir(), d).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_content_survives_a_restart() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100_000);
    let mut regcache = start(&fake, "5m");
    pull(&regcache.url(), &image).await;
    regcache.restart();
    fake.set_down(true);
    let before = fake.total_hits();
    let base = regcache.url();
    pull(&base, &image).await;
    let by_digest = get(&format!(
        "{base}/v2/pause/manifests/{}",
        image.manifest_digest
    ))
    .await;
    assert_eq!(by_digest.ok_body(), &image.manifest);
    assert_eq!(fake.total_hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_denial_is_passed_on() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 1000);
    let regcache = start(&fake, "5m");
    let base = regcache.url();
    pull(&base, &image).await;
    fake.set_fail_status(Some(403));
    get(&format!("{base}/v2/pause/manifests/other"))
        .await
        .assert_oci_error(StatusCode::FORBIDDEN, "DENIED");
    get(&format!("{base}/v2/pause/blobs/{}", sha256(b"other")))
        .await
        .assert_oci_error(StatusCode::FORBIDDEN, "DENIED");
    // What is cached for this repository is still served.
    let got = get(&format!(
        "{base}/v2/pause/manifests/{}",
        image.manifest_digest
    ))
    .await;
    assert_eq!(got.ok_body(), &image.manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_upstream_port_is_502_for_uncached_content() {
    // A port that was just free: connections to it are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let regcache = Regcache::with_upstream(format!("http://127.0.0.1:{port}"));
    let base = regcache.url();
    assert_eq!(get(&format!("{base}/v2/")).await.status, StatusCode::OK);
    get(&format!("{base}/v2/pause/manifests/3.9"))
        .await
        .assert_oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE");
    get(&format!("{base}/v2/pause/blobs/{}", sha256(b"x")))
        .await
        .assert_oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE");
    get(&format!("{base}/v2/pause/tags/list"))
        .await
        .assert_oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE");
}
