//! `Cluster`, call by call, against the mock API (src/test_support/mock_api.rs).

use http::Method;
use serde_json::{Value, json};

use super::*;
use crate::model::OwnerPod;
use crate::objects::ownership_labels;
use crate::render;
use crate::test_support::mock_api::*;
use crate::test_support::settings;

#[tokio::test]
async fn create_posts_the_object_with_our_field_manager() {
    let (cluster, handle) = mock_cluster();
    let obj = service_object("web", PROJECT);
    let scenario = vec![
        create(SERVICES)
            .body(|b| {
                assert_eq!(b["metadata"]["name"], "web", "{b}");
                assert_eq!(b["kind"], "Service", "{b}");
            })
            .echo(201, "uid-web"),
    ];
    let (uid, ()) = tokio::join!(
        async move { cluster.upsert(&obj, None).await },
        serve(handle, scenario)
    );
    assert_eq!(uid.expect("created"), Upserted::Created("uid-web".into()));
}

#[tokio::test]
async fn a_known_object_is_server_side_applied_with_force() {
    let (cluster, handle) = mock_cluster();
    let obj = service_object("web", PROJECT);
    let scenario = vec![
        apply(SERVICES, "web")
            .body(|b| {
                assert_eq!(b["apiVersion"], "v1", "{b}");
                assert_eq!(b["kind"], "Service", "{b}");
                // the listed uid: a same-named replacement is refused, never taken over
                assert_eq!(b["metadata"]["uid"], "uid-web", "{b}");
            })
            .echo(200, "uid-web"),
    ];
    let known = owned_service("web", "uid-web", false);
    let (uid, ()) = tokio::join!(
        async move { cluster.upsert(&obj, Some(&known)).await },
        serve(handle, scenario)
    );
    assert_eq!(uid.expect("applied"), Upserted::Applied("uid-web".into()));
}

fn owned_service(name: &str, uid: &str, needs_hand_over: bool) -> OwnedObject {
    OwnedObject {
        kind: Kind::Service,
        name: name.into(),
        uid: uid.into(),
        composition: PROJECT.into(),
        spec_hash: None,
        host: None,
        needs_hand_over,
        leftovers: false,
        legacy_selector: false,
        edited: false,
    }
}

/// A create's record in `managedFields`, as the apiserver writes it.
fn created_fields() -> Value {
    json!([{
        "manager": "compose-ingress", "operation": "Update", "apiVersion": "v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:annotations": {"f:rps": {}}}},
    }])
}

/// A create is one write: its fields are handed over before the object's first apply, not
/// at once (what it wrote is what is desired, nothing can be left over yet).
#[tokio::test]
async fn a_create_is_one_write() {
    let (cluster, handle) = mock_cluster();
    let obj = service_object("web", PROJECT);
    let mut reply = obj.object.clone();
    reply.metadata.uid = Some("uid-web".into());
    reply.metadata.resource_version = Some("7".into());
    let mut reply = serde_json::to_value(&reply).expect("json");
    reply["metadata"]["managedFields"] = created_fields();
    let scenario = vec![create(SERVICES).reply(201, reply)];
    let (uid, ()) = tokio::join!(
        async move { cluster.upsert(&obj, None).await },
        serve(handle, scenario)
    );
    assert_eq!(uid.expect("created"), Upserted::Created("uid-web".into()));
}

#[tokio::test]
async fn an_object_an_older_sidecar_created_is_handed_over_then_applied() {
    let (cluster, handle) = mock_cluster();
    let obj = service_object("web", PROJECT);
    let mut live = listed(&obj, "uid-web");
    live["metadata"]["resourceVersion"] = json!("9");
    live["metadata"]["managedFields"] = created_fields();
    let scenario = vec![
        get(SERVICES, "web").reply(200, live),
        expect(Method::PATCH, format!("{SERVICES}/web"))
            .content_type(MERGE_PATCH)
            .body(|b| assert_eq!(b["metadata"]["resourceVersion"], "9", "{b}"))
            .reply(200, json!({"metadata": {"name": "web"}})),
        apply(SERVICES, "web").echo(200, "uid-web"),
    ];
    let known = owned_service("web", "uid-web", true);
    let (uid, ()) = tokio::join!(
        async move { cluster.upsert(&obj, Some(&known)).await },
        serve(handle, scenario)
    );
    assert_eq!(uid.expect("applied"), Upserted::Applied("uid-web".into()));
}

#[tokio::test]
async fn an_existing_object_with_our_labels_is_applied() {
    let (cluster, handle) = mock_cluster();
    let obj = service_object("web", PROJECT);
    let live = foreign("web", json!(ownership_labels(POD, PROJECT)));
    let scenario = vec![
        create(SERVICES).reply(409, status(409, "AlreadyExists")),
        get(SERVICES, "web").reply(200, live),
        apply(SERVICES, "web").echo(200, "foreign-uid"),
    ];
    let (uid, ()) = tokio::join!(
        async move { cluster.upsert(&obj, None).await },
        serve(handle, scenario)
    );
    assert_eq!(
        uid.expect("applied"),
        Upserted::Applied("foreign-uid".into())
    );
}

#[tokio::test]
async fn a_foreign_object_of_the_same_name_is_left_untouched() {
    // Nobody's (no labels), and another pod's: both are refused, neither is written.
    let other_pod = ownership_labels("runner-7", PROJECT);
    for labels in [json!({"app": "web"}), json!(other_pod)] {
        let (cluster, handle) = mock_cluster();
        let obj = service_object("web", PROJECT);
        let scenario = vec![
            create(SERVICES).reply(409, status(409, "AlreadyExists")),
            get(SERVICES, "web").reply(200, foreign("web", labels)),
        ];
        let (result, ()) = tokio::join!(
            async move { cluster.upsert(&obj, None).await },
            serve(handle, scenario)
        );
        let err = result.expect_err("a foreign object must be refused");
        assert!(matches!(err, ClusterError::NotOurs { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with("Service ci/web exists and is not owned by compose-ingress"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_lease_held_by_another_pod_is_taken_not_claimed() {
    let (cluster, handle) = mock_cluster();
    let settings = settings();
    let owner = OwnerPod {
        name: POD.into(),
        uid: POD_UID.into(),
    };
    let host = "web.composition.example.com";
    let lease = DesiredObject::new(
        Kind::Lease,
        &render::host_lease(host, PROJECT, &owner, &settings),
    )
    .expect("lease");
    let name = lease.name().to_string();
    let mut live = listed(&lease, "other-uid");
    live["metadata"]["labels"] = json!(ownership_labels("runner-7", "shop"));
    live["metadata"]["annotations"][PROJECT_NAME_ANNOTATION] = json!("shop");
    live["apiVersion"] = json!("coordination.k8s.io/v1");
    live["kind"] = json!("Lease");
    let scenario = vec![
        create(LEASES)
            .body(|b| assert_ours(b, PROJECT))
            .reply(409, status(409, "AlreadyExists")),
        get(LEASES, &name).reply(200, live),
    ];
    let (claim, ()) = tokio::join!(
        async move { cluster.claim(&lease).await },
        serve(handle, scenario)
    );
    assert_eq!(
        claim.expect("claim"),
        Claim::Taken {
            holder_pod: "runner-7".into(),
            holder_composition: "shop".into()
        }
    );
}

#[tokio::test]
async fn delete_carries_the_uid_precondition_and_a_replaced_object_is_left_alone() {
    let (cluster, handle) = mock_cluster();
    let scenario = vec![
        delete(SERVICES, "web", "uid-1").reply(200, status(200, "Success")),
        // 409: the uid precondition failed, the object is someone else's now.
        delete(INGRESSES, "web", "uid-2").reply(409, status(409, "Conflict")),
    ];
    let (result, ()) = tokio::join!(
        async move {
            cluster.delete(Kind::Service, "web", "uid-1").await?;
            cluster.delete(Kind::Ingress, "web", "uid-2").await
        },
        serve(handle, scenario)
    );
    result.expect("deleted");
}

#[tokio::test]
async fn list_owned_reads_metadata_pages_by_our_selector() {
    let (cluster, handle) = mock_cluster();
    let a = service_object("a", "one");
    let b = service_object("b", "two");
    let stranger = service_object("c", "three");
    let mut stranger = listed(&stranger, "uid-c");
    stranger["metadata"]["labels"][POD_LABEL] = json!("runner-7");
    let scenario = vec![
        list(LEASES, None).reply(200, page(vec![], None)),
        list(SERVICES, None).reply(200, page(vec![listed(&a, "uid-a")], Some("c1"))),
        list(SERVICES, Some("c1")).reply(200, page(vec![listed(&b, "uid-b"), stranger], None)),
        list(SLICES, None).reply(200, page(vec![], None)),
        // No Traefik CRDs in this cluster, and annotation mode: not an error.
        list(MIDDLEWARES, None).reply(404, status(404, "NotFound")),
        list(INGRESSES, None).reply(200, page(vec![], None)),
        // No Gateway API in this cluster: not an error.
        list(HTTP_ROUTES, None).reply(404, status(404, "NotFound")),
        list(GRPC_ROUTES, None).reply(404, status(404, "NotFound")),
    ];
    let (owned, ()) = tokio::join!(
        async move { cluster.list_owned().await },
        serve(handle, scenario)
    );
    let owned = owned.expect("listing");
    let names: Vec<(&str, &str, &str)> = owned
        .iter()
        .map(|o| (o.name.as_str(), o.uid.as_str(), o.composition.as_str()))
        .collect();
    assert_eq!(names, [("a", "uid-a", "one"), ("b", "uid-b", "two")]);
}

#[tokio::test]
async fn in_traefik_middleware_mode_a_forbidden_middleware_listing_is_an_error() {
    let (cluster, handle) = mock_cluster();
    let cluster = cluster.with_middlewares(true);
    let scenario = vec![
        list(LEASES, None).reply(200, page(vec![], None)),
        list(SERVICES, None).reply(200, page(vec![], None)),
        list(SLICES, None).reply(200, page(vec![], None)),
        list(MIDDLEWARES, None).reply(403, status(403, "Forbidden")),
    ];
    let (owned, ()) = tokio::join!(
        async move { cluster.list_owned().await },
        serve(handle, scenario)
    );
    let err = owned.expect_err("a Role without Middlewares fails the listing");
    assert!(err.to_string().contains("Middleware"), "{err}");
}

#[tokio::test]
async fn list_owned_fails_when_a_later_page_fails() {
    let (cluster, handle) = mock_cluster();
    let a = service_object("a", "one");
    let scenario = vec![
        list(LEASES, None).reply(200, page(vec![], None)),
        list(SERVICES, None).reply(200, page(vec![listed(&a, "uid-a")], Some("c1"))),
        list(SERVICES, Some("c1")).reply(500, status(500, "InternalError")),
    ];
    let (owned, ()) = tokio::join!(
        async move { cluster.list_owned().await },
        serve(handle, scenario)
    );
    let err = owned.expect_err("a failed page fails the listing");
    assert!(
        err.to_string().starts_with("cannot list Service ci/*"),
        "{err}"
    );
}

/// A failed read of the sidecar's own pod (start-up without POD_UID/POD_IP, clean-up at exit)
/// says what to fix by what the apiserver answered, not always "the Role".
#[tokio::test]
async fn a_failed_read_of_the_own_pod_says_what_to_fix_by_its_status() {
    for (code, reason, says) in [
        (401, "Unauthorized", "token was refused"),
        (
            403,
            "Forbidden",
            "fix: this pod's ServiceAccount needs the Role",
        ),
        (
            404,
            "NotFound",
            "fix: POD_NAME and POD_NAMESPACE must be the pod's own",
        ),
        (
            500,
            "InternalError",
            "500 InternalError: mock: InternalError",
        ),
    ] {
        let (cluster, handle) = mock_cluster();
        let scenario =
            vec![get("/api/v1/namespaces/ci/pods", POD).reply(code, status(code, reason))];
        let (result, ()) = tokio::join!(
            async move { cluster.own_pod().await },
            serve(handle, scenario)
        );
        let e = result.expect_err("an error").to_string();
        assert!(e.contains(says), "{code}: {e}");
        assert!(e.contains("pod ci/runner-3"), "{code}: {e}");
    }
}
