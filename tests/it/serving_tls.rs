//! TLS on regcache's own listener (`[server.tls]`): HTTP/2 by ALPN and
//! HTTP/1.1 otherwise; a key that does not match its certificate stops the
//! start; the certificate is replaced when its files change and on SIGHUP,
//! without dropping open connections, and a broken new file leaves the old
//! one in use. Real clients (skopeo, podman, containerd) pull over it with
//! the test's CA in their certificate directories. Connections that never
//! finish their handshake count against `max_connections` (beyond it they are
//! closed at once) and are dropped after `header_read_timeout`.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::clients::{self, By, Client, Platforms};
use crate::support::fake::FakeUpstream;
use crate::support::images;
use crate::support::regcache::Regcache;
use crate::support::sockets::{closed_by_server, idle};
use crate::support::tls::TestCa;
use crate::support::{config_toml_with, seed_image};

/// A config whose `[server.tls]` names `cert` and `key`.
fn tls_config(upstream: &str, cert: &Path, key: &str) -> String {
    let base = config_toml_with(upstream, "5m", "30s", "");
    let tls = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{key}\"\n",
        cert.display()
    );
    base.replacen("[storage]", &format!("{tls}[storage]"), 1)
}

/// regcache over TLS with a certificate of `ca` for 127.0.0.1, written in `dir`.
fn tls_regcache(ca: &TestCa, dir: &Path, upstream: &str) -> Regcache {
    let (cert, key) = ca.leaf(&["127.0.0.1"]).write(dir, "server");
    Regcache::builder()
        .config_toml(tls_config(upstream, &cert, &key.display().to_string()))
        .start()
}

/// A client trusting only `ca`.
fn client_for(ca: &TestCa, http1: bool) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap();
    let builder = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([root])
        .timeout(Duration::from_secs(30));
    let builder = if http1 { builder.http1_only() } else { builder };
    builder.build().unwrap()
}

fn https(rc: &Regcache, path: &str) -> String {
    format!("https://{}{path}", rc.addr())
}

#[tokio::test]
async fn serves_http2_by_alpn_and_http11_otherwise() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.10", 1024);
    let ca = TestCa::new("serve");
    let dir = tempfile::tempdir().unwrap();
    let rc = tls_regcache(&ca, dir.path(), &fake.url());
    for (http1, version) in [
        (false, http::Version::HTTP_2),
        (true, http::Version::HTTP_11),
    ] {
        let client = client_for(&ca, http1);
        let url = https(&rc, &format!("/v2/pause/manifests/{}", image.tag));
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), version);
        assert_eq!(response.bytes().await.unwrap(), image.manifest);
    }
    // Plain HTTP is not served on an HTTPS listener.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    assert!(
        plain
            .get(format!("http://{}/v2/", rc.addr()))
            .send()
            .await
            .is_err()
    );
}

/// Blob hits over TLS: rustls encrypts straight from the mapped windows;
/// exact bytes over HTTP/2 and HTTP/1.1, and a range across windows.
#[tokio::test]
async fn a_blob_hit_over_tls_has_the_exact_bytes() {
    let fake = FakeUpstream::k8s_like();
    let content = crate::support::random_bytes(9 * 1024 * 1024 + 7);
    let digest = fake.put_blob("zero/tls", content.clone());
    let ca = TestCa::new("hits");
    let dir = tempfile::tempdir().unwrap();
    let rc = tls_regcache(&ca, dir.path(), &fake.url());
    let url = https(&rc, &format!("/v2/zero/tls/blobs/{digest}"));
    for http1 in [false, true, false] {
        let client = client_for(&ca, http1);
        let body = client
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(body == content, "http1={http1}: the bytes differ");
        let (start, end) = (4 * 1024 * 1024 - 3, 8 * 1024 * 1024 + 3);
        let ranged = client
            .get(&url)
            .header("range", format!("bytes={start}-{end}"))
            .send()
            .await
            .unwrap();
        assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
        assert!(ranged.bytes().await.unwrap() == content[start..=end]);
    }
    assert_eq!(fake.sent(&digest), content.len() as u64);
}

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_stops_the_start() {
    let ca = TestCa::new("mismatch");
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = ca.leaf(&["127.0.0.1"]).write(dir.path(), "a");
    let (_, other_key) = ca.leaf(&["127.0.0.1"]).write(dir.path(), "b");
    let config = tls_config(
        "http://127.0.0.1:9",
        &cert,
        &other_key.display().to_string(),
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .arg("--data")
        .arg(dir.path().join("data"))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "server.tls.key_file {} does not go with server.tls.cert_file {}",
            other_key.display(),
            cert.display()
        )),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "refused before touching data"
    );
}

/// Polls until a new connection trusting only `ca` succeeds.
async fn wait_until_served_by(ca: &TestCa, rc: &Regcache) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fresh = client_for(ca, false);
        if fresh.get(https(rc, "/v2/")).send().await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "new certificate not served:\n{}",
            rc.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_certificate_is_reloaded_without_dropping_connections() {
    let fake = FakeUpstream::k8s_like();
    let first = TestCa::new("before");
    let second = TestCa::new("after");
    let dir = tempfile::tempdir().unwrap();
    let rc = tls_regcache(&first, dir.path(), &fake.url());
    let open = client_for(&first, false);
    assert_eq!(
        open.get(https(&rc, "/v2/")).send().await.unwrap().status(),
        StatusCode::OK
    );

    // The files change: new connections get the new certificate...
    second.leaf(&["127.0.0.1"]).write(dir.path(), "server");
    wait_until_served_by(&second, &rc).await;
    // ...while the HTTP/2 connection opened before carries on.
    let again = open.get(https(&rc, "/v2/")).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert!(
        client_for(&first, false)
            .get(https(&rc, "/v2/"))
            .send()
            .await
            .is_err()
    );

    // A broken certificate file: an error in the log, the last good one stays.
    std::fs::write(
        dir.path().join("server.crt"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    rc.wait_for_log("TLS certificate not reloaded");
    let fresh = client_for(&second, false);
    assert_eq!(
        fresh.get(https(&rc, "/v2/")).send().await.unwrap().status(),
        StatusCode::OK
    );

    // SIGHUP reloads too (here: back to the first CA's certificate).
    first.leaf(&["127.0.0.1"]).write(dir.path(), "server");
    let pid = rc.pid().to_string();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    wait_until_served_by(&first, &rc).await;
    rc.wait_for_log("TLS certificate reloaded");
}

/// skopeo, podman and containerd pull through regcache over TLS, trusting the
/// test's CA through their certificate directories; the upstream is the fake.
#[test]
fn real_clients_pull_over_tls() {
    let fake = FakeUpstream::k8s_like();
    let image = images::oci_three_layers("tls/oci-three-layers", "v1", 7);
    seed_images(&fake, &image);
    let ca = TestCa::new("clients");
    let dir = tempfile::tempdir().unwrap();
    let rc = tls_regcache(&ca, dir.path(), &fake.url());
    let mirror = rc.host();
    let certs = clients::TlsTrust::new(&ca.cert_pem);
    let reference = clients::reference(&image, By::Tag);
    let mut failures = Vec::new();
    for client in [Client::Skopeo, Client::Podman, Client::Containerd] {
        let result = clients::pull_over_tls(
            client,
            &mirror,
            &certs,
            &image,
            &reference,
            Platforms::One("amd64"),
        )
        .and_then(|stored| clients::verify(&stored, &image, Platforms::One("amd64")));
        if let Err(e) = result {
            failures.push(format!("{}: {e}", client.name()));
        }
    }
    assert!(
        failures.is_empty(),
        "{failures:#?}\nregcache log:\n{}",
        rc.log()
    );
}

/// Puts `image` into the k8s-like fake (blobs by digest, manifests, its tag).
fn seed_images(fake: &FakeUpstream, image: &images::Image) {
    for blob in &image.blobs {
        fake.put_content_with_digest(
            &image.repo,
            &blob.digest,
            crate::support::fake::Content::Bytes(blob.bytes.clone()),
        );
    }
    for m in &image.manifests {
        let tag = (m.digest == image.top).then_some(image.tag.as_str());
        fake.put_manifest(&image.repo, tag, &m.media_type, m.bytes.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_count_against_max_connections_and_time_out_in_the_handshake() {
    let ca = TestCa::new("handshake-limits");
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::k8s_like();
    let (cert, key) = ca.leaf(&["127.0.0.1"]).write(dir.path(), "server");
    let text = tls_config(&fake.url(), &cert, &key.display().to_string()).replacen(
        "[server]\n",
        "[server]\nmax_connections = 3\nheader_read_timeout = \"2s\"\n",
        1,
    );
    let rc = Regcache::builder().config_toml(text).start();

    // Three clients connect and never start their handshake: the limit.
    let connected = Instant::now();
    let mut silent = idle(rc.addr(), 3);
    let mut fourth = idle(rc.addr(), 1).remove(0);
    assert!(
        closed_by_server(&mut fourth, Duration::from_secs(1)),
        "a connection beyond the limit is closed at once"
    );
    let client = client_for(&ca, true);
    assert!(client.get(https(&rc, "/v2/")).send().await.is_err());
    rc.wait_for_log("too many TLS handshakes in progress");

    // The silent ones are dropped after header_read_timeout...
    for (i, stream) in silent.iter_mut().enumerate() {
        assert!(
            closed_by_server(stream, Duration::from_secs(10)),
            "silent connection {i} still open"
        );
    }
    let waited = connected.elapsed();
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    // ...and a real TLS client gets through.
    let got = client.get(https(&rc, "/v2/")).send().await.unwrap();
    assert_eq!(got.status(), 200);
}
