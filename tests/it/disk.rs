//! Disk reality through the real binary, on a tmpfs data directory smaller
//! than `max_size` (mounted by the test as root; skipped with a printed reason
//! otherwise): a warning at start, a blob larger than the free space streamed
//! whole to its client without being cached (never an abort on ENOSPC), and
//! the next blob that fits cached again; on a full disk, manifests and blobs
//! still served (uncached), never a 500. A disk that fills up during a fill
//! (ENOSPC after admission) passes the rest of the blob to its client, whole
//! and verified, leaves nothing behind, and the next pull caches it; a body
//! without Content-Length checks the free space as it arrives. A manifest the
//! upstream confirms for another repository is served even when its link
//! cannot be written.
//!
//! Talks only to loopback; the tmpfs and every server are dropped by the test.

use std::path::{Path, PathBuf};

use crate::support::fake::FakeUpstream;
use crate::support::prometheus::Metrics;
use crate::support::regcache::Regcache;
use crate::support::tmpfs::Tmpfs;
use crate::support::{blob_file, config_toml, pull, seed_image, tmp_files, wait_for};

const MIB: usize = 1024 * 1024;

/// A regcache whose data directory is on `tmpfs`, with a `max_size` far
/// larger than it (so only the file system limits what is cached).
fn on_tmpfs(tmpfs: &Tmpfs, fake: &FakeUpstream) -> (Regcache, PathBuf) {
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
    (regcache, data)
}

/// Whether the index holds a content row for `digest` (read with SQLite).
fn indexed(data: &Path, digest: &str) -> bool {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(data.join("index.db"), flags).unwrap();
    conn.query_row("SELECT 1 FROM content WHERE digest = ?1", [digest], |_| {
        Ok(())
    })
    .is_ok()
}

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
    let (regcache, data) = on_tmpfs(&tmpfs, &fake);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_during_a_fill_passes_the_blob_through_then_caches_it_next_time() {
    let Some(tmpfs) = Tmpfs::mount("16m") else {
        return;
    };
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "grows", "1", 6 * MIB);
    let layer = image.layer().digest.clone();
    let (regcache, data) = on_tmpfs(&tmpfs, &fake);

    // Admitted with room to spare; half-way the disk fills up (a ballast).
    fake.pause_after(&layer, 3 * MIB as u64);
    let pulling = tokio::spawn({
        let (url, image) = (regcache.url(), image.clone());
        async move { pull(&url, &image).await }
    });
    wait_for("half the layer sent", || {
        fake.sent(&layer) >= 3 * MIB as u64
    })
    .await;
    // Admitted: the fill's temp file exists (the upstream may send before).
    wait_for("the fill's temp file", || !tmp_files(&data).is_empty()).await;
    fill_up(tmpfs.path());
    fake.resume(&layer);
    // 200, every byte, hashing to the digest (asserted by `pull`).
    pulling
        .await
        .expect("the pull through a disk that filled up");
    regcache.wait_for_log("passing the rest to its readers uncached");
    let log = regcache.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&layer) && l.contains("available=")),
        "a warning names the digest and the free space:\n{log}"
    );
    let downloaded = fake.sent(&layer);
    assert_eq!(downloaded, image.layer().bytes.len() as u64, "one download");
    println!("upstream bytes for a pull through a disk that filled up: {downloaded}");

    wait_for("the fill's temp file gone", || tmp_files(&data).is_empty()).await;
    assert!(!blob_file(&data, &layer).exists());
    assert!(!indexed(&data, &layer));
    let metrics = Metrics::scrape(&regcache.url()).await;
    assert_eq!(
        metrics.value("regcache_fills_passed_disk_full_total", &[]),
        1.0
    );

    // Room again: the next pull caches the layer (one more upstream GET)...
    std::fs::remove_file(tmpfs.path().join("filler")).unwrap();
    let gets = fake.storage_gets(&layer).len();
    pull(&regcache.url(), &image).await;
    assert_eq!(fake.storage_gets(&layer).len(), gets + 1);
    wait_for("the layer cached", || indexed(&data, &layer)).await;
    assert!(blob_file(&data, &layer).exists());
    // ...and the one after is a hit that asks the upstream nothing.
    let requests = fake.total_hits();
    pull(&regcache.url(), &image).await;
    assert_eq!(fake.total_hits(), requests);
    drop(regcache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_content_length_checks_the_free_space_as_it_arrives() {
    let Some(tmpfs) = Tmpfs::mount("8m") else {
        return;
    };
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "chunked", "1", 12 * MIB);
    let layer = image.layer().digest.clone();
    let (regcache, data) = on_tmpfs(&tmpfs, &fake);
    fake.set_no_content_length(true);

    pull(&regcache.url(), &image).await;
    regcache.wait_for_log(
        "no room in the budget or on the disk for more of a blob without Content-Length",
    );
    assert!(
        !regcache.log().contains("No space left on device"),
        "the fill stopped writing before the disk was full"
    );
    assert_eq!(fake.sent(&layer), image.layer().bytes.len() as u64);
    wait_for("the fill's temp file gone", || tmp_files(&data).is_empty()).await;
    assert!(!blob_file(&data, &layer).exists());
    assert!(!indexed(&data, &layer));

    // A chunked blob that fits is cached.
    let small = seed_image(&fake, "chunked-small", "1", MIB);
    pull(&regcache.url(), &small).await;
    wait_for("the small layer cached", || {
        indexed(&data, &small.layer().digest)
    })
    .await;
    drop(regcache);
}

/// GETs `url` and returns the status and what the body hashed to (or why it
/// broke).
async fn get_hashed(url: String) -> (u16, Result<String, String>) {
    let response = crate::support::client().get(&url).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| format!("{e:?}"));
    (status, body.map(|b| crate::support::sha256(&b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_attached_before_the_disk_filled_and_after_all_get_the_whole_blob() {
    let Some(tmpfs) = Tmpfs::mount("24m") else {
        return;
    };
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "many", "1", 8 * MIB);
    let layer = image.layer().digest.clone();
    let (regcache, data) = on_tmpfs(&tmpfs, &fake);
    let url = format!("{}/v2/many/blobs/{layer}", regcache.url());

    fake.pause_after(&layer, 2 * MIB as u64);
    let first = tokio::spawn(get_hashed(url.clone()));
    wait_for("the first bytes sent", || {
        fake.sent(&layer) >= 2 * MIB as u64
    })
    .await;
    let attached = tokio::spawn(get_hashed(url.clone()));
    let started = std::time::Instant::now();
    while Metrics::scrape(&regcache.url())
        .await
        .value("regcache_herd_joins_total", &[])
        < 1.0
    {
        assert!(
            started.elapsed() < crate::support::WAIT,
            "the second reader never joined"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The disk fills (after the fill's admission: its temp file exists); the
    // fill goes on from memory up to 5 MiB and waits.
    wait_for("the fill's temp file", || !tmp_files(&data).is_empty()).await;
    fill_up(tmpfs.path());
    fake.move_pause(&layer, 5 * MIB as u64);
    regcache.wait_for_log("passing the rest to its readers uncached");
    wait_for("5 MiB sent", || fake.sent(&layer) >= 5 * MIB as u64).await;
    let late = tokio::spawn(get_hashed(url.clone()));
    while Metrics::scrape(&regcache.url())
        .await
        .value("regcache_herd_joins_total", &[])
        < 2.0
    {
        assert!(
            started.elapsed() < crate::support::WAIT,
            "the late reader never joined"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    fake.resume(&layer);

    for (who, reader) in [("first", first), ("attached", attached), ("late", late)] {
        let (status, hashed) = reader.await.unwrap();
        assert_eq!((status, hashed), (200, Ok(layer.clone())), "{who}");
    }
    assert_eq!(fake.storage_gets(&layer).len(), 1, "one upstream download");
    assert_eq!(fake.sent(&layer), image.layer().bytes.len() as u64);
    wait_for("the fill's temp file gone", || tmp_files(&data).is_empty()).await;
    assert!(!blob_file(&data, &layer).exists());
    assert!(!indexed(&data, &layer));
    drop(regcache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_a_manifest_confirmed_for_another_repository_is_served() {
    let Some(tmpfs) = Tmpfs::mount("8m") else {
        return;
    };
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "first", "1", 1024);
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    let others: Vec<String> = (0..8).map(|i| format!("other-{i}")).collect();
    for repo in &others {
        fake.put_manifest(repo, None, media_type, image.manifest.clone());
    }
    let (regcache, _data) = on_tmpfs(&tmpfs, &fake);
    pull(&regcache.url(), &image).await;

    // Full: the links the upstream's confirmations would record cannot all be
    // written (SQLite may still reuse room in its WAL for the first ones).
    fill_up(tmpfs.path());
    for repo in &others {
        let url = format!(
            "{}/v2/{repo}/manifests/{}",
            regcache.url(),
            image.manifest_digest
        );
        let request = crate::support::client()
            .get(&url)
            .header("accept", media_type);
        let got = crate::support::send(request).await;
        assert_eq!(
            got.status,
            reqwest::StatusCode::OK,
            "{repo}: {:?}",
            got.body
        );
        assert_eq!(got.ok_body(), &image.manifest);
    }
    // Some link write met the full disk (the test fails here otherwise).
    regcache.wait_for_log("cannot record a confirmed repository link");
    drop(regcache);
}

/// Creates empty files in `dir` until the file system has no inode left;
/// returns their paths.
fn use_up_inodes(dir: &Path) -> Vec<PathBuf> {
    let ballast = dir.join("inodes");
    std::fs::create_dir(&ballast).unwrap();
    (0..)
        .map(|i| ballast.join(i.to_string()))
        .take_while(|path| std::fs::File::create(path).is_ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_inodes_a_fill_streams_uncached_even_when_its_commit_cannot_create_a_directory() {
    let Some(tmpfs) = Tmpfs::mount_with_inodes("32m", 400) else {
        return;
    };
    let fake = FakeUpstream::k8s_like();
    let first = seed_image(&fake, "first", "1", 1024);
    let (regcache, data) = on_tmpfs(&tmpfs, &fake);
    pull(&regcache.url(), &first).await;
    let shards: Vec<_> = first.blobs().map(|b| blob_file(&data, &b.digest)).collect();

    // No inode left: not even a temp file. Served whole, uncached.
    let mut ballast = use_up_inodes(tmpfs.path());
    let second = seed_image(&fake, "second", "1", 2 * MIB);
    pull(&regcache.url(), &second).await;
    assert!(!indexed(&data, &second.layer().digest));
    regcache.wait_for_log("cannot write more of a blob");

    // One inode: the temp file takes it, and the commit cannot create the
    // blob's shard directory (a layer whose shard is new), after the digest
    // was checked: still served whole, uncached, nothing left behind. (The
    // server's stats file, rewritten every few seconds, may take the inode
    // for an instant: then the temp file was refused, and a fresh layer tries.)
    std::fs::remove_file(ballast.pop().unwrap()).unwrap();
    let mut tries = 0;
    let (third, layer) = loop {
        tries += 1;
        let image = fresh_shard_image(&fake, &data, &shards, &format!("third-{tries}"));
        let layer = image.layer().digest.clone();
        let url = format!("{}/v2/{}/blobs/{layer}", regcache.url(), image.repo);
        assert_eq!(get_hashed(url).await, (200, Ok(layer.clone())));
        let log = regcache.wait_for_log(&format!("digest={layer}"));
        if log
            .lines()
            .any(|l| l.contains(&layer) && l.contains("cannot create directory"))
        {
            assert!(
                log.contains(&format!(
                    "digest={layer} repo={} written={}",
                    image.repo,
                    2 * MIB
                )),
                "the commit met the full disk after every byte:\n{log}"
            );
            break (image, layer);
        }
        assert!(tries < 3, "the temp file never got the free inode:\n{log}");
    };
    wait_for("the fill's temp file gone", || tmp_files(&data).is_empty()).await;
    assert!(!blob_file(&data, &layer).exists());
    assert!(!indexed(&data, &layer));

    // Inodes again: the layer is cached.
    for path in ballast {
        std::fs::remove_file(path).unwrap();
    }
    pull(&regcache.url(), &third).await;
    wait_for("the layer cached", || indexed(&data, &layer)).await;
    drop(regcache);
}

/// An image whose layer's shard directory is none of `shards`' (so its
/// commit must create one).
fn fresh_shard_image(
    fake: &FakeUpstream,
    data: &Path,
    shards: &[PathBuf],
    repo: &str,
) -> crate::support::Image {
    loop {
        let image = seed_image(fake, repo, "1", 2 * MIB);
        let shard = blob_file(data, &image.layer().digest);
        if shards.iter().all(|s| s.parent() != shard.parent()) {
            return image;
        }
    }
}
