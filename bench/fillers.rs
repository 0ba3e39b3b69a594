//! Filler routes: N Ingresses (or HTTPRoutes) of a class that a controller must hold while a
//! phase measures, each routing a host of its own to one backend Service with a real endpoint,
//! so the controller builds a route for every one of them. They live in the phase pod's
//! namespace, carry the label `bench=filler`, and are deleted by the phase (and with its
//! namespace, also when a phase panics: see [`NamespaceGuard`]).

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use serde_json::json;
use testbed::{RunnerPod, bed};

use crate::clock::say;
use crate::cluster::{dyn_api, resource};
use crate::http::http_get;
use crate::pods::delete_namespace;

/// The host of filler `i` (outside the sidecar's domain: no composition can collide with it).
pub fn filler_host(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i}.filler.example.com")
}

/// Creates fillers `<prefix>-<i>` for i in from..to in `ns`, of `kind` (an Ingress of `class`,
/// or an HTTPRoute on the bed's Gateway), all routing to the `dummy` Service.
pub async fn create(
    admin: &kube::Client,
    ns: &str,
    kind: &str,
    class: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) {
    let api = dyn_api(admin, ns, kind);
    futures::stream::iter(range)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            async move { create_one(&api, kind, class, prefix, i).await }
        })
        .await;
}

pub async fn create_one(api: &Api<DynamicObject>, kind: &str, class: &str, prefix: &str, i: usize) {
    let host = filler_host(prefix, i);
    let name = format!("{prefix}-{i}");
    let obj = if kind == "Ingress" {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
          "metadata": {"name": name, "labels": {"bench": "filler"}},
          "spec": {"ingressClassName": class, "rules": [{"host": host, "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "dummy", "port": {"number": 80}}}}]}}]}})
    } else {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
          "metadata": {"name": name, "labels": {"bench": "filler"}},
          "spec": {"parentRefs": [{"name": bed().get("GATEWAY_NAME"), "namespace": bed().get("GATEWAY_NAMESPACE")}],
            "hostnames": [host], "rules": [{"backendRefs": [{"name": "dummy", "port": 80}]}]}})
    };
    let obj: DynamicObject = serde_json::from_value(obj).expect("filler object");
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create filler {kind} {name}: {e}"),
    }
}

/// The backend of every filler: a Service selecting the phase's runner pod on a closed port, so
/// it has a ready endpoint (the controller routes the host, and answers 502/503, not 404).
pub async fn prepare_backend(admin: &kube::Client, pod: &RunnerPod) {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dummy"},
        "spec": {"selector": {"statefulset.kubernetes.io/pod-name": pod.name},
                 "ports": [{"port": 80, "targetPort": 9}]}});
    let api = dyn_api(admin, &pod.namespace, "Service");
    let _ = api.delete("dummy", &DeleteParams::default()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.create(
        &PostParams::default(),
        &serde_json::from_value(svc).expect("svc"),
    )
    .await
    .expect("create dummy Service");
}

/// Deletes every filler of `kind` in `ns` and waits (bounded) until the apiserver lists none.
pub async fn delete_all(admin: &kube::Client, ns: &str, kind: &str) {
    let api = dyn_api(admin, ns, kind);
    let _ = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("bench=filler"),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        let n = api
            .list_metadata(&ListParams::default().labels("bench=filler"))
            .await
            .map(|l| l.items.len())
            .unwrap_or(1);
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    say(format!(
        "WARNING: fillers of {kind} in {ns} still listed after 600 s"
    ));
}

/// Waits (bounded) until the controller at `web` routes `host` (any answer but 404: the
/// filler's endpoint is a closed port) or, with `routed` false, no longer routes it (a 404, or
/// no answer at all: Envoy closes its listener when Contour has no route left); returns how
/// long it took, None when the deadline passed.
pub async fn wait_routed(web: &str, host: &str, routed: bool, deadline: Duration) -> Option<f64> {
    let t = Instant::now();
    while t.elapsed() < deadline {
        let code = http_get(web, host, "/", Duration::from_secs(5)).await;
        let is_routed = code.is_some_and(|(c, _)| c != 404);
        if is_routed == routed {
            return Some(t.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Counts the bed's routes (Ingresses and HTTPRoutes) and refuses to measure above `max` of them:
/// "N existing routes" is only true without others (an interrupted run's 2000 leftovers once
/// doubled every point). The smoke run in ./test comes after the integration tests, whose
/// routes it tolerates; a phase on a shared bed may tolerate a few and record them.
pub async fn routes_of_others(admin: &kube::Client, phase: &str, max: usize, smoke: bool) -> usize {
    let mut total = 0;
    for kind in ["Ingress", "HTTPRoute"] {
        let all: Api<DynamicObject> = Api::all_with(admin.clone(), &resource(kind));
        let others = all
            .list_metadata(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("{phase}: cannot list the bed's {kind} objects: {e}"))
            .items
            .len();
        say(format!(
            "{phase}: {others} {kind} objects of others on the bed"
        ));
        total += others;
    }
    assert!(
        total <= max || smoke,
        "{phase}: {total} routes already exist on the bed (an interrupted run or tests left \
         them; this phase tolerates {max}): delete their namespaces, or start from a fresh bed \
         (tests/testbed/down.sh), and run again"
    );
    total
}

/// Deletes a phase's namespace (and so its fillers) if the phase panics: thousands of leftover
/// routes would skew every later measurement on the bed.
pub struct NamespaceGuard(pub String);

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            delete_namespace(&self.0);
        }
    }
}
