//! [`Dockerd`]: Debian's Docker Engine (`docker.io`) started as a private second
//! daemon for one test: its own data root, exec root, unix socket and pid file in
//! a temporary directory, the `vfs` storage driver, no bridge and no iptables
//! (enough to pull, nothing touches the host's network), and its own managed
//! containerd (dockerd starts one under its exec root when no system containerd
//! socket exists; if one does, a private containerd is started and passed with
//! `--containerd`, so the system's is never used). The caller's `daemon.json`
//! makes regcache the Docker Hub mirror.
//!
//! Docker falls back to the real Docker Hub (`registry-1.docker.io`) whenever
//! the mirror fails. The daemon therefore runs with `HTTP_PROXY`/`HTTPS_PROXY`
//! at a closed loopback port ([`DEAD_PROXY`]) and `NO_PROXY` covering only
//! loopback: the mirror is reached directly, every other host only through a
//! proxy that refuses, so a fallback fails at once (`proxyconnect tcp: dial tcp
//! 127.0.0.1:1: connect: connection refused`) instead of reaching the internet.
//!
//! It never touches the system daemon (`/var/run/docker.sock`, `/var/lib/docker`)
//! that the package's postinst may have started. The daemon (and the containerd
//! it manages) is stopped when the handle drops, on success and on failure.

use super::failure;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::clients::{Containerd, run};
use super::process::terminate;

/// Debian's daemon and CLI (package `docker.io`), by path: another `docker` on
/// `PATH` must not stand in for them.
pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const DOCKER: &str = "/usr/bin/docker";
/// Where the daemon's proxy is: a port nothing listens on.
pub const DEAD_PROXY: &str = "http://127.0.0.1:1";
/// The system containerd's socket, which dockerd would otherwise use.
const SYSTEM_CONTAINERD: &str = "/run/containerd/containerd.sock";

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running private `dockerd`.
#[derive(Debug)]
pub struct Dockerd {
    child: Child,
    stopped: bool,
    /// Only when a system containerd exists (see the module documentation).
    _containerd: Option<Containerd>,
    dir: tempfile::TempDir,
}

impl Dockerd {
    /// Starts dockerd with `daemon_json` (whose `registry-mirrors` names
    /// regcache) and waits until its API answers.
    pub fn start(daemon_json: &str) -> Result<Dockerd, String> {
        failure::remember_panic_messages();
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let config = d.join("daemon.json");
        std::fs::write(&config, daemon_json).expect("write daemon.json");
        let containerd = if Path::new(SYSTEM_CONTAINERD).exists() {
            Some(Containerd::start()?)
        } else {
            None
        };
        let log = std::fs::File::create(d.join("dockerd.log")).expect("log file");
        let mut cmd = Command::new(DOCKERD);
        cmd.arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--host")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args(["--storage-driver", "vfs", "--bridge", "none"])
            .args(["--iptables=false", "--ip6tables=false"]);
        if let Some(containerd) = &containerd {
            cmd.arg("--containerd").arg(containerd.socket());
        }
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            cmd.env(var, DEAD_PROXY);
        }
        for var in ["NO_PROXY", "no_proxy"] {
            cmd.env(var, "127.0.0.1,localhost,::1");
        }
        for var in ["ALL_PROXY", "all_proxy", "DOCKER_HOST"] {
            cmd.env_remove(var);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {DOCKERD} (apt-get install docker.io): {e}"))?;
        let mut dockerd = Dockerd {
            child,
            stopped: false,
            _containerd: containerd,
            dir,
        };
        dockerd.wait_ready()?;
        Ok(dockerd)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut version = self.docker();
            version.args(["version", "--format", "{{.Server.Version}}"]);
            if run(&mut version).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stopped = true;
                return Err(format!(
                    "dockerd exited with {status}; log:\n{}",
                    self.log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "dockerd did not answer within {START_TIMEOUT:?}; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker --host unix://<this daemon's socket>`.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.arg("--host")
            .arg(format!("unix://{}", self.socket().display()))
            .env_remove("DOCKER_CONTEXT")
            .env("DOCKER_CONFIG", self.dir.path().join("client"));
        cmd
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// SIGTERM (dockerd then stops the containerd it manages), SIGKILL after
    /// [`STOP_TIMEOUT`]; a managed containerd left behind is killed by the pid
    /// it wrote, and mounts left behind are unmounted. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        terminate(&mut self.child, STOP_TIMEOUT);
        self.kill_managed_containerd();
        self.unmount_leftovers();
    }

    /// Unmounts what a dockerd that did not shut down cleanly left mounted
    /// under our directory (it bind-mounts its data root onto itself), deepest
    /// first, so the temporary directory can be removed.
    fn unmount_leftovers(&self) {
        let ours = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|point| point.starts_with(&ours))
            .collect();
        points.sort_by_key(|point| std::cmp::Reverse(point.len()));
        for point in points {
            let _ = Command::new("umount").arg(point).status();
        }
    }

    /// Kills the containerd dockerd started under our exec root, if it outlived
    /// dockerd (it does when dockerd had to be killed). The pid is checked
    /// against the process's command line, so a reused pid is never hit.
    fn kill_managed_containerd(&self) {
        let exec = self.dir.path().join("exec/containerd");
        let Ok(pid) = std::fs::read_to_string(exec.join("containerd.pid")) else {
            return;
        };
        let pid = pid.trim();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&*exec.to_string_lossy());
        if ours {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            failure::report("dockerd", &self.log(), "");
        }
    }
}
