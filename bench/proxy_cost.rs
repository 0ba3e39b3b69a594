//! Phase "proxy" (issue 26): what the pod scope's in-pod proxy adds to a request. One
//! composition (the bed's protoecho, Go's net/http with keep-alive) in a runner pod with a
//! pod-scope sidecar; the same GET with the same closed-loop client (bench/load.rs) straight to
//! the composition's published port on the pod's address, and through the sidecar's proxy on
//! the pod's address (its Host picking the composition), in turns at each concurrency. The
//! client, the proxy and the backend share the machine's 2 cores, as they would share a runner
//! pod's CPU.

use std::time::Duration;

use testbed::POD_PROXY_PORT;

use crate::args::Scale;
use crate::clock::say;
use crate::compose::{chosen_host_label, compose_file_echo, compose_up};
use crate::docker::{ensure_networks, published_port, remove_all};
use crate::http::{until_200, wait_ready};
use crate::load;
use crate::machine::{Load, LoadWatch};
use crate::pods::finish_pod;
use crate::process::{clk_tck, cpu_ticks};
use crate::scope::Scope;
use crate::stats::{Stats, stats};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ProxyPoint {
    pub concurrency: usize,
    pub direct: Stats,
    pub proxied: Stats,
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    pub direct_rps: f64,
    pub proxied_rps: f64,
    pub direct_errors: usize,
    pub proxied_errors: usize,
    /// The sidecar's CPU time (utime + stime, /proc/PID/stat) per 1 000 proxied requests.
    pub sidecar_cpu_ms_per_1000: f64,
    /// The same as % of one core over the proxied runs.
    pub sidecar_cpu_percent: f64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ProxyResult {
    pub backend: String,
    /// Each concurrency: `rounds` × (a direct run, a proxied run) of `secs_per_run` each.
    pub rounds: usize,
    pub secs_per_run: f64,
    pub points: Vec<ProxyPoint>,
    pub load: Load,
}

pub async fn phase_proxy(scale: &Scale) -> ProxyResult {
    let watch = LoadWatch::start();
    let (pod, kubeconfig) = Scope::Pod.pod("proxy").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let side = Scope::Pod.start(&pod, &kubeconfig, &[], "sidecar-proxy");
    wait_ready(&side, Duration::from_secs(60)).await;
    let project = "echo";
    let label = chosen_host_label(project, &pod);
    compose_up(&pod, project, &compose_file_echo(&pod, project, &label));
    let host = Scope::Pod.host(&label, &pod);
    let proxy = format!("{}:{POD_PROXY_PORT}", pod.ip);
    let direct = format!(
        "{}:{}",
        pod.ip,
        published_port(&docker, &format!("{project}-web-1")).await
    );
    let t0 = std::time::Instant::now();
    until_200(&proxy, &host, t0, Duration::from_secs(60))
        .await
        .expect("the proxy routes the echo composition");
    until_200(&direct, &host, t0, Duration::from_secs(60))
        .await
        .expect("the echo composition answers on its published port");
    let pid = side.pid();
    let mut result = ProxyResult {
        backend: "protoecho (Go net/http), GET / (a one-line page)".into(),
        rounds: scale.proxy_rounds,
        secs_per_run: scale.proxy_run.as_secs_f64(),
        ..ProxyResult::default()
    };
    for &c in &scale.proxy_concurrency {
        // Warm both paths (connections, the proxy's pool) before what is recorded.
        load::run(&direct, &host, c, Duration::from_millis(300)).await;
        load::run(&proxy, &host, c, Duration::from_millis(300)).await;
        let (mut d, mut p) = (load::LoadRun::default(), load::LoadRun::default());
        let (mut ticks, mut proxied_secs) = (0u64, 0.0);
        for _ in 0..scale.proxy_rounds {
            let r = load::run(&direct, &host, c, scale.proxy_run).await;
            d.latencies_ms.extend(r.latencies_ms);
            d.errors += r.errors;
            d.secs += r.secs;
            let before = cpu_ticks(pid);
            let r = load::run(&proxy, &host, c, scale.proxy_run).await;
            ticks += cpu_ticks(pid).saturating_sub(before);
            proxied_secs += r.secs;
            p.latencies_ms.extend(r.latencies_ms);
            p.errors += r.errors;
            p.secs += r.secs;
        }
        let (sd, sp) = (stats(&d.latencies_ms), stats(&p.latencies_ms));
        let cpu_ms = ticks as f64 / clk_tck() * 1e3;
        let point = ProxyPoint {
            concurrency: c,
            added_p50_ms: sp.p50_ms - sd.p50_ms,
            added_p99_ms: sp.p99_ms - sd.p99_ms,
            direct_rps: d.latencies_ms.len() as f64 / d.secs.max(1e-3),
            proxied_rps: p.latencies_ms.len() as f64 / p.secs.max(1e-3),
            direct_errors: d.errors,
            proxied_errors: p.errors,
            sidecar_cpu_ms_per_1000: cpu_ms / (p.latencies_ms.len().max(1) as f64) * 1e3,
            sidecar_cpu_percent: 100.0 * cpu_ms / 1e3 / proxied_secs.max(1e-3),
            direct: sd,
            proxied: sp,
        };
        say(format!(
            "proxy at {c} clients: direct p50 {:.3} p99 {:.3} ms {:.0}/s; proxied p50 {:.3} p99 {:.3} ms {:.0}/s; sidecar {:.0} ms CPU per 1000 ({:.0} %); errors {} / {}",
            point.direct.p50_ms,
            point.direct.p99_ms,
            point.direct_rps,
            point.proxied.p50_ms,
            point.proxied.p99_ms,
            point.proxied_rps,
            point.sidecar_cpu_ms_per_1000,
            point.sidecar_cpu_percent,
            point.direct_errors,
            point.proxied_errors
        ));
        result.points.push(point);
    }
    side.stop();
    remove_all(&docker).await;
    finish_pod(&pod);
    result.load = watch.finish();
    result
}
