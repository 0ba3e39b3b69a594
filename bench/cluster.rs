//! Kubernetes: watches, the apiserver's audit log, the sidecar's objects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Seek};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, WatchEvent,
    WatchParams,
};
use serde_json::Value;
use testbed::bed;

use crate::clock::{now_ns, say};

pub const SA_USER: &str = "compose-ingress";

pub fn resource(kind: &str) -> ApiResource {
    let gvk = match kind {
        "Service" => GroupVersionKind::gvk("", "v1", "Service"),
        "Ingress" => GroupVersionKind::gvk("networking.k8s.io", "v1", "Ingress"),
        "HTTPRoute" => GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "Lease" => GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"),
        "EndpointSlice" => GroupVersionKind::gvk("discovery.k8s.io", "v1", "EndpointSlice"),
        "GRPCRoute" => GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "GRPCRoute"),
        "Middleware" => GroupVersionKind::gvk("traefik.io", "v1alpha1", "Middleware"),
        other => panic!("unknown kind {other}"),
    };
    ApiResource::from_gvk(&gvk)
}

pub fn dyn_api(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &resource(kind))
}

/// When each (kind, project) was first seen through an apiserver watch (local wall clock, ns).
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<HashMap<(String, String), i128>>>);

impl Seen {
    pub fn get(&self, kind: &str, project: &str) -> Option<i128> {
        self.0
            .lock()
            .expect("lock")
            .get(&(kind.to_string(), project.to_string()))
            .copied()
    }
}

/// Watches `kind` in `ns` (re-listing when a watch ends) and records first sightings by the
/// compose-ingress/project label.
pub fn watch_kind(
    client: kube::Client,
    ns: String,
    kind: &'static str,
    seen: Seen,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api = dyn_api(&client, &ns, kind);
        let record = |o: &DynamicObject| {
            if let Some(p) = o
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("compose-ingress/project"))
            {
                seen.0
                    .lock()
                    .expect("lock")
                    .entry((kind.to_string(), p.clone()))
                    .or_insert_with(now_ns);
            }
        };
        loop {
            let Ok(list) = api.list(&ListParams::default()).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            list.items.iter().for_each(record);
            let rv = list.metadata.resource_version.unwrap_or_default();
            let Ok(stream) = api.watch(&WatchParams::default().timeout(240), &rv).await else {
                continue;
            };
            let mut stream = stream.boxed();
            while let Ok(Some(ev)) = stream.try_next().await {
                match ev {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => record(&o),
                    WatchEvent::Error(_) => break,
                    _ => {}
                }
            }
        }
    })
}

/// The apiserver's audit log: writes (create/update/patch/delete) made since `offset` by the
/// sidecar's ServiceAccount of `ns`, counted by "verb resource".
pub fn audit_offset() -> u64 {
    std::fs::metadata(audit_path())
        .map(|m| m.len())
        .unwrap_or(0)
}

pub fn audit_path() -> PathBuf {
    PathBuf::from(bed().get("TESTBED_DIR")).join("logs/audit.log")
}

pub fn audit_writes(offset: u64, ns: &str) -> BTreeMap<String, usize> {
    let user = format!("system:serviceaccount:{ns}:{SA_USER}");
    let mut out = BTreeMap::new();
    let Ok(mut f) = std::fs::File::open(audit_path()) else {
        return out;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < offset {
        say("WARNING: the audit log was rotated during the measurement; counts are partial");
    } else {
        let _ = f.seek(std::io::SeekFrom::Start(offset));
    }
    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["user"]["username"] != user.as_str() || v["stage"] != "ResponseComplete" {
            continue;
        }
        let verb = v["verb"].as_str().unwrap_or("?");
        if !matches!(
            verb,
            "create" | "update" | "patch" | "delete" | "deletecollection"
        ) {
            continue;
        }
        let res = v["objectRef"]["resource"].as_str().unwrap_or("?");
        let code = v["responseStatus"]["code"].as_i64().unwrap_or(0);
        let ok = if (200..300).contains(&code) {
            ""
        } else {
            " (failed)"
        };
        *out.entry(format!("{verb} {res}{ok}")).or_insert(0) += 1;
    }
    out
}

pub async fn count_owned(client: &kube::Client, ns: &str, kind: &str) -> usize {
    dyn_api(client, ns, kind)
        .list_metadata(
            &ListParams::default().labels("app.kubernetes.io/managed-by=compose-ingress"),
        )
        .await
        .map(|l| l.items.len())
        .unwrap_or(usize::MAX)
}

/// Projects that have owned objects of `kind` in `ns`.
pub async fn owned_projects(client: &kube::Client, ns: &str, kind: &str) -> HashSet<String> {
    dyn_api(client, ns, kind)
        .list_metadata(
            &ListParams::default().labels("app.kubernetes.io/managed-by=compose-ingress"),
        )
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|o| o.metadata.labels?.get("compose-ingress/project").cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes every object compose-ingress owns in `ns` (between modes of a phase).
pub async fn delete_owned(admin: &kube::Client, ns: &str) {
    // Every kind the sidecar writes: a kind left out (EndpointSlices were, once) leaves
    // orphans that the next phase's sidecar GCs while it is being measured.
    for k in [
        "Ingress",
        "HTTPRoute",
        "GRPCRoute",
        "Middleware",
        "Service",
        "EndpointSlice",
        "Lease",
    ] {
        let _ = dyn_api(admin, ns, k)
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels("app.kubernetes.io/managed-by=compose-ingress"),
            )
            .await;
    }
}
