//! The Helm chart (deploy/helm/compose-ingress) as operators use it: `helm lint` passes; for the
//! settings of each overlay it renders exactly the objects `kubectl kustomize deploy/…` renders
//! (so the chart and deploy/ cannot drift); its sidecar-only mode hands ARC and GitLab Runner
//! operators the StatefulSet's own sidecar; and on the bed's node `helm install` with an
//! operator's values file runs pods whose compositions answer through Traefik, `helm upgrade`
//! changes a flag without losing a route, and `helm uninstall` leaves nothing of ours.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use testbed::{
    Bed, CONVERGE, Deployment, ENABLE, bed, chart_dir, compose_file, doc_block, doc_commands,
    doc_inline, eventually, helm, helm_ok, node_lock, pod_ready, repo_root, run_doc_line_ok,
    sidecar_image, substitute, unique_namespace, wait_exposed, web,
};

pub(crate) const RELEASE: &str = "ci";

/// The labels Helm's conventions add to every object's metadata (the chart's
/// `compose-ingress.labels`); the only difference from deploy/ the comparison allows.
const HELM_LABELS: [(&str, Option<&str>); 3] = [
    ("helm.sh/chart", None),
    ("app.kubernetes.io/instance", Some(RELEASE)),
    ("app.kubernetes.io/managed-by", Some("Helm")),
];

fn values(name: &str) -> String {
    chart_dir()
        .join("ci")
        .join(format!("{name}-values.yaml"))
        .to_string_lossy()
        .to_string()
}

pub(crate) fn yaml_docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("a rendered YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// `helm template ci deploy/helm/compose-ingress ARGS...`.
fn chart(bed: &Bed, args: &[&str]) -> Vec<Value> {
    let dir = chart_dir().to_string_lossy().to_string();
    let mut all = vec!["template", RELEASE, &dir];
    all.extend_from_slice(args);
    yaml_docs(&helm_ok(bed, &all))
}

/// `kubectl kustomize deploy/DIR`.
fn kustomize(bed: &Bed, dir: &str) -> Vec<Value> {
    let path = repo_root().join("deploy").join(dir);
    let out = bed.kubectl(&["kustomize", &path.to_string_lossy()]);
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/{dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(&String::from_utf8_lossy(&out.stdout))
}

/// Lists whose order means nothing to Kubernetes (merged by name): sorted by name, so that
/// kustomize's patch order (it puts patched-in entries first) is no difference. Init
/// containers keep their order: it is their start order.
const BY_NAME: [&str; 4] = ["env", "ports", "volumes", "volumeMounts"];

/// CEL expressions (the admission guard's), whose whitespace means nothing: kustomize re-emits
/// a folded scalar's more-indented lines with an extra blank line, Helm passes the text as
/// written.
const CEL: [&str; 2] = ["expression", "messageExpression"];

fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match &mut *child {
                    Value::Array(items) if BY_NAME.contains(&key.as_str()) => {
                        items.sort_by_key(|i| i["name"].as_str().unwrap_or_default().to_string());
                    }
                    Value::String(text) if CEL.contains(&key.as_str()) => {
                        *text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                    }
                    _ => {}
                }
                normalize(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// kind/name → the object, with Helm's labels taken off its metadata, named lists sorted and
/// CEL whitespace collapsed.
fn by_key(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter()
        .map(|mut d| {
            // get_mut, not d["metadata"]["labels"]: a mutable index inserts a null label map.
            let metadata = d.get_mut("metadata").and_then(Value::as_object_mut);
            if let Some(labels) = metadata
                .and_then(|m| m.get_mut("labels"))
                .and_then(Value::as_object_mut)
            {
                for (key, value) in HELM_LABELS {
                    if value.is_none_or(|v| labels.get(key).and_then(Value::as_str) == Some(v)) {
                        labels.remove(key);
                    }
                }
                if labels.is_empty() {
                    d["metadata"]
                        .as_object_mut()
                        .expect("metadata")
                        .remove("labels");
                }
            }
            normalize(&mut d);
            let key = format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            );
            (key, d)
        })
        .collect()
}

/// Every object that differs between the two renders, with both sides.
fn differences(chart: &BTreeMap<String, Value>, deploy: &BTreeMap<String, Value>) -> Vec<String> {
    let keys: BTreeSet<&String> = chart.keys().chain(deploy.keys()).collect();
    let show = |v: Option<&Value>| {
        v.map_or("(absent)".to_string(), |v| {
            serde_json::to_string_pretty(v).unwrap_or_default()
        })
    };
    keys.into_iter()
        .filter(|k| chart.get(*k) != deploy.get(*k))
        .map(|k| {
            format!(
                "{k}\n--- chart:\n{}\n--- deploy/:\n{}",
                show(chart.get(k)),
                show(deploy.get(k))
            )
        })
        .collect()
}

#[test]
fn the_chart_lints_with_its_defaults_and_every_example_values_file() {
    let bed = bed();
    let dir = chart_dir().to_string_lossy().to_string();
    helm_ok(bed, &["lint", "--strict", &dir]);
    for name in [
        "ingress",
        "gateway",
        "pod-scope",
        "admission",
        "sidecar-only",
    ] {
        let file = values(name);
        helm_ok(bed, &["lint", "--strict", &dir, "-f", &file]);
    }
}

/// For the settings of each overlay (the chart's ci/*-values.yaml) the chart renders the objects
/// `kubectl kustomize` renders from deploy/, field for field; the defaults are the ingress
/// overlay's.
#[test]
fn the_chart_renders_the_objects_deploy_renders_for_the_same_settings() {
    let bed = bed();
    let cases: [(&str, Option<&str>, &[&str]); 5] = [
        ("defaults", None, &["overlays/ingress"]),
        ("ingress", Some("ingress"), &["overlays/ingress"]),
        ("gateway", Some("gateway"), &["overlays/gateway"]),
        ("pod-scope", Some("pod-scope"), &["overlays/pod-scope"]),
        (
            "admission",
            Some("admission"),
            &["overlays/ingress", "admission"],
        ),
    ];
    let mut failures = Vec::new();
    for (case, file, dirs) in cases {
        let file = file.map(values);
        let args: Vec<&str> = file.iter().flat_map(|f| ["-f", f.as_str()]).collect();
        let from_chart = by_key(chart(bed, &args));
        let from_deploy = by_key(dirs.iter().flat_map(|d| kustomize(bed, d)).collect());
        for diff in differences(&from_chart, &from_deploy) {
            failures.push(format!(
                "[{case} vs deploy/{}] {diff}",
                dirs.join(" + deploy/")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "the chart and deploy/ render different objects:\n{}",
        failures.join("\n\n")
    );
}

/// A bad value stops the render with what was wrong and the fix, before anything is installed.
#[test]
fn a_bad_value_fails_the_render_and_says_what_to_write() {
    let bed = bed();
    let dir = chart_dir().to_string_lossy().to_string();
    for (set, says) in [
        (
            "routeApi=nginx",
            "routeApi is \"nginx\": use ingress or gateway",
        ),
        (
            "routeScope=node",
            "routeScope is \"node\": use composition or pod",
        ),
        ("domain=", "domain is empty: set the domain"),
        (
            "mode=daemonset",
            "mode is \"daemonset\": use statefulset or sidecar-only",
        ),
    ] {
        let out = helm(bed, &["template", RELEASE, &dir, "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "--set {set}: expected a failure saying {says:?}, got {}:\n{err}",
            out.status
        );
    }
}

/// Every option at once (pod scope, Gateway API, access policies, probe URL, the admission
/// guard's parameters, the NetworkPolicy, extra env): what the chart renders is accepted by the
/// real apiserver (server-side dry run into a fresh namespace).
#[test]
fn every_option_renders_objects_the_apiserver_accepts() {
    let bed = bed();
    let ns = unique_namespace("helm-dry");
    let created = bed.kubectl(&["create", "namespace", &ns]);
    assert!(created.status.success(), "create namespace {ns}");
    let dir = chart_dir().to_string_lossy().to_string();
    let rendered = helm_ok(
        bed,
        &[
            "template",
            RELEASE,
            &dir,
            "--set",
            "routeScope=pod",
            "--set",
            "routeApi=gateway",
            "--set",
            "accessPolicies.file=default: public",
            "--set",
            "probeUrl=http://traefik.traefik:80",
            "--set",
            "admissionGuard.enabled=true",
            "--set",
            "admissionGuard.clusterPolicy=false",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "extraEnv[0].name=COMPOSE_INGRESS_SETTLE_TIME",
            "--set",
            "extraEnv[0].value=5s",
        ],
    );
    let file = bed.dir.join(format!("{ns}.yaml"));
    std::fs::write(&file, &rendered).expect("write the rendered chart");
    let out = bed.kubectl(&[
        "apply",
        "--dry-run=server",
        "-n",
        &ns,
        "-f",
        &file.to_string_lossy(),
    ]);
    let _ = std::fs::remove_file(&file);
    let _ = bed.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    assert!(
        out.status.success(),
        "the apiserver refused the chart's objects:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "statefulset.apps/runner",
        "gateway.gateway.networking.k8s.io/compose-ingress",
        "networkpolicy.networking.k8s.io/runner-sidecar-api",
    ] {
        assert!(applied.contains(kind), "{kind} not in:\n{applied}");
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

/// The sidecar container of a pod spec (the native sidecar: an init container).
fn sidecar_of(spec: &Value) -> Value {
    spec["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "compose-ingress"))
        .cloned()
        .unwrap_or_else(|| panic!("no compose-ingress init container in {spec}"))
}

/// `container` with DOCKER_HOST's value and the socket's volume name replaced by placeholders:
/// the only things a runner chart's pods may need differently.
fn without_docker(mut container: Value) -> Value {
    for e in container["env"].as_array_mut().into_iter().flatten() {
        if e["name"] == "DOCKER_HOST" {
            e["value"] = Value::from("<docker>");
        }
    }
    if let Some(mounts) = container["volumeMounts"].as_array_mut() {
        mounts.retain(|m| m["mountPath"] != "/var/run/dind");
    }
    normalize(&mut container);
    container
}

/// Sidecar-only mode: no runner pods, the same ServiceAccount and Roles as the StatefulSet mode,
/// and snippets for ARC's and GitLab Runner's pods that hold the StatefulSet's own sidecar
/// container (only the Docker daemon's address differs) and its token volume.
#[test]
fn sidecar_only_hands_runner_charts_the_statefulsets_own_sidecar() {
    let bed = bed();
    let full = chart(bed, &[]);
    let only = chart(bed, &["-f", &values("sidecar-only")]);
    let kinds: BTreeSet<String> = only
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(
            [
                "ConfigMap/compose-ingress-snippets",
                "Role/compose-ingress",
                "Role/compose-ingress-traefik",
                "RoleBinding/compose-ingress",
                "RoleBinding/compose-ingress-traefik",
                "ServiceAccount/compose-ingress",
            ]
            .map(String::from)
        )
    );
    for (kind, name) in [
        ("Role", "compose-ingress"),
        ("Role", "compose-ingress-traefik"),
    ] {
        assert_eq!(
            find(&only, kind, name),
            find(&full, kind, name),
            "{kind}/{name}"
        );
    }
    let sts = find(&full, "StatefulSet", "runner").expect("the StatefulSet");
    let spec = &sts["spec"]["template"]["spec"];
    let sidecar = sidecar_of(spec);
    // The volumes only the sidecar mounts: its probe socket and its token.
    let sidecar_volumes = Value::Array(
        spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter(|v| v["name"] == "probe-socket" || v["name"] == "kube-api-access")
            .cloned()
            .collect(),
    );
    assert_eq!(sidecar_volumes.as_array().map(Vec::len), Some(2), "{spec}");

    let snippets = &find(&only, "ConfigMap", "compose-ingress-snippets").expect("snippets")["data"];
    // ARC: values for gha-runner-scale-set's template.spec.
    let arc: Value = serde_yaml_ng::from_str(snippets["arc-values.yaml"].as_str().expect("arc"))
        .expect("the ARC snippet is YAML");
    let arc_spec = &arc["template"]["spec"];
    assert_eq!(arc_spec["serviceAccountName"], "compose-ingress");
    assert_eq!(arc_spec["automountServiceAccountToken"], false);
    assert_eq!(arc_spec["volumes"], sidecar_volumes);
    let arc_sidecar = sidecar_of(arc_spec);
    assert_eq!(
        without_docker(arc_sidecar.clone()),
        without_docker(sidecar.clone())
    );
    let mounts = arc_sidecar["volumeMounts"].to_string();
    assert!(
        mounts.contains("\"name\":\"dind-sock\""),
        "ARC's socket volume: {mounts}"
    );

    // GitLab Runner: a strategic-merge pod_spec patch inside config.toml.
    let toml = snippets["gitlab-runner-config.toml"]
        .as_str()
        .expect("gitlab");
    assert!(
        toml.contains("service_account = \"compose-ingress\""),
        "{toml}"
    );
    let patch = toml
        .split("'''")
        .nth(1)
        .unwrap_or_else(|| panic!("no ''' patch in {toml}"));
    let patch: Value = serde_yaml_ng::from_str(patch).expect("the GitLab patch is YAML");
    assert_eq!(patch["automountServiceAccountToken"], false);
    assert_eq!(patch["volumes"], sidecar_volumes);
    let gitlab_sidecar = sidecar_of(&patch);
    assert_eq!(
        without_docker(gitlab_sidecar.clone()),
        without_docker(sidecar)
    );
    assert!(
        gitlab_sidecar["env"]
            .to_string()
            .contains("tcp://127.0.0.1:2375"),
        "GitLab's dind service: {gitlab_sidecar}"
    );
}

/// The values file docs/helm.md shows an operator (`helm-values`), with the bed's
/// substitutions: the bed's sidecar image for their registry's, the test's own domain, one
/// replica (the node fits one runner pod).
fn operator_values(d: &Deployment<'_>, sidecar_image: &str) -> String {
    let (repository, tag) = sidecar_image
        .split_once(':')
        .expect("the sidecar image has a tag");
    let tag = format!("tag: \"{tag}\"");
    substitute(
        "docs/helm.md helm-values",
        &doc_block("docs/helm.md", "helm-values"),
        &[
            ("registry.example.com/compose-ingress", repository),
            ("tag: \"0.1.0\"", &tag),
            ("composition.example.com", &d.domain),
            ("replicas: 2", "replicas: 1"),
        ],
    )
}

/// What the bed adds to the operator's values: its dind image (no registry is reachable, the
/// node has it loaded), a second `-f` file so that the doc's own file stays as written.
fn bed_values(bed: &Bed) -> String {
    let dind = bed.get("DIND_IMAGE");
    let (repository, tag) = dind.rsplit_once(':').expect("the dind image has a tag");
    format!("runner:\n  dind:\n    image: {{repository: {repository}, tag: \"{tag}\"}}\n")
}

/// The rate limits (requests/s) of the sidecar's Traefik Middlewares in the namespace.
pub(crate) fn middleware_limits(d: &Deployment<'_>) -> Vec<String> {
    let out = d.kubectl(&[
        "get",
        "middlewares.traefik.io",
        "-l",
        "app.kubernetes.io/managed-by=compose-ingress",
        "-o",
        "jsonpath={.items[*].spec.rateLimit.average}",
    ]);
    out.split_whitespace().map(String::from).collect()
}

fn sidecar_env(pod: &k8s_openapi::api::core::v1::Pod, name: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "compose-ingress")?;
    sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// What is in the namespace, as kind/name, besides what every namespace holds (the default
/// ServiceAccount, kube-root-ca.crt), the operator's own certificate Secret, and Events (reports
/// that expire by themselves, not objects anyone owns).
pub(crate) fn objects_in(d: &Deployment<'_>) -> Vec<String> {
    let kinds = d.kubectl(&[
        "api-resources",
        "--verbs=list",
        "--namespaced",
        "-o",
        "name",
    ]);
    let kinds: Vec<&str> = kinds.lines().filter(|k| !k.starts_with("events")).collect();
    let listed = d.kubectl(&["get", &kinds.join(","), "-o", "json"]);
    let list: Value = serde_json::from_str(&listed).expect("kubectl get -o json");
    let expected = [
        "ServiceAccount/default",
        "ConfigMap/kube-root-ca.crt",
        "Secret/wildcard-composition-tls",
    ];
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .filter(|k| !expected.contains(&k.as_str()))
        .collect()
}

/// The chart on the bed's node, as an operator runs it: `helm install` with their values file,
/// the runner pod Ready, a composition's URL through Traefik over HTTPS; `helm upgrade` with a
/// lower rate limit keeps the running pod and its route (OnDelete) and the pod the operator
/// replaces between jobs runs with it; `helm uninstall` leaves nothing of ours in the namespace.
#[tokio::test]
async fn helm_install_upgrade_and_uninstall_on_the_node() {
    let bed = bed();
    let _node = node_lock().await;
    let ns = unique_namespace("helm-node");
    let d = Deployment::prepare(bed, &ns, "ingress");
    let dir: PathBuf = bed.dir.join("deploy").join(&ns);
    let file = dir.join("my-values.yaml");
    std::fs::write(&file, operator_values(&d, &sidecar_image(bed))).expect("values file");
    let extra = dir.join("bed-values.yaml");
    std::fs::write(&extra, bed_values(bed)).expect("the bed's values file");
    // docs/helm.md's commands as written, in the repository's root (the chart's path is
    // relative), with the bed's substitutions: the test's namespace, the two values files.
    let files = format!("-f {} -f {}", file.display(), extra.display());
    let namespace = format!("-n {ns}");
    let lines = doc_commands(
        "docs/helm.md",
        "helm-install",
        &[("-n ci", &namespace), ("-f my-values.yaml", &files)],
    );
    let [install, upgrade, uninstall] = lines.as_slice() else {
        panic!("docs/helm.md helm-install: expected install, upgrade, uninstall: {lines:?}");
    };
    let uninstall_words = doc_inline("docs/helm.md", "helm uninstall");
    for (line, starts) in [
        (install, "helm install ci "),
        (upgrade, "helm upgrade ci "),
        (uninstall, uninstall_words.as_str()),
    ] {
        assert!(line.starts_with(starts), "{line:?} is not {starts:?}…");
    }
    let root = repo_root();
    run_doc_line_ok(bed, install, &root, &[]);

    let pod = d.wait_ready("runner-0").await;
    d.load_test_image("runner-0");
    let page = |text: &str| compose_file(&[web("web", text, 80, "80", &[ENABLE])]);
    d.compose_up("runner-0", "app", &page("before the upgrade"));
    let host = d.host("web-80-app-runner-0");
    assert_eq!(d.answers(&host, "/").await.trim(), "before the upgrade");
    let client = bed.admin().await;
    let (_, before) = wait_exposed(&client, &ns, "runner-0", "app").await;
    assert_eq!(middleware_limits(&d), ["50"]);

    // A flag changes: the StatefulSet carries it, the pod that runs keeps its route.
    // The doc's upgrade: the rate limit 50 → 20.
    run_doc_line_ok(bed, upgrade, &root, &[]);
    let template = d.kubectl(&[
        "get",
        "statefulset",
        "runner",
        "-o",
        "jsonpath={.spec.template.spec.initContainers[0].env[?(@.name==\"COMPOSE_INGRESS_DEFAULT_RPS\")].value}",
    ]);
    assert_eq!(template, "20", "the upgraded StatefulSet's sidecar flag");
    assert_eq!(d.answers(&host, "/").await.trim(), "before the upgrade");
    let (_, after) = wait_exposed(&client, &ns, "runner-0", "app").await;
    assert_eq!(
        after.metadata.uid, before.metadata.uid,
        "the Ingress was kept"
    );
    let running = d.pod("runner-0").await.expect("runner-0");
    assert_eq!(running.metadata.uid, pod.metadata.uid, "the pod was kept");

    // Between jobs the operator's drain replaces the pod: the new one runs with the new flag.
    d.kubectl(&["delete", "pod", "runner-0", "--wait=false"]);
    let new = eventually("runner-0 replaced and Ready", CONVERGE, || async {
        let p = d.pod("runner-0").await?;
        (p.metadata.uid != pod.metadata.uid && pod_ready(&p)).then_some(p)
    })
    .await;
    assert_eq!(
        sidecar_env(&new, "COMPOSE_INGRESS_DEFAULT_RPS").as_deref(),
        Some("20")
    );
    d.load_test_image("runner-0");
    d.compose_up("runner-0", "app", &page("after the upgrade"));
    assert_eq!(d.answers(&host, "/").await.trim(), "after the upgrade");
    eventually("the new pod's Middleware says 20/s", CONVERGE, || async {
        (middleware_limits(&d) == ["20"]).then_some(())
    })
    .await;

    run_doc_line_ok(bed, uninstall, &root, &[]);
    // The pod's sidecar deletes its objects at SIGTERM, the garbage collector what it owns:
    // polled until the namespace is clean, within the bound every convergence here has.
    let deadline = std::time::Instant::now() + CONVERGE;
    let left = loop {
        let left = objects_in(&d);
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    assert!(left.is_empty(), "left after helm uninstall: {left:?}");
}
