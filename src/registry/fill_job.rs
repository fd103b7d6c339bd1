//! The fill task: one upstream fetch of a blob, detached from the request that
//! started it. It reserves room in the disk budget, streams the upstream body
//! into a `store::BlobWriter` in batches (hashed while written), publishes each
//! batch to the fill's readers, resumes a broken body with `Range` requests, and
//! commits (digest and size checked, file renamed, row and links indexed), or
//! fails so every reader's body is aborted. A commit whose row could not be
//! written still ends its readers' bodies complete: their bytes were verified.
//!
//! It must never publish a byte as committed before the commit, and never stop
//! because its clients are gone.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use http::Method;
use tokio::sync::watch;

use super::fill::{FillGuard, FillState};
use super::local::{Local, Published};
use super::passthrough::PassThrough;
use super::tail::{Tail, TailWriter};
use super::{Error, Route};
use crate::evict::{Admission, Reservation};
use crate::oci::{Digest, RepoName};
use crate::store;
use crate::upstream::Continuation;

/// Everything a detached fill task needs; owns clones so it outlives the request.
pub(super) struct FillJob {
    pub(super) route: Route,
    pub(super) repo: RepoName,
    pub(super) digest: Digest,
    pub(super) local: Local,
}

impl FillJob {
    pub(super) async fn run(self, guard: FillGuard, progress: watch::Sender<FillState>) {
        let state = match self.fetch(&guard, &progress).await {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(digest = %self.digest, repo = %self.repo, error = %e, "blob fill failed");
                FillState::Failed(Arc::new(e))
            }
        };
        // Out of the in-flight map first: a request arriving from now on starts
        // a new fill (after a failure) or finds the committed blob, instead of
        // joining a fill that has ended.
        guard.ended(matches!(state, FillState::Committed { .. }));
        drop(guard);
        progress.send_replace(state);
    }

    /// Streams the upstream body into the store, publishing progress, and commits.
    async fn fetch(
        &self,
        guard: &FillGuard,
        progress: &watch::Sender<FillState>,
    ) -> Result<FillState, Error> {
        if let Some(state) = self.committed_meanwhile().await? {
            return Ok(state);
        }
        let response = self
            .route
            .fetch_blob(Method::GET, &self.repo, &self.digest)
            .await?;
        let size = response.content_length();
        // Room on disk before the first byte is written (or no caching at all).
        let reservation = match self.local.reserve(size.unwrap_or(0)).await {
            Admission::Reserved(reservation) => reservation,
            refused => return Ok(self.uncached(&refused, response, size)),
        };
        let writer = match self.local.writer(self.digest.clone()).await {
            Ok(writer) => writer,
            // No room for even the temp file (ENOSPC, out of inodes).
            Err(Error::Store(e)) if e.is_out_of_space() => {
                self.disk_full(&e.to_string(), 0, size, guard);
                return Ok(self.pass_through(response, size));
            }
            Err(e) => return Err(e),
        };
        let file = Arc::new(std::fs::File::open(writer.temp_path())?);
        progress.send_replace(FillState::Streaming {
            size,
            written: 0,
            file: Arc::clone(&file),
            recent: Bytes::new(),
        });
        let mut sink = Sink::File {
            writer,
            reservation,
        };
        let streamed = self
            .stream_body(&mut sink, body_of(response), size, &file, guard, progress)
            .await;
        let (writer, reservation) = match (sink, streamed) {
            (
                Sink::File {
                    writer,
                    reservation,
                },
                Ok(()),
            ) => (writer, reservation),
            (Sink::Tail(tail), Ok(())) => {
                let size = tail.verify()?;
                tracing::info!(digest = %self.digest, repo = %self.repo, size, "blob passed through uncached (the disk was full)");
                return Ok(progress.borrow().clone());
            }
            (Sink::Tail(tail), Err(e)) => {
                // Its readers end with the fill's own error.
                tail.fail(&e);
                return Err(e);
            }
            (Sink::File { .. }, Err(e)) => return Err(e),
            (Sink::Switching, _) => unreachable!("never seen outside `put`"),
        };
        let written = writer.written();
        let published = self
            .local
            .publish_blob(&self.route.key, &self.repo, writer, size, reservation)
            .await;
        let published = match published {
            Ok(published) => published,
            // Size and digest were checked before the commit's fsync, mkdir
            // and rename: the readers get the whole (verified) file, uncached.
            Err(Error::Store(e)) if e.is_out_of_space() => {
                self.disk_full(&e.to_string(), written, size, guard);
                let tail = Tail::verified(written);
                return Ok(FillState::Passing { size, file, tail });
            }
            Err(e) => return Err(e),
        };
        let size = published.size();
        if let Published::Unindexed { .. } = published {
            // Every byte was verified: the readers get a complete body. Links
            // need the row, so the joined repositories are not recorded.
            return Ok(FillState::Committed { size, file });
        }
        for joined in guard.take_joined() {
            // Under the upstream that confirmed it, which may not be ours. The
            // content is committed: a failed link only costs a later HEAD.
            let (upstream, repo) = (&joined.upstream, &joined.repo);
            if let Err(e) = self.local.link(upstream, repo, &self.digest).await {
                tracing::warn!(digest = %self.digest, upstream = %upstream.name, %repo, error = %e, "cannot link a confirmed repository");
            }
        }
        tracing::info!(digest = %self.digest, repo = %self.repo, size, "blob cached");
        Ok(FillState::Committed { size, file })
    }

    /// The budget refused the blob (`admission`): its upstream body goes to
    /// one reader, hashed and verified, but is never written to disk.
    fn uncached(
        &self,
        admission: &Admission,
        response: crate::upstream::Response,
        size: Option<u64>,
    ) -> FillState {
        let max_size = self.local.budget().max_size();
        if matches!(admission, Admission::TooLarge) {
            tracing::info!(digest = %self.digest, repo = %self.repo, size, max_size, "blob larger than the cache budget; streaming without caching");
        } else {
            tracing::warn!(digest = %self.digest, repo = %self.repo, size, max_size, "no room in the cache budget (pinned content and fills in flight hold it); streaming without caching");
        }
        self.pass_through(response, size)
    }

    /// The upstream body goes to one reader, hashed and verified, never
    /// written to disk.
    fn pass_through(&self, response: crate::upstream::Response, size: Option<u64>) -> FillState {
        let body = PassThrough::new(response.into_stream(), self.digest.clone(), size);
        FillState::PassThrough {
            size,
            body: Arc::new(std::sync::Mutex::new(Some(body))),
        }
    }

    /// The request that started this fill found nothing cached, but another
    /// fill of the digest may have committed and left the in-flight map in
    /// between: then its file is served (if this repository is linked to it)
    /// instead of fetching the blob again.
    async fn committed_meanwhile(&self) -> Result<Option<FillState>, Error> {
        let committed = self
            .local
            .linked_file(&self.route.key, &self.repo, &self.digest)
            .await?;
        Ok(committed.map(|(size, file)| FillState::Committed { size, file }))
    }

    /// Receives the upstream body into `sink` batch by batch, resuming a body
    /// that breaks; a file that cannot take a batch (the disk is full) turns
    /// `sink` into a tail in memory and the rest goes there.
    async fn stream_body(
        &self,
        sink: &mut Sink,
        mut body: Body,
        size: Option<u64>,
        file: &Arc<std::fs::File>,
        guard: &FillGuard,
        progress: &watch::Sender<FillState>,
    ) -> Result<(), Error> {
        // Bytes of the current body already received (a resume answered 200).
        let mut skip = 0u64;
        let mut resumes = 0;
        while let Some((batch, broke)) = next_batch(&mut body, &mut skip).await {
            if !batch.is_empty() {
                self.put(sink, size, batch, file, guard, progress).await?;
            }
            let received = sink.received();
            match broke {
                None => {}
                // Every byte arrived before the break: the commit checks them.
                Some(_) if size == Some(received) => break,
                Some(e) => {
                    // The connection broke mid-body: ask for the rest; readers
                    // keep waiting on the same temp file meanwhile.
                    let resumed = self.resume(received, size, e, &mut resumes).await?;
                    body = body_of(resumed.response);
                    skip = resumed.skip;
                }
            }
        }
        Ok(())
    }

    /// Hands one batch to `sink`: to the file (and its readers), or, once the
    /// file could not take one, to the tail.
    async fn put(
        &self,
        sink: &mut Sink,
        size: Option<u64>,
        batch: Bytes,
        file: &Arc<std::fs::File>,
        guard: &FillGuard,
        progress: &watch::Sender<FillState>,
    ) -> Result<(), Error> {
        if let Sink::File {
            writer,
            reservation,
        } = sink
        {
            // A body without Content-Length reserves as it arrives, checking
            // the budget and the disk's free space each batch.
            let room = size.is_some() || reservation.grow(batch.len() as u64).await;
            let refused = if room {
                match self
                    .write_batch(writer, size, batch.clone(), progress)
                    .await
                {
                    Err(Error::Store(e)) if e.is_out_of_space() => {
                        let cause = std::error::Error::source(&e).map(ToString::to_string);
                        format!("{e}: {}", cause.unwrap_or_default())
                    }
                    done => return done,
                }
            } else {
                "no room in the budget or on the disk for more of a blob without Content-Length"
                    .to_owned()
            };
            let file_sink = std::mem::replace(sink, Sink::Switching);
            *sink = Sink::Tail(self.pass_on(file_sink, size, &refused, file, guard, progress));
        }
        match sink {
            Sink::Tail(tail) => tail.put(batch),
            _ => unreachable!("the sink is a tail once the file refused a batch"),
        }
    }

    /// The temp file cannot take more (`why`): it is deleted and its
    /// reservation released, its readers go on from a tail in memory (hashed,
    /// verified at the end, not cached), and an eviction pass makes room so
    /// that the next request for the blob can cache it.
    fn pass_on(
        &self,
        sink: Sink,
        size: Option<u64>,
        why: &str,
        file: &Arc<std::fs::File>,
        guard: &FillGuard,
        progress: &watch::Sender<FillState>,
    ) -> TailWriter {
        let Sink::File {
            writer,
            reservation,
        } = sink
        else {
            unreachable!("only a file sink passes on");
        };
        let (hasher, written) = writer.abandon();
        drop(reservation);
        self.disk_full(why, written, size, guard);
        let tail = TailWriter::new(self.digest.clone(), hasher, written, size);
        progress.send_replace(FillState::Passing {
            size,
            file: Arc::clone(file),
            tail: Arc::clone(tail.tail()),
        });
        tail
    }

    /// The disk could not take the blob (`why`) after `written` bytes: logged
    /// with the free space, counted, and an eviction pass makes room so that
    /// the next request can cache it.
    fn disk_full(&self, why: &str, written: u64, size: Option<u64>, guard: &FillGuard) {
        tracing::warn!(
            digest = %self.digest,
            repo = %self.repo,
            written,
            size,
            available = self.local.disk_available(),
            error = %why,
            "cannot write more of a blob (the disk is full); passing the rest to its readers uncached"
        );
        guard.passing();
        self.local
            .make_room_on_disk(size.unwrap_or(written).max(written));
    }

    /// Writes one batch of body bytes to the temp file and publishes the new
    /// length to the fill's readers.
    async fn write_batch(
        &self,
        writer: &mut store::BlobWriter,
        size: Option<u64>,
        batch: Bytes,
        progress: &watch::Sender<FillState>,
    ) -> Result<(), Error> {
        writer.write(batch.clone()).await?;
        let written = writer.written();
        if size.is_some_and(|size| written > size) {
            return Err(Error::BadContent(format!(
                "upstream sent more than its Content-Length of {size:?} bytes"
            )));
        }
        progress.send_modify(|state| {
            if let FillState::Streaming {
                written: w, recent, ..
            } = state
            {
                *w = written;
                *recent = batch;
            }
        });
        Ok(())
    }

    /// The upstream body broke after `written` bytes (`error`): asks for the
    /// rest (see [`crate::upstream::Upstream::resume_blob`]) after a short
    /// backoff, while fewer than [`RESUME_BACKOFF`]`.len()` resumes were tried
    /// for this fill; an upstream that is unavailable meanwhile is tried again.
    /// An answer that cannot be a continuation, a 404 or a denial ends the
    /// fill at once.
    async fn resume(
        &self,
        written: u64,
        size: Option<u64>,
        mut error: crate::upstream::Error,
        resumes: &mut usize,
    ) -> Result<Continuation, Error> {
        let fail = |e| Error::from_upstream(self.route.name(), e, Error::BlobUnknown);
        while let Some(backoff) = RESUME_BACKOFF.get(*resumes) {
            *resumes += 1;
            tracing::info!(digest = %self.digest, repo = %self.repo, offset = written, attempt = *resumes, error = %error, "upstream blob body broke; resuming with a Range request");
            tokio::time::sleep(*backoff).await;
            match self
                .route
                .client
                .resume_blob(&self.repo, &self.digest, written, size)
                .await
            {
                Ok(continuation) => return Ok(continuation),
                Err(e) if e.is_unavailable() => error = e,
                Err(e) => return Err(fail(e)),
            }
        }
        Err(fail(error))
    }
}

/// Where a fill's body goes: its temp file (with the budget's reservation),
/// or, once the file cannot take more, a tail in memory for its readers.
enum Sink {
    File {
        writer: store::BlobWriter,
        reservation: Reservation,
    },
    Tail(TailWriter),
    /// Only while `put` moves the file sink into a tail.
    Switching,
}

impl Sink {
    /// Bytes of the body received so far.
    fn received(&self) -> u64 {
        match self {
            Self::File { writer, .. } => writer.written(),
            Self::Tail(tail) => tail.received(),
            Self::Switching => unreachable!("never seen outside `put`"),
        }
    }
}

/// A batch of body bytes grows to at most this size before it is written.
/// hyper hands over a chunk per socket read (often 16 KiB or less): one write,
/// one trip to the blocking pool and one wake-up of every reader per chunk made
/// a cold pull about 3× slower than a direct one. The cap bounds the memory a
/// batch holds (readers that caught up are handed slices of it).
const BATCH_BYTES: usize = 1024 * 1024;

type Body = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, crate::upstream::Error>> + Send>>;

fn body_of(response: crate::upstream::Response) -> Body {
    // Fused: `next_batch` may poll again after the body has ended.
    Box::pin(response.into_stream().fuse())
}

/// The next batch of body bytes: waits for one chunk, then joins the chunks
/// already received behind it, up to [`BATCH_BYTES`]; a body that trickles is
/// still written chunk by chunk, so readers never wait for a batch to fill.
/// The first `skip` bytes (already written before a resume that answered 200)
/// are dropped. `None` at the end of the body; an error comes with the bytes
/// received before it.
async fn next_batch(
    body: &mut Body,
    skip: &mut u64,
) -> Option<(Bytes, Option<crate::upstream::Error>)> {
    let mut item = Some(body.next().await?);
    let mut chunks = Vec::new();
    let mut len = 0;
    let mut broke = None;
    while let Some(next) = item.take() {
        match next {
            Ok(chunk) => {
                let n = (*skip).min(chunk.len() as u64);
                *skip -= n;
                if n < chunk.len() as u64 {
                    len += chunk.len() - n as usize;
                    chunks.push(chunk.slice(n as usize..));
                }
            }
            Err(e) => {
                broke = Some(e);
                break;
            }
        }
        if len >= BATCH_BYTES {
            break;
        }
        item = body.next().now_or_never().flatten();
    }
    // Always a copy, even of a single chunk: readers hold the batch (and hyper
    // queues it on their sockets), and a chunk is a slice of hyper's whole read
    // buffer, which it would keep alive. With 50 readers of a trickling body
    // that pinned buffers added up to a peak RSS over 100 MiB.
    Some((Bytes::from(chunks.concat()), broke))
}

/// Pauses before each resume of a broken upstream body; its length is how many
/// resumes one fill may try before it fails.
const RESUME_BACKOFF: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(400),
    std::time::Duration::from_secs(1),
];

#[cfg(test)]
mod tests {
    use super::{BATCH_BYTES, Body, next_batch};
    use bytes::Bytes;

    fn body(items: Vec<Result<Bytes, crate::upstream::Error>>) -> Body {
        use futures_util::StreamExt;
        Box::pin(futures_util::stream::iter(items).fuse())
    }

    fn chunk(byte: u8, len: usize) -> Result<Bytes, crate::upstream::Error> {
        Ok(Bytes::from(vec![byte; len]))
    }

    #[tokio::test]
    async fn chunks_received_together_are_written_as_one_batch() {
        let mut body = body(vec![chunk(1, 10), chunk(2, 20), chunk(3, 30)]);
        let mut skip = 0;
        let (batch, broke) = next_batch(&mut body, &mut skip).await.unwrap();
        assert!(broke.is_none());
        let mut want = vec![1; 10];
        want.extend([2; 20]);
        want.extend([3; 30]);
        assert_eq!(batch, want);
        assert!(next_batch(&mut body, &mut skip).await.is_none());
        // Polling the ended body again is still the end.
        assert!(next_batch(&mut body, &mut skip).await.is_none());
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_byte_cap() {
        let mut body = body(vec![chunk(1, BATCH_BYTES), chunk(2, 5)]);
        let mut skip = 0;
        let (first, _) = next_batch(&mut body, &mut skip).await.unwrap();
        assert_eq!(first.len(), BATCH_BYTES);
        let (second, _) = next_batch(&mut body, &mut skip).await.unwrap();
        assert_eq!(second, vec![2; 5]);
    }

    #[tokio::test]
    async fn the_skipped_prefix_spans_chunks_and_an_error_keeps_the_bytes_before_it() {
        let broken = Err(crate::upstream::Error::Protocol("cut".into()));
        let mut body = body(vec![chunk(1, 4), chunk(2, 4), broken, chunk(3, 4)]);
        let mut skip = 6;
        let (batch, broke) = next_batch(&mut body, &mut skip).await.unwrap();
        assert_eq!(skip, 0);
        assert_eq!(batch, vec![2; 2]);
        assert!(broke.is_some());
    }
}
