//! Content negotiation for manifests: does the client's `Accept` (every header
//! line, comma-separated, parameters and q-values ignored as distribution does)
//! allow the stored media type?

use http::{HeaderMap, header};

/// Whether `media_type` may be served to a client that sent `headers`. No
/// `Accept` at all, `*/*` or `application/*` accept anything.
pub fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut listed_any = false;
    for value in headers.get_all(header::ACCEPT) {
        for item in value.to_str().unwrap_or_default().split(',') {
            let item = item.split(';').next().unwrap_or_default().trim();
            if item.is_empty() {
                continue;
            }
            listed_any = true;
            if item == "*/*" || item == "application/*" || item.eq_ignore_ascii_case(media_type) {
                return true;
            }
        }
    }
    !listed_any
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(header::ACCEPT, HeaderValue::from_str(line).unwrap());
        }
        h
    }

    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
    const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

    #[test]
    fn reads_every_line_and_item() {
        // containers/image sends one media type per line.
        let h = headers(&[
            "application/vnd.docker.distribution.manifest.v2+json",
            LIST,
            OCI,
        ]);
        assert!(accepts(&h, OCI));
        assert!(accepts(&h, LIST));
        // containerd sends one line with */*.
        assert!(accepts(
            &headers(&["application/vnd.docker.distribution.manifest.v2+json, */*"]),
            OCI
        ));
        assert!(accepts(&headers(&[&format!("{OCI};q=0.9, {LIST}")]), OCI));
    }

    #[test]
    fn refuses_unlisted_types_only_when_accept_is_given() {
        assert!(!accepts(&headers(&[LIST]), OCI));
        assert!(accepts(&HeaderMap::new(), OCI));
        assert!(accepts(&headers(&[""]), OCI));
    }
}
