//! What a manifest references: an index's (or Docker list's) child manifests
//! with their platforms, or an image manifest's config and layers (Docker
//! schema 1: its `fsLayers`). Only the fields needed to walk an image are
//! read; everything else in the JSON is ignored. Pure: no I/O.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::Digest;

/// A content descriptor: what to fetch, how big it is, and for an index
/// entry which platform it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: Option<String>,
    pub digest: Digest,
    /// `None` only for schema 1 layers, which carry no size.
    pub size: Option<u64>,
    pub platform: Option<Platform>,
}

/// What a manifest references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum References {
    /// An index or manifest list: child manifests.
    Index(Vec<Descriptor>),
    /// An image manifest: its blobs (config first, then layers).
    Image(Vec<Descriptor>),
}

/// Why manifest bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid manifest: {0}")]
pub struct ManifestError(String);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    media_type: Option<String>,
    manifests: Option<Vec<RawDescriptor>>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    fs_layers: Option<Vec<RawFsLayer>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: String,
    size: u64,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFsLayer {
    blob_sum: String,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// Reads the references of manifest `bytes`.
pub fn references(bytes: &[u8]) -> Result<References, ManifestError> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| ManifestError(e.to_string()))?;
    if let Some(children) = raw.manifests {
        return Ok(References::Index(convert_all(children)?));
    }
    if let Some(layers) = raw.fs_layers {
        let blobs = layers
            .into_iter()
            .map(|l| {
                Ok(Descriptor {
                    media_type: None,
                    digest: parse_digest(&l.blob_sum)?,
                    size: None,
                    platform: None,
                })
            })
            .collect::<Result<_, ManifestError>>()?;
        return Ok(References::Image(blobs));
    }
    let Some(config) = raw.config else {
        return Err(ManifestError(format!(
            "neither manifests, config nor fsLayers (mediaType {:?})",
            raw.media_type
        )));
    };
    let mut blobs = vec![convert(config)?];
    blobs.extend(convert_all(raw.layers.unwrap_or_default())?);
    Ok(References::Image(blobs))
}

fn convert_all(raw: Vec<RawDescriptor>) -> Result<Vec<Descriptor>, ManifestError> {
    raw.into_iter().map(convert).collect()
}

fn convert(raw: RawDescriptor) -> Result<Descriptor, ManifestError> {
    Ok(Descriptor {
        media_type: raw.media_type,
        digest: parse_digest(&raw.digest)?,
        size: Some(raw.size),
        platform: raw.platform.map(|p| Platform {
            os: p.os,
            architecture: p.architecture,
            variant: p.variant,
        }),
    })
}

fn parse_digest(text: &str) -> Result<Digest, ManifestError> {
    text.parse()
        .map_err(|e| ManifestError(format!("{text:?}: {e}")))
}

/// A platform: `os/architecture[/variant]` (`linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Whether an index entry for `other` is what this selection asks for; a
    /// selection without a variant takes every variant.
    pub fn selects(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split('/').collect();
        let ok = |s: &&str| !s.is_empty();
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: Some((*variant).to_owned()),
            }),
            _ => Err(format!(
                "{text:?} is not os/architecture[/variant] (e.g. linux/amd64)"
            )),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn an_index_lists_children_with_platforms() {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "m", "digest": digest('a'), "size": 10,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": "m", "digest": digest('b'), "size": 11}
            ]
        });
        let References::Index(children) = references(index.to_string().as_bytes()).unwrap() else {
            panic!("an index");
        };
        assert_eq!(children.len(), 2);
        let arm = children[0].platform.as_ref().unwrap();
        assert!("linux/arm64".parse::<Platform>().unwrap().selects(arm));
        assert!("linux/arm64/v8".parse::<Platform>().unwrap().selects(arm));
        assert!(!"linux/arm64/v7".parse::<Platform>().unwrap().selects(arm));
        assert!(!"linux/amd64".parse::<Platform>().unwrap().selects(arm));
        assert!(children[1].platform.is_none());
    }

    #[test]
    fn an_image_lists_config_then_layers() {
        let image = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "c", "digest": digest('c'), "size": 2},
            "layers": [{"mediaType": "l", "digest": digest('d'), "size": 3}]
        });
        assert_eq!(
            references(image.to_string().as_bytes()).unwrap(),
            References::Image(vec![
                Descriptor {
                    media_type: Some("c".into()),
                    digest: digest('c').parse().unwrap(),
                    size: Some(2),
                    platform: None
                },
                Descriptor {
                    media_type: Some("l".into()),
                    digest: digest('d').parse().unwrap(),
                    size: Some(3),
                    platform: None
                },
            ])
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(references(b"{}").is_err());
        assert!(references(b"not json").is_err());
        let bad = serde_json::json!({"config": {"digest": "sha256:12", "size": 1}});
        assert!(references(bad.to_string().as_bytes()).is_err());
        assert!("linux".parse::<Platform>().is_err());
    }
}
