//! Phase "refresh" (issue 28): how long a controller takes to route a new composition as the
//! routes it holds grow, for each of the bed's controllers (the shared Traefik, and Contour with
//! Envoy for a dedicated class) and each route scope; and the isolation a dedicated controller
//! gives (isolation.rs). Per point: N filler routes of the controller's class (fillers.rs), then
//! compositions one after another through the real sidecar, `docker-compose up -d` returning →
//! the first 200 through that controller, and the controller's memory and CPU.

use std::time::{Duration, Instant, SystemTime};

use testbed::RunnerPod;

use crate::args::Scale;
use crate::clock::say;
use crate::cluster::delete_owned;
use crate::controllers::{Controller, ProcCost, contour, traefik};
use crate::docker::remove_all;
use crate::fillers::{self, filler_host};
use crate::http::wait_ready;
use crate::late::{late_exposures, traced};
use crate::machine::{Load, LoadWatch};
use crate::scope::{SAMPLE_LIMIT, Scope, sample_in};
use crate::stats::{Stats, stats};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RefreshPoint {
    pub controller: String,
    pub scope: String,
    /// Filler routes of the controller's class it held while this point was measured.
    pub fillers: usize,
    /// The phase's own compositions (of earlier points) it held as well.
    pub own_before: usize,
    /// From the last filler created to the controller routing it (None: not within the bound).
    pub take_in_s: Option<f64>,
    pub stats: Stats,
    pub failed: usize,
    /// Samples the sidecar exposed more than `late::LATE_EXPOSURE` after their `up -d`, or never
    /// (from its log; runs before this count have none).
    #[serde(default)]
    pub late: usize,
    pub samples_ms: Vec<f64>,
    /// The controller's processes after taking the fillers in, quiet (no new composition).
    pub idle: Vec<ProcCost>,
    /// The same over the window of the samples (new compositions arriving one by one).
    pub busy: Vec<ProcCost>,
    /// Kept from an earlier run's results.json: this run did not measure its scope.
    #[serde(default)]
    pub earlier_run: bool,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RefreshResult {
    /// Routes of others (tests on a shared bed) present when the phase began.
    pub routes_of_others: usize,
    pub scopes: Vec<String>,
    /// Scopes not built when the run was made (runs before the pod scope existed say "pod").
    #[serde(default)]
    pub scopes_not_built: Vec<String>,
    pub points: Vec<RefreshPoint>,
    pub isolation: Vec<crate::isolation::IsolationPoint>,
    #[serde(default)]
    pub load: Load,
}

impl RefreshResult {
    /// Keeps the points of an earlier run (results.json) that this run did not measure (another
    /// scope, or a level it left out), marked as such, and its isolation part if this run
    /// skipped it: a run of some scopes or levels adds to the curve instead of erasing the rest.
    pub fn keep_earlier(&mut self, earlier: RefreshResult) {
        let measured = |p: &RefreshPoint| {
            self.points.iter().any(|q| {
                (q.controller.as_str(), q.scope.as_str(), q.fillers)
                    == (p.controller.as_str(), p.scope.as_str(), p.fillers)
            })
        };
        let kept: Vec<RefreshPoint> = earlier
            .points
            .into_iter()
            .filter(|p| !measured(p))
            .map(|mut p| {
                p.earlier_run = true;
                p
            })
            .collect();
        self.points.extend(kept);
        if self.isolation.is_empty() {
            self.isolation = earlier.isolation;
        }
    }
}

/// Routes of others the phase tolerates (see [`fillers::routes_of_others`]).
const MAX_OTHERS: usize = 200;

/// How long a controller may take to take in (or drop) a level's fillers before the level is
/// recorded as not held by the machine.
const TAKE_IN: Duration = Duration::from_secs(900);
/// A runner pod of one scope with its sidecar's kubeconfig.
struct ScopePod {
    scope: Scope,
    pod: RunnerPod,
    kubeconfig: std::path::PathBuf,
}

pub async fn phase_refresh(scale: &Scale) -> RefreshResult {
    let watch = LoadWatch::start();
    // The fillers' namespace and backend; the composition scope's pod too.
    let (pod, kubeconfig) = crate::pods::phase_pod("refresh").await;
    let _guard = fillers::NamespaceGuard(pod.namespace.clone());
    let admin = testbed::bed().admin().await;
    // A shared bed may hold a few routes of other people's tests: recorded, and tolerated up
    // to a bound far below the levels measured.
    let others = fillers::routes_of_others(&admin, "refresh", MAX_OTHERS, scale.smoke).await;
    fillers::prepare_backend(&admin, &pod).await;
    let fill_ns = pod.namespace.clone();
    let mut pods = vec![ScopePod {
        scope: Scope::Composition,
        pod,
        kubeconfig,
    }];
    // The pod scope's sidecar in a pod (and namespace, for its Role) of its own: two sidecars
    // of one pod would each take the other's objects for orphans.
    if scale.refresh_scopes.contains(&Scope::Pod) {
        let (pod, kubeconfig) = Scope::Pod.pod("refresh").await;
        pods.push(ScopePod {
            scope: Scope::Pod,
            pod,
            kubeconfig,
        });
    }
    let _guard_pod = pods
        .get(1)
        .map(|p| fillers::NamespaceGuard(p.pod.namespace.clone()));
    for p in &pods {
        crate::docker::ensure_networks(&p.pod.docker(), 1).await;
    }
    let controllers: Vec<Controller> = std::iter::once(traefik()).chain(contour()).collect();
    if controllers.len() < 2 {
        say("refresh: the bed has no Contour (contour.sh): Traefik only, no isolation");
    }
    let mut result = RefreshResult {
        routes_of_others: others,
        scopes: scale
            .refresh_scopes
            .iter()
            .map(|s| s.name().to_string())
            .collect(),
        ..RefreshResult::default()
    };
    let measured: Vec<&ScopePod> = pods
        .iter()
        .filter(|p| scale.refresh_scopes.contains(&p.scope))
        .collect();
    for ctl in &controllers {
        let points = Box::pin(curve(ctl, &measured, &fill_ns, &admin, scale)).await;
        result.points.extend(points);
    }
    if let [shared, dedicated] = &controllers[..]
        && scale.refresh_isolation
    {
        let p = &pods[0];
        result.isolation =
            crate::isolation::measure(shared, dedicated, &p.pod, &p.kubeconfig, &admin, scale)
                .await;
    }
    for p in &result.points {
        say(format!(
            "refresh/{}/{} at {} routes: p50 {:.0} / p99 {:.0} / max {:.0} ms (n {}, {} failed)",
            p.controller,
            p.scope,
            p.fillers,
            p.stats.p50_ms,
            p.stats.p99_ms,
            p.stats.max_ms,
            p.stats.n,
            p.failed
        ));
    }
    for p in &pods {
        crate::pods::finish_pod(&p.pod);
    }
    result.load = watch.finish();
    result
}

/// One controller's curve in every scope measured: a sidecar per scope (each in its pod), the
/// levels of fillers one after another (each scope sampled at each level, on the same
/// fillers), then everything deleted (fillers, compositions, objects) and dropped by the
/// controller before the next curve starts.
async fn curve(
    ctl: &Controller,
    pods: &[&ScopePod],
    fill_ns: &str,
    admin: &kube::Client,
    scale: &Scale,
) -> Vec<RefreshPoint> {
    let mut sidecars = Vec::new();
    for p in pods {
        let side = p.scope.start_as(
            &traced(crate::SIDECAR),
            &p.pod,
            &p.kubeconfig,
            &["--ingress-class", ctl.class.as_str()],
            &format!("sidecar-refresh-{}-{}", ctl.name, p.scope.name()),
        );
        wait_ready(&side, Duration::from_secs(60)).await;
        match p
            .scope
            .pod_route_routed(&ctl.web, &p.pod, SAMPLE_LIMIT)
            .await
        {
            Some(ms) => {
                say(format!(
                    "refresh/{}/{}: routed {ms:.0} ms after ready",
                    ctl.name,
                    p.scope.name()
                ));
                sidecars.push((*p, side));
            }
            None => say(format!(
                "refresh/{}/{}: the controller never routed the pod's hosts to the sidecar within {SAMPLE_LIMIT:?}: no points of this scope",
                ctl.name,
                p.scope.name()
            )),
        }
    }
    let prefix = format!("fill-{}", ctl.name);
    let largest = scale.refresh_levels.iter().copied().max().unwrap_or(0);
    let mut own = vec![0usize; sidecars.len()];
    let mut have = 0;
    let mut points = Vec::new();
    for &level in &scale.refresh_levels {
        let mut take_in_s = None;
        if level > have {
            say(format!(
                "refresh/{}: creating fillers {have}..{level}",
                ctl.name
            ));
            let t = Instant::now();
            fillers::create(admin, fill_ns, "Ingress", &ctl.class, &prefix, have..level).await;
            let created = t.elapsed().as_secs_f64();
            have = level;
            take_in_s =
                fillers::wait_routed(&ctl.web, &filler_host(&prefix, level - 1), true, TAKE_IN)
                    .await;
            say(format!(
                "refresh/{}: {level} fillers created in {created:.1} s, routed {take_in_s:?} s later",
                ctl.name
            ));
            if take_in_s.is_none() {
                say(format!(
                    "refresh/{}: {level} routes not taken in within {TAKE_IN:?}: the machine does not hold this level; stopping this curve",
                    ctl.name
                ));
                break;
            }
        }
        let w = ctl.window();
        tokio::time::sleep(scale.refresh_idle).await;
        let idle = ctl.cost_since(&w);
        let n = if level == largest {
            scale.refresh_samples_largest
        } else {
            scale.refresh_samples
        };
        for (i, (p, side)) in sidecars.iter().enumerate() {
            let tag = format!("{}/{}", ctl.name, p.scope.name());
            let w = ctl.window();
            let (mut samples, mut failed) = (Vec::new(), 0);
            let mut started = Vec::new();
            for k in 0..n {
                let project = format!("rf-{}-{}-{level}-{k}", ctl.name, p.scope.name());
                started.push((project.clone(), SystemTime::now()));
                match sample_in(p.scope, &p.pod, &project, &[], &ctl.web).await {
                    Some(ms) => samples.push(ms),
                    None => failed += 1,
                }
            }
            let busy = ctl.cost_since(&w);
            let st = stats(&samples);
            let late = late_exposures(side, &started);
            say(format!(
                "refresh/{tag} at {level}: {st:?} failed {failed} late {late}; idle {idle:?}; busy {busy:?}"
            ));
            points.push(RefreshPoint {
                controller: ctl.name.to_string(),
                scope: p.scope.name().to_string(),
                fillers: level,
                own_before: own[i],
                take_in_s,
                stats: st,
                failed,
                late,
                samples_ms: samples,
                idle: idle.clone(),
                busy,
                earlier_run: false,
            });
            own[i] += n;
        }
    }
    for (p, side) in sidecars {
        side.stop();
        remove_all(&p.pod.docker()).await;
    }
    fillers::delete_all(admin, fill_ns, "Ingress").await;
    for p in pods {
        delete_owned(admin, &p.pod.namespace).await;
    }
    if have > 0 {
        let gone =
            fillers::wait_routed(&ctl.web, &filler_host(&prefix, have - 1), false, TAKE_IN).await;
        say(format!(
            "refresh/{}: fillers deleted, dropped by the controller after {gone:?} s",
            ctl.name
        ));
    }
    points
}
