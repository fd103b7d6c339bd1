//! The fake's fault switches ([`FakeUpstream::set_down`] and the others), the
//! listener and connections that fail while the fake is down, and blob bodies
//! with their faults (wrong bytes, cuts, pauses, throttling).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::*;

/// The fault switches.
#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) fail_status: Option<u16>,
    pub(super) wrong_bytes: HashSet<String>,
    pub(super) cut_after: HashMap<String, u64>,
    pub(super) cut_once: HashMap<String, u64>,
    pub(super) pause_after: HashMap<String, u64>,
    pub(super) throttle: Option<(usize, Duration)>,
    pub(super) hold_manifests: bool,
    pub(super) no_content_length: bool,
    pub(super) hold_blobs: HashSet<String>,
}

impl FakeUpstream {
    /// Unreachable: while down, new connections are closed at once and open
    /// ones fail on their next read or write.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        self.shared.wake();
    }

    /// Answer every request on every host with this status (e.g. 500).
    pub fn set_fail_status(&self, status: Option<u16>) {
        self.shared.state().faults.fail_status = status;
    }

    /// Hold every manifest request at the registry host until released.
    pub fn hold_manifests(&self, hold: bool) {
        self.shared.state().faults.hold_manifests = hold;
        self.shared.wake();
    }

    /// Hold every storage request (GET or HEAD) for blob `digest` before it is
    /// answered (it is recorded as seen first), until released: the fill that
    /// sent it waits for the upstream's headers meanwhile.
    pub fn hold_blob(&self, digest: &str, hold: bool) {
        {
            let mut state = self.shared.state();
            if hold {
                state.faults.hold_blobs.insert(digest.to_owned());
            } else {
                state.faults.hold_blobs.remove(digest);
            }
        }
        self.shared.wake();
    }

    /// Storage sends blob bodies without Content-Length (chunked), as some CDNs do.
    pub fn set_no_content_length(&self, on: bool) {
        self.shared.state().faults.no_content_length = on;
    }

    /// Serve `digest` (blob or manifest) with its last byte changed, same length.
    pub fn set_wrong_bytes(&self, digest: &str, on: bool) {
        let mut state = self.shared.state();
        if on {
            state.faults.wrong_bytes.insert(digest.to_owned());
        } else {
            state.faults.wrong_bytes.remove(digest);
        }
    }

    /// Cut the connection after `n` body bytes of blob `digest`.
    pub fn set_cut_after(&self, digest: &str, n: Option<u64>) {
        let mut state = self.shared.state();
        match n {
            Some(n) => state.faults.cut_after.insert(digest.to_owned(), n),
            None => state.faults.cut_after.remove(digest),
        };
    }

    /// Cut the connection at byte `n` of blob `digest` once: the first GET whose
    /// body would cross byte `n` is cut there, later ones are served whole.
    pub fn set_cut_once(&self, digest: &str, n: u64) {
        self.shared
            .state()
            .faults
            .cut_once
            .insert(digest.to_owned(), n);
    }

    /// Send `n` body bytes of blob `digest`, then wait until [`Self::resume`].
    pub fn pause_after(&self, digest: &str, n: u64) {
        self.shared
            .state()
            .faults
            .pause_after
            .insert(digest.to_owned(), n);
    }

    /// Moves the pause of blob `digest` to byte `n`: a body paused before
    /// it goes on up to there.
    pub fn move_pause(&self, digest: &str, n: u64) {
        self.pause_after(digest, n);
        self.shared.wake();
    }

    /// Lets paused bodies of `digest` continue.
    pub fn resume(&self, digest: &str) {
        self.shared.state().faults.pause_after.remove(digest);
        self.shared.wake();
    }

    /// Send blob bodies in chunks of `chunk` bytes with `delay` before each.
    pub fn set_throttle(&self, throttle: Option<(usize, Duration)>) {
        self.shared.state().faults.throttle = throttle;
    }

    /// Forgets every issued token: the next request with one gets a 401.
    pub fn revoke_tokens(&self) {
        self.shared.state().tokens.clear();
    }
}

/// Accepts connections (over TLS when configured), dropping them at once
/// while the fake is down.
pub(super) struct FakeListener {
    pub(super) local: SocketAddr,
    pub(super) shared: Arc<Shared>,
    pub(super) accepted: Accepted,
}

pub(super) enum Accepted {
    Plain(tokio::net::TcpListener),
    /// Connections whose TLS handshake succeeded, from a task that accepts
    /// and handshakes each connection on its own (a stalled or failed
    /// handshake holds up nobody else).
    Tls(tokio::sync::mpsc::Receiver<(FakeStream, SocketAddr)>),
}

/// What a connection is read from: plain TCP or TLS over it.
pub(super) trait FakeStreamIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> FakeStreamIo for T {}
pub(super) type FakeStream = Box<dyn FakeStreamIo>;

impl FakeListener {
    pub(super) fn new(
        tcp: tokio::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        shared: Arc<Shared>,
    ) -> Self {
        let local = tcp.local_addr().expect("local addr");
        let accepted = match tls {
            None => Accepted::Plain(tcp),
            Some(config) => Accepted::Tls(spawn_tls_acceptor(tcp, config)),
        };
        Self {
            local,
            shared,
            accepted,
        }
    }
}

pub(super) fn spawn_tls_acceptor(
    tcp: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio::sync::mpsc::Receiver<(FakeStream, SocketAddr)> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, addr)) = tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = acceptor.accept(stream);
                // A client that rejects our certificate ends the handshake;
                // that is the test's business, not an error here.
                if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), handshake).await
                {
                    let _ = tx.send((Box::new(tls) as FakeStream, addr)).await;
                }
            });
        }
    });
    rx
}

impl axum::serve::Listener for FakeListener {
    type Io = FakeIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (FakeIo, SocketAddr) {
        loop {
            let (stream, addr) = match &mut self.accepted {
                Accepted::Plain(tcp) => match tokio::net::TcpListener::accept(tcp).await {
                    Ok((stream, addr)) => (Box::new(stream) as FakeStream, addr),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                Accepted::Tls(rx) => match rx.recv().await {
                    Some(accepted) => accepted,
                    None => std::future::pending().await,
                },
            };
            if self.shared.down.load(Ordering::SeqCst) {
                drop(stream);
                continue;
            }
            let io = FakeIo {
                stream,
                shared: Arc::clone(&self.shared),
            };
            return (io, addr);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// A connection that fails every read and write while the fake is down.
pub(super) struct FakeIo {
    pub(super) stream: FakeStream,
    pub(super) shared: Arc<Shared>,
}

impl FakeIo {
    pub(super) fn check(&self) -> io::Result<()> {
        if self.shared.down.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "fake upstream is down",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for FakeIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for FakeIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A blob body in flight, with its faults.
pub(super) struct BodyState {
    pub(super) shared: Arc<Shared>,
    pub(super) digest: String,
    pub(super) content: Content,
    pub(super) pos: u64,
    pub(super) end: u64,
    pub(super) wrong: bool,
    pub(super) cut: Option<u64>,
    pub(super) done: bool,
}

impl BodyState {
    pub(super) async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.done || self.pos >= self.end {
            return None;
        }
        if self.cut.is_some_and(|cut| self.pos >= cut) {
            self.done = true;
            // hyper drops what it still buffers when a body fails; waiting here
            // (the body is Pending, so hyper flushes) lets every byte before the
            // cut reach the client, as on a real connection that breaks.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Some(Err(io::Error::other("fake upstream cut the body")));
        }
        // Wait while paused at this offset.
        let mut wake = self.shared.wake.subscribe();
        let pause_at = loop {
            if self.shared.down.load(Ordering::SeqCst) {
                self.done = true;
                return Some(Err(io::Error::other("fake upstream is down")));
            }
            let pause = self
                .shared
                .state()
                .faults
                .pause_after
                .get(&self.digest)
                .copied();
            match pause {
                Some(at) if self.pos >= at => {
                    if wake.changed().await.is_err() {
                        self.done = true;
                        return Some(Err(io::Error::other("fake upstream stopped")));
                    }
                }
                other => break other,
            }
        };
        let throttle = self.shared.state().faults.throttle;
        let chunk = match throttle {
            Some((chunk, delay)) => {
                tokio::time::sleep(delay).await;
                chunk
            }
            None => CHUNK,
        };
        let mut until = self.end.min(self.pos + chunk as u64);
        if let Some(cut) = self.cut {
            until = until.min(cut.max(self.pos + 1));
        }
        if let Some(at) = pause_at {
            until = until.min(at.max(self.pos + 1));
        }
        let mut data = self.content.slice(self.pos, until);
        if self.wrong && self.pos + data.len() as u64 == self.content.len() {
            data = flip_last(&data);
        }
        self.pos += data.len() as u64;
        *self
            .shared
            .state()
            .sent
            .entry(self.digest.clone())
            .or_default() += data.len() as u64;
        Some(Ok(data))
    }
}

pub(super) fn flip_last(bytes: &Bytes) -> Bytes {
    let mut v = bytes.to_vec();
    if let Some(last) = v.last_mut() {
        *last ^= 0xff;
    }
    Bytes::from(v)
}
