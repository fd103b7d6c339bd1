//! The redirect policy, applied by hand because reqwest's own is switched off:
//! which statuses are redirects, how a `Location` is resolved, how many hops a
//! chain may take, and on which hops an `Authorization` header may be sent.
//!
//! It never lets a credential leave the origin that asked for it, never gives
//! it back to that origin once the chain has left it (the a→b→a pattern of
//! CVE-2024-45336), and never remembers a redirect target beyond one chain:
//! targets are presigned, expiring and chosen from our egress address.

use std::collections::HashSet;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION};
use url::{Origin, Url};

use super::Error;
use super::error::without_query;

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

/// One request's walk through redirects: the current URL, the hop count, the
/// URLs seen (a repeat is a loop) and the origins the chain has left.
#[derive(Debug)]
pub(crate) struct Chain {
    current: Url,
    hops: usize,
    seen: HashSet<Url>,
    left: HashSet<Origin>,
}

impl Chain {
    pub(crate) fn new(start: Url) -> Self {
        Self {
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

    /// Moves to `next`, or fails on a loop or on hop number `MAX_HOPS + 1`.
    pub(crate) fn advance(&mut self, next: Url) -> Result<(), Error> {
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
        let mut chain = Chain::new(url("http://a/0"));
        for i in 1..=MAX_HOPS {
            chain.advance(url(&format!("http://a/{i}"))).unwrap();
        }
        assert!(matches!(
            chain.advance(url("http://a/next")),
            Err(Error::Protocol(_))
        ));
        let mut chain = Chain::new(url("http://a/0"));
        chain.advance(url("http://b/1")).unwrap();
        assert!(matches!(
            chain.advance(url("http://a/0")),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn credentials_never_return_to_an_origin_the_chain_left() {
        let mut chain = Chain::new(url("https://a.example/v2/x"));
        assert!(chain.may_authorize());
        chain.advance(url("https://a.example/v2/y")).unwrap();
        assert!(chain.may_authorize(), "same origin, never left");
        chain.advance(url("https://b.example/1")).unwrap();
        assert!(chain.may_authorize(), "b itself was never left");
        chain.advance(url("https://a.example/v2/z")).unwrap();
        assert!(!chain.may_authorize(), "a→b→a: a was left");
        chain.advance(url("https://a.example:444/v2/z")).unwrap();
        assert!(chain.may_authorize(), "another port is another origin");
        chain.advance(url("http://a.example:444/v2/z")).unwrap();
        assert!(chain.may_authorize(), "another scheme is another origin");
    }
}
