//! What the sidecar's token is refused under the guard, one test per rule: each refusal is the
//! apiserver's 403 naming the rule, and the same object without the one forbidden change passes
//! (so the refusal is that rule's, not an accident of the test object).

use kube::api::DeleteParams;
use serde_json::json;

use super::{Kind, create, guarded, refused};

#[tokio::test]
async fn guard_bounds_hosts_annotations_services_and_endpoint_slices() {
    let g = guarded("guard-base").await;
    let o = g.objects();
    let c = &g.stolen;
    let ns = &g.ns;

    let deep = o.ingress("deep", &o.host("a.b"));
    refused(
        "a host two labels under the domain",
        "hosts",
        create(c, ns, Kind::Ingress, deep).await,
    );
    let mut snippet = o.ingress("snippet", &o.host("snippet"));
    snippet["metadata"]["annotations"]["nginx.ingress.kubernetes.io/configuration-snippet"] =
        json!("x");
    let message = refused(
        "an annotation outside the allow-list",
        "annotations",
        create(c, ns, Kind::Ingress, snippet).await,
    );
    assert!(
        message.contains("nginx.ingress.kubernetes.io/limit-rps"),
        "{message}"
    );
    create(c, ns, Kind::Ingress, o.ingress("fine", &o.host("fine")))
        .await
        .expect("the sidecar's Ingress passes");

    let mut nodeport = o.service("nodeport");
    nodeport["spec"]["type"] = json!("NodePort");
    refused(
        "a NodePort Service",
        "services",
        create(c, ns, Kind::Service, nodeport).await,
    );
    let mut database = o.service("database");
    database["spec"]["selector"] = json!({"app": "postgres"});
    refused(
        "a Service selecting another workload",
        "services",
        create(c, ns, Kind::Service, database).await,
    );
    let mut unlabelled = o.service("unlabelled");
    unlabelled["metadata"]["labels"] = json!({});
    refused(
        "a Service without the ownership label",
        "ownership",
        create(c, ns, Kind::Service, unlabelled).await,
    );
    create(c, ns, Kind::Service, o.service("fine"))
        .await
        .expect("the sidecar's Service passes");

    // EndpointSlices: the sidecar's own point at its pod; a stolen token cannot point a URL at
    // an address outside the pod ranges (the apiserver, a node, a cloud metadata address) or at
    // another pod.
    let mut apiserver = o.slice("apiserver");
    apiserver["endpoints"][0]["addresses"] = json!(["10.96.0.1"]);
    let message = refused(
        "an EndpointSlice to an address outside the pod ranges (the apiserver's Service)",
        "endpointslices",
        create(c, ns, Kind::EndpointSlice, apiserver).await,
    );
    assert!(message.contains("198.18.0.0/16"), "{message}");
    let mut postgres = o.slice("database");
    postgres["endpoints"][0]["targetRef"]["name"] = json!("postgres-0");
    refused(
        "an EndpointSlice to a pod that is not a runner",
        "endpointslices",
        create(c, ns, Kind::EndpointSlice, postgres).await,
    );
    create(c, ns, Kind::EndpointSlice, o.slice("fine"))
        .await
        .expect("the sidecar's EndpointSlice passes");

    // Someone else's Service: the token's Role may delete Services, the guard says no.
    let mut foreign = o.service("foreign");
    foreign["metadata"] = json!({"name": "foreign"});
    create(&g.admin, ns, Kind::Service, foreign)
        .await
        .expect("admin creates a Service of its own");
    refused(
        "deleting a Service the sidecar does not own",
        "ownership",
        super::api(c, ns, Kind::Service)
            .delete("foreign", &DeleteParams::default())
            .await,
    );
    assert!(
        super::api(&g.admin, ns, Kind::Service)
            .get("foreign")
            .await
            .is_ok(),
        "the foreign Service is still there"
    );
}
