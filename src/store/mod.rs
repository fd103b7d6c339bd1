//! Content-addressed files on disk: committed content (blobs and manifests alike)
//! named by its digest, and the temp files of fills in progress.
//!
//! ```text
//! <data>/
//!   index.db, index.db-wal ...        the SQLite index (owned by `index`, not here)
//!   blobs/                            committed content, written once, never modified
//!     <alg>/                          sha256, sha384 or sha512
//!       <first 2 hex>/                256 shards keep directories small
//!         <full hex>                  the bytes whose <alg> digest is <full hex>
//!   tmp/
//!     <32 random hex>                 a fill in progress (`BlobWriter`); deleted at start-up
//! ```
//!
//! The server opens the store with [`Store::open`] (which empties `tmp/`), then
//! runs [`reconcile()`]; operator commands use [`Store::attach`], which touches
//! nothing, because a server may be filling into `tmp/` at that moment.
//!
//! A file appears under `blobs/` only by `rename` from `tmp/` after its size and
//! digest were verified and it was fsynced, so a name under `blobs/` always holds
//! exactly its content (bar disk corruption, which `reconcile` partly catches).
//!
//! This module must never build a path from anything but a [`Digest`] (whose grammar
//! guarantees lower-case hex of the exact length), never publish unverified bytes,
//! and holds no SQL: `reconcile` talks to the index only through its API.

mod error;
pub mod mapped;
mod reconcile;
mod writer;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

pub use error::Error;
pub use reconcile::{ReconcileReport, reconcile};
pub use writer::BlobWriter;

use crate::oci::Digest;

/// Handle on the data directory's `blobs/` and `tmp/`; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    blobs: Arc<Path>,
    tmp: Arc<Path>,
}

impl Store {
    /// Creates `blobs/` and `tmp/` if missing and deletes every leftover in `tmp/`
    /// (fills cut short by a crash). Synchronous: called once at start-up, before
    /// any fill can have started.
    pub fn open(data_dir: &Path) -> Result<Store, Error> {
        let blobs = data_dir.join("blobs");
        let tmp = data_dir.join("tmp");
        for dir in [&blobs, &tmp] {
            fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
        }
        let swept = sweep(&tmp)?;
        if swept > 0 {
            tracing::info!(count = swept, dir = %tmp.display(), "deleted unfinished fills");
        }
        Ok(Store {
            blobs: blobs.into(),
            tmp: tmp.into(),
        })
    }

    /// Opens the store of a data directory that a running server may be using, for
    /// operator commands: creates nothing and, unlike [`Store::open`], never sweeps
    /// `tmp/` (those temp files may be the server's fills in progress).
    pub fn attach(data_dir: &Path) -> Result<Store, Error> {
        let blobs = data_dir.join("blobs");
        let tmp = data_dir.join("tmp");
        fs::metadata(&blobs).map_err(Error::io("open", &blobs))?;
        Ok(Store {
            blobs: blobs.into(),
            tmp: tmp.into(),
        })
    }

    /// Re-reads committed content and hashes it with its digest's algorithm,
    /// streaming (constant memory). `None` if there is no such file. Blocking: call
    /// it from `spawn_blocking`.
    pub fn rehash_blocking(&self, digest: &Digest) -> Result<Option<Rehash>, Error> {
        self.rehash_paced_blocking(digest, &mut |_| {})
    }

    /// [`Store::rehash_blocking`], calling `pace` with the size of each chunk
    /// read (the scrub sleeps there to keep to its rate).
    pub fn rehash_paced_blocking(
        &self,
        digest: &Digest,
        pace: &mut dyn FnMut(u64),
    ) -> Result<Option<Rehash>, Error> {
        let path = self.blob_path(digest);
        let mut file = match open_committed(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", &path)(e)),
        };
        let mut hasher = crate::oci::Hasher::new(digest.algorithm());
        let mut buf = vec![0u8; 1024 * 1024];
        let mut size = 0u64;
        loop {
            let n = match io::Read::read(&mut file, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read", &path)(e)),
            };
            hasher.update(&buf[..n]);
            size += n as u64;
            pace(n as u64);
        }
        Ok(Some(Rehash {
            actual: hasher.finish(),
            size,
        }))
    }

    /// The directory committed content lives under (for its file system's
    /// free space).
    pub fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    /// Where committed content with this digest lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        // Every supported algorithm has at least 64 hex characters.
        let shard = hex.get(..2).unwrap_or(hex);
        self.blobs
            .join(digest.algorithm().as_str())
            .join(shard)
            .join(hex)
    }

    /// Opens committed content for reading in one blocking call: a file of at
    /// most `head` bytes is read whole (a small blob is served with one trip to
    /// the blocking pool instead of three: open, stat, read), a larger one has
    /// its first window mapped ([`mapped`]; none if `head` is 0). `None` if
    /// nothing was committed under this digest.
    pub async fn open_blob_with_head(
        &self,
        digest: &Digest,
        head: u64,
    ) -> Result<Option<OpenBlob>, Error> {
        let store = self.clone();
        let digest = digest.clone();
        let path = self.blob_path(&digest);
        tokio::task::spawn_blocking(move || store.open_blob_blocking(&digest, head))
            .await
            .map_err(|e| Error::io("open", &path)(io::Error::other(e)))?
    }

    /// [`Store::open_blob_with_head`] on the calling thread: call it from
    /// `spawn_blocking` (for instance after an index query on the same thread).
    pub fn open_blob_blocking(
        &self,
        digest: &Digest,
        head: u64,
    ) -> Result<Option<OpenBlob>, Error> {
        OpenBlob::open(&self.blob_path(digest), head)
    }

    /// Opens committed content for reading: `Some((file, length))`, or `None` if
    /// nothing was committed under this digest.
    pub async fn open_blob(
        &self,
        digest: &Digest,
    ) -> Result<Option<(tokio::fs::File, u64)>, Error> {
        let path = self.blob_path(digest);
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", &path)(e)),
        };
        let len = file
            .metadata()
            .await
            .map_err(Error::io("stat", &path))?
            .len();
        Ok(Some((file, len)))
    }

    /// Checks that `blobs/` and `tmp/` are still directories (the readiness
    /// probe): a data volume unmounted under a running server fails it.
    pub async fn check(&self) -> Result<(), Error> {
        let dirs = [Arc::clone(&self.blobs), Arc::clone(&self.tmp)];
        tokio::task::spawn_blocking(move || {
            for dir in &dirs {
                let meta = fs::metadata(dir).map_err(Error::io("stat", dir))?;
                if !meta.is_dir() {
                    let e = io::Error::new(io::ErrorKind::NotADirectory, "not a directory");
                    return Err(Error::io("stat", dir)(e));
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::io("stat", &self.blobs)(io::Error::other(e)))?
    }

    /// Reads a whole small file (a manifest), `None` if absent; an error if it is
    /// larger than `max` bytes, so a damaged store cannot make us buffer gigabytes.
    /// One trip to the blocking pool.
    pub async fn read_small(&self, digest: &Digest, max: usize) -> Result<Option<Bytes>, Error> {
        let store = self.clone();
        let digest = digest.clone();
        let path = self.blob_path(&digest);
        tokio::task::spawn_blocking(move || store.read_small_blocking(&digest, max))
            .await
            .map_err(|e| Error::io("read", &path)(io::Error::other(e)))?
    }

    /// [`Store::read_small`] on the calling thread: call it from `spawn_blocking`.
    pub fn read_small_blocking(&self, digest: &Digest, max: usize) -> Result<Option<Bytes>, Error> {
        use std::io::Read;
        let path = self.blob_path(digest);
        let file = match open_committed(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", &path)(e)),
        };
        let len = file.metadata().map_err(Error::io("stat", &path))?.len();
        let too_large = |size| Error::TooLarge {
            path: path.clone(),
            size,
            max,
        };
        if len > max as u64 {
            return Err(too_large(len));
        }
        let mut buf = Vec::with_capacity(len as usize);
        // Read at most one byte past the limit: the file cannot grow (it was renamed
        // into place complete), but if it somehow did, we still stop.
        let read = file.take(max as u64 + 1).read_to_end(&mut buf);
        read.map_err(Error::io("read", &path))?;
        if buf.len() > max {
            return Err(too_large(buf.len() as u64));
        }
        Ok(Some(Bytes::from(buf)))
    }

    /// Starts writing content expected to hash to `expected`, into a fresh temp file.
    pub async fn writer(&self, expected: Digest) -> Result<BlobWriter, Error> {
        let temp_path = self.tmp.join(format!("{:032x}", rand::random::<u128>()));
        // create_new: a name collision (or a leftover we failed to sweep) is an
        // error, never a file shared by two fills.
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .await
            .map_err(Error::io("create", &temp_path))?
            .into_std()
            .await;
        let target = self.blob_path(&expected);
        Ok(BlobWriter::new(file, temp_path, target, expected))
    }

    /// Verifies that `bytes` hash to `expected`, then writes and commits them. For
    /// manifests, which arrive whole.
    pub async fn put_small(&self, expected: &Digest, bytes: &[u8]) -> Result<(), Error> {
        let actual = Digest::of(expected.algorithm(), bytes);
        if actual != *expected {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let mut writer = self.writer(expected.clone()).await?;
        writer.write(Bytes::copy_from_slice(bytes)).await?;
        writer.commit(Some(bytes.len() as u64)).await?;
        Ok(())
    }

    /// Removes committed content (corrupt, or no longer indexed). Already missing is
    /// fine: the caller wants it gone. Readers holding the file open keep reading.
    pub async fn remove(&self, digest: &Digest) -> Result<(), Error> {
        let path = self.blob_path(digest);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path)(e)),
        }
    }

    /// [`Store::remove`] for many digests in one blocking task: an eviction
    /// pass unlinks thousands of files, and a trip to the blocking pool per
    /// file (two thread wake-ups) costs more than the unlink. Returns the
    /// files that could not be removed, with why; the others are gone (or
    /// were already). `Err` only if the task itself did not finish.
    pub async fn remove_all(&self, digests: Vec<Digest>) -> Result<Vec<(Digest, Error)>, Error> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut failed = Vec::new();
            for digest in digests {
                let path = store.blob_path(&digest);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => failed.push((digest, Error::io("remove", &path)(e))),
                }
            }
            failed
        });
        Ok(task.await?)
    }
}

/// What a committed file hashes to now, and how long it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rehash {
    pub actual: Digest,
    pub size: u64,
}

/// Deletes everything in `tmp/`; returns how many entries it removed. Only safe
/// before the first fill starts.
fn sweep(tmp: &Path) -> Result<usize, Error> {
    let mut count = 0;
    for entry in fs::read_dir(tmp).map_err(Error::io("list", tmp))? {
        let entry = entry.map_err(Error::io("list", tmp))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(Error::io("stat", &path))?;
        // Only files are ever created here, but a stray directory must not make
        // start-up fail forever. (file_type does not follow symlinks.)
        let removed = if file_type.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(Error::io("remove leftover", &path))?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;
    use tokio::io::AsyncReadExt;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn blob_path_is_sharded_by_algorithm_and_hex_prefix() {
        let (dir, store) = store();
        let digest = Digest::sha256_of(b"hello");
        let hex = digest.hex();
        let want = dir.path().join("blobs/sha256").join(&hex[..2]).join(hex);
        assert_eq!(store.blob_path(&digest), want);
    }

    #[test]
    fn open_sweeps_leftovers_in_tmp_and_keeps_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kept = store.blob_path(&Digest::sha256_of(b"kept"));
        fs::create_dir_all(kept.parent().unwrap()).unwrap();
        fs::write(&kept, b"kept").unwrap();
        fs::write(dir.path().join("tmp/0123abcd"), b"half a fill").unwrap();
        fs::create_dir(dir.path().join("tmp/stray")).unwrap();

        Store::open(dir.path()).unwrap();

        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read(&kept).unwrap(), b"kept");
    }

    #[tokio::test]
    async fn open_blob_returns_file_and_length_or_none() {
        let (_dir, store) = store();
        let digest = Digest::sha256_of(b"content");
        assert!(store.open_blob(&digest).await.unwrap().is_none());

        store.put_small(&digest, b"content").await.unwrap();
        let (mut file, len) = store.open_blob(&digest).await.unwrap().unwrap();
        let mut read = Vec::new();
        file.read_to_end(&mut read).await.unwrap();
        assert_eq!((len, read.as_slice()), (7, &b"content"[..]));
    }

    #[tokio::test]
    async fn serving_committed_content_never_updates_its_access_time() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, store) = store();
        let digest = Digest::sha256_of(b"content");
        store.put_small(&digest, b"content").await.unwrap();
        let path = store.blob_path(&digest);
        // An access time older than the change time: `relatime` (the usual
        // mount option) updates it on the next read, strict atime on any.
        let long_ago = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 1_000_000,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 2_000_000,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &path,
            &long_ago,
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();

        let whole = store.open_blob_blocking(&digest, 1024).unwrap().unwrap();
        assert_eq!(&whole.head[..], b"content");
        let windowed = store.open_blob_blocking(&digest, 1).unwrap().unwrap();
        let mut read = String::new();
        std::io::Read::read_to_string(&mut &*windowed.file, &mut read).unwrap();
        assert_eq!(read, "content");
        let small = store.read_small_blocking(&digest, 1024).unwrap().unwrap();
        assert_eq!(&small[..], b"content");
        store.rehash_blocking(&digest).unwrap().unwrap();

        assert_eq!(fs::metadata(&path).unwrap().atime(), 1_000_000);
    }

    #[tokio::test]
    async fn read_small_reads_whole_file_and_enforces_the_limit() {
        let (_dir, store) = store();
        let manifest = br#"{"schemaVersion":2}"#;
        let digest = Digest::sha256_of(manifest);
        assert_eq!(store.read_small(&digest, 100).await.unwrap(), None);

        store.put_small(&digest, manifest).await.unwrap();
        let read = store.read_small(&digest, manifest.len()).await.unwrap();
        assert_eq!(read.as_deref(), Some(&manifest[..]));
        let err = store.read_small(&digest, 5).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooLarge {
                    size: 19,
                    max: 5,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn put_small_rejects_bytes_that_do_not_match_and_writes_nothing() {
        let (dir, store) = store();
        let digest = Digest::sha256_of(b"expected");
        let err = store.put_small(&digest, b"forged").await.unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!store.blob_path(&digest).exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn put_small_accepts_sha512_digests() {
        let (dir, store) = store();
        let digest = Digest::of(Algorithm::Sha512, b"long hash");
        store.put_small(&digest, b"long hash").await.unwrap();
        let path = store.blob_path(&digest);
        assert!(path.starts_with(dir.path().join("blobs/sha512")));
        assert_eq!(fs::read(path).unwrap(), b"long hash");
    }

    #[tokio::test]
    async fn remove_deletes_content_and_tolerates_missing() {
        let (_dir, store) = store();
        let digest = Digest::sha256_of(b"gone soon");
        store.put_small(&digest, b"gone soon").await.unwrap();
        store.remove(&digest).await.unwrap();
        assert!(!store.blob_path(&digest).exists());
        store.remove(&digest).await.unwrap();
    }

    #[tokio::test]
    async fn remove_all_deletes_every_file_and_reports_only_failures() {
        let (_dir, store) = store();
        let mut digests = Vec::new();
        for n in 0..5u8 {
            let bytes = [n; 3];
            let digest = Digest::sha256_of(&bytes);
            store.put_small(&digest, &bytes).await.unwrap();
            digests.push(digest);
        }
        // Already missing: no failure. A directory where a file should be: one.
        let missing = Digest::sha256_of(b"never stored");
        let stuck = Digest::sha256_of(b"a directory");
        let stuck_path = store.blob_path(&stuck);
        fs::create_dir_all(stuck_path.parent().unwrap()).unwrap();
        fs::create_dir(&stuck_path).unwrap();
        let mut asked = digests.clone();
        asked.extend([missing, stuck.clone()]);
        let failed = store.remove_all(asked).await.unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, stuck);
        assert!(matches!(
            failed[0].1,
            Error::Io {
                action: "remove",
                ..
            }
        ));
        for digest in &digests {
            assert!(!store.blob_path(digest).exists());
        }
        assert!(store.remove_all(Vec::new()).await.unwrap().is_empty());
    }
}

/// Opens committed content for reading without updating its access time: a
/// read must not write. With `relatime` the first read of a file after its
/// commit dirtied its inode (a journal write per blob at a million blobs read
/// once each, beside the reads); eviction keeps its own access times in the
/// index. `O_NOATIME` is refused (EPERM) on a file another user owns: then a
/// plain open.
fn open_committed(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let no_atime = rustix::fs::OFlags::NOATIME.bits() as i32;
    let mut options = fs::OpenOptions::new();
    match options.read(true).custom_flags(no_atime).open(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => fs::File::open(path),
        opened => opened,
    }
}

/// A committed blob opened for reading, with its first bytes already at hand.
#[derive(Debug)]
pub struct OpenBlob {
    pub file: Arc<std::fs::File>,
    pub len: u64,
    /// Bytes `0..head.len()` of the file: all of a small one (read), the first
    /// window of a larger one (mapped).
    pub head: Bytes,
}

impl OpenBlob {
    /// Opens `path`; reads it whole if it has at most `head` bytes (into an
    /// allocation of its own, as it may be kept in memory), else maps its first
    /// window if `head` is not 0.
    fn open(path: &Path, head: u64) -> Result<Option<Self>, Error> {
        use std::os::unix::fs::FileExt;
        let file = match open_committed(path) {
            Ok(file) => Arc::new(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", path)(e)),
        };
        let len = file.metadata().map_err(Error::io("stat", path))?.len();
        let head = if head == 0 {
            Bytes::new()
        } else if head >= len {
            let mut buf = vec![0; len as usize];
            file.read_exact_at(&mut buf, 0)
                .map_err(Error::io("read", path))?;
            Bytes::from(buf)
        } else {
            let window = len.min(mapped::WINDOW) as usize;
            mapped::window(&file, 0, window).map_err(Error::io("map", path))?
        };
        Ok(Some(Self { file, len, head }))
    }
}
