//! Pod scope (issue 26): one wildcard route per runner pod to the sidecar's proxy, which routes
//! each composition inside the pod. The sidecar runs in the pod's network namespace (as it does
//! in a pod), the bed's Traefik routes `*.<pod>.<domain>` to it; every check is a request through
//! Traefik, as a user's browser or a CI job makes it.

use testbed::{
    CONVERGE, ComposeVersion, ENABLE, RunnerPod, Sidecar, bed, compose_file, domain, eventually,
    http_get, traefik_addr, unique_namespace, web,
};

use crate::SIDECAR;
use crate::policies::{protoecho, protoecho_client};

const V2: ComposeVersion = ComposeVersion::V2;

/// The host of a composition's port in pod scope: one label under the pod's.
fn host(service: &str, port: u16, project: &str, pod: &RunnerPod) -> String {
    format!(
        "{service}-{port}-{project}.{}.{}",
        pod.name,
        domain(&pod.namespace)
    )
}

/// The address Traefik's connections to this pod come from (the host's end of its veth):
/// the ingress controller the proxy trusts.
fn controller_address(pod: &RunnerPod) -> String {
    let (net, _) = pod.ip.rsplit_once('.').expect("an IPv4 pod address");
    format!("{net}.1/32")
}

/// What Traefik answers for `host`: (status, body).
fn through_traefik(host: &str, path: &str) -> (u16, String) {
    let (code, body) = http_get(&format!("{}{path}", bed().get("TRAEFIK_WEB")), Some(host));
    (code, body.trim().to_string())
}

/// Waits until Traefik answers `host` with `status`; returns the body.
async fn answers(host: &str, status: u16) -> String {
    eventually(
        &format!("Traefik answers {host} with {status}"),
        CONVERGE,
        || async {
            let (code, body) = through_traefik(host, "/");
            (code == status).then_some(body)
        },
    )
    .await
}

/// The names of the sidecar's objects of `kind` in the namespace.
fn owned(ns: &str, kind: &str) -> Vec<String> {
    let out = bed().kubectl(&[
        "-n",
        ns,
        "get",
        kind,
        "-l",
        "app.kubernetes.io/managed-by=compose-ingress",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
    ]);
    assert!(
        out.status.success(),
        "kubectl get {kind}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The write requests (create, update, patch, delete) the sidecar's ServiceAccount made in
/// `ns`, as the apiserver's audit log records them.
fn sidecar_writes(ns: &str) -> Vec<String> {
    let user = format!("system:serviceaccount:{ns}:compose-ingress");
    let log = std::fs::read_to_string(bed().dir.join("logs/audit.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["stage"] == "ResponseComplete"
                && e["user"]["username"] == user.as_str()
                && e["objectRef"]["namespace"] == ns
        })
        .map(|e| {
            format!(
                "{} {}/{}",
                e["verb"].as_str().unwrap_or(""),
                e["objectRef"]["resource"].as_str().unwrap_or(""),
                e["objectRef"]["name"].as_str().unwrap_or("")
            )
        })
        .collect()
}

async fn start(pod: &RunnerPod, flags: &[&str]) -> Sidecar {
    let trusted = controller_address(pod);
    let mut all = vec!["--trusted-proxies", trusted.as_str()];
    all.extend_from_slice(flags);
    Sidecar::start_in_pod(&SIDECAR, bed(), pod, &all).await
}

/// Compositions come and go under one pod route: each is routed through Traefik, an unknown
/// host under the pod is the proxy's 404, and nothing is written to Kubernetes meanwhile.
async fn compositions_come_and_go_without_a_kubernetes_write(route: &[&str], test: &str) {
    let ns = unique_namespace(test);
    let pod = bed().runner_pod(&ns, "runner-0");
    let mut flags = vec!["--resync-interval", "3s"];
    flags.extend_from_slice(route);
    let sidecar = start(&pod, &flags).await;
    sidecar.wait_log("this pod's route is in place").await;
    sidecar.wait_resyncs(1).await;
    let route_kind = if route.contains(&"gateway") {
        "httproutes.gateway.networking.k8s.io"
    } else {
        "ingresses"
    };
    assert_eq!(owned(&ns, route_kind).len(), 1, "one route for the pod");
    let before = sidecar_writes(&ns);
    assert!(
        !before.is_empty(),
        "the audit log has the pod route's writes (the check below can see writes)"
    );

    let page = |text: &str| compose_file(&[web("web", text, 80, "80", &[ENABLE])]);
    pod.compose_as(V2, "demo", &page("demo-page"), &["up", "-d"]);
    pod.compose_as(V2, "other", &page("other-page"), &["up", "-d"]);
    assert_eq!(
        answers(&host("web", 80, "demo", &pod), 200).await,
        "demo-page"
    );
    assert_eq!(
        answers(&host("web", 80, "other", &pod), 200).await,
        "other-page"
    );
    // An unknown host under the pod: the proxy's 404, naming nothing.
    let (code, body) = through_traefik(&host("web", 80, "nobody", &pod), "/");
    assert_eq!((code, body.as_str()), (404, "not found"));

    pod.compose_as(V2, "demo", &page("demo-page"), &["down"]);
    answers(&host("web", 80, "demo", &pod), 404).await;
    assert_eq!(
        answers(&host("web", 80, "other", &pod), 200).await,
        "other-page"
    );
    pod.compose_as(V2, "other", &page("other-page"), &["down"]);
    answers(&host("web", 80, "other", &pod), 404).await;
    // Resyncs after it all (every 3 s here): they check the pod route and write nothing.
    let resyncs = sidecar.log_lines("full resync done").len();
    sidecar.wait_resyncs(resyncs + 2).await;
    assert_eq!(
        sidecar_writes(&ns),
        before,
        "no Kubernetes write while compositions came and went"
    );
    assert_eq!(owned(&ns, route_kind).len(), 1, "still the one pod route");
    assert!(
        owned(&ns, "leases.coordination.k8s.io").is_empty(),
        "no Leases"
    );
}

#[tokio::test]
async fn pod_scope_compositions_come_and_go_without_a_kubernetes_write_ingress() {
    compositions_come_and_go_without_a_kubernetes_write(&[], "pod-ing").await;
}

#[tokio::test]
async fn pod_scope_compositions_come_and_go_without_a_kubernetes_write_gateway() {
    let gateway = bed().gateway();
    compositions_come_and_go_without_a_kubernetes_write(
        &["--route-api", "gateway", "--gateway", &gateway],
        "pod-gw",
    )
    .await;
}

/// Two pods run a composition of the same name: each pod's URL is its own composition's, and
/// a label that names a host of the other pod is refused.
#[tokio::test]
async fn pod_scope_pods_are_apart_and_no_label_takes_another_pods_host() {
    let ns = unique_namespace("pod-apart");
    let (a, b) = (
        bed().runner_pod(&ns, "runner-0"),
        bed().runner_pod(&ns, "runner-1"),
    );
    let (_sa, sb) = (start(&a, &[]).await, start(&b, &[]).await);
    let page =
        |text: &str, labels: &[(&str, &str)]| compose_file(&[web("web", text, 80, "80", labels)]);
    a.compose_as(V2, "same", &page("page-of-a", &[ENABLE]), &["up", "-d"]);
    b.compose_as(V2, "same", &page("page-of-b", &[ENABLE]), &["up", "-d"]);
    assert_eq!(
        answers(&host("web", 80, "same", &a), 200).await,
        "page-of-a"
    );
    assert_eq!(
        answers(&host("web", 80, "same", &b), 200).await,
        "page-of-b"
    );

    let theirs = format!("web-80-same.runner-0.{}", domain(&ns));
    b.compose_as(
        V2,
        "grab",
        &page(
            "grabbed",
            &[ENABLE, ("compose-ingress.host", theirs.as_str())],
        ),
        &["up", "-d"],
    );
    let refused = eventually("the label is refused", CONVERGE, || async {
        sb.log_lines("label refused")
            .into_iter()
            .find(|l| l["span"]["composition"] == "grab")
    })
    .await;
    assert_eq!(refused["reason"], "host-outside-domain", "{refused}");
    assert_eq!(
        through_traefik(&theirs, "/").1,
        "page-of-a",
        "runner-0's URL is still runner-0's"
    );
}

/// gRPC and WebSockets through one pod route: Gateway mode tells them apart by content type;
/// an Ingress carries HTTP/1.1 (WebSockets; a gRPC port is refused, saying what to change) or,
/// with `--pod-route-protocol h2c`, HTTP/2 (gRPC).
async fn protocols_through_the_pod_route(route: &[&str], test: &str, ws: bool, grpc: bool) {
    let ns = unique_namespace(test);
    let pod = bed().runner_pod(&ns, "runner-0");
    let sidecar = start(&pod, route).await;
    pod.compose_as(
        V2,
        "grpcdemo",
        &compose_file(&[protoecho("api", "grpc-page", 50051, "grpc")]),
        &["up", "-d"],
    );
    pod.compose_as(
        V2,
        "wsdemo",
        &compose_file(&[protoecho("chat", "ws-page", 8080, "ws")]),
        &["up", "-d"],
    );
    let addr = traefik_addr();
    let grpc_host = host("api", 50051, "grpcdemo", &pod);
    let ws_host = host("chat", 8080, "wsdemo", &pod);
    if ws {
        let (_, out) = eventually(
            "a WebSocket through the pod route echoes",
            CONVERGE,
            || async {
                let r = protoecho_client(&["ws-echo", &format!("ws://{addr}/ws"), &ws_host, "hi"]);
                r.0.then_some(r)
            },
        )
        .await;
        assert_eq!(out, "ws-page: hi");
    }
    if grpc {
        let (_, out) = eventually(
            "a gRPC call through the pod route answers",
            CONVERGE,
            || async {
                let r = protoecho_client(&["grpc-check", &addr, &grpc_host, "grpc-page"]);
                r.0.then_some(r)
            },
        )
        .await;
        assert_eq!(out, "SERVING");
    } else {
        let refused = eventually("the grpc port is refused", CONVERGE, || async {
            sidecar
                .log_lines("label refused")
                .into_iter()
                .find(|l| l["span"]["composition"] == "grpcdemo")
        })
        .await;
        assert_eq!(refused["reason"], "not-in-pod-scope", "{refused}");
        assert!(
            refused["message"]
                .as_str()
                .is_some_and(|m| m.contains("--pod-route-protocol h2c")),
            "{refused}"
        );
    }
}

#[tokio::test]
async fn pod_scope_carries_websockets_and_grpc_gateway() {
    let gateway = bed().gateway();
    protocols_through_the_pod_route(
        &["--route-api", "gateway", "--gateway", &gateway],
        "pod-proto-gw",
        true,
        true,
    )
    .await;
}

#[tokio::test]
async fn pod_scope_ingress_carries_websockets_and_refuses_grpc_over_http1() {
    protocols_through_the_pod_route(&[], "pod-proto-ing", true, false).await;
}

#[tokio::test]
async fn pod_scope_ingress_over_h2c_carries_grpc() {
    protocols_through_the_pod_route(
        &["--pod-route-protocol", "h2c"],
        "pod-proto-h2c",
        false,
        true,
    )
    .await;
}
