//! Looking into a regcache data directory from a test: where a digest's file
//! is committed, and what is left in `tmp/`.

use std::path::{Path, PathBuf};

/// Where regcache commits content with this digest.
pub fn blob_file(data_dir: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest");
    data_dir.join("blobs").join(alg).join(&hex[..2]).join(hex)
}

/// Files in `<data>/tmp`.
pub fn tmp_files(data_dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(data_dir.join("tmp")) {
        Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    }
}
