//! The crate's layers, checked from its sources: arrows point down only (binding → domain →
//! db/storage → pure helpers) and no module depends on itself through others. A `use` of an
//! upper layer, or a cycle, fails here with the files that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Folders are layers; a file directly under `src/` is a pure helper.
fn layer(top: &str) -> u8 {
  match top {
    "napi" => 3,
    "quota" => 2,
    "db" | "storage" => 1,
    _ => 0,
  }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
  for entry in fs::read_dir(dir).unwrap() {
    let path = entry.unwrap().path();
    if path.is_dir() {
      rust_files(&path, out);
    } else if path.extension().is_some_and(|e| e == "rs") {
      out.push(path);
    }
  }
}

/// `src/quota/client/admin.rs` → `["quota", "client"]`; `src/ids.rs` → `["ids"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
  let rel = file.strip_prefix(src).unwrap().with_extension("");
  let mut parts: Vec<String> = rel
    .iter()
    .map(|p| p.to_string_lossy().into_owned())
    .collect();
  if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
    parts.pop();
  }
  parts.truncate(2);
  parts
}

fn is_module(src: &Path, parts: &[&str]) -> bool {
  let base = parts.iter().fold(src.to_path_buf(), |p, s| p.join(s));
  base.with_extension("rs").is_file() || base.join("mod.rs").is_file()
}

/// The node a `crate::a::b…` path lands on: the first two segments that are modules.
fn target(src: &Path, path: &[&str]) -> Option<String> {
  let first = *path.first()?;
  if !is_module(src, &[first]) {
    return None;
  }
  match path.get(1) {
    Some(second) if is_module(src, &[first, second]) => Some(format!("{first}::{second}")),
    _ => Some(first.to_owned()),
  }
}

/// Every `crate::…` path in `text` (including `use crate::{a, b::c}` groups), outside comments.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
  let mut out = Vec::new();
  for line in text.lines() {
    let code = line.split("//").next().unwrap_or("");
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
      rest = &rest[at + "crate::".len()..];
      // `a::b::{c, d::e}` → a::b::c, a::b::d::e; `a::b::C` → a::b::C
      let mut prefix: Vec<String> = Vec::new();
      loop {
        let name: String = rest
          .chars()
          .take_while(|c| c.is_alphanumeric() || *c == '_')
          .collect();
        rest = &rest[name.len()..];
        if !name.is_empty() {
          prefix.push(name);
        }
        match rest.strip_prefix("::") {
          Some(after) if after.starts_with('{') => {
            let inner = after[1..].split('}').next().unwrap_or("");
            for item in inner.split(',') {
              let mut segs = prefix.clone();
              segs.extend(
                item
                  .split("::")
                  .map(|s| s.trim().split(' ').next().unwrap_or("").to_owned())
                  .filter(|s| !s.is_empty() && s != "self" && s != "{"),
              );
              out.push(segs);
            }
            prefix.clear();
            break;
          }
          Some(after) => rest = after,
          None => break,
        }
      }
      if !prefix.is_empty() {
        out.push(prefix);
      }
    }
  }
  out
}

fn graph() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
  let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
  let mut files = Vec::new();
  rust_files(&src, &mut files);
  let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
  for file in files {
    let from = module_of(&src, &file).join("::");
    if from.is_empty() {
      continue; // lib.rs declares the layers
    }
    let text = fs::read_to_string(&file).unwrap();
    for path in crate_paths(&text) {
      let segs: Vec<&str> = path.iter().map(String::as_str).collect();
      let Some(to) = target(&src, &segs) else {
        continue;
      };
      let (from_top, to_top) = (
        from.split("::").next().unwrap(),
        to.split("::").next().unwrap(),
      );
      // A folder's root and its own submodules form one concept: not an edge.
      if to == from || from_top == to_top && (from == from_top || to == to_top) {
        continue;
      }
      edges
        .entry(from.clone())
        .or_default()
        .entry(to)
        .or_default()
        .insert(file.strip_prefix(&src).unwrap().display().to_string());
    }
  }
  edges
}

#[test]
fn arrows_point_down() {
  let mut wrong = Vec::new();
  for (from, tos) in graph() {
    let from_top = from.split("::").next().unwrap().to_owned();
    for (to, files) in tos {
      let to_top = to.split("::").next().unwrap();
      let down = layer(&from_top) > layer(to_top);
      let same_folder = from_top == to_top && layer(to_top) > 0;
      let pure_to_pure = layer(&from_top) == 0 && layer(to_top) == 0;
      if !(down || same_folder || pure_to_pure) {
        wrong.push(format!("{from} → {to} ({files:?})"));
      }
    }
  }
  assert!(
    wrong.is_empty(),
    "arrows pointing up or sideways:\n{}",
    wrong.join("\n")
  );
}

#[test]
fn no_import_cycles() {
  let edges = graph();
  fn visit(
    node: &str,
    edges: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    stack: &mut Vec<String>,
    done: &mut BTreeSet<String>,
  ) -> Option<Vec<String>> {
    if let Some(at) = stack.iter().position(|n| n == node) {
      let mut cycle = stack[at..].to_vec();
      cycle.push(node.to_owned());
      return Some(cycle);
    }
    if !done.insert(node.to_owned()) {
      return None;
    }
    stack.push(node.to_owned());
    for next in edges.get(node).into_iter().flat_map(|t| t.keys()) {
      if let Some(cycle) = visit(next, edges, stack, done) {
        return Some(cycle);
      }
    }
    stack.pop();
    None
  }
  let mut done = BTreeSet::new();
  for node in edges.keys() {
    if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
      panic!("import cycle: {}", cycle.join(" → "));
    }
  }
}

#[test]
fn the_check_sees_real_edges() {
  // Guards the parser: if it found nothing, both tests above would pass vacuously.
  let edges = graph();
  assert!(
    edges["quota::client"].contains_key("db::pool"),
    "{edges:#?}"
  );
  assert!(edges["napi::client"].contains_key("quota::client"));
  assert!(edges["quota::usage"].contains_key("quota::owner"));
}
