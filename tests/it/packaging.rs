//! Packaging checks that no other test would catch: the container build can only
//! succeed if the Dockerfile copies every path cargo needs to read the manifest
//! (explicit `[[bin]]`, `[[test]]` and `[[bench]]` targets must exist) and build
//! the binary (`migrations/` and `config.toml` are embedded with `include_str!`).
//! There is no Docker engine on the test machines, so the build itself cannot
//! run here; this reads files only and starts nothing.

use std::collections::BTreeSet;
use std::path::Path;

/// First path components the Dockerfile's build stage copies into the image.
fn copied_by_dockerfile(dockerfile: &str) -> BTreeSet<String> {
    dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().skip(1).collect();
            // Every word but the destination is a source.
            let sources = &words[..words.len().saturating_sub(1)];
            sources
                .iter()
                .map(|s| s.split('/').next().unwrap_or(s).to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// First path components of every explicit target in Cargo.toml (its `path`,
/// or cargo's default for its kind), plus what the crate embeds at compile time.
fn needed_by_cargo(manifest: &str) -> BTreeSet<String> {
    let manifest: toml::Table = manifest.parse().expect("Cargo.toml parses");
    let mut needed: BTreeSet<String> = [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "migrations",
        "config.toml",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for (kind, default_dir) in [("bin", "src"), ("test", "tests"), ("bench", "benches")] {
        let targets = manifest.get(kind).and_then(|t| t.as_array());
        for target in targets.into_iter().flatten() {
            let path = target.get("path").and_then(|p| p.as_str());
            let first = path.map_or(default_dir, |p| p.split('/').next().unwrap_or(p));
            needed.insert(first.to_owned());
        }
    }
    needed
}

#[test]
fn the_dockerfile_copies_everything_the_build_reads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let copied = copied_by_dockerfile(&dockerfile);
    let missing: Vec<_> = needed_by_cargo(&manifest)
        .into_iter()
        .filter(|path| !copied.contains(path))
        .collect();
    assert!(
        missing.is_empty(),
        "the Dockerfile does not COPY {missing:?}"
    );
    for path in &copied {
        assert!(
            root.join(path).exists(),
            "the Dockerfile copies a missing {path}"
        );
    }
    assert!(
        !std::fs::read_to_string(root.join(".dockerignore"))
            .unwrap()
            .lines()
            .any(|l| copied.contains(l.trim())),
        ".dockerignore excludes a path the build copies"
    );
}

#[test]
fn the_image_runs_regcache_serve_as_a_non_root_user() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let user = last_stage
        .lines()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "{user}"
    );
    assert!(last_stage.contains(r#"CMD ["serve"]"#), "{last_stage}");
    assert!(last_stage.contains("VOLUME"), "{last_stage}");
    assert!(last_stage.contains("EXPOSE 5000"), "{last_stage}");
}
