//! [`Response`]: a successful upstream answer after redirects, with its body
//! still unread, and the two ways to read it (bounded in memory, or streamed);
//! [`ContentRange`] is what a `206` says it holds (for resuming a blob).
//!
//! It never ends a body early without an error: a connection cut or an idle
//! timeout mid-body is an `Err`, so a partial blob can never look complete.
//! It never shows the final URL's query (a presigned signature) in `Debug`.

use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap};
use url::Url;

use super::Error;
use super::Traffic;
use super::error::without_query;
use crate::oci::Digest;

/// A successful (2xx) upstream answer, after redirects. Body not yet read.
pub struct Response {
    inner: reqwest::Response,
    /// The URL of the hop that answered (after every redirect).
    url: Url,
    /// Where the body's bytes are counted, if anywhere.
    traffic: Option<Arc<Traffic>>,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status())
            .field("url", &without_query(&self.url))
            .field("content_length", &self.content_length())
            .finish()
    }
}

impl Response {
    pub(crate) fn new(inner: reqwest::Response, url: Url) -> Self {
        Self {
            inner,
            url,
            traffic: None,
        }
    }

    /// Counts the body's bytes in `traffic` as they are read.
    pub(crate) fn counted(mut self, traffic: Arc<Traffic>) -> Self {
        self.traffic = Some(traffic);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// The URL that answered: where a relative `Link` resolves.
    pub(crate) fn url(&self) -> &Url {
        &self.url
    }

    /// The `Content-Length` header. Read from the header rather than the body,
    /// because a HEAD response has an empty body but the real length.
    pub fn content_length(&self) -> Option<u64> {
        let value = self.headers().get(CONTENT_LENGTH)?.to_str().ok()?;
        value.trim().parse().ok()
    }

    /// The parsed `Content-Range` header of a `206` (None if absent or not
    /// `bytes <first>-<last>/<total or *>`).
    pub fn content_range(&self) -> Option<ContentRange> {
        let value = self.headers().get(CONTENT_RANGE)?.to_str().ok()?;
        ContentRange::parse(value)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.headers().get(CONTENT_TYPE)?.to_str().ok()
    }

    /// Parsed `Docker-Content-Digest` (None if absent or unparsable: storage
    /// hosts such as S3 don't send it).
    pub fn docker_content_digest(&self) -> Option<Digest> {
        let value = self.headers().get("docker-content-digest")?.to_str().ok()?;
        value.trim().parse().ok()
    }

    /// Reads the whole body; `Error::TooLarge` if it exceeds `max`, judged by
    /// `Content-Length` before reading and by counting while reading.
    pub async fn bytes_limited(mut self, max: usize) -> Result<Bytes, Error> {
        let too_large = Error::TooLarge { limit: max };
        let declared = self.content_length();
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large);
        }
        let capacity = declared.map_or(0, |n| n as usize);
        let mut body = BytesMut::with_capacity(capacity);
        while let Some(chunk) = self.next_chunk().await? {
            if body.len() + chunk.len() > max {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        let chunk = self
            .inner
            .chunk()
            .await
            .map_err(|e| Error::transport(e, &self.url))?;
        if let (Some(traffic), Some(chunk)) = (&self.traffic, &chunk) {
            traffic.received(chunk.len());
        }
        Ok(chunk)
    }

    /// The body as a stream of chunks; a transport failure mid-body is an
    /// `Err` item (never a silent early end).
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Error>> + Send + 'static {
        let (url, traffic) = (self.url, self.traffic);
        self.inner.bytes_stream().map(move |chunk| {
            let chunk = chunk.map_err(|e| Error::transport(e, &url))?;
            if let Some(traffic) = &traffic {
                traffic.received(chunk.len());
            }
            Ok(chunk)
        })
    }
}

/// `Content-Range: bytes <first>-<last>/<total>`: which bytes a `206` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    /// Inclusive.
    pub last: u64,
    /// `None` when the upstream sent `*` (total unknown).
    pub total: Option<u64>,
}

impl ContentRange {
    pub(crate) fn parse(value: &str) -> Option<Self> {
        let spec = value.trim().strip_prefix("bytes ")?;
        let (range, total) = spec.split_once('/')?;
        let (first, last) = range.split_once('-')?;
        let first: u64 = first.trim().parse().ok()?;
        let last: u64 = last.trim().parse().ok()?;
        let total = match total.trim() {
            "*" => None,
            n => Some(n.parse::<u64>().ok()?),
        };
        if last < first || total.is_some_and(|t| last >= t) {
            return None;
        }
        Some(Self { first, last, total })
    }
}

#[cfg(test)]
mod tests {
    use super::ContentRange;

    #[test]
    fn content_range_is_parsed_strictly() {
        let range = |first, last, total| Some(ContentRange { first, last, total });
        assert_eq!(
            ContentRange::parse("bytes 7-99/100"),
            range(7, 99, Some(100))
        );
        assert_eq!(ContentRange::parse(" bytes 0-0/* "), range(0, 0, None));
        for bad in [
            "bytes */100",
            "bytes 7-99",
            "bytes 9-7/100",
            "bytes 7-100/100",
            "items 0-1/2",
            "bytes -1-2/3",
        ] {
            assert_eq!(ContentRange::parse(bad), None, "{bad}");
        }
    }
}
