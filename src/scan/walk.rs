//! Which files `scan` reads, and as what: it walks directories (sorted, so the
//! report is stable; hidden directories such as `.git` skipped), decides each
//! file's kind by its name, and turns each into [`Source`]s (a packaged chart
//! is one source per YAML file inside it). It never reads a file it has no
//! reader for, and never writes.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::yaml::Context;
use super::{Skipped, Source, chart, display, yaml};

/// How a file is read.
#[derive(Debug, Clone)]
pub(super) enum Kind {
    Dockerfile,
    /// YAML or JSON, with what its name says about it.
    Yaml(Context),
}

/// The files under `paths`, in order. A file named on the command line is read
/// whatever its name (as YAML unless it looks like a Dockerfile or a chart);
/// in a directory only files with a known name are.
pub(super) fn files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", display(path)))?;
        if meta.is_dir() {
            walk_dir(path, &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn walk_dir(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", display(dir)))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot list {}", display(dir)))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // file_type does not follow symbolic links, so a link loop cannot recurse.
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            if !name.starts_with('.') {
                walk_dir(&path, files)?;
            }
        } else if is_chart_archive(&name) || kind_by_name(&name).is_some() {
            files.push(path);
        }
    }
    Ok(())
}

/// The reader a file name calls for, if any.
fn kind_by_name(name: &str) -> Option<Kind> {
    let lower = name.to_ascii_lowercase();
    if lower == "dockerfile"
        || lower == "containerfile"
        || lower.starts_with("dockerfile.")
        || lower.ends_with(".dockerfile")
    {
        return Some(Kind::Dockerfile);
    }
    let yaml = [".yaml", ".yml", ".json"]
        .iter()
        .any(|ext| lower.ends_with(ext));
    let kustomization = matches!(
        lower.as_str(),
        "kustomization.yaml" | "kustomization.yml" | "kustomization"
    );
    yaml.then_some(Kind::Yaml(Context {
        kustomization,
        app_version: None,
    }))
}

fn is_chart_archive(name: &str) -> bool {
    name.ends_with(".tgz") || name.ends_with(".tar.gz")
}

/// The sources of one file; unreadable files go to `skipped`.
pub(super) fn sources(path: &Path, skipped: &mut Vec<Skipped>) -> Vec<Source> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if is_chart_archive(&name) {
        return chart::sources(path, skipped);
    }
    let text = match std::fs::read(path).map(String::from_utf8) {
        Ok(Ok(text)) => text,
        Ok(Err(_)) => {
            skip(skipped, display(path), "not UTF-8 text");
            return Vec::new();
        }
        Err(e) => {
            skip(skipped, display(path), &e.to_string());
            return Vec::new();
        }
    };
    let mut kind = kind_by_name(&name).unwrap_or(Kind::Yaml(Context::default()));
    if let Kind::Yaml(context) = &mut kind {
        context.app_version = chart_app_version(path, &name);
    }
    vec![Source {
        name: display(path),
        text,
        kind,
        target: Ok(path.to_owned()),
    }]
}

/// For a chart's `values.yaml`, the `appVersion` of the `Chart.yaml` beside it.
fn chart_app_version(path: &Path, name: &str) -> Option<String> {
    if name != "values.yaml" {
        return None;
    }
    let chart_yaml = std::fs::read_to_string(path.with_file_name("Chart.yaml")).ok()?;
    yaml::app_version(&chart_yaml)
}

pub(super) fn kind_of_entry(name: &str) -> Option<Kind> {
    kind_by_name(name)
}

pub(super) fn skip(skipped: &mut Vec<Skipped>, file: String, reason: &str) {
    skipped.push(Skipped {
        file,
        reason: reason.to_owned(),
    });
}
