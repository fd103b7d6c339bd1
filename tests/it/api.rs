//! The API surface of the real binary in front of the fake upstream: bad names
//! and digests (400 with OCI JSON), references that are neither a tag nor a
//! digest (404 `MANIFEST_UNKNOWN`), path traversal attempts (never 200,
//! nothing touched outside the store, never sent upstream), read-only methods
//! (405), `_catalog` (404), and tags/list with `n`, `last` and `Link`.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use std::collections::BTreeSet;
use std::path::Path;

use reqwest::StatusCode;

use crate::support::fake::FakeUpstream;
use crate::support::regcache::Regcache;
use crate::support::{Got, OCI_MANIFEST, get, random_bytes, raw, seed_image};

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Every file and directory under `dir`, relative.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            out.insert(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

/// Asserts a raw response is an OCI error with `status` and `code`.
#[track_caller]
fn assert_raw_error(
    got: &(u16, Vec<(String, String)>, Vec<u8>),
    status: u16,
    code: &str,
    what: &str,
) {
    let (got_status, headers, body) = got;
    assert_eq!(
        *got_status,
        status,
        "{what}: {}",
        String::from_utf8_lossy(body)
    );
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        header("docker-distribution-api-version"),
        Some("registry/2.0"),
        "{what}"
    );
    let json: serde_json::Value = serde_json::from_slice(body).expect("OCI JSON");
    assert_eq!(json["errors"][0]["code"], code, "{what}: {json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_without_touching_disk_or_upstream() {
    let fake = FakeUpstream::k8s_like();
    seed_image(&fake, "pause", "3.9", 100);
    let regcache = Regcache::with_upstream(fake.url());
    let addr = regcache.addr();
    // The directory holding the data directory: nothing may appear beside it.
    let parent = regcache.data_dir().parent().unwrap().to_owned();
    let before = tree(&parent);

    let cases: &[(&str, u16, &str)] = &[
        ("/v2/UPPER/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/a//b/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/-a/blobs/sha256:00", 400, "NAME_INVALID"),
        (
            "/v2/pause/manifests/sha256:totallywrong",
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/pause/manifests/.hidden", 404, "MANIFEST_UNKNOWN"),
        ("/v2/pause/blobs/latest", 400, "DIGEST_INVALID"),
        (
            "/v2/pause/blobs/sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/pause/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/pause/blobs/sha256:../../../../etc/passwd",
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/pause/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd",
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/pause/manifests/..%2F..%2Findex.db",
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "/v2/%2e%2e/%2e%2e/etc/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            400,
            "NAME_INVALID",
        ),
        ("/v2/pause/manifests/a%00b", 404, "MANIFEST_UNKNOWN"),
    ];
    for (target, status, code) in cases {
        assert_raw_error(&raw(addr, "GET", target), *status, code, target);
        let (head_status, _, _) = raw(addr, "HEAD", target);
        assert_eq!(head_status, *status, "HEAD {target}");
    }
    // Traversal that does not even parse as an endpoint: never 200.
    for target in [
        "/v2/../../etc/passwd",
        "/v2/%2e%2e/%2e%2e/etc/passwd",
        "/v2/..%2f..%2fetc%2fpasswd",
        "/v2/pause/blobs/../../../index.db",
        "/v2/pause/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/../../x",
        "/../../etc/passwd",
        "/etc/passwd",
    ] {
        let (status, headers, body) = raw(addr, "GET", target);
        assert!(
            (400..500).contains(&status),
            "{target}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            !String::from_utf8_lossy(&body).contains("root:"),
            "{target} leaked a file"
        );
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "docker-distribution-api-version" && v == "registry/2.0"),
            "{target}"
        );
        // An error body has a known size: a Content-Length, never chunked.
        let length = headers.iter().find(|(k, _)| k == "content-length");
        assert_eq!(
            length.map(|(_, v)| v.parse::<usize>().unwrap()),
            Some(body.len()),
            "{target}: {headers:?}"
        );
        assert!(
            !headers.iter().any(|(k, _)| k == "transfer-encoding"),
            "{target}: {headers:?}"
        );
    }
    assert_eq!(fake.total_hits(), 0, "bad input went upstream");
    let after = tree(&parent);
    let new: Vec<_> = after
        .difference(&before)
        // The index and the server's counters file (rewritten, via a temp
        // file, as requests are counted) are the server's own files.
        .filter(|p| !p.starts_with("data/index.db") && !p.contains("server-stats.json"))
        .collect();
    assert!(new.is_empty(), "bad input created files: {new:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_read_only() {
    let fake = FakeUpstream::k8s_like();
    let regcache = Regcache::with_upstream(fake.url());
    let addr = regcache.addr();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for target in [
            "/v2/",
            "/v2/pause/blobs/uploads/",
            "/v2/pause/manifests/3.9",
            &format!("/v2/pause/blobs/{D}"),
            &format!("/v2/pause/manifests/{D}"),
        ] {
            let answer = raw(addr, method, target);
            assert_raw_error(&answer, 405, "UNSUPPORTED", &format!("{method} {target}"));
            let allow = answer.1.iter().find(|(name, _)| name == "allow");
            assert_eq!(
                allow.map(|(_, value)| value.as_str()),
                Some("GET, HEAD"),
                "{method} {target}"
            );
        }
    }
    let catalog = raw(addr, "GET", "/v2/_catalog");
    assert_eq!(catalog.0, 404);
    let catalog = get(&format!("{}/v2/_catalog?n=10", regcache.url())).await;
    assert_eq!(catalog.status, StatusCode::NOT_FOUND);
    assert_eq!(
        catalog.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    // /v2 and /v2/ answer without a challenge, GET and HEAD.
    for target in ["/v2", "/v2/"] {
        let (status, headers, _) = raw(addr, "HEAD", target);
        assert_eq!(status, 200, "{target}");
        assert!(
            headers
                .iter()
                .any(|(k, _)| k == "docker-distribution-api-version")
        );
        assert!(!headers.iter().any(|(k, _)| k == "www-authenticate"));
    }
    assert_eq!(fake.total_hits(), 0);
}

fn tags_of(got: &Got) -> Vec<String> {
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    let json: serde_json::Value = serde_json::from_slice(got.ok_body()).expect("JSON");
    assert_eq!(json["name"], "pause");
    json["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_paginates_with_n_last_and_link() {
    let fake = FakeUpstream::k8s_like();
    for tag in ["v1", "v2", "v3", "v4", "latest"] {
        let body = random_bytes(16);
        fake.put_manifest(
            "pause",
            Some(tag),
            OCI_MANIFEST,
            format!("{{\"n\":\"{}\"}}", hex::encode(body)).into(),
        );
    }
    // The upstream itself pages by 2 (with a relative Link, on the AR host).
    fake.set_tag_page_size(Some(2));
    let regcache = Regcache::with_upstream(fake.url());
    let base = regcache.url();
    let all = ["latest", "v1", "v2", "v3", "v4"];

    assert_eq!(
        tags_of(&get(&format!("{base}/v2/pause/tags/list")).await),
        all
    );
    let page = get(&format!("{base}/v2/pause/tags/list?n=2")).await;
    assert_eq!(tags_of(&page), ["latest", "v1"]);
    assert_eq!(
        page.header("link"),
        Some("</v2/pause/tags/list?last=v1&n=2>; rel=\"next\"")
    );
    let page = get(&format!("{base}/v2/pause/tags/list?last=v1&n=2")).await;
    assert_eq!(tags_of(&page), ["v2", "v3"]);
    assert_eq!(
        page.header("link"),
        Some("</v2/pause/tags/list?last=v3&n=2>; rel=\"next\"")
    );
    let page = get(&format!("{base}/v2/pause/tags/list?last=v3&n=2")).await;
    assert_eq!(tags_of(&page), ["v4"]);
    assert_eq!(page.header("link"), None);
    let page = get(&format!("{base}/v2/pause/tags/list?last=v2")).await;
    assert_eq!(tags_of(&page), ["v3", "v4"]);
    let page = get(&format!("{base}/v2/pause/tags/list?n=0")).await;
    assert!(tags_of(&page).is_empty());
    assert_eq!(page.header("link"), None);
    let page = get(&format!("{base}/v2/pause/tags/list?n=5")).await;
    assert_eq!(tags_of(&page), all);
    assert_eq!(page.header("link"), None);
    // ns is kept in the Link so containerd's next request routes the same way.
    let page = get(&format!("{base}/v2/pause/tags/list?n=3&ns=registry.k8s.io")).await;
    assert_eq!(tags_of(&page), ["latest", "v1", "v2"]);
    assert_eq!(
        page.header("link"),
        Some("</v2/pause/tags/list?last=v2&n=3&ns=registry.k8s.io>; rel=\"next\"")
    );
    get(&format!("{base}/v2/pause/tags/list?n=abc"))
        .await
        .assert_oci_error(StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID");
    get(&format!("{base}/v2/unknown/tags/list"))
        .await
        .assert_oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
}
