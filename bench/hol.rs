//! Phase "hol" (head of line): compositions that arrive while the sidecar deletes a batch of
//! orphans whose delete grace ended together. A first sidecar exposes the orphans-to-be and
//! stops (leaving its objects); their containers go; a second sidecar's start-up resync finds
//! them orphaned and starts every grace at once; new compositions arrive from just before those
//! graces end. Measured: start event → Service and Ingress seen, for the new compositions.

use std::time::{Duration, Instant};

use testbed::{Sidecar, bed};

use crate::SIDECAR;
use crate::args::Scale;
use crate::clock::say;
use crate::cluster::{count_owned, delete_owned};
use crate::docker::{create_composition, ensure_networks, remove_composition, start_composition};
use crate::http::wait_ready;
use crate::pods::{Watching, phase_pod};
use crate::stats::{Stats, stats};

/// The bench's `--delete-grace` (testbed's `Launch::bench`).
const GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct HolResult {
    pub orphans: usize,
    /// From the second sidecar being ready to its last orphan's Ingress gone.
    pub orphans_deleted_after_ms: Option<f64>,
    /// Start event → both objects seen, for the compositions arriving during the deletes.
    pub stats: Stats,
    pub missing: usize,
    pub samples_ms: Vec<f64>,
}

pub async fn phase_hol(scale: &Scale) -> HolResult {
    let (pod, kubeconfig) = phase_pod("hol").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let admin = bed().admin().await;
    let watching = Watching::start(&admin, &pod, &docker);
    let all_seen =
        |projects: &[String]| projects.iter().all(|p| watching.objects_seen(p).is_some());

    say(format!("hol: exposing {} orphans-to-be", scale.hol_orphans));
    let orphans: Vec<String> = (0..scale.hol_orphans)
        .map(|i| format!("hol-old-{i:04}"))
        .collect();
    let first = Sidecar::start_with_kubeconfig(&SIDECAR, &pod, &kubeconfig, &[], "sidecar-first");
    wait_ready(&first, Duration::from_secs(60)).await;
    for p in &orphans {
        create_composition(&docker, p, &["web"], "benchnet0", &pod.ip, &[]).await;
        start_composition(&docker, p, &["web"]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while !all_seen(&orphans) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        all_seen(&orphans),
        "hol: the orphans-to-be were not all exposed"
    );
    // Stopped the way the bench's sidecars are (`--cleanup-on-exit never`): objects stay.
    first.stop();
    for p in &orphans {
        remove_composition(&docker, p, &["web"]).await;
    }

    let second = Sidecar::start_with_kubeconfig(&SIDECAR, &pod, &kubeconfig, &[], "sidecar-second");
    wait_ready(&second, Duration::from_secs(60)).await;
    let ready = Instant::now();
    // Arrivals from a little before the graces end, for longer than their deletes take.
    tokio::time::sleep(GRACE - Duration::from_millis(500)).await;
    say(format!(
        "hol: {} compositions arrive while {} orphans' graces end",
        scale.hol_arrivals, scale.hol_orphans
    ));
    let arrivals: Vec<String> = (0..scale.hol_arrivals)
        .map(|i| format!("hol-new-{i:04}"))
        .collect();
    let mut orphans_deleted_after = None;
    for p in &arrivals {
        create_composition(&docker, p, &["web"], "benchnet0", &pod.ip, &[]).await;
        start_composition(&docker, p, &["web"]).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if orphans_deleted_after.is_none()
            && count_owned(&admin, &pod.namespace, "Ingress").await == arrivals.len()
        {
            orphans_deleted_after = Some(ready.elapsed());
        }
        if all_seen(&arrivals) && orphans_deleted_after.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut samples = Vec::new();
    let mut missing = 0;
    for p in &arrivals {
        let start = watching.events.first.lock().expect("lock").get(p).copied();
        match (start, watching.objects_seen(p)) {
            (Some(s), Some(seen)) => samples.push((seen - s) as f64 / 1e6),
            _ => missing += 1,
        }
    }
    let st = stats(&samples);
    let deleted_ms = orphans_deleted_after.map(|d| d.as_secs_f64() * 1e3);
    say(format!(
        "hol: {st:?}, missing {missing}, orphans' Ingresses gone {deleted_ms:?} ms after ready"
    ));
    second.stop();
    for p in &arrivals {
        remove_composition(&docker, p, &["web"]).await;
    }
    delete_owned(&admin, &pod.namespace).await;
    watching.finish(&docker, &pod).await;
    HolResult {
        orphans: scale.hol_orphans,
        orphans_deleted_after_ms: deleted_ms,
        stats: st,
        missing,
        samples_ms: samples,
    }
}
