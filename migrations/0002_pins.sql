-- 0002_pins: pins added while regcache runs (`regcache pin add`, `prefetch --pin`),
-- beside the configured `storage.pins`. Append-only like 0001.

-- One row per runtime pin pattern, in its canonical spelling
-- ("<upstream>/<repo glob>[:<tag glob>]" or "<upstream>/<repo>@<digest>", the
-- upstream being a configured name, never an alias): eviction parses them with
-- the same grammar as the configured pins. Not linked to content: a pin may
-- name what is not cached yet, and outlives the content it protects.
CREATE TABLE pins (
    pattern    TEXT    NOT NULL PRIMARY KEY,
    origin     TEXT    NOT NULL,                -- who added it: "pin add", "prefetch"
    created_at INTEGER NOT NULL                 -- unix seconds
) STRICT, WITHOUT ROWID;
