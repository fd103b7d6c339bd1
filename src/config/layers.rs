//! Configuration layers: the embedded defaults (`config.toml`), then the file,
//! then `REGCACHE_*` environment variables, then command-line flags. Each later
//! layer wins key by key, so a value a later layer gives is never "missing"
//! from an earlier one. Tables merge key by key; any other value (an array such
//! as `[[upstream]]` or `pins`) is replaced whole: a file with its own
//! `[[upstream]]` tables mirrors exactly those. It records where every value
//! came from, for `regcache config show`.
//!
//! It never prints, never exits and never reads the process environment itself:
//! variables come through [`Secrets`].

use std::collections::BTreeMap;

use super::walker::Walker;
use super::{Config, ConfigError, ConfigErrors, DEFAULT_TOML, Overrides, Secrets};
use toml::{Table, Value};

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The embedded `config.toml`.
    Default,
    /// The `--config` file (its path).
    File(String),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (its name).
    Flag(&'static str),
    /// No layer gave it: the value regcache uses when a key is absent.
    BuiltIn,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("embedded default"),
            Self::File(path) => write!(f, "file {path}"),
            Self::Env(var) => write!(f, "env {var}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
            Self::BuiltIn => f.write_str("built-in default"),
        }
    }
}

/// The keys an environment variable can set: `REGCACHE_` and the key,
/// upper-case, `.` as `_` (`REGCACHE_STORAGE_MAX_SIZE`).
pub const ENV_KEYS: [&str; 6] = [
    "server.listen",
    "storage.data_dir",
    "storage.max_size",
    "storage.high_watermark",
    "storage.low_watermark",
    "storage.evict_interval",
];

/// Replaces the default upstream's `url`, like `--upstream`.
pub const UPSTREAM_URL_ENV: &str = "REGCACHE_UPSTREAM_URL";

/// Variables under these prefixes must name a key: a typo is an error, not a
/// silently ignored setting. (Other `REGCACHE_*` names are free, e.g. for
/// `password_env`.)
const CHECKED_ENV_PREFIXES: [&str; 2] = ["REGCACHE_SERVER_", "REGCACHE_STORAGE_"];

/// The variable that sets `key`.
pub fn env_var(key: &str) -> String {
    format!("REGCACHE_{}", key.replace('.', "_").to_uppercase())
}

/// The effective configuration and where each of its keys came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// By key as errors name them (`server.listen`, `upstream[0].url`).
    pub sources: BTreeMap<String, Source>,
    /// The merged tables, before validation (for what `Config` does not keep,
    /// such as the name of a password's variable).
    pub(super) merged: Table,
}

impl Loaded {
    /// Where `key` came from.
    pub fn source(&self, key: &str) -> &Source {
        self.sources.get(key).unwrap_or(&Source::BuiltIn)
    }
}

/// Loads the layers: the embedded defaults, `file` (its text and name) when
/// given, the `REGCACHE_*` variables `secrets` has, then `flags`.
pub fn load_layered(
    file: Option<(&str, &str)>,
    flags: &Overrides,
    secrets: &dyn Secrets,
) -> Result<Loaded, ConfigErrors> {
    let source_name = file.map_or("the embedded default configuration", |(_, name)| name);
    let fail = |errors| ConfigErrors {
        source_name: source_name.to_owned(),
        errors,
    };
    let mut merged: Table = DEFAULT_TOML
        .parse()
        .expect("the embedded config.toml is valid TOML (a unit test checks it)");
    let mut sources = BTreeMap::new();
    record(
        &Value::Table(merged.clone()),
        "",
        &Source::Default,
        &mut sources,
    );
    if let Some((text, name)) = file {
        let table = super::parse_table(text).map_err(|e| fail(vec![e]))?;
        merge(
            &mut merged,
            table,
            "",
            &Source::File(name.to_owned()),
            &mut sources,
        );
    }
    let mut errors = apply_env(&mut merged, secrets, &mut sources);
    let mut walker = Walker::default();
    let config = walker.config(merged.clone(), flags, secrets);
    errors.extend(
        walker
            .errors
            .into_iter()
            .map(|e| name_env_source(e, &sources)),
    );
    let config = match config {
        Some(config) if errors.is_empty() => config,
        _ => return Err(fail(errors)),
    };
    record_flags(&config, flags, &mut sources);
    Ok(Loaded {
        config,
        sources,
        merged,
    })
}

/// Records `value` at `path` (and every key under it) as coming from `source`.
fn record(value: &Value, path: &str, source: &Source, sources: &mut BTreeMap<String, Source>) {
    match value {
        Value::Table(table) => {
            for (key, inner) in table {
                record(inner, &join(path, key), source, sources);
            }
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_table) => {
            for (i, item) in items.iter().enumerate() {
                record(item, &format!("{path}[{i}]"), source, sources);
            }
        }
        _ => {
            sources.insert(path.to_owned(), source.clone());
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Merges `over` into `base`: tables key by key, anything else replaced whole
/// (with the sources of what it replaced forgotten).
fn merge(
    base: &mut Table,
    over: Table,
    path: &str,
    source: &Source,
    sources: &mut BTreeMap<String, Source>,
) {
    for (key, value) in over {
        let key_path = join(path, &key);
        match (base.get_mut(&key), value) {
            (Some(Value::Table(inner)), Value::Table(over_inner)) => {
                merge(inner, over_inner, &key_path, source, sources);
            }
            (_, value) => {
                sources.retain(|k, _| {
                    k != &key_path
                        && !k.starts_with(&format!("{key_path}."))
                        && !k.starts_with(&format!("{key_path}["))
                });
                record(&value, &key_path, source, sources);
                base.insert(key, value);
            }
        }
    }
}

/// Applies the `REGCACHE_*` variables; returns the errors of those that name
/// no key or hold no usable value.
fn apply_env(
    merged: &mut Table,
    secrets: &dyn Secrets,
    sources: &mut BTreeMap<String, Source>,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for key in ENV_KEYS {
        let var = env_var(key);
        let Some(raw) = secrets.env(&var) else {
            continue;
        };
        let value = if key.ends_with("watermark") {
            match raw.trim().parse::<f64>() {
                Ok(number) => Value::Float(number),
                Err(_) => {
                    errors.push(ConfigError {
                        key: var,
                        message: format!("{raw:?} is not a number like 0.9"),
                    });
                    continue;
                }
            }
        } else {
            Value::String(raw)
        };
        let (table, leaf) = key.split_once('.').expect("ENV_KEYS are table.key");
        let inner = merged
            .entry(table)
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(inner) = inner {
            inner.insert(leaf.to_owned(), value);
            sources.insert(key.to_owned(), Source::Env(var));
        }
    }
    if let Some(url) = secrets.env(UPSTREAM_URL_ENV) {
        match default_upstream_index(merged) {
            Some(i) => {
                if let Some(Value::Table(up)) = upstream_tables(merged).get_mut(i) {
                    up.insert("url".into(), Value::String(url));
                    let var = UPSTREAM_URL_ENV.to_owned();
                    sources.insert(format!("upstream[{i}].url"), Source::Env(var));
                }
            }
            None => errors.push(ConfigError {
                key: UPSTREAM_URL_ENV.into(),
                message: "there is no default upstream to apply it to".into(),
            }),
        }
    }
    let known: Vec<String> = ENV_KEYS.iter().map(|k| env_var(k)).collect();
    for (var, _) in secrets.env_vars() {
        let checked = CHECKED_ENV_PREFIXES.iter().any(|p| var.starts_with(p));
        if checked && !known.contains(&var) {
            errors.push(ConfigError {
                key: var,
                message: format!("names no setting (known: {})", known.join(", ")),
            });
        }
    }
    errors
}

fn upstream_tables(merged: &mut Table) -> &mut [Value] {
    match merged.get_mut("upstream") {
        Some(Value::Array(items)) => items,
        _ => &mut [],
    }
}

/// The `[[upstream]]` with `default = true`, or the only one.
fn default_upstream_index(merged: &mut Table) -> Option<usize> {
    let tables = upstream_tables(merged);
    let marked = tables
        .iter()
        .position(|t| t.get("default").and_then(Value::as_bool) == Some(true));
    marked.or((tables.len() == 1).then_some(0))
}

/// An error about a key an environment variable set names that variable.
fn name_env_source(mut error: ConfigError, sources: &BTreeMap<String, Source>) -> ConfigError {
    if let Some(Source::Env(var)) = sources.get(&error.key) {
        error.message = format!("{} (set by {var})", error.message);
    }
    error
}

fn record_flags(config: &Config, flags: &Overrides, sources: &mut BTreeMap<String, Source>) {
    if flags.listen.is_some() {
        sources.insert("server.listen".into(), Source::Flag("--listen"));
    }
    if flags.data_dir.is_some() {
        sources.insert("storage.data_dir".into(), Source::Flag("--data"));
    }
    if flags.max_size.is_some() {
        sources.insert("storage.max_size".into(), Source::Flag("--max-size"));
    }
    if flags.upstream_url.is_some() {
        if let Some(i) = config.upstreams.iter().position(|u| u.default) {
            sources.insert(format!("upstream[{i}].url"), Source::Flag("--upstream"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::path::PathBuf;

    /// Variables and files for a test, never the process's.
    #[derive(Default)]
    struct Env(BTreeMap<String, String>);

    impl Env {
        fn with(mut self, var: &str, value: &str) -> Self {
            self.0.insert(var.to_owned(), value.to_owned());
            self
        }
    }

    impl Secrets for Env {
        fn env(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
        fn file(&self, path: &str) -> std::io::Result<String> {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                path.to_owned(),
            ))
        }
        fn env_vars(&self) -> Vec<(String, String)> {
            self.0.clone().into_iter().collect()
        }
    }

    const FILE: &str = r#"
        [storage]
        data_dir = "/var/lib/regcache"
        max_size = "1GiB"
        [[upstream]]
        name = "docker.io"
        url = "http://127.0.0.1:5001"
    "#;

    fn file() -> Option<(&'static str, &'static str)> {
        Some((FILE, "regcache.toml"))
    }

    fn file_source() -> Source {
        Source::File("regcache.toml".into())
    }

    #[test]
    fn the_embedded_defaults_alone_are_the_default_config() {
        let loaded = load_layered(None, &Overrides::default(), &Env::default()).unwrap();
        assert_eq!(loaded.config.listen.to_string(), "0.0.0.0:5000");
        assert_eq!(loaded.config.upstreams.len(), 4);
        assert_eq!(loaded.source("server.listen"), &Source::Default);
        assert_eq!(loaded.source("upstream[0].tag_ttl"), &Source::Default);
        assert_eq!(loaded.source("upstream[3].tag_ttl"), &Source::BuiltIn);
    }

    #[test]
    fn the_file_wins_key_by_key_and_replaces_arrays() {
        let loaded = load_layered(file(), &Overrides::default(), &Env::default()).unwrap();
        let c = &loaded.config;
        // From the defaults: the file has no [server].
        assert_eq!(c.listen.to_string(), "0.0.0.0:5000");
        assert_eq!(loaded.source("server.listen"), &Source::Default);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/regcache"));
        assert_eq!(loaded.source("storage.data_dir"), &file_source());
        assert_eq!(c.eviction.budget.max_size(), 1 << 30);
        // Not in the file: the default's watermark.
        assert_eq!(c.eviction.budget.high_watermark(), 0.95);
        assert_eq!(loaded.source("storage.high_watermark"), &Source::Default);
        // [[upstream]] is replaced whole: only the file's, which is the default.
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.default_upstream().name, "docker.io");
        assert_eq!(loaded.source("upstream[0].url"), &file_source());
        assert_eq!(loaded.source("upstream[0].tag_ttl"), &Source::BuiltIn);
        assert!(!loaded.sources.contains_key("upstream[3].name"));
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let env = Env::default()
            .with("REGCACHE_STORAGE_MAX_SIZE", "2GiB")
            .with("REGCACHE_STORAGE_LOW_WATERMARK", "0.5")
            .with("REGCACHE_SERVER_LISTEN", "127.0.0.1:7000")
            .with("REGCACHE_UPSTREAM_URL", "http://127.0.0.1:6000");
        let loaded = load_layered(file(), &Overrides::default(), &env).unwrap();
        let c = &loaded.config;
        assert_eq!(c.eviction.budget.max_size(), 2 << 30);
        assert_eq!(c.eviction.budget.low_watermark(), 0.5);
        assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(c.default_upstream().url.as_str(), "http://127.0.0.1:6000/");
        let env_source = |var: &str| Source::Env(var.into());
        assert_eq!(
            loaded.source("storage.max_size"),
            &env_source("REGCACHE_STORAGE_MAX_SIZE")
        );
        assert_eq!(
            loaded.source("upstream[0].url"),
            &env_source("REGCACHE_UPSTREAM_URL")
        );
        assert_eq!(loaded.source("storage.data_dir"), &file_source());
    }

    #[test]
    fn flags_win_over_everything() {
        let env = Env::default()
            .with("REGCACHE_SERVER_LISTEN", "127.0.0.1:7000")
            .with("REGCACHE_STORAGE_MAX_SIZE", "2GiB");
        let flags = Overrides {
            listen: Some("127.0.0.1:8000".parse::<SocketAddr>().unwrap()),
            data_dir: Some("/flag".into()),
            upstream_url: Some("http://127.0.0.1:6001".parse().unwrap()),
            max_size: Some(3 << 30),
        };
        let loaded = load_layered(file(), &flags, &env).unwrap();
        let c = &loaded.config;
        assert_eq!(c.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.data_dir, PathBuf::from("/flag"));
        assert_eq!(c.eviction.budget.max_size(), 3 << 30);
        assert_eq!(c.default_upstream().url.as_str(), "http://127.0.0.1:6001/");
        for (key, flag) in [
            ("server.listen", "--listen"),
            ("storage.data_dir", "--data"),
            ("storage.max_size", "--max-size"),
            ("upstream[0].url", "--upstream"),
        ] {
            assert_eq!(loaded.source(key), &Source::Flag(flag), "{key}");
        }
    }

    #[test]
    fn a_value_a_later_layer_gives_is_never_missing() {
        // No [server] and no [storage] at all, in a plain `load` too.
        let text = "[[upstream]]\nname = \"a.example\"\nurl = \"http://127.0.0.1:1\"\n";
        let flags = Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some("/d".into()),
            ..Overrides::default()
        };
        let c = super::super::load(text, "t.toml", &flags, &Env::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        let err =
            super::super::load(text, "t.toml", &Overrides::default(), &Env::default()).unwrap_err();
        let keys: Vec<_> = err.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["server.listen", "storage.data_dir"]);
        // Layered, the defaults give them.
        let loaded = load_layered(
            Some((text, "t.toml")),
            &Overrides::default(),
            &Env::default(),
        )
        .unwrap();
        assert_eq!(loaded.config.data_dir, PathBuf::from("./regcache-data"));
    }

    #[test]
    fn bad_environment_values_name_their_variable() {
        let env = Env::default()
            .with("REGCACHE_STORAGE_HIGH_WATERMARK", "high")
            .with("REGCACHE_STORAGE_EVICT_INTERVAL", "soon")
            .with("REGCACHE_STORAGE_MAXSIZE", "1GiB")
            .with("REGCACHE_K8S_PASSWORD", "not a setting, not checked");
        let err = load_layered(file(), &Overrides::default(), &env).unwrap_err();
        let found: Vec<_> = err
            .errors
            .iter()
            .map(|e| (e.key.as_str(), e.message.contains("REGCACHE_")))
            .collect();
        assert_eq!(
            found,
            [
                ("REGCACHE_STORAGE_HIGH_WATERMARK", false),
                ("REGCACHE_STORAGE_MAXSIZE", true),
                ("storage.evict_interval", true),
            ],
            "{err}"
        );
    }

    #[test]
    fn show_renders_every_value_with_its_source_and_loads_back() {
        let env = Env::default()
            .with("REGCACHE_STORAGE_LOW_WATERMARK", "0.5")
            .with("PW", "hunter2");
        let text = format!("{FILE}username = \"robot\"\npassword_env = \"PW\"\n");
        let flags = Overrides {
            listen: Some("127.0.0.1:8000".parse().unwrap()),
            ..Overrides::default()
        };
        let loaded = load_layered(Some((&text, "regcache.toml")), &flags, &env).unwrap();
        let shown = super::super::render(&loaded);
        for line in [
            "listen = \"127.0.0.1:8000\"",
            "# flag --listen",
            "data_dir = \"/var/lib/regcache\"",
            "# file regcache.toml",
            "low_watermark = 0.5",
            "# env REGCACHE_STORAGE_LOW_WATERMARK",
            "evict_interval = \"30s\"",
            "# embedded default",
            "tag_ttl = \"5m\"",
            "# built-in default",
            "password_env = \"PW\"",
        ] {
            assert!(shown.contains(line), "no {line:?} in\n{shown}");
        }
        assert!(!shown.contains("hunter2"), "a secret was shown:\n{shown}");
        // Every value line says where it came from.
        for line in shown.lines().filter(|l| l.contains(" = ")) {
            assert!(line.contains("  # "), "{line}");
        }
        // The text is a configuration that loads to the same values.
        let again = super::super::load(&shown, "shown", &Overrides::default(), &env).unwrap();
        assert_eq!(format!("{again:?}"), format!("{:?}", loaded.config));
    }
}
