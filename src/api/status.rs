//! What the server shows about itself over HTTP: `GET /metrics` (Prometheus
//! text format) and the status page at `GET /` and `GET /status` (HTML, or
//! JSON with `?format=json`: the same data). Outside `/v2/` and the access
//! log, so looking at the server never changes what it counts. Served on the
//! main listener, behind client authentication when that is configured, or
//! on `server.metrics_listen` alone.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header;

use super::{ApiError, status_page};
use crate::metrics::status::Status;
use crate::metrics::{Observed, exposition};

/// The paths of the status page.
pub const STATUS_PATHS: [&str; 2] = ["/", "/status"];
/// The path of the Prometheus exposition.
pub const METRICS: &str = "/metrics";

/// `/metrics`, `/` and `/status` over `observed`.
pub fn routes(observed: Observed) -> Router {
    Router::new()
        .route(METRICS, get(metrics))
        .route(STATUS_PATHS[0], get(status))
        .route(STATUS_PATHS[1], get(status))
        .with_state(observed)
}

async fn metrics(State(observed): State<Observed>) -> Response {
    match observed.activity().await {
        Ok(activity) => {
            let text = exposition::render(&observed.counters, activity, observed.started_at);
            ([(header::CONTENT_TYPE, exposition::CONTENT_TYPE)], text).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn status(State(observed): State<Observed>, RawQuery(query): RawQuery) -> Response {
    let status = match Status::gather(&observed).await {
        Ok(status) => status,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let wants_json = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|pair| pair == "format=json"));
    let no_store = (header::CACHE_CONTROL, "no-store");
    if wants_json {
        return ([no_store], axum::Json(status)).into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), no_store],
        status_page::render(&status),
    )
        .into_response()
}
