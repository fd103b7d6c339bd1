//! [`Regcache`]: the real `regcache` binary, started with `serve` on
//! `127.0.0.1:0` and a temporary data directory, killed when the handle drops.
//! Its log is kept and printed when the test panics, so a failure shows what the
//! server did. It never starts anything but the binary under test.

use super::failure;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// How long start-up may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for starting regcache; build with [`Regcache::builder`].
#[derive(Debug, Default, Clone)]
pub struct Builder {
    upstream: Option<String>,
    config: Option<String>,
    data_dir: Option<PathBuf>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Builder {
    /// `--upstream URL`: replaces the default upstream's URL.
    pub fn upstream(mut self, url: impl Into<String>) -> Self {
        self.upstream = Some(url.into());
        self
    }

    /// A whole config.toml text, written to a file and passed with `--config`.
    pub fn config_toml(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }

    /// Use this data directory instead of a fresh temporary one (to restart on
    /// the same cache).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    #[allow(dead_code)] // for tests that pass extra flags
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn start(self) -> Regcache {
        Regcache::start(self)
    }
}

/// A running regcache process.
#[derive(Debug)]
pub struct Regcache {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    data_dir: PathBuf,
    /// Keeps the temporary data directory (and config file) alive; None when
    /// the caller supplied the data directory.
    _temp: Option<tempfile::TempDir>,
    builder: Builder,
}

impl Regcache {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Regcache on the embedded default configuration with `--upstream url`.
    pub fn with_upstream(url: impl Into<String>) -> Regcache {
        Self::builder().upstream(url).start()
    }

    fn start(builder: Builder) -> Regcache {
        failure::remember_panic_messages();
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = builder
            .data_dir
            .clone()
            .unwrap_or_else(|| temp.path().join("data"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcache"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(&data_dir);
        if let Some(text) = &builder.config {
            let path = temp.path().join("config.toml");
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(path);
        }
        if let Some(url) = &builder.upstream {
            cmd.arg("--upstream").arg(url);
        }
        cmd.args(&builder.extra_args)
            .envs(builder.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "regcache=debug,info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn regcache");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        collect_output(child.stdout.take().expect("stdout"), &log, None);
        collect_output(child.stderr.take().expect("stderr"), &log, Some(addr_tx));
        let Ok(addr) = addr_rx.recv_timeout(START_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "regcache did not report its address within {START_TIMEOUT:?}; log:\n{}",
                log.lock().unwrap()
            );
        };
        Regcache {
            child,
            addr,
            log,
            data_dir,
            _temp: Some(temp),
            builder,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, the form registries.conf and hosts.toml mirror entries use.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id (to read `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle` (the access log line of a response is
    /// written when its body ends, which may be just after the client has read
    /// it), and returns the log; panics with the log after 10 s.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill (SIGKILL) and start again with the same options and data directory.
    /// The new process listens on a new port.
    pub fn restart(&mut self) {
        self.stop();
        let builder = self.builder.clone().data_dir(self.data_dir.clone());
        let temp = self._temp.take();
        let mut next = Regcache::start(builder);
        // Keep the original temporary directory (it holds the data) alive.
        next._temp = temp;
        std::mem::swap(self, &mut next);
        // `next` is now the stopped old process; its Drop is a no-op kill.
    }

    /// Kill the process and wait for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Regcache {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            failure::report(&format!("regcache {}", self.addr), &self.log(), "");
        }
    }
}

/// Copies a child's output into `log`; on stderr, reports the address from the
/// start-up line (`... listening addr=127.0.0.1:PORT`).
fn collect_output(
    stream: impl std::io::Read + Send + 'static,
    log: &Arc<Mutex<String>>,
    addr_tx: Option<mpsc::Sender<SocketAddr>>,
) {
    let log = Arc::clone(log);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &addr_tx {
                if let Some(addr) = listening_addr(&line) {
                    let _ = tx.send(addr);
                }
            }
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    let rest = &line[line.find("addr=")? + "addr=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}
