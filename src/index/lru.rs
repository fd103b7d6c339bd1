//! The index's queries for the disk budget (`crate::evict`): total committed size,
//! content in least-recently-used order, batched access-time updates, batched
//! deletion, and the repository links and tags that pins are matched against.
//! Like the rest of `index`, it records and answers; which content to delete is
//! decided by `evict`.

use rusqlite::params;

use super::{Error, Index};
use crate::oci::Digest;

/// One content row as eviction sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LruRow {
    pub digest: Digest,
    pub size: u64,
    /// Unix seconds of the last recorded access.
    pub last_access: i64,
}

/// Where a page of the LRU order ended (its last row's access time, size and digest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LruCursor {
    last_access: i64,
    size: i64,
    digest: String,
}

/// One tag mapping, for pin matching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagLink {
    pub upstream: String,
    pub repo: String,
    pub tag: String,
    pub digest: Digest,
}

impl Index {
    /// Bytes of all committed content (the sum of the `size` column).
    pub async fn content_bytes(&self) -> Result<u64, Error> {
        self.read("content_bytes", |conn| {
            let sql = "SELECT coalesce(sum(size), 0) FROM content";
            let total: i64 = conn.prepare_cached(sql)?.query_row([], |row| row.get(0))?;
            Ok(u64::try_from(total).unwrap_or(0))
        })
        .await
    }

    /// Up to `limit` content rows in least-recently-used order (ties, the same
    /// second: the smaller first, see `migrations/0003`), from where `after` left off (the start without it), and
    /// where the next page starts (`None`: this was the last). One short read
    /// on the `last_access` index per page: an eviction pass reads only as far
    /// as it evicts, never the whole table.
    pub async fn lru_page(
        &self,
        after: Option<LruCursor>,
        limit: usize,
    ) -> Result<(Vec<LruRow>, Option<LruCursor>), Error> {
        let after = after.unwrap_or(LruCursor {
            last_access: i64::MIN,
            size: i64::MIN,
            digest: String::new(),
        });
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("lru_page", move |conn| {
            let sql = "SELECT digest, size, last_access FROM content \
                       WHERE (last_access, size, digest) > (?1, ?2, ?3) \
                       ORDER BY last_access, size, digest LIMIT ?4";
            let mut stmt = conn.prepare_cached(sql)?;
            let mut rows = Vec::new();
            let mut next = None;
            let mut found =
                stmt.query(params![after.last_access, after.size, after.digest, limit])?;
            while let Some(row) = found.next()? {
                let size: i64 = row.get(1)?;
                let last_access = row.get(2)?;
                let digest: Digest = row.get(0)?;
                next = Some(LruCursor {
                    last_access,
                    size,
                    digest: digest.to_string(),
                });
                rows.push(LruRow {
                    digest,
                    size: u64::try_from(size)
                        .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(1, size))?,
                    last_access,
                });
            }
            let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) == limit;
            Ok((rows, next.filter(|_| full)))
        })
        .await
    }

    /// The sum of the sizes of those of `digests` that have a row (pinned
    /// bytes), one primary-key lookup each.
    pub async fn bytes_of(&self, digests: Vec<Digest>) -> Result<u64, Error> {
        if digests.is_empty() {
            return Ok(0);
        }
        self.read("bytes_of", move |conn| {
            let sql = "SELECT size FROM content WHERE digest = ?1";
            let mut stmt = conn.prepare_cached(sql)?;
            let mut total = 0u64;
            for digest in &digests {
                let mut rows = stmt.query([digest])?;
                if let Some(row) = rows.next()? {
                    total += u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0);
                }
            }
            Ok(total)
        })
        .await
    }

    /// Records access times (unix seconds) for many digests in one transaction.
    /// A time never moves backwards; digests without a row are ignored.
    pub async fn record_accesses(&self, accesses: Vec<(Digest, i64)>) -> Result<(), Error> {
        if accesses.is_empty() {
            return Ok(());
        }
        self.write("record_accesses", move |conn| {
            let tx = conn.transaction()?;
            {
                let sql = "UPDATE content SET last_access = max(last_access, ?2) \
                           WHERE digest = ?1";
                let mut stmt = tx.prepare_cached(sql)?;
                for (digest, at) in &accesses {
                    stmt.execute(params![digest, at])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Deletes the content rows of `digests` in one transaction (their links and
    /// tags go with them by cascade). Returns the rows actually deleted, with
    /// their sizes: a digest already gone is skipped.
    pub async fn remove_contents(&self, digests: Vec<Digest>) -> Result<Vec<(Digest, u64)>, Error> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        self.write("remove_contents", move |conn| {
            let tx = conn.transaction()?;
            let mut removed = Vec::with_capacity(digests.len());
            {
                let sql = "DELETE FROM content WHERE digest = ?1 RETURNING size";
                let mut stmt = tx.prepare_cached(sql)?;
                for digest in &digests {
                    let mut rows = stmt.query([digest])?;
                    if let Some(row) = rows.next()? {
                        let size: i64 = row.get(0)?;
                        removed.push((digest.clone(), u64::try_from(size).unwrap_or(0)));
                    }
                }
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    /// Every (upstream, repository) that has linked content.
    pub async fn linked_repos(&self) -> Result<Vec<(String, String)>, Error> {
        self.read("linked_repos", |conn| {
            let sql = "SELECT DISTINCT upstream, repo FROM repo_content ORDER BY upstream, repo";
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    /// The digests linked to `repo` of `upstream`.
    pub async fn repo_digests(&self, upstream: &str, repo: &str) -> Result<Vec<Digest>, Error> {
        let key = (upstream.to_owned(), repo.to_owned());
        self.read("repo_digests", move |conn| {
            let sql = "SELECT digest FROM repo_content WHERE upstream = ?1 AND repo = ?2";
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params![key.0, key.1], |row| row.get(0))?;
            rows.collect()
        })
        .await
    }

    /// Every tag mapping of every repository.
    pub async fn all_tags(&self) -> Result<Vec<TagLink>, Error> {
        self.read("all_tags", |conn| {
            let sql = "SELECT upstream, repo, tag, digest FROM tags ORDER BY upstream, repo, tag";
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map([], |row| {
                Ok(TagLink {
                    upstream: row.get(0)?,
                    repo: row.get(1)?,
                    tag: row.get(2)?,
                    digest: row.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Rows changed by this handle's writer connection since it was opened
    /// (SQLite's `total_changes`): lets tests prove that a code path writes nothing.
    pub fn write_count(&self) -> u64 {
        self.db.writer().total_changes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::index::ContentRow;
    use crate::oci::RepoName;

    const UP: &str = "registry.k8s.io";

    fn open() -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        (dir, index)
    }

    async fn put(index: &Index, bytes: &[u8], repo: &str) -> Digest {
        let row = ContentRow {
            digest: Digest::sha256_of(bytes),
            size: bytes.len() as u64,
            media_type: None,
        };
        let repo: RepoName = repo.parse().unwrap();
        index.insert_content(&row, UP, &repo).await.unwrap();
        row.digest
    }

    #[tokio::test]
    async fn lru_order_follows_recorded_accesses_and_never_goes_back() {
        let (_dir, index) = open();
        let a = put(&index, b"aaaa", "a").await;
        let b = put(&index, b"bb", "b").await;
        assert_eq!(index.content_bytes().await.unwrap(), 6);
        let now = crate::index::columns::unix_seconds(SystemTime::now());
        index
            .record_accesses(vec![(a.clone(), now + 100), (b.clone(), now + 50)])
            .await
            .unwrap();
        // An older time recorded later does not move a row back.
        index
            .record_accesses(vec![(a.clone(), now - 1000)])
            .await
            .unwrap();
        let (first, next) = index.lru_page(None, 1).await.unwrap();
        let (second, _) = index.lru_page(next, 1).await.unwrap();
        let order: Vec<_> = first.into_iter().chain(second).map(|r| r.digest).collect();
        assert_eq!(order, [b.clone(), a.clone()]);
        // A page that is not full is the last one.
        let (all, last) = index.lru_page(None, 10).await.unwrap();
        assert_eq!((all.len(), last), (2, None));
        let never = Digest::sha256_of(b"never");
        assert_eq!(index.bytes_of(vec![a, never]).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn remove_contents_reports_what_it_deleted_and_cascades() {
        let (_dir, index) = open();
        let a = put(&index, b"aaaa", "a").await;
        let repo: RepoName = "a".parse().unwrap();
        let tag = "v1".parse().unwrap();
        index
            .set_tag(UP, &repo, &tag, &a, SystemTime::now())
            .await
            .unwrap();
        let never = Digest::sha256_of(b"never");
        let removed = index.remove_contents(vec![a.clone(), never]).await.unwrap();
        assert_eq!(removed, [(a, 4)]);
        assert!(index.all_tags().await.unwrap().is_empty());
        assert!(index.linked_repos().await.unwrap().is_empty());
        assert_eq!(index.content_bytes().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn write_count_counts_row_changes() {
        let (_dir, index) = open();
        let before = index.write_count();
        let a = put(&index, b"x", "a").await;
        assert!(index.write_count() > before);
        let before = index.write_count();
        index.record_accesses(vec![(a, 1)]).await.unwrap();
        assert_eq!(index.write_count(), before + 1);
    }
}
