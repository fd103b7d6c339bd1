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

/// Why upstream bytes are not taken for a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAManifest {
    /// The `Content-Type` names something else (`text/html`).
    #[error("{0} is not a manifest media type")]
    Type(String),
    /// A generic type (`application/json`, none) whose body is no OCI or
    /// Docker manifest.
    #[error("a {0} body that is not an OCI or Docker manifest")]
    Shape(String),
}

/// Content types that say nothing about the body: the body must then show it
/// is a manifest.
const GENERIC_TYPES: [&str; 4] = [
    "",
    "application/json",
    "application/octet-stream",
    "text/plain",
];

/// The media type to store upstream bytes under, if they are a manifest:
/// a `Content-Type` that names a manifest media type is taken as it is; a
/// generic one (or none) only if the body is a JSON manifest whose
/// `schemaVersion` and `mediaType` agree (schema 1; schema 2 with a manifest
/// `mediaType`, or without one an OCI index or image manifest by its shape).
/// Anything else (an HTML page, a JSON error) is refused.
pub fn recognise(content_type: Option<&str>, bytes: &[u8]) -> Result<String, NotAManifest> {
    let essence = content_type
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if media_type::ALL_MANIFESTS.contains(&essence.as_str()) {
        return Ok(essence);
    }
    if !GENERIC_TYPES.contains(&essence.as_str()) {
        return Err(NotAManifest::Type(essence));
    }
    let shown = if essence.is_empty() {
        "untyped".to_owned()
    } else {
        essence
    };
    shape_of(bytes).ok_or(NotAManifest::Shape(shown))
}

/// The manifest media type a JSON body shows, if it shows one consistently.
fn shape_of(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(rename = "schemaVersion")]
        schema_version: u32,
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<Vec<serde_json::Value>>,
        config: Option<serde_json::Map<String, serde_json::Value>>,
        layers: Option<Vec<serde_json::Value>>,
        #[serde(rename = "fsLayers")]
        fs_layers: Option<Vec<serde_json::Value>>,
        signatures: Option<serde_json::Value>,
    }
    let shape: Shape = serde_json::from_slice(bytes).ok()?;
    let schema1 = [
        media_type::DOCKER_SCHEMA1,
        media_type::DOCKER_SCHEMA1_SIGNED,
    ];
    match (shape.schema_version, shape.media_type) {
        (1, None) if shape.fs_layers.is_some() => Some(
            if shape.signatures.is_some() {
                media_type::DOCKER_SCHEMA1_SIGNED
            } else {
                media_type::DOCKER_SCHEMA1
            }
            .to_owned(),
        ),
        (1, Some(mt)) if schema1.contains(&mt.as_str()) => Some(mt),
        (2, Some(mt))
            if media_type::ALL_MANIFESTS.contains(&mt.as_str())
                && !schema1.contains(&mt.as_str()) =>
        {
            Some(mt)
        }
        (2, None) if shape.manifests.is_some() => Some(media_type::OCI_INDEX.to_owned()),
        (2, None) if shape.config.is_some() && shape.layers.is_some() => {
            Some(media_type::OCI_MANIFEST.to_owned())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_manifests_are_recognised_as_manifests() {
        let oci = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
        // A manifest media type is taken as it is (parameters dropped).
        assert_eq!(
            recognise(
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
                b"{}"
            )
            .unwrap(),
            media_type::OCI_INDEX
        );
        // A generic type: the body decides, and must agree with itself.
        assert_eq!(
            recognise(Some("application/json"), oci).unwrap(),
            media_type::OCI_MANIFEST
        );
        let untyped_index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            recognise(None, untyped_index).unwrap(),
            media_type::OCI_INDEX
        );
        let schema1 = br#"{"schemaVersion":1,"fsLayers":[],"signatures":[]}"#;
        assert_eq!(
            recognise(Some("text/plain"), schema1).unwrap(),
            media_type::DOCKER_SCHEMA1_SIGNED
        );
        let disagree =
            br#"{"schemaVersion":1,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        assert!(recognise(Some("application/json"), disagree).is_err());
        let error_body = br#"{"errors":[{"code":"UNKNOWN"}]}"#;
        assert_eq!(
            recognise(Some("application/json"), error_body),
            Err(NotAManifest::Shape("application/json".into()))
        );
        assert_eq!(
            recognise(Some("text/html; charset=utf-8"), b"<html></html>"),
            Err(NotAManifest::Type("text/html".into()))
        );
        assert!(recognise(None, b"<html></html>").is_err());
    }

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
