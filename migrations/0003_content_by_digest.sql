-- 0003_content_by_digest: `content` stored in digest order (WITHOUT ROWID).
-- Append-only like 0001.
--
-- As a rowid table, `content` kept its rows in insertion order and a separate
-- index on `digest`: every lookup by digest descended two b-trees, and a scan
-- in digest order (start-up reconciliation compares each shard directory
-- with a digest range) read the table's pages at random, once per row. At a
-- million rows that scan was 8.4 s of an 8.5 s start; in digest order it is
-- sequential (`BENCHMARKS.md`, "Scale"). The rows are small (about 100 bytes),
-- which is what WITHOUT ROWID is for.
--
-- The rebuild follows SQLite's procedure for schema changes
-- (https://www.sqlite.org/lang_altertable.html#otheralter): `index::migrate`
-- runs migrations with foreign keys off, so dropping the old table cascades
-- nothing, and checks them all (`PRAGMA foreign_key_check`) before it commits.
CREATE TABLE content_by_digest (
    digest      TEXT    NOT NULL PRIMARY KEY,   -- "sha256:<hex>": also names the file
    size        INTEGER NOT NULL CHECK (size >= 0),
    media_type  TEXT,                           -- NULL for blobs; upstream Content-Type for manifests
    created_at  INTEGER NOT NULL,               -- unix seconds
    last_access INTEGER NOT NULL                -- unix seconds; LRU order for eviction
) STRICT, WITHOUT ROWID;

INSERT INTO content_by_digest (digest, size, media_type, created_at, last_access)
    SELECT digest, size, media_type, created_at, last_access FROM content ORDER BY digest;

DROP TABLE content;

ALTER TABLE content_by_digest RENAME TO content;

-- Eviction pages through this in (last_access, size, digest) order. Access
-- times are seconds, and the rowid that broke their ties (the order rows were
-- committed) is gone: the smaller first is the order exact times would give
-- within one pull (the manifest, then its config, then the layers), so an
-- image is not left as a manifest whose layers went first.
CREATE INDEX content_by_last_access ON content (last_access, size);
