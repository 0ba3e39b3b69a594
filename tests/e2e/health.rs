//! Health-gated routing (issue 17): a service whose container has a Docker healthcheck gets
//! traffic through the bed's Traefik only while the check passes; the opt-out label routes it
//! anyway. The container's health is switched by the test (a file the check looks for), so each
//! step is the test's doing, not a race with a clock. Runs on Docker 29 (the `Health` field of
//! the listing) and 20.10 (only the status text says it).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};
use testbed::{
    CONVERGE, ComposeVersion, RunnerPod, Sidecar, bed, compose_file, domain, eventually, http_get,
    on_engine, repo_root, unique_namespace,
};

use crate::SIDECAR;
use crate::ci_job::show;

fn job(sidecar: &Sidecar, args: &[&str]) -> std::process::Output {
    crate::ci_job::job(sidecar, args, &[])
}

/// A web server whose healthcheck passes while /tmp/healthy exists. The long start period keeps
/// it `starting` (not `unhealthy`) until the file first appears; after that one failed check
/// makes it `unhealthy`.
pub(crate) fn checked_web(name: &str, page: &str, extra_labels: &str) -> String {
    format!(
        "  {name}:\n    image: compose-ingress-test/busybox:1\n    stop_signal: SIGKILL\n    \
         command: [\"sh\", \"-c\", \"echo {page} > /www/index.html && exec httpd -f -p 80 -h /www\"]\n    \
         ports: [\"80\"]\n    \
         healthcheck: {{test: [\"CMD\", \"test\", \"-f\", \"/tmp/healthy\"], interval: 1s, timeout: 1s, retries: 1, start_period: 10m}}\n    \
         labels: {{compose-ingress.enable: \"true\"{extra_labels}}}\n"
    )
}

/// `touch` or `rm -f` the file the healthcheck looks for.
pub(crate) fn set_healthy(pod: &RunnerPod, container: &str, healthy: bool) {
    let args: &[&str] = if healthy {
        &["exec", container, "touch", "/tmp/healthy"]
    } else {
        &["exec", container, "rm", "-f", "/tmp/healthy"]
    };
    let out = pod.docker_cli(args);
    assert!(out.status.success(), "docker {args:?}: {}", show(&out));
}

/// The container's health as `docker inspect` says it.
fn docker_health(pod: &RunnerPod, container: &str) -> String {
    let out = pod.docker_cli(&["inspect", "-f", "{{.State.Health.Status}}", container]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The container's row of docs/troubleshooting.md's `docker ps`, run in the runner (its
/// dockerd) as a user there runs it: where the doc says a gated container's health shows.
fn docker_ps_row(pod: &RunnerPod, container: &str) -> String {
    let line = testbed::doc_inline("docs/troubleshooting.md", "docker ps");
    let out = testbed::run_doc_line_ok(
        bed(),
        &line,
        &pod.dir,
        &[("DOCKER_HOST", pod.docker_host.as_str())],
    );
    out.lines()
        .find(|l| l.split_whitespace().last() == Some(container))
        .unwrap_or_else(|| panic!("`{line}` lists no {container}:\n{out}"))
        .to_string()
}

/// What docs/troubleshooting.md's EndpointSlice command prints for the composition's Service
/// (the namespace and the Service's name substituted): where the doc says a gated endpoint
/// shows `ready: false`.
fn doc_slices(ns: &str, service: &str) -> String {
    let line = testbed::substitute(
        "docs/troubleshooting.md",
        &testbed::doc_inline(
            "docs/troubleshooting.md",
            "kubectl -n ci get endpointslices -l kubernetes.io/service-name=… -o yaml",
        ),
        &[("-n ci", &format!("-n {ns}")), ("…", service)],
    );
    testbed::run_doc_line_ok(bed(), &line, &repo_root(), &[])
}

/// What Traefik answers for `host`: (status, body).
fn through_traefik(host: &str) -> (u16, String) {
    let (code, body) = http_get(&format!("{}/", bed().get("TRAEFIK_WEB")), Some(host));
    (code, body.trim().to_string())
}

/// The `ready` condition of the composition's EndpointSlices, by slice.
async fn slice_readiness(admin: &kube::Client, ns: &str, service: &str) -> Vec<Option<bool>> {
    Api::<EndpointSlice>::namespaced(admin.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .expect("list endpointslices")
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .map(|e| e.conditions.as_ref().and_then(|c| c.ready))
        .collect()
}

async fn health_gates_routing() {
    let ns = unique_namespace("health");
    let bed = bed();
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    let sidecar = Sidecar::start(
        &SIDECAR,
        bed,
        &pod,
        &["--probe-url", bed.get("TRAEFIK_WEB")],
    )
    .await;
    let v2 = ComposeVersion::V2;
    let file = compose_file(&[
        checked_web("web", "gated-page", ""),
        checked_web(
            "admin",
            "ungated-page",
            ", compose-ingress.health: \"ignore\"",
        ),
    ]);
    pod.compose_as(v2, "healthapp", &file, &["up", "-d"]);
    let web = v2.container_name("healthapp", "web", 1);
    let admin_container = v2.container_name("healthapp", "admin", 1);
    let web_host = format!("web-80-healthapp-runner-0.{}", domain(&ns));
    let admin_host = format!("admin-80-healthapp-runner-0.{}", domain(&ns));

    // The opted-out service is routed while it is still starting; `wait` for it returns.
    let out = job(
        &sidecar,
        &["wait", "healthapp", "--service", "admin", "--timeout", "2m"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(docker_health(&pod, &admin_container), "starting");
    assert_eq!(
        through_traefik(&admin_host),
        (200, "ungated-page".to_string())
    );

    // The gated one: exposed (its objects exist) but not routed while `starting`. The
    // container itself answers on the pod's address all along: only the gate keeps it out.
    let (service, _) = testbed::wait_exposed(&admin, &ns, "runner-0", "healthapp").await;
    let service_name = service.metadata.name.clone().expect("name");
    let web_port = pod.published_port_as(v2, "healthapp", "web", 80);
    let direct = http_get(&format!("http://{}:{web_port}/", pod.ip), None);
    assert_eq!((direct.0, direct.1.trim()), (200, "gated-page"));
    assert_eq!(docker_health(&pod, &web), "starting");
    let row = docker_ps_row(&pod, &web);
    assert!(row.contains("(health: starting)"), "docker ps: {row}");
    let (code, body) = through_traefik(&web_host);
    assert_ne!(body, "gated-page", "a starting container got traffic");
    assert!(
        matches!(code, 404 | 503),
        "the controller's own answer: {code} {body}"
    );

    // `wait` on the whole composition times out and names the service and its health.
    let out = job(&sidecar, &["wait", "healthapp", "--timeout", "3s"]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("web (") && stderr.contains("health starting"),
        "{}",
        show(&out)
    );

    // Healthy: `wait` returns and the URL answers at once, no retry.
    set_healthy(&pod, &web, true);
    let out = job(&sidecar, &["wait", "healthapp", "--timeout", "2m"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(through_traefik(&web_host), (200, "gated-page".to_string()));

    // A health flap changes the EndpointSlice only: the Service and the Ingress are not
    // rewritten (a reloading controller does not reload).
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let ingresses: Api<Ingress> = Api::namespaced(admin.clone(), &ns);
    let versions = || async {
        (
            services
                .get(&service_name)
                .await
                .expect("service")
                .metadata
                .resource_version,
            ingresses
                .get(&service_name)
                .await
                .expect("ingress")
                .metadata
                .resource_version,
        )
    };
    let before = versions().await;

    // Unhealthy: taken out (the controller answers, not the container), then back.
    set_healthy(&pod, &web, false);
    eventually("the unhealthy container is taken out", CONVERGE, || async {
        let (code, body) = through_traefik(&web_host);
        (body != "gated-page" && matches!(code, 404 | 503)).then_some(())
    })
    .await;
    assert_eq!(docker_health(&pod, &web), "unhealthy");
    let row = docker_ps_row(&pod, &web);
    assert!(row.contains("(unhealthy)"), "docker ps: {row}");
    assert!(
        slice_readiness(&admin, &ns, &service_name)
            .await
            .contains(&Some(false)),
        "the web slice is not ready"
    );
    let shown = doc_slices(&ns, &service_name);
    assert!(
        shown.contains("ready: false"),
        "the doc's kubectl shows the gated endpoint: {shown}"
    );
    // The opted-out neighbour is untouched.
    assert_eq!(
        through_traefik(&admin_host),
        (200, "ungated-page".to_string())
    );
    set_healthy(&pod, &web, true);
    eventually(
        "the healthy container is routed again",
        CONVERGE,
        || async { (through_traefik(&web_host) == (200, "gated-page".to_string())).then_some(()) },
    )
    .await;
    assert_eq!(
        versions().await,
        before,
        "a health flap rewrote the Service or the Ingress"
    );
    assert_eq!(
        slice_readiness(&admin, &ns, &service_name).await,
        vec![Some(true), Some(true)]
    );
    let shown = doc_slices(&ns, &service_name);
    assert!(
        shown.contains("ready: true") && !shown.contains("ready: false"),
        "the doc's kubectl shows every endpoint ready again: {shown}"
    );
    pod.compose_as(v2, "healthapp", &file, &["down"]);
    testbed::wait_gone(&admin, &ns, "runner-0", "healthapp").await;
    assert!(
        sidecar.log_lines("reconcile failed").is_empty(),
        "{}",
        sidecar.logs()
    );
}

#[tokio::test]
async fn a_container_with_a_healthcheck_is_routed_only_while_healthy() {
    health_gates_routing().await;
}

#[tokio::test]
async fn a_container_with_a_healthcheck_is_routed_only_while_healthy_engine_20_10() {
    on_engine("20.10", health_gates_routing()).await;
}
