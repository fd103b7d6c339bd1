//! Probes for orchestrators, outside `/v2/`: `/healthz` (liveness: the server
//! answers; no I/O) and `/readyz` (readiness: the index answers a query and the
//! store's directories are there). Neither asks an upstream: a cache whose
//! upstream is down still serves what it holds, so it stays ready, and a
//! restart would only empty its memory.
//!
//! Probes are not access-logged (one line per probe every few seconds is noise).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

use crate::registry::Registry;

/// The liveness probe's path.
pub const HEALTHZ: &str = "/healthz";
/// The readiness probe's path.
pub const READYZ: &str = "/readyz";

pub async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

pub async fn readyz(State(registry): State<Arc<Registry>>) -> Response {
    match registry.ready().await {
        Ok(()) => text(StatusCode::OK, "ready\n"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}
