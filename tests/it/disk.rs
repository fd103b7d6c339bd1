//! Disk reality through the real binary, on a tmpfs data directory smaller
//! than `max_size` (mounted by the test as root; skipped with a printed reason
//! otherwise): a warning at start, a blob larger than the free space streamed
//! whole to its client without being cached (never an abort on ENOSPC), and
//! the next blob that fits cached again; on a full disk, manifests and blobs
//! still served (uncached), never a 500.
//!
//! Talks only to loopback; the tmpfs and every server are dropped by the test.

use crate::support::fake::FakeUpstream;
use crate::support::regcache::Regcache;
use crate::support::tmpfs::Tmpfs;
use crate::support::{blob_file, config_toml, pull, seed_image};

/// Writes a file in `dir` until the file system is full.
fn fill_up(dir: &std::path::Path) {
    use std::io::Write as _;
    let mut file = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_smaller_than_max_size_passes_big_blobs_through_and_caches_the_rest() {
    let Some(tmpfs) = Tmpfs::mount("8m") else {
        return;
    };
    let fake = FakeUpstream::k8s_like();
    let big = seed_image(&fake, "big", "1", 12 * 1024 * 1024);
    let small = seed_image(&fake, "small", "1", 1024 * 1024);
    let text = config_toml(&fake.url(), "5m").replacen(
        "[storage]\n",
        "[storage]\nmax_size = \"1GiB\"\n",
        1,
    );
    let data = tmpfs.path().join("data");
    let regcache = Regcache::builder()
        .config_toml(text)
        .data_dir(&data)
        .start();
    regcache.wait_for_log("larger than the file system");

    pull(&regcache.url(), &big).await;
    assert!(
        !blob_file(&data, &big.layer().digest).exists(),
        "a blob larger than the free space is not cached"
    );
    regcache.wait_for_log("streaming without caching");

    pull(&regcache.url(), &small).await;
    assert!(blob_file(&data, &small.layer().digest).exists());
    pull(&regcache.url(), &big).await;

    // A full disk: manifests and blobs are still served (never a 500), uncached.
    fill_up(tmpfs.path());
    let late = seed_image(&fake, "late", "1", 256 * 1024);
    pull(&regcache.url(), &late).await;
    assert!(!blob_file(&data, &late.layer().digest).exists());
    drop(regcache);
}
