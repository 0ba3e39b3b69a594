//! The composition's EndpointSlices: health-gated routing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};

use super::metadata::metadata;
use crate::model::{Backend, DesiredComposition, OwnerPod, PlanSettings};
use crate::naming;
use crate::objects::stamp;

/// The label that ties an EndpointSlice to its Service.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Who manages an EndpointSlice; anything but the EndpointSlice controller's own value keeps
/// that controller away from it.
pub(super) const ENDPOINT_SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub(super) const ENDPOINT_SLICE_MANAGED_BY_VALUE: &str = "compose-ingress.io";

/// One EndpointSlice per compose service of the composition: the pod's IP, the service's ports
/// (named like the Service's, numbered by the host ports dind bound), and one endpoint whose
/// `ready`/`serving` conditions say whether the service gets traffic (health-gated routing). A
/// container turning healthy or unhealthy changes only its slice: the Service and the route stay
/// as they are, so controllers that reload on route changes do not reload on a health flap.
/// Nothing without the pod's IP (the sidecar reads it at start-up, before any pass).
pub(super) fn endpoint_slices(
    d: &DesiredComposition,
    settings: &PlanSettings,
    owner: &OwnerPod,
) -> Vec<EndpointSlice> {
    let Some(pod_ip) = settings.pod_ip else {
        return Vec::new();
    };
    let mut services: BTreeMap<&str, Vec<&Backend>> = BTreeMap::new();
    for b in &d.backends {
        services.entry(b.service.as_str()).or_default().push(b);
    }
    services
        .into_iter()
        .map(|(service, backends)| {
            let mut ports: Vec<EndpointPort> = Vec::new();
            for b in &backends {
                if ports
                    .iter()
                    .any(|p| p.name.as_deref() == Some(&b.port_name))
                {
                    continue;
                }
                ports.push(EndpointPort {
                    name: Some(b.port_name.clone()),
                    port: Some(i32::from(b.host_port)),
                    protocol: Some("TCP".to_string()),
                    app_protocol: b.protocol.map(|p| p.app_protocol().to_string()),
                });
            }
            let ready = backends.iter().all(|b| b.ready);
            let mut meta = metadata(
                endpoint_slice_name(&d.object_name, service),
                &d.name,
                settings,
                owner,
                BTreeMap::new(),
            );
            let labels = meta.labels.get_or_insert_with(BTreeMap::new);
            labels.insert(SERVICE_NAME_LABEL.to_string(), d.object_name.clone());
            labels.insert(
                ENDPOINT_SLICE_MANAGED_BY_LABEL.to_string(),
                ENDPOINT_SLICE_MANAGED_BY_VALUE.to_string(),
            );
            stamp(EndpointSlice {
                metadata: meta,
                address_type: "IPv4".to_string(),
                endpoints: Some(vec![Endpoint {
                    addresses: vec![pod_ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(ready),
                        terminating: Some(false),
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".to_string()),
                        namespace: Some(settings.namespace.clone()),
                        name: Some(owner.name.clone()),
                        uid: Some(owner.uid.clone()),
                        ..ObjectReference::default()
                    }),
                    ..Endpoint::default()
                }]),
                ports: Some(ports),
            })
        })
        .collect()
}

/// `<object name>-<hash of the compose service>`: stable, unique in the composition, and a valid
/// name whatever the service is called.
pub(super) fn endpoint_slice_name(object_name: &str, service: &str) -> String {
    format!("{object_name}-{}", naming::short_hash(service))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{check_meta, desired, owner};
    use super::*;
    use crate::objects::{ownership_labels, spec_hash_of};
    use crate::render::{ingress, service};
    use crate::test_support::settings;

    #[test]
    fn one_endpoint_slice_per_service_ready_while_healthy() {
        let mut d = desired();
        for b in d.backends.iter_mut().filter(|b| b.service == "api") {
            b.ready = false;
            b.health = crate::model::Health::Starting;
        }
        let slices = endpoint_slices(&d, &settings(), &owner());
        let view: Vec<_> = slices
            .iter()
            .map(|s| {
                let mut meta = s.metadata.clone();
                let labels = meta.labels.clone().unwrap();
                meta.labels = Some(ownership_labels("runner-3", "Demo_Chat"));
                check_meta(&meta);
                assert_eq!(labels[SERVICE_NAME_LABEL], d.object_name);
                assert_eq!(
                    labels[ENDPOINT_SLICE_MANAGED_BY_LABEL],
                    "compose-ingress.io"
                );
                let endpoints = s.endpoints.clone().unwrap();
                assert_eq!(endpoints.len(), 1);
                let e = &endpoints[0];
                assert_eq!(e.addresses, ["10.0.0.7"]);
                let target = e.target_ref.clone().unwrap();
                assert_eq!(
                    (target.kind.unwrap(), target.uid.unwrap()),
                    ("Pod".into(), "uid-123".into())
                );
                let c = e.conditions.clone().unwrap();
                assert_eq!(c.ready, c.serving);
                let ports: Vec<(String, i32)> = s
                    .ports
                    .clone()
                    .unwrap()
                    .into_iter()
                    .map(|p| (p.name.unwrap(), p.port.unwrap()))
                    .collect();
                (s.metadata.name.clone().unwrap(), c.ready.unwrap(), ports)
            })
            .collect();
        assert_eq!(
            view,
            vec![
                (
                    endpoint_slice_name(&d.object_name, "api"),
                    false,
                    vec![(naming::port_name("api", 80), 32001)]
                ),
                (
                    endpoint_slice_name(&d.object_name, "web"),
                    true,
                    vec![
                        (naming::port_name("web", 80), 32000),
                        (naming::port_name("web", 443), 32002)
                    ]
                ),
            ]
        );
        // A health flap changes the slice, never the Service or the Ingress.
        let healthy = desired();
        assert_eq!(
            spec_hash_of(&service(&d, &settings(), &owner())),
            spec_hash_of(&service(&healthy, &settings(), &owner()))
        );
        assert_eq!(
            spec_hash_of(&ingress(&d, &settings(), &owner())),
            spec_hash_of(&ingress(&healthy, &settings(), &owner()))
        );
        assert_ne!(
            spec_hash_of(&slices[0]),
            spec_hash_of(&endpoint_slices(&healthy, &settings(), &owner())[0])
        );
        let no_ip = PlanSettings {
            pod_ip: None,
            ..settings()
        };
        assert!(endpoint_slices(&d, &no_ip, &owner()).is_empty());
    }
}
