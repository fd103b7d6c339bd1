//! [`Tail`]: the rest of a fill's body once its temp file cannot be written
//! (the disk is full, or a body without `Content-Length` found no more room):
//! the fill keeps receiving the upstream body and hashing it ([`TailWriter`]),
//! and its readers, having read the file's first `origin` bytes, take the rest
//! from memory, in order. Nothing of it is cached.
//!
//! The invariants of a fill's readers hold here too, in one place
//! ([`Tail::read`]): bytes are handed out in order and without gaps; the
//! blob's last byte only once the whole body hashed to its digest; a mismatch
//! or a broken body ends every reader with an error, never a clean end. Memory
//! is bounded: the tail keeps the last [`WINDOW_BYTES`] received, and a reader
//! further behind than that fails (a client that slow must not hold the
//! upstream, nor make the others wait).
//!
//! It never touches the disk.

use std::collections::VecDeque;
use std::io;

use bytes::Bytes;
use tokio::sync::watch;

use super::Error;
use crate::oci::{Digest, Hasher};

/// Bytes a tail keeps for readers behind the newest batch.
pub(crate) const WINDOW_BYTES: u64 = 32 * 1024 * 1024;

/// The part of a fill's body that lives in memory, shared by its readers.
#[derive(Debug)]
pub(crate) struct Tail {
    window: watch::Sender<Window>,
}

#[derive(Debug)]
struct Window {
    /// Blob offset where the tail begins: bytes before it are in the file.
    origin: u64,
    /// Blob offset of the first byte still held.
    start: u64,
    chunks: VecDeque<Bytes>,
    /// Blob offset just past the last byte received.
    received: u64,
    /// The upstream's `Content-Length`, when it sent one.
    size: Option<u64>,
    /// `Ok(size)` once the body hashed to its digest; the error readers end with.
    end: Option<Result<u64, String>>,
}

/// What a reader at some offset may read next.
#[derive(Debug)]
pub(crate) enum Read {
    /// From the fill's file, up to this offset.
    File(u64),
    /// These bytes, at the reader's offset.
    Memory(Bytes),
    /// The blob is complete and verified: it is this long.
    End(u64),
}

impl Tail {
    /// A tail with nothing in memory after a complete, verified file of
    /// `size` bytes (a commit that found no room after checking the digest).
    pub(crate) fn verified(size: u64) -> std::sync::Arc<Tail> {
        let window = Window {
            origin: size,
            start: size,
            chunks: VecDeque::new(),
            received: size,
            size: Some(size),
            end: Some(Ok(size)),
        };
        std::sync::Arc::new(Tail {
            window: watch::Sender::new(window),
        })
    }

    /// Whether a reader starting at the blob's first byte can still read all
    /// of it (nothing has left the window yet).
    pub(crate) fn whole(&self) -> bool {
        let window = self.window.borrow();
        window.start == window.origin
    }

    /// Bytes received so far (file and memory).
    pub(crate) fn received(&self) -> u64 {
        self.window.borrow().received
    }

    /// What a reader at `pos` may read next, waiting until there is something.
    /// The blob's last byte waits for the digest check; a reader that fell out
    /// of the window, or a fill that failed, is an error.
    pub(crate) async fn read(&self, pos: u64) -> io::Result<Read> {
        let mut rx = self.window.subscribe();
        loop {
            if let Some(read) = rx.borrow_and_update().next_read(pos)? {
                return Ok(read);
            }
            if rx.changed().await.is_err() {
                return Err(io::Error::other(Error::FillAbandoned.to_string()));
            }
        }
    }
}

impl Window {
    fn next_read(&self, pos: u64) -> io::Result<Option<Read>> {
        let verified = match &self.end {
            Some(Err(e)) => return Err(io::Error::other(e.clone())),
            Some(Ok(size)) => Some(*size),
            None => None,
        };
        if let Some(size) = verified.filter(|&size| pos >= size) {
            return Ok(Some(Read::End(size)));
        }
        // Everything received, but the last byte only once verified.
        let readable = match (verified, self.size) {
            (Some(size), _) => size,
            (None, Some(size)) => self.received.min(size.saturating_sub(1)),
            (None, None) => self.received,
        };
        if pos >= readable {
            return Ok(None);
        }
        if pos < self.origin {
            return Ok(Some(Read::File(readable.min(self.origin))));
        }
        if pos < self.start {
            return Err(io::Error::other(format!(
                "this client fell more than {WINDOW_BYTES} bytes behind a blob passed through uncached (the disk is full)"
            )));
        }
        let mut offset = self.start;
        for chunk in &self.chunks {
            let next = offset + chunk.len() as u64;
            if pos < next {
                let from = (pos - offset) as usize;
                let to = (readable.min(next) - offset) as usize;
                return Ok(Some(Read::Memory(chunk.slice(from..to))));
            }
            offset = next;
        }
        Ok(None)
    }
}

/// The fill's side of a [`Tail`]: hashes what it receives, hands it to the
/// readers, and checks the digest at the end. Dropped unfinished (the fill
/// failed or panicked), it ends its readers with an error.
#[derive(Debug)]
pub(crate) struct TailWriter {
    tail: std::sync::Arc<Tail>,
    digest: Digest,
    hasher: Hasher,
    received: u64,
    finished: bool,
}

impl TailWriter {
    /// A tail after the `written` bytes that `hasher` has hashed (and the
    /// fill's file holds), for a body of `size` bytes when known.
    pub(crate) fn new(digest: Digest, hasher: Hasher, written: u64, size: Option<u64>) -> Self {
        let window = Window {
            origin: written,
            start: written,
            chunks: VecDeque::new(),
            received: written,
            size,
            end: None,
        };
        Self {
            tail: std::sync::Arc::new(Tail {
                window: watch::Sender::new(window),
            }),
            digest,
            hasher,
            received: written,
            finished: false,
        }
    }

    pub(crate) fn tail(&self) -> &std::sync::Arc<Tail> {
        &self.tail
    }

    /// Bytes received so far (the offset a resume asks from).
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Hashes `batch` and hands it to the readers, dropping what fell out of
    /// the window.
    pub(crate) fn put(&mut self, batch: Bytes) -> Result<(), Error> {
        self.hasher.update(&batch);
        self.received += batch.len() as u64;
        let received = self.received;
        self.tail.window.send_modify(|window| {
            if window.size.is_some_and(|size| received > size) {
                return;
            }
            window.received = received;
            window.chunks.push_back(batch);
            while window.received - window.start > WINDOW_BYTES && window.chunks.len() > 1 {
                let dropped = window.chunks.pop_front().expect("more than one chunk");
                window.start += dropped.len() as u64;
            }
        });
        if let Some(size) = self
            .tail
            .window
            .borrow()
            .size
            .filter(|&size| received > size)
        {
            return Err(Error::BadContent(format!(
                "upstream sent more than its Content-Length of {size} bytes"
            )));
        }
        Ok(())
    }

    /// Checks size (when known) and digest: the readers then get the last
    /// byte and a clean end, or else end with the error.
    pub(crate) fn verify(mut self) -> Result<u64, Error> {
        let size = self.tail.window.borrow().size;
        let actual =
            std::mem::replace(&mut self.hasher, Hasher::new(self.digest.algorithm())).finish();
        let verdict = if size.is_some_and(|size| size != self.received) {
            Err(Error::BadContent(format!(
                "upstream sent {} bytes of a {size:?}-byte blob",
                self.received
            )))
        } else if actual != self.digest {
            Err(Error::BadContent(format!(
                "upstream content for {} hashed to {actual}",
                self.digest
            )))
        } else {
            Ok(self.received)
        };
        match &verdict {
            Ok(size) => self.finish(Ok(*size)),
            Err(e) => self.finish(Err(e.to_string())),
        }
        verdict
    }

    /// Ends every reader with `error` (the fill failed).
    pub(crate) fn fail(mut self, error: &Error) {
        self.finish(Err(error.to_string()));
    }

    fn finish(&mut self, end: Result<u64, String>) {
        self.finished = true;
        self.tail
            .window
            .send_modify(|window| window.end = Some(end));
    }
}

impl Drop for TailWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(Err("the fill passing this blob through ended early".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(content: &[u8], written: usize, size: Option<u64>) -> TailWriter {
        let digest = Digest::sha256_of(content);
        let mut hasher = Hasher::new(digest.algorithm());
        hasher.update(&content[..written]);
        TailWriter::new(digest, hasher, written as u64, size)
    }

    async fn memory(tail: &Tail, pos: u64) -> Bytes {
        match tail.read(pos).await.unwrap() {
            Read::Memory(bytes) => bytes,
            other => panic!("expected memory at {pos}, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn readers_get_the_file_then_memory_and_the_last_byte_after_the_check() {
        let content = b"hello wide world";
        let mut w = writer(content, 6, Some(16));
        let tail = Arc::clone(w.tail());
        w.put(Bytes::from_static(b"wide ")).unwrap();
        w.put(Bytes::from_static(b"world")).unwrap();
        assert!(matches!(tail.read(0).await.unwrap(), Read::File(6)));
        assert_eq!(memory(&tail, 6).await, "wide ");
        // The last byte is held until the digest is checked.
        assert_eq!(memory(&tail, 11).await, "worl");
        let waiting = tokio::spawn({
            let tail = Arc::clone(&tail);
            async move { memory(&tail, 15).await }
        });
        assert_eq!(w.verify().unwrap(), 16);
        assert_eq!(waiting.await.unwrap(), "d");
        assert!(matches!(tail.read(16).await.unwrap(), Read::End(16)));
    }

    #[tokio::test]
    async fn a_body_that_does_not_hash_to_its_digest_never_ends_cleanly() {
        let content = b"hello world";
        let mut w = writer(content, 2, Some(11));
        let tail = Arc::clone(w.tail());
        w.put(Bytes::from_static(b"llo wxrld")).unwrap();
        assert_eq!(memory(&tail, 2).await, "llo wxrl");
        assert!(w.verify().is_err());
        let e = tail.read(10).await.unwrap_err();
        assert!(e.to_string().contains("hashed to"), "{e}");
    }

    #[tokio::test]
    async fn a_fill_that_stops_ends_its_readers_with_an_error() {
        let w = writer(b"abc", 1, None);
        let tail = Arc::clone(w.tail());
        drop(w);
        assert!(tail.read(1).await.is_err());
    }

    #[tokio::test]
    async fn a_reader_out_of_the_window_fails_and_newcomers_know_it() {
        let content = vec![7u8; 3 * WINDOW_BYTES as usize];
        let mut w = writer(&content, 0, None);
        let tail = Arc::clone(w.tail());
        let mb = 1024 * 1024;
        assert!(tail.whole());
        for _ in 0..(content.len() / mb) {
            w.put(Bytes::copy_from_slice(&content[..mb])).unwrap();
        }
        assert!(!tail.whole());
        assert!(tail.read(0).await.is_err());
        let recent = content.len() as u64 - WINDOW_BYTES;
        assert_eq!(memory(&tail, recent).await.len(), mb);
        assert_eq!(w.verify().unwrap(), content.len() as u64);
    }

    #[tokio::test]
    async fn a_verified_tail_reads_the_whole_file_then_ends() {
        let tail = Tail::verified(10);
        assert!(matches!(tail.read(0).await.unwrap(), Read::File(10)));
        assert!(matches!(tail.read(9).await.unwrap(), Read::File(10)));
        assert!(matches!(tail.read(10).await.unwrap(), Read::End(10)));
    }

    #[tokio::test]
    async fn more_than_the_content_length_is_an_error() {
        let mut w = writer(b"abcd", 0, Some(3));
        assert!(w.put(Bytes::from_static(b"abcd")).is_err());
    }

    use std::sync::Arc;
}
