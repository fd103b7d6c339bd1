//! The fake's three hosts: front (archeio's 307 with the query dropped),
//! registry (Artifact Registry: manifests, tags, referrers, blob 302s with a
//! relative `Location`), storage (the bytes, with `Range`; any
//! `Authorization` header is a violation).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;

use super::faults::{BodyState, flip_last};
use super::quota::Verdict;
use super::token::{challenge, token};
use super::*;

#[derive(Clone)]
pub(super) struct HostState {
    pub(super) shared: Arc<Shared>,
    pub(super) host: Host,
}

pub(super) async fn handle(State(hs): State<HostState>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let headers = request.headers().clone();
    let header_str = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let seen = Seen {
        host: hs.host,
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        authorization: header_str(header::AUTHORIZATION),
        range: header_str(header::RANGE),
        version: request.version(),
    };
    let fail_status = {
        let mut state = hs.shared.state();
        if hs.host != Host::Registry {
            if let Some(auth) = &seen.authorization {
                let what = format!(
                    "{:?} got Authorization {auth:?} on {method} {path}",
                    hs.host
                );
                state.violations.push(what);
            }
        }
        state.seen.push(seen);
        state.faults.fail_status
    };
    if let Some(status) = fail_status {
        return oci_error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "UNKNOWN",
            "injected failure",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "Only GET and HEAD are allowed.",
        );
    }
    let head = method == Method::HEAD;
    if hs.host == Host::Registry && path.contains("/manifests/") {
        let mut wake = hs.shared.wake.subscribe();
        while hs.shared.state().faults.hold_manifests && !hs.shared.down.load(Ordering::SeqCst) {
            if wake.changed().await.is_err() {
                break;
            }
        }
    }
    if hs.host == Host::Storage {
        let mut wake = hs.shared.wake.subscribe();
        let held = || {
            let state = hs.shared.state();
            state
                .faults
                .hold_blobs
                .iter()
                .any(|d| path.contains(d.as_str()))
        };
        while held() && !hs.shared.down.load(Ordering::SeqCst) {
            if wake.changed().await.is_err() {
                break;
            }
        }
    }
    let quota = match hs.host {
        Host::Registry if path.contains("/manifests/") => {
            let mut state = hs.shared.state();
            state.quota.as_mut().map(|q| q.take(!head))
        }
        _ => None,
    };
    let extra = match quota {
        Some(Verdict::Refuse(refused)) => return refused,
        Some(Verdict::Answer(extra)) => extra,
        None => Vec::new(),
    };
    let mut response = match hs.host {
        Host::Front => front(&hs.shared, &path),
        Host::Registry => registry(&hs.shared, &path, &query, &headers, head),
        Host::Storage => storage(&hs.shared, &path, &headers, head),
    };
    for (name, value) in extra {
        response.headers_mut().insert(name, value);
    }
    response
}

/// archeio: `/v2/` 200, `_catalog` 404, everything else under `/v2/` a 307.
pub(super) fn front(shared: &Shared, path: &str) -> Response {
    if path == "/v2" || path == "/v2/" {
        return Response::builder()
            .status(StatusCode::OK)
            .header("docker-distribution-api-version", "registry/2.0")
            .header(header::CONTENT_LENGTH, 0)
            .body(Body::empty())
            .expect("response");
    }
    if path.starts_with("/v2/_catalog") {
        return plain(StatusCode::NOT_FOUND, "_catalog is not supported");
    }
    match path.strip_prefix("/v2/") {
        Some(rest) => redirect(
            StatusCode::TEMPORARY_REDIRECT,
            &format!(
                "{}://{}/v2/{AR_PREFIX}/{rest}",
                shared.scheme, shared.registry
            ),
        ),
        None => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Artifact Registry: token endpoint, auth check, manifests, tags, blob 302s.
pub(super) fn registry(
    shared: &Shared,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    head: bool,
) -> Response {
    if path == "/v2/token" {
        return token(shared, query);
    }
    if let Some(download) = path.strip_prefix("/artifacts-downloads/") {
        let token = download.rsplit('/').next().unwrap_or_default();
        let digest = shared.state().downloads.get(token).cloned();
        return match digest {
            Some(digest) => redirect(
                StatusCode::FOUND,
                &format!(
                    "{}://{}/containers/images/{digest}",
                    shared.scheme, shared.storage
                ),
            ),
            None => plain(StatusCode::NOT_FOUND, "no such download"),
        };
    }
    if path == "/v2" || path == "/v2/" {
        if shared.auth {
            return challenge(shared, None);
        }
        return json(StatusCode::OK, "{}");
    }
    let Some(rest) = path.strip_prefix(&format!("/v2/{AR_PREFIX}/")) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "not under the AR prefix",
        );
    };
    let Some((name, op, arg)) = split(rest) else {
        return oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "unknown path");
    };
    if shared.auth {
        let granted = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| shared.state().tokens.get(t).cloned());
        let want = format!("repository:{AR_PREFIX}/{name}:pull");
        match granted {
            Some(scope) if scope.split(' ').any(|s| s == want) => {}
            Some(scope) => {
                shared
                    .state()
                    .violations
                    .push(format!("token for {scope:?} used for {want:?}"));
                return challenge(shared, Some(name));
            }
            None => return challenge(shared, Some(name)),
        }
    }
    match op {
        "manifests" => manifest(shared, name, arg, head),
        "blobs" => {
            let linked = shared
                .state()
                .blob_links
                .contains(&(name.to_owned(), arg.to_owned()));
            if !linked {
                return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown");
            }
            let n = shared.counter.fetch_add(1, Ordering::SeqCst);
            let token = format!("dl{n}x{}", arg.replace(':', "-"));
            shared
                .state()
                .downloads
                .insert(token.clone(), arg.to_owned());
            // Relative, as AR sends it: it must resolve against this host.
            redirect(
                StatusCode::FOUND,
                &format!(
                    "/artifacts-downloads/namespaces/k8s-artifacts-prod/repositories/images/downloads/{token}"
                ),
            )
        }
        "tags" => tags(shared, name, query),
        "referrers" => {
            let key = (name.to_owned(), arg.to_owned());
            let stored = shared.state().referrers.get(&key).cloned();
            let empty = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
            let body = stored.map_or_else(
                || empty.to_owned(),
                |b| String::from_utf8_lossy(&b).into_owned(),
            );
            json(StatusCode::OK, &body).map_content_type("application/vnd.oci.image.index.v1+json")
        }
        _ => oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "unknown path"),
    }
}

/// `<name>/manifests/<ref>`, `<name>/blobs/<digest>`, `<name>/referrers/<d>`,
/// `<name>/tags/list` → (name, op, arg).
pub(super) fn split(rest: &str) -> Option<(&str, &str, &str)> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some((name, "tags", ""));
    }
    for op in ["manifests", "blobs", "referrers"] {
        if let Some(at) = rest.rfind(&format!("/{op}/")) {
            return Some((&rest[..at], op, &rest[at + op.len() + 2..]));
        }
    }
    None
}

pub(super) fn manifest(shared: &Shared, name: &str, reference: &str, head: bool) -> Response {
    let state = shared.state();
    let digest = if reference.contains(':') {
        reference.to_owned()
    } else {
        match state.tags.get(&(name.to_owned(), reference.to_owned())) {
            Some(d) => d.clone(),
            None => return oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "unknown tag"),
        }
    };
    let Some(m) = state.manifests.get(&(name.to_owned(), digest.clone())) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "unknown manifest",
        );
    };
    let mut bytes = m.bytes.clone();
    if state.faults.wrong_bytes.contains(&digest) {
        bytes = flip_last(&bytes);
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &m.media_type)
        .header(header::CONTENT_LENGTH, bytes.len())
        .header("docker-content-digest", &digest)
        .header(header::ETAG, format!("\"{digest}\""))
        .body(if head {
            Body::empty()
        } else {
            Body::from(bytes)
        })
        .expect("response")
}

pub(super) fn tags(shared: &Shared, name: &str, query: &str) -> Response {
    let state = shared.state();
    let all: Vec<&str> = state
        .tags
        .keys()
        .filter(|(repo, _)| repo == name)
        .map(|(_, tag)| tag.as_str())
        .collect();
    if all.is_empty() {
        return oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "repository unknown");
    }
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let last = params.get("last").cloned();
    let n = params
        .get("n")
        .and_then(|n| n.parse::<usize>().ok())
        .or(state.tag_page_size);
    let rest: Vec<&str> = all
        .into_iter()
        .filter(|t| last.as_deref().is_none_or(|l| *t > l))
        .collect();
    let page: Vec<&str> = rest.iter().take(n.unwrap_or(usize::MAX)).copied().collect();
    let body = serde_json::json!({ "name": format!("{AR_PREFIX}/{name}"), "tags": page });
    let mut response = json(StatusCode::OK, &body.to_string());
    if let (Some(n), Some(last)) = (n, page.last()) {
        if rest.len() > page.len() {
            let link =
                format!("</v2/{AR_PREFIX}/{name}/tags/list?last={last}&n={n}>; rel=\"next\"");
            response
                .headers_mut()
                .insert(header::LINK, HeaderValue::from_str(&link).expect("link"));
        }
    }
    response
}

/// Storage: the bytes, with Range; never wants an Authorization header.
pub(super) fn storage(
    shared: &Arc<Shared>,
    path: &str,
    headers: &HeaderMap,
    head: bool,
) -> Response {
    let Some(digest) = path.strip_prefix("/containers/images/") else {
        return plain(StatusCode::NOT_FOUND, "NoSuchKey");
    };
    let digest = digest.replace("%3A", ":").replace("%3a", ":");
    let (content, wrong, cut, chunked) = {
        let state = shared.state();
        let Some(content) = state.blobs.get(&digest).cloned() else {
            return plain(StatusCode::NOT_FOUND, "NoSuchKey");
        };
        (
            content,
            state.faults.wrong_bytes.contains(&digest),
            state.faults.cut_after.get(&digest).copied(),
            state.faults.no_content_length,
        )
    };
    let size = content.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| parse_range(r, size));
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", &digest)
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::ACCEPT_RANGES, "bytes");
    let (start, end) = match range {
        Some(Ok((start, end))) => {
            builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            );
            (start, end)
        }
        Some(Err(())) => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .body(Body::empty())
                .expect("response");
        }
        None => {
            builder = builder.status(StatusCode::OK);
            (0, size)
        }
    };
    if !chunked {
        builder = builder.header(header::CONTENT_LENGTH, end - start);
    }
    if head {
        return builder.body(Body::empty()).expect("response");
    }
    let once = {
        let mut state = shared.state();
        match state.faults.cut_once.get(&digest).copied() {
            Some(at) if (start..end).contains(&at) => state.faults.cut_once.remove(&digest),
            _ => None,
        }
    };
    let cut = match (cut, once) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let body = BodyState {
        shared: Arc::clone(shared),
        digest,
        content,
        pos: start,
        end,
        wrong,
        cut,
        done: false,
    };
    let stream = futures_util::stream::unfold(body, |mut body| async move {
        let item = body.next().await?;
        Some((item, body))
    });
    builder.body(Body::from_stream(stream)).expect("response")
}

/// `bytes=a-b`, `a-`, `-n` → `Ok((start, end_exclusive))`; unsatisfiable → `Err`.
pub(super) fn parse_range(value: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return Some(Err(()));
        }
        return Some(Ok((size.saturating_sub(n), size)));
    }
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        size
    } else {
        b.parse::<u64>().ok()?.saturating_add(1).min(size)
    };
    if start >= size || end <= start {
        return Some(Err(()));
    }
    Some(Ok((start, end)))
}

pub(super) fn redirect(status: StatusCode, location: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::LOCATION, location)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("response")
}

pub(super) fn plain(status: StatusCode, text: &'static str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(text))
        .expect("response")
}

pub(super) fn json(status: StatusCode, body: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body.to_owned()))
        .expect("response")
}

pub(super) fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
    json(status, &body.to_string())
}

pub(super) trait ContentTypeExt {
    fn map_content_type(self, value: &'static str) -> Self;
}

impl ContentTypeExt for Response {
    fn map_content_type(mut self, value: &'static str) -> Self {
        self.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
        self
    }
}
