//! Scenarios that disturb the shared test bed itself (the apiserver goes away). The test
//! command runs them in a second, serial phase (`disruptive_` prefix) after everything else.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};

use testbed::{
    ComposeVersion, ENABLE, Sidecar, bed, compose_file, ingress_hosts, repo_root, services_of,
    through_ingress_within, unique_namespace, wait_exposed, wait_gone, web,
};

use crate::SIDECAR;

fn apiserver(action: &str) {
    let out = Command::new(repo_root().join("tests/testbed/apiserver.sh"))
        .arg(action)
        .output()
        .expect("run apiserver.sh");
    assert!(
        out.status.success(),
        "apiserver.sh {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Traefik's own Kubernetes informers take a while to see new objects after the apiserver comes
/// back (seen: over 60 s, "service not found" in its log meanwhile); that is Traefik's recovery,
/// not the sidecar's, so routing gets a longer deadline here.
const TRAEFIK_AFTER_OUTAGE: Duration = Duration::from_secs(240);

async fn apiserver_outage(compose: ComposeVersion) {
    let bed = bed();
    let ns = unique_namespace("outage");
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    let mut sidecar = Sidecar::start(&SIDECAR, bed, &pod, &[]).await;
    pod.compose_as(
        compose,
        "stay",
        &compose_file(&[web("web", "stay", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    pod.compose_as(
        compose,
        "leaving",
        &compose_file(&[web("web", "leaving", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    let (stay_svc, _) = wait_exposed(&admin, &ns, "runner-0", "stay").await;
    wait_exposed(&admin, &ns, "runner-0", "leaving").await;

    apiserver("stop");
    let outage = Instant::now();
    // Compositions come and go while the apiserver is away.
    pod.compose_as(
        compose,
        "arrive",
        &compose_file(&[web("web", "arrived", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    pod.compose_as(
        compose,
        "leaving",
        &compose_file(&[web("web", "leaving", 80, "80", &[ENABLE])]),
        &["down"],
    );
    while outage.elapsed() < Duration::from_secs(20) {
        assert!(
            sidecar.still_running(),
            "the sidecar must keep running without the apiserver; log:\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    apiserver("start");

    let (_, ingress) = wait_exposed(&admin, &ns, "runner-0", "arrive").await;
    assert_eq!(
        through_ingress_within(&ingress_hosts(&ingress)[0], TRAEFIK_AFTER_OUTAGE)
            .await
            .trim(),
        "arrived"
    );
    wait_gone(&admin, &ns, "runner-0", "leaving").await;
    let (stay_after, _) = wait_exposed(&admin, &ns, "runner-0", "stay").await;
    assert_eq!(
        stay_after.metadata.uid, stay_svc.metadata.uid,
        "the untouched composition kept its objects"
    );
    // No orphan: this pod's Services are exactly those of the live compositions.
    let all: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let mut projects: Vec<String> = all
        .list(&ListParams::default().labels("compose-ingress/pod=runner-0"))
        .await
        .expect("list")
        .items
        .iter()
        .filter_map(|s| {
            s.metadata
                .labels
                .as_ref()?
                .get("compose-ingress/project")
                .cloned()
        })
        .collect();
    projects.sort();
    assert_eq!(projects, vec!["arrive", "stay"]);
    assert!(
        services_of(&admin, &ns, "runner-0", "leaving")
            .await
            .is_empty()
    );
    assert!(
        !sidecar.log_lines("will retry").is_empty(),
        "the outage is visible in the log as retries"
    );
    assert!(sidecar.still_running());
    sidecar.signal("TERM");
    assert_eq!(sidecar.wait_exit(testbed::CONVERGE).code(), Some(0));
}

#[tokio::test]
async fn disruptive_apiserver_outage_of_20s_converges_with_nothing_lost_and_no_orphan_v1() {
    apiserver_outage(ComposeVersion::V1).await
}

#[tokio::test]
async fn disruptive_apiserver_outage_of_20s_converges_with_nothing_lost_and_no_orphan_v2() {
    apiserver_outage(ComposeVersion::V2).await
}
