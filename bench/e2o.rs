//! Phase "e2o": from a Docker `start` event to the Service and Ingress seen through a watch.

use std::time::{Duration, Instant};

use testbed::{Sidecar, bed};

use crate::SIDECAR;
use crate::args::Scale;
use crate::clock::say;
use crate::cluster::delete_owned;
use crate::docker::{create_composition, ensure_networks, remove_composition, start_composition};
use crate::http::wait_ready;
use crate::pods::{Watching, phase_pod};
use crate::stats::{Stats, stats};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct E2oResult {
    pub debounce: String,
    /// From the project's first `start` event to both objects seen through the watch.
    pub stats: Stats,
    /// From the project's first Docker event (`create`, where the debounce starts) to both
    /// objects, minus the debounce: the sidecar's own overhead plus apiserver and watch delivery.
    pub beyond_debounce_from_first_event: Stats,
    /// dockerd's own time from the `create` event to the `start` event (the harness calls
    /// start as soon as create returned).
    #[serde(default)]
    pub create_to_start: Stats,
    pub missing: usize,
    pub samples_ms: Vec<f64>,
}

pub async fn phase_e2o(scale: &Scale) -> Vec<E2oResult> {
    let (pod, kubeconfig) = phase_pod("e2o").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let admin = bed().admin().await;
    let watching = Watching::start(&admin, &pod, &docker);
    let events = &watching.events;
    let mut results = Vec::new();
    for (tag, debounce) in [("d300", "300ms"), ("d0", "0s")] {
        say(format!(
            "e2o: {} compositions, --debounce {debounce}",
            scale.e2o_n
        ));
        let side = Sidecar::start_with_kubeconfig(
            &SIDECAR,
            &pod,
            &kubeconfig,
            &["--debounce", debounce],
            &format!("sidecar-{tag}"),
        );
        wait_ready(&side, Duration::from_secs(60)).await;
        let projects: Vec<String> = (0..scale.e2o_n)
            .map(|i| format!("e2o-{tag}-{i:04}"))
            .collect();
        for p in &projects {
            create_composition(&docker, p, &["web"], "benchnet0", &pod.ip, &[]).await;
            start_composition(&docker, p, &["web"]).await;
            // Compositions arrive one after another, ~5 per second (each is measured alone).
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let done = || projects.iter().all(|p| watching.objects_seen(p).is_some());
        while !done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut samples = Vec::new();
        let mut beyond = Vec::new();
        let mut create_to_start = Vec::new();
        let mut missing = 0;
        let debounce_ms = if tag == "d300" { 300.0 } else { 0.0 };
        for p in &projects {
            let start = events.first.lock().expect("lock").get(p).copied();
            let first = events.first_any.lock().expect("lock").get(p).copied();
            match (start, first, watching.objects_seen(p)) {
                (Some(s), Some(f), Some(seen)) => {
                    samples.push((seen - s) as f64 / 1e6);
                    beyond.push((seen - f) as f64 / 1e6 - debounce_ms);
                    create_to_start.push((s - f) as f64 / 1e6);
                }
                _ => missing += 1,
            }
        }
        let st = stats(&samples);
        let bd = stats(&beyond);
        let cs = stats(&create_to_start);
        say(format!(
            "e2o {debounce}: {st:?}, beyond debounce from first event {bd:?}, create to start {cs:?}, missing {missing}"
        ));
        results.push(E2oResult {
            debounce: debounce.to_string(),
            stats: st,
            beyond_debounce_from_first_event: bd,
            create_to_start: cs,
            missing,
            samples_ms: samples,
        });
        side.stop();
        for p in &projects {
            remove_composition(&docker, p, &["web"]).await;
        }
        // The next sidecar must not start with these as orphans to GC (its start-up GC would
        // hold up the first compositions it measures): delete them as an admin.
        delete_owned(&admin, &pod.namespace).await;
    }
    watching.finish(&docker, &pod).await;
    results
}
