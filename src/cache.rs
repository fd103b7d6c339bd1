//! In-memory (moka) layers over the index: tag mappings with the time they were
//! checked, manifests, blob sizes, repository links, and the bytes of small
//! blobs (image configs: every pulling node asks for them). They accelerate; they
//! never lead: entries are inserted only after the index has committed, and
//! removed together with index rows. A cold cache gives the same answers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use moka::future::Cache as Moka;

use crate::oci::Manifest;
use crate::oci::{Digest, RepoName, Tag};

/// Memory budget for cached manifest bytes.
const MANIFEST_BYTES: u64 = 64 * 1024 * 1024;
/// Memory budget for cached small-blob bytes.
const SMALL_BLOB_BYTES: u64 = 32 * 1024 * 1024;
/// Blobs up to this size are kept in memory once served from disk: a hit on
/// one is then answered without a trip to the blocking pool (file I/O there
/// costs two thread wake-ups per request, most of a small blob's hit cost).
pub const SMALL_BLOB_MAX: u64 = 64 * 1024;
/// Entries in each of the small caches.
const SMALL_ENTRIES: u64 = 100_000;

type TagKey = (usize, RepoName, Tag);
type LinkKey = (usize, RepoName, Digest);

/// The memory caches. Cheap to clone (handles to shared caches).
#[derive(Clone)]
pub struct Cache {
    tags: Moka<TagKey, (Digest, SystemTime)>,
    manifests: Moka<Digest, Arc<Manifest>>,
    blob_sizes: Moka<Digest, u64>,
    small_blobs: Moka<Digest, bytes::Bytes>,
    links: Moka<LinkKey, ()>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("tags", &self.tags.entry_count())
            .field("manifests", &self.manifests.entry_count())
            .finish_non_exhaustive()
    }
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    pub fn new() -> Self {
        Self {
            // Invalidation closures: eviction drops every entry naming evicted content.
            tags: Moka::builder()
                .max_capacity(SMALL_ENTRIES)
                .support_invalidation_closures()
                .build(),
            manifests: Moka::builder()
                .max_capacity(MANIFEST_BYTES)
                .weigher(|_, m: &Arc<Manifest>| u32::try_from(m.bytes.len()).unwrap_or(u32::MAX))
                .build(),
            blob_sizes: Moka::new(SMALL_ENTRIES),
            small_blobs: Moka::builder()
                .max_capacity(SMALL_BLOB_BYTES)
                .weigher(|_, b: &bytes::Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX))
                .build(),
            links: Moka::builder()
                .max_capacity(SMALL_ENTRIES)
                .support_invalidation_closures()
                .build(),
        }
    }

    /// The digest a tag was last known to point at, and when that was checked.
    pub async fn tag(
        &self,
        upstream: usize,
        repo: &RepoName,
        tag: &Tag,
    ) -> Option<(Digest, SystemTime)> {
        self.tags.get(&(upstream, repo.clone(), tag.clone())).await
    }

    pub async fn set_tag(
        &self,
        upstream: usize,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        checked_at: SystemTime,
    ) {
        self.tags
            .insert(
                (upstream, repo.clone(), tag.clone()),
                (digest.clone(), checked_at),
            )
            .await;
    }

    pub async fn remove_tag(&self, upstream: usize, repo: &RepoName, tag: &Tag) {
        self.tags
            .invalidate(&(upstream, repo.clone(), tag.clone()))
            .await;
    }

    pub async fn manifest(&self, digest: &Digest) -> Option<Arc<Manifest>> {
        self.manifests.get(digest).await
    }

    pub async fn set_manifest(&self, manifest: Arc<Manifest>) {
        self.manifests
            .insert(manifest.digest.clone(), manifest)
            .await;
    }

    pub async fn blob_size(&self, digest: &Digest) -> Option<u64> {
        self.blob_sizes.get(digest).await
    }

    pub async fn set_blob_size(&self, digest: &Digest, size: u64) {
        self.blob_sizes.insert(digest.clone(), size).await;
    }

    /// The bytes of a small committed blob, if kept in memory.
    pub async fn small_blob(&self, digest: &Digest) -> Option<bytes::Bytes> {
        self.small_blobs.get(digest).await
    }

    /// Keeps the bytes of a committed blob of at most [`SMALL_BLOB_MAX`] bytes.
    pub async fn set_small_blob(&self, digest: &Digest, bytes: bytes::Bytes) {
        if bytes.len() as u64 <= SMALL_BLOB_MAX {
            self.small_blobs.insert(digest.clone(), bytes).await;
        }
    }

    pub async fn is_linked(&self, upstream: usize, repo: &RepoName, digest: &Digest) -> bool {
        self.links
            .contains_key(&(upstream, repo.clone(), digest.clone()))
    }

    pub async fn set_linked(&self, upstream: usize, repo: &RepoName, digest: &Digest) {
        self.links
            .insert((upstream, repo.clone(), digest.clone()), ())
            .await;
    }

    /// Forgets evicted content: its manifest and size, and every tag mapping and
    /// repository link naming it, as its index rows went (the cascade).
    pub async fn forget_all(&self, digests: &HashSet<Digest>) {
        if digests.is_empty() {
            return;
        }
        for digest in digests {
            self.forget(digest).await;
        }
        let gone = Arc::new(digests.clone());
        let tags_gone = Arc::clone(&gone);
        // Only fails when closures are not enabled, which `new` does.
        let _ = self
            .tags
            .invalidate_entries_if(move |_, (digest, _)| tags_gone.contains(digest));
        let _ = self
            .links
            .invalidate_entries_if(move |(_, _, digest), _| gone.contains(digest));
    }

    /// Forgets the content `digest` (its index row is gone). Tag and link entries
    /// naming it may stay: both are only used after the content itself is found.
    pub async fn forget(&self, digest: &Digest) {
        self.manifests.invalidate(digest).await;
        self.blob_sizes.invalidate(digest).await;
        self.small_blobs.invalidate(digest).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_small_blobs_are_kept_and_forgetting_drops_them() {
        let cache = Cache::new();
        let small = Digest::sha256_of(b"small");
        let large = Digest::sha256_of(b"large");
        let max = usize::try_from(SMALL_BLOB_MAX).unwrap();
        cache
            .set_small_blob(&small, bytes::Bytes::from(vec![1; max]))
            .await;
        cache
            .set_small_blob(&large, bytes::Bytes::from(vec![2; max + 1]))
            .await;
        assert_eq!(cache.small_blob(&small).await.map(|b| b.len()), Some(max));
        assert!(cache.small_blob(&large).await.is_none());
        cache.forget(&small).await;
        assert!(cache.small_blob(&small).await.is_none());
    }
}
