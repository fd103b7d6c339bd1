//! `upstream::Error`: every way a conversation with a remote registry can end
//! other than a 2xx answer, classified so that callers can decide between
//! "serve from cache" ([`Error::is_unavailable`]) and "pass the failure on".
//!
//! Messages name the upstream URL by scheme, host and path only: a redirect
//! target's query string may hold a presigned secret, so it never reaches an
//! error message, and neither does a token or a password.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

use super::cause;
pub use super::cause::{Cause, RedirectRefusal};
use super::health::Refusal;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use url::Url;

/// Why an upstream request did not produce a usable 2xx response.
///
/// `Clone` because one token fetch may answer several waiting requests
/// (single-flight), and each of them needs its own copy of a failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The end of the redirect chain answered 404.
    #[error("not found upstream")]
    NotFound,
    /// Connecting, the TLS handshake, a read or the whole exchange failed.
    #[error(transparent)]
    Unreachable(Transport),
    /// The upstream answered 5xx.
    #[error("upstream server error (HTTP {status})")]
    ServerError { status: u16 },
    /// The upstream answered 429; `retry_after` is its `Retry-After` in seconds.
    #[error(
        "upstream rate limit reached (HTTP 429{})",
        .retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default()
    )]
    TooManyRequests { retry_after: Option<Duration> },
    /// 401 or 403 after the token flow was tried (or when it could not be).
    #[error("upstream denied access (HTTP {status})")]
    Denied { status: u16 },
    /// A body was larger than the caller's limit.
    #[error("upstream response larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The upstream client could not be built from its configuration (a CA,
    /// certificate or key file that cannot be read or does not match).
    #[error("upstream TLS setup: {0}")]
    Setup(String),
    /// A redirect broke the upstream's redirect policy and was not followed.
    #[error("upstream redirect refused: {0}")]
    RedirectRefused(RedirectRefusal),
    /// The upstream broke the protocol: redirect loop, too many hops, a bad
    /// `Location`, a bad token response, an unexpected status.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// Not sent: the upstream's circuit is open after consecutive failures
    /// (see [`super::Health`]).
    #[error("{}", circuit_message(.0))]
    CircuitOpen(Refusal),
    /// Not sent: the upstream's pull quota is down to its reserve, or it
    /// answered 429 (see [`super::RateLimit`]); GETs resume in `retry_in`.
    #[error("upstream pull quota paused ({why}); manifest requests resume in {}s", .retry_in.as_secs_f64().ceil())]
    QuotaReserve { retry_in: Duration, why: String },
    /// No answer within the caller's own bound (`revalidate_timeout`).
    #[error("no upstream answer within {limit:?}")]
    Deadline { limit: Duration },
}

fn circuit_message(refusal: &Refusal) -> String {
    let next = if refusal.retry_in.is_zero() {
        "a probe request is under way".to_owned()
    } else {
        format!("next attempt in {}s", refusal.retry_in.as_secs_f64().ceil())
    };
    format!(
        "upstream circuit open after {} consecutive failures (last: {}); {next}",
        refusal.failures, refusal.cause
    )
}

impl Error {
    /// True when the upstream could not answer at all (down, overloaded, rate
    /// limited): callers then serve what they have cached, if anything.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable(_)
                | Self::ServerError { .. }
                | Self::TooManyRequests { .. }
                | Self::CircuitOpen(_)
                | Self::QuotaReserve { .. }
                | Self::Deadline { .. }
        )
    }

    /// True when the upstream did not answer in time (connect, idle read, or
    /// the caller's deadline).
    pub fn timed_out(&self) -> bool {
        matches!(self, Self::Unreachable(t) if t.is_timeout())
            || matches!(self, Self::Deadline { .. })
    }

    /// A transport failure while talking to `url`.
    pub(crate) fn transport(source: reqwest::Error, url: &Url) -> Self {
        Self::Unreachable(Transport::new(source, url))
    }
}

/// The error for a final (non-redirect, non-2xx) status from `url`.
/// Error bodies are never parsed: Google's frontends send HTML.
pub(crate) fn from_status(status: StatusCode, headers: &HeaderMap, url: &Url) -> Error {
    match status.as_u16() {
        404 => Error::NotFound,
        429 => Error::TooManyRequests {
            retry_after: retry_after(headers),
        },
        401 | 403 => Error::Denied {
            status: status.as_u16(),
        },
        500..=599 => Error::ServerError {
            status: status.as_u16(),
        },
        _ => Error::Protocol(format!(
            "unexpected status {status} from {}",
            without_query(url)
        )),
    }
}

/// `Retry-After` in delay-seconds; an HTTP-date (rare from registries) is ignored.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

/// A transport failure: its cause, where, and the underlying error.
#[derive(Clone, thiserror::Error)]
#[error("upstream unreachable: {cause} ({url})")]
pub struct Transport {
    cause: Cause,
    /// `scheme://host[:port]/path`, never the query.
    url: String,
    /// The reqwest error with its URL removed (it would include the query).
    #[source]
    source: Arc<reqwest::Error>,
}

impl Transport {
    pub(crate) fn new(source: reqwest::Error, url: &Url) -> Self {
        Self {
            cause: cause::classify(&source, url),
            url: without_query(url),
            source: Arc::new(source.without_url()),
        }
    }

    /// True when the failure was a timeout (connect or idle read).
    pub fn is_timeout(&self) -> bool {
        matches!(self.cause, Cause::ConnectTimeout { .. } | Cause::TimedOut)
    }

    /// What went wrong, for an operator.
    pub fn cause(&self) -> &Cause {
        &self.cause
    }

    /// Replaces the cause with a better-informed one, if there is one.
    pub(crate) fn with_cause(mut self, cause: Option<Cause>) -> Self {
        if let Some(cause) = cause {
            self.cause = cause;
        }
        self
    }

    /// Adds what the proxy answered when it refused a tunnel.
    pub(crate) fn with_proxy_answer(mut self, answer: Option<String>) -> Self {
        if let Cause::ProxyRefused { status, .. } = &mut self.cause {
            *status = answer;
        }
        self
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("cause", &self.cause)
            .field("url", &self.url)
            .field("source", &self.source)
            .finish()
    }
}

/// `scheme://host[:port]/path`: how an upstream URL may appear in logs and
/// errors. The query and fragment are dropped because presigned storage URLs
/// carry their signature there, and so are any userinfo credentials.
pub(crate) fn without_query(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_means_serve_from_cache() {
        assert!(Error::ServerError { status: 503 }.is_unavailable());
        assert!(Error::TooManyRequests { retry_after: None }.is_unavailable());
        assert!(!Error::NotFound.is_unavailable());
        assert!(!Error::Denied { status: 403 }.is_unavailable());
        assert!(!Error::TooLarge { limit: 1 }.is_unavailable());
        assert!(!Error::Protocol("x".into()).is_unavailable());
    }

    #[test]
    fn final_statuses_map_to_errors() {
        let url: Url = "https://r.example/v2/a/manifests/x?sig=s".parse().unwrap();
        let map = |code: u16, headers: &HeaderMap| {
            from_status(StatusCode::from_u16(code).unwrap(), headers, &url)
        };
        let none = HeaderMap::new();
        assert!(matches!(map(404, &none), Error::NotFound));
        assert!(matches!(map(401, &none), Error::Denied { status: 401 }));
        assert!(matches!(map(403, &none), Error::Denied { status: 403 }));
        assert!(matches!(
            map(502, &none),
            Error::ServerError { status: 502 }
        ));
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert!(matches!(
            map(429, &h),
            Error::TooManyRequests { retry_after: Some(d) } if d == Duration::from_secs(7)
        ));
        assert_eq!(
            map(429, &h).to_string(),
            "upstream rate limit reached (HTTP 429, retry after 7s)"
        );
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert!(matches!(
            map(429, &h),
            Error::TooManyRequests { retry_after: None }
        ));
        let other = map(418, &none);
        assert!(
            matches!(&other, Error::Protocol(m) if !m.contains("sig")),
            "{other}"
        );
    }

    #[test]
    fn logged_urls_lose_query_fragment_and_userinfo() {
        let url: Url = "https://user:pw@s3.example:8443/bucket/sha256:ab?X-Amz-Signature=s3cr3t#f"
            .parse()
            .unwrap();
        assert_eq!(
            without_query(&url),
            "https://s3.example:8443/bucket/sha256:ab"
        );
        let url: Url = "http://h/p?token=x".parse().unwrap();
        assert_eq!(without_query(&url), "http://h/p");
    }
}
