//! Everything one pass writes and reports for an exposed composition, rendered once from its
//! desired state: the objects in apply order (each with its spec hash), the URLs users get and
//! the services not routed. Pure: the apply step writes `objects`, the report step reads the rest.
//!
//! The host Leases are not here: they are claimed before rendering, because a host another pod
//! holds drops its backends, which changes every other object.

use std::collections::BTreeSet;

use crate::cluster::{ClusterError, DesiredObject, Kind};
use crate::model::{DesiredComposition, OwnerPod, PlanSettings, RouteApi};
use crate::render;

#[derive(Debug)]
pub struct Rendered {
    /// In `Kind` order, the order they are written in: a route never points at a Service or
    /// Middleware that does not exist yet.
    pub objects: Vec<DesiredObject>,
    /// The hosts the objects serve (their Leases are the ones the composition keeps).
    pub hosts: BTreeSet<String>,
    /// The URLs users get, sorted: https when the operator configured a TLS secret.
    pub urls: Vec<String>,
    /// Exposed services whose container's healthcheck does not pass (not routed), with its health.
    pub not_routed: BTreeSet<(String, &'static str)>,
}

/// Renders `d` once. An error is an object that cannot be encoded (a bug, not user input: the
/// plan has already refused what would not fit in an object).
pub fn render(
    d: &DesiredComposition,
    settings: &PlanSettings,
    owner: &OwnerPod,
) -> Result<Rendered, ClusterError> {
    let mut objects = vec![DesiredObject::new(
        Kind::Service,
        &render::service(d, settings, owner),
    )?];
    for slice in render::endpoint_slices(d, settings, owner) {
        objects.push(DesiredObject::new(Kind::EndpointSlice, &slice)?);
    }
    if let Some(m) = render::rate_limit_middleware(d, settings, owner) {
        objects.push(DesiredObject::new(Kind::Middleware, &m)?);
    }
    match settings.route_api {
        RouteApi::Ingress => objects.push(DesiredObject::new(
            Kind::Ingress,
            &render::ingress(d, settings, owner),
        )?),
        RouteApi::Gateway => {
            for r in render::http_routes(d, settings, owner) {
                objects.push(DesiredObject::new(Kind::HttpRoute, &r)?);
            }
            for r in render::grpc_routes(d, settings, owner) {
                objects.push(DesiredObject::new(Kind::GrpcRoute, &r)?);
            }
        }
    }
    Ok(Rendered {
        objects,
        hosts: d.backends.iter().map(|b| b.host.clone()).collect(),
        urls: urls_of(d, settings),
        not_routed: d
            .backends
            .iter()
            .filter(|b| !b.ready)
            .map(|b| (b.service.clone(), b.health.as_str()))
            .collect(),
    })
}

/// The URLs users get: https when the operator configured a TLS secret (Ingress only: a
/// Gateway's listener decides its own scheme).
fn urls_of(d: &DesiredComposition, settings: &PlanSettings) -> Vec<String> {
    let scheme = if d.tls_secret.is_some() && settings.route_api == RouteApi::Ingress {
        "https"
    } else {
        "http"
    };
    let mut urls: Vec<String> = d
        .backends
        .iter()
        .map(|b| format!("{scheme}://{}{}", b.host, b.path))
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::tests::settings;
    use crate::model::{Backend, Health};
    use crate::naming;

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
        }
    }

    fn desired(tls: bool) -> DesiredComposition {
        DesiredComposition {
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
            class: None,
            access: None,
            rate_limit_rps: Some(5),
            tls_secret: tls.then(|| "wildcard".to_string()),
        }
    }

    #[test]
    fn objects_come_in_write_order_each_with_its_spec_hash() {
        let mut s = settings();
        s.rate_limit = crate::model::RateLimitMode::TraefikMiddleware;
        let r = render(&desired(false), &s, &owner()).expect("render");
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
        let plain = render(&desired(false), &s, &owner()).expect("render");
        assert_eq!(
            plain.urls,
            [
                "http://a.composition.example.com/",
                "http://a.composition.example.com/api",
                "http://b.composition.example.com/",
            ]
        );
        let tls = render(&desired(true), &s, &owner()).expect("render");
        assert!(
            tls.urls.iter().all(|u| u.starts_with("https://")),
            "{:?}",
            tls.urls
        );
        let mut gateway = settings();
        gateway.route_api = RouteApi::Gateway;
        let gw = render(&desired(true), &gateway, &owner()).expect("render");
        assert!(
            gw.urls.iter().all(|u| u.starts_with("http://")),
            "{:?}",
            gw.urls
        );
        assert_eq!(
            plain.not_routed.into_iter().collect::<Vec<_>>(),
            [("api".to_string(), "starting")]
        );
    }
}
