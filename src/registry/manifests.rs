//! Manifest requests. By digest: served from the cache once cached, never asked
//! upstream again. By tag: a mapping younger than the upstream's `tag_ttl` is
//! served as is; an older one is revalidated with an upstream HEAD; when the
//! upstream cannot answer, the last known mapping is served.
//!
//! Manifests are stored as the exact upstream bytes with the upstream's media
//! type, after their digest is checked; they are never re-serialized.
//! Concurrent misses of one manifest wait for a single upstream request.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use http::Method;

use super::{Error, Outcome, Registry, Route};
use crate::oci::{Digest, MAX_MANIFEST_BYTES, Manifest, Reference, RepoName, Tag};
use crate::upstream;

impl Registry {
    /// The manifest `reference` of `repo`, and how it was obtained.
    pub async fn manifest(
        &self,
        route: &Route,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Arc<Manifest>, Outcome), Error> {
        let answer = match reference {
            Reference::Digest(digest) => self.manifest_by_digest(route, repo, digest).await,
            Reference::Tag(tag) => self.manifest_by_tag(route, repo, tag).await,
        }?;
        // Served from memory or not, it is an access (LRU order for eviction).
        self.local.touch(&answer.0.digest);
        Ok(answer)
    }

    async fn manifest_by_digest(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(Arc<Manifest>, Outcome), Error> {
        if let Some(answer) = self.linked_manifest(route, repo, digest).await? {
            return Ok(answer);
        }
        // One request per digest goes on: the others wait, then find it cached.
        let _flight = self
            .manifest_flights
            .lock(format!("{}/{repo}@{digest}", route.key.id))
            .await;
        if let Some(answer) = self.linked_manifest(route, repo, digest).await? {
            return Ok(answer);
        }
        let manifest = self
            .fetch_manifest(route, repo, &Reference::Digest(digest.clone()))
            .await?;
        Ok((manifest, Outcome::Miss))
    }

    /// A cached manifest, once `repo` is known (or confirmed) to have it.
    async fn linked_manifest(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<(Arc<Manifest>, Outcome)>, Error> {
        let Some(manifest) = self.local.manifest(digest).await? else {
            return Ok(None);
        };
        let outcome = self
            .ensure_linked(route, repo, digest, Error::ManifestUnknown, || async {
                let reference = Reference::Digest(digest.clone());
                route
                    .client
                    .manifest(Method::HEAD, repo, &reference)
                    .await
                    .map(drop)
            })
            .await?;
        Ok(Some((manifest, outcome)))
    }

    async fn manifest_by_tag(
        &self,
        route: &Route,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<(Arc<Manifest>, Outcome), Error> {
        if let Some(manifest) = self.fresh_tag(route, repo, tag).await? {
            return Ok((manifest, Outcome::Hit));
        }
        // One request per tag goes on: the others wait, then find it fresh.
        let _flight = self
            .manifest_flights
            .lock(format!("{}/{repo}:{tag}", route.key.id))
            .await;
        if let Some(known) = self.local.tag(&route.key, repo, tag).await? {
            if known.is_fresh(route.tag_ttl()) {
                return Ok((known.manifest, Outcome::Hit));
            }
            if let Some(answer) = self
                .revalidate_tag(route, repo, tag, known.manifest)
                .await?
            {
                return Ok(answer);
            }
        }
        let manifest = self
            .fetch_manifest(route, repo, &Reference::Tag(tag.clone()))
            .await?;
        Ok((manifest, Outcome::Miss))
    }

    /// The manifest of a tag resolved less than `tag_ttl` ago.
    async fn fresh_tag(
        &self,
        route: &Route,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Arc<Manifest>>, Error> {
        let known = self.local.tag(&route.key, repo, tag).await?;
        Ok(known
            .filter(|known| known.is_fresh(route.tag_ttl()))
            .map(|known| known.manifest))
    }

    /// Asks the upstream (HEAD) whether a stale tag still points at `manifest`.
    /// `Ok(None)` means it moved (or the upstream gave no digest): fetch it again.
    async fn revalidate_tag(
        &self,
        route: &Route,
        repo: &RepoName,
        tag: &Tag,
        manifest: Arc<Manifest>,
    ) -> Result<Option<(Arc<Manifest>, Outcome)>, Error> {
        let reference = Reference::Tag(tag.clone());
        match route.client.manifest(Method::HEAD, repo, &reference).await {
            Ok(response) if response.docker_content_digest().as_ref() == Some(&manifest.digest) => {
                self.local
                    .set_tag(&route.key, repo, tag, &manifest.digest, SystemTime::now())
                    .await?;
                Ok(Some((manifest, Outcome::Revalidated)))
            }
            Ok(_) => Ok(None),
            Err(upstream::Error::NotFound) => {
                self.local.remove_tag(&route.key, repo, tag).await?;
                Err(Error::ManifestUnknown)
            }
            Err(e) if e.is_unavailable() => {
                tracing::warn!(upstream = route.name(), %repo, %tag, error = %e, "upstream unavailable; serving the last known tag");
                Ok(Some((manifest, Outcome::Stale)))
            }
            Err(e) => Err(Error::from_upstream(
                route.name(),
                e,
                Error::ManifestUnknown,
            )),
        }
    }

    /// GETs a manifest upstream (asking for every media type), verifies it, stores
    /// the exact bytes and indexes it (and the tag, for a tag reference).
    async fn fetch_manifest(
        &self,
        route: &Route,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Arc<Manifest>, Error> {
        let response = route
            .client
            .manifest(Method::GET, repo, reference)
            .await
            .map_err(|e| Error::from_upstream(route.name(), e, Error::ManifestUnknown))?;
        let header_digest = response.docker_content_digest();
        let content_type = response.content_type().map(str::to_owned);
        let bytes = response
            .bytes_limited(MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| Error::from_upstream(route.name(), e, Error::ManifestUnknown))?;
        let digest = verified_digest(reference, header_digest.as_ref(), &bytes)?;
        let manifest = Manifest::new(digest, content_type.as_deref(), bytes);
        let tag = match reference {
            Reference::Tag(tag) => Some(tag),
            Reference::Digest(_) => None,
        };
        let manifest = self
            .local
            .publish_manifest(&route.key, repo, manifest, tag)
            .await?;
        tracing::info!(upstream = route.name(), %repo, %reference, digest = %manifest.digest, "manifest cached");
        Ok(manifest)
    }
}

/// One lock per manifest reference being resolved, so that concurrent misses of
/// one manifest make one upstream request; the others wait and find it cached.
#[derive(Debug, Default)]
pub(super) struct Flights {
    inflight: std::sync::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl Flights {
    pub(super) async fn lock(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut inflight = self.inflight.lock().expect("flights lock poisoned");
            inflight.retain(|_, lock| lock.strong_count() > 0);
            match inflight.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    inflight.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

/// The digest of fetched manifest bytes, checked against what was asked for (a
/// digest reference) and what the upstream claimed (`Docker-Content-Digest`).
fn verified_digest(
    reference: &Reference,
    claimed: Option<&Digest>,
    bytes: &[u8],
) -> Result<Digest, Error> {
    let expected = match reference {
        Reference::Digest(d) => Some(d),
        Reference::Tag(_) => claimed,
    };
    let algorithm = expected.map_or(crate::oci::Algorithm::Sha256, Digest::algorithm);
    let actual = Digest::of(algorithm, bytes);
    match expected {
        Some(expected) if *expected != actual => Err(Error::DigestMismatch {
            expected: expected.clone(),
            actual,
        }),
        _ => Ok(actual),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_checked_against_reference_and_claim() {
        let bytes = b"{}";
        let good = Digest::sha256_of(bytes);
        let other = Digest::sha256_of(b"other");
        let by_digest = Reference::Digest(good.clone());
        assert_eq!(verified_digest(&by_digest, None, bytes).unwrap(), good);
        let wrong = Reference::Digest(other.clone());
        assert!(matches!(
            verified_digest(&wrong, None, bytes),
            Err(Error::DigestMismatch { .. })
        ));
        let tag = Reference::Tag("v1".parse().unwrap());
        assert_eq!(verified_digest(&tag, None, bytes).unwrap(), good);
        assert!(verified_digest(&tag, Some(&other), bytes).is_err());
        let sha512 = Digest::of(crate::oci::Algorithm::Sha512, bytes);
        assert_eq!(verified_digest(&tag, Some(&sha512), bytes).unwrap(), sha512);
    }
}
