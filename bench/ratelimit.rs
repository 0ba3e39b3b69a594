//! Phase "ratelimit": the rate Traefik actually lets through a composition's rate-limit
//! Middleware (`--rate-limit-mode traefik-middleware`) against the configured one, under a load
//! of four times the limit, in Ingress and Gateway mode.

use std::time::{Duration, Instant};

use testbed::{DOMAIN, Sidecar, TRAEFIK_RBAC, bed, load, traefik_addr};

use crate::SIDECAR;
use crate::args::Scale;
use crate::clock::say;
use crate::compose::chosen_host_label;
use crate::http::{until_200, wait_ready};
use crate::pods::{finish_pod, phase_pod};

#[derive(Debug, serde::Serialize)]
pub struct RateLimitResult {
    pub route_api: String,
    pub configured_rps: u32,
    pub offered_rps: u32,
    /// The time the load was sent over.
    pub seconds: f64,
    pub sent: u32,
    pub ok: u32,
    pub limited: u32,
    pub other: u32,
    /// 200 answers per second of load.
    pub let_through_rps: f64,
    /// What a token bucket of the configured rate and a burst of one second's worth lets
    /// through in that time: rps × (seconds + 1), per second of load.
    pub bucket_rps: f64,
}

pub async fn phase_ratelimit(scale: &Scale) -> Vec<RateLimitResult> {
    let gateway = bed().gateway();
    let mut out = Vec::new();
    for (api, route_flags) in [
        ("ingress", vec![]),
        (
            "gateway",
            vec!["--route-api", "gateway", "--gateway", &gateway],
        ),
    ] {
        let (pod, kubeconfig) = phase_pod(&format!("rl{api}")).await;
        pod.grant(&bed().admin().await, TRAEFIK_RBAC).await;
        let mut flags = vec![
            "--rate-limit-mode",
            "traefik-middleware",
            "--default-rps",
            "1000",
            "--max-rps",
            "1000",
        ];
        flags.extend(route_flags.iter().copied());
        let sidecar =
            Sidecar::start_with_kubeconfig(&SIDECAR, &pod, &kubeconfig, &flags, "sidecar-rl");
        wait_ready(&sidecar, Duration::from_secs(60)).await;
        let addr = traefik_addr();
        for &rps in &scale.ratelimit_rps {
            let project = format!("rl-{rps}");
            let host_label = chosen_host_label(&project, &pod);
            let yaml = format!(
                "services:\n  web:\n    image: {}\n    command: [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n    ports: [\"80\"]\n    labels:\n      compose-ingress.enable: \"true\"\n      compose-ingress.host: \"{host_label}\"\n      compose-ingress.rate-limit.rps: \"{rps}\"\n",
                bed().get("TEST_IMAGE"),
            );
            pod.compose_as(testbed::ComposeVersion::V2, &project, &yaml, &["up", "-d"]);
            let host = format!("{host_label}.{DOMAIN}");
            until_200(&addr, &host, Instant::now(), Duration::from_secs(120))
                .await
                .unwrap_or_else(|| panic!("{host} not routed within 120 s"));
            tokio::time::sleep(Duration::from_secs(2)).await; // the bucket refills
            let offered = rps * 4;
            let r = load(&addr, &host, offered, scale.ratelimit_load).await;
            let secs = r.sending.as_secs_f64();
            let result = RateLimitResult {
                route_api: api.to_string(),
                configured_rps: rps,
                offered_rps: offered,
                seconds: secs,
                sent: r.sent,
                ok: r.ok,
                limited: r.limited,
                other: r.other,
                let_through_rps: f64::from(r.ok) / secs,
                bucket_rps: f64::from(rps) * (secs + 1.0) / secs,
            };
            say(format!(
                "ratelimit ({api}): configured {rps} rps, offered {offered}: {:.1} rps let through \
                 (bucket {:.1}), {} × 429, {} other",
                result.let_through_rps, result.bucket_rps, r.limited, r.other
            ));
            out.push(result);
        }
        sidecar.stop();
        finish_pod(&pod);
    }
    out
}
