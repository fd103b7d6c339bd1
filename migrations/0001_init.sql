-- 0001_init: the first schema of the index.
--
-- Migrations are append-only: once shipped this file is never edited. A change is a
-- new file (0002_….sql) added to index::migrate::MIGRATIONS. Each file runs inside
-- the start-up migration transaction, so it must not contain BEGIN/COMMIT.

-- One row per committed file under blobs/ (blobs and manifests alike).
CREATE TABLE content (
    digest      TEXT    NOT NULL PRIMARY KEY,   -- "sha256:<hex>": also names the file
    size        INTEGER NOT NULL CHECK (size >= 0),
    media_type  TEXT,                           -- NULL for blobs; upstream Content-Type for manifests
    created_at  INTEGER NOT NULL,               -- unix seconds
    last_access INTEGER NOT NULL                -- unix seconds; LRU order for eviction
) STRICT;

CREATE INDEX content_by_last_access ON content (last_access);

-- Which repository of which upstream each piece of content was pulled for or
-- confirmed to exist in: content is served for a repository only if linked to it.
CREATE TABLE repo_content (
    upstream TEXT NOT NULL,
    repo     TEXT NOT NULL,
    digest   TEXT NOT NULL REFERENCES content (digest) ON DELETE CASCADE,
    PRIMARY KEY (upstream, repo, digest)
) STRICT, WITHOUT ROWID;

-- Lets the cascade from content find its links without a full scan.
CREATE INDEX repo_content_by_digest ON repo_content (digest);

-- The last known tag → manifest mapping, and when upstream last confirmed it.
CREATE TABLE tags (
    upstream   TEXT    NOT NULL,
    repo       TEXT    NOT NULL,
    tag        TEXT    NOT NULL,
    digest     TEXT    NOT NULL REFERENCES content (digest) ON DELETE CASCADE,
    checked_at INTEGER NOT NULL,                -- unix milliseconds
    PRIMARY KEY (upstream, repo, tag)
) STRICT, WITHOUT ROWID;

CREATE INDEX tags_by_digest ON tags (digest);
