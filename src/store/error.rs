//! `store::Error`: every way reading, writing or committing content can fail,
//! each carrying the path or digest it concerns. It never decides an HTTP status:
//! `api::error` maps it, and it never hides the underlying `io::Error` (kept as
//! the `source`).

use std::io;
use std::path::{Path, PathBuf};

use crate::oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system call failed; `action` says which one ("create", "rename", ...).
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The content did not have the size the caller (upstream) announced.
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },

    /// The content does not hash to the digest it was fetched under.
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },

    /// `read_small` found a file larger than the caller accepts.
    #[error("{} is {size} bytes, over the {max}-byte limit", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        max: usize,
    },

    /// An earlier `write` on this writer failed or was cancelled part-way, so the
    /// temp file may not match what was hashed; the fill must start over.
    #[error("writer for {} is unusable after an interrupted or failed write", path.display())]
    WriterBroken { path: PathBuf },

    /// A `spawn_blocking` task running file-system calls panicked or was cancelled.
    #[error("a blocking store task did not finish")]
    Task(#[from] tokio::task::JoinError),

    /// Start-up reconciliation could not read or update the index.
    #[error("reconciling the store with the index")]
    Index(#[from] crate::index::Error),
}

impl Error {
    /// The file system is out of space (ENOSPC) or the writer out of quota
    /// (EDQUOT): the content is fine, the disk is not.
    pub fn is_out_of_space(&self) -> bool {
        let Self::Io { source, .. } = self else {
            return false;
        };
        matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
    }

    /// For `map_err`: wraps an `io::Error` with what we were doing and to which path.
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
