//! Optional client authentication (`[server.auth]`): HTTP Basic credentials
//! checked against the htpasswd users; anonymous requests pass unless
//! `required`; wrong credentials are always refused, with `401`,
//! `WWW-Authenticate: Basic realm=...` and an OCI `UNAUTHORIZED` body, before
//! the registry (or an upstream) is asked anything. A client address that
//! failed too often gets `429` until its window ends. The probes sit outside
//! this layer.
//!
//! It never logs a password, and logs a failed attempt with the user name and
//! the client address only.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::ApiError;
use crate::listener::{PlainListener, TlsListener};
use crate::users::Users;

/// Who may pull.
#[derive(Debug)]
pub struct Gate {
    users: Arc<Users>,
    required: bool,
    challenge: HeaderValue,
}

impl Gate {
    pub fn new(users: Arc<Users>, required: bool, realm: &str) -> Self {
        let realm = realm.replace(['"', '\\'], "");
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"regcache\""));
        Self {
            users,
            required,
            challenge,
        }
    }

    fn refuse(&self, message: &str) -> Response {
        let mut response =
            ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, self.challenge.clone());
        response
    }
}

/// The client's address, as `ConnectInfo` for every listener regcache uses.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

enum Presented {
    Nothing,
    Basic { user: String, password: String },
    Unusable,
}

/// The middleware: passes the request on, or answers 401/429 itself.
pub(super) async fn check(
    State(gate): State<Option<Arc<Gate>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(gate) = gate else {
        return next.run(request).await;
    };
    let client = request
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map(|c| c.0.0.ip());
    match presented(request.headers()) {
        Presented::Nothing if !gate.required => next.run(request).await,
        Presented::Nothing => gate.refuse("authentication required"),
        Presented::Unusable => gate.refuse("only Basic credentials are accepted"),
        Presented::Basic { user, password } => {
            if let Some(wait) = client.and_then(|ip| gate.users.blocked(ip)) {
                return too_many_failures(wait.as_secs().max(1));
            }
            if gate.users.verify(&user, &password).await {
                return next.run(request).await;
            }
            failed(&gate, &user, client);
            gate.refuse("invalid username or password")
        }
    }
}

fn failed(gate: &Gate, user: &str, client: Option<IpAddr>) {
    tracing::warn!(user, client = ?client, "pull authentication failed");
    if let Some(ip) = client {
        gate.users.record_failure(ip);
    }
}

fn too_many_failures(retry_after: u64) -> Response {
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TOOMANYREQUESTS",
        "too many failed authentication attempts from this address",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

fn presented(headers: &HeaderMap) -> Presented {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Presented::Nothing;
    };
    let basic = value.to_str().ok().and_then(|v| {
        let (scheme, encoded) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("basic").then_some(encoded)
    });
    let decoded = basic
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok());
    match decoded.as_deref().and_then(|text| text.split_once(':')) {
        // containers/image sends empty credentials to a mirror it has none for.
        Some(("", "")) => Presented::Nothing,
        Some((user, password)) => Presented::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        },
        None => Presented::Unusable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn basic_credentials_are_read_and_others_are_unusable() {
        assert!(matches!(presented(&HeaderMap::new()), Presented::Nothing));
        assert!(
            matches!(presented(&with("Basic Og==")), Presented::Nothing),
            "empty"
        );
        // "alice:pa:ss" — a password may hold colons.
        match presented(&with("Basic YWxpY2U6cGE6c3M=")) {
            Presented::Basic { user, password } => {
                assert_eq!((user.as_str(), password.as_str()), ("alice", "pa:ss"))
            }
            _ => panic!("not read"),
        }
        for bad in ["Bearer abc", "Basic !!!", "Basic bm9jb2xvbg=="] {
            assert!(
                matches!(presented(&with(bad)), Presented::Unusable),
                "{bad}"
            );
        }
    }
}
