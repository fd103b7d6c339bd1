//! Optional client authentication (`[server.auth]`) with an htpasswd file
//! written by Debian's `htpasswd -B`: the right password pulls, a wrong one is
//! 401 with a Basic challenge and an OCI body before any upstream request,
//! anonymous pulls pass unless `required`, the probes stay open, a non-bcrypt
//! entry stops the start with its line number, failures are limited per
//! address, the file is re-read when it changes, and skopeo, podman and
//! containerd pull with credentials, over plain HTTP and over TLS.

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;

use crate::support::clients::{self, By, Client, Platforms, TlsTrust};
use crate::support::fake::{Content, FakeUpstream};
use crate::support::images;
use crate::support::regcache::Regcache;
use crate::support::tls::TestCa;
use crate::support::{Got, client, config_toml_with, get, seed_image, send};

/// `htpasswd -B -b [-c] FILE USER PASSWORD` (apache2-utils).
pub(crate) fn htpasswd(file: &Path, user: &str, password: &str, create: bool) {
    let mut cmd = Command::new("htpasswd");
    cmd.arg(if create { "-cbB" } else { "-bB" })
        .arg(file)
        .arg(user)
        .arg(password);
    let out = cmd
        .output()
        .expect("htpasswd (apt-get install apache2-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `[server.auth]` (and `[server.tls]` if `tls` is given) before `[storage]`.
fn auth_config(
    upstream: &str,
    htpasswd: &Path,
    required: bool,
    tls: Option<(&Path, &Path)>,
) -> String {
    let base = config_toml_with(upstream, "5m", "30s", "");
    let mut server = format!(
        "[server.auth]\nhtpasswd = \"{}\"\nrequired = {required}\nrealm = \"test mirror\"\n",
        htpasswd.display()
    );
    if let Some((cert, key)) = tls {
        server.push_str(&format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    base.replacen("[storage]", &format!("{server}[storage]"), 1)
}

struct Setup {
    fake: FakeUpstream,
    rc: Regcache,
    _dir: tempfile::TempDir,
    htpasswd: std::path::PathBuf,
}

fn setup(required: bool) -> Setup {
    let fake = FakeUpstream::k8s_like();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    htpasswd(&file, "alice", "s3cret-pw", true);
    let rc = Regcache::builder()
        .config_toml(auth_config(&fake.url(), &file, required, None))
        .start();
    Setup {
        fake,
        rc,
        _dir: dir,
        htpasswd: file,
    }
}

async fn get_as(url: &str, user: &str, password: &str) -> Got {
    send(client().get(url).basic_auth(user, Some(password))).await
}

#[track_caller]
fn assert_challenged(got: &Got) {
    got.assert_oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(
        got.header("www-authenticate"),
        Some("Basic realm=\"test mirror\"")
    );
}

#[tokio::test]
async fn the_right_password_pulls_and_a_wrong_one_never_reaches_upstream() {
    let s = setup(true);
    let image = seed_image(&s.fake, "pause", "3.10", 4096);
    let manifest = format!("{}/v2/pause/manifests/{}", s.rc.url(), image.tag);
    assert_challenged(&get(&manifest).await);
    assert_challenged(&get(&format!("{}/v2/", s.rc.url())).await);
    assert_challenged(&get_as(&manifest, "alice", "wr0ng-pw").await);
    assert_challenged(&get_as(&manifest, "mallory", "s3cret-pw").await);
    assert_eq!(
        s.fake.total_hits(),
        0,
        "refused requests never reach the upstream"
    );
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            get(&format!("{}{probe}", s.rc.url())).await.status,
            StatusCode::OK
        );
    }

    let got = get_as(&manifest, "alice", "s3cret-pw").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.ok_body(), &image.manifest);
    let log = s.rc.log();
    assert!(log.contains("pull authentication failed"), "{log}");
    assert!(
        !log.contains("wr0ng-pw") && !log.contains("s3cret-pw"),
        "a password in the log:\n{log}"
    );
}

#[tokio::test]
async fn anonymous_pulls_pass_unless_required_but_wrong_credentials_do_not() {
    let s = setup(false);
    let image = seed_image(&s.fake, "pause", "3.10", 4096);
    let manifest = format!("{}/v2/pause/manifests/{}", s.rc.url(), image.tag);
    assert_eq!(get(&manifest).await.ok_body(), &image.manifest);
    let hits = s.fake.total_hits();
    assert_challenged(&get_as(&manifest, "alice", "wr0ng-pw").await);
    assert_eq!(s.fake.total_hits(), hits);
}

#[tokio::test]
async fn failed_attempts_are_limited_per_client_address() {
    let s = setup(true);
    let url = format!("{}/v2/", s.rc.url());
    for _ in 0..10 {
        assert_challenged(&get_as(&url, "alice", "guess").await);
    }
    let limited = get_as(&url, "alice", "s3cret-pw").await;
    limited.assert_oci_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    assert!(limited.header("retry-after").is_some());
    // The probes are not behind the gate at all.
    assert_eq!(
        get(&format!("{}/readyz", s.rc.url())).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_htpasswd_file_is_reread_when_it_changes() {
    let s = setup(true);
    let url = format!("{}/v2/", s.rc.url());
    assert_challenged(&get_as(&url, "bob", "b0b-pw").await);
    htpasswd(&s.htpasswd, "bob", "b0b-pw", false);
    // Not polled with bob's password: ten failures would lock the address out.
    s.rc.wait_for_log("htpasswd reloaded");
    assert_eq!(get_as(&url, "bob", "b0b-pw").await.status, StatusCode::OK);
    assert_eq!(
        get_as(&url, "alice", "s3cret-pw").await.status,
        StatusCode::OK
    );
    // A broken file: an error in the log, the users before it stay.
    std::fs::write(&s.htpasswd, "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
    s.rc.wait_for_log("htpasswd not reloaded");
    assert_eq!(get_as(&url, "bob", "b0b-pw").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_non_bcrypt_entry_stops_the_start_with_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    htpasswd(&file, "alice", "s3cret-pw", true);
    // -m: Apache's MD5 ($apr1$), what htpasswd wrote by default for years.
    let out = Command::new("htpasswd")
        .args(["-bm"])
        .arg(&file)
        .args(["old", "pw"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        auth_config("http://127.0.0.1:9", &file, true, None),
    )
    .unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(dir.path().join("data"))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("htpasswd file {}, line 2", file.display()))
            && stderr.contains("\"old\" is not bcrypt"),
        "{stderr}"
    );
}

/// Real clients with credentials, over plain HTTP and over TLS.
#[test]
fn real_clients_pull_with_credentials_over_http_and_tls() {
    let fake = FakeUpstream::k8s_like();
    let image = images::oci_three_layers("auth/oci-three-layers", "v1", 11);
    for blob in &image.blobs {
        fake.put_content_with_digest(
            &image.repo,
            &blob.digest,
            Content::Bytes(blob.bytes.clone()),
        );
    }
    for m in &image.manifests {
        let tag = (m.digest == image.top).then_some(image.tag.as_str());
        fake.put_manifest(&image.repo, tag, &m.media_type, m.bytes.clone());
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    htpasswd(&file, "alice", "s3cret-pw", true);
    let ca = TestCa::new("auth");
    let (cert, key) = ca.leaf(&["127.0.0.1"]).write(dir.path(), "server");
    let trust = TlsTrust::new(&ca.cert_pem);
    let plain = Regcache::builder()
        .config_toml(auth_config(&fake.url(), &file, true, None))
        .start();
    let tls = Regcache::builder()
        .config_toml(auth_config(&fake.url(), &file, true, Some((&cert, &key))))
        .start();
    let reference = clients::reference(&image, By::Tag);
    let platforms = Platforms::One("amd64");
    let mut failures = Vec::new();
    for client in [Client::Skopeo, Client::Podman, Client::Containerd] {
        for (label, rc, trust) in [("http", &plain, None), ("tls", &tls, Some(&trust))] {
            let mirror = rc.host();
            let pulled = clients::pull_with_credentials(
                client,
                &mirror,
                trust,
                Some("alice:s3cret-pw"),
                &image,
                &reference,
                platforms,
            )
            .and_then(|stored| clients::verify(&stored, &image, platforms));
            if let Err(e) = pulled {
                failures.push(format!("{} over {label}: {e}", client.name()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{failures:#?}\nplain log:\n{}\ntls log:\n{}",
        plain.log(),
        tls.log()
    );
}

/// `/metrics` and the status page name repositories and hosts: on the
/// registry's listener they sit behind the same required authentication.
#[tokio::test]
async fn metrics_and_the_status_page_are_behind_required_auth() {
    let s = setup(true);
    let base = s.rc.url();
    for path in ["/metrics", "/", "/status?format=json"] {
        let url = format!("{base}{path}");
        for refused in [get(&url).await, get_as(&url, "alice", "wr0ng-pw").await] {
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{path}");
            let challenge = refused.header("www-authenticate");
            assert_eq!(challenge, Some("Basic realm=\"test mirror\""), "{path}");
        }
        let got = get_as(&url, "alice", "s3cret-pw").await;
        assert_eq!(got.status, StatusCode::OK, "{path}");
    }
}
