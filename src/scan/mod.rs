//! `regcache scan`: finds the image references in Kubernetes manifests, Helm
//! charts (directories and packaged `.tgz`), kustomizations, Dockerfiles,
//! compose files and JSON, and reports those naming a frozen registry
//! (`k8s.gcr.io` and any configured) with their replacement.
//!
//! The readers (`yaml`, `dockerfile`, `text`, `chart`) only find references;
//! this module parses them with [`ImageRef`] and judges them; `fix` rewrites
//! host bytes. A file is rewritten only when it was parsed by a real grammar
//! and every frozen host sits at a known byte offset; templates, unparseable
//! files and packaged charts are reported and never touched.

mod chart;
mod dockerfile;
mod fix;
mod report;
mod text;
mod walk;
mod yaml;

use std::path::{Path, PathBuf};

use crate::oci::ImageRef;

pub use report::{write_json, write_list, write_text};

/// The frozen registry every scan knows, and where its images moved.
pub const K8S_GCR_IO: (&str, &str) = ("k8s.gcr.io", "registry.k8s.io");

/// Registry hosts scan reports as frozen, each with the host replacing it.
#[derive(Debug, Clone)]
pub struct Frozen(Vec<(String, String)>);

impl Frozen {
    /// `k8s.gcr.io` → `registry.k8s.io`, then `extra` (`(frozen, replacement)`).
    pub fn new(extra: &[(String, String)]) -> Self {
        let mut hosts = vec![(K8S_GCR_IO.0.to_owned(), K8S_GCR_IO.1.to_owned())];
        hosts.extend(extra.iter().cloned());
        Self(hosts)
    }

    fn replacement(&self, host: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(frozen, _)| frozen == host)
            .map(|(_, replacement)| replacement.as_str())
    }

    /// A frozen host written somewhere in `text` (an unresolved template).
    fn mentioned_in(&self, text: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(frozen, _)| text.contains(frozen.as_str()))
            .map(|(frozen, _)| frozen.as_str())
    }
}

/// Something a reader found on a line.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    line: usize,
    /// The reference as written (or assembled from a values map or an ARG).
    text: String,
    /// Whether `text` can be a reference at all, or is a template expression.
    resolved: bool,
    /// Byte offset in the file where the reference's host is written, if the
    /// reader knows it exactly.
    host_at: Option<usize>,
    note: Option<String>,
}

impl Hit {
    fn reference(line: usize, text: &str, host_at: Option<usize>, note: Option<String>) -> Self {
        Self {
            line,
            text: text.to_owned(),
            resolved: true,
            host_at,
            note,
        }
    }

    fn unresolved(line: usize, text: &str, note: Option<String>) -> Self {
        Self {
            line,
            text: text.to_owned(),
            resolved: false,
            host_at: None,
            note,
        }
    }
}

/// What scan concluded about one reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// A valid reference to a registry that is not frozen.
    Ok,
    /// Names a frozen registry; not rewritten (why is in the finding's note).
    Frozen,
    /// Named a frozen registry and `--fix` rewrote its host.
    Fixed,
    /// A template expression or an unknown variable: cannot be judged.
    Unresolved,
    /// Not a valid image reference (the reason).
    Invalid(String),
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Frozen => "frozen",
            Self::Fixed => "fixed",
            Self::Unresolved => "unresolved",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// One reference found, with its place and verdict.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The file as given or found (`chart.tgz!chart/values.yaml` inside an archive).
    pub file: String,
    pub line: usize,
    /// As written (or assembled).
    pub written: String,
    pub reference: Option<ImageRef>,
    pub status: Status,
    /// For a frozen reference: the written form with the host replaced.
    pub replacement: Option<String>,
    /// Where the reference came from, and why a frozen one was not rewritten.
    pub note: Option<String>,
    /// Where the host bytes are in the file, when the file may be rewritten.
    host_at: Option<usize>,
}

impl Finding {
    /// A frozen reference (or a template naming a frozen host) left as it was.
    pub fn frozen_left(&self) -> bool {
        self.status == Status::Frozen
            || (self.status == Status::Unresolved && self.replacement.is_some())
    }
}

/// A file that was read without a grammar, or not at all, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub file: String,
    pub reason: String,
}

/// The result of one scan.
#[derive(Debug, Default)]
pub struct Scan {
    pub findings: Vec<Finding>,
    pub skipped: Vec<Skipped>,
    pub files: usize,
}

impl Scan {
    /// Frozen references left in place: `scan` exits 1 when there are any.
    pub fn frozen_left(&self) -> usize {
        self.findings.iter().filter(|f| f.frozen_left()).count()
    }
}

/// Scans `paths` (files or directories); with `fix`, rewrites the frozen hosts
/// of every file that can be rewritten safely.
pub fn scan(paths: &[PathBuf], frozen: &Frozen, fix: bool) -> anyhow::Result<Scan> {
    let mut result = Scan::default();
    for file in walk::files(paths)? {
        result.files += 1;
        for source in walk::sources(&file, &mut result.skipped) {
            scan_source(source, frozen, fix, &mut result)?;
        }
    }
    Ok(result)
}

/// A text to scan, and whether (and where) it may be rewritten.
#[derive(Debug)]
pub(crate) struct Source {
    name: String,
    text: String,
    kind: walk::Kind,
    /// The file to rewrite, or why this text must not be rewritten.
    target: Result<PathBuf, String>,
}

fn scan_source(source: Source, frozen: &Frozen, fix: bool, out: &mut Scan) -> anyhow::Result<()> {
    let (hits, target) = read(&source, &mut out.skipped);
    let mut findings: Vec<Finding> = hits
        .into_iter()
        .map(|hit| judge(&source.name, hit, frozen))
        .collect();
    match target {
        Ok(path) if fix => fix::rewrite(&path, &source.text, &mut findings)?,
        Ok(_) => {}
        Err(why) => {
            for finding in findings.iter_mut().filter(|f| f.status == Status::Frozen) {
                finding.note = Some(join_note(finding.note.take(), &why));
            }
        }
    }
    out.findings.extend(findings);
    Ok(())
}

/// Runs the reader for the source's kind. A YAML file with template
/// expressions, or one that does not parse, is read line by line instead and
/// must not be rewritten.
fn read(source: &Source, skipped: &mut Vec<Skipped>) -> (Vec<Hit>, Result<PathBuf, String>) {
    let target = source.target.clone();
    match &source.kind {
        walk::Kind::Dockerfile => (dockerfile::hits(&source.text), target),
        walk::Kind::Yaml(_) if source.text.contains("{{") => (
            text::hits(&source.text),
            Err("not rewritten: Helm template".to_owned()),
        ),
        walk::Kind::Yaml(context) => match yaml::hits(&source.text, context) {
            Ok(hits) => (hits, target),
            Err(e) => {
                skipped.push(Skipped {
                    file: source.name.clone(),
                    reason: format!("not YAML ({e}); read line by line, not rewritten"),
                });
                (
                    text::hits(&source.text),
                    Err("not rewritten: not valid YAML".to_owned()),
                )
            }
        },
    }
}

fn judge(file: &str, hit: Hit, frozen: &Frozen) -> Finding {
    let mut finding = Finding {
        file: file.to_owned(),
        line: hit.line,
        written: hit.text.clone(),
        reference: None,
        status: Status::Unresolved,
        replacement: None,
        note: hit.note,
        host_at: None,
    };
    if !hit.resolved {
        if let Some(host) = frozen.mentioned_in(&hit.text) {
            let replacement = frozen.replacement(host).unwrap_or_default();
            finding.replacement = Some(hit.text.replace(host, replacement));
            finding.note = Some(join_note(finding.note, &format!("names frozen {host}")));
        }
        return finding;
    }
    match hit.text.parse::<ImageRef>() {
        Ok(reference) => {
            let replacement = reference
                .host_written
                .then(|| frozen.replacement(&reference.host))
                .flatten();
            if let Some(replacement) = replacement {
                finding.status = Status::Frozen;
                finding.replacement = Some(format!(
                    "{replacement}{}",
                    &hit.text[reference.host.len()..]
                ));
                finding.host_at = hit.host_at;
            } else {
                finding.status = Status::Ok;
            }
            finding.reference = Some(reference);
        }
        Err(e) if looks_templated(&hit.text) => {
            finding.note = Some(join_note(finding.note, &e.to_string()));
        }
        Err(e) => finding.status = Status::Invalid(e.to_string()),
    }
    finding
}

/// Shell or template variables: a reference only the tool that expands them knows.
fn looks_templated(text: &str) -> bool {
    text.contains("{{") || text.contains('$')
}

fn join_note(note: Option<String>, more: &str) -> String {
    match note {
        Some(note) => format!("{note}; {more}"),
        None => more.to_owned(),
    }
}

/// A path as the user should see it.
fn display(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests;
