//! Resumed fills against the real binary: an upstream that cuts a blob body
//! once is resumed with one `Range: bytes=<n>-` GET (clients get every byte,
//! the blob is cached), concurrent readers of a resumed fill do not notice, and
//! a body cut every time fails the fill after three resumes. Asserts bytes, the
//! fake's request log and files in the data directory; never wall-clock speed.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use reqwest::{Method, StatusCode};

use crate::support::fake::{FakeUpstream, Host};
use crate::support::regcache::Regcache;
use crate::support::{blob_file, client, get, seed_image, sha256, tmp_files, wait_for};

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_once_is_resumed_with_one_range_request() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 3 * MIB);
    let regcache = Regcache::with_upstream(fake.url());
    let d = &image.layer().digest;
    let cut = MIB as u64 + 7;
    fake.set_cut_once(d, cut);
    let url = format!("{}/v2/pause/blobs/{d}", regcache.url());

    let got = get(&url).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.ok_body(), &image.layer().bytes);
    assert_eq!(sha256(&got.body), *d);
    assert_eq!(
        fake.storage_gets(d),
        vec![None, Some(format!("bytes={cut}-"))]
    );
    regcache.wait_for_log(&format!("offset={cut}"));
    assert!(blob_file(regcache.data_dir(), d).exists());

    // Cached: the next request is a hit, with no upstream GET.
    let gets = fake.hits_on(Host::Storage, Method::GET, d);
    assert_eq!(get(&url).await.ok_body(), &image.layer().bytes);
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, d), gets);
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_a_resumed_fill_get_every_byte() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 3 * MIB);
    let regcache = Regcache::with_upstream(fake.url());
    let d = &image.layer().digest;
    let cut = 2 * MIB as u64 + 13;
    fake.pause_after(d, MIB as u64);
    fake.set_cut_once(d, cut);
    let url = format!("{}/v2/pause/blobs/{d}", regcache.url());
    // Both readers get their headers from the one fill while it is paused,
    // before the cut.
    let responses = futures_util::future::join_all((0..2).map(|_| client().get(&url).send())).await;
    fake.resume(d);
    let bodies = futures_util::future::join_all(responses.into_iter().map(|r| async move {
        let response = r.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.expect("a clean body")
    }))
    .await;
    for body in bodies {
        assert_eq!(body.len(), image.layer().bytes.len());
        assert_eq!(sha256(&body), *d);
    }
    assert_eq!(
        fake.storage_gets(d),
        vec![None, Some(format!("bytes={cut}-"))]
    );
    assert!(blob_file(regcache.data_dir(), d).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_every_time_fails_the_fill_after_three_resumes() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 3 * MIB);
    let regcache = Regcache::with_upstream(fake.url());
    let d = &image.layer().digest;
    let cut = MIB as u64 + 7;
    fake.set_cut_after(d, Some(cut));
    let url = format!("{}/v2/pause/blobs/{d}", regcache.url());

    let got = get(&url).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        got.body_error.is_some() || got.body.len() < image.layer().bytes.len(),
        "a failed fill ended cleanly with {} bytes",
        got.body.len()
    );
    wait_for("the failed fill's temp file to go", || {
        tmp_files(regcache.data_dir()).is_empty()
    })
    .await;
    assert!(!blob_file(regcache.data_dir(), d).exists());
    let resumed = Some(format!("bytes={cut}-"));
    assert_eq!(
        fake.storage_gets(d),
        vec![None, resumed.clone(), resumed.clone(), resumed]
    );

    // The next request starts a new fill, which works once the fault is off.
    fake.set_cut_after(d, None);
    assert_eq!(get(&url).await.ok_body(), &image.layer().bytes);
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, d), 5);
    assert!(blob_file(regcache.data_dir(), d).exists());
}
