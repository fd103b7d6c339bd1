//! The processes the bench starts: `docker-registry` (plain and proxy mode),
//! nginx and regcache, the last two also over TLS (`--tls`: nginx with a
//! second, `ssl` listener on the same cache; regcache as a second process
//! with `[server.tls]`). Each lives in a [`Proc`] guard that kills and waits for
//! it when dropped, also while a panic unwinds, and then prints the tail of its
//! output. Everything listens on 127.0.0.1 only.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::tls::BenchCert;

const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";
const NGINX: &str = "/usr/sbin/nginx";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Only the end of a child's output is kept: enough to explain a failure.
const LOG_KEEP: usize = 64 * 1024;

/// A child process that is killed and waited for on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
    addr: SocketAddr,
    /// Stop with SIGTERM first: nginx's workers outlive a SIGKILLed master
    /// (they were found still running, holding deleted 1 GiB cache files).
    term_first: bool,
    /// `https` when `addr` speaks TLS.
    scheme: &'static str,
    /// nginx's `ssl` listener, when it has one.
    tls_addr: Option<SocketAddr>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, addr: SocketAddr) -> (Proc, mpsc::Receiver<String>) {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines_rx) = mpsc::channel();
        keep_output(child.stdout.take().expect("stdout"), &log, lines_tx.clone());
        keep_output(child.stderr.take().expect("stderr"), &log, lines_tx);
        let proc = Proc {
            name: name.to_owned(),
            child,
            log,
            addr,
            term_first: false,
            scheme: "http",
            tls_addr: None,
        };
        (proc, lines_rx)
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// `https://` of nginx's `ssl` listener.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_addr.map(|addr| format!("https://{addr}"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process ended, once it has (without waiting).
    #[allow(dead_code)] // the soak bench's; peers.rs does not watch for exits
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM (nginx: fast shutdown, the master stops its workers and waits
    /// for them), then up to 5 s for the process to exit.
    fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        if !matches!(sent, Ok(s) if s.success()) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Polls `GET /v2/` until it answers 200; panics with the log if the
    /// process exits or the timeout passes.
    fn wait_v2(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}; log:\n{}", self.name, self.log());
            }
            let ready = match self.scheme {
                "https" => accepts(self.addr),
                _ => v2_answers(self.addr),
            };
            if ready && self.tls_addr.is_none_or(accepts) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer /v2/ within {START_TIMEOUT:?}; log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.term_first {
            self.terminate();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} output (tail) ----\n{}", self.name, self.log());
        }
    }
}

/// Copies a child's output into a bounded log and a line channel (the channel
/// is how regcache's start-up line is found; nobody reads it later, and a send
/// to a dropped receiver is ignored).
fn keep_output(
    stream: impl Read + Send + 'static,
    log: &Arc<Mutex<String>>,
    lines: mpsc::Sender<String>,
) {
    let log = Arc::clone(log);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
                if log.len() > 2 * LOG_KEEP {
                    let cut = log.len() - LOG_KEEP;
                    let cut = (cut..log.len())
                        .find(|&i| log.is_char_boundary(i))
                        .unwrap_or(0);
                    log.drain(..cut);
                }
            }
            let _ = lines.send(line);
        }
    });
}

/// A 127.0.0.1 port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `GET /v2/` over a raw socket: no client library, no proxy settings from the
/// environment, nothing but loopback.
fn v2_answers(addr: SocketAddr) -> bool {
    use std::io::Write;
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

/// A TLS listener is ready when it accepts (the bench's checks then speak
/// HTTPS to it through reqwest).
fn accepts(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// `docker-registry serve` with filesystem storage under `dir`; with `remote`
/// it runs as a pull-through proxy of that URL.
pub fn docker_registry(dir: &Path, remote: Option<&str>) -> Proc {
    let port = free_port();
    std::fs::create_dir_all(dir).expect("docker-registry dir");
    let storage = dir.join("storage");
    let proxy = remote
        .map(|url| format!("proxy:\n  remoteurl: {url}\n"))
        .unwrap_or_default();
    // Access log off and level error: the bench reads nothing from its output
    // but failures, and logging every request would cost the registry CPU that
    // the other peers do not spend.
    let config = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n{proxy}http:\n  addr: 127.0.0.1:{port}\n",
        storage.display()
    );
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, config).expect("write docker-registry config");
    let mut cmd = Command::new(DOCKER_REGISTRY);
    cmd.arg("serve").arg(&config_path);
    let name = if remote.is_some() {
        "docker-registry (proxy)"
    } else {
        "docker-registry"
    };
    let (mut proc, _) = Proc::spawn(name, cmd, loopback(port));
    proc.wait_v2();
    proc
}

/// nginx as a `proxy_cache` mirror of `upstream`, everything under `dir`;
/// with `tls`, a second listener speaks HTTPS in front of the same cache.
pub fn nginx(dir: &Path, upstream: SocketAddr, tls: Option<&BenchCert>) -> Proc {
    let port = free_port();
    for sub in ["cache", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).expect("nginx dirs");
    }
    let tls = tls.map(|cert| (free_port(), cert));
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, port, upstream, tls)).expect("write nginx.conf");
    let mut cmd = Command::new(NGINX);
    cmd.arg("-p").arg(dir).arg("-c").arg(&conf);
    let (mut proc, _) = Proc::spawn("nginx", cmd, loopback(port));
    proc.term_first = true;
    proc.tls_addr = tls.map(|(port, _)| loopback(port));
    proc.wait_v2();
    proc
}

/// The `ssl` listener's lines: TLS 1.2 and 1.3 as nginx offers them by
/// default, a session cache as a site would set; no kTLS (Debian's nginx
/// 1.22 does not turn it on by default), so cached files go through
/// OpenSSL's buffers instead of sendfile.
fn nginx_tls_lines(tls: Option<(u16, &BenchCert)>) -> String {
    let Some((port, cert)) = tls else {
        return String::new();
    };
    format!(
        "listen 127.0.0.1:{port} ssl;\n        \
         ssl_certificate {};\n        \
         ssl_certificate_key {};\n        \
         ssl_protocols TLSv1.2 TLSv1.3;\n        \
         ssl_session_cache shared:SSL:10m;",
        cert.cert_file.display(),
        cert.key_file.display()
    )
}

fn nginx_conf(
    dir: &Path,
    port: u16,
    upstream: SocketAddr,
    tls: Option<(u16, &BenchCert)>,
) -> String {
    let d = dir.display();
    let tls = nginx_tls_lines(tls);
    // As root the workers would switch to `nobody` and could not write the
    // temporary directory this bench gives them.
    let user = if running_as_root() {
        "user root root;"
    } else {
        ""
    };
    format!(
        r#"# Generated by benches/peers.rs: nginx as a registry mirror, configured the
# way a real site caches a registry.
{user}
# One worker per core, like regcache's runtime on this 2-core machine.
worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    # No access log: regcache and docker-registry run without one too.
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    # Cached files go out with sendfile(2), headers and file start in one packet.
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    # Runtimes keep their connections; do not make them reconnect every 100 requests.
    keepalive_requests 100000;
    keepalive_timeout 75s;
    upstream registry {{
        server {upstream};
        # Reused upstream connections (needs HTTP/1.1 and an empty Connection header).
        keepalive 32;
    }}
    # Two directory levels keep directories small; 10 MB of keys is ~80 000
    # entries; 40g matches regcache's --max-size; entries unused for a day go;
    # use_temp_path=off writes a fill straight into the cache directory (no copy
    # across directories when it completes).
    proxy_cache_path {d}/cache levels=1:2 keys_zone=reg:10m max_size=40g inactive=1d use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        {tls}
        location / {{
            proxy_pass http://registry;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Buffer upstream responses (needed for caching a fill while the
            # client reads it at its own pace).
            proxy_buffering on;
            proxy_cache reg;
            # HEAD is fetched upstream as GET and cached under the same key, so
            # a HEAD after a GET (what runtimes do for manifests) is a hit and a
            # HEAD miss fills the entry for the following GET. Hence the key has
            # no $request_method. $http_accept is in the key because registries
            # answer manifests by tag according to Accept.
            proxy_cache_convert_head on;
            proxy_cache_key $request_uri$http_accept;
            # Registries send no freshness headers; keep 200s (and ranges) a day,
            # whatever Cache-Control/Expires/Set-Cookie say, as a mirror would.
            proxy_cache_valid 200 206 1d;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
            # nginx's herd protection: one request fills an entry, the others
            # wait for it (for at most proxy_cache_lock_timeout, default 5s; after
            # that they go upstream themselves, uncached).
            proxy_cache_lock on;
        }}
    }}
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

/// A regcache binary (`bin`: the one under test, or a baseline build) with
/// its data in `data`; with `tls`, serving HTTPS only (`[server.tls]` in a
/// config file beside `data`).
pub fn regcache(bin: &Path, data: &Path, upstream: &str, tls: Option<&BenchCert>) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.arg("serve");
    if let Some(cert) = tls {
        let config = data.with_extension("toml");
        let text = format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.cert_file.display(),
            cert.key_file.display()
        );
        std::fs::write(&config, text).expect("write regcache config");
        cmd.arg("--config").arg(config);
    }
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data")
        .arg(data)
        .arg("--upstream")
        .arg(upstream)
        .arg("--max-size")
        .arg("40GiB")
        // Warnings only, plus the one start-up line that tells the port: one
        // log line per request would cost CPU the other peers do not spend.
        .env("RUST_LOG", "warn,regcache::app=info")
        .env("NO_COLOR", "1");
    let name = if tls.is_some() {
        "regcache (TLS)"
    } else {
        "regcache"
    };
    let (mut proc, lines) = Proc::spawn(name, cmd, loopback(0));
    proc.addr = wait_listening(&mut proc, &lines);
    if tls.is_some() {
        proc.scheme = "https";
    }
    proc.wait_v2();
    proc
}

/// A regcache binary whose settings are all in the config file `config`
/// (the soak bench's budget, TTLs and timeouts), logging at `rust_log`. The
/// receiver gets every output line after the start-up line, for a caller that
/// keeps the whole log (the [`Proc`] keeps only its tail).
#[allow(dead_code)] // the soak bench's
pub fn regcache_configured(
    bin: &Path,
    config: &Path,
    rust_log: &str,
) -> (Proc, mpsc::Receiver<String>) {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1");
    let (mut proc, lines) = Proc::spawn("regcache", cmd, loopback(0));
    proc.addr = wait_listening(&mut proc, &lines);
    proc.wait_v2();
    (proc, lines)
}

fn wait_listening(proc: &mut Proc, lines: &mpsc::Receiver<String>) -> SocketAddr {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            if let Some(addr) = listening_addr(&line) {
                return addr;
            }
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("regcache exited with {status}; log:\n{}", proc.log());
        }
    }
    panic!("regcache did not log its address; log:\n{}", proc.log());
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    let rest = &line[line.find("addr=")? + "addr=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Peak resident set size (`VmHWM`) of a process, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU seconds (user + system) a process and its child processes have used
/// so far, from `/proc/<pid>/stat` (nginx serves from worker processes, so its
/// master's own time alone would be near zero). Clock ticks are `USER_HZ`,
/// 100 on every Linux this bench runs on (`getconf CLK_TCK`).
pub fn cpu_seconds(pid: u32) -> f64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let ticks: u64 = std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .filter_map(own_cpu_ticks)
        .sum();
    ticks as f64 / 100.0
}

/// The machine's CPU time so far, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct MachineTicks {
    busy: u64,
    total: u64,
}

impl MachineTicks {
    /// The fraction of all cores' time that was busy since `before`.
    pub fn busy_since(&self, before: &MachineTicks) -> f64 {
        let total = self.total.saturating_sub(before.total).max(1);
        self.busy.saturating_sub(before.busy) as f64 / total as f64
    }
}

/// Reads the machine's CPU time (idle and iowait count as not busy).
pub fn machine_ticks() -> MachineTicks {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .expect("/proc/stat has a cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    MachineTicks {
        busy: total - idle,
        total,
    }
}

/// utime + stime of one process, in clock ticks.
fn own_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Deletes `dir` and everything in it, then creates it empty.
pub fn wipe(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("wipe {}: {e}", dir.display()),
    }
    std::fs::create_dir_all(dir).expect("create dir");
}

/// A peer that can be restarted on an empty cache.
#[derive(Debug)]
pub struct Restartable {
    kind: Kind,
    dir: PathBuf,
    upstream: String,
    upstream_addr: SocketAddr,
    /// Also (nginx) or only (regcache) over TLS.
    tls: Option<BenchCert>,
    pub proc: Option<Proc>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A regcache binary: the one under test or a baseline build.
    Regcache(PathBuf),
    Proxy,
    Nginx,
}

impl Restartable {
    pub fn regcache(
        bin: PathBuf,
        dir: PathBuf,
        upstream: SocketAddr,
        tls: Option<BenchCert>,
    ) -> Self {
        Self::new(Kind::Regcache(bin), dir, upstream, tls)
    }
    pub fn proxy(dir: PathBuf, upstream: SocketAddr) -> Self {
        Self::new(Kind::Proxy, dir, upstream, None)
    }
    pub fn nginx(dir: PathBuf, upstream: SocketAddr, tls: Option<BenchCert>) -> Self {
        Self::new(Kind::Nginx, dir, upstream, tls)
    }

    fn new(kind: Kind, dir: PathBuf, upstream_addr: SocketAddr, tls: Option<BenchCert>) -> Self {
        let mut peer = Restartable {
            kind,
            dir,
            upstream: format!("http://{upstream_addr}"),
            upstream_addr,
            tls,
            proc: None,
        };
        peer.restart_cold();
        peer
    }

    /// Stops the process (kill + wait), deletes its cache and starts it again.
    pub fn restart_cold(&mut self) {
        self.proc = None;
        wipe(&self.dir);
        self.proc = Some(match &self.kind {
            Kind::Regcache(bin) => regcache(
                bin,
                &self.dir.join("data"),
                &self.upstream,
                self.tls.as_ref(),
            ),
            Kind::Proxy => docker_registry(&self.dir, Some(&self.upstream)),
            Kind::Nginx => nginx(&self.dir, self.upstream_addr, self.tls.as_ref()),
        });
    }

    pub fn running(&self) -> &Proc {
        self.proc.as_ref().expect("peer running")
    }
}
