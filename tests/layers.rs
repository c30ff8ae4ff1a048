//! The layers of `src/` (docs/architecture.md): every file's imports of other files of the crate
//! (`use` trees, `crate::`/`super::`/`self::` paths, a `mod.rs`'s re-exports of its children)
//! form a graph without cycles, and no file imports from a layer above its own. Plain text
//! reading, no compiler: test code (inline `#[cfg(test)] mod tests`, files declared under
//! `#[cfg(test)]`) and comments are left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The layers, bottom first (docs/architecture.md draws them): a file may import from its own
/// layer and the ones below. A module path matches the longest prefix listed; `main.rs` is the
/// binary and is not read.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundation",
        &[
            "",
            "digest",
            "heap",
            "host",
            "http",
            "shutdown",
            "telemetry",
            "tls",
        ],
    ),
    ("domain", &["fetch", "store", "similarity"]),
    (
        "temporal, base",
        &["temporal", "temporal::contract", "temporal::error"],
    ),
    ("resource", &["crd"]),
    (
        "temporal, mid",
        &[
            "temporal::codec",
            "temporal::connection",
            "temporal::sdk_metrics",
        ],
    ),
    ("temporal, top", &["temporal::client", "temporal::worker"]),
    ("kubernetes", &["kube_client", "list_watch", "metrics"]),
    ("notifications", &["notify"]),
    ("roles", &["controller", "facade", "admin", "probes"]),
    ("configuration", &["config"]),
    ("composition", &["run"]),
];

/// Modules of one layer (or of two) that must not import each other: the first never imports
/// from the second.
const APART: &[(&str, &str)] = &[
    ("temporal::client", "temporal::worker"),
    ("temporal::worker", "temporal::client"),
    ("controller", "facade"),
    ("facade", "controller"),
    ("controller", "temporal::worker"),
    ("facade", "temporal::worker"),
];

/// Whether `module` is `prefix` or inside it.
fn within(module: &[String], prefix: &str) -> bool {
    let name = module.join("::");
    name == prefix || name.starts_with(&format!("{prefix}::"))
}

/// One file of the crate: its module path and its text without unit tests.
struct SourceFile {
    module: Vec<String>,
    text: String,
}

/// The test-only child modules a file declares (`#[cfg(test)] mod name;`), and its text up to
/// its inline test module (`#[cfg(test)] mod tests { .. }`), the declarations of test-only
/// modules left out.
fn without_tests(raw: &str) -> (Vec<String>, String) {
    let mut test_only = Vec::new();
    let mut text = String::new();
    let mut rest = raw;
    while let Some(at) = rest.find("#[cfg(test)]") {
        text.push_str(&rest[..at]);
        let after = rest[at + "#[cfg(test)]".len()..].trim_start();
        let declared = after
            .strip_prefix("mod ")
            .and_then(|m| m.split_once(';'))
            .filter(|(name, _)| name.chars().all(|c| c.is_alphanumeric() || c == '_'));
        match declared {
            Some((name, tail)) => {
                test_only.push(name.to_owned());
                rest = tail;
            }
            None if after.starts_with("mod ") => return (test_only, text),
            None => rest = after,
        }
    }
    text.push_str(rest);
    (test_only, text)
}

fn read_crate(root: &Path) -> BTreeMap<PathBuf, SourceFile> {
    let mut files = BTreeMap::new();
    let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path == root.join("main.rs") {
                continue;
            }
            let relative = path.strip_prefix(root).expect("under src");
            let mut module: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|m| m == "mod" || m == "lib") {
                module.pop();
            }
            let raw = fs::read_to_string(&path).expect("read source");
            let (tests, text) = without_tests(&raw);
            for name in tests {
                let mut child = module.clone();
                child.push(name);
                test_only.insert(child);
            }
            files.insert(relative.to_path_buf(), SourceFile { module, text });
        }
    }
    // Test code (scenario tests, fixtures) may import from anywhere.
    files.retain(|_, file| !test_only.contains(&file.module));
    files
}

/// Identifiers, `::` and punctuation; comments, strings and character literals left out.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or(' ');
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && at(i + 1) == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && at(i + 1) == '#' && at(i + 2) == '"' {
            i += 3;
            while i < chars.len() && !(chars[i] == '"' && at(i + 1) == '#') {
                i += 1;
            }
            i += 2;
        } else if c == '\'' && at(i + 1) == '\\' {
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c == '\'' && at(i + 2) == '\'' {
            i += 3;
        } else if c == '"' {
            // Skip string literals.
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// Expands a use tree starting at `tokens[*at]` into its paths.
fn use_tree(tokens: &[String], at: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    while let Some(token) = tokens.get(*at) {
        match token.as_str() {
            "{" => {
                *at += 1;
                loop {
                    use_tree(tokens, at, path.clone(), out);
                    match tokens.get(*at).map(String::as_str) {
                        Some(",") => *at += 1,
                        Some("}") => {
                            *at += 1;
                            return;
                        }
                        _ => return,
                    }
                    if tokens.get(*at).map(String::as_str) == Some("}") {
                        *at += 1;
                        return;
                    }
                }
            }
            "::" => *at += 1,
            "," | "}" | ";" => break,
            "as" => *at += 2,
            "*" => *at += 1,
            name => {
                path.push(name.to_owned());
                *at += 1;
            }
        }
    }
    out.push(path);
}

/// Every path the file names: use trees and inline paths from `crate`, `super`, `self` or a
/// child module of the file.
fn paths(text: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let tokens = tokens(text);
    let mut out = Vec::new();
    let mut at = 0;
    while at < tokens.len() {
        if tokens[at] == "use" {
            at += 1;
            use_tree(&tokens, &mut at, Vec::new(), &mut out);
            continue;
        }
        let rooted = matches!(tokens[at].as_str(), "crate" | "super" | "self")
            || children.contains(&tokens[at]);
        let starts = at == 0 || tokens[at - 1] != "::";
        if rooted && starts && tokens.get(at + 1).map(String::as_str) == Some("::") {
            let mut path = vec![tokens[at].clone()];
            at += 1;
            while tokens.get(at).map(String::as_str) == Some("::") {
                match tokens.get(at + 1) {
                    Some(next) if next.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                        path.push(next.clone());
                        at += 2;
                    }
                    _ => break,
                }
            }
            out.push(path);
            continue;
        }
        at += 1;
    }
    out
}

/// The child modules a file declares (`mod x;`, `pub mod x;`).
fn children(text: &str) -> BTreeSet<String> {
    let tokens = tokens(text);
    tokens
        .windows(3)
        .filter(|w| w[0] == "mod" && w[2] == ";")
        .map(|w| w[1].clone())
        .collect()
}

/// The module a path names from `file`, as an absolute module path; `None` outside the crate.
fn resolve(file: &SourceFile, path: &[String], children: &BTreeSet<String>) -> Option<Vec<String>> {
    let (first, rest) = path.split_first()?;
    // The module whose scope the file's items live in.
    let here = file.module.clone();
    let mut base = match first.as_str() {
        "crate" => Vec::new(),
        "self" => here,
        "super" => {
            let mut up = here;
            up.pop()?;
            up
        }
        child if children.contains(child) => {
            let mut down = here;
            down.push(child.to_owned());
            down
        }
        _ => return None,
    };
    let mut rest = rest.iter().peekable();
    while rest.peek().is_some_and(|s| s.as_str() == "super") {
        base.pop()?;
        rest.next();
    }
    base.extend(rest.cloned());
    Some(base)
}

/// The file of the longest prefix of `module` that is a file of the crate.
fn file_of<'a>(
    module: &[String],
    by_module: &'a BTreeMap<Vec<String>, PathBuf>,
) -> Option<&'a PathBuf> {
    (0..=module.len())
        .rev()
        .find_map(|len| by_module.get(&module[..len]))
}

fn layer_of(module: &[String]) -> usize {
    let name = module.join("::");
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(index, (_, prefixes))| prefixes.iter().map(move |p| (index, *p)))
        .filter(|(_, prefix)| prefix.is_empty() && name.is_empty() || within(module, prefix))
        .max_by_key(|(_, prefix)| prefix.len())
        .map(|(index, _)| index)
        .unwrap_or_else(|| panic!("module `{name}` is in no layer of tests/layers.rs"))
}

type Graph = BTreeMap<PathBuf, BTreeSet<PathBuf>>;

fn import_graph(files: &BTreeMap<PathBuf, SourceFile>) -> Graph {
    let by_module: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|(path, file)| (file.module.clone(), path.clone()))
        .collect();
    files
        .iter()
        .map(|(path, file)| {
            let children = children(&file.text);
            let imports = paths(&file.text, &children)
                .iter()
                .filter_map(|p| resolve(file, p, &children))
                .filter_map(|module| file_of(&module, &by_module).cloned())
                .filter(|target| target != path)
                .collect();
            (path.clone(), imports)
        })
        .collect()
}

/// Strongly connected components of more than one file (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<PathBuf>> {
    struct Walk<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        found: Vec<Vec<PathBuf>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a PathBuf) {
            let number = self.index.len();
            self.index.insert(node, number);
            self.low.insert(node, number);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.graph.get(node).into_iter().flatten() {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.push(top.clone());
                    if top == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node) {
            walk.visit(node);
        }
    }
    walk.found
}

fn crate_graph() -> (BTreeMap<PathBuf, SourceFile>, Graph) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = read_crate(&root);
    let graph = import_graph(&files);
    (files, graph)
}

#[test]
fn no_file_of_the_crate_imports_in_a_cycle() {
    let (_, graph) = crate_graph();
    assert!(graph.len() > 40, "the crate's files were read");
    let found = cycles(&graph);
    let described: Vec<String> = found
        .iter()
        .map(|c| {
            let names: Vec<String> = c.iter().map(|p| p.display().to_string()).collect();
            names.join(" <-> ")
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", described.join("\n"));
}

#[test]
fn no_file_imports_from_a_layer_above_its_own() {
    let (files, graph) = crate_graph();
    let mut upward = Vec::new();
    for (path, imports) in &graph {
        let from = layer_of(&files[path].module);
        for target in imports {
            let to = layer_of(&files[target].module);
            if to > from {
                upward.push(format!(
                    "{} ({}) imports {} ({})",
                    path.display(),
                    LAYERS[from].0,
                    target.display(),
                    LAYERS[to].0
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports up the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_modules_kept_apart_import_nothing_of_each_other() {
    let (files, graph) = crate_graph();
    let mut crossing = Vec::new();
    for (path, imports) in &graph {
        for target in imports {
            for (from, to) in APART {
                if within(&files[path].module, from) && within(&files[target].module, to) {
                    crossing.push(format!("{} imports {}", path.display(), target.display()));
                }
            }
        }
    }
    assert!(
        crossing.is_empty(),
        "imports between modules kept apart:\n{}",
        crossing.join("\n")
    );
}

#[test]
fn test_code_is_left_out() {
    let raw = "use crate::a;\n#[cfg(test)]\nmod scenarios;\nmod real;\n#[cfg(test)]\n#[global_allocator]\nstatic A: X = X;\nuse crate::b;\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\n";
    let (test_only, text) = without_tests(raw);
    assert_eq!(test_only, vec!["scenarios".to_owned()]);
    assert!(text.contains("mod real;") && text.contains("crate::b"));
    assert!(!text.contains("crate::c") && !text.contains("scenarios"));
}

#[test]
fn the_reader_sees_use_trees_inline_paths_and_re_exports() {
    let text = "use super::{a::B, c::{self, D as E}};\nuse crate::x::y;\nlet z = crate::p::q(1);\npub use child::Thing;\nmod child;\nchild::run(); other::f(\"crate::no\"); // crate::no";
    let found = paths(text, &children(text));
    let expected: Vec<Vec<String>> = [
        vec!["super", "a", "B"],
        vec!["super", "c", "self"],
        vec!["super", "c", "D"],
        vec!["crate", "x", "y"],
        vec!["crate", "p", "q"],
        vec!["child", "Thing"],
        vec!["child", "run"],
    ]
    .iter()
    .map(|p| p.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(found, expected);
    let mut graph = Graph::new();
    graph.insert("a".into(), ["b".into()].into());
    graph.insert("b".into(), ["c".into()].into());
    graph.insert("c".into(), ["a".into()].into());
    graph.insert("d".into(), ["a".into()].into());
    assert_eq!(
        cycles(&graph),
        vec![vec![PathBuf::from("a"), "b".into(), "c".into()]]
    );
}
