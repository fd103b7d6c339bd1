//! The configuration layers through the real binary: `serve` with a file that
//! leaves `server.listen` and `storage.data_dir` to the flags, `REGCACHE_*`
//! variables over the file, `config show` naming each value's layer, and
//! `config check` validating a file without starting anything.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use std::process::Output;

use reqwest::StatusCode;

use crate::support::get;
use crate::support::regcache::Regcache;

/// A file with one upstream and nothing else: no [server], no [storage].
const UPSTREAM_ONLY: &str =
    "[[upstream]]\nname = \"registry.k8s.io\"\nurl = \"http://127.0.0.1:1\"\n";

fn regcache(args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .expect("run regcache")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_listen_and_data_from_flags_when_the_file_has_neither() {
    // The support harness passes --listen 127.0.0.1:0 and --data DIR.
    let regcache = Regcache::builder().config_toml(UPSTREAM_ONLY).start();
    let got = get(&format!("{}/v2/", regcache.url())).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(regcache.data_dir().join("index.db").exists());
}

#[test]
fn show_names_each_layer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("regcache.toml");
    std::fs::write(
        &file,
        format!("[storage]\nmax_size = \"1GiB\"\n{UPSTREAM_ONLY}"),
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();
    let out = regcache(
        &[
            "config",
            "show",
            "--config",
            file_arg,
            "--listen",
            "127.0.0.1:8080",
        ],
        &[
            ("REGCACHE_STORAGE_MAX_SIZE", "2GiB"),
            ("REGCACHE_STORAGE_DATA_DIR", "/srv/cache"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let line = |key: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in\n{shown}"))
            .to_owned()
    };
    assert!(line("listen").ends_with("# flag --listen"), "{shown}");
    assert!(line("listen").contains("\"127.0.0.1:8080\""));
    assert!(line("max_size").contains("\"2GiB\""), "{shown}");
    assert!(line("max_size").ends_with("# env REGCACHE_STORAGE_MAX_SIZE"));
    assert!(line("data_dir").ends_with("# env REGCACHE_STORAGE_DATA_DIR"));
    assert!(
        line("url").ends_with(&format!("# file {file_arg}")),
        "{shown}"
    );
    assert!(line("evict_interval").ends_with("# embedded default"));
    assert!(line("tag_ttl").ends_with("# built-in default"));
}

#[test]
fn check_validates_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, UPSTREAM_ONLY).unwrap();
    let out = regcache(&["config", "check", good.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("valid"));
    // Nothing started: no data directory was created beside the file.
    assert!(!dir.path().join("regcache-data").exists());

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"nowhere\"\nport = 1\n").unwrap();
    let out = regcache(&["config", "check", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("server.listen") && stderr.contains("server.port"),
        "{stderr}"
    );

    let out = regcache(
        &["config", "check", good.to_str().unwrap()],
        &[("REGCACHE_STORAGE_MAXSIZE", "1GiB")],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a misspelt variable is an error"
    );
    assert!(text(&out.stderr).contains("REGCACHE_STORAGE_MAXSIZE"));
}

/// `config show` covers every section: the listener's TLS and users, `[scan]`,
/// each upstream's CA, client certificate and proxy (its own or from
/// `[upstream_defaults]`, said so), and what it prints loads back the same.
#[test]
fn show_covers_tls_auth_scan_and_egress_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("regcache.toml");
    std::fs::write(
        &file,
        r#"
[server]
listen = "127.0.0.1:5000"
[server.tls]
cert_file = "/etc/regcache/tls.crt"
key_file = "/etc/regcache/tls.key"
[server.auth]
htpasswd = "/etc/regcache/htpasswd"
required = true
[storage]
data_dir = "/var/lib/regcache"
[scan]
frozen = ["old.example=new.example"]
[upstream_defaults]
proxy = "http://proxy.corp.example:3128"
proxy_username = "svc"
proxy_password_env = "CORP_PROXY_PASSWORD"
no_proxy = [".corp.example"]
[[upstream]]
name = "registry.k8s.io"
url = "https://registry.k8s.io"
default = true
ca_file = "/etc/ssl/corp-ca.pem"
[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
proxy = "none"
"#,
    )
    .unwrap();
    let env = [("CORP_PROXY_PASSWORD", "s3cret-proxy-pw")];
    let out = regcache(
        &["config", "show", "--config", file.to_str().unwrap()],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let line = |start: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start:?} line:\n{shown}"))
            .to_owned()
    };
    for header in ["[server.tls]", "[server.auth]", "[scan]"] {
        assert!(shown.lines().any(|l| l == header), "{header}:\n{shown}");
    }
    assert!(line("required = true").contains("# file"));
    assert!(line("frozen = [\"old.example=new.example\"]").contains("# file"));
    assert!(line("ca_file = \"/etc/ssl/corp-ca.pem\"").contains("# file"));
    assert!(line("proxy = \"http://proxy.corp.example:3128/\"").contains("# file"));
    assert!(line("proxy_password_env = \"CORP_PROXY_PASSWORD\"").contains("# file"));
    assert!(line("proxy = \"none\"").contains("# file"));
    assert!(!shown.contains("s3cret-proxy-pw"), "a secret was shown");

    let again = dir.path().join("shown.toml");
    std::fs::write(&again, &shown).unwrap();
    let out = regcache(
        &["config", "show", "--config", again.to_str().unwrap()],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let values = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split("  #").next().unwrap_or(l).trim_end().to_owned())
            .filter(|l| !l.starts_with('#'))
            .collect()
    };
    assert_eq!(
        values(&text(&out.stdout)),
        values(&shown),
        "loads back the same"
    );
}
