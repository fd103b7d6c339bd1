//! Unit tests of the egress keys: defaults merged under each upstream, the
//! proxy from the file or the environment, credentials kept out of URLs.

use crate::config::*;

use crate::config::tests::FakeSecrets as Env;

const BASE: &str = "[server]\nlisten='127.0.0.1:1'\n[storage]\ndata_dir='d'\n";

fn load_with(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let env = Env(env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect());
    load(
        &format!("{BASE}{text}"),
        "t.toml",
        &Overrides::default(),
        &env,
    )
}

fn upstream<'a>(c: &'a Config, name: &str) -> &'a UpstreamConfig {
    c.upstreams.iter().find(|u| u.name == name).unwrap()
}

#[test]
fn defaults_apply_to_every_upstream_and_own_keys_win() {
    let c = load_with(
        r#"
        [upstream_defaults]
        ca_file = "/etc/corp-ca.pem"
        proxy = "http://proxy.corp:3128"
        proxy_username = "svc"
        proxy_password_env = "PROXY_PW"
        no_proxy = [".corp", "10.0.0.0/8"]
        [[upstream]]
        name = "a.example"
        url = "https://a.example"
        default = true
        [[upstream]]
        name = "b.example"
        url = "https://b.example"
        ca_file = "/etc/b-ca.pem"
        proxy = "none"
        client_cert_file = "/c.crt"
        client_key_file = "/c.key"
        "#,
        &[
            ("PROXY_PW", "s3cret"),
            ("HTTPS_PROXY", "http://env-proxy:1"),
        ],
    )
    .unwrap();
    let a = &upstream(&c, "a.example").egress;
    assert_eq!(
        a.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/corp-ca.pem"))
    );
    assert_eq!(a.proxy.source, ProxySource::Config);
    let https = a.proxy.https.as_ref().unwrap();
    assert_eq!(https.url.as_str(), "http://proxy.corp:3128/");
    let creds = https.credentials.as_ref().unwrap();
    assert_eq!(
        (creds.username.as_str(), creds.password.expose()),
        ("svc", "s3cret")
    );
    assert_eq!(a.proxy.no_proxy, [".corp", "10.0.0.0/8"]);
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "Debug shows no password"
    );

    let b = &upstream(&c, "b.example").egress;
    assert_eq!(
        b.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/b-ca.pem"))
    );
    assert_eq!(
        b.proxy.source,
        ProxySource::Disabled,
        "none wins over the environment"
    );
    assert!(b.proxy.https.is_none() && b.proxy.http.is_none());
    assert!(b.client_identity.is_some());
}

#[test]
fn without_proxy_keys_the_environment_applies() {
    let text = "[[upstream]]\nname = 'a.example'\nurl = 'https://a.example'\n";
    let c = load_with(
        text,
        &[
            ("https_proxy", "user%40corp:p%40ss@proxy:8080"),
            ("ALL_PROXY", "http://all:1"),
            ("NO_PROXY", "localhost, .internal"),
        ],
    )
    .unwrap();
    let p = &c.upstreams[0].egress.proxy;
    assert_eq!(p.source, ProxySource::Environment);
    let https = p.https.as_ref().unwrap();
    assert_eq!(
        https.url.as_str(),
        "http://proxy:8080/",
        "credentials leave the URL"
    );
    let creds = https.credentials.as_ref().unwrap();
    assert_eq!(
        (creds.username.as_str(), creds.password.expose()),
        ("user@corp", "p@ss")
    );
    assert_eq!(
        p.http.as_ref().unwrap().url.as_str(),
        "http://all:1/",
        "ALL_PROXY fallback"
    );
    assert_eq!(p.no_proxy, ["localhost", ".internal"]);

    let c = load_with(text, &[]).unwrap();
    assert_eq!(
        c.upstreams[0].egress,
        Egress::default(),
        "nothing set: direct"
    );
}

#[test]
fn bad_egress_keys_are_errors_with_their_key() {
    let err = load_with(
        r#"
        [upstream_defaults]
        proxy = "http://u:pw@proxy:3128"
        surprise = 1
        [[upstream]]
        name = "a.example"
        url = "https://a.example"
        client_cert_file = "/only-cert.pem"
        proxy_username = "x"
        [[upstream]]
        name = "b.example"
        url = "https://b.example"
        default = true
        proxy = "ftp://proxy"
        "#,
        &[],
    )
    .unwrap_err();
    let keys: Vec<&str> = err.errors.iter().map(|e| e.key.as_str()).collect();
    for want in [
        "upstream_defaults.proxy",
        "upstream_defaults.surprise",
        "upstream[0].client_key_file",
        "upstream[0].proxy_username",
        "upstream[1].proxy",
    ] {
        assert!(keys.contains(&want), "missing {want} in {keys:?}");
    }
    assert!(!err.to_string().contains("pw@"), "{err}");
}
