//! Pins: patterns whose content eviction never deletes. They come from the
//! configuration (`storage.pins`) and from the index (runtime pins: `regcache
//! pin add`, `prefetch --pin`); an eviction pass reads the index's anew each
//! time ([`Pins::with_runtime`]), so nothing on the request path looks at pins.
//!
//! Grammar: `<upstream>/<repo glob>[:<tag glob>]` or `<upstream>/<repo>@<digest>`.
//! `<upstream>` is a configured upstream's name or alias (`registry.k8s.io`);
//! in a glob `*` matches any run of characters (including `/`) and `?` one
//! character; everything else matches itself.
//!
//! - Without a tag (`registry.k8s.io/coredns/*`): every piece of content linked
//!   to a matching repository (everything pulled for it, or confirmed in it).
//! - With a tag (`registry.k8s.io/pause:3.*`): the manifests the matching tags
//!   point at, and what those manifests reference (an index's child manifests,
//!   their config and layer blobs), read from the stored manifests.
//! - With a digest (`registry.k8s.io/pause@sha256:…`): that manifest and what
//!   it references, the same way.
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
    /// `@<digest>`: exactly this manifest (then `tag` is `None`).
    pub digest: Option<Digest>,
}

impl Pin {
    /// Parses `<upstream>/<repo glob>[:<tag glob>]` or `<upstream>/<repo>@<digest>`;
    /// `resolve` maps the upstream part (name or alias) to the configured
    /// name, `None` if it names none.
    pub fn parse(text: &str, resolve: impl Fn(&str) -> Option<String>) -> Result<Pin, String> {
        let Some((upstream, rest)) = text.split_once('/') else {
            return Err(format!(
                "{text:?} is not <upstream>/<repository>[:<tag>|@<digest>] (e.g. registry.k8s.io/pause:*)"
            ));
        };
        let Some(upstream) = resolve(upstream) else {
            return Err(format!("{upstream:?} names no configured upstream"));
        };
        let (rest, digest) = match rest.split_once('@') {
            Some((repo, digest)) => {
                let digest = digest
                    .parse::<Digest>()
                    .map_err(|e| format!("{text:?}: {e}"))?;
                (repo, Some(digest))
            }
            None => (rest, None),
        };
        // Repository names never contain ':', so the last one starts the tag.
        let (repo, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) => (repo, Some(tag)),
            None => (rest, None),
        };
        if tag.is_some() && digest.is_some() {
            return Err(format!("{text:?}: a pin names a tag or a digest, not both"));
        }
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
            digest,
        })
    }

    /// Whether this pin covers a whole repository (no tag, no digest).
    fn is_repo_wide(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    fn matches_repo(&self, upstream: &str, repo: &str) -> bool {
        self.upstream == upstream && glob(&self.repo, repo)
    }

    /// Whether this pattern selects `tag` of `repo` of `upstream` (a pattern
    /// without a tag selects every tag of the repositories it matches, one
    /// with a digest none).
    pub fn selects_tag(&self, upstream: &str, repo: &str, tag: &str) -> bool {
        self.digest.is_none()
            && self.matches_repo(upstream, repo)
            && self.tag.as_deref().is_none_or(|g| glob(g, tag))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.upstream, self.repo)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
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

    /// These pins (the configured ones) and the runtime pins the index holds
    /// now. A stored pattern is already canonical (its upstream a configured
    /// name); one that no longer parses is logged and skipped.
    pub async fn with_runtime(&self, index: &Index) -> Result<Pins, super::Error> {
        let mut pins = self.0.clone();
        for row in index.pins().await? {
            match Pin::parse(&row.pattern, |upstream| Some(upstream.to_owned())) {
                Ok(pin) => pins.push(pin),
                Err(e) => {
                    tracing::warn!(pattern = %row.pattern, error = %e, "ignoring a stored pin")
                }
            }
        }
        Ok(Pins(pins))
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
        let (repo_pins, exact_pins): (Vec<&Pin>, Vec<&Pin>) =
            self.0.iter().partition(|p| p.is_repo_wide());
        if !repo_pins.is_empty() {
            for (upstream, repo) in index.linked_repos().await? {
                if repo_pins.iter().any(|p| p.matches_repo(&upstream, &repo)) {
                    pinned.extend(index.repo_digests(&upstream, &repo).await?);
                }
            }
        }
        if !exact_pins.is_empty() {
            let mut manifests: Vec<Digest> =
                exact_pins.iter().filter_map(|p| p.digest.clone()).collect();
            if exact_pins.iter().any(|p| p.tag.is_some()) {
                for t in index.all_tags().await? {
                    let hit = exact_pins.iter().any(|p| {
                        p.matches_repo(&t.upstream, &t.repo)
                            && p.tag.as_deref().is_some_and(|g| glob(g, &t.tag))
                    });
                    if hit {
                        manifests.push(t.digest);
                    }
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
                tag: Some("*".into()),
                digest: None,
            }
        );
        assert_eq!(pin.to_string(), "registry.k8s.io/pause:*");
        let pin = Pin::parse("registry.k8s.io/coredns/*", resolve).unwrap();
        assert_eq!((pin.repo.as_str(), pin.tag), ("coredns/*", None));
        let digest = Digest::sha256_of(b"m");
        let pin = Pin::parse(&format!("k8s.gcr.io/pause@{digest}"), resolve).unwrap();
        assert_eq!(
            (pin.tag.as_deref(), pin.digest.as_ref()),
            (None, Some(&digest))
        );
        assert_eq!(pin.to_string(), format!("registry.k8s.io/pause@{digest}"));
        // Exact: the canonical spelling parses back to the same pin.
        assert_eq!(Pin::parse(&pin.to_string(), resolve).unwrap(), pin);
        assert!(!pin.selects_tag("registry.k8s.io", "pause", "3.9"));
        let tag_and_digest = format!("registry.k8s.io/pause:3.9@{digest}");
        for bad in [
            "pause",
            "docker.io/library/alpine",
            "registry.k8s.io/",
            "registry.k8s.io/pause:",
            "registry.k8s.io/Pause Me",
            "registry.k8s.io/pause@sha256:short",
            "registry.k8s.io/pause@",
            tag_and_digest.as_str(),
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
