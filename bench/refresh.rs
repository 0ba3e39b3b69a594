//! Phase "refresh" (issue 28): how long a controller takes to route a new composition as the
//! routes it holds grow, for each of the bed's controllers (the shared Traefik, and Contour with
//! Envoy for a dedicated class) and each route scope; and the isolation a dedicated controller
//! gives (isolation.rs). Per point: N filler routes of the controller's class (fillers.rs), then
//! compositions one after another through the real sidecar, `docker-compose up -d` returning →
//! the first 200 through that controller, and the controller's memory and CPU.

use std::time::{Duration, Instant};

use testbed::{DOMAIN, RunnerPod, Sidecar};

use crate::SIDECAR;
use crate::args::Scale;
use crate::clock::say;
use crate::cluster::delete_owned;
use crate::compose::{chosen_host_label, compose_file_labelled, compose_up};
use crate::controllers::{Controller, ProcCost, contour, traefik};
use crate::docker::remove_all;
use crate::fillers::{self, filler_host};
use crate::http::{until_200, wait_ready};
use crate::stats::{Stats, stats};

/// How the sidecar routes compositions. Only the composition scope exists at this commit: the
/// pod scope (one wildcard route per runner pod, `--route-scope pod`) is not built yet, and
/// becomes a variant here with its flags once it is; the phase loops over [`SCOPES`].
#[derive(Clone, Copy, Debug)]
pub enum Scope {
    /// One Service + EndpointSlices + Ingress per composition (the sidecar's default).
    Composition,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Composition => "composition",
        }
    }
    fn sidecar_flags(self) -> &'static [&'static str] {
        match self {
            Scope::Composition => &[],
        }
    }
}

/// The scopes this phase measures, and those it names as not built yet (results.json says so).
pub const SCOPES: &[Scope] = &[Scope::Composition];
pub const SCOPES_NOT_BUILT: &[&str] = &["pod"];

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
    pub samples_ms: Vec<f64>,
    /// The controller's processes after taking the fillers in, quiet (no new composition).
    pub idle: Vec<ProcCost>,
    /// The same over the window of the samples (new compositions arriving one by one).
    pub busy: Vec<ProcCost>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RefreshResult {
    /// Routes of others (tests on a shared bed) present when the phase began.
    pub routes_of_others: usize,
    pub scopes: Vec<String>,
    pub scopes_not_built: Vec<String>,
    pub points: Vec<RefreshPoint>,
    pub isolation: Vec<crate::isolation::IsolationPoint>,
}

/// Routes of others the phase tolerates (see [`fillers::routes_of_others`]).
const MAX_OTHERS: usize = 200;

/// How long a controller may take to take in (or drop) a level's fillers before the level is
/// recorded as not held by the machine.
const TAKE_IN: Duration = Duration::from_secs(900);
/// Bound of one sample (up -d → 200).
const SAMPLE_LIMIT: Duration = Duration::from_secs(120);

/// One composition choosing a host of its own with `labels`, up; the time from `up -d`
/// returning to the first 200 through `web` (None: not within [`SAMPLE_LIMIT`]).
pub async fn sample(
    pod: &RunnerPod,
    project: &str,
    labels: &[(String, String)],
    web: &str,
) -> Option<f64> {
    let host_label = chosen_host_label(project, pod);
    let file = compose_file_labelled(pod, project, &host_label, labels);
    compose_up(pod, project, &file);
    let t0 = Instant::now();
    let got = until_200(web, &format!("{host_label}.{DOMAIN}"), t0, SAMPLE_LIMIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    got
}

pub async fn phase_refresh(scale: &Scale) -> RefreshResult {
    let (pod, kubeconfig) = crate::pods::phase_pod("refresh").await;
    let _guard = fillers::NamespaceGuard(pod.namespace.clone());
    let docker = pod.docker();
    crate::docker::ensure_networks(&docker, 1).await;
    let admin = testbed::bed().admin().await;
    // A shared bed may hold a few routes of other people's tests: recorded, and tolerated up
    // to a bound far below the levels measured.
    let others = fillers::routes_of_others(&admin, "refresh", MAX_OTHERS, scale.smoke).await;
    fillers::prepare_backend(&admin, &pod).await;
    let controllers: Vec<Controller> = std::iter::once(traefik()).chain(contour()).collect();
    if controllers.len() < 2 {
        say("refresh: the bed has no Contour (contour.sh): Traefik only, no isolation");
    }
    let mut result = RefreshResult {
        routes_of_others: others,
        scopes: SCOPES.iter().map(|s| s.name().to_string()).collect(),
        scopes_not_built: SCOPES_NOT_BUILT.iter().map(|s| s.to_string()).collect(),
        ..RefreshResult::default()
    };
    for &scope in SCOPES {
        for ctl in &controllers {
            let points = curve(ctl, scope, &pod, &kubeconfig, &admin, scale).await;
            result.points.extend(points);
        }
    }
    if let [shared, dedicated] = &controllers[..] {
        result.isolation =
            crate::isolation::measure(shared, dedicated, &pod, &kubeconfig, &admin, scale).await;
    }
    for p in &result.points {
        say(format!(
            "refresh/{}/{} at {} routes: p50 {:.0} / p99 {:.0} / max {:.0} ms ({} failed)",
            p.controller,
            p.scope,
            p.fillers,
            p.stats.p50_ms,
            p.stats.p99_ms,
            p.stats.max_ms,
            p.failed
        ));
    }
    crate::pods::finish_pod(&pod);
    result
}

/// One controller's curve in one scope: its own sidecar, the levels of fillers one after
/// another, then everything deleted (fillers, compositions, objects) and dropped by the
/// controller before the next curve starts.
async fn curve(
    ctl: &Controller,
    scope: Scope,
    pod: &RunnerPod,
    kubeconfig: &std::path::Path,
    admin: &kube::Client,
    scale: &Scale,
) -> Vec<RefreshPoint> {
    let tag = format!("{}/{}", ctl.name, scope.name());
    let mut flags = vec!["--ingress-class", ctl.class.as_str()];
    flags.extend(scope.sidecar_flags().iter().copied());
    let side = Sidecar::start_with_kubeconfig(
        &SIDECAR,
        pod,
        kubeconfig,
        &flags,
        &format!("sidecar-refresh-{}-{}", ctl.name, scope.name()),
    );
    wait_ready(&side, Duration::from_secs(60)).await;
    let prefix = format!("fill-{}", ctl.name);
    let (mut have, mut own) = (0, 0);
    let mut points = Vec::new();
    for &level in &scale.refresh_levels {
        let mut take_in_s = None;
        if level > have {
            say(format!("refresh/{tag}: creating fillers {have}..{level}"));
            let t = Instant::now();
            fillers::create(
                admin,
                &pod.namespace,
                "Ingress",
                &ctl.class,
                &prefix,
                have..level,
            )
            .await;
            let created = t.elapsed().as_secs_f64();
            have = level;
            take_in_s =
                fillers::wait_routed(&ctl.web, &filler_host(&prefix, level - 1), true, TAKE_IN)
                    .await;
            say(format!(
                "refresh/{tag}: {level} fillers created in {created:.1} s, routed {take_in_s:?} s later"
            ));
            if take_in_s.is_none() {
                say(format!(
                    "refresh/{tag}: {level} routes not taken in within {TAKE_IN:?}: the machine does not hold this level; stopping this curve"
                ));
                break;
            }
        }
        let w = ctl.window();
        tokio::time::sleep(scale.refresh_idle).await;
        let idle = ctl.cost_since(&w);
        let w = ctl.window();
        let (mut samples, mut failed) = (Vec::new(), 0);
        for k in 0..scale.refresh_samples {
            let project = format!("rf-{}-{level}-{k}", ctl.name);
            match sample(pod, &project, &[], &ctl.web).await {
                Some(ms) => samples.push(ms),
                None => failed += 1,
            }
        }
        let busy = ctl.cost_since(&w);
        let st = stats(&samples);
        say(format!(
            "refresh/{tag} at {level}: {st:?} failed {failed}; idle {idle:?}; busy {busy:?}"
        ));
        points.push(RefreshPoint {
            controller: ctl.name.to_string(),
            scope: scope.name().to_string(),
            fillers: level,
            own_before: own,
            take_in_s,
            stats: st,
            failed,
            samples_ms: samples,
            idle,
            busy,
        });
        own += scale.refresh_samples;
    }
    side.stop();
    remove_all(&pod.docker()).await;
    fillers::delete_all(admin, &pod.namespace, "Ingress").await;
    delete_owned(admin, &pod.namespace).await;
    if have > 0 {
        let gone =
            fillers::wait_routed(&ctl.web, &filler_host(&prefix, have - 1), false, TAKE_IN).await;
        say(format!(
            "refresh/{tag}: fillers deleted, dropped by the controller after {gone:?} s"
        ));
    }
    points
}
