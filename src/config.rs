//! `config.toml` → a validated, typed [`Config`]. The repository's `config.toml` is
//! embedded as the default. Parsing walks the whole document and reports every
//! problem at once, each naming its key; unknown keys are errors. Command-line
//! overrides are applied here too, so the rest of the program sees one `Config`.
//!
//! This module never prints and never exits: it returns errors to `main`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};
use url::Url;

/// The repository's `config.toml`, the configuration used without `--config`.
pub const DEFAULT_TOML: &str = include_str!("../config.toml");

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// At least one; exactly one has `default == true`.
    pub upstreams: Vec<UpstreamConfig>,
    /// The disk budget (`storage.max_size`, watermarks, pins).
    pub eviction: EvictionConfig,
}

/// `[storage]`'s disk budget: how much committed content the cache keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    /// Bytes of committed content (blobs and manifests) never exceeded.
    pub max_size: u64,
    /// Past this fraction of `max_size`, evict...
    pub high_watermark: f64,
    /// ...down to this fraction.
    pub low_watermark: f64,
    /// How often usage is re-read from the index and checked.
    pub interval: Duration,
    /// Content never evicted.
    pub pins: Vec<crate::evict::Pin>,
}

impl EvictionConfig {
    pub fn budget(&self) -> crate::evict::Budget {
        crate::evict::Budget::new(self.max_size, self.high_watermark, self.low_watermark)
    }

    pub fn pins(&self) -> crate::evict::Pins {
        crate::evict::Pins::new(self.pins.clone())
    }
}

/// `storage.max_size` when absent (see config.toml).
pub const DEFAULT_MAX_SIZE: u64 = 20 * 1024 * 1024 * 1024;

impl Config {
    pub fn default_upstream(&self) -> &UpstreamConfig {
        self.upstreams
            .iter()
            .find(|u| u.default)
            .expect("validation guarantees exactly one default upstream")
    }
}

/// One upstream registry.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The registry host clients use (`registry.k8s.io`); the `ns` value that routes here.
    pub name: String,
    pub url: Url,
    pub default: bool,
    pub aliases: Vec<String>,
    pub tag_ttl: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub credentials: Option<Credentials>,
}

impl UpstreamConfig {
    /// Whether `host` (an `ns` value) names this upstream.
    pub fn answers_to(&self, host: &str) -> bool {
        self.name == host || self.aliases.iter().any(|a| a == host)
    }
}

/// Credentials for an upstream's token service.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// A secret string whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Values given on the command line, which win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// Replaces the default upstream's `url`.
    pub upstream_url: Option<Url>,
    /// Replaces `storage.max_size` (bytes).
    pub max_size: Option<u64>,
}

/// One problem, naming the key it concerns (`upstream[0].tag_ttl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub source_name: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{} error{} in {}:",
            n,
            if n == 1 { "" } else { "s" },
            self.source_name
        )?;
        for e in &self.errors {
            write!(f, "\n  {}: {}", e.key, e.message)?;
        }
        Ok(())
    }
}

/// Reads configuration values from outside the file (environment variables and
/// secret files), so tests never touch the process environment.
pub trait Secrets {
    fn env(&self, name: &str) -> Option<String>;
    fn file(&self, path: &str) -> std::io::Result<String>;
}

/// The real process environment and file system.
#[derive(Debug, Clone, Copy)]
pub struct ProcessSecrets;

impl Secrets for ProcessSecrets {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn file(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Parses and validates `text` (named `source_name` in errors), then applies `overrides`.
pub fn load(
    text: &str,
    source_name: &str,
    overrides: &Overrides,
    secrets: &dyn Secrets,
) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        source_name: source_name.to_owned(),
        errors,
    };
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        fail(vec![ConfigError {
            key: "(syntax)".into(),
            message: e.to_string().trim().replace('\n', " "),
        }])
    })?;
    let mut walker = Walker::default();
    let config = walker.config(table, overrides, secrets);
    match config {
        Some(config) if walker.errors.is_empty() => Ok(config),
        _ => Err(fail(walker.errors)),
    }
}

/// Walks the TOML tree, collecting every error instead of stopping at the first.
#[derive(Default)]
struct Walker {
    errors: Vec<ConfigError>,
}

impl Walker {
    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn config(
        &mut self,
        mut root: Table,
        overrides: &Overrides,
        secrets: &dyn Secrets,
    ) -> Option<Config> {
        let mut server = self.table(&mut root, "", "server");
        let mut storage = self.table(&mut root, "", "storage");
        let upstream_values = match root.remove("upstream") {
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.error("upstream", "must be an array of tables ([[upstream]])");
                Vec::new()
            }
            None => Vec::new(),
        };
        self.reject_unknown(&root, "");

        let listen = self.parsed::<SocketAddr>(
            &mut server,
            "server",
            "listen",
            "an address like 0.0.0.0:5000",
        );
        self.reject_unknown(&server, "server");
        let data_dir = self
            .string(&mut storage, "storage", "data_dir")
            .map(PathBuf::from);
        let (budget, raw_pins) = self.budget(&mut storage, overrides);
        self.reject_unknown(&storage, "storage");

        let upstream_tables = upstream_values.len();
        let mut upstreams = Vec::new();
        for (i, value) in upstream_values.into_iter().enumerate() {
            let path = format!("upstream[{i}]");
            match value {
                Value::Table(t) => upstreams.extend(self.upstream(t, &path, secrets)),
                _ => self.error(&path, "must be a table"),
            }
        }
        if upstream_tables == 0 && !self.has_error("upstream") {
            self.error("upstream", "at least one [[upstream]] is required");
        }
        self.check_upstreams(&mut upstreams, overrides);
        let pins = self.pins(&raw_pins, &upstreams);
        let eviction = budget.map(|budget| EvictionConfig { pins, ..budget });

        let listen = overrides.listen.or(listen);
        let data_dir = overrides.data_dir.clone().or(data_dir);
        if listen.is_none() && overrides.listen.is_none() && !self.has_error("server.listen") {
            self.error("server.listen", "missing");
        }
        if data_dir.is_none() && !self.has_error("storage.data_dir") {
            self.error("storage.data_dir", "missing");
        }
        Some(Config {
            listen: listen?,
            data_dir: data_dir?,
            upstreams,
            eviction: eviction?,
        })
    }

    /// `storage.max_size`, the watermarks, `evict_interval` and the raw `pins`
    /// (resolved by [`Self::pins`] once the upstreams are known).
    fn budget(
        &mut self,
        storage: &mut Table,
        overrides: &Overrides,
    ) -> (Option<EvictionConfig>, Vec<String>) {
        let max_size = self.size(storage, "storage", "max_size", DEFAULT_MAX_SIZE);
        let high = self.fraction(storage, "storage", "high_watermark", 0.95);
        let low = self.fraction(storage, "storage", "low_watermark", 0.85);
        let interval = self.duration(
            storage,
            "storage",
            "evict_interval",
            Duration::from_secs(30),
        );
        let pins = self.optional_strings(storage, "storage", "pins");
        let max_size = overrides.max_size.or(max_size);
        if max_size == Some(0) {
            self.error("storage.max_size", "must be more than 0 bytes");
        }
        if let (Some(high), Some(low)) = (high, low) {
            if low > high {
                self.error(
                    "storage.low_watermark",
                    format!("{low} is above high_watermark {high}"),
                );
            }
        }
        if interval.is_some_and(|d| d.is_zero()) {
            self.error("storage.evict_interval", "must be longer than 0s");
        }
        let budget = (|| {
            Some(EvictionConfig {
                max_size: max_size?,
                high_watermark: high?,
                low_watermark: low?,
                interval: interval?,
                pins: Vec::new(),
            })
        })();
        (budget, pins)
    }

    /// Parses `storage.pins`, resolving each upstream name or alias.
    fn pins(&mut self, raw: &[String], upstreams: &[UpstreamConfig]) -> Vec<crate::evict::Pin> {
        let mut pins = Vec::new();
        let resolve = |host: &str| {
            upstreams
                .iter()
                .find(|u| u.answers_to(host))
                .map(|u| u.name.clone())
        };
        for (i, text) in raw.iter().enumerate() {
            match crate::evict::Pin::parse(text, resolve) {
                Ok(pin) => pins.push(pin),
                Err(e) => self.error(&format!("storage.pins[{i}]"), e),
            }
        }
        pins
    }

    fn upstream(
        &mut self,
        mut t: Table,
        path: &str,
        secrets: &dyn Secrets,
    ) -> Option<UpstreamConfig> {
        let name = self.string(&mut t, path, "name");
        let url = self.parsed::<Url>(&mut t, path, "url", "an absolute http:// or https:// URL");
        let default = self.optional_bool(&mut t, path, "default").unwrap_or(false);
        let aliases = self.optional_strings(&mut t, path, "aliases");
        let tag_ttl = self.duration(&mut t, path, "tag_ttl", Duration::from_secs(300));
        let connect_timeout =
            self.duration(&mut t, path, "connect_timeout", Duration::from_secs(10));
        let idle_timeout = self.duration(&mut t, path, "idle_timeout", Duration::from_secs(60));
        let credentials = self.credentials(&mut t, path, secrets);
        self.reject_unknown(&t, path);
        if let Some(url) = &url {
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                self.error(
                    &format!("{path}.url"),
                    "must be an http:// or https:// URL with a host",
                );
            }
        }
        Some(UpstreamConfig {
            name: name?,
            url: url?,
            default,
            aliases,
            tag_ttl: tag_ttl?,
            connect_timeout: connect_timeout?,
            idle_timeout: idle_timeout?,
            credentials: credentials.ok()?,
        })
    }

    /// `username` with exactly one of `password_env` / `password_file`, or none of them.
    fn credentials(
        &mut self,
        t: &mut Table,
        path: &str,
        secrets: &dyn Secrets,
    ) -> Result<Option<Credentials>, ()> {
        let username = self.optional_string(t, path, "username");
        let env = self.optional_string(t, path, "password_env");
        let file = self.optional_string(t, path, "password_file");
        let password = match (&env, &file) {
            (Some(_), Some(_)) => {
                self.error(
                    &format!("{path}.password_file"),
                    "give password_env or password_file, not both",
                );
                return Err(());
            }
            (Some(var), None) => match secrets.env(var) {
                Some(v) => Some(Secret::new(v)),
                None => {
                    self.error(
                        &format!("{path}.password_env"),
                        format!("environment variable {var} is not set"),
                    );
                    return Err(());
                }
            },
            (None, Some(p)) => match secrets.file(p) {
                Ok(v) => Some(Secret::new(v.lines().next().unwrap_or_default())),
                Err(e) => {
                    self.error(
                        &format!("{path}.password_file"),
                        format!("cannot read {p}: {e}"),
                    );
                    return Err(());
                }
            },
            (None, None) => None,
        };
        match (username, password) {
            (Some(username), Some(password)) => Ok(Some(Credentials { username, password })),
            (None, None) => Ok(None),
            (Some(_), None) => {
                self.error(
                    &format!("{path}.username"),
                    "needs password_env or password_file",
                );
                Err(())
            }
            (None, Some(_)) => {
                self.error(
                    &format!("{path}.username"),
                    "missing (a password was given)",
                );
                Err(())
            }
        }
    }

    fn check_upstreams(&mut self, upstreams: &mut [UpstreamConfig], overrides: &Overrides) {
        if upstreams.is_empty() {
            return;
        }
        let defaults = upstreams.iter().filter(|u| u.default).count();
        if defaults > 1 {
            self.error("upstream", "only one upstream may have default = true");
        }
        if defaults == 0 {
            if upstreams.len() == 1 {
                upstreams[0].default = true;
            } else {
                self.error("upstream", "one upstream needs default = true");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in upstreams.iter().enumerate() {
            for host in std::iter::once(&u.name).chain(&u.aliases) {
                if !seen.insert(host.clone()) {
                    self.error(
                        &format!("upstream[{i}]"),
                        format!("name or alias {host:?} is used twice"),
                    );
                }
            }
        }
        if let Some(url) = &overrides.upstream_url {
            if let Some(u) = upstreams.iter_mut().find(|u| u.default) {
                u.url = url.clone();
            }
        }
    }

    fn has_error(&self, key: &str) -> bool {
        self.errors.iter().any(|e| e.key == key)
    }

    fn key(path: &str, key: &str) -> String {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    }

    fn table(&mut self, t: &mut Table, path: &str, key: &str) -> Table {
        match t.remove(key) {
            Some(Value::Table(inner)) => inner,
            Some(_) => {
                self.error(&Self::key(path, key), "must be a table");
                Table::new()
            }
            None => Table::new(),
        }
    }

    fn reject_unknown(&mut self, t: &Table, path: &str) {
        for key in t.keys() {
            self.error(&Self::key(path, key), "unknown key");
        }
    }

    fn optional_string(&mut self, t: &mut Table, path: &str, key: &str) -> Option<String> {
        match t.remove(key)? {
            Value::String(s) => Some(s),
            other => {
                self.error(
                    &Self::key(path, key),
                    format!("must be a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string(&mut self, t: &mut Table, path: &str, key: &str) -> Option<String> {
        let present = t.contains_key(key);
        let value = self.optional_string(t, path, key);
        if !present {
            self.error(&Self::key(path, key), "missing");
        }
        value
    }

    fn parsed<T: std::str::FromStr>(
        &mut self,
        t: &mut Table,
        path: &str,
        key: &str,
        what: &str,
    ) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        let raw = self.string(t, path, key)?;
        match raw.parse() {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(&Self::key(path, key), format!("{raw:?} is not {what}: {e}"));
                None
            }
        }
    }

    fn optional_bool(&mut self, t: &mut Table, path: &str, key: &str) -> Option<bool> {
        match t.remove(key)? {
            Value::Boolean(b) => Some(b),
            other => {
                self.error(
                    &Self::key(path, key),
                    format!("must be true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn optional_strings(&mut self, t: &mut Table, path: &str, key: &str) -> Vec<String> {
        let Some(value) = t.remove(key) else {
            return Vec::new();
        };
        let items = match value {
            Value::Array(items) => items,
            other => {
                self.error(
                    &Self::key(path, key),
                    format!("must be an array of strings, found {}", other.type_str()),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for item in items {
            match item {
                Value::String(s) => out.push(s),
                other => self.error(
                    &Self::key(path, key),
                    format!("items must be strings, found {}", other.type_str()),
                ),
            }
        }
        out
    }

    /// A size in bytes, human-readable ("50GiB", "500MB", "1048576"); `Some(default)`
    /// when absent, `None` when invalid.
    fn size(&mut self, t: &mut Table, path: &str, key: &str, default: u64) -> Option<u64> {
        if !t.contains_key(key) {
            return Some(default);
        }
        let raw = self.optional_string(t, path, key)?;
        match raw.trim().parse::<bytesize::ByteSize>() {
            Ok(size) => Some(size.as_u64()),
            Err(e) => {
                self.error(
                    &Self::key(path, key),
                    format!("{raw:?} is not a size like \"50GiB\": {e}"),
                );
                None
            }
        }
    }

    /// A fraction in (0, 1]; `Some(default)` when absent, `None` when invalid.
    fn fraction(&mut self, t: &mut Table, path: &str, key: &str, default: f64) -> Option<f64> {
        let value = match t.remove(key) {
            None => return Some(default),
            Some(Value::Float(f)) => f,
            Some(Value::Integer(i)) => i as f64,
            Some(other) => {
                self.error(
                    &Self::key(path, key),
                    format!("must be a number like 0.9, found {}", other.type_str()),
                );
                return None;
            }
        };
        if value > 0.0 && value <= 1.0 {
            Some(value)
        } else {
            self.error(
                &Self::key(path, key),
                format!("{value} is not a fraction in (0, 1]"),
            );
            None
        }
    }

    /// A humantime duration ("90s", "5m"); `Some(default)` when absent, `None` when invalid.
    fn duration(
        &mut self,
        t: &mut Table,
        path: &str,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        if !t.contains_key(key) {
            return Some(default);
        }
        let raw = self.optional_string(t, path, key)?;
        match humantime::parse_duration(&raw) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    &Self::key(path, key),
                    format!("{raw:?} is not a duration like \"5m\": {e}"),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct FakeSecrets(HashMap<String, String>);

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
        assert_eq!(c.eviction.max_size, 1000);
    }

    #[test]
    fn the_budget_has_defaults_human_sizes_and_checked_watermarks() {
        let c = load_str(DEFAULT_TOML).unwrap();
        assert_eq!(c.eviction.max_size, DEFAULT_MAX_SIZE);
        assert_eq!(
            (c.eviction.high_watermark, c.eviction.low_watermark),
            (0.95, 0.85)
        );
        assert_eq!(c.eviction.interval, Duration::from_secs(30));

        let base = "[server]\nlisten='127.0.0.1:1'\n[[upstream]]\nname='registry.k8s.io'\nurl='http://a'\naliases=['k8s.gcr.io']\n";
        let good = format!(
            "{base}[storage]\ndata_dir='d'\nmax_size='1.5 GiB'\nhigh_watermark=0.9\nlow_watermark=0.5\nevict_interval='1m'\npins=['k8s.gcr.io/pause:*','registry.k8s.io/coredns/*']\n"
        );
        let c = load_str(&good).unwrap();
        assert_eq!(c.eviction.max_size, 1536 * 1024 * 1024);
        let budget = c.eviction.budget();
        assert_eq!(budget.low, budget.max_size / 2);
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
        let env_cfg = format!(
            "{base}[[upstream]]\nname='a'\nurl='http://a'\nusername='u'\npassword_env='PW'\n"
        );
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
}
