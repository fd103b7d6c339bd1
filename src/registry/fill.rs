//! In-flight blob fills, keyed by digest. A fill is one upstream fetch running on
//! a detached task (resumed with `Range` requests if the upstream connection
//! breaks mid-body): it streams the upstream body into a `store::BlobWriter`
//! (which hashes as it writes) and publishes its progress on a `watch` channel.
//! Every client of that digest, the first one included, reads the growing temp
//! file up to the published length, so each goes at its own pace and a client
//! hanging up never cancels the fill. A fill whose file cannot be written
//! (the disk is full) goes on as a pass-through: its readers take the rest of
//! the body from memory (`registry::tail`), verified, not cached.
//!
//! A fill never publishes unverified bytes as content: readers of a fill that
//! fails get an error instead of an end of stream (so their response is aborted),
//! and only a commit (digest and size checked, file renamed, row indexed) makes
//! the blob visible to later requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::watch;

use super::Error;
use super::file_reader::FileReader;
use super::local::UpstreamKey;
use super::passthrough::PassThrough;
use super::tail::Tail;
use crate::metrics::histogram::{FILL_BOUNDS, Histogram, HistogramSnapshot};
use crate::oci::{Digest, RepoName};

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
    /// The temp file could not be written (the disk is full): its first bytes
    /// are still read from the (deleted) `file`, the rest from `tail` in
    /// memory, hashed and verified, never cached. Stays so after a clean end.
    Passing {
        size: Option<u64>,
        file: Arc<std::fs::File>,
        tail: Arc<Tail>,
    },
    /// The fill failed; nothing was cached. Every reader answers with this error.
    Failed(Arc<Error>),
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
    /// The fill passes through and another reader took the body (or the
    /// fill's tail no longer holds all of it): fetch another.
    Taken,
}

/// Which (upstream, repository) a fill fetches for: another repository must get
/// the upstream's confirmation before it may read the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FillOwner {
    pub(crate) upstream: UpstreamKey,
    pub(crate) repo: RepoName,
}

/// One fill in progress.
#[derive(Debug)]
pub(crate) struct Fill {
    pub(crate) owner: FillOwner,
    progress: watch::Receiver<FillState>,
    /// When the fill was registered (its duration is measured from here).
    started: Instant,
    /// Other repositories (of this or another upstream) their upstream
    /// confirmed while this fill ran; linked, each under its own upstream, by
    /// the fill once its content is indexed. `None` once it has taken them.
    joined: Mutex<Option<Vec<FillOwner>>>,
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
                // Bytes have left the tail's window: this reader cannot have
                // them all, and fetches its own (see `Started::Taken`).
                FillState::Passing { size, tail, .. } if !tail.whole() => {
                    return Ok((*size, Started::Taken));
                }
                FillState::Passing { size, file, .. } => Some((*size, Arc::clone(file))),
                FillState::Failed(e) => return Err(Error::Fill(Arc::clone(e))),
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
                return Err(Error::FillAbandoned);
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
                FillState::Streaming { size, .. }
                | FillState::Passing { size, .. }
                | FillState::PassThrough { size, .. } => {
                    return *size;
                }
                FillState::Committed { size, .. } => return Some(*size),
                FillState::Failed(_) => return None,
            }
            rx.changed().await.ok()?;
        }
    }

    /// Records that `confirmed`'s upstream confirmed its repository has this
    /// blob, for the fill to link (under that upstream) once its content is
    /// indexed. False if the fill has already indexed its content and linked
    /// its repositories: the caller links its repository itself.
    pub(crate) fn add_joined(&self, confirmed: FillOwner) -> bool {
        let mut joined = self.joined.lock().expect("fill lock poisoned");
        match joined.as_mut() {
            Some(owners) => {
                owners.push(confirmed);
                true
            }
            None => false,
        }
    }
}

/// The fills in progress, owned by the `Registry` (no global state), and what
/// they did: herd joins and the duration of each committed fill.
#[derive(Debug)]
pub(crate) struct Fills {
    inflight: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// Requests that joined a fill another request had started.
    joins: AtomicU64,
    /// Fills that could not write their file (the disk was full) and passed
    /// the rest of their body to their readers uncached.
    passed: AtomicU64,
    /// From registration to commit, of fills that committed.
    durations: Histogram,
}

impl Default for Fills {
    fn default() -> Self {
        Self {
            inflight: Mutex::default(),
            joins: AtomicU64::new(0),
            passed: AtomicU64::new(0),
            durations: Histogram::new(FILL_BOUNDS),
        }
    }
}

/// One fill in progress as the status page shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FillProgress {
    pub digest: String,
    pub upstream: String,
    pub repository: String,
    /// Bytes in the temp file so far.
    pub written: u64,
    /// The upstream's `Content-Length`, when it sent one.
    pub size: Option<u64>,
    pub seconds: f64,
}

/// The fills' counters and the fills in progress.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct FillStats {
    pub herd_joins: u64,
    /// Fills that met a full disk and passed their body through uncached.
    pub passed_disk_full: u64,
    pub durations: HistogramSnapshot,
    pub in_progress: Vec<FillProgress>,
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
            self.joins.fetch_add(1, Ordering::Relaxed);
            return (Arc::clone(fill), false);
        }
        let (tx, rx) = watch::channel(FillState::Connecting);
        let fill = Arc::new(Fill {
            owner,
            progress: rx,
            started: Instant::now(),
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

    /// Herd joins, committed fills' durations and every fill in progress
    /// (largest digest first is not promised: sorted by digest).
    pub(crate) fn stats(&self) -> FillStats {
        let inflight = self.inflight.lock().expect("fills lock poisoned");
        let mut in_progress: Vec<FillProgress> = inflight
            .iter()
            .map(|(digest, fill)| fill.progress_of(digest))
            .collect();
        drop(inflight);
        in_progress.sort_by(|a, b| a.digest.cmp(&b.digest));
        FillStats {
            herd_joins: self.joins.load(Ordering::Relaxed),
            passed_disk_full: self.passed.load(Ordering::Relaxed),
            durations: self.durations.snapshot(),
            in_progress,
        }
    }
}

impl Fill {
    fn progress_of(&self, digest: &Digest) -> FillProgress {
        let (written, size) = match &*self.progress.borrow() {
            FillState::Connecting | FillState::Failed(_) => (0, None),
            FillState::Streaming { size, written, .. } => (*written, *size),
            FillState::Committed { size, .. } => (*size, Some(*size)),
            FillState::PassThrough { size, .. } => (0, *size),
            FillState::Passing { size, tail, .. } => (tail.received(), *size),
        };
        FillProgress {
            digest: digest.to_string(),
            upstream: self.owner.upstream.name.clone(),
            repository: self.owner.repo.to_string(),
            written,
            size,
            seconds: self.started.elapsed().as_secs_f64(),
        }
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
    pub(crate) fn take_joined(&self) -> Vec<FillOwner> {
        let inflight = self.fills.inflight.lock().expect("fills lock poisoned");
        inflight
            .get(&self.digest)
            .and_then(|fill| fill.joined.lock().expect("fill lock poisoned").take())
            .unwrap_or_default()
    }
}

impl FillGuard {
    /// Counts a fill that met a full disk and passes its body through.
    pub(crate) fn passing(&self) {
        self.fills.passed.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how the fill ended, just before the guard is dropped: the
    /// duration of a fill that committed goes into the fills' histogram.
    pub(crate) fn ended(&self, committed: bool) {
        if !committed {
            return;
        }
        let inflight = self.fills.inflight.lock().expect("fills lock poisoned");
        if let Some(fill) = inflight.get(&self.digest) {
            self.fills.durations.observe(fill.started.elapsed());
        }
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.fills.inflight.lock() {
            inflight.remove(&self.digest);
        }
    }
}
