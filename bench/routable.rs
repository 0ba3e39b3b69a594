//! Phase "routable": time to routable (through the bed's Traefik) after `docker-compose up -d`
//! returns, against the number of existing routes of the same kind (Ingress and HTTPRoute).

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};
use testbed::{DOMAIN, RunnerPod, Sidecar, bed};

use crate::SIDECAR;
use crate::args::Scale;
use crate::clock::say;
use crate::cluster::{delete_owned, dyn_api, resource};
use crate::compose::{chosen_host_label, compose_file, compose_up};
use crate::docker::{ensure_networks, remove_all};
use crate::http::{http_get, until_200, wait_ready};
use crate::pods::{finish_pod, phase_pod};
use crate::stats::{Stats, stats};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RoutableResult {
    pub api: String,
    pub existing: usize,
    pub stats: Stats,
    pub failed: usize,
    pub samples_ms: Vec<f64>,
}

/// Creates filler routes `filler-<i>` for i in from..to in `ns` (the phase pod's namespace), of
/// `kind`, each routing a host of its own to the dummy Service (which selects the pod, so it has
/// an endpoint and Traefik builds a router for every filler).
pub async fn create_fillers(admin: &kube::Client, ns: &str, kind: &str, from: usize, to: usize) {
    let api = dyn_api(admin, ns, kind);
    futures::stream::iter(from..to)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            async move {
                let host = format!("filler-{i}.filler.example.com");
                let name = format!("filler-{i}");
                let obj = if kind == "Ingress" {
                    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                      "metadata": {"name": name, "labels": {"bench": "filler"}},
                      "spec": {"ingressClassName": "traefik", "rules": [{"host": host, "http": {"paths": [
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
                    Err(e) => panic!("create filler {kind} {i}: {e}"),
                }
            }
        })
        .await;
}

pub async fn prepare_filler_ns(admin: &kube::Client, pod: &RunnerPod) {
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

pub async fn delete_fillers(admin: &kube::Client, ns: &str, kind: &str) {
    let api = dyn_api(admin, ns, kind);
    let _ = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("bench=filler"),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let n = api
            .list_metadata(&ListParams::default().labels("bench=filler"))
            .await
            .map(|l| l.items.len())
            .unwrap_or(1);
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the bed's Traefik reports at least `n` HTTP routers (its API), bounded.
pub async fn wait_traefik_routers(n: usize, deadline: Duration) -> usize {
    let admin_addr = bed()
        .get("TRAEFIK_ADMIN")
        .trim_start_matches("http://")
        .to_string();
    let start = Instant::now();
    let mut last = 0;
    while start.elapsed() < deadline {
        if let Some((200, body)) = http_get(
            &admin_addr,
            "localhost",
            "/api/overview",
            Duration::from_secs(5),
        )
        .await
        {
            last = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["http"]["routers"]["total"].as_u64())
                .unwrap_or(0) as usize;
            if last >= n {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last
}

pub async fn phase_routable(scale: &Scale) -> Vec<RoutableResult> {
    let (pod, kubeconfig) = phase_pod("routable").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let admin = bed().admin().await;
    // "N existing routes" is only true on a bed without other routes: Traefik builds routers for
    // every namespace, so leftovers of an interrupted run or of tests would skew every point.
    // (The smoke run in ./test comes after the integration tests, whose routes it tolerates.)
    for kind in ["Ingress", "HTTPRoute"] {
        let all: Api<DynamicObject> = Api::all_with(admin.clone(), &resource(kind));
        let others = all
            .list_metadata(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("routable: cannot list the bed's {kind} objects: {e}"))
            .items
            .len();
        say(format!(
            "routable: {others} {kind} objects of others on the bed"
        ));
        assert!(
            others == 0 || scale.smoke,
            "routable: {others} {kind} objects already exist on the bed (an interrupted run or \
             tests left them): delete their namespaces, or start from a fresh bed \
             (tests/testbed/down.sh), and run again"
        );
    }
    prepare_filler_ns(&admin, &pod).await;
    let traefik = bed()
        .get("TRAEFIK_WEB")
        .trim_start_matches("http://")
        .to_string();
    let mut results = Vec::new();
    for api in ["ingress", "gateway"] {
        let kind = if api == "ingress" {
            "Ingress"
        } else {
            "HTTPRoute"
        };
        let gw = bed().gateway();
        let mut flags = vec!["--route-api", api];
        if api == "gateway" {
            flags.extend(["--gateway", gw.as_str()]);
        }
        let side = Sidecar::start_with_kubeconfig(
            &SIDECAR,
            &pod,
            &kubeconfig,
            &flags,
            &format!("sidecar-{api}"),
        );
        wait_ready(&side, Duration::from_secs(60)).await;
        let mut have = 0;
        for &level in &scale.routable_levels {
            if level > have {
                say(format!("routable/{api}: creating fillers {have}..{level}"));
                create_fillers(&admin, &pod.namespace, kind, have, level).await;
                have = level;
                // Traefik has taken the fillers in when it routes the last one (its endpoint, the
                // pod IP on a closed port, answers 502 instead of the 404 of an unknown host).
                let last = format!("filler-{}.filler.example.com", level - 1);
                let t = Instant::now();
                let mut routed = false;
                while t.elapsed() < Duration::from_secs(180) && !routed {
                    let code = http_get(&traefik, &last, "/", Duration::from_secs(5)).await;
                    routed = code.is_some_and(|(c, _)| c != 404);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                say(format!(
                    "routable/{api}: Traefik routes the fillers after {:?} (routed: {routed}; {} routers)",
                    t.elapsed(),
                    wait_traefik_routers(0, Duration::from_secs(5)).await
                ));
            }
            let mut samples = Vec::new();
            let mut failed = 0;
            for k in 0..scale.routable_samples {
                let project = format!("rt-{api}-{level}-{k}");
                let host_label = chosen_host_label(&project, &pod);
                let file = compose_file(&pod, &project, &host_label, None);
                compose_up(&pod, &project, &file);
                let t0 = Instant::now();
                let host = format!("{host_label}.{DOMAIN}");
                match until_200(&traefik, &host, t0, Duration::from_secs(60)).await {
                    Some(ms) => samples.push(ms),
                    None => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let st = stats(&samples);
            say(format!(
                "routable/{api} with {level} existing: {st:?} failed {failed}"
            ));
            results.push(RoutableResult {
                api: api.to_string(),
                existing: level,
                stats: st,
                failed,
                samples_ms: samples,
            });
        }
        side.stop();
        remove_all(&docker).await;
        delete_fillers(&admin, &pod.namespace, kind).await;
        // The stopped sidecar leaves its objects (cleanup never); delete them for the next mode.
        delete_owned(&admin, &pod.namespace).await;
    }
    finish_pod(&pod);
    results
}
