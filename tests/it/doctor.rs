//! `regcache doctor` against the TLS registry.k8s.io-like chain reached
//! through tinyproxy: every step and hop passes and the allowlist lists the
//! chain's three `host:port`s (and the squid ACL line); with the storage host
//! missing from the proxy's filter it exits 1 and its diagnosis names that
//! host and the proxy's answer; an upstream that wants a client certificate
//! regcache does not send is named, with the keys to set.

use std::process::Output;

use crate::support::fake::{FakeUpstream, Host};
use crate::support::tinyproxy::Tinyproxy;
use crate::support::tls::{Alpn, FAKE_IPS, TestCa};
use crate::support::{config_toml_with, seed_image};

fn host_port(fake: &FakeUpstream, host: Host) -> String {
    fake.host_url(host)
        .trim_start_matches("https://")
        .to_owned()
}

/// Runs `regcache doctor --config <config for fake through proxy> args...`.
async fn doctor(fake: &FakeUpstream, ca: &TestCa, proxy: &Tinyproxy, args: &[&str]) -> Output {
    let extra = format!(
        "ca_file = \"{}\"\nproxy = \"{}\"\nprobe_image = \"pause:3.10\"",
        ca.ca_file().display(),
        proxy.url()
    );
    doctor_with(fake, &extra, args).await
}

/// Runs `regcache doctor` for `fake` with `extra` lines in its `[[upstream]]`.
async fn doctor_with(fake: &FakeUpstream, extra: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_toml_with(&fake.url(), "5m", "30s", extra)).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .arg("doctor")
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn doctor_walks_the_tls_chain_through_the_proxy_and_prints_the_allowlist() {
    let ca = TestCa::new("doctor");
    let fake = FakeUpstream::k8s_like_tls(ca.leaf(&FAKE_IPS).server_config(Alpn::H2));
    seed_image(&fake, "pause", "3.10", 64 * 1024);
    let hosts: Vec<String> = [Host::Front, Host::Registry, Host::Storage]
        .into_iter()
        .map(|h| host_port(&fake, h))
        .collect();
    let proxy = Tinyproxy::start(&hosts);
    let output = doctor(&fake, &ca, &proxy, &[]).await;
    let text = String::from_utf8_lossy(&output.stdout);
    eprintln!("{text}");
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains(&format!("TLS issuer: CN={}", ca.name)),
        "{text}"
    );
    assert!(text.contains("left to the proxy"), "{text}");
    let allowlist = text.split("egress allowlist").nth(1).unwrap();
    for host in &hosts {
        assert!(
            allowlist.contains(&format!("  {host}\n")),
            "{host} missing:\n{text}"
        );
    }
    assert!(
        text.contains("acl regcache_egress dstdomain 127.0.0.1 127.0.0.2 127.0.0.3"),
        "{text}"
    );
    // Only the first byte of the blob was asked for.
    let storage: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|s| s.host == Host::Storage)
        .collect();
    assert_eq!(storage.len(), 1, "{storage:?}");
    assert_eq!(storage[0].range.as_deref(), Some("bytes=0-0"));

    let json = doctor(&fake, &ca, &proxy, &["--json"]).await;
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON report");
    assert_eq!(report["allowlist"].as_array().unwrap().len(), 3, "{report}");
    assert!(report["upstreams"][0]["diagnosis"].is_null());
}

#[tokio::test]
async fn doctor_names_a_blocked_storage_host_and_exits_1() {
    let ca = TestCa::new("doctor-blocked");
    let fake = FakeUpstream::k8s_like_tls(ca.leaf(&FAKE_IPS).server_config(Alpn::H2));
    seed_image(&fake, "pause", "3.10", 1024);
    let storage = host_port(&fake, Host::Storage);
    let all: Vec<String> = [Host::Front, Host::Registry, Host::Storage]
        .into_iter()
        .map(|h| host_port(&fake, h))
        .collect();
    let ports: Vec<u16> = all
        .iter()
        .map(|h| h.rsplit_once(':').unwrap().1.parse().unwrap())
        .collect();
    let allowed: Vec<String> = all.iter().filter(|h| **h != storage).cloned().collect();
    let proxy = Tinyproxy::start_with_ports(&allowed, &ports);
    let output = doctor(&fake, &ca, &proxy, &[]).await;
    let text = String::from_utf8_lossy(&output.stdout);
    eprintln!("{text}");
    assert_eq!(output.status.code(), Some(1), "{text}");
    let diagnosis = text
        .lines()
        .find(|l| l.contains("diagnosis:"))
        .unwrap_or_else(|| panic!("no diagnosis:\n{text}"));
    assert!(
        diagnosis.contains(&format!("the proxy refused to connect to {storage}"))
            && diagnosis.contains("403 Filtered"),
        "{diagnosis}"
    );
    assert!(
        text.contains(&format!("  {storage}\n")),
        "the blocked host is in the allowlist to add:\n{text}"
    );
}

#[tokio::test]
async fn doctor_names_an_upstream_wanting_a_client_certificate() {
    let ca = TestCa::new("doctor-mtls");
    let client_ca = TestCa::new("doctor-mtls-client");
    let fake = FakeUpstream::k8s_like_tls(
        ca.leaf(&FAKE_IPS)
            .server_config_with_client_auth(&client_ca),
    );
    seed_image(&fake, "pause", "3.10", 1024);
    let extra = format!(
        "ca_file = \"{}\"\nproxy = \"none\"\nprobe_image = \"pause:3.10\"",
        ca.ca_file().display()
    );
    let output = doctor_with(&fake, &extra, &[]).await;
    let text = String::from_utf8_lossy(&output.stdout);
    eprintln!("{text}");
    assert_eq!(
        output.status.code(),
        Some(1),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let diagnosis = text
        .lines()
        .find(|l| l.contains("diagnosis:"))
        .unwrap_or_else(|| panic!("no diagnosis:\n{text}"));
    let front = host_port(&fake, Host::Front);
    assert!(
        diagnosis.contains(&format!(
            "{front} requires a TLS client certificate and none was sent"
        )) && diagnosis.contains("set client_cert_file and client_key_file"),
        "{diagnosis}"
    );
}
