//! Tests of the index's queries against a real SQLite file in a temp directory.
//! Migrations and connection settings are tested in `migrate`.

use std::time::{Duration, UNIX_EPOCH};

use super::*;

fn open() -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(&dir.path().join("index.db")).unwrap();
    (dir, index)
}

fn repo(name: &str) -> RepoName {
    name.parse().unwrap()
}

fn tag(name: &str) -> Tag {
    name.parse().unwrap()
}

fn blob(content: &[u8]) -> ContentRow {
    ContentRow {
        digest: Digest::sha256_of(content),
        size: content.len() as u64,
        media_type: None,
    }
}

fn manifest(content: &[u8]) -> ContentRow {
    let media_type = Some(crate::oci::media_type::OCI_MANIFEST.to_owned());
    ContentRow {
        media_type,
        ..blob(content)
    }
}

const UP: &str = "registry.k8s.io";

#[tokio::test]
async fn content_round_trips_and_absent_is_none() {
    let (_dir, index) = open();
    let row = manifest(b"{}");
    assert_eq!(index.content(&row.digest).await.unwrap(), None);

    index
        .insert_content(&row, UP, &repo("pause"))
        .await
        .unwrap();
    assert_eq!(index.content(&row.digest).await.unwrap(), Some(row));
}

#[tokio::test]
async fn reinserting_as_a_blob_keeps_the_known_media_type() {
    let (_dir, index) = open();
    let row = manifest(b"{}");
    index.insert_content(&row, UP, &repo("a")).await.unwrap();
    index
        .insert_content(&blob(b"{}"), UP, &repo("b"))
        .await
        .unwrap();
    assert_eq!(index.content(&row.digest).await.unwrap(), Some(row));
}

#[tokio::test]
async fn insert_content_links_only_the_given_repo_and_upstream() {
    let (_dir, index) = open();
    let row = blob(b"layer");
    index.insert_content(&row, UP, &repo("etcd")).await.unwrap();

    assert!(
        index
            .is_linked(UP, &repo("etcd"), &row.digest)
            .await
            .unwrap()
    );
    assert!(
        !index
            .is_linked(UP, &repo("pause"), &row.digest)
            .await
            .unwrap()
    );
    assert!(
        !index
            .is_linked("docker.io", &repo("etcd"), &row.digest)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn link_adds_a_repo_and_is_idempotent() {
    let (_dir, index) = open();
    let row = blob(b"shared layer");
    index.insert_content(&row, UP, &repo("a")).await.unwrap();
    index.link(UP, &repo("b"), &row.digest).await.unwrap();
    index.link(UP, &repo("b"), &row.digest).await.unwrap();
    assert!(index.is_linked(UP, &repo("b"), &row.digest).await.unwrap());
}

#[tokio::test]
async fn a_row_comes_with_whether_the_asking_repository_is_linked_to_it() {
    let (_dir, index) = open();
    let row = blob(b"layer");
    index.insert_content(&row, UP, &repo("etcd")).await.unwrap();
    let ask = |upstream: &'static str, name: &str, digest: &Digest| {
        let index = index.clone();
        let (name, digest) = (repo(name), digest.clone());
        async move {
            let found = index.content_in_repo_then(upstream, &name, &digest, |found| found);
            found.await.unwrap()
        }
    };

    assert_eq!(
        ask(UP, "etcd", &row.digest).await,
        Some((row.clone(), true))
    );
    assert_eq!(
        ask(UP, "pause", &row.digest).await,
        Some((row.clone(), false))
    );
    assert_eq!(
        ask("docker.io", "etcd", &row.digest).await,
        Some((row.clone(), false))
    );
    let unknown = Digest::sha256_of(b"never stored");
    assert_eq!(ask(UP, "etcd", &unknown).await, None);
    let plain = index
        .content_then(&row.digest, |found| found)
        .await
        .unwrap();
    assert_eq!(plain, Some(row));
}

#[tokio::test]
async fn a_tag_comes_with_the_row_of_its_content() {
    let (_dir, index) = open();
    let row = manifest(b"v1");
    let (app, latest) = (repo("app"), tag("latest"));
    index.insert_content(&row, UP, &app).await.unwrap();
    let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_001);
    index
        .set_tag(UP, &app, &latest, &row.digest, at)
        .await
        .unwrap();

    let found = index
        .tag_then(UP, &app, &latest, |found| found)
        .await
        .unwrap();
    let want = TagRow {
        digest: row.digest.clone(),
        checked_at: at,
    };
    assert_eq!(found, Some((want, row.clone())));
    let v2 = tag("v2");
    let other_tag = index.tag_then(UP, &app, &v2, |found| found);
    assert_eq!(other_tag.await.unwrap(), None);
    let other_upstream = index.tag_then("docker.io", &app, &latest, |found| found);
    assert_eq!(other_upstream.await.unwrap(), None);

    index.remove_content(&row.digest).await.unwrap();
    let gone = index.tag_then(UP, &app, &latest, |found| found);
    assert_eq!(gone.await.unwrap(), None);
}

#[tokio::test]
async fn linking_or_tagging_unknown_content_is_unknown_content() {
    let (_dir, index) = open();
    let digest = Digest::sha256_of(b"never stored");
    let err = index.link(UP, &repo("a"), &digest).await.unwrap_err();
    assert!(
        matches!(&err, Error::UnknownContent { digest: d } if *d == digest),
        "{err}"
    );

    let err = index
        .set_tag(UP, &repo("a"), &tag("latest"), &digest, SystemTime::now())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownContent { .. }), "{err}");
}

#[tokio::test]
async fn set_tag_inserts_then_overwrites_and_remove_tag_forgets() {
    let (_dir, index) = open();
    let (old, new) = (manifest(b"v1"), manifest(b"v2"));
    for row in [&old, &new] {
        index.insert_content(row, UP, &repo("app")).await.unwrap();
    }
    let (app, latest) = (repo("app"), tag("latest"));
    assert_eq!(index.tag(UP, &app, &latest).await.unwrap(), None);

    let first = UNIX_EPOCH + Duration::from_millis(1_700_000_000_001);
    index
        .set_tag(UP, &app, &latest, &old.digest, first)
        .await
        .unwrap();
    let later = first + Duration::from_secs(60);
    index
        .set_tag(UP, &app, &latest, &new.digest, later)
        .await
        .unwrap();
    let want = TagRow {
        digest: new.digest.clone(),
        checked_at: later,
    };
    assert_eq!(index.tag(UP, &app, &latest).await.unwrap(), Some(want));

    index.remove_tag(UP, &app, &latest).await.unwrap();
    index.remove_tag(UP, &app, &latest).await.unwrap();
    assert_eq!(index.tag(UP, &app, &latest).await.unwrap(), None);
}

#[tokio::test]
async fn tags_are_listed_per_repo_in_byte_order() {
    let (_dir, index) = open();
    let row = manifest(b"m");
    let app = repo("app");
    index.insert_content(&row, UP, &app).await.unwrap();
    for name in ["v2", "V1", "10", "_dev", "1.0", "latest"] {
        let t = tag(name);
        index
            .set_tag(UP, &app, &t, &row.digest, SystemTime::now())
            .await
            .unwrap();
    }
    let other = tag("other");
    index
        .set_tag(
            UP,
            &repo("elsewhere"),
            &other,
            &row.digest,
            SystemTime::now(),
        )
        .await
        .unwrap();

    let tags = index.tags(UP, &app).await.unwrap();
    assert_eq!(tags, ["1.0", "10", "V1", "_dev", "latest", "v2"]);
    assert!(index.tags("docker.io", &app).await.unwrap().is_empty());
}

#[tokio::test]
async fn remove_content_cascades_to_links_and_tags() {
    let (_dir, index) = open();
    let (app, latest) = (repo("app"), tag("latest"));
    let (gone, kept) = (manifest(b"gone"), manifest(b"kept"));
    for row in [&gone, &kept] {
        index.insert_content(row, UP, &app).await.unwrap();
    }
    index
        .set_tag(UP, &app, &latest, &gone.digest, SystemTime::now())
        .await
        .unwrap();
    index
        .set_tag(UP, &app, &tag("stable"), &kept.digest, SystemTime::now())
        .await
        .unwrap();

    index.remove_content(&gone.digest).await.unwrap();

    assert_eq!(index.content(&gone.digest).await.unwrap(), None);
    assert!(!index.is_linked(UP, &app, &gone.digest).await.unwrap());
    assert_eq!(index.tag(UP, &app, &latest).await.unwrap(), None);
    assert_eq!(index.tags(UP, &app).await.unwrap(), ["stable"]);
    assert_eq!(index.all_digests().await.unwrap(), [kept.digest]);
}

#[tokio::test]
async fn all_digests_and_all_content_are_sorted() {
    let (_dir, index) = open();
    let rows = [blob(b"1"), blob(b"2"), manifest(b"3")];
    for row in &rows {
        index.insert_content(row, UP, &repo("a")).await.unwrap();
    }
    let mut want: Vec<_> = rows.iter().map(|r| r.digest.clone()).collect();
    want.sort();
    assert_eq!(index.all_digests().await.unwrap(), want);
    let content = index.all_content().await.unwrap();
    assert_eq!(
        content.iter().map(|r| &r.digest).collect::<Vec<_>>(),
        want.iter().collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_row_that_does_not_parse_is_corrupt_not_a_panic() {
    let (dir, index) = open();
    let raw = Connection::open(dir.path().join("index.db")).unwrap();
    raw.execute(
        "INSERT INTO content VALUES ('sha256:not-hex', 1, NULL, 0, 0)",
        [],
    )
    .unwrap();
    let err = index.all_digests().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Corrupt {
                op: "all_digests",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_second_handle_on_the_same_file_sees_committed_rows() {
    let (dir, first) = open();
    let second = Index::open(&dir.path().join("index.db")).unwrap();
    let row = blob(b"visible");
    first.insert_content(&row, UP, &repo("a")).await.unwrap();
    assert_eq!(
        second.content(&row.digest).await.unwrap(),
        Some(row.clone())
    );

    second.remove_content(&row.digest).await.unwrap();
    assert_eq!(first.content(&row.digest).await.unwrap(), None);
}

#[tokio::test]
async fn sizes_beyond_sqlite_integers_are_refused() {
    let (_dir, index) = open();
    let row = ContentRow {
        size: u64::MAX,
        ..blob(b"huge")
    };
    let err = index
        .insert_content(&row, UP, &repo("a"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SizeOutOfRange(u64::MAX)), "{err}");
}

#[tokio::test]
async fn linked_manifests_are_the_repos_manifests_only() {
    let (_dir, index) = open();
    let mine = manifest(b"{\"mine\":1}");
    let other_repo = manifest(b"{\"other\":1}");
    let layer = blob(b"layer");
    index.insert_content(&mine, UP, &repo("app")).await.unwrap();
    index
        .insert_content(&layer, UP, &repo("app"))
        .await
        .unwrap();
    index
        .insert_content(&other_repo, UP, &repo("other"))
        .await
        .unwrap();
    index
        .insert_content(&other_repo, "docker.io", &repo("app"))
        .await
        .unwrap();
    assert_eq!(
        index.linked_manifests(UP, &repo("app")).await.unwrap(),
        [mine]
    );
}

/// Another process (an operator's `gc`) holding the write lock: a write that
/// reads first (`insert_content` checks whether the row existed) waits for it
/// instead of failing with `SQLITE_BUSY` at its first write.
#[tokio::test]
async fn a_write_waits_for_a_lock_another_connection_holds() {
    let (dir, index) = open();
    let holder = rusqlite::Connection::open(dir.path().join("index.db")).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    holder
        .execute(
            "INSERT INTO content (digest, size, media_type, created_at, last_access) \
             VALUES (?1, 1, NULL, 0, 0)",
            [Digest::sha256_of(b"gc")],
        )
        .unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        holder.execute_batch("COMMIT").unwrap();
    });
    let row = blob(b"committed beside gc");
    let started = std::time::Instant::now();
    let new_row = index.insert_content(&row, UP, &repo("app")).await.unwrap();
    assert!(new_row);
    assert!(started.elapsed() >= Duration::from_millis(1000));
    release.join().unwrap();
    assert_eq!(index.content(&row.digest).await.unwrap(), Some(row));
    assert_eq!(index.all_digests().await.unwrap().len(), 2);
}

/// Past the busy timeout a write is tried again a few times, then gives up
/// with the busy error; any other error is returned at once.
#[test]
fn a_busy_write_is_retried_a_bounded_number_of_times() {
    let busy = || {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None)
    };
    let conn = std::sync::Mutex::new(rusqlite::Connection::open_in_memory().unwrap());
    let writer = || conn.lock().unwrap();
    let mut tries = 0;
    let ok = write_waiting(
        "test",
        |_| {
            tries += 1;
            if tries < 3 { Err(busy()) } else { Ok(tries) }
        },
        writer,
    );
    assert_eq!(ok.unwrap(), 3);

    let mut tries = 0;
    let gave_up = write_waiting(
        "test",
        |_| -> rusqlite::Result<()> {
            tries += 1;
            Err(busy())
        },
        writer,
    );
    assert!(db::is_busy(&gave_up.unwrap_err()));
    assert_eq!(tries, BUSY_RETRY_PAUSES.len() + 1);

    let mut tries = 0;
    let other = write_waiting(
        "test",
        |_| -> rusqlite::Result<()> {
            tries += 1;
            Err(rusqlite::Error::QueryReturnedNoRows)
        },
        writer,
    );
    assert!(other.is_err());
    assert_eq!(tries, 1);
}
