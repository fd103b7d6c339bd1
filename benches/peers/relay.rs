//! The "WAN": a TCP relay on 127.0.0.1 in front of the origin registry. It
//! counts the bytes the origin sends back (so every peer's upstream traffic is
//! measured the same way) and can pace that direction with one token bucket
//! shared by all connections, like one WAN link. It runs on its own runtime and
//! threads so that clients hashing in the bench's runtime cannot delay it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const CHUNK: usize = 64 * 1024;

#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Debug)]
struct Shared {
    origin: SocketAddr,
    /// Bytes origin → clients since the last reset.
    down_bytes: AtomicU64,
    /// Pacing rate in bytes/s; 0 = as fast as loopback goes.
    rate: AtomicU64,
    /// When the link is next free (a virtual clock: each chunk books its
    /// transmission time after the previous one).
    link_free_at: Mutex<Instant>,
}

impl Relay {
    pub fn start(origin: SocketAddr) -> Relay {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("relay")
            .enable_all()
            .build()
            .expect("relay runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("relay bind");
        let addr = listener.local_addr().expect("relay addr");
        let shared = Arc::new(Shared {
            origin,
            down_bytes: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            link_free_at: Mutex::new(Instant::now()),
        });
        runtime.spawn(accept_loop(listener, Arc::clone(&shared)));
        Relay {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Paces origin → client traffic at `mib_per_s` MiB/s (None: unshaped).
    pub fn shape(&self, mib_per_s: Option<f64>) {
        let rate = mib_per_s.map_or(0, |m| (m * 1024.0 * 1024.0) as u64);
        self.shared.rate.store(rate, Ordering::SeqCst);
        *self.shared.link_free_at.lock().unwrap() = Instant::now();
    }

    pub fn reset_bytes(&self) {
        self.shared.down_bytes.store(0, Ordering::SeqCst);
    }

    pub fn down_bytes(&self) -> u64 {
        self.shared.down_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(relay_connection(client, Arc::clone(&shared)));
    }
}

async fn relay_connection(client: TcpStream, shared: Arc<Shared>) {
    let Ok(origin) = TcpStream::connect(shared.origin).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = origin.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut origin_read, mut origin_write) = origin.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut origin_write).await;
        let _ = origin_write.shutdown().await;
    });
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match origin_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pace(&shared, n).await;
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        shared.down_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = client_write.shutdown().await;
    up.abort();
}

/// How far the link's clock may lag behind now: the bucket's depth. Timers
/// wake up to a millisecond late, far more than one 64 KiB chunk takes at
/// 200 MiB/s (0.3 ms); without this credit every oversleep would be lost and
/// the link would run at a fraction of its rate (it did: ~35 MiB/s for 200).
const BURST: Duration = Duration::from_millis(20);

/// Waits until `n` more bytes fit through the shared link (a token bucket
/// BURST deep). Deadlines are absolute, so a late wake-up is made up by the
/// following chunks and the average rate stays exact.
async fn pace(shared: &Shared, n: usize) {
    let rate = shared.rate.load(Ordering::Relaxed);
    if rate == 0 {
        return;
    }
    let now = Instant::now();
    let done_at = {
        let mut free_at = shared.link_free_at.lock().unwrap();
        let start = (*free_at).max(now.checked_sub(BURST).unwrap_or(now));
        *free_at = start + Duration::from_secs_f64(n as f64 / rate as f64);
        *free_at
    };
    if done_at > now {
        tokio::time::sleep_until(done_at).await;
    }
}
