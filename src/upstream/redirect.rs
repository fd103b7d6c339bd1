//! The redirect policy, applied by hand because reqwest's own is switched off:
//! which statuses are redirects, how a `Location` is resolved, how many hops a
//! chain may take, and on which hops an `Authorization` header may be sent.
//!
//! [`Policy`] says which targets a chain may go to at all: `http`/`https`
//! only, never from `https` down to `http`, never a `Location` with userinfo
//! (it would become credentials), only hosts matching the upstream's
//! `redirect_hosts` when it has that list, and, from an upstream that is not
//! on loopback, no loopback, link-local or private address unless
//! `allow_private_redirects` (literal addresses here; names through
//! [`GuardedResolver`], on the addresses actually dialled).
//!
//! It never lets a credential leave the origin that asked for it, never gives
//! it back to that origin once the chain has left it (the a→b→a pattern of
//! CVE-2024-45336), and never remembers a redirect target beyond one chain:
//! targets are presigned, expiring and chosen from our egress address.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::StatusCode;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, LOCATION};
use url::{Host, Origin, Url};

use super::Error;
use super::cause::RedirectRefusal;
use super::error::without_query;
use crate::config::RedirectRules;

/// The most redirects one request follows (as Go, reqwest and containerd do).
pub(crate) const MAX_HOPS: usize = 10;

/// 301, 302, 303, 307 and 308. Our requests are GET or HEAD, which every one of
/// them repeats unchanged (303's switch to GET changes nothing for them).
pub(crate) fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The next hop's URL: the `Location` header resolved against the URL of the
/// hop that returned it (AR answers blob GETs with a relative
/// `/artifacts-downloads/...`, which belongs to AR, not to where we started).
pub(crate) fn location(current: &Url, headers: &HeaderMap) -> Result<Url, Error> {
    let at = without_query(current);
    let value = headers
        .get(LOCATION)
        .ok_or_else(|| Error::Protocol(format!("redirect without Location from {at}")))?;
    let text = value
        .to_str()
        .map_err(|_| Error::Protocol(format!("non-ASCII Location from {at}")))?;
    let next = current
        .join(text.trim())
        .map_err(|e| Error::Protocol(format!("bad Location from {at}: {e}")))?;
    if !matches!(next.scheme(), "http" | "https") || next.host_str().is_none() {
        return Err(Error::Protocol(format!(
            "Location from {at} is not an http(s) URL"
        )));
    }
    Ok(next)
}

/// Which targets a redirect may lead to, for one upstream.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// The upstream's own host: always allowed (relative redirects land there).
    home: String,
    /// Refuse loopback, link-local and private targets.
    guard_private: bool,
    /// `redirect_hosts`; empty allows every host.
    hosts: Vec<HostPattern>,
}

impl Policy {
    pub(crate) fn new(base: &Url, rules: &RedirectRules) -> Self {
        Self {
            home: base.host_str().unwrap_or_default().to_ascii_lowercase(),
            guard_private: !rules.allow_private && !is_loopback_host(base),
            hosts: rules.hosts.iter().map(|p| HostPattern::new(p)).collect(),
        }
    }

    /// Whether names other than the upstream's own must not resolve to
    /// private addresses (see [`GuardedResolver`]).
    pub(crate) fn guards_private(&self) -> bool {
        self.guard_private
    }

    /// Whether the hop from `from` to `next` may be taken.
    pub(crate) fn check(&self, from: &Url, next: &Url) -> Result<(), RedirectRefusal> {
        if !next.username().is_empty() || next.password().is_some() {
            return Err(RedirectRefusal::Userinfo {
                to: without_query(next),
            });
        }
        if from.scheme() == "https" && next.scheme() != "https" {
            return Err(RedirectRefusal::Downgrade {
                from: without_query(from),
                to: without_query(next),
            });
        }
        let host = next.host_str().unwrap_or_default().to_ascii_lowercase();
        if host == self.home {
            return Ok(());
        }
        let port = next.port_or_known_default().unwrap_or(0);
        if !self.hosts.is_empty() && !self.hosts.iter().any(|p| p.matches(&host, port)) {
            return Err(RedirectRefusal::NotAllowed {
                host: format!("{host}:{port}"),
            });
        }
        match next.host() {
            Some(Host::Ipv4(ip)) => self.check_address(&host, IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.check_address(&host, IpAddr::V6(ip)),
            _ => Ok(()),
        }
    }

    fn check_address(&self, host: &str, address: IpAddr) -> Result<(), RedirectRefusal> {
        if self.guard_private && is_private(address) {
            return Err(RedirectRefusal::PrivateAddress {
                host: host.to_owned(),
                address,
            });
        }
        Ok(())
    }
}

/// One `redirect_hosts` entry: `host`, `*.domain` (any name below it), each
/// with an optional `:port` (`regcache doctor` prints the allowlist as
/// `host:port` lines, which can be pasted as they are).
#[derive(Debug, Clone)]
struct HostPattern {
    host: String,
    port: Option<u16>,
}

impl HostPattern {
    fn new(text: &str) -> Self {
        let text = text.trim().to_ascii_lowercase();
        match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => Self {
                host: host.to_owned(),
                port: port.parse().ok(),
            },
            _ => Self {
                host: text,
                port: None,
            },
        }
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let pattern = self.host.trim_start_matches('[').trim_end_matches(']');
        match pattern.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            None => host == pattern,
        }
    }
}

/// Whether `url`'s host is on loopback (an address, or `localhost`): such an
/// upstream is a test or a sidecar, and already on the inside.
fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => {
            let name = name.to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

/// Loopback, link-local, private (RFC 1918, RFC 6598 shared, IPv6 unique
/// local), unspecified or broadcast: where a foreign redirect must not lead.
pub(crate) fn is_private(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(ip) => private_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => private_v4(v4),
            None => private_v6(ip),
        },
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || (a == 100 && (64..128).contains(&b))
}

fn private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

/// The upstream client's resolver when its [`Policy`] guards private
/// addresses: a name other than the upstream's own (and its proxies') that
/// resolves to any private address is refused, so the check is on the very
/// addresses reqwest would dial (no second lookup to rebind). Literal
/// addresses never reach a resolver; [`Policy::check`] has them. Behind a
/// proxy the proxy resolves targets, so only literal addresses are checked.
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver {
    exempt: Vec<String>,
}

impl GuardedResolver {
    pub(crate) fn new(exempt: impl IntoIterator<Item = String>) -> Self {
        Self {
            exempt: exempt.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    async fn lookup(&self, host: String) -> Result<Vec<SocketAddr>, RefusedAddress> {
        let found = tokio::net::lookup_host((host.as_str(), 0))
            .await
            .map_err(|e| RefusedAddress::Lookup(e.to_string()))?;
        let addrs: Vec<SocketAddr> = found.collect();
        if self.exempt.contains(&host.to_ascii_lowercase()) {
            return Ok(addrs);
        }
        match addrs.iter().find(|a| is_private(a.ip())) {
            Some(private) => Err(RefusedAddress::Private {
                host,
                address: private.ip(),
            }),
            None => Ok(addrs),
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = this.lookup(host).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Why [`GuardedResolver`] gave no addresses; found again in reqwest's error
/// chain by `upstream::cause`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RefusedAddress {
    #[error("{host} resolves to private address {address}")]
    Private { host: String, address: IpAddr },
    /// The lookup itself failed (hyper-util's resolver says "dns error" too).
    #[error("dns error: {0}")]
    Lookup(String),
}

/// One request's walk through redirects: the current URL, the hop count, the
/// URLs seen (a repeat is a loop) and the origins the chain has left.
#[derive(Debug)]
pub(crate) struct Chain<'p> {
    policy: &'p Policy,
    current: Url,
    hops: usize,
    seen: HashSet<Url>,
    left: HashSet<Origin>,
}

impl<'p> Chain<'p> {
    pub(crate) fn new(start: Url, policy: &'p Policy) -> Self {
        Self {
            policy,
            seen: HashSet::from([start.clone()]),
            current: start,
            hops: 0,
            left: HashSet::new(),
        }
    }

    pub(crate) fn current(&self) -> &Url {
        &self.current
    }

    /// Whether the current hop may carry credentials for its own origin: only
    /// if the chain has never left that origin. Leaving and coming back means
    /// a third party chose the URL we return to, so it gets nothing.
    pub(crate) fn may_authorize(&self) -> bool {
        !self.left.contains(&self.current.origin())
    }

    /// Moves to `next`, or fails on a loop, on hop number `MAX_HOPS + 1` or
    /// on a target the policy refuses.
    pub(crate) fn advance(&mut self, next: Url) -> Result<(), Error> {
        self.policy
            .check(&self.current, &next)
            .map_err(Error::RedirectRefused)?;
        self.hops += 1;
        if self.hops > MAX_HOPS {
            return Err(Error::Protocol(format!(
                "more than {MAX_HOPS} redirects (last at {})",
                without_query(&self.current)
            )));
        }
        if !self.seen.insert(next.clone()) {
            return Err(Error::Protocol(format!(
                "redirect loop back to {}",
                without_query(&next)
            )));
        }
        let from = self.current.origin();
        if from != next.origin() {
            self.left.insert(from);
        }
        tracing::debug!(
            from = %without_query(&self.current),
            to = %without_query(&next),
            hop = self.hops,
            "following upstream redirect"
        );
        self.current = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn url(s: &str) -> Url {
        s.parse().unwrap()
    }

    /// The policy of a public upstream with default rules.
    fn open() -> Policy {
        Policy::new(&url("https://a.example"), &RedirectRules::default())
    }

    fn policy(base: &str, allow_private: bool, hosts: &[&str]) -> Policy {
        let rules = RedirectRules {
            allow_private,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        };
        Policy::new(&url(base), &rules)
    }

    fn check(policy: &Policy, from: &str, to: &str) -> Result<(), RedirectRefusal> {
        policy.check(&url(from), &url(to))
    }

    fn with_location(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(LOCATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn redirect_statuses() {
        for s in [301, 302, 303, 307, 308] {
            assert!(is_redirect(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 300, 304, 305, 306, 401, 404] {
            assert!(!is_redirect(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn relative_location_resolves_against_the_hop_that_sent_it() {
        let at = url("https://europe-north1-docker.pkg.dev/v2/p/r/i/blobs/sha256:ab");
        let next = location(&at, &with_location("/artifacts-downloads/x?t=1")).unwrap();
        assert_eq!(
            next.as_str(),
            "https://europe-north1-docker.pkg.dev/artifacts-downloads/x?t=1"
        );
        let next = location(&at, &with_location("../../other")).unwrap();
        assert_eq!(
            next.as_str(),
            "https://europe-north1-docker.pkg.dev/v2/p/r/other"
        );
        let next = location(&at, &with_location("https://s3.example/b/o")).unwrap();
        assert_eq!(next.as_str(), "https://s3.example/b/o");
    }

    #[test]
    fn bad_locations_are_protocol_errors() {
        let at = url("https://r.example/v2/");
        assert!(matches!(
            location(&at, &HeaderMap::new()),
            Err(Error::Protocol(_))
        ));
        for bad in ["ftp://x/y", "data:text/plain,hi", "http://[::1"] {
            assert!(
                matches!(location(&at, &with_location(bad)), Err(Error::Protocol(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn hop_limit_and_loops() {
        let policy = open();
        let mut chain = Chain::new(url("http://a/0"), &policy);
        for i in 1..=MAX_HOPS {
            chain.advance(url(&format!("http://a/{i}"))).unwrap();
        }
        assert!(matches!(
            chain.advance(url("http://a/next")),
            Err(Error::Protocol(_))
        ));
        let mut chain = Chain::new(url("http://a/0"), &policy);
        chain.advance(url("http://b/1")).unwrap();
        assert!(matches!(
            chain.advance(url("http://a/0")),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn credentials_never_return_to_an_origin_the_chain_left() {
        let policy = open();
        let mut chain = Chain::new(url("https://a.example/v2/x"), &policy);
        assert!(chain.may_authorize());
        chain.advance(url("https://a.example/v2/y")).unwrap();
        assert!(chain.may_authorize(), "same origin, never left");
        chain.advance(url("https://b.example/1")).unwrap();
        assert!(chain.may_authorize(), "b itself was never left");
        chain.advance(url("https://a.example/v2/z")).unwrap();
        assert!(!chain.may_authorize(), "a→b→a: a was left");
        chain.advance(url("https://a.example:444/v2/z")).unwrap();
        assert!(chain.may_authorize(), "another port is another origin");
    }

    #[test]
    fn userinfo_in_a_location_is_refused_not_turned_into_credentials() {
        let at = url("https://a.example/v2/x");
        let next = location(&at, &with_location("https://user:pw@b.example/o")).unwrap();
        let policy = open();
        let mut chain = Chain::new(at, &policy);
        let refused = chain.advance(next).unwrap_err();
        assert!(
            matches!(
                refused,
                Error::RedirectRefused(RedirectRefusal::Userinfo { .. })
            ),
            "{refused}"
        );
        assert!(!refused.to_string().contains("pw"), "{refused}");
        assert_eq!(chain.current().as_str(), "https://a.example/v2/x");
    }

    #[test]
    fn https_never_goes_down_to_http() {
        let policy = open();
        let refused = check(&policy, "https://a.example/v2/x", "http://b.example/o");
        assert!(matches!(refused, Err(RedirectRefusal::Downgrade { .. })));
        check(&policy, "http://a.example/v2/x", "https://b.example/o").unwrap();
        check(&policy, "http://a.example/v2/x", "http://b.example/o").unwrap();
    }

    #[test]
    fn a_public_upstream_may_not_redirect_to_private_addresses() {
        let policy = open();
        for to in [
            "https://127.0.0.1:5000/",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:127.0.0.1]/",
        ] {
            let refused = check(&policy, "https://a.example/v2/x", to);
            assert!(
                matches!(refused, Err(RedirectRefusal::PrivateAddress { .. })),
                "{to}: {refused:?}"
            );
        }
        for to in [
            "https://8.8.8.8/",
            "https://[2001:4860::8888]/",
            "https://b.example/",
        ] {
            check(&policy, "https://a.example/v2/x", to).unwrap();
        }
    }

    #[test]
    fn private_redirects_when_allowed_or_from_loopback() {
        let allowed = policy("https://a.example", true, &[]);
        check(&allowed, "https://a.example/v2/x", "https://10.1.2.3/o").unwrap();
        for base in [
            "http://127.0.0.1:5000",
            "http://localhost:5000",
            "http://[::1]:5000",
        ] {
            let local = policy(base, false, &[]);
            assert!(!local.guards_private(), "{base}");
            check(&local, &format!("{base}/v2/x"), "http://127.0.0.2:9/o").unwrap();
        }
        let private_upstream = policy("http://10.0.0.5", false, &[]);
        assert!(private_upstream.guards_private());
        assert!(
            check(
                &private_upstream,
                "http://10.0.0.5/v2/",
                "http://10.0.0.6/o"
            )
            .is_err()
        );
    }

    #[test]
    fn redirect_hosts_is_an_allowlist_beside_the_upstream_itself() {
        let policy = policy(
            "https://a.example",
            false,
            &[
                "*.s3.amazonaws.com",
                "storage.googleapis.com:443",
                "cdn.example:8443",
            ],
        );
        let from = "https://a.example/v2/x";
        for to in [
            "https://a.example/artifacts-downloads/1",
            "https://a.example:444/other-port-same-host",
            "https://bucket.s3.amazonaws.com/o",
            "https://a.b.s3.amazonaws.com/o",
            "https://storage.googleapis.com/o",
            "https://cdn.example:8443/o",
        ] {
            check(&policy, from, to).unwrap_or_else(|e| panic!("{to}: {e}"));
        }
        for to in [
            "https://s3.amazonaws.com/o",
            "https://evil-s3.amazonaws.com/o",
            "https://storage.googleapis.com:8443/o",
            "https://cdn.example/o",
            "https://other.example/o",
        ] {
            let refused = check(&policy, from, to);
            assert!(
                matches!(refused, Err(RedirectRefusal::NotAllowed { .. })),
                "{to}: {refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_with_private_addresses() {
        let resolver = GuardedResolver::new(["registry.example".to_owned()]);
        let refused = resolver.lookup("localhost".into()).await.unwrap_err();
        assert!(
            matches!(refused, RefusedAddress::Private { ref host, address } if host == "localhost" && address.is_loopback()),
            "{refused}"
        );
        let exempt = GuardedResolver::new(["localhost".to_owned()]);
        let found = exempt.lookup("localhost".into()).await.unwrap();
        assert!(found.iter().all(|a| a.ip().is_loopback()));
    }
}
