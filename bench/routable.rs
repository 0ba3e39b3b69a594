//! Phase "routable": time to routable (through the bed's Traefik) after `docker-compose up -d`
//! returns, against the number of existing routes of the same kind (Ingress and HTTPRoute).

use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::{DOMAIN, Sidecar, bed};

use crate::SIDECAR;
use crate::args::Scale;
use crate::clock::say;
use crate::cluster::delete_owned;
use crate::compose::{chosen_host_label, compose_file, compose_up};
use crate::docker::{ensure_networks, remove_all};
use crate::fillers;
use crate::http::{http_get, until_200, wait_ready};
use crate::pods::{finish_pod, phase_pod};
use crate::stats::{Stats, stats};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RoutableResult {
    pub api: String,
    pub existing: usize,
    pub stats: Stats,
    pub failed: usize,
    pub samples_ms: Vec<f64>,
}

/// Waits until the bed's Traefik reports at least `n` HTTP routers (its API), bounded.
pub async fn wait_traefik_routers(n: usize, deadline: Duration) -> usize {
    let admin_addr = bed()
        .get("TRAEFIK_ADMIN")
        .trim_start_matches("http://")
        .to_string();
    let start = Instant::now();
    let mut last = 0;
    while start.elapsed() < deadline {
        if let Some((200, body)) = http_get(
            &admin_addr,
            "localhost",
            "/api/overview",
            Duration::from_secs(5),
        )
        .await
        {
            last = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["http"]["routers"]["total"].as_u64())
                .unwrap_or(0) as usize;
            if last >= n {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last
}

pub async fn phase_routable(scale: &Scale) -> Vec<RoutableResult> {
    let (pod, kubeconfig) = phase_pod("routable").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let admin = bed().admin().await;
    fillers::routes_of_others(&admin, "routable", 0, scale.smoke).await;
    fillers::prepare_backend(&admin, &pod).await;
    let traefik = bed()
        .get("TRAEFIK_WEB")
        .trim_start_matches("http://")
        .to_string();
    let mut results = Vec::new();
    for api in ["ingress", "gateway"] {
        let kind = if api == "ingress" {
            "Ingress"
        } else {
            "HTTPRoute"
        };
        let gw = bed().gateway();
        let mut flags = vec!["--route-api", api];
        if api == "gateway" {
            flags.extend(["--gateway", gw.as_str()]);
        }
        let side = Sidecar::start_with_kubeconfig(
            &SIDECAR,
            &pod,
            &kubeconfig,
            &flags,
            &format!("sidecar-{api}"),
        );
        wait_ready(&side, Duration::from_secs(60)).await;
        let mut have = 0;
        for &level in &scale.routable_levels {
            if level > have {
                say(format!("routable/{api}: creating fillers {have}..{level}"));
                fillers::create(
                    &admin,
                    &pod.namespace,
                    kind,
                    "traefik",
                    "filler",
                    have..level,
                )
                .await;
                have = level;
                // Traefik has taken the fillers in when it routes the last one (its endpoint, the
                // pod IP on a closed port, answers 502 instead of the 404 of an unknown host).
                let last = format!("filler-{}.filler.example.com", level - 1);
                let t = Instant::now();
                let mut routed = false;
                while t.elapsed() < Duration::from_secs(180) && !routed {
                    let code = http_get(&traefik, &last, "/", Duration::from_secs(5)).await;
                    routed = code.is_some_and(|(c, _)| c != 404);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                say(format!(
                    "routable/{api}: Traefik routes the fillers after {:?} (routed: {routed}; {} routers)",
                    t.elapsed(),
                    wait_traefik_routers(0, Duration::from_secs(5)).await
                ));
            }
            let mut samples = Vec::new();
            let mut failed = 0;
            for k in 0..scale.routable_samples {
                let project = format!("rt-{api}-{level}-{k}");
                let host_label = chosen_host_label(&project, &pod);
                let file = compose_file(&pod, &project, &host_label, None);
                compose_up(&pod, &project, &file);
                let t0 = Instant::now();
                let host = format!("{host_label}.{DOMAIN}");
                match until_200(&traefik, &host, t0, Duration::from_secs(60)).await {
                    Some(ms) => samples.push(ms),
                    None => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let st = stats(&samples);
            say(format!(
                "routable/{api} with {level} existing: {st:?} failed {failed}"
            ));
            results.push(RoutableResult {
                api: api.to_string(),
                existing: level,
                stats: st,
                failed,
                samples_ms: samples,
            });
        }
        side.stop();
        remove_all(&docker).await;
        fillers::delete_all(&admin, &pod.namespace, kind).await;
        // The stopped sidecar leaves its objects (cleanup never); delete them for the next mode.
        delete_owned(&admin, &pod.namespace).await;
    }
    finish_pod(&pod);
    results
}
