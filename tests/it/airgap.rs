//! Air gap, end to end, with the real binary and real clients: regcache A (in
//! front of the registry.k8s.io-like fake) prefetches the three test images
//! and exports them to a tar while it runs; regcache B, whose only upstream is
//! a closed port, imports the tar while it runs, and skopeo, containerd and
//! podman pull every image from B with every digest checked. skopeo reads
//! the export as an `oci-archive:`, and a layout skopeo wrote from
//! docker-registry (`oci:DIR:NAME`) imports. A flipped byte or a cut tar
//! refuses exactly the image it belongs to, naming the blob, and leaves
//! nothing of it in B.
//!
//! Everything runs on 127.0.0.1; every server started here is dropped by the test.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Output;
use std::time::Instant;

use crate::support::clients::{
    By, CLOSED_UPSTREAM, Client, Platforms, REGISTRY, read_dir_layout, skopeo_copy_plain, verify,
};
use crate::support::docker_registry::DockerRegistry;
use crate::support::fake::FakeUpstream;
use crate::support::images::{self, Image};
use crate::support::regcache::Regcache;
use crate::support::upstream::Upstream;

/// `regcache <args> --data <dir>`, timed.
fn regcache_cmd(data_dir: &Path, args: &[&str]) -> (Output, f64) {
    let start = Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(args)
        .arg("--data")
        .arg(data_dir)
        .output()
        .expect("run regcache");
    (output, start.elapsed().as_secs_f64())
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `regcache prefetch` of `images` through `regcache`; returns seconds.
fn prefetch(regcache: &Regcache, images: &[Image]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    let lines: String = images
        .iter()
        .map(|i| format!("{REGISTRY}/{}:{}\n", i.repo, i.tag))
        .collect();
    std::fs::write(&list, lines).unwrap();
    let start = Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["prefetch", "--concurrency", "8", "--server"])
        .arg(regcache.url())
        .arg(&list)
        .output()
        .expect("run prefetch");
    assert!(output.status.success(), "prefetch: {}", text(&output));
    start.elapsed().as_secs_f64()
}

/// Where one image's export goes.
fn archive_of(work: &tempfile::TempDir, image: &Image) -> std::path::PathBuf {
    work.path()
        .join(format!("{}.tar", image.repo.replace('/', "-")))
}

/// Regcache B: no reachable upstream at all.
fn offline_regcache() -> Regcache {
    Regcache::with_upstream(format!("http://{CLOSED_UPSTREAM}"))
}

fn name(image: &Image) -> String {
    format!("{REGISTRY}/{}:{}", image.repo, image.tag)
}

#[test]
fn air_gap_end_to_end_every_client_pulls_from_the_offline_regcache() {
    let images = vec![
        images::oci_three_layers("airgap/oci-three-layers", "v1", 401),
        images::docker_multi_arch("airgap/multi-arch", "v1", 402),
        images::big_layer("airgap/big-layer", "v1"),
    ];
    let upstream = Upstream::K8sLike(FakeUpstream::k8s_like());
    images.iter().for_each(|image| upstream.seed(image));
    let a = Regcache::with_upstream(upstream.url());
    let b = offline_regcache();
    let work = tempfile::tempdir().unwrap();
    // Per image: prefetch through A, export it alone (a pattern) while A
    // runs, import the tar into B while B runs.
    let mut timings = Vec::new();
    for image in &images {
        let prefetch_seconds = prefetch(&a, std::slice::from_ref(image));
        let tar = archive_of(&work, image);
        let pattern = format!("{REGISTRY}/{}:{}", image.repo, image.tag);
        let (output, export_seconds) = regcache_cmd(
            a.data_dir(),
            &["export", "--out", tar.to_str().unwrap(), &pattern],
        );
        assert!(output.status.success(), "export: {}", text(&output));
        let export_size = std::fs::metadata(&tar).unwrap().len();
        let content: usize = image.blobs.iter().map(|b| b.bytes.len()).sum::<usize>()
            + image.manifests.iter().map(|m| m.bytes.len()).sum::<usize>();
        assert!(
            export_size > content as u64,
            "{export_size} bytes for {content}"
        );
        let (output, import_seconds) =
            regcache_cmd(b.data_dir(), &["import", tar.to_str().unwrap()]);
        let imported = format!("imported {}", name(image));
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains(&imported),
            "import: {}",
            text(&output)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("imported 1 of 1 images"),
            "the pattern selects one image: {}",
            text(&output)
        );
        timings.push(format!(
            "prefetch {prefetch_seconds:.1}s, export {export_seconds:.1}s {export_size} B, import {import_seconds:.1}s"
        ));
    }
    drop(a);
    drop(upstream);

    let mirror = b.host();
    let mut table = String::new();
    let mut failed = false;
    for (image, timing) in images.iter().zip(&timings) {
        let bytes: usize = image.blobs.iter().map(|b| b.bytes.len()).sum();
        let tar = archive_of(&work, image);
        let mut cells = vec![timing.clone()];
        for client in Client::ALL {
            let result: Result<(), String> =
                client.pulls_for(image).into_iter().try_for_each(|p| {
                    client
                        .pull(&mirror, image, By::Tag, p)
                        .and_then(|stored| verify(&stored, image, p))
                });
            failed |= result.is_err();
            cells.push(match result {
                Ok(()) => format!("{} pass", client.name()),
                Err(e) => format!("{} FAIL: {e}", client.name()),
            });
        }
        // skopeo reads the export itself. skopeo 1.9 (Debian 12) only looks
        // at index.json entries of OCI media types, so the Docker manifest
        // list (exported as it is: converting it would change its digest) is
        // left to the clients above.
        if image
            .manifests
            .iter()
            .any(|m| m.digest == image.top && m.media_type == images::DOCKER_LIST)
        {
            cells.push("oci-archive n/a (Docker list)".to_owned());
            let _ = writeln!(
                table,
                "{:<28} {:>11} | {}",
                image.repo,
                bytes,
                cells.join(" | ")
            );
            continue;
        }
        let out = work
            .path()
            .join(format!("dir-{}", image.repo.replace('/', "-")));
        let archive = skopeo_copy_plain(
            &format!("oci-archive:{}:{}", tar.display(), name(image)),
            &format!("dir:{}", out.display()),
            true,
        )
        .and_then(|_| read_dir_layout(&out))
        .and_then(|stored| verify(&stored, image, Platforms::All));
        failed |= archive.is_err();
        cells.push(match archive {
            Ok(()) => "oci-archive pass".to_owned(),
            Err(e) => format!("oci-archive FAIL: {e}"),
        });
        let _ = writeln!(
            table,
            "{:<28} {:>11} | {}",
            image.repo,
            bytes,
            cells.join(" | ")
        );
    }
    eprintln!("\nair gap (image, blob bytes, A → tar → B, pulls from B):\n{table}");
    assert!(!failed, "air-gap pulls failed:\n{table}");
}

#[test]
fn a_layout_skopeo_wrote_from_docker_registry_imports() {
    // An OCI image: skopeo writes it to the layout unchanged (a Docker list
    // would be converted to OCI, with new digests).
    let image = images::oci_three_layers("airgap/skopeo-layout", "v2", 411);
    let registry = DockerRegistry::start();
    registry.push(&image);
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let source = format!(
        "docker://{}/{}:{}",
        registry.url().trim_start_matches("http://"),
        image.repo,
        image.tag
    );
    skopeo_copy_plain(
        &source,
        &format!("oci:{}:{}", layout.display(), name(&image)),
        true,
    )
    .unwrap_or_else(|e| panic!("skopeo writing the layout: {e}"));
    drop(registry);

    let b = offline_regcache();
    let (output, _) = regcache_cmd(b.data_dir(), &["import", layout.to_str().unwrap()]);
    assert!(output.status.success(), "import: {}", text(&output));
    for client in [Client::Skopeo, Client::Podman] {
        for platforms in client.pulls_for(&image) {
            client
                .pull(&b.host(), &image, By::Tag, platforms)
                .and_then(|stored| verify(&stored, &image, platforms))
                .unwrap_or_else(|e| panic!("{} from B: {e}", client.name()));
        }
    }
}

/// Two images through A into a tar, and B to import a damaged copy of it.
struct Damaged {
    images: Vec<Image>,
    tar: Vec<u8>,
    work: tempfile::TempDir,
}

fn exported_pair(seed: u64) -> Damaged {
    let images = vec![
        images::oci_three_layers("airgap/first", "v1", seed),
        images::oci_three_layers("airgap/second", "v1", seed + 1),
    ];
    let upstream = Upstream::K8sLike(FakeUpstream::k8s_like());
    images.iter().for_each(|image| upstream.seed(image));
    let a = Regcache::with_upstream(upstream.url());
    prefetch(&a, &images);
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("pair.tar");
    let (output, _) = regcache_cmd(a.data_dir(), &["export", "--out", tar.to_str().unwrap()]);
    assert!(output.status.success(), "export: {}", text(&output));
    let tar = std::fs::read(&tar).unwrap();
    Damaged { images, tar, work }
}

/// Where `bytes` start inside `haystack`.
fn offset_of(haystack: &[u8], bytes: &[u8]) -> usize {
    haystack
        .windows(bytes.len())
        .position(|w| w == bytes)
        .expect("blob in the tar")
}

/// Imports `tar` into an offline regcache: (output, B).
fn import_into_b(damaged: &Damaged, tar: &[u8]) -> (Output, Regcache) {
    let path = damaged.work.path().join("damaged.tar");
    std::fs::write(&path, tar).unwrap();
    let b = offline_regcache();
    let (output, _) = regcache_cmd(b.data_dir(), &["import", path.to_str().unwrap()]);
    (output, b)
}

/// B serves `image` whole, or holds none of its unique content.
async fn assert_served(b: &Regcache, image: &Image, served: bool) {
    let client = crate::support::docker_registry::client();
    let url = format!("{}/v2/{}/manifests/{}", b.url(), image.repo, image.tag);
    let status = client.get(url).send().await.unwrap().status();
    assert_eq!(status.is_success(), served, "{}: {status}", image.repo);
    for blob in &image.blobs {
        let path = b
            .data_dir()
            .join("blobs/sha256")
            .join(&blob.digest["sha256:".len().."sha256:".len() + 2])
            .join(&blob.digest["sha256:".len()..]);
        assert_eq!(path.exists(), served, "{} {}", image.repo, blob.digest);
    }
    let tmp = std::fs::read_dir(b.data_dir().join("tmp")).unwrap().count();
    assert_eq!(tmp, 0, "temp files left in B's tmp/");
}

#[tokio::test]
async fn a_flipped_byte_refuses_that_image_and_names_the_blob() {
    let damaged = exported_pair(421);
    let layer = &damaged.images[0].blobs[1];
    let mut tar = damaged.tar.clone();
    let at = offset_of(&tar, &layer.bytes) + layer.bytes.len() / 2;
    tar[at] ^= 0x01;
    let (output, b) = import_into_b(&damaged, &tar);
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    let refused = format!(
        "FAILED   {}: blob {}",
        name(&damaged.images[0]),
        layer.digest
    );
    assert!(report.contains(&refused), "no {refused:?} in {report}");
    assert!(
        report.contains(&format!("imported {}", name(&damaged.images[1]))),
        "{report}"
    );
    assert_served(&b, &damaged.images[0], false).await;
    assert_served(&b, &damaged.images[1], true).await;
}

#[tokio::test]
async fn a_cut_tar_refuses_the_image_whose_blob_it_cuts() {
    let damaged = exported_pair(431);
    let last = damaged.images[1].blobs.last().unwrap();
    let cut = offset_of(&damaged.tar, &last.bytes) + last.bytes.len() / 3;
    let (output, b) = import_into_b(&damaged, &damaged.tar[..cut]);
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(report.contains("the archive ends early"), "{report}");
    let refused = format!(
        "FAILED   {}: blob {}",
        name(&damaged.images[1]),
        last.digest
    );
    assert!(report.contains(&refused), "no {refused:?} in {report}");
    assert!(
        report.contains(&format!("imported {}", name(&damaged.images[0]))),
        "{report}"
    );
    assert_served(&b, &damaged.images[1], false).await;
    assert_served(&b, &damaged.images[0], true).await;
}
