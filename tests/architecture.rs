//! The floor plan of src/ (see the top of src/lib.rs), checked on the source
//! text: no import circle between files, and no import that goes up a floor.
//!
//! Floors, bottom up: `error` and `types`; `options`; `cpu` and `gpu` (which
//! never import each other); `backend`; `losses`; `lib.rs` and `reference.rs`.
//! Every `crate::…`, `super::…` and `self::…` path outside comments and
//! `#[cfg(test)] mod tests` bodies counts, resolved to the file that defines
//! its longest module prefix. Standard library only.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The floor of a top-level module of src/ (`""` is lib.rs).
fn floor(top: &str) -> Option<u8> {
    Some(match top {
        "error" | "types" => 0,
        "options" => 1,
        "cpu" | "gpu" => 2,
        "backend" => 3,
        "losses" => 4,
        "" | "reference" => 5,
        _ => return None,
    })
}

/// A module path as segments (`[]` is the crate root).
type Module = Vec<String>;

fn top(module: &Module) -> &str {
    module.first().map_or("", String::as_str)
}

fn display(module: &Module) -> String {
    if module.is_empty() {
        "crate (lib.rs)".into()
    } else {
        module.join("::")
    }
}

/// Every .rs file under `dir`, with the module it defines.
fn source_files(root: &Path, dir: &Path, files: &mut BTreeMap<Module, PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            source_files(root, &path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            let relative = path.strip_prefix(root).expect("under src");
            let mut module: Module = relative
                .with_extension("")
                .components()
                .map(|component| component.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|name| name == "mod" || name == "lib") {
                module.pop();
            }
            files.insert(module, path);
        }
    }
}

/// `source` without comments (doc comments included) and without the bodies of
/// `#[cfg(test)] mod tests { … }`. String literals are kept as they are.
fn code_of(source: &str) -> String {
    let mut code = String::with_capacity(source.len());
    let bytes = source.as_bytes();
    let mut index = 0;
    let mut in_string = false;
    while index < bytes.len() {
        let rest = &source[index..];
        if in_string {
            if rest.starts_with('\\') {
                code.push_str(&rest[..2.min(rest.len())]);
                index += 2;
                continue;
            }
            if rest.starts_with('"') {
                in_string = false;
            }
        } else if rest.starts_with("//") {
            index += rest.find('\n').unwrap_or(rest.len());
            continue;
        } else if rest.starts_with("/*") {
            index += rest.find("*/").map_or(rest.len(), |end| end + 2);
            continue;
        } else if rest.starts_with("'\"'") {
            code.push_str("' '");
            index += 3;
            continue;
        } else if rest.starts_with('"') {
            in_string = true;
        }
        let character = rest.chars().next().expect("not at the end");
        code.push(character);
        index += character.len_utf8();
    }
    strip_test_modules(&code)
}

/// Removes `#[cfg(test)] mod tests { … }` (braces matched); `mod tests;` stays
/// (its file is never scanned as production code: see [`is_test_file`]).
fn strip_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(start) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..start]);
        let after = rest[start + "#[cfg(test)]".len()..].trim_start();
        if let Some(module) = after.strip_prefix("mod tests") {
            let module = module.trim_start();
            if let Some(body) = module.strip_prefix('{') {
                let mut depth = 1;
                let mut end = body.len();
                for (offset, character) in body.char_indices() {
                    match character {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = offset + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &body[end..];
                continue;
            }
        }
        out.push_str("#[cfg(test)]");
        rest = &rest[start + "#[cfg(test)]".len()..];
    }
    out.push_str(rest);
    out
}

/// Files that hold a module's tests (`tests.rs`, `tests/…`): test code, not floors.
fn is_test_file(module: &Module) -> bool {
    module.iter().any(|segment| segment == "tests")
}

fn is_identifier_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// Every path starting with `crate::`, `super::` or `self::` in `code`, with
/// `use` trees (`a::{b, c::{d, e}}`) expanded, as segment lists.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut paths = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        let starts_word = index == 0 || !(is_identifier_byte(bytes[index - 1]) || bytes[index - 1] == b':');
        let head = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|head| bytes[index..].starts_with(head.as_bytes()));
        match head {
            Some(head) if starts_word => {
                let (tree, length) = use_tree(&code[index..]);
                paths.extend(tree);
                index += length.max(head.len());
            }
            _ => index += 1,
        }
    }
    paths
}

/// The paths of the use tree (or plain path) at the start of `text`, and its length.
fn use_tree(text: &str) -> (Vec<Vec<String>>, usize) {
    let bytes = text.as_bytes();
    let mut prefix = Vec::new();
    let mut index = 0;
    loop {
        while index < bytes.len() && bytes[index].is_ascii_whitespace() {
            index += 1;
        }
        let start = index;
        while index < bytes.len() && is_identifier_byte(bytes[index]) {
            index += 1;
        }
        if index > start {
            prefix.push(text[start..index].to_string());
        }
        let rest = &text[index..];
        if let Some(after) = rest.strip_prefix("::") {
            index += 2;
            if after.trim_start().starts_with('{') {
                index += after.find('{').expect("brace") + 1;
                let mut paths = Vec::new();
                loop {
                    let (branches, length) = use_tree(&text[index..]);
                    for branch in branches.into_iter().filter(|branch| !branch.is_empty()) {
                        let mut path = prefix.clone();
                        path.extend(branch);
                        paths.push(path);
                    }
                    index += length;
                    // `as` renames and the like: skip to the next separator.
                    while index < bytes.len() && !matches!(bytes[index], b',' | b'}') {
                        index += 1;
                    }
                    match bytes.get(index) {
                        Some(b',') => index += 1,
                        Some(_) => return (paths, index + 1),
                        None => return (paths, index),
                    }
                }
            }
            continue;
        }
        return (vec![prefix], index);
    }
}

/// The file module a path written in `from` leads to: `self`/`super` made
/// absolute, then the longest prefix that is a file of src/.
fn resolve(from: &Module, path: &[String], files: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    let mut absolute: Module = Vec::new();
    let mut segments = path.iter().peekable();
    match segments.peek().map(|segment| segment.as_str()) {
        Some("crate") => {
            segments.next();
        }
        Some("self") => {
            segments.next();
            absolute.clone_from(from);
        }
        Some("super") => {
            absolute.clone_from(from);
            while segments.peek().is_some_and(|segment| *segment == "super") {
                segments.next();
                absolute.pop()?;
            }
        }
        _ => return None,
    }
    absolute.extend(segments.cloned());
    (0..=absolute.len())
        .rev()
        .map(|length| absolute[..length].to_vec())
        .find(|prefix| files.contains_key(prefix))
}

/// Each file of src/ and the files it imports.
type Graph = BTreeMap<Module, BTreeSet<Module>>;
/// For each import between two files, one path that makes it.
type Examples = BTreeMap<(Module, Module), String>;

/// The file-level import graph of src/.
fn import_graph() -> (Graph, Examples) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    source_files(&root, &root, &mut files);
    let mut graph = BTreeMap::new();
    let mut examples = BTreeMap::new();
    for (module, path) in &files {
        if is_test_file(module) {
            continue;
        }
        let source = fs::read_to_string(path).expect("source file");
        let mut imports = BTreeSet::new();
        for imported in paths_in(&code_of(&source)) {
            if let Some(target) = resolve(module, &imported, &files)
                && &target != module
                && !is_test_file(&target)
            {
                examples
                    .entry((module.clone(), target.clone()))
                    .or_insert_with(|| imported.join("::"));
                imports.insert(target);
            }
        }
        graph.insert(module.clone(), imports);
    }
    (graph, examples)
}

/// The strongly connected components with more than one file (Tarjan).
fn circles(graph: &Graph) -> Vec<Vec<Module>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a Module) {
        let number = state.index.len();
        state.index.insert(node, number);
        state.low.insert(node, number);
        state.stack.push(node);
        state.on_stack.insert(node);
        for next in state.graph.get(node).into_iter().flatten() {
            let Some((next, _)) = state.graph.get_key_value(next) else {
                continue;
            };
            if !state.index.contains_key(next) {
                visit(state, next);
                let low = state.low[node].min(state.low[next]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(next) {
                let low = state.low[node].min(state.index[next]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(member);
                component.push(member.clone());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node) {
            visit(&mut state, node);
        }
    }
    state.found
}

#[test]
fn no_import_circle_between_files_of_src() {
    let (graph, examples) = import_graph();
    assert!(graph.len() > 20, "src/ has its files: {:?}", graph.keys());
    let found = circles(&graph);
    let report: Vec<String> = found
        .iter()
        .map(|component| {
            let members: BTreeSet<&Module> = component.iter().collect();
            let edges: Vec<String> = component
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|to| members.contains(to))
                        .map(|to| {
                            format!(
                                "    {} → {} ({})",
                                display(from),
                                display(to),
                                examples[&(from.clone(), to.clone())]
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            format!(
                "circle: {}\n{}",
                component.iter().map(display).collect::<Vec<_>>().join(" ↔ "),
                edges.join("\n")
            )
        })
        .collect();
    assert!(report.is_empty(), "import circles in src/:\n{}", report.join("\n"));
}

#[test]
fn no_import_goes_up_a_floor() {
    let (graph, examples) = import_graph();
    let mut violations = Vec::new();
    for (from, targets) in &graph {
        let from_floor =
            floor(top(from)).unwrap_or_else(|| panic!("{} has no floor: add it to `floor`", display(from)));
        for to in targets {
            let to_floor = floor(top(to)).unwrap_or_else(|| panic!("{} has no floor", display(to)));
            let sideways = top(from) != top(to) && matches!((top(from), top(to)), ("cpu", "gpu") | ("gpu", "cpu"));
            if to_floor > from_floor || sideways {
                violations.push(format!(
                    "{} (floor {from_floor}) imports {} (floor {to_floor}) through {}",
                    display(from),
                    display(to),
                    examples[&(from.clone(), to.clone())]
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the floor plan:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_parser_reads_paths_use_trees_and_skips_comments_and_tests() {
    let source = "use crate::a::{b::C, d::{e, f as g}};\n\
                  /// [`crate::doc`]\n\
                  // crate::comment\n\
                  fn h() { super::super::i::j(); let _ = \"crate::in_string\"; }\n\
                  #[cfg(test)]\nmod tests { use crate::test_only; fn k() { { } } }\n\
                  use self::l;\n";
    let paths: Vec<String> = paths_in(&code_of(source)).iter().map(|path| path.join("::")).collect();
    assert_eq!(
        paths,
        [
            "crate::a::b::C",
            "crate::a::d::e",
            "crate::a::d::f",
            "super::super::i::j",
            "crate::in_string",
            "self::l"
        ]
    );
    let mut files = BTreeMap::new();
    for module in [&[][..], &["x"][..], &["x", "y"][..], &["i"][..]] {
        files.insert(
            module.iter().map(|segment| segment.to_string()).collect(),
            PathBuf::new(),
        );
    }
    let from: Module = vec!["x".into(), "y".into(), "z".into()];
    let path: Vec<String> = ["super", "super", "i", "j"]
        .iter()
        .map(|segment| segment.to_string())
        .collect();
    assert_eq!(resolve(&from, &path, &files), Some(vec!["x".into()]));
    let from: Module = vec!["x".into(), "y".into()];
    assert_eq!(resolve(&from, &path, &files), Some(vec!["i".into()]));
}
