//! Repository names, checked against the distribution-spec grammar.

use std::fmt;
use std::str::FromStr;

/// Clients cap `host[:port]/name` at 255 characters; a name alone can be no longer.
const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid repository name: {0}")]
pub struct NameError(&'static str);

/// A repository name:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

/// Docker Hub keeps official images under `library/`: a one-component name
/// (`alpine`) is `library/alpine` there, as every Docker client assumes. The
/// one place this rule lives (requests, pins and image references use it).
pub fn docker_hub_name(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains('/') {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(format!("library/{name}"))
    }
}

impl RepoName {
    /// This name as Docker Hub names it (see [`docker_hub_name`]).
    pub fn in_docker_hub(self) -> RepoName {
        match docker_hub_name(&self.0) {
            std::borrow::Cow::Borrowed(_) => self,
            std::borrow::Cow::Owned(name) => RepoName(name),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path components (`a/b/c` → `a`, `b`, `c`).
    pub fn components(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError("empty"));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError("longer than 255 characters"));
        }
        for component in s.split('/') {
            check_component(component)?;
        }
        Ok(Self(s.to_owned()))
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: alphanumeric runs joined by exactly one
/// `.`, one or two `_`, or any number of `-`.
fn check_component(component: &str) -> Result<(), NameError> {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() {
        return Err(NameError("empty path component"));
    }
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(NameError(
            "components must start and end with a lower-case letter or digit",
        ));
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let valid = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-');
        if !valid {
            return Err(NameError(
                "only '.', '_', '__' or dashes may separate letters and digits",
            ));
        }
    }
    Ok(())
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_names() {
        for ok in [
            "pause",
            "library/alpine",
            "k8s-artifacts-prod/images/pause",
            "a.b_c__d---e/f0",
            "coredns/coredns",
            "x",
        ] {
            assert_eq!(ok.parse::<RepoName>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_invalid_names() {
        let long = "a".repeat(256);
        for bad in [
            "",
            "Upper",
            "a//b",
            "/a",
            "a/",
            "..",
            "a/../b",
            "a/./b",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "a b",
            "a%2fb",
            "a:b",
            long.as_str(),
        ] {
            assert!(
                bad.parse::<RepoName>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
