//! Parsing `WWW-Authenticate` challenges (RFC 7235 §4.1, RFC 6750 §3) into
//! schemes and parameters. Pure string work: no I/O, and never a panic on
//! whatever bytes an upstream sends; what cannot be parsed is skipped.
//!
//! Registries send one challenge per header line (distribution, Docker Hub,
//! Artifact Registry), but the grammar allows several per line
//! (`Bearer realm="a", Basic realm="b"`), so both are handled.

/// An authentication scheme, compared case-insensitively as the RFC requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scheme {
    Bearer,
    Basic,
    Other(String),
}

impl Scheme {
    fn parse(token: &str) -> Self {
        if token.eq_ignore_ascii_case("bearer") {
            Self::Bearer
        } else if token.eq_ignore_ascii_case("basic") {
            Self::Basic
        } else {
            Self::Other(token.to_ascii_lowercase())
        }
    }
}

/// One challenge: a scheme and its `name=value` parameters (names lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub(crate) scheme: Scheme,
    params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (lower-case), if present.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every challenge in every given header line, in order.
pub(crate) fn parse_all<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    lines.into_iter().flat_map(parse_line).collect()
}

/// The challenges in one header line.
pub(crate) fn parse_line(line: &str) -> Vec<Challenge> {
    let mut cursor = Cursor {
        bytes: line.as_bytes(),
        pos: 0,
    };
    let mut challenges = Vec::new();
    loop {
        cursor.skip(|b| b == b',' || is_space(b));
        if cursor.at_end() {
            break;
        }
        let scheme = cursor.token();
        if scheme.is_empty() {
            // Not a challenge start: give up on this line rather than guess.
            break;
        }
        let mut challenge = Challenge {
            scheme: Scheme::parse(&scheme),
            params: Vec::new(),
        };
        let complete = read_params(&mut cursor, &mut challenge.params);
        challenges.push(challenge);
        if !complete {
            break;
        }
    }
    challenges
}

/// Reads `name=value` pairs after a scheme until the next scheme or the end.
/// Returns false when the rest of the line is unparsable.
fn read_params(cursor: &mut Cursor<'_>, params: &mut Vec<(String, String)>) -> bool {
    loop {
        cursor.skip(|b| b == b',' || is_space(b));
        let start = cursor.pos;
        let name = cursor.token();
        if name.is_empty() {
            // The end of the line, or a stray character that ends parsing.
            return cursor.at_end();
        }
        cursor.skip(is_space);
        if cursor.peek() != Some(b'=') {
            // A bare token is the next challenge's scheme (or a token68 value,
            // which no registry scheme uses): leave it for the caller.
            cursor.pos = start;
            return true;
        }
        cursor.pos += 1;
        cursor.skip(is_space);
        let value = if cursor.peek() == Some(b'"') {
            match cursor.quoted() {
                Some(value) => value,
                None => return false,
            }
        } else {
            // RFC 7235 says token, but unquoted URLs (with ':' and '/') occur in
            // the wild; a value runs to the next comma or space.
            cursor.bare_value()
        };
        params.push((name.to_ascii_lowercase(), value));
    }
}

/// A position in a header value. Only ASCII delimiters are ever matched, so
/// every slice boundary falls on a UTF-8 character boundary.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip(&mut self, pred: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&pred) {
            self.pos += 1;
        }
    }

    /// A run of RFC 7230 `tchar`s (possibly empty).
    fn token(&mut self) -> String {
        let start = self.pos;
        self.skip(is_tchar);
        String::from_utf8_lossy(&self.bytes[start..self.pos]).into_owned()
    }

    /// An unquoted parameter value: everything up to a comma or space.
    fn bare_value(&mut self) -> String {
        let start = self.pos;
        self.skip(|b| b != b',' && !is_space(b));
        String::from_utf8_lossy(&self.bytes[start..self.pos]).into_owned()
    }

    /// A quoted-string starting at the opening quote, with `\x` escapes
    /// undone; None if the closing quote is missing.
    fn quoted(&mut self) -> Option<String> {
        let mut out = Vec::new();
        let mut i = self.pos + 1;
        while let Some(&b) = self.bytes.get(i) {
            match b {
                b'"' => {
                    self.pos = i + 1;
                    return Some(String::from_utf8_lossy(&out).into_owned());
                }
                b'\\' => {
                    out.push(*self.bytes.get(i + 1)?);
                    i += 2;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        None
    }
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(c: &Challenge) -> Vec<(&str, &str)> {
        c.params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn docker_hub_bearer_challenge() {
        let c = parse_line(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, Scheme::Bearer);
        assert_eq!(
            params(&c[0]),
            [
                ("realm", "https://auth.docker.io/token"),
                ("service", "registry.docker.io"),
                ("scope", "repository:library/alpine:pull"),
            ]
        );
    }

    #[test]
    fn scheme_and_names_are_case_insensitive_and_values_may_be_unquoted() {
        let c = parse_line("bEaReR Realm=https://r.example/token , SERVICE=svc");
        assert_eq!(c[0].scheme, Scheme::Bearer);
        assert_eq!(c[0].param("realm"), Some("https://r.example/token"));
        assert_eq!(c[0].param("service"), Some("svc"));
    }

    #[test]
    fn commas_and_escapes_inside_quotes() {
        let c = parse_line(
            r#"Bearer realm="https://r/t",scope="repository:a:pull,push repository:b:pull",error="say \"hi\"""#,
        );
        assert_eq!(
            c[0].param("scope"),
            Some("repository:a:pull,push repository:b:pull")
        );
        assert_eq!(c[0].param("error"), Some(r#"say "hi""#));
    }

    #[test]
    fn realm_only_challenge_has_no_service() {
        let c = parse_line(r#"Bearer realm="https://us-central1-docker.pkg.dev/v2/token""#);
        assert_eq!(
            c[0].param("realm"),
            Some("https://us-central1-docker.pkg.dev/v2/token")
        );
        assert_eq!(c[0].param("service"), None);
    }

    #[test]
    fn several_challenges_in_one_line_and_across_lines() {
        let c = parse_all([
            r#"Basic realm="registry", Bearer realm="https://r/t", service="s""#,
            "Negotiate",
            r#"Basic realm="x""#,
        ]);
        let schemes: Vec<_> = c.iter().map(|c| c.scheme.clone()).collect();
        assert_eq!(
            schemes,
            [
                Scheme::Basic,
                Scheme::Bearer,
                Scheme::Other("negotiate".into()),
                Scheme::Basic
            ]
        );
        assert_eq!(c[0].param("realm"), Some("registry"));
        assert_eq!(c[1].param("service"), Some("s"));
    }

    #[test]
    fn garbage_never_panics() {
        let long = "a=".repeat(10_000);
        for input in [
            "",
            ",",
            " , ,, ",
            "\"",
            "=",
            "==",
            "Bearer",
            "Bearer ,",
            "Bearer realm",
            "Bearer realm=",
            "Bearer realm=\"unterminated",
            "Bearer realm=\"x\\",
            "Bearer =x",
            "Bearer realm=\"x\"garbage",
            "Basic dXNlcjpwYXNz==",
            "Bearer réalm=\"ü\"",
            "\u{0}\u{7f}\u{ff}",
            long.as_str(),
        ] {
            let _ = parse_line(input);
        }
        assert!(parse_line("\"").is_empty());
        assert_eq!(
            parse_line("Bearer realm=\"unterminated")[0].param("realm"),
            None
        );
    }
}
