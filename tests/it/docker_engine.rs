//! Docker Engine as a client: a private Debian `dockerd` with regcache as its
//! `registry-mirrors` entry, and regcache's `docker.io` upstream pointed at a
//! real `docker-registry` on loopback. `docker pull` of a short name
//! (`pause:3.9`, which Docker asks the mirror for as `library/pause`), of a
//! namespaced name (a multi-arch Docker manifest list) and of a digest
//! reference; every digest Docker records (`RepoDigests`, the image ID, the
//! layers' diff IDs) is checked against what was pushed, and every blob Docker
//! needed reached regcache from the upstream once. Then the images are removed
//! and pulled again with the upstream stopped.
//!
//! Docker falls back to the real Docker Hub when its mirror fails; the daemon's
//! proxy is a closed port (see `support::dockerd`), which the test proves by
//! pulling a name regcache cannot serve. Everything runs on 127.0.0.1, and the
//! daemon, regcache and docker-registry are stopped by their guards.

use crate::routing_interop::{fill, snippet};
use crate::support::clients::run;
use crate::support::docker_registry::DockerRegistry;
use crate::support::dockerd::Dockerd;
use crate::support::images::{self, Image};
use crate::support::regcache::Regcache;

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

/// How an image is pulled and what Docker calls it afterwards.
struct Pull<'a> {
    image: &'a Image,
    /// What `docker pull` is given.
    reference: String,
    /// The repository Docker names in `RepoDigests` (short names stay short).
    docker_repo: &'a str,
}

fn docker(dockerd: &Dockerd, args: &[&str]) -> Result<String, String> {
    let mut cmd = dockerd.docker();
    cmd.args(args);
    run(&mut cmd)
}

/// `docker pull`, then the digests Docker recorded against the image.
fn pull_and_check(dockerd: &Dockerd, pull: &Pull<'_>) {
    let reference = pull.reference.as_str();
    docker(dockerd, &["pull", reference]).unwrap_or_else(|e| panic!("{e}"));
    let inspect =
        docker(dockerd, &["image", "inspect", reference]).unwrap_or_else(|e| panic!("{e}"));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).expect("inspect JSON");
    let image = &inspect[0];
    let want_repo_digest = format!("{}@{}", pull.docker_repo, pull.image.top);
    let repo_digests: Vec<&str> = image["RepoDigests"]
        .as_array()
        .expect("RepoDigests")
        .iter()
        .filter_map(|d| d.as_str())
        .collect();
    assert_eq!(repo_digests, [want_repo_digest.as_str()], "{reference}");
    let platform = pull.image.platform(docker_arch());
    // The image ID is the config's digest; the layers are the configs' diff IDs
    // Docker verified while unpacking every layer.
    assert_eq!(image["Id"], platform.config, "{reference}");
    let layers: Vec<&str> = image["RootFS"]["Layers"]
        .as_array()
        .expect("RootFS.Layers")
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert_eq!(layers, platform.diff_ids, "{reference}");
}

#[test]
fn docker_pulls_hub_names_through_regcache_and_again_with_the_upstream_down() {
    let mut registry = DockerRegistry::start();
    let pause = images::oci_three_layers("library/pause", "3.9", 91);
    let app = images::docker_multi_arch("team/app", "v1", 92);
    let tool = images::oci_three_layers("team/tool", "v2", 93);
    for image in [&pause, &app, &tool] {
        registry.push(image);
    }
    let regcache = Regcache::builder()
        .config_toml(hub_mirror_config(&registry.url()))
        .start();
    let dockerd = Dockerd::start(&daemon_json(&regcache.host())).unwrap_or_else(|e| panic!("{e}"));

    let pulls = [
        Pull {
            image: &pause,
            reference: "pause:3.9".into(),
            docker_repo: "pause",
        },
        Pull {
            image: &app,
            reference: "team/app:v1".into(),
            docker_repo: "team/app",
        },
        Pull {
            image: &tool,
            reference: format!("team/tool@{}", tool.top),
            docker_repo: "team/tool",
        },
    ];
    for pull in &pulls {
        pull_and_check(&dockerd, pull);
    }
    // Docker asked the mirror for the short name under library/.
    regcache.wait_for_log("path=/v2/library/pause/manifests/3.9");
    for pull in &pulls {
        let platform = pull.image.platform(docker_arch());
        for blob in platform.layers.iter().chain([&platform.config]) {
            let fetched = registry.requests("GET", &format!("/blobs/{blob}"));
            assert_eq!(fetched, 1, "{} {blob} from the upstream", pull.reference);
        }
    }

    // A name regcache cannot serve: Docker falls back to registry-1.docker.io,
    // which it can only reach through the dead proxy.
    let fallback = docker(&dockerd, &["pull", "absent/image:1"]).unwrap_err();
    assert!(
        fallback.contains("proxyconnect tcp: dial tcp 127.0.0.1:1"),
        "the fallback to Docker Hub was not stopped by the dead proxy:\n{fallback}"
    );

    // From regcache's disk alone: every image removed, the upstream stopped.
    for pull in &pulls {
        docker(&dockerd, &["rmi", &pull.reference]).unwrap_or_else(|e| panic!("{e}"));
    }
    let images = docker(&dockerd, &["images", "--quiet"]).unwrap();
    assert!(images.trim().is_empty(), "images left: {images}");
    registry.stop();
    for pull in &pulls {
        pull_and_check(&dockerd, pull);
    }
}
