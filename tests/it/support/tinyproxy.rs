//! [`Tinyproxy`]: Debian's tinyproxy as the corporate forward proxy, started in
//! the foreground on a 127.0.0.1 port with a generated configuration that
//! allows `CONNECT` only to the given hosts and ports (a default-deny filter),
//! stopped (SIGTERM, then SIGKILL) and waited for when the handle drops. Its
//! log is kept, printed if the test panics, and searchable (`CONNECT` lines).
//!
//! tinyproxy's filter matches the request's host name only, never its port
//! (`FilterURLs` would match URLs, but only for plain HTTP), so hosts that
//! must be told apart need their own addresses; ports are limited with
//! `ConnectPort`. It never listens on anything but loopback.

use super::failure;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::process::{collect, free_port, terminate};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running tinyproxy.
#[derive(Debug)]
pub struct Tinyproxy {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
    conf: String,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Starts tinyproxy allowing `CONNECT` (and plain requests) only to the
    /// hosts in `allowed` (`host:port`; the host by exact match, the port by
    /// `ConnectPort`).
    pub fn start(allowed: &[String]) -> Tinyproxy {
        let ports: Vec<u16> = allowed
            .iter()
            .filter_map(|hp| hp.rsplit_once(':')?.1.parse().ok())
            .collect();
        Self::start_with_ports(allowed, &ports)
    }

    /// Same as [`Tinyproxy::start`], demanding `user`/`password` (`BasicAuth`:
    /// 407 without them).
    pub fn start_with_auth(allowed: &[String], user: &str, password: &str) -> Tinyproxy {
        let ports: Vec<u16> = allowed
            .iter()
            .filter_map(|hp| hp.rsplit_once(':')?.1.parse().ok())
            .collect();
        let auth = format!("BasicAuth {user} {password}\n");
        Self::start_inner(allowed, &ports, &auth)
    }

    /// Same, with the hosts of `allowed` in the filter but `CONNECT` allowed
    /// to every port in `ports` (so a host missing from the filter is refused
    /// by the filter, "403 Filtered", not by its port).
    pub fn start_with_ports(allowed: &[String], ports: &[u16]) -> Tinyproxy {
        Self::start_inner(allowed, ports, "")
    }

    fn start_inner(allowed: &[String], ports: &[u16], extra: &str) -> Tinyproxy {
        failure::remember_panic_messages();
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(allowed, ports, extra) {
                Ok(proxy) => return proxy,
                Err(e) => last_error = e,
            }
        }
        panic!("{last_error}");
    }

    fn try_start(allowed: &[String], ports: &[u16], extra: &str) -> Result<Tinyproxy, String> {
        let dir = tempfile::tempdir().expect("tinyproxy dir");
        let port = free_port();
        let filter_path = dir.path().join("filter");
        std::fs::write(&filter_path, filter(allowed)).expect("write filter");
        let conf = conf(port, &filter_path.display().to_string(), ports) + extra;
        let conf_path = dir.path().join("tinyproxy.conf");
        std::fs::write(&conf_path, &conf).expect("write tinyproxy.conf");
        let mut child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn tinyproxy (apt-get install tinyproxy): {e}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().expect("stdout"), &log);
        collect(child.stderr.take().expect("stderr"), &log);
        let mut proxy = Tinyproxy {
            child,
            port,
            log,
            conf,
            _dir: dir,
        };
        proxy.wait_ready()?;
        Ok(proxy)
    }

    /// Ready = still running (so the port was free for it) and accepting.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "tinyproxy exited with {status}; log:\n{}",
                    self.log()
                ));
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("tinyproxy did not listen; log:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT`, for `proxy =` or `HTTPS_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the log shows a `CONNECT` to `host_port` (allowed or not).
    pub fn saw_connect(&self, host_port: &str) -> bool {
        self.log()
            .lines()
            .any(|l| l.contains("CONNECT") && l.contains(host_port))
    }

    fn stop(&mut self) {
        terminate(&mut self.child, STOP_TIMEOUT);
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let conf = format!("---- tinyproxy.conf ----\n{}", self.conf);
            failure::report(&format!("tinyproxy {}", self.addr()), &self.log(), &conf);
        }
    }
}

/// One extended regular expression per allowed host, anchored.
fn filter(allowed: &[String]) -> String {
    let mut hosts: Vec<&str> = allowed
        .iter()
        .map(|hp| hp.rsplit_once(':').map_or(hp.as_str(), |(h, _)| h))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts
        .iter()
        .map(|h| format!("^{}$\n", h.replace('.', "\\.")))
        .collect()
}

fn conf(port: u16, filter_path: &str, connect_ports: &[u16]) -> String {
    // No ConnectPort line would allow every port; 0 allows none.
    let connect_ports: String = if connect_ports.is_empty() {
        "ConnectPort 0\n".to_owned()
    } else {
        connect_ports
            .iter()
            .map(|p| format!("ConnectPort {p}\n"))
            .collect()
    };
    format!(
        r#"# Generated by tests/it/support/tinyproxy.rs
Port {port}
Listen 127.0.0.1
Timeout 30
MaxClients 64
LogLevel Connect
Allow 127.0.0.1
Filter "{filter_path}"
FilterType ere
FilterDefaultDeny Yes
{connect_ports}"#
    )
}
