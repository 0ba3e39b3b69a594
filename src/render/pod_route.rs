//! The pod scope's one route (pure): a Service of the sidecar's proxy port, its EndpointSlice
//! and a wildcard Ingress or HTTPRoute `*.<pod>.<domain>`. Rendered as a composition of its own
//! (the proxy is its one "service"), so it is labelled, owned, hashed and written exactly like a
//! composition's objects.

use kube::api::DynamicObject;
use serde_json::json;

use super::endpoints::endpoint_slices;
use super::metadata::metadata;
use super::routes::{ingress, parent_refs};
use super::service::service;
use crate::model::{
    AppProtocol, Backend, DesiredComposition, Health, OwnerPod, PlanSettings, RouteApi, RouteScope,
};
use crate::naming;
use crate::objects::{DesiredObject, EncodeError, Kind, stamp};

/// The composition key of the pod route's objects: no composition is named so (a compose
/// project's name is letters, digits, '-', '_' and '.'), so no composition's pass touches them.
pub(crate) const POD_ROUTE: &str = "@pod-route";

/// The Service ports of the proxy: one for HTTP/1.1 (WebSocket upgrades), one for h2c.
const HTTP_PORT: (&str, u16) = ("http", 80);
const H2C_PORT: (&str, u16) = ("h2c", 81);

/// The content types a gRPC request has: an HTTPRoute sends them to the h2c port.
const GRPC_CONTENT_TYPES: [&str; 2] = ["application/grpc", "application/grpc+proto"];

/// The pod's route as a composition: the hosts `*.<pod>.<domain>` to the proxy's port. In
/// Ingress mode only the port the Ingress uses (Traefik reads one scheme per Service); in
/// Gateway mode both.
pub(crate) fn pod_route_composition(
    settings: &PlanSettings,
    proxy_port: u16,
) -> DesiredComposition {
    let ingress_h2c = matches!(settings.scope, RouteScope::Pod { ingress_h2c: true });
    let ports: &[(&str, u16)] = match settings.route_api {
        RouteApi::Ingress if ingress_h2c => &[H2C_PORT],
        RouteApi::Ingress => &[HTTP_PORT],
        RouteApi::Gateway => &[HTTP_PORT, H2C_PORT],
    };
    let backends = ports
        .iter()
        .map(|(name, port)| Backend {
            service: "proxy".into(),
            container_port: proxy_port,
            host_port: proxy_port,
            port_name: (*name).into(),
            service_port: *port,
            host: format!("*.{}", settings.domain),
            path: "/".into(),
            chosen_host: false,
            protocol: Some(if *name == H2C_PORT.0 {
                AppProtocol::H2c
            } else {
                AppProtocol::Http
            }),
            ready: true,
            health: Health::None,
            class: settings.ingress_class.clone(),
            tls_secret: settings.tls_secret.clone(),
        })
        .collect();
    DesiredComposition {
        name: POD_ROUTE.to_string(),
        object_name: naming::object_name(&settings.pod_name, POD_ROUTE),
        backends,
        rate_limit_rps: None,
        access: None,
    }
}

/// The pod route's objects in write order; nothing outside pod scope.
pub(crate) fn pod_route(
    settings: &PlanSettings,
    owner: &OwnerPod,
    proxy_port: u16,
) -> Result<Vec<DesiredObject>, EncodeError> {
    if settings.scope == RouteScope::Composition {
        return Ok(Vec::new());
    }
    let d = pod_route_composition(settings, proxy_port);
    let mut objects = vec![DesiredObject::new(
        Kind::Service,
        &service(&d, settings, owner),
    )?];
    for slice in endpoint_slices(&d, settings, owner) {
        objects.push(DesiredObject::new(Kind::EndpointSlice, &slice)?);
    }
    match settings.route_api {
        RouteApi::Ingress => objects.push(DesiredObject::new(
            Kind::Ingress,
            &ingress(&d, settings, owner),
        )?),
        RouteApi::Gateway => objects.push(DesiredObject::new(
            Kind::HttpRoute,
            &http_route(&d, settings, owner),
        )?),
    }
    Ok(objects)
}

/// One HTTPRoute: gRPC (by its content type) to the h2c port, everything else to the HTTP/1.1
/// port, so that one pod route carries both gRPC and WebSocket upgrades. Header matches of type
/// Exact are Gateway API's core.
fn http_route(d: &DesiredComposition, settings: &PlanSettings, owner: &OwnerPod) -> DynamicObject {
    let backend =
        |port: u16| json!([{"group": "", "kind": "Service", "name": d.object_name, "port": port}]);
    let grpc_matches: Vec<serde_json::Value> = GRPC_CONTENT_TYPES
        .iter()
        .map(|t| json!({"headers": [{"type": "Exact", "name": "content-type", "value": t}]}))
        .collect();
    let hostnames: Vec<&str> = d.backends.iter().map(|b| b.host.as_str()).take(1).collect();
    let resource = Kind::HttpRoute.resource();
    let mut route = DynamicObject::new(&d.object_name, &resource).data(json!({
        "spec": {
            "parentRefs": parent_refs(settings),
            "hostnames": hostnames,
            "rules": [
                {"matches": grpc_matches, "backendRefs": backend(H2C_PORT.1)},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backend(HTTP_PORT.1)},
            ],
        }
    }));
    route.metadata = metadata(
        d.object_name.clone(),
        &d.name,
        settings,
        owner,
        Default::default(),
    );
    stamp(route)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GatewayRef;
    use crate::test_support::settings;

    fn pod_settings(api: RouteApi, ingress_h2c: bool) -> PlanSettings {
        let mut s = settings();
        s.scope = RouteScope::Pod { ingress_h2c };
        s.domain = format!("runner-3.{}", s.domain);
        s.route_api = api;
        s.gateway = Some(GatewayRef {
            namespace: None,
            name: "public".into(),
            section_name: Some("https".into()),
            https: false,
        });
        s
    }

    fn owner() -> OwnerPod {
        OwnerPod {
            name: "runner-3".into(),
            uid: "uid-3".into(),
        }
    }

    fn value(o: &DesiredObject) -> serde_json::Value {
        serde_json::to_value(&o.object).unwrap()
    }

    #[test]
    fn nothing_in_composition_scope() {
        assert!(pod_route(&settings(), &owner(), 9180).unwrap().is_empty());
    }

    #[test]
    fn ingress_mode_is_one_wildcard_rule_to_the_proxy_port_with_the_pods_certificate() {
        let objects = pod_route(&pod_settings(RouteApi::Ingress, false), &owner(), 9180).unwrap();
        let kinds: Vec<Kind> = objects.iter().map(|o| o.kind).collect();
        assert_eq!(kinds, [Kind::Service, Kind::EndpointSlice, Kind::Ingress]);
        let svc = value(&objects[0]);
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"name": "http", "port": 80, "targetPort": 9180, "protocol": "TCP", "appProtocol": "http"}])
        );
        assert!(
            svc["spec"].get("selector").is_none(),
            "selector-less: {svc}"
        );
        let slice = value(&objects[1]);
        assert_eq!(slice["endpoints"][0]["addresses"], json!(["10.0.0.7"]));
        assert_eq!(slice["ports"][0]["port"], 9180);
        let ing = value(&objects[2]);
        let rule = &ing["spec"]["rules"][0];
        assert_eq!(rule["host"], "*.runner-3.composition.example.com");
        assert_eq!(
            rule["http"]["paths"][0]["backend"]["service"]["port"]["name"],
            "http"
        );
        assert_eq!(
            ing["spec"]["tls"],
            json!([{"hosts": ["*.runner-3.composition.example.com"], "secretName": "wildcard-tls"}])
        );
        assert_eq!(ing["spec"]["ingressClassName"], "public");
        let annotations = ing["metadata"]["annotations"].as_object().unwrap();
        assert!(
            annotations
                .keys()
                .all(|k| k.starts_with("compose-ingress/")),
            "no controller annotation: {annotations:?}"
        );
        assert_eq!(ing["metadata"]["labels"]["compose-ingress/pod"], "runner-3");
        assert_eq!(
            ing["metadata"]["ownerReferences"][0]["uid"], "uid-3",
            "owned by the pod"
        );
    }

    #[test]
    fn ingress_mode_over_h2c_tells_traefik_the_scheme() {
        let objects = pod_route(&pod_settings(RouteApi::Ingress, true), &owner(), 9180).unwrap();
        let svc = value(&objects[0]);
        assert_eq!(svc["spec"]["ports"][0]["name"], "h2c");
        assert_eq!(
            svc["metadata"]["annotations"]["traefik.ingress.kubernetes.io/service.serversscheme"],
            "h2c"
        );
    }

    #[test]
    fn gateway_mode_sends_grpc_to_the_h2c_port_and_the_rest_to_http() {
        let objects = pod_route(&pod_settings(RouteApi::Gateway, false), &owner(), 9180).unwrap();
        let kinds: Vec<Kind> = objects.iter().map(|o| o.kind).collect();
        assert_eq!(kinds, [Kind::Service, Kind::EndpointSlice, Kind::HttpRoute]);
        let svc = value(&objects[0]);
        let ports: Vec<&str> = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(ports, ["http", "h2c"]);
        let route = value(&objects[2]);
        assert_eq!(
            route["spec"]["hostnames"],
            json!(["*.runner-3.composition.example.com"])
        );
        let rules = route["spec"]["rules"].as_array().unwrap();
        assert_eq!(rules[0]["backendRefs"][0]["port"], 81);
        assert_eq!(
            rules[0]["matches"][0]["headers"][0],
            json!({"type": "Exact", "name": "content-type", "value": "application/grpc"})
        );
        assert_eq!(rules[1]["backendRefs"][0]["port"], 80);
        assert_eq!(route["spec"]["parentRefs"][0]["name"], "public");
        assert!(objects.iter().all(|o| o.spec_hash().is_some()));
    }

    #[test]
    fn the_pod_routes_name_is_no_compositions() {
        let s = pod_settings(RouteApi::Ingress, false);
        let ours = pod_route_composition(&s, 9180).object_name;
        for project in ["pod-route", "pod", "proxy", "-pod-route"] {
            assert_ne!(ours, naming::object_name("runner-3", project), "{project}");
        }
    }
}
