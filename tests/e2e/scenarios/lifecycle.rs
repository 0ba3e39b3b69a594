//! Objects follow their compositions: deleted after the grace, kept across restarts of the
//! composition, the sidecar or dockerd, and garbage-collected with the runner pod.

use testbed::{
    CONVERGE, ComposeVersion, DockerEventsProxy, ENABLE, Sidecar, bed, compose_file, eventually,
    ingress_hosts, services_of, target_ports, through_ingress, wait_exposed, wait_gone, web,
};

use super::{setup, setup_on};
use crate::SIDECAR;
use crate::operability::Endpoints;

pub(super) async fn compose_down_deletes_after_the_grace_and_a_restart_within_it_keeps_the_objects(
    compose: ComposeVersion,
) {
    // Compose v1 cannot recreate a container on Docker >= 25 (`KeyError: 'ContainerConfig'`:
    // the engine no longer returns the field v1 copies), so v1 users are on older engines and
    // v1's recreate runs on the oldest one the bed has.
    let engine = match compose {
        ComposeVersion::V1 => "20.10".to_string(),
        ComposeVersion::V2 => testbed::engine(),
    };
    let (ns, pod, admin) = setup_on("lifecycle", &engine).await;
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
    let freed = pod.published_port_as(compose, "life", "web", 80);
    let host = super::host_of(&ns, "web", 80, "life", "runner-0");
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

    // The freed host port, taken by the next job's container within the grace: the URL must
    // not serve it. The endpoints are withdrawn as the grace starts, so the controller answers
    // with its own 404/503 (no endpoint) rather than 502 (an endpoint that refuses) before the
    // port is taken.
    let traefik = format!("{}/", bed().get("TRAEFIK_WEB"));
    eventually("the URL has no endpoint (404/503)", CONVERGE, || async {
        matches!(testbed::http_get(&traefik, Some(&host)).0, 404 | 503).then_some(())
    })
    .await;
    let out = pod.docker_cli(&[
        "run",
        "-d",
        "--name",
        "squatter",
        "-p",
        &format!("{freed}:80"),
        "compose-ingress-test/busybox:1",
        "sh",
        "-c",
        "mkdir -p /www && echo squatter > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the squatter answers on the freed port",
        CONVERGE,
        || async {
            let (code, body) = testbed::http_get(&format!("http://{}:{freed}/", pod.ip), None);
            (code == 200 && body.trim() == "squatter").then_some(())
        },
    )
    .await;
    for _ in 0..10 {
        let (code, body) = testbed::http_get(&traefik, Some(&host));
        assert_ne!(
            body.trim(),
            "squatter",
            "the grace served another container on the freed port ({code})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // All of that within the grace (after it the route is gone and nothing could be served).
    assert_eq!(
        services_of(&admin, &ns, "runner-0", "life").await.len(),
        1,
        "no 404/503 within the grace: the endpoints stayed on the freed port (or the grace is too short for this machine)"
    );
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

pub(super) async fn orphans_of_a_killed_sidecar_are_deleted_by_the_next_start(
    compose: ComposeVersion,
) {
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

pub(super) async fn dockerd_restart_under_a_running_sidecar_converges(compose: ComposeVersion) {
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

pub(super) async fn deleting_the_runner_pod_garbage_collects_the_sidecar_objects(
    compose: ComposeVersion,
) {
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

/// A composition whose `start` event never reaches the sidecar is exposed all the same: the
/// pass its `create` event made found the container created and not started, and looks again by
/// itself. The refresh bench once had a composition exposed only 120 s after its `up -d`, when
/// the next composition's events came (BENCHMARKS.md's findings); here a proxy in front of
/// dockerd holds the event stream back from just before the `start`, and the full resync is
/// far off. Seen failing (not exposed within CONVERGE) with the sidecar's re-check turned off.
pub(super) async fn a_start_event_that_never_reaches_the_sidecar_still_exposes_the_composition() {
    let (ns, pod, admin) = setup("late-start").await;
    let daemon = pod.docker_host.trim_start_matches("unix://").to_string();
    let proxy = DockerEventsProxy::start(
        std::path::Path::new(&daemon),
        pod.dir.join("events-proxy.sock"),
    );
    let sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &[
            "--docker-host",
            &proxy.docker_host(),
            "--resync-interval",
            "10m",
        ],
    )
    .await;
    sidecar.wait_log("full resync done").await;
    let file = compose_file(&[web("web", "v1", 80, "18081:80", &[ENABLE])]);
    pod.compose_as(ComposeVersion::V2, "late", &file, &["create"]);
    eventually(
        &format!(
            "a pass over the created composition (log: {})",
            sidecar.log.display()
        ),
        CONVERGE,
        || async {
            sidecar
                .log_lines("reconciled")
                .iter()
                .any(|l| l["span"]["composition"] == "late")
                .then_some(())
        },
    )
    .await;

    proxy.hold_events();
    pod.compose_as(ComposeVersion::V2, "late", &file, &["start"]);
    let (service, ingress) = wait_exposed(&admin, &ns, "runner-0", "late").await;
    assert_eq!(target_ports(&service)[0].1, 18081);
    let started_seen = sidecar
        .log_lines("docker event")
        .iter()
        .any(|l| l["project"] == "late" && l["action"] == "start");
    assert!(
        !started_seen,
        "the start event was held back from the sidecar (log: {})",
        sidecar.log.display()
    );
    assert_eq!(
        through_ingress(&ingress_hosts(&ingress)[0]).await.trim(),
        "v1"
    );
    proxy.release_events();
    sidecar.stop();
}
