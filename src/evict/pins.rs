//! Pins: configured patterns whose content eviction never deletes.
//!
//! Grammar (`storage.pins` in `config.toml`): `<upstream>/<repo glob>[:<tag glob>]`.
//! `<upstream>` is a configured upstream's name or alias (`registry.k8s.io`);
//! in a glob `*` matches any run of characters (including `/`) and `?` one
//! character; everything else matches itself.
//!
//! - Without a tag (`registry.k8s.io/coredns/*`): every piece of content linked
//!   to a matching repository (everything pulled for it, or confirmed in it).
//! - With a tag (`registry.k8s.io/pause:3.*`): the manifests the matching tags
//!   point at, and what those manifests reference (an index's child manifests,
//!   their config and layer blobs), read from the stored manifests.
//!
//! This module only computes the pinned set from the index and the stored
//! manifests; it never deletes or writes anything.

use std::collections::HashSet;
use std::fmt;

use crate::index::Index;
use crate::oci::{Digest, MAX_MANIFEST_BYTES};
use crate::store::Store;

/// One pin pattern, its upstream resolved to the upstream's configured name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The configured upstream name (an alias in the pattern is resolved).
    pub upstream: String,
    pub repo: String,
    pub tag: Option<String>,
}

impl Pin {
    /// Parses `<upstream>/<repo glob>[:<tag glob>]`; `resolve` maps the upstream
    /// part (name or alias) to the configured name, `None` if it names none.
    pub fn parse(text: &str, resolve: impl Fn(&str) -> Option<String>) -> Result<Pin, String> {
        let Some((upstream, rest)) = text.split_once('/') else {
            return Err(format!(
                "{text:?} is not <upstream>/<repository>[:<tag>] (e.g. registry.k8s.io/pause:*)"
            ));
        };
        let Some(upstream) = resolve(upstream) else {
            return Err(format!("{upstream:?} names no configured upstream"));
        };
        // Repository names never contain ':', so the last one starts the tag.
        let (repo, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) => (repo, Some(tag)),
            None => (rest, None),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '*' | '?')
                })
        };
        if !valid(repo) {
            return Err(format!(
                "{text:?}: the repository pattern {repo:?} is empty or has characters no repository name has"
            ));
        }
        if tag.is_some_and(|t| !valid(t) || t.contains('/')) {
            return Err(format!(
                "{text:?}: the tag pattern is empty or has characters no tag has"
            ));
        }
        Ok(Pin {
            upstream,
            repo: repo.to_owned(),
            tag: tag.map(str::to_owned),
        })
    }

    fn matches_repo(&self, upstream: &str, repo: &str) -> bool {
        self.upstream == upstream && glob(&self.repo, repo)
    }

    /// Whether this pattern selects `tag` of `repo` of `upstream` (a pattern
    /// without a tag selects every tag of the repositories it matches).
    pub fn selects_tag(&self, upstream: &str, repo: &str, tag: &str) -> bool {
        self.matches_repo(upstream, repo) && self.tag.as_deref().is_none_or(|g| glob(g, tag))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.upstream, self.repo)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

/// The configured pins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pins(Vec<Pin>);

impl Pins {
    pub fn new(pins: Vec<Pin>) -> Self {
        Self(pins)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pin> {
        self.0.iter()
    }

    /// Every digest the pins cover, as the index and store know them now.
    pub async fn pinned_digests(
        &self,
        index: &Index,
        store: &Store,
    ) -> Result<HashSet<Digest>, super::Error> {
        let mut pinned = HashSet::new();
        if self.0.is_empty() {
            return Ok(pinned);
        }
        let (repo_pins, tag_pins): (Vec<&Pin>, Vec<&Pin>) =
            self.0.iter().partition(|p| p.tag.is_none());
        if !repo_pins.is_empty() {
            for (upstream, repo) in index.linked_repos().await? {
                if repo_pins.iter().any(|p| p.matches_repo(&upstream, &repo)) {
                    pinned.extend(index.repo_digests(&upstream, &repo).await?);
                }
            }
        }
        if !tag_pins.is_empty() {
            let mut manifests = Vec::new();
            for t in index.all_tags().await? {
                let hit = tag_pins.iter().any(|p| {
                    p.matches_repo(&t.upstream, &t.repo)
                        && p.tag.as_deref().is_some_and(|g| glob(g, &t.tag))
                });
                if hit {
                    manifests.push(t.digest);
                }
            }
            // Follow references: index → manifests → config and layers. Depth is
            // bounded by the set: a digest is expanded once.
            while let Some(digest) = manifests.pop() {
                if !pinned.insert(digest.clone()) {
                    continue;
                }
                if let Some(bytes) = store
                    .read_small(&digest, MAX_MANIFEST_BYTES)
                    .await
                    .ok()
                    .flatten()
                {
                    manifests.extend(references(&bytes));
                }
            }
        }
        Ok(pinned)
    }
}

/// The digests a manifest references: an index's `manifests`, an image's
/// `config` and `layers`, an artifact's `blobs`, a schema 1 `fsLayers`. Bytes
/// that are not such JSON (a layer) reference nothing.
pub(crate) fn references(bytes: &[u8]) -> Vec<Digest> {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut push = |v: Option<&serde_json::Value>| {
        if let Some(d) = v.and_then(|v| v.as_str()).and_then(|s| s.parse().ok()) {
            out.push(d);
        }
    };
    push(json.pointer("/config/digest"));
    for list in ["manifests", "layers", "blobs"] {
        for item in json
            .get(list)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            push(item.get("digest"));
        }
    }
    for item in json
        .get("fsLayers")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        push(item.get("blobSum"));
    }
    out
}

/// Whether `text` matches `pattern`, where `*` is any run of characters and `?`
/// any one character.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently matched to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` swallow one more character and retry.
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

    fn resolve(name: &str) -> Option<String> {
        match name {
            "registry.k8s.io" | "k8s.gcr.io" => Some("registry.k8s.io".into()),
            _ => None,
        }
    }

    #[test]
    fn glob_matches_stars_and_question_marks() {
        assert!(glob("*", ""));
        assert!(glob("*", "coredns/coredns"));
        assert!(glob("coredns/*", "coredns/coredns"));
        assert!(!glob("coredns/*", "coredns"));
        assert!(glob("pause", "pause"));
        assert!(!glob("pause", "pause2"));
        assert!(glob("3.?", "3.9"));
        assert!(!glob("3.?", "3.10"));
        assert!(glob("v*-rc*", "v1.2-rc3"));
        assert!(!glob("v*-rc*", "v1.2"));
        assert!(glob("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn a_pattern_selects_tags_of_its_upstream_and_repositories() {
        let tagged = Pin::parse("k8s.gcr.io/coredns/*:v1.*", resolve).unwrap();
        assert!(tagged.selects_tag("registry.k8s.io", "coredns/coredns", "v1.11.1"));
        assert!(!tagged.selects_tag("registry.k8s.io", "coredns/coredns", "v2.0"));
        assert!(!tagged.selects_tag("registry.k8s.io", "pause", "v1.0"));
        assert!(!tagged.selects_tag("docker.io", "coredns/coredns", "v1.0"));
        let every_tag = Pin::parse("registry.k8s.io/pause", resolve).unwrap();
        assert!(every_tag.selects_tag("registry.k8s.io", "pause", "anything"));
    }

    #[test]
    fn pins_parse_with_optional_tags_and_resolve_aliases() {
        let pin = Pin::parse("k8s.gcr.io/pause:*", resolve).unwrap();
        assert_eq!(
            pin,
            Pin {
                upstream: "registry.k8s.io".into(),
                repo: "pause".into(),
                tag: Some("*".into())
            }
        );
        assert_eq!(pin.to_string(), "registry.k8s.io/pause:*");
        let pin = Pin::parse("registry.k8s.io/coredns/*", resolve).unwrap();
        assert_eq!((pin.repo.as_str(), pin.tag), ("coredns/*", None));
        for bad in [
            "pause",
            "docker.io/library/alpine",
            "registry.k8s.io/",
            "registry.k8s.io/pause:",
            "registry.k8s.io/Pause Me",
        ] {
            assert!(Pin::parse(bad, resolve).is_err(), "{bad}");
        }
    }

    #[test]
    fn references_of_images_indexes_and_schema1() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let image = format!(r#"{{"config":{{"digest":"{a}"}},"layers":[{{"digest":"{b}"}}]}}"#);
        assert_eq!(references(image.as_bytes()), [a.clone(), b.clone()]);
        let index = format!(r#"{{"manifests":[{{"digest":"{a}"}},{{"digest":"bogus"}}]}}"#);
        assert_eq!(references(index.as_bytes()), [a]);
        let schema1 = format!(r#"{{"fsLayers":[{{"blobSum":"{b}"}}]}}"#);
        assert_eq!(references(schema1.as_bytes()), [b]);
        assert!(references(b"\x1f\x8b not json").is_empty());
    }
}
