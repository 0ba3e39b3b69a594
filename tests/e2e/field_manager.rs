//! One field manager per object (issue 14, item 4): what the desired state no longer has goes
//! from the live object, whether the object was created by this sidecar or by an older one
//! (whose create left its fields under a second, `Update` entry), and no object is recreated
//! for it (uids and hosts stay).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};
use testbed::{
    CONVERGE, ComposeVersion, ENABLE, Sidecar, bed, compose_file, eventually, unique_namespace,
    wait_exposed, web,
};

use crate::SIDECAR;

const RPS_ANNOTATION: &str = "nginx.ingress.kubernetes.io/limit-rps";

/// Our manager's entries in the object's managedFields: (operation, subresource).
fn our_entries(meta: &kube::api::ObjectMeta) -> Vec<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|e| e.manager.as_deref() == Some("compose-ingress"))
        .map(|e| e.operation.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_label_removed_on_recreate_leaves_no_annotation_behind() {
    let ns = unique_namespace("onemanager");
    let pod = bed().runner_pod(&ns, "runner-0");
    let admin = bed().admin().await;
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--max-rps", "100"]).await;
    let v2 = ComposeVersion::V2;
    let limited = compose_file(&[web(
        "web",
        "limited",
        80,
        "80",
        &[ENABLE, ("compose-ingress.rate-limit.rps", "7")],
    )]);
    pod.compose_as(v2, "shop", &limited, &["up", "-d"]);
    let (_, ingress) = wait_exposed(&admin, &ns, "runner-0", "shop").await;
    let name = ingress.metadata.name.clone().expect("name");
    let uid = ingress.metadata.uid.clone();
    let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get(RPS_ANNOTATION).map(String::as_str),
        Some("7")
    );
    assert_eq!(
        our_entries(&ingress.metadata),
        ["Apply"],
        "one manager from the create on"
    );

    // The same composition recreated without the label: the annotation goes, the Ingress stays.
    let unlimited = compose_file(&[web("web", "unlimited", 80, "80", &[ENABLE])]);
    pod.compose_as(v2, "shop", &unlimited, &["up", "-d"]);
    let ingresses: Api<Ingress> = Api::namespaced(admin.clone(), &ns);
    let after = eventually("the rate-limit annotation removed", CONVERGE, || async {
        let live = ingresses.get(&name).await.ok()?;
        let annotations = live.metadata.annotations.clone().unwrap_or_default();
        (!annotations.contains_key(RPS_ANNOTATION)).then_some(live)
    })
    .await;
    assert_eq!(after.metadata.uid, uid, "not recreated");
}

#[tokio::test]
async fn objects_an_older_sidecar_created_are_handed_over_without_being_recreated() {
    let ns = unique_namespace("handover");
    let pod = bed().runner_pod(&ns, "runner-0");
    let admin = bed().admin().await;
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    let v2 = ComposeVersion::V2;
    let file = compose_file(&[web("web", "handed-over", 80, "80", &[ENABLE])]);
    pod.compose_as(v2, "legacy", &file, &["up", "-d"]);
    let (service, ingress) = wait_exposed(&admin, &ns, "runner-0", "legacy").await;
    sidecar.stop();

    // What an older sidecar left: its create (POST) recorded fields under an `Update` entry of
    // the same manager, among them the Service selector (before health-gated routing) and a
    // rate-limit annotation no label asks for any more. A merge patch by that manager leaves
    // exactly that record.
    let name = service.metadata.name.clone().expect("name");
    let by_old_sidecar = PatchParams {
        field_manager: Some("compose-ingress".into()),
        ..PatchParams::default()
    };
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let ingresses: Api<Ingress> = Api::namespaced(admin.clone(), &ns);
    services
        .patch(
            &name,
            &by_old_sidecar,
            &Patch::Merge(serde_json::json!({"spec": {"selector": {"statefulset.kubernetes.io/pod-name": "runner-0"}}})),
        )
        .await
        .expect("the old sidecar's selector");
    ingresses
        .patch(
            &name,
            &by_old_sidecar,
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {RPS_ANNOTATION: "5"}}})),
        )
        .await
        .expect("the old sidecar's annotation");
    let old = services.get(&name).await.expect("service");
    assert!(
        our_entries(&old.metadata).contains(&"Update".to_string()),
        "the old sidecar's record: {:?}",
        old.metadata.managed_fields
    );

    // The new sidecar's first resync: both fields go, one Apply entry owns the rest, and the
    // objects are the same ones.
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    let live = eventually("the old selector removed", CONVERGE, || async {
        let live = services.get(&name).await.ok()?;
        live.spec.as_ref()?.selector.is_none().then_some(live)
    })
    .await;
    assert_eq!(
        live.metadata.uid, service.metadata.uid,
        "the Service was not recreated"
    );
    assert_eq!(our_entries(&live.metadata), ["Apply"]);
    let live = eventually("the old annotation removed", CONVERGE, || async {
        let live = ingresses.get(&name).await.ok()?;
        let annotations = live.metadata.annotations.clone().unwrap_or_default();
        (!annotations.contains_key(RPS_ANNOTATION)).then_some(live)
    })
    .await;
    assert_eq!(
        live.metadata.uid, ingress.metadata.uid,
        "the Ingress was not recreated"
    );
    assert_eq!(our_entries(&live.metadata), ["Apply"]);
}
