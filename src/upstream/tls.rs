//! The TLS side of the upstream client: the rustls `ClientConfig` every hop of
//! every redirect chain uses, built from the system's trust store plus the
//! upstream's `ca_file`, with its client certificate if one is configured, and
//! ALPN offering HTTP/2 then HTTP/1.1.
//!
//! Verification is never switched off. A rejected certificate keeps rustls'
//! own cause and gains the names an operator needs (the certificate's issuer
//! and subject), carried as [`CertificateRejected`] inside rustls'
//! `CertificateError::Other` so [`super::error`] can find it in the chain.
//!
//! Under TLS 1.3 a server checks our client certificate after our side of
//! the handshake is done; when it refuses, its alert can close an HTTP/2
//! connection before hyper has handed it a request, and the request only
//! learns "connection closed". [`alert_after_handshake`] then shakes hands
//! once more, sends nothing and reads what the server says.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use url::Url;

use super::cause::host_port;
use super::{Error, proxy};
use crate::config::{Egress, Proxy};

/// The longest wait for a server's alert after a probing handshake.
const ALERT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The alert `url`'s server sends right after a handshake with `config`
/// (directly, or through `through`), if it sends one: a server that refuses
/// our client certificate says why (`CertificateRequired`, `UnknownCA`);
/// one that accepts it waits for a request, and this gives up after
/// [`ALERT_WAIT`]. Used only to explain a connection that closed.
pub(super) async fn alert_after_handshake(
    config: &Arc<rustls::ClientConfig>,
    client: &reqwest::Client,
    through: Option<&Proxy>,
    url: &Url,
    connect_timeout: std::time::Duration,
) -> Option<rustls::AlertDescription> {
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let server = ServerName::try_from(host.to_owned()).ok()?;
    let connect = async {
        match through {
            Some(proxy) => proxy::tunnel(client, proxy, url).await,
            None => TcpStream::connect(host_port(url)).await.ok(),
        }
    };
    let stream = tokio::time::timeout(connect_timeout, connect)
        .await
        .ok()
        .flatten()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let handshake = tokio::time::timeout(connect_timeout, connector.connect(server, stream));
    let mut tls = handshake.await.ok()?.ok()?;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(ALERT_WAIT, tls.read(&mut byte))
        .await
        .ok()?;
    let error = read.err()?;
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Issuer names of the certificates accepted, by server name (for `doctor`).
pub(super) type Issuers = Mutex<HashMap<String, String>>;

/// The client TLS configuration for one upstream; `issuers`, if given, learns
/// the issuer of every certificate accepted.
pub(super) fn client_config(
    egress: &Egress,
    issuers: Option<Arc<Issuers>>,
) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped: a private CA in ca_file is
    // then still enough, and a public upstream fails with an untrusted issuer.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = &egress.ca_file {
        for cert in read_certificates(path, "ca_file")? {
            roots
                .add(cert)
                .map_err(|e| setup(format!("ca_file {}: {e}", path.display())))?;
        }
    }
    let verifier = NamingVerifier::new(roots, Arc::clone(&provider), issuers)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match &egress.client_identity {
        Some(identity) => {
            let chain = read_certificates(&identity.cert_file, "client_cert_file")?;
            let key = PrivateKeyDer::from_pem_file(&identity.key_file).map_err(|e| {
                setup(format!(
                    "client_key_file {}: {e}",
                    identity.key_file.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                setup(format!(
                    "client_cert_file {} with client_key_file {}: {e}",
                    identity.cert_file.display(),
                    identity.key_file.display()
                ))
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn setup(message: String) -> Error {
    Error::Setup(message)
}

/// Every certificate in a PEM file; none is an error.
fn read_certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| setup(format!("{key} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(setup(format!(
            "{key} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// webpki verification against `roots`, with the rejected certificate's
/// names added to the error.
#[derive(Debug)]
struct NamingVerifier {
    /// None when there are no roots at all (webpki refuses an empty store):
    /// every certificate is then untrusted.
    inner: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
    issuers: Option<Arc<Issuers>>,
}

impl NamingVerifier {
    fn new(
        roots: RootCertStore,
        provider: Arc<CryptoProvider>,
        issuers: Option<Arc<Issuers>>,
    ) -> Result<Self, Error> {
        let algorithms = provider.signature_verification_algorithms;
        let inner = if roots.is_empty() {
            None
        } else {
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| setup(format!("TLS verifier: {e}")))?;
            Some(verifier)
        };
        Ok(Self {
            inner,
            algorithms,
            issuers,
        })
    }
}

impl ServerCertVerifier for NamingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = match &self.inner {
            Some(inner) => {
                inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        };
        if let (Ok(_), Some(issuers)) = (&result, &self.issuers) {
            if let Some(issuer) = issuer_of(end_entity) {
                let mut issuers = issuers.lock().unwrap_or_else(|e| e.into_inner());
                issuers.insert(server_name.to_str().into_owned(), issuer);
            }
        }
        result.map_err(|e| match e {
            rustls::Error::InvalidCertificate(cause) => {
                let rejected = CertificateRejected::new(cause, end_entity, server_name);
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    rejected,
                ))))
            }
            other => other,
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a server certificate was rejected, with the names it carried.
#[derive(Debug, Clone)]
pub struct CertificateRejected {
    pub cause: CertificateError,
    /// The issuer's distinguished name (`CN=..., O=...`), if it parsed.
    pub issuer: Option<String>,
    pub subject: Option<String>,
    /// The name we connected to.
    pub server_name: String,
}

impl CertificateRejected {
    fn new(cause: CertificateError, cert: &CertificateDer<'_>, server: &ServerName<'_>) -> Self {
        let parsed = webpki::EndEntityCert::try_from(cert).ok();
        Self {
            cause,
            issuer: parsed.as_ref().and_then(|c| dn::describe(c.issuer())),
            subject: parsed.as_ref().and_then(|c| dn::describe(c.subject())),
            server_name: server.to_str().into_owned(),
        }
    }
}

impl fmt::Display for CertificateRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate of {} rejected: {}",
            self.server_name, self.cause
        )?;
        if let Some(issuer) = &self.issuer {
            write!(f, " (issuer: {issuer})")?;
        }
        Ok(())
    }
}

impl std::error::Error for CertificateRejected {}

/// The issuer name of a DER certificate (`CN=..., O=...`).
pub(super) fn issuer_of(der: &[u8]) -> Option<String> {
    let cert = CertificateDer::from(der);
    let parsed = webpki::EndEntityCert::try_from(&cert).ok()?;
    dn::describe(parsed.issuer())
}

/// Just enough DER to print an X.509 `Name` as `CN=..., O=...`: the
/// attributes an operator recognises, nothing else. (No X.509 crate is in the
/// build; webpki hands out the raw `Name`.)
mod dn {
    /// Object identifiers 2.5.4.3 (CN), 2.5.4.10 (O), 2.5.4.11 (OU), DER-encoded.
    const ATTRIBUTES: [(&[u8], &str); 3] = [
        (&[0x55, 0x04, 0x03], "CN"),
        (&[0x55, 0x04, 0x0a], "O"),
        (&[0x55, 0x04, 0x0b], "OU"),
    ];

    /// `name` is a DER `Name`, with or without its outer SEQUENCE header.
    pub(super) fn describe(name: &[u8]) -> Option<String> {
        let mut rdns = match read(name) {
            Some((0x30, inner, [])) => inner,
            _ => name,
        };
        let mut parts = Vec::new();
        while !rdns.is_empty() {
            let (tag, set, rest) = read(rdns)?;
            rdns = rest;
            if tag != 0x31 {
                return None;
            }
            let (0x30, attribute, _) = read(set)? else {
                return None;
            };
            let (0x06, oid, value) = read(attribute)? else {
                return None;
            };
            let (_, text, _) = read(value)?;
            if let Some((_, label)) = ATTRIBUTES.iter().find(|(o, _)| *o == oid) {
                parts.push(format!("{label}={}", String::from_utf8_lossy(text)));
            }
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// One TLV: tag, contents, what follows.
    fn read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
}

#[cfg(test)]
mod tests {
    use super::dn;

    #[test]
    fn names_print_their_cn_and_o() {
        // SEQUENCE { SET { SEQ { 2.5.4.10, UTF8 "Corp" } }, SET { SEQ { 2.5.4.3, PrintableString "Proxy CA" } } }
        let name = [
            0x30, 0x22, 0x31, 0x0d, 0x30, 0x0b, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x04, b'C',
            b'o', b'r', b'p', 0x31, 0x11, 0x30, 0x0f, 0x06, 0x03, 0x55, 0x04, 0x03, 0x13, 0x08,
            b'P', b'r', b'o', b'x', b'y', b' ', b'C', b'A',
        ];
        assert_eq!(dn::describe(&name).as_deref(), Some("O=Corp, CN=Proxy CA"));
        assert_eq!(
            dn::describe(&name[2..]).as_deref(),
            Some("O=Corp, CN=Proxy CA")
        );
        assert_eq!(dn::describe(&name[..10]), None, "truncated");
        assert_eq!(dn::describe(&[]), None);
    }
}
