//! The YAML (and JSON, a subset of it) reader of `scan`: every document of a
//! file is parsed with yaml-rust2's marked event parser into a small tree that
//! keeps each scalar's line and byte offset, and image references are found in
//! the shapes real manifests use: an `image:` string anywhere (Pods, workload
//! templates, `List` items, CRDs, compose services), a Helm values `image:` map
//! (`registry`/`repository`/`tag`/`digest`), and a kustomization's `images:`.
//!
//! It only reads; it never decides what a reference means or rewrites a file.
//! A file it cannot parse is an error, so the caller can fall back to reading
//! it without rewriting it.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::Hit;

/// A parsed YAML node; scalars keep where they were written.
#[derive(Debug)]
enum Node {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// An alias (`*name`): its target was visited where it was defined.
    Alias,
}

#[derive(Debug)]
struct Scalar {
    value: String,
    line: usize,
    /// Byte offset of the value's first character in the file, when the
    /// value's bytes appear there literally (plain or quoted, not a block).
    at: Option<usize>,
}

/// What the file is, beyond being YAML: it changes which keys mean images.
#[derive(Debug, Default, Clone)]
pub(super) struct Context {
    /// A kustomization: its top-level `images:` lists image overrides.
    pub(super) kustomization: bool,
    /// A chart's `values.yaml`: the `appVersion` of its `Chart.yaml`, the tag
    /// Helm charts use when `image.tag` is empty.
    pub(super) app_version: Option<String>,
}

/// Every image reference in `text`, or why it is not YAML.
pub(super) fn hits(text: &str, context: &Context) -> Result<Vec<Hit>, String> {
    let documents = parse(text)?;
    let mut hits = Vec::new();
    for document in &documents {
        if context.kustomization {
            kustomize_images(document, &mut hits);
        }
        walk(document, context, &mut hits);
    }
    Ok(hits)
}

/// The `appVersion` of a `Chart.yaml`.
pub(super) fn app_version(chart_yaml: &str) -> Option<String> {
    let documents = parse(chart_yaml).ok()?;
    let value = lookup(documents.first()?, "appVersion")?;
    Some(value.value.clone())
}

fn parse(text: &str) -> Result<Vec<Node>, String> {
    let mut builder = TreeBuilder::new(text);
    Parser::new_from_str(text)
        .load(&mut builder, true)
        .map_err(|e| e.to_string())?;
    Ok(builder.documents)
}

/// `image: <string>` anywhere, and Helm's `image: {repository, ...}` maps.
fn walk(node: &Node, context: &Context, hits: &mut Vec<Hit>) {
    match node {
        Node::Map(entries) => {
            for (key, value) in entries {
                if key_is(key, "image") {
                    if let Node::Scalar(s) = value {
                        hits.extend(scalar_hit(s, None));
                    } else if let Some(hit) = values_image(value, context) {
                        // Its `image:` key (ingress-nginx's spelling of
                        // `repository`) is part of this hit, not another one.
                        hits.push(hit);
                        continue;
                    }
                }
                walk(value, context, hits);
            }
        }
        Node::Seq(items) => items.iter().for_each(|item| walk(item, context, hits)),
        Node::Scalar(_) | Node::Alias => {}
    }
}

/// A reference written as one string. Empty values and YAML nulls name nothing.
fn scalar_hit(scalar: &Scalar, note: Option<String>) -> Option<Hit> {
    let value = scalar.value.trim();
    if value.is_empty() || value == "~" || value == "null" {
        return None;
    }
    Some(Hit::reference(scalar.line, value, scalar.at, note))
}

/// Helm values: `image: {registry: k8s.gcr.io, repository: ingress-nginx/controller,
/// tag: v1.1.0, digest: sha256:...}` (`image` in place of `repository` too, as
/// ingress-nginx writes it). The host is in `registry` if given, else at the
/// start of `repository`.
fn values_image(map: &Node, context: &Context) -> Option<Hit> {
    let repository = lookup(map, "repository").or_else(|| lookup(map, "image"))?;
    let registry = lookup(map, "registry").filter(|r| !r.value.trim().is_empty());
    let tag = lookup(map, "tag").filter(|t| !t.value.trim().is_empty());
    let digest = lookup(map, "digest").filter(|d| !d.value.trim().is_empty());
    let mut text = match registry {
        Some(registry) => format!("{}/{}", registry.value.trim(), repository.value.trim()),
        None => repository.value.trim().to_owned(),
    };
    let mut note = "Helm values image map".to_owned();
    match (tag, &context.app_version) {
        (Some(tag), _) => text = format!("{text}:{}", tag.value.trim()),
        (None, Some(app_version)) if digest.is_none() => {
            text = format!("{text}:{app_version}");
            note.push_str(", tag from Chart.yaml appVersion");
        }
        _ => {}
    }
    if let Some(digest) = digest {
        text = format!("{text}@{}", digest.value.trim());
    }
    let first = registry.unwrap_or(repository);
    Some(Hit::reference(first.line, &text, first.at, Some(note)))
}

/// kustomization `images:`: each entry's `name` (the image it overrides) and
/// `newName` (what is pulled instead), with `newTag` or `digest`.
fn kustomize_images(document: &Node, hits: &mut Vec<Hit>) {
    let Some(Node::Seq(entries)) = lookup_node(document, "images") else {
        return;
    };
    for entry in entries {
        let suffix = match (lookup(entry, "newTag"), lookup(entry, "digest")) {
            (_, Some(digest)) => format!("@{}", digest.value.trim()),
            (Some(tag), None) => format!(":{}", tag.value.trim()),
            (None, None) => String::new(),
        };
        for (key, with_suffix) in [("name", false), ("newName", true)] {
            let Some(scalar) = lookup(entry, key) else {
                continue;
            };
            let text = if with_suffix || lookup(entry, "newName").is_none() {
                format!("{}{suffix}", scalar.value.trim())
            } else {
                scalar.value.trim().to_owned()
            };
            let note = format!("kustomization images[].{key}");
            hits.push(Hit::reference(scalar.line, &text, scalar.at, Some(note)));
        }
    }
}

fn key_is(node: &Node, name: &str) -> bool {
    matches!(node, Node::Scalar(s) if s.value == name)
}

fn lookup_node<'a>(map: &'a Node, key: &str) -> Option<&'a Node> {
    let Node::Map(entries) = map else {
        return None;
    };
    entries.iter().find(|(k, _)| key_is(k, key)).map(|(_, v)| v)
}

fn lookup<'a>(map: &'a Node, key: &str) -> Option<&'a Scalar> {
    match lookup_node(map, key)? {
        Node::Scalar(s) => Some(s),
        _ => None,
    }
}

/// Builds [`Node`] trees from parser events, one per document.
struct TreeBuilder<'a> {
    text: &'a str,
    /// Byte offset of each character, when the text is not all ASCII (the
    /// parser counts characters, the file is bytes).
    char_offsets: Option<Vec<usize>>,
    stack: Vec<Frame>,
    documents: Vec<Node>,
}

impl<'a> TreeBuilder<'a> {
    fn new(text: &'a str) -> Self {
        let char_offsets =
            (!text.is_ascii()).then(|| text.char_indices().map(|(i, _)| i).collect());
        Self {
            text,
            char_offsets,
            stack: Vec::new(),
            documents: Vec::new(),
        }
    }

    fn byte_offset(&self, char_index: usize) -> Option<usize> {
        match &self.char_offsets {
            None => Some(char_index),
            Some(offsets) => offsets.get(char_index).copied(),
        }
    }

    /// Where `value`'s bytes start, if they are written literally at `mark`.
    fn literal_at(&self, mark: Marker, style: TScalarStyle, value: &str) -> Option<usize> {
        let quote = match style {
            TScalarStyle::Plain => 0,
            TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => 1,
            TScalarStyle::Literal | TScalarStyle::Folded => return None,
        };
        let at = self.byte_offset(mark.index())? + quote;
        self.text
            .get(at..)
            .is_some_and(|rest| rest.starts_with(value))
            .then_some(at)
    }

    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            Some(Frame::Seq(items)) => items.push(node),
            Some(Frame::Map { entries, key }) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => *key = Some(node),
            },
            None => self.documents.push(node),
        }
    }
}

/// A collection being built; a map holds its key until the value arrives.
enum Frame {
    Seq(Vec<Node>),
    Map {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

impl MarkedEventReceiver for TreeBuilder<'_> {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, style, _, _) => {
                let at = self.literal_at(mark, style, &value);
                let line = mark.line();
                self.push(Node::Scalar(Scalar { value, line, at }));
            }
            Event::SequenceStart(..) => self.stack.push(Frame::Seq(Vec::new())),
            Event::MappingStart(..) => self.stack.push(Frame::Map {
                entries: Vec::new(),
                key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq(items)) => self.push(Node::Seq(items)),
                Some(Frame::Map { entries, .. }) => self.push(Node::Map(entries)),
                None => {}
            },
            Event::Alias(_) => self.push(Node::Alias),
            _ => {}
        }
    }
}
