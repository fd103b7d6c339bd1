//! Resuming a blob body that broke mid-way: `Range: bytes=<written>-`, and the
//! check that the answer really continues the blob (a `206` starting exactly at
//! the written offset with the same total, or a `200` with the whole blob again,
//! whose prefix the caller skips). Status codes stay here: the registry gets a
//! [`Continuation`] or an error, never a status to interpret.

use reqwest::{Method, StatusCode};

use super::{Error, Response, Upstream};
use crate::oci::{Digest, RepoName};

/// An upstream answer that continues a blob from a given offset.
#[derive(Debug)]
pub struct Continuation {
    pub response: Response,
    /// Leading bytes of `response`'s body already written (0 for a `206`;
    /// the written offset for a `200` that ignored the Range).
    pub skip: u64,
}

impl Upstream {
    /// The rest of blob `digest` (of `size` bytes, if known) after its first
    /// `written` bytes. An answer that cannot continue the blob is a
    /// [`Error::Protocol`].
    pub async fn resume_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        written: u64,
        size: Option<u64>,
    ) -> Result<Continuation, Error> {
        let response = self.blob(Method::GET, repo, digest, Some(written)).await?;
        let skip = continuation(&response, written, size).map_err(|m| {
            Error::Protocol(format!(
                "cannot resume blob {digest} at byte {written}: {m}"
            ))
        })?;
        Ok(Continuation { response, skip })
    }
}

/// Whether `response` to `Range: bytes=<written>-` continues a blob of `size`
/// (if known): a `206` must start exactly at `written` and agree on the total;
/// a `200` (Range ignored) is the whole blob again, whose first `written` bytes
/// are to be skipped. Returns how many leading bytes to skip.
fn continuation(response: &Response, written: u64, size: Option<u64>) -> Result<u64, String> {
    match response.status() {
        StatusCode::PARTIAL_CONTENT => {
            let range = response
                .content_range()
                .ok_or("a 206 without a valid Content-Range")?;
            if range.first != written {
                return Err(format!("the 206 starts at byte {}", range.first));
            }
            if let (Some(size), Some(total)) = (size, range.total) {
                if size != total {
                    return Err(format!(
                        "the 206 says the blob has {total} bytes, not {size}"
                    ));
                }
            }
            Ok(0)
        }
        StatusCode::OK => {
            if let (Some(size), Some(length)) = (size, response.content_length()) {
                if size != length {
                    return Err(format!("the 200 has {length} bytes, not {size}"));
                }
            }
            Ok(written)
        }
        status => Err(format!("unexpected status {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{Response, continuation};

    fn response(status: u16, headers: &[(&str, &str)]) -> Response {
        let mut builder = http::Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let inner = reqwest::Response::from(builder.body(Vec::<u8>::new()).unwrap());
        Response::new(inner, "http://upstream.test/blob".parse().unwrap())
    }

    #[test]
    fn a_206_continues_only_from_the_written_offset_with_the_same_total() {
        let ok = response(206, &[("content-range", "bytes 7-99/100")]);
        assert_eq!(continuation(&ok, 7, Some(100)), Ok(0));
        assert_eq!(continuation(&ok, 7, None), Ok(0));
        assert!(continuation(&ok, 8, Some(100)).is_err());
        assert!(continuation(&ok, 7, Some(101)).is_err());
        let unknown_total = response(206, &[("content-range", "bytes 7-99/*")]);
        assert_eq!(continuation(&unknown_total, 7, Some(100)), Ok(0));
        assert!(continuation(&response(206, &[]), 7, Some(100)).is_err());
    }

    #[test]
    fn a_200_is_the_whole_blob_again_and_its_prefix_is_skipped() {
        let whole = response(200, &[("content-length", "100")]);
        assert_eq!(continuation(&whole, 7, Some(100)), Ok(7));
        assert!(continuation(&whole, 7, Some(99)).is_err());
        assert_eq!(continuation(&response(200, &[]), 7, None), Ok(7));
        assert!(continuation(&response(204, &[]), 7, None).is_err());
    }
}
