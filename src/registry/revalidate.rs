//! Stale-while-revalidate for tags: a tag past its `tag_ttl` is answered from
//! the cache at once, and one background task per tag asks the upstream
//! (a HEAD, bounded by the upstream's `revalidate_timeout`): same digest →
//! the mapping is fresh again; moved → the new manifest is fetched (checked
//! like any manifest) and the tag points at it; 404 → the tag is forgotten;
//! anything else (unreachable, 5xx, 429, an open circuit, not a manifest) →
//! the cached mapping stays, and the next stale request tries again.
//!
//! A revalidation never holds a client's request and never replaces a cached
//! tag with anything but a verified manifest.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::Method;

use super::local::Local;
use super::manifests::fetch_manifest;
use super::{Error, Route};
use crate::oci::{Manifest, Reference, RepoName, Tag};
use crate::upstream;

/// The revalidations running, one per (upstream, repository, tag).
#[derive(Debug, Default)]
pub(super) struct Revalidations {
    running: Arc<Mutex<HashSet<String>>>,
}

impl Revalidations {
    /// Starts revalidating `tag` (cached as `cached`) in the background,
    /// unless a revalidation of it is running already.
    pub(super) fn start(
        &self,
        local: &Local,
        route: &Route,
        repo: &RepoName,
        tag: &Tag,
        cached: &Arc<Manifest>,
    ) {
        let key = format!("{}/{repo}:{tag}", route.key.id);
        if !self.lock().insert(key.clone()) {
            return;
        }
        let job = Revalidation {
            local: local.clone(),
            route: route.clone(),
            repo: repo.clone(),
            tag: tag.clone(),
            cached: Arc::clone(cached),
            _running: Running {
                set: Arc::clone(&self.running),
                key,
            },
        };
        tokio::spawn(job.run());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Takes a revalidation out of the running set when its task ends, however.
struct Running {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        set.remove(&self.key);
    }
}

/// One background revalidation; owns clones so it outlives the request.
struct Revalidation {
    local: Local,
    route: Route,
    repo: RepoName,
    tag: Tag,
    cached: Arc<Manifest>,
    _running: Running,
}

impl Revalidation {
    async fn run(self) {
        let result = self.revalidate().await;
        // Out of the running set before the log line, so that whoever reads
        // it can count on the next stale request revalidating again.
        let Self {
            route,
            repo,
            tag,
            _running: running,
            ..
        } = self;
        drop(running);
        let (upstream, repo, tag) = (route.name(), &repo, &tag);
        match result {
            Ok(found) => {
                tracing::info!(upstream, %repo, %tag, found, "tag revalidated");
            }
            Err(e) => {
                tracing::warn!(upstream, %repo, %tag, error = %e, "tag revalidation failed; the cached mapping stays");
            }
        }
    }

    /// What the upstream said: `unchanged`, `moved` (fetched again; also when
    /// its HEAD gave no digest) or `deleted`.
    async fn revalidate(&self) -> Result<&'static str, Error> {
        let limit = self.route.revalidate_timeout();
        let reference = Reference::Tag(self.tag.clone());
        let (key, repo, tag) = (&self.route.key, &self.repo, &self.tag);
        let head = self
            .route
            .client
            .manifest_within(Method::HEAD, repo, &reference, limit)
            .await;
        match head {
            Ok(response)
                if response.docker_content_digest().as_ref() == Some(&self.cached.digest) =>
            {
                let digest = &self.cached.digest;
                self.local
                    .set_tag(key, repo, tag, digest, SystemTime::now())
                    .await?;
                Ok("unchanged")
            }
            // Moved, or no digest given: the manifest itself tells.
            Ok(_) => {
                fetch_manifest(&self.local, &self.route, repo, &reference, Some(limit)).await?;
                Ok("moved")
            }
            Err(upstream::Error::NotFound) => {
                self.local.remove_tag(key, repo, tag).await?;
                Ok("deleted")
            }
            Err(e) => Err(Error::from_upstream(
                self.route.name(),
                e,
                Error::ManifestUnknown,
            )),
        }
    }
}
