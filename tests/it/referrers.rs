//! Referrers for every upstream (`GET /v2/<name>/referrers/<digest>`): always
//! 200 with an image index. From the in-process fake, which has the referrers
//! API (and does not filter): passed on byte for byte, filtered by
//! `artifactType` with `OCI-Filters-Applied`, kept for the tag TTL, served stale
//! with the upstream down. From Debian's docker-registry 2.8, which has no such
//! API: built from the referrers tag schema's fallback tag `sha256-<hex>`, or an
//! empty index when there is none; served with the upstream stopped, also after
//! a restart. And manifests regcache holds whose `subject` is the digest,
//! listed when the upstream's answer lags, and alone when it is down.
//!
//! Each answer is printed as `case | status | Content-Type | manifests listed`.
//! Talks only to 127.0.0.1; every server is stopped by its guard.

use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;

use crate::support::docker_registry::DockerRegistry;
use crate::support::fake::FakeUpstream;
use crate::support::images::{self, Blob, Image, Manifest};
use crate::support::regcache::Regcache;
use crate::support::{Got, OCI_MANIFEST, config_toml, get, seed_image, sha256};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const SBOM: &str = "application/vnd.example.sbom";
const SIGNATURE: &str = "application/vnd.example.signature";
/// Short, so the tests can outlive it.
const TAG_TTL: &str = "1s";
const PAST_TTL: Duration = Duration::from_millis(1300);

/// An image index listing `(digest, artifactType)` manifests.
fn index(referrers: &[(&str, &str)]) -> Bytes {
    let manifests: Vec<_> = referrers
        .iter()
        .map(|(digest, artifact_type)| {
            serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": 100,
                "artifactType": artifact_type,
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    Bytes::from(serde_json::to_vec(&index).unwrap())
}

/// Checks a referrers answer: 200, an OCI index, and returns the digests it lists.
#[track_caller]
fn listed(case: &str, got: &Got) -> Vec<String> {
    assert_eq!(got.status, StatusCode::OK, "{case}: {:?}", got.body);
    assert_eq!(got.header("content-type"), Some(OCI_INDEX), "{case}");
    let json: serde_json::Value = serde_json::from_slice(&got.body).expect("JSON");
    assert_eq!(json["schemaVersion"], 2, "{case}");
    assert_eq!(json["mediaType"], OCI_INDEX, "{case}");
    let digests: Vec<String> = json["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_owned())
        .collect();
    eprintln!(
        "referrers | {case} | {} | {} | filters: {} | [{}]",
        got.status.as_u16(),
        got.header("content-type").unwrap_or("-"),
        got.header("oci-filters-applied").unwrap_or("-"),
        digests.join(", ")
    );
    digests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_with_the_api_is_passed_on_filtered_cached_and_served_stale() {
    let fake = FakeUpstream::k8s_like();
    let subject = seed_image(&fake, "pause", "3.9", 100).manifest_digest;
    let sig = sha256(b"signature");
    let sbom = sha256(b"sbom");
    let upstream_index = index(&[(&sig, SIGNATURE), (&sbom, SBOM)]);
    fake.put_referrers("pause", &subject, upstream_index.clone());
    let regcache = Regcache::builder()
        .config_toml(config_toml(&fake.url(), TAG_TTL))
        .start();
    let url = format!("{}/v2/pause/referrers/{subject}", regcache.url());
    let filtered_url = format!("{url}?artifactType={}", SBOM.replace('/', "%2F"));

    let got = get(&url).await;
    assert_eq!(listed("fake, API", &got), [sig.clone(), sbom.clone()]);
    assert_eq!(got.body, upstream_index, "passed on byte for byte");
    assert_eq!(got.header("oci-filters-applied"), None);
    // Within the TTL: from memory, the upstream not asked again.
    let asked = fake.hits("/referrers/");
    assert!(asked > 0);
    listed("fake, API, again", &get(&url).await);
    assert_eq!(fake.hits("/referrers/"), asked);

    // The fake does not filter; regcache does, and says so.
    let got = get(&filtered_url).await;
    assert_eq!(
        listed("fake, API, artifactType=sbom", &got),
        std::slice::from_ref(&sbom)
    );
    assert_eq!(got.header("oci-filters-applied"), Some("artifactType"));
    let asked = fake.requests();
    assert!(
        asked
            .iter()
            .any(|s| s.path.contains("/referrers/") && s.query.contains("artifactType=")),
        "artifactType was not passed upstream"
    );

    // Nothing refers to the layer: an empty index, still 200.
    let layer = format!("{}/v2/pause/referrers/{}", regcache.url(), sha256(b"x"));
    assert!(listed("fake, API, no referrers", &get(&layer).await).is_empty());

    fake.set_down(true);
    tokio::time::sleep(PAST_TTL).await;
    let got = get(&url).await;
    assert_eq!(listed("fake down, stale", &got), [sig, sbom.clone()]);
    assert_eq!(got.body, upstream_index);
    let got = get(&filtered_url).await;
    assert_eq!(listed("fake down, stale, artifactType=sbom", &got), [sbom]);
    regcache.wait_for_log("outcome=\"stale\"");
    // Never asked before: nothing to answer with.
    let never = format!("{}/v2/pause/referrers/{}", regcache.url(), sha256(b"never"));
    get(&never)
        .await
        .assert_oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE");
}

/// An artifact (an OCI manifest with `artifactType` and `subject`) for `subject`.
fn artifact(subject: &Image, artifact_type: &str) -> (Vec<Blob>, Manifest) {
    let empty = Bytes::from_static(b"{}");
    let payload = Bytes::from(format!("{artifact_type} of {}", subject.top));
    let subject_manifest = subject
        .manifests
        .iter()
        .find(|m| m.digest == subject.top)
        .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": sha256(&empty),
            "size": empty.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer().bytes.v1.tar",
            "digest": sha256(&payload),
            "size": payload.len(),
        }],
        "subject": {
            "mediaType": subject_manifest.media_type,
            "digest": subject.top,
            "size": subject_manifest.bytes.len(),
        },
    });
    let bytes = Bytes::from(serde_json::to_vec(&manifest).unwrap());
    let blobs = [empty, payload]
        .into_iter()
        .map(|bytes| Blob {
            digest: sha256(&bytes),
            bytes,
        })
        .collect();
    let manifest = Manifest {
        digest: sha256(&bytes),
        media_type: OCI_MANIFEST.into(),
        bytes,
    };
    (blobs, manifest)
}

/// The referrers tag schema's tag for `digest`.
fn fallback_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// docker-registry's helpers run their own runtime: outside this one's context.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_without_the_api_answers_from_its_fallback_tag_or_empty() {
    let mut registry = blocking(DockerRegistry::start);
    let subject = images::oci_three_layers("app", "v1", 21);
    let lonely = images::oci_three_layers("app", "v2", 22);
    blocking(|| {
        registry.push(&subject);
        registry.push(&lonely);
    });
    // What a client without the API pushes: the artifacts, then the index of
    // them under the fallback tag.
    let (mut blobs, sbom) = artifact(&subject, SBOM);
    let (sig_blobs, sig) = artifact(&subject, SIGNATURE);
    blobs.extend(sig_blobs);
    let fallback_index = index(&[(&sbom.digest, SBOM), (&sig.digest, SIGNATURE)]);
    let fallback = Manifest {
        digest: sha256(&fallback_index),
        media_type: OCI_INDEX.into(),
        bytes: fallback_index.clone(),
    };
    let tagged = Image {
        repo: "app".into(),
        tag: fallback_tag(&subject.top),
        blobs,
        manifests: vec![sbom.clone(), sig.clone(), fallback.clone()],
        top: fallback.digest.clone(),
        platforms: Vec::new(),
    };
    blocking(|| registry.push(&tagged));
    let mut regcache = Regcache::builder()
        .config_toml(config_toml(&registry.url(), TAG_TTL))
        .start();
    let url = |regcache: &Regcache, digest: &str, query: &str| {
        format!("{}/v2/app/referrers/{digest}{query}", regcache.url())
    };
    let sbom_only = format!("?artifactType={}", SBOM.replace('/', "%2F"));

    let got = get(&url(&regcache, &subject.top, "")).await;
    let both = [sbom.digest.clone(), sig.digest.clone()];
    assert_eq!(listed("docker-registry, fallback tag", &got), both);
    assert_eq!(
        got.body, fallback_index,
        "the fallback tag's index, unchanged"
    );
    // The API was asked first (404), then the tag.
    assert_eq!(registry.requests("GET", "/referrers/"), 1);
    assert!(registry.requests("GET", &format!("/manifests/{}", fallback_tag(&subject.top))) >= 1);

    let got = get(&url(&regcache, &subject.top, &sbom_only)).await;
    let sbom_listed = [sbom.digest.clone()];
    assert_eq!(
        listed("docker-registry, fallback tag, artifactType=sbom", &got),
        sbom_listed
    );
    assert_eq!(got.header("oci-filters-applied"), Some("artifactType"));

    let got = get(&url(&regcache, &lonely.top, "")).await;
    assert!(listed("docker-registry, no fallback tag", &got).is_empty());
    assert_eq!(got.header("oci-filters-applied"), None);

    // Upstream stopped, past the TTL: the answers this process has, stale.
    blocking(|| registry.stop());
    tokio::time::sleep(PAST_TTL).await;
    let got = get(&url(&regcache, &subject.top, "")).await;
    assert_eq!(listed("docker-registry stopped, stale", &got), both);
    assert_eq!(got.body, fallback_index);
    // After a restart nothing is in memory, but the fallback tag is cached as a
    // manifest tag: served from its last mapping.
    blocking(|| regcache.restart());
    let got = get(&url(&regcache, &subject.top, &sbom_only)).await;
    assert_eq!(
        listed(
            "docker-registry stopped, after restart, artifactType=sbom",
            &got
        ),
        sbom_listed
    );
    regcache.wait_for_log("outcome=\"stale\"");
}

/// Manifests regcache holds whose `subject` is the digest are listed even when
/// the upstream's answer does not list them, and answer on their own when the
/// upstream is down and nothing else is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_manifests_naming_the_subject_are_listed_too() {
    let fake = FakeUpstream::k8s_like();
    let subject = seed_image(&fake, "pause", "3.9", 100);
    let subject_image = Image {
        repo: "pause".into(),
        tag: "3.9".into(),
        blobs: Vec::new(),
        manifests: vec![Manifest {
            digest: subject.manifest_digest.clone(),
            media_type: OCI_MANIFEST.into(),
            bytes: subject.manifest.clone(),
        }],
        top: subject.manifest_digest.clone(),
        platforms: Vec::new(),
    };
    let (_, sbom) = artifact(&subject_image, SBOM);
    // The upstream has the artifact but its referrers API does not list it.
    let put = fake.put_manifest("pause", None, OCI_MANIFEST, sbom.bytes.clone());
    assert_eq!(put, sbom.digest);
    let regcache = Regcache::builder()
        .config_toml(config_toml(&fake.url(), TAG_TTL))
        .start();
    let base = regcache.url();
    let got = get(&format!("{base}/v2/pause/manifests/{}", sbom.digest)).await;
    assert_eq!(got.status, StatusCode::OK, "pull the artifact by digest");

    let url = format!("{base}/v2/pause/referrers/{}", subject.manifest_digest);
    let got = get(&url).await;
    let want = std::slice::from_ref(&sbom.digest);
    assert_eq!(listed("fake, API lags, artifact cached", &got), want);
    let json: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    let descriptor = &json["manifests"][0];
    assert_eq!(descriptor["artifactType"], SBOM);
    assert_eq!(descriptor["mediaType"], OCI_MANIFEST);
    assert_eq!(descriptor["size"], sbom.bytes.len());
    let other = get(&format!("{url}?artifactType=application%2Fother")).await;
    assert!(listed("fake, API lags, artifactType=other", &other).is_empty());

    // Down, and this filter never asked: the cached artifact alone answers.
    fake.set_down(true);
    let sbom_only = format!("{url}?artifactType={}", SBOM.replace('/', "%2F"));
    let got = get(&sbom_only).await;
    assert_eq!(
        listed("fake down, never asked, artifact cached", &got),
        want
    );
    assert_eq!(got.header("oci-filters-applied"), Some("artifactType"));
    // Another repository never sees it.
    let elsewhere = format!("{base}/v2/other/referrers/{}", subject.manifest_digest);
    get(&elsewhere)
        .await
        .assert_oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE");
}
