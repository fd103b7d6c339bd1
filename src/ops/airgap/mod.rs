//! `regcache export` and `regcache import`: carrying cached images into a site
//! with no route to any registry, as an OCI image layout (a directory, or a
//! tar of one): `oci-layout`, `index.json` with one entry per image whose
//! `org.opencontainers.image.ref.name` annotation is the full reference
//! (`registry.k8s.io/pause:3.9`), and `blobs/<alg>/<hex>`.
//!
//! Both run beside a running server on the same data directory, through the
//! store's and the index's public APIs only: files are committed by
//! `store::BlobWriter` (which verifies digest and size) before their rows, as
//! the crash-safety rules require.

mod export;
mod import;
mod select;
mod stage;

pub use export::{ExportSummary, export};
pub use import::{ImportSummary, import};

/// The annotation carrying an image's name in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The same name as `ctr images import` reads it.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// The content of the `oci-layout` file.
const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// The path of a blob inside a layout.
fn blob_name(digest: &crate::oci::Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex())
}

/// How an export is written: a directory, or a tar when the name ends in `.tar`.
fn is_tar(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "tar")
}
