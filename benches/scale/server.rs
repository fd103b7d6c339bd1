//! The real release `regcache serve` on the bench's data directory, on a
//! 127.0.0.1 port, its one upstream a closed loopback port (nothing is
//! fetched: every request the bench makes is a hit). A [`Server`] is killed
//! and waited for when dropped, also while a panic unwinds; its output goes to
//! a log file beside the data directory, printed on failure.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The binary measured: the one cargo built with the bench, unless
/// `--regcache PATH` named another (a build of another commit).
static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Measures `path` instead of the binary cargo built; call before any start.
pub fn use_binary(path: PathBuf) {
    BINARY.set(path).expect("the binary is chosen once");
}

/// The `regcache` binary every start and command runs.
pub fn binary() -> &'static Path {
    BINARY.get_or_init(|| PathBuf::from(env!("CARGO_BIN_EXE_regcache")))
}

/// A start slower than this is a failure, not a figure.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// The configuration every start uses: tags fresh for a day (no
/// revalidation), the scrub off (it would re-hash files during the hit phase),
/// a budget far above the data (eviction only when the bench asks) that
/// still fits the file system (no warning at start).
pub fn write_config(dir: &Path, data: &Path, port: u16) -> PathBuf {
    let config = format!(
        r#"[server]
listen = "127.0.0.1:{port}"

[storage]
data_dir = "{data}"
max_size = "200GB"
evict_interval = "1h"
scrub_interval = "off"

[[upstream]]
name = "registry.k8s.io"
url = "http://127.0.0.1:9"
default = true
tag_ttl = "24h"
"#,
        data = data.display()
    );
    let path = dir.join("regcache.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

/// A running `regcache serve`.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts the server and returns it with the time until `/readyz`
    /// answered 200.
    pub fn start(config: &Path, port: u16, log: &Path) -> (Server, Duration) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let started = Instant::now();
        let child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn regcache");
        let mut server = Server {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log: log.to_path_buf(),
        };
        server.wait_ready(started);
        (server, started.elapsed())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn wait_ready(&mut self, started: Instant) {
        loop {
            let child = self.child.as_mut().expect("running");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("regcache exited with {status}; log:\n{}", self.log_tail());
            }
            if ready(self.addr) {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "regcache not ready within {START_TIMEOUT:?}; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Peak resident set so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kib / 1024.0
    }

    /// SIGTERM and waits for a clean exit (access times flushed, files closed).
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(matches!(sent, Ok(s) if s.success()), "kill -TERM {pid}");
        let status = child.wait().expect("wait regcache");
        assert!(status.success(), "regcache exited with {status}");
    }

    /// `kill -9`: whatever it held in memory is lost.
    pub fn kill_9(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9 regcache");
        let _ = child.wait();
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = log.len().saturating_sub(8 * 1024);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(0);
        log[start..].to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("---- regcache log (tail) ----\n{}", self.log_tail());
            }
        }
    }
}

/// `GET /readyz` over a raw socket answers 200.
fn ready(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

/// A 127.0.0.1 port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
