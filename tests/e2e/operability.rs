//! Operability on the test bed: the real sidecar binary runs against a runner pod (as its
//! ServiceAccount, with the Role from deploy/base/rbac.yaml); the tests scrape and parse
//! `/metrics`, watch `/readyz` and `/healthz`, compare `/exposures` with the objects in the
//! apiserver, list the Events on the pod, and throw bad requests at the HTTP server.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};

use testbed::{Bed, CONVERGE, Sidecar, bed, domain, eventually, repo_root, unique_namespace};

use crate::SIDECAR;
use crate::doc_samples::{assert_exposures_like_the_doc, assert_log_line_like_the_doc};

/// Generous bound for Docker reconnects (the sidecar's reconnect backoff reaches 30 s).
const RECONNECT: Duration = Duration::from_secs(120);

/// The HTTP endpoints of a running sidecar (testbed::Sidecar runs the binary).
pub(crate) trait Endpoints {
    fn get(&self, path: &str) -> Result<(u16, String), NoAnswer>;
    async fn wait_status(&self, path: &str, code: u16) -> String;
    fn metrics(&self) -> Metrics;
    fn exposures(&self) -> serde_json::Value;
    fn log_count(&self, needle: &str) -> usize;
}

impl Endpoints for Sidecar {
    fn get(&self, path: &str) -> Result<(u16, String), NoAnswer> {
        raw(
            &self.listen,
            format!("GET {path} HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    }

    async fn wait_status(&self, path: &str, code: u16) -> String {
        eventually(
            &format!("{path} answers {code} (log: {})", self.log.display()),
            RECONNECT,
            || async {
                self.get(path)
                    .ok()
                    .filter(|(c, _)| *c == code)
                    .map(|(_, b)| b)
            },
        )
        .await
    }

    fn metrics(&self) -> Metrics {
        let (code, body) = self.get("/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "GET /metrics: {body}");
        Metrics::parse(&body)
    }

    fn exposures(&self) -> serde_json::Value {
        let (code, body) = self.get("/exposures").expect("GET /exposures");
        assert_eq!(code, 200, "GET /exposures: {body}");
        serde_json::from_str(&body).expect("/exposures is JSON")
    }

    fn log_count(&self, needle: &str) -> usize {
        self.log_lines(needle).len()
    }
}

/// Why a request got no HTTP answer (the texts are read in assertion messages, through Debug).
#[derive(Debug)]
#[allow(dead_code)]
pub(crate) enum NoAnswer {
    /// Nothing listens (the sidecar is not up, or it crashed).
    Connect(String),
    /// The server accepted the connection and closed it without an answer (what a server may do
    /// with a request it refuses to read to the end).
    Closed(String),
}

/// One HTTP/1.1 exchange over a fresh connection: (status, body) of the first response.
fn raw(addr: &str, request: &[u8]) -> Result<(u16, String), NoAnswer> {
    raw_all(addr, request).map(|mut answers| answers.remove(0))
}

/// Every response the server sent on one connection (pipelined requests get one each), in
/// order; at least one, or Err.
fn raw_all(addr: &str, request: &[u8]) -> Result<Vec<(u16, String)>, NoAnswer> {
    let mut s = TcpStream::connect(addr).map_err(|e| NoAnswer::Connect(format!("{addr}: {e}")))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| NoAnswer::Connect(e.to_string()))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| NoAnswer::Connect(e.to_string()))?;
    // The server may answer and close before reading everything (huge headers): still read.
    let wrote = s.write_all(request);
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf);
    let answers = parse_responses(&buf);
    if answers.is_empty() {
        return Err(NoAnswer::Closed(format!(
            "no HTTP answer (write: {wrote:?}, read: {read:?}, got {:?})",
            String::from_utf8_lossy(&buf)
        )));
    }
    Ok(answers)
}

/// Splits a byte stream into HTTP/1.1 responses by their Content-Length (the sidecar always
/// sends one); a HEAD answer has headers only.
fn parse_responses(mut buf: &[u8]) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let Some(code) = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
        else {
            break;
        };
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        let rest = &buf[end + 4..];
        let body_len = length.min(rest.len());
        out.push((code, String::from_utf8_lossy(&rest[..body_len]).to_string()));
        buf = &rest[body_len..];
    }
    out
}

// ------------------------------------------------------------------------------------------
// Prometheus/OpenMetrics text parsing (what a scraper does).

pub(crate) struct Metrics(Vec<(String, BTreeMap<String, String>, f64)>);

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("metric line {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("metric value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("labels in {line:?}"));
                    let labels = inner
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv
                                .split_once('=')
                                .unwrap_or_else(|| panic!("label in {line:?}"));
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            samples.push((name, labels, value));
        }
        Metrics(samples)
    }

    /// Sum of the samples of `name` whose labels include `labels`.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _, _)| n == name)
    }
}

// ------------------------------------------------------------------------------------------

fn web_compose(page: &str, labels: &[(&str, &str)]) -> String {
    let mut s = format!(
        "version: \"2.4\"\nservices:\n  web:\n    image: compose-ingress-test/busybox:1\n    \
         command: [\"sh\", \"-c\", \"echo {page} > /www/index.html && exec httpd -f -p 80 -h /www\"]\n    \
         ports: [\"80\"]\n    labels:\n      compose-ingress.enable: \"true\"\n"
    );
    for (k, v) in labels {
        s.push_str(&format!("      {k}: {v:?}\n"));
    }
    s
}

pub(crate) fn pod_sh(bed: &Bed, args: &[&str], dir: &Path) {
    let out = Command::new(repo_root().join("tests/testbed/pod.sh"))
        .args(args)
        .arg(dir)
        .env("TESTBED_DIR", &bed.dir)
        .output()
        .expect("run tests/testbed/pod.sh");
    assert!(
        out.status.success(),
        "pod.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn composition<'a>(doc: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    doc["compositions"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

fn state_of(doc: &serde_json::Value, name: &str) -> Option<String> {
    composition(doc, name).and_then(|c| c["state"].as_str().map(str::to_string))
}

fn selector(pod: &str, project: &str) -> ListParams {
    ListParams::default().labels(&format!(
        "app.kubernetes.io/managed-by=compose-ingress,compose-ingress/pod={pod},compose-ingress/project={project}"
    ))
}

// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_move_as_a_composition_comes_and_goes() {
    let bed = bed();
    let ns = unique_namespace("ops-metrics");
    let pod = bed.runner_pod(&ns, "runner-0");
    let sidecar = Sidecar::start(&SIDECAR, bed, &pod, &["--delete-grace", "5s"]).await;
    sidecar.wait_status("/readyz", 200).await;

    let before = sidecar.metrics();
    for name in [
        "compose_ingress_ready",
        "compose_ingress_exposed_compositions",
        "compose_ingress_exposed_hosts",
        "compose_ingress_docker_reconnects_total",
        "compose_ingress_last_resync_timestamp_seconds",
        "compose_ingress_apply_duration_seconds_count",
    ] {
        assert!(before.has(name), "{name} missing from /metrics");
    }
    assert_eq!(before.value("compose_ingress_ready", &[]), 1.0);
    assert!(before.value("compose_ingress_last_resync_timestamp_seconds", &[]) > 1.6e9);
    assert_eq!(
        before.value("compose_ingress_exposed_compositions", &[]),
        0.0
    );

    pod.compose("metered", &web_compose("metered", &[]), &["up", "-d"]);
    let up = eventually("metrics show one exposed composition", CONVERGE, || async {
        let m = sidecar.metrics();
        (m.value("compose_ingress_exposed_compositions", &[]) == 1.0).then_some(m)
    })
    .await;
    assert_eq!(up.value("compose_ingress_exposed_hosts", &[]), 1.0);
    assert!(
        up.value(
            "compose_ingress_docker_events_total",
            &[("action", "start")]
        ) >= 1.0
    );
    assert!(
        up.value(
            "compose_ingress_docker_events_total",
            &[("action", "create")]
        ) >= 1.0
    );
    assert!(
        up.value(
            "compose_ingress_reconciles_total",
            &[("outcome", "changed")]
        ) >= 1.0
    );
    for kind in ["Lease", "Service", "Ingress"] {
        assert!(
            up.value(
                "compose_ingress_api_requests_total",
                &[("verb", "create"), ("kind", kind), ("result", "ok")]
            ) >= 1.0,
            "a create of the {kind} was counted"
        );
    }
    assert!(
        up.value("compose_ingress_apply_duration_seconds_count", &[])
            >= before.value("compose_ingress_apply_duration_seconds_count", &[]) + 2.0
    );

    // Refused labels are counted by reason.
    pod.compose(
        "refusing",
        &web_compose("refusing", &[("compose-ingress.host", "evil.com")]),
        &["up", "-d"],
    );
    eventually("a refused label is counted", CONVERGE, || async {
        let m = sidecar.metrics();
        (m.value(
            "compose_ingress_refused_labels_total",
            &[("reason", "host-outside-domain")],
        ) >= 1.0)
            .then_some(())
    })
    .await;

    pod.compose("metered", &web_compose("metered", &[]), &["down"]);
    let down = eventually("metrics show the composition gone", CONVERGE, || async {
        let m = sidecar.metrics();
        (m.value("compose_ingress_exposed_compositions", &[]) == 0.0
            && m.value(
                "compose_ingress_api_requests_total",
                &[("verb", "delete"), ("kind", "Ingress")],
            ) >= 1.0
            && m.value(
                "compose_ingress_api_requests_total",
                &[("verb", "delete"), ("kind", "Service")],
            ) >= 1.0)
            .then_some(m)
    })
    .await;
    assert_eq!(down.value("compose_ingress_exposed_hosts", &[]), 0.0);
    assert!(
        down.value(
            "compose_ingress_docker_events_total",
            &[("action", "destroy")]
        ) >= 1.0
    );
    assert!(
        down.value(
            "compose_ingress_api_requests_total",
            &[("verb", "delete"), ("kind", "Service"), ("result", "ok")]
        ) >= 1.0
    );
    assert_eq!(
        down.value("compose_ingress_api_requests_total", &[("result", "error")]),
        0.0,
        "no API request failed"
    );
    assert!(
        down.value(
            "compose_ingress_kube_events_total",
            &[("reason", "Exposed"), ("result", "posted")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn readyz_flips_after_the_initial_sync_and_stays_ready_while_dockerd_is_away() {
    let bed = bed();
    let ns = unique_namespace("ops-ready");
    let pod = bed.runner_pod(&ns, "runner-0");
    // Start with dind down, as when the native sidecar starts before the dind container.
    pod_sh(bed, &["dockerd-stop"], &pod.dir);
    let mut sidecar = Sidecar::start(&SIDECAR, bed, &pod, &["--delete-grace", "5s"]).await;
    sidecar.wait_status("/healthz", 200).await;
    // While Docker never answered: alive, not ready, and it says why (sampled several times).
    for _ in 0..10 {
        let (code, body) = sidecar.get("/readyz").expect("GET /readyz");
        assert_eq!(code, 503, "ready without an initial sync: {body}");
        assert!(body.contains("initial full sync"), "{body}");
        assert_eq!(sidecar.get("/healthz").expect("GET /healthz").0, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(sidecar.metrics().value("compose_ingress_ready", &[]), 0.0);
    assert_eq!(sidecar.log_count("full resync done"), 0);

    pod_sh(bed, &["dockerd-start"], &pod.dir);
    sidecar.wait_status("/readyz", 200).await;
    assert!(
        sidecar.log_count("full resync done") >= 1,
        "ready before the initial full sync was logged:\n{}",
        sidecar.logs()
    );
    let synced = sidecar.metrics();
    assert_eq!(synced.value("compose_ingress_ready", &[]), 1.0);

    assert_eq!(synced.value("compose_ingress_docker_connected", &[]), 1.0);

    // dind stops: the sidecar stays ready (its readiness is part of the pod's, and an unready
    // pod would take every composition URL offline), says why in the body, and the metrics
    // show the outage. Still alive.
    pod_sh(bed, &["dockerd-stop"], &pod.dir);
    let lost = eventually("the sidecar notices dind is gone", CONVERGE, || async {
        let m = sidecar.metrics();
        (m.value("compose_ingress_docker_connected", &[]) == 0.0).then_some(m)
    })
    .await;
    assert!(lost.value("compose_ingress_docker_reconnects_total", &[]) >= 1.0);
    assert_eq!(lost.value("compose_ingress_ready", &[]), 1.0);
    for _ in 0..5 {
        let (code, body) = sidecar.get("/readyz").expect("GET /readyz");
        assert_eq!(
            code, 200,
            "a Docker outage made the sidecar unready: {body}"
        );
        assert!(body.contains("Docker is not connected"), "{body}");
        assert_eq!(sidecar.get("/healthz").expect("GET /healthz").0, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // dind is back: connected again after a new full resync.
    pod_sh(bed, &["dockerd-start"], &pod.dir);
    eventually("the sidecar reconnects and resyncs", RECONNECT, || async {
        let (code, body) = sidecar.get("/readyz").ok()?;
        (code == 200 && body == "ready\n").then_some(())
    })
    .await;
    assert!(
        sidecar.log_count("full resync done") >= 2,
        "{}",
        sidecar.logs()
    );
    assert_eq!(
        sidecar
            .metrics()
            .value("compose_ingress_docker_connected", &[]),
        1.0
    );
    assert!(
        sidecar.still_running(),
        "the sidecar survived dind going away"
    );
}

#[tokio::test]
async fn exposures_match_the_objects_in_the_cluster() {
    let bed = bed();
    let ns = unique_namespace("ops-exposures");
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    // The pending-deletion state lasts the grace: long enough that polling it is never a race
    // with a loaded machine.
    let sidecar = Sidecar::start(&SIDECAR, bed, &pod, &["--delete-grace", "30s"]).await;
    sidecar.wait_status("/readyz", 200).await;

    let two = "version: \"2.4\"\nservices:\n  web:\n    image: compose-ingress-test/busybox:1\n    \
               command: [\"sh\", \"-c\", \"echo web > /www/index.html && exec httpd -f -p 80 -h /www\"]\n    \
               ports: [\"80\"]\n    labels:\n      compose-ingress.enable: \"true\"\n  \
               api:\n    image: compose-ingress-test/busybox:1\n    \
               command: [\"sh\", \"-c\", \"echo api > /www/index.html && exec httpd -f -p 5000 -h /www\"]\n    \
               ports: [\"5000\"]\n    labels:\n      compose-ingress.enable: \"true\"\n      compose-ingress.host: \"myapi\"\n";
    pod.compose("shop", two, &["up", "-d"]);
    pod.compose(
        "bad",
        &web_compose("bad", &[("compose-ingress.ports", "80,x")]),
        &["up", "-d"],
    );

    let doc = eventually(
        "/exposures shows shop exposed and bad refused",
        CONVERGE,
        || async {
            let doc = sidecar.exposures();
            let shop = composition(&doc, "shop")?;
            (shop["state"] == "exposed"
                && shop["backends"].as_array().map(Vec::len) == Some(2)
                && state_of(&doc, "bad").as_deref() == Some("refused"))
            .then_some(doc)
        },
    )
    .await;
    assert_eq!(doc["pod"], "runner-0");
    assert_eq!(doc["namespace"], ns.as_str());
    assert_eq!(doc["ready"], true);

    // Same hosts as the Ingress rules, same host ports as the Service's target ports.
    let shop = composition(&doc, "shop").expect("shop");
    let backends = shop["backends"].as_array().expect("backends");
    let hosts: BTreeSet<String> = backends
        .iter()
        .map(|b| b["host"].as_str().expect("host").to_string())
        .collect();
    let expected_hosts: BTreeSet<String> = [
        format!("web-80-shop-runner-0.{}", domain(&ns)),
        format!("myapi.{}", domain(&ns)),
    ]
    .into();
    assert_eq!(hosts, expected_hosts);
    let ingresses: Api<Ingress> = Api::namespaced(admin.clone(), &ns);
    let ing = ingresses
        .list(&selector("runner-0", "shop"))
        .await
        .expect("list ingresses");
    assert_eq!(ing.items.len(), 1, "one Ingress per composition");
    let rule_hosts: BTreeSet<String> = ing.items[0]
        .spec
        .iter()
        .flat_map(|s| s.rules.iter().flatten())
        .filter_map(|r| r.host.clone())
        .collect();
    assert_eq!(rule_hosts, hosts, "/exposures hosts = Ingress rule hosts");
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let svc = services
        .list(&selector("runner-0", "shop"))
        .await
        .expect("list services");
    assert_eq!(svc.items.len(), 1, "one Service per composition");
    let target_ports: BTreeSet<i64> = svc.items[0]
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| match &p.target_port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                Some(i64::from(*n))
            }
            _ => None,
        })
        .collect();
    let host_ports: BTreeSet<i64> = backends
        .iter()
        .map(|b| b["host_port"].as_i64().expect("host_port"))
        .collect();
    assert_eq!(
        host_ports, target_ports,
        "/exposures host ports = Service target ports"
    );
    for (service, port) in [("web", 80), ("api", 5000)] {
        let b = backends
            .iter()
            .find(|b| b["service"] == service)
            .expect("backend");
        assert_eq!(b["container_port"], port);
        assert_eq!(
            b["host_port"].as_i64(),
            Some(i64::from(pod.published_port("shop", service, port)))
        );
    }
    let urls: BTreeSet<String> = shop["urls"]
        .as_array()
        .expect("urls")
        .iter()
        .map(|u| u.as_str().expect("url").to_string())
        .collect();
    assert_eq!(urls, hosts.iter().map(|h| format!("http://{h}/")).collect());

    // The refused composition says why, and has no objects.
    let bad = composition(&doc, "bad").expect("bad");
    let reason = &bad["reasons"][0];
    assert_eq!(reason["reason"], "invalid-port", "{bad}");
    assert_eq!(reason["label"], "compose-ingress.ports");
    assert_eq!(reason["service"], "web");
    assert!(reason["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(
        services
            .list(&selector("runner-0", "bad"))
            .await
            .expect("list")
            .items
            .is_empty()
    );

    // Down: pending deletion during the grace, then gone from /exposures and from the cluster.
    // The log line the doc shows for this moment, keys for keys.
    let exposed = sidecar
        .log_lines("composition exposed")
        .into_iter()
        .find(|l| l["span"]["composition"] == "shop")
        .expect("a `composition exposed` line for shop");
    assert_log_line_like_the_doc(&exposed);

    pod.compose("shop", two, &["down"]);
    let pending = eventually("shop pending deletion", CONVERGE, || async {
        let doc = sidecar.exposures();
        (state_of(&doc, "shop").as_deref() == Some("pending-deletion")).then_some(doc)
    })
    .await;
    // The doc's sample /exposures has the keys of what this test saw in each state.
    assert_exposures_like_the_doc(&[&doc, &pending]);
    eventually("shop gone from /exposures", CONVERGE, || async {
        state_of(&sidecar.exposures(), "shop")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        ingresses
            .list(&selector("runner-0", "shop"))
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert!(
        services
            .list(&selector("runner-0", "shop"))
            .await
            .expect("list")
            .items
            .is_empty()
    );
    pod.compose(
        "bad",
        &web_compose("bad", &[("compose-ingress.ports", "80,x")]),
        &["down"],
    );
    eventually("bad gone from /exposures", CONVERGE, || async {
        state_of(&sidecar.exposures(), "bad")
            .is_none()
            .then_some(())
    })
    .await;
}

fn pod_events(list: &[Event], uid: &str, reason: &str) -> Vec<Event> {
    list.iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .cloned()
        .collect()
}

#[tokio::test]
async fn events_on_the_pod_are_posted_and_rate_limited() {
    let bed = bed();
    let ns = unique_namespace("ops-events");
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    let sidecar = Sidecar::start(&SIDECAR, bed, &pod, &["--delete-grace", "5s"]).await;
    sidecar.wait_status("/readyz", 200).await;

    pod.compose("evented", &web_compose("evented", &[]), &["up", "-d"]);
    let url = format!("http://web-80-evented-runner-0.{}/", domain(&ns));
    let exposed = eventually("an Exposed Event on the pod", CONVERGE, || async {
        let list = events
            .list(&ListParams::default())
            .await
            .expect("list events");
        pod_events(&list.items, &pod.uid, "Exposed")
            .into_iter()
            .next()
    })
    .await;
    let regarding = exposed.regarding.as_ref().expect("regarding");
    assert_eq!(regarding.kind.as_deref(), Some("Pod"));
    assert_eq!(regarding.name.as_deref(), Some("runner-0"));
    assert_eq!(exposed.type_.as_deref(), Some("Normal"));
    assert_eq!(
        exposed.reporting_controller.as_deref(),
        Some("compose-ingress")
    );
    assert_eq!(exposed.action.as_deref(), Some("Expose"));
    assert!(
        exposed.note.as_deref().is_some_and(|n| n.contains(&url)),
        "{:?}",
        exposed.note
    );

    pod.compose("evented", &web_compose("evented", &[]), &["down"]);
    let unexposed = eventually(
        "an Unexposed Event (objects garbage-collected)",
        CONVERGE,
        || async {
            let list = events
                .list(&ListParams::default())
                .await
                .expect("list events");
            pod_events(&list.items, &pod.uid, "Unexposed")
                .into_iter()
                .next()
        },
    )
    .await;
    assert!(
        unexposed
            .note
            .as_deref()
            .is_some_and(|n| n.contains("evented"))
    );

    // A flapping container with a refused label: each start is a new refusal, but at most a
    // burst of 5 Events (then 1 a minute) reach the apiserver; the rest are counted as dropped.
    pod.compose(
        "flappy",
        &web_compose("flappy", &[("compose-ingress.host", "evil.com")]),
        &["up", "-d"],
    );
    let container = String::from_utf8_lossy(
        &pod.docker_cli(&[
            "ps",
            "-q",
            "--filter",
            "label=com.docker.compose.project=flappy",
        ])
        .stdout,
    )
    .trim()
    .to_string();
    assert!(!container.is_empty(), "flappy container running");
    let started = Instant::now();
    // Twice the burst and more: Events are dropped unless the cycles take over 9 minutes (one
    // refill a minute), so the lower bound on drops below means something on any sane run.
    let cycles = 15;
    for i in 0..cycles {
        if i > 0 {
            let out = pod.docker_cli(&["start", &container]);
            assert!(
                out.status.success(),
                "docker start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eventually("flappy refused", CONVERGE, || async {
            (state_of(&sidecar.exposures(), "flappy").as_deref() == Some("refused")).then_some(())
        })
        .await;
        let out = pod.docker_cli(&["stop", "-t", "0", &container]);
        assert!(
            out.status.success(),
            "docker stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eventually("flappy no longer listed", CONVERGE, || async {
            state_of(&sidecar.exposures(), "flappy")
                .is_none()
                .then_some(())
        })
        .await;
    }
    let m = eventually(
        "all LabelRefused events accounted for",
        CONVERGE,
        || async {
            let m = sidecar.metrics();
            let seen = m.value(
                "compose_ingress_kube_events_total",
                &[("reason", "LabelRefused")],
            );
            (seen >= f64::from(cycles)).then_some(m)
        },
    )
    .await;
    // Counted after the last Event was decided: a slower run earns more refills, never fewer.
    let minutes = started.elapsed().as_secs() / 60;
    let posted = m.value(
        "compose_ingress_kube_events_total",
        &[("reason", "LabelRefused"), ("result", "posted")],
    );
    let dropped = m.value(
        "compose_ingress_kube_events_total",
        &[("reason", "LabelRefused"), ("result", "rate-limited")],
    );
    let allowed = 5 + minutes as usize + 1;
    assert!(
        posted >= 5.0 && posted <= allowed as f64,
        "posted {posted}, allowed {allowed}"
    );
    assert!(
        dropped >= f64::from(cycles) - allowed as f64,
        "dropped {dropped}"
    );
    let list = events
        .list(&ListParams::default())
        .await
        .expect("list events");
    let refused = pod_events(&list.items, &pod.uid, "LabelRefused");
    assert_eq!(
        refused.len() as f64,
        posted,
        "Events in the apiserver = posted"
    );
    assert!(
        refused.len() <= allowed,
        "{} LabelRefused events",
        refused.len()
    );
    let first = &refused[0];
    assert_eq!(first.type_.as_deref(), Some("Warning"));
    assert!(
        first
            .note
            .as_deref()
            .is_some_and(|n| n.contains("compose-ingress.host") && n.contains("evil.com")),
        "{:?}",
        first.note
    );
    assert!(sidecar.log_count("Kubernetes Events rate-limited") >= 1);
}

#[tokio::test]
async fn bad_requests_get_proper_status_codes_and_never_crash_the_sidecar() {
    let bed = bed();
    let ns = unique_namespace("ops-http");
    let pod = bed.runner_pod(&ns, "runner-0");
    let mut sidecar = Sidecar::start(&SIDECAR, bed, &pod, &["--delete-grace", "5s"]).await;
    sidecar.wait_status("/healthz", 200).await;
    let addr = sidecar.listen.clone();

    assert_eq!(sidecar.get("/nope").expect("GET /nope").0, 404);
    assert_eq!(
        sidecar
            .get("/metrics/../etc/passwd")
            .expect("GET traversal")
            .0,
        404
    );
    assert_eq!(
        sidecar
            .get("/healthz?verbose=1")
            .expect("GET with a query")
            .0,
        200
    );
    let post = raw(
        &addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .expect("POST /metrics");
    assert_eq!(post.0, 405);
    let delete = raw(
        &addr,
        b"DELETE /exposures HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("DELETE");
    assert_eq!(delete.0, 405);
    let head = raw(
        &addr,
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("HEAD");
    assert_eq!(head.0, 200);
    // A small request the server reads whole: it answers 400.
    let garbage = raw(&addr, b"\x00\x01 not http at all\r\n\r\n");
    assert!(
        matches!(garbage, Ok((400, _))),
        "garbage request: {garbage:?}"
    );

    // A 64 KiB header: 431, or the connection is closed; never a crash.
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = raw(&addr, huge.as_bytes());
    assert!(
        matches!(answer, Ok((431, _)) | Err(NoAnswer::Closed(_))),
        "64 KiB header: {answer:?}"
    );
    // Many headers.
    let mut many = String::from("GET /metrics HTTP/1.1\r\nHost: x\r\n");
    for i in 0..500 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");
    let answer = raw(&addr, many.as_bytes());
    assert!(
        matches!(answer, Ok((431, _)) | Err(NoAnswer::Closed(_))),
        "500 headers: {answer:?}"
    );
    // A huge URI.
    let uri = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "u".repeat(64 * 1024)
    );
    let answer = raw(&addr, uri.as_bytes());
    assert!(
        matches!(answer, Ok((414 | 431, _)) | Err(NoAnswer::Closed(_))),
        "64 KiB URI: {answer:?}"
    );
    // Clients that connect and send nothing, or half a request, then go away.
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).expect("connect");
        let _ = s.write_all(b"GET /metr");
    }
    // Each address holds at most 8 connections (src/conn_limits.rs): this one's come back as the
    // server sees those clients gone.
    sidecar.wait_status("/healthz", 200).await;
    // Keep-alive: two requests on one connection, two answers in order.
    let two = raw_all(
        &addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("pipelined requests");
    assert_eq!(
        two.iter().map(|(code, _)| *code).collect::<Vec<_>>(),
        vec![200, 404],
        "one answer per pipelined request: {two:?}"
    );

    assert!(sidecar.still_running(), "the sidecar is still running");
    assert_eq!(
        sidecar.get("/healthz").expect("GET /healthz after abuse").0,
        200
    );
    assert_eq!(
        sidecar
            .metrics()
            .value("compose_ingress_exposed_compositions", &[]),
        0.0
    );
    assert_eq!(sidecar.get("/exposures").expect("GET /exposures").0, 200);
}

/// Opens a connection to `server` from the loopback address `from` and sends a request that
/// holds it (a `wait=routable` for a composition that never comes, 60 s): a CI job's container
/// doing the same from its own address in dind.
async fn holding_connection(server: &str, from: [u8; 4]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((from, 0)))
        .expect("bind a loopback source address");
    let mut stream = socket
        .connect(server.parse().expect("server address"))
        .await
        .expect("connect");
    let _ = stream
        .write_all(
            b"GET /v1/compositions/never?wait=routable&timeout=60s HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
    stream
}

/// Whether the server closed the connection (refused it after accept) rather than holding it.
/// An admitted connection answers only after 60 s; a refused one ends as soon as the server
/// accepts it (10 s of margin for a server slowed by busy CPUs, far below the 60 s hold).
async fn was_closed(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// `GET /readyz` from the loopback address `from`: its status, or None when refused.
async fn readyz_from(server: &str, from: [u8; 4]) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(std::net::SocketAddr::from((from, 0))).ok()?;
    let mut stream = socket.connect(server.parse().ok()?).await.ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1)?.parse().ok()
}

/// Issue 14, item 8: CI jobs' containers cannot hold every connection of the HTTP server and
/// starve the kubelet's probes: each address may hold a few, all of them together a bounded
/// number, and the node's address (`--host-ip`, the kubelet's) has slots of its own.
#[tokio::test]
async fn no_ci_job_can_starve_the_kubelet_s_probes() {
    use compose_ingress::conn_limits::{PER_PEER, TOTAL};
    let bed = bed();
    let ns = unique_namespace("starve");
    let pod = bed.runner_pod(&ns, "runner-0");
    // The node's address here: a loopback address nobody else uses.
    let sidecar = Sidecar::start(&SIDECAR, bed, &pod, &["--host-ip", "127.0.0.2"]).await;
    sidecar.wait_status("/readyz", 200).await;
    let server = sidecar.listen.clone();

    // One container: its share, no more.
    let mut held = Vec::new();
    for _ in 0..PER_PEER + 4 {
        held.push(holding_connection(&server, [127, 0, 1, 1]).await);
    }
    let closed = futures::future::join_all(held.iter_mut().map(was_closed)).await;
    assert_eq!(
        closed.iter().filter(|c| **c).count(),
        4,
        "one address holds at most {PER_PEER} connections"
    );

    // Many containers: together they reach the total and no more.
    let peers = (TOTAL / PER_PEER) as u8;
    let mut more = Vec::new();
    for peer in 2..=peers + 1 {
        for _ in 0..PER_PEER {
            more.push(holding_connection(&server, [127, 0, 1, peer]).await);
        }
    }
    let closed = futures::future::join_all(more.iter_mut().map(was_closed)).await;
    let admitted = PER_PEER + closed.iter().filter(|c| !**c).count();
    assert_eq!(admitted, TOTAL, "all addresses together");
    held.extend(more);
    // ...then a new container is refused, and the kubelet's probe still answered.
    assert_eq!(
        readyz_from(&server, [127, 0, 1, 200]).await,
        None,
        "over the total"
    );
    assert_eq!(
        readyz_from(&server, [127, 0, 0, 2]).await,
        Some(200),
        "the node's probe is never starved"
    );
    drop(held);
    // Slots come back when the connections end.
    let answered = eventually("slots free again", CONVERGE, || async {
        readyz_from(&server, [127, 0, 1, 200]).await
    })
    .await;
    assert_eq!(answered, 200);
}
