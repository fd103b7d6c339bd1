//! The walk over a parsed `config.toml`: every key checked and converted into
//! the typed `Config`, every problem collected with its key instead of stopping
//! at the first, unknown keys reported. It never reads files or the process
//! environment itself (secrets come through `Secrets`) and never prints.

use super::*;

mod connections;
mod egress;
mod scrub;
mod values;

/// Walks the TOML tree, collecting every error instead of stopping at the first.
#[derive(Default)]
pub(super) struct Walker {
    pub(super) errors: Vec<ConfigError>,
}

impl Walker {
    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn config(
        &mut self,
        mut root: Table,
        overrides: &Overrides,
        secrets: &dyn Secrets,
    ) -> Option<Config> {
        let mut server = self.table(&mut root, "", "server");
        let mut storage = self.table(&mut root, "", "storage");
        let mut defaults_table = self.table(&mut root, "", "upstream_defaults");
        let egress_defaults = self.egress_keys(&mut defaults_table, "upstream_defaults", secrets);
        self.reject_unknown(&defaults_table, "upstream_defaults");
        let mut scan = self.table(&mut root, "", "scan");
        let upstream_values = match root.remove("upstream") {
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.error("upstream", "must be an array of tables ([[upstream]])");
                Vec::new()
            }
            None => Vec::new(),
        };
        self.reject_unknown(&root, "");

        // Absent is reported below only if no flag gives them either.
        let listen = server.contains_key("listen").then(|| {
            self.parsed::<SocketAddr>(
                &mut server,
                "server",
                "listen",
                "an address like 0.0.0.0:5000",
            )
        });
        let metrics_listen = server.contains_key("metrics_listen").then(|| {
            self.parsed::<SocketAddr>(
                &mut server,
                "server",
                "metrics_listen",
                "an address like 127.0.0.1:9090",
            )
        });
        let tls = self.server_tls(&mut server);
        let auth = self.server_auth(&mut server);
        let connections = self.connection_limits(&mut server);
        self.reject_unknown(&server, "server");
        let data_dir = self
            .optional_string(&mut storage, "storage", "data_dir")
            .map(PathBuf::from);
        let (budget, raw_pins) = self.budget(&mut storage, overrides);
        let scrub = self.scrub(&mut storage);
        self.reject_unknown(&storage, "storage");
        let frozen = self.frozen(&mut scan);
        self.reject_unknown(&scan, "scan");

        let upstream_tables = upstream_values.len();
        let mut upstreams = Vec::new();
        for (i, value) in upstream_values.into_iter().enumerate() {
            let path = format!("upstream[{i}]");
            match value {
                Value::Table(t) => {
                    upstreams.extend(self.upstream(t, &path, secrets, &egress_defaults))
                }
                _ => self.error(&path, "must be a table"),
            }
        }
        if upstream_tables == 0 && !self.has_error("upstream") {
            self.error("upstream", "at least one [[upstream]] is required");
        }
        self.check_upstreams(&mut upstreams, overrides);
        let pins = self.pins(&raw_pins, &upstreams);
        let pins = crate::evict::Pins::new(pins);
        let eviction = budget.map(|budget| EvictionConfig { pins, ..budget });

        let listen = overrides.listen.or(listen.flatten());
        let data_dir = overrides.data_dir.clone().or(data_dir);
        if listen.is_none() && overrides.listen.is_none() && !self.has_error("server.listen") {
            self.error("server.listen", "missing");
        }
        if data_dir.is_none() && !self.has_error("storage.data_dir") {
            self.error("storage.data_dir", "missing");
        }
        Some(Config {
            listen: listen?,
            metrics_listen: metrics_listen.flatten(),
            tls,
            auth,
            connections: connections?,
            data_dir: data_dir?,
            upstreams,
            eviction: eviction?,
            scrub: scrub?,
            scan: ScanConfig { frozen },
        })
    }

    /// `[server.tls]`: both files, or no table at all.
    fn server_tls(&mut self, server: &mut Table) -> Option<ServerTls> {
        if !server.contains_key("tls") {
            return None;
        }
        let mut t = self.table(server, "server", "tls");
        let cert_file = self.string(&mut t, "server.tls", "cert_file");
        let key_file = self.string(&mut t, "server.tls", "key_file");
        self.reject_unknown(&t, "server.tls");
        Some(ServerTls {
            cert_file: cert_file?.into(),
            key_file: key_file?.into(),
        })
    }

    /// `[server.auth]`: `htpasswd` (required), `required`, `realm`.
    fn server_auth(&mut self, server: &mut Table) -> Option<ServerAuth> {
        if !server.contains_key("auth") {
            return None;
        }
        let mut t = self.table(server, "server", "auth");
        let htpasswd = self.string(&mut t, "server.auth", "htpasswd");
        let required = self.optional_bool(&mut t, "server.auth", "required");
        let realm = self.optional_string(&mut t, "server.auth", "realm");
        self.reject_unknown(&t, "server.auth");
        Some(ServerAuth {
            htpasswd: htpasswd?.into(),
            required: required.unwrap_or(false),
            realm: realm.unwrap_or_else(|| "regcache".to_owned()),
        })
    }

    /// `scan.frozen`: `"<frozen host>=<replacement host>"` strings.
    fn frozen(&mut self, scan: &mut Table) -> Vec<(String, String)> {
        let mut frozen = Vec::new();
        for (i, text) in self
            .optional_strings(scan, "scan", "frozen")
            .iter()
            .enumerate()
        {
            let host = |s: &str| !s.is_empty() && !s.contains(['/', '=', ' ', '@']);
            match text.split_once('=') {
                Some((old, new)) if host(old) && host(new) => {
                    frozen.push((old.to_owned(), new.to_owned()));
                }
                _ => self.error(
                    &format!("scan.frozen[{i}]"),
                    format!("{text:?} is not <frozen host>=<replacement host> (e.g. k8s.gcr.io=registry.k8s.io)"),
                ),
            }
        }
        frozen
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
                budget: crate::evict::Budget::new(max_size?, high?, low?),
                interval: interval?,
                pins: crate::evict::Pins::default(),
            })
        })();
        (budget, pins)
    }

    /// Parses `storage.pins`, resolving each upstream name or alias.
    fn pins(&mut self, raw: &[String], upstreams: &[UpstreamConfig]) -> Vec<crate::evict::Pin> {
        let mut pins = Vec::new();
        for (i, text) in raw.iter().enumerate() {
            match parse_pin(text, upstreams) {
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
        egress_defaults: &egress::EgressKeys,
    ) -> Option<UpstreamConfig> {
        let name = self.string(&mut t, path, "name");
        let url = self.parsed::<Url>(&mut t, path, "url", "an absolute http:// or https:// URL");
        let default = self.optional_bool(&mut t, path, "default").unwrap_or(false);
        let aliases = self.optional_strings(&mut t, path, "aliases");
        let tag_ttl = self.duration(&mut t, path, "tag_ttl", Duration::from_secs(300));
        let connect_timeout =
            self.duration(&mut t, path, "connect_timeout", Duration::from_secs(10));
        let idle_timeout = self.duration(&mut t, path, "idle_timeout", Duration::from_secs(60));
        let revalidate_timeout =
            self.duration(&mut t, path, "revalidate_timeout", Duration::from_secs(5));
        let rate_limit_reserve = self.count(
            &mut t,
            path,
            "rate_limit_reserve",
            crate::upstream::DEFAULT_RESERVE,
        );
        let circuit = self.circuit(&mut t, path);
        let credentials = self.credentials(&mut t, path, secrets);
        let probe_image = self.optional_string(&mut t, path, "probe_image");
        let own_egress = self.egress_keys(&mut t, path, secrets);
        let egress = self.egress(own_egress, egress_defaults, path, secrets);
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
            revalidate_timeout: revalidate_timeout?,
            rate_limit_reserve: rate_limit_reserve?,
            circuit: circuit?,
            credentials: credentials.ok()?,
            egress,
            probe_image,
        })
    }

    /// `circuit_failures` (≥ 1), `circuit_backoff_min` (> 0) and
    /// `circuit_backoff_max` (≥ the minimum).
    fn circuit(&mut self, t: &mut Table, path: &str) -> Option<crate::upstream::CircuitSettings> {
        let default = crate::upstream::CircuitSettings::default();
        let failures = self.count(t, path, "circuit_failures", default.failures.into());
        let backoff_min = self.duration(t, path, "circuit_backoff_min", default.backoff_min);
        let backoff_max = self.duration(t, path, "circuit_backoff_max", default.backoff_max);
        let failures = match failures? {
            n @ 1..=1000 => n as u32,
            n => {
                let key = format!("{path}.circuit_failures");
                self.error(&key, format!("must be between 1 and 1000, found {n}"));
                return None;
            }
        };
        let (backoff_min, backoff_max) = (backoff_min?, backoff_max?);
        if backoff_min.is_zero() {
            let key = format!("{path}.circuit_backoff_min");
            self.error(&key, "must be longer than 0s");
            return None;
        }
        if backoff_max < backoff_min {
            let key = format!("{path}.circuit_backoff_max");
            let msg = format!(
                "must be at least circuit_backoff_min ({})",
                humantime::format_duration(backoff_min)
            );
            self.error(&key, msg);
            return None;
        }
        Some(crate::upstream::CircuitSettings {
            failures,
            backoff_min,
            backoff_max,
        })
    }

    /// `username` with exactly one of `password_env` / `password_file`, or none of them.
    fn credentials(
        &mut self,
        t: &mut Table,
        path: &str,
        secrets: &dyn Secrets,
    ) -> Result<Option<Credentials>, ()> {
        self.credentials_with(t, path, secrets, "")
    }

    /// The credential keys behind `prefix` (`proxy_username`, ...).
    fn credentials_with(
        &mut self,
        t: &mut Table,
        path: &str,
        secrets: &dyn Secrets,
        prefix: &str,
    ) -> Result<Option<Credentials>, ()> {
        let [user_key, env_key, file_key] =
            ["username", "password_env", "password_file"].map(|k| format!("{prefix}{k}"));
        let username = self.optional_string(t, path, &user_key);
        let env = self.optional_string(t, path, &env_key);
        let file = self.optional_string(t, path, &file_key);
        let password = match (&env, &file) {
            (Some(_), Some(_)) => {
                self.error(
                    &Self::key(path, &file_key),
                    format!("give {env_key} or {file_key}, not both"),
                );
                return Err(());
            }
            (Some(var), None) => match secrets.env(var) {
                Some(v) => Some(Secret::new(v)),
                None => {
                    self.error(
                        &Self::key(path, &env_key),
                        format!("environment variable {var} is not set"),
                    );
                    return Err(());
                }
            },
            (None, Some(p)) => match secrets.file(p) {
                Ok(v) => Some(Secret::new(v.lines().next().unwrap_or_default())),
                Err(e) => {
                    self.error(&Self::key(path, &file_key), format!("cannot read {p}: {e}"));
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
                    &Self::key(path, &user_key),
                    format!("needs {env_key} or {file_key}"),
                );
                Err(())
            }
            (None, Some(_)) => {
                self.error(
                    &Self::key(path, &user_key),
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
        for u in upstreams.iter_mut().filter(|u| u.probe_image.is_none()) {
            u.probe_image = default_probe_image(u).map(str::to_owned);
        }
        for u in upstreams.iter_mut().filter(|u| u.is_docker_hub()) {
            for host in DOCKER_HUB_HOSTS {
                if !u.answers_to(host) {
                    u.aliases.push(host.to_owned());
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in upstreams.iter().enumerate() {
            for host in u.hosts() {
                if !is_registry_host(host) {
                    self.error(
                        &format!("upstream[{i}]"),
                        format!(
                            "{host:?} is not a registry host (lower-case letters, digits, \
                             '.' and '-', with an optional :port)"
                        ),
                    );
                }
                if !seen.insert(host.to_owned()) {
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
}

/// One pin pattern, its upstream resolved among `upstreams` (name or alias).
pub(super) fn parse_pin(
    text: &str,
    upstreams: &[UpstreamConfig],
) -> Result<crate::evict::Pin, String> {
    let resolve = |host: &str| {
        upstreams
            .iter()
            .find(|u| u.answers_to(host))
            .map(|u| u.name.clone())
    };
    crate::evict::Pin::parse(&docker_hub_pin(text, upstreams), resolve)
}

/// A pin on Docker Hub names repositories as clients do (`docker.io/alpine:*`);
/// they are stored as Docker Hub names them (`library/alpine`), as requests are.
fn docker_hub_pin(text: &str, upstreams: &[UpstreamConfig]) -> String {
    let Some((host, rest)) = text.split_once('/') else {
        return text.to_owned();
    };
    let repo = rest.split_once([':', '@']).map_or(rest, |(repo, _)| repo);
    let hub = upstreams
        .iter()
        .any(|u| u.answers_to(host) && u.is_docker_hub());
    if hub && !repo.contains('*') {
        let tail = &rest[repo.len()..];
        format!("{host}/{}{tail}", crate::oci::docker_hub_name(repo))
    } else {
        text.to_owned()
    }
}

/// The small image `regcache doctor` probes when `probe_image` is not set.
fn default_probe_image(u: &UpstreamConfig) -> Option<&'static str> {
    if u.answers_to("registry.k8s.io") {
        Some("pause:3.10")
    } else if u.is_docker_hub() {
        Some("library/busybox:latest")
    } else {
        None
    }
}

/// `host[:port]` as clients write it in image names: lower-case DNS labels
/// (letters, digits, inner `-`) joined by `.`, then an optional port.
fn is_registry_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    name.split('.').all(label) && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}
