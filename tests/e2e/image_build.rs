//! docs/install.md's first step as a user runs it: `docker build` of the Dockerfile's default
//! target in a clean clone (the repository's files, nothing built), with the machine's docker
//! client (no buildx: the classic builder, which builds every stage up to the target) against a
//! runner pod's Docker 29. Its `FROM rust:…-bookworm` comes from no registry here: the bed loads
//! a stand-in of that name (tests/testbed/rust-image.sh: Debian bookworm, gcc, this machine's
//! Rust of that version, crates.io offline from this machine's registry). The image it makes is
//! checked as docs/install.md describes it, and against the bed's own image (the same runtime
//! stage around the host's binary, tests/testbed/prebuilt.Dockerfile), so the two cannot drift.
//!
//! `heavy_`: a release build of every crate inside a container, about five minutes on 2 cores;
//! ./test runs it alone, not beside the parallel tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use testbed::{
    bed, doc_inline, parse_env, repo_root, run_doc_line, stdout_ok, substitute, unique_namespace,
};

/// A clean clone's files: what git tracks, plus new files it does not ignore (a change not yet
/// committed is in the clone it will be), copied from the work tree into `dir`.
fn clean_clone(dir: &Path) {
    let repo = repo_root();
    let files = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(&repo)
        .output()
        .expect("run git ls-files");
    let files = stdout_ok(files, "git ls-files");
    let mut copied = 0;
    for file in files.split('\0').filter(|f| !f.is_empty()) {
        let from = repo.join(file);
        // A tracked file deleted in the work tree is not in the clone either.
        if !from.exists() {
            continue;
        }
        let to = dir.join(file);
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        copied += 1;
    }
    assert!(
        dir.join("Dockerfile").exists() && !dir.join("target").exists(),
        "{copied} files"
    );
}

fn image_config(pod: &testbed::RunnerPod, image: &str) -> Value {
    let inspect = stdout_ok(
        pod.docker_cli(&["image", "inspect", image]),
        "docker image inspect",
    );
    let inspect: Value = serde_json::from_str(&inspect).expect("inspect JSON");
    inspect[0].clone()
}

#[tokio::test]
async fn heavy_the_dockerfiles_default_target_builds_in_a_clean_clone_as_install_md_says() {
    let bed = bed();
    let ns = unique_namespace("image-build");
    let pod = bed.runner_pod(&ns, "runner-0");

    let stand_in = Command::new(repo_root().join("tests/testbed/rust-image.sh"))
        .env("DOCKER_HOST", &pod.docker_host)
        .env("TESTBED_DIR", &bed.dir)
        .output()
        .expect("run tests/testbed/rust-image.sh");
    let stand_in = parse_env(&stdout_ok(stand_in, "tests/testbed/rust-image.sh"));
    eprintln!("build base: {} (stand-in)", stand_in["RUST_IMAGE"]);

    let clone: PathBuf = pod.dir.join("clone");
    clean_clone(&clone);
    let image = "registry.bed.test/compose-ingress:0.1.0";
    let build = substitute(
        "docs/install.md",
        &doc_inline(
            "docs/install.md",
            "docker build -t REGISTRY/compose-ingress:0.1.0 .",
        ),
        &[("REGISTRY/compose-ingress:0.1.0", image)],
    );
    let out = run_doc_line(bed, &build, &clone, &[("DOCKER_HOST", &pod.docker_host)]);
    stdout_ok(out, &format!("`{build}` in a clean clone"));

    // What docs/install.md says of it: a static binary (it runs FROM scratch, below) in a
    // scratch image, uid 65532, about 13 MB (the binary: Docker's image Size also counts the
    // compressed layer when its image store is containerd's).
    let built = image_config(&pod, image);
    let container = stdout_ok(pod.docker_cli(&["create", image]), "docker create");
    let binary = pod.dir.join("built-compose-ingress");
    let from = format!("{}:/compose-ingress", container.trim());
    let to = binary.display().to_string();
    stdout_ok(pod.docker_cli(&["cp", &from, &to]), "docker cp");
    let size = std::fs::metadata(&binary).expect("the copied binary").len();
    eprintln!("image {image}: its binary {size} bytes");
    assert!(
        (10_000_000..16_000_000).contains(&size),
        "about 13 MB, as docs/install.md says: {size} bytes"
    );
    assert_eq!(
        built["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(1),
        "FROM scratch: one layer, the binary"
    );
    assert_eq!(built["Config"]["User"], "65532:65532");
    let version = stdout_ok(
        pod.docker_cli(&["run", "--rm", "--network", "none", image, "--version"]),
        "the image's --version",
    );
    let cargo_version = env!("CARGO_PKG_VERSION");
    assert_eq!(version.trim(), format!("compose-ingress {cargo_version}"));

    // The bed's image (what every node test runs) has the same config as the user's.
    let prebuilt = "compose-ingress:prebuilt";
    let out = Command::new(repo_root().join("tests/testbed/image.sh"))
        .arg(prebuilt)
        .env("DOCKER_HOST", &pod.docker_host)
        .output()
        .expect("run tests/testbed/image.sh");
    stdout_ok(out, "tests/testbed/image.sh");
    let bed_image = image_config(&pod, prebuilt);
    for key in ["Labels", "User", "Entrypoint", "ExposedPorts", "Cmd", "Env"] {
        assert_eq!(
            built["Config"][key], bed_image["Config"][key],
            "{key}: the Dockerfile's image and tests/testbed/prebuilt.Dockerfile's differ"
        );
    }
}
