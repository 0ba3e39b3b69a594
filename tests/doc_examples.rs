//! The docs' commands and examples that need no bed, read from the docs (testbed::doc_block) and
//! checked for what they claim; the checker that every block is read by some test is
//! tests/docs.rs. Plain `cargo test`, no root.

use testbed::{doc_commands, doc_inline, repo_root};

fn read(file: &str) -> String {
    std::fs::read_to_string(repo_root().join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"))
}

/// The README's three commands: `./demo` is run by node.rs's demo test (it reads the same
/// block); `./test` is what CI runs (`.ci/run` execs it) and runs the unit, property and bed
/// tests; `cargo test` is the command running this test, and holds no bed test (the e2e target
/// is `test = false`).
#[test]
fn the_readmes_commands_are_ci_and_the_plain_cargo_test() {
    let lines = doc_commands("README.md", "readme-commands", &[]);
    assert_eq!(
        lines,
        ["./demo", "./test", "cargo test"],
        "README.md readme-commands"
    );
    assert_eq!(doc_inline("README.md", "./test"), lines[1]);
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "exec ./test"),
        ".ci/run does not run ./test:\n{ci}"
    );
    let test = read("test");
    for step in [
        "cargo test --locked --workspace",
        "cargo test --locked --test e2e",
    ] {
        assert!(test.contains(step), "./test lacks {step:?}");
    }
    let manifest = read("Cargo.toml");
    assert!(
        manifest.contains("name = \"e2e\"\npath = \"tests/e2e/main.rs\"\ntest = false"),
        "Cargo.toml's e2e target must say `test = false`: plain `cargo test` runs no bed"
    );
}
