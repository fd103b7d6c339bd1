//! The full upstream tag list: `GET /v2/<repo>/tags/list`, following the
//! upstream's `Link: <...>; rel="next"` pages and concatenating them.
//!
//! Pagination towards *our* clients is done elsewhere over this full list
//! (registry.k8s.io drops query strings on its 307, so `n`/`last` cannot be
//! passed through). This never follows more than [`MAX_TAG_PAGES`] pages and
//! never visits a page twice.

use std::collections::HashSet;

use reqwest::Method;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue, LINK};
use url::Url;

use super::{Call, Error, Response, Upstream};
use crate::oci::RepoName;

/// The most pages one tag listing follows.
pub(crate) const MAX_TAG_PAGES: usize = 100;
/// One page of tags larger than this is not a tag list.
const MAX_TAG_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// A tags/list page; `tags` may be `null` for an empty repository.
#[derive(serde::Deserialize)]
struct TagPage {
    tags: Option<Vec<String>>,
}

impl Upstream {
    /// The full tag list, over every upstream page.
    pub async fn tags(&self, repo: &RepoName) -> Result<Vec<String>, Error> {
        let repo = &*self.qualified(repo)?;
        let mut url = self.endpoint(&format!("{repo}/tags/list"));
        let mut visited = HashSet::new();
        let mut tags = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            if !visited.insert(url.clone()) {
                return Err(Error::Protocol("tag list pages loop".into()));
            }
            let page = self.tag_page(repo, url).await?;
            let next = next_page(&page)?;
            let body = page.bytes_limited(MAX_TAG_PAGE_BYTES).await?;
            let page: TagPage = serde_json::from_slice(&body)
                .map_err(|_| Error::Protocol("tag list is not JSON".into()))?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(next) => url = next,
                None => return Ok(tags),
            }
        }
        Err(Error::Protocol(format!(
            "tag list longer than {MAX_TAG_PAGES} pages"
        )))
    }

    async fn tag_page(&self, repo: &RepoName, url: Url) -> Result<Response, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        self.send(&Call {
            method: Method::GET,
            url,
            headers,
            repo,
            deadline: None,
        })
        .await
    }
}

/// The `rel="next"` link of a page, resolved against the URL that served it.
fn next_page(page: &Response) -> Result<Option<Url>, Error> {
    let values = page.headers().get_all(LINK);
    let Some(target) = values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(next_link)
    else {
        return Ok(None);
    };
    let next = page
        .url()
        .join(target)
        .map_err(|_| Error::Protocol("bad tag list Link".into()))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(Error::Protocol("tag list Link is not http(s)".into()));
    }
    Ok(Some(next))
}

/// The target of the first `rel="next"` link in one `Link` header value
/// (RFC 8288: `<uri>; param=value; ...`, links separated by commas).
fn next_link(value: &str) -> Option<&str> {
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>')?;
        let target = &after[..close];
        let params_end = after[close..].find('<').map_or(after.len(), |i| close + i);
        if is_rel_next(&after[close + 1..params_end]) {
            return Some(target.trim());
        }
        rest = &after[params_end..];
    }
    None
}

/// Whether link parameters contain `rel=next` (quoted or not, among other
/// space-separated relation types, any case).
fn is_rel_next(params: &str) -> bool {
    params.split([';', ',']).any(|param| {
        let Some((name, value)) = param.split_once('=') else {
            return false;
        };
        name.trim().eq_ignore_ascii_case("rel")
            && value
                .trim()
                .trim_matches('"')
                .split_ascii_whitespace()
                .any(|rel| rel.eq_ignore_ascii_case("next"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_next_link() {
        let cases = [
            (
                r#"</v2/a/tags/list?last=b&n=2>; rel="next""#,
                Some("/v2/a/tags/list?last=b&n=2"),
            ),
            (r#"<https://x/p?a=1,2>;rel=next"#, Some("https://x/p?a=1,2")),
            (
                r#"<https://x/prev>; rel="prev", <https://x/next>; rel="next""#,
                Some("https://x/next"),
            ),
            (
                r#"<https://x/n>; title="a;b"; rel="last NEXT""#,
                Some("https://x/n"),
            ),
            (r#"<https://x/prev>; rel="prev""#, None),
            ("", None),
            ("<unterminated; rel=next", None),
            ("garbage", None),
            ("<>; rel=next", Some("")),
        ];
        for (value, want) in cases {
            assert_eq!(next_link(value), want, "{value}");
        }
    }
}
