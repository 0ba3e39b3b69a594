//! The composition's Traefik Middlewares: its rate-limit Middleware, and the names its routes
//! reference (the rate limit's, then its access policy's).

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use serde_json::json;

use super::metadata::metadata;
use crate::model::{DesiredComposition, OwnerPod, PlanSettings, RateLimitMode};
use crate::objects::{Kind, stamp};

/// The Traefik Middlewares of the composition's routes, in order: its rate limit, then its
/// access policy's.
pub(super) fn traefik_middlewares<'a>(
    d: &'a DesiredComposition,
    settings: &'a PlanSettings,
) -> Vec<&'a str> {
    rate_limit_middleware_name(d, settings)
        .into_iter()
        .chain(
            settings
                .access
                .named(d.access.as_deref())
                .into_iter()
                .flat_map(|p| p.traefik_middlewares.iter().map(String::as_str)),
        )
        .collect()
}

/// The name of the composition's rate-limit Middleware, when it has one.
fn rate_limit_middleware_name<'a>(
    d: &'a DesiredComposition,
    settings: &PlanSettings,
) -> Option<&'a str> {
    (settings.rate_limit == RateLimitMode::TraefikMiddleware && d.rate_limit_rps.is_some())
        .then_some(d.object_name.as_str())
}

/// The composition's Traefik rate-limit Middleware (`traefik-middleware` mode, when the
/// composition has a limit).
///
/// `average` requests per `period` (1 s), with a `burst` of one second's worth so that a page
/// load's parallel requests pass. `sourceCriterion.requestHost` puts every client of a host in
/// one bucket: the limit protects the shared controller from the composition, whoever calls it
/// (Traefik's default, one bucket per client IP, would let many clients multiply it). Traefik
/// keeps one limiter per router, i.e. per host and path of the composition: a composition
/// exposing k URLs gets at most k times the limit in total.
pub(super) fn rate_limit_middleware(
    d: &DesiredComposition,
    settings: &PlanSettings,
    owner: &OwnerPod,
) -> Option<DynamicObject> {
    let name = rate_limit_middleware_name(d, settings)?;
    let rps = d.rate_limit_rps?;
    let mut obj = DynamicObject::new(name, &Kind::Middleware.resource()).data(json!({
        "spec": {
            "rateLimit": {
                "average": rps,
                "period": "1s",
                "burst": rps,
                "sourceCriterion": {"requestHost": true},
            }
        }
    }));
    obj.metadata = metadata(name.to_string(), &d.name, settings, owner, BTreeMap::new());
    Some(stamp(obj))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::{desired, owner, traefik_settings};
    use super::*;
    use crate::model::RouteApi;
    use crate::objects::TRAEFIK_MIDDLEWARES_ANNOTATION;
    use crate::render::{http_routes, ingress};
    use crate::test_support::settings;

    #[test]
    fn traefik_mode_renders_one_rate_limit_middleware_and_references_it() {
        let s = traefik_settings();
        let d = desired();
        let m = rate_limit_middleware(&d, &s, &owner()).expect("a Middleware");
        assert_eq!(m.metadata.name.as_deref(), Some(d.object_name.as_str()));
        assert_eq!(m.metadata.namespace.as_deref(), Some("ci"));
        assert_eq!(
            m.data["spec"]["rateLimit"],
            json!({"average": 20, "period": "1s", "burst": 20, "sourceCriterion": {"requestHost": true}})
        );
        let ann = ingress(&d, &s, &owner()).metadata.annotations.unwrap();
        assert_eq!(
            ann[TRAEFIK_MIDDLEWARES_ANNOTATION],
            format!("ci-{}@kubernetescrd", d.object_name)
        );
        assert!(!ann.contains_key("example.com/rps"), "{ann:?}");
        let mut gw = s.clone();
        gw.route_api = RouteApi::Gateway;
        for r in http_routes(&d, &gw, &owner()) {
            for rule in r.data["spec"]["rules"].as_array().unwrap() {
                assert_eq!(
                    rule["filters"],
                    json!([{"type": "ExtensionRef", "extensionRef": {
                        "group": "traefik.io", "kind": "Middleware", "name": d.object_name}}])
                );
            }
        }
    }

    #[test]
    fn no_limit_no_middleware_and_no_reference() {
        let s = traefik_settings();
        let mut d = desired();
        d.rate_limit_rps = None;
        assert!(rate_limit_middleware(&d, &s, &owner()).is_none());
        let ann = ingress(&d, &s, &owner()).metadata.annotations.unwrap();
        assert!(!ann.contains_key(TRAEFIK_MIDDLEWARES_ANNOTATION));
        let mut gw = s.clone();
        gw.route_api = RouteApi::Gateway;
        for r in http_routes(&d, &gw, &owner()) {
            for rule in r.data["spec"]["rules"].as_array().unwrap() {
                assert!(rule.get("filters").is_none(), "{rule}");
            }
        }
        // annotation mode renders no Middleware even with a limit
        assert!(rate_limit_middleware(&desired(), &settings(), &owner()).is_none());
    }
}
