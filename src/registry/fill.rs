//! In-flight blob fills, keyed by digest. A fill is one upstream fetch running on
//! a detached task (resumed with `Range` requests if the upstream connection
//! breaks mid-body): it streams the upstream body into a `store::BlobWriter`
//! (which hashes as it writes) and publishes its progress on a `watch` channel.
//! Every client of that digest, the first one included, reads the growing temp
//! file up to the published length, so each goes at its own pace and a client
//! hanging up never cancels the fill.
//!
//! A fill never publishes unverified bytes as content: readers of a fill that
//! fails get an error instead of an end of stream (so their response is aborted),
//! and only a commit (digest and size checked, file renamed, row indexed) makes
//! the blob visible to later requests.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::watch;

use super::Error;
use super::passthrough::PassThrough;
use crate::oci::{Digest, RepoName};
use crate::store::ReadBuffers;

/// Bytes read per chunk from a file a fill is still writing (many readers
/// may follow one fill: each holds at most about two chunks).
pub(crate) const READ_CHUNK: u64 = 256 * 1024;
/// Bytes read per chunk from a committed file: one pooled buffer.
const COMMITTED_READ_CHUNK: u64 = crate::store::READ_BUFFER_SIZE as u64;

/// What a fill has done so far, as seen by its readers.
#[derive(Debug, Clone)]
pub(crate) enum FillState {
    /// The upstream request is in flight; nothing is known yet.
    Connecting,
    /// The upstream answered; `written` bytes are in the temp file behind `file`.
    /// `recent` holds the last bytes written (those just before `written`): a
    /// reader that has caught up takes them from memory, without reading the
    /// file (one copy and one blocking-pool trip fewer per chunk).
    Streaming {
        size: Option<u64>,
        written: u64,
        file: Arc<std::fs::File>,
        recent: Bytes,
    },
    /// Verified, renamed into the store and indexed; `file` is the same inode.
    Committed { size: u64, file: Arc<std::fs::File> },
    /// The fill failed; nothing was cached.
    Failed(Arc<FillError>),
    /// The blob is not cached (larger than the disk budget, or no room): the
    /// upstream body goes to the first reader that takes it; later readers
    /// fetch their own (see `registry::passthrough`).
    PassThrough {
        size: Option<u64>,
        body: Arc<Mutex<Option<PassThrough>>>,
    },
}

/// What a reader of a fill gets once the upstream has answered.
#[derive(Debug)]
pub(crate) enum Started {
    /// The fill's file, growing or complete.
    File(FileReader),
    /// The upstream body itself: the fill passes it through uncached.
    PassThrough(PassThrough),
    /// The fill passes through and another reader took the body.
    Taken,
}

/// Why a fill failed, kept in a form every reader can turn into its own error.
#[derive(Debug)]
pub(crate) struct FillError {
    pub(crate) not_found: bool,
    pub(crate) unavailable: bool,
    pub(crate) message: String,
    /// The upstream's answer when it refused the fetch (denied, rate limited,
    /// down): every reader answers with it as-is (`DENIED`, `TOOMANYREQUESTS`
    /// with its `Retry-After`), not as a generic failed fill.
    upstream: Option<(String, crate::upstream::Error)>,
}

impl FillError {
    pub(crate) fn from_error(e: &Error) -> Self {
        let upstream = match e {
            Error::Unavailable { upstream, source } | Error::Upstream { upstream, source } => {
                Some((upstream.clone(), source.clone()))
            }
            _ => None,
        };
        Self {
            not_found: matches!(e, Error::BlobUnknown),
            unavailable: matches!(e, Error::Unavailable { .. }),
            message: e.to_string(),
            upstream,
        }
    }

    /// The error a request that joined this fill answers with.
    pub(crate) fn to_error(&self) -> Error {
        if self.not_found {
            Error::BlobUnknown
        } else if let Some((name, source)) = &self.upstream {
            Error::from_upstream(name, source.clone(), Error::BlobUnknown)
        } else {
            Error::FillFailed {
                unavailable: self.unavailable,
                message: self.message.clone(),
            }
        }
    }
}

/// Which (upstream, repository) a fill fetches for: another repository must get
/// the upstream's confirmation before it may read the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FillOwner {
    pub(crate) upstream: usize,
    pub(crate) repo: RepoName,
}

/// One fill in progress.
#[derive(Debug)]
pub(crate) struct Fill {
    pub(crate) owner: FillOwner,
    progress: watch::Receiver<FillState>,
    /// Other repositories the upstream confirmed while this fill ran; linked by
    /// the fill once its content is indexed. `None` once it has taken them.
    joined: Mutex<Option<Vec<RepoName>>>,
}

impl Fill {
    /// Waits until the upstream has answered: the blob's size (when the upstream
    /// sent a Content-Length) and what to read, or the error to answer with.
    pub(crate) async fn wait_started(&self) -> Result<(Option<u64>, Started), Error> {
        let mut rx = self.progress.clone();
        loop {
            let started = match &*rx.borrow_and_update() {
                FillState::Connecting => None,
                FillState::Streaming { size, file, .. } => Some((*size, Arc::clone(file))),
                FillState::Committed { size, file } => Some((Some(*size), Arc::clone(file))),
                FillState::Failed(e) => return Err(e.to_error()),
                FillState::PassThrough { size, body } => {
                    let taken = body.lock().expect("pass-through lock poisoned").take();
                    let started = taken.map_or(Started::Taken, Started::PassThrough);
                    return Ok((*size, started));
                }
            };
            if let Some((size, file)) = started {
                let reader =
                    FileReader::growing(file, size.unwrap_or(u64::MAX), self.progress.clone());
                return Ok((size, Started::File(reader)));
            }
            if rx.changed().await.is_err() {
                return Err(abandoned().to_error());
            }
        }
    }

    /// Waits until the upstream has answered and returns the blob's size, if
    /// the upstream sent one. Never takes a pass-through body (unlike
    /// [`Fill::wait_started`]); `None` for a fill that failed or ended unseen.
    pub(crate) async fn wait_size(&self) -> Option<u64> {
        let mut rx = self.progress.clone();
        loop {
            match &*rx.borrow_and_update() {
                FillState::Connecting => {}
                FillState::Streaming { size, .. } | FillState::PassThrough { size, .. } => {
                    return *size;
                }
                FillState::Committed { size, .. } => return Some(*size),
                FillState::Failed(_) => return None,
            }
            rx.changed().await.ok()?;
        }
    }

    /// Records that the upstream confirmed `repo` has this blob, for the fill to
    /// link once its content is indexed. False if the fill has already indexed
    /// its content and linked its repositories: the caller links `repo` itself.
    pub(crate) fn add_joined(&self, repo: RepoName) -> bool {
        let mut joined = self.joined.lock().expect("fill lock poisoned");
        match joined.as_mut() {
            Some(repos) => {
                repos.push(repo);
                true
            }
            None => false,
        }
    }
}

fn abandoned() -> FillError {
    FillError {
        not_found: false,
        unavailable: false,
        message: "the fill ended without a result".into(),
        upstream: None,
    }
}

/// The fills in progress, owned by the `Registry` (no global state).
#[derive(Debug, Default)]
pub(crate) struct Fills {
    inflight: Mutex<HashMap<Digest, Arc<Fill>>>,
}

impl Fills {
    /// The fill of `digest` in progress, if any.
    pub(crate) fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        let inflight = self.inflight.lock().expect("fills lock poisoned");
        inflight.get(digest).cloned()
    }

    /// Joins the fill for `digest`, or registers a new one and hands its progress
    /// sender to `start`, which must spawn the detached fetch. Returns the fill and
    /// whether this call started it.
    pub(crate) fn join_or_start(
        self: &Arc<Self>,
        digest: &Digest,
        owner: FillOwner,
        start: impl FnOnce(FillGuard, watch::Sender<FillState>),
    ) -> (Arc<Fill>, bool) {
        let mut inflight = self.inflight.lock().expect("fills lock poisoned");
        if let Some(fill) = inflight.get(digest) {
            return (Arc::clone(fill), false);
        }
        let (tx, rx) = watch::channel(FillState::Connecting);
        let fill = Arc::new(Fill {
            owner,
            progress: rx,
            joined: Mutex::new(Some(Vec::new())),
        });
        inflight.insert(digest.clone(), Arc::clone(&fill));
        drop(inflight);
        let guard = FillGuard {
            fills: Arc::clone(self),
            digest: digest.clone(),
        };
        start(guard, tx);
        (fill, true)
    }
}

/// Held by a fill's task; removes the fill from the in-flight map when the task
/// ends, however it ends (even by panic), so the next request starts afresh.
#[derive(Debug)]
pub(crate) struct FillGuard {
    fills: Arc<Fills>,
    digest: Digest,
}

impl FillGuard {
    /// The repositories confirmed while the fill ran; later ones are linked by
    /// their requests (see [`Fill::add_joined`]). Call after indexing the content.
    pub(crate) fn take_joined(&self) -> Vec<RepoName> {
        let inflight = self.fills.inflight.lock().expect("fills lock poisoned");
        inflight
            .get(&self.digest)
            .and_then(|fill| fill.joined.lock().expect("fill lock poisoned").take())
            .unwrap_or_default()
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.fills.inflight.lock() {
            inflight.remove(&self.digest);
        }
    }
}

/// Reads a byte range of a file that is either complete or still being written
/// by a fill. A growing file is read up to the published length, waiting for more
/// (the blob's last byte only once the fill has committed); if the fill fails, the
/// stream ends with an error, never a clean end.
#[derive(Debug)]
pub(crate) struct FileReader {
    file: Arc<std::fs::File>,
    pos: u64,
    end: u64,
    progress: Option<watch::Receiver<FillState>>,
    /// Bytes from offset `pos` already read (by the open), sent before any read.
    prefetched: Bytes,
    /// Bytes per read: [`READ_CHUNK`] or [`COMMITTED_READ_CHUNK`].
    chunk: u64,
    /// Set when the descriptor is this reader's alone (a committed file it
    /// opened): it may then move the file offset and read into pooled buffers
    /// (see [`read_own`]).
    exclusive: Option<Arc<ReadBuffers>>,
    /// The read buffer, reused once the chunk cut from it has been sent: a fresh
    /// 256 KiB allocation per chunk cost page faults and zeroing of new pages
    /// (half the CPU of serving a warm 6 MiB blob, measured with perf).
    buffer: BytesMut,
}

impl FileReader {
    /// A committed file of `len` bytes whose first bytes, `head`, were read
    /// when it was opened.
    pub(crate) fn complete(
        file: std::fs::File,
        len: u64,
        head: Bytes,
        buffers: Arc<ReadBuffers>,
    ) -> Self {
        Self {
            file: Arc::new(file),
            pos: 0,
            end: len,
            progress: None,
            prefetched: head,
            chunk: COMMITTED_READ_CHUNK,
            exclusive: Some(buffers),
            buffer: BytesMut::new(),
        }
    }

    fn growing(file: Arc<std::fs::File>, end: u64, progress: watch::Receiver<FillState>) -> Self {
        Self {
            file,
            pos: 0,
            end,
            progress: Some(progress),
            prefetched: Bytes::new(),
            chunk: READ_CHUNK,
            exclusive: None,
            buffer: BytesMut::new(),
        }
    }

    /// Restricts the reader to bytes `start..end` (end exclusive).
    pub(crate) fn range(mut self, start: u64, end: u64) -> Self {
        let skip = start.saturating_sub(self.pos);
        self.prefetched = if skip < self.prefetched.len() as u64 && start >= self.pos {
            self.prefetched.slice(skip as usize..)
        } else {
            Bytes::new()
        };
        self.pos = start;
        self.end = end;
        self
    }

    pub(crate) fn into_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures_util::stream::unfold(self, |mut reader| async move {
            if reader.pos >= reader.end {
                return None;
            }
            match reader.next_chunk().await {
                Ok(chunk) => Some((Ok(chunk), reader)),
                Err(e) => {
                    // End the stream after the error: the response is aborted.
                    reader.end = reader.pos;
                    Some((Err(e), reader))
                }
            }
        })
    }

    async fn next_chunk(&mut self) -> io::Result<Bytes> {
        if !self.prefetched.is_empty() {
            // Read when the file was opened: no trip to the blocking pool.
            let mut chunk = std::mem::take(&mut self.prefetched);
            chunk.truncate((self.end - self.pos).min(chunk.len() as u64) as usize);
            self.pos += chunk.len() as u64;
            return Ok(chunk);
        }
        let available = match self.available().await? {
            Available::InFile(available) => available,
            Available::InMemory(mut chunk) => {
                chunk.truncate((self.end - self.pos).min(chunk.len() as u64) as usize);
                self.pos += chunk.len() as u64;
                return Ok(chunk);
            }
        };
        if self.pos >= self.end {
            return Ok(Bytes::new());
        }
        let len = (available.min(self.end) - self.pos).min(self.chunk) as usize;
        let file = Arc::clone(&self.file);
        let pos = self.pos;
        if let Some(buffers) = &self.exclusive {
            let buffers = Arc::clone(buffers);
            let chunk = tokio::task::spawn_blocking(move || read_own(&file, pos, len, &buffers))
                .await
                .map_err(io::Error::other)??;
            self.pos += chunk.len() as u64;
            return Ok(chunk);
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        // Takes the allocation back if the last chunk cut from it is gone.
        buffer.reserve(len);
        let mut buffer = tokio::task::spawn_blocking(move || {
            buffer.resize(len, 0);
            file.read_exact_at(&mut buffer, pos)?;
            Ok::<_, io::Error>(buffer)
        })
        .await
        .map_err(io::Error::other)??;
        let chunk = buffer.split().freeze();
        self.buffer = buffer;
        self.pos += chunk.len() as u64;
        Ok(chunk)
    }

    /// How many bytes of the file may be read: all of it when complete, else what
    /// the fill has published beyond `pos` (waiting until it publishes more).
    async fn available(&mut self) -> io::Result<Available> {
        let Some(rx) = &mut self.progress else {
            return Ok(Available::InFile(self.end));
        };
        let committed_size = loop {
            match &*rx.borrow_and_update() {
                FillState::Streaming {
                    written,
                    size,
                    recent,
                    ..
                } => {
                    // The blob's last byte waits for the commit: a response that
                    // reaches the end of the blob must not complete (and satisfy
                    // its Content-Length) before the digest is checked, or a bad
                    // upstream body would end cleanly instead of being aborted.
                    let readable =
                        size.map_or(*written, |size| (*written).min(size.saturating_sub(1)));
                    if readable > self.pos {
                        let recent_start = written - recent.len() as u64;
                        if (recent_start..readable).contains(&self.pos) {
                            let from = (self.pos - recent_start) as usize;
                            let to = (readable - recent_start) as usize;
                            return Ok(Available::InMemory(recent.slice(from..to)));
                        }
                        return Ok(Available::InFile(readable));
                    }
                }
                FillState::Committed { size, .. } => break *size,
                FillState::Failed(e) => return Err(io::Error::other(e.message.clone())),
                // A fill passes through before it publishes a file: no reader of
                // its file exists.
                FillState::PassThrough { .. } => {
                    return Err(io::Error::other("the fill passed its body through"));
                }
                FillState::Connecting => {}
            }
            if rx.changed().await.is_err() {
                return Err(io::Error::other(abandoned().message));
            }
        };
        // The file is complete: read it like any committed file from now on.
        self.end = self.end.min(committed_size);
        self.progress = None;
        Ok(Available::InFile(self.end))
    }
}

/// Reads `len` bytes at `pos` through the file offset of a descriptor no one
/// else reads, into a pooled buffer's spare capacity: no zeroing (which
/// `read_exact_at` needs, a tenth of the CPU of a warm 6 MiB blob under perf)
/// and no fresh pages.
fn read_own(
    file: &std::fs::File,
    pos: u64,
    len: usize,
    buffers: &Arc<ReadBuffers>,
) -> io::Result<Bytes> {
    use std::io::{Seek, SeekFrom};
    let mut file = file;
    file.seek(SeekFrom::Start(pos))?;
    buffers.read_exact(file, len)
}

/// What a reader of a fill may read next.
enum Available {
    /// The file may be read up to this offset.
    InFile(u64),
    /// The bytes at the reader's position, still in memory.
    InMemory(Bytes),
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use bytes::Bytes;
    use futures_util::TryStreamExt;

    use super::FileReader;

    /// A committed file of `len` bytes (byte i = i mod 251) whose first `head`
    /// bytes were read at open.
    fn committed(len: usize, head: usize) -> (Vec<u8>, FileReader) {
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&content).unwrap();
        let prefetched = Bytes::copy_from_slice(&content[..head]);
        let reader = FileReader::complete(file, len as u64, prefetched, Arc::default());
        (content, reader)
    }

    async fn read(reader: FileReader, start: u64, end: u64) -> Vec<u8> {
        let chunks: Vec<Bytes> = reader
            .range(start, end)
            .into_stream()
            .try_collect()
            .await
            .unwrap();
        chunks.concat()
    }

    #[tokio::test]
    async fn ranges_read_from_the_prefetched_head_and_the_file_alike() {
        let len = 3 * super::READ_CHUNK as usize + 17;
        let head = super::READ_CHUNK as usize;
        for (start, end) in [
            (0, len),
            (0, 10),
            (5, 10),
            (head - 3, head + 3),
            (head, len),
            (len - 1, len),
        ] {
            let (content, reader) = committed(len, head);
            let got = read(reader, start as u64, end as u64).await;
            assert!(got == content[start..end], "range {start}..{end}");
        }
    }
}
