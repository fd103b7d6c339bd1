//! Unit tests of configuration parsing and validation: defaults, overrides,
//! every error reported at once with its key, unknown keys, secrets redacted.

use super::*;
use std::collections::HashMap;

/// Environment variables and files by name, for the config tests here and in
/// `walker::egress`.
#[derive(Default)]
pub(crate) struct FakeSecrets(pub(crate) HashMap<String, String>);

impl Secrets for FakeSecrets {
    fn env(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn file(&self, path: &str) -> std::io::Result<String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
    }
}

fn load_str(text: &str) -> Result<Config, ConfigErrors> {
    load(
        text,
        "test.toml",
        &Overrides::default(),
        &FakeSecrets::default(),
    )
}

fn keys(err: &ConfigErrors) -> Vec<&str> {
    err.errors.iter().map(|e| e.key.as_str()).collect()
}

#[test]
fn embedded_default_is_valid() {
    let c = load_str(DEFAULT_TOML).unwrap();
    assert_eq!(c.listen.to_string(), "0.0.0.0:5000");
    assert_eq!(c.data_dir, PathBuf::from("./regcache-data"));
    let up = c.default_upstream();
    assert_eq!(up.name, "registry.k8s.io");
    assert_eq!(up.url.as_str(), "https://registry.k8s.io/");
    assert!(up.answers_to("k8s.gcr.io"));
    assert!(up.tag_ttl >= Duration::from_secs(60));
    assert!(up.credentials.is_none());
}

#[test]
fn every_error_is_reported_with_its_key() {
    let err = load_str(
        r#"
        bogus = 1
        [server]
        listen = "nowhere"
        [storage]
        data_dir = 5
        [[upstream]]
        name = "a"
        url = "ftp://x"
        tag_ttl = "soon"
        usernme = "typo"
        "#,
    )
    .unwrap_err();
    let keys = keys(&err);
    for want in [
        "bogus",
        "server.listen",
        "storage.data_dir",
        "upstream[0].url",
        "upstream[0].tag_ttl",
        "upstream[0].usernme",
    ] {
        assert!(keys.contains(&want), "missing {want} in {keys:?}");
    }
    let text = err.to_string();
    assert!(text.starts_with("6 errors in test.toml:"), "{text}");
}

#[test]
fn syntax_errors_are_reported() {
    let err = load_str("[server\nlisten=").unwrap_err();
    assert_eq!(keys(&err), ["(syntax)"]);
}

#[test]
fn overrides_win_and_replace_the_default_url() {
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some("/tmp/x".into()),
        upstream_url: Some("http://127.0.0.1:9/".parse().unwrap()),
        max_size: Some(1000),
    };
    let c = load(DEFAULT_TOML, "default", &overrides, &FakeSecrets::default()).unwrap();
    assert_eq!(c.listen.port(), 0);
    assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    assert_eq!(c.default_upstream().url.as_str(), "http://127.0.0.1:9/");
    assert_eq!(c.default_upstream().name, "registry.k8s.io");
    assert_eq!(c.eviction.budget.max_size(), 1000);
}

#[test]
fn the_budget_has_defaults_human_sizes_and_checked_watermarks() {
    let c = load_str(DEFAULT_TOML).unwrap();
    assert_eq!(c.eviction.budget.max_size(), DEFAULT_MAX_SIZE);
    assert_eq!(
        (
            c.eviction.budget.high_watermark(),
            c.eviction.budget.low_watermark()
        ),
        (0.95, 0.85)
    );
    assert_eq!(c.eviction.interval, Duration::from_secs(30));

    let base = "[server]\nlisten='127.0.0.1:1'\n[[upstream]]\nname='registry.k8s.io'\nurl='http://a'\naliases=['k8s.gcr.io']\n";
    let good = format!(
        "{base}[storage]\ndata_dir='d'\nmax_size='1.5 GiB'\nhigh_watermark=0.9\nlow_watermark=0.5\nevict_interval='1m'\npins=['k8s.gcr.io/pause:*','registry.k8s.io/coredns/*']\n"
    );
    let c = load_str(&good).unwrap();
    assert_eq!(c.eviction.budget.max_size(), 1536 * 1024 * 1024);
    let budget = c.eviction.budget;
    assert_eq!(budget.low(), budget.max_size() / 2);
    let pins: Vec<String> = c.eviction.pins.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        pins,
        ["registry.k8s.io/pause:*", "registry.k8s.io/coredns/*"]
    );

    let bad = format!(
        "{base}[storage]\ndata_dir='d'\nmax_size='lots'\nhigh_watermark=1.5\nlow_watermark='x'\nevict_interval='0s'\npins=['docker.io/x', 'nohost']\nmaxsize='1G'\n"
    );
    let err = load_str(&bad).unwrap_err();
    let found = keys(&err);
    for want in [
        "storage.max_size",
        "storage.high_watermark",
        "storage.low_watermark",
        "storage.evict_interval",
        "storage.pins[0]",
        "storage.pins[1]",
        "storage.maxsize",
    ] {
        assert!(found.contains(&want), "missing {want} in {found:?}");
    }
    let inverted = format!(
        "{base}[storage]\ndata_dir='d'\nmax_size='0'\nhigh_watermark=0.5\nlow_watermark=0.6\n"
    );
    let err = load_str(&inverted).unwrap_err();
    assert_eq!(keys(&err), ["storage.max_size", "storage.low_watermark"]);
}

#[test]
fn credentials_come_from_env_or_file_and_are_redacted() {
    let mut secrets = FakeSecrets::default();
    secrets.0.insert("PW".into(), "hunter2".into());
    secrets.0.insert("/pw".into(), "from-file\nignored".into());
    let base = "[server]\nlisten='127.0.0.1:1'\n[storage]\ndata_dir='d'\n";
    let env_cfg =
        format!("{base}[[upstream]]\nname='a'\nurl='http://a'\nusername='u'\npassword_env='PW'\n");
    let c = load(&env_cfg, "t", &Overrides::default(), &secrets).unwrap();
    let creds = c.upstreams[0].credentials.clone().unwrap();
    assert_eq!(creds.password.expose(), "hunter2");
    assert!(!format!("{c:?}").contains("hunter2"));
    let file_cfg = format!(
        "{base}[[upstream]]\nname='a'\nurl='http://a'\nusername='u'\npassword_file='/pw'\n"
    );
    let c = load(&file_cfg, "t", &Overrides::default(), &secrets).unwrap();
    assert_eq!(
        c.upstreams[0]
            .credentials
            .as_ref()
            .unwrap()
            .password
            .expose(),
        "from-file"
    );
    let missing = format!(
        "{base}[[upstream]]\nname='a'\nurl='http://a'\nusername='u'\npassword_env='NOPE'\n"
    );
    let err = load(&missing, "t", &Overrides::default(), &secrets).unwrap_err();
    assert_eq!(keys(&err), ["upstream[0].password_env"]);
}

#[test]
fn upstream_table_rules() {
    let base = "[server]\nlisten='127.0.0.1:1'\n[storage]\ndata_dir='d'\n";
    let err = load_str(base).unwrap_err();
    assert_eq!(keys(&err), ["upstream"]);
    let two_defaults = format!(
        "{base}[[upstream]]\nname='a'\nurl='http://a'\ndefault=true\n[[upstream]]\nname='b'\nurl='http://b'\ndefault=true\naliases=['a']\n"
    );
    let err = load_str(&two_defaults).unwrap_err();
    assert_eq!(keys(&err), ["upstream", "upstream[1]"]);
    let single = format!("{base}[[upstream]]\nname='a'\nurl='http://a'\n");
    assert!(load_str(&single).unwrap().upstreams[0].default);
}

#[test]
fn docker_hub_answers_to_its_three_hosts() {
    let base = "[server]\nlisten='127.0.0.1:1'\n[storage]\ndata_dir='d'\n";
    let hub = format!(
        "{base}[[upstream]]\nname='k'\nurl='http://k'\ndefault=true\n\
         [[upstream]]\nname='index.docker.io'\nurl='https://registry-1.docker.io'\n"
    );
    let config = load_str(&hub).unwrap();
    let up = &config.upstreams[1];
    assert!(up.is_docker_hub());
    for host in DOCKER_HUB_HOSTS {
        assert!(up.answers_to(host), "{host}");
    }
    assert!(!config.upstreams[0].is_docker_hub());
    // Pins name Docker Hub repositories as clients do.
    let pinned = "[server]\nlisten='127.0.0.1:1'\n\
         [storage]\ndata_dir='d'\npins=['docker.io/alpine:3.*', 'index.docker.io/bitnami/*', 'k/x']\n\
         [[upstream]]\nname='k'\nurl='http://k'\ndefault=true\n\
         [[upstream]]\nname='index.docker.io'\nurl='https://registry-1.docker.io'\n";
    let pins: Vec<String> = load_str(pinned)
        .unwrap()
        .eviction
        .pins
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        pins,
        [
            "index.docker.io/library/alpine:3.*",
            "index.docker.io/bitnami/*",
            "k/x"
        ]
    );
    // Two upstreams cannot both be Docker Hub.
    let twice = format!("{hub}[[upstream]]\nname='docker.io'\nurl='http://mirror'\n");
    let err = load_str(&twice).unwrap_err();
    assert!(keys(&err).iter().all(|k| *k == "upstream[2]"), "{err}");
}

#[test]
fn names_and_aliases_must_be_registry_hosts() {
    let base = "[server]\nlisten='127.0.0.1:1'\n[storage]\ndata_dir='d'\n";
    let with = |name: &str| {
        load_str(&format!(
            "{base}[[upstream]]\nname='{name}'\nurl='http://a'\naliases=['ok.example:5000']\n"
        ))
    };
    for good in [
        "quay.io",
        "localhost:5000",
        "my-registry.internal",
        "10.0.0.1:443",
    ] {
        assert!(with(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "Quay.io",
        "quay.io/path",
        "-x.io",
        "x.io:",
        "x.io:0",
        "x..io",
        "x_y.io",
    ] {
        let err = with(bad).unwrap_err();
        assert_eq!(keys(&err), ["upstream[0]"], "{bad}");
    }
}

#[test]
fn the_rate_limit_reserve_is_a_whole_number_with_a_default() {
    let up = |extra: &str| {
        load_str(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"d\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n{extra}"
        ))
    };
    let default = up("").unwrap();
    assert_eq!(
        default.default_upstream().rate_limit_reserve,
        crate::upstream::DEFAULT_RESERVE
    );
    let set = up("rate_limit_reserve = 0").unwrap();
    assert_eq!(set.default_upstream().rate_limit_reserve, 0);
    for bad in ["rate_limit_reserve = -1", "rate_limit_reserve = \"5\""] {
        let err = up(bad).unwrap_err();
        assert_eq!(keys(&err), ["upstream[0].rate_limit_reserve"], "{bad}");
    }
}

#[test]
fn the_circuit_keys_have_defaults_and_are_checked() {
    let up = |extra: &str| {
        load_str(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"d\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n{extra}"
        ))
    };
    let default = up("").unwrap();
    assert_eq!(
        default.default_upstream().circuit,
        crate::upstream::CircuitSettings {
            failures: 3,
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
        }
    );
    let set =
        up("circuit_failures = 1\ncircuit_backoff_min = \"500ms\"\ncircuit_backoff_max = \"10s\"")
            .unwrap();
    assert_eq!(
        set.default_upstream().circuit,
        crate::upstream::CircuitSettings {
            failures: 1,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
        }
    );
    for (bad, key) in [
        ("circuit_failures = 0", "circuit_failures"),
        ("circuit_failures = -2", "circuit_failures"),
        ("circuit_failures = \"3\"", "circuit_failures"),
        ("circuit_backoff_min = \"0s\"", "circuit_backoff_min"),
        ("circuit_backoff_min = \"soon\"", "circuit_backoff_min"),
        ("circuit_backoff_max = \"1s\"", "circuit_backoff_max"),
    ] {
        let err = up(bad).unwrap_err();
        assert_eq!(keys(&err), [format!("upstream[0].{key}")], "{bad}");
    }
}
