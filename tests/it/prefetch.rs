//! `regcache prefetch` run as the real binary against a running regcache in
//! front of the registry.k8s.io-like fake and of docker-registry: the three
//! test images from a kubectl-style list (`sort | uniq -c` counts), each blob
//! fetched from the upstream once even with `--concurrency 8` and skopeo
//! pulling at the same time; then, with the upstream stopped, skopeo pulls
//! every image from the cache. `--platform` takes only the platforms asked
//! for; a second run finds everything cached (regcache's `Cache-Status`); a
//! missing image, a bad line and wrong upstream bytes fail the run with their
//! cause while the rest is prefetched.
//!
//! Everything runs on 127.0.0.1; every server started here is dropped by the test.

use std::path::Path;
use std::process::Output;

use crate::support::clients::{By, Client, Platforms, REGISTRY, verify};
use crate::support::docker_registry::DockerRegistry;
use crate::support::fake::FakeUpstream;
use crate::support::images::{self, Image};
use crate::support::regcache::Regcache;
use crate::support::upstream::Upstream;

/// The kubectl one-liner's output for `images`: `uniq -c` counts, padded.
fn kubectl_list(images: &[Image]) -> String {
    images
        .iter()
        .enumerate()
        .map(|(i, image)| format!("{:>7} {REGISTRY}/{}:{}\n", i + 1, image.repo, image.tag))
        .collect()
}

/// Runs `regcache prefetch --server <regcache> <args> <list file>`.
fn prefetch(regcache: &Regcache, args: &[&str], list: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("images.txt");
    std::fs::write(&file, list).unwrap();
    run_prefetch(&regcache.url(), args, &file)
}

fn run_prefetch(server: &str, args: &[&str], file: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .arg("prefetch")
        .arg("--server")
        .arg(server)
        .args(args)
        .arg(file)
        .output()
        .expect("run regcache prefetch")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Blobs of `images` the upstream did not send exactly `want` times.
fn fetch_problems(
    upstream: &Upstream,
    images: &[Image],
    want: f64,
    arch: Option<&str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for image in images {
        let wanted = match arch {
            Some(arch) if image.platforms.len() > 1 => image.digests_for(arch),
            _ => image.all_digests(),
        };
        for blob in &image.blobs {
            let fetches = upstream.blob_fetches(&blob.digest, blob.bytes.len());
            let expected = if wanted.contains(&blob.digest) {
                want
            } else {
                0.0
            };
            if fetches != expected {
                problems.push(format!(
                    "{} {}: fetched {fetches} times, expected {expected}",
                    image.repo, blob.digest
                ));
            }
        }
    }
    problems
}

#[test]
fn kubectl_list_through_the_k8s_like_fake_each_blob_once_then_pulls_with_upstream_down() {
    let images = vec![
        images::oci_three_layers("prefetch/oci-three-layers", "v1", 301),
        images::docker_multi_arch("prefetch/multi-arch", "v1", 302),
        images::big_layer("prefetch/big-layer", "v1"),
    ];
    let mut upstream = Upstream::K8sLike(FakeUpstream::k8s_like());
    images.iter().for_each(|image| upstream.seed(image));
    let regcache = Regcache::with_upstream(upstream.url());
    let mirror = regcache.host();

    // A node pulls the multi-arch image while prefetch runs.
    let node = {
        let (mirror, image) = (mirror.clone(), images[1].clone());
        std::thread::spawn(move || {
            Client::Skopeo
                .pull(&mirror, &image, By::Tag, Platforms::All)
                .and_then(|stored| verify(&stored, &image, Platforms::All))
        })
    };
    let output = prefetch(&regcache, &["--concurrency", "8"], &kubectl_list(&images));
    let node = node.join().expect("node thread");
    let report = text(&output);
    assert!(output.status.success(), "{report}");
    node.unwrap_or_else(|e| panic!("the node's pull failed: {e}\n{report}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for image in &images {
        let line = format!("ok      {REGISTRY}/{}:{}  ", image.repo, image.tag);
        assert!(stdout.contains(&line), "no {line:?} in\n{report}");
    }
    let total: usize = images
        .iter()
        .flat_map(|i| &i.blobs)
        .map(|b| b.bytes.len())
        .sum();
    assert!(
        stdout.contains("prefetched 3 of 3 images: 5 manifests, 12 blobs,"),
        "{report}"
    );
    assert!(total > 1 << 30);
    let problems = fetch_problems(&upstream, &images, 1.0, None);
    assert!(problems.is_empty(), "{problems:#?}\n{report}");

    upstream.stop();
    for image in &images {
        let stored = Client::Skopeo
            .pull(&mirror, image, By::Tag, Platforms::All)
            .and_then(|stored| verify(&stored, image, Platforms::All));
        stored.unwrap_or_else(|e| panic!("{} with the upstream down: {e}", image.repo));
    }
}

#[test]
fn platform_selection_from_docker_registry_takes_only_what_was_asked() {
    let images = vec![
        images::oci_three_layers("prefetch/oci-three-layers", "v1", 311),
        images::docker_multi_arch("prefetch/multi-arch", "v1", 312),
    ];
    let mut upstream = Upstream::Docker(DockerRegistry::start());
    images.iter().for_each(|image| upstream.seed(image));
    let regcache = Regcache::with_upstream(upstream.url());
    let list: String = images
        .iter()
        .map(|i| format!("{REGISTRY}/{}:{}\n", i.repo, i.tag))
        .collect();
    let output = prefetch(
        &regcache,
        &["--platform", "linux/arm64", "--concurrency", "8"],
        &list,
    );
    let report = text(&output);
    assert!(output.status.success(), "{report}");
    let problems = fetch_problems(&upstream, &images, 1.0, Some("arm64"));
    assert!(problems.is_empty(), "{problems:#?}\n{report}");
    assert!(
        report.contains("already cached") && !report.contains("not said"),
        "{report}"
    );

    // Again: everything is already cached, and regcache says so (Cache-Status).
    let again = prefetch(
        &regcache,
        &["--platform", "linux/arm64", "--concurrency", "8"],
        &list,
    );
    let report = text(&again);
    assert!(again.status.success(), "{report}");
    assert!(report.contains("; 0 B fetched from upstream, "), "{report}");
    let problems = fetch_problems(&upstream, &images, 1.0, Some("arm64"));
    assert!(problems.is_empty(), "{problems:#?}\n{report}");

    upstream.stop();
    let mirror = regcache.host();
    let arm = Platforms::One("arm64");
    // podman keeps one platform per pull and records the index's digest
    // (skopeo would record the platform manifest's).
    for image in &images {
        let platforms = if image.platforms.len() > 1 {
            arm
        } else {
            Client::Podman.pulls_for(image)[0]
        };
        let stored = Client::Podman
            .pull(&mirror, image, By::Tag, platforms)
            .and_then(|stored| verify(&stored, image, platforms));
        stored.unwrap_or_else(|e| panic!("{} with the upstream down: {e}", image.repo));
    }
    let amd = Client::Podman.pull(&mirror, &images[1], By::Tag, Platforms::One("amd64"));
    assert!(
        amd.is_err(),
        "amd64 was not prefetched, so it cannot be pulled offline"
    );
}

#[test]
fn failures_are_named_with_their_cause_and_the_rest_is_prefetched() {
    let good = images::oci_three_layers("prefetch/good", "v1", 321);
    let corrupt = images::oci_three_layers("prefetch/corrupt", "v1", 322);
    let fake = FakeUpstream::k8s_like();
    let upstream = Upstream::K8sLike(fake);
    upstream.seed(&good);
    upstream.seed(&corrupt);
    let Upstream::K8sLike(fake) = &upstream else {
        unreachable!()
    };
    let bad_blob = &corrupt.platforms[0].layers[1];
    fake.set_wrong_bytes(bad_blob, true);
    let regcache = Regcache::with_upstream(upstream.url());
    let list = format!(
        "{REGISTRY}/prefetch/good:v1\n{REGISTRY}/prefetch/missing:v1\nNot A Reference!\n{REGISTRY}/prefetch/corrupt:v1\n"
    );
    let output = prefetch(&regcache, &[], &list);
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains(&format!("ok      {REGISTRY}/prefetch/good:v1")),
        "{report}"
    );
    assert!(stdout.contains("prefetched 1 of 3 images"), "{report}");
    assert!(stdout.contains(", 0 B already cached"), "{report}");
    let missing = stdout
        .lines()
        .find(|l| l.starts_with(&format!("failed: {REGISTRY}/prefetch/missing:v1")))
        .unwrap_or_else(|| panic!("no failure line for the missing image\n{report}"));
    assert!(
        missing.contains("404") && missing.contains("MANIFEST_UNKNOWN"),
        "{missing}"
    );
    let corrupted = stdout
        .lines()
        .find(|l| l.starts_with(&format!("failed: {REGISTRY}/prefetch/corrupt:v1")))
        .unwrap_or_else(|| panic!("no failure line for the corrupt image\n{report}"));
    assert!(corrupted.contains(bad_blob.as_str()), "{corrupted}");
    assert!(stderr.contains("line 3: \"Not A Reference!\""), "{report}");
}
