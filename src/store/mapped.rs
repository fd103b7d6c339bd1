//! Committed blob files served from memory maps: a window of a file is mapped
//! and handed to hyper as [`Bytes`] (no read into a buffer, no copy), and
//! [`Mappings`] remembers which file and offset each live window shows, so a
//! plain TCP connection can send those bytes with `sendfile(2)` instead of
//! copying them (`socket`). A window is unmapped when the last `Bytes` cut
//! from it is dropped.
//!
//! This is the one module of regcache allowed `unsafe`: mapping a file is
//! unsafe because the mapped bytes change (or fault with `SIGBUS`) if someone
//! truncates or rewrites the file while it is mapped. It is sound here
//! because of the store's invariants:
//! - it maps only committed files under `blobs/`, named by their digest;
//! - a committed file is never opened for writing: content is written in
//!   `tmp/` and renamed into place after its digest was checked (`store`);
//! - every removal (eviction, `gc`, `verify`, the scrub, reconciliation) is an
//!   unlink, which leaves an open or mapped inode intact until it is closed;
//! - nothing in regcache truncates a file under `blobs/`.
//!
//! What is left is an operator truncating a committed file by hand while it
//! is served: a sendfile then sends fewer bytes (the response is cut), and a
//! read of the mapping (TLS, HTTP/2) may kill the process with `SIGBUS`. The
//! window is paged in (`MAP_POPULATE`) before it is handed out, which also
//! keeps the async workers from ever waiting on the disk.
//!
//! It must never map anything but a committed file, and never expose a
//! mapping except as immutable bytes.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};

/// Bytes per mapped window: a 6 MiB blob is two windows (one mapped with the
/// open, one more on the blocking pool). A larger window means fewer trips
/// to the blocking pool; a smaller one less mapped memory per response while
/// it is read by user space (TLS).
pub const WINDOW: u64 = 4 * 1024 * 1024;

/// The live windows, by address: which file and offset a byte in memory
/// shows.
#[derive(Debug, Default)]
pub struct Mappings {
    live: RwLock<BTreeMap<usize, Region>>,
    /// `live.len()`, read without the lock: most writes touch no window.
    count: AtomicUsize,
    /// Bytes of windows sent from their file (`socket`), for `/metrics`.
    sent_from_files: AtomicU64,
}

#[derive(Clone, Debug)]
struct Region {
    len: usize,
    file: Arc<File>,
    offset: u64,
}

/// Where bytes in memory come from: a file, the offset of the first byte,
/// and how many bytes of the window follow it.
#[derive(Debug)]
pub struct Located {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: usize,
}

impl Mappings {
    /// Bytes `offset..offset + len` of a committed file, mapped and paged
    /// in. Blocking (paging in may read the disk): call it from the
    /// blocking pool.
    pub fn map_blocking(
        self: &Arc<Self>,
        file: &Arc<File>,
        offset: u64,
        len: usize,
    ) -> io::Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        // SAFETY: `file` is a committed blob, never written or truncated
        // again (see the module's invariants); the map is read-only.
        let map = unsafe {
            MmapOptions::new()
                .offset(offset)
                .len(len)
                .populate()
                .map(&**file)?
        };
        let start = map.as_ptr() as usize;
        let region = Region {
            len,
            file: Arc::clone(file),
            offset,
        };
        self.live
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(start, region);
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(Bytes::from_owner(Window {
            map,
            start,
            mappings: Arc::clone(self),
        }))
    }

    /// The file behind the byte at `ptr`, if it lies in a live window. The
    /// caller holds the `Bytes` it points into, so the window stays mapped.
    pub fn locate(&self, ptr: *const u8) -> Option<Located> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let at = ptr as usize;
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        let (start, region) = live.range(..=at).next_back()?;
        let into = at - start;
        (into < region.len).then(|| Located {
            file: Arc::clone(&region.file),
            offset: region.offset + into as u64,
            len: region.len - into,
        })
    }

    /// Counts bytes a connection sent from a window's file.
    pub fn sent_from_file(&self, bytes: usize) {
        self.sent_from_files
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes sent from files since start.
    pub fn bytes_sent_from_files(&self) -> u64 {
        self.sent_from_files.load(Ordering::Relaxed)
    }

    fn forget(&self, start: usize) {
        let removed = self
            .live
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&start);
        if removed.is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One mapped window, owned by the `Bytes` that show it.
struct Window {
    map: Mmap,
    start: usize,
    mappings: Arc<Mappings>,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // Forgotten before the map is unmapped (the field drops after this):
        // no lookup can find an address that is no longer mapped.
        self.mappings.forget(self.start);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::Mappings;

    fn file_of(len: usize) -> (Vec<u8>, Arc<std::fs::File>) {
        let content: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&content).unwrap();
        (content, Arc::new(file))
    }

    #[test]
    fn a_window_shows_the_file_bytes_at_any_offset() {
        let (content, file) = file_of(3 * 4096 + 100);
        let mappings = Arc::new(Mappings::default());
        for (offset, len) in [
            (0, 10),
            (1, 4096),
            (4095, 4098),
            (8192, 4196),
            (12_000, 388),
        ] {
            let bytes = mappings.map_blocking(&file, offset as u64, len).unwrap();
            assert!(bytes[..] == content[offset..offset + len], "{offset}+{len}");
        }
    }

    #[test]
    fn live_windows_are_located_and_forgotten_when_dropped() {
        let (_, file) = file_of(10_000);
        let mappings = Arc::new(Mappings::default());
        let bytes = mappings.map_blocking(&file, 5000, 3000).unwrap();
        let tail = bytes.slice(1000..);
        let located = mappings.locate(tail.as_ptr()).expect("a live window");
        assert_eq!((located.offset, located.len), (6000, 2000));
        assert!(mappings.locate(b"elsewhere".as_ptr()).is_none());
        drop(bytes);
        // A slice keeps its window alive.
        assert!(mappings.locate(tail.as_ptr()).is_some());
        let ptr = tail.as_ptr();
        drop(tail);
        assert!(mappings.locate(ptr).is_none());
        assert_eq!(mappings.count.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn nothing_is_mapped_for_an_empty_range() {
        let (_, file) = file_of(100);
        let mappings = Arc::new(Mappings::default());
        assert!(mappings.map_blocking(&file, 50, 0).unwrap().is_empty());
    }
}
