//! SIGTERM: what the sidecar cleans up on the way out, depending on why it is stopped.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use testbed::{
    CONVERGE, ComposeVersion, ENABLE, Sidecar, bed, compose_file, ingresses_of, services_of,
    wait_exposed, web,
};

use super::setup;
use crate::SIDECAR;

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

pub(super) async fn sigterm_of_a_terminating_pod_deletes_its_objects_and_exits_zero(
    compose: ComposeVersion,
) {
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

pub(super) async fn sigterm_of_the_sidecar_alone_keeps_the_objects_and_exits_zero(
    compose: ComposeVersion,
) {
    let (_, _, code, remaining) = sigterm_case(compose, "sigterm-restart", &[], false).await;
    assert_eq!(code, 0);
    assert!(remaining, "a sidecar restart must not take the routes down");
}

pub(super) async fn sigterm_with_cleanup_always_deletes_the_objects(compose: ComposeVersion) {
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
