//! kompose's labels on the bed, one test per row of docs/labels.md's table "kompose's labels":
//! each checks the row's effect as a user sees it (a request routed through the bed's Traefik or
//! Contour/Envoy, the certificate Traefik's websecure entry point serves), not the objects' shape.
//!
//! No wall clock decides a negative answer: a 404 is read only after the same controller has
//! routed something written in the same Ingress or after it (each controller reads Ingresses
//! from one ordered watch), so it has seen what it must not serve.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::Ingress;
use testbed::{
    CONVERGE, ComposeVersion, RunnerPod, SelfSigned, Sidecar, bed, compose_file, create_tls_secret,
    domain, eventually, http_get, https_get, ingresses_of, self_signed, served_certificate,
    services_of, through_controller, through_ingress,
};

use super::{host_of, setup};
use crate::SIDECAR;
use crate::operability::Endpoints;

const EXPOSE: &str = "kompose.service.expose";
const TLS_SECRET: &str = "kompose.service.expose.tls-secret";
const CLASS: &str = "kompose.service.expose.ingress-class-name";

/// A busybox service running `script` (a shell command line that ends in a foreground httpd),
/// publishing `ports` in this order, with `labels`: the bed's image as a user's compose file
/// uses it.
fn busybox(name: &str, script: &str, ports: &[&str], labels: &[(&str, &str)]) -> String {
    let json = |v: &str| serde_json::Value::String(v.to_string());
    let mut s = format!(
        "  {name}:\n    image: compose-ingress-test/busybox:1\n    stop_signal: SIGKILL\n    command: [\"sh\", \"-c\", {}]\n",
        json(script)
    );
    let ports: Vec<String> = ports.iter().map(|p| json(p).to_string()).collect();
    s.push_str(&format!("    ports: [{}]\n", ports.join(", ")));
    s.push_str("    labels:\n");
    for (k, v) in labels {
        s.push_str(&format!("      {k}: {}\n", json(v)));
    }
    s
}

/// A busybox httpd on port 80 answering `page` at `/` and at each of `dirs` (`/<dir>/`), so a
/// 404 at one of them can only be the controller's.
fn pages(name: &str, page: &str, dirs: &[&str], labels: &[(&str, &str)]) -> String {
    let mut script = format!("echo {page} > /www/index.html");
    for d in dirs {
        script.push_str(&format!(
            " && mkdir -p /www/{d} && echo {page}-{d} > /www/{d}/index.html"
        ));
    }
    script.push_str(" && exec httpd -f -p 80 -h /www");
    busybox(name, &script, &["80"], labels)
}

fn up(pod: &RunnerPod, project: &str, services: &[String]) {
    pod.compose_as(
        ComposeVersion::V2,
        project,
        &compose_file(services),
        &["up", "-d"],
    );
}

/// (status, body) of GET `path` with `Host: host` through Traefik's plain-HTTP entry point.
pub(super) fn traefik(host: &str, path: &str) -> (u16, String) {
    http_get(&format!("{}{path}", bed().get("TRAEFIK_WEB")), Some(host))
}

/// Traefik's own 404 (Go's `http.NotFound`), not a backend's: the path has no route.
pub(super) fn assert_not_routed(host: &str, path: &str) {
    let (code, body) = traefik(host, path);
    assert_eq!(
        (code, body.trim()),
        (404, "404 page not found"),
        "{host}{path} must not be routed"
    );
}

/// Row `kompose.service.expose: "true"`: the service's template host answers.
#[tokio::test]
async fn expose_true_routes_the_template_host() {
    let (ns, pod, _admin) = setup("kp-true").await;
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    up(
        &pod,
        "kt",
        &[pages("web", "true-page", &[], &[(EXPOSE, "true")])],
    );
    let body = through_ingress(&host_of(&ns, "web", 80, "kt", "runner-0")).await;
    assert_eq!(body.trim(), "true-page");
}

/// Row `kompose.service.expose: "host1,host2/path"`: both hosts answer; `host2`'s path is a
/// prefix, and its other paths are not routed (the backend would answer them).
#[tokio::test]
async fn expose_hosts_route_each_host_and_its_path_prefix() {
    let (ns, pod, _admin) = setup("kp-hosts").await;
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    let (one, two) = (
        format!("one.{}", domain(&ns)),
        format!("two.{}", domain(&ns)),
    );
    let expose = format!("{one}, {two}/api");
    up(
        &pod,
        "kh",
        &[pages(
            "web",
            "page",
            &["api", "api/deep", "other"],
            &[(EXPOSE, &expose)],
        )],
    );
    assert_eq!(through_ingress(&one).await.trim(), "page");
    assert_eq!(traefik(&one, "/other/"), (200, "page-other\n".into()));
    let api = eventually("Traefik routes two/api/", CONVERGE, || async {
        let (code, body) = traefik(&two, "/api/");
        (code == 200).then_some(body)
    })
    .await;
    assert_eq!(api.trim(), "page-api");
    assert_eq!(
        traefik(&two, "/api/deep/"),
        (200, "page-api/deep\n".into()),
        "a prefix: the paths under it route too"
    );
    assert_not_routed(&two, "/other/");
    assert_not_routed(&two, "/");
}

/// Row `kompose.service.expose: "true,host1,host2"`: the template host and both chosen hosts.
#[tokio::test]
async fn expose_true_with_hosts_routes_the_template_and_the_chosen_hosts() {
    let (ns, pod, _admin) = setup("kp-both").await;
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    let (one, two) = (
        format!("one.{}", domain(&ns)),
        format!("two.{}", domain(&ns)),
    );
    let expose = format!("true,{one},{two}");
    up(
        &pod,
        "kb",
        &[pages("web", "both-page", &[], &[(EXPOSE, &expose)])],
    );
    for host in [host_of(&ns, "web", 80, "kb", "runner-0"), one, two] {
        assert_eq!(through_ingress(&host).await.trim(), "both-page", "{host}");
    }
}

/// The operator's wildcard for the test's domain, as the Secret `wildcard-tls`.
async fn operator_wildcard(admin: &kube::Client, ns: &str, pod: &RunnerPod) -> SelfSigned {
    let wildcard = format!("*.{}", domain(ns));
    let cert = self_signed(&pod.dir, "wildcard", "operator-wildcard", &[&wildcard]);
    create_tls_secret(admin, ns, "wildcard-tls", &cert).await;
    cert
}

/// The body `host` answers over HTTPS when only `cert` is trusted, once it does: Traefik reads
/// Secrets and Ingresses from watches of their own, so a route can answer before its
/// certificate is loaded. Panics naming the certificate Traefik served instead.
pub(super) async fn https_trusting(host: &str, cert: &SelfSigned) -> String {
    let served = std::cell::RefCell::new(String::new());
    let answered = tokio::time::timeout(CONVERGE, async {
        loop {
            let (code, body) = https_get(host, "/", Some(&cert.crt));
            if code == 200 {
                return body;
            }
            *served.borrow_mut() = served_certificate(host);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    answered.unwrap_or_else(|_| {
        panic!(
            "{host} must be served {} (within {CONVERGE:?}); Traefik serves: {}",
            cert.crt.display(),
            served.borrow()
        )
    })
}

/// Row `kompose.service.expose.tls-secret: NAME`: per service. Of two services in one
/// composition, the labelled one is served its own certificate, the other the operator's, not
/// its neighbour's (before issue 29, the first service's secret applied to the whole
/// composition).
#[tokio::test]
async fn tls_secret_is_per_service_and_the_unlabelled_neighbour_keeps_the_operators() {
    let (ns, pod, admin) = setup("kp-tls").await;
    let (a, b) = (
        host_of(&ns, "a", 80, "ks", "runner-0"),
        host_of(&ns, "b", 80, "ks", "runner-0"),
    );
    let wildcard = operator_wildcard(&admin, &ns, &pod).await;
    let own = self_signed(&pod.dir, "own", "service-a-own", &[&a]);
    create_tls_secret(&admin, &ns, "own-tls", &own).await;
    let _sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &[
            "--tls-secret",
            "wildcard-tls",
            "--allowed-tls-secrets",
            "own-tls",
        ],
    )
    .await;
    up(
        &pod,
        "ks",
        &[
            pages(
                "a",
                "a-page",
                &[],
                &[(EXPOSE, "true"), (TLS_SECRET, "own-tls")],
            ),
            pages("b", "b-page", &[], &[(EXPOSE, "true")]),
        ],
    );
    assert_eq!(https_trusting(&a, &own).await.trim(), "a-page");
    assert_eq!(https_trusting(&b, &wildcard).await.trim(), "b-page");
    let served_a = served_certificate(&a);
    let served_b = served_certificate(&b);
    assert!(served_a.contains("CN = service-a-own"), "{served_a}");
    assert!(served_a.contains(&format!("DNS:{a}")), "{served_a}");
    assert!(served_b.contains("CN = operator-wildcard"), "{served_b}");
}

/// Row `kompose.service.expose.tls-secret: "true"`: the operator's `--tls-secret` is served;
/// with no operator default the service is refused with the fix in its log line, and the
/// composition's other service still routes.
#[tokio::test]
async fn tls_secret_true_serves_the_operators_and_without_one_is_refused_alone() {
    let (ns, pod, admin) = setup("kp-tlstrue").await;
    let wildcard = operator_wildcard(&admin, &ns, &pod).await;
    let _with = Sidecar::start(&SIDECAR, bed(), &pod, &["--tls-secret", "wildcard-tls"]).await;
    up(
        &pod,
        "kd",
        &[pages(
            "web",
            "dflt-page",
            &[],
            &[(EXPOSE, "true"), (TLS_SECRET, "true")],
        )],
    );
    let host = host_of(&ns, "web", 80, "kd", "runner-0");
    assert_eq!(https_trusting(&host, &wildcard).await.trim(), "dflt-page");
    let served = served_certificate(&host);
    assert!(served.contains("CN = operator-wildcard"), "{served}");

    // A second runner pod whose operator set no default secret.
    let other = bed().runner_pod_on(&ns, "runner-1", &testbed::engine());
    let without = Sidecar::start(&SIDECAR, bed(), &other, &[]).await;
    up(
        &other,
        "kn",
        &[
            pages(
                "secure",
                "secure-page",
                &[],
                &[(EXPOSE, "true"), (TLS_SECRET, "true")],
            ),
            pages("plain", "plain-page", &[], &[(EXPOSE, "true")]),
        ],
    );
    let plain = host_of(&ns, "plain", 80, "kn", "runner-1");
    assert_eq!(through_ingress(&plain).await.trim(), "plain-page");
    let warning = without.wait_log("label refused").await;
    assert_eq!(warning["service"], "secure", "{warning}");
    assert_eq!(warning["label"], TLS_SECRET, "{warning}");
    assert_eq!(warning["reason"], "tls-secret-not-allowed", "{warning}");
    let message = warning["message"].as_str().unwrap_or_default();
    assert!(message.contains("--tls-secret"), "names the fix: {warning}");
    // Routed in the same Ingress as `plain`, had it not been refused.
    assert_not_routed(&host_of(&ns, "secure", 80, "kn", "runner-1"), "/");
}

/// `Kind/name=resourceVersion` of a composition's Services and Ingresses.
async fn versions(admin: &kube::Client, ns: &str, project: &str) -> BTreeSet<String> {
    let entry = |kind: &str, m: &kube::api::ObjectMeta| {
        let name = m.name.clone().unwrap_or_default();
        let version = m.resource_version.clone().unwrap_or_default();
        format!("{kind}/{name}={version}")
    };
    let services = services_of(admin, ns, "runner-0", project).await;
    let ingresses = ingresses_of(admin, ns, "runner-0", project).await;
    services
        .iter()
        .map(|s| entry("Service", &s.metadata))
        .chain(ingresses.iter().map(|i| entry("Ingress", &i.metadata)))
        .collect()
}

/// The sidecar's writes (every verb, every result) of Services, EndpointSlices and Ingresses:
/// its metric counts each API request it makes to write one (Leases are renewed, so left out).
fn writes(sidecar: &Sidecar) -> u64 {
    let metrics = sidecar.metrics();
    ["Service", "EndpointSlice", "Ingress"]
        .iter()
        .map(|kind| metrics.value("compose_ingress_api_requests_total", &[("kind", kind)]) as u64)
        .sum()
}

fn class(ingress: &Ingress) -> String {
    ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .unwrap_or_default()
}

/// Row `kompose.service.expose.ingress-class-name: CLASS`: per service. In one composition,
/// service `a` (class traefik) answers through Traefik and not through Envoy, service `b`
/// (class contour) the opposite; the unchanged composition is not written again.
#[tokio::test]
async fn ingress_class_is_per_service_each_controller_serves_its_own() {
    let (ns, pod, admin) = setup("kp-class").await;
    let b_ = bed();
    let (traefik_web, contour_web) = (b_.get("TRAEFIK_WEB"), b_.get("CONTOUR_WEB"));
    let contour = b_.get("CONTOUR_CLASS");
    let sidecar = Sidecar::start(
        &SIDECAR,
        b_,
        &pod,
        &[
            "--ingress-class",
            "traefik",
            "--allowed-classes",
            contour,
            "--resync-interval",
            "2s",
        ],
    )
    .await;
    let host = |svc: &str, project: &str| host_of(&ns, svc, 80, project, "runner-0");
    up(
        &pod,
        "kc",
        &[
            pages("a", "a-page", &[], &[(EXPOSE, "true"), (CLASS, "traefik")]),
            pages("b", "b-page", &[], &[(EXPOSE, "true"), (CLASS, contour)]),
        ],
    );
    let a = through_controller("Traefik", traefik_web, &host("a", "kc"), CONVERGE).await;
    assert_eq!(a.trim(), "a-page");
    let b = through_controller("Contour", contour_web, &host("b", "kc"), CONVERGE).await;
    assert_eq!(b.trim(), "b-page");

    // A later composition of both classes: once each controller routes its service, it has
    // seen both Ingresses of `kc`.
    up(
        &pod,
        "kl",
        &[
            pages("c", "c-page", &[], &[(EXPOSE, "true"), (CLASS, contour)]),
            pages("d", "d-page", &[], &[(EXPOSE, "true")]),
        ],
    );
    through_controller("Contour", contour_web, &host("c", "kl"), CONVERGE).await;
    through_controller("Traefik", traefik_web, &host("d", "kl"), CONVERGE).await;
    let status = |web: &str, host: &str| http_get(&format!("{web}/"), Some(host)).0;
    assert_eq!(status(contour_web, &host("a", "kc")), 404, "Envoy serves a");
    assert_eq!(
        status(traefik_web, &host("b", "kc")),
        404,
        "Traefik serves b"
    );

    let ingresses = ingresses_of(&admin, &ns, "runner-0", "kc").await;
    let classes: BTreeSet<String> = ingresses.iter().map(class).collect();
    assert_eq!(
        classes,
        BTreeSet::from(["traefik".to_string(), contour.to_string()]),
        "one Ingress per class"
    );
    // Unchanged: two full resyncs re-plan it from Docker and write nothing. The resourceVersions
    // show a changed object; the sidecar's count of its writes also shows a server-side apply
    // of unchanged content (which leaves the resourceVersion as it was).
    let before = (versions(&admin, &ns, "kc").await, writes(&sidecar));
    assert!(
        before.1 >= 6,
        "the writes of kc and kl are counted: {before:?}"
    );
    sidecar
        .wait_resyncs(sidecar.log_lines("full resync done").len() + 2)
        .await;
    let after = (versions(&admin, &ns, "kc").await, writes(&sidecar));
    assert_eq!(after, before, "no write: (resourceVersions, writes)");
}

/// Row `kompose.service.expose: "host"` on a service with two ports: the chosen host routes
/// the lowest port (9000), not the file's first (10000, kompose's choice) nor Docker's first by
/// name ("10000/tcp" sorts before "9000/tcp").
#[tokio::test]
async fn a_chosen_host_on_two_ports_routes_the_lowest() {
    let (ns, pod, _admin) = setup("kp-ports").await;
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    let host = format!("multi.{}", domain(&ns));
    let script = "mkdir -p /low /high && echo low-port > /low/index.html \
                  && echo high-port > /high/index.html && httpd -p 10000 -h /high \
                  && exec httpd -f -p 9000 -h /low";
    up(
        &pod,
        "kp",
        &[busybox(
            "multi",
            script,
            &["10000", "9000"],
            &[(EXPOSE, &host)],
        )],
    );
    assert_eq!(through_ingress(&host).await.trim(), "low-port");
}
