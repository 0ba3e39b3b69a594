//! The composition's route objects: an Ingress per class and TLS secret of its services, or
//! (Gateway API) one HTTPRoute and one GRPCRoute per host.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use kube::api::DynamicObject;
use serde_json::json;

use super::metadata::metadata;
use super::middleware::traefik_middlewares;
use crate::model::{
    AppProtocol, Backend, DesiredComposition, GRPC_FILTER_TYPES, OwnerPod, PlanSettings,
    RateLimitMode,
};
use crate::naming;
use crate::objects::{
    GATEWAY_GROUP, HOST_ANNOTATION, Kind, MIDDLEWARE_KIND, TRAEFIK_GROUP,
    TRAEFIK_MIDDLEWARES_ANNOTATION, stamp,
};

/// Backends grouped by host, paths sorted: one Ingress rule / one HTTPRoute per host.
fn by_host(d: &DesiredComposition) -> BTreeMap<&str, Vec<&Backend>> {
    let mut hosts: BTreeMap<&str, Vec<&Backend>> = BTreeMap::new();
    for b in &d.backends {
        hosts.entry(b.host.as_str()).or_default().push(b);
    }
    for backends in hosts.values_mut() {
        backends.sort_by(|a, b| (&a.path, &a.service).cmp(&(&b.path, &b.service)));
    }
    hosts
}

/// The composition's Ingresses: one per (class, TLS secret) of its backends, since both are per
/// service (as in kompose) and an Ingress has one of each. One Ingress is named like the
/// Service (as before per-service classes: no rename for any composition of one class); of
/// several, the one of the operator's class and secret keeps that name and each other gets the
/// hash of its class and secret as a suffix, so that a service coming or going renames nothing.
pub(super) fn ingresses(
    d: &DesiredComposition,
    settings: &PlanSettings,
    owner: &OwnerPod,
) -> Vec<Ingress> {
    let mut groups: BTreeMap<(Option<&str>, Option<&str>), Vec<Backend>> = BTreeMap::new();
    for b in &d.backends {
        groups
            .entry((b.class.as_deref(), b.tls_secret.as_deref()))
            .or_default()
            .push(b.clone());
    }
    let default = (
        settings.ingress_class.as_deref(),
        settings.tls_secret.as_deref(),
    );
    let single = groups.len() == 1;
    groups
        .into_iter()
        .map(|((class, tls), backends)| {
            let name = if single || (class, tls) == default {
                d.object_name.clone()
            } else {
                format!(
                    "{}-{}",
                    d.object_name,
                    naming::short_hash(&format!(
                        "{}\n{}",
                        class.unwrap_or_default(),
                        tls.unwrap_or_default()
                    ))
                )
            };
            let part = DesiredComposition {
                backends,
                ..d.clone()
            };
            ingress_named(&part, name, settings, owner)
        })
        .collect()
}

/// One Ingress of the composition's backends, named like the Service, of the first backend's
/// class and secret (the pod's route; [`ingresses`] for a composition's, whose services may
/// differ).
pub(super) fn ingress(
    d: &DesiredComposition,
    settings: &PlanSettings,
    owner: &OwnerPod,
) -> Ingress {
    ingress_named(d, d.object_name.clone(), settings, owner)
}

/// One Ingress, one rule per host, of the class and TLS secret of `d`'s backends (one of each:
/// [`ingresses`] groups them). Backends reference the Service port by *name*, so a new host
/// port after a container restart changes only the Service (an endpoint update) and never the
/// Ingress (a full reload in some controllers).
fn ingress_named(
    d: &DesiredComposition,
    name: String,
    settings: &PlanSettings,
    owner: &OwnerPod,
) -> Ingress {
    let class = d.backends.first().and_then(|b| b.class.clone());
    let tls_secret = d.backends.first().and_then(|b| b.tls_secret.clone());
    let hosts = by_host(d);
    let rules: Vec<IngressRule> = hosts
        .iter()
        .map(|(host, backends)| IngressRule {
            host: Some((*host).to_string()),
            http: Some(HTTPIngressRuleValue {
                paths: backends
                    .iter()
                    .map(|b| HTTPIngressPath {
                        path: Some(b.path.clone()),
                        path_type: "Prefix".to_string(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: d.object_name.clone(),
                                port: Some(ServiceBackendPort {
                                    name: Some(b.port_name.clone()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    })
                    .collect(),
            }),
        })
        .collect();
    let tls = tls_secret.as_ref().map(|secret| {
        vec![IngressTLS {
            hosts: Some(hosts.keys().map(|h| (*h).to_string()).collect()),
            secret_name: Some(secret.clone()),
        }]
    });
    let mut annotations = BTreeMap::new();
    let policy = settings.access.named(d.access.as_deref());
    if let Some(p) = policy {
        // Operator text from the policy file (validated at start-up), never a label's. First,
        // so that the rate limit below always wins over a policy annotation of the same key.
        for (k, v) in &p.ingress_annotations {
            annotations.insert(k.clone(), v.clone());
        }
    }
    if let (RateLimitMode::Annotation(key), Some(rps)) = (&settings.rate_limit, d.rate_limit_rps)
        && !key.is_empty()
    {
        annotations.insert(key.clone(), rps.to_string());
    }
    // Traefik names a Middleware of its CRD provider `<namespace>-<name>@kubernetescrd`; the
    // rate limit comes first, so that it also shields an authentication backend.
    let middlewares: Vec<String> = traefik_middlewares(d, settings)
        .iter()
        .map(|m| format!("{}-{m}@kubernetescrd", settings.namespace))
        .collect();
    if !middlewares.is_empty() {
        annotations.insert(
            TRAEFIK_MIDDLEWARES_ANNOTATION.to_string(),
            middlewares.join(","),
        );
    }
    stamp(Ingress {
        metadata: metadata(name, &d.name, settings, owner, annotations),
        spec: Some(IngressSpec {
            ingress_class_name: class,
            rules: Some(rules),
            tls,
            default_backend: None,
        }),
        status: None,
    })
}

/// Name of the HTTPRoute for one host of a composition (≤ 72 chars; route names are DNS
/// subdomains, up to 253).
pub(super) fn http_route_name(object_name: &str, host: &str) -> String {
    format!("{object_name}-{}", naming::short_hash(host))
}

/// HTTPRoutes for a composition: **one per host**.
///
/// In Gateway API `hostnames` belong to the whole HTTPRoute (`spec.hostnames`), not to a rule,
/// and a rule matches only on path, headers, query parameters and method. One route holding all
/// hosts would therefore route *every* host to *every* rule, i.e. `a.example.com/` could reach
/// service b. Matching the `Host` header in a rule's `headers` is not a portable substitute:
/// the spec defines host matching only through `hostnames` (and HTTP/2 carries `:authority`, not
/// `Host`; some implementations, e.g. Go-based proxies, never see a `Host` header at all). So
/// each host gets its own HTTPRoute with `hostnames: [host]` and one rule per path, each
/// `PathPrefix`-matched to `backendRefs: [{name: <Service>, port: <service port>}]`.
/// (Gateway API backendRefs take a port *number*; that number is stable per (service, container
/// port), so a new host port still changes only the Service.) All routes share the composition's
/// ownership labels, so listing by project finds stale ones.
///
/// Gateway API has no standard rate-limit field: in `traefik-middleware` mode every rule carries
/// an `ExtensionRef` filter to the composition's Middleware; in `annotation` mode the limit is
/// not rendered here. The access policy's Traefik Middlewares (as `ExtensionRef`s) and Gateway
/// API filters follow on every rule.
pub(super) fn http_routes(
    d: &DesiredComposition,
    settings: &PlanSettings,
    owner: &OwnerPod,
) -> Vec<DynamicObject> {
    gateway_routes(d, settings, owner, false)
}

/// GRPCRoutes for the composition's `grpc` ports, one per host like [`http_routes`] (whose
/// HTTPRoutes then leave those ports out): a GRPCRoute matches gRPC services and methods, not
/// paths, so its rules have no matches. Only the filter types GRPCRoute knows are carried over
/// from the access policy.
pub(super) fn grpc_routes(
    d: &DesiredComposition,
    settings: &PlanSettings,
    owner: &OwnerPod,
) -> Vec<DynamicObject> {
    gateway_routes(d, settings, owner, true)
}

/// The Gateway the routes attach to (`--gateway`), as `parentRefs`.
pub(super) fn parent_refs(settings: &PlanSettings) -> Vec<serde_json::Value> {
    settings
        .gateway
        .iter()
        .map(|g| {
            let mut r = serde_json::Map::new();
            r.insert("group".into(), json!(GATEWAY_GROUP));
            r.insert("kind".into(), json!("Gateway"));
            r.insert("name".into(), json!(g.name));
            if let Some(ns) = &g.namespace {
                r.insert("namespace".into(), json!(ns));
            }
            if let Some(section) = &g.section_name {
                r.insert("sectionName".into(), json!(section));
            }
            serde_json::Value::Object(r)
        })
        .collect()
}

fn gateway_routes(
    d: &DesiredComposition,
    settings: &PlanSettings,
    owner: &OwnerPod,
    grpc: bool,
) -> Vec<DynamicObject> {
    let resource = if grpc {
        Kind::GrpcRoute.resource()
    } else {
        Kind::HttpRoute.resource()
    };
    let parent_refs = parent_refs(settings);
    let mut filters: Vec<serde_json::Value> = traefik_middlewares(d, settings)
        .into_iter()
        .map(|name| {
            json!({
                "type": "ExtensionRef",
                "extensionRef": {"group": TRAEFIK_GROUP, "kind": MIDDLEWARE_KIND, "name": name},
            })
        })
        .collect();
    if let Some(p) = settings.access.named(d.access.as_deref()) {
        filters.extend(p.http_route_filters.iter().cloned());
    }
    if grpc {
        filters.retain(|f| {
            f["type"]
                .as_str()
                .is_some_and(|t| GRPC_FILTER_TYPES.contains(&t))
        });
    }
    by_host(d)
        .into_iter()
        .filter_map(|(host, backends)| {
            let rules: Vec<serde_json::Value> = backends
                .iter()
                .filter(|b| (b.protocol == Some(AppProtocol::Grpc)) == grpc)
                .map(|b| {
                    let backend_refs = json!([{
                        "group": "",
                        "kind": "Service",
                        "name": d.object_name,
                        "port": b.service_port,
                    }]);
                    let mut rule = if grpc {
                        json!({"backendRefs": backend_refs})
                    } else {
                        json!({
                            "matches": [{"path": {"type": "PathPrefix", "value": b.path}}],
                            "backendRefs": backend_refs,
                        })
                    };
                    if !filters.is_empty() {
                        rule["filters"] = json!(filters);
                    }
                    rule
                })
                .collect();
            if rules.is_empty() {
                return None;
            }
            let name = http_route_name(&d.object_name, host);
            let mut obj = DynamicObject::new(&name, &resource).data(json!({
                "spec": {
                    "parentRefs": parent_refs,
                    "hostnames": [host],
                    "rules": rules,
                }
            }));
            obj.metadata = metadata(
                name,
                &d.name,
                settings,
                owner,
                BTreeMap::from([(HOST_ANNOTATION.to_string(), host.to_string())]),
            );
            Some(stamp(obj))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::{check_meta, desired, owner, traefik_settings};
    use super::*;
    use crate::model::{GatewayRef, RouteApi};
    use crate::objects::{PROJECT_NAME_ANNOTATION, SPEC_HASH_ANNOTATION, spec_hash_of};
    use crate::render::service;
    use crate::render::service::TRAEFIK_SERVERS_SCHEME_ANNOTATION;
    use crate::test_support::settings;

    fn policy_settings() -> PlanSettings {
        let mut s = traefik_settings();
        s.access = crate::policy::parse(
            "default: sso\npolicies:\n  sso:\n    traefikMiddlewares: [sso-auth, office]\n    \
             ingressAnnotations: {example.org/auth: sso}\n    \
             httpRouteFilters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Policy, value: sso}]}}]\n",
        )
        .unwrap();
        s
    }

    #[test]
    fn ingress_rules_by_host_and_port_name() {
        let i = ingress(&desired(), &settings(), &owner());
        check_meta(&i.metadata);
        let spec = i.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("public"));
        let rules = spec.rules.unwrap();
        let hosts: Vec<_> = rules.iter().map(|r| r.host.clone().unwrap()).collect();
        assert_eq!(
            hosts,
            vec![
                "chat.composition.example.com",
                "web-443.composition.example.com",
                "www.composition.example.com"
            ]
        );
        let chat = &rules[0].http.as_ref().unwrap().paths;
        assert_eq!(chat.len(), 2);
        assert_eq!(chat[0].path.as_deref(), Some("/"));
        assert_eq!(chat[0].path_type, "Prefix");
        let svc = chat[0].backend.service.as_ref().unwrap();
        assert_eq!(svc.name, desired().object_name);
        assert_eq!(
            svc.port,
            Some(ServiceBackendPort {
                name: Some(naming::port_name("web", 80)),
                number: None
            })
        );
        assert_eq!(chat[1].path.as_deref(), Some("/api"));
        let tls = spec.tls.unwrap();
        assert_eq!(tls.len(), 1);
        assert_eq!(tls[0].secret_name.as_deref(), Some("wildcard-tls"));
        assert_eq!(tls[0].hosts.as_ref().unwrap(), &hosts);
    }

    #[test]
    fn ingress_annotations_are_allow_listed() {
        let i = ingress(&desired(), &settings(), &owner());
        let keys: Vec<_> = i.metadata.annotations.unwrap().into_keys().collect();
        assert_eq!(
            keys,
            vec![
                PROJECT_NAME_ANNOTATION,
                SPEC_HASH_ANNOTATION,
                "example.com/rps"
            ]
        );
        let mut d = desired();
        d.rate_limit_rps = None;
        for b in &mut d.backends {
            b.tls_secret = None;
            b.class = None;
        }
        let i = ingress(&d, &settings(), &owner());
        let ann = i.metadata.annotations.unwrap();
        assert_eq!(ann.len(), 2);
        let spec = i.spec.unwrap();
        assert_eq!(spec.tls, None);
        assert_eq!(spec.ingress_class_name, None);
    }

    /// A policy that sets the rate-limit annotation itself (to lift the limit): the
    /// composition's limit wins (seen failing with the policy's annotations written last).
    #[test]
    fn the_rate_limit_annotation_wins_over_a_policy_s() {
        let mut s = settings();
        s.access = crate::policy::parse(
            "default: open\npolicies:\n  open:\n    ingressAnnotations: {example.com/rps: \"100000\", example.org/auth: x}\n",
        )
        .unwrap();
        let mut d = desired();
        d.access = Some("open".into());
        let ann = ingress(&d, &s, &owner()).metadata.annotations.unwrap();
        assert_eq!(ann["example.com/rps"], "20");
        assert_eq!(ann["example.org/auth"], "x");
    }

    /// Class and TLS secret are per service: a composition whose services differ gets an
    /// Ingress per (class, secret); the operator's keeps the Service's name, so that a service
    /// with a class of its own coming or going never renames the others' Ingress.
    #[test]
    fn ingresses_one_per_class_and_secret_the_operators_named_like_the_service() {
        let s = settings();
        let mut d = desired();
        assert_eq!(ingresses(&d, &s, &owner()).len(), 1);
        // (one host has one class: the planner keeps services that differ on hosts of their own)
        for b in d.backends.iter_mut().filter(|b| b.service == "api") {
            b.host = "api.composition.example.com".into();
            b.class = Some("heavy".into());
            b.tls_secret = Some("other-tls".into());
        }
        let all = ingresses(&d, &s, &owner());
        assert_eq!(all.len(), 2);
        // (name, class, hosts, TLS secret) of each Ingress.
        type View = (String, Option<String>, Vec<String>, Option<String>);
        let view: Vec<View> = all
            .iter()
            .map(|i| {
                let spec = i.spec.clone().unwrap_or_default();
                let hosts = spec
                    .rules
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| r.host)
                    .collect();
                let secret = spec
                    .tls
                    .unwrap_or_default()
                    .first()
                    .and_then(|t| t.secret_name.clone());
                (
                    i.metadata.name.clone().unwrap_or_default(),
                    spec.ingress_class_name,
                    hosts,
                    secret,
                )
            })
            .collect();
        let suffixed = format!(
            "{}-{}",
            d.object_name,
            naming::short_hash("heavy\nother-tls")
        );
        assert_eq!(
            view,
            [
                (
                    suffixed,
                    Some("heavy".into()),
                    vec!["api.composition.example.com".into()],
                    Some("other-tls".into())
                ),
                (
                    d.object_name.clone(),
                    Some("public".into()),
                    vec![
                        "chat.composition.example.com".into(),
                        "web-443.composition.example.com".into(),
                        "www.composition.example.com".into()
                    ],
                    Some("wildcard-tls".into())
                ),
            ]
        );
        // Every Ingress routes to the one Service.
        for i in &all {
            for rule in i.spec.clone().unwrap_or_default().rules.unwrap_or_default() {
                for p in rule.http.unwrap_or_default().paths {
                    assert_eq!(
                        p.backend.service.map(|s| s.name),
                        Some(d.object_name.clone())
                    );
                }
            }
        }
        // All of the services on another class than the operator's: one Ingress, the
        // Service's name.
        for b in &mut d.backends {
            b.class = Some("heavy".into());
            b.tls_secret = Some("other-tls".into());
        }
        let one = ingresses(&d, &s, &owner());
        assert_eq!(one.len(), 1);
        assert_eq!(
            one[0].metadata.name.as_deref(),
            Some(d.object_name.as_str())
        );
    }

    #[test]
    fn rate_limit_annotation_value() {
        let i = ingress(&desired(), &settings(), &owner());
        assert_eq!(i.metadata.annotations.unwrap()["example.com/rps"], "20");
    }

    #[test]
    fn an_access_policy_adds_its_middlewares_after_the_rate_limit_and_its_annotations() {
        let s = policy_settings();
        let mut d = desired();
        d.access = Some("sso".into());
        let ann = ingress(&d, &s, &owner()).metadata.annotations.unwrap();
        assert_eq!(
            ann[TRAEFIK_MIDDLEWARES_ANNOTATION],
            format!(
                "ci-{}@kubernetescrd,ci-sso-auth@kubernetescrd,ci-office@kubernetescrd",
                d.object_name
            )
        );
        assert_eq!(ann["example.org/auth"], "sso");
        let mut gw = s.clone();
        gw.route_api = RouteApi::Gateway;
        let routes = http_routes(&d, &gw, &owner());
        assert!(!routes.is_empty());
        for r in routes {
            for rule in r.data["spec"]["rules"].as_array().unwrap() {
                let filters = rule["filters"].as_array().unwrap();
                let names: Vec<&str> = filters
                    .iter()
                    .filter_map(|f| f["extensionRef"]["name"].as_str())
                    .collect();
                assert_eq!(names, [d.object_name.as_str(), "sso-auth", "office"]);
                assert_eq!(filters[3]["type"], "RequestHeaderModifier");
            }
        }
        // public: nothing of the policy
        d.access = None;
        d.rate_limit_rps = None;
        let ann = ingress(&d, &s, &owner()).metadata.annotations.unwrap();
        assert!(!ann.contains_key(TRAEFIK_MIDDLEWARES_ANNOTATION), "{ann:?}");
        assert!(!ann.contains_key("example.org/auth"), "{ann:?}");
    }

    #[test]
    fn protocols_set_app_protocol_and_grpc_gets_grpc_routes() {
        let mut d = desired();
        for b in &mut d.backends {
            b.protocol = match (b.service.as_str(), b.container_port) {
                ("api", _) => Some(AppProtocol::Grpc),
                ("web", 443) => Some(AppProtocol::Ws),
                _ => None,
            };
        }
        let svc = service(&d, &settings(), &owner());
        let ports = svc.spec.unwrap().ports.unwrap();
        let by_name = |n: &str| {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(n))
                .and_then(|p| p.app_protocol.clone())
        };
        assert_eq!(
            by_name(&naming::port_name("api", 80)).as_deref(),
            Some("kubernetes.io/h2c")
        );
        assert_eq!(
            by_name(&naming::port_name("web", 443)).as_deref(),
            Some("kubernetes.io/ws")
        );
        assert_eq!(by_name(&naming::port_name("web", 80)), None);
        // mixed schemes: no Traefik scheme annotation (it would apply to every port)
        let ann = svc.metadata.annotations.unwrap();
        assert!(
            !ann.contains_key(TRAEFIK_SERVERS_SCHEME_ANNOTATION),
            "{ann:?}"
        );

        let mut gw = settings();
        gw.route_api = RouteApi::Gateway;
        let grpc = grpc_routes(&d, &gw, &owner());
        assert_eq!(
            grpc.len(),
            1,
            "one GRPCRoute, for the one host with a grpc port"
        );
        assert_eq!(
            grpc[0].data["spec"]["hostnames"],
            json!(["chat.composition.example.com"])
        );
        assert_eq!(
            grpc[0].data["spec"]["rules"],
            json!([{"backendRefs": [{"group": "", "kind": "Service", "name": d.object_name, "port": 3080}]}])
        );
        // the HTTPRoutes leave the grpc port out
        let http = http_routes(&d, &gw, &owner());
        let ports: Vec<&serde_json::Value> = http
            .iter()
            .flat_map(|r| r.data["spec"]["rules"].as_array().unwrap())
            .map(|rule| &rule["backendRefs"][0]["port"])
            .collect();
        assert!(!ports.contains(&&json!(3080)), "{ports:?}");
        assert_eq!(ports.len(), 3);
    }

    #[test]
    fn http_routes_one_per_host() {
        let mut s = settings();
        s.route_api = RouteApi::Gateway;
        s.gateway = Some(GatewayRef {
            namespace: Some("gw".into()),
            name: "public".into(),
            section_name: Some("https".into()),
            https: false,
        });
        let d = desired();
        let routes = http_routes(&d, &s, &owner());
        assert_eq!(routes.len(), 3);
        let v = serde_json::to_value(&routes[0]).unwrap();
        assert_eq!(v["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(v["kind"], "HTTPRoute");
        assert_eq!(
            v["metadata"]["name"],
            http_route_name(&d.object_name, "chat.composition.example.com")
        );
        check_meta(&routes[0].metadata);
        assert_eq!(
            v["spec"]["parentRefs"],
            json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "gw", "sectionName": "https"}])
        );
        assert_eq!(
            v["spec"]["hostnames"],
            json!(["chat.composition.example.com"])
        );
        assert_eq!(
            v["spec"]["rules"],
            json!([
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                 "backendRefs": [{"group": "", "kind": "Service", "name": d.object_name, "port": 2080}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                 "backendRefs": [{"group": "", "kind": "Service", "name": d.object_name, "port": 3080}]},
            ])
        );
        let names: std::collections::BTreeSet<_> =
            routes.iter().map(|r| r.metadata.name.clone()).collect();
        assert_eq!(names.len(), 3);
        assert!(spec_hash_of(&routes[0]).is_some());
    }
}
