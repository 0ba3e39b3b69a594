//! One field manager per object (issue 14, item 4): what the desired state no longer has goes
//! from the live object, whether the object was created by this sidecar or by an older one
//! (whose create left its fields under a second, `Update` entry), and no object is recreated
//! for it (uids and hosts stay), but for a Service an older sidecar gave a selector: that one is
//! made again, so that the EndpointSlice controller's slices go with it.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams, Patch, PatchParams};
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
    assert_eq!(
        our_entries(&after.metadata),
        ["Apply"],
        "one manager after the first apply"
    );
}

#[tokio::test]
async fn what_an_older_sidecar_left_behind_goes_on_the_first_resync() {
    let ns = unique_namespace("handover");
    let pod = bed().runner_pod(&ns, "runner-0");
    let admin = bed().admin().await;
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    let v2 = ComposeVersion::V2;
    let file = compose_file(&[web("web", "handed-over", 80, "80", &[ENABLE])]);
    pod.compose_as(v2, "legacy", &file, &["up", "-d"]);
    let (service, ingress) = wait_exposed(&admin, &ns, "runner-0", "legacy").await;
    sidecar.stop();

    // What an older sidecar left. Its Service selected the pod (before health-gated routing),
    // so the EndpointSlice controller made a slice for it, and its spec hash was another; its
    // Ingress was created with a rate-limit annotation (recorded under the create's `Update`
    // entry) and applied since without it (an `Apply` entry without the annotation). Writes by
    // the same manager leave exactly those records.
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
            &Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"compose-ingress/spec-hash": "0000000000000000"}},
                "spec": {"selector": {"statefulset.kubernetes.io/pod-name": "runner-0"}},
            })),
        )
        .await
        .expect("the old sidecar's selector");
    let labels = ingress.metadata.labels.clone().expect("labels");
    ingresses
        .patch(
            &name,
            &PatchParams::apply("compose-ingress").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": name, "labels": labels},
            })),
        )
        .await
        .expect("the old sidecar's apply");
    ingresses
        .patch(
            &name,
            &by_old_sidecar,
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {RPS_ANNOTATION: "5"}}})),
        )
        .await
        .expect("the old sidecar's annotation");
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), &ns);
    let by_controller = ListParams::default().labels(&format!(
        "kubernetes.io/service-name={name},endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"
    ));
    eventually(
        "the controller's slice for the old selector",
        CONVERGE,
        || async {
            let items = slices.list(&by_controller).await.ok()?.items;
            (!items.is_empty()).then_some(())
        },
    )
    .await;
    let old = services.get(&name).await.expect("service");
    assert!(
        our_entries(&old.metadata).contains(&"Update".to_string()),
        "the old sidecar's record: {:?}",
        old.metadata.managed_fields
    );

    // The new sidecar's first resync: the selector and the annotation go, one Apply entry owns
    // the rest; the Ingress is the same object, the Service a new one.
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    let live = eventually("the old selector removed", CONVERGE, || async {
        let live = services.get(&name).await.ok()?;
        live.spec.as_ref()?.selector.is_none().then_some(live)
    })
    .await;
    assert_ne!(
        live.metadata.uid, service.metadata.uid,
        "the Service with a selector is made again (its controller slices go with it)"
    );
    eventually("the controller's slices gone", CONVERGE, || async {
        let items = slices.list(&by_controller).await.ok()?.items;
        items.is_empty().then_some(())
    })
    .await;
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

/// The resourceVersions of the composition's Service, Ingress and EndpointSlices.
async fn versions(admin: &kube::Client, ns: &str, service: &str, ingress: &str) -> Vec<String> {
    let rv = |m: &kube::api::ObjectMeta| m.resource_version.clone().unwrap_or_default();
    let mut out = vec![
        rv(&Api::<Service>::namespaced(admin.clone(), ns)
            .get(service)
            .await
            .expect("service")
            .metadata),
        rv(&Api::<Ingress>::namespaced(admin.clone(), ns)
            .get(ingress)
            .await
            .expect("ingress")
            .metadata),
    ];
    let slices = Api::<EndpointSlice>::namespaced(admin.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .expect("slices");
    out.extend(slices.items.iter().map(|s| rv(&s.metadata)));
    out
}

/// A hand edit of an owned object (issue 14, item 9) is set back at the next full resync: a
/// changed host, an added annotation, an EndpointSlice pointed elsewhere, an added label; and
/// objects nobody edited are not written, before or after (the restart budget's rule: no write
/// to an unchanged object). The edits are made as an admin with its own field manager, as
/// `kubectl edit` and `kubectl patch` do: the Service's by the docs' `kubectl edit` itself (its
/// editor a sed), the others as patches under `kubectl edit`'s field manager. Before, only the spec-hash annotation was compared,
/// and every one of these edits stayed.
#[tokio::test]
async fn hand_edits_are_set_back_at_the_next_resync_and_untouched_objects_are_not_written() {
    let ns = unique_namespace("handedit");
    let pod = bed().runner_pod(&ns, "runner-0");
    let admin = bed().admin().await;
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--resync-interval", "2s"]).await;
    let v2 = ComposeVersion::V2;
    let file = compose_file(&[web("web", "the-page", 80, "80", &[ENABLE])]);
    pod.compose_as(v2, "edited", &file, &["up", "-d"]);
    let (service, ingress) = wait_exposed(&admin, &ns, "runner-0", "edited").await;
    let service_name = service.metadata.name.clone().expect("name");
    let ingress_name = ingress.metadata.name.clone().expect("name");
    let host = ingress
        .spec
        .as_ref()
        .expect("spec")
        .rules
        .as_ref()
        .expect("rules")[0]
        .host
        .clone()
        .expect("host");
    assert_eq!(testbed::through_ingress(&host).await.trim(), "the-page");

    // Untouched: several resyncs write nothing.
    let before = versions(&admin, &ns, &service_name, &ingress_name).await;
    let seen = sidecar.log_lines("full resync done").len();
    sidecar.wait_resyncs(seen + 2).await;
    assert_eq!(
        versions(&admin, &ns, &service_name, &ingress_name).await,
        before
    );

    // The edits.
    let edit = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    let ingresses: Api<Ingress> = Api::namespaced(admin.clone(), &ns);
    let mut rule = ingress
        .spec
        .as_ref()
        .expect("spec")
        .rules
        .clone()
        .expect("rules")[0]
        .clone();
    rule.host = Some(format!("evil.{host}"));
    ingresses
        .patch(
            &ingress_name,
            &edit,
            &Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"example.com/snippet": "evil"}},
                "spec": {"rules": [rule]}
            })),
        )
        .await
        .expect("edit the ingress");
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), &ns);
    let slice_name = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service_name}")))
        .await
        .expect("slices")
        .items[0]
        .metadata
        .name
        .clone()
        .expect("name");
    slices
        .patch(
            &slice_name,
            &edit,
            &Patch::Merge(serde_json::json!({
                "endpoints": [{"addresses": ["198.18.0.99"], "conditions": {"ready": true}}]
            })),
        )
        .await
        .expect("edit the slice");
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    // The Service's label: a real `kubectl edit` as docs/security.md and docs/operability.md
    // name it, its editor a sed that adds the label to the file kubectl opens.
    let kubectl_edit = testbed::doc_inline("docs/security.md", "kubectl edit");
    assert_eq!(
        testbed::doc_inline("docs/operability.md", "kubectl edit"),
        kubectl_edit
    );
    let line = format!("{kubectl_edit} -n {ns} service/{service_name}");
    let editor = r"sed -i 's/^  labels:$/&\n    edited: by-hand/'";
    // What kubectl says once it wrote the change (a resync may set it back any moment after).
    let out = testbed::run_doc_line_ok(
        bed(),
        &line,
        &testbed::repo_root(),
        &[("KUBE_EDITOR", editor)],
    );
    assert_eq!(
        out.trim(),
        format!("service/{service_name} edited"),
        "`{line}` with KUBE_EDITOR={editor}"
    );

    // Set back, same objects.
    let pod_ip = pod.ip.to_string();
    eventually("every edit set back", CONVERGE, || async {
        let i = ingresses.get(&ingress_name).await.ok()?;
        let s = slices.get(&slice_name).await.ok()?;
        let svc = services.get(&service_name).await.ok()?;
        let i_host = i.spec.as_ref()?.rules.as_ref()?[0].host.clone()?;
        let annotations = i.metadata.annotations.clone().unwrap_or_default();
        let address = s.endpoints.as_ref()?.first()?.addresses.first()?.clone();
        let labels = svc.metadata.labels.clone().unwrap_or_default();
        (i_host == host
            && !annotations.contains_key("example.com/snippet")
            && address == pod_ip
            && !labels.contains_key("edited"))
        .then_some(())
    })
    .await;
    let after = ingresses.get(&ingress_name).await.expect("ingress");
    assert_eq!(after.metadata.uid, ingress.metadata.uid, "not recreated");
    assert!(!sidecar.log_lines("edited by someone else").is_empty());
    assert_eq!(testbed::through_ingress(&host).await.trim(), "the-page");

    // Converged: the next resyncs write nothing again.
    let reverted = versions(&admin, &ns, &service_name, &ingress_name).await;
    let seen = sidecar.log_lines("full resync done").len();
    sidecar.wait_resyncs(seen + 2).await;
    assert_eq!(
        versions(&admin, &ns, &service_name, &ingress_name).await,
        reverted,
        "a set-back object is written once, not at every resync"
    );
}
