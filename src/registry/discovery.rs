//! Discovery: the tag list (the upstream's full list, or the tags this cache
//! knows when the upstream is down) and referrers (passed through).

use bytes::Bytes;

use super::{Error, Outcome, Registry, Route};
use crate::oci::{Digest, MAX_MANIFEST_BYTES, RepoName};

/// A referrers answer passed through from the upstream.
#[derive(Debug, Clone)]
pub struct Referrers {
    pub content_type: Option<String>,
    /// The upstream's `OCI-Filters-Applied`, if it filtered by artifact type.
    pub filters_applied: Option<String>,
    pub body: Bytes,
}

impl Registry {
    /// Every tag of `repo`, sorted. Pagination is the caller's: registry.k8s.io
    /// drops query strings on its redirect, so `n`/`last` cannot be forwarded.
    pub async fn tags(
        &self,
        route: &Route,
        repo: &RepoName,
    ) -> Result<(Vec<String>, Outcome), Error> {
        match route.client.tags(repo).await {
            Ok(mut tags) => {
                tags.sort();
                tags.dedup();
                Ok((tags, Outcome::Pass))
            }
            Err(e) if e.is_unavailable() => {
                let known = self.local.tags(&route.key, repo).await?;
                if known.is_empty() {
                    return Err(Error::from_upstream(route.name(), e, Error::NameUnknown));
                }
                tracing::warn!(upstream = route.name(), %repo, error = %e, "upstream unavailable; listing cached tags");
                Ok((known, Outcome::Stale))
            }
            Err(e) => Err(Error::from_upstream(route.name(), e, Error::NameUnknown)),
        }
    }

    /// The upstream's referrers index for `digest`, unchanged.
    pub async fn referrers(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<(Referrers, Outcome), Error> {
        let not_found = || Error::ManifestUnknown;
        let response = route
            .client
            .referrers(repo, digest, artifact_type)
            .await
            .map_err(|e| Error::from_upstream(route.name(), e, not_found()))?;
        let content_type = response.content_type().map(str::to_owned);
        let filters_applied = response
            .headers()
            .get("oci-filters-applied")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes_limited(MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| Error::from_upstream(route.name(), e, not_found()))?;
        let referrers = Referrers {
            content_type,
            filters_applied,
            body,
        };
        Ok((referrers, Outcome::Pass))
    }
}
