//! Fail fast, fail safe (issue 16) against Debian's `docker-registry` behind a
//! fault-injecting proxy ([`FaultProxy`]): a cached tag past its TTL answers at
//! once whatever the upstream does (hang, 429, HTML 200); misses fail fast
//! while the upstream's circuit is open, and `Retry-After` is honoured; an HTML
//! page is never cached as a manifest; a blob fill shared by two repositories
//! or two upstreams never hands one a 404 or a link it was not confirmed for.
//! (The k8s-like fake stands in where an answer's Content-Type must be chosen.)
//!
//! The timing tables are printed (eprintln) so they can be quoted; the
//! assertions hold them to every request under 1 s.
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{Method, StatusCode};

use crate::support::commands::ok_cmd;
use crate::support::docker_registry::DockerRegistry;
use crate::support::fake::{FakeUpstream, Host};
use crate::support::fault_proxy::{Fault, FaultProxy, HTML_PAGE};
use crate::support::images::{self, Blob, Image};
use crate::support::regcache::Regcache;
use crate::support::{config_toml_with, get, random_bytes, sha256};

/// A short TTL, so a test can wait it out.
const TAG_TTL: &str = "1s";
/// What regcache waits for a stalled upstream (the default is 60 s).
const IDLE_TIMEOUT: &str = "5s";
/// How long a client may wait for one answer in these tests.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);

/// regcache on `upstream` (`revalidate_timeout` left at its default, 5 s).
fn regcache_for(upstream: &str, extra: &str) -> Regcache {
    Regcache::builder()
        .config_toml(config_toml_with(upstream, TAG_TTL, IDLE_TIMEOUT, extra))
        .start()
}

/// Runs the blocking setup (processes, pushes, the proxy's own runtime) off
/// the test's runtime threads.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// docker-registry with `image`, a fault proxy in front, regcache on the proxy.
fn setup(image: &Image) -> (DockerRegistry, FaultProxy, Regcache) {
    blocking(|| {
        let registry = DockerRegistry::start();
        registry.push(image);
        let proxy = FaultProxy::start(&registry.url());
        let regcache = regcache_for(&proxy.url(), "");
        (registry, proxy, regcache)
    })
}

fn timed_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .expect("client")
}

/// One timed GET: status (0 when the client gave up) and seconds.
async fn timed_get(url: &str, accept: &str) -> (u16, f64, Bytes) {
    let started = Instant::now();
    let sent = timed_client()
        .get(url)
        .header("accept", accept)
        .send()
        .await;
    let (status, body) = match sent {
        Ok(r) => (r.status().as_u16(), r.bytes().await.unwrap_or_default()),
        Err(_) => (0, Bytes::new()),
    };
    (status, started.elapsed().as_secs_f64(), body)
}

fn manifest_url(regcache: &Regcache, image: &Image) -> String {
    format!(
        "{}/v2/{}/manifests/{}",
        regcache.url(),
        image.repo,
        image.tag
    )
}

fn top_manifest(image: &Image) -> &images::Manifest {
    image
        .manifests
        .iter()
        .find(|m| m.digest == image.top)
        .expect("top manifest")
}

/// Sequential then concurrent GETs of a cached tag past its TTL under `fault`;
/// returns the table's row, the slowest time and how many answers were not
/// the cached manifest.
async fn cached_tag_times(fault: Fault, label: &str) -> (String, f64, usize) {
    let image = images::oci_three_layers("team/app", "v1", 16);
    let (_registry, proxy, regcache) = setup(&image);
    let url = manifest_url(&regcache, &image);
    let top = top_manifest(&image);
    let (status, _, body) = timed_get(&url, &top.media_type).await;
    assert_eq!((status, &body), (200, &top.bytes));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    proxy.set(fault);
    let mut sequential = Vec::new();
    let mut wrong = 0;
    for _ in 0..4 {
        let (status, secs, body) = timed_get(&url, &top.media_type).await;
        wrong += usize::from((status, &body) != (200, &top.bytes));
        sequential.push(secs);
    }
    let concurrent: Vec<_> = (0..5)
        .map(|_| {
            let (url, accept) = (url.clone(), top.media_type.clone());
            tokio::spawn(async move { timed_get(&url, &accept).await })
        })
        .collect();
    let mut parallel = Vec::new();
    for task in concurrent {
        let (status, secs, body) = task.await.expect("client task");
        wrong += usize::from((status, &body) != (200, &top.bytes));
        parallel.push(secs);
    }
    let slowest = sequential
        .iter()
        .chain(&parallel)
        .copied()
        .fold(0.0, f64::max);
    let show = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let row = format!(
        "| {label:<24} | {:<27} | {:<33} | {:>17} | {wrong:>13} |",
        show(&sequential),
        show(&parallel),
        proxy.received()
    );
    (row, slowest, wrong)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_tag_past_its_ttl_answers_at_once_whatever_the_upstream_does() {
    let faults = [
        (Fault::Hang, "hang (accept, no answer)"),
        (
            Fault::TooManyRequests {
                retry_after_secs: 30,
            },
            "429 Retry-After: 30",
        ),
        (Fault::Html200, "HTML 200"),
        (Fault::None, "healthy"),
    ];
    let mut table = vec![
        format!("idle_timeout={IDLE_TIMEOUT}, tag_ttl={TAG_TTL}; seconds per request"),
        "| upstream                 | 4 sequential GETs (s)       | 5 concurrent GETs (s)             | upstream requests | wrong answers |".to_owned(),
    ];
    let (mut slowest, mut wrong) = (0.0f64, 0);
    for (fault, label) in faults {
        let (row, worst, wrong_here) = cached_tag_times(fault, label).await;
        table.push(row);
        slowest = slowest.max(worst);
        wrong += wrong_here;
    }
    eprintln!("{}", table.join("\n"));
    assert!(slowest < 1.0, "a cached tag took {slowest:.2} s");
    assert_eq!(wrong, 0, "answers other than the cached manifest");
}

/// The default upstream's circuit as `regcache stats --json` shows it, once
/// the server's statistics file (rewritten every 2 s) says it is open.
async fn open_circuit_in_stats(regcache: &Regcache) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = ok_cmd(regcache.data_dir(), &["stats", "--json"]).await;
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        let circuit = stats["server"]["upstream_health"]["registry.k8s.io"].clone();
        if circuit["circuit"] == "open" {
            return circuit;
        }
        assert!(
            Instant::now() < deadline,
            "stats never showed the circuit open: {stats:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A timed GET that must be an OCI error with `status`; its message and seconds.
async fn timed_error(url: &str, status: u16) -> (String, f64) {
    let (got, secs, body) = timed_get(url, "*/*").await;
    let message = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(got, status, "{url}: {message}");
    (message, secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_against_a_hanging_upstream_share_one_timeout_then_fail_fast() {
    let image = images::oci_three_layers("team/app", "v1", 19);
    let (_registry, proxy, regcache) = setup(&image);
    let top = top_manifest(&image);
    let cached = manifest_url(&regcache, &image);
    assert_eq!(timed_get(&cached, &top.media_type).await.0, 200);
    let primed = proxy.received();
    proxy.set(Fault::Hang);
    let cold = |tag: &str| format!("{}/v2/team/app/manifests/{tag}", regcache.url());

    // Five clients miss one tag at once: one upstream request, whose timeout
    // answers all five (504), none waiting behind another's.
    let herd: Vec<_> = (0..5)
        .map(|_| {
            let url = cold("cold-1");
            tokio::spawn(async move { timed_error(&url, 504).await.1 })
        })
        .collect();
    let mut herd_times = Vec::new();
    for task in herd {
        herd_times.push(task.await.expect("client task"));
    }
    eprintln!(
        "hanging upstream, 5 concurrent misses of one tag (idle_timeout {IDLE_TIMEOUT}): {herd_times:.2?} s, \
         {} upstream requests",
        proxy.received() - primed
    );
    assert_eq!(
        proxy.received() - primed,
        1,
        "one upstream request for the herd"
    );
    // Two more timeouts (three in a row) open the circuit.
    let (_, second) = timed_error(&cold("cold-2"), 504).await;
    let (_, third) = timed_error(&cold("cold-3"), 504).await;
    let received = proxy.received();
    let opened = regcache.wait_for_log("upstream circuit open");
    assert!(opened.contains("failures=3"), "{opened}");

    // Open: misses fail at once with the cause, nothing is sent; the cached
    // tag (past its TTL) is still served at once.
    let mut fast = Vec::new();
    for i in 0..4 {
        let (message, secs) = timed_error(&cold(&format!("cold-fast-{i}")), 502).await;
        assert!(
            message.contains("circuit open") && message.contains("timed out"),
            "{message}"
        );
        fast.push(secs);
    }
    let (status, cached_secs, body) = timed_get(&cached, &top.media_type).await;
    assert_eq!((status, &body), (200, &top.bytes));
    let circuit = open_circuit_in_stats(&regcache).await;
    assert!(
        circuit["last_failure"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{circuit}"
    );
    let stats = ok_cmd(regcache.data_dir(), &["stats"]).await;
    eprintln!(
        "hanging upstream, misses: then {second:.2} s and {third:.2} s; circuit open: {fast:.2?} s, \
         the cached tag {cached_secs:.2} s\n{stats}"
    );
    assert!(herd_times.iter().all(|t| *t < 9.0), "{herd_times:?}");
    assert!(
        fast.iter().all(|t| *t < 1.0) && cached_secs < 1.0,
        "{fast:?}"
    );
    assert!(
        proxy.received() <= received + 1,
        "at most one probe was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_honoured_and_one_probe_closes_the_circuit() {
    let image = images::oci_three_layers("team/app", "v1", 20);
    let cold = images::oci_three_layers("team/cold", "v1", 21);
    let (registry, proxy, regcache) = setup(&image);
    blocking(|| registry.push(&cold));
    let top = top_manifest(&image);
    let cached = manifest_url(&regcache, &image);
    assert_eq!(timed_get(&cached, &top.media_type).await.0, 200);
    proxy.set(Fault::TooManyRequests {
        retry_after_secs: 3,
    });
    let cold_url = manifest_url(&regcache, &cold);
    let limited_at = Instant::now();
    let first = get(&cold_url).await;
    first.assert_oci_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    assert_eq!(first.header("retry-after"), Some("3"));
    let received = proxy.received();

    // Until Retry-After has passed: nothing is sent upstream; misses are a 429
    // with what is left of it, cached content is served.
    for _ in 0..10 {
        let got = get(&cold_url).await;
        got.assert_oci_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
        let left: u64 = got.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=3).contains(&left), "{left}");
        let (status, _, body) = timed_get(&cached, &top.media_type).await;
        assert_eq!((status, &body), (200, &top.bytes));
    }
    eprintln!(
        "429 with Retry-After: 3: {} upstream requests, then {} more in the next 20 client requests",
        received,
        proxy.received() - received
    );
    assert_eq!(proxy.received(), received, "the upstream was left alone");
    let circuit = open_circuit_in_stats(&regcache).await;
    assert!(
        circuit["last_failure"].as_str().unwrap().contains("429"),
        "{circuit}"
    );

    // Past Retry-After, with the upstream healthy again: one probe closes it.
    proxy.set(Fault::None);
    tokio::time::sleep(
        (limited_at + Duration::from_millis(3200)).saturating_duration_since(Instant::now()),
    )
    .await;
    let cold_top = top_manifest(&cold);
    let (status, _, body) = timed_get(&cold_url, &cold_top.media_type).await;
    assert_eq!((status, &body), (200, &cold_top.bytes));
    regcache.wait_for_log("upstream circuit closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_page_is_never_taken_for_a_manifest() {
    let image = images::oci_three_layers("team/app", "v1", 17);
    let cold = images::oci_three_layers("team/cold", "v1", 18);
    let (registry, proxy, regcache) = setup(&image);
    blocking(|| registry.push(&cold));
    let url = manifest_url(&regcache, &image);
    let top = top_manifest(&image);
    let (status, _, body) = timed_get(&url, &top.media_type).await;
    assert_eq!((status, &body), (200, &top.bytes));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    proxy.set(Fault::Html200);

    // The stale tag, asked while the upstream answers HTML: the cached manifest,
    // before and after the revalidation that met the page.
    let mut findings = Vec::new();
    for attempt in 1..=3 {
        let got = timed_client()
            .get(&url)
            .header("accept", &top.media_type)
            .send()
            .await
            .expect("GET");
        let status = got.status();
        let content_type = got.headers().get("content-type").cloned();
        let body = got.bytes().await.expect("body");
        findings.push(format!(
            "cached tag GET #{attempt}: {status} {content_type:?} ({} bytes, the cached manifest: {})",
            body.len(),
            body == top.bytes
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The revalidation met the page, and kept the cached mapping.
    let log = regcache.wait_for_log("tag revalidation failed; the cached mapping stays");
    assert!(log.contains("which is not a manifest"), "{log}");
    // A tag never cached: a 502 naming the upstream's status and content type.
    let cold_url = manifest_url(&regcache, &cold);
    let got = get(&cold_url).await;
    let message = String::from_utf8_lossy(&got.body).into_owned();
    findings.push(format!("cold tag GET: {} {message}", got.status));
    eprintln!("HTML 200 from the upstream:\n{}", findings.join("\n"));
    for finding in &findings[..3] {
        assert!(
            finding.contains("200 OK") && finding.ends_with("true)"),
            "{finding}"
        );
    }
    got.assert_oci_error(StatusCode::BAD_GATEWAY, "UNKNOWN");
    assert!(
        message.contains("200") && message.contains("text/html"),
        "{message}"
    );
    assert!(
        !message.contains(HTML_PAGE),
        "the page itself is not passed on"
    );

    // Nothing of it was cached: once the upstream is healthy, the real manifest.
    proxy.set(Fault::None);
    let cold_top = top_manifest(&cold);
    let (status, _, body) = timed_get(&cold_url, &cold_top.media_type).await;
    assert_eq!((status, &body), (200, &cold_top.bytes));
}

/// `n` distinct random blobs, pushed to `repo` of `registry`.
fn push_blobs(registry: &DockerRegistry, repo: &str, n: usize) -> Vec<Blob> {
    let blobs: Vec<Blob> = (0..n)
        .map(|_| {
            let bytes = random_bytes(200 * 1024);
            Blob {
                digest: sha256(&bytes),
                bytes,
            }
        })
        .collect();
    registry.push(&Image {
        repo: repo.to_owned(),
        tag: String::new(),
        blobs: blobs.clone(),
        manifests: Vec::new(),
        top: String::new(),
        platforms: Vec::new(),
    });
    blobs
}

/// GETs of `paths` under `base` at once (the first sent first); status and
/// whether the body was `blob`'s bytes, for each.
async fn race(base: &str, paths: [String; 2], blob: &Blob) -> Vec<(u16, bool)> {
    let tasks: Vec<_> = paths
        .into_iter()
        .map(|path| {
            let url = format!("{base}{path}");
            tokio::spawn(async move {
                let (status, _, body) = timed_get(&url, "*/*").await;
                (status, body)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        let (status, body) = task.await.expect("client task");
        answers.push((status, body == blob.bytes));
    }
    answers
}

const TRIALS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_without_the_blob_never_fails_a_concurrent_pull_of_it() {
    let registry = blocking(DockerRegistry::start);
    let blobs = blocking(|| push_blobs(&registry, "team/holder", TRIALS));
    let regcache = regcache_for(&registry.url(), "");
    let base = format!("{}/v2", regcache.url());
    let (mut holder_failed, mut other_served, mut other_later) = (0, 0, 0);
    for (trial, blob) in blobs.iter().enumerate() {
        let holder = format!("/team/holder/blobs/{}", blob.digest);
        let other = format!("/team/other/blobs/{}", blob.digest);
        // Either may start the fill; the other joins it.
        let answers = if trial % 2 == 0 {
            let a = race(&base, [other.clone(), holder.clone()], blob).await;
            vec![a[1], a[0]]
        } else {
            race(&base, [holder.clone(), other.clone()], blob).await
        };
        holder_failed += usize::from(answers[0] != (200, true));
        other_served += usize::from(answers[1].0 != 404);
        let (status, _, _) = timed_get(&format!("{base}{other}"), "*/*").await;
        other_later += usize::from(status != 404);
    }
    eprintln!(
        "two repositories racing on one digest, {TRIALS} trials: the holder's pull failed {holder_failed}, \
         the other repository was served {other_served}, and afterwards {other_later}"
    );
    assert_eq!((holder_failed, other_served, other_later), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_upstreams_racing_on_one_digest_link_only_what_each_confirmed() {
    let (one, two) = blocking(|| (DockerRegistry::start(), DockerRegistry::start()));
    let blobs = blocking(|| push_blobs(&one, "team/a", TRIALS));
    blocking(|| {
        two.push(&Image {
            repo: "team/b".to_owned(),
            tag: String::new(),
            blobs: blobs.clone(),
            manifests: Vec::new(),
            top: String::new(),
            platforms: Vec::new(),
        })
    });
    let second = format!(
        "[[upstream]]\nname = \"ghcr.io\"\nurl = \"{}\"\n",
        two.url()
    );
    let regcache = regcache_for(&one.url(), &second);
    let base = format!("{}/v2", regcache.url());
    let (mut failed, mut leaked) = (0, 0);
    for (trial, blob) in blobs.iter().enumerate() {
        let via_one = format!("/team/a/blobs/{}", blob.digest);
        let via_two = format!("/ghcr.io/team/b/blobs/{}", blob.digest);
        let paths = if trial % 2 == 0 {
            [via_one, via_two]
        } else {
            [via_two, via_one]
        };
        let answers = race(&base, paths, blob).await;
        failed += answers.iter().filter(|a| **a != (200, true)).count();
        // Each upstream's other repository does not hold the blob.
        for wrong in [
            format!("/team/b/blobs/{}", blob.digest),
            format!("/ghcr.io/team/a/blobs/{}", blob.digest),
        ] {
            let (status, _, _) = timed_get(&format!("{base}{wrong}"), "*/*").await;
            leaked += usize::from(status != 404);
        }
    }
    eprintln!(
        "two upstreams racing on one digest, {TRIALS} trials: {failed} failed pulls, \
         {leaked} answers from a repository that does not hold the blob"
    );
    assert_eq!((failed, leaked), (0, 0));
}

/// The other two checks on a manifest answer, against the k8s-like fake (which
/// serves any Content-Type it is given): a generic type is taken only for a
/// body shaped like a manifest, and nothing over 4 MiB is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_answer_is_taken_only_with_a_manifest_shape_and_at_most_4_mib() {
    let fake = FakeUpstream::k8s_like();
    let oci = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
    let generic = fake.put_manifest("app", Some("generic"), "application/json", oci.into());
    let error_body = r#"{"errors":[{"code":"UNKNOWN","message":"maintenance"}]}"#;
    fake.put_manifest("app", Some("error"), "application/json", error_body.into());
    let padding = "x".repeat(4 * 1024 * 1024);
    let huge =
        format!(r#"{{"schemaVersion":2,"manifests":[],"annotations":{{"pad":"{padding}"}}}}"#);
    let oci_index = "application/vnd.oci.image.index.v1+json";
    fake.put_manifest("app", Some("huge"), oci_index, huge.into());
    let regcache = Regcache::with_upstream(fake.url());
    let url = |tag: &str| format!("{}/v2/app/manifests/{tag}", regcache.url());

    // application/json, but an OCI manifest by its own mediaType: cached as one.
    let got = get(&url("generic")).await;
    assert_eq!(got.ok_body().as_ref(), oci.as_bytes());
    assert_eq!(got.header("content-type"), Some(images::OCI_MANIFEST));
    assert_eq!(got.header("docker-content-digest"), Some(generic.as_str()));
    // A JSON error sent with 200, and a manifest over 4 MiB: 502, not cached
    // (asked again upstream each time).
    for tag in ["error", "huge"] {
        for _ in 0..2 {
            let got = get(&url(tag)).await;
            got.assert_oci_error(StatusCode::BAD_GATEWAY, "UNKNOWN");
            let message = String::from_utf8_lossy(&got.body).into_owned();
            let expected = if tag == "error" {
                "application/json"
            } else {
                "larger than 4194304"
            };
            assert!(message.contains(expected), "{tag}: {message}");
        }
        let path = format!("/manifests/{tag}");
        assert_eq!(fake.hits_on(Host::Front, Method::GET, &path), 2, "{tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_circuit_threshold_of_one_opens_after_the_first_failure() {
    let fake = FakeUpstream::k8s_like();
    let circuit =
        "circuit_failures = 1\ncircuit_backoff_min = \"30s\"\ncircuit_backoff_max = \"30s\"";
    let regcache = regcache_for(&fake.url(), circuit);
    fake.set_fail_status(Some(503));
    let cold = |tag: &str| format!("{}/v2/team/app/manifests/{tag}", regcache.url());

    let (status, _, _) = timed_get(&cold("first"), "*/*").await;
    assert_eq!(status, 502, "the upstream's 503");
    let opened = regcache.wait_for_log("upstream circuit open");
    assert!(opened.contains("failures=1"), "{opened}");

    // Open: the next miss fails at once with the cause, and nothing is sent.
    let sent = fake.total_hits();
    let (message, secs) = timed_error(&cold("second"), 502).await;
    assert!(message.contains("circuit open"), "{message}");
    assert!(secs < 1.0, "{secs}");
    assert_eq!(fake.total_hits(), sent);
    let circuit = open_circuit_in_stats(&regcache).await;
    assert_eq!(circuit["consecutive_failures"], 1, "{circuit}");
}
