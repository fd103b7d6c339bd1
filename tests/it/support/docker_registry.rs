//! [`DockerRegistry`]: Debian's `docker-registry` (CNCF distribution 2.8) started
//! as a plain upstream on 127.0.0.1:<free port> with filesystem storage in a
//! temporary directory, seeded over its HTTP push API, and killed (and waited
//! for) when the handle drops or [`DockerRegistry::stop`] is called. Its output
//! is kept so tests can count the requests it served. It listens only on
//! loopback and is never pointed at any other registry.

use super::failure;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::images::Image;
use super::process::{collect, free_port};

/// The Debian binary (package `docker-registry`).
pub const BINARY: &str = "/usr/bin/docker-registry";

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `docker-registry serve`.
#[derive(Debug)]
pub struct DockerRegistry {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
    stopped: bool,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    /// Starts the registry and waits until it reports it is listening and
    /// `GET /v2/` answers 200. A port taken between choosing and binding it is
    /// retried on another port.
    pub fn start() -> DockerRegistry {
        failure::remember_panic_messages();
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(registry) => return registry,
                Err(e) if e.contains("address already in use") => last_error = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last_error}");
    }

    fn try_start() -> Result<DockerRegistry, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let storage = dir.path().join("storage");
        let config = format!(
            r#"version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
"#,
            storage = storage.display()
        );
        let config_path: PathBuf = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write docker-registry config");
        let mut child = Command::new(BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BINARY} (apt-get install docker-registry): {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().expect("stdout"), &log);
        collect(child.stderr.take().expect("stderr"), &log);
        let mut registry = DockerRegistry {
            child,
            port,
            log,
            stopped: false,
            _dir: dir,
        };
        registry.wait_ready()?;
        Ok(registry)
    }

    /// Ready = its own "listening on" line is logged (so the port is ours, not
    /// another server's) and `/v2/` answers 200.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("{}/v2/", self.url());
        let listening = format!("listening on 127.0.0.1:{}", self.port);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stopped = true;
                return Err(format!(
                    "docker-registry exited with {status}; log:\n{}",
                    self.log()
                ));
            }
            if self.log().contains(&listening) {
                let ok = block_on(async {
                    matches!(client().get(&url).send().await, Ok(r) if r.status() == 200)
                });
                if ok {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "docker-registry did not answer /v2/ within {START_TIMEOUT:?}; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// How many `method` requests whose path contains `path_contains` the
    /// registry answered (from its access log).
    pub fn requests(&self, method: &str, path_contains: &str) -> usize {
        let prefix = format!("\"{method} ");
        self.log()
            .lines()
            .filter_map(|line| {
                let start = line.find(&prefix)? + prefix.len();
                let rest = &line[start..];
                Some(rest[..rest.find(' ')?].to_string())
            })
            .filter(|path| path.contains(path_contains))
            .count()
    }

    /// Pushes every blob, then every manifest by digest, then the top manifest
    /// by tag, the way `docker push` does (monolithic uploads).
    pub fn push(&self, image: &Image) {
        let base = self.url();
        block_on(async {
            let http = client();
            for blob in &image.blobs {
                let start = http
                    .post(format!("{base}/v2/{}/blobs/uploads/", image.repo))
                    .send()
                    .await
                    .expect("start upload");
                assert_eq!(start.status(), 202, "start upload: {start:?}");
                let location = start
                    .headers()
                    .get("location")
                    .expect("upload Location")
                    .to_str()
                    .expect("ascii Location")
                    .to_string();
                let mut url = url::Url::parse(&base)
                    .and_then(|b| b.join(&location))
                    .expect("upload URL");
                url.query_pairs_mut().append_pair("digest", &blob.digest);
                let put = http
                    .put(url)
                    .header("content-type", "application/octet-stream")
                    .body(blob.bytes.clone())
                    .send()
                    .await
                    .expect("put blob");
                assert_eq!(put.status(), 201, "put blob {}", blob.digest);
            }
            for manifest in &image.manifests {
                let mut refs = vec![manifest.digest.clone()];
                if manifest.digest == image.top {
                    refs.push(image.tag.clone());
                }
                for reference in refs {
                    let put = http
                        .put(format!("{base}/v2/{}/manifests/{reference}", image.repo))
                        .header("content-type", &manifest.media_type)
                        .body(manifest.bytes.clone())
                        .send()
                        .await
                        .expect("put manifest");
                    let status = put.status();
                    let digest = put
                        .headers()
                        .get("docker-content-digest")
                        .map(|v| v.to_str().unwrap_or_default().to_string());
                    let body = put.text().await.unwrap_or_default();
                    assert_eq!(status, 201, "put manifest {reference}: {body}");
                    assert_eq!(digest.as_deref(), Some(manifest.digest.as_str()));
                }
            }
        });
    }

    /// Kills the process and waits for it; afterwards its port refuses
    /// connections. Idempotent.
    pub fn stop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.stopped = true;
        }
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            failure::report(&format!("docker-registry {}", self.url()), &self.log(), "");
        }
    }
}

/// A plain-HTTP reqwest client for loopback (no proxy from the environment).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// Runs `future` on a private current-thread runtime (the tests are sync).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}
