//! `regcache scan` over tests/fixtures/scan (a multi-document manifest with a
//! `List`, a Helm chart with values and templates, the same chart packaged as
//! `.tgz`, a kustomization, a multi-stage Dockerfile with `ARG`s, a compose
//! file, a JSON Pod, a file that is not YAML), run as the real binary on a
//! copy of the tree: every reference with its line, `--list`, `--json`, the
//! exit status, and `--fix` changing only host bytes of the files it may touch.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/scan");

/// Files `--fix` may rewrite, with the lines whose host it must change.
const REWRITABLE: [(&str, &[usize]); 6] = [
    ("manifests/all-in-one.yaml", &[17, 36]),
    ("charts/ingress-nginx/values.yaml", &[4, 11, 17]),
    ("kustomize/kustomization.yaml", &[6, 9]),
    ("docker/Dockerfile", &[3, 14]),
    ("compose/docker-compose.yml", &[6]),
    ("json/pod.json", &[7]),
];

/// Files it must leave byte for byte.
const UNTOUCHABLE: [&str; 3] = [
    "charts/ingress-nginx/templates/deployment.yaml",
    "broken/unterminated.yaml",
    "ingress-nginx-4.0.15.tgz",
];

/// A copy of the fixture tree with the chart also packaged, as `helm package` does.
fn fixture_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(Path::new(FIXTURES), dir.path());
    package_chart(
        &dir.path().join("charts/ingress-nginx"),
        &dir.path().join("ingress-nginx-4.0.15.tgz"),
    );
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `ingress-nginx/<files>` in a gzipped tar.
fn package_chart(chart: &Path, archive: &Path) {
    let file = std::fs::File::create(archive).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all("ingress-nginx", chart).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

fn scan(args: &[&str], dir: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .arg("scan")
        .args(args)
        .arg(dir)
        .output()
        .expect("run regcache scan")
}

fn json(dir: &Path) -> (Value, Option<i32>) {
    let output = scan(&["--json"], dir);
    let value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "scan --json is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (value, output.status.code())
}

/// `(file relative to dir, line, written, status)` of every finding.
fn findings(value: &Value, dir: &Path) -> BTreeSet<(String, u64, String, String)> {
    let prefix = format!("{}/", dir.display());
    value["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["file"].as_str().unwrap().replacen(&prefix, "", 1),
                f["line"].as_u64().unwrap(),
                f["written"].as_str().unwrap().to_owned(),
                f["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

const CONTROLLER: &str = "ingress-nginx/controller:v1.1.1@sha256:0bc88eb15f9e7f84e8e56c14fa5735aaa488b840983f87bd79b1054190e660de";

/// Every reference in the tree before a fix, with the status it must get.
fn before_fix() -> Vec<(String, u64, String, String)> {
    let tgz = "ingress-nginx-4.0.15.tgz!ingress-nginx";
    let controller = format!("k8s.gcr.io/{CONTROLLER}");
    let template = r#"{{ .registry | default "k8s.gcr.io" }}/{{ .image }}:{{ .tag }}"#;
    let mut rows = vec![
        (
            "manifests/all-in-one.yaml".to_owned(),
            17,
            controller.clone(),
            "frozen",
        ),
        (
            "manifests/all-in-one.yaml".into(),
            33,
            "busybox:1.36".into(),
            "ok",
        ),
        (
            "manifests/all-in-one.yaml".into(),
            36,
            "k8s.gcr.io/kube-proxy:v1.23.0".into(),
            "frozen",
        ),
        (
            "manifests/all-in-one.yaml".into(),
            47,
            "registry.k8s.io/kubectl:v1.30.0".into(),
            "ok",
        ),
        (
            "kustomize/kustomization.yaml".into(),
            6,
            "k8s.gcr.io/kube-proxy:v1.23.17".into(),
            "frozen",
        ),
        (
            "kustomize/kustomization.yaml".into(),
            8,
            "busybox".into(),
            "ok",
        ),
        (
            "kustomize/kustomization.yaml".into(),
            9,
            "k8s.gcr.io/e2e-test-images/busybox:1.29-4".into(),
            "frozen",
        ),
        ("docker/Dockerfile".into(), 4, "golang:1.22".into(), "ok"),
        (
            "docker/Dockerfile".into(),
            12,
            "k8s.gcr.io/build-image/debian-base:bullseye-v1.4.3".into(),
            "frozen",
        ),
        (
            "docker/Dockerfile".into(),
            14,
            "k8s.gcr.io/pause:3.6".into(),
            "frozen",
        ),
        (
            "compose/docker-compose.yml".into(),
            3,
            "nginx:1.25-alpine".into(),
            "ok",
        ),
        (
            "compose/docker-compose.yml".into(),
            6,
            "k8s.gcr.io/etcd:3.5.1-0".into(),
            "frozen",
        ),
        (
            "compose/docker-compose.yml".into(),
            9,
            "ghcr.io/dragonflydb/dragonfly:v1.14.0".into(),
            "ok",
        ),
        (
            "json/pod.json".into(),
            7,
            "k8s.gcr.io/coredns/coredns:v1.8.6".into(),
            "frozen",
        ),
        (
            "json/pod.json".into(),
            8,
            "quay.io/prometheus/node-exporter:v1.7.0".into(),
            "ok",
        ),
        (
            "broken/unterminated.yaml".into(),
            6,
            "k8s.gcr.io/pause:3.6".into(),
            "frozen",
        ),
    ];
    for chart in ["charts/ingress-nginx", tgz] {
        rows.extend([
            (
                format!("{chart}/values.yaml"),
                4,
                controller.clone(),
                "frozen",
            ),
            (
                format!("{chart}/values.yaml"),
                11,
                "k8s.gcr.io/ingress-nginx/kube-webhook-certgen:v1.1.1".into(),
                "frozen",
            ),
            (
                format!("{chart}/values.yaml"),
                17,
                "k8s.gcr.io/defaultbackend-amd64:1.1.1".into(),
                "frozen",
            ),
            (
                format!("{chart}/templates/deployment.yaml"),
                11,
                template.into(),
                "unresolved",
            ),
            (
                format!("{chart}/templates/deployment.yaml"),
                14,
                "k8s.gcr.io/pause:3.6".into(),
                "frozen",
            ),
        ]);
    }
    rows.into_iter()
        .map(|(f, l, w, s)| (f, l, w, s.to_owned()))
        .collect()
}

#[test]
fn every_reference_is_found_with_its_line_and_verdict() {
    let dir = fixture_tree();
    let (value, code) = json(dir.path());
    assert_eq!(code, Some(1), "frozen references left: exit status 1");
    let want: BTreeSet<_> = before_fix().into_iter().collect();
    assert_eq!(findings(&value, dir.path()), want);
    // The template's expression names k8s.gcr.io: it counts as left, twice.
    assert_eq!(value["frozen_left"], 17 + 2);
    let skipped = value["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0]["file"]
            .as_str()
            .unwrap()
            .ends_with("broken/unterminated.yaml")
    );
}

#[test]
fn list_prints_unique_normalized_references_with_replacements() {
    let dir = fixture_tree();
    let output = scan(&["--list"], dir.path());
    assert_eq!(output.status.code(), Some(1));
    let listed = String::from_utf8(output.stdout).unwrap();
    let want = [
        "docker.io/library/busybox:1.36".to_owned(),
        "docker.io/library/busybox:latest".into(),
        "docker.io/library/golang:1.22".into(),
        "docker.io/library/nginx:1.25-alpine".into(),
        "ghcr.io/dragonflydb/dragonfly:v1.14.0".into(),
        "quay.io/prometheus/node-exporter:v1.7.0".into(),
        "registry.k8s.io/build-image/debian-base:bullseye-v1.4.3".into(),
        "registry.k8s.io/coredns/coredns:v1.8.6".into(),
        "registry.k8s.io/defaultbackend-amd64:1.1.1".into(),
        "registry.k8s.io/e2e-test-images/busybox:1.29-4".into(),
        "registry.k8s.io/etcd:3.5.1-0".into(),
        format!("registry.k8s.io/{CONTROLLER}"),
        "registry.k8s.io/ingress-nginx/kube-webhook-certgen:v1.1.1".into(),
        "registry.k8s.io/kube-proxy:v1.23.0".into(),
        "registry.k8s.io/kube-proxy:v1.23.17".into(),
        "registry.k8s.io/kubectl:v1.30.0".into(),
        "registry.k8s.io/pause:3.6".into(),
    ];
    assert_eq!(listed.lines().collect::<Vec<_>>(), want);
}

#[test]
fn fix_rewrites_only_host_bytes_and_never_templates_archives_or_broken_files() {
    let dir = fixture_tree();
    let before: Vec<(PathBuf, Vec<u8>)> = all_files(dir.path());
    let output = scan(&["--fix"], dir.path());
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{report}");
    for (file, lines) in REWRITABLE {
        let old = text_of(&before, &dir.path().join(file));
        let new = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert_eq!(new, replace_on_lines(&old, lines), "{file}:\n{report}");
        assert_eq!(diff_lines(&old, &new), lines, "{file}");
    }
    for file in UNTOUCHABLE {
        let path = dir.path().join(file);
        let old = before.iter().find(|(p, _)| *p == path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), old.1, "{file} was touched");
    }
    assert_eq!(
        all_files(dir.path()).len(),
        before.len(),
        "no temp file left"
    );
    // What is left is exactly what cannot be rewritten.
    let (value, code) = json(dir.path());
    assert_eq!(code, Some(1));
    let left: BTreeSet<String> = value["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "frozen" || f["status"] == "unresolved")
        .map(|f| {
            f["file"]
                .as_str()
                .unwrap()
                .replacen(&format!("{}/", dir.path().display()), "", 1)
        })
        .collect();
    let want: BTreeSet<String> = [
        "broken/unterminated.yaml",
        "charts/ingress-nginx/templates/deployment.yaml",
        "ingress-nginx-4.0.15.tgz!ingress-nginx/templates/deployment.yaml",
        "ingress-nginx-4.0.15.tgz!ingress-nginx/values.yaml",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(left, want);
}

#[test]
fn a_tree_without_frozen_references_exits_zero_and_config_adds_frozen_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "spec:\n  containers:\n  - image: gcr.io/google-containers/pause:3.2\n",
    )
    .unwrap();
    assert_eq!(scan(&[], dir.path()).status.code(), Some(0));
    let config = dir.path().join("regcache.toml");
    let toml = regcache::config::DEFAULT_TOML
        .replace("frozen = []", "frozen = [\"gcr.io=us-docker.pkg.dev\"]");
    std::fs::write(&config, toml).unwrap();
    let output = scan(&["--config", config.to_str().unwrap()], &pod);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("pod.yaml:3: gcr.io/google-containers/pause:3.2  frozen -> us-docker.pkg.dev/google-containers/pause:3.2"),
        "{text}"
    );
}

fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(all_files(&path));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            files.push((path, bytes));
        }
    }
    files
}

fn text_of(files: &[(PathBuf, Vec<u8>)], path: &Path) -> String {
    let (_, bytes) = files.iter().find(|(p, _)| p == path).expect("file copied");
    String::from_utf8(bytes.clone()).unwrap()
}

/// `text` with k8s.gcr.io replaced on the given lines (1-based) only.
fn replace_on_lines(text: &str, lines: &[usize]) -> String {
    text.split_inclusive('\n')
        .enumerate()
        .map(|(i, line)| {
            if lines.contains(&(i + 1)) {
                line.replacen("k8s.gcr.io", "registry.k8s.io", 1)
            } else {
                line.to_owned()
            }
        })
        .collect()
}

/// The 1-based numbers of the lines that differ (same line count required).
fn diff_lines(old: &str, new: &str) -> Vec<usize> {
    assert_eq!(old.lines().count(), new.lines().count());
    old.lines()
        .zip(new.lines())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i + 1)
        .collect()
}
