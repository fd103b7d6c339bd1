//! The SQLite index: which content is committed (size, media type, access times),
//! which repository of which upstream it belongs to, the last known tag
//! mappings and the pins added at runtime. The only module with SQL. Schema lives in `migrations/` (see
//! `migrate`); connections in `db`.
//!
//! Every query runs on `spawn_blocking`: writes on the single writer connection,
//! reads on a small pool of read-only connections, with no lock held across an
//! `.await`. This module answers questions and records facts; it must never make
//! cache decisions (freshness, eviction order, what to serve) or touch files.

mod columns;
mod db;
mod error;
mod lru;
mod migrate;
mod ops;
mod pins;
mod usage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OptionalExtension, Row, params};

pub use error::Error;
pub use lru::{LruCursor, LruRow, TagLink};
pub use ops::{Access, LISTING_CHUNKS_AHEAD, ListingRow, Summary};
pub use pins::PinRow;
pub use usage::RepoUsage;

use crate::oci::{Digest, RepoName, Tag};
use columns::{time_from_millis, unix_millis, unix_seconds};
use db::Db;

/// Handle on the index database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Index {
    db: Arc<Db>,
}

/// A committed file as the index knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentRow {
    pub digest: Digest,
    pub size: u64,
    /// `None` for blobs; the upstream's `Content-Type` for manifests.
    pub media_type: Option<String>,
}

/// The last known target of a tag, and when upstream last confirmed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRow {
    pub digest: Digest,
    pub checked_at: SystemTime,
}

/// The index file of a data directory.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("index.db")
}

impl Index {
    /// Opens the database file at `path`, creating it if needed (its directory must
    /// exist), and applies pending migrations. Synchronous: called once at start-up.
    pub fn open(path: &Path) -> Result<Index, Error> {
        Ok(Index {
            db: Arc::new(Db::open(path)?),
        })
    }

    /// Whether the database answers a query on its schema (the readiness probe).
    pub async fn ping(&self) -> Result<(), Error> {
        self.read("ping", |conn| {
            conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM content)")?
                .query_row([], |_| Ok(()))
        })
        .await
    }

    /// The content row for `digest`, if committed.
    pub async fn content(&self, digest: &Digest) -> Result<Option<ContentRow>, Error> {
        let digest = digest.clone();
        self.read("content", move |conn| {
            let sql = "SELECT digest, size, media_type FROM content WHERE digest = ?1";
            let mut stmt = conn.prepare_cached(sql)?;
            stmt.query_row([digest], content_row).optional()
        })
        .await
    }

    /// The content row for `digest` and whether `repo` of `upstream` is linked
    /// to it, in one query; then `then` runs with the answer on the same
    /// blocking thread, after the connection is back in the pool. A hit whose
    /// next step blocks too (opening the file the row names) takes one thread
    /// hop instead of three: at a million rows, where memory holds few of them,
    /// each hop is a context switch in the tail of the hit latency.
    pub async fn content_in_repo_then<T, F>(
        &self,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
        then: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Option<(ContentRow, bool)>) -> T + Send + 'static,
    {
        let key = (
            upstream.to_owned(),
            repo.as_str().to_owned(),
            digest.clone(),
        );
        let query = move |conn: &Connection| {
            let sql = "SELECT digest, size, media_type, EXISTS (SELECT 1 FROM repo_content \
                       WHERE upstream = ?1 AND repo = ?2 AND digest = ?3) \
                       FROM content WHERE digest = ?3";
            let mut stmt = conn.prepare_cached(sql)?;
            stmt.query_row(params![key.0, key.1, key.2], |row| {
                Ok((content_row(row)?, row.get(3)?))
            })
            .optional()
        };
        self.read_then("content_in_repo", query, then).await
    }

    /// The content row for `digest` (see [`Index::content_in_repo_then`]),
    /// then `then` on the same blocking thread.
    pub async fn content_then<T, F>(&self, digest: &Digest, then: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Option<ContentRow>) -> T + Send + 'static,
    {
        let digest = digest.clone();
        let query = move |conn: &Connection| {
            let sql = "SELECT digest, size, media_type FROM content WHERE digest = ?1";
            let mut stmt = conn.prepare_cached(sql)?;
            stmt.query_row([digest], content_row).optional()
        };
        self.read_then("content", query, then).await
    }

    /// Whether `digest` was pulled for, or confirmed to exist in, `repo` of `upstream`.
    pub async fn is_linked(
        &self,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<bool, Error> {
        let key = (
            upstream.to_owned(),
            repo.as_str().to_owned(),
            digest.clone(),
        );
        self.read("is_linked", move |conn| {
            let sql = "SELECT EXISTS (SELECT 1 FROM repo_content \
                       WHERE upstream = ?1 AND repo = ?2 AND digest = ?3)";
            conn.prepare_cached(sql)?
                .query_row(params![key.0, key.1, key.2], |row| row.get(0))
        })
        .await
    }

    /// Records committed content (or refreshes its row: media type if newly known,
    /// access time) and links it to `repo` of `upstream`, in one transaction.
    /// Returns whether the row is new (false: the content was already indexed),
    /// which the disk budget's accounting needs.
    pub async fn insert_content(
        &self,
        row: &ContentRow,
        upstream: &str,
        repo: &RepoName,
    ) -> Result<bool, Error> {
        let size = i64::try_from(row.size).map_err(|_| Error::SizeOutOfRange(row.size))?;
        let row = row.clone();
        let (upstream, repo) = (upstream.to_owned(), repo.as_str().to_owned());
        let now = unix_seconds(SystemTime::now());
        self.write("insert_content", move |conn| {
            let tx = conn.transaction()?;
            // A blob fetch (media type NULL) must not erase what a manifest fetch of
            // the same bytes learned.
            let upsert = "INSERT INTO content (digest, size, media_type, created_at, last_access) \
                          VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (digest) DO UPDATE SET \
                          size = excluded.size, \
                          media_type = coalesce(excluded.media_type, content.media_type), \
                          last_access = excluded.last_access";
            let exists = "SELECT EXISTS (SELECT 1 FROM content WHERE digest = ?1)";
            let existed: bool = tx
                .prepare_cached(exists)?
                .query_row([&row.digest], |r| r.get(0))?;
            tx.prepare_cached(upsert)?
                .execute(params![row.digest, size, row.media_type, now])?;
            insert_link(&tx, &upstream, &repo, &row.digest)?;
            tx.commit()?;
            Ok(!existed)
        })
        .await
    }

    /// Links already-indexed content to `repo` of `upstream`. `UnknownContent` if the
    /// digest has no content row.
    pub async fn link(
        &self,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(), Error> {
        let key = (
            upstream.to_owned(),
            repo.as_str().to_owned(),
            digest.clone(),
        );
        self.write("link", move |conn| {
            insert_link(conn, &key.0, &key.1, &key.2)
        })
        .await
        .map_err(|e| e.or_unknown_content(digest))
    }

    /// The last known mapping of `tag` in `repo` of `upstream`.
    pub async fn tag(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<TagRow>, Error> {
        let key = (
            upstream.to_owned(),
            repo.as_str().to_owned(),
            tag.as_str().to_owned(),
        );
        self.read("tag", move |conn| {
            let sql = "SELECT digest, checked_at FROM tags \
                       WHERE upstream = ?1 AND repo = ?2 AND tag = ?3";
            let mut stmt = conn.prepare_cached(sql)?;
            stmt.query_row(params![key.0, key.1, key.2], |row| {
                Ok(TagRow {
                    digest: row.get(0)?,
                    checked_at: time_from_millis(row, 1)?,
                })
            })
            .optional()
        })
        .await
    }

    /// The last known target of `tag` with its content row, in one query
    /// (a tag always names indexed content); then `then` on the same blocking
    /// thread (see [`Index::content_in_repo_then`]).
    pub async fn tag_then<T, F>(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &Tag,
        then: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Option<(TagRow, ContentRow)>) -> T + Send + 'static,
    {
        let key = (
            upstream.to_owned(),
            repo.as_str().to_owned(),
            tag.as_str().to_owned(),
        );
        let query = move |conn: &Connection| {
            let sql = "SELECT c.digest, c.size, c.media_type, t.checked_at \
                       FROM tags t JOIN content c ON c.digest = t.digest \
                       WHERE t.upstream = ?1 AND t.repo = ?2 AND t.tag = ?3";
            let mut stmt = conn.prepare_cached(sql)?;
            stmt.query_row(params![key.0, key.1, key.2], |row| {
                let content = content_row(row)?;
                let tag = TagRow {
                    digest: content.digest.clone(),
                    checked_at: time_from_millis(row, 3)?,
                };
                Ok((tag, content))
            })
            .optional()
        };
        self.read_then("tag", query, then).await
    }

    /// Points `tag` at `digest` (which must be indexed), confirmed at `checked_at`.
    pub async fn set_tag(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        checked_at: SystemTime,
    ) -> Result<(), Error> {
        let key = (
            upstream.to_owned(),
            repo.as_str().to_owned(),
            tag.as_str().to_owned(),
        );
        let (target, millis) = (digest.clone(), unix_millis(checked_at));
        self.write("set_tag", move |conn| {
            let sql = "INSERT INTO tags (upstream, repo, tag, digest, checked_at) \
                       VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (upstream, repo, tag) \
                       DO UPDATE SET digest = excluded.digest, checked_at = excluded.checked_at";
            let mut stmt = conn.prepare_cached(sql)?;
            stmt.execute(params![key.0, key.1, key.2, target, millis])
                .map(drop)
        })
        .await
        .map_err(|e| e.or_unknown_content(digest))
    }

    /// Forgets a tag (upstream says it is gone). Missing is fine.
    pub async fn remove_tag(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<(), Error> {
        let key = (
            upstream.to_owned(),
            repo.as_str().to_owned(),
            tag.as_str().to_owned(),
        );
        self.write("remove_tag", move |conn| {
            let sql = "DELETE FROM tags WHERE upstream = ?1 AND repo = ?2 AND tag = ?3";
            conn.prepare_cached(sql)?
                .execute(params![key.0, key.1, key.2])
                .map(drop)
        })
        .await
    }

    /// Tags known for `repo` of `upstream`, in ascending byte order (SQLite's BINARY
    /// collation, which is what the distribution spec's lexical order means).
    pub async fn tags(&self, upstream: &str, repo: &RepoName) -> Result<Vec<String>, Error> {
        let key = (upstream.to_owned(), repo.as_str().to_owned());
        self.read("tags", move |conn| {
            let sql = "SELECT tag FROM tags WHERE upstream = ?1 AND repo = ?2 ORDER BY tag";
            let mut stmt = conn.prepare_cached(sql)?;
            let tags = stmt.query_map(params![key.0, key.1], |row| row.get(0))?;
            tags.collect()
        })
        .await
    }

    /// The manifests (content with a media type) linked to `repo` of `upstream`,
    /// sorted by digest: where cached referrers of a subject are looked for.
    pub async fn linked_manifests(
        &self,
        upstream: &str,
        repo: &RepoName,
    ) -> Result<Vec<ContentRow>, Error> {
        let key = (upstream.to_owned(), repo.as_str().to_owned());
        self.read("linked_manifests", move |conn| {
            let sql = "SELECT c.digest, c.size, c.media_type FROM repo_content r \
                       JOIN content c ON c.digest = r.digest \
                       WHERE r.upstream = ?1 AND r.repo = ?2 AND c.media_type IS NOT NULL \
                       ORDER BY c.digest";
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params![key.0, key.1], content_row)?;
            rows.collect()
        })
        .await
    }

    /// Drops the content row; its links and the tags pointing at it go with it.
    pub async fn remove_content(&self, digest: &Digest) -> Result<(), Error> {
        let digest = digest.clone();
        self.write("remove_content", move |conn| {
            let mut stmt = conn.prepare_cached("DELETE FROM content WHERE digest = ?1")?;
            stmt.execute([&digest]).map(drop)
        })
        .await
    }

    /// Every indexed digest, sorted.
    pub async fn all_digests(&self) -> Result<Vec<Digest>, Error> {
        self.read("all_digests", |conn| {
            let mut stmt = conn.prepare("SELECT digest FROM content ORDER BY digest")?;
            let digests = stmt.query_map([], |row| row.get(0))?;
            digests.collect()
        })
        .await
    }

    /// Every content row, sorted by digest (for start-up reconciliation).
    pub async fn all_content(&self) -> Result<Vec<ContentRow>, Error> {
        self.read("all_content", |conn| {
            let sql = "SELECT digest, size, media_type FROM content ORDER BY digest";
            let mut stmt = conn.prepare(sql)?;
            let rows = stmt.query_map([], content_row)?;
            rows.collect()
        })
        .await
    }

    /// Up to `limit` content rows with digests after `after` (from the first
    /// without it), sorted by digest: a walk over the whole table one page at
    /// a time (`verify`), each page one short read on the primary key.
    pub async fn content_page(
        &self,
        after: Option<Digest>,
        limit: usize,
    ) -> Result<Vec<ContentRow>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("content_page", move |conn| {
            let sql = "SELECT digest, size, media_type FROM content \
                       WHERE digest > coalesce(?1, '') ORDER BY digest LIMIT ?2";
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params![after, limit], content_row)?;
            rows.collect()
        })
        .await
    }

    /// The content rows whose digest, as text, is at least `from` and below
    /// `to` (`"sha256:ab"`..`"sha256:ac"`: one shard of the store), sorted.
    pub async fn content_between(
        &self,
        from: String,
        to: String,
    ) -> Result<Vec<ContentRow>, Error> {
        self.read("content_between", move |conn| {
            let sql = "SELECT digest, size, media_type FROM content \
                       WHERE digest >= ?1 AND digest < ?2 ORDER BY digest";
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params![from, to], content_row)?;
            rows.collect()
        })
        .await
    }

    /// Runs `query` on a reader connection, off the async runtime.
    async fn read<T, F>(&self, op: &'static str, query: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.read_then(op, query, |answer| answer).await
    }

    /// Runs `query` on a reader connection, then `then` with its answer on the
    /// same blocking thread once the connection is released (so that work
    /// outside the index never holds one).
    async fn read_then<Q, T, F, G>(&self, op: &'static str, query: F, then: G) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<Q> + Send + 'static,
        G: FnOnce(Q) -> T + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let task = move || {
            let answer = query(&db.reader()).map_err(|e| Error::from_sqlite(op, &db.path, e))?;
            Ok(then(answer))
        };
        tokio::task::spawn_blocking(task).await?
    }

    /// Runs `update` on the writer connection, off the async runtime. A lock
    /// held by another process (an operator's `gc` or `verify`, a `sqlite3`
    /// shell) is waited for: the busy timeout, then a few more tries after a
    /// pause (the writer connection is free meanwhile), logged when slow. Only
    /// then does the caller see `SQLITE_BUSY`.
    async fn write<T, F>(&self, op: &'static str, update: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnMut(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let task = move || {
            write_waiting(op, update, || db.writer())
                .map_err(|e| Error::from_sqlite(op, &db.path, e))
        };
        tokio::task::spawn_blocking(task).await?
    }
}

/// Pauses between tries of a write that met another process's lock after the
/// busy timeout; their count bounds how long a commit waits (about 4 × 5 s).
const BUSY_RETRY_PAUSES: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
];

/// A write that took longer than this (waiting for a lock) is logged.
const SLOW_WRITE: Duration = Duration::from_secs(1);

/// Runs `update` on the connection `writer` locks, trying again after
/// [`BUSY_RETRY_PAUSES`] while it fails with `SQLITE_BUSY`.
fn write_waiting<T, C>(
    op: &'static str,
    mut update: impl FnMut(&mut Connection) -> rusqlite::Result<T>,
    writer: impl Fn() -> C,
) -> rusqlite::Result<T>
where
    C: std::ops::DerefMut<Target = Connection>,
{
    let started = Instant::now();
    let mut pauses = BUSY_RETRY_PAUSES.iter();
    loop {
        // The connection is released before any pause.
        let result = update(&mut writer());
        let waited = started.elapsed();
        match result {
            Err(e) if db::is_busy(&e) => {
                let Some(pause) = pauses.next() else {
                    tracing::error!(
                        op,
                        waited_ms = waited.as_millis() as u64,
                        "index write gave up: another process holds the database lock"
                    );
                    return Err(e);
                };
                tracing::warn!(
                    op,
                    waited_ms = waited.as_millis() as u64,
                    "index write waits for a lock another process holds"
                );
                std::thread::sleep(*pause);
            }
            result => {
                if waited > SLOW_WRITE {
                    tracing::warn!(
                        op,
                        waited_ms = waited.as_millis() as u64,
                        "slow index write (another process held the database lock)"
                    );
                }
                return result;
            }
        }
    }
}

/// `SELECT digest, size, media_type` → `ContentRow`.
fn content_row(row: &Row<'_>) -> rusqlite::Result<ContentRow> {
    Ok(ContentRow {
        digest: row.get(0)?,
        size: row.get(1)?,
        media_type: row.get(2)?,
    })
}

fn insert_link(
    conn: &Connection,
    upstream: &str,
    repo: &str,
    digest: &Digest,
) -> rusqlite::Result<()> {
    let sql = "INSERT INTO repo_content (upstream, repo, digest) VALUES (?1, ?2, ?3) \
               ON CONFLICT DO NOTHING";
    conn.prepare_cached(sql)?
        .execute(params![upstream, repo, digest])
        .map(drop)
}

#[cfg(test)]
mod tests;
