//! Schema migrations: the files of `migrations/`, embedded in the binary and applied
//! in order at start-up, all in one transaction, with progress recorded in
//! `PRAGMA user_version` (= number of migrations applied). It must never edit or
//! reorder an entry of `MIGRATIONS`: shipped migrations are append-only.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::Error;

/// Every migration, oldest first. Adding `0002_….sql` is one more line here.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_pins.sql"),
    include_str!("../../migrations/0003_content_by_digest.sql"),
];

/// Brings the database at `path` to the latest schema, or refuses one written by a
/// newer build. Either every pending migration applies or none does.
pub(super) fn run(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    // Foreign keys are off while migrations run (SQLite's procedure for
    // rebuilding a table: dropping the old one must not cascade into the
    // tables that reference it) and checked as a whole before the commit.
    // The pragma is a no-op inside a transaction, hence out here.
    let sqlite = |e| Error::from_sqlite("migrate", path, e);
    conn.pragma_update(None, "foreign_keys", "OFF")
        .map_err(sqlite)?;
    let migrated = run_in_transaction(conn, path);
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(sqlite)?;
    migrated
}

fn run_in_transaction(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let sqlite = |e| Error::from_sqlite("migrate", path, e);
    // IMMEDIATE takes the write lock before reading the version, so two processes
    // opening the same file cannot both apply the same migration.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite)?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite)?;
    let applied = applied_count(found, path)?;
    if applied == MIGRATIONS.len() {
        // Nothing to apply (every start but the first after an upgrade): the
        // key check below reads every link, seconds at a million rows.
        return tx.commit().map_err(sqlite);
    }
    if applied > 0 {
        tracing::info!(
            from = applied,
            to = MIGRATIONS.len(),
            path = %path.display(),
            "migrating the index (once; a large index takes seconds)"
        );
    }
    for sql in &MIGRATIONS[applied..] {
        tx.execute_batch(sql).map_err(sqlite)?;
    }
    let broken = foreign_key_violations(&tx).map_err(sqlite)?;
    if broken > 0 {
        return Err(Error::Corrupt {
            op: "migrate",
            path: path.to_path_buf(),
            detail: format!("{broken} rows reference content that has no row"),
        });
    }
    // user_version lives in the database header, so it commits (or rolls back)
    // together with the schema changes.
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
        .map_err(sqlite)?;
    tx.commit().map_err(sqlite)
}

/// Rows whose foreign key names a missing row (`PRAGMA foreign_key_check`).
fn foreign_key_violations(conn: &Connection) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
    let mut rows = stmt.query([])?;
    let mut n = 0;
    while rows.next()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Checks, without changing anything, that the database has exactly the schema this
/// build knows: operator commands never migrate a file a running server may use.
pub(super) fn check_current(conn: &Connection, path: &Path) -> Result<(), Error> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| Error::from_sqlite("check schema", path, e))?;
    if applied_count(found, path)? < MIGRATIONS.len() {
        return Err(Error::SchemaTooOld {
            path: path.to_path_buf(),
            found,
            known: MIGRATIONS.len(),
        });
    }
    Ok(())
}

/// How many of `MIGRATIONS` a database at `user_version = found` already has.
fn applied_count(found: i64, path: &Path) -> Result<usize, Error> {
    let applied = usize::try_from(found).map_err(|_| Error::Corrupt {
        op: "migrate",
        path: path.to_path_buf(),
        detail: format!("negative user_version {found}"),
    })?;
    if applied > MIGRATIONS.len() {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            known: MIGRATIONS.len(),
        });
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;

    fn user_version(path: &Path) -> i64 {
        let conn = Connection::open(path).unwrap();
        conn.pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    fn table_names(path: &Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap();
        stmt.query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn migrates_an_empty_file_and_reopening_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        open_and_check_latest(&path);

        Index::open(&path).unwrap();
        Index::open(&path).unwrap();
        assert_eq!(user_version(&path), MIGRATIONS.len() as i64);
    }

    /// Opens `path` as the server does (migrating it) and checks it has the
    /// latest schema.
    fn open_and_check_latest(path: &Path) {
        Index::open(path).unwrap();
        assert_eq!(user_version(path), MIGRATIONS.len() as i64);
        assert_eq!(
            table_names(path),
            ["content", "pins", "repo_content", "tags"]
        );
    }

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// A file as the first release left it: 0001 applied, one content row.
    fn version_1_with_a_row(path: &Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO content VALUES ('sha256:aa', 4, NULL, 1, 1)",
            [],
        )
        .unwrap();
    }

    #[test]
    fn a_version_1_file_gains_the_pins_table_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        version_1_with_a_row(&path);
        // Operator commands never migrate: they say the server must start first.
        let err = Index::open_existing(&path, crate::index::Access::ReadWrite).unwrap_err();
        assert!(matches!(err, Error::SchemaTooOld { found: 1, .. }), "{err}");

        open_and_check_latest(&path);
        let conn = Connection::open(&path).unwrap();
        assert_eq!(count(&conn, "content"), 1);
        // STRICT like the others: a pattern is text, a time an integer.
        let wrong_type = conn.execute(
            "INSERT INTO pins VALUES ('registry.k8s.io/pause:3.9', 'test', 'now')",
            [],
        );
        assert!(wrong_type.is_err());
    }

    /// A file as the second release left it: content (a rowid table) with a
    /// manifest and a blob, their links and a tag.
    fn version_2_with_links(path: &Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(MIGRATIONS[1]).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute_batch(
            "INSERT INTO content VALUES ('sha256:bb', 9, NULL, 1, 5);
             INSERT INTO content VALUES ('sha256:aa', 4, 'application/vnd.oci.image.manifest.v1+json', 2, 3);
             INSERT INTO repo_content VALUES ('registry.k8s.io', 'pause', 'sha256:aa');
             INSERT INTO repo_content VALUES ('registry.k8s.io', 'pause', 'sha256:bb');
             INSERT INTO tags VALUES ('registry.k8s.io', 'pause', '3.9', 'sha256:aa', 7);
             INSERT INTO pins VALUES ('registry.k8s.io/pause:3.9', 'test', 1);",
        )
        .unwrap();
    }

    #[test]
    fn a_version_2_file_gets_content_in_digest_order_and_keeps_every_row_and_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        version_2_with_links(&path);

        open_and_check_latest(&path);
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        let rows: Vec<(String, i64, Option<String>, i64, i64)> = conn
            .prepare("SELECT * FROM content")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // Every column kept; a plain scan now comes in digest order.
        let manifest = "application/vnd.oci.image.manifest.v1+json".to_owned();
        assert_eq!(
            rows,
            [
                ("sha256:aa".to_owned(), 4, Some(manifest), 2, 3),
                ("sha256:bb".to_owned(), 9, None, 1, 5),
            ]
        );
        assert!(
            conn.query_row("SELECT rowid FROM content", [], |_| Ok(()))
                .is_err()
        );
        assert_eq!(
            (
                count(&conn, "repo_content"),
                count(&conn, "tags"),
                count(&conn, "pins")
            ),
            (2, 1, 1)
        );
        // The links still reference the rebuilt table: deleting content cascades.
        conn.execute("DELETE FROM content WHERE digest = 'sha256:aa'", [])
            .unwrap();
        assert_eq!((count(&conn, "repo_content"), count(&conn, "tags")), (1, 0));
        let dangling = conn.execute(
            "INSERT INTO repo_content VALUES ('registry.k8s.io', 'pause', 'sha256:cc')",
            [],
        );
        assert!(dangling.is_err(), "a link to missing content is refused");
        // The LRU index survived the rebuild.
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT digest FROM content ORDER BY last_access, size, digest",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("content_by_last_access"), "{plan}");
    }

    #[test]
    fn a_migration_that_would_leave_a_dangling_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        version_2_with_links(&path);
        // A link to content that has no row, written with foreign keys off
        // (a damaged file): the migration checks every key before it commits.
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", "OFF").unwrap();
        conn.execute(
            "INSERT INTO repo_content VALUES ('registry.k8s.io', 'gone', 'sha256:ff')",
            [],
        )
        .unwrap();
        drop(conn);

        let err = Index::open(&path).unwrap_err();
        assert!(matches!(err, Error::Corrupt { op: "migrate", .. }), "{err}");
        assert_eq!(user_version(&path), 2, "nothing applied");
    }

    #[test]
    fn refuses_a_schema_from_a_newer_build() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        Index::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        drop(conn);

        let err = Index::open(&path).unwrap_err();
        assert!(
            matches!(err, Error::SchemaTooNew { found: 999, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_failing_migration_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        let mut conn = Connection::open(&path).unwrap();
        // A table the first migration will try to create: it must fail as a whole.
        conn.execute_batch("CREATE TABLE tags (x TEXT)").unwrap();

        assert!(run(&mut conn, &path).is_err());
        drop(conn);
        assert_eq!(user_version(&path), 0);
        assert_eq!(table_names(&path), ["tags"]);
    }

    #[test]
    fn connection_settings_are_wal_full_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        let index = Index::open(&path).unwrap();
        let writer = index.db.writer();
        let pragma = |name| -> String {
            writer
                .pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        assert_eq!(pragma("journal_mode"), r#"Text("wal")"#);
        assert_eq!(pragma("synchronous"), "Integer(2)"); // FULL
        assert_eq!(pragma("foreign_keys"), "Integer(1)");
        drop(writer);
        // The mode is persistent: a fresh, unconfigured connection sees it too.
        let fresh = Connection::open(&path).unwrap();
        let mode: String = fresh
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn tables_are_strict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        Index::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        let wrong_type = conn.execute(
            "INSERT INTO content VALUES ('sha256:x', 'big', NULL, 0, 0)",
            [],
        );
        assert!(wrong_type.is_err());
    }
}
