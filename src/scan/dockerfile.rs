//! The Dockerfile reader of `scan`: `FROM` (with `--platform` and `AS`,
//! multi-stage: a later `FROM builder` names a stage, not an image) and
//! `COPY --from=<image>`, with `$VAR`/`${VAR}` expanded from the defaults of
//! `ARG` lines. A reference built from an `ARG` default has its host where the
//! default is written; one naming an unknown variable is unresolved.
//! It only reads.

use std::collections::HashMap;

use super::Hit;

/// An `ARG` default: its value and where the value is written.
#[derive(Debug, Clone)]
struct Arg {
    value: String,
    line: usize,
    at: usize,
}

pub(super) fn hits(text: &str) -> Vec<Hit> {
    let mut args: HashMap<String, Arg> = HashMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut hits = Vec::new();
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let number = index + 1;
        let words = words(line);
        match words
            .first()
            .map(|(_, w)| w.to_ascii_uppercase())
            .as_deref()
        {
            Some("ARG") => {
                for (at, word) in &words[1..] {
                    if let Some(arg) = parse_arg(word, offset + at, number) {
                        args.insert(arg.0, arg.1);
                    }
                }
            }
            Some("FROM") => {
                let operands: Vec<_> = words[1..]
                    .iter()
                    .filter(|(_, w)| !w.starts_with("--"))
                    .collect();
                if let Some((at, image)) = operands.first() {
                    let image_at = offset + at;
                    hits.extend(image_hit(image, image_at, number, &args, &stages));
                }
                if let [_, (_, as_kw), (_, stage)] = operands.as_slice() {
                    if as_kw.eq_ignore_ascii_case("as") {
                        stages.push(stage.to_ascii_lowercase());
                    }
                }
            }
            Some("COPY") => {
                for (at, word) in &words[1..] {
                    if let Some(image) = word.strip_prefix("--from=") {
                        let image_at = offset + at + "--from=".len();
                        hits.extend(image_hit(image, image_at, number, &args, &stages));
                    }
                }
            }
            _ => {}
        }
        offset += line.len();
    }
    hits
}

/// Whitespace-separated words of a line with their byte offsets; a comment
/// line has none.
fn words(line: &str) -> Vec<(usize, &str)> {
    if line.trim_start().starts_with('#') {
        return Vec::new();
    }
    let mut words = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                words.push((s, &line[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        words.push((s, &line[s..]));
    }
    words
}

/// `NAME=value` or `NAME="value"` (where `at` is the word's offset).
fn parse_arg(word: &str, at: usize, line: usize) -> Option<(String, Arg)> {
    let (name, value) = word.split_once('=')?;
    let value_at = at + name.len() + 1;
    let (value, value_at) = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(unquoted) => (unquoted, value_at + 1),
        None => (value, value_at),
    };
    Some((
        name.to_owned(),
        Arg {
            value: value.to_owned(),
            line,
            at: value_at,
        },
    ))
}

/// The image a `FROM` or `COPY --from` names, unless it is a stage, `scratch`
/// or a stage number.
fn image_hit(
    word: &str,
    at: usize,
    line: usize,
    args: &HashMap<String, Arg>,
    stages: &[String],
) -> Option<Hit> {
    let lower = word.to_ascii_lowercase();
    if lower == "scratch" || stages.contains(&lower) || word.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !word.contains('$') {
        return Some(Hit::reference(line, word, Some(at), None));
    }
    match expand(word, args) {
        Ok((text, leading)) => {
            // The host is in the ARG default only if the reference starts with
            // the variable; anywhere else its bytes are not known for certain.
            let host_at = leading.as_ref().map(|arg| arg.at);
            let note = leading.map(|arg| format!("host from the ARG default on line {}", arg.line));
            Some(Hit::reference(line, &text, host_at, note))
        }
        Err(name) => Some(Hit::unresolved(
            line,
            word,
            Some(format!("${name} has no ARG default")),
        )),
    }
}

/// `word` with every variable replaced by its ARG default, and the ARG the
/// word starts with, if it does; `Err(name)` for a variable without a default.
fn expand(word: &str, args: &HashMap<String, Arg>) -> Result<(String, Option<Arg>), String> {
    let mut out = String::new();
    let mut leading = None;
    let mut rest = word;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').ok_or_else(|| after.to_owned())?;
                (&braced[..end], end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        // `${NAME:-default}` and friends: the name is what counts.
        let name = name.split(':').next().unwrap_or(name);
        let arg = args.get(name).ok_or_else(|| name.to_owned())?;
        if out.is_empty() && dollar == 0 {
            leading = Some(arg.clone());
        }
        out.push_str(&arg.value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok((out, leading))
}
