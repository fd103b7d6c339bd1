//! The status page in Debian's headless Chromium, against the real binary and
//! the k8s-like fake: it loads with no failed request and asks for nothing but
//! itself, runs no failing script, shows the numbers `?format=json` gives, and
//! escapes a hostile repository name (planted in the index, the one place a
//! name the OCI grammar forbids could come from). Screenshots (phone and
//! desktop widths) and the metrics sample of the same moment are written to
//! `target/tmp/status-page/` for a person to look at.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use reqwest::StatusCode;

use crate::support::chromium;
use crate::support::fake::FakeUpstream;
use crate::support::regcache::Regcache;
use crate::support::{config_toml, get, pull, seed_image};

const HOSTILE: &str = "<img src=x onerror=alert(1)>/\"quoted\"&amp;";

/// The `data-value` of the element with `id` in a serialized DOM.
fn data_value<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in the page"));
    let tag = &dom[at..at + dom[at..].find('>').expect("tag end")];
    let value = tag
        .split("data-value=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("#{id} has no data-value: {tag}"));
    &value[..value.find('"').expect("attribute end")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_chromium_shows_the_json_numbers_and_escapes_names() {
    let fake = FakeUpstream::k8s_like();
    let app = seed_image(&fake, "app", "v1", 300 * 1024);
    let pause = seed_image(&fake, "pause", "3.9", 700 * 1024);
    let mut regcache = Regcache::builder()
        .config_toml(config_toml(&fake.url(), "1h"))
        .start();
    pull(&regcache.url(), &app).await;

    // A name no client could send, planted where the page reads names from.
    regcache.stop();
    let index = rusqlite::Connection::open(regcache.data_dir().join("index.db")).unwrap();
    let renamed = index
        .execute(
            "UPDATE repo_content SET repo = ?1 WHERE repo = 'app'",
            [HOSTILE],
        )
        .unwrap();
    assert!(renamed > 0);
    drop(index);
    regcache.restart();
    let base = regcache.url();
    pull(&base, &pause).await;
    pull(&base, &pause).await;

    let json = get(&format!("{base}/status?format=json")).await;
    assert_eq!(json.status, StatusCode::OK);
    let status: serde_json::Value = serde_json::from_slice(json.ok_body()).unwrap();
    let page_url = format!("{base}/status?refresh=0");
    let page = chromium::load(&page_url).await;

    // Loaded, from itself only, with a 200 and no network error.
    assert_eq!(page.requests.len(), 1, "{:#?}", page.requests);
    let request = &page.requests[0];
    assert_eq!(request.url, page_url);
    assert_eq!(request.status_line.as_deref(), Some("HTTP/1.1 200 OK"));
    assert_eq!(request.net_error, 0);
    assert!(page.console.is_empty(), "console: {:#?}", page.console);
    for external in ["src=\"http", "href=\"http", "<link rel=\"stylesheet"] {
        assert!(!page.dom.contains(external), "the page loads {external}…");
    }

    // The numbers are the JSON's.
    let number = |pointer: &str| status.pointer(pointer).unwrap().to_string();
    for (id, pointer) in [
        ("since-start-requests", "/since_start/requests"),
        ("since-start-served", "/since_start/bytes_served"),
        ("since-start-saved", "/since_start/bytes_saved"),
        ("since-start-hit", "/since_start/outcomes/hit/requests"),
        ("since-start-miss", "/since_start/outcomes/miss/requests"),
        ("last-hour-requests", "/last_hour/requests"),
        ("disk-committed", "/disk/committed_bytes"),
        ("disk-budget", "/disk/max_size"),
        ("disk-rows", "/disk/index_rows"),
        ("disk-pinned", "/disk/pinned_bytes"),
        ("evictions-count", "/disk/evictions"),
        ("evicted-bytes", "/disk/evicted_bytes"),
    ] {
        assert_eq!(
            data_value(&page.dom, id),
            number(pointer),
            "#{id} vs {pointer}"
        );
    }
    assert_eq!(number("/since_start/outcomes/hit/requests"), "3");
    assert_eq!(
        data_value(&page.dom, "since-start-hit-ratio"),
        number("/since_start/hit_ratio")
    );
    assert_eq!(status["most_pulled"][0]["repository"], "pause");
    assert!(page.dom.contains(">pause<"), "most pulled shows pause");

    // The hostile name is in the JSON as it is, and only text in the page.
    let largest = status["largest_repositories"].as_array().unwrap();
    assert!(
        largest.iter().any(|r| r["repository"] == HOSTILE),
        "{largest:?}"
    );
    assert!(
        page.dom
            .contains("&lt;img src=x onerror=alert(1)&gt;/\"quoted\"&amp;amp;"),
        "the name is shown escaped"
    );
    assert!(!page.dom.contains("<img"), "no element made from a name");

    // For a person to look at: the page at phone and desktop widths, and the
    // metrics of the same moment.
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&out).unwrap();
    chromium::screenshot(&page_url, &out.join("status-phone.png"), 412, 1900).await;
    chromium::screenshot(&page_url, &out.join("status-desktop.png"), 1280, 1000).await;
    let metrics = get(&format!("{base}/metrics")).await;
    std::fs::write(out.join("metrics.txt"), metrics.ok_body()).unwrap();
    std::fs::write(out.join("status.json"), json.ok_body()).unwrap();
}
