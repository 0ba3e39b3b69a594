//! deploy/monitoring as operators import it: the Grafana dashboard and the alert rules (the
//! plain rules file and the PrometheusRule) use only metrics a real sidecar exports on the bed,
//! and the two rule files hold the same rules.

use std::collections::BTreeSet;

use serde_json::Value;

use testbed::{
    CONVERGE, ENABLE, POD_PROXY_PORT, Sidecar, bed, compose_file, doc_inline, domain, eventually,
    http_get, repo_root, run_doc_line_ok, substitute, unique_namespace, web,
};

use crate::SIDECAR;

fn read(file: &str) -> String {
    let path = repo_root().join("deploy/monitoring").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The sample names of a scrape: its samples' names, and those its `# TYPE` lines declare (a
/// counter's samples are `<name>_total`, a histogram's `_bucket`, `_sum` and `_count`).
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" => {
                    names.extend(["bucket", "sum", "count"].map(|s| format!("{name}_{s}")))
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            names.insert(name.to_string());
        }
    }
    names
}

/// Every compose_ingress_* metric name in a file's text (PromQL in JSON or YAML).
fn used(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("compose_ingress_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// One scrape's sample names, once `ready` says the sidecar is past its first sync.
async fn scrape(sidecar: &Sidecar, until: &str) -> BTreeSet<String> {
    let url = format!("http://{}/metrics", sidecar.listen);
    eventually(&format!("/metrics has {until}"), CONVERGE, || async {
        let (code, body) = http_get(&url, None);
        let names = exported(&body);
        (code == 200 && names.contains(until)).then_some(names)
    })
    .await
}

/// A family with labels shows in /metrics once one of its label values has happened: the bed
/// makes each happen (a composition exposed with one service refused, so Docker events,
/// reconciles, API writes, a refusal and Events; a request through a pod-scope sidecar's
/// proxy), and the names of both sidecars' scrapes are what the files may use.
#[tokio::test]
async fn the_dashboard_and_alert_rules_use_only_metrics_a_real_sidecar_exports() {
    let bed = bed();
    let ns = unique_namespace("monitoring");
    let pod = bed.runner_pod(&ns, "runner-0");
    let sidecar = Sidecar::start(&SIDECAR, bed, &pod, &[]).await;
    let outside = [ENABLE, ("compose-ingress.host", "evil.example")];
    let compose = compose_file(&[
        web("web", "metered", 80, "80", &[ENABLE]),
        web("bad", "refused", 80, "80", &outside),
    ]);
    pod.compose("metered", &compose, &["up", "-d"]);
    let mut exported = scrape(&sidecar, "compose_ingress_refused_labels_total").await;
    exported.extend(scrape(&sidecar, "compose_ingress_kube_events_total").await);

    // Pod scope, without Kubernetes: its proxy answers a request for a host it does not route.
    let proxied = bed.runner_pod(&ns, "runner-1");
    let proxy = Sidecar::start_in_pod_with(&SIDECAR, &proxied, None, &[], "proxy");
    let host = format!("nothing.runner-1.{}", domain(&ns));
    let url = format!("http://{}:{POD_PROXY_PORT}/", proxied.ip);
    eventually("the proxy answers", CONVERGE, || async {
        (http_get(&url, Some(&host)).0 != 0).then_some(())
    })
    .await;
    exported.extend(scrape(&proxy, "compose_ingress_proxy_requests_total").await);

    let mut missing = Vec::new();
    for file in [
        "grafana-dashboard.json",
        "rules.yaml",
        "prometheusrule.yaml",
    ] {
        let names = used(&read(file));
        assert!(!names.is_empty(), "{file} uses no compose_ingress_* metric");
        missing.extend(names.difference(&exported).map(|n| format!("{file}: {n}")));
    }
    assert!(
        missing.is_empty(),
        "metrics used but not in the sidecar's /metrics: {missing:?}\n(exported: {exported:?})"
    );

    // The plain rules file and the PrometheusRule hold the same groups.
    let rules: Value = serde_yaml_ng::from_str(&read("rules.yaml")).expect("rules.yaml");
    let operator: Value =
        serde_yaml_ng::from_str(&read("prometheusrule.yaml")).expect("prometheusrule.yaml");
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(
        operator["spec"]["groups"], rules["groups"],
        "prometheusrule.yaml and rules.yaml differ"
    );
    for rule in rules["groups"][0]["rules"].as_array().expect("rules") {
        let name = rule["alert"].as_str().unwrap_or("?");
        assert!(rule["expr"].is_string(), "{name}: no expr");
        assert!(
            rule["labels"]["severity"].is_string(),
            "{name}: no severity"
        );
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{name}: no summary"
        );
    }

    // The dashboard asks the data source the importer picks, in every query.
    let dashboard: Value =
        serde_json::from_str(&read("grafana-dashboard.json")).expect("the dashboard is JSON");
    let targets: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .collect();
    assert!(!targets.is_empty(), "the dashboard has no queries");
    for t in targets {
        assert_eq!(t["datasource"]["uid"], "${datasource}", "{t}");
    }
}

/// The Prometheus Operator release whose CRDs the bed installs for deploy/monitoring's objects
/// (from its Go module, as the bed takes every other tool).
const PROMETHEUS_OPERATOR: &str = "v0.85.0";

/// docs/monitoring.md's two `kubectl apply` lines, as written but for the namespace, against the
/// Prometheus Operator's own CRDs: the apiserver validates each object against the CRD's schema
/// (kubectl's field validation is strict: an unknown or misspelt field is refused, not pruned).
/// No Prometheus Operator runs on the bed: that it scrapes and loads them is not tested here.
#[tokio::test]
async fn the_podmonitor_and_prometheusrule_apply_against_the_prometheus_operators_crds() {
    let bed = bed();
    let module =
        format!("github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR}");
    let download = std::process::Command::new("go")
        .args(["mod", "download", "-json", &module])
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("go mod download {module}: {e}"));
    let info: Value = serde_json::from_slice(&download.stdout).unwrap_or_else(|e| {
        panic!(
            "go mod download {module} ({e}): {}",
            String::from_utf8_lossy(&download.stderr)
        )
    });
    let crds = std::path::Path::new(info["Dir"].as_str().expect("the module's Dir"))
        .join("example/prometheus-operator-crd");
    for crd in ["podmonitors", "prometheusrules"] {
        let file = crds.join(format!("monitoring.coreos.com_{crd}.yaml"));
        let file = file.display().to_string();
        let out = bed.kubectl(&["apply", "--server-side", "-f", &file]);
        assert!(out.status.success(), "apply {file}: {out:?}");
        let name = format!("crd/{crd}.monitoring.coreos.com");
        let out = bed.kubectl(&[
            "wait",
            "--for",
            "condition=Established",
            "--timeout",
            "60s",
            &name,
        ]);
        assert!(out.status.success(), "{name} not Established: {out:?}");
    }

    let ns = unique_namespace("monitoring-apply");
    let out = bed.kubectl(&["create", "namespace", &ns]);
    assert!(out.status.success(), "create namespace {ns}: {out:?}");
    for (line, kind) in [
        (
            doc_inline(
                "docs/monitoring.md",
                "kubectl -n ci apply -f deploy/monitoring/podmonitor.yaml",
            ),
            "podmonitor",
        ),
        (
            doc_inline(
                "docs/monitoring.md",
                "kubectl -n ci apply -f deploy/monitoring/prometheusrule.yaml",
            ),
            "prometheusrule",
        ),
    ] {
        let line = substitute(
            "docs/monitoring.md",
            &line,
            &[("-n ci", &format!("-n {ns}"))],
        );
        let out = run_doc_line_ok(bed, &line, &repo_root(), &[]);
        assert!(out.contains("created"), "`{line}`: {out}");
        let back = bed.kubectl(&["-n", &ns, "get", kind, "compose-ingress", "-o", "json"]);
        assert!(back.status.success(), "get {kind}: {back:?}");
        let back: Value = serde_json::from_slice(&back.stdout).expect("JSON");
        // What the file says is what the apiserver kept (nothing pruned by the schema).
        let file = line.rsplit(' ').next().expect("the file");
        let wrote: Value =
            serde_yaml_ng::from_str(&read(file.trim_start_matches("deploy/monitoring/")))
                .expect("yaml");
        assert_eq!(
            back["spec"], wrote["spec"],
            "`{line}`: the apiserver kept another spec"
        );
    }
}
