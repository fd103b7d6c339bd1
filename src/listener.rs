//! regcache's own HTTPS: a TCP listener whose connections are TLS (rustls,
//! `h2` then `http/1.1` by ALPN) before hyper sees them, and the certificate
//! behind it, re-read on `SIGHUP` and whenever its files change. A reload
//! swaps the certificate for new handshakes only: open connections carry on.
//! A new certificate that cannot be read, or whose key does not match, is
//! refused with an error in the log and the old one stays in use; at start the
//! same problem stops regcache.
//!
//! Handshakes run in their own tasks, at most `max_connections` at once and
//! each within `header_read_timeout`; connections beyond are closed at once.
//!
//! Plain HTTP goes through [`PlainListener`] (TCP_NODELAY on every connection).
//! It knows nothing of the registry API and never logs key material.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;

use crate::config::{ConnectionLimits, ServerTls};

/// How often the certificate files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Handshaken connections waiting for `accept`.
const ACCEPT_QUEUE: usize = 256;

/// The certificate in use, swapped whole on reload.
#[derive(Debug)]
pub struct Certificate {
    files: ServerTls,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificate {
    /// Loads the certificate and key; a key that does not match is an error.
    pub fn load(files: &ServerTls) -> anyhow::Result<Arc<Certificate>> {
        let key = certified_key(files)?;
        Ok(Arc::new(Certificate {
            files: files.clone(),
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Re-reads the files; on failure the certificate in use stays.
    pub fn reload(&self, why: &str) {
        match certified_key(&self.files) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                tracing::info!(cert_file = %self.files.cert_file.display(), why, "TLS certificate reloaded");
            }
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                why,
                "TLS certificate not reloaded; the previous one stays in use"
            ),
        }
    }

    /// The rustls configuration serving this certificate.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Only fails for a provider without safe protocol versions; ring has them.
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Reloads on SIGHUP and when a file's modification time or size
    /// changes, until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; reloading on file changes only");
                None
            }
        };
        let mut seen = self.stamp();
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tokio::select! {
                Some(()) = async { hangup.as_mut()?.recv().await } => self.reload("SIGHUP"),
                _ = tick.tick() => {
                    let now = self.stamp();
                    if now != seen {
                        seen = now;
                        self.reload("file changed");
                    }
                }
            }
        }
    }

    /// What a change of either file shows up in.
    fn stamp(&self) -> [Option<(SystemTime, u64)>; 2] {
        let of = |path: &Path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        };
        [of(&self.files.cert_file), of(&self.files.key_file)]
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// Reads and checks the pair: a chain, a key, and the key matching the leaf.
fn certified_key(files: &ServerTls) -> anyhow::Result<CertifiedKey> {
    let (cert_path, key_path) = (&files.cert_file, &files.key_file);
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("server.tls.cert_file {}", cert_path.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "server.tls.cert_file {}: no PEM certificate in it",
        cert_path.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("server.tls.key_file {}", key_path.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).with_context(|| {
        format!(
            "server.tls.key_file {} does not go with server.tls.cert_file {}",
            key_path.display(),
            cert_path.display()
        )
    })
}

/// The wait after a failed `accept` (out of file descriptors, mostly): from
/// 10 ms, doubling to 1 s, back to the start after a success; every failure
/// is logged.
#[derive(Debug)]
struct AcceptBackoff(Duration);

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        Self(Self::FIRST)
    }

    async fn failed(&mut self, e: &std::io::Error) {
        tracing::warn!(error = %e, retry_in = ?self.0, "accept failed");
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }

    fn succeeded(&mut self) {
        self.0 = Self::FIRST;
    }
}

/// Plain HTTP: TCP connections with `TCP_NODELAY` set.
///
/// TCP_NODELAY: a streamed body's first chunk comes from a blocking read, so
/// hyper writes the headers alone first; with Nagle on, the body then waits
/// for the client's delayed ACK (~40 ms per small blob: 424 requests/s
/// instead of 36 000 on loopback, measured with wrk).
#[derive(Debug)]
pub struct PlainListener(TcpListener, AcceptBackoff);

impl PlainListener {
    pub fn new(tcp: TcpListener) -> Self {
        Self(tcp, AcceptBackoff::new())
    }
}

impl axum::serve::Listener for PlainListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    self.1.succeeded();
                    set_nodelay(&stream);
                    return (stream, addr);
                }
                Err(e) => self.1.failed(&e).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

fn set_nodelay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// Accepts TCP connections and hands out those whose TLS handshake
/// succeeded. Each handshake runs in its own task, so a slow or failing
/// client holds up nobody else; but at most `max_connections` handshakes (and
/// handshaken connections not yet taken by `accept`) at once, each within
/// `header_read_timeout`: a connection beyond that is closed at once, so
/// clients that connect and never speak cannot pile up.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        limits: &ConnectionLimits,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, handshaken) = mpsc::channel(ACCEPT_QUEUE);
        let handshakes = Handshakes {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            timeout: limits.header_read_timeout,
        };
        let acceptor_task = tokio::spawn(accept_loop(tcp, handshakes, tx));
        Ok(Self {
            local,
            handshaken,
            acceptor_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

/// The bounds on TLS handshakes in progress.
struct Handshakes {
    acceptor: tokio_rustls::TlsAcceptor,
    /// One per connection in handshake or handshaken and waiting for `accept`.
    slots: Arc<Semaphore>,
    /// A client that has not finished its handshake by then is dropped.
    timeout: Duration,
}

async fn accept_loop(
    tcp: TcpListener,
    handshakes: Handshakes,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let mut backoff = AcceptBackoff::new();
    loop {
        let (stream, addr) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        backoff.succeeded();
        let Ok(slot) = Arc::clone(&handshakes.slots).try_acquire_owned() else {
            tracing::warn!(client = %addr, "too many TLS handshakes in progress (server.max_connections); closed");
            continue;
        };
        set_nodelay(&stream);
        let (acceptor, tx, timeout) = (handshakes.acceptor.clone(), tx.clone(), handshakes.timeout);
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, addr)).await;
                }
                Ok(Err(e)) => tracing::debug!(client = %addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(client = %addr, "TLS handshake timed out"),
            }
            drop(slot);
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends when aborted, with this listener.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
