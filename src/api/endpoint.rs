//! Parses the path after `/v2/` into an [`Endpoint`], from the right: the
//! repository name may hold slashes, the operation never does. Every name, tag
//! and digest is validated here, so handlers only ever see well-formed values.

use super::error::ApiError;
use crate::oci::{Digest, Reference, ReferenceError, RepoName};

/// Every pull endpoint regcache serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Manifest {
        name: RepoName,
        reference: Reference,
    },
    Blob {
        name: RepoName,
        digest: Digest,
    },
    Tags {
        name: RepoName,
    },
    Referrers {
        name: RepoName,
        digest: Digest,
    },
}

impl Endpoint {
    /// The repository name as the client wrote it in the path.
    pub fn name(&self) -> &RepoName {
        match self {
            Endpoint::Manifest { name, .. }
            | Endpoint::Blob { name, .. }
            | Endpoint::Tags { name }
            | Endpoint::Referrers { name, .. } => name,
        }
    }

    /// Parses `rest`, the path after `/v2/` (already percent-decoded).
    pub fn parse(rest: &str) -> Result<Endpoint, ApiError> {
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Ok(Endpoint::Tags {
                name: parse_name(name)?,
            });
        }
        let (name, kind, last) = split_operation(rest)?;
        match kind {
            "manifests" => Ok(Endpoint::Manifest {
                name,
                reference: parse_reference(last)?,
            }),
            "blobs" => Ok(Endpoint::Blob {
                name,
                digest: parse_digest(last)?,
            }),
            _ => Ok(Endpoint::Referrers {
                name,
                digest: parse_digest(last)?,
            }),
        }
    }
}

/// Splits `<name>/<kind>/<reference>` at the rightmost `/<kind>/` whose left side
/// is a valid name. The reference is everything after it, so a reference holding
/// a `/` (`sha256:../../x`) is rejected as a reference, not mistaken for a path.
fn split_operation(rest: &str) -> Result<(RepoName, &str, &str), ApiError> {
    let mut candidates: Vec<(usize, &str)> = ["manifests", "blobs", "referrers"]
        .into_iter()
        .flat_map(|kind| {
            let needle = format!("/{kind}/");
            rest.match_indices(&needle)
                .map(move |(at, _)| (at, kind))
                .collect::<Vec<_>>()
        })
        .collect();
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    let mut first_error = None;
    for (at, kind) in candidates {
        let last = &rest[at + kind.len() + 2..];
        match parse_name(&rest[..at]) {
            Ok(name) => return Ok((name, kind, last)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(ApiError::not_found))
}

fn parse_name(name: &str) -> Result<RepoName, ApiError> {
    name.parse()
        .map_err(|e| ApiError::name_invalid(format!("{e}")))
}

fn parse_digest(digest: &str) -> Result<Digest, ApiError> {
    digest
        .parse()
        .map_err(|e| ApiError::digest_invalid(format!("{e}")))
}

/// A malformed digest is 400 `DIGEST_INVALID` (the spec allows 400 or 404 and
/// 400 tells the client why); anything else that is not a tag can name no
/// manifest, so it is 404 `MANIFEST_UNKNOWN`, as for a tag that does not exist.
fn parse_reference(reference: &str) -> Result<Reference, ApiError> {
    reference.parse().map_err(|e| match e {
        ReferenceError::Digest(e) => ApiError::digest_invalid(format!("{e}")),
        ReferenceError::Tag(e) => {
            ApiError::manifest_reference_invalid(format!("manifest unknown: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn code(rest: &str) -> (StatusCode, &'static str) {
        let e = Endpoint::parse(rest).unwrap_err();
        (e.status(), e.code())
    }

    #[test]
    fn parses_every_endpoint_with_nested_names() {
        let m = Endpoint::parse("k8s/images/pause/manifests/3.9").unwrap();
        assert_eq!(
            m,
            Endpoint::Manifest {
                name: "k8s/images/pause".parse().unwrap(),
                reference: "3.9".parse().unwrap(),
            }
        );
        assert!(matches!(
            Endpoint::parse(&format!("a/manifests/{D}")).unwrap(),
            Endpoint::Manifest {
                reference: Reference::Digest(_),
                ..
            }
        ));
        assert!(matches!(
            Endpoint::parse(&format!("a/b/blobs/{D}")).unwrap(),
            Endpoint::Blob { .. }
        ));
        assert!(matches!(
            Endpoint::parse("a/b/tags/list").unwrap(),
            Endpoint::Tags { .. }
        ));
        assert!(matches!(
            Endpoint::parse(&format!("a/referrers/{D}")).unwrap(),
            Endpoint::Referrers { .. }
        ));
        // A repository may itself be called "manifests" or "blobs".
        assert!(matches!(
            Endpoint::parse("manifests/manifests/v1").unwrap(),
            Endpoint::Manifest { .. }
        ));
    }

    #[test]
    fn bad_input_gets_the_right_error() {
        assert_eq!(
            code("UPPER/manifests/x"),
            (StatusCode::BAD_REQUEST, "NAME_INVALID")
        );
        assert_eq!(
            code(&format!("../../etc/blobs/{D}")),
            (StatusCode::BAD_REQUEST, "NAME_INVALID")
        );
        assert_eq!(
            code("a/manifests/sha256:totallywrong"),
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
        );
        assert_eq!(
            code("a/blobs/sha256:../../../etc/passwd"),
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
        );
        assert_eq!(
            code("a/blobs/latest"),
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
        );
        assert_eq!(
            code("a/manifests/.bad"),
            (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
        );
        assert_eq!(code("_catalog"), (StatusCode::NOT_FOUND, "UNSUPPORTED"));
        assert_eq!(
            code("a/blobs/uploads/"),
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
        );
        assert_eq!(code("a/unknown/x"), (StatusCode::NOT_FOUND, "UNSUPPORTED"));
        assert_eq!(code(""), (StatusCode::NOT_FOUND, "UNSUPPORTED"));
    }
}
