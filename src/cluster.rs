//! The Kubernetes edge: create, server-side apply, list-owned and delete of this pod's objects.
//! Every object goes through the same generic path (`DynamicObject`), so ownership checks are
//! written once: an object is only ever written when it is ours (created by us, or carrying this
//! pod's ownership labels), and only deleted with a uid precondition from a listing by this pod's
//! label selector.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    Preconditions,
};
use serde::Serialize;
use tracing::debug;

use crate::config::DryRun;
use crate::render::{
    self, HOST_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, POD_LABEL, PROJECT_LABEL,
    PROJECT_NAME_ANNOTATION, SPEC_HASH_ANNOTATION,
};

pub const FIELD_MANAGER: &str = "compose-ingress";

/// Page size of the owned-object listings.
const LIST_PAGE: u32 = 500;

/// The kinds of object the sidecar owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Lease,
    Service,
    Ingress,
    HttpRoute,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Lease, Kind::Service, Kind::Ingress, Kind::HttpRoute];

    pub fn resource(self) -> ApiResource {
        match self {
            Kind::Lease => ApiResource::erase::<k8s_openapi::api::coordination::v1::Lease>(&()),
            Kind::Service => ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
            Kind::Ingress => ApiResource::erase::<k8s_openapi::api::networking::v1::Ingress>(&()),
            Kind::HttpRoute => render::http_route_resource(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Lease => "Lease",
            Kind::Service => "Service",
            Kind::Ingress => "Ingress",
            Kind::HttpRoute => "HTTPRoute",
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
    #[error("cannot read pod {namespace}/{name}: {source} (the Role must allow get on pods)")]
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

#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    namespace: String,
    pod: String,
    dry_run: DryRun,
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
        }
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
        api.get(&self.pod)
            .await
            .map_err(|source| ClusterError::Pod {
                namespace: self.namespace.clone(),
                name: self.pod.clone(),
                source: Box::new(source),
            })
    }

    /// Every object of this pod, of every kind (a missing HTTPRoute CRD is not an error).
    pub async fn list_owned(&self) -> Result<Vec<OwnedObject>, ClusterError> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            // Metadata only (names, uids, labels, the spec-hash annotation is all we need), in
            // pages: a full listing of thousands of objects would hold every spec in memory.
            let mut lp = ListParams::default()
                .labels(&render::pod_selector_string(&self.pod))
                .limit(LIST_PAGE);
            loop {
                let page = match self.api(kind).list_metadata(&lp).await {
                    Ok(l) => l,
                    Err(e) if kind == Kind::HttpRoute && is_status(&e, 404) => break,
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
        match api.create(&self.post_params(), &obj.object).await {
            Ok(created) => Ok(Created::New {
                uid: created.metadata.uid.unwrap_or_default(),
            }),
            Err(e) if is_status(&e, 409) => {
                let live =
                    api.get(obj.name())
                        .await
                        .map_err(self.err("get", obj.kind, obj.name()))?;
                Ok(Created::Exists(Box::new(live)))
            }
            Err(e) => Err(self.err("create", obj.kind, obj.name())(e)),
        }
    }

    /// Server-side apply of an object known to be ours (field manager `compose-ingress`).
    pub async fn apply(&self, obj: &DesiredObject) -> Result<String, ClusterError> {
        if self.dry_run != DryRun::None {
            self.print("apply", obj);
            if self.dry_run == DryRun::Client {
                return Ok(String::new());
            }
        }
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        params.dry_run = self.dry_run == DryRun::Server;
        let applied = self
            .api(obj.kind)
            .patch(obj.name(), &params, &Patch::Apply(&obj.object))
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
        known_ours: bool,
    ) -> Result<String, ClusterError> {
        if known_ours {
            return self.apply(obj).await;
        }
        match self.create(obj).await? {
            Created::New { uid } => Ok(uid),
            Created::Exists(live) if self.is_ours(&live.metadata) => self.apply(obj).await,
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
        match self.api(kind).delete(name, &params).await {
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
