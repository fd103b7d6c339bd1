//! Unit tests of the readers (lines, offsets, shapes) and of `--fix` on one file.

use super::*;

/// `(line, text, host bytes at the offset)` of every hit.
fn found(hits: &[Hit], text: &str) -> Vec<(usize, String, Option<String>)> {
    hits.iter()
        .map(|h| {
            let host = h.host_at.map(|at| text[at..].chars().take(10).collect());
            (h.line, h.text.clone(), host)
        })
        .collect()
}

fn yaml_hits(text: &str, context: &yaml::Context) -> Vec<(usize, String, Option<String>)> {
    found(&yaml::hits(text, context).expect("valid YAML"), text)
}

#[test]
fn image_keys_in_every_document_and_list_item_with_line_and_offset() {
    let text = "\
apiVersion: v1
kind: Pod
spec:
  containers:
  - name: a
    image: k8s.gcr.io/pause:3.9
---
apiVersion: v1
kind: List
items:
- kind: Deployment
  spec:
    template:
      spec:
        initContainers:
        - image: \"k8s.gcr.io/busybox:1\"
        containers:
        - {name: b, image: 'nginx:1.25'}
";
    assert_eq!(
        yaml_hits(text, &yaml::Context::default()),
        vec![
            (6, "k8s.gcr.io/pause:3.9".into(), Some("k8s.gcr.io".into())),
            (16, "k8s.gcr.io/busybox:1".into(), Some("k8s.gcr.io".into())),
            (18, "nginx:1.25".into(), Some("nginx:1.25".into())),
        ]
    );
}

#[test]
fn offsets_count_bytes_after_non_ascii_text() {
    let text = "# Größe: ünïcode\nimage: k8s.gcr.io/pause:3.9\n";
    let hits = yaml_hits(text, &yaml::Context::default());
    assert_eq!(hits[0].2.as_deref(), Some("k8s.gcr.io"));
}

#[test]
fn a_block_scalar_has_no_offset_to_rewrite() {
    let text = "image: >-\n  k8s.gcr.io/pause:3.9\n";
    assert_eq!(
        yaml_hits(text, &yaml::Context::default()),
        vec![(2, "k8s.gcr.io/pause:3.9".into(), None)]
    );
}

#[test]
fn helm_values_maps_are_assembled_with_the_app_version_as_default_tag() {
    let text = "\
controller:
  image:
    registry: k8s.gcr.io
    image: ingress-nginx/controller
    tag: \"v1.1.0\"
defaultBackend:
  image:
    repository: k8s.gcr.io/defaultbackend-amd64
    tag: \"\"
";
    let context = yaml::Context {
        app_version: Some("1.5".into()),
        ..Default::default()
    };
    assert_eq!(
        yaml_hits(text, &context),
        vec![
            (
                3,
                "k8s.gcr.io/ingress-nginx/controller:v1.1.0".into(),
                Some("k8s.gcr.io".into())
            ),
            (
                8,
                "k8s.gcr.io/defaultbackend-amd64:1.5".into(),
                Some("k8s.gcr.io".into())
            ),
        ]
    );
}

#[test]
fn kustomization_images_give_name_and_new_name() {
    let text = "\
images:
- name: k8s.gcr.io/pause
  newTag: \"3.9\"
- name: nginx
  newName: k8s.gcr.io/nginx-slim
  newTag: \"0.8\"
";
    let context = yaml::Context {
        kustomization: true,
        ..Default::default()
    };
    let hits: Vec<_> = yaml_hits(text, &context)
        .into_iter()
        .map(|(line, text, _)| (line, text))
        .collect();
    assert_eq!(
        hits,
        vec![
            (2, "k8s.gcr.io/pause:3.9".into()),
            (4, "nginx".into()),
            (5, "k8s.gcr.io/nginx-slim:0.8".into()),
        ]
    );
}

#[test]
fn dockerfile_stages_args_and_copy_from() {
    let text = "\
# syntax=docker/dockerfile:1
ARG BASE=k8s.gcr.io/build-image/debian-base:bookworm-v1.0.0
ARG GO_VERSION=1.22
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
RUN make
FROM build AS test
FROM ${BASE}
COPY --from=build /out /bin
COPY --from=k8s.gcr.io/pause:3.9 /pause /pause
FROM $UNKNOWN
FROM scratch
";
    let hits = dockerfile::hits(text);
    assert_eq!(
        found(&hits, text),
        vec![
            (4, "golang:1.22".into(), None),
            (
                7,
                "k8s.gcr.io/build-image/debian-base:bookworm-v1.0.0".into(),
                Some("k8s.gcr.io".into())
            ),
            (9, "k8s.gcr.io/pause:3.9".into(), Some("k8s.gcr.io".into())),
            (10, "$UNKNOWN".into(), None),
        ]
    );
    assert!(!hits[3].resolved);
}

#[test]
fn template_lines_are_unresolved_or_literal() {
    let text = "\
      containers:
        - name: c
          image: \"{{ .Values.image.registry | default \"k8s.gcr.io\" }}/x:{{ .Values.tag }}\"
        - image: k8s.gcr.io/pause:3.9 # sidecar
";
    let hits = text::hits(text);
    assert_eq!(hits.len(), 2);
    assert!(!hits[0].resolved);
    assert_eq!(hits[1].text, "k8s.gcr.io/pause:3.9");
    let frozen = Frozen::new(&[]);
    let unresolved = judge("t.yaml", hits[0].clone(), &frozen);
    assert!(
        unresolved.frozen_left(),
        "a template naming k8s.gcr.io counts"
    );
}

#[test]
fn judging_keeps_path_and_tag_and_replaces_the_host() {
    let frozen = Frozen::new(&[("gcr.io".into(), "us-docker.pkg.dev".into())]);
    let finding = |text: &str| judge("f", Hit::reference(1, text, Some(0), None), &frozen);
    let f = finding(
        "k8s.gcr.io/ingress-nginx/controller:v1.1.0@sha256:"
            .to_owned()
            .as_str(),
    );
    assert!(matches!(f.status, Status::Invalid(_)));
    let f = finding("k8s.gcr.io/ingress-nginx/controller:v1.1.0");
    assert_eq!(f.status, Status::Frozen);
    assert_eq!(
        f.replacement.as_deref(),
        Some("registry.k8s.io/ingress-nginx/controller:v1.1.0")
    );
    let f = finding("gcr.io/google-containers/pause:3.2");
    assert_eq!(
        f.replacement.as_deref(),
        Some("us-docker.pkg.dev/google-containers/pause:3.2")
    );
    assert_eq!(finding("registry.k8s.io/pause:3.9").status, Status::Ok);
    // A repository that merely contains the host is not that host.
    assert_eq!(finding("myorg/k8s.gcr.io").status, Status::Ok);
}

#[test]
fn fix_changes_only_the_host_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pod.yaml");
    let text = "spec:\n  containers:\n  - image:   \"k8s.gcr.io/pause:3.9\"  # keep me\n    name: x\n  - image: k8s.gcr.io/etcd:3.5\n";
    std::fs::write(&path, text).unwrap();
    let result = scan(std::slice::from_ref(&path), &Frozen::new(&[]), true).unwrap();
    assert_eq!(result.frozen_left(), 0);
    assert!(result.findings.iter().all(|f| f.status == Status::Fixed));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text.replace("k8s.gcr.io", "registry.k8s.io")
    );
    let again = scan(&[path], &Frozen::new(&[]), false).unwrap();
    assert!(again.findings.iter().all(|f| f.status == Status::Ok));
}
