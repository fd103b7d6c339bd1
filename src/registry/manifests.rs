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

use bytes::Bytes;
use http::Method;

use super::{Error, Outcome, Registry, Route};
use crate::evict::Admission;
use crate::index::ContentRow;
use crate::oci::{Digest, MAX_MANIFEST_BYTES, Reference, RepoName, Tag, media_type};
use crate::upstream;

/// A manifest as stored: exact bytes, their digest, the upstream's media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

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
        self.evictor.touch(&answer.0.digest);
        Ok(answer)
    }

    async fn manifest_by_digest(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(Arc<Manifest>, Outcome), Error> {
        if let Some(answer) = self.cached_manifest(route, repo, digest).await? {
            return Ok(answer);
        }
        // One request per digest goes on: the others wait, then find it cached.
        let _flight = self
            .manifest_flights
            .lock(format!("{}/{repo}@{digest}", route.id))
            .await;
        if let Some(answer) = self.cached_manifest(route, repo, digest).await? {
            return Ok(answer);
        }
        let manifest = self
            .fetch_manifest(route, repo, &Reference::Digest(digest.clone()))
            .await?;
        Ok((manifest, Outcome::Miss))
    }

    /// A cached manifest, once `repo` is known (or confirmed) to have it.
    async fn cached_manifest(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<(Arc<Manifest>, Outcome)>, Error> {
        let Some(manifest) = self.local_manifest(digest).await? else {
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
            .lock(format!("{}/{repo}:{tag}", route.id))
            .await;
        if let Some(manifest) = self.fresh_tag(route, repo, tag).await? {
            return Ok((manifest, Outcome::Hit));
        }
        let known = self.index.tag(route.name(), repo, tag).await?;
        let known_manifest = match &known {
            Some(row) => self.local_manifest(&row.digest).await?,
            None => None,
        };
        if let (Some(row), Some(manifest)) = (&known, known_manifest) {
            let age = SystemTime::now()
                .duration_since(row.checked_at)
                .unwrap_or_default();
            if age < route.tag_ttl() {
                self.cache
                    .set_tag(route.id, repo, tag, &row.digest, row.checked_at)
                    .await;
                return Ok((manifest, Outcome::Hit));
            }
            if let Some(answer) = self.revalidate_tag(route, repo, tag, manifest).await? {
                return Ok(answer);
            }
        }
        let manifest = self
            .fetch_manifest(route, repo, &Reference::Tag(tag.clone()))
            .await?;
        Ok((manifest, Outcome::Miss))
    }

    /// The manifest of a tag resolved less than `tag_ttl` ago, from memory.
    async fn fresh_tag(
        &self,
        route: &Route,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Arc<Manifest>>, Error> {
        match self
            .cache
            .fresh_tag(route.id, repo, tag, route.tag_ttl())
            .await
        {
            Some(digest) => self.local_manifest(&digest).await,
            None => Ok(None),
        }
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
                let now = SystemTime::now();
                self.index
                    .set_tag(route.name(), repo, tag, &manifest.digest, now)
                    .await?;
                self.cache
                    .set_tag(route.id, repo, tag, &manifest.digest, now)
                    .await;
                Ok(Some((manifest, Outcome::Revalidated)))
            }
            Ok(_) => Ok(None),
            Err(upstream::Error::NotFound) => {
                self.index.remove_tag(route.name(), repo, tag).await?;
                self.cache.remove_tag(route.id, repo, tag).await;
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

    /// A cached manifest: memory first, then index + store. An index row whose
    /// file is gone is forgotten.
    async fn local_manifest(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, Error> {
        if let Some(manifest) = self.cache.manifest(digest).await {
            return Ok(Some(manifest));
        }
        let Some(ContentRow {
            media_type: Some(media_type),
            ..
        }) = self.index.content(digest).await?
        else {
            return Ok(None);
        };
        let Some(bytes) = self.store.read_small(digest, MAX_MANIFEST_BYTES).await? else {
            tracing::warn!(%digest, "indexed manifest missing from the store; refetching");
            self.forget(digest).await?;
            return Ok(None);
        };
        let manifest = Arc::new(Manifest {
            digest: digest.clone(),
            media_type,
            bytes,
        });
        self.cache.set_manifest(Arc::clone(&manifest)).await;
        Ok(Some(manifest))
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
        let media_type = manifest_media_type(content_type.as_deref(), &bytes);
        let size = bytes.len() as u64;
        let Admission::Reserved(reservation) = self.evictor.reserve(size).await else {
            tracing::warn!(upstream = route.name(), %repo, %reference, %digest, size, "no room in the cache budget for a manifest; serving it without caching");
            return Ok(Arc::new(Manifest {
                digest,
                media_type,
                bytes,
            }));
        };
        let commit_guard = self.evictor.commit_guard(&digest).await;
        self.store
            .put_small(&digest, &bytes)
            .await
            .map_err(super::fill_job::mismatch_to_error)?;
        let row = ContentRow {
            digest: digest.clone(),
            size,
            media_type: Some(media_type.clone()),
        };
        let new_row = self.index.insert_content(&row, route.name(), repo).await?;
        reservation.commit(size, new_row);
        drop(commit_guard);
        let manifest = Arc::new(Manifest {
            digest,
            media_type,
            bytes,
        });
        self.cache.set_manifest(Arc::clone(&manifest)).await;
        self.cache
            .set_linked(route.id, repo, &manifest.digest)
            .await;
        if let Reference::Tag(tag) = reference {
            let now = SystemTime::now();
            self.index
                .set_tag(route.name(), repo, tag, &manifest.digest, now)
                .await?;
            self.cache
                .set_tag(route.id, repo, tag, &manifest.digest, now)
                .await;
        }
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

/// The media type to store: the upstream's Content-Type, else the manifest's own
/// `mediaType` field, else a guess from its shape (schema 1 or an OCI image).
fn manifest_media_type(content_type: Option<&str>, bytes: &[u8]) -> String {
    // Parameters (`; charset=utf-8`) are dropped: clients ignore them, and a
    // stored type with them would match no client's Accept.
    let essence = content_type.map(|ct| ct.split(';').next().unwrap_or_default().trim());
    if let Some(ct) = essence.filter(|ct| !ct.is_empty()) {
        if ct != "application/octet-stream" && ct != "text/plain" {
            return ct.to_owned();
        }
    }
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        manifests: Option<serde_json::Value>,
        signatures: Option<serde_json::Value>,
    }
    let Ok(shape) = serde_json::from_slice::<Shape>(bytes) else {
        return media_type::OCI_MANIFEST.to_owned();
    };
    match shape {
        Shape {
            media_type: Some(mt),
            ..
        } => mt,
        Shape {
            schema_version: Some(1),
            signatures: Some(_),
            ..
        } => media_type::DOCKER_SCHEMA1_SIGNED.to_owned(),
        Shape {
            schema_version: Some(1),
            ..
        } => media_type::DOCKER_SCHEMA1.to_owned(),
        Shape {
            manifests: Some(_), ..
        } => media_type::OCI_INDEX.to_owned(),
        _ => media_type::OCI_MANIFEST.to_owned(),
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

    #[test]
    fn media_type_prefers_content_type_then_body() {
        assert_eq!(
            manifest_media_type(Some(media_type::DOCKER_LIST), b"{}"),
            media_type::DOCKER_LIST
        );
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert_eq!(manifest_media_type(None, body), media_type::OCI_INDEX);
        assert_eq!(
            manifest_media_type(Some("application/octet-stream"), body),
            media_type::OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(Some("text/plain; charset=utf-8"), body),
            media_type::OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(
                Some(" application/vnd.oci.image.manifest.v1+json ; q=1"),
                body
            ),
            media_type::OCI_MANIFEST
        );
        let schema1 = br#"{"schemaVersion":1,"signatures":[]}"#;
        assert_eq!(
            manifest_media_type(None, schema1),
            media_type::DOCKER_SCHEMA1_SIGNED
        );
        let bare_index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(manifest_media_type(None, bare_index), media_type::OCI_INDEX);
    }
}
