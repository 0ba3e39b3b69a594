//! Desired composition -> Kubernetes objects (pure): everything one pass writes and reports for
//! an exposed composition, rendered once from its desired state ([`composition`]): the objects
//! in write order (each with its spec hash), the URLs users get and the services not routed.
//! The apply step (src/reconcile/apply.rs) writes `objects`, the report step reads the rest.
//!
//! Every object is labelled and owned (src/objects.rs) so that the sidecar can find (and only
//! ever touch) its own objects, and Kubernetes' garbage collector removes them with the pod.
//! Nothing from container labels is copied into annotations: only allow-listed keys with values
//! the planner validated. One file per object: service.rs, endpoints.rs, routes.rs (Ingress,
//! HTTPRoute, GRPCRoute), middleware.rs (Traefik), lease.rs; metadata.rs is what they all carry.
//!
//! The host Leases are not in [`Rendered`]: they are claimed before rendering, because a host
//! another pod holds drops its backends, which changes every other object.

mod endpoints;
mod lease;
mod metadata;
mod middleware;
mod pod_route;
mod routes;
mod service;

#[cfg(test)]
mod fixtures;

use std::collections::BTreeSet;

use crate::model::{DesiredComposition, OwnerPod, PlanSettings, RouteApi};
use crate::objects::{DesiredObject, EncodeError, Kind};

use self::endpoints::endpoint_slices;
pub(crate) use self::lease::host_lease;
use self::middleware::rate_limit_middleware;
pub(crate) use self::pod_route::pod_route;
#[cfg(test)]
use self::routes::ingress;
use self::routes::{grpc_routes, http_routes, ingresses};
use self::service::service;

/// What one pass writes and reports for an exposed composition.
#[derive(Debug)]
pub(crate) struct Rendered {
    /// In `Kind` order, the order they are written in: a route never points at a Service or
    /// Middleware that does not exist yet.
    pub(crate) objects: Vec<DesiredObject>,
    /// The hosts the objects serve (their Leases are the ones the composition keeps).
    pub(crate) hosts: BTreeSet<String>,
    /// The URLs users get, sorted: https when the operator configured a TLS secret.
    pub(crate) urls: Vec<String>,
    /// Exposed services whose container's healthcheck does not pass (not routed), with its health.
    pub(crate) not_routed: BTreeSet<(String, &'static str)>,
}

/// Renders `d` once. An error is an object that cannot be encoded (a bug, not user input: the
/// plan has already refused what would not fit in an object).
pub(crate) fn composition(
    d: &DesiredComposition,
    settings: &PlanSettings,
    owner: &OwnerPod,
) -> Result<Rendered, EncodeError> {
    let mut objects = vec![DesiredObject::new(
        Kind::Service,
        &service(d, settings, owner),
    )?];
    for slice in endpoint_slices(d, settings, owner) {
        objects.push(DesiredObject::new(Kind::EndpointSlice, &slice)?);
    }
    if let Some(m) = rate_limit_middleware(d, settings, owner) {
        objects.push(DesiredObject::new(Kind::Middleware, &m)?);
    }
    match settings.route_api {
        RouteApi::Ingress => {
            for i in ingresses(d, settings, owner) {
                objects.push(DesiredObject::new(Kind::Ingress, &i)?);
            }
        }
        RouteApi::Gateway => {
            for r in http_routes(d, settings, owner) {
                objects.push(DesiredObject::new(Kind::HttpRoute, &r)?);
            }
            for r in grpc_routes(d, settings, owner) {
                objects.push(DesiredObject::new(Kind::GrpcRoute, &r)?);
            }
        }
    }
    Ok(Rendered {
        objects,
        hosts: d.backends.iter().map(|b| b.host.clone()).collect(),
        urls: urls_of(d, settings),
        not_routed: not_routed(d),
    })
}

/// The exposed services whose container's healthcheck does not pass (not routed), with their
/// health.
pub(crate) fn not_routed(d: &DesiredComposition) -> BTreeSet<(String, &'static str)> {
    d.backends
        .iter()
        .filter(|b| !b.ready)
        .map(|b| (b.service.clone(), b.health.as_str()))
        .collect()
}

/// The URLs users get: https when the backend's Ingress has a TLS secret (its service's, or
/// the operator's), or when the Gateway's listener serves HTTPS (read from the Gateway at
/// start-up: TLS is the listener's there, and a route's TLS secret means nothing to it).
pub(crate) fn urls_of(d: &DesiredComposition, settings: &PlanSettings) -> Vec<String> {
    let listener_https = settings.gateway.as_ref().is_some_and(|g| g.https);
    let mut urls: Vec<String> = d
        .backends
        .iter()
        .map(|b| {
            let https = match settings.route_api {
                RouteApi::Ingress => b.tls_secret.is_some(),
                RouteApi::Gateway => listener_https,
            };
            let scheme = if https { "https" } else { "http" };
            format!("{scheme}://{}{}", b.host, b.path)
        })
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, GatewayRef, Health};
    use crate::naming;
    use crate::objects::{Kind, SPEC_HASH_ANNOTATION, spec_hash, spec_hash_of, stamp};
    use crate::test_support::settings;

    fn owner() -> OwnerPod {
        OwnerPod {
            name: "runner-0".into(),
            uid: "uid-0".into(),
        }
    }

    fn backend(service: &str, host: &str, path: &str, ready: bool, health: Health) -> Backend {
        Backend {
            service: service.into(),
            container_port: 80,
            host_port: 32000,
            port_name: naming::port_name(service, 80),
            service_port: 2080,
            host: host.into(),
            path: path.into(),
            chosen_host: false,
            protocol: None,
            ready,
            health,
            class: None,
            tls_secret: None,
        }
    }

    fn desired(tls: bool) -> DesiredComposition {
        let mut d = DesiredComposition {
            name: "shop".into(),
            object_name: naming::object_name("runner-0", "shop"),
            backends: vec![
                backend(
                    "api",
                    "a.composition.example.com",
                    "/api",
                    false,
                    Health::Starting,
                ),
                backend(
                    "web",
                    "a.composition.example.com",
                    "/",
                    true,
                    Health::Healthy,
                ),
                backend("web", "b.composition.example.com", "/", true, Health::None),
            ],
            access: None,
            rate_limit_rps: Some(5),
        };
        for b in &mut d.backends {
            b.tls_secret = tls.then(|| "wildcard".to_string());
        }
        d
    }

    #[test]
    fn objects_come_in_write_order_each_with_its_spec_hash() {
        let mut s = settings();
        s.rate_limit = crate::model::RateLimitMode::TraefikMiddleware;
        let r = composition(&desired(false), &s, &owner()).expect("render");
        let kinds: Vec<Kind> = r.objects.iter().map(|o| o.kind).collect();
        assert!(kinds.is_sorted(), "{kinds:?}");
        let mut each = kinds.clone();
        each.dedup();
        assert_eq!(
            each,
            [
                Kind::Service,
                Kind::EndpointSlice,
                Kind::Middleware,
                Kind::Ingress
            ]
        );
        // One slice per service (api, web).
        assert_eq!(
            kinds.iter().filter(|k| **k == Kind::EndpointSlice).count(),
            2
        );
        assert!(r.objects.iter().all(|o| o.spec_hash().is_some()));
        let hosts: Vec<&str> = r.hosts.iter().map(String::as_str).collect();
        assert_eq!(
            hosts,
            ["a.composition.example.com", "b.composition.example.com"]
        );
    }

    #[test]
    fn urls_are_https_only_with_tls_on_an_ingress_and_not_routed_names_the_unhealthy() {
        let s = settings();
        let plain = composition(&desired(false), &s, &owner()).expect("render");
        assert_eq!(
            plain.urls,
            [
                "http://a.composition.example.com/",
                "http://a.composition.example.com/api",
                "http://b.composition.example.com/",
            ]
        );
        let tls = composition(&desired(true), &s, &owner()).expect("render");
        assert!(
            tls.urls.iter().all(|u| u.starts_with("https://")),
            "{:?}",
            tls.urls
        );
        let mut gateway = settings();
        gateway.route_api = RouteApi::Gateway;
        let gw = composition(&desired(true), &gateway, &owner()).expect("render");
        assert!(
            gw.urls.iter().all(|u| u.starts_with("http://")),
            "{:?}",
            gw.urls
        );
        // The listener's scheme, whatever the composition's TLS secret.
        gateway.gateway = Some(GatewayRef {
            namespace: None,
            name: "public".into(),
            section_name: Some("https".into()),
            https: true,
        });
        for tls in [false, true] {
            let gw = composition(&desired(tls), &gateway, &owner()).expect("render");
            assert!(
                gw.urls.iter().all(|u| u.starts_with("https://")),
                "{:?}",
                gw.urls
            );
        }
        assert_eq!(
            plain.not_routed.into_iter().collect::<Vec<_>>(),
            [("api".to_string(), "starting")]
        );
    }

    #[test]
    fn spec_hash_is_stable_and_tracks_changes() {
        let a = ingress(&fixtures::desired(), &settings(), &fixtures::owner());
        let b = ingress(&fixtures::desired(), &settings(), &fixtures::owner());
        assert_eq!(spec_hash_of(&a), spec_hash_of(&b));
        let mut d = fixtures::desired();
        d.backends[0].host_port = 40000;
        // a new host port changes the Service but not the Ingress
        assert_eq!(
            spec_hash_of(&ingress(&d, &settings(), &fixtures::owner())),
            spec_hash_of(&a)
        );
        assert_ne!(
            spec_hash_of(&service(&d, &settings(), &fixtures::owner())),
            spec_hash_of(&service(
                &fixtures::desired(),
                &settings(),
                &fixtures::owner()
            ))
        );
        // the hash is over the object without the hash annotation
        let mut stripped = a.clone();
        stripped
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(SPEC_HASH_ANNOTATION);
        assert_eq!(spec_hash_of(&a), Some(spec_hash(&stripped).as_str()));
        assert_eq!(spec_hash_of(&stamp(a.clone())), spec_hash_of(&a));
    }
}
