//! Several upstreams behind one regcache, over HTTP: routing by `ns`, by a path
//! prefix naming an upstream or alias, and to the default; Docker Hub's
//! `library/`; the closed table (an unknown name is a 404 and no fake sees a
//! request); tags kept per upstream while blobs are stored once; the health
//! probes. Real clients on the same set-up are in `interop`.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use reqwest::{Method, StatusCode};

use crate::support::fake::{Content, FakeUpstream, Host};
use crate::support::regcache::Regcache;
use crate::support::{blob_file, get, head, pull_via, seed_image, three_upstreams_toml};

/// regcache with three upstreams: `registry.k8s.io` (default, alias
/// `k8s.gcr.io`), `docker.io` and `ghcr.io`, each a fake.
struct ThreeUpstreams {
    k8s: FakeUpstream,
    hub: FakeUpstream,
    ghcr: FakeUpstream,
    regcache: Regcache,
}

impl ThreeUpstreams {
    fn start() -> Self {
        let (k8s, hub, ghcr) = (
            FakeUpstream::k8s_like(),
            FakeUpstream::k8s_like(),
            FakeUpstream::k8s_like_with_token(),
        );
        let config = three_upstreams_toml(&k8s.url(), &hub.url(), &ghcr.url());
        let regcache = Regcache::builder().config_toml(config).start();
        Self {
            k8s,
            hub,
            ghcr,
            regcache,
        }
    }

    fn total_hits(&self) -> usize {
        self.k8s.total_hits() + self.hub.total_hits() + self.ghcr.total_hits()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_path_prefix_and_default_reach_their_own_upstream() {
    let up = ThreeUpstreams::start();
    let base = up.regcache.url();
    let pause = seed_image(&up.k8s, "pause", "3.9", 1000);
    let alpine = seed_image(&up.hub, "library/alpine", "3.20", 1000);
    let tool = seed_image(&up.ghcr, "org/tool", "v1", 1000);

    pull_via(&base, "pause", "", &pause).await;
    pull_via(&base, "pause", "?ns=k8s.gcr.io", &pause).await;
    pull_via(&base, "k8s.gcr.io/pause", "", &pause).await;
    pull_via(&base, "registry.k8s.io/pause", "", &pause).await;
    // Docker Hub: one-component names get library/, under any of its hosts.
    pull_via(&base, "alpine", "?ns=docker.io", &alpine).await;
    pull_via(&base, "library/alpine", "?ns=docker.io", &alpine).await;
    pull_via(&base, "docker.io/alpine", "", &alpine).await;
    pull_via(&base, "index.docker.io/library/alpine", "", &alpine).await;
    pull_via(&base, "alpine", "?ns=registry-1.docker.io", &alpine).await;
    // containerd with override_path: the prefix repeats the ns.
    pull_via(&base, "docker.io/library/alpine", "?ns=docker.io", &alpine).await;
    // The token-auth upstream.
    pull_via(&base, "org/tool", "?ns=ghcr.io", &tool).await;
    pull_via(&base, "ghcr.io/org/tool", "", &tool).await;

    // Each upstream was asked for its own image only, each blob fetched once
    // (the repeated pulls were hits), and nothing leaked across upstreams.
    for (fake, image, other) in [
        (&up.k8s, &pause, &alpine),
        (&up.hub, &alpine, &tool),
        (&up.ghcr, &tool, &pause),
    ] {
        assert_eq!(
            fake.count(|s| s.method == Method::GET
                && s.host == Host::Front
                && s.path.ends_with(&image.layer().digest)),
            1,
            "{}",
            image.repo
        );
        assert_eq!(fake.hits(&other.layer().digest), 0);
        assert_eq!(fake.count(|s| s.query.contains("ns=")), 0, "ns is ours");
        fake.assert_no_violations();
    }
    // Docker Hub was only ever asked for library/alpine.
    let front = |s: &crate::support::fake::Seen| s.host == Host::Front;
    assert_eq!(
        up.hub
            .count(|s| front(s) && s.path.starts_with("/v2/library/alpine/")),
        up.hub.count(front)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ns_or_registry_prefix_is_a_404_and_dials_nothing() {
    let up = ThreeUpstreams::start();
    let base = up.regcache.url();
    let pause = seed_image(&up.k8s, "pause", "3.9", 100);
    for target in [
        "/v2/pause/manifests/3.9?ns=quay.io".to_owned(),
        format!("/v2/pause/blobs/{}?ns=quay.io", pause.layer().digest),
        "/v2/pause/tags/list?ns=evil.example%3A5000".to_owned(),
        "/v2/quay.io/org/app/manifests/v1".to_owned(),
        format!("/v2/quay.io/pause/blobs/{}", pause.layer().digest),
        "/v2/localhost/app/tags/list".to_owned(),
        "/v2/evil.example/a/b/manifests/latest".to_owned(),
    ] {
        let got = get(&format!("{base}{target}")).await;
        got.assert_oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
        let got = head(&format!("{base}{target}")).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "HEAD {target}");
    }
    // An error answer still echoes the ns it was asked with.
    let got = get(&format!("{base}/v2/pause/manifests/3.9?ns=quay.io")).await;
    assert_eq!(got.header("oci-namespace"), Some("quay.io"));
    assert_eq!(up.total_hits(), 0, "an unknown name was dialled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tag_in_two_upstreams_gives_each_its_own_while_blobs_are_stored_once() {
    let up = ThreeUpstreams::start();
    let base = up.regcache.url();
    let k8s_app = seed_image(&up.k8s, "app", "v1", 2000);
    let hub_app = seed_image(&up.hub, "library/app", "v1", 3000);
    assert_ne!(k8s_app.manifest_digest, hub_app.manifest_digest);
    for _ in 0..2 {
        pull_via(&base, "app", "", &k8s_app).await;
        pull_via(&base, "app", "?ns=docker.io", &hub_app).await;
        pull_via(&base, "docker.io/app", "", &hub_app).await;
    }
    // The same bytes in both upstreams: stored once, fetched once, served to a
    // repository only once its own upstream confirmed it has them.
    let shared = seed_image(&up.k8s, "shared", "v1", 4000);
    up.hub.put_content_with_digest(
        "library/shared",
        &shared.layer().digest,
        Content::Bytes(shared.layer().bytes.clone()),
    );
    let url = |q: &str| format!("{base}/v2/shared/blobs/{}{q}", shared.layer().digest);
    assert_eq!(get(&url("")).await.ok_body(), &shared.layer().bytes);
    assert_eq!(
        get(&url("?ns=docker.io")).await.ok_body(),
        &shared.layer().bytes
    );
    let d = &shared.layer().digest;
    assert_eq!(up.k8s.hits_on(Host::Front, Method::GET, d), 1);
    assert_eq!(up.hub.hits_on(Host::Front, Method::GET, d), 0);
    assert_eq!(up.hub.hits_on(Host::Front, Method::HEAD, d), 1);
    assert!(blob_file(up.regcache.data_dir(), &shared.layer().digest).exists());
    // Not in ghcr.io's repository: its upstream says so, and the cached copy is not served.
    get(&url("?ns=ghcr.io"))
        .await
        .assert_oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_answer_without_asking_any_upstream() {
    let fake = FakeUpstream::k8s_like();
    let regcache = Regcache::with_upstream(fake.url());
    let base = regcache.url();
    for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let got = get(&format!("{base}{path}")).await;
        assert_eq!(got.status, StatusCode::OK, "{path}");
        assert_eq!(got.body, body.as_bytes());
        assert_eq!(head(&format!("{base}{path}")).await.status, StatusCode::OK);
    }
    // Still ready with the upstream down: cached content can be served.
    fake.set_down(true);
    assert_eq!(get(&format!("{base}/readyz")).await.status, StatusCode::OK);
    assert_eq!(fake.total_hits(), 0);
    // Not ready once the store's directories are gone from under it.
    std::fs::remove_dir_all(regcache.data_dir().join("tmp")).unwrap();
    let got = get(&format!("{base}/readyz")).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&format!("{base}/healthz")).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_routes_to_configured_upstreams_only() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100);
    let regcache = Regcache::with_upstream(fake.url());
    let base = regcache.url();
    for ns in ["registry.k8s.io", "k8s.gcr.io"] {
        let got = get(&format!("{base}/v2/pause/manifests/3.9?ns={ns}")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.ok_body(), &image.manifest);
        assert_eq!(got.header("oci-namespace"), Some(ns));
        let got = get(&format!(
            "{base}/v2/pause/blobs/{}?ns={ns}",
            image.layer().digest
        ))
        .await;
        assert_eq!(got.ok_body(), &image.layer().bytes);
        assert_eq!(got.header("oci-namespace"), Some(ns));
    }
    let before = fake.total_hits();
    for path in [
        "/v2/pause/manifests/3.9",
        &format!("/v2/pause/blobs/{}", image.layer().digest),
        "/v2/pause/tags/list",
        "/v2/fresh/manifests/latest",
    ] {
        get(&format!("{base}{path}?ns=evil.example%3A5000"))
            .await
            .assert_oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    }
    assert_eq!(fake.total_hits(), before, "an unknown ns was dialled");
    // ns is ours: it is never passed upstream.
    assert_eq!(fake.count(|s| s.query.contains("ns=")), 0);
    assert_eq!(fake.hits("evil"), 0);
}
