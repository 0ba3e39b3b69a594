//! Pod scope (issue 26): one wildcard route per runner pod to the sidecar's proxy, which routes
//! each composition inside the pod. The sidecar runs in the pod's network namespace (as it does
//! in a pod), the bed's Traefik routes `*.<pod>.<domain>` to it; every check is a request through
//! Traefik, as a user's browser or a CI job makes it.

use std::time::Duration;

use testbed::{
    CONVERGE, ComposeVersion, ENABLE, RunnerPod, Sidecar, bed, compose_file, doc_block, doc_inline,
    domain, eventually, http_get, load, substitute, traefik_addr, unique_namespace, web,
};

use crate::SIDECAR;
use crate::ci_job::{job, show};
use crate::health::{checked_web, set_healthy};
use crate::operability::pod_sh;
use crate::policies::assert_limited;
use crate::policies::{protoecho, protoecho_client};

const V2: ComposeVersion = ComposeVersion::V2;

/// The host of a composition's port in pod scope: one label under the pod's.
pub(crate) fn host(service: &str, port: u16, project: &str, pod: &RunnerPod) -> String {
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
pub(crate) async fn answers(host: &str, status: u16) -> String {
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

pub(crate) async fn start(pod: &RunnerPod, flags: &[&str]) -> Sidecar {
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

/// One GET through Traefik with curl, headers included: (status, the response's head, body).
fn head_and_body(host: &str, user: Option<&str>) -> (u16, String, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-i", "--max-time", "5"])
        .arg("-H")
        .arg(format!("Host: {host}"));
    if let Some(u) = user {
        cmd.args(["-u", u]);
    }
    let out = cmd
        .arg(format!("{}/", bed().get("TRAEFIK_WEB")))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.trim().to_string())
}

/// Health gating in the proxy: a starting or unhealthy service answers 503 with Retry-After and
/// its reason (never dialled), a healthy one its page.
#[tokio::test]
async fn pod_scope_gates_on_health() {
    let ns = unique_namespace("pod-health");
    let pod = bed().runner_pod(&ns, "runner-0");
    let _sidecar = start(&pod, &[]).await;
    pod.compose_as(
        V2,
        "checked",
        &compose_file(&[checked_web("web", "healthy-page", "")]),
        &["up", "-d"],
    );
    let url = host("web", 80, "checked", &pod);
    let container = V2.container_name("checked", "web", 1);
    let starting = eventually("503 while the service starts", CONVERGE, || async {
        let r = head_and_body(&url, None);
        (r.0 == 503).then_some(r)
    })
    .await;
    assert!(starting.1.contains("retry-after:"), "{}", starting.1);
    assert_eq!(
        starting.2,
        "service web is starting: its healthcheck has not passed yet"
    );
    set_healthy(&pod, &container, true);
    assert_eq!(answers(&url, 200).await, "healthy-page");
    set_healthy(&pod, &container, false);
    let down = eventually("503 once unhealthy", CONVERGE, || async {
        let r = head_and_body(&url, None);
        (r.0 == 503).then_some(r)
    })
    .await;
    assert_eq!(down.2, "service web is unhealthy: its healthcheck fails");
}

/// The per-composition rate limit in the proxy: 429 with Retry-After over the limit, the
/// counts in the band a token bucket allows, the neighbour untouched (as the composition scope's
/// Traefik Middleware, tests/e2e/policies.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_pod_scope_rate_limit_in_the_proxy() {
    let ns = unique_namespace("pod-rps");
    let pod = bed().runner_pod(&ns, "runner-0");
    let _sidecar = start(&pod, &["--default-rps", "40", "--max-rps", "40"]).await;
    let limited = [ENABLE, ("compose-ingress.rate-limit.rps", "5")];
    pod.compose_as(
        V2,
        "limited",
        &compose_file(&[web("web", "limited-page", 8080, "8080", &limited)]),
        &["up", "-d"],
    );
    pod.compose_as(
        V2,
        "neighbour",
        &compose_file(&[web("web", "neighbour-page", 8080, "8080", &[ENABLE])]),
        &["up", "-d"],
    );
    let (lhost, nhost) = (
        host("web", 8080, "limited", &pod),
        host("web", 8080, "neighbour", &pod),
    );
    assert_eq!(answers(&lhost, 200).await, "limited-page");
    assert_eq!(answers(&nhost, 200).await, "neighbour-page");
    // One burst's worth at once: the sixth is over the limit and says when to come back.
    let refused = eventually("a 429 with Retry-After", CONVERGE, || async {
        (0..8)
            .map(|_| head_and_body(&lhost, None))
            .find(|r| r.0 == 429)
    })
    .await;
    assert!(refused.1.contains("retry-after:"), "{}", refused.1);
    tokio::time::sleep(Duration::from_secs(2)).await; // the bucket refills
    let addr = traefik_addr();
    let (hit, beside) = tokio::join!(load(&addr, &lhost, 25, LOAD), load(&addr, &nhost, 20, LOAD));
    assert_limited("limited at 5 rps, hit at 25 rps", hit, 5);
    assert!(hit.limited > 0, "the excess answers 429: {hit:?}");
    assert_eq!(
        (beside.ok, beside.sent),
        (beside.sent, 100),
        "the neighbour (40 rps default, hit at 20 rps) is not limited: {beside:?}"
    );
}

/// How long each load of the rate-limit test runs.
const LOAD: Duration = Duration::from_secs(5);

/// Basic auth and an IP allow-list enforced by the proxy, the allow-list judging the client
/// address the trusted controller reports; a policy the pod scope cannot enforce stops the
/// sidecar at start-up.
#[tokio::test]
async fn pod_scope_enforces_basic_auth_and_the_allow_list() {
    let ns = unique_namespace("pod-access");
    let pod = bed().runner_pod(&ns, "runner-0");
    let hash = bcrypt::hash("ci-password", 4).expect("bcrypt");
    let htpasswd = pod.dir.join("htpasswd");
    std::fs::write(&htpasswd, format!("ci:{hash}\n")).expect("write htpasswd");
    // docs/pod-scope.md's policy file, with the bed's substitutions: the test's htpasswd file,
    // and one policy more that lets the bed's own client (127.0.0.1) through.
    let htpasswd_file = format!("htpasswdFile: {}", htpasswd.display());
    let policies = pod.dir.join("access-policies.yaml");
    std::fs::write(
        &policies,
        substitute(
            "docs/pod-scope.md pod-scope-policies",
            &doc_block("docs/pod-scope.md", "pod-scope-policies"),
            &[
                ("htpasswdFile: /etc/compose-ingress/htpasswd", &htpasswd_file),
                (
                    "    ipAllowList: [192.0.2.0/24, 2001:db8::/32]\n",
                    "    ipAllowList: [192.0.2.0/24, 2001:db8::/32]\n  bed:\n    ipAllowList: [127.0.0.1]\n",
                ),
            ],
        ),
    )
    .expect("write policies");
    let file = policies.to_str().expect("path");
    let _sidecar = start(&pod, &["--access-policies", file]).await;
    let one = |page: &str, access: Option<&str>| {
        let labels: Vec<(&str, &str)> =
            [Some(ENABLE), access.map(|a| ("compose-ingress.access", a))]
                .into_iter()
                .flatten()
                .collect();
        compose_file(&[web("web", page, 80, "80", &labels)])
    };
    pod.compose_as(V2, "guarded", &one("guarded-page", None), &["up", "-d"]);
    pod.compose_as(
        V2,
        "office",
        &one("office-page", Some("office")),
        &["up", "-d"],
    );
    pod.compose_as(V2, "bed", &one("bed-page", Some("bed")), &["up", "-d"]);
    let guarded = host("web", 80, "guarded", &pod);
    let challenge = eventually(
        "the default policy asks for credentials",
        CONVERGE,
        || async {
            let r = head_and_body(&guarded, None);
            (r.0 == 401).then_some(r)
        },
    )
    .await;
    assert!(
        challenge
            .1
            .contains("www-authenticate: basic realm=\"previews\""),
        "{}",
        challenge.1
    );
    assert_eq!(head_and_body(&guarded, Some("ci:wrong")).0, 401);
    assert_eq!(head_and_body(&guarded, Some("nobody:ci-password")).0, 401);
    let ok = head_and_body(&guarded, Some("ci:ci-password"));
    assert_eq!((ok.0, ok.2.as_str()), (200, "guarded-page"));
    // The bed's client is 127.0.0.1, as Traefik reports it in X-Forwarded-For.
    assert_eq!(
        answers(&host("web", 80, "office", &pod), 403).await,
        "forbidden: your address is not on this composition's allow-list"
    );
    assert_eq!(
        answers(&host("web", 80, "bed", &pod), 200).await,
        "bed-page"
    );

    // A policy only a controller can carry: the pod scope's sidecar refuses to start.
    std::fs::write(
        &policies,
        "default: sso\npolicies:\n  sso:\n    traefikMiddlewares: [sso-auth]\n",
    )
    .expect("write policies");
    let mut refused = Sidecar::start_in_pod_with(
        &SIDECAR,
        &pod,
        None,
        &["--access-policies", file],
        "refused",
    );
    let status = refused.wait_exit(CONVERGE);
    assert_eq!(status.code(), Some(2), "{}", refused.logs());
    assert!(
        refused
            .logs()
            .contains("policy `sso` has traefikMiddlewares"),
        "{}",
        refused.logs()
    );
}

/// Bodies stream through the proxy both ways: 64 MiB down and up through Traefik, the bytes
/// compared, and the sidecar's memory far below the size of the body.
#[tokio::test]
async fn pod_scope_streams_large_bodies_both_ways() {
    let ns = unique_namespace("pod-stream");
    let pod = bed().runner_pod(&ns, "runner-0");
    let sidecar = start(&pod, &[]).await;
    // busybox httpd serves a 64 MiB file and a CGI script that hashes what it is sent.
    let script = "mkdir -p /www/cgi-bin && dd if=/dev/urandom of=/www/big bs=1048576 count=64 2>/dev/null \
                  && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nsha256sum | cut -d\" \" -f1\\n' > /www/cgi-bin/sum \
                  && chmod +x /www/cgi-bin/sum && echo ready > /www/index.html && exec httpd -f -p 80 -h /www";
    let yaml = format!(
        "version: \"2.4\"\nservices:\n  files:\n    image: compose-ingress-test/busybox:1\n    stop_signal: SIGKILL\n    \
         command: [\"sh\", \"-c\", {}]\n    ports: [\"80\"]\n    labels: {{compose-ingress.enable: \"true\"}}\n",
        serde_json::Value::String(script.to_string())
    );
    pod.compose_as(V2, "big", &yaml, &["up", "-d"]);
    let url_host = host("files", 80, "big", &pod);
    assert_eq!(answers(&url_host, 200).await, "ready");
    let traefik = bed().get("TRAEFIK_WEB").to_string();
    let sha = |args: &[&str]| -> String {
        let shell = format!(
            "curl -s --max-time 120 -H 'Host: {url_host}' {} | sha256sum",
            args.join(" ")
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &shell])
            .output()
            .expect("curl | sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let container = V2.container_name("big", "files", 1);
    let inside = pod.docker_cli(&["exec", &container, "sha256sum", "/www/big"]);
    let inside = String::from_utf8_lossy(&inside.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(inside.len(), 64, "the container hashed its file");
    assert_eq!(
        sha(&[&format!("{traefik}/big")]),
        inside,
        "64 MiB down, byte for byte"
    );

    let upload = pod.dir.join("upload.bin");
    let out = std::process::Command::new("dd")
        .args(["if=/dev/urandom", "bs=1048576", "count=64"])
        .arg(format!("of={}", upload.display()))
        .output()
        .expect("dd");
    assert!(out.status.success());
    let local = std::process::Command::new("sha256sum")
        .arg(&upload)
        .output()
        .expect("sha256sum");
    let local = String::from_utf8_lossy(&local.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let answered = {
        let shell = format!(
            "curl -s --max-time 120 -H 'Host: {url_host}' --data-binary @{} {traefik}/cgi-bin/sum",
            upload.display()
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &shell])
            .output()
            .expect("curl upload");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(answered, local, "64 MiB up, byte for byte");
    // Streamed, not buffered: the sidecar's peak memory stays far below one body.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", sidecar.pid())).expect("status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    assert!(
        peak_kib < 48 * 1024,
        "the sidecar peaked at {peak_kib} KiB moving 64 MiB bodies"
    );
}

/// dind restarts under the sidecar: a composition that Docker restarts is routed again (at its
/// new host port), one it does not is gone.
#[tokio::test]
async fn pod_scope_follows_docker_restarting_under_it() {
    let ns = unique_namespace("pod-dockerd");
    let pod = bed().runner_pod(&ns, "runner-0");
    let _sidecar = start(&pod, &[]).await;
    let restarting = web("web", "comes-back", 80, "80", &[ENABLE]).replace(
        "    stop_signal: SIGKILL\n",
        "    stop_signal: SIGKILL\n    restart: always\n",
    );
    pod.compose_as(V2, "back", &compose_file(&[restarting]), &["up", "-d"]);
    pod.compose_as(
        V2,
        "gone",
        &compose_file(&[web("web", "not-back", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    assert_eq!(
        answers(&host("web", 80, "back", &pod), 200).await,
        "comes-back"
    );
    assert_eq!(
        answers(&host("web", 80, "gone", &pod), 200).await,
        "not-back"
    );
    pod_sh(bed(), &["dockerd-stop"], &pod.dir);
    pod_sh(bed(), &["dockerd-start"], &pod.dir);
    assert_eq!(
        answers(&host("web", 80, "back", &pod), 200).await,
        "comes-back"
    );
    answers(&host("web", 80, "gone", &pod), 404).await;
    // The sidecar watches the new daemon: a composition started now is routed.
    pod.compose_as(
        V2,
        "after",
        &compose_file(&[web("web", "after-restart", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    assert_eq!(
        answers(&host("web", 80, "after", &pod), 200).await,
        "after-restart"
    );
}

/// No Kubernetes credentials at all: the operator provides the pod's Service and Ingress (as
/// docs/pod-scope.md shows), the sidecar runs with `--no-kubernetes` and routes.
#[tokio::test]
async fn pod_scope_without_kubernetes_credentials_routes_through_the_operators_route() {
    let ns = unique_namespace("pod-nokube");
    let pod = bed().runner_pod(&ns, "runner-0");
    // docs/pod-scope.md's Service and Ingress, applied into the test's namespace, with the
    // bed's substitutions: the test's domain, and no TLS block (the test reaches the route over
    // Traefik's plain-HTTP entry point; the doc's certificate Secret does not exist here).
    let wildcard = format!("*.runner-0.{}", domain(&ns));
    let objects = substitute(
        "docs/pod-scope.md pod-scope-no-kubernetes",
        &doc_block("docs/pod-scope.md", "pod-scope-no-kubernetes"),
        &[
            (
                "  tls: [{hosts: [\"*.runner-0.composition.example.com\"], secretName: wildcard-pods-tls}]\n",
                "",
            ),
            ("*.runner-0.composition.example.com", &wildcard),
            (
                "targetPort: 9180",
                &format!("targetPort: {}", testbed::POD_PROXY_PORT),
            ),
        ],
    );
    let file = pod.dir.join("operator-route.yaml");
    std::fs::write(&file, objects).expect("write the operator's route");
    let out = bed().kubectl(&["apply", "-n", &ns, "-f", file.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sidecar = Sidecar::start_in_pod_with(&SIDECAR, &pod, None, &[], "sidecar");
    pod.compose_as(
        V2,
        "demo",
        &compose_file(&[web("web", "no-token-page", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    assert_eq!(
        answers(&host("web", 80, "demo", &pod), 200).await,
        "no-token-page"
    );
    let exposures = http_get(&format!("http://{}/exposures", sidecar.listen), None).1;
    assert!(
        exposures.contains(&format!("http://{}/", host("web", 80, "demo", &pod))),
        "{exposures}"
    );
    assert!(
        sidecar_writes(&ns).is_empty(),
        "the sidecar made no request at all"
    );
}

/// The CI job's side in pod scope: `wait` hands over URLs once a request through the controller
/// reaches the container, `urls` lists them, a refusal fails fast.
#[tokio::test]
async fn pod_scope_wait_hands_over_urls_routable_through_the_controller() {
    let ns = unique_namespace("pod-cijob");
    let pod = bed().runner_pod(&ns, "runner-0");
    // The sidecar is in the pod; the bed's Traefik listens on loopback: reach it through the
    // host's end of the pod's veth, as a pod reaches its controller's Service.
    let (ip, _) = controller_address(&pod)
        .split_once('/')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .expect("cidr");
    let traefik = bed()
        .get("TRAEFIK_WEB")
        .trim_start_matches("http://")
        .to_string();
    let forward = testbed::ApiProxy::start_at(&ip, traefik);
    let probe = format!("http://{}", forward.addr());
    let sidecar = start(&pod, &["--probe-url", &probe]).await;
    let slow = "  web:\n    image: compose-ingress-test/busybox:1\n    stop_signal: SIGKILL\n    \
                command: [\"sh\", \"-c\", \"sleep 4; echo job-page > /www/index.html; exec httpd -f -p 8080 -h /www\"]\n    \
                ports: [\"8080\"]\n    labels: {compose-ingress.enable: \"true\"}\n";
    pod.compose_as(
        V2,
        "jobapp",
        &compose_file(&[slow.to_string()]),
        &["up", "-d"],
    );
    let out = job(
        &sidecar,
        &["wait", "jobapp", "--format", "dotenv", "--timeout", "2m"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let url_host = host("web", 8080, "jobapp", &pod);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("WEB_8080_URL=http://{url_host}/\n"),
        "{}",
        show(&out)
    );
    // It answers now, through the controller: no retry after `wait` returned.
    assert_eq!(
        through_traefik(&url_host, "/"),
        (200, "job-page".to_string())
    );
    let out = job(&sidecar, &["urls", "jobapp"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&url_host),
        "{}",
        show(&out)
    );
    // docs/ci-jobs.md's job inside dind (a container the runner starts): `--add-host
    // sidecar:host-gateway` puts the sidecar, listening in the pod, at `sidecar`; the job asks
    // it with the API the page gives (busybox's wget for the elided image and command).
    let in_dind = substitute(
        "docs/ci-jobs.md",
        &doc_inline(
            "docs/ci-jobs.md",
            "docker run --add-host sidecar:host-gateway ...",
        ),
        &[(
            "...",
            "--rm compose-ingress-test/busybox:1 wget -qO- \
             'http://sidecar:9102/v1/compositions/jobapp?wait=routable&timeout=60s'",
        )],
    );
    let answer = testbed::run_doc_line_ok(
        bed(),
        &in_dind,
        &pod.dir,
        &[("DOCKER_HOST", pod.docker_host.as_str())],
    );
    let answer: serde_json::Value = serde_json::from_str(&answer)
        .unwrap_or_else(|e| panic!("`{in_dind}` printed no JSON ({e}): {answer}"));
    assert_eq!(
        (
            &answer["name"],
            &answer["state"],
            &answer["checked"],
            &answer["urls"][0]["url"]
        ),
        (
            &serde_json::json!("jobapp"),
            &serde_json::json!("routable"),
            &serde_json::json!("controller"),
            &serde_json::json!(format!("http://{url_host}/"))
        ),
        "`{in_dind}`: {answer}"
    );
    pod.compose_as(
        V2,
        "badjob",
        &compose_file(&[web(
            "web",
            "x",
            8080,
            "8080",
            &[ENABLE, ("compose-ingress.class", "vip")],
        )]),
        &["up", "-d"],
    );
    let out = job(&sidecar, &["wait", "badjob", "--timeout", "5m"], &[]);
    assert_eq!(out.status.code(), Some(3), "refused: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not-in-pod-scope"),
        "{}",
        show(&out)
    );
}
