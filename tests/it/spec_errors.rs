//! Every error regcache answers, checked against the distribution spec's
//! error-code table: one table of requests (each with the upstream fault it
//! needs), each answered with the expected status and an OCI JSON body whose
//! code is one of the spec's (or, for the four conditions the spec has no code
//! for, distribution's), with the status that code has. HEAD gets the same
//! status and no body.
//!
//! Talks only to 127.0.0.1; the fake upstream and regcache are dropped by the test.

use reqwest::StatusCode;

use crate::support::fake::FakeUpstream;
use crate::support::regcache::Regcache;
use crate::support::{OCI_MANIFEST, client, seed_image, send};

/// The spec's error codes (distribution-spec `spec.md`, "Error Codes", code-1 to
/// code-14, a closed set: "The `code` field MUST be one of the following"), each
/// with the statuses it may come with: distribution's
/// (`registry/api/errcode/register.go`, `registry/api/v2/errors.go`), and for
/// `UNSUPPORTED` also 404, the spec's failure status for a path that names no
/// endpoint (`/v2/_catalog` on a registry without a catalog).
const SPEC_CODES: &[(&str, &[u16])] = &[
    ("BLOB_UNKNOWN", &[404]),
    ("BLOB_UPLOAD_INVALID", &[404]),
    ("BLOB_UPLOAD_UNKNOWN", &[404]),
    ("DIGEST_INVALID", &[400]),
    ("MANIFEST_BLOB_UNKNOWN", &[400]),
    ("MANIFEST_INVALID", &[400]),
    ("MANIFEST_UNKNOWN", &[404]),
    ("NAME_INVALID", &[400]),
    ("NAME_UNKNOWN", &[404]),
    ("SIZE_INVALID", &[400]),
    ("UNAUTHORIZED", &[401]),
    ("DENIED", &[403]),
    ("UNSUPPORTED", &[405, 404]),
    ("TOOMANYREQUESTS", &[429]),
];

/// Conditions the spec has no code for, answered with distribution's code for
/// them (what Docker and containerd already know). `UNKNOWN` is distribution's
/// 500, or 502 when the upstream is to blame (RFC 9110 §15.6.3); `UNAVAILABLE`
/// is 502 for an upstream that cannot answer (504 when it timed out), and 503
/// only when regcache itself is not ready.
const DISTRIBUTION_CODES: &[(&str, &[u16])] = &[
    ("PAGINATION_NUMBER_INVALID", &[400]),
    ("RANGE_INVALID", &[416]),
    ("UNAVAILABLE", &[502, 503, 504]),
    ("UNKNOWN", &[500, 502]),
];

/// What the fake upstream does while a case runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Every upstream request answered with this status.
    Status(u16),
    /// Connections refused.
    Down,
    /// The manifest's bytes do not hash to its digest.
    WrongBytes,
}

#[derive(Debug)]
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    headers: &'static [(&'static str, &'static str)],
    fault: Fault,
    status: u16,
    code: &'static str,
}

fn case(what: &'static str, path: impl Into<String>, status: u16, code: &'static str) -> Case {
    Case {
        what,
        method: "GET",
        path: path.into(),
        headers: &[],
        fault: Fault::None,
        status,
        code,
    }
}

impl Case {
    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }
    fn headers(mut self, headers: &'static [(&'static str, &'static str)]) -> Self {
        self.headers = headers;
        self
    }
    fn fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }
}

/// The statuses `code` may come with, or None if it is not a code clients know.
fn allowed_statuses(code: &str) -> Option<&'static [u16]> {
    SPEC_CODES
        .iter()
        .chain(DISTRIBUTION_CODES)
        .find(|(c, _)| *c == code)
        .map(|(_, statuses)| *statuses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_matches_the_spec_table() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100);
    let regcache = Regcache::with_upstream(fake.url());
    let missing = format!("sha256:{}", "0".repeat(64));
    // Never fetched before its case, so its bytes come from the upstream.
    let cold = seed_image(&fake, "pause", "cold", 100);
    let m = &cold.manifest_digest;
    let layer = &image.layer().digest;
    // Warm the layer so the range case is answered from the cache.
    let warm = send(client().get(format!("{}/v2/pause/blobs/{layer}", regcache.url()))).await;
    assert_eq!(warm.status, StatusCode::OK);

    let cases = [
        case(
            "bad name",
            "/v2/UPPER/manifests/latest",
            400,
            "NAME_INVALID",
        ),
        case(
            "malformed manifest digest",
            "/v2/pause/manifests/sha256:totallywrong",
            400,
            "DIGEST_INVALID",
        ),
        case(
            "blob by tag",
            "/v2/pause/blobs/latest",
            400,
            "DIGEST_INVALID",
        ),
        case(
            "malformed referrers digest",
            "/v2/pause/referrers/sha256:abc",
            400,
            "DIGEST_INVALID",
        ),
        // The conformance suite's name for a manifest that cannot exist.
        case(
            "reference neither tag nor digest",
            "/v2/pause/manifests/.INVALID_MANIFEST_NAME",
            404,
            "MANIFEST_UNKNOWN",
        ),
        case(
            "reference longer than a tag",
            format!("/v2/pause/manifests/{}", "a".repeat(129)),
            404,
            "MANIFEST_UNKNOWN",
        ),
        case(
            "unknown tag",
            "/v2/pause/manifests/nope",
            404,
            "MANIFEST_UNKNOWN",
        ),
        case(
            "unknown manifest digest",
            format!("/v2/pause/manifests/{missing}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        case(
            "stored type not accepted",
            "/v2/pause/manifests/3.9",
            404,
            "MANIFEST_UNKNOWN",
        )
        .headers(&[(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )]),
        case(
            "unknown blob",
            format!("/v2/pause/blobs/{missing}"),
            404,
            "BLOB_UNKNOWN",
        ),
        case(
            "unknown repository's tags",
            "/v2/unknown/tags/list",
            404,
            "NAME_UNKNOWN",
        ),
        case(
            "unconfigured ns",
            "/v2/pause/manifests/3.9?ns=elsewhere.example",
            404,
            "NAME_UNKNOWN",
        ),
        case("catalog", "/v2/_catalog", 404, "UNSUPPORTED"),
        case("push", "/v2/pause/manifests/3.9", 405, "UNSUPPORTED").method("PUT"),
        case(
            "delete",
            format!("/v2/pause/blobs/{layer}"),
            405,
            "UNSUPPORTED",
        )
        .method("DELETE"),
        case(
            "bad n",
            "/v2/pause/tags/list?n=-1",
            400,
            "PAGINATION_NUMBER_INVALID",
        ),
        case(
            "range past the end",
            format!("/v2/pause/blobs/{layer}"),
            416,
            "RANGE_INVALID",
        )
        .headers(&[("range", "bytes=5000-10000")]),
        // Before the failures below: three in a row open the upstream's
        // circuit (see `failfast`), and this one needs an answer.
        case(
            "upstream bytes do not match the digest",
            format!("/v2/pause/manifests/{m}"),
            502,
            "UNKNOWN",
        )
        .fault(Fault::WrongBytes),
        case(
            "upstream rate limit",
            "/v2/pause/manifests/cold-429",
            429,
            "TOOMANYREQUESTS",
        )
        .fault(Fault::Status(429)),
        case(
            "upstream refuses",
            "/v2/pause/manifests/cold-403",
            403,
            "DENIED",
        )
        .fault(Fault::Status(403)),
        case(
            "upstream 500",
            "/v2/pause/manifests/cold-500",
            502,
            "UNAVAILABLE",
        )
        .fault(Fault::Status(500)),
        case(
            "upstream down",
            format!("/v2/pause/manifests/{missing}"),
            502,
            "UNAVAILABLE",
        )
        .fault(Fault::Down),
    ];

    for case in &cases {
        set_fault(&fake, case.fault, m);
        check(&regcache, case, case.method).await;
        if case.method == "GET" {
            check(&regcache, case, "HEAD").await;
        }
        set_fault(&fake, Fault::None, m);
    }
}

fn set_fault(fake: &FakeUpstream, fault: Fault, manifest: &str) {
    fake.set_fail_status(match fault {
        Fault::Status(status) => Some(status),
        _ => None,
    });
    fake.set_down(fault == Fault::Down);
    fake.set_wrong_bytes(manifest, fault == Fault::WrongBytes);
}

/// Sends `case` with `method` and checks status, headers and body.
async fn check(regcache: &Regcache, case: &Case, method: &str) {
    let what = format!("{} ({method} {})", case.what, case.path);
    let mut request = client().request(
        method.parse().expect("method"),
        format!("{}{}", regcache.url(), case.path),
    );
    for (name, value) in case.headers {
        request = request.header(*name, *value);
    }
    let got = send(request).await;
    assert_eq!(got.status.as_u16(), case.status, "{what}: {:?}", got.body);
    assert_eq!(
        got.header("docker-distribution-api-version"),
        Some("registry/2.0"),
        "{what}"
    );
    assert_eq!(
        got.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    let allowed = allowed_statuses(case.code).unwrap_or_else(|| {
        panic!(
            "{what}: {} is neither a spec nor a distribution code",
            case.code
        )
    });
    assert!(
        allowed.contains(&case.status),
        "{what}: {} comes with {allowed:?}, not {}",
        case.code,
        case.status
    );
    if method == "HEAD" {
        assert!(
            got.body.is_empty(),
            "{what}: HEAD has a body {:?}",
            got.body
        );
        return;
    }
    let json: serde_json::Value = serde_json::from_slice(&got.body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {:?}", got.body));
    let errors = json["errors"].as_array().expect("an errors array");
    assert_eq!(errors.len(), 1, "{what}: {json}");
    let error = &errors[0];
    assert_eq!(error["code"], case.code, "{what}: {json}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: a message says why: {json}"
    );
    let keys: Vec<_> = error.as_object().expect("object").keys().collect();
    assert!(
        keys.iter()
            .all(|k| ["code", "message", "detail"].contains(&k.as_str())),
        "{what}: only the spec's fields: {json}"
    );
    if case.status == 429 {
        assert!(got.header("retry-after").is_some(), "{what}: Retry-After");
    }
    if case.status == 405 {
        assert_eq!(got.header("allow"), Some("GET, HEAD"), "{what}");
    }
}

/// Every code of the spec's table is in [`SPEC_CODES`] exactly once, and no
/// distribution-only code hides in it (the table above is what the test
/// checks against, so it must itself be the spec's).
#[test]
fn the_table_is_the_specs() {
    let mut spec: Vec<_> = SPEC_CODES.iter().map(|(c, _)| *c).collect();
    spec.sort_unstable();
    spec.dedup();
    assert_eq!(spec.len(), 14);
    for (code, _) in DISTRIBUTION_CODES {
        assert!(!spec.contains(code), "{code}");
    }
    for (code, _) in SPEC_CODES.iter().chain(DISTRIBUTION_CODES) {
        assert!(
            code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
            "{code}: only upper-case letters and underscores"
        );
    }
}

/// A reference that cannot name a manifest is 404 on HEAD (without a body, as
/// the conformance suite's "HEAD nonexistent manifest" expects) and on GET, and
/// is never asked of the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_references_never_reach_the_upstream() {
    let fake = FakeUpstream::k8s_like();
    let regcache = Regcache::with_upstream(fake.url());
    for reference in [".INVALID_MANIFEST_NAME", "-x", "a%20b"] {
        let url = format!("{}/v2/pause/manifests/{reference}", regcache.url());
        let head = send(client().head(&url).header("accept", OCI_MANIFEST)).await;
        assert_eq!(head.status, StatusCode::NOT_FOUND, "{reference}");
        assert!(head.body.is_empty());
        let get = send(client().get(&url)).await;
        get.assert_oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    }
    assert_eq!(
        fake.total_hits(),
        0,
        "an impossible reference went upstream"
    );
}
