//! `registry::Error`: every way a registry operation fails, classified by who is
//! to blame (the client, the upstream, or us). It knows no HTTP: `api::error` is
//! the one place that turns these into status codes and OCI error codes.

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
    /// The upstream could not be used and nothing cached can answer.
    #[error("upstream {upstream} is unavailable: {source}")]
    Unavailable {
        upstream: String,
        #[source]
        source: upstream::Error,
    },
    /// The upstream answered but refused, or answered something unusable.
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
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Index(#[from] index::Error),
    /// The fill this request joined failed (`unavailable`: the upstream could
    /// not be reached or answered 5xx/429).
    #[error("fill failed: {message}")]
    FillFailed { unavailable: bool, message: String },
    /// Local I/O outside the store's own operations (reading a temp file).
    #[error("local I/O: {0}")]
    Local(#[from] std::io::Error),
}

impl Error {
    /// Wraps an upstream failure for `upstream`, turning 404 into `not_found` and
    /// unavailability (unreachable, 5xx, 429) into `Unavailable`.
    pub(crate) fn from_upstream(
        upstream: &str,
        source: upstream::Error,
        not_found: Error,
    ) -> Error {
        match source {
            upstream::Error::NotFound => not_found,
            source if source.is_unavailable() => Error::Unavailable {
                upstream: upstream.to_owned(),
                source,
            },
            source => Error::Upstream {
                upstream: upstream.to_owned(),
                source,
            },
        }
    }
}
