//! [`Cause`]: why a connection to an upstream (or a redirect target, or a
//! token service) failed, in terms an operator can act on: a name that does
//! not resolve, a refused or timed-out connection, a certificate that is
//! untrusted (with its issuer), for another name, or expired, a server that
//! refused our client certificate (or wanted one), a proxy that refused the
//! tunnel (with the host it refused).
//!
//! It reads reqwest's error chain (rustls and I/O errors are typed; hyper-util's
//! DNS and tunnel errors are recognised by their fixed messages, because those
//! types are not reachable through reqwest, and so is a TLS alert that h2 kept
//! only as text) and never includes a URL's query.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::IpAddr;

use rustls::{AlertDescription, CertificateError};
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
    /// The server wants a client certificate and we sent none (TLS alert
    /// `certificate_required`).
    TlsClientCertificateRequired { host: String },
    /// The server refused the client certificate we sent; `alert` is the TLS
    /// alert it answered with (`UnknownCA`: it does not trust the issuer).
    TlsClientCertificate { host: String, alert: String },
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
            Cause::TlsClientCertificateRequired { host } => write!(
                f,
                "{host} requires a TLS client certificate and none was sent \
                 (TLS alert CertificateRequired); set client_cert_file and client_key_file"
            ),
            Cause::TlsClientCertificate { host, alert } => write!(
                f,
                "{host} refused our TLS client certificate (TLS alert {alert}); check \
                 client_cert_file and client_key_file: {host} must trust the certificate's issuer"
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
    if let Some(alert) = texts.iter().find_map(|t| client_certificate_alert_in(t)) {
        return client_certificate_cause(alert, host);
    }
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
        rustls::Error::AlertReceived(alert) if CLIENT_CERTIFICATE_ALERTS.contains(alert) => {
            client_certificate_cause(*alert, host)
        }
        other => Cause::Tls {
            host,
            detail: other.to_string(),
        },
    };
    Some(cause)
}

/// The cause a TLS alert received from `url`'s server names, if it is one
/// about our client certificate.
pub(super) fn of_alert(alert: AlertDescription, url: &Url) -> Option<Cause> {
    CLIENT_CERTIFICATE_ALERTS
        .contains(&alert)
        .then(|| client_certificate_cause(alert, host_port(url)))
}

/// The alerts a server sends about the client's certificate: none sent, or
/// the one sent is refused (`UnknownCA`: issued by a CA the server does not
/// trust). A client receives `UnknownCA` only about its own certificate.
const CLIENT_CERTIFICATE_ALERTS: [AlertDescription; 7] = [
    AlertDescription::CertificateRequired,
    AlertDescription::BadCertificate,
    AlertDescription::UnsupportedCertificate,
    AlertDescription::CertificateRevoked,
    AlertDescription::CertificateExpired,
    AlertDescription::CertificateUnknown,
    AlertDescription::UnknownCA,
];

fn client_certificate_cause(alert: AlertDescription, host: String) -> Cause {
    match alert {
        AlertDescription::CertificateRequired => Cause::TlsClientCertificateRequired { host },
        other => Cause::TlsClientCertificate {
            host,
            alert: format!("{other:?}"),
        },
    }
}

/// A client-certificate alert named in `text` as rustls words it. Under TLS
/// 1.3 a server checks the client's certificate after the client has finished
/// its side of the handshake, so the alert arrives with the first read of the
/// response; over HTTP/2 that read error reaches us through h2, which keeps
/// only the text of an I/O error (`h2::Error` has no source), not the
/// `rustls::Error`.
fn client_certificate_alert_in(text: &str) -> Option<AlertDescription> {
    CLIENT_CERTIFICATE_ALERTS.into_iter().find(|alert| {
        let said = rustls::Error::AlertReceived(*alert).to_string();
        // Whole names only: `BadCertificate` is a prefix of
        // `BadCertificateStatusResponse`.
        text.match_indices(&said).any(|(at, _)| {
            !text[at + said.len()..]
                .chars()
                .next()
                .is_some_and(char::is_alphanumeric)
        })
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificate_alerts_are_found_in_text_as_rustls_words_them() {
        let text = |alert| rustls::Error::AlertReceived(alert).to_string();
        assert_eq!(
            client_certificate_alert_in(&format!(
                "error reading a body: {}",
                text(AlertDescription::CertificateRequired)
            )),
            Some(AlertDescription::CertificateRequired)
        );
        assert_eq!(
            client_certificate_alert_in(&text(AlertDescription::UnknownCA)),
            Some(AlertDescription::UnknownCA)
        );
        assert_eq!(
            client_certificate_alert_in(&text(AlertDescription::BadCertificateStatusResponse)),
            None,
            "a longer alert name is not the one it starts with"
        );
        assert_eq!(
            client_certificate_alert_in(&text(AlertDescription::HandshakeFailure)),
            None
        );
        assert_eq!(
            client_certificate_alert_in("connection reset by peer"),
            None
        );
    }

    #[test]
    fn client_certificate_causes_hint_at_the_configuration() {
        let required = client_certificate_cause(
            AlertDescription::CertificateRequired,
            "r.example:443".into(),
        );
        assert_eq!(
            required.to_string(),
            "r.example:443 requires a TLS client certificate and none was sent \
             (TLS alert CertificateRequired); set client_cert_file and client_key_file"
        );
        let refused = client_certificate_cause(AlertDescription::UnknownCA, "r.example:443".into());
        assert_eq!(
            refused.to_string(),
            "r.example:443 refused our TLS client certificate (TLS alert UnknownCA); check \
             client_cert_file and client_key_file: r.example:443 must trust the certificate's issuer"
        );
    }
}
