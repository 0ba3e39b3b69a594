//! The Helm chart's sidecar-only mode (docs/helm.md, "Sidecar only") on the bed's node, as an
//! operator of another runner chart uses it: `helm install` with their values file, the
//! snippets read from the ConfigMap as the docs say, merged into that chart's runner pods, and
//! those pods run on the real node: Ready, a composition started in their Docker daemon answers
//! through Traefik over HTTPS, the sidecar's token stays in the sidecar. `helm upgrade` changes
//! the snippets and keeps the running pod's route; `helm uninstall` leaves no object of the
//! chart, and the sidecar's own objects go with the runner pod.
//!
//! ARC's and GitLab Runner's controllers cannot run here (they talk to GitHub and GitLab), so
//! the tests do what they do to get a runner pod: ARC's real chart (vendored,
//! tests/fixtures/gha-runner-scale-set) is rendered with `helm template` and its
//! AutoscalingRunnerSet's pod template created as a Pod; GitLab Runner's job pod is written as
//! its Kubernetes executor builds it and patched with `kubectl patch --local --type strategic`,
//! as the executor applies `pod_spec` patches.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use testbed::{
    Bed, CONVERGE, Deployment, ENABLE, SIDECAR_CONTAINER, bed, chart_dir, compose_file, container,
    doc_commands, helm_ok, node_lock, pod_ready, projected_token, repo_root, run_doc_line_ok,
    runner_image, sidecar_image, stdout_ok, unique_namespace, wait_exposed, web,
};

use crate::helm::{RELEASE, middleware_limits, objects_in, yaml_docs};

/// What the chart installs in sidecar-only mode (none of it may be left after `helm uninstall`).
const CHART_OBJECTS: [&str; 6] = [
    "ConfigMap/compose-ingress-snippets",
    "Role/compose-ingress",
    "Role/compose-ingress-traefik",
    "RoleBinding/compose-ingress",
    "RoleBinding/compose-ingress-traefik",
    "ServiceAccount/compose-ingress",
];

/// An ARC runner pod's name as ARC's controller makes it (`<scale set>-<id>-runner-<id>`).
const ARC_POD: &str = "arc-runner-set-x7k2p-runner-q8z4d";

/// What the operator writes for `helm install` in the runners' namespace: their registry's
/// image, their domain, their controller's class and certificate, sidecar-only mode.
fn operator_values(d: &Deployment<'_>, sidecar_image: &str) -> String {
    let (repository, tag) = sidecar_image
        .split_once(':')
        .expect("the sidecar image has a tag");
    format!(
        r#"mode: sidecar-only
image:
  repository: {repository}
  tag: "{tag}"
domain: {domain}
ingressClass: traefik
tlsSecret: wildcard-composition-tls
rateLimit:
  defaultRps: 50
  maxRps: 50
"#,
        domain = d.domain
    )
}

/// A file in the deployment's directory on the bed (removed with the namespace).
fn write(bed: &Bed, d: &Deployment<'_>, name: &str, text: &str) -> String {
    let file: PathBuf = bed.dir.join("deploy").join(&d.namespace).join(name);
    std::fs::write(&file, text).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    file.to_string_lossy().to_string()
}

/// A snippet, read as docs/helm.md tells the operator to:
/// `kubectl get configmap compose-ingress-snippets -o jsonpath='{.data.KEY}'`.
fn snippet(d: &Deployment<'_>, key: &str) -> String {
    d.kubectl(&[
        "get",
        "configmap",
        "compose-ingress-snippets",
        "-o",
        &format!("jsonpath={{.data.{}}}", key.replace('.', "\\.")),
    ])
}

/// "Add these to your values' lists" (the ARC snippet's own words): maps merge key by key, the
/// snippet's list entries are appended to the operator's, other values are the snippet's.
fn add_to_lists(into: &mut Value, add: &Value) {
    match (into, add) {
        (Value::Object(mine), Value::Object(theirs)) => {
            for (key, value) in theirs {
                match mine.get_mut(key) {
                    Some(slot) => add_to_lists(slot, value),
                    None => {
                        mine.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(mine), Value::Array(theirs)) => mine.extend(theirs.iter().cloned()),
        (slot, value) => *slot = value.clone(),
    }
}

/// The one place where images the bed cannot pull (no registry is reachable) are replaced by
/// the bed's own: the runner images by the stand-in (tests/testbed/runner-image.sh), `docker`
/// images (ARC's docker:dind, GitLab's docker:dind service and docker job image) by the bed's
/// dind image (Docker Engine 29, the docker CLI and Compose). Nothing else of the pod changes;
/// an image not listed here fails the test.
fn bed_images(bed: &Bed, spec: &mut Value, sidecar: &str) {
    let runner = runner_image(bed);
    let dind = bed.get("DIND_IMAGE").to_string();
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            let image = c["image"].as_str().unwrap_or_default().to_string();
            let replaced = match image.as_str() {
                "ghcr.io/actions/actions-runner:latest"
                | "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-latest" => {
                    runner.clone()
                }
                "docker:dind" | "docker:29" => dind.clone(),
                same if same == sidecar => continue,
                other => panic!(
                    "container {} has an image the bed cannot pull: {other}",
                    c["name"]
                ),
            };
            c["image"] = Value::from(replaced);
        }
    }
}

/// `kubectl exec POD -c CONTAINER -- sh -c SCRIPT`'s output, asserting success.
fn sh(d: &Deployment<'_>, pod: &str, container: &str, script: &str, stdin: &[u8]) -> String {
    stdout_ok(
        d.exec_in(pod, container, &["sh", "-c", script], stdin),
        &format!("{pod}/{container}: sh -c {script:?}"),
    )
}

/// Fails if the sidecar's token (its JWT payload) is readable anywhere in the container's file
/// system, or the container has a ServiceAccount mount.
fn token_not_in(d: &Deployment<'_>, pod: &str, container: &str, payload: &str) {
    let found = sh(
        d,
        pod,
        container,
        &format!(
            "find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -type f -size -64k -print0 \
             | xargs -0 grep -lsF '{payload}'; echo searched"
        ),
        b"",
    );
    assert_eq!(
        found.trim(),
        "searched",
        "the sidecar's token is readable in {container}: {found}"
    );
    let mount = d.exec_in(
        pod,
        container,
        &["ls", "/var/run/secrets/kubernetes.io/serviceaccount"],
        b"",
    );
    assert!(
        !mount.status.success(),
        "{container} has a ServiceAccount mount: {}",
        String::from_utf8_lossy(&mount.stdout)
    );
}

/// Creates the pod and waits until it is Ready with its sidecar ready.
async fn run_pod(bed: &Bed, d: &Deployment<'_>, name: &str, spec: Value) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a Pod");
    let api: Api<Pod> = Api::namespaced(bed.admin().await, &d.namespace);
    api.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        if let Some(pod) = d.pod(name).await
            && pod_ready(&pod)
            && container(&pod, SIDECAR_CONTAINER).is_some_and(|c| c.ready)
        {
            return pod;
        }
        if std::time::Instant::now() > deadline {
            // What an operator looks at next: the containers' states and the sidecar's log.
            let status = bed.kubectl(&[
                "-n",
                &d.namespace,
                "get",
                "pod",
                name,
                "-o",
                "jsonpath={.status}",
            ]);
            let log = bed.kubectl(&[
                "-n",
                &d.namespace,
                "logs",
                name,
                "-c",
                SIDECAR_CONTAINER,
                "--tail",
                "20",
            ]);
            panic!(
                "pod {}/{name} not Ready with its sidecar within {CONVERGE:?}:\n{}\nsidecar log:\n{}{}",
                d.namespace,
                String::from_utf8_lossy(&status.stdout),
                String::from_utf8_lossy(&log.stdout),
                String::from_utf8_lossy(&log.stderr)
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The env value of the sidecar container in a pod spec (JSON).
fn sidecar_env(spec: &Value, name: &str) -> Option<String> {
    spec["initContainers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == SIDECAR_CONTAINER)?["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
        .map(String::from)
}

/// The operator's ARC values (tests/fixtures/arc-operator-values.yaml) with the chart's ARC
/// snippet added to their lists, rendered with ARC's real chart: the AutoscalingRunnerSet's
/// `spec.template.spec`, the pod spec ARC's controller gives every runner pod.
fn arc_runner_spec(bed: &Bed, d: &Deployment<'_>, arc_snippet: &str) -> Value {
    let fixtures = repo_root().join("tests/fixtures");
    let theirs = std::fs::read_to_string(fixtures.join("arc-operator-values.yaml"))
        .expect("the ARC operator's values");
    let mut values: Value = serde_yaml_ng::from_str(&theirs).expect("ARC values are YAML");
    let ours: Value = serde_yaml_ng::from_str(arc_snippet).expect("the ARC snippet is YAML");
    add_to_lists(&mut values, &ours);
    let file = write(
        bed,
        d,
        "arc-values.yaml",
        &serde_yaml_ng::to_string(&values).expect("YAML"),
    );
    let chart = fixtures.join("gha-runner-scale-set");
    let rendered = helm_ok(
        bed,
        &[
            "template",
            "arc-runner-set",
            &chart.to_string_lossy(),
            "-n",
            &d.namespace,
            "-f",
            &file,
        ],
    );
    let docs = yaml_docs(&rendered);
    let set = docs
        .iter()
        .find(|o| o["kind"] == "AutoscalingRunnerSet")
        .unwrap_or_else(|| panic!("no AutoscalingRunnerSet in ARC's chart:\n{rendered}"));
    set["spec"]["template"]["spec"].clone()
}

/// ARC (gha-runner-scale-set 0.14.2): the operator installs the chart in sidecar-only mode, adds
/// the ARC snippet to their scale set's values, and the runner pod ARC's chart describes runs on
/// the node with the sidecar; `helm upgrade` with a lower rate limit changes the snippet and
/// keeps the running pod's route; `helm uninstall` leaves no object of the chart, and the
/// sidecar's objects go with the pod.
#[tokio::test]
async fn helm_sidecar_only_runs_in_an_arc_runner_pod_on_the_node() {
    let bed = bed();
    let _node = node_lock().await;
    let ns = unique_namespace("helm-arc");
    let d = Deployment::prepare(bed, &ns, "ingress");
    let image = sidecar_image(bed);
    let values = write(bed, &d, "values.yaml", &operator_values(&d, &image));
    let dir = chart_dir().to_string_lossy().to_string();
    // docs/helm.md's sidecar-only lines, run as written (in the repository's root) but for the
    // bed's substitutions: the test's release name, namespace and domain, and the operator's
    // values file (the bed's image) after the doc's --set flags. The GitLab line is the same
    // read in GitLab Runner's namespace: run in this one, it hands out the GitLab snippet.
    let in_ns = format!("-n {ns}");
    let domain = format!("--set domain={} -f {values}", d.domain);
    let lines = doc_commands(
        "docs/helm.md",
        "helm-sidecar-only",
        &[
            ("helm install compose-ingress ", "helm install ci "),
            ("-n arc-runners", &in_ns),
            ("-n gitlab-runner", &in_ns),
            ("--set domain=composition.example.com", &domain),
        ],
    );
    let [install, arc, gitlab] = lines.as_slice() else {
        panic!("docs/helm.md helm-sidecar-only: expected install, ARC, GitLab: {lines:?}");
    };
    assert!(
        install.starts_with(&format!("helm install {RELEASE} ")),
        "{install}"
    );
    run_doc_line_ok(bed, install, &repo_root(), &[]);
    let gitlab_snippet = run_doc_line_ok(bed, gitlab, &repo_root(), &[]);
    assert!(
        gitlab_snippet.contains("service_account = \"compose-ingress\""),
        "`{gitlab}`: {gitlab_snippet}"
    );
    let arc_snippet = run_doc_line_ok(bed, arc, &repo_root(), &[]);
    assert_eq!(arc_snippet, snippet(&d, "arc-values.yaml"), "`{arc}`");

    let mut spec = arc_runner_spec(bed, &d, &arc_snippet);
    bed_images(bed, &mut spec, &image);
    let pod = run_pod(bed, &d, ARC_POD, spec).await;
    // A job's steps in ARC's runner use dind's socket; here, as the other node tests, through
    // `kubectl exec` into the dind container.
    d.load_test_image(ARC_POD);
    let page = compose_file(&[web("web", "in an ARC runner", 80, "80", &[ENABLE])]);
    d.compose_up(ARC_POD, "app", &page);
    let host = d.host(&format!("web-80-app-{ARC_POD}"));
    assert_eq!(d.answers(&host, "/").await.trim(), "in an ARC runner");
    let client = bed.admin().await;
    let (_, ingress) = wait_exposed(&client, &ns, ARC_POD, "app").await;
    assert_eq!(middleware_limits(&d), ["50"]);

    let token = projected_token(bed, &pod);
    let payload = token.split('.').nth(1).expect("the token is a JWT");
    for c in ["dind", "runner"] {
        token_not_in(&d, ARC_POD, c, payload);
    }

    // A lower limit: the snippet says it (and so the next runner pods, once the operator's
    // scale set carries it), the running pod keeps its route.
    helm_ok(
        bed,
        &[
            "upgrade",
            RELEASE,
            &dir,
            "-n",
            &ns,
            "-f",
            &values,
            "--set",
            "rateLimit.defaultRps=20",
            "--set",
            "rateLimit.maxRps=20",
        ],
    );
    let next = arc_runner_spec(bed, &d, &snippet(&d, "arc-values.yaml"));
    assert_eq!(
        sidecar_env(&next, "COMPOSE_INGRESS_DEFAULT_RPS").as_deref(),
        Some("20"),
        "the upgraded snippet's rate limit"
    );
    assert_eq!(d.answers(&host, "/").await.trim(), "in an ARC runner");
    let (_, kept) = wait_exposed(&client, &ns, ARC_POD, "app").await;
    assert_eq!(
        kept.metadata.uid, ingress.metadata.uid,
        "the Ingress was kept"
    );
    let running = d.pod(ARC_POD).await.expect("the runner pod");
    assert_eq!(running.metadata.uid, pod.metadata.uid, "the pod was kept");

    helm_ok(bed, &["uninstall", RELEASE, "-n", &ns]);
    let left = objects_in(&d);
    let chart_left: Vec<&String> = left
        .iter()
        .filter(|o| CHART_OBJECTS.contains(&o.as_str()))
        .collect();
    assert!(
        chart_left.is_empty(),
        "left after helm uninstall: {chart_left:?}"
    );
    // ARC deletes a runner pod after its job: the sidecar's objects are owned by the pod and go
    // with it (the garbage collector's; the sidecar's credentials went with the ServiceAccount).
    d.kubectl(&["delete", "pod", ARC_POD, "--wait=false"]);
    let deadline = std::time::Instant::now() + CONVERGE;
    let left = loop {
        let left = objects_in(&d);
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    assert!(left.is_empty(), "left after the runner pod went: {left:?}");
}

/// A GitLab Runner job pod's name as its Kubernetes executor makes it
/// (`runner-<token>-project-<id>-concurrent-<n>-<random>`).
const GITLAB_POD: &str = "runner-t3stbed1-project-7-concurrent-0-ab12cd34";

/// The job pod GitLab Runner's Kubernetes executor builds for a job with `image: docker:29`,
/// `services: [docker:dind]` and the variables GitLab's docs give for Docker-in-Docker without
/// TLS (`DOCKER_HOST: tcp://docker:2375`, `DOCKER_TLS_CERTDIR: ""`): the build container (the
/// job's image, the executor's shell detection on an attached stdin), the helper, the service
/// as svc-0 (privileged: `runners.kubernetes.privileged`), the service's alias on 127.0.0.1,
/// the build volumes; `service_account` from config.toml.
fn gitlab_job_pod(service_account: &str) -> Value {
    let variables = json!([
        {"name": "CI_JOB_ID", "value": "7"},
        {"name": "DOCKER_HOST", "value": "tcp://docker:2375"},
        {"name": "DOCKER_TLS_CERTDIR", "value": ""},
    ]);
    let mounts = json!([
        {"name": "repo", "mountPath": "/builds"},
        {"name": "scripts", "mountPath": "/scripts-7-7"},
        {"name": "logs", "mountPath": "/logs-7-7"},
    ]);
    let detect_shell = "if [ -x /usr/local/bin/bash ]; then\n\texec /usr/local/bin/bash \nelif [ -x /usr/bin/bash ]; then\n\texec /usr/bin/bash \nelif [ -x /bin/bash ]; then\n\texec /bin/bash \nelif [ -x /usr/local/bin/sh ]; then\n\texec /usr/local/bin/sh \nelif [ -x /usr/bin/sh ]; then\n\texec /usr/bin/sh \nelif [ -x /bin/sh ]; then\n\texec /bin/sh \nelse\n\techo shell not found\n\texit 1\nfi\n\n";
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": GITLAB_POD, "labels": {"pod": GITLAB_POD}},
        "spec": {
            "serviceAccountName": service_account,
            "restartPolicy": "Never",
            "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["docker"]}],
            "containers": [
                {
                    "name": "build",
                    "image": "docker:29",
                    "command": ["sh", "-c", detect_shell],
                    "stdin": true,
                    "env": variables,
                    "volumeMounts": mounts,
                },
                {
                    "name": "helper",
                    "image": "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-latest",
                    "stdin": true,
                    "env": variables,
                    "volumeMounts": mounts,
                },
                {
                    "name": "svc-0",
                    "image": "docker:dind",
                    "securityContext": {"privileged": true},
                    "env": variables,
                    "volumeMounts": mounts,
                },
            ],
            "volumes": [
                {"name": "repo", "emptyDir": {}},
                {"name": "scripts", "emptyDir": {}},
                {"name": "logs", "emptyDir": {}},
            ],
        },
    })
}

/// What docker:dind's entrypoint runs with `DOCKER_TLS_CERTDIR` empty (dockerd also on
/// tcp://0.0.0.0:2375, `--tls=false`); the bed's dind entrypoint serves only its unix socket
/// (tests/testbed/node/dind-entrypoint.sh), so the service gets these as its arguments. With
/// [`bed_images`], the only change to the executor's pod.
fn bed_dind_service(spec: &mut Value) {
    for c in spec["containers"].as_array_mut().into_iter().flatten() {
        if c["name"] == "svc-0" {
            c["args"] = json!(["--host=tcp://0.0.0.0:2375", "--tls=false"]);
        }
    }
}

/// GitLab Runner (Kubernetes executor): the config.toml snippet's `service_account` and its
/// strategic-merge `pod_spec` patch, applied to the executor's job pod with kubectl's strategic
/// merge; the pod runs on the node and a composition the job's build container starts through
/// the docker:dind service answers through Traefik over HTTPS; the token stays in the sidecar.
#[tokio::test]
async fn helm_sidecar_only_runs_in_a_gitlab_runner_job_pod_on_the_node() {
    let bed = bed();
    let _node = node_lock().await;
    let ns = unique_namespace("helm-gitlab");
    let d = Deployment::prepare(bed, &ns, "ingress");
    let image = sidecar_image(bed);
    let values = write(bed, &d, "values.yaml", &operator_values(&d, &image));
    let dir = chart_dir().to_string_lossy().to_string();
    helm_ok(bed, &["install", RELEASE, &dir, "-n", &ns, "-f", &values]);

    let toml = snippet(&d, "gitlab-runner-config.toml");
    let service_account = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("service_account = "))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no service_account in {toml}"));
    let patch = toml
        .split("'''")
        .nth(1)
        .unwrap_or_else(|| panic!("no ''' pod_spec patch in {toml}"));
    let job = write(
        bed,
        &d,
        "job-pod.json",
        &gitlab_job_pod(&service_account).to_string(),
    );
    // The executor applies the patch to the pod's spec (a PodSpec), kubectl to the object it is
    // given: the patch goes under `spec`.
    let patch: Value = serde_yaml_ng::from_str(patch).expect("the pod_spec patch is YAML");
    let patch = json!({ "spec": patch }).to_string();
    let patched = d.kubectl(&[
        "patch",
        "--local",
        "--type",
        "strategic",
        "-f",
        &job,
        "-p",
        &patch,
        "-o",
        "json",
    ]);
    let patched: Value = serde_json::from_str(&patched).expect("the patched pod");
    let mut spec = patched["spec"].clone();
    bed_images(bed, &mut spec, &image);
    bed_dind_service(&mut spec);
    let pod = run_pod(bed, &d, GITLAB_POD, spec).await;

    // The job's script in the build container: docker (DOCKER_HOST=tcp://docker:2375) loads an
    // image and starts a composition in the service's daemon.
    let tar = std::fs::read(bed.dir.join("busybox-rootfs.tar")).expect("busybox tar");
    let test_image = bed.get("TEST_IMAGE");
    sh(
        &d,
        GITLAB_POD,
        "build",
        &format!("docker import - {test_image}"),
        &tar,
    );
    let page = compose_file(&[web("web", "in a GitLab job", 80, "80", &[ENABLE])]);
    sh(
        &d,
        GITLAB_POD,
        "build",
        "cat > /builds/compose.yml && docker compose -p app -f /builds/compose.yml up -d",
        page.as_bytes(),
    );
    let host = d.host(&format!("web-80-app-{GITLAB_POD}"));
    assert_eq!(d.answers(&host, "/").await.trim(), "in a GitLab job");

    let token = projected_token(bed, &pod);
    let payload = token.split('.').nth(1).expect("the token is a JWT");
    for c in ["build", "helper", "svc-0"] {
        token_not_in(&d, GITLAB_POD, c, payload);
    }
}
