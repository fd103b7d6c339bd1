//! The upstream redirect policy through the real binary: a loopback upstream
//! may still redirect to loopback; a host outside `redirect_hosts` and a
//! `Location` with userinfo are refused with a 502 that names the cause, and
//! the target never sees a request. (The private-address rule for a
//! non-loopback upstream and the https→http downgrade are unit tests in
//! `upstream::redirect`: every listener here is on loopback.)
//!
//! Talks only to loopback; every server a test starts is dropped by the test.

use reqwest::StatusCode;

use crate::support::fake::FakeUpstream;
use crate::support::redirector::Redirector;
use crate::support::regcache::Regcache;
use crate::support::{config_toml_with, get, pull, seed_image};

fn start(upstream: &str, extra: &str) -> Regcache {
    Regcache::builder()
        .config_toml(config_toml_with(upstream, "5m", "30s", extra))
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_upstream_may_redirect_to_loopback_hosts_it_allows() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 4096);
    // 127.0.0.2 sends everything on to the fake's chain on 127.0.0.1.
    let front = Redirector::start("127.0.0.2", fake.url());
    let regcache = start(&front.url(), r#"redirect_hosts = ["127.0.0.1"]"#);
    pull(&regcache.url(), &image).await;
    assert!(front.hits() >= 3, "every request went through the front");
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_outside_redirect_hosts_is_refused() {
    let fake = FakeUpstream::k8s_like();
    seed_image(&fake, "pause", "3.9", 4096);
    let front = Redirector::start("127.0.0.2", fake.url());
    let regcache = start(
        &front.url(),
        r#"redirect_hosts = ["*.pkg.dev", "127.0.0.1:1"]"#,
    );
    let got = get(&format!("{}/v2/pause/manifests/3.9", regcache.url())).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{:?}", got.body);
    let body = String::from_utf8_lossy(&got.body);
    assert!(body.contains("redirect_hosts"), "{body}");
    assert_eq!(front.hits(), 1);
    assert_eq!(fake.total_hits(), 0, "the refused target saw nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_in_a_location_is_refused_and_never_sent() {
    let fake = FakeUpstream::k8s_like();
    seed_image(&fake, "pause", "3.9", 4096);
    let with_userinfo = fake.url().replace("http://", "http://mallory:s3cret@");
    let front = Redirector::start("127.0.0.2", with_userinfo);
    let regcache = start(&front.url(), "");
    let got = get(&format!("{}/v2/pause/manifests/3.9", regcache.url())).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{:?}", got.body);
    let body = String::from_utf8_lossy(&got.body);
    assert!(body.contains("userinfo"), "{body}");
    assert!(!body.contains("s3cret"), "{body}");
    assert_eq!(
        fake.total_hits(),
        0,
        "no request, so no Basic header either"
    );
    assert!(!regcache.log().contains("s3cret"));
}
