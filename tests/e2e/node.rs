//! The production path: deploy/ applied as a user applies it (tests/testbed/deploy.sh: only the
//! images, the domain and the ingress class change) to the bed's real node (kubelet, containerd,
//! kube-proxy, CNI), and checked the way an operator checks it: pods Ready, a composition started
//! with `kubectl exec … docker compose up` answers at its URL through Traefik over HTTPS, the
//! token stays in the sidecar, and the pod's life (deletion, container kills, dind restarts,
//! scaling) leaves the routes right and nothing behind.
//!
//! The node's CPU holds one deployment at a time: every test here holds `node_lock()`.

use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Resource;
use kube::api::{Api, ListParams, PostParams};

use testbed::{
    CONVERGE, DIND_CONTAINER, Deployment, ENABLE, SIDECAR_CONTAINER, bed, compose_file, container,
    doc_commands, doc_inline, eventually, http_get, ingress_hosts, ingresses_of, kill_container,
    node_lock, pod_ready, projected_token, repo_root, run_doc_line, run_doc_line_ok, services_of,
    spawn_doc_line, stop_doc_line, substitute, unique_namespace, wait_exposed, web,
};

const MANAGED: &str = "app.kubernetes.io/managed-by=compose-ingress";

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a Ready pod has an IP")
}

fn uid(pod: &Pod) -> String {
    pod.meta().uid.clone().expect("pod uid")
}

fn restarts(pod: &Pod, name: &str) -> i32 {
    container(pod, name).map_or(0, |c| c.restart_count)
}

/// One web service, exposed, serving `page`.
fn one_web(page: &str) -> String {
    compose_file(&[web("web", page, 80, "80", &[ENABLE])])
}

/// The sidecar's objects of kind `K` in the namespace, as (kind/name, owner uids).
async fn owned_of<K>(client: &kube::Client, ns: &str) -> Vec<(String, Vec<String>)>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(MANAGED))
        .await
        .unwrap_or_else(|e| panic!("list {kind}: {e}"))
        .into_iter()
        .map(|o| {
            let meta = o.meta();
            let owners = meta.owner_references.iter().flatten();
            (
                format!("{kind}/{}", meta.name.clone().unwrap_or_default()),
                owners.map(|r| r.uid.clone()).collect(),
            )
        })
        .collect()
}

/// Every object the sidecar owns in the namespace, as (kind/name, owner uids).
async fn owned_objects(client: &kube::Client, ns: &str) -> Vec<(String, Vec<String>)> {
    let mut all = owned_of::<Service>(client, ns).await;
    all.extend(owned_of::<Ingress>(client, ns).await);
    all.extend(owned_of::<Lease>(client, ns).await);
    all
}

/// Audit log entries (the bed's apiserver logs every write) of successful deletes of `resource`
/// in `ns`, as the user names that made them.
fn deleters(ns: &str, resource: &str) -> Vec<String> {
    let log = std::fs::read_to_string(bed().dir.join("logs/audit.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["verb"] == "delete"
                && e["stage"] == "ResponseComplete"
                && e["objectRef"]["namespace"] == ns
                && e["objectRef"]["resource"] == resource
                && e["responseStatus"]["code"] == 200
        })
        .map(|e| e["user"]["username"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn deploy_runs_on_the_node_and_a_composition_answers_through_traefik() {
    let bed = bed();
    let _node = node_lock().await;
    let ns = unique_namespace("node-url");
    let d = Deployment::apply(bed, &ns, "ingress");
    d.wait_ready("runner-1").await;
    let pod = d.wait_ready("runner-0").await;
    // What the kubelet's readiness probe asks (deploy/: GET /readyz on port 9102), asked here.
    let (code, body) = http_get(&format!("http://{}:9102/readyz", pod_ip(&pod)), None);
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    // A CI job's steps, as a person runs them: load an image, `docker compose up` the example.
    d.load_test_image("runner-0");
    let example =
        std::fs::read_to_string(repo_root().join("deploy/examples/compose.yml")).expect("example");
    d.compose_up("runner-0", "demo", &example);
    let page = d.answers(&d.host("web-80-demo-runner-0"), "/").await;
    assert!(page.starts_with("hello from web ("), "{page}");
    let api = d.answers(&d.host("api-demo"), "/api").await;
    assert!(api.contains("\"service\":\"api\""), "{api}");
    // Only the opted-in services: worker publishes nothing, api's port 9000 is not listed.
    let client = bed.admin().await;
    let (_, ingress) = wait_exposed(&client, &ns, "runner-0", "demo").await;
    let mut hosts = ingress_hosts(&ingress);
    hosts.sort();
    assert_eq!(hosts, [d.host("api-demo"), d.host("web-80-demo-runner-0")]);

    // The sidecar's token (what the kubelet projected for it) is nowhere in dind's file system,
    // nor in a job's container that mounts all of it.
    let token = projected_token(bed, &pod);
    // The kubelet's token is pod-bound: its user info names the pod, which the admission guard
    // (deploy/admission) ties every object the token writes to.
    let review: TokenReview = serde_json::from_value(serde_json::json!({
        "spec": {"token": token.trim()}
    }))
    .expect("a TokenReview");
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("review the sidecar's token");
    let user = reviewed
        .status
        .and_then(|s| s.user)
        .expect("the token is valid");
    let extra = user.extra.unwrap_or_default();
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-name"),
        Some(&vec!["runner-0".to_string()]),
        "the sidecar's token is bound to its pod"
    );
    // deploy/'s NetworkPolicy for :9102 is applied with the rest, and selects the runner pods
    // (the bed's CNI does not enforce it; docs/security.md says what does).
    let policy = d.kubectl(&[
        "get",
        "networkpolicy",
        "runner-sidecar-api",
        "-o",
        "jsonpath={.spec.podSelector.matchLabels}",
    ]);
    let selector: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&policy).expect("the NetworkPolicy's selector");
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the NetworkPolicy selects runner-0: {selector:?} vs {labels:?}"
    );
    let payload = token.split('.').nth(1).expect("the token is a JWT");
    let search = d.exec_dind(
        "runner-0",
        &[
            "sh",
            "-c",
            &format!(
                "find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -type f -size -64k -print0 \
                 | xargs -0 grep -lsF '{payload}'; echo searched"
            ),
        ],
        b"",
    );
    let found = String::from_utf8_lossy(&search.stdout);
    assert_eq!(
        found.trim(),
        "searched",
        "the sidecar's ServiceAccount token is readable in dind: {found}"
    );
    let mount = d.exec_dind(
        "runner-0",
        &["ls", "/var/run/secrets/kubernetes.io/serviceaccount"],
        b"",
    );
    assert!(
        !mount.status.success(),
        "dind has a ServiceAccount mount: {}",
        String::from_utf8_lossy(&mount.stdout)
    );
    let job = d.exec_dind(
        "runner-0",
        &[
            "docker",
            "run",
            "--rm",
            "-v",
            "/:/dind",
            bed.get("TEST_IMAGE"),
            "sh",
            "-c",
            "cat /dind/var/run/secrets/kubernetes.io/serviceaccount/token \
             /dind/run/secrets/kubernetes.io/serviceaccount/token \
             /var/run/secrets/kubernetes.io/serviceaccount/token",
        ],
        b"",
    );
    assert!(
        !String::from_utf8_lossy(&job.stdout).contains(payload),
        "a job's container read the sidecar's token"
    );

    // docs/install.md's commands after the install, as written but for the namespace: docker in
    // dind lists the example's containers; the uninstall leaves none of the sidecar's objects.
    let in_ns = format!("-n {ns}");
    let ps = substitute(
        "docs/install.md",
        &doc_inline(
            "docs/install.md",
            "kubectl exec runner-0 -c dind -- docker ps",
        ),
        &[("kubectl", &format!("kubectl {in_ns}"))],
    );
    let listed = run_doc_line_ok(bed, &ps, &repo_root(), &[]);
    assert!(listed.contains("demo"), "{ps}: {listed}");
    // What docs/operability.md and docs/troubleshooting.md tell an operator to look at, as
    // written but for the bed's substitutions (the test's namespace and pod): the sidecar's
    // log, the pod's description and Events, the Ingresses with their class.
    let runner = [("runner-3", "runner-0")];
    let with_ns = |line: String| line.replacen("kubectl ", &format!("kubectl {in_ns} "), 1);
    let looks = [
        (
            substitute(
                "docs/troubleshooting.md",
                &doc_inline(
                    "docs/troubleshooting.md",
                    "kubectl -n ci logs runner-3 -c compose-ingress",
                ),
                &[("-n ci", &in_ns), runner[0]],
            ),
            "compose-ingress starting",
        ),
        (
            with_ns(substitute(
                "docs/operability.md",
                &doc_inline("docs/operability.md", "kubectl describe pod runner-3"),
                &runner,
            )),
            "compose-ingress",
        ),
        (
            with_ns(substitute(
                "docs/operability.md",
                &doc_inline("docs/operability.md", "kubectl events --for pod/runner-3"),
                &runner,
            )),
            "Started",
        ),
        (
            with_ns(doc_inline(
                "docs/troubleshooting.md",
                "kubectl get ingress -o wide",
            )),
            "traefik",
        ),
    ];
    for (line, says) in looks {
        let out = run_doc_line_ok(bed, &line, &repo_root(), &[]);
        assert!(out.contains(says), "`{line}` does not say {says:?}:\n{out}");
    }
    // docs/monitoring.md's alerts point at the same two looks for a pod the alert names.
    let alerted = [("<pod>", "runner-0")];
    for (line, says) in [
        (
            doc_inline("docs/monitoring.md", "kubectl describe pod <pod>"),
            "compose-ingress",
        ),
        (
            doc_inline("docs/monitoring.md", "kubectl events --for pod/<pod>"),
            "Started",
        ),
    ] {
        let line = with_ns(substitute("docs/monitoring.md", &line, &alerted));
        let out = run_doc_line_ok(bed, &line, &repo_root(), &[]);
        assert!(out.contains(says), "`{line}` does not say {says:?}:\n{out}");
    }
    // docs/troubleshooting.md's first look, as written but for the namespace and pod: the
    // port-forward puts the sidecar's port on this machine's localhost, where the curl reads
    // /exposures (through the kubelet and containerd, not the pod's address).
    let forward = substitute(
        "docs/troubleshooting.md",
        &doc_inline(
            "docs/troubleshooting.md",
            "kubectl -n ci port-forward runner-3 9102",
        ),
        &[("-n ci", &in_ns), runner[0]],
    );
    let forwarding = spawn_doc_line(bed, &forward, &repo_root(), &[]);
    let curl = doc_inline("docs/troubleshooting.md", "curl localhost:9102/exposures");
    let read = eventually(
        &format!("`{curl}` answers through `{forward}`"),
        CONVERGE,
        || async {
            let out = run_doc_line(bed, &curl, &repo_root(), &[]);
            let text = String::from_utf8_lossy(&out.stdout);
            serde_json::from_str::<serde_json::Value>(&text).ok()
        },
    )
    .await;
    let forwarded = stop_doc_line(forwarding);
    let said = String::from_utf8_lossy(&forwarded.stdout);
    assert!(
        said.contains("Forwarding from 127.0.0.1:9102"),
        "`{forward}` said: {said}"
    );
    let demo = read["compositions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "demo"))
        .unwrap_or_else(|| panic!("`{curl}` lists no composition demo: {read}"));
    assert_eq!(
        (&read["pod"], &demo["state"]),
        (
            &serde_json::json!("runner-0"),
            &serde_json::json!("exposed")
        ),
        "`{curl}` through the port-forward: {read}"
    );
    d.uninstall();
    let left = substitute(
        "docs/install.md",
        &doc_inline(
            "docs/install.md",
            "kubectl -n ci get all,ingress,lease,endpointslices -l app.kubernetes.io/managed-by=compose-ingress",
        ),
        &[("-n ci", &in_ns)],
    );
    eventually(
        "nothing of the sidecar's left after the uninstall",
        CONVERGE,
        || async {
            run_doc_line_ok(bed, &left, &repo_root(), &[])
                .trim()
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn deleting_a_runner_pod_removes_its_objects_and_its_successor_exposes_again() {
    let bed = bed();
    let _node = node_lock().await;
    let ns = unique_namespace("node-del");
    let d = Deployment::apply(bed, &ns, "ingress");
    let old = d.wait_ready("runner-0").await;
    d.load_test_image("runner-0");
    d.compose_up("runner-0", "app", &one_web("first"));
    let host = d.host("web-80-app-runner-0");
    assert_eq!(d.answers(&host, "/").await.trim(), "first");
    let client = bed.admin().await;
    assert!(!owned_objects(&client, &ns).await.is_empty());

    d.kubectl(&["delete", "pod", "runner-0", "--wait=false"]);
    // The StatefulSet recreates runner-0: a new pod (new uid) that becomes Ready.
    let new = eventually("runner-0 recreated and Ready", CONVERGE, || async {
        let p = d.pod("runner-0").await?;
        (uid(&p) != uid(&old) && pod_ready(&p)).then_some(p)
    })
    .await;
    // Nothing of the old pod is left, and the sidecar itself deleted its objects at SIGTERM
    // (dind, a regular container, stopped before the native sidecar): the audit log names the
    // sidecar's ServiceAccount, not the garbage collector.
    let left = owned_objects(&client, &ns).await;
    assert!(
        left.iter().all(|(_, owners)| !owners.contains(&uid(&old))),
        "objects of the deleted pod are left: {left:?}"
    );
    let by = deleters(&ns, "ingresses");
    let sidecar_user = format!("system:serviceaccount:{ns}:compose-ingress");
    assert!(
        by.contains(&sidecar_user),
        "the Ingress was not deleted by the sidecar (deleted by {by:?})"
    );

    // The new pod's dind starts empty (emptyDir): a new job's composition is exposed again.
    d.load_test_image("runner-0");
    d.compose_up("runner-0", "app", &one_web("second"));
    assert_eq!(d.answers(&host, "/").await.trim(), "second");
    let owners: Vec<_> = owned_objects(&client, &ns)
        .await
        .into_iter()
        .flat_map(|(_, o)| o)
        .collect();
    assert!(!owners.is_empty() && owners.iter().all(|o| *o == uid(&new)));
}

#[tokio::test]
async fn killing_the_sidecar_container_keeps_the_routes_and_it_is_ready_again() {
    let bed = bed();
    let _node = node_lock().await;
    let ns = unique_namespace("node-kill");
    let d = Deployment::apply(bed, &ns, "ingress");
    let pod = d.wait_ready("runner-0").await;
    d.load_test_image("runner-0");
    d.compose_up("runner-0", "app", &one_web("kept"));
    let host = d.host("web-80-app-runner-0");
    d.answers(&host, "/").await;
    let client = bed.admin().await;
    let (_, before) = wait_exposed(&client, &ns, "runner-0", "app").await;

    kill_container(bed, &pod, SIDECAR_CONTAINER, "SIGKILL");
    let after = eventually(
        "the kubelet restarts the sidecar and the pod is Ready",
        CONVERGE,
        || async {
            let p = d.pod("runner-0").await?;
            (restarts(&p, SIDECAR_CONTAINER) >= 1 && pod_ready(&p)).then_some(p)
        },
    )
    .await;
    assert_eq!(
        restarts(&after, DIND_CONTAINER),
        0,
        "dind was restarted too"
    );
    assert_eq!(
        uid(&after),
        uid(&pod),
        "the pod was replaced, not its container"
    );
    let (_, now) = wait_exposed(&client, &ns, "runner-0", "app").await;
    assert_eq!(
        now.meta().uid,
        before.meta().uid,
        "the Ingress was recreated, not kept"
    );
    assert_eq!(d.answers(&host, "/").await.trim(), "kept");
}

#[tokio::test]
async fn dind_restarting_keeps_the_sidecar_ready_and_the_routes_follow_what_runs_after() {
    let bed = bed();
    let _node = node_lock().await;
    let ns = unique_namespace("node-dind");
    let d = Deployment::apply(bed, &ns, "ingress");
    let pod = d.wait_ready("runner-0").await;
    d.load_test_image("runner-0");
    // `keep` comes back after a dockerd restart (restart: always), `gone` does not.
    let mut keep = web("keep", "keep", 80, "80", &[ENABLE]);
    keep.push_str("    restart: always\n");
    let gone = web("gone", "gone", 80, "80", &[ENABLE]);
    d.compose_up("runner-0", "app", &compose_file(&[keep, gone]));
    let (keep_host, gone_host) = (
        d.host("keep-80-app-runner-0"),
        d.host("gone-80-app-runner-0"),
    );
    d.answers(&keep_host, "/").await;
    d.answers(&gone_host, "/").await;

    // dind's process dies; the kubelet restarts the container. Meanwhile the sidecar must stay
    // ready (its readiness is the pod's): sampled from its /readyz on the pod IP.
    let readyz = format!("http://{}:9102/readyz", pod_ip(&pod));
    kill_container(bed, &pod, DIND_CONTAINER, "SIGKILL");
    let mut samples = Vec::new();
    let after = eventually("dind restarted and the pod Ready", CONVERGE, || {
        samples.push(http_get(&readyz, None));
        async {
            let p = d.pod("runner-0").await?;
            (restarts(&p, DIND_CONTAINER) >= 1 && pod_ready(&p)).then_some(p)
        }
    })
    .await;
    let unready: Vec<_> = samples.iter().filter(|(code, _)| *code != 200).collect();
    assert!(
        unready.is_empty(),
        "the sidecar was unready while dind restarted: {unready:?}"
    );
    assert_eq!(
        restarts(&after, SIDECAR_CONTAINER),
        0,
        "the sidecar restarted"
    );

    // After the restart only `keep` runs: its route stays, `gone`'s is removed after the grace.
    let client = bed.admin().await;
    eventually("only keep's host is routed", CONVERGE, || async {
        let i = ingresses_of(&client, &ns, "runner-0", "app").await;
        (i.len() == 1 && ingress_hosts(&i[0]) == [keep_host.clone()]).then_some(())
    })
    .await;
    assert_eq!(d.answers(&keep_host, "/").await.trim(), "keep");
    // Traefik drops the route after it sees the Ingress change: waited for, not assumed.
    eventually("gone's host is no longer routed", CONVERGE, || async {
        (d.https_get(&gone_host, "/").0 == 404).then_some(())
    })
    .await;
}

#[tokio::test]
async fn scaling_the_statefulset_down_removes_the_objects_of_the_removed_pod() {
    let bed = bed();
    let _node = node_lock().await;
    let ns = unique_namespace("node-scale");
    let d = Deployment::apply(bed, &ns, "ingress");
    for pod in ["runner-0", "runner-1"] {
        d.wait_ready(pod).await;
        d.load_test_image(pod);
        d.compose_up(pod, "app", &one_web(pod));
    }
    let client = bed.admin().await;
    wait_exposed(&client, &ns, "runner-0", "app").await;
    wait_exposed(&client, &ns, "runner-1", "app").await;
    assert_eq!(
        d.answers(&d.host("web-80-app-runner-1"), "/").await.trim(),
        "runner-1"
    );

    d.kubectl(&["scale", "statefulset", "runner", "--replicas", "1"]);
    eventually("runner-1's objects are gone", CONVERGE, || async {
        let s = services_of(&client, &ns, "runner-1", "app").await;
        let i = ingresses_of(&client, &ns, "runner-1", "app").await;
        let pod = d.pod("runner-1").await;
        (s.is_empty() && i.is_empty() && pod.is_none()).then_some(())
    })
    .await;
    let left = owned_objects(&client, &ns).await;
    let runner0 = uid(&d.pod("runner-0").await.expect("runner-0 stays"));
    assert!(
        left.iter().all(|(_, owners)| *owners == [runner0.clone()]),
        "objects of runner-1 are left: {left:?}"
    );
    assert_eq!(
        d.answers(&d.host("web-80-app-runner-0"), "/").await.trim(),
        "runner-0"
    );
}

/// deploy/overlays/gateway as users run it (issue 29, item 4): its own Gateway (an HTTPS
/// listener) carries an HTTP service and a gRPC one (`compose-ingress.protocol: grpc`, a
/// GRPCRoute, which a listener that lists only HTTPRoute refuses), both over TLS through
/// Traefik; the URLs the sidecar hands out say https, as that listener serves.
#[tokio::test]
async fn the_gateway_overlay_routes_http_and_grpc_through_its_https_gateway() {
    let bed = bed();
    let _node = node_lock().await;
    let ns = unique_namespace("node-gw");
    let d = Deployment::apply(bed, &ns, "gateway");
    let pod = d.wait_ready("runner-0").await;
    d.load_test_image("runner-0");
    let compose = compose_file(&[
        web("web", "through the gateway", 80, "80", &[ENABLE]),
        crate::policies::protoecho("api", "grpc-page", 50051, "grpc"),
    ]);
    d.compose_up("runner-0", "app", &compose);
    let page = d.answers(&d.host("web-80-app-runner-0"), "/").await;
    assert_eq!(page.trim(), "through the gateway");
    let routes = d.kubectl(&["get", "httproutes", "-l", MANAGED, "-o", "name"]);
    assert_eq!(routes.lines().count(), 1, "{routes}");
    let ingresses = d.kubectl(&["get", "ingresses", "-o", "name"]);
    assert!(ingresses.trim().is_empty(), "{ingresses}");

    // The GRPCRoute is accepted by the overlay's Gateway, and a gRPC call over HTTPS reaches
    // the container's gRPC server (its own health service name answers SERVING).
    let accepted = eventually("the Gateway accepts the GRPCRoute", CONVERGE, || async {
        let out = d.kubectl(&[
            "get",
            "grpcroutes.gateway.networking.k8s.io",
            "-l",
            MANAGED,
            "-o",
            "jsonpath={.items[*].status.parents[*].conditions[?(@.type==\"Accepted\")].status}",
        ]);
        (!out.trim().is_empty()).then(|| out.trim().to_string())
    })
    .await;
    assert_eq!(
        accepted,
        "True",
        "GRPCRoute status: {}",
        d.kubectl(&["get", "grpcroutes.gateway.networking.k8s.io", "-o", "yaml"])
    );
    let grpc_host = d.host("api-50051-app-runner-0");
    let status = eventually("a gRPC call over HTTPS answers", CONVERGE, || async {
        d.grpc_health_over_https(&grpc_host, "grpc-page").ok()
    })
    .await;
    assert_eq!(status, 1, "SERVING");

    // The URLs the sidecar hands out: https, the scheme of the Gateway's listener.
    let (code, body) = http_get(
        &format!("http://{}:9102/v1/compositions/app", pod_ip(&pod)),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("composition document");
    let mut urls: Vec<&str> = doc["urls"]
        .as_array()
        .expect("urls")
        .iter()
        .filter_map(|u| u["url"].as_str())
        .collect();
    urls.sort();
    assert_eq!(
        urls,
        [
            format!("https://{grpc_host}/"),
            format!("https://{}/", d.host("web-80-app-runner-0"))
        ],
        "{body}"
    );
}

/// deploy/overlays/pod-scope on the node: a composition's URL answers over HTTPS through the
/// one wildcard route of its pod (the certificate names `*.<pod>.<domain>`), nothing is written
/// per composition, and when the kubelet restarts the sidecar the pod's URLs fail only until the
/// new one listens: that gap is measured, printed and bounded.
#[tokio::test]
async fn pod_scope_deploy_serves_https_through_one_route_per_pod_and_a_sidecar_restart_is_a_short_gap()
 {
    let bed = bed();
    let _node = node_lock().await;
    let ns = unique_namespace("node-pod");
    let d = Deployment::apply(bed, &ns, "pod-scope");
    d.wait_ready("runner-1").await;
    let pod = d.wait_ready("runner-0").await;
    d.load_test_image("runner-0");
    let example =
        std::fs::read_to_string(repo_root().join("deploy/examples/compose.yml")).expect("example");
    d.compose_up("runner-0", "demo", &example);
    let host = d.host("web-80-demo.runner-0");
    let page = d.answers(&host, "/").await;
    assert!(page.starts_with("hello from web ("), "{page}");

    // One route per pod, a wildcard of its own label; nothing of the composition.
    let client = bed.admin().await;
    let ingresses = Api::<Ingress>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(MANAGED))
        .await
        .expect("list ingresses");
    let mut hosts: Vec<String> = ingresses.items.iter().flat_map(ingress_hosts).collect();
    hosts.sort();
    assert_eq!(
        hosts,
        [d.host("*.runner-0"), d.host("*.runner-1")],
        "one wildcard route per pod"
    );
    assert!(
        owned_of::<Lease>(&client, &ns).await.is_empty(),
        "no Leases in pod scope"
    );

    // The kubelet restarts a killed sidecar: the gap in the pod's URLs, from the kill to the
    // first 200 again (sampled every 100 ms).
    kill_container(bed, &pod, SIDECAR_CONTAINER, "SIGKILL");
    let killed = std::time::Instant::now();
    let mut failed = 0;
    let back = eventually(
        "the URL answers again after the sidecar's restart",
        CONVERGE,
        || {
            let (code, _) = d.https_get(&host, "/");
            if code != 200 {
                failed += 1;
            }
            async move {
                if code == 200 && failed > 0 {
                    return Some(killed.elapsed());
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                None
            }
        },
    )
    .await;
    println!(
        "pod scope: the pod's URLs failed for at most {} ms after the kubelet's restart of the sidecar ({failed} failed requests)",
        back.as_millis()
    );
    assert!(
        back < std::time::Duration::from_secs(60),
        "the pod's URLs were down for {back:?}"
    );
    let after = d.pod("runner-0").await.expect("runner-0");
    assert!(
        restarts(&after, SIDECAR_CONTAINER) >= 1,
        "the sidecar was restarted"
    );
    assert_eq!(restarts(&after, DIND_CONTAINER), 0, "dind was not");
    assert_eq!(uid(&after), uid(&pod), "the same pod");
}

/// The README's first command, as a newcomer runs it: `./demo` brings the example composition's
/// URLs up over HTTPS through Traefik, and `./demo down` takes it away again (the bed stays: the
/// test run shares it).
#[tokio::test]
async fn the_demo_runs_as_the_readme_says_and_goes_away() {
    let bed = bed();
    let _node = node_lock().await;
    // docs/getting-started.md's two lines as written, but for the bed's one substitution: the
    // demo's teardown keeps the shared bed (the doc's own comment names KEEP_TESTBED=1). The
    // README's first command and the docs' inline `./demo` are the same line.
    let lines = doc_commands(
        "docs/getting-started.md",
        "demo",
        &[("./demo down", "KEEP_TESTBED=1 ./demo down")],
    );
    let [demo, demo_down] = lines.as_slice() else {
        panic!("docs/getting-started.md demo: expected ./demo and ./demo down: {lines:?}");
    };
    let readme = doc_commands("README.md", "readme-commands", &[]);
    for (what, line) in [
        (
            "README.md's first command",
            readme.first().cloned().unwrap_or_default(),
        ),
        ("README.md's inline", doc_inline("README.md", "./demo")),
        (
            "docs/install.md's inline",
            doc_inline("docs/install.md", "./demo"),
        ),
    ] {
        assert_eq!(&line, demo, "{what} is getting-started's demo line");
    }
    let run = |line: &str| run_doc_line(bed, line, &repo_root(), &[]);
    let up = run(demo);
    let out = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "./demo failed:\n{out}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(out.contains("The demo is up."), "{out}");
    assert!(
        out.contains("hello from web ("),
        "the web page over HTTPS: {out}"
    );
    assert!(
        out.contains("\"service\":\"api\""),
        "the api over HTTPS: {out}"
    );
    let down = run(demo_down);
    assert!(
        down.status.success(),
        "./demo down failed:\n{}{}",
        String::from_utf8_lossy(&down.stdout),
        String::from_utf8_lossy(&down.stderr)
    );
    let ns = bed.kubectl(&["get", "namespace", "demo", "-o", "name"]);
    assert!(
        String::from_utf8_lossy(&ns.stdout).trim().is_empty(),
        "the demo's namespace is gone"
    );
}
