//! Connection hygiene through the real binary with raw-socket clients: idle
//! connections beyond `max_connections` do not stop `GET /v2/`, busy ones get
//! a 503 with an OCI body, half-sent requests are closed after
//! `header_read_timeout`, a connection ends after `max_requests_per_connection`,
//! shutdown is bounded by `shutdown_timeout`, 414/431 carry OCI bodies.
//!
//! Talks only to loopback; every server and socket a test opens is dropped by it.

use std::time::Duration;

use reqwest::StatusCode;

use crate::support::fake::{FakeUpstream, Host};
use crate::support::regcache::Regcache;
use crate::support::sockets::{closed_by_server, half_sent, idle, request};
use crate::support::{client, config_toml, get, seed_image};

/// regcache with `server_keys` added to `[server]`.
fn start(fake: &FakeUpstream, server_keys: &str) -> Regcache {
    let text = config_toml(&fake.url(), "5m").replacen(
        "[server]\n",
        &format!("[server]\n{server_keys}\n"),
        1,
    );
    Regcache::builder().config_toml(text).start()
}

fn assert_oci_body(body: &[u8]) {
    let json: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
    assert!(json["errors"][0]["code"].is_string(), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_limit_do_not_stop_the_version_check() {
    let fake = FakeUpstream::k8s_like();
    let regcache = start(&fake, "max_connections = 20\nkeepalive_timeout = \"1h\"");
    let mut parked = idle(regcache.addr(), 60);
    let got = get(&format!("{}/v2/", regcache.url())).await;
    assert_eq!(got.status, StatusCode::OK);
    // The first 20 held every slot when the 21st came: they were reclaimed.
    for (i, stream) in parked.iter_mut().take(20).enumerate() {
        assert!(
            closed_by_server(stream, Duration::from_secs(10)),
            "idle connection {i} still open"
        );
    }
    assert!(regcache.log().contains("open-file limit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connections_at_the_limit_leave_the_next_one_a_503() {
    let fake = FakeUpstream::k8s_like();
    seed_image(&fake, "pause", "3.9", 1024);
    seed_image(&fake, "pause", "3.10", 1024);
    let regcache = start(&fake, "max_connections = 2");
    fake.hold_manifests(true);
    let held: Vec<_> = ["3.9", "3.10"]
        .map(|tag| format!("{}/v2/pause/manifests/{tag}", regcache.url()))
        .into_iter()
        .map(|url| tokio::spawn(crate::support::send(client().get(url))))
        .collect();
    crate::support::wait_for("both manifest requests upstream", || {
        fake.count(|s| s.host == Host::Registry && s.path.contains("/manifests/")) >= 2
    })
    .await;
    let mut third = std::net::TcpStream::connect(regcache.addr()).unwrap();
    let refused = request(&mut third, "/v2/", "");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_oci_body(&refused.body);
    fake.hold_manifests(false);
    for request in held {
        assert_eq!(request.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(
        get(&format!("{}/v2/", regcache.url())).await.status,
        StatusCode::OK
    );
}

#[test]
fn half_sent_requests_are_closed_after_the_header_read_timeout() {
    let fake = FakeUpstream::k8s_like();
    let regcache = start(&fake, "header_read_timeout = \"1s\"");
    let mut streams: Vec<_> = (0..50).map(|_| half_sent(regcache.addr())).collect();
    for stream in &mut streams {
        assert!(closed_by_server(stream, Duration::from_secs(20)));
    }
}

#[test]
fn a_connection_ends_after_its_request_limit() {
    let fake = FakeUpstream::k8s_like();
    let regcache = start(&fake, "max_requests_per_connection = 3");
    let mut stream = std::net::TcpStream::connect(regcache.addr()).unwrap();
    for n in 1..=3 {
        let got = request(&mut stream, "/v2/", "");
        assert_eq!(got.status, 200);
        let close = got.header("connection") == Some("close");
        assert_eq!(close, n == 3, "request {n}");
    }
    assert!(closed_by_server(&mut stream, Duration::from_secs(10)));
}

#[test]
fn shutdown_is_bounded_by_open_connections() {
    let fake = FakeUpstream::k8s_like();
    let regcache = start(
        &fake,
        "header_read_timeout = \"1h\"\nkeepalive_timeout = \"1h\"\nshutdown_timeout = \"2s\"",
    );
    let _half: Vec<_> = (0..200).map(|_| half_sent(regcache.addr())).collect();
    let _idle = idle(regcache.addr(), 200);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &regcache.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    regcache.wait_for_log("stopped");
}

#[test]
fn oversized_targets_and_headers_get_oci_bodies() {
    let fake = FakeUpstream::k8s_like();
    let regcache = start(&fake, "");
    let mut stream = std::net::TcpStream::connect(regcache.addr()).unwrap();
    let long = format!("/v2/{}/manifests/latest", "a".repeat(9000));
    let got = request(&mut stream, &long, "");
    assert_eq!(got.status, 414);
    assert_oci_body(&got.body);
    let mut stream = std::net::TcpStream::connect(regcache.addr()).unwrap();
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let got = request(&mut stream, "/v2/", &many);
    assert_eq!(got.status, 431);
    assert_oci_body(&got.body);
}
