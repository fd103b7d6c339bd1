//! Real container clients from Debian pulling `registry.k8s.io/<repo>:<tag>`
//! through a regcache mirror: `skopeo copy` into a `dir:` layout, containerd
//! (a private daemon per pull, driven with `ctr images pull --hosts-dir`) and
//! `podman pull` into a private vfs store. Each pull starts from an empty local
//! store and reports what the client stored, every digest checked by hashing the
//! stored bytes. Every client is configured so the real registry is never
//! reachable: the primary location of `registry.k8s.io` is a closed loopback
//! port ([`CLOSED_UPSTREAM`]), so a failing mirror fails the pull instead of
//! falling back. Every process started here is killed and waited for, on
//! success and on failure; all state lives in temporary directories.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::images::Image;

/// The registry host the images are named under.
pub const REGISTRY: &str = "registry.k8s.io";

/// Where clients are told the real `registry.k8s.io` is: a privileged loopback
/// port that nothing in the tests listens on, so a mirror failure can never
/// fall back to the Internet (the pull fails with "connection refused").
pub const CLOSED_UPSTREAM: &str = "127.0.0.1:1";

/// How long one client command may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// Which platforms of a multi-platform image to pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platforms {
    /// Every platform (skopeo `--all`, ctr `--all-platforms`).
    All,
    /// One linux platform by GOARCH (`amd64`, `arm64`).
    One(&'static str),
}

/// How the image is named in the pull: by tag or by its top digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Tag,
    Digest,
}

/// A client under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Skopeo,
    Containerd,
    Podman,
}

impl Client {
    pub const ALL: [Client; 3] = [Client::Skopeo, Client::Containerd, Client::Podman];

    pub fn name(self) -> &'static str {
        match self {
            Client::Skopeo => "skopeo",
            Client::Containerd => "containerd",
            Client::Podman => "podman",
        }
    }

    /// The platform sets this client pulls of `image` to cover all of it:
    /// podman keeps one platform per pull, so it pulls each in turn.
    pub fn pulls_for(self, image: &Image) -> Vec<Platforms> {
        match self {
            Client::Podman => image
                .platforms
                .iter()
                .map(|p| Platforms::One(arch_static(&p.arch)))
                .collect(),
            _ => vec![Platforms::All],
        }
    }

    /// Pulls `registry.k8s.io/<image.repo>:<image.tag>` (or `@<image.top>`)
    /// through the regcache at `mirror` (`127.0.0.1:PORT`) into a fresh local
    /// store and reports what was stored.
    pub fn pull(
        self,
        mirror: &str,
        image: &Image,
        by: By,
        platforms: Platforms,
    ) -> Result<Stored, String> {
        let reference = reference(image, by);
        match self {
            Client::Skopeo => skopeo_copy(mirror, &reference, platforms),
            Client::Containerd => containerd_pull(mirror, &reference, platforms),
            Client::Podman => podman_pull(mirror, image, &reference, platforms),
        }
    }
}

fn arch_static(arch: &str) -> &'static str {
    match arch {
        "amd64" => "amd64",
        "arm64" => "arm64",
        other => panic!("unexpected test architecture {other}"),
    }
}

/// What a client stored after a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The digest the client recorded for the pulled reference.
    pub top: String,
    /// Digests of the manifests and blobs it stored, each checked by hashing
    /// the stored bytes (podman: layers as recorded by containers/storage,
    /// which verified them while pulling; the layer files themselves are
    /// unpacked).
    pub digests: BTreeSet<String>,
}

/// The image reference clients pull.
pub fn reference(image: &Image, by: By) -> String {
    match by {
        By::Tag => format!("{REGISTRY}/{}:{}", image.repo, image.tag),
        By::Digest => format!("{REGISTRY}/{}@{}", image.repo, image.top),
    }
}

/// registries.conf: `registry.k8s.io` lives at a closed port, regcache is its
/// only mirror.
pub fn registries_conf(mirror: &str) -> String {
    format!(
        r#"unqualified-search-registries = []

[[registry]]
prefix = "{REGISTRY}"
location = "{CLOSED_UPSTREAM}"
insecure = true

[[registry.mirror]]
location = "{mirror}"
insecure = true
"#
    )
}

/// hosts.toml for `registry.k8s.io`: regcache first, the default `server` a
/// closed port.
pub fn hosts_toml(mirror: &str) -> String {
    format!(
        r#"server = "http://{CLOSED_UPSTREAM}"

[host."http://{mirror}"]
  capabilities = ["pull", "resolve"]
"#
    )
}

// ---------------------------------------------------------------------------
// over TLS

/// Trust in a mirror's private CA, laid out as each client reads it: a
/// certificate directory with `ca.crt` (skopeo `--src-cert-dir`, podman
/// `--cert-dir`) and the PEM file containerd's `hosts.toml` names in `ca`.
#[derive(Debug)]
pub struct TlsTrust {
    dir: tempfile::TempDir,
}

impl TlsTrust {
    pub fn new(ca_pem: &str) -> TlsTrust {
        let dir = tempfile::tempdir().expect("temp dir");
        write(&dir.path().join("certs").join("ca.crt"), ca_pem);
        TlsTrust { dir }
    }

    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.cert_dir().join("ca.crt")
    }
}

/// registries.conf with regcache as an HTTPS mirror (verified, not insecure).
pub fn registries_conf_tls(mirror: &str) -> String {
    registries_conf(mirror).replacen(
        &format!("location = \"{mirror}\"\ninsecure = true"),
        &format!("location = \"{mirror}\""),
        1,
    )
}

/// hosts.toml with regcache as an HTTPS mirror trusted through `ca`.
pub fn hosts_toml_tls(mirror: &str, ca: &Path) -> String {
    format!(
        r#"server = "http://{CLOSED_UPSTREAM}"

[host."https://{mirror}"]
  capabilities = ["pull", "resolve"]
  ca = "{}"
"#,
        ca.display()
    )
}

/// Pulls `reference` through the regcache at `mirror` over HTTPS, `client`
/// trusting it only through `trust`.
pub fn pull_over_tls(
    client: Client,
    mirror: &str,
    trust: &TlsTrust,
    image: &Image,
    reference: &str,
    platforms: Platforms,
) -> Result<Stored, String> {
    pull_with_credentials(
        client,
        mirror,
        Some(trust),
        None,
        image,
        reference,
        platforms,
    )
}

/// Pulls through regcache at `mirror`, over HTTPS trusting `trust` if given
/// (else plain HTTP), with `user:password` given to the client if any (an
/// auth.json for skopeo `--src-authfile` and podman `--authfile`, ctr `--user`).
pub fn pull_with_credentials(
    client: Client,
    mirror: &str,
    trust: Option<&TlsTrust>,
    credentials: Option<&str>,
    image: &Image,
    reference: &str,
    platforms: Platforms,
) -> Result<Stored, String> {
    let registries = match trust {
        Some(_) => registries_conf_tls(mirror),
        None => registries_conf(mirror),
    };
    let mut conf = ContainersConfig::with_registries_conf(&registries);
    let (cert_flag, authfile_flag) = match client {
        Client::Skopeo => ("--src-cert-dir", "--src-authfile"),
        _ => ("--cert-dir", "--authfile"),
    };
    if let Some(trust) = trust {
        conf.pull_args.push(cert_flag.into());
        conf.pull_args.push(trust.cert_dir().display().to_string());
    }
    // A mirror's credentials come from the auth file, by the mirror's host
    // (`--creds` is for the image's own registry).
    if let Some(credentials) = credentials {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(credentials);
        let json = format!(r#"{{"auths":{{"{mirror}":{{"auth":"{auth}"}}}}}}"#);
        write(&conf.path("auth.json"), &json);
        conf.pull_args.push(authfile_flag.into());
        conf.pull_args
            .push(conf.path("auth.json").display().to_string());
    }
    match client {
        Client::Skopeo => skopeo_copy_in(&conf, reference, platforms),
        Client::Podman => podman_pull_in(&conf, image, reference, platforms),
        Client::Containerd => {
            let hosts_toml = match trust {
                Some(trust) => hosts_toml_tls(mirror, &trust.ca_file()),
                None => hosts_toml(mirror),
            };
            let hosts = [(REGISTRY.to_string(), hosts_toml)];
            let user = credentials.map(|c| vec!["--user".to_owned(), c.to_owned()]);
            containerd_pull_with_hosts_args(&hosts, reference, platforms, &user.unwrap_or_default())
        }
    }
}

const POLICY_JSON: &str = r#"{"default":[{"type":"insecureAcceptAnything"}]}"#;

/// Files the containers/image based clients need, in a temporary directory.
#[derive(Debug)]
struct ContainersConfig {
    dir: tempfile::TempDir,
    /// Given to `skopeo copy` and `podman pull` (e.g. a certificate directory).
    pull_args: Vec<String>,
}

impl ContainersConfig {
    fn new(mirror: &str) -> ContainersConfig {
        Self::with_registries_conf(&registries_conf(mirror))
    }

    /// A configuration whose registries.conf is exactly `text`.
    fn with_registries_conf(text: &str) -> ContainersConfig {
        let dir = tempfile::tempdir().expect("temp dir");
        write(&dir.path().join("registries.conf"), text);
        write(&dir.path().join("policy.json"), POLICY_JSON);
        std::fs::create_dir(dir.path().join("tmp")).expect("mkdir tmp");
        ContainersConfig {
            dir,
            pull_args: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Environment shared by skopeo and podman: our registries.conf, big
    /// temporary files in our directory.
    fn apply(&self, cmd: &mut Command) {
        cmd.env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("TMPDIR", self.path("tmp"));
    }
}

// ---------------------------------------------------------------------------
// skopeo

/// `skopeo copy docker://registry.k8s.io/... dir:OUT`: the `dir:` transport
/// stores the manifests and blobs byte for byte (`manifest.json`,
/// `<hex>.manifest.json` per instance with `--all`, `<hex>` per blob).
pub fn skopeo_copy(mirror: &str, reference: &str, platforms: Platforms) -> Result<Stored, String> {
    skopeo_copy_in(&ContainersConfig::new(mirror), reference, platforms)
}

/// [`skopeo_copy`] with a caller's whole registries.conf (any mirror form).
pub fn skopeo_copy_with_conf(
    registries_conf: &str,
    reference: &str,
    platforms: Platforms,
) -> Result<Stored, String> {
    let conf = ContainersConfig::with_registries_conf(registries_conf);
    skopeo_copy_in(&conf, reference, platforms)
}

fn skopeo_copy_in(
    conf: &ContainersConfig,
    reference: &str,
    platforms: Platforms,
) -> Result<Stored, String> {
    let out = conf.path("out");
    let mut cmd = Command::new("skopeo");
    conf.apply(&mut cmd);
    cmd.arg("--registries-conf")
        .arg(conf.path("registries.conf"))
        .arg("--policy")
        .arg(conf.path("policy.json"));
    if let Platforms::One(arch) = platforms {
        cmd.args(["--override-os", "linux", "--override-arch", arch]);
    }
    cmd.arg("copy").arg("--retry-times=0").args(&conf.pull_args);
    if platforms == Platforms::All {
        cmd.arg("--all");
    }
    cmd.arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", out.display()));
    run(&mut cmd)?;
    read_dir_layout(&out)
}

/// `skopeo inspect --raw --tls-verify=false docker://MIRROR/<repo>:<tag>`:
/// talking to the mirror directly, no registries.conf mirror entry. Returns the
/// digest of the manifest bytes it printed.
pub fn skopeo_inspect_direct(mirror: &str, image: &Image) -> Result<String, String> {
    let conf = ContainersConfig::new(mirror);
    let mut cmd = Command::new("skopeo");
    conf.apply(&mut cmd);
    cmd.args(["inspect", "--raw", "--retry-times=0", "--tls-verify=false"])
        .arg(format!("docker://{mirror}/{}:{}", image.repo, image.tag));
    let raw = run(&mut cmd)?;
    Ok(super::sha256(raw.as_bytes()))
}

/// `skopeo copy [--all] SRC DST` between any two transports (`oci:`,
/// `oci-archive:`, `dir:`, or `docker://` of a plain-HTTP loopback registry);
/// no mirror configuration is involved.
pub fn skopeo_copy_plain(src: &str, dst: &str, all: bool) -> Result<String, String> {
    let conf = ContainersConfig::new(CLOSED_UPSTREAM);
    let mut cmd = Command::new("skopeo");
    conf.apply(&mut cmd);
    cmd.arg("--registries-conf")
        .arg(conf.path("registries.conf"))
        .arg("--policy")
        .arg(conf.path("policy.json"))
        .args(["copy", "--retry-times=0"]);
    if src.starts_with("docker://") {
        cmd.arg("--src-tls-verify=false");
    }
    if all {
        cmd.arg("--all");
    }
    run(cmd.arg(src).arg(dst))
}

/// Reads a `dir:` layout, hashing every file against the digest its name says.
pub fn read_dir_layout(dir: &Path) -> Result<Stored, String> {
    let mut top = None;
    let mut digests = BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name == "version" {
            continue;
        }
        let actual = hash_file(&entry.path())?;
        if name == "manifest.json" {
            top = Some(actual.clone());
        } else {
            let hex = name.strip_suffix(".manifest.json").unwrap_or(&name);
            let named = format!("sha256:{hex}");
            if named != actual {
                return Err(format!("skopeo stored {name} whose bytes hash to {actual}"));
            }
        }
        digests.insert(actual);
    }
    let top = top.ok_or_else(|| format!("no manifest.json in {}", dir.display()))?;
    Ok(Stored { top, digests })
}

// ---------------------------------------------------------------------------
// containerd

/// A private containerd daemon: root, state and sockets in a temporary
/// directory, the CRI and host-touching plugins disabled. Killed and waited for
/// on drop.
#[derive(Debug)]
pub struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Result<Containerd, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{grpc}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            grpc = d.join("c.sock").display(),
            ttrpc = d.join("t.sock").display(),
        );
        write(&d.join("config.toml"), &config);
        let log = std::fs::File::create(d.join("containerd.log")).expect("log file");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn containerd (apt-get install containerd): {e}"))?;
        let mut containerd = Containerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut version = containerd.ctr();
            version.arg("version");
            if run(&mut version).is_ok() {
                return Ok(containerd);
            }
            if let Ok(Some(status)) = containerd.child.try_wait() {
                return Err(format!(
                    "containerd exited with {status}; log:\n{}",
                    containerd.log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd did not answer within 30s; log:\n{}",
                    containerd.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The gRPC socket (for a client such as dockerd's `--containerd`).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// `ctr --address SOCKET -n interop`
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .args(["--namespace", "interop"]);
        cmd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Where the content store keeps blob `sha256:<hex>`.
    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .path()
            .join("root/io.containerd.content.v1.content/blobs/sha256")
            .join(hex)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ctr images pull --hosts-dir DIR --snapshotter native` into a fresh daemon,
/// then `ctr images ls` for the recorded digest and `ctr content ls` for the
/// stored content, each blob hashed from the content store.
pub fn containerd_pull(
    mirror: &str,
    reference: &str,
    platforms: Platforms,
) -> Result<Stored, String> {
    let hosts = [(REGISTRY.to_string(), hosts_toml(mirror))];
    containerd_pull_with_hosts(&hosts, reference, platforms)
}

/// [`containerd_pull`] with a caller's hosts directory: one
/// `(registry host, hosts.toml text)` per `<dir>/<host>/hosts.toml`.
pub fn containerd_pull_with_hosts(
    hosts: &[(String, String)],
    reference: &str,
    platforms: Platforms,
) -> Result<Stored, String> {
    containerd_pull_with_hosts_args(hosts, reference, platforms, &[])
}

/// [`containerd_pull_with_hosts`] with extra `ctr images pull` flags (`--user`).
pub fn containerd_pull_with_hosts_args(
    hosts: &[(String, String)],
    reference: &str,
    platforms: Platforms,
    pull_args: &[String],
) -> Result<Stored, String> {
    let containerd = Containerd::start()?;
    let result = containerd_pull_with(&containerd, hosts, reference, platforms, pull_args);
    result.map_err(|e| format!("{e}\ncontainerd log:\n{}", tail(&containerd.log(), 30)))
}

fn containerd_pull_with(
    containerd: &Containerd,
    hosts_files: &[(String, String)],
    reference: &str,
    platforms: Platforms,
    pull_args: &[String],
) -> Result<Stored, String> {
    let hosts = containerd.dir.path().join("hosts");
    for (host, text) in hosts_files {
        write(&hosts.join(host).join("hosts.toml"), text);
    }
    let mut pull = containerd.ctr();
    pull.args(["images", "pull", "--snapshotter", "native", "--hosts-dir"])
        .arg(&hosts)
        .args(pull_args);
    match platforms {
        Platforms::All => pull.arg("--all-platforms"),
        Platforms::One(arch) => pull.arg("--platform").arg(format!("linux/{arch}")),
    };
    pull.arg(reference);
    run(&mut pull)?;

    let mut ls = containerd.ctr();
    ls.args(["images", "ls"]);
    let listing = run(&mut ls)?;
    let top = listing
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(reference))
                .then(|| fields.nth(1).map(str::to_string))
                .flatten()
        })
        .ok_or_else(|| format!("{reference} not in `ctr images ls`:\n{listing}"))?;

    let mut content = containerd.ctr();
    content.args(["content", "ls", "--quiet"]);
    let mut digests = BTreeSet::new();
    for digest in run(&mut content)?.split_whitespace() {
        let actual = hash_file(&containerd.blob_path(digest))?;
        if actual != digest {
            return Err(format!(
                "containerd stored {digest} whose bytes hash to {actual}"
            ));
        }
        digests.insert(actual);
    }
    Ok(Stored { top, digests })
}

// ---------------------------------------------------------------------------
// podman

/// `podman pull` as root into a private vfs store (`--root`, `--runroot`,
/// `--tmpdir` in a temporary directory), then `podman image inspect` for the
/// recorded digest; stored manifests and the config are hashed from the
/// image's big-data files, layers read from `vfs-layers/layers.json`.
pub fn podman_pull(
    mirror: &str,
    image: &Image,
    reference: &str,
    platforms: Platforms,
) -> Result<Stored, String> {
    podman_pull_in(&ContainersConfig::new(mirror), image, reference, platforms)
}

/// [`podman_pull`] with a caller's whole registries.conf (any mirror form).
pub fn podman_pull_with_conf(
    registries_conf: &str,
    image: &Image,
    reference: &str,
    platforms: Platforms,
) -> Result<Stored, String> {
    let conf = ContainersConfig::with_registries_conf(registries_conf);
    podman_pull_in(&conf, image, reference, platforms)
}

fn podman_pull_in(
    conf: &ContainersConfig,
    image: &Image,
    reference: &str,
    platforms: Platforms,
) -> Result<Stored, String> {
    let root = conf.path("root");
    let storage_conf = format!(
        "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
        root.display(),
        conf.path("runroot").display()
    );
    write(&conf.path("storage.conf"), &storage_conf);
    let podman = |args: &[&str]| {
        let mut cmd = Command::new("podman");
        conf.apply(&mut cmd);
        cmd.env("CONTAINERS_STORAGE_CONF", conf.path("storage.conf"))
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(conf.path("runroot"))
            .arg("--tmpdir")
            .arg(conf.path("libpod-tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--events-backend",
                "none",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(args);
        cmd
    };
    let arch = match platforms {
        Platforms::One(arch) => arch,
        Platforms::All => return Err("podman stores one platform per pull".into()),
    };
    let signature_policy = conf.path("policy.json").display().to_string();
    let mut pull = vec![
        "pull",
        "--signature-policy",
        &signature_policy,
        "--arch",
        arch,
        "--os",
        "linux",
    ];
    pull.extend(conf.pull_args.iter().map(String::as_str));
    pull.push(reference);
    let id = run(&mut podman(&pull))?.trim().to_string();
    let top = run(&mut podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        reference,
    ]))?
    .trim()
    .to_string();

    let mut digests = BTreeSet::new();
    // Big-data files: `<id>/=<base64 key>`; keys `manifest-<digest>` and the
    // config digest are what we check.
    let image_dir = root.join("vfs-images").join(&id);
    let entries =
        std::fs::read_dir(&image_dir).map_err(|e| format!("read {}: {e}", image_dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(key) = name.strip_prefix('=').and_then(base64_decode) else {
            continue;
        };
        let named = if let Some(d) = key.strip_prefix("manifest-") {
            d.to_string()
        } else if key.starts_with("sha256:") {
            key.clone()
        } else {
            continue;
        };
        let actual = hash_file(&entry.path())?;
        if actual != named {
            return Err(format!("podman stored {key} whose bytes hash to {actual}"));
        }
        digests.insert(actual);
    }
    if format!("sha256:{id}") != image.platform(arch).config {
        return Err(format!(
            "podman image ID {id} is not the {arch} config digest {}",
            image.platform(arch).config
        ));
    }
    let layers_json = root.join("vfs-layers/layers.json");
    let layers: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&layers_json).map_err(|e| format!("read {}: {e}", layers_json.display()))?,
    )
    .map_err(|e| format!("parse {}: {e}", layers_json.display()))?;
    let expected_diff_ids = &image.platform(arch).diff_ids;
    for layer in layers.as_array().into_iter().flatten() {
        let diff = layer["diff-digest"].as_str().unwrap_or_default();
        if !expected_diff_ids.iter().any(|d| d == diff) {
            return Err(format!("podman stored an unexpected layer {layer}"));
        }
        if let Some(compressed) = layer["compressed-diff-digest"].as_str() {
            digests.insert(compressed.to_string());
        }
    }
    Ok(Stored { top, digests })
}

/// Standard base64 (with padding), as containers/storage names big-data files.
fn base64_decode(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------
// helpers

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `sha256:<hex>` of a file, read in chunks.
pub fn hash_file(path: &Path) -> Result<String, String> {
    use sha2::{Digest as _, Sha256};
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Runs a command to completion (killing it after [`COMMAND_TIMEOUT`]);
/// returns its stdout, or an error with the command line, status and output.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let line = format!("{cmd:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .map_err(|e| format!("{line}: spawn failed: {e}"))?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{line}: wait failed: {e}")),
        }
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(stdout),
        _ => {
            let mut msg = String::new();
            let what = status.map_or_else(
                || format!("killed after {COMMAND_TIMEOUT:?}"),
                |s| s.to_string(),
            );
            let _ = write!(
                msg,
                "{line}: {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                tail(&stdout, 40),
                tail(&stderr, 40)
            );
            Err(msg)
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Checks a pull's result against the image: the recorded top digest and the
/// exact set of stored digests.
pub fn verify(stored: &Stored, image: &Image, platforms: Platforms) -> Result<(), String> {
    let expected = match platforms {
        Platforms::All => image.all_digests(),
        Platforms::One(arch) => image.digests_for(arch),
    };
    let mut problems = Vec::new();
    if stored.top != image.top {
        problems.push(format!(
            "recorded digest {} != image digest {}",
            stored.top, image.top
        ));
    }
    let missing: Vec<_> = expected.difference(&stored.digests).collect();
    let extra: Vec<_> = stored.digests.difference(&expected).collect();
    if !missing.is_empty() {
        problems.push(format!("missing {missing:?}"));
    }
    if !extra.is_empty() {
        problems.push(format!("unexpected {extra:?}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
