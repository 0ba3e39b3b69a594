//! Hosts: a stopped service's host stays the composition's for the grace, project names that
//! sanitize alike get distinct hosts, and room under the pod's host cap is used at once.

use testbed::{
    CONVERGE, ENABLE, Sidecar, bed, compose_file, domain, eventually, ingress_hosts, ingresses_of,
    through_ingress, wait_exposed, wait_gone, web,
};

use super::{leased_hosts, setup, state_of};
use crate::SIDECAR;
use crate::operability::Endpoints;

/// One service of two stops: its route goes at once, but its host's Lease stays for the delete
/// grace (a pod waiting for that host does not take it while the service restarts), and goes
/// when the grace ends. Seen failing on the old code: the Lease was deleted in the pass that
/// removed the route.
#[tokio::test]
async fn a_stopped_service_keeps_its_host_s_lease_for_the_grace() {
    let (ns, pod, admin) = setup("lease-grace").await;
    let _sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &["--delete-grace", "20s", "--resync-interval", "10m"],
    )
    .await;
    let file = compose_file(&[
        web("web", "web", 80, "80", &[ENABLE]),
        web("api", "api", 81, "81", &[ENABLE]),
    ]);
    pod.compose("pair", &file, &["up", "-d"]);
    let web_host = format!("web-80-pair-runner-0.{}", domain(&ns));
    let api_host = format!("api-81-pair-runner-0.{}", domain(&ns));
    eventually("both hosts leased", CONVERGE, || async {
        (leased_hosts(&admin, &ns).await.len() == 2).then_some(())
    })
    .await;
    pod.compose("pair", &file, &["stop", "api"]);
    eventually("the api route gone", CONVERGE, || async {
        let routes = ingresses_of(&admin, &ns, "runner-0", "pair").await;
        routes
            .first()
            .filter(|i| ingress_hosts(i) == vec![web_host.clone()])
            .map(|_| ())
    })
    .await;
    let mut both = vec![api_host.clone(), web_host.clone()];
    both.sort();
    assert_eq!(
        leased_hosts(&admin, &ns).await,
        both,
        "the stopped service's host is still claimed"
    );
    eventually(
        "the api host's Lease gone after the grace",
        CONVERGE,
        || async { (leased_hosts(&admin, &ns).await == vec![web_host.clone()]).then_some(()) },
    )
    .await;
}

/// `my_app` and `my-app` sanitize to the same label: both compositions are exposed, at
/// distinct hosts, each answered by its own container. Seen failing on the old code: the
/// second was refused (`host-taken`, the first held the host's Lease).
#[tokio::test]
async fn projects_that_sanitize_alike_get_distinct_working_urls() {
    let (ns, pod, admin) = setup("fold").await;
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    pod.compose(
        "my-app",
        &compose_file(&[web("web", "dashed", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    let (_, dashed) = wait_exposed(&admin, &ns, "runner-0", "my-app").await;
    pod.compose(
        "my_app",
        &compose_file(&[web("web", "underscored", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    let (_, underscored) = wait_exposed(&admin, &ns, "runner-0", "my_app").await;
    let (a, b) = (ingress_hosts(&dashed), ingress_hosts(&underscored));
    assert_eq!(a, vec![format!("web-80-my-app-runner-0.{}", domain(&ns))]);
    assert_eq!(b.len(), 1);
    assert_ne!(a, b);
    assert!(through_ingress(&a[0]).await.contains("dashed"));
    assert!(through_ingress(&b[0]).await.contains("underscored"));
}

/// A composition refused for the pod's host cap is exposed as soon as the sidecar frees a
/// host (another composition's grace ends), not at the next full resync (10 minutes here).
/// Seen failing on the old code: still refused when the wait gave up.
#[tokio::test]
async fn a_composition_refused_for_the_host_cap_gets_the_room_the_pod_frees() {
    let (ns, pod, admin) = setup("cap-room").await;
    let sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &[
            "--max-hosts-per-pod",
            "1",
            "--delete-grace",
            "2s",
            "--resync-interval",
            "10m",
        ],
    )
    .await;
    let first = compose_file(&[web("web", "first", 80, "80", &[ENABLE])]);
    pod.compose("first", &first, &["up", "-d"]);
    wait_exposed(&admin, &ns, "runner-0", "first").await;
    pod.compose(
        "second",
        &compose_file(&[web("web", "second", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    let refused = eventually("second refused for the cap", CONVERGE, || async {
        state_of(&sidecar.exposures(), "second").filter(|c| c["state"] == "refused")
    })
    .await;
    assert_eq!(
        refused["reasons"][0]["reason"], "too-many-hosts",
        "{refused}"
    );
    pod.compose("first", &first, &["down"]);
    wait_gone(&admin, &ns, "runner-0", "first").await;
    let (_, ingress) = wait_exposed(&admin, &ns, "runner-0", "second").await;
    assert!(
        through_ingress(&ingress_hosts(&ingress)[0])
            .await
            .contains("second")
    );
    assert_eq!(
        sidecar.log_count("full resync done"),
        1,
        "exposed by the room freed, not by a resync"
    );
}
