//! The docs' commands and examples, as tests read them (issue 29: "every command in the docs is
//! one a test runs or renders"). A fenced block in README.md or docs/*.md carries an id in an
//! HTML comment on the line before it (`<!-- doc-test: helm-install -->`); a test reads the
//! block by (file, id) and runs or parses *that* text, so a changed doc changes what is tested.
//! Inline commands in prose (`` `kubectl -n ci logs …` ``) are read by their text. tests/docs.rs
//! checks, without the bed, that every block and inline command is read by some test.
//!
//! The readers panic with the file and what is missing: they are test code, a panic is the
//! failure a test reports.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use crate::bed::{Bed, repo_root, stdout_ok};
use crate::helm;

/// The marker of a block a test reads: `<!-- doc-test: ID -->`.
pub const TEST_MARK: &str = "doc-test:";
/// The marker of a block no test reads because it is output or a picture, not something to run
/// or copy (` ```text ` blocks need no marker).
pub const OUTPUT_MARK: &str = "<!-- doc-output -->";

/// A fenced block of a Markdown file.
#[derive(Debug, Clone)]
pub struct Block {
    /// 1-based line of the opening fence.
    pub line: usize,
    /// The fence's info string (`sh`, `yaml`, empty).
    pub lang: String,
    /// `doc-test` id of the marker right before the fence.
    pub id: Option<String>,
    /// The block is marked as output (`<!-- doc-output -->`).
    pub output: bool,
    /// Its lines, without the fence's indentation (list items indent their blocks).
    pub text: String,
}

/// An inline code span outside blocks that reads as a command (see [`is_command`]).
#[derive(Debug, Clone)]
pub struct Inline {
    pub line: usize,
    pub text: String,
}

fn read(file: &str) -> String {
    let path = repo_root().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The id of a `<!-- doc-test: ID -->` line.
fn marker_id(line: &str) -> Option<String> {
    let inner = line
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim();
    Some(inner.strip_prefix(TEST_MARK)?.trim().to_string())
}

/// The fenced blocks of Markdown `text`, with the marker on the non-blank line before each.
pub fn blocks_of(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        let Some(lang) = line.trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let before = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
        let mut body = Vec::new();
        let mut j = i + 1;
        while j < lines.len() && lines[j].trim() != "```" {
            let l = lines[j];
            body.push(
                l.get(indent.min(l.len() - l.trim_start().len())..)
                    .unwrap_or(l),
            );
            j += 1;
        }
        blocks.push(Block {
            line: i + 1,
            lang: lang.trim().to_string(),
            id: before.and_then(|l| marker_id(l)),
            output: before.is_some_and(|l| l.trim() == OUTPUT_MARK),
            text: body.iter().map(|l| format!("{l}\n")).collect(),
        });
        i = j + 1;
    }
    blocks
}

/// The programs whose inline spans are commands a reader may copy (with a second word: a lone
/// `docker` is an image name, `helm uninstall` a command).
const PROGRAMS: [&str; 7] = [
    "kubectl", "helm", "docker", "curl", "cargo", "htpasswd", "git",
];

/// Whether an inline code span is a command: a program of [`PROGRAMS`] with arguments, the
/// repository's own `./demo`, `./test` and bed scripts, or `compose-ingress` with a subcommand or
/// a flag (not a label such as `compose-ingress.ttl` or a log line `compose-ingress: …`).
/// Leading `VAR=value` assignments are skipped.
pub fn is_command(span: &str) -> bool {
    let mut words = span
        .split_whitespace()
        .skip_while(|w| w.contains('=') && !w.starts_with('-'));
    let (Some(first), second) = (words.next(), words.next()) else {
        return false;
    };
    match first {
        "./demo" | "./test" => true,
        "compose-ingress" => {
            second.is_some_and(|w| w.starts_with("--") || ["wait", "urls", "probe"].contains(&w))
        }
        _ if first.starts_with("tests/testbed/") && first.ends_with(".sh") => true,
        _ if first.starts_with(".testbed/bin/") => true,
        _ => PROGRAMS.contains(&first) && second.is_some(),
    }
}

/// The inline commands of Markdown `text`: code spans outside fenced blocks (a span may wrap
/// onto the next line of its paragraph; it reads with a space there).
pub fn inline_commands_of(text: &str) -> Vec<Inline> {
    let mut prose = String::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            prose.push('\n');
            continue;
        }
        // A block's lines stay as empty lines: line numbers keep counting.
        if !in_block {
            prose.push_str(line);
        }
        prose.push('\n');
    }
    let mut found = Vec::new();
    let mut line = 1;
    // Between the odd and even backticks: the spans; a paragraph's end (a blank line) closes one.
    for paragraph in prose.split_inclusive("\n\n") {
        for (k, part) in paragraph.split('`').enumerate() {
            let text = part.split_whitespace().collect::<Vec<_>>().join(" ");
            if k % 2 == 1 && is_command(&text) {
                found.push(Inline { line, text });
            }
            line += part.matches('\n').count();
        }
    }
    found
}

/// The blocks of a file of the repository (`README.md`, `docs/helm.md`).
pub fn doc_blocks(file: &str) -> Vec<Block> {
    blocks_of(&read(file))
}

/// The inline commands of a file of the repository.
pub fn doc_inline_commands(file: &str) -> Vec<Inline> {
    inline_commands_of(&read(file))
}

/// The text of the block `id` in `file` (a path from the repository's root).
pub fn doc_block(file: &str, id: &str) -> String {
    doc_blocks(file)
        .into_iter()
        .find(|b| b.id.as_deref() == Some(id))
        .unwrap_or_else(|| panic!("{file} has no block <!-- doc-test: {id} -->"))
        .text
}

/// The inline command `text` of `file`, asserted to be there as written: a test that runs an
/// inline command reads it through this, so changing it in the doc fails that test until the test
/// runs the new text.
pub fn doc_inline(file: &str, text: &str) -> String {
    let spans = doc_inline_commands(file);
    assert!(
        spans.iter().any(|s| s.text == text),
        "{file} no longer has the inline command `{text}` (it has: {:?})",
        spans.iter().map(|s| &s.text).collect::<Vec<_>>()
    );
    text.to_string()
}

/// Applies the bed's `substitutions` (what the bed cannot run as a user writes it: their
/// namespace, their registry) to `text`. Every substitution must match: one that no longer does
/// is a stale entry in the test's list, and fails.
pub fn substitute(what: &str, text: &str, substitutions: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in substitutions {
        assert!(
            out.contains(from),
            "{what}: the bed's substitution {from:?} → {to:?} matches nothing in:\n{out}"
        );
        out = out.replace(from, to);
    }
    out
}

/// The command lines of the shell block `id` in `file`, with the bed's `substitutions` applied
/// (see [`substitute`]): comments (`# …` after two spaces or at the line's start) and blank lines
/// dropped.
pub fn doc_commands(file: &str, id: &str, substitutions: &[(&str, &str)]) -> Vec<String> {
    let text = doc_block(file, id);
    let text = substitute(&format!("{file} {id}"), &text, substitutions);
    text.lines()
        .map(|l| match l.find("  #") {
            Some(k) => &l[..k],
            None => l,
        })
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The arguments of a doc's `docker compose …` line after `docker compose`, for
/// [`crate::RunnerPod::compose_as`] (which gives Compose the test's project and file with its own
/// `-p` and `-f`). Panics when the line is not a `docker compose` command, or names a project or
/// file itself: such a line is run as written, with [`run_doc_line`].
pub fn compose_args(line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let ["docker", "compose", rest @ ..] = words.as_slice() else {
        panic!("`{line}` is not a `docker compose …` command");
    };
    assert!(
        !rest
            .iter()
            .any(|w| ["-p", "--project-name", "-f", "--file"].contains(w)),
        "`{line}` names its own project or file: run it as written (run_doc_line)"
    );
    rest.iter().map(|w| w.to_string()).collect()
}

/// Runs a doc's command line with `sh -c` as a user's shell would, in `cwd` with `env`, against
/// the bed: the bed's kubectl and helm on PATH, its kubeconfig, Helm's state under the bed, and
/// `docker compose` as the bed's Compose v2 plugin (not asserted). A `PATH` in `env` goes in
/// front of that PATH (where the job finds `compose-ingress`).
pub fn run_doc_line(bed: &Bed, line: &str, cwd: &Path, env: &[(&str, &str)]) -> Output {
    doc_line_command(bed, line, cwd, env)
        .output()
        .unwrap_or_else(|e| panic!("run `{line}` with sh: {e}"))
}

/// Starts a doc's command line that runs until stopped (`kubectl port-forward …`) as
/// [`run_doc_line`] runs one, its output piped: the caller kills it.
pub fn spawn_doc_line(bed: &Bed, line: &str, cwd: &Path, env: &[(&str, &str)]) -> Child {
    doc_line_command(bed, line, cwd, env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that killing it also stops what `sh -c` started.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start `{line}` with sh: {e}"))
}

/// Stops a line [`spawn_doc_line`] started: SIGTERM to its process group (`sh` and what it
/// runs), then waits for it; returns what it printed.
pub fn stop_doc_line(mut child: Child) -> Output {
    // `kill -TERM -PGID` is read by procps' kill as something else, and does nothing.
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-s", "TERM", "--", &group])
        .status();
    let _ = child.kill();
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for a doc line's process group {group}: {e}"))
}

fn doc_line_command(bed: &Bed, line: &str, cwd: &Path, env: &[(&str, &str)]) -> Command {
    let bin = Path::new(bed.get("BIN"));
    let mut path = bin.display().to_string();
    // Only a Helm line builds (or finds in the cache) the helm binary.
    if line.split_whitespace().any(|w| w == "helm") {
        let helm_dir = helm::binary().parent().unwrap_or(bin);
        path = format!("{path}:{}", helm_dir.display());
    }
    let path = format!("{path}:{}", std::env::var("PATH").unwrap_or_default());
    let path = match env.iter().find(|(k, _)| *k == "PATH") {
        Some((_, front)) => format!("{front}:{path}"),
        None => path,
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(line)
        .current_dir(cwd)
        .env("PATH", path)
        .env("TESTBED_DIR", &bed.dir)
        .env("DOCKER_CONFIG", docker_config(bed));
    helm::state_env(bed, &mut cmd);
    cmd.envs(env.iter().copied().filter(|(k, _)| *k != "PATH"));
    cmd
}

/// A Docker CLI config directory whose one plugin is the bed's Compose v2, so that a doc's
/// `docker compose …` runs as written (the host's docker CLI has no compose plugin).
fn docker_config(bed: &Bed) -> std::path::PathBuf {
    let dir = bed.dir.join("doc-docker-config");
    let plugins = dir.join("cli-plugins");
    let plugin = plugins.join("docker-compose");
    if !plugin.exists() {
        std::fs::create_dir_all(&plugins).expect("create the Docker CLI plugin directory");
        let compose = bed.get("COMPOSE_V2");
        // Another test may have made it in the meantime: then it is there, which is the point.
        if let Err(e) = std::os::unix::fs::symlink(compose, &plugin) {
            assert!(
                plugin.exists(),
                "link {compose} as a Docker CLI plugin: {e}"
            );
        }
    }
    dir
}

/// [`run_doc_line`] asserting success; returns stdout.
pub fn run_doc_line_ok(bed: &Bed, line: &str, cwd: &Path, env: &[(&str, &str)]) -> String {
    stdout_ok(
        run_doc_line(bed, line, cwd, env),
        &format!("the doc's command `{line}`"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_names_the_block_after_it_even_indented() {
        let md = "text\n<!-- doc-test: one -->\n```sh\na  # x\n```\n1. item\n   <!-- doc-test: two -->\n   ```yaml\n   k: v\n   ```\n```text\npic\n```\n";
        let b = blocks_of(md);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].id.as_deref(), Some("one"));
        assert_eq!(b[1].id.as_deref(), Some("two"));
        assert_eq!(b[1].text, "k: v\n");
        assert_eq!((b[2].id.clone(), b[2].lang.as_str()), (None, "text"));
    }

    #[test]
    fn compose_args_are_the_words_after_docker_compose() {
        assert_eq!(
            compose_args("docker compose up -d --scale web=3"),
            ["up", "-d", "--scale", "web=3"]
        );
        for bad in [
            "docker-compose up",
            "docker compose -p x up",
            "kubectl get pods",
        ] {
            assert!(
                std::panic::catch_unwind(|| compose_args(bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn commands_are_told_from_labels_log_lines_and_names() {
        for yes in [
            "./demo",
            "KEEP_TESTBED=1 ./demo down",
            "helm uninstall",
            "compose-ingress wait x",
            "compose-ingress --help",
            "tests/testbed/image.sh",
            "kubectl describe pod runner-3",
        ] {
            assert!(is_command(yes), "{yes}");
        }
        for no in [
            "compose-ingress.ttl",
            "compose-ingress: invalid configuration: …",
            "compose-ingress starting",
            "docker",
            "docker:29-dind",
            "helm.sh/helm/v4",
        ] {
            assert!(!is_command(no), "{no}");
        }
    }
}
