//! The restricted-sites table: skopeo, podman and containerd pull through
//! regcache served three ways (plain HTTP, TLS, TLS + htpasswd), while
//! regcache reaches the registry.k8s.io-like chain over TLS (three loopback
//! hosts, a private CA) only through Debian's tinyproxy, whose filter allows
//! just the chain's hosts. Every stored digest is checked by hashing.
//!
//! The fake, the CAs and the proxy are shared by the nine cells; each cell
//! starts its own regcache on an empty data directory, so every pull crosses
//! the proxy and the whole chain (checked: new CONNECTs to the storage host,
//! new storage GETs). The table goes to stderr for the closing note; every
//! cell must pass.

use std::fmt::Write as _;

use http::Method;

use crate::client_auth::htpasswd;
use crate::support::clients::{self, By, Client, Platforms, TlsTrust};
use crate::support::config_toml_with;
use crate::support::fake::{FakeUpstream, Host};
use crate::support::images::{self, Image};
use crate::support::regcache::Regcache;
use crate::support::tinyproxy::Tinyproxy;
use crate::support::tls::{Alpn, FAKE_IPS, TestCa};
use crate::support::upstream::seed_k8s_like;

/// How regcache serves its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mirror {
    Plain,
    Tls,
    TlsAuth,
}

impl Mirror {
    const ALL: [Mirror; 3] = [Mirror::Plain, Mirror::Tls, Mirror::TlsAuth];

    fn label(self) -> &'static str {
        match self {
            Mirror::Plain => "plain HTTP",
            Mirror::Tls => "TLS",
            Mirror::TlsAuth => "TLS + htpasswd",
        }
    }
}

const USER: &str = "puller";
const PASSWORD: &str = "r3stricted-pw";

/// What every cell shares: the upstream chain, the proxy, the mirror's
/// certificate and users.
struct Site {
    fake: FakeUpstream,
    proxy: Tinyproxy,
    upstream_ca: TestCa,
    trust: TlsTrust,
    dir: tempfile::TempDir,
    image: Image,
}

impl Site {
    fn new() -> Site {
        let upstream_ca = TestCa::new("restricted-upstream");
        let fake = FakeUpstream::k8s_like_tls(upstream_ca.leaf(&FAKE_IPS).server_config(Alpn::H2));
        let image = images::oci_three_layers("restricted/oci-three-layers", "v1", 13);
        seed_k8s_like(&fake, &image);
        let proxy = Tinyproxy::start(&chain_hosts(&fake));
        let mirror_ca = TestCa::new("restricted-mirror");
        let dir = tempfile::tempdir().unwrap();
        mirror_ca.leaf(&["127.0.0.1"]).write(dir.path(), "mirror");
        htpasswd(&dir.path().join("htpasswd"), USER, PASSWORD, true);
        Site {
            trust: TlsTrust::new(&mirror_ca.cert_pem),
            fake,
            proxy,
            upstream_ca,
            dir,
            image,
        }
    }

    /// regcache on an empty data directory, serving as `mirror`, reaching the
    /// chain through the proxy and trusting the upstream CA.
    fn regcache(&self, mirror: Mirror) -> Regcache {
        let upstream = format!(
            "ca_file = \"{}\"\nproxy = \"{}\"",
            self.upstream_ca.ca_file().display(),
            self.proxy.url()
        );
        let config = config_toml_with(&self.fake.url(), "5m", "30s", &upstream);
        let d = self.dir.path();
        let mut server = String::new();
        if mirror != Mirror::Plain {
            let _ = write!(
                server,
                "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                d.join("mirror.crt").display(),
                d.join("mirror.key").display()
            );
        }
        if mirror == Mirror::TlsAuth {
            let _ = write!(
                server,
                "[server.auth]\nhtpasswd = \"{}\"\nrequired = true\n",
                d.join("htpasswd").display()
            );
        }
        let config = config.replacen("[storage]", &format!("{server}[storage]"), 1);
        Regcache::builder().config_toml(config).start()
    }

    /// One cell: a fresh regcache, `client` pulls through it; the pull must
    /// have crossed the proxy to the storage host.
    fn cell(&self, client: Client, mirror: Mirror) -> Result<(), String> {
        let rc = self.regcache(mirror);
        let storage = host_port(&self.fake, Host::Storage);
        let connects = self.proxy_connects(&storage);
        let storage_gets = self.storage_gets();
        let trust = (mirror != Mirror::Plain).then_some(&self.trust);
        let credentials = format!("{USER}:{PASSWORD}");
        let credentials = (mirror == Mirror::TlsAuth).then_some(credentials.as_str());
        let platforms = Platforms::One("amd64");
        let reference = clients::reference(&self.image, By::Tag);
        clients::pull_with_credentials(
            client,
            &rc.host(),
            trust,
            credentials,
            &self.image,
            &reference,
            platforms,
        )
        .and_then(|stored| clients::verify(&stored, &self.image, platforms))
        .map_err(|e| format!("{e}\nregcache log:\n{}", rc.log()))?;
        // Config and three layers, each fetched from storage by this regcache.
        let fetched = self.storage_gets() - storage_gets;
        if fetched < 4 {
            return Err(format!("only {fetched} storage GETs for this pull"));
        }
        if self.proxy_connects(&storage) == connects {
            return Err(format!("no new CONNECT to {storage} through the proxy"));
        }
        Ok(())
    }

    fn storage_gets(&self) -> usize {
        self.fake
            .count(|s| s.host == Host::Storage && s.method == Method::GET)
    }

    /// `CONNECT` lines in the proxy's log naming `host_port`.
    fn proxy_connects(&self, host_port: &str) -> usize {
        self.proxy
            .log()
            .lines()
            .filter(|l| l.contains("CONNECT") && l.contains(host_port))
            .count()
    }
}

/// `host:port` of one of the fake's hosts.
fn host_port(fake: &FakeUpstream, host: Host) -> String {
    fake.host_url(host)
        .trim_start_matches("https://")
        .to_owned()
}

fn chain_hosts(fake: &FakeUpstream) -> Vec<String> {
    [Host::Front, Host::Registry, Host::Storage]
        .into_iter()
        .map(|h| host_port(fake, h))
        .collect()
}

/// The table as markdown: one row per client, one column per mirror mode.
fn table(results: &[(Client, Mirror, Result<(), String>)]) -> String {
    let mut out = String::from("| client |");
    for mirror in Mirror::ALL {
        let _ = write!(out, " {} |", mirror.label());
    }
    out.push_str("\n| --- | --- | --- | --- |\n");
    for client in [Client::Skopeo, Client::Podman, Client::Containerd] {
        let _ = write!(out, "| {} |", client.name());
        for mirror in Mirror::ALL {
            let cell = results
                .iter()
                .find(|(c, m, _)| *c == client && *m == mirror)
                .map(|(_, _, r)| match r {
                    Ok(()) => "pass".to_owned(),
                    Err(e) => format!("FAIL: {}", e.lines().next().unwrap_or_default()),
                })
                .unwrap_or_default();
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    out
}

#[test]
fn every_client_pulls_in_every_mirror_mode_from_the_tls_chain_through_the_proxy() {
    let site = Site::new();
    let mut results = Vec::new();
    for client in [Client::Skopeo, Client::Podman, Client::Containerd] {
        for mirror in Mirror::ALL {
            results.push((client, mirror, site.cell(client, mirror)));
        }
    }
    eprintln!(
        "\nclient × mirror; upstream: the registry.k8s.io-like chain over TLS \
         (3 hosts, private CA) through tinyproxy (host ACL)\n\n{}",
        table(&results)
    );
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(client, mirror, r)| {
            r.as_ref()
                .err()
                .map(|e| format!("{} over {}: {e}", client.name(), mirror.label()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{}\ntinyproxy log:\n{}",
        failures.join("\n\n"),
        site.proxy.log()
    );
    site.fake.assert_no_violations();
}
