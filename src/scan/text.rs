//! The line reader of `scan`, for files no grammar can read confidently: Helm
//! templates (`{{ ... }}` makes them not YAML until rendered) and YAML that
//! does not parse. It finds `image:` lines; a value with a template
//! expression is unresolved (reported as written), a literal one is a
//! reference. What it finds is never rewritten.

use super::Hit;

pub(super) fn hits(text: &str) -> Vec<Hit> {
    text.lines()
        .enumerate()
        .filter_map(|(index, line)| image_value(line).map(|value| (index + 1, value)))
        .map(|(line, value)| {
            if value.contains("{{") {
                Hit::unresolved(line, value, Some("template expression".to_owned()))
            } else {
                Hit::reference(line, value, None, None)
            }
        })
        .collect()
}

/// The value of an `image:` key on this line (`- image: x`, `"image": "x",`),
/// without quotes, a trailing comma or a comment.
fn image_value(line: &str) -> Option<&str> {
    let rest = line.trim_start().trim_start_matches("- ").trim_start();
    let rest = ["image:", "\"image\":", "'image':"]
        .iter()
        .find_map(|key| rest.strip_prefix(key))?;
    let mut value = rest.trim();
    if !value.contains("{{") {
        // In a template a '#' can sit inside an expression; elsewhere it starts a comment.
        if let Some((before, _)) = value.split_once(" #") {
            value = before.trim_end();
        }
    }
    let value = value.trim_end_matches(',').trim();
    let value = strip_quotes(value);
    (!value.is_empty()).then_some(value)
}

fn strip_quotes(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}
