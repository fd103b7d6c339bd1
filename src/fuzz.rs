//! Entry points for fuzzing every parser of outside input: the targets in
//! `fuzz/` (cargo-fuzz, run by hand for millions of executions) and the smoke
//! test below (CI: the committed corpus and regressions, plus mutations of
//! them) call the same functions.
//!
//! Each function takes arbitrary bytes, feeds them to one parser the way the
//! server does (request paths and headers, upstream headers and bodies, the
//! config file) and asserts what callers rely on when the parser says yes: a
//! parse of the printed form gives the same value, a range lies inside its
//! blob, a redirect target is an absolute http(s) URL. It panics only when
//! such a property or the parser itself breaks; it never touches disk or
//! network.

use std::time::{Duration, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{HeaderValue, LOCATION};
use url::Url;

use crate::api::endpoint::Endpoint;
use crate::api::range::{self, RangeRequest};
use crate::config::{self, Overrides, Secrets};
use crate::oci::{Digest, ImageRef, Reference, RepoName, Tag};
use crate::upstream::response::ContentRange;
use crate::upstream::{auth, challenge, redirect};

/// One fuzz target: arbitrary bytes in, a panic only on a broken property.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/corpus/<name>/` call it.
pub const TARGETS: &[(&str, Target)] = &[
    ("digest", digest),
    ("repo_name", repo_name),
    ("reference", reference),
    ("image_ref", image_ref),
    ("endpoint", endpoint),
    ("range", range),
    ("content_range", content_range),
    ("www_authenticate", www_authenticate),
    ("location", location),
    ("token", token),
    ("manifest", manifest),
    ("config", config),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// `<alg>:<hex>`, from request paths, headers and manifests.
pub fn digest(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(digest) = text.parse::<Digest>() {
        let printed = digest.to_string();
        assert_eq!(printed.parse::<Digest>().ok(), Some(digest.clone()));
        // The hex names a file under blobs/: it must not be able to leave it.
        assert!(digest.hex().bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!digest.hex().is_empty());
    }
}

/// A repository name from a request path.
pub fn repo_name(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(name) = text.parse::<RepoName>() {
        assert_eq!(
            name.to_string().parse::<RepoName>().ok(),
            Some(name.clone())
        );
        assert!(
            name.components()
                .all(|c| !c.is_empty() && c != "." && c != "..")
        );
        // Docker Hub's name may pass the 255-character limit by `library/`
        // (a limit on what clients send, found by fuzzing): check its parts.
        let hub = name.clone().in_docker_hub();
        assert!(hub.components().all(|c| c.parse::<RepoName>().is_ok()));
        assert!(hub.as_str().ends_with(name.as_str()));
        assert_eq!(hub.clone().in_docker_hub(), hub);
    }
}

/// A manifest reference (tag or digest) from a request path.
pub fn reference(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(reference) = text.parse::<Reference>() {
        assert_eq!(
            reference.to_string().parse::<Reference>().ok(),
            Some(reference)
        );
    }
    if let Ok(tag) = text.parse::<Tag>() {
        assert_eq!(tag.as_str().parse::<Tag>().ok(), Some(tag.clone()));
    }
}

/// An image reference as `scan`, `prefetch` and pins read it.
pub fn image_ref(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(image) = text.parse::<ImageRef>() {
        let normalized = image.normalized();
        let again: ImageRef = normalized
            .parse()
            .unwrap_or_else(|e| panic!("{normalized:?} (from {text:?}) does not parse: {e}"));
        assert_eq!(again.normalized(), normalized);
        assert_eq!(again.registry(), image.registry());
        assert_eq!(again.repository(), image.repository());
    }
}

/// The path after `/v2/`, as the router hands it over.
pub fn endpoint(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(endpoint) = Endpoint::parse(text) {
        let name = endpoint.name();
        assert_eq!(
            name.to_string().parse::<RepoName>().ok(),
            Some(name.clone())
        );
    }
}

/// A client's `Range` header against a blob size (the first 8 bytes).
pub fn range(data: &[u8]) {
    let (size, header) = split_u64(data);
    let Some(header) = text(header) else { return };
    match range::resolve(Some(header), size) {
        RangeRequest::Partial(r) => assert!(
            r.start <= r.end && r.end < size,
            "{header:?} against {size} bytes gave {}-{}",
            r.start,
            r.end
        ),
        RangeRequest::Whole | RangeRequest::Unsatisfiable => {}
    }
}

/// An upstream's `Content-Range` on a 206.
pub fn content_range(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Some(range) = ContentRange::parse(text) {
        assert!(range.first <= range.last);
        if let Some(total) = range.total {
            assert!(range.last < total);
        }
    }
}

/// An upstream's `WWW-Authenticate` header.
pub fn www_authenticate(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let _ = challenge::parse_line(text);
}

/// An upstream's `Location` header, resolved against where it came from.
pub fn location(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(LOCATION, value);
    let from = Url::parse("https://registry.example/v2/library/pause/blobs/sha256:00").unwrap();
    if let Ok(next) = redirect::location(&from, &headers) {
        assert!(matches!(next.scheme(), "http" | "https"), "{next}");
        assert!(next.host_str().is_some_and(|h| !h.is_empty()), "{next}");
    }
}

/// A token server's JSON answer.
pub fn token(data: &[u8]) {
    // A fixed receipt time, so what is fuzzed is the body alone.
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = auth::parse_token(data, now);
}

/// A manifest body from an upstream or an imported layout.
pub fn manifest(data: &[u8]) {
    let _ = crate::oci::references(data);
    let _ = crate::oci::media_type_of(None, data);
    let _ = crate::oci::media_type_of(Some("application/json"), data);
}

/// `config.toml`, with no environment and no secret files.
pub fn config(data: &[u8]) {
    struct NoSecrets;
    impl Secrets for NoSecrets {
        fn env(&self, _: &str) -> Option<String> {
            None
        }
        fn file(&self, path: &str) -> std::io::Result<String> {
            Err(std::io::Error::new(std::io::ErrorKind::NotFound, path))
        }
    }
    let Some(text) = text(data) else { return };
    let _ = config::load(text, "fuzz", &Overrides::default(), &NoSecrets);
}

/// The first 8 bytes as a number (fewer: zero-padded), and the rest.
fn split_u64(data: &[u8]) -> (u64, &[u8]) {
    let at = data.len().min(8);
    let mut number = [0u8; 8];
    number[..at].copy_from_slice(&data[..at]);
    (u64::from_le_bytes(number), &data[at..])
}

#[cfg(test)]
mod tests {
    //! The CI smoke: every file of `fuzz/corpus/<target>/` and
    //! `fuzz/regressions/<target>/`, each also mutated a few hundred times by
    //! a fixed-seed generator (the same inputs every run).

    use std::path::Path;

    use super::TARGETS;

    const MUTATIONS: usize = 200;
    /// Bytes the parsers split on or reject, inserted by [`Scatter::mutate`].
    const INSERTED: &[u8] = b"/:@.-_+=,; \"*\0\xff0aZ";

    fn inputs(target: &str) -> Vec<Vec<u8>> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut inputs = Vec::new();
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for entry in entries.flatten() {
                inputs.push(std::fs::read(entry.path()).unwrap());
            }
        }
        inputs
    }

    /// xorshift64*: enough to scatter bytes; not for anything else.
    struct Scatter(u64);

    impl Scatter {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        /// Flips, inserts, deletes or duplicates a few bytes.
        fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
            let mut out = input.to_vec();
            for _ in 0..=self.below(4) {
                let at = self.below(out.len() + 1);
                match self.below(4) {
                    0 if at < out.len() => out[at] ^= 1 << self.below(8),
                    1 => out.insert(at, INSERTED[self.below(INSERTED.len())]),
                    2 if at < out.len() => {
                        out.remove(at);
                    }
                    _ => {
                        let end = (at + self.below(16)).min(out.len());
                        let piece = out[at..end].to_vec();
                        out.splice(at..at, piece);
                    }
                }
            }
            out
        }
    }

    #[test]
    fn every_target_survives_its_corpus_and_mutations_of_it() {
        for (name, target) in TARGETS {
            let corpus = inputs(name);
            assert!(!corpus.is_empty(), "fuzz/corpus/{name}/ is empty");
            let mut scatter = Scatter(0x9e37_79b9_7f4a_7c15);
            for input in &corpus {
                target(input);
                for _ in 0..MUTATIONS {
                    target(&scatter.mutate(input));
                }
            }
        }
    }

    #[test]
    fn every_target_has_a_cargo_fuzz_entry() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        for (name, _) in TARGETS {
            let file = root.join("fuzz_targets").join(format!("{name}.rs"));
            let source = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(source.contains(&format!("regcache::fuzz::{name}(")));
            assert!(manifest.contains(&format!("name = \"{name}\"")));
        }
    }
}
