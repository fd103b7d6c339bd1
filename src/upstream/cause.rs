//! [`Cause`]: why a connection to an upstream (or a redirect target, or a
//! token service) failed, in terms an operator can act on: a name that does
//! not resolve, a refused or timed-out connection, a certificate that is
//! untrusted (with its issuer), for another name, or expired, a proxy that
//! refused the tunnel (with the host it refused).
//!
//! It reads reqwest's error chain (rustls and I/O errors are typed; hyper-util's
//! DNS and tunnel errors are recognised by their fixed messages, because those
//! types are not reachable through reqwest) and never includes a URL's query.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::IpAddr;

use rustls::CertificateError;
use url::Url;

use super::tls::CertificateRejected;

/// The cause of a transport failure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The host name did not resolve.
    Dns { host: String },
    /// Nothing listens there (or a firewall rejects the connection).
    Refused { host: String },
    /// The TCP or TLS connection did not complete within `connect_timeout`.
    ConnectTimeout { host: String },
    /// The certificate chains to no trusted CA.
    TlsUntrusted {
        host: String,
        issuer: Option<String>,
    },
    /// The certificate is valid, but not for this host name or address.
    TlsNameMismatch { host: String, detail: String },
    /// The certificate has expired.
    TlsExpired { host: String, detail: String },
    /// The server refused our client certificate (or the lack of one).
    TlsClientCertificate { host: String, detail: String },
    /// Any other TLS failure.
    Tls { host: String, detail: String },
    /// The forward proxy refused to open a tunnel to `host`; `status` is its
    /// answer (`403 Filtered`) when it could be read.
    ProxyRefused {
        host: String,
        status: Option<String>,
    },
    /// The forward proxy wants credentials (407).
    ProxyAuthentication { host: String },
    /// The forward proxy itself could not be reached.
    ProxyUnreachable { host: String, detail: String },
    /// Connecting failed some other way.
    Connect { host: String, detail: String },
    /// A read stalled for longer than `idle_timeout`.
    TimedOut,
    /// The response body broke off.
    Body,
    /// The request failed some other way.
    Request { detail: String },
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Dns { host } => write!(f, "DNS lookup of {host} failed"),
            Cause::Refused { host } => write!(f, "connection to {host} refused"),
            Cause::ConnectTimeout { host } => write!(f, "connecting to {host} timed out"),
            Cause::TlsUntrusted { host, issuer } => {
                write!(f, "TLS certificate of {host} is not trusted")?;
                if let Some(issuer) = issuer {
                    write!(f, " (issued by {issuer})")?;
                }
                write!(
                    f,
                    "; if this CA is yours (or your proxy's), add it to ca_file"
                )
            }
            Cause::TlsNameMismatch { host, detail } => {
                write!(f, "TLS certificate is not valid for {host}: {detail}")
            }
            Cause::TlsExpired { host, detail } => {
                write!(f, "TLS certificate of {host} has expired: {detail}")
            }
            Cause::TlsClientCertificate { host, detail } => write!(
                f,
                "{host} refused our TLS client certificate ({detail}); check client_cert_file"
            ),
            Cause::Tls { host, detail } => write!(f, "TLS with {host} failed: {detail}"),
            Cause::ProxyRefused { host, status } => {
                write!(f, "the proxy refused to connect to {host}")?;
                if let Some(status) = status {
                    write!(f, " (it answered {status})")?;
                }
                write!(f, "; allow {host} in the proxy's ACL")
            }
            Cause::ProxyAuthentication { host } => write!(
                f,
                "the proxy wants credentials to connect to {host} (HTTP 407); set proxy_username"
            ),
            Cause::ProxyUnreachable { host, detail } => {
                write!(f, "the proxy for {host} cannot be reached: {detail}")
            }
            Cause::Connect { host, detail } => write!(f, "connecting to {host} failed: {detail}"),
            Cause::TimedOut => f.write_str("timed out"),
            Cause::Body => f.write_str("response body failed"),
            Cause::Request { detail } => write!(f, "request failed: {detail}"),
        }
    }
}

/// Why a redirect was not followed: the hop it would have taken breaks the
/// upstream's redirect policy (`upstream::redirect`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedirectRefusal {
    /// The `Location` carried `user:password@`, which would become a Basic
    /// `Authorization` header sent to a host the upstream chose.
    #[error(
        "Location {to} carries userinfo (user:password@); credentials are never taken from a redirect"
    )]
    Userinfo { to: String },
    /// From `https` to plain `http`.
    #[error("redirect from {from} down to plain http ({to})")]
    Downgrade { from: String, to: String },
    /// The host is not in the upstream's `redirect_hosts`.
    #[error("redirect to {host}, which is not in this upstream's redirect_hosts")]
    NotAllowed { host: String },
    /// A loopback, link-local or private address, from an upstream that is
    /// not on loopback itself.
    #[error(
        "redirect to {host} ({address}), a loopback, link-local or private address; \
         set allow_private_redirects = true on the upstream if it is meant"
    )]
    PrivateAddress { host: String, address: IpAddr },
}

/// The redirect policy's refusal inside `error`, if the resolver refused a
/// name's addresses (`redirect::GuardedResolver`).
pub(super) fn refused_address(error: &reqwest::Error) -> Option<RedirectRefusal> {
    chain(error).iter().find_map(
        |e| match e.downcast_ref::<super::redirect::RefusedAddress>()? {
            super::redirect::RefusedAddress::Private { host, address } => {
                Some(RedirectRefusal::PrivateAddress {
                    host: host.clone(),
                    address: *address,
                })
            }
            super::redirect::RefusedAddress::Lookup(_) => None,
        },
    )
}

/// The cause of `error`, which happened on a request to `url`.
pub(super) fn classify(error: &reqwest::Error, url: &Url) -> Cause {
    let host = host_port(url);
    let chain = chain(error);
    if let Some(cause) = tls_cause(&chain, &host) {
        return cause;
    }
    let texts: Vec<String> = chain.iter().map(|e| e.to_string()).collect();
    let said = |needle: &str| texts.iter().any(|t| t.contains(needle));
    let io_kind = chain
        .iter()
        .find_map(|e| e.downcast_ref::<io::Error>())
        .map(io::Error::kind);
    let innermost = texts.last().cloned().unwrap_or_default();
    // hyper-util's tunnel errors (reqwest does not export the type).
    if said("tunnel error: unsuccessful") {
        return Cause::ProxyRefused { host, status: None };
    }
    if said("proxy authorization required") {
        return Cause::ProxyAuthentication { host };
    }
    if said("tunnel error") {
        return Cause::ProxyUnreachable {
            host,
            detail: innermost,
        };
    }
    if error.is_connect() && error.is_timeout() {
        return Cause::ConnectTimeout { host };
    }
    if error.is_timeout() {
        return Cause::TimedOut;
    }
    // hyper-util's resolver error reads "dns error: ...".
    if said("dns error") {
        return Cause::Dns {
            host: url.host_str().unwrap_or_default().to_owned(),
        };
    }
    if io_kind == Some(io::ErrorKind::ConnectionRefused) {
        return Cause::Refused { host };
    }
    if error.is_connect() {
        return Cause::Connect {
            host,
            detail: innermost,
        };
    }
    if error.is_body() || error.is_decode() {
        return Cause::Body;
    }
    Cause::Request { detail: innermost }
}

/// A rejected certificate or another rustls failure in the chain.
fn tls_cause(chain: &[&(dyn StdError + 'static)], host: &str) -> Option<Cause> {
    let tls = chain
        .iter()
        .find_map(|e| e.downcast_ref::<rustls::Error>())?;
    let host = host.to_owned();
    let cause = match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<CertificateRejected>() {
                Some(rejected) => certificate_cause(rejected, host),
                None => Cause::Tls {
                    host,
                    detail: tls.to_string(),
                },
            }
        }
        rustls::Error::AlertReceived(alert) if format!("{alert:?}").contains("Certificate") => {
            Cause::TlsClientCertificate {
                host,
                detail: tls.to_string(),
            }
        }
        other => Cause::Tls {
            host,
            detail: other.to_string(),
        },
    };
    Some(cause)
}

fn certificate_cause(rejected: &CertificateRejected, host: String) -> Cause {
    let detail = rejected.cause.to_string();
    match &rejected.cause {
        CertificateError::UnknownIssuer => Cause::TlsUntrusted {
            host,
            issuer: rejected.issuer.clone(),
        },
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            Cause::TlsNameMismatch { host, detail }
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            Cause::TlsExpired { host, detail }
        }
        _ => Cause::Tls { host, detail },
    }
}

/// `error` and its sources. An `io::Error`'s own `source()` skips the error
/// it wraps (tokio-rustls puts the `rustls::Error` there), so that one is
/// added by hand.
fn chain(error: &reqwest::Error) -> Vec<&(dyn StdError + 'static)> {
    let mut out: Vec<&(dyn StdError + 'static)> = Vec::new();
    let mut next: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = next {
        out.push(e);
        next = match wrapped(e) {
            Some(inner) => {
                out.push(inner);
                wrapped(inner).or_else(|| inner.source())
            }
            None => e.source(),
        };
        if out.len() > 32 {
            break;
        }
    }
    out
}

/// The error `e` wraps and whose own place in the chain `e.source()` skips:
/// an `io::Error`'s payload, or the error inside a boxed error.
fn wrapped<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    if let Some(io) = e.downcast_ref::<io::Error>() {
        return io.get_ref().map(|inner| inner as &(dyn StdError + 'static));
    }
    None
}

/// `host:port` of `url`, the port explicit (it is what a firewall rule needs).
pub(crate) fn host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}
