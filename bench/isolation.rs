//! The isolation a dedicated controller gives (issue 28): one sidecar with the shared class by
//! default and the dedicated class allowed; compositions that pick the dedicated class by label
//! (`compose-ingress.class`) and compositions of the default class arrive in turn, first with
//! the shared controller idle, then while it holds many routes and takes churn (Ingresses of its
//! class created and deleted at a steady rate). What the dedicated class's users see is its
//! routable time; the shared class's, measured in the same turns, shows the load it escapes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use kube::api::DeleteParams;
use testbed::{RunnerPod, Sidecar};

use crate::SIDECAR;
use crate::args::Scale;
use crate::clock::say;
use crate::cluster::{delete_owned, dyn_api};
use crate::controllers::{Controller, ProcCost};
use crate::docker::remove_all;
use crate::fillers::{self, filler_host};
use crate::http::wait_ready;
use crate::scope::sample;
use crate::stats::{Stats, stats};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct IsolationPoint {
    /// "idle" or "loaded".
    pub load: String,
    pub shared: String,
    pub dedicated: String,
    /// Filler routes the shared controller held.
    pub shared_fillers: usize,
    /// Route changes per second the shared controller took (a create and a delete per tick).
    pub churn_changes_per_s: f64,
    pub churn_changes: usize,
    pub dedicated_stats: Stats,
    pub dedicated_samples_ms: Vec<f64>,
    pub shared_stats: Stats,
    pub shared_samples_ms: Vec<f64>,
    pub failed: usize,
    pub shared_cost: Vec<ProcCost>,
    pub dedicated_cost: Vec<ProcCost>,
}

/// Churn Ingresses alive at once.
const WINDOW: usize = 50;

/// Churn on the shared class: every tick one new Ingress and the deletion of the one made
/// [`WINDOW`] ticks before, until stopped; the task returns (changes made, seconds it ran).
fn start_churn(
    admin: &kube::Client,
    ns: &str,
    class: &str,
    ticks_per_s: f64,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(usize, f64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicUsize::new(0));
    let api = dyn_api(admin, ns, "Ingress");
    let (class, flag) = (class.to_string(), stop.clone());
    let task = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / ticks_per_s));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut i = 0;
        while !flag.load(Ordering::Relaxed) {
            tick.tick().await;
            fillers::create_one(&api, "Ingress", &class, "churn", i).await;
            changes.fetch_add(1, Ordering::Relaxed);
            if i >= WINDOW {
                let old = format!("churn-{}", i - WINDOW);
                if api.delete(&old, &DeleteParams::default()).await.is_ok() {
                    changes.fetch_add(1, Ordering::Relaxed);
                }
            }
            i += 1;
        }
        (
            changes.load(Ordering::Relaxed),
            start.elapsed().as_secs_f64(),
        )
    });
    (stop, task)
}

pub async fn measure(
    shared: &Controller,
    dedicated: &Controller,
    pod: &RunnerPod,
    kubeconfig: &std::path::Path,
    admin: &kube::Client,
    scale: &Scale,
) -> Vec<IsolationPoint> {
    let side = Sidecar::start_with_kubeconfig(
        &SIDECAR,
        pod,
        kubeconfig,
        &[
            "--ingress-class",
            shared.class.as_str(),
            "--allowed-classes",
            dedicated.class.as_str(),
        ],
        "sidecar-isolation",
    );
    wait_ready(&side, Duration::from_secs(60)).await;
    let class_label = vec![("compose-ingress.class".to_string(), dedicated.class.clone())];
    let mut points = Vec::new();
    for load in ["idle", "loaded"] {
        let (mut fill, mut churn) = (0, None);
        if load == "loaded" {
            fill = scale.isolation_fillers;
            say(format!(
                "isolation: {fill} fillers on the shared {}",
                shared.name
            ));
            fillers::create(
                admin,
                &pod.namespace,
                "Ingress",
                &shared.class,
                "iso",
                0..fill,
            )
            .await;
            let t = fillers::wait_routed(
                &shared.web,
                &filler_host("iso", fill - 1),
                true,
                Duration::from_secs(900),
            )
            .await;
            say(format!("isolation: taken in after {t:?} s; churn starts"));
            churn = Some(start_churn(
                admin,
                &pod.namespace,
                &shared.class,
                scale.isolation_churn_ticks_per_s,
            ));
            // The churn runs a while before the first sample: the shared controller is busy.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let (ws, wd) = (shared.window(), dedicated.window());
        let (mut ded, mut sha, mut failed) = (Vec::new(), Vec::new(), 0);
        for k in 0..scale.isolation_samples {
            let project = format!("iso-{load}-d-{k}");
            match sample(pod, &project, &class_label, &dedicated.web).await {
                Some(ms) => ded.push(ms),
                None => failed += 1,
            }
            let project = format!("iso-{load}-s-{k}");
            match sample(pod, &project, &[], &shared.web).await {
                Some(ms) => sha.push(ms),
                None => failed += 1,
            }
        }
        let (shared_cost, dedicated_cost) = (shared.cost_since(&ws), dedicated.cost_since(&wd));
        let (mut changes, mut churn_s) = (0, 1.0);
        if let Some((stop, task)) = churn {
            stop.store(true, Ordering::Relaxed);
            (changes, churn_s) = task.await.unwrap_or((0, 1.0));
        }
        let point = IsolationPoint {
            load: load.to_string(),
            shared: shared.name.to_string(),
            dedicated: dedicated.name.to_string(),
            shared_fillers: fill,
            churn_changes_per_s: changes as f64 / churn_s,
            churn_changes: changes,
            dedicated_stats: stats(&ded),
            dedicated_samples_ms: ded,
            shared_stats: stats(&sha),
            shared_samples_ms: sha,
            failed,
            shared_cost,
            dedicated_cost,
        };
        say(format!(
            "isolation/{load}: dedicated {:?}, shared {:?}, {changes} churn changes, failed {failed}",
            point.dedicated_stats, point.shared_stats
        ));
        points.push(point);
    }
    side.stop();
    remove_all(&pod.docker()).await;
    fillers::delete_all(admin, &pod.namespace, "Ingress").await;
    delete_owned(admin, &pod.namespace).await;
    let gone = fillers::wait_routed(
        &shared.web,
        &filler_host("iso", scale.isolation_fillers - 1),
        false,
        Duration::from_secs(900),
    )
    .await;
    say(format!(
        "isolation: fillers dropped by {} after {gone:?} s",
        shared.name
    ));
    points
}
