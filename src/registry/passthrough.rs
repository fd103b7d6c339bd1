//! Blobs served without caching (larger than the whole disk budget, or no room
//! left in it): the upstream body streams straight to one client, with no temp
//! file and no followers. It is hashed on the way, and when the response reaches
//! the blob's end the last chunk is held back until the digest checks out, so a
//! bad body is aborted, never completed, exactly like a fill's readers.

use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::oci::{Digest, Hasher};
use crate::upstream;

type UpstreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, upstream::Error>> + Send>>;

/// An upstream blob body on its way to one client.
pub(crate) struct PassThrough {
    body: UpstreamBody,
    digest: Digest,
    size: Option<u64>,
}

impl std::fmt::Debug for PassThrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassThrough")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl PassThrough {
    pub(crate) fn new(
        body: impl Stream<Item = Result<Bytes, upstream::Error>> + Send + 'static,
        digest: Digest,
        size: Option<u64>,
    ) -> Self {
        Self {
            body: Box::pin(body),
            digest,
            size,
        }
    }

    /// Bytes `start..end` of the blob (read from the upstream's first byte on).
    /// A range reaching the blob's end is verified against the digest.
    pub(crate) fn range(
        self,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let verify = self.size.is_none_or(|size| end >= size);
        let state = State {
            hasher: verify.then(|| Hasher::new(self.digest.algorithm())),
            body: self.body,
            digest: self.digest,
            pos: 0,
            start,
            end,
            held: None,
            finished: false,
        };
        futures_util::stream::unfold(state, |mut s| async move {
            let item = s.next_item().await?;
            Some((item, s))
        })
    }
}

struct State {
    body: UpstreamBody,
    digest: Digest,
    /// `Some` when the response reaches the end of the blob.
    hasher: Option<Hasher>,
    /// Upstream bytes read so far.
    pos: u64,
    start: u64,
    end: u64,
    /// The last chunk, sent only once the digest is checked.
    held: Option<Bytes>,
    finished: bool,
}

impl State {
    async fn next_item(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.finished {
                return None;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    if let Some(hasher) = &mut self.hasher {
                        hasher.update(&chunk);
                    }
                    let from = self.pos;
                    let to = from + chunk.len() as u64;
                    self.pos = to;
                    let (lo, hi) = (self.start.max(from), self.end.min(to));
                    let slice = if lo < hi {
                        chunk.slice((lo - from) as usize..(hi - from) as usize)
                    } else {
                        Bytes::new()
                    };
                    if self.hasher.is_none() {
                        // A partial range: nothing to verify, stop at its end.
                        self.finished = to >= self.end;
                        if !slice.is_empty() {
                            return Some(Ok(slice));
                        }
                    } else if !slice.is_empty() {
                        if let Some(previous) = self.held.replace(slice) {
                            return Some(Ok(previous));
                        }
                    }
                }
                Some(Err(e)) => {
                    self.finished = true;
                    return Some(Err(io::Error::other(e)));
                }
                None => {
                    self.finished = true;
                    let hasher = self.hasher.take()?;
                    let actual = hasher.finish();
                    if actual != self.digest {
                        tracing::warn!(expected = %self.digest, %actual, "passed-through blob did not match its digest; response aborted");
                        return Some(Err(io::Error::other(format!(
                            "upstream content for {} hashed to {actual}",
                            self.digest
                        ))));
                    }
                    return self.held.take().map(Ok);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> Vec<Result<Bytes, upstream::Error>> {
        parts.iter().map(|p| Ok(Bytes::from_static(p))).collect()
    }

    async fn collect(p: PassThrough, start: u64, end: u64) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        let stream = p.range(start, end);
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn whole_body_is_verified_and_ranges_are_cut() {
        let digest = Digest::sha256_of(b"hello world");
        let body = || futures_util::stream::iter(chunks(&[b"hello", b" ", b"world"]));
        let whole = PassThrough::new(body(), digest.clone(), Some(11));
        assert_eq!(collect(whole, 0, 11).await, (b"hello world".to_vec(), None));
        let part = PassThrough::new(body(), digest.clone(), Some(11));
        assert_eq!(collect(part, 2, 7).await, (b"llo w".to_vec(), None));
        let tail = PassThrough::new(body(), digest, Some(11));
        assert_eq!(collect(tail, 6, 11).await, (b"world".to_vec(), None));
    }

    #[tokio::test]
    async fn a_wrong_body_never_ends_cleanly_and_keeps_its_last_chunk() {
        let digest = Digest::sha256_of(b"hello world");
        let body = futures_util::stream::iter(chunks(&[b"hello", b" ", b"wxrld"]));
        let (got, err) = collect(PassThrough::new(body, digest, Some(11)), 0, 11).await;
        assert_eq!(got, b"hello ");
        assert!(err.unwrap().contains("hashed to"));
    }
}
