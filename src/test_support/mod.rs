//! What the tests share: the plan settings most tests start from, and (unit tests only) the
//! mock Kubernetes API. `settings` is public (hidden from the docs) because the property tests
//! (tests/prop_naming_labels.rs) are an integration target and see only the public API.

use crate::model::{AccessPolicies, PlanSettings, RateLimitMode, RouteApi, RouteScope};

#[cfg(test)]
pub(crate) mod mock_api;

/// Settings of runner pod `runner-3` in namespace `ci` under `composition.example.com`: Ingress
/// output with class `public` (`heavy` allowed too), a wildcard TLS secret, a rate limit of
/// 100/s in annotation mode, opt-in exposure, the pod's IP 10.0.0.7.
pub fn settings() -> PlanSettings {
    PlanSettings {
        domain: "composition.example.com".into(),
        host_template: "{service}-{port}-{project}-{pod}".into(),
        pod_name: "runner-3".into(),
        namespace: "ci".into(),
        route_api: RouteApi::Ingress,
        ingress_class: Some("public".into()),
        allowed_classes: vec!["public".into(), "heavy".into()],
        tls_secret: Some("wildcard-tls".into()),
        allowed_tls_secrets: vec!["wildcard-tls".into(), "other-tls".into()],
        gateway: None,
        default_rps: Some(100),
        max_rps: Some(100),
        rate_limit: RateLimitMode::Annotation("example.com/rps".into()),
        access: AccessPolicies::public_only(),
        expose_by_default: false,
        expose_plain_containers: false,
        pod_ip: Some(std::net::Ipv4Addr::new(10, 0, 0, 7)),
        max_ports_per_composition: 20,
        max_hosts_per_pod: 200,
        scope: RouteScope::Composition,
        max_exposure: None,
    }
}
