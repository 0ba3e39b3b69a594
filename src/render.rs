//! Desired composition -> Kubernetes objects (pure).
//!
//! Every object is labelled and owned so that the sidecar can find (and only ever touch) its own
//! objects, and Kubernetes' garbage collector removes them with the pod. Each object carries a
//! hash of its own rendering, so the applier can skip a write when the live object already has it.
//! Nothing from container labels is copied into annotations: only allow-listed keys with values
//! the planner validated.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};
use serde::Serialize;
use serde_json::json;

use crate::model::{
    AccessPolicy, AppProtocol, Backend, DesiredComposition, OwnerPod, PlanSettings, RateLimitMode,
};
use crate::naming;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "compose-ingress";
pub const POD_LABEL: &str = "compose-ingress/pod";
pub const PROJECT_LABEL: &str = "compose-ingress/project";
/// The raw project name: label values may have been sanitized + hashed, this is for humans.
pub const PROJECT_NAME_ANNOTATION: &str = "compose-ingress/project-name";
pub const HOST_ANNOTATION: &str = "compose-ingress/host";
pub const SPEC_HASH_ANNOTATION: &str = "compose-ingress/spec-hash";

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub const HTTP_ROUTE_VERSION: &str = "v1";
pub const HTTP_ROUTE_KIND: &str = "HTTPRoute";
pub const HTTP_ROUTE_PLURAL: &str = "httproutes";

pub const TRAEFIK_GROUP: &str = "traefik.io";
pub const MIDDLEWARE_VERSION: &str = "v1alpha1";
pub const MIDDLEWARE_KIND: &str = "Middleware";
pub const MIDDLEWARE_PLURAL: &str = "middlewares";
/// Traefik's Service annotation: the scheme Traefik's Ingress provider speaks to the backends.
pub const TRAEFIK_SERVERS_SCHEME_ANNOTATION: &str =
    "traefik.ingress.kubernetes.io/service.serversscheme";
pub const GRPC_ROUTE_KIND: &str = "GRPCRoute";
pub const GRPC_ROUTE_PLURAL: &str = "grpcroutes";

/// Traefik's Ingress annotation naming the middlewares of every router of the Ingress.
pub const TRAEFIK_MIDDLEWARES_ANNOTATION: &str = "traefik.ingress.kubernetes.io/router.middlewares";

/// The `ApiResource` for `Api::<DynamicObject>` calls on Traefik Middlewares.
pub fn middleware_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(TRAEFIK_GROUP, MIDDLEWARE_VERSION, MIDDLEWARE_KIND),
        MIDDLEWARE_PLURAL,
    )
}

/// The `ApiResource` for `Api::<DynamicObject>` calls on GRPCRoutes.
pub fn grpc_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GATEWAY_GROUP, HTTP_ROUTE_VERSION, GRPC_ROUTE_KIND),
        GRPC_ROUTE_PLURAL,
    )
}

/// The `ApiResource` for `Api::<DynamicObject>` calls on HTTPRoutes.
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GATEWAY_GROUP, HTTP_ROUTE_VERSION, HTTP_ROUTE_KIND),
        HTTP_ROUTE_PLURAL,
    )
}

/// Labels that mark an object as ours, of this pod, for this project.
pub fn ownership_labels(pod: &str, project: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (POD_LABEL.to_string(), naming::label_value(pod)),
        (PROJECT_LABEL.to_string(), naming::label_value(project)),
    ])
}

/// Annotations every object carries besides the spec hash.
pub fn ownership_annotations(project: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(PROJECT_NAME_ANNOTATION.to_string(), project.to_string())])
}

/// Label selector for every object of this pod (list, GC, cleanup on exit).
pub fn pod_selector_string(pod: &str) -> String {
    format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{POD_LABEL}={}",
        naming::label_value(pod)
    )
}

/// Label selector for the objects of one project of this pod.
pub fn project_selector_string(pod: &str, project: &str) -> String {
    format!(
        "{},{PROJECT_LABEL}={}",
        pod_selector_string(pod),
        naming::label_value(project)
    )
}

/// Not a controller reference and no deletion blocking: we only want the garbage collector to
/// delete our objects with the pod, without claiming the objects for a controller or requiring
/// RBAC on pods/finalizers.
pub fn owner_reference(owner: &OwnerPod) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_string(),
        kind: "Pod".to_string(),
        name: owner.name.clone(),
        uid: owner.uid.clone(),
        controller: Some(false),
        block_owner_deletion: Some(false),
    }
}

fn metadata(
    name: String,
    project: &str,
    settings: &PlanSettings,
    owner: &OwnerPod,
    mut annotations: BTreeMap<String, String>,
) -> ObjectMeta {
    annotations.extend(ownership_annotations(project));
    ObjectMeta {
        name: Some(name),
        namespace: Some(settings.namespace.clone()),
        labels: Some(ownership_labels(&settings.pod_name, project)),
        annotations: Some(annotations),
        owner_references: Some(vec![owner_reference(owner)]),
        ..ObjectMeta::default()
    }
}

/// sha256 (16 hex) of the JSON serialization. Struct fields serialize in a fixed order and maps
/// are `BTreeMap`s, so equal objects give equal hashes across runs.
pub fn spec_hash<T: Serialize>(obj: &T) -> String {
    let json = serde_json::to_string(obj).unwrap_or_else(|e| format!("unserializable: {e}"));
    naming::hash_hex(&json, 16)
}

/// Sets the spec-hash annotation, computed over the object without it.
fn stamp<K: Resource + Serialize>(mut obj: K) -> K {
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove(SPEC_HASH_ANNOTATION);
    }
    let hash = spec_hash(&obj);
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(SPEC_HASH_ANNOTATION.to_string(), hash);
    obj
}

/// The spec-hash annotation of a live or rendered object, if any.
pub fn spec_hash_of<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .annotations
        .as_ref()?
        .get(SPEC_HASH_ANNOTATION)
        .map(String::as_str)
}

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

/// ClusterIP Service without a selector: its endpoints are the sidecar's own EndpointSlices
/// ([`endpoint_slices`]), so that each compose service is routed only while its container is
/// healthy. `targetPort` is the host port dind bound on the pod IP (what kube-proxy uses for the
/// ClusterIP); `port`/`name` are the stable per-(service, container port) values from the plan.
pub fn service(d: &DesiredComposition, settings: &PlanSettings, owner: &OwnerPod) -> Service {
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
    // of the composition needs the same non-HTTP/1 scheme (README, "Protocols").
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

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Who manages an EndpointSlice; anything but the EndpointSlice controller's own value keeps
/// that controller away from it.
pub const ENDPOINT_SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const ENDPOINT_SLICE_MANAGED_BY_VALUE: &str = "compose-ingress.io";

/// One EndpointSlice per compose service of the composition: the pod's IP, the service's ports
/// (named like the Service's, numbered by the host ports dind bound), and one endpoint whose
/// `ready`/`serving` conditions say whether the service gets traffic (health-gated routing). A
/// container turning healthy or unhealthy changes only its slice: the Service and the route stay
/// as they are, so controllers that reload on route changes do not reload on a health flap.
/// Nothing without the pod's IP (the sidecar reads it at start-up, before any pass).
pub fn endpoint_slices(
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
pub fn endpoint_slice_name(object_name: &str, service: &str) -> String {
    format!("{object_name}-{}", naming::short_hash(service))
}

/// One Ingress per composition, one rule per host. Backends reference the Service port by
/// *name*, so a new host port after a container restart changes only the Service (an endpoint
/// update) and never the Ingress (a full reload in some controllers).
pub fn ingress(d: &DesiredComposition, settings: &PlanSettings, owner: &OwnerPod) -> Ingress {
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
    let tls = d.tls_secret.as_ref().map(|secret| {
        vec![IngressTLS {
            hosts: Some(hosts.keys().map(|h| (*h).to_string()).collect()),
            secret_name: Some(secret.clone()),
        }]
    });
    let mut annotations = BTreeMap::new();
    if let (RateLimitMode::Annotation(key), Some(rps)) = (&settings.rate_limit, d.rate_limit_rps)
        && !key.is_empty()
    {
        annotations.insert(key.clone(), rps.to_string());
    }
    let policy = access_policy(d, settings);
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
    if let Some(p) = policy {
        // Operator text from the policy file (validated at start-up), never a label's.
        for (k, v) in &p.ingress_annotations {
            annotations.insert(k.clone(), v.clone());
        }
    }
    stamp(Ingress {
        metadata: metadata(d.object_name.clone(), &d.name, settings, owner, annotations),
        spec: Some(IngressSpec {
            ingress_class_name: d.class.clone(),
            rules: Some(rules),
            tls,
            default_backend: None,
        }),
        status: None,
    })
}

/// Name of the HTTPRoute for one host of a composition (≤ 72 chars; route names are DNS
/// subdomains, up to 253).
pub fn http_route_name(object_name: &str, host: &str) -> String {
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
pub fn http_routes(
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
pub fn grpc_routes(
    d: &DesiredComposition,
    settings: &PlanSettings,
    owner: &OwnerPod,
) -> Vec<DynamicObject> {
    gateway_routes(d, settings, owner, true)
}

/// The filter types a GRPCRoute rule accepts (Gateway API v1).
const GRPC_FILTER_TYPES: [&str; 4] = [
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "ExtensionRef",
];

fn gateway_routes(
    d: &DesiredComposition,
    settings: &PlanSettings,
    owner: &OwnerPod,
    grpc: bool,
) -> Vec<DynamicObject> {
    let resource = if grpc {
        grpc_route_resource()
    } else {
        http_route_resource()
    };
    let parent_refs: Vec<serde_json::Value> = settings
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
        .collect();
    let mut filters: Vec<serde_json::Value> = traefik_middlewares(d, settings)
        .into_iter()
        .map(|name| {
            json!({
                "type": "ExtensionRef",
                "extensionRef": {"group": TRAEFIK_GROUP, "kind": MIDDLEWARE_KIND, "name": name},
            })
        })
        .collect();
    if let Some(p) = access_policy(d, settings) {
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

/// The composition's access policy, `None` when public.
fn access_policy<'a>(
    d: &DesiredComposition,
    settings: &'a PlanSettings,
) -> Option<&'a AccessPolicy> {
    d.access
        .as_deref()
        .and_then(|name| settings.access.policies.get(name))
}

/// The Traefik Middlewares of the composition's routes, in order: its rate limit, then its
/// access policy's.
fn traefik_middlewares<'a>(d: &'a DesiredComposition, settings: &'a PlanSettings) -> Vec<&'a str> {
    rate_limit_middleware_name(d, settings)
        .into_iter()
        .chain(
            access_policy(d, settings)
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
pub fn rate_limit_middleware(
    d: &DesiredComposition,
    settings: &PlanSettings,
    owner: &OwnerPod,
) -> Option<DynamicObject> {
    let name = rate_limit_middleware_name(d, settings)?;
    let rps = d.rate_limit_rps?;
    let mut obj = DynamicObject::new(name, &middleware_resource()).data(json!({
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

/// The Lease that claims `host` for this pod. It is *created* (never applied) before the route,
/// so two pods racing for one host collide on the name and exactly one create succeeds.
pub fn host_lease(host: &str, project: &str, owner: &OwnerPod, settings: &PlanSettings) -> Lease {
    stamp(Lease {
        metadata: metadata(
            naming::lease_name(host),
            project,
            settings,
            owner,
            BTreeMap::from([(HOST_ANNOTATION.to_string(), host.to_string())]),
        ),
        spec: Some(LeaseSpec {
            holder_identity: Some(owner.name.clone()),
            ..LeaseSpec::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::tests::settings;
    use crate::model::{GatewayRef, RouteApi};

    fn owner() -> OwnerPod {
        OwnerPod {
            name: "runner-3".into(),
            uid: "uid-123".into(),
        }
    }

    fn backend(service: &str, port: u16, host: &str, path: &str, host_port: u16) -> Backend {
        Backend {
            service: service.into(),
            container_port: port,
            host_port,
            port_name: naming::port_name(service, port),
            service_port: if service == "api" {
                3000 + port
            } else {
                2000 + port
            },
            host: host.into(),
            path: path.into(),
            chosen_host: false,
            protocol: None,
            ready: true,
            health: crate::model::Health::None,
        }
    }

    fn desired() -> DesiredComposition {
        DesiredComposition {
            name: "Demo_Chat".into(),
            object_name: naming::object_name("runner-3", "Demo_Chat"),
            backends: vec![
                backend("api", 80, "chat.composition.example.com", "/api", 32001),
                backend("web", 80, "chat.composition.example.com", "/", 32000),
                backend("web", 80, "www.composition.example.com", "/", 32000),
                backend("web", 443, "web-443.composition.example.com", "/", 32002),
            ],
            class: Some("public".into()),
            access: None,
            rate_limit_rps: Some(20),
            tls_secret: Some("wildcard-tls".into()),
        }
    }

    #[test]
    fn ownership() {
        let l = ownership_labels("runner-3", "Demo Chat");
        assert_eq!(l[MANAGED_BY_LABEL], "compose-ingress");
        assert_eq!(l[POD_LABEL], "runner-3");
        assert!(l[PROJECT_LABEL].starts_with("Demo-Chat-"));
        assert_eq!(
            pod_selector_string("runner-3"),
            "app.kubernetes.io/managed-by=compose-ingress,compose-ingress/pod=runner-3"
        );
        assert_eq!(
            project_selector_string("runner-3", "demo"),
            "app.kubernetes.io/managed-by=compose-ingress,compose-ingress/pod=runner-3,compose-ingress/project=demo"
        );
        let o = owner_reference(&owner());
        assert_eq!(
            (
                o.api_version.as_str(),
                o.kind.as_str(),
                o.name.as_str(),
                o.uid.as_str()
            ),
            ("v1", "Pod", "runner-3", "uid-123")
        );
        assert_eq!(o.controller, Some(false));
        assert_eq!(o.block_owner_deletion, Some(false));
    }

    fn check_meta(meta: &ObjectMeta) {
        assert_eq!(meta.namespace.as_deref(), Some("ci"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels, &ownership_labels("runner-3", "Demo_Chat"));
        let ann = meta.annotations.as_ref().unwrap();
        assert_eq!(ann[PROJECT_NAME_ANNOTATION], "Demo_Chat");
        assert_eq!(ann[SPEC_HASH_ANNOTATION].len(), 16);
        assert_eq!(
            meta.owner_references.as_ref().unwrap(),
            &vec![owner_reference(&owner())]
        );
    }

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
        d.tls_secret = None;
        d.class = None;
        let i = ingress(&d, &settings(), &owner());
        let ann = i.metadata.annotations.unwrap();
        assert_eq!(ann.len(), 2);
        let spec = i.spec.unwrap();
        assert_eq!(spec.tls, None);
        assert_eq!(spec.ingress_class_name, None);
    }

    #[test]
    fn rate_limit_annotation_value() {
        let i = ingress(&desired(), &settings(), &owner());
        assert_eq!(i.metadata.annotations.unwrap()["example.com/rps"], "20");
    }

    fn traefik_settings() -> PlanSettings {
        PlanSettings {
            rate_limit: RateLimitMode::TraefikMiddleware,
            namespace: "ci".into(),
            ..settings()
        }
    }

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

    #[test]
    fn spec_hash_is_stable_and_tracks_changes() {
        let a = ingress(&desired(), &settings(), &owner());
        let b = ingress(&desired(), &settings(), &owner());
        assert_eq!(spec_hash_of(&a), spec_hash_of(&b));
        let mut d = desired();
        d.backends[0].host_port = 40000;
        // a new host port changes the Service but not the Ingress
        assert_eq!(
            spec_hash_of(&ingress(&d, &settings(), &owner())),
            spec_hash_of(&a)
        );
        assert_ne!(
            spec_hash_of(&service(&d, &settings(), &owner())),
            spec_hash_of(&service(&desired(), &settings(), &owner()))
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

    #[test]
    fn http_routes_one_per_host() {
        let mut s = settings();
        s.route_api = RouteApi::Gateway;
        s.gateway = Some(GatewayRef {
            namespace: Some("gw".into()),
            name: "public".into(),
            section_name: Some("https".into()),
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

    #[test]
    fn lease_claims_host() {
        let l = host_lease(
            "chat.composition.example.com",
            "Demo_Chat",
            &owner(),
            &settings(),
        );
        check_meta(&l.metadata);
        assert_eq!(
            l.metadata.name.as_deref(),
            Some(naming::lease_name("chat.composition.example.com").as_str())
        );
        assert_eq!(
            l.metadata.annotations.as_ref().unwrap()[HOST_ANNOTATION],
            "chat.composition.example.com"
        );
        assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("runner-3"));
        let v = serde_json::to_value(host_lease("h", "p", &owner(), &settings())).unwrap();
        assert_eq!(v["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(v["kind"], "Lease");
    }

    #[test]
    fn http_route_resource_names() {
        let r = http_route_resource();
        assert_eq!(r.api_version, "gateway.networking.k8s.io/v1");
        assert_eq!(r.plural, "httproutes");
        assert_eq!(r.kind, "HTTPRoute");
    }
}
