//! The registry host's token flow: `/v2/token` issues a token for the scopes
//! asked, and requests without a valid one get the Bearer challenge.

use std::sync::atomic::Ordering;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use super::hosts::{json, oci_error, plain};
use super::*;

/// The token endpoint: a token for the requested scopes.
pub(super) fn token(shared: &Shared, query: &str) -> Response {
    if !shared.auth {
        return plain(StatusCode::NOT_FOUND, "no token service");
    }
    let scopes: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect();
    let n = shared.counter.fetch_add(1, Ordering::SeqCst);
    let token = format!("fake-token-{n}");
    shared
        .state()
        .tokens
        .insert(token.clone(), scopes.join(" "));
    json(
        StatusCode::OK,
        &serde_json::json!({ "token": token, "expires_in": 300 }).to_string(),
    )
}

pub(super) fn challenge(shared: &Shared, name: Option<&str>) -> Response {
    let realm = format!("{}://{}/v2/token", shared.scheme, shared.registry);
    let value = match name {
        Some(name) => format!(
            "Bearer realm=\"{realm}\",service=\"{}\",scope=\"repository:{AR_PREFIX}/{name}:pull\"",
            shared.registry
        ),
        None => format!("Bearer realm=\"{realm}\""),
    };
    let mut response = oci_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "not authenticated: No valid credential was supplied.",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&value).expect("challenge"),
    );
    response
}
