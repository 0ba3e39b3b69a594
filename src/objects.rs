//! The objects the sidecar owns, as plain values (pure): their kinds, an object rendered and
//! ready to write, the spec hash that lets a pass skip an unchanged write, and the ownership keys
//! (labels, annotations, owner reference) by which the sidecar finds, and only ever touches, its
//! own objects. The renderers (src/render/) make these; the Kubernetes edge (src/cluster.rs)
//! writes, lists and deletes them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::api::{DynamicObject, TypeMeta};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Serialize;

use crate::model::OwnerPod;
use crate::naming;

pub(crate) const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub(crate) const MANAGED_BY_VALUE: &str = "compose-ingress";
pub(crate) const POD_LABEL: &str = "compose-ingress/pod";
pub(crate) const PROJECT_LABEL: &str = "compose-ingress/project";
/// The raw project name: label values may have been sanitized + hashed, this is for humans.
pub(crate) const PROJECT_NAME_ANNOTATION: &str = "compose-ingress/project-name";
pub(crate) const HOST_ANNOTATION: &str = "compose-ingress/host";
pub(crate) const SPEC_HASH_ANNOTATION: &str = "compose-ingress/spec-hash";
/// Traefik's Ingress annotation naming the middlewares of every router of the Ingress. The
/// sidecar writes it (the rate limit's, then the access policy's), so no policy may set it.
pub(crate) const TRAEFIK_MIDDLEWARES_ANNOTATION: &str =
    "traefik.ingress.kubernetes.io/router.middlewares";

pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
const GATEWAY_VERSION: &str = "v1";
const HTTP_ROUTE_KIND: &str = "HTTPRoute";
const HTTP_ROUTE_PLURAL: &str = "httproutes";
const GRPC_ROUTE_KIND: &str = "GRPCRoute";
const GRPC_ROUTE_PLURAL: &str = "grpcroutes";

pub(crate) const TRAEFIK_GROUP: &str = "traefik.io";
const MIDDLEWARE_VERSION: &str = "v1alpha1";
pub(crate) const MIDDLEWARE_KIND: &str = "Middleware";
const MIDDLEWARE_PLURAL: &str = "middlewares";

crate::variants::with_all! {
    /// The kinds of object the sidecar owns. [`Kind::ALL`] holds every one by construction: the
    /// listings (and so GC) walk it, and a kind left out would never be collected.
    ///
    /// The order is the order of writes (a route never points at a Service or Middleware that
    /// does not exist yet; a composition's slices and routes, which do not point at each other,
    /// are written together, see `wave_of` in src/reconcile/apply.rs); deletes go in reverse
    /// (routes first, Leases last).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum Kind {
        Lease,
        Service,
        EndpointSlice,
        Middleware,
        Ingress,
        HttpRoute,
        GrpcRoute,
    }
}

impl Kind {
    /// The API resource of the kind, for `Api::<DynamicObject>` calls.
    pub(crate) fn resource(self) -> ApiResource {
        use k8s_openapi::api;
        let custom = |group, version, kind, plural| {
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
        };
        match self {
            Kind::Lease => ApiResource::erase::<api::coordination::v1::Lease>(&()),
            Kind::Service => ApiResource::erase::<api::core::v1::Service>(&()),
            Kind::EndpointSlice => ApiResource::erase::<api::discovery::v1::EndpointSlice>(&()),
            Kind::Ingress => ApiResource::erase::<api::networking::v1::Ingress>(&()),
            Kind::HttpRoute => custom(
                GATEWAY_GROUP,
                GATEWAY_VERSION,
                HTTP_ROUTE_KIND,
                HTTP_ROUTE_PLURAL,
            ),
            Kind::GrpcRoute => custom(
                GATEWAY_GROUP,
                GATEWAY_VERSION,
                GRPC_ROUTE_KIND,
                GRPC_ROUTE_PLURAL,
            ),
            Kind::Middleware => custom(
                TRAEFIK_GROUP,
                MIDDLEWARE_VERSION,
                MIDDLEWARE_KIND,
                MIDDLEWARE_PLURAL,
            ),
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Lease => "Lease",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Ingress => "Ingress",
            Kind::HttpRoute => HTTP_ROUTE_KIND,
            Kind::Middleware => MIDDLEWARE_KIND,
            Kind::GrpcRoute => GRPC_ROUTE_KIND,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rendered object that does not encode as an object of its kind (a bug, not user input: the
/// plan has already refused what would not fit in an object).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {kind}: {source}")]
pub struct EncodeError {
    kind: Kind,
    source: serde_json::Error,
}

/// An object rendered for the cluster, in the generic form every write takes.
#[derive(Debug, Clone)]
pub(crate) struct DesiredObject {
    pub(crate) kind: Kind,
    pub(crate) object: DynamicObject,
}

impl DesiredObject {
    pub(crate) fn new<T: Serialize>(kind: Kind, typed: &T) -> Result<Self, EncodeError> {
        let encode = |source| EncodeError { kind, source };
        let value = serde_json::to_value(typed).map_err(encode)?;
        let mut object: DynamicObject = serde_json::from_value(value).map_err(encode)?;
        let resource = kind.resource();
        object.types = Some(TypeMeta {
            api_version: resource.api_version,
            kind: resource.kind,
        });
        Ok(Self { kind, object })
    }

    pub(crate) fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or_default()
    }

    pub(crate) fn spec_hash(&self) -> Option<&str> {
        spec_hash_of(&self.object)
    }
}

/// Labels that mark an object as ours, of this pod, for this composition.
pub(crate) fn ownership_labels(pod: &str, composition: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (POD_LABEL.to_string(), naming::label_value(pod)),
        (PROJECT_LABEL.to_string(), naming::label_value(composition)),
    ])
}

/// Annotations every object carries besides the spec hash.
pub(crate) fn ownership_annotations(composition: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(PROJECT_NAME_ANNOTATION.to_string(), composition.to_string())])
}

/// Label selector for every object of this pod (list, GC, cleanup on exit).
pub(crate) fn pod_selector(pod: &str) -> String {
    format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{POD_LABEL}={}",
        naming::label_value(pod)
    )
}

/// Whether an object's metadata carries `pod`'s ownership labels: the one test of "ours" that
/// every write, claim and listing goes through.
pub(crate) fn is_of_pod(meta: &ObjectMeta, pod: &str) -> bool {
    let labels = meta.labels.as_ref();
    let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    get(MANAGED_BY_LABEL) == Some(MANAGED_BY_VALUE)
        && get(POD_LABEL) == Some(naming::label_value(pod).as_str())
}

/// The composition an owned object belongs to: the raw project name (annotation), falling back
/// to the project label.
pub(crate) fn composition_of(meta: &ObjectMeta) -> String {
    let annotated = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROJECT_NAME_ANNOTATION));
    let labelled = || meta.labels.as_ref().and_then(|l| l.get(PROJECT_LABEL));
    annotated.or_else(labelled).cloned().unwrap_or_default()
}

/// Not a controller reference and no deletion blocking: we only want the garbage collector to
/// delete our objects with the pod, without claiming the objects for a controller or requiring
/// RBAC on pods/finalizers.
pub(crate) fn owner_reference(owner: &OwnerPod) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_string(),
        kind: "Pod".to_string(),
        name: owner.name.clone(),
        uid: owner.uid.clone(),
        controller: Some(false),
        block_owner_deletion: Some(false),
    }
}

/// sha256 (16 hex) of the JSON serialization. Struct fields serialize in a fixed order and maps
/// are `BTreeMap`s, so equal objects give equal hashes across runs.
pub(crate) fn spec_hash<T: Serialize>(obj: &T) -> String {
    let json = serde_json::to_string(obj).unwrap_or_else(|e| format!("unserializable: {e}"));
    naming::hash_hex(&json, 16)
}

/// Sets the spec-hash annotation, computed over the object without it.
pub(crate) fn stamp<K: Resource + Serialize>(mut obj: K) -> K {
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
pub(crate) fn spec_hash_of<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .annotations
        .as_ref()?
        .get(SPEC_HASH_ANNOTATION)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> OwnerPod {
        OwnerPod {
            name: "runner-3".into(),
            uid: "uid-123".into(),
        }
    }

    #[test]
    fn ownership() {
        let l = ownership_labels("runner-3", "Demo Chat");
        assert_eq!(l[MANAGED_BY_LABEL], "compose-ingress");
        assert_eq!(l[POD_LABEL], "runner-3");
        assert!(l[PROJECT_LABEL].starts_with("Demo-Chat-"));
        assert_eq!(
            pod_selector("runner-3"),
            "app.kubernetes.io/managed-by=compose-ingress,compose-ingress/pod=runner-3"
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

    #[test]
    fn http_route_resource_names() {
        let r = Kind::HttpRoute.resource();
        assert_eq!(r.api_version, "gateway.networking.k8s.io/v1");
        assert_eq!(r.plural, "httproutes");
        assert_eq!(r.kind, "HTTPRoute");
    }
}
