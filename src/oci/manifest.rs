//! A manifest as the cache stores and serves it: the exact upstream bytes, their
//! digest and their media type. Manifests are never re-serialized: a digest
//! names bytes, and re-encoding would change them. Pure: no I/O.

use bytes::Bytes;

use super::{Digest, media_type};

/// A manifest as stored: exact bytes, their digest, the upstream's media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

impl Manifest {
    /// Builds a manifest of `bytes` (whose digest is `digest`), typed by the
    /// upstream's `Content-Type` when it names one (see [`media_type_of`]).
    pub fn new(digest: Digest, content_type: Option<&str>, bytes: Bytes) -> Self {
        let media_type = media_type_of(content_type, &bytes);
        Self {
            digest,
            media_type,
            bytes,
        }
    }
}

/// The media type to store a manifest under: the upstream's Content-Type, else the manifest's own
/// `mediaType` field, else a guess from its shape (schema 1 or an OCI image).
pub fn media_type_of(content_type: Option<&str>, bytes: &[u8]) -> String {
    // Parameters (`; charset=utf-8`) are dropped: clients ignore them, and a
    // stored type with them would match no client's Accept.
    let essence = content_type.map(|ct| ct.split(';').next().unwrap_or_default().trim());
    if let Some(ct) = essence.filter(|ct| !ct.is_empty()) {
        if ct != "application/octet-stream" && ct != "text/plain" {
            return ct.to_owned();
        }
    }
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        manifests: Option<serde_json::Value>,
        signatures: Option<serde_json::Value>,
    }
    let Ok(shape) = serde_json::from_slice::<Shape>(bytes) else {
        return media_type::OCI_MANIFEST.to_owned();
    };
    match shape {
        Shape {
            media_type: Some(mt),
            ..
        } => mt,
        Shape {
            schema_version: Some(1),
            signatures: Some(_),
            ..
        } => media_type::DOCKER_SCHEMA1_SIGNED.to_owned(),
        Shape {
            schema_version: Some(1),
            ..
        } => media_type::DOCKER_SCHEMA1.to_owned(),
        Shape {
            manifests: Some(_), ..
        } => media_type::OCI_INDEX.to_owned(),
        _ => media_type::OCI_MANIFEST.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_prefers_content_type_then_body() {
        assert_eq!(
            media_type_of(Some(media_type::DOCKER_LIST), b"{}"),
            media_type::DOCKER_LIST
        );
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert_eq!(media_type_of(None, body), media_type::OCI_INDEX);
        assert_eq!(
            media_type_of(Some("application/octet-stream"), body),
            media_type::OCI_INDEX
        );
        assert_eq!(
            media_type_of(Some("text/plain; charset=utf-8"), body),
            media_type::OCI_INDEX
        );
        assert_eq!(
            media_type_of(
                Some(" application/vnd.oci.image.manifest.v1+json ; q=1"),
                body
            ),
            media_type::OCI_MANIFEST
        );
        let schema1 = br#"{"schemaVersion":1,"signatures":[]}"#;
        assert_eq!(
            media_type_of(None, schema1),
            media_type::DOCKER_SCHEMA1_SIGNED
        );
        let bare_index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(media_type_of(None, bare_index), media_type::OCI_INDEX);
    }
}
