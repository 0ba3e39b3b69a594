//! `compose-ingress --help` as a newcomer reads it (issue 29, item 7): the sidecar's flags, and
//! the two commands of the same binary that a CI job needs, which `--help` must show since
//! nothing else on the first screen does. The real binary, no bed.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_compose-ingress"))
        .args(args)
        .env_clear()
        .output()
        .expect("run compose-ingress");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code(), text)
}

#[test]
fn help_names_the_wait_and_urls_commands_of_a_ci_job() {
    // The command docs/configuration.md tells a reader to run, as written.
    let line = testbed::doc_inline("docs/configuration.md", "compose-ingress --help");
    let args: Vec<&str> = line.split_whitespace().skip(1).collect();
    let (code, text) = run(&args);
    assert_eq!(code, Some(0), "{text}");
    for part in [
        "--domain",
        "compose-ingress wait PROJECT",
        "compose-ingress urls PROJECT",
        "compose-ingress wait --help",
    ] {
        assert!(text.contains(part), "--help lacks {part:?}:\n{text}");
    }
    // What the help points at exists, and says what the command takes.
    let (code, wait) = run(&["wait", "--help"]);
    assert_eq!(code, Some(0), "{wait}");
    for part in ["<PROJECT>", "--timeout", "--service", "--format"] {
        assert!(wait.contains(part), "wait --help lacks {part:?}:\n{wait}");
    }
    let (code, urls) = run(&["urls", "--help"]);
    assert_eq!(code, Some(0), "{urls}");
    assert!(urls.contains("<PROJECT>"), "{urls}");
}
