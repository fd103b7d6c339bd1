//! The scrub through the real binary: a byte flipped in a cached blob file is
//! found by the background re-hash (no operator), the content is removed
//! through the index, memory and store, counted in `regcache stats`, and the
//! next pull fetches the right bytes from the upstream again.
//!
//! Talks only to loopback; every server a test starts is dropped by the test.

use reqwest::Method;

use crate::support::commands::ok_cmd;
use crate::support::fake::{FakeUpstream, Host};
use crate::support::regcache::Regcache;
use crate::support::{blob_file, config_toml, pull, seed_image, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotten_blob_is_removed_by_the_scrub_and_fetched_again() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 300 * 1024);
    let text = config_toml(&fake.url(), "5m").replacen(
        "[storage]\n",
        "[storage]\nscrub_interval = \"1s\"\nscrub_rate = \"64MiB\"\n",
        1,
    );
    let regcache = Regcache::builder().config_toml(text).start();
    pull(&regcache.url(), &image).await;
    let layer = &image.layer().digest;
    let file = blob_file(regcache.data_dir(), layer);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();

    let log = regcache.wait_for_log("scrub removed corrupt content");
    assert!(log.contains(layer.as_str()), "the log names the digest");
    wait_for("the rotten file to be removed", || !file.exists()).await;
    let gets = || fake.hits_on(Host::Storage, Method::GET, layer);
    assert_eq!(gets(), 1);

    pull(&regcache.url(), &image).await;
    assert_eq!(gets(), 2, "fetched again after the scrub");
    assert_eq!(std::fs::read(&file).unwrap(), image.layer().bytes);

    // Stats are written every 2 s; the totals say what the scrub removed.
    let mut removed = 0;
    for _ in 0..100 {
        let json = ok_cmd(regcache.data_dir(), &["stats", "--json"]).await;
        let stats: serde_json::Value = serde_json::from_str(&json).unwrap();
        removed = stats["server"]["scrub"]["removed"].as_u64().unwrap_or(0);
        if removed > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(removed, 1);
}
