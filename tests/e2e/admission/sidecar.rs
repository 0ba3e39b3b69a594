//! The sidecar under the guard, with its pod-bound token and deploy/'s Roles: every object it
//! writes and deletes passes, in both route APIs and both scopes, and its compositions answer
//! through Traefik.

use testbed::{
    CONVERGE, ComposeVersion, ENABLE, Sidecar, compose_file, domain, eventually, http_get,
    through_ingress, web,
};

use super::{Guarded, guarded};
use crate::SIDECAR;

const V2: ComposeVersion = ComposeVersion::V2;

/// A project name longer than an object name can hold: the sidecar shortens it, and its
/// objects' names must still end in the pod's name (the guard ties names to the pod).
const LONG: &str = "a-project-whose-name-is-longer-than-any-kubernetes-object-name-can-be";

/// The names of the objects of the sidecar in the namespace (every kind it writes).
fn owned(g: &Guarded) -> Vec<String> {
    let out = testbed::bed().kubectl(&[
        "-n",
        &g.ns,
        "get",
        "services,endpointslices,ingresses,httproutes,grpcroutes,middlewares.traefik.io,leases",
        "-l",
        "app.kubernetes.io/managed-by=compose-ingress",
        "-o",
        "name",
    ]);
    assert!(out.status.success(), "kubectl get the sidecar's objects");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until Traefik does not route `host` (404).
async fn unrouted(host: &str) {
    eventually(&format!("Traefik unroutes {host}"), CONVERGE, || async {
        let (code, _) = http_get(
            &format!("{}/", testbed::bed().get("TRAEFIK_WEB")),
            Some(host),
        );
        (code == 404).then_some(())
    })
    .await;
}

fn assert_no_refusal(sidecar: &Sidecar) {
    let logs = sidecar.logs();
    assert!(
        !logs.contains("compose-ingress-guard"),
        "a write of the sidecar was refused by the guard:\n{logs}"
    );
    assert!(
        sidecar.log_lines("reconcile failed").is_empty(),
        "no write of the sidecar failed:\n{logs}"
    );
}

/// Composition scope: two compositions (one with a long name) come and go; every object kind
/// of the route API (Service, EndpointSlice, rate-limit Middleware, Ingress or HTTPRoute, the
/// chosen host's Lease) is written and deleted under the guard.
async fn compositions_under_the_guard(test: &str, route: &[&str]) {
    let g = guarded(test).await;
    let mut flags = vec![
        "--rate-limit-mode",
        "traefik-middleware",
        "--default-rps",
        "20",
    ];
    flags.extend_from_slice(route);
    let sidecar = Sidecar::start(&SIDECAR, testbed::bed(), &g.pod, &flags).await;
    // Chosen hosts: each takes a Lease too.
    let page = |text: &str, host: &str| {
        compose_file(&[web(
            "web",
            text,
            80,
            "80",
            &[ENABLE, ("compose-ingress.host", host)],
        )])
    };
    let (short, long) = (page("guarded-page", "chosen"), page("long-page", "long"));
    g.pod.compose_as(V2, "guarded", &short, &["up", "-d"]);
    g.pod.compose_as(V2, LONG, &long, &["up", "-d"]);
    let hosts = [
        format!("chosen.{}", domain(&g.ns)),
        format!("long.{}", domain(&g.ns)),
    ];
    assert_eq!(through_ingress(&hosts[0]).await.trim(), "guarded-page");
    assert_eq!(through_ingress(&hosts[1]).await.trim(), "long-page");
    g.pod.compose_as(V2, "guarded", &short, &["down"]);
    g.pod.compose_as(V2, LONG, &long, &["down"]);
    for host in &hosts {
        unrouted(host).await;
    }
    eventually("the sidecar's objects deleted", CONVERGE, || async {
        owned(&g).is_empty().then_some(())
    })
    .await;
    assert_no_refusal(&sidecar);
}

#[tokio::test]
async fn the_sidecar_works_under_the_guard_ingress() {
    compositions_under_the_guard("guard-ing", &[]).await;
}

#[tokio::test]
async fn the_sidecar_works_under_the_guard_gateway() {
    let gateway = testbed::bed().gateway();
    compositions_under_the_guard(
        "guard-gw",
        &["--route-api", "gateway", "--gateway", &gateway],
    )
    .await;
}

/// Pod scope: the pod's one wildcard route `*.<pod>.<domain>` passes, and a composition
/// answers under it.
async fn pod_route_under_the_guard(test: &str, route: &[&str]) {
    let g = guarded(test).await;
    let sidecar = Sidecar::start_in_pod(&SIDECAR, testbed::bed(), &g.pod, route).await;
    sidecar.wait_log("this pod's route is in place").await;
    let file = compose_file(&[web("web", "pod-page", 80, "80", &[ENABLE])]);
    g.pod.compose_as(V2, "demo", &file, &["up", "-d"]);
    let host = format!("web-80-demo.{}.{}", g.pod.name, domain(&g.ns));
    assert_eq!(through_ingress(&host).await.trim(), "pod-page");
    g.pod.compose_as(V2, "demo", &file, &["down"]);
    unrouted(&host).await;
    assert_no_refusal(&sidecar);
}

#[tokio::test]
async fn the_sidecar_works_under_the_guard_pod_scope_ingress() {
    pod_route_under_the_guard("guard-pod-ing", &[]).await;
}

#[tokio::test]
async fn the_sidecar_works_under_the_guard_pod_scope_gateway() {
    let gateway = testbed::bed().gateway();
    pod_route_under_the_guard(
        "guard-pod-gw",
        &["--route-api", "gateway", "--gateway", &gateway],
    )
    .await;
}
