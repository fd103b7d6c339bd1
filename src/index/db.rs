//! The index's SQLite connections: one writer (SQLite allows a single writer at a
//! time anyway, so serializing in-process avoids `SQLITE_BUSY` between our own
//! threads) and a few read-only connections that WAL lets run beside it. It sets the
//! connection pragmas and runs migrations; it must never be used from an async task
//! directly (every call blocks: `Index` runs them on `spawn_blocking`), and never
//! holds a lock across an `.await`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::{Error, migrate};

/// Readers beyond this would only queue on the disk of a 2-core box.
const READERS: usize = 4;

/// How long a connection waits for another process's lock (an operator's `sqlite3`
/// shell, a second regcache by mistake) before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Db {
    pub(super) path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path`, configures it and applies
    /// pending migrations before any reader exists.
    pub(super) fn open(path: &Path) -> Result<Self, Error> {
        let mut writer = Connection::open(path).map_err(|e| Error::from_sqlite("open", path, e))?;
        configure_writer(&mut writer, path)?;
        migrate::run(&mut writer, path)?;
        let readers = (0..READERS)
            .map(|_| open_reader(path).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    /// Opens an existing database for an operator command (`regcache ls`, `verify`,
    /// ...) that may run beside a serving regcache: no file is created, no
    /// migration runs (the schema must be exactly the one this build knows), and
    /// with `writable == false` even the "writer" is a read-only connection.
    pub(super) fn open_existing(path: &Path, writable: bool) -> Result<Self, Error> {
        let writer = if writable {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI;
            let mut conn = Connection::open_with_flags(path, flags)
                .map_err(|e| Error::from_sqlite("open", path, e))?;
            configure_writer(&mut conn, path)?;
            conn
        } else {
            open_reader(path)?
        };
        migrate::check_current(&writer, path)?;
        let reader = open_reader(path)?;
        for conn in [&writer, &reader] {
            tune_for_scans(conn, path)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            readers: vec![Mutex::new(reader)],
            next_reader: AtomicUsize::new(0),
        })
    }

    /// The writer connection. Blocks while another write is running.
    pub(super) fn writer(&self) -> MutexGuard<'_, Connection> {
        lock(&self.writer)
    }

    /// A reader connection, round-robin. Blocks only if that reader is busy.
    pub(super) fn reader(&self) -> MutexGuard<'_, Connection> {
        let n = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        lock(&self.readers[n])
    }
}

/// Whether `e` is another connection's lock (`SQLITE_BUSY`, `SQLITE_LOCKED`)
/// outlasting the busy timeout: worth trying again, unlike any other error.
pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    matches!(e.sqlite_error_code(), Some(DatabaseBusy | DatabaseLocked))
}

/// A panic while a connection was locked leaves it usable: rusqlite's `Transaction`
/// rolls back on drop, so there is no half-applied state to protect against.
fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

fn configure_writer(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let sqlite = |e| Error::from_sqlite("configure", path, e);
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    // A deferred transaction that reads before it writes takes the write lock
    // only at its first write, and SQLite then answers `SQLITE_BUSY` at once,
    // without waiting the busy timeout (waiting could deadlock two readers that
    // both want to write): that is how a server's commit failed beside `gc`.
    // IMMEDIATE takes the write lock at `BEGIN`, where the busy timeout applies.
    conn.set_transaction_behavior(TransactionBehavior::Immediate);
    // WAL: readers never block the writer nor each other. The mode is stored in the
    // file, so readers opened afterwards use it too.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sqlite)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::NotWal {
            path: path.to_path_buf(),
            mode,
        });
    }
    // FULL rather than NORMAL. In WAL mode NORMAL never corrupts the database but
    // may lose the last commits on power loss. Files are fsynced and renamed before
    // their row is written, so a lost content row is only an orphan file, which
    // start-up reconciliation re-hashes and adopts: NORMAL would be safe for content.
    // But the repository links and tag mappings of that row are lost with it and
    // cannot be rebuilt from the disk, and they are what lets a cached image be
    // served while the upstream is down. We write about once per fill (each after
    // fsyncing a whole blob) and once per tag check, so the extra fsync of the WAL
    // per transaction costs nothing noticeable. See ARCHITECTURE.md, "Crash safety".
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite)?;
    // Per connection, off by default in SQLite: the cascades depend on it.
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(sqlite)?;
    Ok(())
}

/// Operator commands read the whole index (100 000 rows and their joins): with
/// SQLite's default 2 MiB page cache that is a `pread` per page visit, most of the
/// run time. Reading through a memory map instead costs no syscalls and no
/// copies; it maps at most this much (the index of 100 000 blobs is ~30 MiB).
fn tune_for_scans(conn: &Connection, path: &Path) -> Result<(), Error> {
    let sqlite = |e| Error::from_sqlite("configure", path, e);
    conn.pragma_update(None, "mmap_size", 256 * 1024 * 1024)
        .map_err(sqlite)?;
    conn.pragma_update(None, "cache_size", -32 * 1024)
        .map_err(sqlite)
}

fn open_reader(path: &Path) -> Result<Connection, Error> {
    let sqlite = |e| Error::from_sqlite("open reader", path, e);
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(sqlite)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    Ok(conn)
}
