//! Committed blob files served from memory maps: a window of a file is mapped,
//! paged in, and handed to hyper as [`Bytes`] that unmap it when the last of
//! them is dropped. hyper then writes straight from the page cache (one copy,
//! into the socket) instead of a read into a buffer and a write from it, and
//! a 4 MiB window is one trip to the blocking pool where 256 KiB reads were
//! sixteen. Measured on a warm 6 MiB blob (`BENCHMARKS.md`, "Hit path"): the
//! same throughput for about two thirds of the CPU; `sendfile` from these
//! windows was measured too and lost on loopback.
//!
//! This is the one module of regcache allowed `unsafe`: mapping a file is
//! unsafe because the mapped bytes change (or fault with `SIGBUS`) if someone
//! truncates or rewrites the file while it is mapped. It is sound here
//! because of the store's invariants:
//! - it maps only committed files under `blobs/`, named by their digest;
//! - a committed file is never opened for writing: content is written in
//!   `tmp/` and renamed into place after its digest was checked (`store`);
//! - every removal (eviction, `gc`, `verify`, the scrub, reconciliation) is an
//!   unlink, which leaves an open or mapped inode intact until it is unmapped;
//! - nothing in regcache truncates a file under `blobs/`.
//!
//! What is left is an operator truncating a committed file by hand while it
//! is served: paging the window in then fails (an error, the response is
//! cut), or, if the truncation comes after, reading it faults. The window is
//! paged in (`MADV_POPULATE_READ`) on the blocking pool before it is handed
//! out, so the async workers never wait on the disk for it. Mapped pages count in the
//! process's RSS while a response holds them (file pages the kernel can
//! reclaim, at most a window or two per response).
//!
//! It must never map anything but a committed file, and never expose a
//! mapping except as immutable bytes.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use bytes::Bytes;
use memmap2::{Advice, MmapOptions};

/// Bytes per mapped window: a 6 MiB blob is two windows (one mapped with the
/// open, one more on the blocking pool).
pub const WINDOW: u64 = 4 * 1024 * 1024;

/// Bytes `offset..offset + len` of a committed file, mapped and paged in.
/// Blocking (paging in may read the disk): call it from the blocking pool.
pub fn window(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    if len == 0 {
        // An empty map is an error to the kernel.
        return Ok(Bytes::new());
    }
    // SAFETY: `file` is a committed blob, never written or truncated again
    // (see the module's invariants), and the map is read-only.
    let map = unsafe { MmapOptions::new().offset(offset).len(len).map(file)? };
    // Unlike MAP_POPULATE, this fails if a page cannot be read (past the end
    // of a truncated file): an error here instead of a fault later.
    match map.advise(Advice::PopulateRead) {
        Ok(()) => {}
        // Before Linux 5.14: the pages come in as they are read.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {}
        Err(e) => return Err(e),
    }
    Ok(Bytes::from_owner(map))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    fn file_of(len: usize) -> (Vec<u8>, std::fs::File) {
        let content: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&content).unwrap();
        (content, file)
    }

    #[test]
    fn a_window_shows_the_file_bytes_at_any_offset() {
        let (content, file) = file_of(3 * 4096 + 100);
        for (offset, len) in [
            (0, 10),
            (1, 4096),
            (4095, 4098),
            (8192, 4196),
            (12_000, 388),
        ] {
            let bytes = super::window(&file, offset as u64, len).unwrap();
            assert!(bytes[..] == content[offset..offset + len], "{offset}+{len}");
            // A slice outlives the `Bytes` it was cut from: the map stays.
            let tail = bytes.slice(len / 2..);
            drop(bytes);
            assert!(tail[..] == content[offset + len / 2..offset + len]);
        }
    }

    #[test]
    fn nothing_is_mapped_for_an_empty_range() {
        let (_, file) = file_of(100);
        assert!(super::window(&file, 50, 0).unwrap().is_empty());
    }

    #[test]
    fn a_window_past_the_end_of_the_file_is_an_error_not_a_fault() {
        let (_, file) = file_of(100);
        // Mapping past the end succeeds, but paging it in cannot: the error
        // comes from `window`, never as a fault on a later read.
        assert!(super::window(&file, 0, 3 * 4096).is_err());
    }
}
