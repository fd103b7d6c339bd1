//! The wire to remote registries: one [`Upstream`] per configured registry
//! fetches manifests, blobs, tag lists and referrers, following redirects by
//! hand ([`redirect`]) and answering token challenges ([`auth`]).
//!
//! It never forwards a client's headers or credentials (every request is built
//! here from typed values), never sends a token to an origin other than the
//! one that asked for it, never caches or logs a redirect target's query
//! string, and never decompresses: bytes arrive exactly as the upstream hashed
//! them. It knows nothing of the cache; callers decide what to store.

pub(crate) mod auth;
mod cause;
pub(crate) mod challenge;
mod error;
mod health;
mod probe;
mod proxy;
mod rate_limit;
pub(crate) mod redirect;
pub(crate) mod response;
mod resume;
mod tags;
mod tls;
mod traffic;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, ACCEPT_ENCODING, HeaderMap, HeaderValue, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use url::{Origin, Url};

pub use error::{Cause, Error, RedirectRefusal, Transport};
pub use health::{CircuitSettings, Health, HealthReport, Refusal};
pub use probe::{HopRecord, PROBE_TIMEOUT};
pub use rate_limit::{DEFAULT_RESERVE, RateLimit, RateLimitReport};
pub use response::{ContentRange, Response};
pub use resume::Continuation;
pub use tls::CertificateRejected;
pub use traffic::{STATUS_CLASSES, Traffic, TrafficSnapshot};

use crate::config::{ProxySettings, UpstreamConfig};
use crate::oci::{Digest, Reference, RepoName, media_type};
use auth::{Authorization, Authorizer};
use error::without_query;
use redirect::{Chain, GuardedResolver, Policy};

const USER_AGENT: &str = concat!("regcache/", env!("CARGO_PKG_VERSION"));
/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A hard stop on challenge rounds per request, on top of the per-origin
/// limits, so a chain through many authenticating hosts still ends.
const MAX_AUTH_ROUNDS: usize = 4;

/// A client for one configured upstream registry. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Upstream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    base: Url,
    /// The path `/v2` is at: `/v2`, or `/<path>/v2` for a registry served
    /// under a path.
    api_root: String,
    /// Put before every repository name, in paths and token scopes alike: the
    /// `<prefix>` of a URL ending in `/v2/<prefix>` (another regcache's
    /// path-prefix route, e.g. `http://regional:5000/v2/docker.io`).
    repo_prefix: Option<String>,
    client: reqwest::Client,
    /// `client`'s TLS configuration, for the one-off handshake that explains
    /// a connection closed after it (`tls::alert_after_handshake`).
    tls: Arc<rustls::ClientConfig>,
    /// The proxies `client` uses, to name one that refuses a tunnel.
    proxies: ProxySettings,
    connect_timeout: Duration,
    /// Which redirect targets may be followed.
    redirects: Policy,
    auth: Authorizer,
    manifest_accept: HeaderValue,
    /// Every hop, for `regcache doctor` only ([`Upstream::traced`]).
    trace: Option<probe::Trace>,
    /// Every `host:port` that answered (redirect targets and token services
    /// included): what the egress allowlist must hold, for `regcache stats`.
    hosts_seen: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The circuit: consecutive failures make requests fail fast for a while.
    health: Health,
    /// Hops by status class and body bytes read, for `/metrics`.
    traffic: Arc<Traffic>,
    /// The pull quota the upstream states; pauses manifest requests.
    rate_limit: RateLimit,
}

/// One logical request: where it starts, how, and for which of our repositories.
struct Call<'a> {
    method: Method,
    url: Url,
    /// Sent on every hop (Accept, Range); never Authorization.
    headers: HeaderMap,
    repo: &'a RepoName,
    /// The caller's bound on the whole exchange, if shorter than the timeouts.
    deadline: Option<Duration>,
}

/// The final hop of a redirect chain.
struct Hop {
    response: reqwest::Response,
    url: Url,
    /// Whether this hop carried credentials.
    authorized: bool,
}

/// Per-request auth state: what each origin gets, and how many challenges
/// from each origin this request has answered.
#[derive(Default)]
struct RequestAuth {
    granted: HashMap<Origin, Authorization>,
    rounds: HashMap<Origin, u8>,
}

impl Upstream {
    /// Builds the client for `config`. Installs rustls' ring crypto provider as
    /// the process default if no provider is installed yet.
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, Error> {
        Self::build(config, false)
    }

    /// Same, recording every hop with its status, time and TLS issuer
    /// (read with [`Upstream::take_hops`]): what `regcache doctor` prints.
    pub fn traced(config: &UpstreamConfig) -> Result<Upstream, Error> {
        Self::build(config, true)
    }

    fn build(config: &UpstreamConfig, traced: bool) -> Result<Upstream, Error> {
        install_crypto_provider();
        if !matches!(config.url.scheme(), "http" | "https") || config.url.host_str().is_none() {
            return Err(Error::Protocol(format!(
                "upstream {} URL must be http(s) with a host",
                config.name
            )));
        }
        let (api_root, repo_prefix) = split_api_path(config.url.path());
        if let Some(prefix) = &repo_prefix {
            if format!("{prefix}/x").parse::<RepoName>().is_err() {
                return Err(Error::Protocol(format!(
                    "upstream {}: {prefix:?} after /v2/ in its URL is not a repository prefix",
                    config.name
                )));
            }
        }
        log_egress(config);
        let trace = traced.then(probe::Trace::default);
        let redirects = Policy::new(&config.url, &config.egress.redirects);
        let inner = Inner {
            name: config.name.clone(),
            base: config.url.clone(),
            api_root,
            repo_prefix,
            tls: Arc::new(tls::client_config(&config.egress, None)?),
            client: build_client(
                config,
                &redirects,
                trace.as_ref().map(|t| Arc::clone(&t.issuers)),
            )?,
            proxies: config.egress.proxy.clone(),
            connect_timeout: config.connect_timeout,
            redirects,
            auth: Authorizer::new(config),
            manifest_accept: HeaderValue::from_str(&media_type::ALL_MANIFESTS.join(", "))
                .map_err(|_| Error::Protocol("manifest media types are not a header".into()))?,
            trace,
            hosts_seen: Default::default(),
            health: Health::new(&config.name, config.circuit),
            traffic: Arc::default(),
            rate_limit: RateLimit::new(&config.name, config.rate_limit_reserve),
        };
        Ok(Upstream {
            inner: Arc::new(inner),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `repo` as this upstream names it: behind the URL's repository prefix, if any.
    fn qualified<'a>(&self, repo: &'a RepoName) -> Result<Cow<'a, RepoName>, Error> {
        let Some(prefix) = &self.inner.repo_prefix else {
            return Ok(Cow::Borrowed(repo));
        };
        format!("{prefix}/{repo}")
            .parse()
            .map(Cow::Owned)
            .map_err(|e| Error::Protocol(format!("{prefix}/{repo}: {e}")))
    }

    /// GET or HEAD `/v2/<repo>/manifests/<reference>`, accepting every manifest
    /// media type (one header, comma-separated), whatever the client accepts.
    pub async fn manifest(
        &self,
        method: Method,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Response, Error> {
        self.manifest_call(method, repo, reference, None).await
    }

    /// Same, failing with [`Error::Deadline`] (a failure for the circuit) if
    /// no answer came within `limit`.
    pub async fn manifest_within(
        &self,
        method: Method,
        repo: &RepoName,
        reference: &Reference,
        limit: Duration,
    ) -> Result<Response, Error> {
        self.manifest_call(method, repo, reference, Some(limit))
            .await
    }

    async fn manifest_call(
        &self,
        method: Method,
        repo: &RepoName,
        reference: &Reference,
        deadline: Option<Duration>,
    ) -> Result<Response, Error> {
        let repo = &*self.qualified(repo)?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, self.inner.manifest_accept.clone());
        let url = self.endpoint(&format!("{repo}/manifests/{reference}"));
        // Manifests are what a pull quota counts: none is asked for while the
        // quota is paused (not even a free HEAD: a moved tag could not be
        // fetched anyway, so cached tags are served without asking).
        self.inner.rate_limit.admit()?;
        let get = method == Method::GET;
        let result = self
            .send(&Call {
                method,
                url,
                headers,
                repo,
                deadline,
            })
            .await;
        if get && !matches!(result, Err(Error::CircuitOpen(_))) {
            self.inner.rate_limit.spent_get();
        }
        result
    }

    /// GET or HEAD `/v2/<repo>/blobs/<digest>`; `range_start` adds
    /// `Range: bytes=<n>-` (for resuming).
    pub async fn blob(
        &self,
        method: Method,
        repo: &RepoName,
        digest: &Digest,
        range_start: Option<u64>,
    ) -> Result<Response, Error> {
        let repo = &*self.qualified(repo)?;
        let mut headers = HeaderMap::new();
        if let Some(start) = range_start {
            let range = HeaderValue::try_from(format!("bytes={start}-"))
                .map_err(|_| Error::Protocol("bad range start".into()))?;
            headers.insert(RANGE, range);
        }
        let url = self.endpoint(&format!("{repo}/blobs/{digest}"));
        self.send(&Call {
            method,
            url,
            headers,
            repo,
            deadline: None,
        })
        .await
    }

    /// GET `/v2/<repo>/referrers/<digest>[?artifactType=..]`, for pass-through.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Response, Error> {
        let repo = &*self.qualified(repo)?;
        let mut url = self.endpoint(&format!("{repo}/referrers/{digest}"));
        if let Some(artifact_type) = artifact_type {
            url.query_pairs_mut()
                .append_pair("artifactType", artifact_type);
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(media_type::OCI_INDEX));
        self.send(&Call {
            method: Method::GET,
            url,
            headers,
            repo,
            deadline: None,
        })
        .await
    }

    /// `<api root>/<tail>` on the configured URL's origin.
    fn endpoint(&self, tail: &str) -> Url {
        let mut url = self.inner.base.clone();
        let path = format!("{}/{tail}", self.inner.api_root);
        url.set_path(&path);
        url.set_query(None);
        url.set_fragment(None);
        url
    }

    /// Runs one request through the circuit ([`Health`]): refused at once
    /// while it is open; otherwise sent (within the call's deadline, if any)
    /// and its outcome counted.
    async fn send(&self, call: &Call<'_>) -> Result<Response, Error> {
        if call.method != Method::GET && call.method != Method::HEAD {
            return Err(Error::Protocol(format!(
                "{} is not a pull method",
                call.method
            )));
        }
        let permit = self.inner.health.admit().map_err(Error::CircuitOpen)?;
        let result = match call.deadline {
            Some(limit) => tokio::time::timeout(limit, self.exchange(call))
                .await
                .unwrap_or(Err(Error::Deadline { limit })),
            None => self.exchange(call).await,
        };
        permit.record(&result);
        result
    }

    /// The circuit's state and the pull quota, for `regcache stats`.
    pub fn health(&self) -> HealthReport {
        let mut report = self.inner.health.report();
        report.rate_limit = Some(self.rate_limit());
        report
    }

    /// The pull quota the upstream stated, the GETs spent, any pause (for
    /// metrics and the status page).
    pub fn rate_limit(&self) -> RateLimitReport {
        self.inner.rate_limit.report()
    }

    /// One request to a 2xx answer: follows the redirect chain, and on a
    /// 401 answers the challenge and starts again from the original URL (a
    /// 401 at a redirect target is answered like containerd does).
    async fn exchange(&self, call: &Call<'_>) -> Result<Response, Error> {
        let mut state = RequestAuth::default();
        for _ in 0..MAX_AUTH_ROUNDS {
            let hop = self.follow(call, &mut state).await?;
            if hop.response.status() != StatusCode::UNAUTHORIZED {
                return finish(hop).map(|r| r.counted(Arc::clone(&self.inner.traffic)));
            }
            self.answer_challenge(call, &mut state, &hop).await?;
        }
        Err(Error::Denied { status: 401 })
    }

    /// Sends `call` and follows redirects to the first non-redirect answer.
    async fn follow(&self, call: &Call<'_>, state: &mut RequestAuth) -> Result<Hop, Error> {
        let mut chain = Chain::new(call.url.clone(), &self.inner.redirects);
        loop {
            let url = chain.current();
            let authorization = if chain.may_authorize() {
                self.authorization_for(url, call.repo, state).await
            } else {
                None
            };
            let response = self.send_hop(call, url, authorization.as_ref()).await?;
            let status = response.status();
            tracing::debug!(
                upstream = %self.inner.name,
                method = %call.method,
                url = %without_query(url),
                status = status.as_u16(),
                authorized = authorization.is_some(),
                "upstream hop"
            );
            if !redirect::is_redirect(status) {
                return Ok(Hop {
                    response,
                    url: url.clone(),
                    authorized: authorization.is_some(),
                });
            }
            let next = redirect::location(url, response.headers())?;
            chain.advance(next)?;
        }
    }

    /// What the hop to `url` carries: what this request was granted for its
    /// origin, else what is remembered from earlier requests.
    async fn authorization_for(
        &self,
        url: &Url,
        repo: &RepoName,
        state: &mut RequestAuth,
    ) -> Option<Authorization> {
        let origin = url.origin();
        if let Some(granted) = state.granted.get(&origin) {
            return Some(granted.clone());
        }
        let cached = self.inner.auth.cached(&origin, repo).await?;
        state.granted.insert(origin, cached.clone());
        Some(cached)
    }

    async fn send_hop(
        &self,
        call: &Call<'_>,
        url: &Url,
        authorization: Option<&Authorization>,
    ) -> Result<reqwest::Response, Error> {
        let mut request = self
            .inner
            .client
            .request(call.method.clone(), url.clone())
            .headers(call.headers.clone());
        if let Some(authorization) = authorization {
            request = self.inner.auth.apply(request, authorization);
        }
        let started = std::time::Instant::now();
        let result = match request.send().await {
            Ok(response) => Ok(response),
            Err(e) => Err(self.transport_error(e, url).await),
        };
        if let Some(trace) = &self.inner.trace {
            trace.record(&call.method, url, started, result.as_ref());
        }
        let status = result.as_ref().ok().map(|r| r.status().as_u16());
        self.inner.traffic.hop(status);
        if let Ok(response) = &result {
            self.saw(url);
            self.inner
                .rate_limit
                .observe(response.status(), response.headers());
        }
        result
    }

    fn saw(&self, url: &Url) {
        let host = cause::host_port(url);
        let mut seen = self
            .inner
            .hosts_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !seen.contains(&host) {
            seen.insert(host);
        }
    }

    /// Requests by status class and bytes read since start.
    pub fn traffic(&self) -> TrafficSnapshot {
        self.inner.traffic.snapshot()
    }

    /// Every `host:port` this upstream's requests reached since start, sorted.
    pub fn hosts_seen(&self) -> Vec<String> {
        let seen = self
            .inner
            .hosts_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        seen.iter().cloned().collect()
    }

    /// A failed hop's error; when a proxy refused the tunnel, with its
    /// answer; when an HTTPS connection closed before any answer, with the
    /// TLS alert a fresh handshake then reads, if any.
    async fn transport_error(&self, e: reqwest::Error, url: &Url) -> Error {
        if let Some(refusal) = cause::refused_address(&e) {
            return Error::RedirectRefused(refusal);
        }
        let transport = Transport::new(e, url);
        let proxy = self.inner.proxies.for_scheme(url.scheme());
        if matches!(transport.cause(), Cause::Request { .. }) && url.scheme() == "https" {
            let alert = tls::alert_after_handshake(
                &self.inner.tls,
                &self.inner.client,
                proxy,
                url,
                self.inner.connect_timeout,
            )
            .await;
            let cause = alert.and_then(|alert| cause::of_alert(alert, url));
            return Error::Unreachable(transport.with_cause(cause));
        }
        let (Cause::ProxyRefused { .. }, Some(proxy)) = (transport.cause(), proxy) else {
            return Error::Unreachable(transport);
        };
        let answer =
            proxy::refusal(&self.inner.client, proxy, url, self.inner.connect_timeout).await;
        Error::Unreachable(transport.with_proxy_answer(answer))
    }

    /// Answers a 401: one challenge per origin per request, two if the
    /// challenge says the token we sent was invalid; then `Denied`.
    async fn answer_challenge(
        &self,
        call: &Call<'_>,
        state: &mut RequestAuth,
        hop: &Hop,
    ) -> Result<(), Error> {
        let lines = hop.response.headers().get_all(WWW_AUTHENTICATE);
        let challenges = challenge::parse_all(lines.iter().filter_map(|v| v.to_str().ok()));
        let allowed = if auth::rejects_token(&challenges) {
            2
        } else {
            1
        };
        let origin = hop.url.origin();
        let rounds = state.rounds.entry(origin.clone()).or_default();
        if *rounds >= allowed {
            return Err(Error::Denied { status: 401 });
        }
        *rounds += 1;
        let authorization = self
            .inner
            .auth
            .answer(
                &self.inner.client,
                &challenges,
                &hop.url,
                call.repo,
                hop.authorized,
            )
            .await?;
        state.granted.insert(origin, authorization);
        // The token service answered: its host is part of the path too.
        let realm = challenges
            .iter()
            .find_map(|c| c.param("realm"))
            .and_then(|r| Url::parse(r).ok());
        if let Some(realm) = realm {
            self.saw(&realm);
        }
        Ok(())
    }
}

/// The end of a chain: a 2xx becomes a [`Response`], anything else an error.
fn finish(hop: Hop) -> Result<Response, Error> {
    let status = hop.response.status();
    if status.is_success() {
        Ok(Response::new(hop.response, hop.url))
    } else {
        Err(error::from_status(status, hop.response.headers(), &hop.url))
    }
}

fn build_client(
    config: &UpstreamConfig,
    redirects: &Policy,
    issuers: Option<Arc<tls::Issuers>>,
) -> Result<reqwest::Client, Error> {
    let mut headers = HeaderMap::new();
    // Bytes must reach the hasher exactly as the upstream digested them.
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    let tls = tls::client_config(&config.egress, issuers)?;
    let builder = reqwest::Client::builder()
        // The same TLS and proxies for every hop of a redirect chain and for
        // token requests: all go through this one client.
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.idle_timeout)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .user_agent(USER_AGENT)
        .default_headers(headers);
    let builder = if redirects.guards_private() {
        builder.dns_resolver(Arc::new(GuardedResolver::new(own_hosts(config))))
    } else {
        builder
    };
    proxy::install(builder, &config.egress.proxy)?
        .build()
        .map_err(|e| Error::Protocol(format!("cannot build the HTTP client: {e}")))
}

/// The hosts the operator named (the upstream and its proxies), which may
/// resolve to private addresses; every other name is a redirect target or a
/// token service the upstream chose.
fn own_hosts(config: &UpstreamConfig) -> Vec<String> {
    let proxies = &config.egress.proxy;
    [Some(&config.url)]
        .into_iter()
        .chain([&proxies.https, &proxies.http].map(|p| p.as_ref().map(|p| &p.url)))
        .flatten()
        .filter_map(|url| url.host_str().map(str::to_owned))
        .collect()
}

/// One line per upstream at start: how it is reached (never a credential:
/// proxy URLs carry none, see `config::Proxy`).
fn log_egress(config: &UpstreamConfig) {
    let egress = &config.egress;
    let show =
        |p: Option<&crate::config::Proxy>| p.map(|p| p.url.to_string()).unwrap_or("direct".into());
    tracing::info!(
        upstream = %config.name,
        https_proxy = %show(egress.proxy.https.as_ref()),
        http_proxy = %show(egress.proxy.http.as_ref()),
        proxy_from = ?egress.proxy.source,
        no_proxy = %egress.proxy.no_proxy.join(","),
        ca_file = ?egress.ca_file,
        client_certificate = egress.client_identity.is_some(),
        "upstream egress"
    );
}

/// reqwest is built with `rustls-no-provider`, so a process-wide crypto
/// provider must exist before a client is built; ring is ours. An error only
/// means a provider is installed already, which is all that is needed.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Splits a configured URL's path into the API root and a repository prefix:
/// `/v2/<prefix>` keeps `/v2` at the root and prefixes repositories; any other
/// path (`/mirror`) is where a registry served under a path has its `/v2`.
fn split_api_path(path: &str) -> (String, Option<String>) {
    let path = path.trim_end_matches('/');
    if let Some(root) = path.strip_suffix("/v2") {
        return (format!("{root}/v2"), None);
    }
    match path.split_once("/v2/") {
        Some((root, prefix)) => (format!("{root}/v2"), Some(prefix.to_owned())),
        None => (format!("{path}/v2"), None),
    }
}
