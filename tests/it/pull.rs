//! Pulls through the real binary against the registry.k8s.io-like fake (307 →
//! relative 302 → storage, with and without a token): exact bytes, digests and
//! headers, zero upstream hits for cached content, ranges, cross-repository
//! confirmation, streaming while the upstream is still sending, client hang-ups,
//! negotiation and credentials. Every test counts upstream requests per host and
//! path.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use std::time::Duration;

use reqwest::Method;
use reqwest::StatusCode;

use crate::support::fake::{Content, FakeUpstream, Host};
use crate::support::regcache::Regcache;
use crate::support::{
    OCI_MANIFEST, blob_file, client, config_toml_with, get, head, random_bytes, seed_image, send,
    sha256, wait_for,
};

/// Headers every blob answer carries, for a blob of `size` bytes.
#[track_caller]
fn assert_blob_headers(got: &crate::support::Got, digest: &str, size: usize) {
    assert_eq!(
        got.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert_eq!(
        got.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(got.header("docker-content-digest"), Some(digest));
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    assert_eq!(got.header("etag"), Some(format!("\"{digest}\"").as_str()));
    assert_eq!(got.header("accept-ranges"), Some("bytes"));
    assert_eq!(got.header("content-encoding"), None);
}

#[track_caller]
fn assert_manifest_headers(got: &crate::support::Got, digest: &str, size: usize) {
    assert_eq!(
        got.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert_eq!(
        got.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(got.header("docker-content-digest"), Some(digest));
    assert_eq!(got.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(got.header("etag"), Some(format!("\"{digest}\"").as_str()));
    assert_eq!(got.header("content-encoding"), None);
}

/// A full pull (manifest by tag, config, layer) with gzip-accepting requests,
/// checked byte for byte and header by header; then the same pull again, which
/// must not reach the upstream at all.
/// `manifest_gets`: front GETs the first manifest request takes (2 when the
/// registry host answers 401 first: the token is fetched, the chain restarts).
async fn pull_and_repull(fake: &FakeUpstream, manifest_gets: usize) {
    let image = seed_image(fake, "pause", "3.9", 3 * 1024 * 1024 + 17);
    let regcache = Regcache::with_upstream(fake.url());
    let base = regcache.url();
    let c = client();

    let ping = send(c.get(format!("{base}/v2/"))).await;
    assert_eq!(ping.status, StatusCode::OK);
    assert_eq!(&ping.ok_body()[..], b"{}");
    assert_eq!(
        ping.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    let manifest_url = format!("{base}/v2/pause/manifests/3.9");
    let m = send(
        c.get(&manifest_url)
            .header("accept", OCI_MANIFEST)
            .header("accept-encoding", "gzip"),
    )
    .await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.ok_body(), &image.manifest);
    assert_manifest_headers(&m, &image.manifest_digest, image.manifest.len());
    let mh = send(c.head(&manifest_url).header("accept", OCI_MANIFEST)).await;
    assert_eq!(mh.status, StatusCode::OK);
    assert_manifest_headers(&mh, &image.manifest_digest, image.manifest.len());
    assert!(mh.body.is_empty());

    for (digest, bytes) in [
        (&image.config.digest, &image.config.bytes),
        (&image.layer().digest, &image.layer().bytes),
    ] {
        let url = format!("{base}/v2/pause/blobs/{digest}");
        let got = send(c.get(&url).header("accept-encoding", "gzip")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(sha256(got.ok_body()), *digest);
        assert_eq!(got.ok_body(), bytes);
        assert_blob_headers(&got, digest, bytes.len());
        let h = head(&url).await;
        assert_eq!(h.status, StatusCode::OK);
        assert_blob_headers(&h, digest, bytes.len());
    }

    // The chain was walked once per blob: front 307, AR 302 (relative), AR 302, storage.
    for digest in [&image.config.digest, &image.layer().digest] {
        assert_eq!(fake.hits_on(Host::Front, Method::GET, digest), 1);
        assert_eq!(fake.hits_on(Host::Storage, Method::GET, digest), 1);
    }
    assert_eq!(
        fake.hits_on(Host::Registry, Method::GET, "/artifacts-downloads/"),
        2
    );
    assert_eq!(
        fake.hits_on(Host::Front, Method::GET, "/v2/pause/manifests/3.9"),
        manifest_gets
    );
    fake.assert_no_violations();

    // Second pull: by digest, tag within its TTL, blobs, HEADs: zero upstream hits.
    let before = fake.total_hits();
    let by_digest = get(&format!(
        "{base}/v2/pause/manifests/{}",
        image.manifest_digest
    ))
    .await;
    assert_eq!(by_digest.status, StatusCode::OK);
    assert_eq!(by_digest.ok_body(), &image.manifest);
    assert_manifest_headers(&by_digest, &image.manifest_digest, image.manifest.len());
    assert_eq!(get(&manifest_url).await.ok_body(), &image.manifest);
    for (digest, bytes) in [
        (&image.config.digest, &image.config.bytes),
        (&image.layer().digest, &image.layer().bytes),
    ] {
        let url = format!("{base}/v2/pause/blobs/{digest}");
        let got = get(&url).await;
        assert_eq!(got.ok_body(), bytes);
        assert_blob_headers(&got, digest, bytes.len());
        assert_eq!(head(&url).await.status, StatusCode::OK);
    }
    assert_eq!(
        fake.total_hits(),
        before,
        "second pull reached the upstream: {:#?}",
        &fake.requests()[before..]
    );
    // Every one of those responses was complete, and logged as such.
    let log = regcache.log();
    assert!(!log.contains("aborted=true"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_the_k8s_chain() {
    let fake = FakeUpstream::k8s_like();
    pull_and_repull(&fake, 1).await;
    assert_eq!(
        fake.count(|s| s.authorization.is_some()),
        0,
        "anonymous chain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_the_k8s_chain_with_a_token() {
    let fake = FakeUpstream::k8s_like_with_token();
    pull_and_repull(&fake, 2).await;
    // One token for the repository, reused for every later request.
    assert_eq!(fake.hits_on(Host::Registry, Method::GET, "/v2/token"), 1);
    // The token went to the registry host only; storage and front saw none
    // (the fake records a violation otherwise, checked here and on drop).
    assert!(fake.count(|s| s.host == Host::Registry && s.authorization.is_some()) >= 1);
    assert_eq!(
        fake.count(|s| s.host != Host::Registry && s.authorization.is_some()),
        0
    );
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_reference_never_goes_upstream_again() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 1000);
    let regcache = Regcache::with_upstream(fake.url());
    let url = format!(
        "{}/v2/pause/manifests/{}",
        regcache.url(),
        image.manifest_digest
    );
    assert_eq!(get(&url).await.ok_body(), &image.manifest);
    assert_eq!(fake.hits_on(Host::Front, Method::GET, "/manifests/"), 1);
    let before = fake.total_hits();
    for _ in 0..3 {
        assert_eq!(get(&url).await.ok_body(), &image.manifest);
        assert_eq!(head(&url).await.status, StatusCode::OK);
    }
    fake.set_fail_status(Some(500));
    assert_eq!(get(&url).await.ok_body(), &image.manifest);
    fake.set_fail_status(None);
    fake.set_down(true);
    assert_eq!(get(&url).await.ok_body(), &image.manifest);
    assert_eq!(fake.total_hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_404_is_our_404() {
    let fake = FakeUpstream::k8s_like();
    seed_image(&fake, "pause", "3.9", 100);
    let regcache = Regcache::with_upstream(fake.url());
    let base = regcache.url();
    get(&format!("{base}/v2/pause/manifests/nope"))
        .await
        .assert_oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    let missing = sha256(b"missing");
    get(&format!("{base}/v2/pause/manifests/{missing}"))
        .await
        .assert_oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    get(&format!("{base}/v2/pause/blobs/{missing}"))
        .await
        .assert_oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    let h = head(&format!("{base}/v2/pause/blobs/{missing}")).await;
    assert_eq!(h.status, StatusCode::NOT_FOUND);
    assert_eq!(
        h.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    // Each was asked upstream (404s are not cached as content).
    assert_eq!(fake.hits_on(Host::Front, Method::GET, "/manifests/nope"), 1);
    assert_eq!(fake.hits_on(Host::Front, Method::GET, &missing), 2);
    assert_eq!(fake.hits_on(Host::Front, Method::HEAD, &missing), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_on_a_cached_blob_and_during_a_fill() {
    let fake = FakeUpstream::k8s_like();
    let size = 2 * 1024 * 1024;
    let image = seed_image(&fake, "pause", "3.9", size);
    let regcache = Regcache::with_upstream(fake.url());
    let url = format!("{}/v2/pause/blobs/{}", regcache.url(), image.layer().digest);
    let c = client();
    let layer = &image.layer().bytes;

    // During a fill: the upstream is paused after 1 MiB.
    fake.pause_after(&image.layer().digest, 1024 * 1024);
    let first = tokio::spawn(send(c.get(&url)));
    wait_for("the upstream to send 1 MiB", || {
        fake.sent(&image.layer().digest) == 1024 * 1024
    })
    .await;
    // A range inside what has arrived is answered while the upstream is paused.
    let during = send(c.get(&url).header("range", "bytes=10-19")).await;
    // The blob's last bytes are sent only once the whole blob is verified.
    let tail = tokio::spawn(send(c.get(&url).header("range", "bytes=-5")));
    fake.resume(&image.layer().digest);
    assert_eq!(during.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        during.header("content-range"),
        Some(format!("bytes 10-19/{size}").as_str())
    );
    assert_eq!(during.header("content-length"), Some("10"));
    assert_eq!(&during.ok_body()[..], &layer[10..20]);
    let tail = tail.await.unwrap();
    assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&tail.ok_body()[..], &layer[size - 5..]);
    assert_eq!(first.await.unwrap().ok_body(), layer);
    assert_eq!(
        fake.hits_on(Host::Storage, Method::GET, &image.layer().digest),
        1
    );
    // The fill fetched the whole blob, whatever the clients' ranges.
    assert_eq!(fake.count(|s| s.range.is_some()), 0);

    // Cached.
    let cases = [
        ("bytes=500-1499", 500, 1499),
        ("bytes=500-", 500, size - 1),
        ("bytes=-500", size - 500, size - 1),
        ("bytes=0-0", 0, 0),
        (
            &format!("bytes={}-{}", size - 10, size + 100),
            size - 10,
            size - 1,
        ),
    ];
    for (range, first, last) in cases {
        let got = send(c.get(&url).header("range", range)).await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            got.header("content-range"),
            Some(format!("bytes {first}-{last}/{size}").as_str()),
            "{range}"
        );
        assert_eq!(
            got.header("content-length"),
            Some((last - first + 1).to_string().as_str())
        );
        assert_eq!(&got.ok_body()[..], &layer[first..=last], "{range}");
    }
    for range in ["bytes=500-0", &format!("bytes={size}-"), "bytes=-0"] {
        let got = send(c.get(&url).header("range", range)).await;
        assert_eq!(got.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(
            got.header("content-range"),
            Some(format!("bytes */{size}").as_str())
        );
        assert_eq!(
            got.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
    }
    // Several ranges: the whole blob (200), which containers/image accepts.
    let got = send(c.get(&url).header("range", "bytes=0-1,5-6")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.ok_body(), layer);
    assert_eq!(
        fake.hits_on(Host::Storage, Method::GET, &image.layer().digest),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_repository_gets_cached_bytes_only_after_upstream_confirms() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 4096);
    let regcache = Regcache::with_upstream(fake.url());
    let base = regcache.url();
    let d = &image.layer().digest;
    assert_eq!(
        get(&format!("{base}/v2/pause/blobs/{d}")).await.ok_body(),
        &image.layer().bytes
    );

    // "other" does not have it upstream: 404 although the bytes are cached.
    get(&format!("{base}/v2/other/blobs/{d}"))
        .await
        .assert_oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    assert_eq!(
        head(&format!("{base}/v2/other/blobs/{d}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(fake.hits_on(Host::Front, Method::HEAD, "/v2/other/blobs/") >= 1);

    // Now it does: served from the cache after a HEAD, without fetching bytes again.
    fake.link_blob("other", d);
    let heads_before = fake.hits_on(Host::Front, Method::HEAD, "/v2/other/blobs/");
    let got = get(&format!("{base}/v2/other/blobs/{d}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.ok_body(), &image.layer().bytes);
    assert_eq!(
        fake.hits_on(Host::Front, Method::HEAD, "/v2/other/blobs/"),
        heads_before + 1
    );
    assert_eq!(
        fake.hits_on(Host::Front, Method::GET, "/v2/other/blobs/"),
        0
    );
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, d), 1);

    // The confirmation is remembered.
    let before = fake.total_hits();
    assert_eq!(
        get(&format!("{base}/v2/other/blobs/{d}")).await.ok_body(),
        &image.layer().bytes
    );
    assert_eq!(fake.total_hits(), before);

    // Same rule for manifests by digest.
    let m = &image.manifest_digest;
    let got = get(&format!("{base}/v2/pause/manifests/{m}")).await;
    assert_eq!(got.ok_body(), &image.manifest);
    get(&format!("{base}/v2/other/manifests/{m}"))
        .await
        .assert_oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    fake.put_manifest("other", None, OCI_MANIFEST, image.manifest.clone());
    let got = get(&format!("{base}/v2/other/manifests/{m}")).await;
    assert_eq!(got.ok_body(), &image.manifest);
    assert_eq!(
        fake.hits_on(Host::Front, Method::HEAD, "/v2/other/manifests/"),
        2
    );
    assert_eq!(
        fake.hits_on(Host::Front, Method::GET, "/v2/other/manifests/"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_upstream_body_is_streamed_to_the_client() {
    let fake = FakeUpstream::k8s_like();
    let size = 64 * 1024 * 1024;
    let blob = random_bytes(size);
    let digest = fake.put_blob("big", blob.clone());
    // 64 MiB in 1 MiB pieces, 50 ms apart.
    fake.set_throttle(Some((1024 * 1024, Duration::from_millis(50))));
    let regcache = Regcache::with_upstream(fake.url());
    let mut response = client()
        .get(format!("{}/v2/big/blobs/{digest}", regcache.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let first = tokio::time::timeout(crate::support::WAIT, response.chunk())
        .await
        .expect("first bytes")
        .unwrap()
        .expect("a chunk");
    let upstream_sent = fake.sent(&digest);
    assert!(!first.is_empty());
    assert!(
        upstream_sent < size as u64,
        "the client got its first bytes only after the upstream sent all {upstream_sent}"
    );
    let mut received = first.to_vec();
    while let Some(chunk) = response.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(received.len(), size);
    assert_eq!(sha256(&received), digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_upstream_body_is_streamed_to_the_client() {
    let fake = FakeUpstream::k8s_like();
    let size = 8 * 1024 * 1024;
    let blob = random_bytes(size);
    let digest = fake.put_blob("big", blob.clone());
    fake.pause_after(&digest, 1024 * 1024);
    let regcache = Regcache::with_upstream(fake.url());
    let mut response = client()
        .get(format!("{}/v2/big/blobs/{digest}", regcache.url()))
        .send()
        .await
        .unwrap();
    // The first MiB arrives while the upstream is stopped after sending it.
    let mut received = Vec::new();
    while received.len() < 1024 * 1024 {
        let chunk = tokio::time::timeout(crate::support::WAIT, response.chunk())
            .await
            .expect("bytes while the upstream is paused")
            .unwrap()
            .expect("a chunk");
        received.extend_from_slice(&chunk);
    }
    assert_eq!(fake.sent(&digest), 1024 * 1024);
    assert_eq!(&received[..], &blob[..received.len()]);
    fake.resume(&digest);
    while let Some(chunk) = response.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(sha256(&received), digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_does_not_cancel_the_fill() {
    let fake = FakeUpstream::k8s_like();
    let size = 8 * 1024 * 1024;
    let blob = random_bytes(size);
    let digest = fake.put_blob("big", blob.clone());
    fake.pause_after(&digest, 1024 * 1024);
    let regcache = Regcache::with_upstream(fake.url());
    let url = format!("{}/v2/big/blobs/{digest}", regcache.url());
    {
        let c = client();
        let mut response = c.get(&url).send().await.unwrap();
        let chunk = tokio::time::timeout(crate::support::WAIT, response.chunk())
            .await
            .expect("first bytes")
            .unwrap()
            .expect("a chunk");
        assert!(!chunk.is_empty());
        // Hang up: drop the response and its client (the connection closes).
    }
    fake.resume(&digest);
    let file = blob_file(regcache.data_dir(), &digest);
    wait_for("the fill to commit", || file.exists()).await;
    let got = get(&url).await;
    assert_eq!(got.ok_body(), &blob);
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, &digest), 1);
    assert_eq!(fake.hits_on(Host::Front, Method::GET, &digest), 1);
    assert_eq!(std::fs::read(&file).unwrap(), blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_negotiated_and_answer_if_none_match() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100);
    let regcache = Regcache::with_upstream(fake.url());
    let url = format!("{}/v2/pause/manifests/3.9", regcache.url());
    let c = client();
    // A client that only takes Docker lists gets 404, as distribution answers.
    send(c.get(&url).header(
        "accept",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ))
    .await
    .assert_oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    // containers/image: one media type per header line.
    let mut request = c.get(&url);
    for media_type in [
        OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ] {
        request = request.header("accept", media_type);
    }
    let got = send(request).await;
    assert_eq!(got.ok_body(), &image.manifest);
    assert_eq!(got.header("content-type"), Some(OCI_MANIFEST));
    // containerd: one line ending in */*.
    let got = send(c.get(&url).header(
        "accept",
        "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, */*",
    ))
    .await;
    assert_eq!(got.ok_body(), &image.manifest);
    // No Accept at all.
    assert_eq!(get(&url).await.ok_body(), &image.manifest);
    // If-None-Match with the digest: 304 with the digest, no body.
    let got = send(
        c.get(&url)
            .header("if-none-match", format!("\"{}\"", image.manifest_digest)),
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_MODIFIED);
    assert!(got.body.is_empty());
    assert_eq!(
        got.header("docker-content-digest"),
        Some(image.manifest_digest.as_str())
    );
    assert_eq!(
        got.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let got = send(c.get(&url).header("if-none-match", "\"sha256:other\"")).await;
    assert_eq!(got.status, StatusCode::OK);
    // One upstream GET for all of it.
    assert_eq!(fake.hits_on(Host::Front, Method::GET, "/manifests/3.9"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_empty_blob_is_pulled_and_cached() {
    let fake = FakeUpstream::k8s_like();
    let digest = fake.put_blob("pause", bytes::Bytes::new());
    assert_eq!(digest, sha256(b""));
    let regcache = Regcache::with_upstream(fake.url());
    let url = format!("{}/v2/pause/blobs/{digest}", regcache.url());
    for _ in 0..2 {
        let got = get(&url).await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(got.ok_body().is_empty());
        assert_eq!(got.header("content-length"), Some("0"));
        assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
    }
    let h = head(&url).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("content-length"), Some("0"));
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, &digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_credentials_never_reach_a_redirect_target() {
    let fake = FakeUpstream::k8s_like_with_token();
    let image = seed_image(&fake, "pause", "3.9", 1000);
    let password = "s3cret-pw-for-the-origin-only";
    let regcache = Regcache::builder()
        .config_toml(config_toml_with(
            &fake.url(),
            "5m",
            "30s",
            "username = \"robot\"\npassword_env = \"REGCACHE_IT_PASSWORD\"",
        ))
        .env("REGCACHE_IT_PASSWORD", password)
        .start();
    let base = regcache.url();
    let got = get(&format!("{base}/v2/pause/manifests/3.9")).await;
    assert_eq!(got.ok_body(), &image.manifest);
    let got = get(&format!("{base}/v2/pause/blobs/{}", image.layer().digest)).await;
    assert_eq!(got.ok_body(), &image.layer().bytes);
    // AR's challenge comes from a redirect target: its token is fetched
    // anonymously, and the password goes nowhere.
    assert_eq!(fake.hits_on(Host::Registry, Method::GET, "/v2/token"), 1);
    assert_eq!(
        fake.count(|s| s
            .authorization
            .as_deref()
            .is_some_and(|a| !a.starts_with("Bearer "))),
        0
    );
    assert!(!regcache.log().contains(password));
    assert!(!regcache.log().contains("fake-token-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_passed_through() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100);
    let regcache = Regcache::with_upstream(fake.url());
    let got = get(&format!(
        "{}/v2/pause/referrers/{}",
        regcache.url(),
        image.manifest_digest
    ))
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    let json: serde_json::Value = serde_json::from_slice(got.ok_body()).unwrap();
    assert_eq!(json["manifests"], serde_json::json!([]));
    assert_eq!(fake.hits_on(Host::Front, Method::GET, "/referrers/"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_repository_joining_a_fill_is_confirmed_first() {
    let fake = FakeUpstream::k8s_like();
    let size = 4 * 1024 * 1024;
    let blob = random_bytes(size);
    let digest = fake.put_blob("a", blob.clone());
    fake.link_blob("b", &digest);
    fake.pause_after(&digest, 1024 * 1024);
    let regcache = Regcache::with_upstream(fake.url());
    let base = regcache.url();
    let c = client();
    let first = c
        .get(format!("{base}/v2/a/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    // "c" does not have the blob upstream: 404 while the fill for "a" runs.
    let other = send(c.get(format!("{base}/v2/c/blobs/{digest}"))).await;
    other.assert_oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    // "b" does: it joins the fill after the upstream confirms with a HEAD.
    let second = c
        .get(format!("{base}/v2/b/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    fake.resume(&digest);
    assert_eq!(first.bytes().await.unwrap(), blob);
    assert_eq!(second.bytes().await.unwrap(), blob);
    assert_eq!(fake.hits_on(Host::Front, Method::HEAD, "/v2/b/blobs/"), 1);
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, &digest), 1);
    // Both repositories are now served from the cache without asking.
    let before = fake.total_hits();
    for repo in ["a", "b"] {
        let got = get(&format!("{base}/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(got.ok_body(), &blob);
    }
    assert_eq!(fake.total_hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_file_that_vanished_is_fetched_again() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100_000);
    let regcache = Regcache::with_upstream(fake.url());
    let url = format!("{}/v2/pause/blobs/{}", regcache.url(), image.layer().digest);
    assert_eq!(get(&url).await.ok_body(), &image.layer().bytes);
    let file = blob_file(regcache.data_dir(), &image.layer().digest);
    std::fs::remove_file(&file).unwrap();
    let got = get(&url).await;
    assert_eq!(got.ok_body(), &image.layer().bytes);
    assert_eq!(
        fake.hits_on(Host::Storage, Method::GET, &image.layer().digest),
        2
    );
    assert!(file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_blob_head_asks_upstream_without_fetching_bytes() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 123_457);
    let regcache = Regcache::with_upstream(fake.url());
    let url = format!("{}/v2/pause/blobs/{}", regcache.url(), image.layer().digest);
    let h = head(&url).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("content-length"), Some("123457"));
    assert_eq!(
        h.header("docker-content-digest"),
        Some(image.layer().digest.as_str())
    );
    assert!(h.body.is_empty());
    assert_eq!(
        fake.hits_on(Host::Storage, Method::GET, &image.layer().digest),
        0
    );
    assert!(!blob_file(regcache.data_dir(), &image.layer().digest).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha512_blob_is_verified_and_stored_under_its_algorithm() {
    let fake = FakeUpstream::k8s_like();
    let blob = random_bytes(300_000);
    let digest = format!(
        "sha512:{}",
        hex::encode(<sha2::Sha512 as sha2::Digest>::digest(&blob))
    );
    fake.put_content_with_digest("pause", &digest, Content::Bytes(blob.clone()));
    let regcache = Regcache::with_upstream(fake.url());
    let url = format!("{}/v2/pause/blobs/{digest}", regcache.url());
    let got = get(&url).await;
    assert_eq!(got.ok_body(), &blob);
    assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
    assert!(blob_file(regcache.data_dir(), &digest).exists());
    assert!(digest.starts_with("sha512:"));
    assert_eq!(get(&url).await.ok_body(), &blob);
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, &digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_without_content_length_upstream_is_streamed_and_verified() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 2 * 1024 * 1024 + 3);
    fake.set_no_content_length(true);
    let regcache = Regcache::with_upstream(fake.url());
    let url = format!("{}/v2/pause/blobs/{}", regcache.url(), image.layer().digest);
    // Wrong bytes without a length: the chunked answer must still not end cleanly.
    fake.set_wrong_bytes(&image.layer().digest, true);
    let got = get(&url).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body_error.is_some(), "a bad chunked body ended cleanly");
    fake.set_wrong_bytes(&image.layer().digest, false);
    let got = get(&url).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.ok_body(), &image.layer().bytes);
    // Cached: now with its exact length.
    let got = get(&url).await;
    assert_eq!(got.ok_body(), &image.layer().bytes);
    assert_eq!(
        got.header("content-length"),
        Some(image.layer().bytes.len().to_string().as_str())
    );
    assert_eq!(
        fake.hits_on(Host::Storage, Method::GET, &image.layer().digest),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_replaced() {
    let fake = FakeUpstream::k8s_like_with_token();
    let first = seed_image(&fake, "pause", "3.9", 100);
    let second = seed_image(&fake, "pause", "3.10", 100);
    let regcache = Regcache::with_upstream(fake.url());
    let base = regcache.url();
    let got = get(&format!("{base}/v2/pause/manifests/3.9")).await;
    assert_eq!(got.ok_body(), &first.manifest);
    assert_eq!(fake.hits_on(Host::Registry, Method::GET, "/v2/token"), 1);
    fake.revoke_tokens();
    let got = get(&format!("{base}/v2/pause/manifests/3.10")).await;
    assert_eq!(got.ok_body(), &second.manifest);
    let got = get(&format!("{base}/v2/pause/blobs/{}", second.layer().digest)).await;
    assert_eq!(got.ok_body(), &second.layer().bytes);
    assert_eq!(fake.hits_on(Host::Registry, Method::GET, "/v2/token"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_media_type_is_served_without_parameters() {
    const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
    let fake = FakeUpstream::k8s_like();
    let plain = fake.put_manifest("a", Some("v1"), DOCKER_V2, "{\"schemaVersion\":2}".into());
    // A registry that adds a parameter (the spec says it should not; some do).
    let with_params = fake.put_manifest(
        "a",
        Some("v2"),
        &format!("{DOCKER_V2}; charset=utf-8"),
        "{\"schemaVersion\":2,\"x\":1}".into(),
    );
    let regcache = Regcache::with_upstream(fake.url());
    let c = client();
    for (tag, digest) in [("v1", &plain), ("v2", &with_params)] {
        let got = send(
            c.get(format!("{}/v2/a/manifests/{tag}", regcache.url()))
                .header("accept", DOCKER_V2),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "{tag}: {got:?}");
        assert_eq!(got.header("content-type"), Some(DOCKER_V2), "{tag}");
        assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_are_never_forwarded() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 1000);
    let regcache = Regcache::with_upstream(fake.url());
    let c = client();
    for path in [
        "/v2/pause/manifests/3.9".to_owned(),
        format!("/v2/pause/blobs/{}", image.layer().digest),
        "/v2/pause/tags/list".to_owned(),
    ] {
        let got = send(
            c.get(format!("{}{path}", regcache.url()))
                .header("authorization", "Bearer client-secret")
                .header("cookie", "session=client-secret"),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "{path}");
    }
    assert!(fake.total_hits() > 0);
    assert_eq!(fake.count(|s| s.authorization.is_some()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_repository_names_pull_through() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "sig-storage/csi/provisioner", "v5.0.1", 50_000);
    let regcache = Regcache::with_upstream(fake.url());
    let base = format!("{}/v2/sig-storage/csi/provisioner", regcache.url());
    let got = get(&format!("{base}/manifests/v5.0.1")).await;
    assert_eq!(got.ok_body(), &image.manifest);
    let got = get(&format!("{base}/blobs/{}", image.layer().digest)).await;
    assert_eq!(got.ok_body(), &image.layer().bytes);
    let got = get(&format!("{base}/tags/list")).await;
    let json: serde_json::Value = serde_json::from_slice(got.ok_body()).unwrap();
    assert_eq!(json["name"], "sig-storage/csi/provisioner");
    assert_eq!(json["tags"], serde_json::json!(["v5.0.1"]));
    assert_eq!(
        fake.hits_on(
            Host::Registry,
            Method::GET,
            "/v2/k8s-artifacts-prod/images/sig-storage/csi/provisioner/manifests/v5.0.1"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_manifest_is_refused_and_not_cached() {
    let fake = FakeUpstream::k8s_like();
    let huge = format!(
        "{{\"schemaVersion\":2,\"pad\":\"{}\"}}",
        "x".repeat(5 * 1024 * 1024)
    );
    let digest = fake.put_manifest("a", Some("big"), OCI_MANIFEST, huge.into());
    let regcache = Regcache::with_upstream(fake.url());
    let got = get(&format!("{}/v2/a/manifests/big", regcache.url())).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{got:?}");
    assert!(!blob_file(regcache.data_dir(), &digest).exists());
}
