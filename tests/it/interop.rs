//! Interop with real third-party clients from Debian: skopeo, containerd (`ctr`)
//! and podman pull, through the real regcache binary, a multi-arch Docker
//! manifest list, an OCI image with three layers and an image with a 1 GiB
//! layer, from a real `docker-registry` upstream and from the registry.k8s.io-like
//! redirecting, token-requiring fake. Every digest a client stored is checked
//! against the image, every blob must reach regcache from the upstream exactly
//! once, and a second pull of everything (each client starting from an empty
//! local store) must succeed with the upstream stopped.
//!
//! One regcache and one upstream per test; clients pull in sequence, and which
//! client pulls an image first (and so sees the misses, streamed while regcache
//! is still filling) rotates per image and per upstream: every client sees
//! misses from both upstreams, and the 1 GiB miss is streamed by podman from
//! docker-registry and by containerd from the k8s-like upstream. Everything runs
//! on 127.0.0.1; the clients' idea of the real registry is a closed port, so a
//! failing mirror fails the pull. Every process started here is stopped by its
//! guard, on success and on failure.

use std::fmt::Write as _;
use std::time::Instant;

use crate::support::clients::{
    By, CLOSED_UPSTREAM, Client, Platforms, skopeo_inspect_direct, verify,
};
use crate::support::docker_registry::DockerRegistry;
use crate::support::fake::FakeUpstream;
use crate::support::images::{self, Image};
use crate::support::regcache::Regcache;
use crate::support::upstream::Upstream;

/// The three test images; names are per test so failures are easy to read.
fn test_images(seed: u64) -> Vec<Image> {
    let start = Instant::now();
    let images = vec![
        images::oci_three_layers("interop/oci-three-layers", "v1", seed),
        images::docker_multi_arch("interop/multi-arch", "v1", seed + 1),
        images::big_layer("interop/big-layer", "v1"),
    ];
    eprintln!("test images ready in {:.1}s", start.elapsed().as_secs_f64());
    images
}

/// One pull's outcome, for the report table.
struct Row {
    phase: &'static str,
    client: Client,
    image: String,
    platforms: String,
    seconds: f64,
    result: Result<(), String>,
}

/// Seeds the upstream, runs every client against regcache twice (the second
/// time with the upstream stopped) and panics with a table if anything failed.
/// Image `i` is pulled first by `Client::ALL` rotated left by `i + rotate`.
fn pull_matrix(label: &str, mut upstream: Upstream, images: &[Image], rotate: usize) {
    let seeding = Instant::now();
    for image in images {
        upstream.seed(image);
    }
    let seeding = seeding.elapsed().as_secs_f64();
    let regcache = Regcache::with_upstream(upstream.url());
    let mirror = regcache.host();
    let mut rows = Vec::new();

    let pull_all = |phase: &'static str, by: By, big: bool, rows: &mut Vec<Row>| {
        for (i, image) in images.iter().enumerate() {
            if !big && image.blobs.iter().any(|b| b.bytes.len() > 100 << 20) {
                continue;
            }
            let mut order = Client::ALL.to_vec();
            order.rotate_left((i + rotate) % Client::ALL.len());
            for client in order {
                for platforms in client.pulls_for(image) {
                    let start = Instant::now();
                    let result = client
                        .pull(&mirror, image, by, platforms)
                        .and_then(|stored| verify(&stored, image, platforms));
                    rows.push(Row {
                        phase,
                        client,
                        image: image.repo.clone(),
                        platforms: match platforms {
                            Platforms::All => "all".to_string(),
                            Platforms::One(arch) => arch.to_string(),
                        },
                        seconds: start.elapsed().as_secs_f64(),
                        result,
                    });
                }
            }
        }
    };

    pull_all("first pull", By::Tag, true, &mut rows);

    // Every blob came from the upstream exactly once, whichever client pulled.
    let mut fetch_problems = Vec::new();
    for image in images {
        for blob in &image.blobs {
            let fetches = upstream.blob_fetches(&blob.digest, blob.bytes.len());
            if fetches != 1.0 {
                fetch_problems.push(format!(
                    "{}: blob {} fetched from upstream {fetches} times, expected once",
                    image.repo, blob.digest
                ));
            }
        }
    }

    upstream.stop();
    pull_all("upstream stopped", By::Tag, true, &mut rows);
    // By digest too (the 1 GiB image only by tag, to keep the run short).
    pull_all("stopped, digest", By::Digest, false, &mut rows);

    // The README's direct form: `skopeo inspect --tls-verify=false
    // docker://MIRROR/<repo>:<tag>` gets the exact top manifest.
    for image in images {
        let start = Instant::now();
        let result = skopeo_inspect_direct(&mirror, image).and_then(|digest| {
            (digest == image.top)
                .then_some(())
                .ok_or_else(|| format!("raw manifest hashes to {digest}, not {}", image.top))
        });
        rows.push(Row {
            phase: "direct inspect",
            client: Client::Skopeo,
            image: image.repo.clone(),
            platforms: "raw".to_string(),
            seconds: start.elapsed().as_secs_f64(),
            result,
        });
    }

    let mut table =
        format!("\n{label}: client x image through regcache (upstream seeded in {seeding:.1}s)\n");
    for row in &rows {
        let _ = writeln!(
            table,
            "{:<17} {:<11} {:<26} {:<6} {:>6.1}s {}",
            row.phase,
            row.client.name(),
            row.image,
            row.platforms,
            row.seconds,
            match &row.result {
                Ok(()) => "pass".to_string(),
                Err(e) => format!("FAIL: {e}"),
            }
        );
    }
    for problem in &fetch_problems {
        let _ = writeln!(table, "FAIL: {problem}");
    }
    eprintln!("{table}");
    let failed = rows.iter().any(|r| r.result.is_err()) || !fetch_problems.is_empty();
    assert!(!failed, "interop failures:{table}");
}

/// A real upstream: Debian's docker-registry (distribution 2.8), plain HTTP.
#[test]
fn docker_registry_upstream() {
    let images = test_images(101);
    pull_matrix(
        "docker-registry upstream",
        Upstream::Docker(DockerRegistry::start()),
        &images,
        0,
    );
}

/// The registry.k8s.io-like fake: 307 to a registry host that demands a Bearer
/// token and 302s blobs (relatively) on to a storage host.
#[test]
fn k8s_like_upstream_with_token() {
    let images = test_images(202);
    pull_matrix(
        "registry.k8s.io-like upstream (redirects + token)",
        Upstream::K8sLike(FakeUpstream::k8s_like_with_token()),
        &images,
        2,
    );
}

/// The client configuration is hermetic: with the mirror down, every client
/// fails, naming the closed primary, and never looks up the real registry.
#[test]
fn clients_never_fall_back_to_the_real_registry() {
    let image = images::oci_three_layers("interop/no-fallback", "v1", 7);
    let closed = format!("127.0.0.1:{}", crate::support::process::free_port());
    for client in Client::ALL {
        let platforms = client.pulls_for(&image)[0];
        let err = client
            .pull(&closed, &image, By::Tag, platforms)
            .expect_err("a pull with the mirror down must fail");
        let name = client.name();
        assert!(
            err.contains(&format!("{CLOSED_UPSTREAM}/")),
            "{name} did not try the closed primary:\n{err}"
        );
        assert!(
            !err.contains("lookup registry.k8s.io") && !err.contains("https://registry.k8s.io"),
            "{name} tried the real registry:\n{err}"
        );
    }
}
