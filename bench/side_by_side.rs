//! Phase "side": side by side with Traefik's own Docker provider (in the pod's network
//! namespace), the same compositions routed both ways, for each route scope: a runner pod per
//! scope, each with its sidecar and its in-pod Traefik, every composition polled on both paths
//! from its `up -d` returning.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{RunnerPod, bed};

use crate::args::Scale;
use crate::clock::say;
use crate::compose::{chosen_host_label, compose_file, compose_up};
use crate::docker::{ensure_networks, remove_all};
use crate::http::{http_get, until_200, wait_ready};
use crate::machine::{Load, LoadWatch};
use crate::pods::finish_pod;
use crate::process::proc_status_kib;
use crate::scope::Scope;
use crate::stats::{Stats, stats};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SideResult {
    /// The composition scope's numbers (the fields of the runs before the pod scope existed).
    pub compose_ingress: Stats,
    pub traefik_docker: Stats,
    pub ratio_p50: f64,
    pub ratio_p99: f64,
    pub failed_compose_ingress: usize,
    pub failed_traefik_docker: usize,
    pub traefik_docker_rss_mib: f64,
    pub traefik_bed_rss_mib: f64,
    pub sidecar_rss_mib: f64,
    /// Every scope measured, the composition scope's again among them.
    pub scopes: Vec<SideScope>,
    pub load: Load,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SideScope {
    pub scope: String,
    pub compose_ingress: Stats,
    pub traefik_docker: Stats,
    pub ratio_p50: f64,
    pub ratio_p99: f64,
    pub failed_compose_ingress: usize,
    pub failed_traefik_docker: usize,
    pub traefik_docker_rss_mib: f64,
    pub sidecar_rss_mib: f64,
}

pub async fn phase_side(scale: &Scale) -> SideResult {
    let watch = LoadWatch::start();
    let mut scopes = Vec::new();
    for scope in Scope::ALL {
        scopes.push(Box::pin(side_of(scope, scale)).await);
    }
    let bed_pid: u32 =
        std::fs::read_to_string(Path::new(bed().get("TESTBED_DIR")).join("traefik.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
    let c = scopes[0].clone();
    let result = SideResult {
        compose_ingress: c.compose_ingress,
        traefik_docker: c.traefik_docker,
        ratio_p50: c.ratio_p50,
        ratio_p99: c.ratio_p99,
        failed_compose_ingress: c.failed_compose_ingress,
        failed_traefik_docker: c.failed_traefik_docker,
        traefik_docker_rss_mib: c.traefik_docker_rss_mib,
        traefik_bed_rss_mib: proc_status_kib(bed_pid, "VmRSS:") as f64 / 1024.0,
        sidecar_rss_mib: c.sidecar_rss_mib,
        scopes,
        load: watch.finish(),
    };
    say(format!("side by side: {result:?}"));
    result
}

/// One scope: its pod, its sidecar and an in-pod Traefik; `side_samples` compositions polled on
/// both paths.
async fn side_of(scope: Scope, scale: &Scale) -> SideScope {
    let (pod, kubeconfig) = scope.pod("side").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let (traefik, web) = docker_traefik(&pod).await;
    let side = scope.start(
        &pod,
        &kubeconfig,
        &[],
        &format!("sidecar-side-{}", scope.name()),
    );
    wait_ready(&side, Duration::from_secs(60)).await;
    let bed_traefik = bed()
        .get("TRAEFIK_WEB")
        .trim_start_matches("http://")
        .to_string();
    // The pod route is written once, at start-up: in place before the first sample.
    scope
        .pod_route_routed(&bed_traefik, &pod, Duration::from_secs(120))
        .await
        .expect("Traefik routes the pod's hosts to its sidecar");
    let (mut a, mut b, mut fa, mut fb) = (Vec::new(), Vec::new(), 0, 0);
    for k in 0..scale.side_samples {
        let project = format!("side-{k}");
        let label = chosen_host_label(&project, &pod);
        let host_b = format!("{project}.docker.example.com");
        let file = compose_file(&pod, &project, &label, Some(&host_b));
        compose_up(&pod, &project, &file);
        let t0 = Instant::now();
        let host_a = scope.host(&label, &pod);
        let (ra, rb) = tokio::join!(
            until_200(&bed_traefik, &host_a, t0, Duration::from_secs(60)),
            until_200(&web, &host_b, t0, Duration::from_secs(60)),
        );
        match ra {
            Some(ms) => a.push(ms),
            None => fa += 1,
        }
        match rb {
            Some(ms) => b.push(ms),
            None => fb += 1,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (sa, sb) = (stats(&a), stats(&b));
    let result = SideScope {
        scope: scope.name().to_string(),
        ratio_p50: sa.p50_ms / sb.p50_ms,
        ratio_p99: sa.p99_ms / sb.p99_ms,
        compose_ingress: sa,
        traefik_docker: sb,
        failed_compose_ingress: fa,
        failed_traefik_docker: fb,
        traefik_docker_rss_mib: proc_status_kib(traefik.pid(), "VmRSS:") as f64 / 1024.0,
        sidecar_rss_mib: proc_status_kib(side.pid(), "VmRSS:") as f64 / 1024.0,
    };
    say(format!("side by side, {} scope: {result:?}", scope.name()));
    side.stop();
    traefik.stop();
    remove_all(&docker).await;
    finish_pod(&pod);
    result
}

/// Traefik with only its Docker provider, in the pod's network namespace (as a sidecar of the
/// pod would run it), serving on `<pod ip>:18100`; returns once it answers its ping.
pub async fn docker_traefik(pod: &RunnerPod) -> (Proc, String) {
    let web = format!("{}:18100", pod.ip);
    let ping = format!("{}:18180", pod.ip);
    let sock = pod.docker_host.trim_start_matches("unix://").to_string();
    let tlog = pod.dir.join("traefik-docker.log");
    // Same throttle as the bed's Traefik (100 ms); Traefik's default would be 2 s.
    let traefik = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", pod.netns))
        .arg(Path::new(bed().get("BIN")).join("traefik"))
        .args([
            "--providers.docker=true".to_string(),
            format!("--providers.docker.endpoint=unix://{sock}"),
            "--providers.docker.exposedbydefault=false".to_string(),
            "--providers.providersthrottleduration=100ms".to_string(),
            format!("--entrypoints.web.address={web}"),
            format!("--entrypoints.traefik.address={ping}"),
            "--ping=true".to_string(),
            "--log.level=INFO".to_string(),
            "--global.checknewversion=false".to_string(),
            "--global.sendanonymoususage=false".to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&tlog).expect("traefik log"))
        .spawn()
        .expect("start Traefik (docker provider) in the pod's netns");
    let traefik = Proc(traefik);
    let start = Instant::now();
    while http_get(&ping, "localhost", "/ping", Duration::from_secs(1))
        .await
        .map(|r| r.0)
        != Some(200)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Traefik (docker provider) did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (traefik, web)
}

/// A process the bench started (Traefik with its Docker provider), stopped as the sidecar is, and
/// killed if a phase fails.
pub struct Proc(Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    pub fn stop(mut self) {
        testbed::stop_process(&mut self.0);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
