//! `registry::Error`: every way a registry operation fails, in domain terms and
//! classified by who is to blame (the client, the upstream, or us). It knows no
//! HTTP: `api::error` is the one place that turns these into status codes and
//! OCI error codes. Upstream failures are classified here once
//! ([`Error::from_upstream`]) from `upstream::Error`'s typed values.

use std::sync::Arc;
use std::time::Duration;

use crate::oci::Digest;
use crate::{index, store, upstream};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `?ns=` names a registry that is not configured (never dialled).
    #[error("no upstream is configured for namespace {0:?}")]
    UnknownNamespace(String),
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("blob unknown")]
    BlobUnknown,
    #[error("repository name not known to the upstream")]
    NameUnknown,
    /// The upstream could not be used (unreachable, 5xx) and nothing cached
    /// can answer.
    #[error("upstream {upstream} is unavailable: {source}")]
    Unavailable {
        upstream: String,
        #[source]
        source: upstream::Error,
    },
    /// The upstream limits our request rate; `retry_after` is when it said to
    /// ask again.
    #[error("upstream {upstream} rate limit reached")]
    RateLimited {
        upstream: String,
        retry_after: Option<Duration>,
    },
    /// The upstream refused us access (after the token flow).
    #[error("upstream {upstream} denied access: {source}")]
    Denied {
        upstream: String,
        #[source]
        source: upstream::Error,
    },
    /// The upstream answered something unusable.
    #[error("upstream {upstream} failed: {source}")]
    Upstream {
        upstream: String,
        #[source]
        source: upstream::Error,
    },
    /// Upstream bytes did not hash to the digest they were fetched for.
    #[error("upstream content for {expected} hashed to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// Upstream content we cannot store (too large, longer than announced, ...).
    #[error("upstream content is unusable: {0}")]
    BadContent(String),
    /// The upstream's answer to a manifest request is not a manifest (a
    /// captive portal's HTML page, a JSON error sent with 200): never cached.
    #[error(
        "upstream {upstream} answered HTTP {status} with {}, which is not a manifest ({why})",
        .content_type.as_deref().unwrap_or("no Content-Type")
    )]
    NotAManifest {
        upstream: String,
        status: u16,
        content_type: Option<String>,
        why: crate::oci::NotAManifest,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Index(#[from] index::Error),
    /// The fill this request started or joined failed with this error; every
    /// reader of the fill answers with it.
    #[error(transparent)]
    Fill(Arc<Error>),
    /// The manifest request this one started or waited for failed with this
    /// error; every request that waited for it answers with it.
    #[error(transparent)]
    Flight(Arc<Error>),
    /// A fill's task ended without a result (it panicked): our fault.
    #[error("the fill ended without a result")]
    FillAbandoned,
    /// Local I/O outside the store's own operations (reading a temp file).
    #[error("local I/O: {0}")]
    Local(#[from] std::io::Error),
}

impl Error {
    /// Classifies a failure of `upstream`: its 404 is `not_found`, a rate limit
    /// (or a circuit its 429 opened) and a denial are their own, unreachable,
    /// 5xx or an open circuit is `Unavailable`, the rest `Upstream`.
    pub(crate) fn from_upstream(
        upstream: &str,
        source: upstream::Error,
        not_found: Error,
    ) -> Error {
        let upstream = upstream.to_owned();
        match source {
            upstream::Error::NotFound => not_found,
            upstream::Error::TooManyRequests { retry_after } => Error::RateLimited {
                upstream,
                retry_after,
            },
            // The circuit opened on the upstream's rate limit: still one.
            upstream::Error::CircuitOpen(refusal) if refusal.rate_limited => Error::RateLimited {
                upstream,
                retry_after: Some(refusal.retry_in.max(Duration::from_secs(1))),
            },
            // Paused before the quota ran out: the same answer, with the reset.
            upstream::Error::QuotaReserve { retry_in, .. } => Error::RateLimited {
                upstream,
                retry_after: Some(retry_in.max(Duration::from_secs(1))),
            },
            source @ upstream::Error::Denied { .. } => Error::Denied { upstream, source },
            source if source.is_unavailable() => Error::Unavailable { upstream, source },
            source => Error::Upstream { upstream, source },
        }
    }

    /// The failure itself, for a request that shares another's (a fill it
    /// joined, a manifest request it waited for).
    pub(crate) fn cause(&self) -> &Error {
        match self {
            Error::Fill(shared) | Error::Flight(shared) => shared.cause(),
            own => own,
        }
    }

    /// A store commit that failed verification is the upstream's bad content.
    pub(crate) fn from_commit(e: store::Error) -> Error {
        match e {
            store::Error::DigestMismatch { expected, actual } => {
                Error::DigestMismatch { expected, actual }
            }
            other => Error::Store(other),
        }
    }
}
