//! Renders an effective configuration as a `config.toml` (`regcache config
//! show`): every key with the value regcache uses, each followed by where it
//! came from. The text loads back to the same configuration.
//!
//! It never shows a secret: credentials appear as the name of the variable or
//! file the password is read from, never the password.

use std::time::Duration;

use toml::Value;

use super::{Config, EvictionConfig, Loaded, ProxySource, UpstreamConfig};

/// The configuration in `loaded` as TOML, a `# <source>` comment on each line.
pub fn render(loaded: &Loaded) -> String {
    let mut lines = Lines::default();
    lines.comment("regcache's effective configuration, each value with where it came from.");
    lines.comment(
        "Layers, later ones winning: embedded default, file, REGCACHE_* environment, flags.",
    );
    server_and_storage(&mut lines, &loaded.config, loaded);
    scan(&mut lines, &loaded.config, loaded);
    for (i, upstream) in loaded.config.upstreams.iter().enumerate() {
        self::upstream(&mut lines, i, upstream, loaded);
        egress(&mut lines, i, upstream, loaded);
    }
    lines.finish()
}

fn server_and_storage(lines: &mut Lines, config: &Config, loaded: &Loaded) {
    lines.header("[server]");
    lines.value(loaded, "server.listen", string(config.listen.to_string()));
    if let Some(addr) = config.metrics_listen {
        lines.value(loaded, "server.metrics_listen", string(addr.to_string()));
    }
    let limits = &config.connections;
    let count = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    for (key, value) in [
        ("header_read_timeout", duration(limits.header_read_timeout)),
        ("keepalive_timeout", duration(limits.keepalive_timeout)),
        ("max_connections", count(limits.max_connections as u64)),
        (
            "max_requests_per_connection",
            count(limits.max_requests_per_connection),
        ),
        ("shutdown_timeout", duration(limits.shutdown_timeout)),
    ] {
        lines.value(loaded, &format!("server.{key}"), value);
    }
    if let Some(tls) = &config.tls {
        lines.header("[server.tls]");
        lines.value(loaded, "server.tls.cert_file", path(&tls.cert_file));
        lines.value(loaded, "server.tls.key_file", path(&tls.key_file));
    }
    if let Some(auth) = &config.auth {
        lines.header("[server.auth]");
        lines.value(loaded, "server.auth.htpasswd", path(&auth.htpasswd));
        lines.value(
            loaded,
            "server.auth.required",
            Value::Boolean(auth.required),
        );
        lines.value(loaded, "server.auth.realm", string(auth.realm.clone()));
    }
    lines.header("[storage]");
    let data_dir = config.data_dir.display().to_string();
    lines.value(loaded, "storage.data_dir", string(data_dir));
    let EvictionConfig {
        budget,
        interval,
        pins,
    } = &config.eviction;
    lines.value(loaded, "storage.max_size", string(size(budget.max_size())));
    lines.value(
        loaded,
        "storage.high_watermark",
        Value::Float(budget.high_watermark()),
    );
    lines.value(
        loaded,
        "storage.low_watermark",
        Value::Float(budget.low_watermark()),
    );
    lines.value(loaded, "storage.evict_interval", duration(*interval));
    let pins = pins.iter().map(|p| string(p.to_string())).collect();
    lines.value(loaded, "storage.pins", Value::Array(pins));
    let scrub = &config.scrub;
    let every = scrub.interval.map_or(string("off".into()), duration);
    lines.value(loaded, "storage.scrub_interval", every);
    lines.value(loaded, "storage.scrub_rate", string(size(scrub.rate)));
}

fn upstream(lines: &mut Lines, i: usize, upstream: &UpstreamConfig, loaded: &Loaded) {
    let key = |name: &str| format!("upstream[{i}].{name}");
    lines.header("[[upstream]]");
    lines.value(loaded, &key("name"), string(upstream.name.clone()));
    lines.value(loaded, &key("url"), string(upstream.url.to_string()));
    lines.value(loaded, &key("default"), Value::Boolean(upstream.default));
    let aliases = upstream.aliases.iter().cloned().map(string).collect();
    lines.value(loaded, &key("aliases"), Value::Array(aliases));
    lines.value(loaded, &key("tag_ttl"), duration(upstream.tag_ttl));
    lines.value(
        loaded,
        &key("connect_timeout"),
        duration(upstream.connect_timeout),
    );
    lines.value(
        loaded,
        &key("idle_timeout"),
        duration(upstream.idle_timeout),
    );
    lines.value(
        loaded,
        &key("revalidate_timeout"),
        duration(upstream.revalidate_timeout),
    );
    lines.value(
        loaded,
        &key("rate_limit_reserve"),
        Value::Integer(upstream.rate_limit_reserve as i64),
    );
    lines.value(
        loaded,
        &key("circuit_failures"),
        Value::Integer(upstream.circuit.failures.into()),
    );
    lines.value(
        loaded,
        &key("circuit_backoff_min"),
        duration(upstream.circuit.backoff_min),
    );
    lines.value(
        loaded,
        &key("circuit_backoff_max"),
        duration(upstream.circuit.backoff_max),
    );
    let Some(credentials) = &upstream.credentials else {
        return;
    };
    lines.value(
        loaded,
        &key("username"),
        string(credentials.username.clone()),
    );
    // Where the password is read from, never the password itself.
    for from in ["password_env", "password_file"] {
        if let Some(value) = merged_upstream_key(loaded, i, from) {
            lines.value(loaded, &key(from), value.clone());
        }
    }
}

fn scan(lines: &mut Lines, config: &Config, loaded: &Loaded) {
    lines.header("[scan]");
    let frozen = config.scan.frozen.iter();
    let frozen = frozen.map(|(old, new)| string(format!("{old}={new}")));
    lines.value(loaded, "scan.frozen", Value::Array(frozen.collect()));
}

/// An upstream's TLS, proxy and probe keys: its own, else `[upstream_defaults]`'s
/// (each line says which), else the process environment for the proxy.
fn egress(lines: &mut Lines, i: usize, upstream: &UpstreamConfig, loaded: &Loaded) {
    let source = |name: &str| {
        let own = format!("upstream[{i}].{name}");
        let shared = format!("upstream_defaults.{name}");
        match loaded.sources.get(&own) {
            Some(source) => source.to_string(),
            None => loaded.source(&shared).to_string(),
        }
    };
    let mut value = |name: &str, value: Value| lines.value_from(name, value, source(name));
    let egress = &upstream.egress;
    if let Some(image) = &upstream.probe_image {
        value("probe_image", string(image.clone()));
    }
    if let Some(ca) = &egress.ca_file {
        value("ca_file", path(ca));
    }
    if let Some(identity) = &egress.client_identity {
        value("client_cert_file", path(&identity.cert_file));
        value("client_key_file", path(&identity.key_file));
    }
    let proxies = &egress.proxy;
    match proxies.source {
        ProxySource::Disabled => value("proxy", string("none".into())),
        ProxySource::Config => {
            if let Some(proxy) = proxies.https.as_ref().or(proxies.http.as_ref()) {
                value("proxy", string(proxy.url.to_string()));
                if let Some(credentials) = &proxy.credentials {
                    value("proxy_username", string(credentials.username.clone()));
                    // Where the password is read from, never the password itself.
                    for from in ["proxy_password_env", "proxy_password_file"] {
                        let given = merged_upstream_key(loaded, i, from)
                            .or_else(|| loaded.merged.get("upstream_defaults")?.get(from));
                        if let Some(given) = given {
                            value(from, given.clone());
                        }
                    }
                }
            }
        }
        ProxySource::Environment => {}
    }
    let redirects = &egress.redirects;
    value(
        "allow_private_redirects",
        Value::Boolean(redirects.allow_private),
    );
    let hosts = redirects.hosts.iter().cloned().map(string).collect();
    value("redirect_hosts", Value::Array(hosts));
    let no_proxy = proxies.no_proxy.iter().cloned().map(string).collect();
    if proxies.source != ProxySource::Environment {
        value("no_proxy", Value::Array(no_proxy));
    } else {
        lines.comment("proxy: from HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY, when set");
    }
}

fn merged_upstream_key<'a>(loaded: &'a Loaded, i: usize, key: &str) -> Option<&'a Value> {
    loaded.merged.get("upstream")?.get(i)?.get(key)
}

fn string(s: String) -> Value {
    Value::String(s)
}

fn path(p: &std::path::Path) -> Value {
    string(p.display().to_string())
}

/// `5m`, `30s`, `1h 30m`: the form the file takes.
fn duration(d: Duration) -> Value {
    string(humantime::format_duration(d).to_string())
}

/// A size the file takes back exactly: whole GiB, MiB or KiB when it is one,
/// else bytes.
fn size(bytes: u64) -> String {
    for (unit, name) in [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{name}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Output lines, with each value's source aligned in a comment column.
#[derive(Default)]
struct Lines {
    /// A line and, for a value, its source.
    lines: Vec<(String, Option<String>)>,
}

impl Lines {
    fn comment(&mut self, text: &str) {
        self.lines.push((format!("# {text}"), None));
    }

    fn header(&mut self, header: &str) {
        self.lines.push((String::new(), None));
        self.lines.push((header.to_owned(), None));
    }

    fn value(&mut self, loaded: &Loaded, key: &str, value: Value) {
        let name = key.rsplit('.').next().unwrap_or(key);
        self.value_from(name, value, loaded.source(key).to_string());
    }

    fn value_from(&mut self, name: &str, value: Value, source: String) {
        self.lines.push((format!("{name} = {value}"), Some(source)));
    }

    fn finish(self) -> String {
        let width = self
            .lines
            .iter()
            .filter(|(_, source)| source.is_some())
            .map(|(line, _)| line.len())
            .max()
            .unwrap_or(0)
            .min(60);
        let mut out = String::new();
        for (line, source) in self.lines {
            match source {
                Some(source) => out.push_str(&format!("{line:<width$}  # {source}\n")),
                None => out.push_str(&format!("{line}\n")),
            }
        }
        out
    }
}
