//! Phase "wait": what a CI job waits. From `docker-compose up -d` returning to
//! `compose-ingress wait PROJECT` returning (exit 0, the sidecar verifying through the bed's
//! Traefik with `--probe-url`), and whether the URL then answers at once.

use std::process::Command;
use std::time::{Duration, Instant};

use testbed::{DOMAIN, Sidecar, bed};

use crate::SIDECAR;
use crate::args::Scale;
use crate::clock::say;
use crate::compose::{chosen_host_label, compose_file, compose_up};
use crate::docker::{ensure_networks, remove_all};
use crate::http::{http_get, wait_ready};
use crate::pods::{finish_pod, phase_pod};
use crate::stats::{Stats, stats};

#[derive(Debug, serde::Serialize)]
pub struct WaitResult {
    /// `up -d` returned → `wait` returned.
    pub up_to_wait: Stats,
    pub failed: usize,
    /// URLs that did not answer 200 on the first request right after `wait` returned.
    pub not_answering_after_wait: usize,
}

pub async fn phase_wait(scale: &Scale) -> WaitResult {
    let (pod, kubeconfig) = phase_pod("wait").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let traefik = bed().get("TRAEFIK_WEB").to_string();
    let sidecar = Sidecar::start_with_kubeconfig(
        &SIDECAR,
        &pod,
        &kubeconfig,
        &["--probe-url", &traefik],
        "sidecar-wait",
    );
    wait_ready(&sidecar, Duration::from_secs(60)).await;
    let traefik_addr = traefik.trim_start_matches("http://").to_string();
    let (mut samples, mut failed, mut not_answering) = (Vec::new(), 0, 0);
    for k in 0..scale.side_samples {
        let project = format!("wait-{k}");
        let host_label = chosen_host_label(&project, &pod);
        let file = compose_file(&pod, &project, &host_label, None);
        compose_up(&pod, &project, &file);
        let t0 = Instant::now();
        let out = Command::new(SIDECAR.binary)
            .args(["wait", &project, "--timeout", "60s", "--format", "text"])
            .args(["--sidecar", &format!("http://{}", sidecar.listen)])
            .output()
            .expect("run compose-ingress wait");
        let took = t0.elapsed();
        if !out.status.success() {
            failed += 1;
            say(format!(
                "wait {project}: {:?} {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        samples.push(took.as_secs_f64() * 1e3);
        let host = format!("{host_label}.{DOMAIN}");
        if http_get(&traefik_addr, &host, "/", Duration::from_secs(5))
            .await
            .map(|r| r.0)
            != Some(200)
        {
            not_answering += 1;
        }
    }
    let result = WaitResult {
        up_to_wait: stats(&samples),
        failed,
        not_answering_after_wait: not_answering,
    };
    say(format!("wait: {result:?}"));
    sidecar.stop();
    remove_all(&docker).await;
    finish_pod(&pod);
    result
}
