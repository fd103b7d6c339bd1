//! Packaged Helm charts (`helm package` output: a gzipped tar of the chart
//! directory, dependencies under `charts/` included): each YAML or JSON file
//! inside becomes a [`Source`] named `archive.tgz!path/in/archive`, with its
//! chart's `appVersion` for `values.yaml`. An archive is read, never
//! rewritten: changing a packaged chart changes its digest and provenance, so
//! the fix belongs in the chart's source.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use super::walk::{self, Kind};
use super::{Skipped, Source, display, yaml};

/// The largest file read from an archive: charts hold text, not payloads.
const MAX_ENTRY_BYTES: u64 = 16 * 1024 * 1024;

pub(super) fn sources(path: &Path, skipped: &mut Vec<Skipped>) -> Vec<Source> {
    match entries(path) {
        Ok(entries) => to_sources(path, entries, skipped),
        Err(e) => {
            walk::skip(skipped, display(path), &format!("cannot read archive: {e}"));
            Vec::new()
        }
    }
}

/// `(path in archive, text)` of every regular YAML/JSON/Chart.yaml file.
fn entries(path: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let file = std::fs::File::open(path)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path()?.to_string_lossy().into_owned();
        if walk::kind_of_entry(file_name(&name)).is_none() {
            continue;
        }
        let mut bytes = Vec::new();
        entry.take(MAX_ENTRY_BYTES).read_to_end(&mut bytes)?;
        out.push((name, bytes));
    }
    Ok(out)
}

fn to_sources(
    archive: &Path,
    entries: Vec<(String, Vec<u8>)>,
    skipped: &mut Vec<Skipped>,
) -> Vec<Source> {
    // Chart.yaml by directory, for the values.yaml beside it.
    let app_versions: HashMap<String, String> = entries
        .iter()
        .filter(|(name, _)| file_name(name) == "Chart.yaml")
        .filter_map(|(name, bytes)| {
            let text = std::str::from_utf8(bytes).ok()?;
            Some((dir_of(name).to_owned(), yaml::app_version(text)?))
        })
        .collect();
    let mut sources = Vec::new();
    for (name, bytes) in entries {
        let shown = format!("{}!{name}", display(archive));
        let Ok(text) = String::from_utf8(bytes) else {
            walk::skip(skipped, shown, "not UTF-8 text");
            continue;
        };
        let Some(mut kind) = walk::kind_of_entry(file_name(&name)) else {
            continue;
        };
        if let Kind::Yaml(context) = &mut kind {
            if file_name(&name) == "values.yaml" {
                context.app_version = app_versions.get(dir_of(&name)).cloned();
            }
        }
        sources.push(Source {
            name: shown,
            text,
            kind,
            target: Err("not rewritten: packaged chart".to_owned()),
        });
    }
    sources
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}
