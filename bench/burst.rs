//! Phase "burst": many compositions started at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::ListParams;
use testbed::{Sidecar, bed};

use crate::SIDECAR;
use crate::args::Scale;
use crate::clock::say;
use crate::cluster::{audit_offset, audit_writes, dyn_api};
use crate::docker::{
    create_composition, ensure_networks, remove_all, start_composition, watch_start_events,
};
use crate::http::{metric, wait_ready};
use crate::pods::{finish_pod, phase_pod};
use crate::process::{Cost, measure_cost};

#[derive(Debug, serde::Serialize)]
pub struct BurstResult {
    pub compositions: usize,
    pub containers_started: usize,
    pub all_exposed_ms: Option<f64>,
    pub writes: BTreeMap<String, usize>,
    pub route_and_service_writes_per_composition: f64,
    pub docker_start_events_seen_by_bench: usize,
    pub docker_start_events_seen_by_sidecar: f64,
    pub docker_events_dropped: f64,
    pub sidecar_cost_after: Cost,
}

pub async fn phase_burst(scale: &Scale) -> BurstResult {
    let (pod, kubeconfig) = phase_pod("burst").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let admin = bed().admin().await;
    let services = ["web", "api", "docs"];
    let n = scale.burst_compositions;
    let projects: Vec<String> = (0..n).map(|i| format!("burst-{i:03}")).collect();
    say(format!(
        "burst: creating {n} compositions x 3 services (not started)"
    ));
    futures::stream::iter(&projects)
        .for_each_concurrent(8, |p| {
            create_composition(&docker, p, &services, "benchnet0", &pod.ip, &[])
        })
        .await;
    let side = Sidecar::start_with_kubeconfig(&SIDECAR, &pod, &kubeconfig, &[], "sidecar-burst");
    wait_ready(&side, Duration::from_secs(60)).await;
    let (events, ev_task) = watch_start_events(docker.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let offset = audit_offset();
    let before = metric(
        &side.listen,
        "compose_ingress_docker_events_total{action=\"start\"}",
    )
    .await;
    let before = if before.is_nan() { 0.0 } else { before };
    say("burst: starting every container at once");
    let t0 = Instant::now();
    let names: Vec<(String, &str)> = projects
        .iter()
        .flat_map(|p| services.iter().map(move |s| (p.clone(), *s)))
        .collect();
    futures::stream::iter(&names)
        .for_each_concurrent(64, |(p, s)| {
            start_composition(&docker, p, std::slice::from_ref(s))
        })
        .await;
    let started_in = t0.elapsed();
    say(format!(
        "burst: docker started {} containers in {started_in:?}",
        names.len()
    ));
    // All exposed: every composition has an Ingress with 3 hosts and a Service with 3 ports.
    let ing_api = dyn_api(&admin, &pod.namespace, "Ingress");
    let svc_api = dyn_api(&admin, &pod.namespace, "Service");
    let mut all_exposed = None;
    while t0.elapsed() < Duration::from_secs(300) {
        let lp = ListParams::default().labels("app.kubernetes.io/managed-by=compose-ingress");
        let (ings, svcs) = (ing_api.list(&lp).await, svc_api.list(&lp).await);
        if let (Ok(ings), Ok(svcs)) = (ings, svcs) {
            let full_ing = ings
                .items
                .iter()
                .filter(|o| o.data["spec"]["rules"].as_array().map(|r| r.len()) == Some(3))
                .count();
            let full_svc = svcs
                .items
                .iter()
                .filter(|o| o.data["spec"]["ports"].as_array().map(|r| r.len()) == Some(3))
                .count();
            if full_ing == n && full_svc == n {
                all_exposed = Some(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    say(format!("burst: all exposed after {all_exposed:?} ms"));
    // Let stragglers (retries, events) land, then count from the apiserver's side.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let writes = audit_writes(offset, &pod.namespace);
    let route_writes: usize = writes
        .iter()
        .filter(|(k, _)| k.contains(" services") || k.contains(" ingresses"))
        .map(|(_, v)| v)
        .sum();
    let after = metric(
        &side.listen,
        "compose_ingress_docker_events_total{action=\"start\"}",
    )
    .await;
    let seen_by_sidecar = after - before;
    let bench_seen = *events.count.lock().expect("lock");
    let cost = measure_cost(
        side.pid(),
        Duration::from_secs(if scale.smoke { 1 } else { 5 }),
    )
    .await;
    let result = BurstResult {
        compositions: n,
        containers_started: names.len(),
        all_exposed_ms: all_exposed,
        route_and_service_writes_per_composition: route_writes as f64 / n as f64,
        writes,
        docker_start_events_seen_by_bench: bench_seen,
        docker_start_events_seen_by_sidecar: seen_by_sidecar,
        docker_events_dropped: names.len() as f64 - seen_by_sidecar,
        sidecar_cost_after: cost,
    };
    say(format!("burst: {result:?}"));
    ev_task.abort();
    side.stop();
    remove_all(&docker).await;
    finish_pod(&pod);
    result
}
