//! Every command in the docs is one a test runs or renders (issue 29, item 1), checked without
//! the bed: every fenced block of README.md and docs/*.md carries an id
//! (`<!-- doc-test: ID -->` on the line before it) that some test reads through
//! `testbed::doc_block`/`doc_commands` with that file and id, or is a picture or sample output
//! (` ```text `, or `<!-- doc-output -->`); ids are unique; every inline command in prose
//! (`` `kubectl …` ``, `` `helm …` ``, `` `./demo` `` …, see `testbed::is_command`) is read by some
//! test through `testbed::doc_inline` with its exact text. What no test reads yet is listed in
//! [`PENDING_BLOCKS`] and [`PENDING_INLINE`], in the open; an entry a test now reads, or that the
//! docs no longer have, fails too, so the lists only shrink.
//! The decision and how to bind a new block: tests/testbed/README.md, "Commands in the docs".

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use testbed::{Block, doc_blocks, doc_inline_commands, repo_root};

/// Blocks no test reads yet: (file, id). Shrinks as tests bind them.
const PENDING_BLOCKS: &[(&str, &str)] = &[];

/// Inline commands no test reads yet: (file, exact text of the code span).
const PENDING_INLINE: &[(&str, &str)] = &[];

/// The reader calls whose first two string literals name what a test reads.
const READERS: [&str; 3] = ["doc_block", "doc_commands", "doc_inline"];

/// The docs users read: README.md and every docs/*.md.
fn docs() -> Vec<String> {
    let mut files = vec!["README.md".to_string()];
    let dir = repo_root().join("docs");
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.expect("a docs/ entry")
                .file_name()
                .to_string_lossy()
                .to_string()
        })
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

/// The .rs files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The string literals of `args` (Rust source from after a call's `(` to its `)`), unescaped;
/// raw strings `r"…"`/`r#"…"#` as written.
fn literals(args: &str) -> Vec<String> {
    let chars: Vec<char> = args.chars().collect();
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => break,
            ')' | ']' | '}' => depth -= 1,
            'r' if matches!(chars.get(i + 1), Some('"' | '#')) => {
                let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
                let start = i + 1 + hashes + 1;
                let close: String = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let rest: String = chars[start..].iter().collect();
                let end = rest.find(&close).expect("a closed raw string");
                out.push(rest[..end].to_string());
                i = start + rest[..end].chars().count() + close.len();
                continue;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                        match chars.get(i) {
                            Some('n') => s.push('\n'),
                            Some(c) => s.push(*c),
                            None => {}
                        }
                    } else {
                        s.push(chars[i]);
                    }
                    i += 1;
                }
                out.push(s);
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// What the tests read: (file, id or inline text) → where, from every reader call in tests/,
/// bench/ and testbed/src (but the readers' definitions and this file).
fn read_by_tests() -> (BTreeMap<(String, String), String>, Vec<String>) {
    let root = repo_root();
    let mut files = Vec::new();
    for dir in ["tests", "bench", "testbed/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut read = BTreeMap::new();
    let mut bad = Vec::new();
    for file in files {
        // The readers' definitions, and this checker (its messages name the readers).
        if file.ends_with("testbed/src/docs.rs") || file.ends_with("tests/docs.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a test source");
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for reader in READERS {
            let call = format!("{reader}(");
            for (at, _) in text.match_indices(&call) {
                // `fn doc_block(` or `my_doc_block(` are not calls of the reader.
                let before = text[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let line = text[..at].lines().count();
                let lits = literals(&text[at + call.len()..]);
                match lits.as_slice() {
                    [file, key, ..] => {
                        read.insert((file.clone(), key.clone()), format!("{shown}:{line}"));
                    }
                    _ => bad.push(format!(
                        "{shown}:{line}: {reader} with a file or id that is not a string literal: \
                         write both as literals, so that this check sees what the test reads"
                    )),
                }
            }
        }
    }
    (read, bad)
}

/// The one failure message: every problem, each with its fix.
fn check(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "the docs and the tests that read them disagree:\n- {}",
        problems.join("\n- ")
    );
}

/// Every block has an id or is marked as output; ids are unique and every marker names a block.
#[test]
fn every_block_in_the_docs_has_an_id_or_is_marked_as_output() {
    let mut problems = Vec::new();
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for file in docs() {
        let text = std::fs::read_to_string(repo_root().join(&file)).expect("read a doc");
        let markers = text
            .lines()
            .filter(|l| l.contains("<!--") && l.contains(testbed::TEST_MARK))
            .count();
        let blocks = doc_blocks(&file);
        let with_id = blocks.iter().filter(|b| b.id.is_some()).count();
        if markers != with_id {
            problems.push(format!(
                "{file}: {markers} `<!-- doc-test: … -->` markers but {with_id} blocks right after \
                 one: put each marker on the line before its block's fence"
            ));
        }
        for Block {
            line,
            lang,
            id,
            output,
            ..
        } in &blocks
        {
            match id {
                Some(id) => {
                    if let Some(first) = ids.insert(id.clone(), format!("{file}:{line}")) {
                        problems.push(format!(
                            "{file}:{line}: the id {id:?} is also {first}'s: ids are unique"
                        ));
                    }
                }
                None if lang == "text" || *output => {}
                None => problems.push(format!(
                    "{file}:{line}: a ```{lang} block without an id: put `<!-- doc-test: NAME -->` \
                     on the line before it and read it in the test that runs or parses it \
                     (testbed::doc_block(\"{file}\", \"NAME\")); a picture or sample output is \
                     ```text or follows `{}`",
                    testbed::OUTPUT_MARK
                )),
            }
        }
    }
    check(problems);
}

/// Every block with an id and every inline command is read by a test (or pending, in the open);
/// every reader call names something the docs have.
#[test]
fn every_command_and_example_in_the_docs_is_read_by_a_test() {
    let (read, mut problems) = read_by_tests();
    let pending: BTreeSet<(String, String)> = PENDING_BLOCKS
        .iter()
        .chain(PENDING_INLINE)
        .map(|(f, k)| (f.to_string(), k.to_string()))
        .collect();
    let mut present = BTreeSet::new();
    for file in docs() {
        let ids = doc_blocks(&file)
            .into_iter()
            .filter_map(|b| b.id.map(|id| (b.line, id, "block")));
        let inline = doc_inline_commands(&file)
            .into_iter()
            .map(|i| (i.line, i.text, "inline command"));
        for (line, key, what) in ids.chain(inline) {
            let at = (file.clone(), key.clone());
            present.insert(at.clone());
            match (read.get(&at), pending.contains(&at)) {
                (None, false) => problems.push(format!(
                    "{file}:{line}: the {what} {key:?} is read by no test: read it where a test \
                     runs or parses it (testbed::{}(\"{file}\", {key:?}…)) — or, until then, \
                     list it in tests/docs.rs's pending lists",
                    if what == "block" {
                        "doc_block"
                    } else {
                        "doc_inline"
                    }
                )),
                (Some(by), true) => problems.push(format!(
                    "{file}:{line}: the {what} {key:?} is read by {by} and still pending: take it \
                     off tests/docs.rs's pending lists"
                )),
                _ => {}
            }
        }
    }
    for at in read.keys().chain(pending.iter()) {
        if !present.contains(at) {
            let by = read
                .get(at)
                .map_or("tests/docs.rs's pending lists", String::as_str);
            problems.push(format!(
                "{by} names {:?} in {}, which the docs do not have (a renamed id or a changed \
                 command): read what the docs say now",
                at.1, at.0
            ));
        }
    }
    check(problems);
}

#[test]
fn the_literal_reader_sees_what_a_call_names() {
    // What follows a reader's `(`: the call's literals up to its `)`, nothing after it.
    let src = r##""docs/a.md", "x \"y\"", &[("a", "b")]) + r#"z"#"##;
    assert_eq!(literals(src), ["docs/a.md", "x \"y\"", "a", "b"]);
    assert_eq!(literals(r##"r#"a"#, "b")"##), ["a", "b"]);
}
