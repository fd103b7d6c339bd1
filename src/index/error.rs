//! `index::Error`: every way opening, migrating or querying the SQLite index can
//! fail, each naming the database file and the operation. It never decides an HTTP
//! status (`api::error` maps it) and never swallows the SQLite error (kept as the
//! `source`).

use std::path::{Path, PathBuf};

use crate::oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite refused an operation; `op` names it ("open", "tag", "insert_content"...).
    #[error("index {}: {op} failed", path.display())]
    Sqlite {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// A stored value does not parse back (a digest that is not one, a negative size):
    /// the file was edited or damaged outside regcache.
    #[error("index {}: corrupt row read by {op}: {detail}", path.display())]
    Corrupt {
        op: &'static str,
        path: PathBuf,
        detail: String,
    },

    /// The file was migrated by a newer regcache; an older one must not touch it.
    #[error(
        "index {} has schema version {found}, newer than the {known} this build knows",
        path.display()
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },

    /// An operator command found a schema older than this build's: `regcache serve`
    /// migrates it at start-up; commands that may run beside a server never do.
    #[error(
        "index {} has schema version {found}, older than the {known} this build knows; \
         start `regcache serve` once to migrate it",
        path.display()
    )]
    SchemaTooOld {
        path: PathBuf,
        found: i64,
        known: usize,
    },

    /// The file system could not give us WAL, which concurrent readers rely on.
    #[error("index {}: journal_mode is {mode:?}, but WAL is required", path.display())]
    NotWal { path: PathBuf, mode: String },

    /// A link or tag named content that has no row (foreign key).
    #[error("{digest} is not in the index")]
    UnknownContent { digest: Digest },

    /// A size SQLite's signed 64-bit integers cannot hold (no real file is this big).
    #[error("size {0} does not fit in the index")]
    SizeOutOfRange(u64),

    /// A `spawn_blocking` task running SQLite panicked or was cancelled.
    #[error("a blocking index task did not finish")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    /// Classifies a SQLite error from `op` on the database at `path`: values that do
    /// not convert back into our types mean a corrupt row, not a failed query.
    pub(super) fn from_sqlite(op: &'static str, path: &Path, source: rusqlite::Error) -> Self {
        use rusqlite::Error as E;
        let path = path.to_path_buf();
        match source {
            E::FromSqlConversionFailure(..)
            | E::IntegralValueOutOfRange(..)
            | E::InvalidColumnType(..) => Self::Corrupt {
                op,
                path,
                detail: source.to_string(),
            },
            source => Self::Sqlite { op, path, source },
        }
    }

    /// Turns a foreign-key violation into `UnknownContent { digest }`.
    pub(super) fn or_unknown_content(self, digest: &Digest) -> Self {
        match &self {
            Self::Sqlite {
                source: rusqlite::Error::SqliteFailure(failure, _),
                ..
            } if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                Self::UnknownContent {
                    digest: digest.clone(),
                }
            }
            _ => self,
        }
    }
}
