//! Which tagged images `export` takes: patterns in the pin syntax
//! (`<upstream>/<repo glob>[:<tag glob>]`, parsed by `evict::Pin::parse`),
//! none meaning every tag. Matching only.

use crate::config::Config;
use crate::evict::Pin;
use crate::index::TagLink;

/// Parses `patterns`, resolving upstream names and aliases as pins do.
pub(super) fn parse(patterns: &[String], config: &Config) -> anyhow::Result<Vec<Pin>> {
    let resolve = |host: &str| {
        config
            .upstreams
            .iter()
            .find(|u| u.answers_to(host))
            .map(|u| u.name.clone())
    };
    patterns
        .iter()
        .map(|p| Pin::parse(p, resolve).map_err(|e| anyhow::anyhow!("pattern {e}")))
        .collect()
}

/// Whether `tag` is selected by `patterns` (all tags when there are none).
pub(super) fn selects(patterns: &[Pin], tag: &TagLink) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| {
            p.upstream == tag.upstream
                && glob(&p.repo, &tag.repo)
                && p.tag.as_deref().is_none_or(|g| glob(g, &tag.tag))
        })
}

/// `*` matches any run of characters (including `/`), `?` one character, as in
/// `evict::pins` (whose matcher is private to the module that evicts).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_pins() {
        assert!(glob("pause", "pause"));
        assert!(glob("coredns/*", "coredns/coredns"));
        assert!(glob("*", "a/b/c"));
        assert!(glob("3.?", "3.9"));
        assert!(!glob("3.?", "3.10"));
        assert!(!glob("pause", "pause2"));
        assert!(glob("a*b*c", "aXbYc"));
    }
}
