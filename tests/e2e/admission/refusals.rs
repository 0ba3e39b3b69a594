//! What the sidecar's token is refused under the guard, one test per rule: each refusal is the
//! apiserver's 403 naming the rule, and the same object without the one forbidden change passes
//! (so the refusal is that rule's, not an accident of the test object).

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use testbed::pod_bound_token;

use super::objects::Objects;
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

#[tokio::test]
async fn guard_covers_traefik_middlewares() {
    let g = guarded("guard-mw").await;
    // The Role of deploy/components/traefik (both overlays include it).
    g.pod.grant(&g.admin, testbed::TRAEFIK_RBAC).await;
    let o = g.objects();
    let c = &g.stolen;
    let ns = &g.ns;
    // The operator's own Middleware (an authentication its access policies name): the Traefik
    // component's Role lets the token write every Middleware of the namespace.
    let sso = json!({"metadata": {"name": "sso-auth"},
        "spec": {"basicAuth": {"secret": "operators"}}});
    create(&g.admin, ns, Kind::Middleware, sso)
        .await
        .expect("admin creates a Middleware of its own");
    refused(
        "changing the operator's Middleware",
        "ownership",
        patch(
            c,
            ns,
            Kind::Middleware,
            "sso-auth",
            json!({"spec": {"basicAuth": {"secret": "mine"}}}),
        )
        .await,
    );
    refused(
        "deleting the operator's Middleware",
        "ownership",
        super::api(c, ns, Kind::Middleware)
            .delete("sso-auth", &DeleteParams::default())
            .await,
    );
    let mut unlabelled = o.middleware("unlabelled");
    unlabelled["metadata"]["labels"] = json!({});
    refused(
        "a Middleware without the ownership label",
        "ownership",
        create(c, ns, Kind::Middleware, unlabelled).await,
    );
    // A Middleware of ours that is not a rate limit: a forwardAuth would make Traefik call any
    // address for every request of the routes that name it.
    let mut forward = o.middleware("forward");
    forward["spec"] = json!({"forwardAuth": {"address": "http://169.254.169.254/"}});
    refused(
        "a Middleware of ours that is not a rate limit",
        "middlewares",
        create(c, ns, Kind::Middleware, forward).await,
    );
    create(c, ns, Kind::Middleware, o.middleware("fine"))
        .await
        .expect("the sidecar's rate-limit Middleware passes");
}

/// A merge patch of `name` with `client`.
async fn patch(
    client: &kube::Client,
    ns: &str,
    kind: Kind,
    name: &str,
    body: serde_json::Value,
) -> kube::Result<kube::api::DynamicObject> {
    super::api(client, ns, kind)
        .patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
}

#[tokio::test]
async fn guard_checks_the_object_before_a_change_too() {
    let g = guarded("guard-old").await;
    let o = g.objects();
    let c = &g.stolen;
    let ns = &g.ns;
    // Someone else's Service, shaped as ours are (ClusterIP, no selector), only not labelled.
    let mut database = o.service("database");
    let name = o.name("database");
    database["metadata"] = json!({"name": name});
    create(&g.admin, ns, Kind::Service, database)
        .await
        .expect("admin creates a Service of its own");
    let takeover = json!({"metadata": o.meta(&name)});
    refused(
        "a patch that adds our labels to someone else's Service",
        "ownership",
        patch(c, ns, Kind::Service, &name, takeover).await,
    );
    let live = super::api(&g.admin, ns, Kind::Service)
        .get(&name)
        .await
        .expect("the Service is still there");
    assert_eq!(live.metadata.labels, None, "and still not ours");
    // A change of the sidecar's own Service passes.
    create(c, ns, Kind::Service, o.service("fine"))
        .await
        .expect("the sidecar's Service passes");
    let port =
        json!({"spec": {"ports": [{"name": "p0123456789", "port": 2080, "targetPort": 32001}]}});
    patch(c, ns, Kind::Service, &o.name("fine"), port)
        .await
        .expect("a change of the sidecar's own Service passes");
}

#[tokio::test]
async fn guard_ties_a_token_to_its_pod() {
    let g = guarded("guard-pod").await;
    let o = g.objects();
    let ns = &g.ns;
    let bed = testbed::bed();
    let neighbour_pod = bed.runner_pod(ns, "runner-1");
    let neighbour = bed
        .client_with_token(
            &pod_bound_token(&g.admin, ns, &neighbour_pod.name, &neighbour_pod.uid).await,
        )
        .await;
    let theirs = Objects {
        ns: ns.clone(),
        pod: neighbour_pod.name.clone(),
        uid: neighbour_pod.uid.clone(),
        ip: neighbour_pod.ip.clone(),
        domain: o.domain.clone(),
    };
    create(&g.stolen, ns, Kind::Service, o.service("mine"))
        .await
        .expect("runner-0's Service");
    refused(
        "runner-1's token deleting runner-0's Service",
        "pod-bound",
        super::api(&neighbour, ns, Kind::Service)
            .delete(&o.name("mine"), &DeleteParams::default())
            .await,
    );
    let port = json!({"spec": {"ports": [{"name": "p0123456789", "port": 2080, "targetPort": 1}]}});
    refused(
        "runner-1's token changing runner-0's Service",
        "pod-bound",
        patch(&neighbour, ns, Kind::Service, &o.name("mine"), port).await,
    );
    refused(
        "runner-1's token creating an object of runner-0",
        "pod-bound",
        create(&neighbour, ns, Kind::Service, o.service("forged")).await,
    );
    let mut adopted = theirs.service("adopted");
    adopted["metadata"]["ownerReferences"][0]["uid"] = json!(g.pod.uid);
    adopted["metadata"]["ownerReferences"][0]["name"] = json!(g.pod.name);
    refused(
        "runner-1's object owned by runner-0 (its garbage collection tied to another pod)",
        "pod-bound",
        create(&neighbour, ns, Kind::Service, adopted).await,
    );
    // A token of the ServiceAccount that names no pod (a long-lived Secret token, a TokenRequest
    // without a bound object): worth nothing under the guard.
    let unbound = bed
        .client_with_token(&unbound_token(&g.admin, ns).await)
        .await;
    refused(
        "a token bound to no pod",
        "pod-bound",
        create(&unbound, ns, Kind::Service, o.service("unbound")).await,
    );
    create(&neighbour, ns, Kind::Service, theirs.service("theirs"))
        .await
        .expect("runner-1's own Service passes with runner-1's token");
    assert!(
        super::api(&g.admin, ns, Kind::Service)
            .get(&o.name("mine"))
            .await
            .is_ok(),
        "runner-0's Service is still there"
    );
}

/// A token of the sidecar's ServiceAccount bound to no object.
async fn unbound_token(admin: &kube::Client, ns: &str) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    kube::Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request("compose-ingress", &PostParams::default(), &request)
        .await
        .expect("a token request")
        .status
        .and_then(|s| s.token)
        .expect("a token")
}

#[tokio::test]
async fn guard_ties_an_endpoint_slice_to_a_service_of_its_pod() {
    let g = guarded("guard-slice").await;
    let o = g.objects();
    let c = &g.stolen;
    let ns = &g.ns;
    // The operator's database Service: the slices of a Service are merged by every consumer,
    // so a slice of ours labelled with its name would add our pod to its endpoints.
    create(
        &g.admin,
        ns,
        Kind::Service,
        json!({"metadata": {"name": "database"}, "spec": {"ports": [{"port": 5432}]}}),
    )
    .await
    .expect("admin creates a Service of its own");
    let mut database = o.slice("database");
    database["metadata"]["labels"]["kubernetes.io/service-name"] = json!("database");
    refused(
        "an EndpointSlice of the operator's Service",
        "endpointslices",
        create(c, ns, Kind::EndpointSlice, database).await,
    );
    let mut neighbours = o.slice("neighbours");
    neighbours["metadata"]["labels"]["kubernetes.io/service-name"] =
        json!(super::name_of("runner-1", "neighbours"));
    refused(
        "an EndpointSlice of another pod's Service",
        "endpointslices",
        create(c, ns, Kind::EndpointSlice, neighbours).await,
    );
    let mut elsewhere = o.slice("elsewhere");
    elsewhere["metadata"]["labels"]["kubernetes.io/service-name"] = json!(o.name("other"));
    refused(
        "an EndpointSlice named for one Service and labelled for another",
        "endpointslices",
        create(c, ns, Kind::EndpointSlice, elsewhere).await,
    );
    create(c, ns, Kind::EndpointSlice, o.slice("fine"))
        .await
        .expect("the sidecar's EndpointSlice passes");
}

#[tokio::test]
async fn guard_checks_route_backends_parents_classes_and_annotation_values() {
    let g = guarded("guard-route").await;
    let o = g.objects();
    let c = &g.stolen;
    let ns = &g.ns;
    let host = o.host("app");
    let gateway = testbed::bed().gateway();

    let mut backend = o.ingress("backend", &host);
    backend["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] =
        json!("database");
    refused(
        "an Ingress that publishes the operator's Service",
        "ingresses",
        create(c, ns, Kind::Ingress, backend).await,
    );
    let mut class = o.ingress("class", &host);
    class["spec"]["ingressClassName"] = json!("internal");
    refused(
        "an Ingress of a class not in the list",
        "ingresses",
        create(c, ns, Kind::Ingress, class).await,
    );
    let mut classless = o.ingress("classless", &host);
    classless["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("ingressClassName");
    refused(
        "an Ingress without a class (the cluster's default class takes it)",
        "ingresses",
        create(c, ns, Kind::Ingress, classless).await,
    );
    let middlewares = "traefik.ingress.kubernetes.io/router.middlewares";
    let own = format!("{ns}-{}@kubernetescrd", o.name("mw"));
    let values = [
        (
            middlewares,
            format!("kube-system-{}@kubernetescrd", o.name("mw")),
        ),
        (middlewares, format!("{ns}-sso-auth@kubernetescrd")),
        (middlewares, format!("{own},{ns}-admin@kubernetescrd")),
        (
            "nginx.ingress.kubernetes.io/limit-rps",
            "20; drop".to_string(),
        ),
        (
            "compose-ingress/host",
            "app.attacker.example.org".to_string(),
        ),
        ("compose-ingress/spec-hash", "<script>".to_string()),
        (
            "traefik.ingress.kubernetes.io/service.serversscheme",
            "http://x".to_string(),
        ),
    ];
    for (key, value) in values {
        let mut annotated = o.ingress("annotated", &host);
        annotated["metadata"]["annotations"][key] = json!(value);
        refused(
            &format!("an Ingress annotated {key}={value}"),
            "annotations",
            create(c, ns, Kind::Ingress, annotated).await,
        );
    }
    let mut fine = o.ingress("fine", &host);
    fine["metadata"]["annotations"][middlewares] = json!(own);
    fine["metadata"]["annotations"]["nginx.ingress.kubernetes.io/limit-rps"] = json!("20");
    create(c, ns, Kind::Ingress, fine)
        .await
        .expect("the sidecar's Ingress, with its own Middleware and a rate limit, passes");

    let mut parent = o.http_route("parent", &host, &gateway);
    parent["spec"]["parentRefs"][0]["name"] = json!("internal");
    refused(
        "an HTTPRoute attached to another Gateway",
        "routes",
        create(c, ns, Kind::HttpRoute, parent).await,
    );
    let mut backend = o.http_route("backend", &host, &gateway);
    backend["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("database");
    refused(
        "an HTTPRoute that publishes the operator's Service",
        "routes",
        create(c, ns, Kind::HttpRoute, backend).await,
    );
    let mut neighbour = o.http_route("neighbour", &host, &gateway);
    neighbour["spec"]["rules"][0]["backendRefs"][0]["name"] =
        json!(super::name_of("runner-1", "x"));
    refused(
        "an HTTPRoute that publishes another pod's Service",
        "routes",
        create(c, ns, Kind::HttpRoute, neighbour).await,
    );
    let filters = [
        json!({"type": "ExtensionRef", "extensionRef": {"group": "traefik.io", "kind": "Middleware", "name": "sso-auth"}}),
        json!({"type": "RequestMirror", "requestMirror": {"backendRef": {"name": o.name("x"), "port": 2080}}}),
    ];
    for filter in filters {
        let mut filtered = o.http_route("filtered", &host, &gateway);
        filtered["spec"]["rules"][0]["filters"] = json!([filter]);
        refused(
            &format!("an HTTPRoute with the filter {filter}"),
            "routes",
            create(c, ns, Kind::HttpRoute, filtered).await,
        );
    }
    let mut fine = o.http_route("fine", &host, &gateway);
    fine["spec"]["rules"][0]["filters"] = json!([{"type": "ExtensionRef", "extensionRef":
        {"group": "traefik.io", "kind": "Middleware", "name": o.name("fine")}}]);
    create(c, ns, Kind::HttpRoute, fine)
        .await
        .expect("the sidecar's HTTPRoute, with its own Middleware, passes");
}

#[tokio::test]
async fn guard_allows_a_wildcard_host_only_as_the_pods_own_route() {
    let g = guarded("guard-wild").await;
    let o = g.objects();
    let c = &g.stolen;
    let ns = &g.ns;
    let gateway = testbed::bed().gateway();
    // A wildcard over the whole domain would catch every host nobody routes (and, with some
    // controllers, shadow other compositions' URLs); one over another pod's label, its URLs.
    for host in [o.host("*"), o.host("*.runner-1")] {
        refused(
            &format!("an Ingress for {host}"),
            "hosts",
            create(c, ns, Kind::Ingress, o.ingress("wild", &host)).await,
        );
        refused(
            &format!("an HTTPRoute for {host}"),
            "hosts",
            create(
                c,
                ns,
                Kind::HttpRoute,
                o.http_route("wild", &host, &gateway),
            )
            .await,
        );
    }
    let mut tls = o.ingress("tls", &o.host("app"));
    tls["spec"]["tls"] = json!([{"hosts": [o.host("*")], "secretName": "wildcard"}]);
    refused(
        "an Ingress whose TLS block names the domain's wildcard",
        "hosts",
        create(c, ns, Kind::Ingress, tls).await,
    );
    let own = o.host("*.runner-0");
    create(c, ns, Kind::Ingress, o.ingress("pod", &own))
        .await
        .expect("the pod scope's route of this pod passes");
}
