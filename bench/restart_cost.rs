//! Phases "restart" (a restart with live compositions and orphans) and its cost measurements
//! (idle and at scale).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use bollard::Docker;
use futures::StreamExt;
use testbed::{Sidecar, bed};

use crate::SIDECAR;
use crate::args::Scale;
use crate::clock::say;
use crate::cluster::{audit_offset, audit_writes, count_owned, owned_projects};
use crate::docker::{
    create_composition, ensure_networks, remove_all, remove_composition, start_composition,
};
use crate::http::wait_ready;
use crate::pods::{finish_pod, phase_pod};
use crate::process::{Cost, measure_cost};

#[derive(Debug, serde::Serialize)]
pub struct RestartResult {
    pub live: usize,
    pub orphans: usize,
    pub ready_after_restart_ms: f64,
    pub converged_ms: Option<f64>,
    pub writes: BTreeMap<String, usize>,
    pub writes_to_unchanged_objects: usize,
    pub orphans_left: usize,
}

#[derive(Debug, serde::Serialize)]
pub struct CostResult {
    pub idle: Cost,
    pub at_restart_live: Cost,
    pub compositions: usize,
    pub exposed_in_ms: Option<f64>,
    pub at_scale: Cost,
    pub binary_bytes: u64,
    pub static_binary_bytes: Option<u64>,
}

pub async fn start_many(
    docker: &Docker,
    projects: &[String],
    pod_ip: &str,
    net_of: impl Fn(usize) -> String,
) {
    futures::stream::iter(projects.iter().enumerate())
        .for_each_concurrent(6, |(i, p)| {
            let net = net_of(i);
            async move {
                create_composition(docker, p, &["web"], &net, pod_ip, &[]).await;
                start_composition(docker, p, &["web"]).await;
            }
        })
        .await;
}

pub async fn wait_count(
    admin: &kube::Client,
    ns: &str,
    want: usize,
    limit: Duration,
) -> Option<f64> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if count_owned(admin, ns, "Ingress").await == want
            && count_owned(admin, ns, "Service").await == want
        {
            return Some(t0.elapsed().as_secs_f64() * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

pub async fn phase_restart_and_cost(scale: &Scale) -> (RestartResult, CostResult) {
    let (pod, kubeconfig) = phase_pod("scale").await;
    let docker = pod.docker();
    ensure_networks(&docker, 2).await;
    let admin = bed().admin().await;
    let ns = pod.namespace.clone();
    let first = Sidecar::start_with_kubeconfig(&SIDECAR, &pod, &kubeconfig, &[], "sidecar-1");
    wait_ready(&first, Duration::from_secs(60)).await;
    say("cost: idle sidecar (no compositions)");
    let idle = measure_cost(
        first.pid(),
        Duration::from_secs(if scale.smoke { 2 } else { 20 }),
    )
    .await;
    let total = scale.restart_live + scale.restart_orphans;
    // The first `total` start before the restart (the last `restart_orphans` of them are removed
    // while the sidecar is down); the rest top the live ones up to `cost_compositions`.
    let more = scale.cost_compositions.saturating_sub(scale.restart_live);
    let projects: Vec<String> = (0..total + more).map(|i| format!("c{i:04}")).collect();
    let half = 1000; // at most 1000 containers per bridge network (a bridge holds 1023 ports)
    say(format!("restart: starting {total} compositions"));
    start_many(&docker, &projects[..total], &pod.ip, |i| {
        format!("benchnet{}", i / half)
    })
    .await;
    let got = wait_count(&admin, &ns, total, Duration::from_secs(300)).await;
    say(format!(
        "restart: {total} exposed ({got:?} ms after the last start)"
    ));
    first.stop();
    let orphans: Vec<String> = projects[scale.restart_live..total].to_vec();
    for p in &orphans {
        remove_composition(&docker, p, &["web"]).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let offset = audit_offset();
    let t0 = Instant::now();
    let second = Sidecar::start_with_kubeconfig(&SIDECAR, &pod, &kubeconfig, &[], "sidecar-2");
    let ready = wait_ready(&second, Duration::from_secs(300)).await;
    let orphan_set: HashSet<String> = orphans.iter().cloned().collect();
    let mut converged = None;
    while t0.elapsed() < Duration::from_secs(300) {
        let mut any = false;
        for k in ["Service", "Ingress", "Lease"] {
            any |= owned_projects(&admin, &ns, k)
                .await
                .iter()
                .any(|p| orphan_set.contains(p));
        }
        if !any && count_owned(&admin, &ns, "Ingress").await == scale.restart_live {
            converged = Some(t0.elapsed().as_secs_f64() * 1e3);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let writes = audit_writes(offset, &ns);
    let unchanged: usize = writes
        .iter()
        .filter(|(k, _)| !k.starts_with("delete") && !k.contains(" events"))
        .map(|(_, v)| v)
        .sum();
    let mut orphans_left = 0;
    for k in ["Service", "Ingress", "Lease"] {
        orphans_left += owned_projects(&admin, &ns, k)
            .await
            .iter()
            .filter(|p| orphan_set.contains(*p))
            .count();
    }
    let restart = RestartResult {
        live: scale.restart_live,
        orphans: scale.restart_orphans,
        ready_after_restart_ms: ready.as_secs_f64() * 1e3,
        converged_ms: converged,
        writes,
        writes_to_unchanged_objects: unchanged,
        orphans_left,
    };
    say(format!("restart: {restart:?}"));
    let at_restart_live = measure_cost(
        second.pid(),
        Duration::from_secs(if scale.smoke { 2 } else { 10 }),
    )
    .await;

    // Cost at scale: top up to `cost_compositions` live compositions.
    let target = scale.restart_live + more;
    let extra: Vec<String> = projects[total..].to_vec();
    say(format!(
        "cost: starting {} more compositions (to {target})",
        extra.len()
    ));
    start_many(&docker, &extra, &pod.ip, |i| {
        format!("benchnet{}", (i + total) / half)
    })
    .await;
    let exposed_in = wait_count(&admin, &ns, target, Duration::from_secs(600)).await;
    say(format!(
        "cost: {target} exposed ({exposed_in:?} ms after the last start)"
    ));
    tokio::time::sleep(Duration::from_secs(if scale.smoke { 1 } else { 5 })).await;
    let at_scale = measure_cost(
        second.pid(),
        Duration::from_secs(if scale.smoke { 2 } else { 30 }),
    )
    .await;
    let bin = std::fs::metadata(env!("CARGO_BIN_EXE_compose-ingress"))
        .map(|m| m.len())
        .unwrap_or(0);
    let static_bin = std::fs::metadata(testbed::repo_root().join("target/static/compose-ingress"))
        .ok()
        .map(|m| m.len());
    let cost = CostResult {
        idle,
        at_restart_live,
        compositions: target,
        exposed_in_ms: exposed_in,
        at_scale,
        binary_bytes: bin,
        static_binary_bytes: static_bin,
    };
    say(format!("cost: {cost:?}"));
    second.stop();
    say("scale: removing containers");
    remove_all(&docker).await;
    finish_pod(&pod);
    (restart, cost)
}
