//! The composition's Service.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::metadata::metadata;
use crate::model::{AppProtocol, DesiredComposition, OwnerPod, PlanSettings};
use crate::objects::stamp;

/// Traefik's Service annotation: the scheme Traefik's Ingress provider speaks to the backends.
pub(super) const TRAEFIK_SERVERS_SCHEME_ANNOTATION: &str =
    "traefik.ingress.kubernetes.io/service.serversscheme";

/// ClusterIP Service without a selector: its endpoints are the sidecar's own EndpointSlices
/// ([`super::endpoint_slices`]), so that each compose service is routed only while its container is
/// healthy. `targetPort` is the host port dind bound on the pod IP (what kube-proxy uses for the
/// ClusterIP); `port`/`name` are the stable per-(service, container port) values from the plan.
pub(crate) fn service(
    d: &DesiredComposition,
    settings: &PlanSettings,
    owner: &OwnerPod,
) -> Service {
    let mut ports: Vec<ServicePort> = Vec::new();
    for b in &d.backends {
        // One (service, container port) may serve several hosts; it is one Service port.
        if ports
            .iter()
            .any(|p| p.name.as_deref() == Some(b.port_name.as_str()))
        {
            continue;
        }
        ports.push(ServicePort {
            name: Some(b.port_name.clone()),
            port: i32::from(b.service_port),
            target_port: Some(IntOrString::Int(i32::from(b.host_port))),
            protocol: Some("TCP".to_string()),
            app_protocol: b.protocol.map(|p| p.app_protocol().to_string()),
            ..ServicePort::default()
        });
    }
    // Traefik's Ingress provider ignores appProtocol and reads the scheme to the backends from
    // one Service annotation, for every port of the Service: set only when every exposed port
    // of the composition needs the same non-HTTP/1 scheme (docs/policies.md, "Protocols").
    let mut annotations = BTreeMap::new();
    let schemes: BTreeSet<Option<&str>> = d
        .backends
        .iter()
        .map(|b| match b.protocol {
            Some(AppProtocol::H2c | AppProtocol::Grpc) => Some("h2c"),
            Some(AppProtocol::Https) => Some("https"),
            _ => None,
        })
        .collect();
    if let [Some(scheme)] = schemes.into_iter().collect::<Vec<_>>()[..] {
        annotations.insert(
            TRAEFIK_SERVERS_SCHEME_ANNOTATION.to_string(),
            scheme.to_string(),
        );
    }
    stamp(Service {
        metadata: metadata(d.object_name.clone(), &d.name, settings, owner, annotations),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{check_meta, desired, owner};
    use super::*;
    use crate::naming;
    use crate::test_support::settings;

    #[test]
    fn service_ports_and_target_ports() {
        let s = service(&desired(), &settings(), &owner());
        check_meta(&s.metadata);
        assert_eq!(s.metadata.name, Some(desired().object_name));
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.selector, None, "the sidecar writes the endpoints");
        let ports: Vec<_> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| {
                (
                    p.name.unwrap(),
                    p.port,
                    p.target_port.unwrap(),
                    p.protocol.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            vec![
                (
                    naming::port_name("api", 80),
                    3080,
                    IntOrString::Int(32001),
                    "TCP".into()
                ),
                (
                    naming::port_name("web", 80),
                    2080,
                    IntOrString::Int(32000),
                    "TCP".into()
                ),
                (
                    naming::port_name("web", 443),
                    2443,
                    IntOrString::Int(32002),
                    "TCP".into()
                ),
            ]
        );
    }

    #[test]
    fn one_scheme_for_every_port_is_told_to_traefik() {
        let mut d = desired();
        for b in &mut d.backends {
            b.protocol = Some(AppProtocol::H2c);
        }
        let ann = service(&d, &settings(), &owner())
            .metadata
            .annotations
            .unwrap();
        assert_eq!(ann[TRAEFIK_SERVERS_SCHEME_ANNOTATION], "h2c");
        d.backends[0].protocol = Some(AppProtocol::Grpc); // grpc is h2c too
        let ann = service(&d, &settings(), &owner())
            .metadata
            .annotations
            .unwrap();
        assert_eq!(ann[TRAEFIK_SERVERS_SCHEME_ANNOTATION], "h2c");
        d.backends[0].protocol = None; // one HTTP/1 port: no annotation
        let ann = service(&d, &settings(), &owner())
            .metadata
            .annotations
            .unwrap();
        assert!(!ann.contains_key(TRAEFIK_SERVERS_SCHEME_ANNOTATION));
    }
}
