//! Tags through the real binary against the k8s-like fake: a mapping younger
//! than `tag_ttl` never goes upstream; an older one is answered from the cache
//! at once while one background HEAD revalidates it (same digest: fresh again;
//! moved: fetched, served from the next request on; deleted: forgotten, 404
//! from the next request on), and the old manifest stays available by digest.
//! Herds on tags are in `herd`, the tag list and stale answers while the
//! upstream is down in `faults`, hanging upstreams in `failfast`.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use reqwest::{Method, StatusCode};

use crate::support::fake::{FakeUpstream, Host};
use crate::support::regcache::Regcache;
use crate::support::{config_toml, get, head, seed_image, wait_for};

fn start(fake: &FakeUpstream, tag_ttl: &str) -> Regcache {
    Regcache::builder()
        .config_toml(config_toml(&fake.url(), tag_ttl))
        .start()
}

/// Waits until the log holds `n` background revalidations that found `found`.
async fn revalidations(regcache: &Regcache, found: &str, n: usize) {
    let line = format!("found=\"{found}\"");
    wait_for(&format!("{n} revalidations that found {found}"), || {
        regcache.log().matches(&line).count() >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tags_are_served_at_once_and_revalidated_with_head_in_the_background() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 1000);
    let regcache = start(&fake, "0s");
    let url = format!("{}/v2/pause/manifests/3.9", regcache.url());
    let manifest_gets = || fake.hits_on(Host::Front, Method::GET, "/v2/pause/manifests/3.9");
    let manifest_heads = || fake.hits_on(Host::Front, Method::HEAD, "/v2/pause/manifests/3.9");

    assert_eq!(get(&url).await.ok_body(), &image.manifest);
    assert_eq!((manifest_gets(), manifest_heads()), (1, 0));
    // Expired (ttl 0): served from the cache, stale; a HEAD in the background
    // finds the same digest, no GET.
    let got = get(&url).await;
    assert_eq!(got.ok_body(), &image.manifest);
    assert_eq!(
        got.header("cache-status"),
        Some("regcache; hit; detail=stale")
    );
    revalidations(&regcache, "unchanged", 1).await;
    assert_eq!((manifest_gets(), manifest_heads()), (1, 1));

    // The tag moves upstream: this request still gets the cached manifest; its
    // revalidation's HEAD sees a new digest and GETs it; the next request
    // gets the new manifest.
    let moved = seed_image(&fake, "pause", "3.9", 1000);
    assert_eq!(get(&url).await.ok_body(), &image.manifest);
    revalidations(&regcache, "moved", 1).await;
    assert_eq!((manifest_gets(), manifest_heads()), (2, 2));
    let got = get(&url).await;
    assert_eq!(got.ok_body(), &moved.manifest);
    assert_eq!(
        got.header("docker-content-digest"),
        Some(moved.manifest_digest.as_str())
    );
    revalidations(&regcache, "unchanged", 2).await;
    assert_eq!((manifest_gets(), manifest_heads()), (2, 3));
    // The old manifest stays available by digest, without asking upstream.
    let before = fake.total_hits();
    let old = get(&format!(
        "{}/v2/pause/manifests/{}",
        regcache.url(),
        image.manifest_digest
    ))
    .await;
    assert_eq!(old.ok_body(), &image.manifest);
    assert_eq!(fake.total_hits(), before);

    // The tag is deleted upstream: the revalidation forgets it, and from then
    // on the tag is a 404.
    fake.delete_tag("pause", "3.9");
    assert_eq!(get(&url).await.ok_body(), &moved.manifest);
    revalidations(&regcache, "deleted", 1).await;
    get(&url)
        .await
        .assert_oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_within_their_ttl_do_not_go_upstream() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 1000);
    let regcache = start(&fake, "1h");
    let url = format!("{}/v2/pause/manifests/3.9", regcache.url());
    assert_eq!(get(&url).await.ok_body(), &image.manifest);
    let before = fake.total_hits();
    // Moving the tag upstream is not seen within the TTL.
    seed_image(&fake, "pause", "3.9", 1000);
    for _ in 0..3 {
        assert_eq!(get(&url).await.ok_body(), &image.manifest);
        assert_eq!(head(&url).await.status, StatusCode::OK);
    }
    assert_eq!(fake.total_hits(), before);
}
