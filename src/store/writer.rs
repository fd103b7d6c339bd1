//! `BlobWriter`: one fill in progress. It owns a temp file under `tmp/`, hashes
//! exactly the bytes it writes, and has two exits: `commit` (verify size and
//! digest, fsync, rename into `blobs/`, fsync the directory) and drop (delete the
//! temp file). It must never make content visible under `blobs/` before it has been
//! verified and made durable, and never leave a temp file behind when it fails.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::Error;
use crate::oci::{Digest, Hasher};

/// Content being written, expected to hash to a known digest.
#[derive(Debug)]
pub struct BlobWriter {
    /// `None` while a `write` is in flight and forever after one fails or is
    /// cancelled: the file may then hold bytes the hasher never saw.
    file: Option<tokio::fs::File>,
    temp: TempFile,
    target: PathBuf,
    expected: Digest,
    hasher: Hasher,
    written: u64,
}

impl BlobWriter {
    /// Wraps a freshly created temp file; `target` is where `commit` publishes it.
    pub(super) fn new(
        file: tokio::fs::File,
        temp_path: PathBuf,
        target: PathBuf,
        expected: Digest,
    ) -> Self {
        Self {
            file: Some(file),
            temp: TempFile {
                path: temp_path,
                armed: true,
            },
            target,
            hasher: Hasher::new(expected.algorithm()),
            expected,
            written: 0,
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
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let mut file = self.file.take().ok_or_else(|| self.broken())?;
        // tokio's File hands the write to a blocking thread and returns at once, so
        // hashing here overlaps with the disk write; flush waits for it to finish.
        let hasher = &mut self.hasher;
        let written = async {
            file.write_all(chunk).await?;
            hasher.update(chunk);
            file.flush().await
        };
        written.await.map_err(Error::io("write", &self.temp.path))?;
        self.written += chunk.len() as u64;
        self.file = Some(file);
        Ok(())
    }

    /// Verifies size (if given) and digest, then publishes the content under
    /// `blobs/`. Returns the size. On any failure the temp file is deleted. If the
    /// target already exists (another fill committed the same digest first), the temp
    /// file is simply dropped.
    pub async fn commit(self, expected_size: Option<u64>) -> Result<u64, Error> {
        let Self {
            file,
            temp,
            target,
            expected,
            hasher,
            written,
        } = self;
        let file = file.ok_or_else(|| Error::WriterBroken {
            path: temp.path.clone(),
        })?;
        if let Some(expected) = expected_size.filter(|&size| size != written) {
            return Err(Error::SizeMismatch {
                expected,
                actual: written,
            });
        }
        let actual = hasher.finish();
        if actual != expected {
            return Err(Error::DigestMismatch { expected, actual });
        }
        // Every write was flushed, so no operation is in flight to lose here.
        let file = file.into_std().await;
        tokio::task::spawn_blocking(move || publish(file, temp, &target)).await??;
        Ok(written)
    }

    fn broken(&self) -> Error {
        Error::WriterBroken {
            path: self.temp.path.clone(),
        }
    }
}

/// fsync the file, rename it to `target`, fsync the directory: after this returns
/// the content survives power loss, and until the rename nobody can see it there.
fn publish(file: fs::File, temp: TempFile, target: &Path) -> Result<(), Error> {
    file.sync_all().map_err(Error::io("fsync", &temp.path))?;
    drop(file);
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
            writer.write(chunk).await?;
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
        writer.write(b"aban").await.unwrap();
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

        writer.write(b"first ").await.unwrap();
        follower.read_to_end(&mut seen).unwrap();
        assert_eq!(seen, b"first ");
        assert_eq!(writer.written(), 6);

        writer.write(b"second").await.unwrap();
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
            writer.write(chunk).await.unwrap();
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
            writer.write(b"twice").await.unwrap();
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
}
