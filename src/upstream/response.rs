//! [`Response`]: a successful upstream answer after redirects, with its body
//! still unread, and the two ways to read it (bounded in memory, or streamed).
//!
//! It never ends a body early without an error: a connection cut or an idle
//! timeout mid-body is an `Err`, so a partial blob can never look complete.
//! It never shows the final URL's query (a presigned signature) in `Debug`.

use std::fmt;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use url::Url;

use super::Error;
use super::error::without_query;
use crate::oci::Digest;

/// A successful (2xx) upstream answer, after redirects. Body not yet read.
pub struct Response {
    inner: reqwest::Response,
    /// The URL of the hop that answered (after every redirect).
    url: Url,
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
        Self { inner, url }
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
        self.inner
            .chunk()
            .await
            .map_err(|e| Error::transport(e, &self.url))
    }

    /// The body as a stream of chunks; a transport failure mid-body is an
    /// `Err` item (never a silent early end).
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Error>> + Send + 'static {
        let url = self.url;
        self.inner
            .bytes_stream()
            .map(move |chunk| chunk.map_err(|e| Error::transport(e, &url)))
    }
}
