//! Smoke tests of the test bed itself: each proves one component is real and behaves as the
//! sidecar's tests assume (these are the acceptance of the test-bed issue).

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use testbed::{CONVERGE, ComposeVersion, RunnerPod, bed, eventually, http_get, unique_namespace};

const WEB_COMPOSE: &str = r#"
version: "2.4"
services:
  web:
    image: compose-ingress-test/busybox:1
    command: ["sh", "-c", "echo hello from $$HOSTNAME-page > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: ["80"]
"#;

fn service_json(name: &str, pod: &str, target_port: u16, owner: Option<(&str, &str)>) -> Service {
    let mut v = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"statefulset.kubernetes.io/pod-name": pod},
            "ports": [{"name": "web", "port": 8080, "targetPort": target_port, "protocol": "TCP"}]
        }
    });
    if let Some((pod_name, uid)) = owner {
        v["metadata"]["ownerReferences"] =
            serde_json::json!([{"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": uid}]);
    }
    serde_json::from_value(v).expect("service json")
}

/// Brings `WEB_COMPOSE` up as `project` with Compose `version` in `pod`, and returns the page its
/// container serves on the pod IP (once it answers).
async fn page_on_the_pod_ip(pod: &RunnerPod, version: ComposeVersion, project: &str) -> String {
    pod.compose_as(version, project, WEB_COMPOSE, &["up", "-d"]);
    let port = pod.published_port_as(version, project, "web", 80);
    let url = format!("http://{}:{port}/", pod.ip);
    let what = format!("{version} container page on the pod IP");
    eventually(&what, CONVERGE, || async {
        let (code, body) = http_get(&url, None);
        (code == 200).then_some(body)
    })
    .await
}

#[tokio::test]
async fn compose_project_answers_on_the_pod_ip() {
    let bed = bed();
    let ns = unique_namespace("smoke-compose");
    let pod = bed.runner_pod(&ns, "runner-0");
    let body = page_on_the_pod_ip(&pod, ComposeVersion::V1, "smokeweb").await;
    assert!(body.starts_with("hello from "), "unexpected page {body:?}");
    // compose labels are what the sidecar keys on: check they are there, as docker reports them.
    let out = pod.docker_cli(&[
        "ps",
        "--filter",
        "label=com.docker.compose.project=smokeweb",
        "--format",
        "{{.Label \"com.docker.compose.service\"}}",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "web");
}

#[tokio::test]
async fn compose_v2_project_answers_on_the_pod_ip() {
    let v2 = ComposeVersion::V2;
    let bed = bed();
    let ns = unique_namespace(&format!("smoke-compose-{v2}"));
    let pod = bed.runner_pod(&ns, "runner-0");
    // The same compose file as v1's smoke test: v2 accepts it (it only warns that `version` is
    // obsolete).
    let body = page_on_the_pod_ip(&pod, v2, "smokev2").await;
    assert!(body.starts_with("hello from "), "unexpected page {body:?}");

    // v2 names containers project-service-N (v1: project_service_N).
    let out = pod.docker_cli(&[
        "ps",
        "-a",
        "--filter",
        "label=com.docker.compose.project=smokev2",
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "smokev2-web-1");
    assert_eq!(v2.container_name("smokev2", "web", 1), "smokev2-web-1");

    // The labels the sidecar keys on, as docker reports them, and proof that v2 made them.
    let out = pod.docker_cli(&[
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        "smokev2-web-1",
    ]);
    assert!(
        out.status.success(),
        "docker inspect smokev2-web-1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let labels: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).expect("container labels as JSON");
    for (key, expected) in [
        ("com.docker.compose.project", "smokev2"),
        ("com.docker.compose.service", "web"),
        ("com.docker.compose.container-number", "1"),
        ("com.docker.compose.oneoff", "False"),
    ] {
        assert_eq!(
            labels.get(key).map(String::as_str),
            Some(expected),
            "label {key} of smokev2-web-1 (all labels: {labels:?})"
        );
    }
    let version = std::process::Command::new(v2.program())
        .args(["version", "--short"])
        .output()
        .expect("run compose v2 version");
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    assert!(
        version.starts_with("2."),
        "the bed's Compose v2 reports version {version:?}"
    );
    assert_eq!(
        labels.get("com.docker.compose.version"),
        Some(&version),
        "the container was made by the bed's Compose v2"
    );
}

#[tokio::test]
async fn two_pods_publish_the_same_port_independently() {
    let bed = bed();
    let ns = unique_namespace("smoke-twopods");
    let a = bed.runner_pod(&ns, "runner-0");
    let b = bed.runner_pod(&ns, "runner-1");
    let fixed = WEB_COMPOSE.replace("[\"80\"]", "[\"5000:80\"]");
    a.compose("same", &fixed.replace("hello from", "pod A"), &["up", "-d"]);
    b.compose("same", &fixed.replace("hello from", "pod B"), &["up", "-d"]);
    for (pod, expected) in [(&a, "pod A"), (&b, "pod B")] {
        let url = format!("http://{}:5000/", pod.ip);
        let body = eventually("page on port 5000", CONVERGE, || async {
            let (code, body) = http_get(&url, None);
            (code == 200).then_some(body)
        })
        .await;
        assert!(
            body.starts_with(expected),
            "{url} answered {body:?}, expected {expected}"
        );
    }
}

#[tokio::test]
async fn apiserver_enforces_rbac_for_the_sidecar_service_account() {
    let bed = bed();
    let ns = unique_namespace("smoke-rbac");
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    let token = pod.sidecar_token(&admin).await;
    let sidecar = bed.client_with_token(&token).await;

    let services: Api<Service> = Api::namespaced(sidecar.clone(), &ns);
    services
        .list(&ListParams::default())
        .await
        .expect("the sidecar's Role allows listing services");
    let pods: Api<Pod> = Api::namespaced(sidecar.clone(), &ns);
    match pods.delete("runner-0", &DeleteParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "expected Forbidden, got {e:?}"),
        other => panic!("deleting a pod must be forbidden for the sidecar, got {other:?}"),
    }
    let other_ns: Api<Service> = Api::namespaced(sidecar, "default");
    match other_ns.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "expected Forbidden, got {e:?}"),
        other => panic!("another namespace must be forbidden for the sidecar, got {other:?}"),
    }
}

#[tokio::test]
async fn deleting_the_runner_pod_garbage_collects_owned_services() {
    let bed = bed();
    let ns = unique_namespace("smoke-gc");
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    services
        .create(
            &PostParams::default(),
            &service_json("owned", "runner-0", 5000, Some(("runner-0", &pod.uid))),
        )
        .await
        .expect("create owned service");
    services
        .create(
            &PostParams::default(),
            &service_json("not-owned", "runner-0", 5000, None),
        )
        .await
        .expect("create unowned service");
    pod.force_delete(&admin).await;
    eventually(
        "garbage collector deletes the owned service",
        CONVERGE,
        || async {
            services
                .get_opt("owned")
                .await
                .expect("get service")
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(
        services.get_opt("not-owned").await.expect("get").is_some(),
        "an unowned service must stay"
    );
}

#[tokio::test]
async fn service_selecting_the_runner_pod_gets_its_ip_in_an_endpointslice() {
    let bed = bed();
    let ns = unique_namespace("smoke-eps");
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    services
        .create(
            &PostParams::default(),
            &service_json("web", "runner-0", 5000, None),
        )
        .await
        .expect("create service");
    let slices: Api<EndpointSlice> = Api::namespaced(admin, &ns);
    let lp = ListParams::default().labels("kubernetes.io/service-name=web");
    let addresses = eventually("EndpointSlice with the pod IP", CONVERGE, || async {
        let list = slices.list(&lp).await.expect("list endpointslices");
        let addrs: Vec<String> = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses.clone())
            .collect();
        (!addrs.is_empty()).then_some(addrs)
    })
    .await;
    assert_eq!(addresses, vec![pod.ip.clone()]);
}

/// What the two routing smoke tests start from: a runner pod in a fresh namespace whose compose
/// project `project` serves a page starting with `greeting`, and a hand-written Service of that
/// name (no sidecar) on its published port; with the admin client.
async fn hand_written_service(
    test: &str,
    project: &str,
    greeting: &str,
) -> (String, RunnerPod, kube::Client) {
    let ns = unique_namespace(test);
    let pod = bed().runner_pod(&ns, "runner-0");
    pod.compose(
        project,
        &WEB_COMPOSE.replace("hello from", greeting),
        &["up", "-d"],
    );
    let port = pod.published_port(project, "web", 80);
    let admin = bed().admin().await;
    Api::<Service>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &service_json(project, "runner-0", port, None),
        )
        .await
        .expect("create service");
    (ns, pod, admin)
}

#[tokio::test]
async fn ingress_controller_routes_a_hand_written_ingress_to_the_compose_port() {
    let bed = bed();
    let (ns, _pod, admin) = hand_written_service("smoke-ingress", "routed", "via ingress").await;
    let host = format!("{ns}.composition.example.com");
    let ingress: k8s_openapi::api::networking::v1::Ingress =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "routed"},
            "spec": {"ingressClassName": "traefik", "rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "routed", "port": {"name": "web"}}}}]}}]}
        }))
        .expect("ingress json");
    Api::<k8s_openapi::api::networking::v1::Ingress>::namespaced(admin, &ns)
        .create(&PostParams::default(), &ingress)
        .await
        .expect("create ingress");
    let body = testbed::through_ingress(&host).await;
    assert!(body.starts_with("via ingress"), "Traefik answered {body:?}");
    let (code, _) = http_get(
        &format!("{}/", bed.get("TRAEFIK_WEB")),
        Some("unknown.composition.example.com"),
    );
    assert_eq!(code, 404, "an unknown host must not be routed");
}

#[tokio::test]
async fn ingress_controller_routes_a_hand_written_httproute_to_the_compose_port() {
    let bed = bed();
    let (ns, pod, _admin) = hand_written_service("smoke-gateway", "gw", "via gateway").await;
    let host = format!("{ns}.composition.example.com");
    let route = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "gw", "namespace": ns},
        "spec": {
            "parentRefs": [{"name": bed.get("GATEWAY_NAME"), "namespace": bed.get("GATEWAY_NAMESPACE")}],
            "hostnames": [host],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                       "backendRefs": [{"name": "gw", "port": 8080}]}]
        }
    });
    let file = pod.dir.join("route.json");
    std::fs::write(&file, route.to_string()).expect("write route");
    let out = bed.kubectl(&["apply", "-f", file.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "kubectl apply httproute: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = testbed::through_ingress(&host).await;
    assert!(body.starts_with("via gateway"), "Traefik answered {body:?}");
}
