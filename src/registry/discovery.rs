//! Discovery: the tag list (the upstream's full list, or the tags this cache
//! knows when the upstream is down). Referrers are in `referrers`.

use super::{Error, Outcome, Registry, Route};
use crate::oci::RepoName;

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
}
