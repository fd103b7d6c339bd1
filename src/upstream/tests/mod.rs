//! End-to-end tests of [`Upstream`] against in-process fake registries on
//! 127.0.0.1: a registry.k8s.io-like redirect chain, hop limits, status
//! mapping, transport failures, body limits, tag pagination and URL paths
//! (token auth and credential confinement are in `auth`). Each fake counts
//! what it saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt;
use reqwest::Method;

use super::testing::*;
use super::{Error, Upstream};
use crate::oci::{Digest, Reference, RepoName, media_type};

const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
const BLOB: &[u8] = b"0123456789 layer bytes";
const PRESIGNED_SECRET: &str = "presigned-s3cr3t";

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn tag(s: &str) -> Reference {
    s.parse().unwrap()
}

fn blob_digest() -> Digest {
    Digest::sha256_of(BLOB)
}

/// registry.k8s.io in miniature. A (archeio) 307s every `/v2/<rest>` to
/// B `/v2/prefix/<rest>`; B (Artifact Registry) serves manifests and answers
/// blob GETs with a relative `/download/<digest>`, which B 307s to C (S3) with
/// a presigned query. C refuses any Authorization, as S3 does. With `token`,
/// B wants `Bearer b-token`, issued by D for B's realm-only challenge.
struct K8sChain {
    a: Fake,
    b: Fake,
    c: Fake,
    d: Fake,
}

impl K8sChain {
    async fn start(token: bool) -> Self {
        let c = Fake::start(storage_host).await;
        let d = Fake::start(|_| {
            body(
                "application/json",
                r#"{"access_token":"b-token","expires_in":300}"#,
            )
        })
        .await;
        let c_url = c.url("");
        let realm = d.url("/token");
        let b = Fake::start(move |seen| {
            if token && seen.authorization() != Some("Bearer b-token") {
                return challenge(&format!(r#"Bearer realm="{realm}",service="b-registry""#));
            }
            artifact_registry(seen, &c_url)
        })
        .await;
        let b_url = b.url("");
        let a = Fake::start(move |seen| match seen.path.strip_prefix("/v2/") {
            // archeio builds the Location from the path alone: queries are dropped.
            Some(rest) => redirect(307, &format!("{b_url}/v2/prefix/{rest}")),
            None => status(404),
        })
        .await;
        Self { a, b, c, d }
    }

    fn config(&self) -> crate::config::UpstreamConfig {
        config(&self.a.url(""))
    }
}

fn artifact_registry(seen: &super::testing::Seen, storage: &str) -> axum::response::Response {
    let digest = blob_digest();
    let path = seen.path.as_str();
    if path.starts_with("/v2/prefix/pause/manifests/") {
        let response = body(media_type::OCI_MANIFEST, MANIFEST);
        return with_header(
            response,
            "docker-content-digest",
            &Digest::sha256_of(MANIFEST).to_string(),
        );
    }
    if path == format!("/v2/prefix/pause/blobs/{digest}") {
        return redirect(302, &format!("/download/{digest}"));
    }
    if path == format!("/download/{digest}") {
        let target = format!("{storage}/bytes/{digest}?X-Amz-Signature={PRESIGNED_SECRET}");
        return redirect(307, &target);
    }
    if path == "/v2/prefix/pause/tags/list" {
        return body(
            "application/json",
            r#"{"name":"prefix/pause","tags":["3.9","3.10"]}"#,
        );
    }
    status(404)
}

/// S3: bytes with Range support, no Docker-Content-Digest, and 400 for any
/// request that carries Authorization next to a presigned query.
fn storage_host(seen: &super::testing::Seen) -> axum::response::Response {
    if seen.authorization().is_some() {
        return status(400);
    }
    let start = seen
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    match start {
        Some(start) => {
            let mut response = body("application/octet-stream", &BLOB[start..]);
            *response.status_mut() = axum::http::StatusCode::PARTIAL_CONTENT;
            response
        }
        None => body("application/octet-stream", BLOB),
    }
}

#[tokio::test]
async fn follows_the_registry_k8s_io_chain() {
    let chain = K8sChain::start(false).await;
    let upstream = Upstream::new(&chain.config()).unwrap();
    let pause = repo("pause");

    let manifest = upstream
        .manifest(Method::GET, &pause, &tag("3.9"))
        .await
        .unwrap();
    assert_eq!(manifest.content_type(), Some(media_type::OCI_MANIFEST));
    assert_eq!(
        manifest.docker_content_digest(),
        Some(Digest::sha256_of(MANIFEST))
    );
    assert_eq!(
        &manifest.bytes_limited(1 << 20).await.unwrap()[..],
        MANIFEST
    );
    let accept = media_type::ALL_MANIFESTS.join(", ");
    for seen in chain.a.seen().iter().chain(&chain.b.seen()) {
        assert_eq!(
            seen.header("accept"),
            Some(accept.as_str()),
            "Accept kept on every hop"
        );
        assert_eq!(seen.header("accept-encoding"), Some("identity"));
        assert!(seen.header("user-agent").unwrap().starts_with("regcache/"));
    }

    let head = upstream
        .manifest(Method::HEAD, &pause, &tag("3.9"))
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(MANIFEST.len() as u64));
    assert_eq!(chain.b.seen().last().unwrap().method, Method::HEAD);

    let blob = upstream
        .blob(Method::GET, &pause, &blob_digest(), None)
        .await
        .unwrap();
    assert_eq!(
        blob.docker_content_digest(),
        None,
        "storage hosts send none"
    );
    assert!(!format!("{blob:?}").contains(PRESIGNED_SECRET));
    assert_eq!(&blob.bytes_limited(1 << 20).await.unwrap()[..], BLOB);

    let resumed = upstream
        .blob(Method::GET, &pause, &blob_digest(), Some(3))
        .await
        .unwrap();
    assert_eq!(resumed.status(), 206);
    assert_eq!(
        &resumed.bytes_limited(1 << 20).await.unwrap()[..],
        &BLOB[3..]
    );
    for fake in [&chain.a, &chain.b, &chain.c] {
        assert_eq!(
            fake.seen().last().unwrap().header("range"),
            Some("bytes=3-")
        );
    }

    let head = upstream
        .blob(Method::HEAD, &pause, &blob_digest(), None)
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(BLOB.len() as u64));
    assert_eq!(chain.c.seen().last().unwrap().method, Method::HEAD);
    assert_eq!(upstream.tags(&pause).await.unwrap(), ["3.9", "3.10"]);
    for fake in [&chain.a, &chain.b, &chain.c] {
        assert!(!fake.saw_authorization());
    }
    assert_eq!(chain.d.hits(), 0);
}

mod auth;

#[tokio::test]
async fn hop_limit_loops_and_bad_locations() {
    let fake = Fake::start(|seen| {
        let parts: Vec<&str> = seen.path.split('/').collect();
        match parts.as_slice() {
            ["", "v2", "loop", ..] => redirect(302, "/again"),
            ["", "again"] => redirect(302, "/v2/loop/manifests/x"),
            ["", "v2", "nowhere", ..] => status(302),
            ["", "v2", max, ..] => redirect(307, &format!("/r/1/{max}")),
            ["", "r", n, max] => {
                let (n, max): (u32, u32) = (n.parse().unwrap(), max.parse().unwrap());
                if n < max {
                    redirect(308, &format!("/r/{}/{max}", n + 1))
                } else {
                    body(media_type::OCI_MANIFEST, MANIFEST)
                }
            }
            _ => status(404),
        }
    })
    .await;
    let upstream = Upstream::new(&config(&fake.url(""))).unwrap();
    let get = |name: &'static str| {
        let upstream = upstream.clone();
        async move { upstream.manifest(Method::GET, &repo(name), &tag("x")).await }
    };
    assert!(get("10").await.is_ok(), "ten redirects are allowed");
    for name in ["11", "loop", "nowhere"] {
        let err = get(name).await.unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{name}: {err:?}");
    }
}

#[tokio::test]
async fn final_statuses_map_to_errors() {
    let fake = Fake::start(|seen| match seen.path.rsplit('/').next().unwrap() {
        "s404" => status(404),
        "s500" => status(500),
        "s429" => with_header(status(429), "retry-after", "7"),
        "s403" => {
            let mut r = body("text/html", "<html><body>403 Forbidden</body></html>");
            *r.status_mut() = axum::http::StatusCode::FORBIDDEN;
            r
        }
        "s401" => status(401),
        _ => status(418),
    })
    .await;
    let upstream = Upstream::new(&config(&fake.url(""))).unwrap();
    let get = |t: &'static str| {
        let upstream = upstream.clone();
        async move {
            upstream
                .manifest(Method::GET, &repo("x"), &tag(t))
                .await
                .unwrap_err()
        }
    };
    assert!(matches!(get("s404").await, Error::NotFound));
    assert!(matches!(
        get("s500").await,
        Error::ServerError { status: 500 }
    ));
    assert!(matches!(get("s403").await, Error::Denied { status: 403 }));
    assert!(matches!(get("s401").await, Error::Denied { status: 401 }));
    assert!(matches!(get("s418").await, Error::Protocol(_)));
    let err = upstream
        .manifest(Method::DELETE, &repo("x"), &tag("s404"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Protocol(_)));
    // Last: a 429 with Retry-After opens the circuit for that long and
    // pauses manifest requests, so the next request is not sent at all.
    let err = get("s429").await;
    assert!(
        matches!(err, Error::TooManyRequests { retry_after: Some(d) } if d == Duration::from_secs(7))
    );
    let sent = fake.seen().len();
    let refused = get("s404").await;
    assert!(
        matches!(&refused, Error::QuotaReserve { retry_in, .. } if *retry_in > Duration::from_secs(5)),
        "{refused:?}"
    );
    let report = upstream.health();
    assert_eq!(report.circuit, "open");
    assert!(report.rate_limit.and_then(|r| r.paused_until).is_some());
    assert!(refused.is_unavailable());
    assert_eq!(fake.seen().len(), sent, "nothing was sent");
}

#[tokio::test]
async fn closed_port_is_unreachable_without_leaking_the_query() {
    let closed = closed_port_url().await;
    let upstream = Upstream::new(&config(&closed)).unwrap();
    let err = upstream
        .manifest(Method::GET, &repo("x"), &tag("1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unreachable(_)) && err.is_unavailable(),
        "{err:?}"
    );
    let host = closed.trim_start_matches("http://").to_owned();
    assert!(
        matches!(&err, Error::Unreachable(t) if *t.cause() == super::Cause::Refused { host: host.clone() }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("connection to {host} refused")),
        "{err}"
    );

    let target = format!("{closed}/bytes?X-Amz-Signature={PRESIGNED_SECRET}");
    let fake = Fake::start(move |_| redirect(307, &target)).await;
    let upstream = Upstream::new(&config(&fake.url(""))).unwrap();
    let err = upstream
        .blob(Method::GET, &repo("x"), &blob_digest(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable(_)), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(PRESIGNED_SECRET), "{shown}");
    assert!(shown.contains("/bytes"), "{shown}");
}

#[tokio::test]
async fn a_cut_or_stalled_body_is_an_error_not_an_end() {
    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b";
    for hold in [None, Some(Duration::from_secs(30))] {
        let (url, _server) = raw_server(reply, hold).await;
        let mut cfg = config(url.as_str());
        cfg.idle_timeout = Duration::from_millis(300);
        let upstream = Upstream::new(&cfg).unwrap();
        let response = upstream
            .blob(Method::GET, &repo("x"), &blob_digest(), None)
            .await
            .unwrap();
        let items: Vec<_> = response.into_stream().collect().await;
        let last = items.last().expect("at least one item");
        assert!(
            matches!(last, Err(Error::Unreachable(_))),
            "{hold:?}: {items:?}"
        );
        let response = upstream
            .blob(Method::GET, &repo("x"), &blob_digest(), None)
            .await
            .unwrap();
        let err = response.bytes_limited(1000).await.unwrap_err();
        assert!(matches!(err, Error::Unreachable(_)), "{err:?}");
    }
}

#[tokio::test]
async fn bytes_limited_enforces_its_limit() {
    let fake = Fake::start(|seen| {
        let data = vec![b'x'; 100];
        if seen.path.contains("chunked") {
            let chunks = futures_util::stream::iter(
                data.chunks(10)
                    .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                    .collect::<Vec<_>>(),
            );
            body("application/octet-stream", Body::from_stream(chunks))
        } else {
            body("application/octet-stream", data)
        }
    })
    .await;
    let upstream = Upstream::new(&config(&fake.url(""))).unwrap();
    for name in ["sized", "chunked"] {
        let (name, x) = (repo(name), tag("x"));
        let fetch = || upstream.manifest(Method::GET, &name, &x);
        let r = fetch().await.unwrap();
        assert_eq!(name.as_str() == "sized", r.content_length().is_some());
        assert!(matches!(
            r.bytes_limited(99).await,
            Err(Error::TooLarge { limit: 99 })
        ));
        assert_eq!(
            fetch()
                .await
                .unwrap()
                .bytes_limited(100)
                .await
                .unwrap()
                .len(),
            100
        );
    }
}

#[tokio::test]
async fn tags_follow_link_pagination() {
    let fake = Bound::new().await;
    let absolute = fake.url("/v2/x/tags/list?last=d&n=2");
    let fake = fake.serve(move |seen| {
        let page = |tags: &str| {
            body(
                "application/json",
                format!(r#"{{"name":"x","tags":{tags}}}"#),
            )
        };
        match seen.query.as_str() {
            "" => with_header(
                page(r#"["a","b"]"#),
                "link",
                r#"</v2/x/tags/list?last=b&n=2>; rel="next""#,
            ),
            "last=b&n=2" => with_header(
                page(r#"["c","d"]"#),
                "link",
                &format!("<{absolute}>; rel=\"next\""),
            ),
            "last=d&n=2" => page(r#"["e"]"#),
            _ => status(404),
        }
    });
    let upstream = Upstream::new(&config(&fake.url(""))).unwrap();
    assert_eq!(
        upstream.tags(&repo("x")).await.unwrap(),
        ["a", "b", "c", "d", "e"]
    );
    assert_eq!(fake.hits(), 3);

    let looping = Fake::start(|_| {
        with_header(
            body("application/json", r#"{"tags":null}"#),
            "link",
            r#"</v2/x/tags/list?p=1>; rel="next""#,
        )
    })
    .await;
    let upstream = Upstream::new(&config(&looping.url(""))).unwrap();
    assert!(matches!(
        upstream.tags(&repo("x")).await,
        Err(Error::Protocol(_))
    ));
}

#[tokio::test]
async fn base_path_prefix_and_referrers_query() {
    let fake = Fake::start(|_| body(media_type::OCI_INDEX, "{}")).await;
    let upstream = Upstream::new(&config(&fake.url("/mirror/"))).unwrap();
    upstream
        .manifest(Method::GET, &repo("a/b"), &tag("1"))
        .await
        .unwrap();
    assert_eq!(fake.seen()[0].path, "/mirror/v2/a/b/manifests/1");

    let digest = blob_digest();
    let kind = "application/vnd.example+json; x=y&z";
    let r = upstream
        .referrers(&repo("a/b"), &digest, Some(kind))
        .await
        .unwrap();
    assert_eq!(r.content_type(), Some(media_type::OCI_INDEX));
    let seen = &fake.seen()[1];
    assert_eq!(seen.path, format!("/mirror/v2/a/b/referrers/{digest}"));
    assert_eq!(seen.query_values("artifactType"), [kind]);
    assert_eq!(seen.header("accept"), Some(media_type::OCI_INDEX));
    assert_eq!(upstream.name(), "test.example");
}

#[tokio::test]
async fn a_url_ending_in_v2_and_a_prefix_puts_the_prefix_before_every_repository() {
    let fake = Fake::start(|_| body(media_type::OCI_INDEX, "{}")).await;
    let upstream = Upstream::new(&config(&fake.url("/v2/docker.io/"))).unwrap();
    upstream
        .manifest(Method::GET, &repo("library/alpine"), &tag("3"))
        .await
        .unwrap();
    upstream.tags(&repo("x")).await.unwrap();
    let paths: Vec<String> = fake.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "/v2/docker.io/library/alpine/manifests/3",
            "/v2/docker.io/x/tags/list"
        ]
    );
    // A plain /v2 root is no prefix at all.
    let plain = Upstream::new(&config(&fake.url("/v2"))).unwrap();
    plain.tags(&repo("x")).await.unwrap();
    assert_eq!(fake.seen()[2].path, "/v2/x/tags/list");
    // What follows /v2/ must be able to start a repository name.
    assert!(Upstream::new(&config(&fake.url("/v2/Not_Valid"))).is_err());
}

#[test]
fn api_paths_split_into_root_and_repository_prefix() {
    use super::split_api_path;
    let split = |p: &str| split_api_path(p);
    assert_eq!(split("/"), ("/v2".to_owned(), None));
    assert_eq!(split(""), ("/v2".to_owned(), None));
    assert_eq!(split("/mirror/"), ("/mirror/v2".to_owned(), None));
    assert_eq!(split("/v2/"), ("/v2".to_owned(), None));
    assert_eq!(
        split("/v2/docker.io"),
        ("/v2".to_owned(), Some("docker.io".to_owned()))
    );
    assert_eq!(
        split("/r/v2/a/b/"),
        ("/r/v2".to_owned(), Some("a/b".to_owned()))
    );
}
