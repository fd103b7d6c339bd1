//! [`Nginx`]: Debian's nginx started in the foreground (`-g 'daemon off;'`) on a
//! 127.0.0.1 port, with a generated nginx.conf and every file it writes (pid,
//! temp directories) under its own temporary prefix, stopped (SIGTERM, then
//! SIGKILL) and waited for when the handle drops, on success and on failure.
//! Its error log goes to stderr and is kept, and printed if the test panics.
//!
//! It owns only the process and the boilerplate around the `http {}` block; the
//! test writes that block (its upstreams and locations), so the configuration
//! under test stays in the test. It never listens on anything but loopback and
//! never reads or writes the system's nginx configuration or logs.

use super::failure;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::process::{collect, free_port, terminate};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running nginx master process (and its workers).
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
    conf: String,
    _prefix: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with `http(port)` as the inside of its `http {}` block (it
    /// must `listen 127.0.0.1:<port>`), and waits until `GET ready_path`
    /// through it answers 200. A port taken between choosing and binding it is
    /// retried on another port.
    pub fn start(http: impl Fn(u16) -> String, ready_path: &str) -> Nginx {
        failure::remember_panic_messages();
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(&http, ready_path) {
                Ok(nginx) => return nginx,
                Err(e) if e.contains("Address already in use") => last_error = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last_error}");
    }

    fn try_start(http: &impl Fn(u16) -> String, ready_path: &str) -> Result<Nginx, String> {
        let prefix = tempfile::tempdir().expect("nginx prefix");
        std::fs::create_dir_all(prefix.path().join("tmp")).expect("nginx tmp dir");
        let port = free_port();
        let conf = main_conf(prefix.path(), &http(port));
        let conf_path = prefix.path().join("nginx.conf");
        std::fs::write(&conf_path, &conf).expect("write nginx.conf");
        let binary = binary();
        // `-e stderr`: the error log before the configuration is read would
        // otherwise be /var/log/nginx/error.log, outside the prefix.
        let mut child = Command::new(&binary)
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-e", "stderr", "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let log = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().expect("stdout"), &log);
        collect(child.stderr.take().expect("stderr"), &log);
        let mut nginx = Nginx {
            child,
            port,
            log,
            conf,
            _prefix: prefix,
        };
        nginx.wait_ready(ready_path)?;
        Ok(nginx)
    }

    /// Ready = the master is still running (so the port was free for it, not
    /// another server's) and `ready_path` answers 200 through it.
    fn wait_ready(&mut self, ready_path: &str) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("nginx exited with {status}; log:\n{}", self.log()));
            }
            if get_status(self.addr(), ready_path) == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nginx did not answer {ready_path} within {START_TIMEOUT:?}; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The whole nginx.conf it runs on.
    pub fn conf(&self) -> &str {
        &self.conf
    }

    /// Everything nginx wrote to its error log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM first: the master then stops its workers and waits for them (a
    /// SIGKILLed master leaves its workers running). SIGKILL if it lingers.
    fn stop(&mut self) {
        terminate(&mut self.child, STOP_TIMEOUT);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let conf = format!("---- nginx.conf ----\n{}", self.conf);
            failure::report(&format!("nginx {}", self.addr()), &self.log(), &conf);
        }
    }
}

/// The nginx executable: on `PATH`, else Debian's `/usr/sbin/nginx` (sbin is
/// not on a non-root user's `PATH`).
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("nginx not found on PATH or in /usr/sbin (apt-get install nginx)")
        })
}

/// nginx.conf around the test's `http {}` block: everything nginx writes lives
/// under `prefix`.
fn main_conf(prefix: &Path, http: &str) -> String {
    let d = prefix.display();
    // As root the workers would switch to an unprivileged user that cannot
    // write the temporary directories this prefix gives them.
    let user = if running_as_root() {
        "user root root;"
    } else {
        ""
    };
    format!(
        r#"# Generated by tests/it/support/nginx.rs; everything nginx writes is under {d}.
{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
{http}
}}
"#
    )
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// The status of `GET path` over a raw socket (no proxy settings from the
/// environment, nothing but loopback); None if nothing answered.
fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
