//! Referrers (`GET /v2/<name>/referrers/<digest>`, distribution-spec 1.1) for
//! every upstream. A registry that supports the API answers 200 with an image
//! index, empty when nothing refers to the subject, so regcache always does:
//!
//! 1. the upstream has the referrers API: its index is passed on;
//! 2. it has none (404, e.g. distribution 2.8): the index is the upstream's
//!    referrers tag schema fallback tag `<alg>-<hex>` (fetched and cached as an
//!    ordinary manifest tag, so it follows the tag TTL and survives restarts);
//! 3. there is no such tag either: an empty index.
//!
//! Manifests this cache holds for the repository whose `subject` is the digest
//! are listed too when the answer does not list them already (pulled by digest
//! while the upstream's index lagged, or answered while the upstream is down).
//!
//! `?artifactType=` is applied here when the upstream did not apply it, and
//! `OCI-Filters-Applied: artifactType` says it was. Answers are kept in memory
//! for the upstream's `tag_ttl`, and served stale when the upstream cannot be
//! asked (down, 5xx, 429). It never answers 404 for a well-formed subject, and
//! never serves one upstream's or repository's answer for another.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{Error, Outcome, Registry, Route};
use crate::oci::{Digest, MAX_MANIFEST_BYTES, Reference, RepoName, Tag, media_type};
use crate::upstream;

/// A referrers answer: an image index and the headers that go with it.
#[derive(Debug, Clone)]
pub struct Referrers {
    pub content_type: Option<String>,
    /// `OCI-Filters-Applied` (`artifactType` when the index was filtered).
    pub filters_applied: Option<String>,
    pub body: Bytes,
}

/// The header value saying the index was filtered by artifact type.
const FILTERED_BY_ARTIFACT_TYPE: &str = "artifactType";
/// How many answers are kept in memory (each at most a manifest's size, most
/// a few hundred bytes).
const MAX_ANSWERS: u64 = 10_000;

/// Which answer: upstream, repository, subject and the artifact type filter.
type Key = (usize, String, Digest, Option<String>);

/// Referrers answers kept in memory, with when each was fetched.
#[derive(Debug)]
pub(super) struct Answers {
    cache: moka::future::Cache<Key, Arc<(Referrers, Instant)>>,
}

impl Default for Answers {
    fn default() -> Self {
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(MAX_ANSWERS)
                .build(),
        }
    }
}

impl Registry {
    /// The referrers of `digest` in `repo`: always an image index (see the
    /// module documentation), filtered by `artifact_type` when given.
    pub async fn referrers(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<(Referrers, Outcome), Error> {
        let key = (
            route.key.id,
            repo.to_string(),
            digest.clone(),
            artifact_type.map(str::to_owned),
        );
        let cached = self.referrers.cache.get(&key).await;
        if let Some(answer) = &cached {
            if answer.1.elapsed() < route.tag_ttl() {
                return Ok((answer.0.clone(), Outcome::Hit));
            }
        }
        let cached_content = self.local_referrers(route, repo, digest).await?;
        match self
            .fetch_referrers(route, repo, digest, artifact_type)
            .await
        {
            Ok(referrers) => {
                let referrers = with_cached(referrers, cached_content, artifact_type)?;
                let answer = Arc::new((referrers.clone(), Instant::now()));
                self.referrers.cache.insert(key, answer).await;
                Ok((referrers, Outcome::Miss))
            }
            Err(e) if is_unavailable(&e) => {
                tracing::warn!(upstream = route.name(), %repo, %digest, error = %e, "upstream unavailable; answering referrers from the cache");
                if let Some(answer) = cached {
                    return Ok((answer.0.clone(), Outcome::Stale));
                }
                // The fallback tag may be cached as a manifest tag; else what
                // this cache holds that names the subject, if anything.
                let from_tag = self
                    .referrers_from_tag(route, repo, digest, artifact_type)
                    .await;
                let from_cache = match from_tag {
                    Ok(referrers) => referrers,
                    Err(_) if !cached_content.is_empty() => empty_index(artifact_type),
                    Err(_) => return Err(e),
                };
                let referrers = with_cached(from_cache, cached_content, artifact_type)?;
                Ok((referrers, Outcome::Stale))
            }
            Err(e) => Err(e),
        }
    }

    /// Descriptors of the manifests cached for `repo` whose `subject` is
    /// `digest` (pulled through regcache, by digest or by tag), as the referrers
    /// API lists them. Read from disk: answers are kept for the tag TTL, so this
    /// runs at most once per TTL per subject.
    async fn local_referrers(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<serde_json::Value>, Error> {
        // Only OCI manifests and indexes carry a subject.
        let kinds = [media_type::OCI_MANIFEST, media_type::OCI_INDEX];
        let manifests = self
            .local
            .linked_manifests(&route.key, repo, &kinds)
            .await?;
        Ok(manifests
            .iter()
            .flat_map(|m| referrer_descriptor(&m.bytes, &m.media_type, &m.digest, digest))
            .collect())
    }

    /// Asks the upstream's referrers API, or builds the answer from its
    /// fallback tag when it has no such API.
    async fn fetch_referrers(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers, Error> {
        let from_upstream = |e| Error::from_upstream(route.name(), e, Error::ManifestUnknown);
        let response = match route.client.referrers(repo, digest, artifact_type).await {
            Ok(response) => response,
            // A registry with the API never 404s a well-formed subject.
            Err(upstream::Error::NotFound) => {
                return self
                    .referrers_from_tag(route, repo, digest, artifact_type)
                    .await;
            }
            Err(e) => return Err(from_upstream(e)),
        };
        let content_type = response.content_type().map(str::to_owned);
        let filters_applied = response
            .headers()
            .get("oci-filters-applied")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes_limited(MAX_MANIFEST_BYTES)
            .await
            .map_err(from_upstream)?;
        let upstream_filtered = filters_applied
            .as_deref()
            .is_some_and(|f| f.split(',').any(|f| f.trim() == FILTERED_BY_ARTIFACT_TYPE));
        match artifact_type {
            Some(wanted) if !upstream_filtered => filtered(&body, wanted),
            _ => Ok(Referrers {
                content_type: Some(content_type.unwrap_or_else(|| media_type::OCI_INDEX.into())),
                filters_applied,
                body,
            }),
        }
    }

    /// The index the upstream keeps under the fallback tag, or an empty index
    /// when it has no such tag.
    async fn referrers_from_tag(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers, Error> {
        let tag = fallback_tag(digest);
        let index = match self.manifest(route, repo, &Reference::Tag(tag)).await {
            Ok((manifest, _)) if manifest.media_type == media_type::OCI_INDEX => {
                manifest.bytes.clone()
            }
            Ok((manifest, _)) => {
                return Err(Error::BadContent(format!(
                    "referrers fallback tag for {digest} is {}, not an image index",
                    manifest.media_type
                )));
            }
            Err(e) if matches!(e.cause(), Error::ManifestUnknown) => {
                Bytes::from_static(EMPTY_INDEX.as_bytes())
            }
            Err(e) => return Err(e),
        };
        match artifact_type {
            Some(wanted) => filtered(&index, wanted),
            None => Ok(Referrers {
                content_type: Some(media_type::OCI_INDEX.into()),
                filters_applied: None,
                body: index,
            }),
        }
    }
}

/// The descriptor the referrers API lists for the manifest `bytes` (of
/// `media_type`, named `digest`) if its `subject` is `subject`: media type,
/// digest, size, `artifactType` (the config's media type when the manifest has
/// none) and annotations.
fn referrer_descriptor(
    bytes: &[u8],
    media_type: &str,
    digest: &Digest,
    subject: &Digest,
) -> Option<serde_json::Value> {
    let manifest: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if manifest["subject"]["digest"].as_str()? != subject.to_string() {
        return None;
    }
    let mut descriptor = serde_json::json!({
        "mediaType": media_type,
        "digest": digest.to_string(),
        "size": bytes.len(),
    });
    let artifact_type = manifest
        .get("artifactType")
        .or_else(|| manifest["config"].get("mediaType"));
    if let Some(artifact_type) = artifact_type {
        descriptor["artifactType"] = artifact_type.clone();
    }
    if let Some(annotations) = manifest.get("annotations").filter(|a| a.is_object()) {
        descriptor["annotations"] = annotations.clone();
    }
    Some(descriptor)
}

/// `referrers` with the cached referrers it does not list yet (of
/// `artifact_type` when filtering); its bytes unchanged when there are none.
fn with_cached(
    referrers: Referrers,
    cached: Vec<serde_json::Value>,
    artifact_type: Option<&str>,
) -> Result<Referrers, Error> {
    let wanted: Vec<_> = cached
        .into_iter()
        .filter(|d| artifact_type.is_none_or(|t| d["artifactType"].as_str() == Some(t)))
        .collect();
    if wanted.is_empty() {
        return Ok(referrers);
    }
    let bad = |why: &str| Error::BadContent(format!("referrers index {why}"));
    let mut index: serde_json::Value =
        serde_json::from_slice(&referrers.body).map_err(|_| bad("is not JSON"))?;
    let manifests = index
        .get_mut("manifests")
        .and_then(serde_json::Value::as_array_mut)
        .ok_or_else(|| bad("has no manifests array"))?;
    let before = manifests.len();
    for descriptor in wanted {
        if !manifests
            .iter()
            .any(|m| m["digest"] == descriptor["digest"])
        {
            manifests.push(descriptor);
        }
    }
    if manifests.len() == before {
        return Ok(referrers);
    }
    let body = serde_json::to_vec(&index).map_err(|_| bad("cannot be written back"))?;
    Ok(Referrers {
        content_type: Some(media_type::OCI_INDEX.into()),
        body: Bytes::from(body),
        ..referrers
    })
}

/// An empty index, filtered (vacuously) when `artifact_type` is given.
fn empty_index(artifact_type: Option<&str>) -> Referrers {
    Referrers {
        content_type: Some(media_type::OCI_INDEX.into()),
        filters_applied: artifact_type.map(|_| FILTERED_BY_ARTIFACT_TYPE.into()),
        body: Bytes::from_static(EMPTY_INDEX.as_bytes()),
    }
}

/// An image index that lists nothing.
const EMPTY_INDEX: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

/// The referrers tag schema's tag for `digest`: `<alg>-<hex>`, the algorithm
/// cut to 32 characters and the hex to 64 (distribution-spec, "Referrers Tag
/// Schema").
fn fallback_tag(digest: &Digest) -> Tag {
    let algorithm: String = digest.algorithm().as_str().chars().take(32).collect();
    let hex: String = digest.hex().chars().take(64).collect();
    format!("{algorithm}-{hex}")
        .parse()
        .expect("an algorithm and lower-case hex always make a valid tag")
}

/// `index` with only the descriptors whose `artifactType` is `wanted`.
fn filtered(index: &[u8], wanted: &str) -> Result<Referrers, Error> {
    let bad = |why: &str| Error::BadContent(format!("referrers index {why}"));
    let mut index: serde_json::Value =
        serde_json::from_slice(index).map_err(|_| bad("is not JSON"))?;
    let manifests = index
        .get_mut("manifests")
        .and_then(serde_json::Value::as_array_mut)
        .ok_or_else(|| bad("has no manifests array"))?;
    manifests.retain(|m| m.get("artifactType").and_then(serde_json::Value::as_str) == Some(wanted));
    let body = serde_json::to_vec(&index).map_err(|_| bad("cannot be written back"))?;
    Ok(Referrers {
        content_type: Some(media_type::OCI_INDEX.into()),
        filters_applied: Some(FILTERED_BY_ARTIFACT_TYPE.into()),
        body: Bytes::from(body),
    })
}

/// Whether `e` means the upstream could not be asked (so a cached answer may do).
fn is_unavailable(e: &Error) -> bool {
    matches!(e, Error::Unavailable { .. } | Error::RateLimited { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_tags_follow_the_tag_schema() {
        let digest = Digest::sha256_of(b"subject");
        assert_eq!(
            fallback_tag(&digest).as_str(),
            format!("sha256-{}", digest.hex())
        );
    }

    #[test]
    fn cached_manifests_naming_the_subject_become_descriptors() {
        let subject = Digest::sha256_of(b"subject");
        let artifact = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/sig","digest":"sha256:aa","size":2}},"layers":[],"subject":{{"mediaType":"x","digest":"{subject}","size":1}},"annotations":{{"a":"b"}}}}"#
        );
        let digest = Digest::sha256_of(artifact.as_bytes());
        let oci = media_type::OCI_MANIFEST;
        let descriptor = referrer_descriptor(artifact.as_bytes(), oci, &digest, &subject).unwrap();
        assert_eq!(descriptor["digest"], digest.to_string());
        assert_eq!(descriptor["size"], artifact.len());
        // No artifactType: the config's media type stands in.
        assert_eq!(descriptor["artifactType"], "application/sig");
        assert_eq!(descriptor["annotations"]["a"], "b");
        let other = Digest::sha256_of(b"other");
        assert!(referrer_descriptor(artifact.as_bytes(), oci, &digest, &other).is_none());

        // Added to an answer that does not list it, once, filtered by type.
        let upstream = empty_index(None);
        let merged = with_cached(upstream.clone(), vec![descriptor.clone()], None).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&merged.body).unwrap();
        assert_eq!(json["manifests"].as_array().unwrap().len(), 1);
        let again = with_cached(merged.clone(), vec![descriptor.clone()], None).unwrap();
        assert_eq!(again.body, merged.body, "already listed: bytes unchanged");
        let filtered =
            with_cached(upstream.clone(), vec![descriptor], Some("application/x")).unwrap();
        assert_eq!(filtered.body, upstream.body);
    }

    #[test]
    fn filtering_keeps_only_the_wanted_artifact_type() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"artifactType":"application/sig"},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,"artifactType":"application/sbom"},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cc","size":1}]}"#;
        let referrers = filtered(index, "application/sbom").unwrap();
        let json: serde_json::Value = serde_json::from_slice(&referrers.body).unwrap();
        let digests: Vec<_> = json["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap())
            .collect();
        assert_eq!(digests, ["sha256:bb"]);
        assert_eq!(json["schemaVersion"], 2);
        assert_eq!(referrers.filters_applied.as_deref(), Some("artifactType"));
        assert!(matches!(filtered(b"[]", "x"), Err(Error::BadContent(_))));
    }
}
