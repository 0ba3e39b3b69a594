//! Phase "proxy-rss" (issue 26): the pod-scope sidecar's memory (VmRSS) idle, holding open
//! connections and WebSockets, and with many compositions mapped, beside the anchor a user
//! would run instead: Traefik's own Docker provider as the pod's proxy (in the same pod, seeing
//! the same compositions, each labelled for it too).
//!
//! The compositions are cheap on purpose: one busybox httpd container each, made through the
//! Docker API with Compose's labels (the sidecar cannot tell them from `up -d`'s, see
//! docker.rs), one published port each; the open connections and WebSockets go to a few
//! protoecho compositions (Go net/http, WebSocket echo on /ws), spread so that no composition
//! is over the proxy's per-composition bound (128 by default).

use std::time::{Duration, Instant};

use futures::StreamExt;
use testbed::POD_PROXY_PORT;

use crate::args::Scale;
use crate::clock::say;
use crate::compose::{chosen_host_label, compose_file_echo, compose_up};
use crate::docker::{create_composition, ensure_networks, remove_all, start_composition};
use crate::http::{http_get, metric, until_200, wait_ready};
use crate::load;
use crate::machine::{Load, LoadWatch};
use crate::pods::finish_pod;
use crate::process::{Cost, measure_cost, proc_status_kib};
use crate::scope::Scope;
use crate::side_by_side::docker_traefik;

#[derive(Debug, Default, serde::Serialize)]
pub struct RssResult {
    pub how: String,
    pub idle_mib: f64,
    pub traefik_docker_idle_mib: f64,
    pub connections: usize,
    /// Kept-alive connections the proxy held (its `compose_ingress_proxy_connections`).
    pub connections_held: f64,
    pub at_connections_mib: f64,
    pub websockets: usize,
    pub websockets_held: f64,
    pub at_websockets_mib: f64,
    pub compositions: usize,
    /// Of those, how many answered 200 through the proxy when the reading was taken.
    pub compositions_mapped: usize,
    pub at_compositions: Option<Cost>,
    pub traefik_docker_at_compositions_mib: f64,
    /// Whether the in-pod Traefik routed the last of them (its routers are up to date).
    pub traefik_docker_routed_all: bool,
    pub load: Load,
}

fn rss_mib(pid: u32) -> f64 {
    proc_status_kib(pid, "VmRSS:") as f64 / 1024.0
}

/// Compositions per bridge network (a bridge holds at most 1023 ports).
const PER_NETWORK: usize = 500;

pub async fn phase_proxy_rss(scale: &Scale) -> RssResult {
    let watch = LoadWatch::start();
    let (pod, kubeconfig) = Scope::Pod.pod("rss").await;
    let docker = pod.docker();
    ensure_networks(&docker, scale.rss_compositions.div_ceil(PER_NETWORK).max(1)).await;
    let (traefik, traefik_web) = docker_traefik(&pod).await;
    let side = Scope::Pod.start(&pod, &kubeconfig, &[], "sidecar-rss");
    wait_ready(&side, Duration::from_secs(60)).await;
    let settle = Duration::from_secs(if scale.smoke { 1 } else { 5 });
    tokio::time::sleep(settle).await;
    let mut r = RssResult {
        how: format!(
            "{} compositions of one busybox httpd container each (Docker API, Compose's labels, \
             one published port each, also labelled for Traefik's Docker provider); connections \
             and WebSockets to {} protoecho compositions",
            scale.rss_compositions,
            echo_count(scale)
        ),
        idle_mib: rss_mib(side.pid()),
        traefik_docker_idle_mib: rss_mib(traefik.pid()),
        connections: scale.rss_connections,
        websockets: scale.rss_connections,
        compositions: scale.rss_compositions,
        ..RssResult::default()
    };
    say(format!(
        "proxy-rss: idle {:.1} MiB (in-pod Traefik {:.1} MiB)",
        r.idle_mib, r.traefik_docker_idle_mib
    ));

    // Open connections, then WebSockets, spread over the echo compositions.
    let proxy = format!("{}:{POD_PROXY_PORT}", pod.ip);
    let mut hosts = Vec::new();
    for i in 0..echo_count(scale) {
        let project = format!("echo{i}");
        let label = chosen_host_label(&project, &pod);
        compose_up(&pod, &project, &compose_file_echo(&pod, &project, &label));
        let host = Scope::Pod.host(&label, &pod);
        until_200(&proxy, &host, Instant::now(), Duration::from_secs(60))
            .await
            .expect("the proxy routes the echo composition");
        hosts.push(host);
    }
    let gauge = "compose_ingress_proxy_connections";
    let open: Vec<_> = futures::stream::iter(0..scale.rss_connections)
        .map(|i| load::kept_alive(&proxy, &hosts[i % hosts.len()]))
        .buffer_unordered(16)
        .collect()
        .await;
    let open: Vec<_> = open.into_iter().flatten().collect();
    tokio::time::sleep(settle).await;
    r.connections_held = metric(&side.listen, gauge).await;
    r.at_connections_mib = rss_mib(side.pid());
    say(format!(
        "proxy-rss: {} kept-alive connections open ({} held): {:.1} MiB",
        open.len(),
        r.connections_held,
        r.at_connections_mib
    ));
    drop(open);
    let ws: Vec<_> = futures::stream::iter(0..scale.rss_connections)
        .map(|i| load::websocket(&proxy, &hosts[i % hosts.len()], "/ws"))
        .buffer_unordered(16)
        .collect()
        .await;
    let ws: Vec<_> = ws.into_iter().flatten().collect();
    tokio::time::sleep(settle).await;
    r.websockets_held = metric(&side.listen, gauge).await;
    r.at_websockets_mib = rss_mib(side.pid());
    say(format!(
        "proxy-rss: {} WebSockets open ({} held): {:.1} MiB",
        ws.len(),
        r.websockets_held,
        r.at_websockets_mib
    ));
    drop(ws);

    // Many compositions, each mapped by the proxy and by the in-pod Traefik.
    let projects: Vec<String> = (0..scale.rss_compositions)
        .map(|i| format!("m{i:04}"))
        .collect();
    say(format!(
        "proxy-rss: starting {} compositions",
        projects.len()
    ));
    futures::stream::iter(projects.iter().enumerate())
        .for_each_concurrent(6, |(i, p)| {
            let (docker, ip) = (&docker, &pod.ip);
            async move {
                let labels = [
                    ("traefik.enable".to_string(), "true".to_string()),
                    (
                        format!("traefik.http.routers.{p}.rule"),
                        format!("Host(`{p}.docker.example.com`)"),
                    ),
                    (
                        format!("traefik.http.services.{p}.loadbalancer.server.port"),
                        "80".to_string(),
                    ),
                ];
                let extra: Vec<(&str, String)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone()))
                    .collect();
                let net = format!("benchnet{}", i / PER_NETWORK);
                create_composition(docker, p, &["web"], &net, ip, &extra).await;
                start_composition(docker, p, &["web"]).await;
            }
        })
        .await;
    let host_of = |p: &str| format!("web-80-{p}.{}.{}", pod.name, testbed::DOMAIN);
    r.compositions_mapped = mapped(&proxy, &projects, &host_of, Duration::from_secs(300)).await;
    if let Some(last) = projects.last() {
        r.traefik_docker_routed_all = until_200(
            &traefik_web,
            &format!("{last}.docker.example.com"),
            Instant::now(),
            Duration::from_secs(120),
        )
        .await
        .is_some();
    }
    tokio::time::sleep(settle).await;
    r.at_compositions = Some(measure_cost(side.pid(), settle * 2).await);
    r.traefik_docker_at_compositions_mib = rss_mib(traefik.pid());
    say(format!(
        "proxy-rss: {} of {} compositions mapped: {:?} (in-pod Traefik {:.1} MiB, routed all: {})",
        r.compositions_mapped,
        r.compositions,
        r.at_compositions,
        r.traefik_docker_at_compositions_mib,
        r.traefik_docker_routed_all
    ));
    side.stop();
    traefik.stop();
    remove_all(&docker).await;
    finish_pod(&pod);
    r.load = watch.finish();
    r
}

/// Compositions that hold the open connections: 50 connections each.
fn echo_count(scale: &Scale) -> usize {
    scale.rss_connections.div_ceil(50).max(1)
}

/// Waits (bounded) until every project's host answers 200 through the proxy; how many did.
async fn mapped(
    proxy: &str,
    projects: &[String],
    host_of: &impl Fn(&str) -> String,
    limit: Duration,
) -> usize {
    let t = Instant::now();
    let mut left: Vec<&String> = projects.iter().collect();
    while !left.is_empty() && t.elapsed() < limit {
        let answers: Vec<bool> = futures::stream::iter(left.iter())
            .map(|p| async move {
                matches!(
                    http_get(proxy, &host_of(p), "/", Duration::from_secs(5)).await,
                    Some((200, _))
                )
            })
            .buffered(16)
            .collect()
            .await;
        left = left
            .into_iter()
            .zip(answers)
            .filter(|(_, ok)| !ok)
            .map(|(p, _)| p)
            .collect();
        if !left.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    projects.len() - left.len()
}
