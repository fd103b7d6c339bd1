//! Upstream TLS and forward proxies, as restricted sites have them: the
//! registry.k8s.io-like chain (307 → relative 302 → storage) served over TLS
//! on 127.0.0.1/.2/.3 with a CA made for the test, over HTTP/2 and over
//! HTTP/1.1; certificates that are untrusted, for another address, or expired,
//! each failing with a cause an operator can act on; an upstream that demands
//! a client certificate (given, missing, or issued by a CA it does not trust,
//! each refusal named); an upstream that never finishes its handshake (504);
//! and Debian's tinyproxy allowing CONNECT only to the chain's hosts,
//! configured in the file or through `HTTPS_PROXY`, with and without the
//! credentials it demands.

use reqwest::StatusCode;

use crate::support::fake::{FakeUpstream, Host};
use crate::support::regcache::Regcache;
use crate::support::tinyproxy::Tinyproxy;
use crate::support::tls::{Alpn, FAKE_IPS, TestCa};
use crate::support::{Image, config_toml_with, get, seed_image};

/// A TLS chain presenting a certificate of `ca` for its three addresses.
fn tls_chain(ca: &TestCa, alpn: Alpn) -> (FakeUpstream, Image) {
    let leaf = ca.leaf(&FAKE_IPS);
    let fake = FakeUpstream::k8s_like_tls(leaf.server_config(alpn));
    let image = seed_image(&fake, "pause", "3.10", 300 * 1024);
    (fake, image)
}

/// regcache for `fake`, with `extra` lines in its `[[upstream]]` table and
/// `before` ahead of the whole file (for `[upstream_defaults]`).
fn regcache(fake: &FakeUpstream, extra: &str, before: &str) -> Regcache {
    let config = config_toml_with(&fake.url(), "5m", "30s", extra);
    Regcache::builder()
        .config_toml(format!("{before}\n{config}"))
        .start()
}

fn ca_line(ca: &TestCa) -> String {
    format!("ca_file = \"{}\"", ca.ca_file().display())
}

/// `host:port` of one of the fake's hosts.
fn host_port(fake: &FakeUpstream, host: Host) -> String {
    fake.host_url(host)
        .trim_start_matches("https://")
        .to_owned()
}

/// Pulls the manifest by tag and the layer through `rc`; checks the bytes.
async fn pull(rc: &Regcache, image: &Image) {
    let manifest = get(&format!("{}/v2/pause/manifests/{}", rc.url(), image.tag)).await;
    assert_eq!(
        manifest.status,
        StatusCode::OK,
        "{:?}\n{}",
        manifest.body,
        rc.log()
    );
    assert_eq!(manifest.ok_body(), &image.manifest);
    let layer = get(&format!(
        "{}/v2/pause/blobs/{}",
        rc.url(),
        image.layer().digest
    ))
    .await;
    assert_eq!(layer.status, StatusCode::OK, "{:?}", layer.body);
    assert_eq!(layer.ok_body(), &image.layer().bytes);
}

/// The OCI error message of a failed manifest request.
async fn manifest_error(rc: &Regcache, image: &Image) -> (StatusCode, String) {
    let got = get(&format!("{}/v2/pause/manifests/{}", rc.url(), image.tag)).await;
    assert!(!got.status.is_success(), "expected a failure");
    let json: serde_json::Value = serde_json::from_slice(&got.body).expect("OCI JSON");
    let message = json["errors"][0]["message"].as_str().unwrap_or_default();
    (got.status, message.to_owned())
}

#[tokio::test]
async fn pulls_over_http2_through_all_three_tls_hosts() {
    let ca = TestCa::new("h2");
    let (fake, image) = tls_chain(&ca, Alpn::H2);
    let rc = regcache(&fake, &ca_line(&ca), "");
    pull(&rc, &image).await;
    let seen = fake.requests();
    for host in [Host::Front, Host::Registry, Host::Storage] {
        assert!(seen.iter().any(|s| s.host == host), "{host:?} not reached");
    }
    assert!(
        seen.iter().all(|s| s.version == http::Version::HTTP_2),
        "{seen:?}"
    );
}

#[tokio::test]
async fn pulls_from_an_http1_only_tls_upstream() {
    let ca = TestCa::new("h1");
    let (fake, image) = tls_chain(&ca, Alpn::H1Only);
    let rc = regcache(&fake, &ca_line(&ca), "");
    pull(&rc, &image).await;
    let seen = fake.requests();
    assert!(seen.iter().any(|s| s.host == Host::Storage));
    assert!(
        seen.iter().all(|s| s.version == http::Version::HTTP_11),
        "{seen:?}"
    );
}

#[tokio::test]
async fn an_untrusted_certificate_names_its_issuer_and_ca_file() {
    let ca = TestCa::new("untrusted");
    let (fake, image) = tls_chain(&ca, Alpn::H2);
    let rc = regcache(&fake, "", "");
    let (status, message) = manifest_error(&rc, &image).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{message}");
    let front = host_port(&fake, Host::Front);
    assert!(
        message.contains(&format!("TLS certificate of {front} is not trusted")),
        "{message}"
    );
    assert!(message.contains(&ca.name), "issuer missing: {message}");
    assert!(message.contains("ca_file"), "{message}");
    assert_eq!(
        fake.total_hits(),
        0,
        "no request may pass an untrusted handshake"
    );
    // The access log line is written when the response has ended.
    rc.wait_for_log(&ca.name);
}

#[tokio::test]
async fn a_certificate_for_another_address_is_a_name_mismatch() {
    let ca = TestCa::new("wrong-name");
    let leaf = ca.leaf(&["127.0.0.9", "elsewhere.example"]);
    assert_handshake_refused(&ca, leaf.server_config(Alpn::H2), |front| {
        format!("TLS certificate is not valid for {front}")
    })
    .await;
}

#[tokio::test]
async fn an_expired_certificate_says_expired() {
    let ca = TestCa::new("expired");
    let leaf = ca.expired_leaf(&FAKE_IPS);
    assert_handshake_refused(&ca, leaf.server_config(Alpn::H2), |front| {
        format!("TLS certificate of {front} has expired")
    })
    .await;
}

/// The chain served with `server` while regcache trusts `ca`: the pull is a
/// 502 whose message names the cause (`cause` of the front host), and no
/// request gets past the handshake.
async fn assert_handshake_refused(
    ca: &TestCa,
    server: std::sync::Arc<rustls::ServerConfig>,
    cause: impl Fn(&str) -> String,
) {
    let fake = FakeUpstream::k8s_like_tls(server);
    let image = seed_image(&fake, "pause", "3.10", 1024);
    let rc = regcache(&fake, &ca_line(ca), "");
    let (status, message) = manifest_error(&rc, &image).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{message}");
    let expected = cause(&host_port(&fake, Host::Front));
    assert!(message.contains(&expected), "{message}");
    assert_eq!(fake.total_hits(), 0);
}

/// The chain demanding a client certificate issued by `client_ca`.
fn mtls_chain(ca: &TestCa, client_ca: &TestCa) -> (FakeUpstream, Image) {
    let leaf = ca.leaf(&FAKE_IPS);
    let fake = FakeUpstream::k8s_like_tls(leaf.server_config_with_client_auth(client_ca));
    let image = seed_image(&fake, "pause", "3.10", 64 * 1024);
    (fake, image)
}

/// `[upstream_defaults]` giving a client certificate of `ca`, written in `dir`.
fn client_cert_defaults(ca: &TestCa, dir: &std::path::Path) -> String {
    let (cert, key) = ca.client_leaf("regcache").write(dir, "client");
    format!(
        "[upstream_defaults]\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

#[tokio::test]
async fn an_upstream_demanding_a_client_certificate_gets_the_configured_one() {
    let ca = TestCa::new("mtls-server");
    let client_ca = TestCa::new("mtls-client");
    let (fake, image) = mtls_chain(&ca, &client_ca);
    let dir = tempfile::tempdir().unwrap();
    // Given once for every upstream, in [upstream_defaults].
    let with = regcache(
        &fake,
        &ca_line(&ca),
        &client_cert_defaults(&client_ca, dir.path()),
    );
    pull(&with, &image).await;
}

// Under TLS 1.3 the server checks our certificate after our side of the
// handshake is done: its refusal is an alert read with the response.

#[tokio::test]
async fn an_upstream_wanting_a_client_certificate_we_lack_says_so_and_names_the_keys() {
    let ca = TestCa::new("mtls-none");
    let (fake, image) = mtls_chain(&ca, &TestCa::new("mtls-none-client"));
    let rc = regcache(&fake, &ca_line(&ca), "");
    let (status, message) = manifest_error(&rc, &image).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{message}");
    let front = host_port(&fake, Host::Front);
    let cause = format!("{front} requires a TLS client certificate and none was sent");
    assert!(message.contains(&cause), "{message}");
    assert!(
        message.contains("set client_cert_file and client_key_file"),
        "{message}"
    );
    assert_eq!(fake.total_hits(), 0);
    // The access log line is written when the response has ended.
    rc.wait_for_log(&cause);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_named_as_refused() {
    let ca = TestCa::new("mtls-other");
    let (fake, image) = mtls_chain(&ca, &TestCa::new("mtls-trusted-client"));
    let dir = tempfile::tempdir().unwrap();
    let stranger = TestCa::new("mtls-stranger");
    let rc = regcache(
        &fake,
        &ca_line(&ca),
        &client_cert_defaults(&stranger, dir.path()),
    );
    let (status, message) = manifest_error(&rc, &image).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{message}");
    let front = host_port(&fake, Host::Front);
    let cause = format!("{front} refused our TLS client certificate (TLS alert UnknownCA)");
    assert!(message.contains(&cause), "{message}");
    assert!(
        message.contains("check client_cert_file and client_key_file"),
        "{message}"
    );
    assert_eq!(fake.total_hits(), 0);
    rc.wait_for_log(&cause);
}

/// Every `host:port` of the chain.
fn chain_hosts(fake: &FakeUpstream) -> Vec<String> {
    [Host::Front, Host::Registry, Host::Storage]
        .into_iter()
        .map(|h| host_port(fake, h))
        .collect()
}

#[tokio::test]
async fn pulls_through_a_proxy_that_allows_only_the_chain() {
    let ca = TestCa::new("proxy");
    let (fake, image) = tls_chain(&ca, Alpn::H2);
    let hosts = chain_hosts(&fake);
    let proxy = Tinyproxy::start(&hosts);
    let extra = format!("{}\nproxy = \"{}\"", ca_line(&ca), proxy.url());
    let rc = regcache(&fake, &extra, "");
    pull(&rc, &image).await;
    assert_stats_list_hosts(&rc, &hosts).await;
    for host in &hosts {
        assert!(
            proxy.saw_connect(host),
            "no CONNECT to {host}:\n{}",
            proxy.log()
        );
    }
}

#[tokio::test]
async fn without_proxy_config_https_proxy_from_the_environment_applies() {
    let ca = TestCa::new("env-proxy");
    let (fake, image) = tls_chain(&ca, Alpn::H2);
    let hosts = chain_hosts(&fake);
    let proxy = Tinyproxy::start(&hosts);
    let config = config_toml_with(&fake.url(), "5m", "30s", &ca_line(&ca));
    let rc = Regcache::builder()
        .config_toml(config)
        .env("HTTPS_PROXY", proxy.url())
        .env("NO_PROXY", "")
        .start();
    pull(&rc, &image).await;
    for host in &hosts {
        assert!(
            proxy.saw_connect(host),
            "no CONNECT to {host}:\n{}",
            proxy.log()
        );
    }
}

#[tokio::test]
async fn a_storage_host_missing_from_the_proxy_acl_is_named() {
    let ca = TestCa::new("acl");
    let (fake, image) = tls_chain(&ca, Alpn::H2);
    let storage = host_port(&fake, Host::Storage);
    let all = chain_hosts(&fake);
    let ports: Vec<u16> = all
        .iter()
        .map(|h| h.rsplit_once(':').unwrap().1.parse().unwrap())
        .collect();
    let allowed: Vec<String> = all.into_iter().filter(|h| *h != storage).collect();
    // The storage port stays open: the filter's host rule is what refuses it.
    let proxy = Tinyproxy::start_with_ports(&allowed, &ports);
    let extra = format!("{}\nproxy = \"{}\"", ca_line(&ca), proxy.url());
    let rc = regcache(&fake, &extra, "");
    // Manifests never leave the registry host.
    let manifest = get(&format!("{}/v2/pause/manifests/{}", rc.url(), image.tag)).await;
    assert_eq!(manifest.status, StatusCode::OK);
    let layer = get(&format!(
        "{}/v2/pause/blobs/{}",
        rc.url(),
        image.layer().digest
    ))
    .await;
    assert_eq!(layer.status, StatusCode::BAD_GATEWAY, "{:?}", layer.body);
    let text = String::from_utf8_lossy(&layer.body);
    assert!(
        text.contains(&format!("the proxy refused to connect to {storage}")),
        "{text}"
    );
    assert!(
        text.contains("403 Filtered"),
        "the proxy's own answer: {text}"
    );
    assert_eq!(fake.hits_on(Host::Storage, http::Method::GET, "/"), 0);
    // The access log line is written when the response has ended.
    rc.wait_for_log(&storage);
}

#[tokio::test]
async fn an_upstream_that_never_finishes_the_handshake_is_a_504_timeout() {
    // Accepts TCP connections and holds them, silent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = std::sync::Arc::clone(&held);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    let config = config_toml_with(&format!("https://{addr}"), "5m", "30s", "proxy = \"none\"");
    let rc = Regcache::builder().config_toml(config).start();
    let got = get(&format!("{}/v2/pause/manifests/3.10", rc.url())).await;
    got.assert_oci_error(StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE");
    let text = String::from_utf8_lossy(&got.body);
    assert!(
        text.contains(&format!("connecting to {addr} timed out")),
        "{text}"
    );
    assert!(!held.lock().unwrap().is_empty(), "the connection was made");
}

#[tokio::test]
async fn a_proxy_demanding_credentials_gets_them_from_the_configuration() {
    let ca = TestCa::new("proxy-auth");
    let (fake, image) = tls_chain(&ca, Alpn::H2);
    let proxy = Tinyproxy::start_with_auth(&chain_hosts(&fake), "regcache", "pr0xy-pw");

    let without = format!("{}\nproxy = \"{}\"", ca_line(&ca), proxy.url());
    let rc = regcache(&fake, &without, "");
    let (status, message) = manifest_error(&rc, &image).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{message}");
    assert!(message.contains("the proxy wants credentials"), "{message}");
    drop(rc);

    let with = format!(
        "{without}\nproxy_username = \"regcache\"\nproxy_password_env = \"TEST_PROXY_PASSWORD\""
    );
    let config = config_toml_with(&fake.url(), "5m", "30s", &with);
    let rc = Regcache::builder()
        .config_toml(config)
        .env("TEST_PROXY_PASSWORD", "pr0xy-pw")
        .start();
    pull(&rc, &image).await;
    assert!(
        !rc.log().contains("pr0xy-pw"),
        "the proxy password is never logged"
    );
}

/// `regcache stats` lists every `host:port` of `hosts` under the upstream
/// (the running server writes them within a few seconds).
async fn assert_stats_list_hosts(rc: &Regcache, hosts: &[String]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
            .arg("stats")
            .arg("--data")
            .arg(rc.data_dir())
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("registry.k8s.io:"));
        if line.is_some_and(|l| hosts.iter().all(|h| l.contains(h.as_str()))) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hosts not in stats:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}
