//! No crate of the workspace has a module import cycle: within every module, its child modules import each
//! other one way only (issue "a lab without cycles": a cycle is how a harness ends up calling back into the
//! steps that use it). The check reads the sources as text: every `crate::…`, `super::…` and `self::…` path
//! (also inside `{…}` groups) is resolved to an absolute module path; a path from a file in child `a` of
//! module `m` to child `b` of `m` is an edge `a → b` of `m`'s graph, and no graph may have a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One graph per parent module: child → children it imports.
type Graphs = BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>>;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testbed lives in the workspace")
        .to_path_buf()
}

/// The library crates' `src` directories (binaries are thin and have no modules worth a graph).
fn crate_sources(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).expect("read the workspace root") {
        let dir = entry.expect("directory entry").path();
        if dir.join("Cargo.toml").is_file() && dir.join("src/lib.rs").is_file() {
            out.push(dir.join("src"));
        }
    }
    out.sort();
    assert!(
        out.len() >= 5,
        "found too few crates under {}: {out:?}",
        root.display()
    );
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "bin") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file defines: `a/b.rs` and `a/b/mod.rs` are `[a, b]`; `lib.rs` is the crate root `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The code of a source file: comments (line and nested block comments) and the insides of string, raw string
/// and char literals turned into spaces, line breaks kept. A `//` inside a string (a URL) then starts no
/// comment, and a path written in a comment or a string is no reference.
fn code_of(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, dropped: &[char]| {
        out.extend(dropped.iter().map(|&ch| if ch == '\n' { '\n' } else { ' ' }));
    };
    let mut at = 0;
    while at < c.len() {
        let next = c.get(at + 1).copied();
        let end = match (c[at], next) {
            ('/', Some('/')) => {
                let end = c[at..]
                    .iter()
                    .position(|&ch| ch == '\n')
                    .map_or(c.len(), |p| at + p);
                blank(&mut out, &c[at..end]);
                end
            }
            ('/', Some('*')) => {
                let end = block_comment_end(&c, at);
                blank(&mut out, &c[at..end]);
                end
            }
            ('"', _) => literal(&mut out, &c, at, None),
            ('\'', _) => match char_literal_end(&c, at) {
                Some(end) => {
                    out.push('\'');
                    blank(&mut out, &c[at + 1..end - 1]);
                    out.push('\'');
                    end
                }
                None => {
                    out.push('\''); // a lifetime or a label
                    at + 1
                }
            },
            (ch, _) if is_ident(ch) => {
                let word_end = c[at..]
                    .iter()
                    .position(|&ch| !is_ident(ch))
                    .map_or(c.len(), |p| at + p);
                let word: String = c[at..word_end].iter().collect();
                let hashes = c[word_end..].iter().take_while(|&&ch| ch == '#').count();
                if matches!(word.as_str(), "r" | "br" | "cr") && c.get(word_end + hashes) == Some(&'"') {
                    out.push_str(&word);
                    out.extend(std::iter::repeat_n('#', hashes));
                    literal(&mut out, &c, word_end + hashes, Some(hashes))
                } else {
                    out.push_str(&word);
                    word_end
                }
            }
            (ch, _) => {
                out.push(ch);
                at + 1
            }
        };
        at = end;
    }
    out
}

/// Where the block comment that opens at `start` ends (block comments nest).
fn block_comment_end(c: &[char], start: usize) -> usize {
    let mut depth = 0;
    let mut at = start;
    while at < c.len() {
        match (c[at], c.get(at + 1)) {
            ('/', Some('*')) => {
                depth += 1;
                at += 2;
            }
            ('*', Some('/')) => {
                depth -= 1;
                at += 2;
                if depth == 0 {
                    return at;
                }
            }
            _ => at += 1,
        }
    }
    c.len()
}

/// Copies the string literal whose opening quote is at `quote` (its prefix and `#`s already written) with its
/// inside blanked; `raw_hashes`: a raw string, closed by `"` and that many `#`s, with no escapes. Returns where
/// the literal ends.
fn literal(out: &mut String, c: &[char], quote: usize, raw_hashes: Option<usize>) -> usize {
    let raw = raw_hashes.is_some();
    let hashes = raw_hashes.unwrap_or(0);
    let inside = quote + 1;
    let mut at = inside;
    let close = loop {
        match c.get(at) {
            None => break c.len(),
            Some('\\') if !raw => at += 2,
            Some('"') if c[at + 1..].iter().take(hashes).filter(|&&ch| ch == '#').count() == hashes => {
                break at;
            }
            Some(_) => at += 1,
        }
    };
    out.push('"');
    out.extend(
        c[inside.min(close)..close]
            .iter()
            .map(|&ch| if ch == '\n' { '\n' } else { ' ' }),
    );
    if close < c.len() {
        out.push('"');
        out.extend(std::iter::repeat_n('#', hashes));
    }
    (close + 1 + hashes).min(c.len())
}

/// Where the char literal opening at `quote` ends, or `None` when the quote starts a lifetime or a label
/// (`'a`, `'outer:`) instead.
fn char_literal_end(c: &[char], quote: usize) -> Option<usize> {
    match (c.get(quote + 1), c.get(quote + 2)) {
        (Some('\\'), _) => c[quote + 3..]
            .iter()
            .position(|&ch| ch == '\'')
            .map(|p| quote + 3 + p + 1),
        (Some(_), Some('\'')) => Some(quote + 3),
        _ => None,
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Parses the path that starts at `chars[at..]` (after its `crate`/`super`/`self` head has been consumed into
/// `prefix`), expanding `{…}` groups; pushes every full path found.
fn parse_path(chars: &[char], mut at: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        if chars.get(at) == Some(&':') && chars.get(at + 1) == Some(&':') {
            at += 2;
        } else {
            out.push(path);
            return at;
        }
        while chars.get(at).is_some_and(|c| c.is_whitespace()) {
            at += 1;
        }
        if chars.get(at) == Some(&'{') {
            at += 1;
            loop {
                while chars.get(at).is_some_and(|c| c.is_whitespace() || *c == ',') {
                    at += 1;
                }
                match chars.get(at) {
                    None => return at,
                    Some('}') => return at + 1,
                    _ => {}
                }
                let start = at;
                while chars.get(at).is_some_and(|c| is_ident(*c)) {
                    at += 1;
                }
                if at == start {
                    at += 1; // `*` or anything else: a glob names no child
                    continue;
                }
                let mut branch = path.clone();
                branch.push(chars[start..at].iter().collect());
                at = parse_path(chars, at, branch, out);
                // skip an `as alias`
                while chars.get(at).is_some_and(|c| *c != ',' && *c != '}') {
                    at += 1;
                }
            }
        }
        let start = at;
        while chars.get(at).is_some_and(|c| is_ident(*c)) {
            at += 1;
        }
        if at == start {
            out.push(path);
            return at;
        }
        path.push(chars[start..at].iter().collect());
    }
}

fn word_at(chars: &[char], at: usize, word: &str) -> bool {
    word.chars()
        .enumerate()
        .all(|(i, c)| chars.get(at + i) == Some(&c))
        && !chars.get(at + word.len()).is_some_and(|c| is_ident(*c))
        && (at == 0 || !is_ident(chars[at - 1]))
}

/// Every absolute module path the file of `module` refers to through `crate::`, `super::` or `self::`
/// (`self` and `super` chains resolve from the file's own module). Re-exports are not followed: a path to
/// an item a parent re-exports counts as a path to the parent.
fn references(module: &[String], text: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code_of(text).chars().collect();
    let mut out = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let after_path_separator = at > 0 && chars[at - 1] == ':';
        if !after_path_separator && word_at(&chars, at, "crate") {
            at = parse_path(&chars, at + "crate".len(), Vec::new(), &mut out);
        } else if !after_path_separator && (word_at(&chars, at, "super") || word_at(&chars, at, "self")) {
            let mut base = module.to_vec();
            loop {
                if word_at(&chars, at, "super") {
                    base.pop();
                    at += "super".len();
                } else {
                    at += "self".len();
                }
                let continues = chars.get(at) == Some(&':')
                    && chars.get(at + 1) == Some(&':')
                    && (word_at(&chars, at + 2, "super") || word_at(&chars, at + 2, "self"));
                if !continues {
                    break;
                }
                at += 2;
            }
            at = parse_path(&chars, at, base, &mut out);
        } else {
            at += 1;
        }
    }
    out
}

fn graphs_of(src: &Path) -> Graphs {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    let mut graphs = Graphs::new();
    for file in &files {
        let from = module_of(src, file);
        let text = std::fs::read_to_string(file).expect("read a source file");
        for target in references(&from, &text) {
            let common = from.iter().zip(&target).take_while(|(a, b)| a == b).count();
            let (Some(a), Some(b)) = (from.get(common), target.get(common)) else {
                continue; // a parent naming its own child, or a child naming an ancestor
            };
            let parent = from[..common].to_vec();
            let mut sibling = parent.clone();
            sibling.push(b.clone());
            if modules.contains(&sibling) {
                graphs
                    .entry(parent)
                    .or_default()
                    .entry(a.clone())
                    .or_default()
                    .insert(b.clone());
            }
        }
    }
    graphs
}

/// A cycle of `graph`, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_a_module_import_cycle() {
    let mut cycles = Vec::new();
    for src in crate_sources(&workspace_root()) {
        let crate_name = src
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned());
        for (parent, graph) in graphs_of(&src) {
            if let Some(cycle) = find_cycle(&graph) {
                cycles.push(format!(
                    "{}::{}: {}",
                    crate_name.clone().unwrap_or_default(),
                    parent.join("::"),
                    cycle.join(" → ")
                ));
            }
        }
    }
    assert!(cycles.is_empty(), "module import cycles:\n{}", cycles.join("\n"));
}

/// The checker itself finds the kinds of reference the sources use, so an empty answer means something.
#[test]
fn the_checker_sees_crate_super_and_grouped_paths() {
    let module = vec!["lab".to_string(), "steps".to_string()];
    let text = "use crate::lab::{harness::Lab, report};\nuse super::scenarios::run; // super::ignored\nfn f() { super::super::cluster::x(); }";
    let refs = references(&module, text);
    let has = |p: &[&str]| {
        refs.iter()
            .any(|r| r.iter().map(String::as_str).eq(p.iter().copied()))
    };
    assert!(has(&["lab", "harness", "Lab"]), "{refs:?}");
    assert!(has(&["lab", "report"]), "{refs:?}");
    assert!(has(&["lab", "scenarios", "run"]), "{refs:?}");
    assert!(has(&["cluster", "x"]), "{refs:?}");
    assert!(
        !refs.iter().any(|r| r.last().is_some_and(|s| s == "ignored")),
        "{refs:?}"
    );

    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "a".into()]));
    graph.insert("b".to_string(), BTreeSet::new());
    assert_eq!(find_cycle(&graph), None);

    // And on this repository it sees real edges (the lab's steps import its harness).
    let graphs = graphs_of(&workspace_root().join("testbed/src"));
    let lab = graphs
        .get(&vec!["lab".to_string()])
        .expect("the lab has a module graph");
    assert!(lab.get("steps").is_some_and(|s| s.contains("harness")), "{lab:?}");
}

/// Comments are told from literals as the compiler does: a `//` inside a string (a URL, a raw string) starts no
/// comment, so the paths after it on the line count; a path inside a block comment, a string or a raw string
/// is no reference; a char literal `'"'` opens no string and a lifetime `'a` no char literal.
#[test]
fn the_checker_reads_comments_and_literals_as_the_compiler_does() {
    let module = vec!["lab".to_string(), "steps".to_string()];
    let text = r####"
let url = "https://example.com/x"; use crate::after_url::a;
let raw = r#"crate::in_raw::no "quoted" // not a comment"#; use crate::after_raw::b;
let quote = '"'; use crate::after_char::c;
let escaped = "a \" // still a string"; use crate::after_escape::d;
fn f<'a>(x: &'a str) -> &'a str { crate::after_lifetime::e(x) }
/* crate::in_block::no /* nested */ crate::in_nested_block::no */ use crate::after_block::g;
let s = "crate::in_string::no"; let bytes = br"super::in_bytes::no"; let h = b'\''; use crate::after_byte::h;
// crate::in_line_comment::no
"####;
    let refs = references(&module, text);
    let heads: BTreeSet<&str> = refs
        .iter()
        .filter_map(|r| r.first().map(String::as_str))
        .collect();
    assert_eq!(
        heads,
        BTreeSet::from([
            "after_url",
            "after_raw",
            "after_char",
            "after_escape",
            "after_lifetime",
            "after_block",
            "after_byte",
        ]),
        "{refs:?}"
    );
    // Lines stay where they were, so what follows a literal or comment is read in place.
    let code = code_of(text);
    assert_eq!(code.lines().count(), text.lines().count(), "{code}");
    assert!(code.contains("use crate::after_block::g;"), "{code}");
}
