//! [`FileReader`]: reads a byte range of a blob file, either committed or still
//! being written by a fill. A growing file is read up to the length the fill has
//! published (the last chunks straight from the fill's memory), waiting for more;
//! the blob's last byte only once the fill has committed. If the fill fails, the
//! stream ends with an error, never a clean end: a reader must never complete a
//! response whose bytes were not verified. A fill that passes its body through
//! (the disk is full) is read from its file, then from its tail in memory.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::watch;

use super::Error;
use super::fill::FillState;
use super::tail::{Read, Tail};
use crate::store::mapped::{self, WINDOW};

/// Bytes read per chunk from a file a fill is still writing (many readers
/// may follow one fill: each holds at most about two chunks).
pub(crate) const READ_CHUNK: u64 = 256 * 1024;

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
    /// Bytes per read: [`READ_CHUNK`], or a [`WINDOW`] of a committed file.
    chunk: u64,
    /// Set for a committed file: its chunks are mapped windows, not reads
    /// (`store::mapped`).
    mapped: bool,
    /// The read buffer, reused once the chunk cut from it has been sent: a fresh
    /// 256 KiB allocation per chunk cost page faults and zeroing of new pages
    /// (half the CPU of serving a warm 6 MiB blob, measured with perf).
    buffer: BytesMut,
}

impl FileReader {
    /// A committed file of `len` bytes whose first bytes, `head`, were read
    /// or mapped when it was opened; the rest is mapped window by window.
    pub(crate) fn complete(file: Arc<std::fs::File>, len: u64, head: Bytes) -> Self {
        Self {
            file,
            pos: 0,
            end: len,
            progress: None,
            prefetched: head,
            chunk: WINDOW,
            mapped: true,
            buffer: BytesMut::new(),
        }
    }

    pub(super) fn growing(
        file: Arc<std::fs::File>,
        end: u64,
        progress: watch::Receiver<FillState>,
    ) -> Self {
        Self {
            file,
            pos: 0,
            end,
            progress: Some(progress),
            prefetched: Bytes::new(),
            chunk: READ_CHUNK,
            mapped: false,
            buffer: BytesMut::new(),
        }
    }

    /// The length of a complete file (the end of what this reader reads).
    pub(crate) fn size(&self) -> u64 {
        self.end
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
        if self.mapped {
            let chunk = tokio::task::spawn_blocking(move || mapped::window(&file, pos, len))
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
            let passing = match &*rx.borrow_and_update() {
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
                    None
                }
                FillState::Committed { size, .. } => break *size,
                FillState::Failed(e) => return Err(io::Error::other(e.to_string())),
                // A fill passes through before it publishes a file: no reader of
                // its file exists.
                FillState::PassThrough { .. } => {
                    return Err(io::Error::other("the fill passed its body through"));
                }
                FillState::Passing { tail, .. } => Some(Arc::clone(tail)),
                FillState::Connecting => None,
            };
            if let Some(tail) = passing {
                return self.available_in_tail(&tail).await;
            }
            if rx.changed().await.is_err() {
                return Err(io::Error::other(Error::FillAbandoned.to_string()));
            }
        };
        // The file is complete: read it like any committed file from now on.
        self.end = self.end.min(committed_size);
        self.progress = None;
        Ok(Available::InFile(self.end))
    }
}

impl FileReader {
    /// What a reader of a fill that passes its body through may read next:
    /// the file's bytes, then the tail's (see `registry::tail`, which holds
    /// the invariants: in order, last byte once verified, errors never a
    /// clean end).
    async fn available_in_tail(&mut self, tail: &Tail) -> io::Result<Available> {
        Ok(match tail.read(self.pos).await? {
            Read::File(limit) => Available::InFile(limit),
            Read::Memory(bytes) => Available::InMemory(bytes),
            Read::End(size) => {
                // Verified and complete: nothing left to wait for.
                self.end = self.end.min(size);
                self.progress = None;
                Available::InFile(self.end)
            }
        })
    }
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
        let reader = FileReader::complete(Arc::new(file), len as u64, prefetched);
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
