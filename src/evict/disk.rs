//! The file system under the store, as statvfs(3) reports it: the bytes an
//! unprivileged writer may still use, and its whole size. The budget is
//! `max_size`, but a disk that is fuller than the budget assumes (other
//! files, a `max_size` larger than the disk) must still refuse a fill before
//! it writes rather than let it hit ENOSPC. A body without `Content-Length`
//! is asked about batch by batch as its reservation grows; a fill that hits
//! ENOSPC anyway (something else filled the disk) has the evictor make room.
//!
//! It only reads file system statistics; it never writes or deletes.

use std::path::Path;

/// Free and total bytes of the file system holding `path`; `None` if it
/// cannot be asked (then only `max_size` counts).
pub(super) fn space(path: &Path) -> Option<Space> {
    let stat = rustix::fs::statvfs(path).ok()?;
    let unit = stat.f_frsize.max(1);
    Some(Space {
        available: stat.f_bavail.saturating_mul(unit),
        total: stat.f_blocks.saturating_mul(unit),
    })
}

/// See [`space`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Space {
    /// What a non-root writer may still write (`f_bavail`).
    pub(super) available: u64,
    pub(super) total: u64,
}
