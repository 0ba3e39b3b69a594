//! What gets exposed and when: a Service and an Ingress (or HTTPRoute) per opted-in
//! composition, routable through Traefik, nothing for what does not qualify.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use testbed::{
    CONVERGE, ComposeVersion, ENABLE, Sidecar, bed, compose_file, eventually, ingress_hosts,
    ingresses_of, services_of, sidecar_kubeconfig, target_ports, through_ingress, wait_exposed,
    web,
};

use super::{host_of, setup};
use crate::SIDECAR;

pub(super) async fn opted_in_service_gets_service_and_ingress_and_is_routable(
    compose: ComposeVersion,
) {
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
        spec.selector, None,
        "the sidecar writes the endpoints itself"
    );
    // Its one EndpointSlice: the pod's IP, the published host port under the Service port's
    // name, ready (the container has no healthcheck).
    let service_name = service.metadata.name.clone().expect("name");
    let slices = Api::<EndpointSlice>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service_name}")))
        .await
        .expect("list endpointslices")
        .items;
    assert_eq!(slices.len(), 1, "{slices:?}");
    let slice = &slices[0];
    let endpoints = slice.endpoints.clone().expect("endpoints");
    let view: Vec<(Vec<String>, Option<bool>)> = endpoints
        .iter()
        .map(|e| {
            (
                e.addresses.clone(),
                e.conditions.clone().and_then(|c| c.ready),
            )
        })
        .collect();
    assert_eq!(view, vec![(vec![pod.ip.clone()], Some(true))]);
    let slice_ports: Vec<(Option<String>, Option<i32>)> = slice
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone(), p.port))
        .collect();
    assert_eq!(
        slice_ports,
        vec![(Some(ports[0].0.clone()), Some(host_port as i32))]
    );
    for meta in [&service.metadata, &slice.metadata, &ingress.metadata] {
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

pub(super) async fn gateway_mode_creates_an_httproute_that_routes(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("gateway").await;
    let gateway = bed().gateway();
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

pub(super) async fn nothing_is_created_for_services_that_do_not_qualify(compose: ComposeVersion) {
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

/// docs/labels.md's "Scaled services": of the replicas of its `up --scale web=3`, the one
/// numbered 1 is exposed, on one Service port.
pub(super) async fn scaled_service_exposes_its_first_replica(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("scaled").await;
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    // docs/labels.md's command (with the test's -p and -f).
    let scale = testbed::doc_inline("docs/labels.md", "docker compose up -d --scale web=3");
    let args = testbed::compose_args(&scale);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pod.compose_as(
        compose,
        "scaled",
        &compose_file(&[web("web", "replica", 80, "80", &[ENABLE])]),
        &args,
    );
    let (_, ingress) = wait_exposed(&admin, &ns, "runner-0", "scaled").await;
    assert_eq!(
        ingress_hosts(&ingress),
        vec![host_of(&ns, "web", 80, "scaled", "runner-0")]
    );
    let running = pod.docker_cli(&[
        "ps",
        "-q",
        "--filter",
        "label=com.docker.compose.project=scaled",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&running.stdout).lines().count(),
        3,
        "`{scale}` runs three replicas"
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
pub(super) async fn services_started_in_steps_are_exposed_in_one_write(compose: ComposeVersion) {
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

pub(super) async fn compositions_running_before_the_sidecar_are_exposed_at_start(
    compose: ComposeVersion,
) {
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

pub(super) async fn plain_containers_are_exposed_only_with_the_flag() {
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
