//! Phase "side": side by side with Traefik's own Docker provider (in the pod's network
//! namespace), the same compositions routed both ways.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{DOMAIN, Sidecar, bed};

use crate::SIDECAR;
use crate::args::Scale;
use crate::clock::say;
use crate::compose::{chosen_host_label, compose_file, compose_up};
use crate::docker::{ensure_networks, remove_all};
use crate::http::{http_get, until_200, wait_ready};
use crate::pods::{finish_pod, phase_pod};
use crate::process::proc_status_kib;
use crate::stats::{Stats, stats};

#[derive(Debug, serde::Serialize)]
pub struct SideResult {
    pub compose_ingress: Stats,
    pub traefik_docker: Stats,
    pub ratio_p50: f64,
    pub ratio_p99: f64,
    pub failed_compose_ingress: usize,
    pub failed_traefik_docker: usize,
    pub traefik_docker_rss_mib: f64,
    pub traefik_bed_rss_mib: f64,
    pub sidecar_rss_mib: f64,
}

pub async fn phase_side(scale: &Scale) -> SideResult {
    let (pod, kubeconfig) = phase_pod("side").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let netns = pod.dir.join("env");
    let netns = std::fs::read_to_string(netns)
        .ok()
        .and_then(|t| testbed::parse_env(&t).get("NETNS").cloned())
        .expect("pod NETNS");
    let web = format!("{}:18100", pod.ip);
    let ping = format!("{}:18180", pod.ip);
    let sock = pod.docker_host.trim_start_matches("unix://").to_string();
    let tlog = pod.dir.join("traefik-docker.log");
    // Same throttle as the bed's Traefik (100 ms); Traefik's default would be 2 s.
    let traefik = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
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
    let side = Sidecar::start_with_kubeconfig(&SIDECAR, &pod, &kubeconfig, &[], "sidecar-side");
    wait_ready(&side, Duration::from_secs(60)).await;
    let bed_traefik = bed()
        .get("TRAEFIK_WEB")
        .trim_start_matches("http://")
        .to_string();
    let (mut a, mut b, mut fa, mut fb) = (Vec::new(), Vec::new(), 0, 0);
    for k in 0..scale.side_samples {
        let project = format!("side-{k}");
        let host_a = chosen_host_label(&project, &pod);
        let host_b = format!("{project}.docker.example.com");
        let file = compose_file(&pod, &project, &host_a, Some(&host_b));
        compose_up(&pod, &project, &file);
        let t0 = Instant::now();
        let host_a = format!("{host_a}.{DOMAIN}");
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
    let bed_pid: u32 =
        std::fs::read_to_string(Path::new(bed().get("TESTBED_DIR")).join("traefik.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
    let (sa, sb) = (stats(&a), stats(&b));
    let result = SideResult {
        ratio_p50: sa.p50_ms / sb.p50_ms,
        ratio_p99: sa.p99_ms / sb.p99_ms,
        compose_ingress: sa,
        traefik_docker: sb,
        failed_compose_ingress: fa,
        failed_traefik_docker: fb,
        traefik_docker_rss_mib: proc_status_kib(traefik.pid(), "VmRSS:") as f64 / 1024.0,
        traefik_bed_rss_mib: proc_status_kib(bed_pid, "VmRSS:") as f64 / 1024.0,
        sidecar_rss_mib: proc_status_kib(side.pid(), "VmRSS:") as f64 / 1024.0,
    };
    say(format!("side by side: {result:?}"));
    side.stop();
    traefik.stop();
    remove_all(&docker).await;
    finish_pod(&pod);
    result
}

/// A process the bench started (Traefik with its Docker provider), stopped as the sidecar is, and
/// killed if a phase fails.
pub struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn stop(mut self) {
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
