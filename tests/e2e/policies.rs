//! Policies the controller enforces (issue 16): the per-composition rate limit as a Traefik
//! `Middleware`, proved by traffic through the bed's Traefik, in Ingress and Gateway mode.

use std::time::Duration;

use testbed::{
    CONVERGE, ComposeVersion, ENABLE, LoadResult, RunnerPod, Sidecar, bed, compose_file, doc_block,
    domain, eventually, load, substitute, through_ingress, traefik_addr, unique_namespace, web,
};

use crate::SIDECAR;

const RPS_LABEL: &str = "compose-ingress.rate-limit.rps";

/// How long each load runs: long enough that the token bucket's burst (one second's worth) is a
/// small part of what passes.
const LOAD: Duration = Duration::from_secs(5);

/// The Middlewares of a composition, as (name, rateLimit.average).
fn middlewares(ns: &str, project: &str) -> Vec<(String, u64)> {
    let out = bed().kubectl(&[
        "-n",
        ns,
        "get",
        "middlewares.traefik.io",
        "-l",
        &format!("compose-ingress/project={project}"),
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "kubectl get middlewares: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("middlewares json");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| {
            (
                m["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                m["spec"]["rateLimit"]["average"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The band a token bucket of `rps` per second with a burst of `rps` lets through of a load
/// well above it: at least rps × (the time the load was sent over − 1 s), at most rps × (the
/// time until the last answer + 1 s) plus the burst: on a busy machine requests reach Traefik
/// later than they were sent, and the bucket refills meanwhile (the bench measures the exact
/// ratio on a quiet machine).
pub(crate) fn band(r: &LoadResult, rps: u32) -> std::ops::RangeInclusive<u32> {
    let low = (f64::from(rps) * (r.sending.as_secs_f64() - 1.0)).floor() as u32;
    let high = (f64::from(rps) * (r.answered.as_secs_f64() + 2.0)).ceil() as u32;
    low..=high
}

pub(crate) fn assert_limited(what: &str, r: LoadResult, rps: u32) {
    let band = band(&r, rps);
    assert!(
        band.contains(&r.ok),
        "{what}: {} of {} requests passed, expected {band:?} at {rps} rps: {r:?}",
        r.ok,
        r.sent
    );
    assert_eq!(
        r.ok + r.limited,
        r.sent,
        "{what}: every request answers 200 or 429: {r:?}"
    );
}

fn page(rps: Option<&str>) -> String {
    let rps_label = rps.map(|v| (RPS_LABEL, v));
    let labels: Vec<(&str, &str)> = [Some(ENABLE), rps_label].into_iter().flatten().collect();
    compose_file(&[web("web", "limited-page", 8080, "8080", &labels)])
}

async fn rate_limit_is_enforced(route: &[&str], test: &str) {
    let ns = unique_namespace(test);
    let pod: RunnerPod = bed().runner_pod(&ns, "runner-0");
    let mut flags = vec![
        "--rate-limit-mode",
        "traefik-middleware",
        "--default-rps",
        "40",
        "--max-rps",
        "40",
    ];
    flags.extend_from_slice(route);
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &flags).await;
    let v2 = ComposeVersion::V2;
    pod.compose_as(v2, "limited", &page(Some("5")), &["up", "-d"]);
    pod.compose_as(
        v2,
        "neighbour",
        &compose_file(&[web("web", "neighbour-page", 8080, "8080", &[ENABLE])]),
        &["up", "-d"],
    );
    let limited = format!("web-8080-limited-runner-0.{}", domain(&ns));
    let neighbour = format!("web-8080-neighbour-runner-0.{}", domain(&ns));
    assert_eq!(through_ingress(&limited).await.trim(), "limited-page");
    assert_eq!(through_ingress(&neighbour).await.trim(), "neighbour-page");
    assert_eq!(
        middlewares(&ns, "limited")
            .into_iter()
            .map(|(_, avg)| avg)
            .collect::<Vec<_>>(),
        [5],
        "one Middleware of 5 rps for the labelled composition"
    );

    // Five times the limit on one composition while its neighbour gets traffic under its own
    // (default) limit at the same time.
    tokio::time::sleep(Duration::from_secs(2)).await; // the bucket refills after the probes
    let addr = traefik_addr();
    let (hit, beside) = tokio::join!(
        load(&addr, &limited, 25, LOAD),
        load(&addr, &neighbour, 20, LOAD)
    );
    assert_limited("limited at 5 rps, hit at 25 rps", hit, 5);
    assert!(hit.limited > 0, "the excess answers 429: {hit:?}");
    assert_eq!(
        (beside.ok, beside.sent),
        (beside.sent, 100),
        "the neighbour (40 rps default, hit at 20 rps) is not limited: {beside:?}"
    );

    // A new label value is a new limit: Compose recreates the container, the sidecar patches the
    // Middleware, Traefik reloads it.
    pod.compose_as(v2, "limited", &page(Some("10")), &["up", "-d"]);
    eventually("the Middleware says 10 rps", CONVERGE, || async {
        (middlewares(&ns, "limited")
            .first()
            .is_some_and(|(_, avg)| *avg == 10))
        .then_some(())
    })
    .await;
    through_ingress(&limited).await; // the recreated container is routed
    eventually("Traefik lets about 10 rps through", CONVERGE, || async {
        tokio::time::sleep(Duration::from_secs(2)).await; // refill
        let r = load(&addr, &limited, 50, LOAD).await;
        let secs = LOAD.as_secs() as u32;
        (r.ok >= 10 * (secs - 1) && r.ok <= 10 * (secs + 2) && r.ok + r.limited == r.sent)
            .then_some(r)
    })
    .await;

    // The composition goes, and its Middleware with it.
    pod.compose_as(v2, "limited", &page(Some("10")), &["down"]);
    eventually("the Middleware is deleted", CONVERGE, || async {
        middlewares(&ns, "limited").is_empty().then_some(())
    })
    .await;
    assert_eq!(
        middlewares(&ns, "neighbour").len(),
        1,
        "the neighbour keeps its Middleware"
    );
}

// Multi-threaded: the load generator's timing should not wait on the answers' tasks. `timed_`:
// what passes a rate limiter depends on when requests arrive, so ./test runs these alone, after
// the parallel tests (a machine busy with 6 tests at once delays arrivals by seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_rate_limit_middleware_limits_through_traefik_ingress() {
    rate_limit_is_enforced(&[], "ratelimit-ing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_rate_limit_middleware_limits_through_traefik_gateway() {
    let gateway = bed().gateway();
    rate_limit_is_enforced(
        &["--route-api", "gateway", "--gateway", &gateway],
        "ratelimit-gw",
    )
    .await;
}

/// curl through Traefik with `Host: host` and optional basic-auth `user:password`: the status.
fn status_through_traefik(host: &str, user: Option<&str>) -> u16 {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ])
    .arg("-H")
    .arg(format!("Host: {host}"));
    if let Some(u) = user {
        cmd.args(["-u", u]);
    }
    let out = cmd
        .arg(format!("{}/", bed().get("TRAEFIK_WEB")))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The operator's side: a basic-auth Middleware (and its htpasswd Secret) and an IP allow-list
/// Middleware that admits only a documentation range (never the bed's loopback client), in the
/// runner namespace; and the policy file naming them.
fn operator_policies(ns: &str, pod: &RunnerPod) -> String {
    let hash = std::process::Command::new("openssl")
        .args(["passwd", "-apr1", "ci-password"])
        .output()
        .expect("openssl passwd");
    let users = format!("ci:{}", String::from_utf8_lossy(&hash.stdout).trim());
    let out = bed().kubectl(&[
        "-n",
        ns,
        "create",
        "secret",
        "generic",
        "ci-basic-auth",
        &format!("--from-literal=users={users}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // docs/policies.md's Middlewares as written, in the test's namespace (the forward-auth one
    // is applied but used by no policy here: the bed runs no oauth2-proxy).
    let middlewares = substitute(
        "docs/policies.md policies-middlewares",
        &doc_block("docs/policies.md", "policies-middlewares"),
        &[("namespace: ci}", &format!("namespace: {ns}}}"))],
    );
    let path = pod.dir.join("middlewares.yaml");
    std::fs::write(&path, middlewares).expect("write middlewares");
    let out = bed().kubectl(&["apply", "-f", path.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = pod.dir.join("access-policies.yaml");
    std::fs::write(
        &file,
        "default: basic\nallowPublic: false\npolicies:\n  basic:\n    traefikMiddlewares: [basic-auth]\n  \
         office:\n    traefikMiddlewares: [office-ip-allow-list]\n",
    )
    .expect("write policy file");
    file.to_str().expect("path").to_string()
}

async fn access_policies_are_enforced(route: &[&str], test: &str) {
    let ns = unique_namespace(test);
    let pod: RunnerPod = bed().runner_pod(&ns, "runner-0");
    let file = operator_policies(&ns, &pod);
    let mut flags = vec!["--access-policies", file.as_str()];
    flags.extend_from_slice(route);
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &flags).await;
    let v2 = ComposeVersion::V2;
    let one = |page: &str, access: Option<&str>| {
        let labels: Vec<(&str, &str)> =
            [Some(ENABLE), access.map(|a| ("compose-ingress.access", a))]
                .into_iter()
                .flatten()
                .collect();
        compose_file(&[web("web", page, 8080, "8080", &labels)])
    };
    pod.compose_as(v2, "guarded", &one("guarded-page", None), &["up", "-d"]);
    pod.compose_as(
        v2,
        "office",
        &one("office-page", Some("office")),
        &["up", "-d"],
    );
    pod.compose_as(v2, "typo", &one("typo-page", Some("bassic")), &["up", "-d"]);
    pod.compose_as(v2, "open", &one("open-page", Some("public")), &["up", "-d"]);
    let host = |project: &str| format!("web-8080-{project}-runner-0.{}", domain(&ns));

    // The default policy (basic auth): 401 without credentials, 200 with them.
    eventually(
        "the default policy asks for credentials",
        CONVERGE,
        || async { (status_through_traefik(&host("guarded"), None) == 401).then_some(()) },
    )
    .await;
    assert_eq!(
        status_through_traefik(&host("guarded"), Some("ci:wrong")),
        401
    );
    assert_eq!(
        status_through_traefik(&host("guarded"), Some("ci:ci-password")),
        200
    );
    // The IP allow-list refuses the bed's client (127.0.0.1).
    eventually(
        "the office policy refuses the bed's address",
        CONVERGE,
        || async { (status_through_traefik(&host("office"), None) == 403).then_some(()) },
    )
    .await;

    // An unknown policy and a forbidden `public`: refused with the choices, nothing created.
    let refused = eventually("both refusals are logged", CONVERGE, || async {
        let lines = sidecar.log_lines("label refused");
        let of = |project: &str| {
            lines
                .iter()
                .find(|l| l["span"]["composition"] == project)
                .cloned()
        };
        Some((of("typo")?, of("open")?))
    })
    .await;
    assert_eq!(
        refused.0["reason"], "unknown-access-policy",
        "{}",
        refused.0
    );
    assert!(
        refused.0["message"]
            .as_str()
            .is_some_and(|m| m.contains("the operator's policies: basic, office")),
        "the refusal lists the policies: {}",
        refused.0
    );
    assert_eq!(refused.1["reason"], "public-not-allowed", "{}", refused.1);
    for project in ["typo", "open"] {
        assert_eq!(
            status_through_traefik(&host(project), None),
            404,
            "{project} is not routed"
        );
    }
}

#[tokio::test]
async fn access_policies_guard_compositions_through_traefik_ingress() {
    access_policies_are_enforced(&[], "access-ing").await;
}

#[tokio::test]
async fn access_policies_guard_compositions_through_traefik_gateway() {
    let gateway = bed().gateway();
    access_policies_are_enforced(
        &["--route-api", "gateway", "--gateway", &gateway],
        "access-gw",
    )
    .await;
}

/// A compose service running the bed's protoecho (gRPC health over h2c, WebSocket echo at /ws,
/// plain HTTP otherwise) on `port`, declaring `protocol`.
pub(crate) fn protoecho(name: &str, page: &str, port: u16, protocol: &str) -> String {
    format!(
        "  {name}:\n    image: compose-ingress-test/busybox:1\n    stop_signal: SIGKILL\n    \
         command: [\"protoecho\", \"serve\", \"--http-port\", \"{port}\", \"--page\", \"{page}\"]\n    \
         ports: [\"{port}\"]\n    labels:\n      compose-ingress.enable: \"true\"\n      \
         compose-ingress.protocol: \"{protocol}\"\n"
    )
}

/// The bed's protoecho client, through Traefik's plain-HTTP entry point: (success, output).
pub(crate) fn protoecho_client(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(format!("{}/protoecho", bed().get("BIN")))
        .args(args)
        .output()
        .expect("run protoecho");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_string())
}

async fn protocols_are_routed(route: &[&str], test: &str, grpc_route: bool) {
    let ns = unique_namespace(test);
    let pod: RunnerPod = bed().runner_pod(&ns, "runner-0");
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, route).await;
    let v2 = ComposeVersion::V2;
    pod.compose_as(
        v2,
        "grpcdemo",
        &compose_file(&[protoecho("api", "grpc-page", 50051, "grpc")]),
        &["up", "-d"],
    );
    pod.compose_as(
        v2,
        "wsdemo",
        &compose_file(&[protoecho("chat", "ws-page", 8080, "ws")]),
        &["up", "-d"],
    );
    pod.compose_as(
        v2,
        "badproto",
        &compose_file(&[protoecho("x", "x", 8080, "grpcs")]),
        &["up", "-d"],
    );
    let addr = traefik_addr();
    let grpc_host = format!("api-50051-grpcdemo-runner-0.{}", domain(&ns));
    let ws_host = format!("chat-8080-wsdemo-runner-0.{}", domain(&ns));

    // A gRPC health check through Traefik, answered by the container's gRPC server.
    let (_, out) = eventually("a gRPC call through Traefik answers", CONVERGE, || async {
        let r = protoecho_client(&["grpc-check", &addr, &grpc_host, "grpc-page"]);
        r.0.then_some(r)
    })
    .await;
    assert_eq!(out, "SERVING");
    // A WebSocket echo through Traefik.
    let (_, out) = eventually("a WebSocket through Traefik echoes", CONVERGE, || async {
        let r = protoecho_client(&["ws-echo", &format!("ws://{addr}/ws"), &ws_host, "hi"]);
        r.0.then_some(r)
    })
    .await;
    assert_eq!(out, "ws-page: hi");

    // What the cluster got: the Service port's appProtocol; in Gateway mode a GRPCRoute.
    let svc = bed().kubectl(&[
        "-n",
        &ns,
        "get",
        "services",
        "-l",
        "compose-ingress/project=grpcdemo",
        "-o",
        "jsonpath={.items[0].spec.ports[0].appProtocol}",
    ]);
    assert_eq!(String::from_utf8_lossy(&svc.stdout), "kubernetes.io/h2c");
    let routes = bed().kubectl(&[
        "-n",
        &ns,
        "get",
        "grpcroutes.gateway.networking.k8s.io",
        "-l",
        "compose-ingress/project=grpcdemo",
        "-o",
        "name",
    ]);
    let routes = String::from_utf8_lossy(&routes.stdout).lines().count();
    assert_eq!(routes, usize::from(grpc_route), "GRPCRoutes of grpcdemo");

    // An unknown protocol: refused with the known ones.
    let refused = eventually("the unknown protocol is refused", CONVERGE, || async {
        sidecar
            .log_lines("label refused")
            .into_iter()
            .find(|l| l["span"]["composition"] == "badproto")
    })
    .await;
    assert_eq!(refused["reason"], "unknown-protocol", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("use one of: http, h2c, grpc, ws, https")),
        "{refused}"
    );
}

#[tokio::test]
async fn grpc_and_websocket_backends_answer_through_traefik_ingress() {
    protocols_are_routed(&[], "proto-ing", false).await;
}

#[tokio::test]
async fn grpc_and_websocket_backends_answer_through_traefik_gateway() {
    let gateway = bed().gateway();
    protocols_are_routed(
        &["--route-api", "gateway", "--gateway", &gateway],
        "proto-gw",
        true,
    )
    .await;
}
