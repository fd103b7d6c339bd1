//! The spec's vocabulary: repository names, tags, digests, references and media
//! types, each parsed by the OCI distribution-spec grammar into a type that cannot
//! hold an invalid value. Everything here is pure: no I/O, no async, no HTTP.
//!
//! Only values of these types may reach the store or the upstream; in particular a
//! store path is derived from a [`Digest`] alone, so no request can name a path.

mod digest;
mod image_ref;
mod manifest;
mod name;
mod reference;
mod references;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use image_ref::{DOCKER_HUB_HOSTS, ImageRef, ImageRefError, looks_like_host};
pub use manifest::{Manifest, NotAManifest, media_type_of, recognise};
pub use name::{NameError, RepoName, docker_hub_name};
pub use reference::{Reference, ReferenceError, Tag, TagError};
pub use references::{Descriptor, ManifestError, Platform, References, references};

/// Media types a registry serves manifests as.
pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

    /// Everything we ask an upstream for on a manifest miss, whatever the client
    /// asked: the cache stores one representation per reference, so it asks for the
    /// richest one (an index or list rather than a single platform's manifest).
    pub const ALL_MANIFESTS: [&str; 6] = [
        OCI_INDEX,
        DOCKER_LIST,
        OCI_MANIFEST,
        DOCKER_MANIFEST,
        DOCKER_SCHEMA1_SIGNED,
        DOCKER_SCHEMA1,
    ];
}

/// The largest manifest we accept from an upstream or serve, as containerd and
/// containers/image cap them (4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
