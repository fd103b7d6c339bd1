//! [`ApiError`]: the one place that maps failures to HTTP statuses and OCI error
//! codes, rendered as the spec's `{"errors":[{"code","message","detail"}]}`.
//! Rendering has no side effects: the access log reads the message from the
//! response's extensions. Internal failures never leak their detail to clients.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::registry;

/// An error answer: status, OCI code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    /// What the log gets instead of `message` (internal detail kept from clients).
    log_detail: Option<String>,
}

/// The message behind an error response, for the access log.
#[derive(Debug, Clone)]
pub struct LoggedError(pub String);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            log_detail: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// A path that names no pull endpoint (`/v2/_catalog`). `UNSUPPORTED`: the
    /// spec's codes are a closed set and this is the one that says it.
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "no such endpoint in this read-only registry",
        )
    }

    pub fn unsupported() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "regcache is a read-only pull-through cache: only GET and HEAD are supported",
        )
    }

    pub fn name_invalid(detail: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "NAME_INVALID", detail)
    }

    pub fn digest_invalid(detail: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", detail)
    }

    /// A manifest reference that is neither a tag nor a digest names nothing
    /// that can exist: 404, as the spec's conformance tests expect.
    pub fn manifest_reference_invalid(detail: String) -> Self {
        Self::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", detail)
    }

    pub fn pagination_invalid(detail: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID", detail)
    }

    pub fn manifest_not_acceptable(media_type: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("manifest is {media_type}, which the Accept header does not allow"),
        )
    }

    fn upstream_unavailable(message: String) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", message)
    }

    fn bad_gateway(message: String) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "UNKNOWN", message)
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            "internal error; see the regcache log",
        )
    }
}

impl From<registry::Error> for ApiError {
    fn from(e: registry::Error) -> Self {
        let mut api = Self::answer_to(&e);
        api.log_detail = Some(error_chain(&e));
        api
    }
}

impl ApiError {
    /// The answer to a registry failure (a failed fill answers as its cause).
    fn answer_to(e: &registry::Error) -> Self {
        use registry::Error as E;
        let message = e.to_string();
        match e {
            E::UnknownNamespace(_) | E::NameUnknown => {
                Self::new(StatusCode::NOT_FOUND, "NAME_UNKNOWN", message)
            }
            E::ManifestUnknown => Self::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", message),
            E::BlobUnknown => Self::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", message),
            // 503 is kept for regcache itself not being ready (/readyz): an
            // upstream that cannot answer is a gateway failure, 504 if it
            // timed out, 502 otherwise.
            E::Unavailable { source, .. } if source.timed_out() => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE", message)
            }
            E::Unavailable { .. } => Self::upstream_unavailable(message),
            E::RateLimited { retry_after, .. } => {
                let mut api = Self::new(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", message);
                // Rounded up: a client that waits the whole seconds said must find it over.
                api.retry_after =
                    Some(retry_after.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64));
                api
            }
            E::Denied { .. } => Self::new(StatusCode::FORBIDDEN, "DENIED", message),
            E::Upstream { .. }
            | E::DigestMismatch { .. }
            | E::BadContent(_)
            | E::NotAManifest { .. } => Self::bad_gateway(message),
            E::Fill(cause) | E::Flight(cause) => Self::answer_to(cause),
            E::Store(_) | E::Index(_) | E::Local(_) | E::FillAbandoned => Self::internal(),
        }
    }
}

/// `e` and its sources, joined: the whole story for the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Errors that print their source already need it only once.
        let text = s.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = s.source();
    }
    chain
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": null }]
        });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            // RFC 9110 §15.5.6: a 405 lists the methods the resource supports.
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        let logged = self.log_detail.unwrap_or(self.message);
        response.extensions_mut().insert(LoggedError(logged));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    fn mapped(e: registry::Error) -> (StatusCode, &'static str) {
        let api = ApiError::from(e);
        (api.status(), api.code())
    }

    #[test]
    fn registry_errors_map_to_status_and_code() {
        use registry::Error as E;
        assert_eq!(
            mapped(E::UnknownNamespace("x".into())),
            (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
        );
        assert_eq!(
            mapped(E::ManifestUnknown),
            (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
        );
        assert_eq!(
            mapped(E::BlobUnknown),
            (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
        );
        let mismatch = E::DigestMismatch {
            expected: Digest::sha256_of(b"a"),
            actual: Digest::sha256_of(b"b"),
        };
        assert_eq!(mapped(mismatch), (StatusCode::BAD_GATEWAY, "UNKNOWN"));
        let unavailable = E::Unavailable {
            upstream: "registry.k8s.io".into(),
            source: crate::upstream::Error::ServerError { status: 500 },
        };
        let failed = E::Fill(std::sync::Arc::new(unavailable));
        assert_eq!(mapped(failed), (StatusCode::BAD_GATEWAY, "UNAVAILABLE"));
        let limited = ApiError::from(E::Fill(std::sync::Arc::new(E::RateLimited {
            upstream: "docker.io".into(),
            retry_after: Some(std::time::Duration::from_secs(30)),
        })));
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.retry_after, Some(30));
        let local = E::Local(std::io::Error::other("disk on fire"));
        let api = ApiError::from(local);
        assert_eq!(api.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !api.message.contains("disk on fire"),
            "internal detail leaked"
        );
        assert!(api.log_detail.unwrap().contains("disk on fire"));
    }

    #[tokio::test]
    async fn renders_the_oci_envelope() {
        let response = ApiError::digest_invalid("bad".into()).into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["errors"][0]["code"], "DIGEST_INVALID");
        assert_eq!(json["errors"][0]["message"], "bad");
    }
}
