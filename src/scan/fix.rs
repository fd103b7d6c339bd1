//! `scan --fix`: replaces the frozen host of each reference in place, and no
//! other byte of the file. A host is replaced only where the reader recorded
//! its exact byte offset and the bytes there still spell it; anything else
//! stays frozen with a note. The new file is written beside the old one and
//! renamed over it (keeping its permissions), so a crash leaves one or the
//! other, never half of each.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;

use super::{Finding, Status, display, join_note};

/// Rewrites `path` (whose contents are `text`) for the frozen findings in it,
/// marking each one `Fixed`, or noting why it was left.
pub(super) fn rewrite(path: &Path, text: &str, findings: &mut [Finding]) -> anyhow::Result<()> {
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for finding in findings.iter_mut().filter(|f| f.status == Status::Frozen) {
        match edit_for(text, finding) {
            Some(edit) => {
                if !edits.iter().any(|e| e.0 == edit.0) {
                    edits.push(edit);
                }
                finding.status = Status::Fixed;
            }
            None => {
                let note = "not rewritten: the host is not written literally here";
                finding.note = Some(join_note(finding.note.take(), note));
            }
        }
    }
    if edits.is_empty() {
        return Ok(());
    }
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(text.len() + 64 * edits.len());
    let mut copied = 0;
    for (at, len, host) in edits {
        out.push_str(&text[copied..at]);
        out.push_str(&host);
        copied = at + len;
    }
    out.push_str(&text[copied..]);
    replace_file(path, out.as_bytes())
}

/// `(offset, old host length, new host)` when the file holds the host at the
/// recorded offset.
fn edit_for(text: &str, finding: &Finding) -> Option<(usize, usize, String)> {
    let at = finding.host_at?;
    let host = &finding.reference.as_ref()?.host;
    if text.get(at..at + host.len())? != host.as_str() {
        return None;
    }
    let tail = finding.written.get(host.len()..)?;
    let new_host = finding.replacement.as_ref()?.strip_suffix(tail)?;
    Some((at, host.len(), new_host.to_owned()))
}

fn replace_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path.file_name().context("a file has a name")?;
    let temp = path.with_file_name(format!(".{}.regcache-scan", name.to_string_lossy()));
    let permissions = std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", display(path)))?
        .permissions();
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.set_permissions(permissions)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        anyhow::anyhow!("cannot rewrite {}: {e}", display(path))
    })
}
