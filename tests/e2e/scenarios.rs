//! The sidecar, end to end on the test bed: each scenario of the sidecar issue is a test here,
//! run against a real dockerd + docker-compose, a real apiserver with garbage collector and
//! EndpointSlice controller, and Traefik routing real HTTP to the containers. The sidecar runs
//! as its ServiceAccount with the Role from deploy/base/rbac.yaml.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use testbed::{
    CONVERGE, ComposeVersion, ENABLE, RunnerPod, Sidecar, bed, compose_file, domain, eventually,
    ingress_hosts, ingresses_of, services_of, sidecar_kubeconfig, target_ports, through_ingress,
    unique_namespace, wait_exposed, wait_gone, web,
};

use crate::SIDECAR;
use crate::operability::Endpoints;

fn host_of(ns: &str, service: &str, port: u16, project: &str, pod: &str) -> String {
    format!("{service}-{port}-{project}-{pod}.{}", domain(ns))
}

async fn setup(test: &str) -> (String, RunnerPod, kube::Client) {
    let bed = bed();
    let ns = unique_namespace(test);
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    (ns, pod, admin)
}

async fn opted_in_service_gets_service_and_ingress_and_is_routable(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("expose").await;
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    pod.compose_as(
        compose,
        "demochat",
        &compose_file(&[
            web("web", "demochat-web-page", 5000, "5000", &[ENABLE]),
            web("db", "not-exposed", 6000, "6000", &[]),
        ]),
        &["up", "-d"],
    );
    let (service, ingress) = wait_exposed(&admin, &ns, "runner-0", "demochat").await;
    let host_port = pod.published_port_as(compose, "demochat", "web", 5000);
    let expected_host = host_of(&ns, "web", 5000, "demochat", "runner-0");
    assert_eq!(ingress_hosts(&ingress), vec![expected_host.clone()]);
    let ports = target_ports(&service);
    assert_eq!(
        ports.len(),
        1,
        "only the opted-in service is exposed: {ports:?}"
    );
    assert_eq!(
        ports[0].1, host_port as i32,
        "targetPort is the published host port"
    );
    let spec = service.spec.clone().expect("spec");
    assert_eq!(
        spec.selector
            .expect("selector")
            .get("statefulset.kubernetes.io/pod-name")
            .map(String::as_str),
        Some("runner-0")
    );
    for meta in [&service.metadata, &ingress.metadata] {
        let labels = meta.labels.clone().expect("labels");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "compose-ingress");
        assert_eq!(labels["compose-ingress/pod"], "runner-0");
        assert_eq!(labels["compose-ingress/project"], "demochat");
        let owners = meta.owner_references.clone().expect("ownerReferences");
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (
                owners[0].kind.as_str(),
                owners[0].name.as_str(),
                owners[0].uid.as_str()
            ),
            ("Pod", "runner-0", pod.uid.as_str())
        );
    }
    let ispec = ingress.spec.clone().expect("ingress spec");
    assert_eq!(ispec.ingress_class_name.as_deref(), Some("traefik"));
    let path = ispec.rules.expect("rules")[0]
        .http
        .clone()
        .expect("http")
        .paths[0]
        .clone();
    assert_eq!(path.path_type, "Prefix");
    assert_eq!(path.path.as_deref(), Some("/"));
    let backend_port = path
        .backend
        .service
        .expect("service backend")
        .port
        .expect("port");
    assert_eq!(
        backend_port.name.as_deref(),
        Some(ports[0].0.as_str()),
        "Ingress points at the Service port by name"
    );
    assert_eq!(
        through_ingress(&expected_host).await.trim(),
        "demochat-web-page"
    );
}

async fn gateway_mode_creates_an_httproute_that_routes(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("gateway").await;
    let gateway = format!(
        "{}/{}",
        bed().get("GATEWAY_NAMESPACE"),
        bed().get("GATEWAY_NAME")
    );
    let _sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &["--route-api", "gateway", "--gateway", &gateway],
    )
    .await;
    pod.compose_as(
        compose,
        "gwdemo",
        &compose_file(&[web("web", "gateway-page", 8080, "8080", &[ENABLE])]),
        &["up", "-d"],
    );
    let host = host_of(&ns, "web", 8080, "gwdemo", "runner-0");
    assert_eq!(through_ingress(&host).await.trim(), "gateway-page");
    let routes = bed().kubectl(&[
        "-n",
        &ns,
        "get",
        "httproutes",
        "-l",
        "compose-ingress/project=gwdemo",
        "-o",
        "json",
    ]);
    let routes: serde_json::Value =
        serde_json::from_slice(&routes.stdout).expect("httproutes json");
    let items = routes["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["spec"]["hostnames"], serde_json::json!([host]));
    assert_eq!(
        items[0]["metadata"]["ownerReferences"][0]["uid"],
        serde_json::json!(pod.uid)
    );
    assert!(
        ingresses_of(&admin, &ns, "runner-0", "gwdemo")
            .await
            .is_empty(),
        "no Ingress in gateway mode"
    );
}

async fn nothing_is_created_for_services_that_do_not_qualify(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("negatives").await;
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--resync-interval", "2s"]).await;
    // Not opted in; opted in without a published port; opted in with UDP only; a one-off run.
    pod.compose_as(
        compose,
        "notoptedin",
        &compose_file(&[web("web", "x", 80, "80", &[])]),
        &["up", "-d"],
    );
    pod.compose_as(
        compose,
        "noports",
        &compose_file(&[web("web", "x", 80, "", &[ENABLE])]),
        &["up", "-d"],
    );
    pod.compose_as(
        compose,
        "udponly",
        &compose_file(&[web("web", "x", 80, "5353/udp", &[ENABLE])]),
        &["up", "-d"],
    );
    pod.compose_as(
        compose,
        "oneoff",
        &compose_file(&[web("web", "x", 80, "80", &[ENABLE])]),
        &["run", "-d", "--service-ports", "web"],
    );
    // A control composition that does qualify, started last: once it is exposed, the hints of
    // the others (earlier events) have been reconciled too.
    pod.compose_as(
        compose,
        "control",
        &compose_file(&[web("web", "control", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    wait_exposed(&admin, &ns, "runner-0", "control").await;
    // And a full resync after it has reconciled every composition of the pod from Docker.
    let resyncs = sidecar.log_lines("full resync done").len();
    sidecar.wait_resyncs(resyncs + 1).await;
    let all: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let names: Vec<String> = all
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert_eq!(
        names.len(),
        1,
        "only the control composition has a Service: {names:?}"
    );
    for project in ["notoptedin", "noports", "udponly", "oneoff"] {
        assert!(
            services_of(&admin, &ns, "runner-0", project)
                .await
                .is_empty(),
            "{project} must not be exposed"
        );
        assert!(
            ingresses_of(&admin, &ns, "runner-0", project)
                .await
                .is_empty(),
            "{project} must not be exposed"
        );
    }
}

async fn compose_down_deletes_after_the_grace_and_a_restart_within_it_keeps_the_objects(
    compose: ComposeVersion,
) {
    let (ns, pod, admin) = setup("lifecycle").await;
    // A grace far above what a recreate, a restart or a `down` can take on a loaded machine, so
    // that "within the grace" holds whatever the machine's speed; a short resync interval, so
    // that "the sidecar has looked since" is an observable event (a logged full resync).
    let sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &["--delete-grace", "30s", "--resync-interval", "2s"],
    )
    .await;
    let file = compose_file(&[web("web", "v1", 80, "18081:80", &[ENABLE])]);
    pod.compose_as(compose, "life", &file, &["up", "-d"]);
    let (service, ingress) = wait_exposed(&admin, &ns, "runner-0", "life").await;
    assert_eq!(target_ports(&service)[0].1, 18081);

    // A recreate with another host port (stop + new container), inside the grace: the objects
    // stay (same uids) and targetPort follows the new host port.
    pod.compose_as(
        compose,
        "life",
        &compose_file(&[web("web", "v2", 80, "18082:80", &[ENABLE])]),
        &["up", "-d"],
    );
    let moved = eventually("targetPort follows the new host port", CONVERGE, || async {
        let s = services_of(&admin, &ns, "runner-0", "life").await;
        s.first().filter(|s| target_ports(s)[0].1 == 18082).cloned()
    })
    .await;
    assert_eq!(
        moved.metadata.uid, service.metadata.uid,
        "the Service was not deleted and re-created"
    );
    let (_, ingress_after) = wait_exposed(&admin, &ns, "runner-0", "life").await;
    assert_eq!(
        ingress_after.metadata.uid, ingress.metadata.uid,
        "the Ingress was not deleted and re-created"
    );
    assert_eq!(
        ingress_after.metadata.resource_version, ingress.metadata.resource_version,
        "a host port change must not rewrite the Ingress"
    );

    // docker restart inside the grace: still the same objects, targetPort = current host port.
    let out = pod.docker_cli(&["restart", &compose.container_name("life", "web", 1)]);
    assert!(
        out.status.success(),
        "docker restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resyncs = sidecar.log_lines("full resync done").len();
    sidecar.wait_resyncs(resyncs + 1).await;
    let (s2, i2) = wait_exposed(&admin, &ns, "runner-0", "life").await;
    assert_eq!(s2.metadata.uid, service.metadata.uid);
    assert_eq!(i2.metadata.uid, ingress.metadata.uid);
    assert_eq!(
        target_ports(&s2)[0].1,
        pod.published_port_as(compose, "life", "web", 80) as i32
    );

    // down: the objects survive the grace, then go.
    pod.compose_as(compose, "life", &file, &["down"]);
    eventually("life pending deletion in /exposures", CONVERGE, || async {
        sidecar
            .exposures()
            .get("compositions")
            .and_then(|c| c.as_array())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["name"] == "life" && c["state"] == "pending-deletion")
            })
            .then_some(())
    })
    .await;
    let still = services_of(&admin, &ns, "runner-0", "life").await;
    assert_eq!(still.len(), 1, "objects are kept during the delete grace");
    wait_gone(&admin, &ns, "runner-0", "life").await;
    let leases = bed().kubectl(&[
        "-n",
        &ns,
        "get",
        "leases",
        "-l",
        "compose-ingress/project=life",
        "-o",
        "name",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&leases.stdout).trim(),
        "",
        "host leases are released too"
    );
}

async fn scaled_service_exposes_its_first_replica(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("scaled").await;
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    pod.compose_as(
        compose,
        "scaled",
        &compose_file(&[web("web", "replica", 80, "80", &[ENABLE])]),
        &["up", "-d", "--scale", "web=3"],
    );
    let (_, ingress) = wait_exposed(&admin, &ns, "runner-0", "scaled").await;
    assert_eq!(
        ingress_hosts(&ingress),
        vec![host_of(&ns, "web", 80, "scaled", "runner-0")]
    );
    let first = pod.docker_cli(&[
        "port",
        &compose.container_name("scaled", "web", 1),
        "80/tcp",
    ]);
    let first_port: i32 = String::from_utf8_lossy(&first.stdout)
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .expect("port of replica 1");
    // Replicas start in any order (v2 starts them concurrently): the Service converges to
    // replica number 1 once it runs, and keeps exactly one port.
    let ports = eventually("the Service targets replica number 1", CONVERGE, || async {
        let s = services_of(&admin, &ns, "runner-0", "scaled").await;
        s.first()
            .map(target_ports)
            .filter(|p| p.iter().any(|(_, target)| *target == first_port))
    })
    .await;
    assert_eq!(ports.len(), 1, "one port for the scaled service: {ports:?}");
}

/// Compose v2 creates every container of `up` and then starts them; services that start a
/// while apart must not cost one write each. And a service that never starts must not hold the
/// others back for longer than `--settle-time`.
///
/// Machine speed is not an input: the first half runs with a settle time far above any start
/// this bed can take (Compose v1 under a loaded CI machine needed ~5 s per `start`), and starts
/// api only once the sidecar has said it is waiting for it, so order, not the clock, decides.
/// The second half uses a short settle time and a service that never starts.
async fn services_started_in_steps_are_exposed_in_one_write(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("settle").await;
    let kubeconfig = sidecar_kubeconfig(bed(), &pod).await;
    let patient = Sidecar::start_with_kubeconfig(
        &SIDECAR,
        &pod,
        &kubeconfig,
        &["--settle-time", "10m"],
        "patient",
    );
    let file = compose_file(&[
        web("web", "web-page", 80, "80", &[ENABLE]),
        web("api", "api-page", 81, "81", &[ENABLE]),
    ]);
    pod.compose_as(compose, "steps", &file, &["up", "--no-start"]);
    pod.compose_as(compose, "steps", &file, &["start", "web"]);
    // The sidecar has seen web running and api created, not started: it waits and writes nothing.
    patient.wait_waiting_for("steps").await;
    assert!(
        ingresses_of(&admin, &ns, "runner-0", "steps")
            .await
            .is_empty(),
        "nothing is written while a started service waits for its created siblings"
    );
    pod.compose_as(compose, "steps", &file, &["start", "api"]);
    let ingress = eventually("the Ingress of steps with both hosts", CONVERGE, || async {
        ingresses_of(&admin, &ns, "runner-0", "steps")
            .await
            .into_iter()
            .find(|i| ingress_hosts(i).len() == 2)
    })
    .await;
    assert_eq!(
        ingress.metadata.generation,
        Some(1),
        "the Ingress spec was written once, not once per service that started"
    );
    drop(patient);

    // A service that never starts: web is exposed alone once the (short) settle time is over.
    let impatient = Sidecar::start_with_kubeconfig(
        &SIDECAR,
        &pod,
        &kubeconfig,
        &["--settle-time", "2s"],
        "impatient",
    );
    pod.compose_as(compose, "partial", &file, &["up", "--no-start"]);
    pod.compose_as(compose, "partial", &file, &["start", "web"]);
    let (_, ingress) = wait_exposed(&admin, &ns, "runner-0", "partial").await;
    let web_host = host_of(&ns, "web", 80, "partial", "runner-0");
    assert_eq!(ingress_hosts(&ingress), vec![web_host.clone()]);
    assert_eq!(through_ingress(&web_host).await.trim(), "web-page");
    assert!(
        impatient.waited_for("partial"),
        "web was held back for api before it was exposed alone (log: {})",
        impatient.log.display()
    );
}

async fn compositions_running_before_the_sidecar_are_exposed_at_start(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("prestart").await;
    pod.compose_as(
        compose,
        "early",
        &compose_file(&[web("web", "early-bird", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    let (_, ingress) = wait_exposed(&admin, &ns, "runner-0", "early").await;
    assert_eq!(
        through_ingress(&ingress_hosts(&ingress)[0]).await.trim(),
        "early-bird"
    );
}

async fn orphans_of_a_killed_sidecar_are_deleted_by_the_next_start(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("orphans").await;
    let mut sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    pod.compose_as(
        compose,
        "gone",
        &compose_file(&[web("web", "gone", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    pod.compose_as(
        compose,
        "stays",
        &compose_file(&[web("web", "stays", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    wait_exposed(&admin, &ns, "runner-0", "gone").await;
    let (stays_svc, _) = wait_exposed(&admin, &ns, "runner-0", "stays").await;
    sidecar.kill9();
    pod.compose_as(
        compose,
        "gone",
        &compose_file(&[web("web", "gone", 80, "80", &[ENABLE])]),
        &["down"],
    );
    assert_eq!(
        services_of(&admin, &ns, "runner-0", "gone").await.len(),
        1,
        "SIGKILL leaves the objects behind"
    );
    let restarted = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    wait_gone(&admin, &ns, "runner-0", "gone").await;
    let (after, _) = wait_exposed(&admin, &ns, "runner-0", "stays").await;
    assert_eq!(
        after.metadata.resource_version, stays_svc.metadata.resource_version,
        "an unchanged composition is not rewritten at restart"
    );
    drop(restarted);
}

async fn dockerd_restart_under_a_running_sidecar_converges(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("dockerd").await;
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    pod.compose_as(
        compose,
        "before",
        &compose_file(&[web("web", "before", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    wait_exposed(&admin, &ns, "runner-0", "before").await;
    let pod_sh = testbed::repo_root().join("tests/testbed/pod.sh");
    let stop = std::process::Command::new(&pod_sh)
        .arg("dockerd-stop")
        .arg(&pod.dir)
        .output()
        .expect("stop dockerd");
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    sidecar.wait_log("Docker event stream").await;
    let start = std::process::Command::new(&pod_sh)
        .arg("dockerd-start")
        .arg(&pod.dir)
        .output()
        .expect("start dockerd");
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    // Without a restart policy the containers of "before" are stopped after the daemon's
    // restart: the sidecar must notice on its resync and unexpose them.
    wait_gone(&admin, &ns, "runner-0", "before").await;
    pod.compose_as(
        compose,
        "after",
        &compose_file(&[web("web", "after", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    let (_, ingress) = wait_exposed(&admin, &ns, "runner-0", "after").await;
    assert_eq!(
        through_ingress(&ingress_hosts(&ingress)[0]).await.trim(),
        "after"
    );
    assert!(
        !sidecar.log_lines("reconnected to Docker").is_empty(),
        "the sidecar logs its reconnect"
    );
}

async fn deleting_the_runner_pod_garbage_collects_the_sidecar_objects(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("podgc").await;
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--cleanup-on-exit", "never"]).await;
    pod.compose_as(
        compose,
        "gc",
        &compose_file(&[web("web", "gc", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    wait_exposed(&admin, &ns, "runner-0", "gc").await;
    pod.force_delete(&admin).await;
    wait_gone(&admin, &ns, "runner-0", "gc").await;
}

async fn sigterm_case(
    compose: ComposeVersion,
    test: &str,
    extra: &[&str],
    delete_pod_first: bool,
) -> (kube::Client, String, i32, bool) {
    let (ns, pod, admin) = setup(test).await;
    let mut sidecar = Sidecar::start(&SIDECAR, bed(), &pod, extra).await;
    pod.compose_as(
        compose,
        "term",
        &compose_file(&[web("web", "term", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    wait_exposed(&admin, &ns, "runner-0", "term").await;
    if delete_pod_first {
        // Graceful delete: without a kubelet the pod stays Terminating, as a real pod does
        // while its containers get SIGTERM.
        let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
        pods.delete("runner-0", &DeleteParams::default())
            .await
            .expect("delete pod");
        let p = pods
            .get("runner-0")
            .await
            .expect("pod still there while terminating");
        assert!(p.metadata.deletion_timestamp.is_some());
    }
    sidecar.signal("TERM");
    let status = sidecar.wait_exit(CONVERGE);
    let remaining = !services_of(&admin, &ns, "runner-0", "term")
        .await
        .is_empty();
    (admin, ns, status.code().unwrap_or(-1), remaining)
}

async fn sigterm_of_a_terminating_pod_deletes_its_objects_and_exits_zero(compose: ComposeVersion) {
    let (admin, ns, code, remaining) = sigterm_case(compose, "sigterm-pod", &[], true).await;
    assert_eq!(code, 0);
    assert!(
        !remaining,
        "objects deleted on SIGTERM when the pod is terminating"
    );
    assert!(
        ingresses_of(&admin, &ns, "runner-0", "term")
            .await
            .is_empty()
    );
}

async fn sigterm_of_the_sidecar_alone_keeps_the_objects_and_exits_zero(compose: ComposeVersion) {
    let (_, _, code, remaining) = sigterm_case(compose, "sigterm-restart", &[], false).await;
    assert_eq!(code, 0);
    assert!(remaining, "a sidecar restart must not take the routes down");
}

async fn sigterm_with_cleanup_always_deletes_the_objects(compose: ComposeVersion) {
    let (_, _, code, remaining) = sigterm_case(
        compose,
        "sigterm-always",
        &["--cleanup-on-exit", "always"],
        false,
    )
    .await;
    assert_eq!(code, 0);
    assert!(!remaining);
}

async fn bad_labels_are_refused_one_warning_each_and_others_still_expose(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("badlabels").await;
    let sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &[
            "--max-rps",
            "50",
            "--default-rps",
            "20",
            "--resync-interval",
            "2s",
        ],
    )
    .await;
    let huge = "a".repeat(64 * 1024);
    let long_name = "x".repeat(70);
    let cases: Vec<(&str, &str, String, &str)> = vec![
        // (service, label, value, expected reason)
        (
            "badchars",
            "compose-ingress.host",
            "my_host!".into(),
            "invalid-host",
        ),
        (
            "outside",
            "compose-ingress.host",
            "evil.attacker.example.org".into(),
            "host-outside-domain",
        ),
        (
            "rpshigh",
            "compose-ingress.rate-limit.rps",
            "5000".into(),
            "rate-limit-above-max",
        ),
        (
            "rpsnan",
            "compose-ingress.rate-limit.rps",
            "fast".into(),
            "invalid-rate-limit",
        ),
        (
            "badclass",
            "compose-ingress.class",
            "vip".into(),
            "class-not-allowed",
        ),
        (
            "notpub",
            "compose-ingress.ports",
            "9999".into(),
            "port-not-published",
        ),
        ("huge", "compose-ingress.path", huge, "value-too-long"),
        (
            "junk",
            "compose-ingress.host",
            "\u{1b}[31mÿ\u{202e}".into(),
            "invalid-host",
        ),
        (
            "longhost",
            "compose-ingress.host",
            long_name,
            "invalid-host",
        ),
    ];
    let mut services = vec![web("good", "good-page", 80, "80", &[ENABLE])];
    for (svc, label, value, _) in &cases {
        services.push(web(svc, svc, 80, "80", &[ENABLE, (label, value.as_str())]));
    }
    // Two services claiming the same host: the first (by name) keeps it.
    // Hosts are unique per test namespace: Traefik serves every namespace, including the
    // namespaces that failed runs keep for inspection.
    let shared = format!("shared-{ns}");
    services.push(web(
        "claima",
        "claim-a",
        80,
        "80",
        &[ENABLE, ("compose-ingress.host", shared.as_str())],
    ));
    services.push(web(
        "claimb",
        "claim-b",
        80,
        "80",
        &[ENABLE, ("compose-ingress.host", shared.as_str())],
    ));
    let yaml = compose_file(&services);
    pod.compose_as(compose, "bad", &yaml, &["up", "-d"]);
    let (_, ingress) = eventually("good and claima exposed", CONVERGE, || async {
        let i = ingresses_of(&admin, &ns, "runner-0", "bad").await;
        let s = services_of(&admin, &ns, "runner-0", "bad").await;
        (i.len() == 1 && ingress_hosts(&i[0]).len() == 2).then(|| (s[0].clone(), i[0].clone()))
    })
    .await;
    let mut hosts = ingress_hosts(&ingress);
    hosts.sort();
    assert_eq!(
        hosts,
        vec![
            host_of(&ns, "good", 80, "bad", "runner-0"),
            format!("{shared}.{}", domain(&ns))
        ]
    );
    assert_eq!(
        through_ingress(&format!("{shared}.{}", domain(&ns)))
            .await
            .trim(),
        "claim-a"
    );
    // A further event and a resync must not repeat the warnings.
    // (Two full resyncs after the restart: each re-plans every service from Docker.)
    pod.compose_as(compose, "bad", &yaml, &["restart", "good"]);
    let resyncs = sidecar.log_lines("full resync done").len();
    sidecar.wait_resyncs(resyncs + 2).await;
    let refusals = sidecar.log_lines("label refused");
    for (svc, label, _, reason) in &cases {
        let matching: Vec<_> = refusals.iter().filter(|l| l["service"] == *svc).collect();
        assert_eq!(
            matching.len(),
            1,
            "exactly one warning for service {svc}: {matching:?}"
        );
        assert_eq!(matching[0]["label"], *label, "warning names the label");
        assert_eq!(
            matching[0]["reason"], *reason,
            "service {svc}: {:?}",
            matching[0]
        );
        assert_eq!(matching[0]["level"], "WARN");
        assert!(
            matching[0]["value"]
                .as_str()
                .is_some_and(|v| v.chars().count() <= 80),
            "the value shown is shortened"
        );
    }
    let claim: Vec<_> = refusals
        .iter()
        .filter(|l| l["service"] == "claimb")
        .collect();
    assert_eq!(
        claim.len(),
        1,
        "one warning for the second claim of a host: {claim:?}"
    );
    // /exposures shows the composition exposed, with every refused service and its reason.
    let exposures = sidecar.exposures();
    let bad = exposures["compositions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "bad"))
        .unwrap_or_else(|| panic!("composition bad in /exposures: {exposures}"));
    assert_eq!(bad["state"], "exposed");
    let refused: BTreeSet<(String, String)> = bad["refused"]
        .as_array()
        .unwrap_or_else(|| panic!("a refused list: {bad}"))
        .iter()
        .map(|r| {
            (
                r["service"].as_str().unwrap_or_default().to_string(),
                r["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut expected: BTreeSet<(String, String)> = cases
        .iter()
        .map(|(svc, _, _, reason)| (svc.to_string(), reason.to_string()))
        .collect();
    expected.insert((
        "claimb".to_string(),
        "host-taken-in-composition".to_string(),
    ));
    assert_eq!(refused, expected, "/exposures lists what was refused");
}

async fn two_pods_racing_for_one_host_exactly_one_wins_without_flapping(compose: ComposeVersion) {
    let bed = bed();
    let ns = unique_namespace("race");
    let a = bed.runner_pod(&ns, "runner-0");
    let b = bed.runner_pod(&ns, "runner-1");
    let admin = bed.admin().await;
    let contested = format!("contested-{ns}");
    let labels = [ENABLE, ("compose-ingress.host", contested.as_str())];
    a.compose_as(
        compose,
        "proj",
        &compose_file(&[web("web", "from-a", 80, "80", &labels)]),
        &["up", "-d"],
    );
    b.compose_as(
        compose,
        "proj",
        &compose_file(&[web("web", "from-b", 80, "80", &labels)]),
        &["up", "-d"],
    );
    let fast = ["--resync-interval", "1s"];
    let (sa, sb) = tokio::join!(
        Sidecar::start(&SIDECAR, bed, &a, &fast),
        Sidecar::start(&SIDECAR, bed, &b, &fast)
    );
    let host = format!("{contested}.{}", domain(&ns));
    let winner = eventually("one pod wins the host", CONVERGE, || async {
        let ia = ingresses_of(&admin, &ns, "runner-0", "proj").await;
        let ib = ingresses_of(&admin, &ns, "runner-1", "proj").await;
        let refused =
            !sa.log_lines("host refused").is_empty() || !sb.log_lines("host refused").is_empty();
        match (ia.len(), ib.len(), refused) {
            (1, 0, true) => Some(("runner-0", ia[0].clone())),
            (0, 1, true) => Some(("runner-1", ib[0].clone())),
            _ => None,
        }
    })
    .await;
    assert_eq!(ingress_hosts(&winner.1), vec![host.clone()]);
    let expected_page = if winner.0 == "runner-0" {
        "from-a"
    } else {
        "from-b"
    };
    assert_eq!(through_ingress(&host).await.trim(), expected_page);
    let loser = if winner.0 == "runner-0" { &sb } else { &sa };
    let line = loser.wait_log("host refused").await;
    assert_eq!(
        line["holder_pod"], winner.0,
        "the refusal names the pod that holds the host"
    );
    assert!(
        loser.metrics().value(
            "compose_ingress_api_requests_total",
            &[
                ("verb", "create"),
                ("kind", "Lease"),
                ("result", "conflict")
            ]
        ) >= 1.0,
        "the lost claim is counted as a conflict"
    );
    // Nothing flaps: both sidecars re-check everything every second; after several passes the
    // winner's Ingress is the same object, never rewritten, and the loser has none.
    let (ra, rb) = (
        sa.log_lines("full resync done").len(),
        sb.log_lines("full resync done").len(),
    );
    sa.wait_resyncs(ra + 3).await;
    sb.wait_resyncs(rb + 3).await;
    let now = ingresses_of(&admin, &ns, winner.0, "proj").await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].metadata.uid, winner.1.metadata.uid);
    assert_eq!(
        now[0].metadata.resource_version,
        winner.1.metadata.resource_version
    );
    let loser_pod = if winner.0 == "runner-0" {
        "runner-1"
    } else {
        "runner-0"
    };
    assert!(
        ingresses_of(&admin, &ns, loser_pod, "proj")
            .await
            .is_empty()
    );
    assert_eq!(
        loser.log_lines("host refused").len(),
        1,
        "the refusal is logged once, not on every pass"
    );
}

async fn objects_that_are_not_this_pods_are_never_touched(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("foreign").await;
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let svc = |name: &str, labels: serde_json::Value| -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"ports": [{"port": 80}]}
        }))
        .expect("service")
    };
    let object_name = compose_ingress::naming::object_name("runner-0", "taken");
    let pp = PostParams::default();
    // Same name the sidecar would use for composition "taken", no labels.
    services
        .create(&pp, &svc(&object_name, serde_json::json!({})))
        .await
        .expect("create");
    // Another pod's object, and one of "ours" by name pattern but without labels.
    services
        .create(&pp, &svc("other-pods", serde_json::json!({"app.kubernetes.io/managed-by": "compose-ingress", "compose-ingress/pod": "runner-9", "compose-ingress/project": "x"})))
        .await
        .expect("create");
    services
        .create(
            &pp,
            &svc("ci-lookalike-runner-0-1234abcd", serde_json::json!({})),
        )
        .await
        .expect("create");
    let before: Vec<(String, String)> = services
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap_or_default(),
                s.metadata.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect();

    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--resync-interval", "2s"]).await;
    pod.compose_as(
        compose,
        "taken",
        &compose_file(&[web("web", "taken", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    pod.compose_as(
        compose,
        "fine",
        &compose_file(&[web("web", "fine", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    wait_exposed(&admin, &ns, "runner-0", "fine").await;
    sidecar.wait_resyncs(3).await;
    let line = sidecar.wait_log("reconcile failed").await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("not owned by compose-ingress")),
        "{line}"
    );
    for (name, rv) in before {
        let now = services
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("{name} must still exist: {e}"));
        assert_eq!(
            now.metadata.resource_version.as_deref(),
            Some(rv.as_str()),
            "{name} must not be modified"
        );
    }
    assert!(
        ingresses_of(&admin, &ns, "runner-0", "taken")
            .await
            .is_empty(),
        "no route to a Service that is not ours"
    );
}

async fn dry_run_prints_the_objects_and_writes_nothing(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("dryrun").await;
    pod.compose_as(
        compose,
        "dry",
        &compose_file(&[web("web", "dry", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--dry-run"]).await;
    let stdout = eventually("dry-run YAML on stdout", CONVERGE, || async {
        let out = std::fs::read_to_string(&sidecar.stdout).unwrap_or_default();
        (out.contains("kind: Ingress") && out.contains("kind: Service")).then_some(out)
    })
    .await;
    assert!(
        stdout.contains(&format!(
            "host: {}",
            host_of(&ns, "web", 80, "dry", "runner-0")
        )),
        "{stdout}"
    );
    sidecar.wait_resyncs(1).await;
    assert!(
        services_of(&admin, &ns, "runner-0", "dry").await.is_empty(),
        "dry run created a Service"
    );
    assert!(
        ingresses_of(&admin, &ns, "runner-0", "dry")
            .await
            .is_empty(),
        "dry run created an Ingress"
    );
    let leases = bed().kubectl(&["-n", &ns, "get", "leases", "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&leases.stdout).trim(),
        "",
        "dry run created a Lease"
    );
}

async fn server_dry_run_validates_with_the_apiserver_and_writes_nothing(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("dryrunsrv").await;
    pod.compose_as(
        compose,
        "dry",
        &compose_file(&[web("web", "dry", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--dry-run=server"]).await;
    eventually("server dry-run YAML on stdout", CONVERGE, || async {
        let out = std::fs::read_to_string(&sidecar.stdout).unwrap_or_default();
        out.contains("kind: Ingress").then_some(())
    })
    .await;
    sidecar.wait_resyncs(1).await;
    assert!(
        sidecar.log_lines("reconcile failed").is_empty(),
        "the apiserver accepted the objects: {}",
        sidecar.logs()
    );
    assert!(services_of(&admin, &ns, "runner-0", "dry").await.is_empty());
    assert!(
        ingresses_of(&admin, &ns, "runner-0", "dry")
            .await
            .is_empty()
    );
}

#[test]
fn bad_flags_fail_at_start_with_one_line_and_exit_code_2() {
    for (args, flag) in [
        (vec!["--domain", "nodots"], "--domain"),
        (
            vec![
                "--domain",
                "composition.example.com",
                "--host-template",
                "{service}.{pod}",
            ],
            "--host-template",
        ),
        (
            vec![
                "--domain",
                "composition.example.com",
                "--route-api",
                "gateway",
            ],
            "--gateway",
        ),
        (
            vec![
                "--domain",
                "composition.example.com",
                "--delete-grace",
                "soon",
            ],
            "--delete-grace",
        ),
        (
            vec![
                "--domain",
                "composition.example.com",
                "--route-api",
                "carrier-pigeon",
            ],
            "--route-api",
        ),
    ] {
        // An unreachable apiserver: a bad flag must fail before any API call is attempted.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_compose-ingress"))
            .env_clear()
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env("POD_NAME", "runner-0")
            .env("POD_NAMESPACE", "ci")
            .args(&args)
            .output()
            .expect("run compose-ingress");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        // What an operator sees in the container log: the whole of stderr is one line.
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr:?}");
        assert!(
            lines[0].starts_with("compose-ingress: invalid configuration: "),
            "{args:?}: the line says what failed: {stderr:?}"
        );
        assert!(
            lines[0].contains(flag),
            "{args:?}: the line names {flag}: {stderr:?}"
        );
        assert!(
            !stderr.contains("kubeconfig"),
            "{args:?}: no API client was built: {stderr:?}"
        );
    }
}

/// One test per Compose version (v1: Debian's docker-compose 1.29; v2: built from its Go
/// module), from one scenario body: `scenarios::<name>::v1` and `scenarios::<name>::v2`.
macro_rules! for_each_compose {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use testbed::ComposeVersion;
            #[tokio::test]
            async fn v1() {
                super::$name(ComposeVersion::V1).await
            }
            #[tokio::test]
            async fn v2() {
                super::$name(ComposeVersion::V2).await
            }
        }
    )*};
}

for_each_compose!(
    opted_in_service_gets_service_and_ingress_and_is_routable,
    gateway_mode_creates_an_httproute_that_routes,
    nothing_is_created_for_services_that_do_not_qualify,
    compose_down_deletes_after_the_grace_and_a_restart_within_it_keeps_the_objects,
    scaled_service_exposes_its_first_replica,
    services_started_in_steps_are_exposed_in_one_write,
    compositions_running_before_the_sidecar_are_exposed_at_start,
    orphans_of_a_killed_sidecar_are_deleted_by_the_next_start,
    dockerd_restart_under_a_running_sidecar_converges,
    deleting_the_runner_pod_garbage_collects_the_sidecar_objects,
    sigterm_of_a_terminating_pod_deletes_its_objects_and_exits_zero,
    sigterm_of_the_sidecar_alone_keeps_the_objects_and_exits_zero,
    sigterm_with_cleanup_always_deletes_the_objects,
    bad_labels_are_refused_one_warning_each_and_others_still_expose,
    two_pods_racing_for_one_host_exactly_one_wins_without_flapping,
    objects_that_are_not_this_pods_are_never_touched,
    dry_run_prints_the_objects_and_writes_nothing,
    server_dry_run_validates_with_the_apiserver_and_writes_nothing,
);

#[tokio::test]
async fn plain_containers_are_exposed_only_with_the_flag() {
    let (ns, pod, admin) = setup("plain").await;
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--expose-plain-containers"]).await;
    for (name, enabled) in [("plainweb", "true"), ("plainoff", "false")] {
        let out = pod.docker_cli(&[
            "run",
            "-d",
            "--name",
            name,
            "-p",
            "80",
            "--label",
            &format!("compose-ingress.enable={enabled}"),
            "compose-ingress-test/busybox:1",
            "sh",
            "-c",
            "echo plain-page > /www/index.html && exec httpd -f -p 80 -h /www",
        ]);
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let host = host_of(&ns, "plainweb", 80, "plainweb", "runner-0");
    assert_eq!(through_ingress(&host).await.trim(), "plain-page");
    let all: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let services = all.list(&ListParams::default()).await.expect("list").items;
    assert_eq!(
        services.len(),
        1,
        "only the opted-in plain container is exposed"
    );
    let annotations = services[0].metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("compose-ingress/project-name")
            .map(String::as_str),
        Some("/plainweb")
    );
    // Without the flag, a container without compose labels is never a project.
    let other = bed().runner_pod(&ns, "runner-1");
    let plain_off = Sidecar::start(&SIDECAR, bed(), &other, &["--resync-interval", "2s"]).await;
    let out = other.docker_cli(&[
        "run",
        "-d",
        "--name",
        "plainweb",
        "-p",
        "80",
        "--label",
        "compose-ingress.enable=true",
        "compose-ingress-test/busybox:1",
        "sh",
        "-c",
        "exec httpd -f -p 80 -h /www",
    ]);
    assert!(out.status.success());
    other.compose_as(
        ComposeVersion::V1,
        "control",
        &compose_file(&[web("web", "control", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    wait_exposed(&admin, &ns, "runner-1", "control").await;
    let resyncs = plain_off.log_lines("full resync done").len();
    plain_off.wait_resyncs(resyncs + 1).await;
    let of_runner_1 = all
        .list(&ListParams::default().labels("compose-ingress/pod=runner-1"))
        .await
        .expect("list")
        .items;
    assert_eq!(
        of_runner_1.len(),
        1,
        "runner-1 exposes only its compose project"
    );
}

#[tokio::test]
async fn kompose_labels_rate_limits_and_tls_shape_the_ingress() {
    let (ns, pod, admin) = setup("shape").await;
    let _sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &[
            "--default-rps",
            "20",
            "--max-rps",
            "50",
            "--tls-secret",
            "wildcard-cert",
            "--allowed-classes",
            "internal",
        ],
    )
    .await;
    let kompose_host = format!("kp-{ns}.{}", domain(&ns));
    let expose = format!("{kompose_host}/api");
    pod.compose_as(
        ComposeVersion::V1,
        "shape",
        &compose_file(&[
            web(
                "api",
                "api",
                8080,
                "8080",
                &[("kompose.service.expose", expose.as_str())],
            ),
            web(
                "web",
                "web",
                80,
                "80",
                &[ENABLE, ("compose-ingress.rate-limit.rps", "5")],
            ),
        ]),
        &["up", "-d"],
    );
    let (_, ingress) = eventually("both services exposed", CONVERGE, || async {
        let i = ingresses_of(&admin, &ns, "runner-0", "shape").await;
        let s = services_of(&admin, &ns, "runner-0", "shape").await;
        (i.len() == 1 && ingress_hosts(&i[0]).len() == 2).then(|| (s[0].clone(), i[0].clone()))
    })
    .await;
    let spec = ingress.spec.clone().expect("spec");
    let rules = spec.rules.clone().expect("rules");
    let api_rule = rules
        .iter()
        .find(|r| r.host.as_deref() == Some(kompose_host.as_str()))
        .expect("kompose host rule");
    let api_path = &api_rule.http.as_ref().expect("http").paths[0];
    assert_eq!(api_path.path.as_deref(), Some("/api"));
    assert_eq!(api_path.path_type, "Prefix");
    // The lowest of the operator's default (20) and the labels (5) wins; nothing else from
    // labels reaches the annotations.
    let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("nginx.ingress.kubernetes.io/limit-rps")
            .map(String::as_str),
        Some("5")
    );
    let foreign: Vec<&String> = annotations
        .keys()
        .filter(|k| {
            !k.starts_with("compose-ingress/")
                && !k.starts_with("nginx.ingress.kubernetes.io/limit-rps")
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "only allow-listed annotations: {foreign:?}"
    );
    let tls = spec.tls.expect("TLS block with the operator's secret");
    assert_eq!(tls.len(), 1);
    assert_eq!(tls[0].secret_name.as_deref(), Some("wildcard-cert"));
    let mut tls_hosts = tls[0].hosts.clone().unwrap_or_default();
    tls_hosts.sort();
    let mut hosts = ingress_hosts(&ingress);
    hosts.sort();
    assert_eq!(tls_hosts, hosts);
}
