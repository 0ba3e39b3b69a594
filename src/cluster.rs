//! The Kubernetes edge: create, server-side apply, list-owned and delete of this pod's objects.
//! Every object goes through the same generic path (`DynamicObject`), so ownership checks are
//! written once: an object is only ever written when it is ours (created by us, or carrying this
//! pod's ownership labels), and only deleted with a uid precondition from a listing by this pod's
//! label selector.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions,
};
use tracing::debug;

use crate::api_reach::describe;
use crate::managed_fields;
use crate::model::DryRun;
use crate::objects::{
    self, DesiredObject, EncodeError, HOST_ANNOTATION, Kind, POD_LABEL, PROJECT_NAME_ANNOTATION,
    SPEC_HASH_ANNOTATION,
};

pub(crate) const FIELD_MANAGER: &str = "compose-ingress";

/// Page size of the owned-object listings. A page is parsed whole (metadata with managedFields,
/// a few KiB per object), and glibc keeps the heap of the largest page resident among the
/// long-lived state allocated meanwhile: 500 cost ~2 MiB more RSS than 100 on a restart with 250
/// compositions (BENCHMARKS §5); 50 saved 0.4 MiB more but doubles the requests of a resync.
pub(crate) const LIST_PAGE: u32 = 100;

/// One of this pod's objects, as listed by its ownership labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnedObject {
    pub(crate) kind: Kind,
    pub(crate) name: String,
    pub(crate) uid: String,
    /// The composition it belongs to: the raw project name (annotation), falling back to the
    /// project label.
    pub(crate) composition: String,
    pub(crate) spec_hash: Option<String>,
    /// For Leases: the host they claim.
    pub(crate) host: Option<String>,
    /// Some of its fields are still recorded under the create's entry: they are handed to the
    /// apply entry before its next apply (src/managed_fields.rs).
    pub(crate) needs_hand_over: bool,
    /// The create's entry owns fields the last apply did not send (an object an older sidecar
    /// created and changed): written once more even when its spec is unchanged.
    pub(crate) leftovers: bool,
    /// A Service with a selector, from a sidecar before health-gated routing. Removing the
    /// selector would leave the EndpointSlice controller's slices behind, unmanaged (they would
    /// keep routing, to ports that may change hands): such a Service is deleted and created
    /// again, and the garbage collector takes the controller's slices with it.
    pub(crate) legacy_selector: bool,
    /// Another manager owns fields of it (a hand edit): written at the next pass even when its
    /// spec is unchanged, after those fields are handed to our apply entry, so that the apply
    /// sets it back to what is desired (src/managed_fields.rs).
    pub(crate) edited: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot {verb} {kind} {namespace}/{name}: {}", describe(source))]
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
        "cannot read pod {namespace}/{name}: {}{}",
        describe(source),
        pod_read_hint(source)
    )]
    Pod {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// What to do about a failed read of the sidecar's own pod, beyond what [`describe`] says of
/// every request.
fn pod_read_hint(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 404 => {
            "; fix: POD_NAME and POD_NAMESPACE must be the pod's own, from the downward API"
        }
        _ => "",
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
pub(crate) enum Upserted {
    Created(String),
    Applied(String),
}

impl Upserted {
    pub(crate) fn uid(&self) -> &str {
        match self {
            Upserted::Created(uid) | Upserted::Applied(uid) => uid,
        }
    }
}

/// Result of claiming a host with a Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The Lease is ours (created now, or already this pod's).
    Ours { uid: String },
    /// Another pod (or another composition of this pod) holds it.
    Taken {
        holder_pod: String,
        holder_composition: String,
    },
}

/// What a create found. A name that exists is an answer rather than a fault (the caller decides
/// whether it is ours), so it is not a [`ClusterError`].
#[derive(Debug)]
pub(crate) enum Created {
    /// Created now; its uid (empty in client-side dry-run).
    New { uid: String },
    /// An object of that name already existed; it was left as it is.
    Exists(Box<DynamicObject>),
}

/// Called whenever an API request of a [`Cluster`] came back (see [`Cluster::with_progress`]).
pub(crate) type Progress = Arc<dyn Fn() + Send + Sync>;

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
    pub(crate) fn with_progress(mut self, progress: Progress) -> Self {
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

    /// The API client (the Event poster and the Lease watch share it).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
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
    fn is_ours(&self, meta: &kube::api::ObjectMeta) -> bool {
        objects::is_of_pod(meta, &self.pod)
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
    pub(crate) async fn list_owned(&self) -> Result<Vec<OwnedObject>, ClusterError> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            // Metadata only (names, uids, labels, the spec-hash annotation is all we need), in
            // pages: a full listing of thousands of objects would hold every spec in memory.
            let mut lp = ListParams::default()
                .labels(&objects::pod_selector(&self.pod))
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
        let composition = objects::composition_of(&meta);
        let annotations = meta.annotations.unwrap_or_default();
        Some(OwnedObject {
            kind,
            name: meta.name.unwrap_or_default(),
            uid: meta.uid.unwrap_or_default(),
            composition,
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
    pub(crate) async fn create(&self, obj: &DesiredObject) -> Result<Created, ClusterError> {
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
    pub(crate) async fn hand_over(
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
    pub(crate) async fn hand_over_live(&self, kind: Kind, name: &str) -> Result<(), ClusterError> {
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
    pub(crate) async fn apply(
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
    pub(crate) async fn upsert(
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
    pub(crate) async fn claim(&self, lease: &DesiredObject) -> Result<Claim, ClusterError> {
        match self.create(lease).await? {
            Created::New { uid } => Ok(Claim::Ours { uid }),
            Created::Exists(live) => {
                let holder_composition = objects::composition_of(&live.metadata);
                let mine = lease
                    .object
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(PROJECT_NAME_ANNOTATION))
                    .cloned()
                    .unwrap_or_default();
                if self.is_ours(&live.metadata) && holder_composition == mine {
                    Ok(Claim::Ours {
                        uid: live.metadata.uid.unwrap_or_default(),
                    })
                } else {
                    let holder_pod = live
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(POD_LABEL))
                        .cloned()
                        .unwrap_or_else(|| "(not compose-ingress)".to_string());
                    Ok(Claim::Taken {
                        holder_pod,
                        holder_composition,
                    })
                }
            }
        }
    }

    /// Deletes one of our objects, only if it is still the one we listed (uid precondition).
    pub(crate) async fn delete(
        &self,
        kind: Kind,
        name: &str,
        uid: &str,
    ) -> Result<(), ClusterError> {
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

#[cfg(test)]
mod tests;
