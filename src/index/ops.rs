//! Queries for operator commands and start-up repair: opening an existing index
//! beside a running server, the full listing behind `regcache ls`, the totals
//! behind `regcache stats`, adopting orphan files and bulk inserts. Like the rest
//! of `index` it answers questions and records facts; it never touches files.
//!
//! The listing and the totals each read in one read transaction, so a server
//! writing at the same time never shows them a half-applied change.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::params;

use super::db::Db;
use super::{ContentRow, Error, Index, insert_link, unix_seconds};
use crate::oci::{Digest, RepoName, Tag};

/// How an operator command opens the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `ls`, `stats`: read-only connections only.
    ReadOnly,
    /// `verify`, `gc`: normal write transactions beside the server's.
    ReadWrite,
}

/// One line of `regcache ls`: content as seen from one repository (and tag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListingRow {
    /// `None` for content linked to no repository (adopted after a crash).
    pub upstream: Option<String>,
    pub repo: Option<String>,
    /// `None` when no tag of this repository points at the content.
    pub tag: Option<String>,
    pub digest: Digest,
    pub size: u64,
    /// `Some` for manifests.
    pub media_type: Option<String>,
    pub last_access: SystemTime,
}

/// Totals over the whole index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Content rows (= committed files) and the sum of their sizes.
    pub content: u64,
    pub content_bytes: u64,
    /// Content with a media type (manifests) and their bytes; the rest are blobs.
    pub manifests: u64,
    pub manifest_bytes: u64,
    /// Distinct (upstream, repository) pairs with linked content or tags.
    pub repositories: u64,
    pub tags: u64,
    /// Content linked to no repository.
    pub unlinked: u64,
}

impl Summary {
    pub fn blobs(&self) -> u64 {
        self.content - self.manifests
    }

    pub fn blob_bytes(&self) -> u64 {
        self.content_bytes - self.manifest_bytes
    }
}

impl Index {
    /// Opens the existing index at `path` for an operator command: creates nothing,
    /// migrates nothing (a schema older or newer than this build's is an error).
    pub fn open_existing(path: &Path, access: Access) -> Result<Index, Error> {
        let db = Db::open_existing(path, access == Access::ReadWrite)?;
        Ok(Index { db: Arc::new(db) })
    }

    /// Every piece of content per repository and tag: one row per (repository,
    /// tag) for tagged content, one per (repository, content) for the rest, one
    /// per unlinked content; sorted by upstream, repository, tag, digest.
    /// Collects [`Index::listing_in_chunks`]: for tests and small indexes.
    pub async fn listing(&self) -> Result<Vec<ListingRow>, Error> {
        let (send, mut chunks) = tokio::sync::mpsc::channel(LISTING_CHUNKS_AHEAD);
        let reading = self.listing_in_chunks(send);
        let collecting = async {
            let mut rows = Vec::new();
            while let Some(mut chunk) = chunks.recv().await {
                rows.append(&mut chunk);
            }
            rows
        };
        let (read, rows) = tokio::join!(reading, collecting);
        read.map(|()| rows)
    }

    /// The rows of [`Index::listing`], in its order, sent to `chunks` a
    /// repository (or, for unlinked content, [`LISTING_CHUNK`] rows) at a time
    /// from one read transaction: memory holds a chunk or a few, never the
    /// whole index (a million rows gathered and sorted at once took 1 GiB in
    /// `regcache ls`). Stops early, without an error, when the receiver is gone.
    pub async fn listing_in_chunks(
        &self,
        chunks: tokio::sync::mpsc::Sender<Vec<ListingRow>>,
    ) -> Result<(), Error> {
        self.read("listing", move |conn| {
            let tx = conn.unchecked_transaction()?;
            send_listing(&tx, &chunks)?;
            tx.finish()
        })
        .await
    }

    /// Counts and byte totals over the whole index, in one read transaction.
    pub async fn summary(&self) -> Result<Summary, Error> {
        self.read("summary", |conn| {
            let tx = conn.unchecked_transaction()?;
            let (content, content_bytes, manifests, manifest_bytes) = tx.query_row(
                "SELECT count(*), coalesce(sum(size), 0), count(media_type), \
                 coalesce(sum(CASE WHEN media_type IS NOT NULL THEN size END), 0) FROM content",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )?;
            let repositories = tx.query_row(
                "SELECT count(*) FROM (SELECT upstream, repo FROM repo_content \
                 UNION SELECT upstream, repo FROM tags)",
                [],
                |row| row.get(0),
            )?;
            let tags = tx.query_row("SELECT count(*) FROM tags", [], |row| row.get(0))?;
            let unlinked = tx.query_row(
                "SELECT count(*) FROM content c WHERE NOT EXISTS \
                 (SELECT 1 FROM repo_content rc WHERE rc.digest = c.digest)",
                [],
                |row| row.get(0),
            )?;
            tx.finish()?;
            Ok(Summary {
                content,
                content_bytes,
                manifests,
                manifest_bytes,
                repositories,
                tags,
                unlinked,
            })
        })
        .await
    }

    /// Records files found under `blobs/` without a row (a crash between their
    /// rename and their row), after their content was re-hashed. They get no
    /// media type and no repository link: a manifest request fetches the manifest
    /// again (and the upsert then learns its media type), a blob request asks the
    /// upstream to confirm the repository first. One transaction; rows that exist
    /// by now are left as they are. Returns how many rows were inserted.
    pub async fn adopt(&self, rows: Vec<ContentRow>) -> Result<usize, Error> {
        let now = unix_seconds(SystemTime::now());
        self.write("adopt", move |conn| {
            let tx = conn.transaction()?;
            let mut inserted = 0;
            {
                let sql = "INSERT INTO content (digest, size, media_type, created_at, last_access) \
                           VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (digest) DO NOTHING";
                let mut stmt = tx.prepare_cached(sql)?;
                for row in &rows {
                    let size = i64::try_from(row.size)
                        .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(1, i64::MAX))?;
                    inserted += stmt.execute(params![row.digest, size, row.media_type, now])?;
                }
            }
            tx.commit()?;
            Ok(inserted)
        })
        .await
    }

    /// `insert_content` for many rows of one repository in one transaction (used to
    /// build large test and benchmark indexes without one fsync per row).
    pub async fn insert_contents(
        &self,
        rows: Vec<ContentRow>,
        upstream: &str,
        repo: &RepoName,
    ) -> Result<(), Error> {
        if let Some(row) = rows.iter().find(|r| i64::try_from(r.size).is_err()) {
            return Err(Error::SizeOutOfRange(row.size));
        }
        let (upstream, repo) = (upstream.to_owned(), repo.as_str().to_owned());
        let now = unix_seconds(SystemTime::now());
        self.write("insert_contents", move |conn| {
            let tx = conn.transaction()?;
            {
                let upsert = "INSERT INTO content (digest, size, media_type, created_at, last_access) \
                              VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (digest) DO UPDATE SET \
                              media_type = coalesce(excluded.media_type, content.media_type), \
                              last_access = excluded.last_access";
                let mut stmt = tx.prepare_cached(upsert)?;
                for row in &rows {
                    stmt.execute(params![row.digest, row.size as i64, row.media_type, now])?;
                    insert_link(&tx, &upstream, &repo, &row.digest)?;
                }
            }
            tx.commit()
        })
        .await
    }
}

impl Index {
    /// `set_tag` for many tags of one repository in one transaction (used, like
    /// `insert_contents`, to build large test and benchmark indexes). Every
    /// target must be indexed, else nothing is written.
    pub async fn set_tags(
        &self,
        upstream: &str,
        repo: &RepoName,
        tags: Vec<(Tag, Digest)>,
        checked_at: SystemTime,
    ) -> Result<(), Error> {
        let (upstream, repo) = (upstream.to_owned(), repo.as_str().to_owned());
        let millis = super::columns::unix_millis(checked_at);
        self.write("set_tags", move |conn| {
            let tx = conn.transaction()?;
            {
                let sql = "INSERT INTO tags (upstream, repo, tag, digest, checked_at) \
                           VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (upstream, repo, tag) \
                           DO UPDATE SET digest = excluded.digest, checked_at = excluded.checked_at";
                let mut stmt = tx.prepare_cached(sql)?;
                for (tag, digest) in &tags {
                    stmt.execute(params![upstream, repo, tag.as_str(), digest, millis])?;
                }
            }
            tx.commit()
        })
        .await
    }
}

/// Upstream, repository, tag, digest; unlinked content last and, within a
/// repository, tagged rows before untagged ones.
/// Chunks of [`Index::listing_in_chunks`] read ahead of the writer.
pub const LISTING_CHUNKS_AHEAD: usize = 4;

/// Rows of unlinked content per chunk of [`Index::listing_in_chunks`].
const LISTING_CHUNK: usize = 4096;

/// Every (upstream, repository) with linked content or tags, in listing order.
const LISTED_REPOS: &str = "SELECT upstream, repo FROM repo_content \
    UNION SELECT upstream, repo FROM tags ORDER BY 1, 2";

/// A repository's content, with the tags of the repository that name it.
const LINKED: &str = "SELECT rc.upstream, rc.repo, t.tag, c.digest, c.size, \
    c.media_type, c.last_access \
    FROM repo_content rc JOIN content c ON c.digest = rc.digest \
    LEFT JOIN tags t ON t.upstream = rc.upstream AND t.repo = rc.repo \
                    AND t.digest = rc.digest \
    WHERE rc.upstream = ?1 AND rc.repo = ?2";

/// A repository's tags whose content is not linked to it: the schema does not
/// require the link.
const TAGGED_UNLINKED: &str = "SELECT t.upstream, t.repo, t.tag, c.digest, c.size, \
    c.media_type, c.last_access \
    FROM tags t JOIN content c ON c.digest = t.digest \
    WHERE t.upstream = ?1 AND t.repo = ?2 \
      AND NOT EXISTS (SELECT 1 FROM repo_content rc WHERE rc.upstream = t.upstream \
                      AND rc.repo = t.repo AND rc.digest = t.digest)";

/// Content linked nowhere and named by no tag (adopted after a crash), in
/// digest order (the table's own).
const NOWHERE: &str = "SELECT NULL, NULL, NULL, c.digest, c.size, c.media_type, \
    c.last_access FROM content c \
    WHERE NOT EXISTS (SELECT 1 FROM repo_content rc WHERE rc.digest = c.digest) \
      AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.digest = c.digest) \
    ORDER BY c.digest";

/// The body of [`Index::listing_in_chunks`], in its read transaction.
fn send_listing(
    tx: &rusqlite::Transaction<'_>,
    chunks: &tokio::sync::mpsc::Sender<Vec<ListingRow>>,
) -> rusqlite::Result<()> {
    let mut repos = tx.prepare(LISTED_REPOS)?;
    let repos = repos
        .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
    for (upstream, repo) in repos {
        let mut rows = Vec::new();
        for sql in [LINKED, TAGGED_UNLINKED] {
            let mut stmt = tx.prepare_cached(sql)?;
            for row in stmt.query_map(params![upstream, repo], listing_row)? {
                rows.push(row?);
            }
        }
        // Tagged rows before untagged ones, each in digest order.
        rows.sort_by(listing_order);
        if chunks.blocking_send(rows).is_err() {
            return Ok(());
        }
    }
    let mut stmt = tx.prepare(NOWHERE)?;
    let mut rows = Vec::new();
    for row in stmt.query_map([], listing_row)? {
        rows.push(row?);
        if rows.len() == LISTING_CHUNK && chunks.blocking_send(std::mem::take(&mut rows)).is_err() {
            return Ok(());
        }
    }
    if !rows.is_empty() {
        let _ = chunks.blocking_send(rows);
    }
    Ok(())
}

fn listing_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ListingRow> {
    Ok(ListingRow {
        upstream: row.get(0)?,
        repo: row.get(1)?,
        tag: row.get(2)?,
        digest: row.get(3)?,
        size: row.get(4)?,
        media_type: row.get(5)?,
        last_access: time_from_seconds(row, 6)?,
    })
}

fn listing_order(a: &ListingRow, b: &ListingRow) -> std::cmp::Ordering {
    fn key(
        r: &ListingRow,
    ) -> (
        bool,
        &Option<String>,
        &Option<String>,
        bool,
        &Option<String>,
    ) {
        (
            r.upstream.is_none(),
            &r.upstream,
            &r.repo,
            r.tag.is_none(),
            &r.tag,
        )
    }
    key(a).cmp(&key(b)).then_with(|| a.digest.cmp(&b.digest))
}

/// Reads column `idx` as unix seconds.
fn time_from_seconds(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<SystemTime> {
    let secs: i64 = row.get(idx)?;
    u64::try_from(secs)
        .ok()
        .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        .ok_or(rusqlite::Error::IntegralValueOutOfRange(idx, secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: &str = "registry.k8s.io";

    fn row(content: &[u8], manifest: bool) -> ContentRow {
        ContentRow {
            digest: Digest::sha256_of(content),
            size: content.len() as u64,
            media_type: manifest.then(|| crate::oci::media_type::OCI_MANIFEST.to_owned()),
        }
    }

    #[tokio::test]
    async fn the_listing_comes_a_repository_or_a_bounded_chunk_at_a_time_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        // Two repositories (inserted in the reverse of their order) and more
        // unlinked content than one chunk holds.
        for name in ["b", "a"] {
            let repo: RepoName = name.parse().unwrap();
            let rows = (0..3u8).map(|n| row(&[name.as_bytes()[0], n], false));
            index
                .insert_contents(rows.collect(), UP, &repo)
                .await
                .unwrap();
        }
        let orphans: Vec<ContentRow> = (0..LISTING_CHUNK as u32 + 10)
            .map(|n| row(&n.to_le_bytes(), false))
            .collect();
        index.adopt(orphans).await.unwrap();

        let (send, mut chunks) = tokio::sync::mpsc::channel(LISTING_CHUNKS_AHEAD);
        let reading = index.listing_in_chunks(send);
        let collecting = async {
            let mut sizes = Vec::new();
            while let Some(chunk) = chunks.recv().await {
                sizes.push(chunk.len());
            }
            sizes
        };
        let (read, sizes) = tokio::join!(reading, collecting);
        read.unwrap();
        assert_eq!(sizes, [3, 3, LISTING_CHUNK, 10]);

        let listing = index.listing().await.unwrap();
        let mut sorted = listing.clone();
        sorted.sort_by(listing_order);
        assert_eq!(listing, sorted, "already in listing order");
        assert_eq!(listing[0].repo.as_deref(), Some("a"));
        assert_eq!(listing.len(), 6 + LISTING_CHUNK + 10);

        // A reader that goes away stops the listing, without an error.
        let (send, mut chunks) = tokio::sync::mpsc::channel(1);
        let reading = index.listing_in_chunks(send);
        let first_only = async move { chunks.recv().await.map(|c| c.len()) };
        let (read, first) = tokio::join!(reading, first_only);
        read.unwrap();
        assert_eq!(first, Some(3));
    }

    #[tokio::test]
    async fn listing_and_summary_cover_tagged_untagged_and_unlinked_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        let index = Index::open(&path).unwrap();
        let app: RepoName = "app".parse().unwrap();
        let (m, layer, orphan) = (row(b"m", true), row(b"layer!", false), row(b"o", false));
        index
            .insert_contents(vec![m.clone(), layer.clone()], UP, &app)
            .await
            .unwrap();
        let latest: Tag = "latest".parse().unwrap();
        index
            .set_tag(UP, &app, &latest, &m.digest, SystemTime::now())
            .await
            .unwrap();
        assert_eq!(
            index.adopt(vec![orphan.clone(), m.clone()]).await.unwrap(),
            1
        );

        let ro = Index::open_existing(&path, Access::ReadOnly).unwrap();
        let listing = ro.listing().await.unwrap();
        let seen: Vec<_> = listing
            .iter()
            .map(|r| (r.repo.as_deref(), r.tag.as_deref(), &r.digest, r.size))
            .collect();
        assert_eq!(
            seen,
            [
                (Some("app"), Some("latest"), &m.digest, 1),
                (Some("app"), None, &layer.digest, 6),
                (None, None, &orphan.digest, 1),
            ]
        );
        let summary = ro.summary().await.unwrap();
        let want = Summary {
            content: 3,
            content_bytes: 8,
            manifests: 1,
            manifest_bytes: 1,
            repositories: 1,
            tags: 1,
            unlinked: 1,
        };
        assert_eq!(summary, want);
        assert_eq!((summary.blobs(), summary.blob_bytes()), (2, 7));
        // Read-only really is read-only.
        assert!(ro.remove_content(&m.digest).await.is_err());
    }

    #[tokio::test]
    async fn set_tags_writes_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        let app: RepoName = "app".parse().unwrap();
        let (a, b) = (row(b"a", true), row(b"b", true));
        index
            .insert_contents(vec![a.clone(), b.clone()], UP, &app)
            .await
            .unwrap();
        let (v1, v2): (Tag, Tag) = ("v1".parse().unwrap(), "v2".parse().unwrap());
        let now = SystemTime::now();
        let tags = vec![
            (v1.clone(), a.digest.clone()),
            (v2.clone(), b.digest.clone()),
        ];
        index.set_tags(UP, &app, tags, now).await.unwrap();
        assert_eq!(index.tags(UP, &app).await.unwrap(), ["v1", "v2"]);
        assert_eq!(
            index.tag(UP, &app, &v2).await.unwrap().unwrap().digest,
            b.digest
        );

        let v3: Tag = "v3".parse().unwrap();
        let unknown = Digest::sha256_of(b"not indexed");
        let tags = vec![(v3, a.digest.clone()), (v1.clone(), unknown)];
        assert!(index.set_tags(UP, &app, tags, now).await.is_err());
        assert_eq!(index.tags(UP, &app).await.unwrap(), ["v1", "v2"]);
    }

    #[tokio::test]
    async fn open_existing_neither_creates_nor_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        assert!(Index::open_existing(&path, Access::ReadOnly).is_err());
        assert!(!path.exists());

        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        drop(conn);
        let err = Index::open_existing(&path, Access::ReadWrite).unwrap_err();
        assert!(matches!(err, Error::SchemaTooOld { found: 0, .. }), "{err}");
    }
}
