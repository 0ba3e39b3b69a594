//! Phase "pod-route" (issue 26): in pod scope the controller is written once per runner pod,
//! when its sidecar starts (the pod's wildcard route); how long until that route is routable,
//! as the shared controller holds more routes of others. Per sample: a pod-scope sidecar
//! started for a pod without a route, timed from its start to Traefik sending the pod's hosts
//! to its proxy (the proxy's own 404 for a host under the pod, through Traefik), and to its
//! readiness; then the sidecar is stopped, its objects deleted and Traefik seen dropping the
//! route, so that the next sample is a new pod's route again.

use std::time::{Duration, Instant};

use crate::args::Scale;
use crate::clock::say;
use crate::cluster::delete_owned;
use crate::controllers::traefik;
use crate::fillers::{self, filler_host};
use crate::http::{http_get, wait_ready};
use crate::machine::{Load, LoadWatch};
use crate::pods::finish_pod;
use crate::scope::Scope;
use crate::stats::{Stats, stats};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PodRoutePoint {
    pub controller: String,
    /// Filler routes of the controller's class it held.
    pub fillers: usize,
    /// Sidecar started → the pod's hosts routed to its proxy through the controller.
    pub routed: Stats,
    pub routed_samples_ms: Vec<f64>,
    /// Sidecar started → its /readyz answers 200.
    pub ready: Stats,
    pub failed: usize,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PodRouteResult {
    pub routes_of_others: usize,
    pub points: Vec<PodRoutePoint>,
    pub load: Load,
}

/// Bounds: one pod route's take-in, a level's fillers' take-in.
const ROUTE_LIMIT: Duration = Duration::from_secs(120);
const TAKE_IN: Duration = Duration::from_secs(900);

pub async fn phase_pod_route(scale: &Scale) -> PodRouteResult {
    let watch = LoadWatch::start();
    let (pod, kubeconfig) = Scope::Pod.pod("pod-route").await;
    // The fillers live in the pod's namespace (deleted with it, also on a panic), their backend
    // a closed port of this pod.
    let _guard = fillers::NamespaceGuard(pod.namespace.clone());
    let admin = testbed::bed().admin().await;
    let others = fillers::routes_of_others(&admin, "pod-route", 200, scale.smoke).await;
    fillers::prepare_backend(&admin, &pod).await;
    let ctl = traefik();
    let prefix = "fill-podroute";
    let mut result = PodRouteResult {
        routes_of_others: others,
        ..PodRouteResult::default()
    };
    let mut have = 0;
    for &level in &scale.pod_route_levels {
        if level > have {
            let t = Instant::now();
            fillers::create(
                &admin,
                &pod.namespace,
                "Ingress",
                &ctl.class,
                prefix,
                have..level,
            )
            .await;
            have = level;
            let took =
                fillers::wait_routed(&ctl.web, &filler_host(prefix, level - 1), true, TAKE_IN)
                    .await;
            say(format!(
                "pod-route: {level} fillers created in {:.1} s, routed {took:?} s later",
                t.elapsed().as_secs_f64()
            ));
            if took.is_none() {
                say("pod-route: fillers not taken in; stopping");
                break;
            }
        }
        let (mut routed, mut ready, mut failed) = (Vec::new(), Vec::new(), 0);
        for k in 0..scale.pod_route_samples {
            let t0 = Instant::now();
            let side = Scope::Pod.start(&pod, &kubeconfig, &[], &format!("sidecar-pr-{level}-{k}"));
            // Both timed from t0, at the moment each is seen.
            let (r, up) = tokio::join!(
                async {
                    Scope::Pod
                        .pod_route_routed(&ctl.web, &pod, ROUTE_LIMIT)
                        .await
                        .map(|_| t0.elapsed().as_secs_f64() * 1e3)
                },
                async {
                    wait_ready(&side, ROUTE_LIMIT).await;
                    t0.elapsed().as_secs_f64() * 1e3
                }
            );
            ready.push(up);
            match r {
                Some(ms) => routed.push(ms),
                None => failed += 1,
            }
            side.stop();
            delete_owned(&admin, &pod.namespace).await;
            route_gone(&ctl.web, &pod).await;
        }
        let point = PodRoutePoint {
            controller: ctl.name.to_string(),
            fillers: level,
            routed: stats(&routed),
            routed_samples_ms: routed,
            ready: stats(&ready),
            failed,
        };
        say(format!(
            "pod-route at {level} routes: routed {:?}; ready {:?}; failed {failed}",
            point.routed, point.ready
        ));
        result.points.push(point);
    }
    fillers::delete_all(&admin, &pod.namespace, "Ingress").await;
    if have > 0 {
        fillers::wait_routed(&ctl.web, &filler_host(prefix, have - 1), false, TAKE_IN).await;
    }
    finish_pod(&pod);
    result.load = watch.finish();
    result
}

/// Waits (bounded) until Traefik no longer sends the pod's hosts to its proxy: its own 404.
async fn route_gone(web: &str, pod: &testbed::RunnerPod) {
    let host = Scope::Pod.host("bench-no-such-composition", pod);
    let t = Instant::now();
    while t.elapsed() < ROUTE_LIMIT {
        if let Some((404, body)) = http_get(web, &host, "/", Duration::from_secs(2)).await
            && body.trim() != "not found"
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say("pod-route: WARNING: Traefik still routes the stopped pod's hosts after 120 s");
}
