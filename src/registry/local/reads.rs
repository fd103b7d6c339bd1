//! Reads of the local side: what memory knows, else the index's rows and the
//! store's files, in one trip to the blocking pool per request (one query,
//! then the file on the same thread). What the index answers is remembered in
//! memory; a row whose file is gone is forgotten and reported absent, so the
//! caller fetches it again. It never writes a row except to forget one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{Local, UpstreamKey};
use crate::index::ContentRow;
use crate::oci::{Digest, MAX_MANIFEST_BYTES, Manifest, RepoName, Tag};
use crate::registry::Error;
use crate::registry::file_reader::{FileReader, READ_CHUNK};
use crate::store::{self, Store};

/// A tag's last known manifest, and when the upstream last confirmed it.
#[derive(Debug)]
pub(in crate::registry) struct TaggedManifest {
    pub(in crate::registry) manifest: Arc<Manifest>,
    pub(in crate::registry) checked_at: SystemTime,
}

impl TaggedManifest {
    /// Whether the mapping was confirmed less than `ttl` ago.
    pub(in crate::registry) fn is_fresh(&self, ttl: Duration) -> bool {
        let age = SystemTime::now()
            .duration_since(self.checked_at)
            .unwrap_or_default();
        age < ttl
    }
}

/// A committed blob's bytes: in memory (small ones), or an open file.
#[derive(Debug)]
pub(in crate::registry) enum LocalBlob {
    Memory(Bytes),
    File(FileReader),
}

/// A committed blob as one repository sees it (see [`Local::blob`]).
#[derive(Debug)]
pub(in crate::registry) struct CommittedBlob {
    /// Its size as indexed.
    pub(in crate::registry) size: u64,
    /// Whether the repository is known to have it; if not, its upstream must
    /// confirm before it is served there.
    pub(in crate::registry) linked: bool,
    /// Its bytes, when asked for.
    pub(in crate::registry) bytes: Option<LocalBlob>,
}

impl Local {
    /// Committed blob `digest` as `repo` of `upstream` sees it, with its bytes
    /// when `open` (kept in memory when small, else its file opened with the
    /// first chunk read). `None` when nothing is committed, or when `open`
    /// finds the file gone (the row is forgotten, the caller fetches it again).
    ///
    /// One trip to the blocking pool at most: what memory lacks is asked of the
    /// index in one query and the file opened on the same thread. At a million
    /// blobs memory holds few of them, and each trip was a context switch in
    /// the tail of the hit latency (three per hit before).
    pub(in crate::registry) async fn blob(
        &self,
        upstream: &UpstreamKey,
        repo: &RepoName,
        digest: &Digest,
        open: bool,
    ) -> Result<Option<CommittedBlob>, Error> {
        let size = self.cache.blob_size(digest).await;
        let linked = self.cache.is_linked(upstream.id, repo, digest).await;
        let small = match open {
            true => self.cache.small_blob(digest).await,
            false => None,
        };
        let must_open = open && small.is_none();
        if let (Some(size), true) = (size, linked) {
            let opened = match must_open {
                true => Some(self.store.open_blob_with_head(digest, READ_CHUNK).await?),
                false => None,
            };
            return self.committed_blob(digest, size, true, small, opened).await;
        }
        let store = self.store.clone();
        let file_digest = digest.clone();
        let found = self
            .index
            .content_in_repo_then(&upstream.name, repo, digest, move |found| {
                found.map(|(row, linked)| {
                    let opened =
                        must_open.then(|| store.open_blob_blocking(&file_digest, READ_CHUNK));
                    (row, linked, opened)
                })
            })
            .await?;
        let Some((row, linked, opened)) = found else {
            return Ok(None);
        };
        self.cache.set_blob_size(digest, row.size).await;
        if linked {
            self.cache.set_linked(upstream.id, repo, digest).await;
        }
        let opened = opened.transpose()?;
        self.committed_blob(digest, row.size, linked, small, opened)
            .await
    }

    /// The answer of [`Local::blob`] once memory, the index and the file have
    /// spoken: `opened` is `Some(None)` when the file was looked for and is gone.
    async fn committed_blob(
        &self,
        digest: &Digest,
        size: u64,
        linked: bool,
        small: Option<Bytes>,
        opened: Option<Option<store::OpenBlob>>,
    ) -> Result<Option<CommittedBlob>, Error> {
        let bytes = match (small, opened) {
            (Some(bytes), _) => Some(LocalBlob::Memory(bytes)),
            (None, None) => None,
            (None, Some(None)) => {
                tracing::warn!(%digest, "indexed blob missing from the store; refetching");
                self.forget(digest).await?;
                return Ok(None);
            }
            (None, Some(Some(open))) => {
                if open.len == open.head.len() as u64 {
                    self.cache.set_small_blob(digest, open.head.clone()).await;
                }
                let reader = FileReader::complete(open.file, open.len, open.head);
                Some(LocalBlob::File(reader))
            }
        };
        Ok(Some(CommittedBlob {
            size,
            linked,
            bytes,
        }))
    }

    /// The size of committed content `digest`, if there is any.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        if let Some(size) = self.cache.blob_size(digest).await {
            return Ok(Some(size));
        }
        let Some(row) = self.index.content(digest).await? else {
            return Ok(None);
        };
        self.cache.set_blob_size(digest, row.size).await;
        Ok(Some(row.size))
    }

    /// The committed file of `digest` if `repo` of `upstream` is linked to it:
    /// for a fill that finds another fill committed it meanwhile.
    pub(in crate::registry) async fn linked_file(
        &self,
        upstream: &UpstreamKey,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<(u64, Arc<std::fs::File>)>, Error> {
        if self.blob_size(digest).await?.is_none()
            || !self.is_linked(upstream, repo, digest).await?
        {
            return Ok(None);
        }
        let open = self.store.open_blob_with_head(digest, 0).await?;
        Ok(open.map(|open| (open.len, open.file)))
    }

    /// Committed manifest `digest`, if there is one: from memory, else its row
    /// and file read in one trip to the blocking pool.
    pub(in crate::registry) async fn manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<Arc<Manifest>>, Error> {
        if let Some(manifest) = self.cache.manifest(digest).await {
            return Ok(Some(manifest));
        }
        let store = self.store.clone();
        let found = self
            .index
            .content_then(digest, move |row| {
                row.map(|row| {
                    let bytes = read_manifest_file(&store, &row);
                    (row, bytes)
                })
            })
            .await?;
        let Some((row, bytes)) = found else {
            return Ok(None);
        };
        self.remember_manifest(row, bytes?).await
    }

    /// Committed manifest `digest` and whether `repo` of `upstream` is linked
    /// to it, from memory or in one trip to the blocking pool (see
    /// [`Local::blob`]).
    pub(in crate::registry) async fn manifest_in(
        &self,
        upstream: &UpstreamKey,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<(Arc<Manifest>, bool)>, Error> {
        let cached = self.cache.manifest(digest).await;
        let linked = self.cache.is_linked(upstream.id, repo, digest).await;
        if let (Some(manifest), true) = (&cached, linked) {
            return Ok(Some((Arc::clone(manifest), true)));
        }
        let store = self.store.clone();
        let must_read = cached.is_none();
        let found = self
            .index
            .content_in_repo_then(&upstream.name, repo, digest, move |found| {
                found.map(|(row, linked)| {
                    let bytes = must_read.then(|| read_manifest_file(&store, &row));
                    (row, linked, bytes)
                })
            })
            .await?;
        let Some((row, linked, bytes)) = found else {
            return Ok(None);
        };
        if linked {
            self.cache.set_linked(upstream.id, repo, digest).await;
        }
        let manifest = match (cached, bytes) {
            (Some(manifest), _) => Some(manifest),
            (None, Some(bytes)) => self.remember_manifest(row, bytes?).await?,
            (None, None) => None,
        };
        Ok(manifest.map(|manifest| (manifest, linked)))
    }

    /// A manifest row with its file's bytes (`None`: the row is not a
    /// manifest's), put in memory; a manifest whose file is gone is forgotten.
    async fn remember_manifest(
        &self,
        row: ContentRow,
        bytes: Option<Option<Bytes>>,
    ) -> Result<Option<Arc<Manifest>>, Error> {
        let (Some(media_type), Some(bytes)) = (row.media_type, bytes) else {
            return Ok(None);
        };
        let Some(bytes) = bytes else {
            tracing::warn!(digest = %row.digest, "indexed manifest missing from the store; refetching");
            self.forget(&row.digest).await?;
            return Ok(None);
        };
        let manifest = Arc::new(Manifest {
            digest: row.digest,
            media_type,
            bytes,
        });
        self.cache.set_manifest(Arc::clone(&manifest)).await;
        Ok(Some(manifest))
    }

    /// Whether `repo` of `upstream` is known to have `digest`.
    pub(in crate::registry) async fn is_linked(
        &self,
        upstream: &UpstreamKey,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<bool, Error> {
        if self.cache.is_linked(upstream.id, repo, digest).await {
            return Ok(true);
        }
        let linked = self.index.is_linked(&upstream.name, repo, digest).await?;
        if linked {
            self.cache.set_linked(upstream.id, repo, digest).await;
        }
        Ok(linked)
    }

    /// The last known manifest of `tag`, if its content is still cached: from
    /// memory, else the tag, its row and its file in one trip to the blocking
    /// pool.
    pub(in crate::registry) async fn tag(
        &self,
        upstream: &UpstreamKey,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<TaggedManifest>, Error> {
        if let Some((digest, checked_at)) = self.cache.tag(upstream.id, repo, tag).await {
            let manifest = self.manifest(&digest).await?;
            return Ok(manifest.map(|manifest| TaggedManifest {
                manifest,
                checked_at,
            }));
        }
        let store = self.store.clone();
        let found = self
            .index
            .tag_then(&upstream.name, repo, tag, move |found| {
                found.map(|(tag, row)| {
                    let bytes = read_manifest_file(&store, &row);
                    (tag, row, bytes)
                })
            })
            .await?;
        let Some((row, content, bytes)) = found else {
            return Ok(None);
        };
        self.cache
            .set_tag(upstream.id, repo, tag, &row.digest, row.checked_at)
            .await;
        let manifest = match self.cache.manifest(&row.digest).await {
            Some(manifest) => Some(manifest),
            None => self.remember_manifest(content, bytes?).await?,
        };
        Ok(manifest.map(|manifest| TaggedManifest {
            manifest,
            checked_at: row.checked_at,
        }))
    }

    /// The manifests cached for `repo` of `upstream` (linked to it) whose media
    /// type is one of `media_types`.
    pub(in crate::registry) async fn linked_manifests(
        &self,
        upstream: &UpstreamKey,
        repo: &RepoName,
        media_types: &[&str],
    ) -> Result<Vec<Arc<Manifest>>, Error> {
        let mut found = Vec::new();
        for row in self.index.linked_manifests(&upstream.name, repo).await? {
            let wanted = row
                .media_type
                .as_deref()
                .is_some_and(|t| media_types.contains(&t));
            if !wanted {
                continue;
            }
            if let Some(manifest) = self.manifest(&row.digest).await? {
                found.push(manifest);
            }
        }
        Ok(found)
    }

    /// The tags of `repo` this cache knows (for listing while the upstream is down).
    pub(in crate::registry) async fn tags(
        &self,
        upstream: &UpstreamKey,
        repo: &RepoName,
    ) -> Result<Vec<String>, Error> {
        Ok(self.index.tags(&upstream.name, repo).await?)
    }
}

/// The bytes of the manifest file `row` names, read on the calling (blocking)
/// thread: `None` if the row is a blob's (no media type), `Some(None)` if the
/// file is gone.
fn read_manifest_file(
    store: &Store,
    row: &ContentRow,
) -> Result<Option<Option<Bytes>>, store::Error> {
    if row.media_type.is_none() {
        return Ok(None);
    }
    store
        .read_small_blocking(&row.digest, MAX_MANIFEST_BYTES)
        .map(Some)
}
