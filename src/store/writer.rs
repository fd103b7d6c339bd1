//! `BlobWriter`: one fill in progress. It owns a temp file under `tmp/`, hashes
//! exactly the bytes it writes, and has two exits: `commit` (verify size and
//! digest, fsync, rename into `blobs/`, fsync the directory) and drop (delete the
//! temp file). It must never make content visible under `blobs/` before it has been
//! verified and made durable, and never leave a temp file behind when it fails.
//!
//! While a large blob is written, the writer starts a background `fdatasync`
//! every [`WRITEBACK_EVERY`] bytes, so the disk writes overlap the download and the
//! fsync in `commit` (which clients wait for: a blob's last byte is held until
//! it) only has the tail left. An error from any of those syncs fails the commit.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::task::JoinHandle;

use super::Error;
use crate::oci::{Digest, Hasher};

/// Bytes written between two background writebacks. Measured on a 1 GiB cold
/// pull: without them the final fsync alone took about 1.9 s (BENCHMARKS.md).
const WRITEBACK_EVERY: u64 = 32 * 1024 * 1024;

/// Content being written, expected to hash to a known digest.
#[derive(Debug)]
pub struct BlobWriter {
    /// `None` while a `write` is in flight and forever after one fails or is
    /// cancelled: the file may then hold bytes the hasher never saw.
    file: Option<Arc<fs::File>>,
    temp: TempFile,
    target: PathBuf,
    expected: Digest,
    hasher: Hasher,
    written: u64,
    /// Bytes written since the last background writeback started.
    unsynced: u64,
    writeback: Option<JoinHandle<io::Result<()>>>,
    /// The first error a background writeback reported; `commit` fails with it.
    writeback_error: Option<io::Error>,
}

impl BlobWriter {
    /// Wraps a freshly created temp file; `target` is where `commit` publishes it.
    pub(super) fn new(
        file: fs::File,
        temp_path: PathBuf,
        target: PathBuf,
        expected: Digest,
    ) -> Self {
        Self {
            file: Some(Arc::new(file)),
            temp: TempFile {
                path: temp_path,
                armed: true,
            },
            target,
            hasher: Hasher::new(expected.algorithm()),
            expected,
            written: 0,
            unsynced: 0,
            writeback: None,
            writeback_error: None,
        }
    }

    /// Path of the temp file; followers of a fill open it and read what has been
    /// written so far.
    pub fn temp_path(&self) -> &Path {
        &self.temp.path
    }

    /// The digest the content must hash to.
    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// Bytes written (and hashed) so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends a chunk to the temp file and feeds it to the hasher. When this returns
    /// the bytes are in the kernel, so another descriptor on the temp file reads them.
    /// Not cancel-safe by design: if this future is dropped, the writer is broken.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), Error> {
        let file = self.file.take().ok_or_else(|| self.broken())?;
        let len = chunk.len() as u64;
        // The write runs on a blocking thread while this one hashes the same
        // bytes, into a copy of the hasher kept only if the write succeeds: the
        // hasher always covers exactly `written` bytes (see `abandon`).
        let writing = {
            let file = Arc::clone(&file);
            let chunk = chunk.clone();
            tokio::task::spawn_blocking(move || (&*file).write_all(&chunk))
        };
        let mut hasher = self.hasher.clone();
        hasher.update(&chunk);
        writing
            .await
            .map_err(io::Error::other)
            .and_then(|written| written)
            .map_err(Error::io("write", &self.temp.path))?;
        self.hasher = hasher;
        self.written += len;
        self.unsynced += len;
        self.start_writeback_if_due(&file);
        self.file = Some(file);
        Ok(())
    }

    /// Starts a background `fdatasync` once [`WRITEBACK_EVERY`] bytes were written
    /// since the last one, unless one is still running.
    fn start_writeback_if_due(&mut self, file: &Arc<fs::File>) {
        if self.unsynced < WRITEBACK_EVERY {
            return;
        }
        if let Some(mut running) = self.writeback.take() {
            // `unconstrained`: in a long write loop tokio's cooperative budget
            // can run out, and a plain poll of even a finished task then says
            // Pending, which was taken for a failed writeback (the commit then
            // failed as "cannot fsync"). Not ready: look again next batch.
            match tokio::task::unconstrained(&mut running).now_or_never() {
                Some(done) => self.note_writeback(done),
                None => {
                    self.writeback = Some(running);
                    return;
                }
            }
        }
        self.unsynced = 0;
        let file = Arc::clone(file);
        self.writeback = Some(tokio::task::spawn_blocking(move || file.sync_data()));
    }

    fn note_writeback(&mut self, done: Result<io::Result<()>, tokio::task::JoinError>) {
        let error = match done {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(e) => io::Error::other(e),
        };
        self.writeback_error.get_or_insert(error);
    }

    /// Verifies size (if given) and digest, then publishes the content under
    /// `blobs/`. Returns the size. On any failure the temp file is deleted. If the
    /// target already exists (another fill committed the same digest first), the temp
    /// file is simply dropped.
    pub async fn commit(mut self, expected_size: Option<u64>) -> Result<u64, Error> {
        let file = self.file.take().ok_or_else(|| self.broken())?;
        if let Some(expected) = expected_size.filter(|&size| size != self.written) {
            return Err(Error::SizeMismatch {
                expected,
                actual: self.written,
            });
        }
        let actual =
            std::mem::replace(&mut self.hasher, Hasher::new(self.expected.algorithm())).finish();
        if actual != self.expected {
            return Err(Error::DigestMismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        if let Some(running) = self.writeback.take() {
            let done = running.await;
            self.note_writeback(done);
        }
        if let Some(e) = self.writeback_error.take() {
            return Err(Error::io("fsync", &self.temp.path)(e));
        }
        let Self {
            temp,
            target,
            written,
            ..
        } = self;
        tokio::task::spawn_blocking(move || publish(&file, temp, &target))
            .await
            .map_err(|e| Error::io("publish", Path::new("tmp"))(io::Error::other(e)))??;
        Ok(written)
    }

    /// Gives the temp file up (it is deleted here; descriptors opened on it
    /// still read what was written) and returns the hash of the `written`
    /// bytes, for a caller that goes on hashing the rest without a disk. Valid
    /// after a failed write too: a write's bytes are hashed only once written.
    pub fn abandon(self) -> (Hasher, u64) {
        let Self {
            hasher, written, ..
        } = self;
        (hasher, written)
    }

    fn broken(&self) -> Error {
        Error::WriterBroken {
            path: self.temp.path.clone(),
        }
    }
}

/// fsync the file, rename it to `target`, fsync the directory: after this returns
/// the content survives power loss, and until the rename nobody can see it there.
fn publish(file: &fs::File, temp: TempFile, target: &Path) -> Result<(), Error> {
    file.sync_all().map_err(Error::io("fsync", &temp.path))?;
    let shard = target.parent().unwrap_or(target);
    ensure_durable_dir(shard)?;
    let exists = target.try_exists().map_err(Error::io("stat", target))?;
    if exists {
        // Content-addressed: the committed file already holds these exact bytes.
        return Ok(());
    }
    fs::rename(&temp.path, target).map_err(Error::io("rename into place", target))?;
    temp.disarm();
    sync_dir(shard)
}

/// Creates the shard directory (`blobs/<alg>/<2 hex>`) if missing, and fsyncs the
/// two directories above it so the new entries are as durable as the file renamed
/// into it (`blobs/` itself was made by `Store::open`).
fn ensure_durable_dir(shard: &Path) -> Result<(), Error> {
    if shard.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(shard).map_err(Error::io("create directory", shard))?;
    for parent in shard.ancestors().skip(1).take(2) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// fsync a directory, which makes the names created or renamed in it durable.
fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync directory", dir))
}

/// The temp file's path, deleted on drop unless `disarm`ed by a successful rename.
/// It lives inside `BlobWriter` so that every exit (error, panic, cancellation,
/// drop without commit) removes the file, including inside `spawn_blocking`.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// The file was renamed away: there is nothing left to delete.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // A quick unlink: fine to do synchronously even on a runtime thread.
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot delete temp file")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::oci::Algorithm;
    use crate::store::Store;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn tmp_is_empty(dir: &tempfile::TempDir) -> bool {
        fs::read_dir(dir.path().join("tmp")).unwrap().count() == 0
    }

    /// Writes `chunks` into a writer expecting `expected` and commits it.
    async fn fill(
        store: &Store,
        expected: Digest,
        chunks: &[&[u8]],
        size: Option<u64>,
    ) -> Result<u64, Error> {
        let mut writer = store.writer(expected).await?;
        for chunk in chunks {
            writer.write(Bytes::copy_from_slice(chunk)).await?;
        }
        writer.commit(size).await
    }

    #[tokio::test]
    async fn commit_publishes_verified_content_at_blob_path() {
        let (dir, store) = store();
        let digest = Digest::sha256_of(b"hello world");
        let size = fill(&store, digest.clone(), &[b"hello ", b"world"], Some(11)).await;
        assert_eq!(size.unwrap(), 11);
        assert_eq!(fs::read(store.blob_path(&digest)).unwrap(), b"hello world");
        assert!(tmp_is_empty(&dir));
    }

    #[tokio::test]
    async fn digest_mismatch_deletes_temp_and_publishes_nothing() {
        let (dir, store) = store();
        let digest = Digest::sha256_of(b"the real thing");
        let err = fill(&store, digest.clone(), &[b"a forgery"], None)
            .await
            .unwrap_err();
        match err {
            Error::DigestMismatch { expected, actual } => {
                assert_eq!(expected, digest);
                assert_eq!(actual, Digest::sha256_of(b"a forgery"));
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(!store.blob_path(&digest).exists());
        assert!(tmp_is_empty(&dir));
    }

    #[tokio::test]
    async fn size_mismatch_deletes_temp_and_publishes_nothing() {
        let (dir, store) = store();
        let digest = Digest::sha256_of(b"twelve bytes");
        let err = fill(&store, digest.clone(), &[b"twelve bytes"], Some(13))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::SizeMismatch {
                    expected: 13,
                    actual: 12
                }
            ),
            "{err}"
        );
        assert!(!store.blob_path(&digest).exists());
        assert!(tmp_is_empty(&dir));
    }

    #[tokio::test]
    async fn drop_without_commit_deletes_temp() {
        let (dir, store) = store();
        let mut writer = store.writer(Digest::sha256_of(b"abandoned")).await.unwrap();
        writer.write(Bytes::from_static(b"aban")).await.unwrap();
        let temp = writer.temp_path().to_path_buf();
        assert!(temp.exists());
        drop(writer);
        assert!(!temp.exists());
        assert!(tmp_is_empty(&dir));
    }

    #[tokio::test]
    async fn readers_of_the_temp_file_see_each_write_when_it_returns() {
        let (_dir, store) = store();
        let mut writer = store
            .writer(Digest::sha256_of(b"first second"))
            .await
            .unwrap();
        let mut follower = fs::File::open(writer.temp_path()).unwrap();
        let mut seen = Vec::new();

        writer.write(Bytes::from_static(b"first ")).await.unwrap();
        follower.read_to_end(&mut seen).unwrap();
        assert_eq!(seen, b"first ");
        assert_eq!(writer.written(), 6);

        writer.write(Bytes::from_static(b"second")).await.unwrap();
        follower.read_to_end(&mut seen).unwrap();
        assert_eq!(seen, b"first second");
    }

    #[tokio::test]
    async fn follower_fd_on_temp_keeps_reading_after_commit_renames_it() {
        let (_dir, store) = store();
        let content = vec![7u8; 3 * 1024 * 1024];
        let digest = Digest::sha256_of(&content);
        let mut writer = store.writer(digest.clone()).await.unwrap();
        let mut follower = fs::File::open(writer.temp_path()).unwrap();
        for chunk in content.chunks(1024 * 1024) {
            writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        writer.commit(Some(content.len() as u64)).await.unwrap();

        // Linux rename keeps the inode: the open descriptor still reads everything.
        let mut seen = Vec::new();
        follower.read_to_end(&mut seen).unwrap();
        assert!(seen == content);
        assert!(fs::read(store.blob_path(&digest)).unwrap() == content);
    }

    #[tokio::test]
    async fn sha512_content_commits_under_its_algorithm() {
        let (dir, store) = store();
        let digest = Digest::of(Algorithm::Sha512, b"sha512 bytes");
        fill(&store, digest.clone(), &[b"sha512 ", b"bytes"], Some(12))
            .await
            .unwrap();
        let path = store.blob_path(&digest);
        assert!(path.starts_with(dir.path().join("blobs/sha512")));
        assert_eq!(fs::read(path).unwrap(), b"sha512 bytes");
    }

    #[tokio::test]
    async fn second_commit_of_same_digest_keeps_first_and_drops_temp() {
        let (dir, store) = store();
        let digest = Digest::sha256_of(b"twice");
        let first = store.writer(digest.clone()).await.unwrap();
        let second = store.writer(digest.clone()).await.unwrap();
        for mut writer in [first, second] {
            writer.write(Bytes::from_static(b"twice")).await.unwrap();
            assert_eq!(writer.commit(Some(5)).await.unwrap(), 5);
        }
        assert_eq!(fs::read(store.blob_path(&digest)).unwrap(), b"twice");
        assert!(tmp_is_empty(&dir));
    }

    #[tokio::test]
    async fn empty_content_commits() {
        let (_dir, store) = store();
        let digest = Digest::sha256_of(b"");
        assert_eq!(fill(&store, digest.clone(), &[], Some(0)).await.unwrap(), 0);
        assert_eq!(fs::read(store.blob_path(&digest)).unwrap(), b"");
    }

    #[tokio::test]
    async fn content_past_several_writebacks_commits_whole() {
        let (dir, store) = store();
        let content: Vec<u8> = (0..(2 * WRITEBACK_EVERY + 12345))
            .map(|i| (i % 253) as u8)
            .collect();
        let digest = Digest::sha256_of(&content);
        let mut writer = store.writer(digest.clone()).await.unwrap();
        for chunk in content.chunks(1024 * 1024) {
            writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert!(
            writer.writeback.is_some(),
            "no background writeback started"
        );
        let size = writer.commit(Some(content.len() as u64)).await.unwrap();
        assert_eq!(size, content.len() as u64);
        assert!(fs::read(store.blob_path(&digest)).unwrap() == content);
        assert!(tmp_is_empty(&dir));
    }
}
