//! The one-way rule, checked: the pure layers (observed state, names, labels, plan, objects,
//! renderers, policies, managed fields) import no I/O module, so that they stay testable without
//! Docker or an apiserver and the data flows one way. Every module of src/lib.rs that is not
//! listed in [`PURE`] counts as I/O, a new one too, until it is listed here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The pure modules: no I/O, and no import of a module that does I/O.
const PURE: &[&str] = &[
    "labels",
    "managed_fields",
    "model",
    "naming",
    "objects",
    "plan",
    "policy",
    "render",
    "variants",
];

/// Modules every layer may use: the tests' fixtures (and, in tests only, the mock API).
const ANYWHERE: &[&str] = &["test_support"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The modules src/lib.rs declares.
fn modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("pub ").unwrap_or(l);
            let rest = rest.strip_prefix("pub(crate) ").unwrap_or(rest);
            rest.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect()
}

/// The source files of module `name`: src/name.rs, and every file under src/name/.
fn files_of(name: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = src().join(format!("{name}.rs"));
    if file.exists() {
        files.push(file);
    }
    let mut dirs = vec![src().join(name)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The crate modules that `code` names: every `crate::a`, and each of `crate::{a, b::c}`.
fn crate_modules_named(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut named = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = code[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // The first segment of each top-level entry of the group.
            let mut depth = 0;
            let mut entry_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => entry_start = true,
                    c if entry_start && !c.is_whitespace() => {
                        named.insert(ident(&group[i..]));
                        entry_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            named.insert(ident(rest));
        }
    }
    named
}

/// `text` without its `//` comments (doc comments name modules in prose).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn pure_modules_import_no_io_module() {
    let modules = modules();
    for pure in PURE {
        assert!(modules.contains(*pure), "src/lib.rs has no module {pure}");
    }
    let io: BTreeSet<&str> = modules
        .iter()
        .map(String::as_str)
        .filter(|m| !PURE.contains(m) && !ANYWHERE.contains(m))
        .collect();
    assert!(io.contains("cluster") && io.contains("docker"), "{io:?}");
    let mut broken = Vec::new();
    for pure in PURE {
        let files = files_of(pure);
        assert!(!files.is_empty(), "no source file of {pure}");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a source file");
            for named in crate_modules_named(&code_of(&text)) {
                if io.contains(named.as_str()) {
                    broken.push(format!("{} uses crate::{named}", file.display()));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "pure modules import I/O modules (move what they need down into a pure module):\n{}",
        broken.join("\n")
    );
}

#[test]
fn imports_are_read_in_every_form() {
    let named = crate_modules_named(
        "use crate::model::X;\nuse crate::{naming, cluster::{Kind, DesiredObject}, docker};\n\
         let k = crate::reconcile::HEARTBEAT;",
    );
    let named: Vec<&str> = named.iter().map(String::as_str).collect();
    assert_eq!(named, ["cluster", "docker", "model", "naming", "reconcile"]);
    assert!(crate_modules_named(&code_of("// see crate::cluster")).is_empty());
}
