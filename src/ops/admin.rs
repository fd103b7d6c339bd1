//! The admin socket, `<data>/admin.sock`: a Unix socket (mode 0600, never a
//! TCP port) on which a running `serve` answers operator commands with its own
//! state. `regcache gc` asks it first, so eviction goes through the server's
//! evictor: its commit guards, its memory and its usage accounting stay right.
//! `regcache pin` and `prefetch --pin` record runtime pins through it, parsed
//! with the server's own configuration ([`super::pin`]).
//! Without a server (no socket, or nobody listening) the command works on the
//! files as before. One JSON request line, one JSON answer line per connection.
//!
//! It never serves registry traffic, and trusts nothing but the socket file's
//! permissions (only the data directory's owner can connect).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::pin::{PinChange, PinEntry, Pinboard};
use crate::config::Config;
use crate::evict::{EvictReport, Evictor};

/// The socket's file name under the data directory.
pub const SOCKET_NAME: &str = "admin.sock";

/// A request line longer than this is refused (requests are a few bytes; a
/// `pin add` of a few hundred patterns a few KiB).
const MAX_REQUEST: u64 = 64 * 1024;

/// What an operator command asks the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Evict down to `to` bytes (default: the server's low watermark).
    Gc { to: Option<u64> },
    /// Every pin, configured and runtime.
    PinList,
    /// Add runtime pins (all or none).
    PinAdd {
        patterns: Vec<String>,
        origin: String,
    },
    /// Remove runtime pins (all or none).
    PinRemove { patterns: Vec<String> },
}

/// The server's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Gc(GcAnswer),
    Pins { pid: u32, pins: Vec<PinEntry> },
    PinChanges { pid: u32, changes: Vec<PinChange> },
    Error(String),
}

/// An [`EvictReport`] on the wire, with the pid of the server that evicted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcAnswer {
    pub pid: u32,
    pub usage_before: u64,
    pub usage_after: u64,
    pub target: u64,
    pub evicted: Vec<(String, u64)>,
    pub freed_bytes: u64,
    pub pinned_bytes: u64,
}

impl GcAnswer {
    fn new(report: EvictReport) -> Self {
        Self {
            pid: std::process::id(),
            usage_before: report.usage_before,
            usage_after: report.usage_after,
            target: report.target,
            evicted: report
                .evicted
                .into_iter()
                .map(|(digest, size)| (digest.to_string(), size))
                .collect(),
            freed_bytes: report.freed_bytes,
            pinned_bytes: report.pinned_bytes,
        }
    }

    /// Back to a report (digests parsed again).
    pub fn into_report(self) -> anyhow::Result<EvictReport> {
        let evicted = self
            .evicted
            .into_iter()
            .map(|(digest, size)| Ok((digest.parse().context("a digest from the server")?, size)))
            .collect::<anyhow::Result<_>>()?;
        Ok(EvictReport {
            usage_before: self.usage_before,
            usage_after: self.usage_after,
            target: self.target,
            evicted,
            freed_bytes: self.freed_bytes,
            pinned_bytes: self.pinned_bytes,
        })
    }
}

/// The server's end: listening until [`AdminSocket::close`].
#[derive(Debug)]
pub struct AdminSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl AdminSocket {
    /// Listens on `<data>/admin.sock` (a stale file from a killed server is
    /// replaced), mode 0600, answering with `evictor` and, for pins, the
    /// server's `config`.
    pub fn bind(config: &Config, evictor: Arc<Evictor>) -> anyhow::Result<Self> {
        let path = config.data_dir.join(SOCKET_NAME);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(anyhow::Error::new(e).context(format!("removing {}", path.display())));
            }
            _ => {}
        }
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        let pins = Arc::new(Pinboard::new(
            config.clone(),
            evictor.index().clone(),
            evictor.store().clone(),
        ));
        let task = tokio::spawn(accept(listener, evictor, pins));
        Ok(Self { path, task })
    }

    /// Stops answering and removes the socket file.
    pub fn close(self) {
        self.task.abort();
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the admin socket");
        }
    }
}

async fn accept(listener: UnixListener, evictor: Arc<Evictor>, pins: Arc<Pinboard>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (evictor, pins) = (Arc::clone(&evictor), Arc::clone(&pins));
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &evictor, &pins).await {
                        tracing::warn!(error = %e, "admin socket request failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request line, answers it with one line.
async fn answer(stream: UnixStream, evictor: &Evictor, pins: &Pinboard) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let answer = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Gc { to }) => {
            let target = to.unwrap_or_else(|| evictor.budget().low());
            tracing::info!(target, "gc requested on the admin socket");
            match evictor.collect_to(target).await {
                Ok(report) => Answer::Gc(GcAnswer::new(report)),
                Err(e) => Answer::Error(format!("{e:#}")),
            }
        }
        Ok(request) => super::pin::answer(pins, request).await,
        Err(e) => Answer::Error(format!("not a request: {e}")),
    };
    let mut json = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    json.push(b'\n');
    write.write_all(&json).await?;
    write.shutdown().await
}

/// Asks the server running on `data_dir`; `None` when none listens there.
pub async fn ask(data_dir: &Path, request: &Request) -> anyhow::Result<Option<Answer>> {
    let path = data_dir.join(SOCKET_NAME);
    let stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("connecting to {}", path.display())));
        }
    };
    let (read, mut write) = stream.into_split();
    let mut json = serde_json::to_vec(request)?;
    json.push(b'\n');
    write.write_all(&json).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let answer = serde_json::from_str(&line)
        .with_context(|| format!("the server's answer on {}: {line:?}", path.display()))?;
    Ok(Some(answer))
}
