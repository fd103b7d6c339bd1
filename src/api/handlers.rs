//! Thin handlers: each takes a parsed [`Endpoint`] and the request headers, makes
//! one call into the `Registry`, and turns the answer into a response with the
//! headers clients rely on. No cache decisions are made here.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

use super::endpoint::Endpoint;
use super::error::ApiError;
use super::negotiate;
use super::range::{self, RangeRequest};
use crate::oci::{Digest, Reference, RepoName};
use crate::registry::{Outcome, Registry, Route, Routed};

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const OCI_NAMESPACE: HeaderName = HeaderName::from_static("oci-namespace");
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The query parameters regcache reads; all others are ignored.
#[derive(Debug, Default)]
pub struct Query {
    pub ns: Option<String>,
    pub n: Option<String>,
    pub last: Option<String>,
    pub artifact_type: Option<String>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let mut query = Self::default();
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let slot = match key.as_ref() {
                "ns" => &mut query.ns,
                "n" => &mut query.n,
                "last" => &mut query.last,
                "artifactType" => &mut query.artifact_type,
                _ => continue,
            };
            *slot = Some(value.into_owned());
        }
        query
    }
}

/// Serves one request under `/v2/`. Every answer, errors included, echoes
/// `OCI-Namespace` when the client routed with `ns`.
pub async fn serve(
    registry: &Registry,
    method: &Method,
    endpoint: Endpoint,
    query: &Query,
    headers: &HeaderMap,
) -> Response {
    let mut response = route_and_serve(registry, method, endpoint, query, headers)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    if let Some(value) = query
        .ns
        .as_deref()
        .and_then(|ns| HeaderValue::from_str(ns).ok())
    {
        response.headers_mut().insert(OCI_NAMESPACE, value);
    }
    response
}

async fn route_and_serve(
    registry: &Registry,
    method: &Method,
    endpoint: Endpoint,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let Routed { route, repo } = registry.route(query.ns.as_deref(), endpoint.name())?;
    let head = *method == Method::HEAD;
    match endpoint {
        Endpoint::Manifest { reference, .. } => {
            manifest(registry, route, &repo, &reference, head, headers).await
        }
        Endpoint::Blob { digest, .. } => blob(registry, route, &repo, &digest, head, headers).await,
        // The tag list names the repository as the client asked for it.
        Endpoint::Tags { name } => tags(registry, route, &repo, &name, query).await,
        Endpoint::Referrers { digest, .. } => {
            referrers(registry, route, &repo, &digest, query).await
        }
    }
}

async fn manifest(
    registry: &Registry,
    route: &Route,
    name: &RepoName,
    reference: &Reference,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (manifest, outcome) = registry.manifest(route, name, reference).await?;
    if !negotiate::accepts(headers, &manifest.media_type) {
        return Err(ApiError::manifest_not_acceptable(&manifest.media_type));
    }
    let mut builder = Response::builder()
        .header(DOCKER_CONTENT_DIGEST, manifest.digest.to_string())
        .header(header::ETAG, etag(&manifest.digest));
    if if_none_match(headers, &manifest.digest) {
        return Ok(with_outcome(
            builder.status(StatusCode::NOT_MODIFIED).body(Body::empty()),
            outcome,
        ));
    }
    builder = builder
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &manifest.media_type)
        .header(header::CONTENT_LENGTH, manifest.bytes.len());
    let body = if head {
        Body::empty()
    } else {
        Body::from(manifest.bytes.clone())
    };
    Ok(with_outcome(builder.body(body), outcome))
}

async fn blob(
    registry: &Registry,
    route: &Route,
    name: &RepoName,
    digest: &Digest,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let reply = registry.blob(route, name, digest, head).await?;
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .header(header::ETAG, etag(digest))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "max-age=31536000");
    let Some(size) = reply.size else {
        // The upstream sent no length: stream the whole blob without one.
        let body = match reply.body {
            Some(body) if !head => Body::from_stream(body.stream(0, u64::MAX)),
            _ => Body::empty(),
        };
        return Ok(with_outcome(
            builder.status(StatusCode::OK).body(body),
            reply.outcome,
        ));
    };
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match range::resolve(range_header, size) {
        RangeRequest::Whole => (StatusCode::OK, 0, size),
        RangeRequest::Partial(r) => {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", r.start, r.end),
            );
            (StatusCode::PARTIAL_CONTENT, r.start, r.end + 1)
        }
        RangeRequest::Unsatisfiable => {
            let error = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_INVALID",
                format!("blob is {size} bytes"),
            );
            let mut response = error.into_response();
            let value = HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii");
            response.headers_mut().insert(header::CONTENT_RANGE, value);
            return Ok(response);
        }
    };
    builder = builder
        .status(status)
        .header(header::CONTENT_LENGTH, end - start);
    let body = match reply.body {
        Some(body) if !head => Body::from_stream(body.stream(start, end)),
        _ => Body::empty(),
    };
    Ok(with_outcome(builder.body(body), reply.outcome))
}

async fn tags(
    registry: &Registry,
    route: &Route,
    repo: &RepoName,
    name: &RepoName,
    query: &Query,
) -> Result<Response, ApiError> {
    let n = match query.n.as_deref() {
        None => None,
        Some(raw) => Some(raw.parse::<usize>().map_err(|_| {
            ApiError::pagination_invalid(format!("n={raw:?} is not a non-negative integer"))
        })?),
    };
    let (all, outcome) = registry.tags(route, repo).await?;
    let after = query
        .last
        .as_deref()
        .map_or(0, |last| all.partition_point(|t| t.as_str() <= last));
    let rest = &all[after..];
    let page = &rest[..n.unwrap_or(rest.len()).min(rest.len())];
    let mut builder = Response::builder().status(StatusCode::OK);
    if let (Some(n), Some(last)) = (n, page.last()) {
        if rest.len() > page.len() {
            builder = builder.header(header::LINK, next_link(name, last, n, query.ns.as_deref()));
        }
    }
    let body = serde_json::json!({ "name": name.as_str(), "tags": page });
    let response = builder
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()));
    Ok(with_outcome(response, outcome))
}

/// `</v2/<name>/tags/list?last=<t>&n=<n>[&ns=<ns>]>; rel="next"`.
fn next_link(name: &RepoName, last: &str, n: usize, ns: Option<&str>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("last", last)
        .append_pair("n", &n.to_string());
    if let Some(ns) = ns {
        query.append_pair("ns", ns);
    }
    format!("</v2/{name}/tags/list?{}>; rel=\"next\"", query.finish())
}

async fn referrers(
    registry: &Registry,
    route: &Route,
    name: &RepoName,
    digest: &Digest,
    query: &Query,
) -> Result<Response, ApiError> {
    let (referrers, outcome) = registry
        .referrers(route, name, digest, query.artifact_type.as_deref())
        .await?;
    let content_type = referrers
        .content_type
        .unwrap_or_else(|| crate::oci::media_type::OCI_INDEX.to_owned());
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, referrers.body.len());
    if let Some(filters) = referrers.filters_applied {
        builder = builder.header(OCI_FILTERS_APPLIED, filters);
    }
    Ok(with_outcome(
        builder.body(Body::from(referrers.body)),
        outcome,
    ))
}

fn etag(digest: &Digest) -> String {
    format!("\"{digest}\"")
}

/// `If-None-Match` naming `digest` (quoted or not, weak or not, or `*`).
fn if_none_match(headers: &HeaderMap, digest: &Digest) -> bool {
    let want = digest.to_string();
    headers.get_all(header::IF_NONE_MATCH).iter().any(|value| {
        value.to_str().unwrap_or_default().split(',').any(|tag| {
            let tag = tag.trim();
            let tag = tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"');
            tag == want || tag == "*"
        })
    })
}

fn with_outcome(response: Result<Response, http::Error>, outcome: Outcome) -> Response {
    match response {
        Ok(mut response) => {
            response.extensions_mut().insert(outcome);
            response
                .headers_mut()
                .insert(CACHE_STATUS, cache_status(outcome));
            response
        }
        Err(e) => {
            // Only reachable if a header value were invalid, which our values never are.
            tracing::error!(error = %e, "building a response failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// RFC 9211's `Cache-Status`, so a client (`regcache prefetch` among them)
/// can tell what the cache held: `hit` when the bytes came from it, `fwd`
/// with the reason when the upstream was asked; `detail` names the outcome.
fn cache_status(outcome: Outcome) -> HeaderValue {
    HeaderValue::from_static(match outcome {
        Outcome::Hit => "regcache; hit",
        Outcome::Confirmed => "regcache; hit; detail=confirmed",
        Outcome::Stale => "regcache; hit; detail=stale",
        Outcome::Miss => "regcache; fwd=uri-miss",
        Outcome::Follow => "regcache; fwd=uri-miss; collapsed",
        Outcome::Pass => "regcache; fwd=bypass",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_reads_known_parameters_decoded() {
        let q = Query::parse(Some(
            "ns=myregistry.io%3A5000&n=10&last=v1&artifactType=a%2Fb&other=1",
        ));
        assert_eq!(q.ns.as_deref(), Some("myregistry.io:5000"));
        assert_eq!(q.n.as_deref(), Some("10"));
        assert_eq!(q.last.as_deref(), Some("v1"));
        assert_eq!(q.artifact_type.as_deref(), Some("a/b"));
        assert!(Query::parse(None).ns.is_none());
    }

    #[test]
    fn next_link_keeps_ns_encoded() {
        let name: RepoName = "a/b".parse().unwrap();
        assert_eq!(
            next_link(&name, "v2", 2, None),
            "</v2/a/b/tags/list?last=v2&n=2>; rel=\"next\""
        );
        assert_eq!(
            next_link(&name, "v2", 2, Some("r.io:5000")),
            "</v2/a/b/tags/list?last=v2&n=2&ns=r.io%3A5000>; rel=\"next\""
        );
    }

    #[test]
    fn if_none_match_forms() {
        let d = Digest::sha256_of(b"x");
        let mut h = HeaderMap::new();
        assert!(!if_none_match(&h, &d));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"other\", W/\"{d}\"")).unwrap(),
        );
        assert!(if_none_match(&h, &d));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&d.to_string()).unwrap(),
        );
        assert!(if_none_match(&h, &d));
    }
}
