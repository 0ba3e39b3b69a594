//! Helm as an operator runs it, against the bed: the `helm` command built from its Go module by
//! tests/testbed/build.sh (cached like the bed's other Go tools), with the bed's kubeconfig and
//! Helm's own state (cache, config, data) kept under the bed's directory, not the user's home.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::bed::{Bed, parse_env, repo_root};

/// The chart in the repository.
pub fn chart_dir() -> PathBuf {
    repo_root().join("deploy/helm/compose-ingress")
}

/// The `helm` binary: `build.sh helm` once per test run (a cache hit after the first build).
pub(crate) fn binary() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new(repo_root().join("tests/testbed/build.sh"))
            .arg("helm")
            .output()
            .expect("run tests/testbed/build.sh helm");
        assert!(
            out.status.success(),
            "tests/testbed/build.sh helm failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = parse_env(&String::from_utf8_lossy(&out.stdout));
        Path::new(&env["helm"]).join("helm")
    })
}

/// The bed's kubeconfig and Helm's state (cache, config, data) under the bed, for `cmd`.
pub(crate) fn state_env(bed: &Bed, cmd: &mut Command) {
    let home = bed.dir.join("helm");
    cmd.env("KUBECONFIG", bed.kubeconfig())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
}

/// `helm ARGS...` against the bed (not asserted).
pub fn helm(bed: &Bed, args: &[&str]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    state_env(bed, &mut cmd);
    cmd.output().expect("run helm")
}

/// `helm ARGS...`, asserting success; returns stdout.
pub fn helm_ok(bed: &Bed, args: &[&str]) -> String {
    let out = helm(bed, args);
    assert!(
        out.status.success(),
        "helm {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}
