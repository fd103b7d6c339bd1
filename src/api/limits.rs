//! Request size limits with OCI answers: a request target longer than
//! [`MAX_URI_BYTES`] gets `414`, a header block with more than [`MAX_HEADERS`]
//! fields or [`MAX_HEADER_BYTES`] bytes gets `431`, each with the spec's JSON
//! error body (hyper's own, bodiless 414/431 only answer what is far past
//! these). Also the `503` for a connection over `server.max_connections`.
//!
//! It never reads a body and never looks at what a header says.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use super::ApiError;

/// Longest request target (path and query), as nginx's default header buffer.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 100;
/// Most bytes of header names and values in one request.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Middleware: answers an oversized request target or header block before
/// routing (the metrics listener's; the API's connections ask [`refused`]).
pub(super) async fn check(request: Request, next: Next) -> Response {
    if let Some(refused) = refused(&request) {
        return refused;
    }
    next.run(request).await
}

/// The answer to a request whose target or header block is over the limits,
/// if it is: asked by `connections` for every request before it is routed
/// (a middleware layer cost every request a boxed future and a clone of the
/// routes it wraps).
pub fn refused<B>(request: &http::Request<B>) -> Option<Response> {
    refusal(request).map(IntoResponse::into_response)
}

fn refusal<B>(request: &http::Request<B>) -> Option<ApiError> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "UNKNOWN",
            format!("request target of {target} bytes; at most {MAX_URI_BYTES} are accepted"),
        ));
    }
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "UNKNOWN",
            format!(
                "{} header fields of {bytes} bytes; at most {MAX_HEADERS} fields and \
                 {MAX_HEADER_BYTES} bytes are accepted",
                headers.len()
            ),
        ));
    }
    None
}

/// The answer on a connection over `server.max_connections`.
pub fn over_capacity() -> Response {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "too many connections to regcache; try again",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
