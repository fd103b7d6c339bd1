//! Runtime pins through the real binary against the k8s-like fake:
//! `prefetch --pin` pins an image through the running server's admin socket,
//! and filling the mirror far past its budget never evicts it (files, index
//! rows, a pull with the upstream down, the upstream's GET counts), also after
//! a restart; `pin rm` makes it evictable again. The same with no server
//! running (`pin add`/`pin rm` write the index; the server reads it at start).
//! Configured pins are listed and never removed; bad patterns change nothing;
//! `prefetch --pin` to a server on another machine without `--data` fails
//! before pulling, and an image that fails is not left pinned.
//!
//! Talks only to 127.0.0.1 (the one other address is refused before any
//! connection); every server a test starts is dropped by the test.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use reqwest::Method;

use crate::support::commands::{ok_cmd, regcache_cmd};
use crate::support::fake::{FakeUpstream, Host};
use crate::support::regcache::Regcache;
use crate::support::{Image, blob_file, pull, seed_image};

const MIB: usize = 1024 * 1024;
const PAUSE: &str = "registry.k8s.io/pause:3.9";

/// One default upstream (alias k8s.gcr.io) at `url`, a 10 MiB budget and
/// `pins` configured; eviction driven by fills, not by a timer.
fn config(url: &str, pins: &[&str]) -> String {
    let pins: Vec<String> = pins.iter().map(|p| format!("{p:?}")).collect();
    format!(
        r#"[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "./unused"
max_size = "10MiB"
high_watermark = 0.95
low_watermark = 0.85
evict_interval = "1h"
pins = [{}]
[[upstream]]
name = "registry.k8s.io"
aliases = ["k8s.gcr.io"]
url = "{url}"
default = true
tag_ttl = "1h"
"#,
        pins.join(", ")
    )
}

/// `pause:3.9` and `n` other images, each with one 2 MiB layer: five of
/// them are more than the budget.
fn seed(fake: &FakeUpstream, n: usize) -> (Image, Vec<Image>) {
    let pause = seed_image(fake, "pause", "3.9", 2 * MIB);
    let apps = (0..n)
        .map(|i| seed_image(fake, &format!("app{i}"), "v1", 2 * MIB))
        .collect();
    (pause, apps)
}

/// Whether every file of `image` is under `blobs/` (true) or none is (false).
fn cached(data: &Path, image: &Image) -> bool {
    let digests = [
        &image.manifest_digest,
        &image.config.digest,
        &image.layer().digest,
    ];
    let present: Vec<bool> = digests
        .iter()
        .map(|d| blob_file(data, d).exists())
        .collect();
    assert!(
        present.iter().all(|p| *p == present[0]),
        "{} is half cached: {present:?}",
        image.repo
    );
    present[0]
}

/// Whether the index has rows for every digest of `image` (`regcache ls --json`).
async fn indexed(data: &Path, image: &Image) -> bool {
    let listing = ok_cmd(data, &["ls", "--json"]).await;
    [
        &image.manifest_digest,
        &image.config.digest,
        &image.layer().digest,
    ]
    .iter()
    .all(|d| listing.contains(d.as_str()))
}

/// Pulls `apps` one after the other, a second apart (LRU order is in seconds).
async fn fill(base: &str, apps: &[Image]) {
    for app in apps {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        pull(base, app).await;
    }
}

/// `regcache prefetch --server <server> <args> <file with references>`.
fn prefetch(server: &str, args: &[&str], references: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("images.txt");
    std::fs::write(&file, references.join("\n")).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["prefetch", "--server", server])
        .args(args)
        .arg(&file)
        .env("NO_COLOR", "1")
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

/// The layer GETs the fake's storage host answered for `image`.
fn layer_gets(fake: &FakeUpstream, image: &Image) -> usize {
    fake.hits_on(Host::Storage, Method::GET, &image.layer().digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_pin_keeps_an_image_past_the_budget_and_a_restart_until_pin_rm() {
    let fake = FakeUpstream::k8s_like();
    let (pause, apps) = seed(&fake, 10);
    let mut regcache = Regcache::builder()
        .config_toml(config(&fake.url(), &[]))
        .start();
    let data = regcache.data_dir().to_path_buf();
    let data_arg = data.to_str().unwrap();

    let output = prefetch(&regcache.url(), &["--pin", "--data", data_arg], &[PAUSE]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("pinned 1 images"),
        "{}",
        text(&output)
    );
    let listed = ok_cmd(&data, &["pin", "ls"]).await;
    assert!(listed.contains(PAUSE), "{listed}");
    assert!(
        listed.contains("runtime") && listed.contains("prefetch"),
        "{listed}"
    );
    assert!(listed.contains("from the running server"), "{listed}");

    // Four more images are 8 MiB more than pause's 2 MiB in a 10 MiB budget.
    fill(&regcache.url(), &apps[..4]).await;
    assert!(!cached(&data, &apps[0]), "nothing was evicted");
    assert!(cached(&data, &apps[1]));
    assert!(cached(&data, &pause), "the pinned image was evicted");
    assert!(indexed(&data, &pause).await);

    // The pin is in the index: a new process keeps it.
    regcache.restart();
    fill(&regcache.url(), &apps[4..6]).await;
    assert!(
        !cached(&data, &apps[1]),
        "nothing was evicted after the restart"
    );
    assert!(cached(&data, &pause), "evicted after the restart");
    let stats = ok_cmd(&data, &["stats", "--json"]).await;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let pause_bytes = (pause.manifest.len() + pause.config.bytes.len() + 2 * MIB) as u64;
    assert_eq!(stats["pinned_bytes"], pause_bytes, "{stats}");
    assert_eq!(stats["pins"]["runtime"], 1, "{stats}");

    // Served from the cache with the upstream down; fetched from it once.
    fake.set_down(true);
    pull(&regcache.url(), &pause).await;
    fake.set_down(false);
    assert_eq!(layer_gets(&fake, &pause), 1);

    let removed = ok_cmd(&data, &["pin", "rm", PAUSE]).await;
    assert!(removed.contains(&format!("unpinned {PAUSE}")), "{removed}");
    assert!(removed.contains("running server"), "{removed}");
    fill(&regcache.url(), &apps[6..10]).await;
    assert!(
        !cached(&data, &pause),
        "unpinned, pause should have been evicted"
    );
    assert!(!indexed(&data, &pause).await);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_server_pin_add_and_rm_write_the_index_the_server_reads_at_start() {
    let fake = FakeUpstream::k8s_like();
    let (pause, apps) = seed(&fake, 8);
    let mut regcache = Regcache::builder()
        .config_toml(config(&fake.url(), &[]))
        .start();
    let data = regcache.data_dir().to_path_buf();
    pull(&regcache.url(), &pause).await;
    regcache.stop();

    // An alias is recorded under the upstream's name.
    let added = ok_cmd(&data, &["pin", "add", "k8s.gcr.io/pause:3.9"]).await;
    assert!(added.contains(&format!("pinned {PAUSE}")), "{added}");
    assert!(added.contains("no server running"), "{added}");
    let listed = ok_cmd(&data, &["pin", "ls"]).await;
    assert!(
        listed.contains(PAUSE) && listed.contains("pin add"),
        "{listed}"
    );

    regcache.restart();
    fill(&regcache.url(), &apps[..4]).await;
    assert!(!cached(&data, &apps[0]), "nothing was evicted");
    assert!(cached(&data, &pause), "the pinned image was evicted");
    assert!(indexed(&data, &pause).await);
    regcache.stop();

    let removed = ok_cmd(&data, &["pin", "rm", PAUSE]).await;
    assert!(removed.contains(&format!("unpinned {PAUSE}")), "{removed}");
    assert!(ok_cmd(&data, &["pin", "ls"]).await.contains("no pins"));
    regcache.restart();
    fill(&regcache.url(), &apps[4..8]).await;
    assert!(
        !cached(&data, &pause),
        "unpinned, pause should have been evicted"
    );
    assert_eq!(layer_gets(&fake, &pause), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_pins_stay_bad_patterns_change_nothing_and_failed_images_are_not_pinned() {
    let fake = FakeUpstream::k8s_like();
    let (pause, apps) = seed(&fake, 1);
    let broken = &apps[0];
    let regcache = Regcache::builder()
        .config_toml(config(&fake.url(), &["registry.k8s.io/coredns/*"]))
        .start();
    let data = regcache.data_dir().to_path_buf();
    let data_arg = data.to_str().unwrap();

    let listed = ok_cmd(&data, &["pin", "ls"]).await;
    assert!(listed.contains("registry.k8s.io/coredns/*"), "{listed}");
    assert!(
        listed.contains("config") && listed.contains("storage.pins"),
        "{listed}"
    );
    let refused = regcache_cmd(&data, &["pin", "rm", "registry.k8s.io/coredns/*"]).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is a configured pin"), "{stderr}");

    // One unknown upstream: neither pattern is added.
    let refused = regcache_cmd(
        &data,
        &["pin", "add", "registry.k8s.io/ok:1", "example.invalid/x:1"],
    )
    .await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("names no configured upstream"), "{stderr}");
    let listed = ok_cmd(&data, &["pin", "ls"]).await;
    assert!(!listed.contains("registry.k8s.io/ok:1"), "{listed}");

    // The broken image's layer arrives with wrong bytes: its pin goes again.
    fake.set_wrong_bytes(&broken.layer().digest, true);
    let output = prefetch(
        &regcache.url(),
        &["--pin", "--data", data_arg],
        &[PAUSE, "registry.k8s.io/app0:v1"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let listed = ok_cmd(&data, &["pin", "ls", "--json"]).await;
    let pins: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let runtime: Vec<&str> = pins
        .iter()
        .filter(|p| p["source"] == "runtime")
        .map(|p| p["pattern"].as_str().unwrap())
        .collect();
    assert_eq!(runtime, [PAUSE], "{listed}");
    assert!(cached(&data, &pause));
}

#[test]
fn prefetch_pin_to_another_machine_without_data_fails_before_pulling() {
    // 192.0.2.1 (TEST-NET-1) is never dialled: the check comes first.
    let output = prefetch("http://192.0.2.1:5000", &["--pin"], &[PAUSE]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pass --data DIR"), "{stderr}");
    assert!(output.stdout.is_empty(), "{}", text(&output));
}
