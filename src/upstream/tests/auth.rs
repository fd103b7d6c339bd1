//! Token auth and credentials against in-process fakes: one token fetch per
//! origin and scope, tokens kept to the origin that asked for them, configured
//! credentials only for the realm our upstream named, and never again once a
//! redirect chain has left their origin.

use super::*;

#[tokio::test]
async fn token_at_a_redirect_target_is_fetched_once_and_stays_there() {
    let chain = K8sChain::start(true).await;
    let upstream = Upstream::new(&chain.config()).unwrap();
    let pause = repo("pause");
    for _ in 0..2 {
        let m = upstream
            .manifest(Method::GET, &pause, &tag("3.9"))
            .await
            .unwrap();
        assert_eq!(&m.bytes_limited(1 << 20).await.unwrap()[..], MANIFEST);
        upstream
            .manifest(Method::HEAD, &pause, &tag("3.9"))
            .await
            .unwrap();
        let b = upstream
            .blob(Method::GET, &pause, &blob_digest(), None)
            .await
            .unwrap();
        assert_eq!(&b.bytes_limited(1 << 20).await.unwrap()[..], BLOB);
    }
    assert_eq!(chain.d.hits(), 1, "token cached across requests");
    let token_request = &chain.d.seen()[0];
    assert_eq!(token_request.query_values("service"), ["b-registry"]);
    assert_eq!(
        token_request.query_values("scope"),
        ["repository:prefix/pause:pull"],
        "scope names the repository at the redirect target"
    );
    assert_eq!(
        token_request.authorization(),
        None,
        "anonymous: no credentials"
    );
    assert!(!chain.a.saw_authorization());
    assert!(
        !chain.c.saw_authorization(),
        "storage host never sees the token"
    );
    let downloads = chain.b.seen_under("/download/");
    assert!(
        downloads
            .iter()
            .all(|s| s.authorization() == Some("Bearer b-token"))
    );
    // Only the very first request went without a token: the 401 that started it.
    let unauthorized = chain
        .b
        .seen()
        .iter()
        .filter(|s| s.authorization().is_none())
        .count();
    assert_eq!(unauthorized, 1);
}

#[tokio::test]
async fn concurrent_first_requests_share_one_token_fetch() {
    let chain = K8sChain::start(true).await;
    let upstream = Upstream::new(&chain.config()).unwrap();
    let pause = repo("pause");
    let (digest, reference) = (blob_digest(), tag("3.9"));
    let (m, b) = tokio::join!(
        upstream.manifest(Method::GET, &pause, &reference),
        upstream.blob(Method::GET, &pause, &digest, None),
    );
    m.unwrap();
    b.unwrap();
    assert_eq!(chain.d.hits(), 1);
}

#[tokio::test]
async fn credentials_go_only_to_the_realm_our_upstream_named() {
    // A foreign challenger (B behind A's redirect) gets an anonymous request.
    let chain = K8sChain::start(true).await;
    let upstream = Upstream::new(&with_credentials(chain.config())).unwrap();
    upstream
        .manifest(Method::GET, &repo("pause"), &tag("3.9"))
        .await
        .unwrap();
    assert_eq!(chain.d.seen()[0].authorization(), None);

    // Our own upstream's challenge: the realm it names gets Basic credentials.
    let d = Fake::start(|_| body("application/json", r#"{"token":"own-token"}"#)).await;
    let realm = d.url("/token");
    let own = Fake::start(move |seen| match seen.authorization() {
        Some("Bearer own-token") => body(media_type::OCI_MANIFEST, MANIFEST),
        _ => challenge(&format!(
            r#"Bearer realm="{realm}",service="own",scope="repository:x:pull""#
        )),
    })
    .await;
    let upstream = Upstream::new(&with_credentials(config(&own.url("")))).unwrap();
    upstream
        .manifest(Method::GET, &repo("x"), &tag("1"))
        .await
        .unwrap();
    assert_eq!(d.seen()[0].authorization(), Some(ROBOT_BASIC));
    assert_eq!(d.seen()[0].query_values("scope"), ["repository:x:pull"]);
    let shown = format!("{upstream:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("own-token"),
        "{shown}"
    );
}

#[tokio::test]
async fn basic_challenge_uses_configured_credentials_only() {
    let own = Fake::start(|seen| match seen.authorization() {
        Some(ROBOT_BASIC) => body(media_type::OCI_MANIFEST, MANIFEST),
        _ => challenge(r#"Basic realm="registry""#),
    })
    .await;
    let with = Upstream::new(&with_credentials(config(&own.url("")))).unwrap();
    with.manifest(Method::GET, &repo("x"), &tag("1"))
        .await
        .unwrap();
    with.manifest(Method::GET, &repo("x"), &tag("1"))
        .await
        .unwrap();
    assert_eq!(own.hits(), 3, "remembered: no second 401");
    let without = Upstream::new(&config(&own.url(""))).unwrap();
    let err = without
        .manifest(Method::GET, &repo("x"), &tag("1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Denied { status: 401 }), "{err:?}");
}

/// CVE-2024-45336: a→b→a must not give a's token back to a on the return hop.
#[tokio::test]
async fn credentials_never_return_after_the_chain_left_their_origin() {
    let d = Fake::start(|_| body("application/json", r#"{"token":"a-token"}"#)).await;
    let a = Bound::new().await;
    let b = Fake::start({
        let back = a.url("/v2/x/manifests/final");
        move |_| redirect(302, &back)
    })
    .await;
    let (realm, b_url) = (d.url("/token"), b.url("/bounce"));
    let a = a.serve(
        move |seen| match (seen.path.as_str(), seen.authorization()) {
            ("/v2/x/manifests/final", None) => body(media_type::OCI_MANIFEST, MANIFEST),
            ("/v2/x/manifests/final", Some(_)) => status(400),
            (_, Some("Bearer a-token")) => redirect(307, &b_url),
            _ => challenge(&format!(r#"Bearer realm="{realm}",service="a""#)),
        },
    );
    let upstream = Upstream::new(&config(&a.url(""))).unwrap();
    let m = upstream
        .manifest(Method::GET, &repo("x"), &tag("start"))
        .await
        .unwrap();
    assert_eq!(&m.bytes_limited(1024).await.unwrap()[..], MANIFEST);
    assert!(!b.saw_authorization());
    assert!(
        a.seen_under("/v2/x/manifests/final")
            .iter()
            .all(|s| s.authorization().is_none())
    );
}

/// A token server that hands out `tok-1`, `tok-2`, ... and a registry that
/// accepts only `accepted`, answering other tokens with `rejection`.
async fn picky_registry(accepted: &'static str, rejection: &'static str) -> (Fake, Fake) {
    let issued = Arc::new(AtomicUsize::new(0));
    let d = Fake::start(move |_| {
        let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
        body("application/json", format!(r#"{{"token":"tok-{n}"}}"#))
    })
    .await;
    let realm = d.url("/token");
    let r = Fake::start(move |seen| match seen.authorization() {
        Some(a) if a == accepted => body(media_type::OCI_MANIFEST, MANIFEST),
        Some(_) => challenge(&format!(r#"Bearer realm="{realm}"{rejection}"#)),
        None => challenge(&format!(r#"Bearer realm="{realm}""#)),
    })
    .await;
    (r, d)
}

#[tokio::test]
async fn invalid_token_earns_exactly_one_more_fetch() {
    let (r, d) = picky_registry("Bearer tok-2", r#",error="invalid_token""#).await;
    let upstream = Upstream::new(&config(&r.url(""))).unwrap();
    upstream
        .manifest(Method::GET, &repo("x"), &tag("1"))
        .await
        .unwrap();
    assert_eq!(d.hits(), 2);

    let (r, d) = picky_registry("Bearer never", r#",error="invalid_token""#).await;
    let upstream = Upstream::new(&config(&r.url(""))).unwrap();
    let err = upstream
        .manifest(Method::GET, &repo("x"), &tag("1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Denied { status: 401 }), "{err:?}");
    assert_eq!(d.hits(), 2);

    let (r, d) = picky_registry("Bearer never", "").await;
    let upstream = Upstream::new(&config(&r.url(""))).unwrap();
    let err = upstream
        .manifest(Method::GET, &repo("x"), &tag("1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Denied { status: 401 }), "{err:?}");
    assert_eq!(d.hits(), 1, "a second 401 without invalid_token is final");
}

#[tokio::test]
async fn doctor_probes_record_ping_token_and_every_hop_of_the_chain() {
    let realm = Fake::start(|_| body("application/json", r#"{"token":"t"}"#)).await;
    let realm_url = realm.url("/token");
    let registry = Fake::start(move |seen| {
        if seen.path == "/v2/" {
            return challenge(&format!(r#"Bearer realm="{realm_url}",service="svc""#));
        }
        status(404)
    })
    .await;
    let upstream = Upstream::traced(&config(&registry.url(""))).unwrap();
    let (status, challenge) = upstream.ping().await.unwrap();
    assert_eq!(status.as_u16(), 401);
    let challenge = challenge.expect("a challenge");
    let token = upstream.probe_token(&challenge).await.expect("Bearer");
    assert_eq!(token.unwrap().as_u16(), 200);
    assert_eq!(realm.seen()[0].query, "service=svc");
    let hops = upstream.take_hops();
    let statuses: Vec<_> = hops.iter().map(|h| h.status).collect();
    assert_eq!(statuses, [Some(401), Some(200)], "{hops:?}");
    assert_eq!(hops[1].url, realm.url("/token"), "no query in the record");
    assert!(upstream.take_hops().is_empty(), "taken once");
    let untraced = Upstream::new(&config(&registry.url(""))).unwrap();
    untraced.ping().await.unwrap();
    assert!(untraced.take_hops().is_empty());
    assert_eq!(
        untraced.hosts_seen(),
        [registry.url("").trim_start_matches("http://").to_owned()]
    );
}
