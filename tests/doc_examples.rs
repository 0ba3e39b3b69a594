//! The docs' commands and examples that need no bed, read from the docs (testbed::doc_block) and
//! checked for what they claim; the checker that every block is read by some test is
//! tests/docs.rs. Plain `cargo test`, no root.

use testbed::{doc_block, doc_commands, doc_inline, repo_root};

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
    assert_eq!(doc_inline("docs/labels.md", "./test"), lines[1]);
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

/// The value of `env`'s entry `name` in an overlay's sidecar-env.yaml (a kustomize patch of
/// `- name: X` / `value: Y` lines).
fn overlay_env(overlay: &str, name: &str) -> String {
    let file = format!("deploy/overlays/{overlay}/sidecar-env.yaml");
    let text = read(&file);
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line == format!("- name: {name}") {
            let value = lines.next().and_then(|l| l.strip_prefix("value: "));
            return value
                .unwrap_or_else(|| panic!("{file}: {name} has no value"))
                .to_string();
        }
    }
    panic!("{file} sets no {name}");
}

fn yaml(text: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

/// The certificates the docs tell operators to request (cert-manager is not on the bed): each
/// fills the Secret the overlay's sidecar names, for the names its hosts take: the composition
/// scope's `*.<domain>`, the pod scope's `*.<pod>.<domain>` for every ordinal of deploy/base's
/// StatefulSet, or one pod's with `--tls-secret 'wildcard-{pod}-tls'`.
#[test]
fn the_certificates_the_docs_show_cover_the_hosts_of_their_overlay() {
    let domain = overlay_env("ingress", "COMPOSE_INGRESS_DOMAIN");
    let cert = yaml(&doc_block("docs/install.md", "install-certificate"));
    assert_eq!(cert["kind"], "Certificate");
    assert_eq!(
        cert["spec"]["secretName"],
        overlay_env("ingress", "COMPOSE_INGRESS_TLS_SECRET").as_str()
    );
    assert_eq!(strings(&cert["spec"]["dnsNames"]), [format!("*.{domain}")]);

    let pods = overlay_env("pod-scope", "COMPOSE_INGRESS_DOMAIN");
    let base = read("deploy/base/statefulset.yaml");
    let replicas: usize = base
        .lines()
        .find_map(|l| l.trim().strip_prefix("replicas: "))
        .and_then(|n| n.parse().ok())
        .expect("deploy/base's StatefulSet has replicas");
    let all = yaml(&doc_block(
        "docs/pod-scope.md",
        "pod-scope-certificate-ordinals",
    ));
    assert_eq!(
        all["spec"]["secretName"],
        overlay_env("pod-scope", "COMPOSE_INGRESS_TLS_SECRET").as_str()
    );
    let wanted: Vec<String> = (0..replicas)
        .map(|n| format!("*.runner-{n}.{pods}"))
        .collect();
    assert_eq!(strings(&all["spec"]["dnsNames"]), wanted);

    let one = yaml(&doc_block(
        "docs/pod-scope.md",
        "pod-scope-certificate-per-pod",
    ));
    assert_eq!(
        one["spec"]["secretName"],
        "wildcard-{pod}-tls".replace("{pod}", "runner-0").as_str()
    );
    assert_eq!(
        strings(&one["spec"]["dnsNames"]),
        [format!("*.runner-0.{pods}")]
    );
}

/// docs/policies.md's mount patch and policy file, read together: the patch mounts the
/// ConfigMap its own comment creates (from `policies.yaml`) where the sidecar's variable points,
/// under a variable `--help` lists; the policy file names the Middlewares the page's Middleware
/// examples define. (The file's rules are enforced by the sidecar's parser: policies.rs and
/// pod_scope.rs run the page's Middlewares and pod-scope.md's file on the bed.)
#[test]
fn the_policy_mount_and_file_fit_together_and_the_sidecar() {
    let patch_text = doc_block("docs/policies.md", "policies-mount");
    let create = patch_text
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .expect("the patch's kubectl comment");
    assert!(
        create
            .contains("create configmap compose-ingress-access-policies --from-file=policies.yaml"),
        "{create}"
    );
    let patch = yaml(&patch_text);
    let spec = &patch["spec"]["template"]["spec"];
    assert_eq!(
        spec["volumes"][0]["configMap"]["name"],
        "compose-ingress-access-policies"
    );
    let sidecar = &spec["initContainers"][0];
    assert_eq!(sidecar["name"], "compose-ingress");
    let env = &sidecar["env"][0];
    assert_eq!(env["name"], "COMPOSE_INGRESS_ACCESS_POLICIES");
    let mount = sidecar["volumeMounts"][0]["mountPath"]
        .as_str()
        .expect("a mount path");
    assert_eq!(env["value"], format!("{mount}/policies.yaml").as_str());
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_compose-ingress"))
        .arg("--help")
        .env_clear()
        .output()
        .expect("run compose-ingress --help");
    assert!(String::from_utf8_lossy(&help.stdout).contains("COMPOSE_INGRESS_ACCESS_POLICIES"));

    let file = yaml(&doc_block("docs/policies.md", "policies-file"));
    let defined = doc_block("docs/policies.md", "policies-middlewares");
    let policies = file["policies"].as_object().expect("policies");
    assert!(policies.contains_key(file["default"].as_str().expect("a default")));
    for (name, policy) in policies {
        for m in strings(&policy["traefikMiddlewares"]) {
            assert!(
                defined.contains(&format!("metadata: {{name: {m}, ")),
                "policy {name}'s Middleware {m} is not among the page's examples"
            );
        }
    }
}
