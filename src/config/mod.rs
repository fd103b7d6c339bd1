//! `config.toml` → a validated, typed [`Config`]. The repository's `config.toml` is
//! embedded as the default. Parsing walks the whole document and reports every
//! problem at once, each naming its key; unknown keys are errors. The layers
//! (embedded defaults, file, `REGCACHE_*` variables, flags) are merged in
//! `layers`, so the rest of the program sees one `Config`; `show` renders it.
//!
//! This module never prints and never exits: it returns errors to `main`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};
use url::Url;

/// The repository's `config.toml`, the configuration used without `--config`.
pub const DEFAULT_TOML: &str = include_str!("../../config.toml");

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `server.metrics_listen`: serve `/metrics` and the status page on this
    /// address only (plain HTTP, no client auth); on `listen` if None.
    pub metrics_listen: Option<SocketAddr>,
    /// `[server.tls]`: serve HTTPS with this certificate; plain HTTP if None.
    pub tls: Option<ServerTls>,
    /// `[server.auth]`: who may pull; everyone if None.
    pub auth: Option<ServerAuth>,
    /// `[server]`'s connection limits and timeouts.
    pub connections: ConnectionLimits,
    pub data_dir: PathBuf,
    /// At least one; exactly one has `default == true`.
    pub upstreams: Vec<UpstreamConfig>,
    /// The disk budget (`storage.max_size`, watermarks, pins).
    pub eviction: EvictionConfig,
    /// The background re-hash of cached files (`storage.scrub_*`).
    pub scrub: ScrubConfig,
    /// `[scan]`: what `regcache scan` reports.
    pub scan: ScanConfig,
}

/// `[scan]`: registries `regcache scan` reports as frozen, beyond `k8s.gcr.io`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanConfig {
    /// `(frozen host, replacement host)` pairs.
    pub frozen: Vec<(String, String)>,
}

/// How the API's connections are bounded (`[server]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request's header block must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub keepalive_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// A connection is closed after this many requests.
    pub max_requests_per_connection: u64,
    /// How long open connections may finish after a shutdown signal.
    pub shutdown_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_requests_per_connection: 10_000,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// `server.shutdown_timeout` when absent.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// `[server.tls]`: regcache's own certificate (PEM chain, leaf first) and key,
/// re-read on SIGHUP and when either file changes.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `[server.auth]`: client authentication against an htpasswd file.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerAuth {
    /// bcrypt entries, as `htpasswd -B` writes them.
    pub htpasswd: PathBuf,
    /// Refuse anonymous requests (otherwise only wrong credentials are refused).
    pub required: bool,
    /// The realm in `WWW-Authenticate`.
    pub realm: String,
}

/// `[storage]`'s disk budget: how much committed content the cache keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    /// `max_size` (bytes of committed content, blobs and manifests, never
    /// exceeded) and the watermarks.
    pub budget: crate::evict::Budget,
    /// How often usage is re-read from the index and checked.
    pub interval: Duration,
    /// Content never evicted.
    pub pins: crate::evict::Pins,
}

/// `storage.scrub_interval` and `storage.scrub_rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubConfig {
    /// Time between passes; `None` (`"off"`) disables the scrub.
    pub interval: Option<Duration>,
    /// Bytes per second a pass reads at most.
    pub rate: u64,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(24 * 3600)),
            rate: 20 * 1024 * 1024,
        }
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

    /// Parses a pin pattern the way `storage.pins` entries are parsed: the
    /// upstream a configured name or alias (resolved to the name), Docker
    /// Hub's `library/` added (`regcache pin add`, `prefetch --pin`).
    pub fn parse_pin(&self, text: &str) -> Result<crate::evict::Pin, String> {
        walker::parse_pin(text, &self.upstreams)
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
    /// How long a background revalidation of a stale tag waits for the
    /// upstream (the client was answered from the cache already).
    pub revalidate_timeout: Duration,
    /// Manifest GETs of a stated pull quota (Docker Hub's `ratelimit-remaining`)
    /// left unspent: at this many, GETs pause until the window has passed.
    pub rate_limit_reserve: u64,
    /// When the upstream's circuit opens and for how long (`circuit_failures`,
    /// `circuit_backoff_min`, `circuit_backoff_max`).
    pub circuit: crate::upstream::CircuitSettings,
    pub credentials: Option<Credentials>,
    /// How this upstream is reached: trusted CAs, client certificate, proxy
    /// (`[upstream_defaults]` merged with the upstream's own keys).
    pub egress: Egress,
    /// `repository:tag` that `regcache doctor` resolves and fetches a byte of
    /// (`probe_image`; registry.k8s.io: `pause:3.10`, Docker Hub:
    /// `library/busybox:latest`; none for others unless configured).
    pub probe_image: Option<String>,
}

/// How regcache reaches an upstream and every host its redirects lead to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Egress {
    /// A PEM bundle of CAs trusted in addition to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate for upstreams that require mutual TLS.
    pub client_identity: Option<ClientIdentity>,
    pub proxy: ProxySettings,
    /// Where redirects may lead (`allow_private_redirects`, `redirect_hosts`).
    pub redirects: RedirectRules,
}

/// An upstream's redirect rules beyond the fixed ones (http/https only, no
/// downgrade, no userinfo, a hop limit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedirectRules {
    /// `allow_private_redirects`: follow redirects to loopback, link-local and
    /// private addresses although the upstream is not on loopback.
    pub allow_private: bool,
    /// `redirect_hosts`: when not empty, the only hosts (besides the
    /// upstream's own) redirects may go to: `host`, `*.domain`, with an
    /// optional `:port`.
    pub hosts: Vec<String>,
}

/// `client_cert_file` (PEM chain, leaf first) and `client_key_file` (PEM key).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientIdentity {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The forward proxies in use, by the scheme of the URL being fetched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxySettings {
    /// For `https://` URLs (a CONNECT tunnel).
    pub https: Option<Proxy>,
    /// For `http://` URLs (absolute-form requests).
    pub http: Option<Proxy>,
    /// Hosts reached directly, in `NO_PROXY` syntax (`.corp.example`, `10.0.0.0/8`).
    pub no_proxy: Vec<String>,
    /// Where the settings came from, for the log and `doctor`.
    pub source: ProxySource,
}

impl ProxySettings {
    /// The proxy a request to a URL with `scheme` goes through, unless
    /// `no_proxy` exempts its host.
    pub fn for_scheme(&self, scheme: &str) -> Option<&Proxy> {
        match scheme {
            "https" => self.https.as_ref(),
            "http" => self.http.as_ref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProxySource {
    /// The `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` variables (or none set).
    #[default]
    Environment,
    /// `proxy` in the configuration file.
    Config,
    /// `proxy = "none"`: direct, whatever the environment says.
    Disabled,
}

/// One forward proxy: its URL without credentials, and the credentials apart
/// (so the URL can be logged).
#[derive(Debug, Clone, PartialEq)]
pub struct Proxy {
    pub url: Url,
    pub credentials: Option<Credentials>,
}

/// The hosts Docker Hub answers to. An upstream named by any of them answers
/// to all three, and gets `library/` before one-component repository names.
pub use crate::oci::DOCKER_HUB_HOSTS;

impl UpstreamConfig {
    /// Whether `host` (an `ns` value or a path prefix) names this upstream.
    pub fn answers_to(&self, host: &str) -> bool {
        self.hosts().any(|h| h == host)
    }

    /// Whether this upstream is Docker Hub (by one of its names).
    pub fn is_docker_hub(&self) -> bool {
        self.hosts().any(|h| DOCKER_HUB_HOSTS.contains(&h))
    }

    /// The name, then the aliases.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// Credentials for an upstream's token service or a proxy.
#[derive(Debug, Clone, PartialEq)]
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
    /// Every variable (to find misspelt `REGCACHE_*` settings); none by default.
    fn env_vars(&self) -> Vec<(String, String)> {
        Vec::new()
    }
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
    fn env_vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
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
    let table = parse_table(text).map_err(|e| fail(vec![e]))?;
    let mut walker = Walker::default();
    let config = walker.config(table, overrides, secrets);
    match config {
        Some(config) if walker.errors.is_empty() => Ok(config),
        _ => Err(fail(walker.errors)),
    }
}

/// `text` as a TOML table, or its syntax error.
fn parse_table(text: &str) -> Result<Table, ConfigError> {
    text.parse().map_err(|e: toml::de::Error| ConfigError {
        key: "(syntax)".into(),
        message: e.to_string().trim().replace('\n', " "),
    })
}

mod layers;
mod show;
mod walker;

pub use layers::{ENV_KEYS, Loaded, Source, UPSTREAM_URL_ENV, env_var, load_layered};
pub use show::render;
use walker::Walker;

#[cfg(test)]
mod tests;
