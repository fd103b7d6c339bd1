//! The configuration guides in `docs/guides/`, tried with real clients against
//! one regcache that mirrors three upstreams: a real `docker-registry` as
//! `docker.io`, the registry.k8s.io-like redirecting fake as the default
//! `registry.k8s.io` (alias `k8s.gcr.io`) and the token-auth fake as `ghcr.io`.
//! The client configuration is never written here: each `hosts.toml` and
//! `registries.conf` is the guide's snippet marked `<!-- tested: NAME -->`, read
//! out of the guide and filled in (`REGCACHE`, `HOST`, `FALLBACK`), so a guide
//! cannot drift from what was tried. Blocks elsewhere in the guides marked
//! `<!-- filled: FILE#NAME K=V ... -->` must equal that snippet filled in.
//!
//! containerd (plain `ns` and `override_path` forms), podman and skopeo (a
//! mirror with a path, and one without for the default upstream) pull one image
//! from each upstream, and `k8s.gcr.io/...` must give the registry.k8s.io
//! content; every stored digest is checked. A host regcache does not know
//! (`quay.io`) must get a 404 from regcache with no upstream asked. Each
//! upstream must have served only its own image, each blob once. Results are
//! collected into a `client | routing mode | upstream | result` table so one
//! failure does not hide the others.
//!
//! Loopback only; every client's fallback is a closed local port
//! ([`CLOSED_UPSTREAM`]), so a failing mirror fails the pull. Every process is
//! stopped by its guard, on success and on failure.

use std::fmt::Write as _;
use std::time::Instant;

use reqwest::Method;

use crate::support::clients::{
    CLOSED_UPSTREAM, Client, Platforms, Stored, containerd_pull_with_hosts, podman_pull_with_conf,
    skopeo_copy_with_conf, verify,
};
use crate::support::docker_registry::DockerRegistry;
use crate::support::fake::{Content, FakeUpstream, Host};
use crate::support::images::{self, Image};
use crate::support::regcache::Regcache;
use crate::support::three_upstreams_toml;

/// Where the guides live.
const GUIDES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/guides");

/// Every `<!-- tested: NAME -->` snippet in the guides, and its file.
const TESTED: [(&str, &str); 6] = [
    ("containerd.md", "containerd-hosts-ns"),
    ("containerd.md", "containerd-hosts-override-path"),
    ("podman.md", "registries-conf-path"),
    ("podman.md", "registries-conf-default"),
    // Pulled by docker_engine.rs.
    ("docker.md", "docker-regcache-toml"),
    ("docker.md", "docker-daemon-json"),
];

/// Every registry host the clients are configured for, as a node would be:
/// the three upstreams, the alias, and one regcache does not know.
const HOSTS: [&str; 5] = [
    "registry.k8s.io",
    "k8s.gcr.io",
    "docker.io",
    "ghcr.io",
    UNKNOWN_HOST,
];
const UNKNOWN_HOST: &str = "quay.io";
const UNKNOWN_REPO: &str = "org/quayimg";
const TAG: &str = "v1";

// ---------------------------------------------------------------------------
// Guide snippets

/// The text of `docs/guides/<file>`.
fn guide(file: &str) -> String {
    let path = format!("{GUIDES}/{file}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The fenced block that follows the first line containing `marker`, without
/// the fence lines and with the fence's indentation removed (a block may sit in
/// a list item).
fn fenced_after(text: &str, marker: &str) -> Option<String> {
    let mut lines = text.lines().skip_while(|l| !l.contains(marker)).skip(1);
    let fence = lines.find(|l| l.trim_start().starts_with("```"))?;
    let indent = fence.len() - fence.trim_start().len();
    let mut block = String::new();
    for line in lines {
        if line.trim_start().starts_with("```") {
            return Some(block);
        }
        block.push_str(line.get(indent..).unwrap_or_else(|| line.trim_start()));
        block.push('\n');
    }
    None
}

/// The snippet a guide marks `<!-- tested: NAME -->`.
pub(crate) fn snippet(file: &str, name: &str) -> String {
    let marker = format!("<!-- tested: {name} -->");
    fenced_after(&guide(file), &marker)
        .unwrap_or_else(|| panic!("no fenced block after {marker} in {file}"))
}

/// The snippet with each placeholder replaced. Every placeholder must occur
/// (a guide that hard-coded one would otherwise pass untested), except `HOST`:
/// the plain hosts.toml names no host, containerd sends it as `ns`.
pub(crate) fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut text = template.to_string();
    for (placeholder, value) in values {
        if *placeholder == "HOST" && !template.contains("HOST") {
            continue;
        }
        assert!(
            text.contains(placeholder),
            "the snippet has no {placeholder}:\n{template}"
        );
        text = text.replace(placeholder, value);
    }
    text
}

/// A tested snippet filled in for `host` with regcache at `mirror` and the
/// fallback at the closed port.
fn filled(name: &str, mirror: &str, host: &str) -> String {
    let (file, _) = TESTED
        .iter()
        .find(|(_, n)| *n == name)
        .expect("a tested snippet");
    let values = [
        ("REGCACHE", mirror),
        ("FALLBACK", CLOSED_UPSTREAM),
        ("HOST", host),
    ];
    fill(&snippet(file, name), &values)
}

// ---------------------------------------------------------------------------
// The three upstreams

/// The upstreams behind regcache, each seeded with its own image.
struct Upstreams {
    hub: DockerRegistry,
    k8s: FakeUpstream,
    ghcr: FakeUpstream,
    hub_image: Image,
    k8s_image: Image,
    ghcr_image: Image,
}

impl Upstreams {
    fn start() -> Self {
        let up = Upstreams {
            hub: DockerRegistry::start(),
            k8s: FakeUpstream::k8s_like(),
            ghcr: FakeUpstream::k8s_like_with_token(),
            // Different seeds: no blob is shared between upstreams.
            hub_image: images::oci_three_layers("library/hubimg", TAG, 31),
            k8s_image: images::oci_three_layers("k8simg", TAG, 32),
            ghcr_image: images::oci_three_layers("org/ghimg", TAG, 33),
        };
        up.hub.push(&up.hub_image);
        seed_fake(&up.k8s, &up.k8s_image);
        seed_fake(&up.ghcr, &up.ghcr_image);
        up
    }

    /// regcache's configuration: registry.k8s.io the default with alias
    /// k8s.gcr.io, docker.io and ghcr.io.
    fn regcache(&self) -> Regcache {
        let config = three_upstreams_toml(&self.k8s.url(), &self.hub.url(), &self.ghcr.url());
        Regcache::builder().config_toml(config).start()
    }

    /// Requests every upstream has seen so far.
    fn total_requests(&self) -> usize {
        let hub = self.hub.requests("GET", "") + self.hub.requests("HEAD", "");
        hub + self.k8s.total_hits() + self.ghcr.total_hits()
    }

    /// Each upstream served each blob of its own image exactly once and was
    /// never asked for another upstream's (or the unknown host's) repository.
    fn check_hits(&self) -> Vec<(String, Result<(), String>)> {
        let hub = check_upstream(
            &self.hub_image,
            |digest| self.hub.requests("GET", &format!("/blobs/{digest}")),
            |path| self.hub.requests("GET", path) + self.hub.requests("HEAD", path),
        );
        vec![
            ("docker.io".into(), hub),
            (
                "registry.k8s.io".into(),
                check_fake(&self.k8s, &self.k8s_image),
            ),
            ("ghcr.io".into(), check_fake(&self.ghcr, &self.ghcr_image)),
        ]
    }
}

/// Stores `image` in a fake as `interop` does: blobs, then manifests, the top
/// one tagged.
fn seed_fake(fake: &FakeUpstream, image: &Image) {
    for blob in &image.blobs {
        let content = Content::Bytes(blob.bytes.clone());
        fake.put_content_with_digest(&image.repo, &blob.digest, content);
    }
    for m in &image.manifests {
        let tag = (m.digest == image.top).then_some(image.tag.as_str());
        let digest = fake.put_manifest(&image.repo, tag, &m.media_type, m.bytes.clone());
        assert_eq!(digest, m.digest);
    }
}

/// Every repository name the test pulls, as it appears in request paths.
const REPOS: [&str; 4] = ["hubimg", "k8simg", "org/ghimg", UNKNOWN_REPO];

/// Blob GETs (`gets`) of each of `image`'s blobs are exactly one, and no
/// request path (`requests`) names a repository that is not `image`'s.
fn check_upstream(
    image: &Image,
    gets: impl Fn(&str) -> usize,
    requests: impl Fn(&str) -> usize,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for blob in &image.blobs {
        let n = gets(&blob.digest);
        if n != 1 {
            problems.push(format!("blob {} fetched {n} times, not once", blob.digest));
        }
    }
    for repo in REPOS.iter().filter(|r| !image.repo.ends_with(*r)) {
        let n = requests(&format!("/{repo}/"));
        if n != 0 {
            problems.push(format!("asked {n} times for {repo}, not its own"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn check_fake(fake: &FakeUpstream, image: &Image) -> Result<(), String> {
    check_upstream(
        image,
        |digest| fake.hits_on(Host::Front, Method::GET, digest),
        |path| fake.count(|s| s.path.contains(path)),
    )
}

// ---------------------------------------------------------------------------
// Pulls

/// How the client is told about regcache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// hosts.toml, containerd adds `?ns=<host>`.
    Ns,
    /// hosts.toml with `override_path` and `/v2/<host>` in the URL.
    OverridePath,
    /// registries.conf mirror `REGCACHE/<host>`.
    Path,
    /// registries.conf mirror `REGCACHE`, no path: the default upstream.
    NoPath,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Ns => "hosts.toml, ns",
            Mode::OverridePath => "hosts.toml, override_path",
            Mode::Path => "registries.conf, path",
            Mode::NoPath => "registries.conf, no path",
        }
    }
}

/// What is pulled: an image name and the upstream that must serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `docker.io/library/hubimg` from docker-registry.
    Hub,
    /// `docker.io/hubimg`, which regcache must turn into `library/hubimg`.
    HubShort,
    /// `registry.k8s.io/k8simg` from the redirecting fake.
    K8s,
    /// `k8s.gcr.io/k8simg`: the alias, registry.k8s.io's content.
    K8sAlias,
    /// `ghcr.io/org/ghimg` from the token-auth fake.
    Ghcr,
    /// `quay.io/org/quayimg`: no such upstream, regcache must answer 404.
    Unknown,
}

impl Target {
    fn host(self) -> &'static str {
        match self {
            Target::Hub | Target::HubShort => "docker.io",
            Target::K8s => "registry.k8s.io",
            Target::K8sAlias => "k8s.gcr.io",
            Target::Ghcr => "ghcr.io",
            Target::Unknown => UNKNOWN_HOST,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Target::Hub => "docker.io",
            Target::HubShort => "docker.io, short name",
            Target::K8s => "registry.k8s.io",
            Target::K8sAlias => "k8s.gcr.io -> registry.k8s.io",
            Target::Ghcr => "ghcr.io (token auth)",
            Target::Unknown => "quay.io (unknown): 404",
        }
    }

    /// The image the client must store; None if the pull must be refused.
    fn image(self, up: &Upstreams) -> Option<&Image> {
        match self {
            Target::Hub | Target::HubShort => Some(&up.hub_image),
            Target::K8s | Target::K8sAlias => Some(&up.k8s_image),
            Target::Ghcr => Some(&up.ghcr_image),
            Target::Unknown => None,
        }
    }

    /// The repository in the name the user writes.
    fn repo(self, up: &Upstreams) -> &str {
        match (self, self.image(up)) {
            (Target::HubShort, _) => "hubimg",
            (_, Some(image)) => image.repo.as_str(),
            (_, None) => UNKNOWN_REPO,
        }
    }

    /// `host/repository:tag` as the user writes it.
    fn reference(self, up: &Upstreams) -> String {
        format!("{}/{}:{TAG}", self.host(), self.repo(up))
    }
}

/// Every pull of the test: containerd in both hosts.toml forms and podman and
/// skopeo with a path, each from every target; the short Docker Hub name; the
/// mirror without a path for the default upstream.
fn matrix() -> Vec<(Client, Mode, Target)> {
    use Target::{Ghcr, Hub, HubShort, K8s, K8sAlias, Unknown};
    let every = [Hub, K8s, K8sAlias, Ghcr, Unknown];
    let mut pulls = Vec::new();
    for mode in [Mode::Ns, Mode::OverridePath] {
        pulls.extend(every.map(|t| (Client::Containerd, mode, t)));
    }
    pulls.push((Client::Containerd, Mode::Ns, HubShort));
    for client in [Client::Podman, Client::Skopeo] {
        pulls.extend(every.map(|t| (client, Mode::Path, t)));
        pulls.push((client, Mode::NoPath, K8s));
    }
    pulls
}

fn platforms(client: Client) -> Platforms {
    match client {
        Client::Podman => Platforms::One("amd64"),
        _ => Platforms::All,
    }
}

/// Pulls `reference` with the guide's configuration for `mode`. `image` is
/// only read by podman's check of what it stored.
fn pull(
    client: Client,
    mode: Mode,
    mirror: &str,
    reference: &str,
    image: &Image,
) -> Result<Stored, String> {
    let platforms = platforms(client);
    let snippet = match mode {
        Mode::Ns => "containerd-hosts-ns",
        Mode::OverridePath => "containerd-hosts-override-path",
        Mode::Path | Mode::NoPath => {
            let conf = registries_conf(mode, mirror);
            return match client {
                Client::Podman => podman_pull_with_conf(&conf, image, reference, platforms),
                _ => skopeo_copy_with_conf(&conf, reference, platforms),
            };
        }
    };
    // One directory per registry host, as on a node.
    let hosts: Vec<(String, String)> = HOSTS
        .iter()
        .map(|h| (h.to_string(), filled(snippet, mirror, h)))
        .collect();
    containerd_pull_with_hosts(&hosts, reference, platforms)
}

/// registries.conf as the podman guide says: the path block for every host,
/// or the no-path block for the default upstream alone.
fn registries_conf(mode: Mode, mirror: &str) -> String {
    if mode == Mode::NoPath {
        return filled("registries-conf-default", mirror, "registry.k8s.io");
    }
    HOSTS
        .iter()
        .map(|h| filled("registries-conf-path", mirror, h))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A pull regcache must refuse: the client failed after trying its closed
/// fallback, regcache answered every request for the repository with 404, and
/// no upstream saw a request.
fn check_refused(
    pulled: Result<Stored, String>,
    regcache: &Regcache,
    upstream_requests: (usize, usize),
) -> Result<(), String> {
    let error = match pulled {
        Ok(stored) => return Err(format!("the pull succeeded: {}", stored.top)),
        Err(error) => error,
    };
    // After regcache's 404 the client tries its fallback, which must be the
    // closed port (so nothing real could have answered instead).
    if !error.contains(&format!("{CLOSED_UPSTREAM}/")) {
        return Err(format!(
            "the client did not try the closed fallback: {error}"
        ));
    }
    let log = regcache.log();
    let answers: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("regcache::access") && l.contains(UNKNOWN_REPO))
        .collect();
    if answers.is_empty() {
        return Err("regcache was never asked: the client did not use the mirror".into());
    }
    if let Some(line) = answers.iter().find(|l| !l.contains("status=404")) {
        return Err(format!("regcache answered other than 404: {line}"));
    }
    let (before, after) = upstream_requests;
    if before != after {
        return Err(format!("{} requests reached an upstream", after - before));
    }
    Ok(())
}

/// One line of the report.
struct Row {
    client: &'static str,
    mode: &'static str,
    upstream: String,
    seconds: f64,
    result: Result<(), String>,
}

fn run_case(
    (client, mode, target): (Client, Mode, Target),
    up: &Upstreams,
    regcache: &Regcache,
) -> Row {
    let start = Instant::now();
    let before = up.total_requests();
    let log_mark = settled_log(regcache).len();
    let reference = target.reference(up);
    // Any image will do for podman's check of a pull that must be refused.
    let image = target.image(up).unwrap_or(&up.k8s_image);
    let pulled = pull(client, mode, &regcache.host(), &reference, image);
    let result = match target.image(up) {
        Some(image) => pulled.and_then(|stored| verify(&stored, image, platforms(client))),
        None => check_refused(pulled, regcache, (before, up.total_requests())),
    };
    let log = settled_log(regcache);
    let result = result
        .and_then(|()| check_wire_form(&log[log_mark..], mode, target.host(), target.repo(up)));
    Row {
        client: client.name(),
        mode: mode.label(),
        upstream: target.label().to_string(),
        seconds: start.elapsed().as_secs_f64(),
        result,
    }
}

/// regcache's log once it has stopped growing: a response's access line is
/// written when its body ends, which may be just after the client is done.
fn settled_log(regcache: &Regcache) -> String {
    let mut log = regcache.log();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = regcache.log();
        if now.len() == log.len() {
            return now;
        }
        log = now;
    }
}

/// Every request regcache logged for `repo` during the pull has the form
/// `mode` must produce: `/v2/<repo>/...?ns=<host>` (ns), `/v2/<host>/<repo>/...
/// ?ns=<host>` (override_path), `/v2/<host>/<repo>/...` (path) or
/// `/v2/<repo>/...` (no path). So the table's routing mode is what was tried.
fn check_wire_form(log: &str, mode: Mode, host: &str, repo: &str) -> Result<(), String> {
    let prefix = match mode {
        Mode::Ns | Mode::NoPath => format!("path=/v2/{repo}/"),
        Mode::OverridePath | Mode::Path => format!("path=/v2/{host}/{repo}/"),
    };
    let wants_ns = matches!(mode, Mode::Ns | Mode::OverridePath);
    let ns = format!("ns={host} ");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("regcache::access") && l.contains(&format!("/{repo}/")))
        .collect();
    if lines.is_empty() {
        return Err(format!("regcache logged no request for {repo}"));
    }
    match lines.iter().find(|l| {
        !l.contains(&prefix) || l.contains(&ns) != wants_ns || (!wants_ns && l.contains("ns="))
    }) {
        Some(line) => Err(format!("not the {} form: {line}", mode.label())),
        None => Ok(()),
    }
}

/// The report: one line per pull, then each failure in full.
fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "\n{:<10} | {:<25} | {:<30} | result\n",
        "client", "routing mode", "upstream"
    );
    for row in rows {
        let result = match &row.result {
            Ok(()) => "pass".to_string(),
            Err(e) => format!("FAIL: {}", summary(e)),
        };
        let _ = writeln!(
            out,
            "{:<10} | {:<25} | {:<30} | {} ({:.1}s)",
            row.client, row.mode, row.upstream, result, row.seconds
        );
    }
    for row in rows {
        if let Err(e) = &row.result {
            let _ = writeln!(
                out,
                "\n--- {} | {} | {}:\n{e}",
                row.client, row.mode, row.upstream
            );
        }
    }
    out
}

/// The line of a client's error that says what went wrong (its final
/// complaint), shortened for the table.
fn summary(error: &str) -> String {
    let line = error
        .lines()
        .find(|l| l.starts_with("ctr: ") || l.starts_with("Error: ") || l.contains("level=fatal"))
        .unwrap_or_else(|| error.lines().next().unwrap_or_default());
    line.chars().take(160).collect()
}

/// The guides' tested snippets, pulled through by containerd, podman and
/// skopeo from three upstreams behind one regcache.
#[test]
fn guide_snippets_pull_from_every_upstream_with_real_clients() {
    // The fallback must really be closed, or a failing mirror could pass.
    assert!(
        std::net::TcpStream::connect(CLOSED_UPSTREAM).is_err(),
        "{CLOSED_UPSTREAM} accepts connections"
    );
    let up = Upstreams::start();
    let regcache = up.regcache();
    let mut rows: Vec<Row> = matrix()
        .into_iter()
        .map(|p| run_case(p, &up, &regcache))
        .collect();
    for (upstream, result) in up.check_hits() {
        rows.push(Row {
            client: "-",
            mode: "upstream hits",
            upstream,
            seconds: 0.0,
            result,
        });
    }
    let table = table(&rows);
    eprintln!("{table}");
    let failed = rows.iter().filter(|r| r.result.is_err()).count();
    assert_eq!(failed, 0, "routing interop failures: see the table above");
}

/// Every `<!-- tested -->` snippet is one this module pulls with, and every
/// `<!-- filled: FILE#NAME K=V ... -->` block equals that snippet filled in.
#[test]
fn guide_examples_are_the_tested_snippets_filled_in() {
    let mut filled_blocks = 0;
    for entry in std::fs::read_dir(GUIDES).expect("docs/guides") {
        let path = entry.expect("dir entry").path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let text = guide(&file);
        for line in text.lines() {
            if let Some(name) = marker(line, "<!-- tested: ") {
                assert!(
                    TESTED.contains(&(file.as_str(), name.trim())),
                    "{file}: tested snippet {name} is not pulled by any test"
                );
            }
            if let Some(spec) = marker(line, "<!-- filled: ") {
                check_filled(&file, &text, line, spec);
                filled_blocks += 1;
            }
        }
    }
    // A broken marker parser must not pass silently.
    assert!(
        filled_blocks >= 5,
        "only {filled_blocks} filled blocks found"
    );
}

/// The text of an HTML-comment marker `<prefix>...-->` on `line`.
fn marker<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix(prefix)?;
    rest.strip_suffix("-->").map(str::trim)
}

/// `spec` is `FILE#NAME K=V ...`: the block after `line` in `text` must be
/// that snippet with each K replaced by V.
fn check_filled(file: &str, text: &str, line: &str, spec: &str) {
    let mut words = spec.split_whitespace();
    let source = words.next().expect("FILE#NAME");
    let (source_file, name) = source.split_once('#').expect("FILE#NAME");
    let values: Vec<(&str, &str)> = words.map(|w| w.split_once('=').expect("K=V")).collect();
    let expected = fill(&snippet(source_file, name), &values);
    let block = fenced_after(text, line).expect("a block after the marker");
    assert_eq!(block, expected, "{file}: block after {line}");
}
