//! Docker Engine as a client: a private Debian `dockerd` (20.10) with regcache
//! as its `registry-mirrors` entry, both configured from the snippets in
//! `docs/guides/docker.md`, and regcache's `docker.io` upstream pointed at a
//! real `docker-registry` or at the registry.k8s.io-like fake (redirects +
//! token). Like the interop matrix, per image: `docker pull` by tag (a short
//! name, `pause:3.9`, which Docker asks the mirror for as `library/pause`; a
//! namespaced multi-arch Docker manifest list; an image with a 1 GiB layer) and
//! by digest (except the 1 GiB image), every digest Docker records
//! (`RepoDigests`, the image ID, the layers' diff IDs) checked against what was
//! pushed; every blob Docker needed reached regcache from the upstream once;
//! then everything is removed from Docker and pulled again with the upstream
//! stopped.
//!
//! Docker falls back to the real Docker Hub when its mirror fails; the daemon's
//! proxy is a closed port (see `support::dockerd`), which each test proves by
//! pulling a name regcache cannot serve. Everything runs on 127.0.0.1, and the
//! daemon, regcache and the upstream are stopped by their guards.

use std::fmt::Write as _;
use std::time::Instant;

use crate::routing_interop::{fill, snippet};
use crate::support::clients::run;
use crate::support::docker_registry::DockerRegistry;
use crate::support::dockerd::Dockerd;
use crate::support::fake::FakeUpstream;
use crate::support::images::{self, Image};
use crate::support::regcache::Regcache;
use crate::support::upstream::Upstream;

/// The guide's regcache config for a Docker Hub mirror (Docker sends no `ns`
/// and no path prefix, `/v2/library/pause/...`, so Docker Hub is the default
/// upstream), with `upstream` as Docker Hub.
fn hub_mirror_config(upstream: &str) -> String {
    let template = snippet("docker.md", "docker-regcache-toml");
    fill(&template, &[("UPSTREAM", upstream)])
}

/// The guide's daemon.json with regcache at `host` (`127.0.0.1:PORT`).
fn daemon_json(host: &str) -> String {
    let template = snippet("docker.md", "docker-daemon-json");
    fill(&template, &[("REGCACHE", host)])
}

/// The architecture Docker pulls from a manifest list on this machine.
fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// One image and how Docker names it.
struct Case {
    /// The table column.
    column: &'static str,
    image: Image,
    /// The name `docker pull` is given (a short name stays short).
    docker_repo: &'static str,
    by_digest: bool,
}

impl Case {
    /// The references pulled: by tag, then by digest.
    fn references(&self) -> Vec<String> {
        let mut references = vec![format!("{}:{}", self.docker_repo, self.image.tag)];
        if self.by_digest {
            references.push(format!("{}@{}", self.docker_repo, self.image.top));
        }
        references
    }
}

fn cases(seed: u64) -> Vec<Case> {
    vec![
        Case {
            column: "Docker manifest list (amd64+arm64)",
            image: images::docker_multi_arch("team/app", "v1", seed),
            docker_repo: "team/app",
            by_digest: true,
        },
        Case {
            column: "OCI image, 3 layers (pause:3.9)",
            image: images::oci_three_layers("library/pause", "3.9", seed + 1),
            docker_repo: "pause",
            by_digest: true,
        },
        Case {
            column: "1 GiB layer",
            image: images::big_layer("team/big", "v1"),
            docker_repo: "team/big",
            by_digest: false,
        },
    ]
}

fn docker(dockerd: &Dockerd, args: &[&str]) -> Result<String, String> {
    let mut cmd = dockerd.docker();
    cmd.args(args);
    run(&mut cmd)
}

/// `docker pull reference`, then the digests Docker recorded against `case`.
fn pull_and_check(dockerd: &Dockerd, case: &Case, reference: &str) -> Result<(), String> {
    docker(dockerd, &["pull", reference])?;
    let inspect = docker(dockerd, &["image", "inspect", reference])?;
    let inspect: serde_json::Value =
        serde_json::from_str(&inspect).map_err(|e| format!("inspect JSON: {e}"))?;
    let image = &inspect[0];
    let want_repo_digest = format!("{}@{}", case.docker_repo, case.image.top);
    let repo_digests: Vec<&str> = image["RepoDigests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str())
        .collect();
    if repo_digests != [want_repo_digest.as_str()] {
        return Err(format!(
            "RepoDigests {repo_digests:?}, want [{want_repo_digest}]"
        ));
    }
    // The image ID is the config's digest; the layers are the config's diff
    // IDs, which Docker verified while unpacking every layer.
    let platform = case.image.platform(docker_arch());
    if image["Id"] != platform.config {
        return Err(format!("Id {}, want {}", image["Id"], platform.config));
    }
    let layers: Vec<&str> = image["RootFS"]["Layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str())
        .collect();
    if layers != platform.diff_ids {
        return Err(format!("layers {layers:?}, want {:?}", platform.diff_ids));
    }
    Ok(())
}

/// Removes every image from the daemon.
fn remove_all(dockerd: &Dockerd) {
    let ids = docker(dockerd, &["images", "--quiet", "--no-trunc"]).unwrap();
    let mut ids: Vec<&str> = ids.split_whitespace().collect();
    ids.dedup();
    if !ids.is_empty() {
        let mut args = vec!["rmi", "--force"];
        args.extend(ids);
        docker(dockerd, &args).unwrap_or_else(|e| panic!("{e}"));
    }
    let left = docker(dockerd, &["images", "--quiet"]).unwrap();
    assert!(left.trim().is_empty(), "images left: {left}");
}

/// Every case pulled through regcache from `upstream`, then again with the
/// upstream stopped; prints a row per phase and case, and one table row.
fn docker_matrix(label: &str, mut upstream: Upstream, seed: u64) {
    let cases = cases(seed);
    for case in &cases {
        upstream.seed(&case.image);
    }
    let regcache = Regcache::builder()
        .config_toml(hub_mirror_config(&upstream.url()))
        .start();
    let dockerd = Dockerd::start(&daemon_json(&regcache.host())).unwrap_or_else(|e| panic!("{e}"));
    let mut report = String::new();
    let mut failures = Vec::new();
    let mut pull_all = |phase: &str, failures: &mut Vec<String>| {
        for case in &cases {
            for reference in case.references() {
                let start = Instant::now();
                let result = pull_and_check(&dockerd, case, &reference);
                let seconds = start.elapsed().as_secs_f64();
                let verdict = result.as_ref().map_or("FAIL", |()| "pass");
                let _ = writeln!(report, "{phase} | {reference} | {verdict} | {seconds:.1}s");
                if let Err(e) = result {
                    failures.push(format!("{phase} {reference}: {e}"));
                }
            }
        }
    };

    pull_all("first pull", &mut failures);
    // Docker asked the mirror for the short name under library/.
    regcache.wait_for_log("path=/v2/library/pause/manifests/3.9");
    for case in &cases {
        let platform = case.image.platform(docker_arch());
        for blob in case.image.blobs.iter() {
            let needed = platform.layers.contains(&blob.digest) || platform.config == blob.digest;
            let fetches = upstream.blob_fetches(&blob.digest, blob.bytes.len());
            if needed && fetches != 1.0 {
                failures.push(format!("{} fetched {fetches} times", blob.digest));
            }
        }
    }
    // A name regcache cannot serve: Docker falls back to registry-1.docker.io,
    // which it can only reach through the dead proxy.
    let fallback = docker(&dockerd, &["pull", "absent/image:1"]).unwrap_err();
    assert!(
        fallback.contains("proxyconnect tcp: dial tcp 127.0.0.1:1"),
        "the fallback to Docker Hub was not stopped by the dead proxy:\n{fallback}"
    );

    remove_all(&dockerd);
    upstream.stop();
    pull_all("upstream down", &mut failures);

    let columns: Vec<String> = cases
        .iter()
        .map(|case| {
            let failed = failures
                .iter()
                .any(|f| f.contains(&format!(" {}", case.docker_repo)));
            (if failed { "FAIL" } else { "pass" }).to_owned()
        })
        .collect();
    eprintln!(
        "{label}\n{report}| client | upstream | {} |\n| Docker Engine 20.10 (daemon.json registry-mirrors) | {label} | {} |",
        cases
            .iter()
            .map(|c| c.column)
            .collect::<Vec<_>>()
            .join(" | "),
        columns.join(" | ")
    );
    assert!(
        failures.is_empty(),
        "Docker Engine failures:\n{}",
        failures.join("\n")
    );
}

/// A real upstream: Debian's docker-registry (distribution 2.8), plain HTTP.
#[test]
fn docker_pulls_through_regcache_from_docker_registry() {
    docker_matrix(
        "docker-registry",
        Upstream::Docker(DockerRegistry::start()),
        301,
    );
}

/// The registry.k8s.io-like fake as Docker Hub: 307 to a registry host that
/// demands a Bearer token and 302s blobs on to a storage host.
#[test]
fn docker_pulls_through_regcache_from_the_k8s_like_fake() {
    docker_matrix(
        "k8s-like (redirects + token)",
        Upstream::K8sLike(FakeUpstream::k8s_like_with_token()),
        302,
    );
}
