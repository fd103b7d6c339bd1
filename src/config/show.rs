//! Renders an effective configuration as a `config.toml` (`regcache config
//! show`): every key with the value regcache uses, each followed by where it
//! came from. The text loads back to the same configuration.
//!
//! It never shows a secret: credentials appear as the name of the variable or
//! file the password is read from, never the password.

use std::time::Duration;

use toml::Value;

use super::{Config, EvictionConfig, Loaded, UpstreamConfig};

/// The configuration in `loaded` as TOML, a `# <source>` comment on each line.
pub fn render(loaded: &Loaded) -> String {
    let mut lines = Lines::default();
    lines.comment("regcache's effective configuration, each value with where it came from.");
    lines.comment(
        "Layers, later ones winning: embedded default, file, REGCACHE_* environment, flags.",
    );
    server_and_storage(&mut lines, &loaded.config, loaded);
    for (i, upstream) in loaded.config.upstreams.iter().enumerate() {
        self::upstream(&mut lines, i, upstream, loaded);
    }
    lines.finish()
}

fn server_and_storage(lines: &mut Lines, config: &Config, loaded: &Loaded) {
    lines.header("[server]");
    lines.value(loaded, "server.listen", string(config.listen.to_string()));
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

fn merged_upstream_key<'a>(loaded: &'a Loaded, i: usize, key: &str) -> Option<&'a Value> {
    loaded.merged.get("upstream")?.get(i)?.get(key)
}

fn string(s: String) -> Value {
    Value::String(s)
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
        let source = loaded.source(key).to_string();
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
