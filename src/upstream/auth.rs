//! Registry token auth: answering a 401 challenge with a Bearer token (or Basic
//! credentials), the token cache, and what to attach to a hop before it is sent.
//!
//! Rules this module keeps:
//! - A token is cached per (challenging origin, realm, service, scope) and is
//!   only ever handed out for that origin; the redirect policy decides whether
//!   a given hop may carry it at all.
//! - Our configured credentials are sent only in answer to the configured
//!   upstream's *own* origin: as Basic to that origin, or to the token realm
//!   that origin's challenge named (even on another host, as Docker Hub's
//!   `auth.docker.io`), and never from https down to a plain-http realm. A
//!   challenge from a redirect target (a storage host, Artifact Registry behind
//!   registry.k8s.io) gets an anonymous token request.
//! - Tokens and passwords never appear in logs, errors or `Debug` output.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use moka::Expiry;
use moka::future::Cache;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use reqwest::{Client, RequestBuilder};
use url::{Origin, Url};

use super::Error;
use super::challenge::{Challenge, Scheme};
use super::error::without_query;
use super::response::Response;
use crate::config::{Credentials, Secret, UpstreamConfig};
use crate::oci::RepoName;

/// A token response larger than this is not a token response.
const MAX_TOKEN_RESPONSE: usize = 1024 * 1024;
/// The token spec's default and minimum lifetime.
const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// However long a token server says, a token is re-fetched at least daily.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// Stop using a token this long before it expires, for clock skew and latency.
const EXPIRY_SKEW: Duration = Duration::from_secs(10);
/// How many tokens and remembered grants are kept.
const CACHE_CAPACITY: u64 = 10_000;
/// How long an unused remembered grant (which scheme an origin wants for a
/// repository) is kept.
const GRANT_IDLE: Duration = Duration::from_secs(60 * 60);

/// A Bearer token: the ready `Authorization` header value and when to stop using it.
#[derive(Clone)]
pub(crate) struct Token {
    header: HeaderValue,
    expires_at: Instant,
}

impl Token {
    fn is_fresh(&self) -> bool {
        Instant::now() < self.expires_at
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field(
                "expires_in",
                &self.expires_at.saturating_duration_since(Instant::now()),
            )
            .finish()
    }
}

/// What identifies a token: who challenged, and what the challenge asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey {
    origin: Origin,
    realm: Url,
    service: Option<String>,
    /// Space-separated, as in the challenge.
    scope: String,
}

/// What an origin demanded last time for a repository, so later requests can
/// send it up front instead of collecting a 401 first. The repository name at
/// a redirect target may differ from ours (`pause` becomes
/// `k8s-artifacts-prod/images/pause`), and a hop such as
/// `/artifacts-downloads/...` names none, so this is keyed by *our* name.
#[derive(Debug, Clone)]
enum Grant {
    Bearer(TokenKey),
    Basic,
}

/// What to attach to the hops of one request that go to one origin.
#[derive(Debug, Clone)]
pub(crate) enum Authorization {
    Bearer(Token),
    Basic,
}

/// Answers challenges and remembers the answers, for one upstream.
pub(crate) struct Authorizer {
    own_origin: Origin,
    own_is_plain_http: bool,
    credentials: Option<Credentials>,
    tokens: Cache<TokenKey, Token>,
    grants: Cache<(Origin, RepoName), Grant>,
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorizer")
            .field("own_origin", &self.own_origin.ascii_serialization())
            .field("has_credentials", &self.credentials.is_some())
            .field("cached_tokens", &self.tokens.entry_count())
            .finish()
    }
}

/// Each token expires from the cache at its own time.
struct TokenExpiry;

impl Expiry<TokenKey, Token> for TokenExpiry {
    fn expire_after_create(&self, _: &TokenKey, token: &Token, now: Instant) -> Option<Duration> {
        Some(token.expires_at.saturating_duration_since(now))
    }
}

impl Authorizer {
    pub(crate) fn new(config: &UpstreamConfig) -> Self {
        Self {
            own_origin: config.url.origin(),
            own_is_plain_http: config.url.scheme() == "http",
            credentials: config.credentials.clone(),
            tokens: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .expire_after(TokenExpiry)
                .build(),
            grants: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_idle(GRANT_IDLE)
                .build(),
        }
    }

    /// A still-valid authorization remembered for `origin` and our `repo`.
    pub(crate) async fn cached(&self, origin: &Origin, repo: &RepoName) -> Option<Authorization> {
        match self.grants.get(&(origin.clone(), repo.clone())).await? {
            Grant::Basic => self.basic_allowed(origin).then_some(Authorization::Basic),
            Grant::Bearer(key) => self
                .tokens
                .get(&key)
                .await
                .filter(Token::is_fresh)
                .map(Authorization::Bearer),
        }
    }

    /// Answers the 401 that the hop to `at` returned while fetching our `repo`.
    /// `rejected` says the hop carried a token, which must then not be reused.
    pub(crate) async fn answer(
        &self,
        client: &Client,
        challenges: &[Challenge],
        at: &Url,
        repo: &RepoName,
        rejected: bool,
    ) -> Result<Authorization, Error> {
        let origin = at.origin();
        let grant_key = (origin.clone(), repo.clone());
        if let Some(key) = bearer_key(challenges, at, repo) {
            if rejected {
                self.tokens.invalidate(&key).await;
            }
            let credentials = self.realm_credentials(&origin, &key.realm);
            // try_get_with is the single flight: concurrent requests for one
            // key wait for one fetch and share its result.
            let token = self
                .tokens
                .try_get_with(key.clone(), fetch_token(client, &key, credentials))
                .await
                .map_err(|shared| (*shared).clone())?;
            self.grants.insert(grant_key, Grant::Bearer(key)).await;
            return Ok(Authorization::Bearer(token));
        }
        let offers_basic = challenges.iter().any(|c| c.scheme == Scheme::Basic);
        if offers_basic && self.basic_allowed(&origin) {
            self.grants.insert(grant_key, Grant::Basic).await;
            return Ok(Authorization::Basic);
        }
        Err(Error::Denied { status: 401 })
    }

    /// Adds the `Authorization` header for `authorization` to a hop.
    pub(crate) fn apply(
        &self,
        request: RequestBuilder,
        authorization: &Authorization,
    ) -> RequestBuilder {
        match (authorization, &self.credentials) {
            (Authorization::Bearer(token), _) => {
                request.header(AUTHORIZATION, token.header.clone())
            }
            (Authorization::Basic, Some(c)) => {
                request.basic_auth(&c.username, Some(c.password.expose()))
            }
            (Authorization::Basic, None) => request,
        }
    }

    fn basic_allowed(&self, origin: &Origin) -> bool {
        self.credentials.is_some() && *origin == self.own_origin
    }

    /// Our credentials, if the challenge came from our own upstream and the
    /// realm it named is not a downgrade to plain http.
    fn realm_credentials(&self, challenger: &Origin, realm: &Url) -> Option<&Credentials> {
        let secure_enough = realm.scheme() == "https" || self.own_is_plain_http;
        let ours = *challenger == self.own_origin;
        self.credentials.as_ref().filter(|_| ours && secure_enough)
    }
}

/// True if a challenge says the token we sent was invalid (RFC 6750 §3.1),
/// which earns one more token fetch than a plain 401.
pub(crate) fn rejects_token(challenges: &[Challenge]) -> bool {
    challenges
        .iter()
        .any(|c| c.scheme == Scheme::Bearer && c.param("error") == Some("invalid_token"))
}

/// The first Bearer challenge with a usable realm, as a cache key.
fn bearer_key(challenges: &[Challenge], at: &Url, repo: &RepoName) -> Option<TokenKey> {
    challenges.iter().find_map(|c| {
        if c.scheme != Scheme::Bearer {
            return None;
        }
        let realm: Url = c.param("realm")?.parse().ok()?;
        if !matches!(realm.scheme(), "http" | "https") {
            return None;
        }
        let scope = match c.param("scope").map(str::trim) {
            Some(scope) if !scope.is_empty() => scope.to_owned(),
            _ => default_scope(at, repo),
        };
        Some(TokenKey {
            origin: at.origin(),
            realm,
            service: c.param("service").map(str::to_owned),
            scope,
        })
    })
}

/// Pull access to the repository named in the 401'd URL (which, behind a
/// redirect, can differ from ours), or to ours if the URL names none.
fn default_scope(at: &Url, repo: &RepoName) -> String {
    let name = repo_in_path(at.path());
    let name = name.as_ref().unwrap_or(repo);
    format!("repository:{name}:pull")
}

/// `<name>` in `[/prefix]/v2/<name>/(manifests|blobs|tags|referrers)/...`.
fn repo_in_path(path: &str) -> Option<RepoName> {
    let (_, rest) = path.split_once("/v2/")?;
    let end = ["/manifests/", "/blobs/", "/tags/", "/referrers/"]
        .iter()
        .filter_map(|marker| rest.rfind(marker))
        .max()?;
    rest[..end].parse().ok()
}

/// `GET realm?service=..&scope=..&scope=..`, with Basic credentials only when
/// `credentials` is given (see the module rules).
async fn fetch_token(
    client: &Client,
    key: &TokenKey,
    credentials: Option<&Credentials>,
) -> Result<Token, Error> {
    let url = token_url(key);
    let realm = without_query(&key.realm);
    tracing::debug!(%realm, scope = %key.scope, authenticated = credentials.is_some(), "fetching upstream token");
    let mut request = client.get(url.clone()).header(ACCEPT, "application/json");
    if let Some(c) = credentials {
        request = request.basic_auth(&c.username, Some(c.password.expose()));
    }
    let response = request
        .send()
        .await
        .map_err(|e| Error::transport(e, &url))?;
    let status = response.status();
    if !status.is_success() {
        return Err(match status.as_u16() {
            404 | 300..=399 => Error::Protocol(format!("token realm {realm} answered {status}")),
            _ => super::error::from_status(status, response.headers(), &url),
        });
    }
    let body = Response::new(response, url)
        .bytes_limited(MAX_TOKEN_RESPONSE)
        .await
        .map_err(|e| match e {
            Error::TooLarge { .. } => {
                Error::Protocol(format!("token response from {realm} too large"))
            }
            other => other,
        })?;
    parse_token(&body, SystemTime::now())
        .map_err(|why| Error::Protocol(format!("bad token response from {realm}: {why}")))
}

fn token_url(key: &TokenKey) -> Url {
    let mut url = key.realm.clone();
    let mut query = url.query_pairs_mut();
    if let Some(service) = &key.service {
        query.append_pair("service", service);
    }
    for scope in key.scope.split(' ').filter(|s| !s.is_empty()) {
        query.append_pair("scope", scope);
    }
    drop(query);
    url
}

/// The token JSON (distribution `docs/spec/auth/token.md`).
#[derive(serde::Deserialize)]
struct TokenBody {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<f64>,
    issued_at: Option<String>,
}

/// A token from a response body; `now` is the wall clock at receipt.
pub(crate) fn parse_token(body: &[u8], now: SystemTime) -> Result<Token, &'static str> {
    let body: TokenBody = serde_json::from_slice(body).map_err(|_| "not token JSON")?;
    // `token` is the spec's name; `access_token` is its OAuth2 alias.
    let value = [body.token, body.access_token]
        .into_iter()
        .flatten()
        .find(|v| !v.is_empty())
        .ok_or("no token in response")?;
    let value = Secret::new(value);
    let mut header = HeaderValue::from_str(&format!("Bearer {}", value.expose()))
        .map_err(|_| "token is not a valid header value")?;
    header.set_sensitive(true);
    let ttl = token_ttl(body.expires_in, body.issued_at.as_deref(), now);
    Ok(Token {
        header,
        expires_at: Instant::now() + ttl,
    })
}

/// How long from `now` a token may be used: `issued_at` (or now, if absent,
/// unparsable or in the future) plus `expires_in` (default and minimum 60 s,
/// at most a day), less the skew margin.
fn token_ttl(expires_in: Option<f64>, issued_at: Option<&str>, now: SystemTime) -> Duration {
    let seconds = expires_in
        .unwrap_or(0.0)
        .min(MAX_TOKEN_LIFETIME.as_secs_f64());
    let lifetime = Duration::try_from_secs_f64(seconds)
        .unwrap_or(MIN_TOKEN_LIFETIME)
        .clamp(MIN_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME);
    let issued = issued_at
        .and_then(|s| humantime::parse_rfc3339(s).ok())
        .filter(|t| *t <= now)
        .unwrap_or(now);
    (issued + lifetime)
        .duration_since(now)
        .unwrap_or_default()
        .saturating_sub(EXPIRY_SKEW)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::challenge::parse_line;

    fn url(s: &str) -> Url {
        s.parse().unwrap()
    }

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn token_debug_is_redacted() {
        let token = parse_token(br#"{"token":"s3cr3t-value"}"#, SystemTime::now()).unwrap();
        let shown = format!("{token:?} {:?}", Authorization::Bearer(token.clone()));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        assert!(token.header.is_sensitive());
    }

    #[test]
    fn token_or_access_token() {
        let now = SystemTime::now();
        let t = parse_token(br#"{"access_token":"a"}"#, now).unwrap();
        assert_eq!(t.header, "Bearer a");
        let t = parse_token(br#"{"token":"t","access_token":"a"}"#, now).unwrap();
        assert_eq!(t.header, "Bearer t");
        let t = parse_token(br#"{"token":"","access_token":"a"}"#, now).unwrap();
        assert_eq!(t.header, "Bearer a");
        for bad in [
            &br#"{}"#[..],
            br#"{"token":""}"#,
            br#"{"token":"a\nb"}"#,
            b"<html>403</html>",
            br#"{"token":1}"#,
            b"",
        ] {
            assert!(parse_token(bad, now).is_err());
        }
    }

    #[test]
    fn token_lifetime_follows_the_spec() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let secs = |d: Duration| d.as_secs();
        assert_eq!(secs(token_ttl(None, None, now)), 50, "default 60 s - skew");
        assert_eq!(secs(token_ttl(Some(5.0), None, now)), 50, "minimum 60 s");
        assert_eq!(secs(token_ttl(Some(300.0), None, now)), 290);
        assert_eq!(secs(token_ttl(Some(-3.0), None, now)), 50);
        assert_eq!(secs(token_ttl(Some(1e300), None, now)), 86_390);
        let issued = "2023-11-14T22:11:40Z"; // now - 100 s
        assert_eq!(secs(token_ttl(Some(300.0), Some(issued), now)), 190);
        let long_ago = "2001-01-01T00:00:00Z";
        assert_eq!(secs(token_ttl(Some(300.0), Some(long_ago), now)), 0);
        let future = "2030-01-01T00:00:00Z";
        assert_eq!(secs(token_ttl(Some(300.0), Some(future), now)), 290);
        for garbage in [
            "yesterday",
            "2023-11-14T22:12:20+05:00",
            "ü".repeat(30).as_str(),
        ] {
            assert_eq!(secs(token_ttl(Some(300.0), Some(garbage), now)), 290);
        }
    }

    #[test]
    fn scope_from_the_challenge_or_from_the_401d_path() {
        let at = url("https://ar.example/v2/k8s-artifacts-prod/images/pause/manifests/3.9");
        let with_scope = parse_line(
            r#"Bearer realm="https://ar.example/v2/token",service="ar",scope="repository:x:pull repository:y:pull""#,
        );
        let key = bearer_key(&with_scope, &at, &repo("pause")).unwrap();
        assert_eq!(key.scope, "repository:x:pull repository:y:pull");
        assert_eq!(
            token_url(&key).as_str(),
            "https://ar.example/v2/token?service=ar&scope=repository%3Ax%3Apull&scope=repository%3Ay%3Apull"
        );

        let realm_only = parse_line(r#"Bearer realm="https://ar.example/v2/token?x=1""#);
        let key = bearer_key(&realm_only, &at, &repo("pause")).unwrap();
        assert_eq!(key.scope, "repository:k8s-artifacts-prod/images/pause:pull");
        assert_eq!(key.service, None);
        assert_eq!(
            token_url(&key).as_str(),
            "https://ar.example/v2/token?x=1&scope=repository%3Ak8s-artifacts-prod%2Fimages%2Fpause%3Apull"
        );

        let download = url("https://ar.example/artifacts-downloads/namespaces/p/x");
        let key = bearer_key(&realm_only, &download, &repo("pause")).unwrap();
        assert_eq!(key.scope, "repository:pause:pull");
    }

    #[test]
    fn repository_names_in_paths() {
        let name = |p: &str| repo_in_path(p).map(|r| r.to_string());
        assert_eq!(name("/v2/a/b/blobs/sha256:x").as_deref(), Some("a/b"));
        assert_eq!(name("/mirror/v2/a/tags/list").as_deref(), Some("a"));
        assert_eq!(name("/v2/v2/x/referrers/sha256:x").as_deref(), Some("v2/x"));
        assert_eq!(
            name("/v2/manifests/x/manifests/latest").as_deref(),
            Some("manifests/x")
        );
        assert_eq!(name("/v2/"), None);
        assert_eq!(name("/download/sha256:x"), None);
        assert_eq!(name("/v2/Bad Name/manifests/x"), None);
    }

    #[test]
    fn unusable_bearer_challenges_are_skipped() {
        let at = url("https://r.example/v2/a/manifests/x");
        for line in [
            "Bearer service=\"s\"",
            "Bearer realm=\"not a url\"",
            "Bearer realm=\"file:///etc/passwd\"",
            "Basic realm=\"r\"",
        ] {
            assert!(
                bearer_key(&parse_line(line), &at, &repo("a")).is_none(),
                "{line}"
            );
        }
        assert!(rejects_token(&parse_line(
            r#"Bearer realm="https://r/t",error="invalid_token""#
        )));
        assert!(!rejects_token(&parse_line(r#"Bearer realm="https://r/t""#)));
    }
}
