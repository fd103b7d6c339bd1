//! The TLS peers' certificate: a CA made for this run with rcgen (as the
//! integration tests make theirs) and a server certificate for 127.0.0.1,
//! written as PEM files for regcache's `[server.tls]` and nginx's `ssl_*`
//! directives. The bench's own checking client trusts only this CA; wrk does
//! not verify certificates. Nothing here touches the system trust store.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The server certificate and key files, and the CA that issued them.
#[derive(Debug, Clone)]
pub struct BenchCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_pem: String,
}

impl BenchCert {
    /// A new CA and a certificate for 127.0.0.1, written into `dir`.
    pub fn create(dir: &Path) -> BenchCert {
        std::fs::create_dir_all(dir).expect("certificate dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "regcache bench CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("self-signed CA");
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().expect("server key");
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("leaf params");
        leaf.distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        let cert = leaf.signed_by(&key, &issuer).expect("sign leaf");

        let cert_file = dir.join("server.crt");
        let key_file = dir.join("server.key");
        std::fs::write(&cert_file, cert.pem()).expect("write certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        BenchCert {
            cert_file,
            key_file,
            ca_pem: ca_cert.pem(),
        }
    }
}
