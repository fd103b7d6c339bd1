//! Manifest requests. By digest: served from the cache once cached, never asked
//! upstream again. By tag: a mapping younger than the upstream's `tag_ttl` is
//! served as is; an older one is served at once too, while one background
//! revalidation asks the upstream (`registry::revalidate`), so a slow or
//! hanging upstream never holds a cached tag's request.
//!
//! Only manifests are cached as manifests: an upstream answer must name a
//! manifest media type (or, with a generic one, be a manifest by its shape;
//! `oci::recognise`), fit in [`MAX_MANIFEST_BYTES`] and hash to the digest it
//! was asked by; anything else (a captive portal's HTML page) is an error
//! naming the upstream's status and content type, and is never stored.
//! Manifests are stored as the exact upstream bytes, never re-serialized.
//! Concurrent misses of one manifest wait for a single upstream request, and
//! its failure answers all of them: none repeats it behind the others.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::Method;

use super::local::Local;
use super::{Error, Outcome, Registry, Route};
use crate::oci::{Digest, MAX_MANIFEST_BYTES, Manifest, Reference, RepoName, Tag, recognise};
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
        // One request per digest goes on: the others wait, then find it cached
        // (or share its failure).
        let flight = self
            .manifest_flights
            .lock(format!("{}/{repo}@{digest}", route.key.id))
            .await;
        flight.failed_meanwhile()?;
        if let Some(answer) = self.linked_manifest(route, repo, digest).await? {
            return Ok(answer);
        }
        let reference = Reference::Digest(digest.clone());
        let fetched = fetch_manifest(&self.local, route, repo, &reference, None).await;
        Ok((flight.settle(fetched)?, Outcome::Miss))
    }

    /// A cached manifest, once `repo` is known (or confirmed) to have it.
    async fn linked_manifest(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<(Arc<Manifest>, Outcome)>, Error> {
        let Some((manifest, linked)) = self.local.manifest_in(&route.key, repo, digest).await?
        else {
            return Ok(None);
        };
        let outcome = self
            .ensure_linked(
                route,
                repo,
                digest,
                linked,
                Error::ManifestUnknown,
                || async {
                    let reference = Reference::Digest(digest.clone());
                    route
                        .client
                        .manifest(Method::HEAD, repo, &reference)
                        .await
                        .map(drop)
                },
            )
            .await?;
        Ok(Some((manifest, outcome)))
    }

    async fn manifest_by_tag(
        &self,
        route: &Route,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<(Arc<Manifest>, Outcome), Error> {
        if let Some(known) = self.local.tag(&route.key, repo, tag).await? {
            if known.is_fresh(route.tag_ttl()) {
                return Ok((known.manifest, Outcome::Hit));
            }
            // Past its TTL: answered now; the upstream is asked meanwhile.
            self.revalidations
                .start(&self.local, route, repo, tag, &known.manifest);
            return Ok((known.manifest, Outcome::Stale));
        }
        // One request per tag goes on: the others wait, then find it cached
        // (or share its failure).
        let flight = self
            .manifest_flights
            .lock(format!("{}/{repo}:{tag}", route.key.id))
            .await;
        flight.failed_meanwhile()?;
        if let Some(known) = self.local.tag(&route.key, repo, tag).await? {
            return Ok((known.manifest, Outcome::Hit));
        }
        let reference = Reference::Tag(tag.clone());
        let fetched = fetch_manifest(&self.local, route, repo, &reference, None).await;
        Ok((flight.settle(fetched)?, Outcome::Miss))
    }
}

/// GETs a manifest upstream (asking for every media type), checks that it is
/// one (type or shape, size, digest), stores the exact bytes and indexes it (and
/// the tag, for a tag reference). `deadline` bounds the request and its body
/// (a background revalidation's `revalidate_timeout`).
pub(super) async fn fetch_manifest(
    local: &Local,
    route: &Route,
    repo: &RepoName,
    reference: &Reference,
    deadline: Option<Duration>,
) -> Result<Arc<Manifest>, Error> {
    let fail = |e| Error::from_upstream(route.name(), e, Error::ManifestUnknown);
    let response = match deadline {
        Some(limit) => {
            let sent = route
                .client
                .manifest_within(Method::GET, repo, reference, limit);
            sent.await
        }
        None => route.client.manifest(Method::GET, repo, reference).await,
    }
    .map_err(fail)?;
    let status = response.status().as_u16();
    let header_digest = response.docker_content_digest();
    let content_type = response.content_type().map(str::to_owned);
    let body = response.bytes_limited(MAX_MANIFEST_BYTES);
    let bytes = match deadline {
        Some(limit) => tokio::time::timeout(limit, body)
            .await
            .unwrap_or(Err(upstream::Error::Deadline { limit })),
        None => body.await,
    }
    .map_err(fail)?;
    let media_type =
        recognise(content_type.as_deref(), &bytes).map_err(|why| Error::NotAManifest {
            upstream: route.name().to_owned(),
            status,
            content_type: content_type.clone(),
            why,
        })?;
    let digest = verified_digest(reference, header_digest.as_ref(), &bytes)?;
    let manifest = Manifest {
        digest,
        media_type,
        bytes,
    };
    let tag = match reference {
        Reference::Tag(tag) => Some(tag),
        Reference::Digest(_) => None,
    };
    let manifest = local
        .publish_manifest(&route.key, repo, manifest, tag)
        .await?;
    tracing::info!(upstream = route.name(), %repo, %reference, digest = %manifest.digest, "manifest cached");
    Ok(manifest)
}

/// One lock per manifest reference being resolved, so that concurrent misses of
/// one manifest make one upstream request; the others wait and find it cached,
/// or get the failure it ended with while they waited.
#[derive(Debug, Default)]
pub(super) struct Flights {
    inflight: std::sync::Mutex<HashMap<String, Weak<tokio::sync::Mutex<Option<Failure>>>>>,
}

/// How the last request of a reference failed, and when.
#[derive(Debug)]
struct Failure {
    at: Instant,
    error: Arc<Error>,
}

/// A reference's turn to ask the upstream (see [`Flights::lock`]).
#[derive(Debug)]
pub(super) struct Flight {
    slot: tokio::sync::OwnedMutexGuard<Option<Failure>>,
    waited_since: Instant,
}

impl Flights {
    pub(super) async fn lock(&self, key: String) -> Flight {
        let waited_since = Instant::now();
        let lock = {
            let mut inflight = self.inflight.lock().expect("flights lock poisoned");
            inflight.retain(|_, lock| lock.strong_count() > 0);
            match inflight.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(None));
                    inflight.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        Flight {
            slot: lock.lock_owned().await,
            waited_since,
        }
    }
}

impl Flight {
    /// The failure of a request that held this turn while this one waited:
    /// the same question would get the same answer (after the same timeout).
    pub(super) fn failed_meanwhile(&self) -> Result<(), Error> {
        match &*self.slot {
            Some(failure) if failure.at >= self.waited_since => {
                Err(Error::Flight(Arc::clone(&failure.error)))
            }
            _ => Ok(()),
        }
    }

    /// Ends the turn with `result`; a failure is kept for those waiting.
    pub(super) fn settle<T>(mut self, result: Result<T, Error>) -> Result<T, Error> {
        result.map_err(|e| {
            let error = Arc::new(e);
            *self.slot = Some(Failure {
                at: Instant::now(),
                error: Arc::clone(&error),
            });
            Error::Flight(error)
        })
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

    #[tokio::test(flavor = "current_thread")]
    async fn a_failure_answers_those_who_waited_for_it_only() {
        let flights = Arc::new(Flights::default());
        let leader = flights.lock("k".into()).await;
        assert!(leader.failed_meanwhile().is_ok());
        let waiter = tokio::spawn({
            let flights = Arc::clone(&flights);
            async move { flights.lock("k".into()).await.failed_meanwhile() }
        });
        // The waiter runs until it waits for the leader's turn.
        tokio::task::yield_now().await;
        let answer = leader.settle::<()>(Err(Error::ManifestUnknown));
        assert!(matches!(answer, Err(Error::Flight(_))));
        let shared = waiter.await.unwrap().expect_err("the leader's failure");
        assert!(matches!(shared, Error::Flight(e) if matches!(*e, Error::ManifestUnknown)));
        // A request that came after the failure asks again.
        assert!(flights.lock("k".into()).await.failed_meanwhile().is_ok());
    }
}
