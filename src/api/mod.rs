//! The HTTP edge: the axum router for the read-only OCI Distribution pull API.
//! It is the only module that knows axum, headers and status codes. Paths are
//! parsed once into an [`endpoint::Endpoint`] (axum wildcards can only end a
//! path, and repository names hold slashes), handlers stay thin, and every
//! response carries `Docker-Distribution-API-Version: registry/2.0`.
//!
//! It never decides what is cached: that is `registry`'s job.

mod access_log;
pub mod auth;
pub(crate) mod endpoint;
mod error;
mod handlers;
mod health;
mod limits;
mod negotiate;
pub(crate) mod range;
mod status;
mod status_page;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::{HeaderName, HeaderValue, StatusCode, header};
use tower::ServiceBuilder;
use tower_http::set_header::SetResponseHeaderLayer;

pub use endpoint::Endpoint;
pub use error::ApiError;
pub use health::{HEALTHZ, READYZ};
pub use limits::{MAX_HEADER_BYTES, MAX_HEADERS, MAX_URI_BYTES, over_capacity, refused};
pub use status::{METRICS, STATUS_PATHS};

use crate::counters::Counters;
use crate::metrics::Observed;
use crate::registry::Registry;

/// The router for `registry`: the health probes, and the registry API, where
/// every finished request is logged and counted in `counters`, behind `gate`
/// if client authentication is configured; with `observed`, also `/metrics`
/// and the status page (behind the same gate, outside the access log).
pub fn router(
    registry: Arc<Registry>,
    counters: Arc<Counters>,
    gate: Option<Arc<auth::Gate>>,
    observed: Option<Observed>,
) -> Router {
    // Each `Router::layer` call boxes every route once more, and a request
    // clones the boxes of every level: the layers of a route go in one
    // `ServiceBuilder` stack, applied once (14 allocations per manifest hit
    // were clones of nested boxes). Without client authentication there is
    // no auth layer at all. The size limits are checked by `connections`
    // before routing.
    let authenticated = || {
        gate.clone()
            .map(|gate| axum::middleware::from_fn_with_state(Some(gate), auth::check))
    };
    let pages = match observed {
        Some(observed) => {
            status::routes(observed).layer(ServiceBuilder::new().option_layer(authenticated()))
        }
        None => Router::new(),
    };
    let probes = Router::new()
        .route(health::HEALTHZ, get(health::healthz))
        .route(health::READYZ, get(health::readyz))
        .with_state(Arc::clone(&registry));
    Router::new()
        .route("/v2", any(version_check))
        .route("/v2/", any(version_check))
        .route("/v2/{*rest}", any(dispatch))
        .fallback(|| async { ApiError::not_found() })
        .with_state(registry)
        .layer(
            ServiceBuilder::new()
                .layer(SetResponseHeaderLayer::overriding(
                    HeaderName::from_static("docker-distribution-api-version"),
                    HeaderValue::from_static("registry/2.0"),
                ))
                .layer(axum::middleware::from_fn_with_state(
                    counters,
                    access_log::log_requests,
                ))
                .option_layer(authenticated()),
        )
        .merge(probes)
        .merge(pages)
}

/// `/metrics` and the status page alone, for `server.metrics_listen`.
pub fn observability_router(observed: Observed) -> Router {
    status::routes(observed).layer(axum::middleware::from_fn(limits::check))
}

/// `GET /v2/`: the API version check. Anonymous: no auth challenge, ever.
async fn version_check(method: Method) -> Response {
    if !is_read(&method) {
        return ApiError::unsupported().into_response();
    }
    let body = if method == Method::HEAD { "" } else { "{}" };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CONTENT_LENGTH, "2"),
        ],
        body,
    )
        .into_response()
}

/// Every request under `/v2/` but the version check. It borrows the method,
/// path, query and headers from the request instead of extracting copies
/// (a manifest hit is a few microseconds: allocations show).
async fn dispatch(State(registry): State<Arc<Registry>>, request: Request) -> Response {
    let method = request.method();
    if !is_read(method) {
        return ApiError::unsupported().into_response();
    }
    let path = request.uri().path();
    let rest = path.strip_prefix("/v2/").unwrap_or(path);
    let Ok(rest) = percent_encoding::percent_decode_str(rest).decode_utf8() else {
        // Percent-encoding that does not decode to UTF-8 cannot be a valid name.
        return ApiError::name_invalid("path is not valid percent-encoded UTF-8".into())
            .into_response();
    };
    let endpoint = match Endpoint::parse(&rest) {
        Ok(endpoint) => endpoint,
        Err(e) => return e.into_response(),
    };
    let query = handlers::Query::parse(request.uri().query());
    handlers::serve(&registry, method, endpoint, &query, request.headers()).await
}

fn is_read(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}
