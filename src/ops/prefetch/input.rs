//! The reference lists `prefetch` reads: one reference per line (`scan --list`
//! output), or the kubectl one-liner's `sort | uniq -c` output with a leading
//! count; blank lines and `#` comments are skipped. Duplicates (after
//! normalization) are read once. Parsing only.

use crate::oci::ImageRef;

/// A line that is not a reference, with its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub text: String,
    pub reason: String,
}

/// The unique references in `text`, in first-seen order, and the bad lines.
pub fn references(text: &str) -> (Vec<ImageRef>, Vec<BadLine>) {
    let mut seen = std::collections::HashSet::new();
    let mut references = Vec::new();
    let mut bad = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let Some(word) = reference_word(line) else {
            continue;
        };
        match word.parse::<ImageRef>() {
            Ok(reference) => {
                if seen.insert(reference.normalized()) {
                    references.push(reference);
                }
            }
            Err(e) => bad.push(BadLine {
                line: index + 1,
                text: line.trim().to_owned(),
                reason: e.to_string(),
            }),
        }
    }
    (references, bad)
}

/// The reference on a line: the last word, after an optional `uniq -c` count.
fn reference_word(line: &str) -> Option<&str> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut words = line.split_whitespace();
    let first = words.next()?;
    match words.next() {
        Some(second) if first.bytes().all(|b| b.is_ascii_digit()) => Some(second),
        Some(_) => Some(line),
        None => Some(first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_comments_and_duplicates() {
        let text = "\
# kubectl get pods -A -o jsonpath='{..image}' | tr -s '[[:space:]]' '\\n' | sort | uniq -c
      3 registry.k8s.io/pause:3.9
      1 nginx:1.25

docker.io/library/nginx:1.25
k8s.gcr.io/etcd:3.5.1-0
not a reference
UPPER/case
";
        let (refs, bad) = references(text);
        let normalized: Vec<String> = refs.iter().map(ImageRef::normalized).collect();
        assert_eq!(
            normalized,
            [
                "registry.k8s.io/pause:3.9",
                "docker.io/library/nginx:1.25",
                "k8s.gcr.io/etcd:3.5.1-0"
            ]
        );
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].line, 7);
        assert_eq!(bad[1].line, 8);
    }
}
