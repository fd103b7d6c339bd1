//! The evictor over a real store and index in a temp directory.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::index::ContentRow;
use crate::oci::RepoName;

const UP: &str = "registry.k8s.io";

struct Env {
    _dir: tempfile::TempDir,
    index: Index,
    store: Store,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let index = Index::open(&dir.path().join("index.db")).unwrap();
    Env {
        _dir: dir,
        index,
        store,
    }
}

impl Env {
    fn evictor(&self, max_size: u64, pins: &[&str]) -> Arc<Evictor> {
        let resolve = |h: &str| (h == UP).then(|| UP.to_owned());
        let pins = pins
            .iter()
            .map(|p| Pin::parse(p, resolve).unwrap())
            .collect();
        Arc::new(Evictor::new(
            Budget::new(max_size, 0.9, 0.8),
            Pins::new(pins),
            self.index.clone(),
            self.store.clone(),
            Cache::new(),
        ))
    }

    /// Commits `bytes` as content of `repo`, accessed at `at` (unix seconds).
    async fn put(&self, bytes: &[u8], repo: &str, at: i64) -> Digest {
        let digest = Digest::sha256_of(bytes);
        self.store.put_small(&digest, bytes).await.unwrap();
        let row = ContentRow {
            digest: digest.clone(),
            size: bytes.len() as u64,
            media_type: None,
        };
        let repo: RepoName = repo.parse().unwrap();
        self.index.insert_content(&row, UP, &repo).await.unwrap();
        // insert_content stamps "now"; move it back to the wanted time.
        let raw = rusqlite::Connection::open(self._dir.path().join("index.db")).unwrap();
        raw.execute(
            "UPDATE content SET last_access = ?1 WHERE digest = ?2",
            rusqlite::params![at, digest.to_string()],
        )
        .unwrap();
        digest
    }

    async fn present(&self, digest: &Digest) -> (bool, bool) {
        let row = self.index.content(digest).await.unwrap().is_some();
        (row, self.store.blob_path(digest).exists())
    }
}

#[tokio::test]
async fn reserving_past_the_budget_evicts_least_recently_used_to_the_low_watermark() {
    let env = env();
    let old = env.put(&[1; 300], "a", 100).await;
    let mid = env.put(&[2; 300], "b", 200).await;
    let new = env.put(&[3; 300], "c", 300).await;
    let evictor = env.evictor(1000, &[]);
    evictor.load().await.unwrap();
    assert_eq!(evictor.committed(), 900);

    // 200 more would make 1100 > 1000: evict until 900 - x + 200 <= 800 (low).
    let Admission::Reserved(reservation) = evictor.reserve(200).await else {
        panic!("no reservation")
    };
    assert_eq!(env.present(&old).await, (false, false));
    assert_eq!(env.present(&mid).await, (true, true));
    assert_eq!(env.present(&new).await, (true, true));
    assert_eq!(evictor.committed(), 600);
    reservation.commit(200, true);
    assert_eq!(evictor.committed(), 800);
}

#[tokio::test]
async fn a_recorded_access_moves_content_to_the_back_of_the_line() {
    let env = env();
    let first = env.put(&[1; 400], "a", 100).await;
    let second = env.put(&[2; 400], "b", 200).await;
    let evictor = env.evictor(1000, &[]);
    evictor.load().await.unwrap();
    evictor.touch(&first);
    // The pass flushes the recorded access first: `second` is now the LRU.
    let Admission::Reserved(_r) = evictor.reserve(400).await else {
        panic!("no reservation")
    };
    assert_eq!(env.present(&first).await, (true, true));
    assert_eq!(env.present(&second).await, (false, false));
}

#[tokio::test]
async fn pinned_content_stays_and_too_large_or_no_room_is_refused() {
    let env = env();
    let pinned = env.put(&[1; 600], "pause", 100).await;
    let other = env.put(&[2; 300], "etcd", 200).await;
    let evictor = env.evictor(1000, &["registry.k8s.io/pause"]);
    evictor.load().await.unwrap();
    assert!(matches!(evictor.reserve(1001).await, Admission::TooLarge));
    // 600 pinned + 500 > 1000 even with `other` gone.
    assert!(matches!(evictor.reserve(500).await, Admission::NoRoom));
    assert_eq!(env.present(&pinned).await, (true, true));
    assert_eq!(env.present(&other).await, (false, false));
    let pins = evictor.pins.clone();
    assert_eq!(
        pinned_bytes(&env.index, &env.store, &pins).await.unwrap(),
        600
    );
    // Reservations count: two of 200 fit, a third does not.
    let a = evictor.reserve(200).await;
    let b = evictor.reserve(200).await;
    assert!(matches!(
        (&a, &b),
        (Admission::Reserved(_), Admission::Reserved(_))
    ));
    assert!(matches!(evictor.reserve(200).await, Admission::NoRoom));
    drop(a);
    assert!(matches!(evictor.reserve(200).await, Admission::Reserved(_)));
}

#[tokio::test]
async fn a_tag_pin_keeps_the_manifest_and_what_it_references() {
    let env = env();
    let config = env.put(b"{}", "pause", 100).await;
    let layer = env.put(&[7; 500], "pause", 100).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"digest":"{config}"}},"layers":[{{"digest":"{layer}"}}]}}"#
    );
    let manifest = env.put(manifest.as_bytes(), "pause", 100).await;
    let repo: RepoName = "pause".parse().unwrap();
    let tag = "3.9".parse().unwrap();
    env.index
        .set_tag(UP, &repo, &tag, &manifest, SystemTime::now())
        .await
        .unwrap();
    let untagged = env.put(&[8; 300], "pause", 50).await;
    let evictor = env.evictor(2000, &["registry.k8s.io/pause:3.*"]);
    evictor.load().await.unwrap();
    let Admission::Reserved(_r) = evictor.reserve(1100).await else {
        panic!("no reservation")
    };
    for kept in [&config, &layer, &manifest] {
        assert_eq!(env.present(kept).await, (true, true));
    }
    assert_eq!(env.present(&untagged).await, (false, false));
}

#[tokio::test]
async fn a_digest_being_committed_is_not_evicted() {
    let env = env();
    let busy = env.put(&[1; 400], "a", 100).await;
    let idle = env.put(&[2; 400], "b", 200).await;
    let evictor = env.evictor(1000, &[]);
    evictor.load().await.unwrap();
    let guard = evictor.commit_guard(&busy).await;
    let Admission::Reserved(_r) = evictor.reserve(400).await else {
        panic!("no reservation")
    };
    assert_eq!(env.present(&busy).await, (true, true));
    assert_eq!(env.present(&idle).await, (false, false));
    drop(guard);
}

#[tokio::test]
async fn a_reader_of_an_evicted_file_reads_it_to_the_end() {
    let env = env();
    let bytes = vec![5u8; 4096];
    let digest = env.put(&bytes, "a", 100).await;
    let (file, len) = env.store.open_blob(&digest).await.unwrap().unwrap();
    let evictor = env.evictor(4096, &[]);
    evictor.load().await.unwrap();
    let Admission::Reserved(_r) = evictor.reserve(4096).await else {
        panic!("no reservation")
    };
    assert_eq!(env.present(&digest).await, (false, false));
    let mut read = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut { file }, &mut read)
        .await
        .unwrap();
    assert_eq!((len, read), (4096, bytes));
}

#[tokio::test]
async fn collect_frees_down_to_the_target_from_the_oldest() {
    let env = env();
    let a = env.put(&[1; 100], "a", 100).await;
    let b = env.put(&[2; 100], "b", 200).await;
    let c = env.put(&[3; 100], "c", 300).await;
    let resolve = |h: &str| (h == UP).then(|| UP.to_owned());
    let pins = Pins::new(vec![Pin::parse("registry.k8s.io/a", resolve).unwrap()]);
    let report = collect(&env.index, &env.store, &pins, 150).await.unwrap();
    assert_eq!(report.evicted, [(b.clone(), 100), (c.clone(), 100)]);
    assert_eq!(
        (report.usage_before, report.usage_after, report.freed_bytes),
        (300, 100, 200)
    );
    assert_eq!(report.pinned_bytes, 100);
    assert_eq!(env.present(&a).await, (true, true));
    assert_eq!(env.present(&b).await, (false, false));
    assert_eq!(env.index.content_bytes().await.unwrap(), 100);
}

#[tokio::test]
async fn a_pass_of_several_batches_deletes_rows_memory_and_files_of_each() {
    let env = env();
    // One batch and a few rows more to evict, five rows to keep; 10 bytes
    // each, all accessed in the same second: digest order is LRU order.
    let victims = pass::EVICT_BATCH + 3;
    let mut rows: Vec<ContentRow> = (0..victims + 5)
        .map(|n| ContentRow {
            digest: Digest::sha256_of(&(n as u64).to_le_bytes()),
            size: 10,
            media_type: None,
        })
        .collect();
    rows.sort_by(|a, b| a.digest.cmp(&b.digest));
    for row in &rows {
        let path = env.store.blob_path(&row.digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, [0; 10]).unwrap();
    }
    let repo: RepoName = "a".parse().unwrap();
    env.index
        .insert_contents(rows.clone(), UP, &repo)
        .await
        .unwrap();
    let evictor = env.evictor(1 << 30, &[]);
    evictor.load().await.unwrap();
    // In memory: one victim of each batch and one survivor.
    let remembered = [&rows[0], &rows[victims - 1], &rows[victims]];
    for row in remembered {
        evictor.cache.set_blob_size(&row.digest, row.size).await;
    }
    let report = evictor.collect_to(50).await.unwrap();
    let lru: Vec<(Digest, u64)> = rows[..victims]
        .iter()
        .map(|r| (r.digest.clone(), 10))
        .collect();
    assert_eq!(report.evicted, lru);
    assert_eq!((report.usage_after, evictor.committed()), (50, 50));
    assert_eq!(env.index.content_rows().await.unwrap(), 5);
    for row in &rows[..victims] {
        assert_eq!(env.present(&row.digest).await, (false, false));
    }
    for row in &rows[victims..] {
        assert_eq!(env.present(&row.digest).await, (true, true));
    }
    let sizes = [
        evictor.cache.blob_size(&rows[0].digest).await,
        evictor.cache.blob_size(&rows[victims - 1].digest).await,
        evictor.cache.blob_size(&rows[victims].digest).await,
    ];
    assert_eq!(sizes, [None, None, Some(10)]);
}

#[test]
fn budget_watermarks_are_fractions_of_the_maximum() {
    let b = Budget::new(1000, 0.95, 0.85);
    assert_eq!((b.max_size(), b.high(), b.low()), (1000, 950, 850));
    let full = Budget::new(u64::MAX, 1.0, 1.0);
    assert_eq!(full.high(), u64::MAX);
}

#[tokio::test]
async fn usage_is_re_read_after_another_process_collects() {
    let env = env();
    env.put(&[1; 300], "a", 100).await;
    env.put(&[2; 300], "b", 200).await;
    let evictor = env.evictor(1000, &[]);
    evictor.load().await.unwrap();
    assert_eq!(evictor.committed(), 600);
    // `regcache gc` on its own handle of the same files.
    let other = Index::open(&env._dir.path().join("index.db")).unwrap();
    collect(&other, &env.store, &Pins::default(), 300)
        .await
        .unwrap();
    assert_eq!(evictor.committed(), 600);
    evictor.refresh_usage().await;
    assert_eq!(evictor.committed(), 300);
}

#[tokio::test]
async fn a_commit_past_the_high_watermark_wakes_a_pass_down_to_the_low_one() {
    let env = env();
    let oldest = env.put(&[1; 300], "a", 100).await;
    env.put(&[2; 300], "b", 200).await;
    env.put(&[3; 300], "c", 300).await;
    let evictor = env.evictor(1000, &[]);
    evictor.load().await.unwrap();
    let task = evictor.spawn(Duration::from_secs(3600));
    let Admission::Reserved(reservation) = evictor.reserve(50).await else {
        panic!("no reservation")
    };
    // 950 committed > 900 (high): the task evicts down to 800 (low).
    env.put(&[4; 50], "d", 400).await;
    reservation.commit(50, true);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while evictor.committed() > 800 {
        assert!(std::time::Instant::now() < deadline, "no pass ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(evictor.committed(), 650);
    assert_eq!(env.present(&oldest).await, (false, false));
    task.stop().await;
}

#[tokio::test]
async fn runtime_pins_in_the_index_count_from_the_next_pass_and_in_collect() {
    let env = env();
    let runtime = env.put(&[1; 400], "pause", 100).await;
    let other = env.put(&[2; 400], "etcd", 200).await;
    let evictor = env.evictor(1000, &[]);
    evictor.load().await.unwrap();
    // Added after the evictor was built, as the admin socket does.
    env.index
        .add_pins(vec!["registry.k8s.io/pause".into()], "test")
        .await
        .unwrap();
    let Admission::Reserved(_r) = evictor.reserve(400).await else {
        panic!("no reservation")
    };
    assert_eq!(env.present(&runtime).await, (true, true));
    assert_eq!(env.present(&other).await, (false, false));
    // `regcache gc` with no server: the configured pins it is given plus the index's.
    let report = collect(&env.index, &env.store, &Pins::default(), 0)
        .await
        .unwrap();
    assert!(report.evicted.is_empty(), "{report:?}");
    assert_eq!(report.pinned_bytes, 400);
    // Removed: evictable.
    env.index
        .remove_pins(vec!["registry.k8s.io/pause".into()])
        .await
        .unwrap();
    let report = collect(&env.index, &env.store, &Pins::default(), 0)
        .await
        .unwrap();
    assert_eq!(report.evicted, [(runtime, 400)]);
}

#[tokio::test]
async fn a_digest_pin_covers_its_manifest_and_what_it_references() {
    let env = env();
    let layer = env.put(&[1; 300], "pause", 100).await;
    let unrelated = env.put(&[2; 300], "pause", 100).await;
    let manifest = format!(r#"{{"layers":[{{"digest":"{layer}"}}]}}"#);
    let manifest = env.put(manifest.as_bytes(), "pause", 100).await;
    let evictor = env.evictor(1000, &[&format!("registry.k8s.io/pause@{manifest}")]);
    let pinned = evictor
        .pins
        .pinned_digests(&env.index, &env.store)
        .await
        .unwrap();
    assert!(pinned.contains(&manifest) && pinned.contains(&layer));
    assert!(!pinned.contains(&unrelated));
}

#[tokio::test]
async fn a_runtime_tag_pin_of_an_index_covers_its_children_and_their_blobs() {
    let env = env();
    let layer = env.put(&[1; 300], "pause", 100).await;
    let config = env.put(b"{}", "pause", 100).await;
    let other = env.put(&[2; 300], "pause", 100).await;
    let child =
        format!(r#"{{"config":{{"digest":"{config}"}},"layers":[{{"digest":"{layer}"}}]}}"#);
    let child = env.put(child.as_bytes(), "pause", 100).await;
    let top = format!(r#"{{"manifests":[{{"digest":"{child}"}}]}}"#);
    let top = env.put(top.as_bytes(), "pause", 100).await;
    let (repo, tag) = ("pause".parse().unwrap(), "3.9".parse().unwrap());
    env.index
        .set_tag(UP, &repo, &tag, &top, SystemTime::now())
        .await
        .unwrap();
    env.index
        .add_pins(vec!["registry.k8s.io/pause:3.9".into()], "prefetch")
        .await
        .unwrap();
    let pins = Pins::default().with_runtime(&env.index).await.unwrap();
    let pinned = pins.pinned_digests(&env.index, &env.store).await.unwrap();
    for digest in [&top, &child, &config, &layer] {
        assert!(pinned.contains(digest), "{digest} not pinned");
    }
    assert!(!pinned.contains(&other));
}
