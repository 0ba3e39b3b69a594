//! The Kubernetes edge: create, server-side apply, list-owned and delete of this pod's objects.
//! Every object goes through the same generic path (`DynamicObject`), so ownership checks are
//! written once: an object is only ever written when it is ours (created by us, or carrying this
//! pod's ownership labels), and only deleted with a uid precondition from a listing by this pod's
//! label selector.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    Preconditions,
};
use serde::Serialize;
use tracing::debug;

use crate::config::DryRun;
use crate::managed_fields;
use crate::render::{
    self, HOST_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, POD_LABEL, PROJECT_LABEL,
    PROJECT_NAME_ANNOTATION, SPEC_HASH_ANNOTATION,
};

pub const FIELD_MANAGER: &str = "compose-ingress";

/// Page size of the owned-object listings. A page is parsed whole (metadata with managedFields,
/// a few KiB per object), and glibc keeps the heap of the largest page resident among the
/// long-lived state allocated meanwhile: 500 cost ~2 MiB more RSS than 100 on a restart with 250
/// compositions (BENCHMARKS §5); 50 saved 0.4 MiB more but doubles the requests of a resync.
const LIST_PAGE: u32 = 100;

/// The kinds of object the sidecar owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
///
/// The order is the order of writes (a route never points at a Service or Middleware that does
/// not exist yet; a composition's slices and routes, which do not point at each other, are
/// written together, see `wave_of` in src/reconcile/apply.rs); deletes go in reverse (routes
/// first, Leases last).
pub enum Kind {
    Lease,
    Service,
    EndpointSlice,
    Middleware,
    Ingress,
    HttpRoute,
    GrpcRoute,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Lease,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Middleware,
        Kind::Ingress,
        Kind::HttpRoute,
        Kind::GrpcRoute,
    ];

    pub fn resource(self) -> ApiResource {
        match self {
            Kind::Lease => ApiResource::erase::<k8s_openapi::api::coordination::v1::Lease>(&()),
            Kind::Service => ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
            Kind::EndpointSlice => {
                ApiResource::erase::<k8s_openapi::api::discovery::v1::EndpointSlice>(&())
            }
            Kind::Ingress => ApiResource::erase::<k8s_openapi::api::networking::v1::Ingress>(&()),
            Kind::HttpRoute => render::http_route_resource(),
            Kind::Middleware => render::middleware_resource(),
            Kind::GrpcRoute => render::grpc_route_resource(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Lease => "Lease",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Ingress => "Ingress",
            Kind::HttpRoute => "HTTPRoute",
            Kind::Middleware => "Middleware",
            Kind::GrpcRoute => "GRPCRoute",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object rendered for the cluster, in the generic form every write takes.
#[derive(Debug, Clone)]
pub struct DesiredObject {
    pub kind: Kind,
    pub object: DynamicObject,
}

impl DesiredObject {
    pub fn new<T: Serialize>(kind: Kind, typed: &T) -> Result<Self, ClusterError> {
        let value =
            serde_json::to_value(typed).map_err(|e| ClusterError::Encode { kind, source: e })?;
        let mut object: DynamicObject =
            serde_json::from_value(value).map_err(|e| ClusterError::Encode { kind, source: e })?;
        let resource = kind.resource();
        object.types = Some(kube::api::TypeMeta {
            api_version: resource.api_version,
            kind: resource.kind,
        });
        Ok(Self { kind, object })
    }

    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn spec_hash(&self) -> Option<&str> {
        render::spec_hash_of(&self.object)
    }
}

/// One of this pod's objects, as listed by its ownership labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedObject {
    pub kind: Kind,
    pub name: String,
    pub uid: String,
    /// The raw project name (annotation), falling back to the project label.
    pub project: String,
    pub spec_hash: Option<String>,
    /// For Leases: the host they claim.
    pub host: Option<String>,
    /// Some of its fields are still recorded under the create's entry: they are handed to the
    /// apply entry before its next apply (src/managed_fields.rs).
    pub needs_hand_over: bool,
    /// The create's entry owns fields the last apply did not send (an object an older sidecar
    /// created and changed): written once more even when its spec is unchanged.
    pub leftovers: bool,
    /// A Service with a selector, from a sidecar before health-gated routing. Removing the
    /// selector would leave the EndpointSlice controller's slices behind, unmanaged (they would
    /// keep routing, to ports that may change hands): such a Service is deleted and created
    /// again, and the garbage collector takes the controller's slices with it.
    pub legacy_selector: bool,
    /// Another manager owns fields of it (a hand edit): written at the next pass even when its
    /// spec is unchanged, after those fields are handed to our apply entry, so that the apply
    /// sets it back to what is desired (src/managed_fields.rs).
    pub edited: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot {verb} {kind} {namespace}/{name}: {source}")]
    Api {
        verb: &'static str,
        kind: Kind,
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error(
        "{kind} {namespace}/{name} exists and is not owned by compose-ingress for pod {pod}: it is left untouched; \
         delete or rename that object, or rename the composition"
    )]
    NotOurs {
        kind: Kind,
        namespace: String,
        name: String,
        pod: String,
    },
    #[error(
        "cannot read pod {namespace}/{name}: {source} ({})",
        pod_read_hint(source)
    )]
    Pod {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("cannot encode {kind}: {source}")]
    Encode {
        kind: Kind,
        source: serde_json::Error,
    },
}

/// What to do about a failed read of the sidecar's own pod, by what the apiserver said.
fn pod_read_hint(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 401 => {
            "the ServiceAccount token was refused: check the projected token volume of the sidecar"
        }
        kube::Error::Api(s) if s.code == 403 => "the Role must allow get on pods",
        kube::Error::Api(s) if s.code == 404 => {
            "no such pod: POD_NAME and POD_NAMESPACE must be the pod's own, from the downward API"
        }
        _ => "the apiserver did not answer as expected; retried",
    }
}

impl ClusterError {
    /// The HTTP status of an API error, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClusterError::Api { source, .. } | ClusterError::Pod { source, .. } => {
                match source.as_ref() {
                    kube::Error::Api(e) => Some(e.code),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// What an upsert did, with the object's uid: a create leaves its fields under the create's
/// entry until the object's first apply (src/managed_fields.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upserted {
    Created(String),
    Applied(String),
}

impl Upserted {
    pub fn uid(&self) -> &str {
        match self {
            Upserted::Created(uid) | Upserted::Applied(uid) => uid,
        }
    }
}

/// Result of claiming a host with a Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The Lease is ours (created now, or already this pod's).
    Ours { uid: String },
    /// Another pod (or another composition of this pod) holds it.
    Taken {
        holder_pod: String,
        holder_project: String,
    },
}

/// What a create found. A name that exists is an answer rather than a fault (the caller decides
/// whether it is ours), so it is not a [`ClusterError`].
#[derive(Debug)]
pub enum Created {
    /// Created now; its uid (empty in client-side dry-run).
    New { uid: String },
    /// An object of that name already existed; it was left as it is.
    Exists(Box<DynamicObject>),
}

/// Called whenever an API request of a [`Cluster`] came back (see [`Cluster::with_progress`]).
pub type Progress = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    namespace: String,
    pod: String,
    dry_run: DryRun,
    /// Whether Middlewares are part of the output (`--rate-limit-mode traefik-middleware`).
    /// Otherwise they are still listed (so a previous mode's leftovers are collected), but a
    /// cluster without Traefik's CRDs (404) or a Role without them (403) is not an error.
    middlewares: bool,
    progress: Option<Progress>,
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl Cluster {
    pub fn new(client: kube::Client, namespace: &str, pod: &str, dry_run: DryRun) -> Self {
        Self {
            client,
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            dry_run,
            middlewares: false,
            progress: None,
        }
    }

    /// Calls `progress` whenever one of this handle's API requests came back, answered or
    /// failed (the reconciler's liveness heartbeat: one call of this type may be several
    /// requests, a create that finds the object then reads it, a listing of many pages, and a
    /// pass is alive as long as its requests come back).
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Awaits one API request, then reports the progress.
    async fn sent<T>(&self, request: impl std::future::Future<Output = T>) -> T {
        let answer = request.await;
        if let Some(progress) = &self.progress {
            progress();
        }
        answer
    }

    /// Middlewares are part of the output: failing to list them is an error.
    pub fn with_middlewares(mut self, yes: bool) -> Self {
        self.middlewares = yes;
        self
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &kind.resource())
    }

    fn err(
        &self,
        verb: &'static str,
        kind: Kind,
        name: &str,
    ) -> impl FnOnce(kube::Error) -> ClusterError + '_ {
        let name = name.to_string();
        move |source| ClusterError::Api {
            verb,
            kind,
            namespace: self.namespace.clone(),
            name,
            source: Box::new(source),
        }
    }

    /// Whether a live object carries this pod's ownership labels.
    pub fn is_ours(&self, meta: &kube::api::ObjectMeta) -> bool {
        let labels = meta.labels.as_ref();
        let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        get(MANAGED_BY_LABEL) == Some(MANAGED_BY_VALUE)
            && get(POD_LABEL) == Some(crate::naming::label_value(&self.pod).as_str())
    }

    /// This runner pod, for its uid and whether it is terminating.
    pub async fn own_pod(&self) -> Result<Pod, ClusterError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        self.sent(api.get(&self.pod))
            .await
            .map_err(|source| ClusterError::Pod {
                namespace: self.namespace.clone(),
                name: self.pod.clone(),
                source: Box::new(source),
            })
    }

    /// Every object of this pod, of every kind (a missing HTTPRoute CRD is not an error, nor
    /// are Middlewares the configuration does not use).
    pub async fn list_owned(&self) -> Result<Vec<OwnedObject>, ClusterError> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            // Metadata only (names, uids, labels, the spec-hash annotation is all we need), in
            // pages: a full listing of thousands of objects would hold every spec in memory.
            let mut lp = ListParams::default()
                .labels(&render::pod_selector_string(&self.pod))
                .limit(LIST_PAGE);
            loop {
                let page = match self.sent(self.api(kind).list_metadata(&lp)).await {
                    Ok(l) => l,
                    Err(e)
                        if matches!(kind, Kind::HttpRoute | Kind::GrpcRoute)
                            && is_status(&e, 404) =>
                    {
                        break;
                    }
                    Err(e)
                        if kind == Kind::Middleware
                            && !self.middlewares
                            && (is_status(&e, 404) || is_status(&e, 403)) =>
                    {
                        break;
                    }
                    Err(e) => return Err(self.err("list", kind, "*")(e)),
                };
                for o in page.items {
                    if let Some(owned) = self.owned_object(kind, o.metadata) {
                        out.push(owned);
                    }
                }
                match page.metadata.continue_ {
                    Some(token) if !token.is_empty() => lp = lp.continue_token(&token),
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    fn owned_object(&self, kind: Kind, meta: kube::api::ObjectMeta) -> Option<OwnedObject> {
        if !self.is_ours(&meta) {
            return None; // the selector already says so; this keeps the rule in one place
        }
        // Leases are claims: created once and never applied, so one manager is all they have.
        let needs_hand_over =
            kind != Kind::Lease && managed_fields::needs_hand_over(&meta, FIELD_MANAGER);
        let leftovers = needs_hand_over && managed_fields::has_leftovers(&meta, FIELD_MANAGER);
        let edited = kind != Kind::Lease && managed_fields::edited_by_others(&meta, FIELD_MANAGER);
        let legacy_selector = kind == Kind::Service
            && managed_fields::owns(&meta, FIELD_MANAGER, &["f:spec", "f:selector"]);
        let annotations = meta.annotations.unwrap_or_default();
        let labels = meta.labels.unwrap_or_default();
        Some(OwnedObject {
            kind,
            name: meta.name.unwrap_or_default(),
            uid: meta.uid.unwrap_or_default(),
            project: annotations
                .get(PROJECT_NAME_ANNOTATION)
                .or_else(|| labels.get(PROJECT_LABEL))
                .cloned()
                .unwrap_or_default(),
            spec_hash: annotations.get(SPEC_HASH_ANNOTATION).cloned(),
            host: annotations.get(HOST_ANNOTATION).cloned(),
            needs_hand_over,
            leftovers,
            legacy_selector,
            edited,
        })
    }

    fn print(&self, verb: &str, obj: &DesiredObject) {
        match serde_yaml_ng::to_string(&obj.object) {
            Ok(yaml) => println!(
                "---\n# dry-run: {verb} {} {}/{}\n{yaml}",
                obj.kind,
                self.namespace,
                obj.name()
            ),
            Err(e) => println!(
                "---\n# dry-run: {verb} {} {}/{}: cannot render YAML: {e}",
                obj.kind,
                self.namespace,
                obj.name()
            ),
        }
    }

    fn post_params(&self) -> PostParams {
        PostParams {
            dry_run: self.dry_run == DryRun::Server,
            field_manager: Some(FIELD_MANAGER.to_string()),
        }
    }

    /// Creates `obj`; when an object of that name exists, it is returned (and never modified).
    pub async fn create(&self, obj: &DesiredObject) -> Result<Created, ClusterError> {
        if self.dry_run != DryRun::None {
            self.print("create", obj);
            if self.dry_run == DryRun::Client {
                return Ok(Created::New { uid: String::new() });
            }
        }
        let api = self.api(obj.kind);
        match self
            .sent(api.create(&self.post_params(), &obj.object))
            .await
        {
            Ok(created) => Ok(Created::New {
                uid: created.metadata.uid.unwrap_or_default(),
            }),
            Err(e) if is_status(&e, 409) => {
                let live = self.sent(api.get(obj.name())).await.map_err(self.err(
                    "get",
                    obj.kind,
                    obj.name(),
                ))?;
                Ok(Created::Exists(Box::new(live)))
            }
            Err(e) => Err(self.err("create", obj.kind, obj.name())(e)),
        }
    }

    /// Hands the fields a create recorded to the apply entry of our manager (see
    /// src/managed_fields.rs); `meta` is the object's as the apiserver last returned it.
    pub async fn hand_over(
        &self,
        kind: Kind,
        meta: &kube::api::ObjectMeta,
    ) -> Result<(), ClusterError> {
        let Some(patch) = managed_fields::hand_over_patch(meta, FIELD_MANAGER) else {
            return Ok(());
        };
        let name = meta.name.as_deref().unwrap_or_default();
        let api = self.api(kind);
        self.sent(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)))
            .await
            .map_err(self.err("hand over the fields of", kind, name))?;
        debug!(%kind, name, "fields of the create handed to the apply entry");
        Ok(())
    }

    /// Reads the object and hands its create's fields over.
    pub async fn hand_over_live(&self, kind: Kind, name: &str) -> Result<(), ClusterError> {
        let api = self.api(kind);
        let live = self
            .sent(api.get(name))
            .await
            .map_err(self.err("get", kind, name))?;
        if self.is_ours(&live.metadata) {
            self.hand_over(kind, &live.metadata).await?;
        }
        Ok(())
    }

    /// Server-side apply of an object known to be ours (field manager `compose-ingress`).
    /// With `uid` (the object as listed), the apply carries it as a precondition: an object that
    /// was deleted and recreated by someone else under the same name is refused (409), never
    /// taken over.
    pub async fn apply(
        &self,
        obj: &DesiredObject,
        uid: Option<&str>,
    ) -> Result<String, ClusterError> {
        if self.dry_run != DryRun::None {
            self.print("apply", obj);
            if self.dry_run == DryRun::Client {
                return Ok(String::new());
            }
        }
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        params.dry_run = self.dry_run == DryRun::Server;
        let mut object = obj.object.clone();
        object.metadata.uid = uid.filter(|u| !u.is_empty()).map(str::to_string);
        let api = self.api(obj.kind);
        let applied = self
            .sent(api.patch(obj.name(), &params, &Patch::Apply(&object)))
            .await
            .map_err(self.err("apply", obj.kind, obj.name()))?;
        Ok(applied.metadata.uid.unwrap_or_default())
    }

    /// Creates or updates `obj` without ever touching an object that is not ours:
    /// `known_ours` (from a listing by our labels) applies directly; otherwise the object is
    /// created, and an existing one is only applied when its labels say it is this pod's.
    pub async fn upsert(
        &self,
        obj: &DesiredObject,
        known: Option<&OwnedObject>,
    ) -> Result<Upserted, ClusterError> {
        if let Some(known) = known {
            if known.needs_hand_over || known.edited {
                self.hand_over_live(obj.kind, obj.name()).await?;
            }
            return Ok(Upserted::Applied(self.apply(obj, Some(&known.uid)).await?));
        }
        match self.create(obj).await? {
            Created::New { uid } => Ok(Upserted::Created(uid)),
            Created::Exists(live) if self.is_ours(&live.metadata) => {
                self.hand_over(obj.kind, &live.metadata).await?;
                Ok(Upserted::Applied(
                    self.apply(obj, live.metadata.uid.as_deref()).await?,
                ))
            }
            Created::Exists(_) => Err(ClusterError::NotOurs {
                kind: obj.kind,
                namespace: self.namespace.clone(),
                name: obj.name().to_string(),
                pod: self.pod.clone(),
            }),
        }
    }

    /// Claims a host by creating its Lease (atomic: of two racing pods exactly one create wins).
    pub async fn claim(&self, lease: &DesiredObject) -> Result<Claim, ClusterError> {
        match self.create(lease).await? {
            Created::New { uid } => Ok(Claim::Ours { uid }),
            Created::Exists(live) => {
                let labels = live.metadata.labels.clone().unwrap_or_default();
                let annotations = live.metadata.annotations.clone().unwrap_or_default();
                let holder_project = annotations
                    .get(PROJECT_NAME_ANNOTATION)
                    .or_else(|| labels.get(PROJECT_LABEL))
                    .cloned()
                    .unwrap_or_default();
                let mine = lease
                    .object
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(PROJECT_NAME_ANNOTATION))
                    .cloned()
                    .unwrap_or_default();
                if self.is_ours(&live.metadata) && holder_project == mine {
                    Ok(Claim::Ours {
                        uid: live.metadata.uid.unwrap_or_default(),
                    })
                } else {
                    let holder_pod = labels
                        .get(POD_LABEL)
                        .cloned()
                        .unwrap_or_else(|| "(not compose-ingress)".to_string());
                    Ok(Claim::Taken {
                        holder_pod,
                        holder_project,
                    })
                }
            }
        }
    }

    /// Deletes one of our objects, only if it is still the one we listed (uid precondition).
    pub async fn delete(&self, kind: Kind, name: &str, uid: &str) -> Result<(), ClusterError> {
        if self.dry_run == DryRun::Client {
            println!("---\n# dry-run: delete {kind} {}/{name}", self.namespace);
            return Ok(());
        }
        let params = DeleteParams {
            dry_run: self.dry_run == DryRun::Server,
            preconditions: (!uid.is_empty()).then(|| Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        let api = self.api(kind);
        match self.sent(api.delete(name, &params)).await {
            Ok(_) => Ok(()),
            // Already gone, or replaced by an object that is not the one we own: nothing to do.
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {
                debug!(%kind, name, "already gone");
                Ok(())
            }
            Err(e) => Err(self.err("delete", kind, name)(e)),
        }
    }
}

/// The converge step against a mock API server, the way kube-rs's controller-rs example tests
/// its reconciler: a `tower_test` mock service behind a real `kube::Client`, and a scenario
/// that answers the expected requests in order and checks each one (method, path, query,
/// headers, body). A request the scenario does not expect fails the test, so "no write" and
/// "no delete" are checked by leaving them out of the scenario. No apiserver, no Docker.
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use http::{Method, Request, Response, StatusCode};
    use k8s_openapi::api::core::v1::Service;
    use kube::api::ObjectMeta;
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock::{self, Handle};

    use super::*;
    use crate::config::Timings;
    use crate::labels;
    use crate::labels::{
        COMPOSE_CONTAINER_NUMBER, COMPOSE_ONEOFF, COMPOSE_PROJECT, COMPOSE_SERVICE,
    };
    use crate::model::{
        ContainerState, ObservedContainer, ObservedProject, OwnerPod, Protocol, PublishedPort,
    };
    use crate::plan;
    use crate::reconcile::Reconciler;
    use crate::status::Status;

    type ApiHandle = Handle<Request<Body>, Response<Body>>;

    const NS: &str = "ci";
    /// The pod of `labels::tests::settings()`.
    const POD: &str = "runner-3";
    const POD_UID: &str = "pod-uid-3";
    const PROJECT: &str = "demochat";

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ci/leases";
    const SERVICES: &str = "/api/v1/namespaces/ci/services";
    const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/ci/endpointslices";
    const INGRESSES: &str = "/apis/networking.k8s.io/v1/namespaces/ci/ingresses";
    const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/ci/httproutes";
    const GRPC_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/ci/grpcroutes";
    const MIDDLEWARES: &str = "/apis/traefik.io/v1alpha1/namespaces/ci/middlewares";

    const JSON: &str = "application/json";
    const APPLY_PATCH: &str = "application/apply-patch+yaml";
    const MERGE_PATCH: &str = "application/merge-patch+json";
    const METADATA_LIST: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

    fn mock_cluster() -> (Cluster, ApiHandle) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, NS);
        (Cluster::new(client, NS, POD, DryRun::None), handle)
    }

    /// How the scenario answers a request.
    enum Reply {
        Json(StatusCode, Value),
        /// The request's own body with `metadata.uid` set, as a create or an apply returns it.
        Echo(StatusCode, &'static str),
    }

    /// One expected request and its answer.
    struct Exchange {
        method: Method,
        path: String,
        /// The request's whole query, as decoded pairs (order does not matter).
        query: Vec<(String, String)>,
        content_type: Option<&'static str>,
        accept: Option<&'static str>,
        check_body: Box<dyn FnOnce(&Value) + Send>,
        reply: Reply,
    }

    fn expect(method: Method, path: impl Into<String>) -> Exchange {
        Exchange {
            method,
            path: path.into(),
            query: Vec::new(),
            content_type: None,
            accept: None,
            check_body: Box::new(|_| {}),
            reply: Reply::Json(StatusCode::OK, json!({})),
        }
    }

    impl Exchange {
        fn query(mut self, pairs: &[(&str, &str)]) -> Self {
            self.query = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            self
        }
        fn content_type(mut self, ct: &'static str) -> Self {
            self.content_type = Some(ct);
            self
        }
        fn accept(mut self, accept: &'static str) -> Self {
            self.accept = Some(accept);
            self
        }
        fn body(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
            self.check_body = Box::new(check);
            self
        }
        fn reply(mut self, status: u16, body: Value) -> Self {
            self.reply = Reply::Json(StatusCode::from_u16(status).expect("status"), body);
            self
        }
        fn echo(mut self, status: u16, uid: &'static str) -> Self {
            self.reply = Reply::Echo(StatusCode::from_u16(status).expect("status"), uid);
            self
        }
    }

    // The requests of the converge step, as kube sends them for `Cluster`'s calls.

    fn create(path: &str) -> Exchange {
        expect(Method::POST, path)
            .query(&[("fieldManager", "compose-ingress")])
            .content_type(JSON)
    }

    fn get(path: &str, name: &str) -> Exchange {
        expect(Method::GET, format!("{path}/{name}"))
    }

    fn apply(path: &str, name: &str) -> Exchange {
        expect(Method::PATCH, format!("{path}/{name}"))
            .query(&[("fieldManager", "compose-ingress"), ("force", "true")])
            .content_type(APPLY_PATCH)
    }

    fn delete(path: &str, name: &str, uid: &'static str) -> Exchange {
        expect(Method::DELETE, format!("{path}/{name}"))
            .content_type(JSON)
            .body(move |b| {
                assert_eq!(b["preconditions"]["uid"], uid, "uid precondition: {b}");
                assert_eq!(b["propagationPolicy"], "Background", "{b}");
            })
    }

    fn list(path: &str, continue_token: Option<&str>) -> Exchange {
        let selector = render::pod_selector_string(POD);
        let limit = LIST_PAGE.to_string();
        let mut query = vec![
            ("labelSelector", selector.as_str()),
            ("limit", limit.as_str()),
        ];
        if let Some(token) = continue_token {
            query.push(("continue", token));
        }
        expect(Method::GET, path)
            .query(&query)
            .accept(METADATA_LIST)
    }

    /// A page of a metadata listing.
    fn page(items: Vec<Value>, continue_token: Option<&str>) -> Value {
        json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadataList",
            "metadata": {"continue": continue_token.unwrap_or_default()},
            "items": items,
        })
    }

    /// A `Status` error body, as the apiserver sends it.
    fn status(code: u16, reason: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": format!("mock: {reason}"), "reason": reason, "code": code,
        })
    }

    /// What a listing returns for an object we rendered (and created earlier).
    fn listed(obj: &DesiredObject, uid: &str) -> Value {
        let meta = &obj.object.metadata;
        json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {
                "name": meta.name, "namespace": NS, "uid": uid,
                "labels": meta.labels, "annotations": meta.annotations,
            },
        })
    }

    fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            let bytes = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                match (bytes[i], s.get(i + 1..i + 3)) {
                    (b'%', Some(hex)) if u8::from_str_radix(hex, 16).is_ok() => {
                        out.push(u8::from_str_radix(hex, 16).expect("hex"));
                        i += 3;
                    }
                    (b, _) => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            String::from_utf8(out).expect("utf-8 query")
        };
        let mut pairs: Vec<(String, String)> = query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        pairs.sort();
        pairs
    }

    async fn next_request(
        handle: &mut ApiHandle,
    ) -> Option<(Request<Body>, mock::SendResponse<Response<Body>>)> {
        tokio::time::timeout(Duration::from_secs(10), handle.next_request())
            .await
            .expect("the code under test hangs")
    }

    /// Answers the scenario's requests in order, then requires that no other request comes:
    /// the code under test must drop its client when done, which closes the mock.
    async fn serve(mut handle: ApiHandle, scenario: Vec<Exchange>) {
        for (i, ex) in scenario.into_iter().enumerate() {
            let Some((request, respond)) = next_request(&mut handle).await else {
                panic!(
                    "request {i} never came (the client is gone): expected {} {}",
                    ex.method, ex.path
                );
            };
            let (parts, body) = request.into_parts();
            let what = format!("request {i}: {} {}", parts.method, parts.uri);
            assert_eq!(parts.method, ex.method, "{what}");
            assert_eq!(parts.uri.path(), ex.path, "{what}");
            let mut query = ex.query;
            query.sort();
            assert_eq!(query_pairs(parts.uri.query()), query, "query of {what}");
            let header = |name: http::header::HeaderName| {
                parts.headers.get(name).and_then(|v| v.to_str().ok())
            };
            if let Some(ct) = ex.content_type {
                assert_eq!(header(http::header::CONTENT_TYPE), Some(ct), "{what}");
            }
            if let Some(accept) = ex.accept {
                assert_eq!(header(http::header::ACCEPT), Some(accept), "{what}");
            }
            let bytes = body.collect_bytes().await.expect("request body");
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("JSON request body")
            };
            (ex.check_body)(&body);
            let (code, reply) = match ex.reply {
                Reply::Json(code, value) => (code, value),
                Reply::Echo(code, uid) => {
                    let mut value = body;
                    value["metadata"]["uid"] = json!(uid);
                    (code, value)
                }
            };
            let response = Response::builder()
                .status(code)
                .header(http::header::CONTENT_TYPE, JSON)
                .body(Body::from(serde_json::to_vec(&reply).expect("reply")))
                .expect("response");
            respond.send_response(response);
        }
        if let Some((request, _)) = next_request(&mut handle).await {
            panic!(
                "unexpected request after the scenario: {} {}",
                request.method(),
                request.uri()
            );
        }
    }

    fn assert_ours(body: &Value, project: &str) {
        let labels = &body["metadata"]["labels"];
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE, "{body}");
        assert_eq!(labels[POD_LABEL], POD, "{body}");
        assert_eq!(labels[PROJECT_LABEL], project, "{body}");
        let owners = &body["metadata"]["ownerReferences"];
        assert_eq!(owners[0]["kind"], "Pod", "{body}");
        assert_eq!(owners[0]["name"], POD, "{body}");
        assert_eq!(owners[0]["uid"], POD_UID, "{body}");
        assert!(
            body["metadata"]["annotations"][SPEC_HASH_ANNOTATION].is_string(),
            "{body}"
        );
    }

    fn service_object(name: &str, project: &str) -> DesiredObject {
        let svc = Service {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(NS.to_string()),
                labels: Some(render::ownership_labels(POD, project)),
                annotations: Some(render::ownership_annotations(project)),
                ..ObjectMeta::default()
            },
            ..Service::default()
        };
        DesiredObject::new(Kind::Service, &svc).expect("service")
    }

    /// A live object of the same name that is not this pod's: another pod's, or nobody's.
    fn foreign(name: &str, labels: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS, "uid": "foreign-uid", "labels": labels},
        })
    }

    // ---- Cluster, call by call ----

    #[tokio::test]
    async fn create_posts_the_object_with_our_field_manager() {
        let (cluster, handle) = mock_cluster();
        let obj = service_object("web", PROJECT);
        let scenario = vec![
            create(SERVICES)
                .body(|b| {
                    assert_eq!(b["metadata"]["name"], "web", "{b}");
                    assert_eq!(b["kind"], "Service", "{b}");
                })
                .echo(201, "uid-web"),
        ];
        let (uid, ()) = tokio::join!(
            async move { cluster.upsert(&obj, None).await },
            serve(handle, scenario)
        );
        assert_eq!(uid.expect("created"), Upserted::Created("uid-web".into()));
    }

    #[tokio::test]
    async fn a_known_object_is_server_side_applied_with_force() {
        let (cluster, handle) = mock_cluster();
        let obj = service_object("web", PROJECT);
        let scenario = vec![
            apply(SERVICES, "web")
                .body(|b| {
                    assert_eq!(b["apiVersion"], "v1", "{b}");
                    assert_eq!(b["kind"], "Service", "{b}");
                    // the listed uid: a same-named replacement is refused, never taken over
                    assert_eq!(b["metadata"]["uid"], "uid-web", "{b}");
                })
                .echo(200, "uid-web"),
        ];
        let known = owned_service("web", "uid-web", false);
        let (uid, ()) = tokio::join!(
            async move { cluster.upsert(&obj, Some(&known)).await },
            serve(handle, scenario)
        );
        assert_eq!(uid.expect("applied"), Upserted::Applied("uid-web".into()));
    }

    fn owned_service(name: &str, uid: &str, needs_hand_over: bool) -> OwnedObject {
        OwnedObject {
            kind: Kind::Service,
            name: name.into(),
            uid: uid.into(),
            project: PROJECT.into(),
            spec_hash: None,
            host: None,
            needs_hand_over,
            leftovers: false,
            legacy_selector: false,
            edited: false,
        }
    }

    /// A create's record in `managedFields`, as the apiserver writes it.
    fn created_fields() -> Value {
        json!([{
            "manager": "compose-ingress", "operation": "Update", "apiVersion": "v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:annotations": {"f:rps": {}}}},
        }])
    }

    /// A create is one write: its fields are handed over before the object's first apply, not
    /// at once (what it wrote is what is desired, nothing can be left over yet).
    #[tokio::test]
    async fn a_create_is_one_write() {
        let (cluster, handle) = mock_cluster();
        let obj = service_object("web", PROJECT);
        let mut reply = obj.object.clone();
        reply.metadata.uid = Some("uid-web".into());
        reply.metadata.resource_version = Some("7".into());
        let mut reply = serde_json::to_value(&reply).expect("json");
        reply["metadata"]["managedFields"] = created_fields();
        let scenario = vec![create(SERVICES).reply(201, reply)];
        let (uid, ()) = tokio::join!(
            async move { cluster.upsert(&obj, None).await },
            serve(handle, scenario)
        );
        assert_eq!(uid.expect("created"), Upserted::Created("uid-web".into()));
    }

    #[tokio::test]
    async fn an_object_an_older_sidecar_created_is_handed_over_then_applied() {
        let (cluster, handle) = mock_cluster();
        let obj = service_object("web", PROJECT);
        let mut live = listed(&obj, "uid-web");
        live["metadata"]["resourceVersion"] = json!("9");
        live["metadata"]["managedFields"] = created_fields();
        let scenario = vec![
            get(SERVICES, "web").reply(200, live),
            expect(Method::PATCH, format!("{SERVICES}/web"))
                .content_type(MERGE_PATCH)
                .body(|b| assert_eq!(b["metadata"]["resourceVersion"], "9", "{b}"))
                .reply(200, json!({"metadata": {"name": "web"}})),
            apply(SERVICES, "web").echo(200, "uid-web"),
        ];
        let known = owned_service("web", "uid-web", true);
        let (uid, ()) = tokio::join!(
            async move { cluster.upsert(&obj, Some(&known)).await },
            serve(handle, scenario)
        );
        assert_eq!(uid.expect("applied"), Upserted::Applied("uid-web".into()));
    }

    #[tokio::test]
    async fn an_existing_object_with_our_labels_is_applied() {
        let (cluster, handle) = mock_cluster();
        let obj = service_object("web", PROJECT);
        let live = foreign("web", json!(render::ownership_labels(POD, PROJECT)));
        let scenario = vec![
            create(SERVICES).reply(409, status(409, "AlreadyExists")),
            get(SERVICES, "web").reply(200, live),
            apply(SERVICES, "web").echo(200, "foreign-uid"),
        ];
        let (uid, ()) = tokio::join!(
            async move { cluster.upsert(&obj, None).await },
            serve(handle, scenario)
        );
        assert_eq!(
            uid.expect("applied"),
            Upserted::Applied("foreign-uid".into())
        );
    }

    #[tokio::test]
    async fn a_foreign_object_of_the_same_name_is_left_untouched() {
        // Nobody's (no labels), and another pod's: both are refused, neither is written.
        let other_pod = render::ownership_labels("runner-7", PROJECT);
        for labels in [json!({"app": "web"}), json!(other_pod)] {
            let (cluster, handle) = mock_cluster();
            let obj = service_object("web", PROJECT);
            let scenario = vec![
                create(SERVICES).reply(409, status(409, "AlreadyExists")),
                get(SERVICES, "web").reply(200, foreign("web", labels)),
            ];
            let (result, ()) = tokio::join!(
                async move { cluster.upsert(&obj, None).await },
                serve(handle, scenario)
            );
            let err = result.expect_err("a foreign object must be refused");
            assert!(matches!(err, ClusterError::NotOurs { .. }), "{err:?}");
            let message = err.to_string();
            assert!(
                message.starts_with("Service ci/web exists and is not owned by compose-ingress"),
                "{message}"
            );
        }
    }

    #[tokio::test]
    async fn a_lease_held_by_another_pod_is_taken_not_claimed() {
        let (cluster, handle) = mock_cluster();
        let settings = labels::tests::settings();
        let owner = OwnerPod {
            name: POD.into(),
            uid: POD_UID.into(),
        };
        let host = "web.composition.example.com";
        let lease = DesiredObject::new(
            Kind::Lease,
            &render::host_lease(host, PROJECT, &owner, &settings),
        )
        .expect("lease");
        let name = lease.name().to_string();
        let mut live = listed(&lease, "other-uid");
        live["metadata"]["labels"] = json!(render::ownership_labels("runner-7", "shop"));
        live["metadata"]["annotations"][PROJECT_NAME_ANNOTATION] = json!("shop");
        live["apiVersion"] = json!("coordination.k8s.io/v1");
        live["kind"] = json!("Lease");
        let scenario = vec![
            create(LEASES)
                .body(|b| assert_ours(b, PROJECT))
                .reply(409, status(409, "AlreadyExists")),
            get(LEASES, &name).reply(200, live),
        ];
        let (claim, ()) = tokio::join!(
            async move { cluster.claim(&lease).await },
            serve(handle, scenario)
        );
        assert_eq!(
            claim.expect("claim"),
            Claim::Taken {
                holder_pod: "runner-7".into(),
                holder_project: "shop".into()
            }
        );
    }

    #[tokio::test]
    async fn delete_carries_the_uid_precondition_and_a_replaced_object_is_left_alone() {
        let (cluster, handle) = mock_cluster();
        let scenario = vec![
            delete(SERVICES, "web", "uid-1").reply(200, status(200, "Success")),
            // 409: the uid precondition failed, the object is someone else's now.
            delete(INGRESSES, "web", "uid-2").reply(409, status(409, "Conflict")),
        ];
        let (result, ()) = tokio::join!(
            async move {
                cluster.delete(Kind::Service, "web", "uid-1").await?;
                cluster.delete(Kind::Ingress, "web", "uid-2").await
            },
            serve(handle, scenario)
        );
        result.expect("deleted");
    }

    #[tokio::test]
    async fn list_owned_reads_metadata_pages_by_our_selector() {
        let (cluster, handle) = mock_cluster();
        let a = service_object("a", "one");
        let b = service_object("b", "two");
        let stranger = service_object("c", "three");
        let mut stranger = listed(&stranger, "uid-c");
        stranger["metadata"]["labels"][POD_LABEL] = json!("runner-7");
        let scenario = vec![
            list(LEASES, None).reply(200, page(vec![], None)),
            list(SERVICES, None).reply(200, page(vec![listed(&a, "uid-a")], Some("c1"))),
            list(SERVICES, Some("c1")).reply(200, page(vec![listed(&b, "uid-b"), stranger], None)),
            list(SLICES, None).reply(200, page(vec![], None)),
            // No Traefik CRDs in this cluster, and annotation mode: not an error.
            list(MIDDLEWARES, None).reply(404, status(404, "NotFound")),
            list(INGRESSES, None).reply(200, page(vec![], None)),
            // No Gateway API in this cluster: not an error.
            list(HTTP_ROUTES, None).reply(404, status(404, "NotFound")),
            list(GRPC_ROUTES, None).reply(404, status(404, "NotFound")),
        ];
        let (owned, ()) = tokio::join!(
            async move { cluster.list_owned().await },
            serve(handle, scenario)
        );
        let owned = owned.expect("listing");
        let names: Vec<(&str, &str, &str)> = owned
            .iter()
            .map(|o| (o.name.as_str(), o.uid.as_str(), o.project.as_str()))
            .collect();
        assert_eq!(names, [("a", "uid-a", "one"), ("b", "uid-b", "two")]);
    }

    #[tokio::test]
    async fn in_traefik_middleware_mode_a_forbidden_middleware_listing_is_an_error() {
        let (cluster, handle) = mock_cluster();
        let cluster = cluster.with_middlewares(true);
        let scenario = vec![
            list(LEASES, None).reply(200, page(vec![], None)),
            list(SERVICES, None).reply(200, page(vec![], None)),
            list(SLICES, None).reply(200, page(vec![], None)),
            list(MIDDLEWARES, None).reply(403, status(403, "Forbidden")),
        ];
        let (owned, ()) = tokio::join!(
            async move { cluster.list_owned().await },
            serve(handle, scenario)
        );
        let err = owned.expect_err("a Role without Middlewares fails the listing");
        assert!(err.to_string().contains("Middleware"), "{err}");
    }

    #[tokio::test]
    async fn list_owned_fails_when_a_later_page_fails() {
        let (cluster, handle) = mock_cluster();
        let a = service_object("a", "one");
        let scenario = vec![
            list(LEASES, None).reply(200, page(vec![], None)),
            list(SERVICES, None).reply(200, page(vec![listed(&a, "uid-a")], Some("c1"))),
            list(SERVICES, Some("c1")).reply(500, status(500, "InternalError")),
        ];
        let (owned, ()) = tokio::join!(
            async move { cluster.list_owned().await },
            serve(handle, scenario)
        );
        let err = owned.expect_err("a failed page fails the listing");
        assert!(
            err.to_string().starts_with("cannot list Service ci/*"),
            "{err}"
        );
    }

    // ---- the reconciler's converge step, through `Reconciler::resync_from` ----

    fn observed_demochat() -> ObservedProject {
        let labels = BTreeMap::from([
            (COMPOSE_PROJECT.to_string(), PROJECT.to_string()),
            (COMPOSE_SERVICE.to_string(), "web".to_string()),
            (COMPOSE_CONTAINER_NUMBER.to_string(), "1".to_string()),
            (COMPOSE_ONEOFF.to_string(), "False".to_string()),
            (labels::ENABLE.to_string(), "true".to_string()),
        ]);
        ObservedProject {
            name: PROJECT.into(),
            containers: vec![ObservedContainer {
                id: "id-web".into(),
                name: "demochat-web-1".into(),
                labels,
                state: ContainerState::Running,
                published: vec![PublishedPort {
                    container_port: 5000,
                    protocol: Protocol::Tcp,
                    host_port: 32768,
                    host_ip: "0.0.0.0".into(),
                }],
                health: Default::default(),
            }],
        }
    }

    fn owner() -> OwnerPod {
        OwnerPod {
            name: POD.into(),
            uid: POD_UID.into(),
        }
    }

    /// What the reconciler renders for `observed_demochat()`: its Lease, Service, EndpointSlice
    /// and Ingress.
    fn rendered_demochat() -> (DesiredObject, DesiredObject, DesiredObject, DesiredObject) {
        let settings = labels::tests::settings();
        let d = plan::plan(&observed_demochat(), &settings)
            .desired
            .expect("demochat is exposed");
        assert_eq!(d.backends.len(), 1);
        let lease = render::host_lease(&d.backends[0].host, PROJECT, &owner(), &settings);
        (
            DesiredObject::new(Kind::Lease, &lease).expect("lease"),
            DesiredObject::new(Kind::Service, &render::service(&d, &settings, &owner()))
                .expect("service"),
            DesiredObject::new(
                Kind::EndpointSlice,
                &render::endpoint_slices(&d, &settings, &owner())[0],
            )
            .expect("endpoint slice"),
            DesiredObject::new(Kind::Ingress, &render::ingress(&d, &settings, &owner()))
                .expect("ingress"),
        )
    }

    /// A reconciler whose Docker client is never used (`resync_from` takes Docker's listing)
    /// and whose cluster is the mock. No delete grace: an orphan goes at its second pass.
    fn mock_reconciler() -> (Reconciler, ApiHandle) {
        mock_reconciler_with(Arc::new(Status::default()))
    }

    fn mock_reconciler_with(status: Arc<Status>) -> (Reconciler, ApiHandle) {
        let (cluster, handle) = mock_cluster();
        let docker = crate::docker::DockerClient::new("tcp://127.0.0.1:9", false)
            .expect("a Docker client does no I/O until used");
        let timings = Timings {
            resync_interval: Duration::from_secs(3600),
            debounce: Duration::ZERO,
            settle_time: Duration::ZERO,
            delete_grace: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(1),
        };
        let reconciler = Reconciler::new(
            docker,
            cluster,
            labels::tests::settings(),
            owner(),
            timings,
            status,
        );
        (reconciler, handle)
    }

    fn full_listing(
        leases: Vec<Value>,
        services: Vec<Value>,
        slices: Vec<Value>,
        ingresses: Vec<Value>,
    ) -> Vec<Exchange> {
        vec![
            list(LEASES, None).reply(200, page(leases, None)),
            list(SERVICES, None).reply(200, page(services, None)),
            list(SLICES, None).reply(200, page(slices, None)),
            // annotation mode, a Role without Middlewares: not an error
            list(MIDDLEWARES, None).reply(403, status(403, "Forbidden")),
            list(INGRESSES, None).reply(200, page(ingresses, None)),
            list(HTTP_ROUTES, None).reply(200, page(vec![], None)),
            list(GRPC_ROUTES, None).reply(200, page(vec![], None)),
        ]
    }

    fn snapshot_of(projects: Vec<ObservedProject>) -> BTreeMap<String, ObservedProject> {
        projects.into_iter().map(|p| (p.name.clone(), p)).collect()
    }

    /// Runs full resyncs from these Docker listings against the scenario, then drops the
    /// reconciler (and with it the client) so that `serve` sees that nothing else comes.
    async fn resyncs(
        (mut reconciler, handle): (Reconciler, ApiHandle),
        snapshots: Vec<BTreeMap<String, ObservedProject>>,
        scenario: Vec<Exchange>,
    ) {
        let run = async move {
            for snapshot in snapshots {
                reconciler
                    .resync_from(snapshot, tokio::time::Instant::now())
                    .await;
            }
        };
        tokio::join!(run, serve(handle, scenario));
    }

    #[tokio::test]
    async fn a_new_composition_claims_its_host_then_writes_service_then_route() {
        let (lease, service, slice, ingress) = rendered_demochat();
        let mut scenario = full_listing(vec![], vec![], vec![], vec![]);
        let lease_name = lease.name().to_string();
        scenario.extend([
            create(LEASES)
                .body(move |b| {
                    assert_eq!(b["metadata"]["name"], lease_name.as_str(), "{b}");
                    assert_ours(b, PROJECT);
                })
                .echo(201, "uid-lease"),
            create(SERVICES)
                .body(|b| {
                    assert_eq!(b["kind"], "Service", "{b}");
                    assert_ours(b, PROJECT);
                })
                .echo(201, "uid-svc"),
            create(SLICES)
                .body(|b| {
                    assert_eq!(b["kind"], "EndpointSlice", "{b}");
                    assert_eq!(b["endpoints"][0]["conditions"]["ready"], true, "{b}");
                    assert_ours(b, PROJECT);
                })
                .echo(201, "uid-slice"),
            create(INGRESSES)
                .body(|b| {
                    assert_eq!(b["kind"], "Ingress", "{b}");
                    assert_ours(b, PROJECT);
                })
                .echo(201, "uid-ing"),
        ]);
        assert_eq!(service.name(), ingress.name());
        assert!(slice.name().starts_with(service.name()));
        resyncs(
            mock_reconciler(),
            vec![snapshot_of(vec![observed_demochat()])],
            scenario,
        )
        .await;
    }

    #[tokio::test]
    async fn an_unchanged_composition_makes_no_write() {
        let (lease, service, slice, ingress) = rendered_demochat();
        let scenario = full_listing(
            vec![listed(&lease, "uid-lease")],
            vec![listed(&service, "uid-svc")],
            vec![listed(&slice, "uid-slice")],
            vec![listed(&ingress, "uid-ing")],
        );
        resyncs(
            mock_reconciler(),
            vec![snapshot_of(vec![observed_demochat()])],
            scenario,
        )
        .await;
    }

    #[tokio::test]
    async fn a_changed_composition_is_applied() {
        // The counterpart of the test above: a stale spec hash is rewritten, nothing else.
        let (lease, service, slice, ingress) = rendered_demochat();
        let mut stale = listed(&service, "uid-svc");
        stale["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = json!("0000000000000000");
        let name = service.name().to_string();
        let mut scenario = full_listing(
            vec![listed(&lease, "uid-lease")],
            vec![stale],
            vec![listed(&slice, "uid-slice")],
            vec![listed(&ingress, "uid-ing")],
        );
        scenario.push(
            apply(SERVICES, &name)
                .body(|b| assert_ours(b, PROJECT))
                .echo(200, "uid-svc"),
        );
        resyncs(
            mock_reconciler(),
            vec![snapshot_of(vec![observed_demochat()])],
            scenario,
        )
        .await;
    }

    /// An orphan (objects of a composition Docker no longer has) after a first, complete
    /// listing has started its grace.
    fn orphan() -> DesiredObject {
        service_object("gone-svc", "gone")
    }

    #[tokio::test]
    async fn an_orphan_is_deleted_from_complete_listings() {
        let mut scenario =
            full_listing(vec![], vec![listed(&orphan(), "uid-gone")], vec![], vec![]);
        scenario.extend(full_listing(
            vec![],
            vec![listed(&orphan(), "uid-gone")],
            vec![],
            vec![],
        ));
        scenario.push(delete(SERVICES, "gone-svc", "uid-gone").reply(200, status(200, "Success")));
        resyncs(
            mock_reconciler(),
            vec![BTreeMap::new(), BTreeMap::new()],
            scenario,
        )
        .await;
    }

    #[tokio::test]
    async fn a_failed_listing_page_aborts_gc() {
        // The first pass starts the orphan's grace; the second pass's listing fails on the
        // second page of a later kind, after the orphan was listed: nothing is deleted.
        let mut scenario =
            full_listing(vec![], vec![listed(&orphan(), "uid-gone")], vec![], vec![]);
        scenario.extend([
            list(LEASES, None).reply(200, page(vec![], None)),
            list(SERVICES, None).reply(200, page(vec![listed(&orphan(), "uid-gone")], None)),
            list(SLICES, None).reply(200, page(vec![], None)),
            list(MIDDLEWARES, None).reply(200, page(vec![], None)),
            list(INGRESSES, None).reply(200, page(vec![], None)),
            list(HTTP_ROUTES, None).reply(200, page(vec![], Some("c1"))),
            list(HTTP_ROUTES, Some("c1")).reply(500, status(500, "InternalError")),
        ]);
        resyncs(
            mock_reconciler(),
            vec![BTreeMap::new(), BTreeMap::new()],
            scenario,
        )
        .await;
    }

    #[tokio::test]
    async fn a_host_held_by_another_pod_gets_no_objects() {
        let (lease, _, _, _) = rendered_demochat();
        let name = lease.name().to_string();
        let mut held = listed(&lease, "other-uid");
        held["metadata"]["labels"] = json!(render::ownership_labels("runner-7", "shop"));
        held["metadata"]["annotations"][PROJECT_NAME_ANNOTATION] = json!("shop");
        let mut scenario = full_listing(vec![], vec![], vec![], vec![]);
        scenario.extend([
            create(LEASES).reply(409, status(409, "AlreadyExists")),
            get(LEASES, &name).reply(200, held),
        ]);
        resyncs(
            mock_reconciler(),
            vec![snapshot_of(vec![observed_demochat()])],
            scenario,
        )
        .await;
    }

    #[tokio::test]
    async fn a_foreign_service_of_the_same_name_stops_the_composition_untouched() {
        let (lease, service, _, _) = rendered_demochat();
        let name = service.name().to_string();
        let mut scenario = full_listing(vec![listed(&lease, "uid-lease")], vec![], vec![], vec![]);
        scenario.extend([
            create(SERVICES).reply(409, status(409, "AlreadyExists")),
            get(SERVICES, &name).reply(200, foreign(&name, json!({"app": "web"}))),
        ]);
        resyncs(
            mock_reconciler(),
            vec![snapshot_of(vec![observed_demochat()])],
            scenario,
        )
        .await;
    }

    /// `observed_demochat()` under another project name.
    fn observed_project(project: &str) -> ObservedProject {
        let mut p = observed_demochat();
        p.name = project.to_string();
        for c in &mut p.containers {
            c.name = format!("{project}-web-1");
            c.id = format!("id-{project}");
            c.labels
                .insert(COMPOSE_PROJECT.to_string(), project.to_string());
        }
        p
    }

    /// A failed read of the sidecar's own pod (start-up without POD_UID/POD_IP, clean-up at exit)
    /// says what to fix by what the apiserver answered, not always "the Role".
    #[tokio::test]
    async fn a_failed_read_of_the_own_pod_says_what_to_fix_by_its_status() {
        for (code, reason, says) in [
            (401, "Unauthorized", "token was refused"),
            (403, "Forbidden", "the Role must allow get on pods"),
            (404, "NotFound", "no such pod: POD_NAME and POD_NAMESPACE"),
            (500, "InternalError", "did not answer as expected; retried"),
        ] {
            let (cluster, handle) = mock_cluster();
            let scenario =
                vec![get("/api/v1/namespaces/ci/pods", POD).reply(code, status(code, reason))];
            let (result, ()) = tokio::join!(
                async move { cluster.own_pod().await },
                serve(handle, scenario)
            );
            let e = result.expect_err("an error").to_string();
            assert!(e.contains(says), "{code}: {e}");
            assert!(e.contains("pod ci/runner-3"), "{code}: {e}");
        }
    }

    /// A long pass feeds the liveness heartbeat after every request that came back (a listing
    /// page, a claim, a write), not only when the reconciler's loop turns: a full resync of many
    /// compositions against a slow apiserver must not look like a hung sidecar. Every request is
    /// answered 5 ms after it came; the heartbeat read then must be later than the one read at
    /// the request before. Except within a write wave (src/reconcile/apply.rs): a composition's
    /// EndpointSlice and Ingress are sent together once its Service is answered, so the
    /// Ingress request comes before the slice's answer was read: the same heartbeat. That checks
    /// the waves too: both sent together, neither before the Service's answer.
    #[tokio::test]
    async fn a_long_pass_feeds_the_heartbeat_after_every_request() {
        let status = Arc::new(Status::default());
        let beats = Arc::new(std::sync::Mutex::new(Vec::new()));
        let projects = ["alpha", "beta", "gamma"];
        let mut scenario = full_listing(vec![], vec![], vec![], vec![]);
        for _ in projects {
            scenario.extend([
                create(LEASES).echo(201, "uid-lease"),
                create(SERVICES).echo(201, "uid-svc"),
                create(SLICES).echo(201, "uid-slice"),
                create(INGRESSES).echo(201, "uid-ing"),
            ]);
        }
        let scenario: Vec<Exchange> = scenario
            .into_iter()
            .map(|exchange| {
                let (status, beats) = (status.clone(), beats.clone());
                exchange.body(move |_| {
                    std::thread::sleep(Duration::from_millis(5));
                    beats
                        .lock()
                        .expect("beats")
                        .push(status.last_heartbeat_ms());
                })
            })
            .collect();
        let requests = scenario.len();
        resyncs(
            mock_reconciler_with(status.clone()),
            vec![snapshot_of(projects.map(observed_project).into())],
            scenario,
        )
        .await;
        let beats = beats.lock().expect("beats").clone();
        assert_eq!(beats.len(), requests);
        // The listing's 7 requests, then per composition: Lease, Service, slice + Ingress.
        let second_of_a_wave = |i: usize| i >= 7 && (i - 7) % 4 == 3;
        for (i, pair) in beats.windows(2).enumerate() {
            if second_of_a_wave(i + 1) {
                assert_eq!(
                    pair[1],
                    pair[0],
                    "request {} (an Ingress) was not sent together with request {i} (its \
                     EndpointSlice): {beats:?}",
                    i + 1
                );
            } else {
                assert!(
                    pair[1] > pair[0],
                    "no heartbeat between request {i} and request {}: {beats:?}",
                    i + 1
                );
            }
        }
        assert!(status.alive(Duration::from_secs(60)).is_ok());
    }
}
