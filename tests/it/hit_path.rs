//! Blob hits are served from mapped windows of their file
//! (`store::mapped`): the exact bytes, whole, by range across windows, by
//! HEAD, over HTTP/1.1 and HTTP/2, for many blobs at once, and with one
//! upstream fetch. The TLS side of the same path is in `serving_tls`.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use reqwest::StatusCode;

use crate::support::fake::FakeUpstream;
use crate::support::regcache::Regcache;
use crate::support::{client, get, head, random_bytes, send};

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn a_blob_hit_has_the_exact_bytes_whole_and_by_range_across_windows() {
    let fake = FakeUpstream::k8s_like();
    // Three mapped windows (4 MiB each): two whole, one short.
    let content = random_bytes(9 * MIB + 5);
    let digest = fake.put_blob("zero/copy", content.clone());
    let regcache = Regcache::with_upstream(fake.url());
    let url = format!("{}/v2/zero/copy/blobs/{digest}", regcache.url());

    // The miss streams the fill's growing file; the hit maps the committed one.
    assert_eq!(get(&url).await.ok_body(), &content);
    let hit = get(&url).await;
    assert_eq!(hit.header("content-length"), Some("9437189"));
    assert!(hit.ok_body() == &content, "the hit's bytes differ");

    // A range across the first window's end and into the last window.
    let (start, end) = (4 * MIB - 10, 8 * MIB + 10);
    let ranged = send(
        client()
            .get(&url)
            .header("range", format!("bytes={start}-{end}")),
    )
    .await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert!(
        ranged.body == content[start..=end],
        "the range's bytes differ"
    );
    // A range inside the last window only.
    let tail = send(client().get(&url).header("range", "bytes=-6")).await;
    assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
    assert!(tail.body == content[content.len() - 6..]);

    // A HEAD sends no body at all.
    let headed = head(&url).await;
    assert_eq!(headed.status, StatusCode::OK);
    assert!(headed.body.is_empty());
    assert_eq!(headed.header("content-length"), Some("9437189"));
    assert_eq!(fake.sent(&digest), content.len() as u64);
}

#[tokio::test]
async fn a_blob_hit_over_http2_without_tls_has_the_exact_bytes() {
    let fake = FakeUpstream::k8s_like();
    let content = random_bytes(5 * MIB + 3);
    let digest = fake.put_blob("zero/h2c", content.clone());
    let regcache = Regcache::with_upstream(fake.url());
    let url = format!("{}/v2/zero/h2c/blobs/{digest}", regcache.url());
    assert_eq!(get(&url).await.ok_body(), &content);

    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..3 {
        let response = h2c.get(&url).send().await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.bytes().await.unwrap() == content,
            "h2c bytes differ"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_hits_of_many_blobs_each_get_their_own_bytes() {
    let fake = FakeUpstream::k8s_like();
    let blobs: Vec<_> = (0..6)
        .map(|i| {
            let content = random_bytes(MIB * (i + 1) + 17 * i);
            (fake.put_blob("zero/many", content.clone()), content)
        })
        .collect();
    let regcache = Regcache::with_upstream(fake.url());
    let url = |digest: &str| format!("{}/v2/zero/many/blobs/{digest}", regcache.url());
    for (digest, content) in &blobs {
        assert_eq!(get(&url(digest)).await.ok_body(), content);
    }
    // Every blob four times at once: windows of different files interleave
    // on the same connections' worker threads.
    let pulls = blobs.iter().cycle().take(24).map(|(digest, content)| {
        let (url, content) = (url(digest), content.clone());
        async move {
            let got = get(&url).await;
            assert!(got.ok_body() == &content, "{url}: bytes differ");
        }
    });
    futures_util::future::join_all(pulls).await;
}
