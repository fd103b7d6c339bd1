//! The `Range` request header for blobs: one `bytes=` range, resolved against the
//! blob size. Several ranges are answered with the whole blob (a 200 is what
//! containers/image accepts), and a header we cannot parse is ignored, as RFC 9110
//! allows.

/// A satisfiable range, `start..=end` inclusive as in `Content-Range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// What the Range header asks of a blob of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send the whole blob (200).
    Whole,
    /// One satisfiable range (206).
    Partial(ByteRange),
    /// Not satisfiable (416 with `Content-Range: bytes */size`).
    Unsatisfiable,
}

/// Resolves a `Range` header value against `size`.
pub fn resolve(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(last) {
            None => RangeRequest::Whole,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial(ByteRange {
                start: size.saturating_sub(n),
                end: size - 1,
            }),
        },
        // bytes=A- or bytes=A-B.
        (false, _) => {
            let Some(start) = parse(first) else {
                return RangeRequest::Whole;
            };
            let end = if last.is_empty() {
                Some(u64::MAX)
            } else {
                parse(last)
            };
            let Some(end) = end else {
                return RangeRequest::Whole;
            };
            if end < start || start >= size {
                return RangeRequest::Unsatisfiable;
            }
            RangeRequest::Partial(ByteRange {
                start,
                end: end.min(size - 1),
            })
        }
        (true, true) => RangeRequest::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(start: u64, end: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { start, end })
    }

    #[test]
    fn conformance_cases_for_a_2048_byte_blob() {
        let r = |h: &str| resolve(Some(h), 2048);
        assert_eq!(r("bytes=500-1499"), partial(500, 1499));
        assert_eq!(r("bytes=500-"), partial(500, 2047));
        assert_eq!(r("bytes=-500"), partial(1548, 2047));
        assert_eq!(r("bytes=2000-5000"), partial(2000, 2047));
        assert_eq!(r("bytes=500-0"), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=5000-10000"), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=2048-"), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=-0"), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=-5000"), partial(0, 2047));
        assert_eq!(partial(500, 1499), r("bytes= 500 - 1499"));
    }

    #[test]
    fn unusable_headers_mean_the_whole_blob() {
        for h in [
            "",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=1",
        ] {
            assert_eq!(resolve(Some(h), 10), RangeRequest::Whole, "{h}");
        }
        assert_eq!(resolve(None, 10), RangeRequest::Whole);
        assert_eq!(resolve(Some("bytes=-1"), 0), RangeRequest::Unsatisfiable);
    }
}
