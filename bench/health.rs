//! Phase "health": how fast health-gated routing follows Docker. A composition whose container
//! has a healthcheck (passing while /tmp/healthy exists) is exposed but not routed while it is
//! `starting`. The phase creates the file and measures from Docker's `health_status: healthy`
//! event (the daemon's own timestamp) to the first answer from the container through the bed's
//! Traefik; then removes it and measures from `health_status: unhealthy` to the last answer.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::EventsOptions;
use futures::StreamExt;
use testbed::{DOMAIN, Sidecar, bed};

use crate::SIDECAR;
use crate::args::Scale;
use crate::clock::say;
use crate::compose::{chosen_host_label, compose_up};
use crate::docker::{ensure_networks, remove_all};
use crate::http::{http_get, wait_ready};
use crate::pods::{finish_pod, phase_pod};
use crate::stats::{Stats, stats};

#[derive(Debug, serde::Serialize)]
pub struct HealthResult {
    /// Docker's `health_status: healthy` event → the container answers through Traefik (ms).
    pub healthy_to_routable: Stats,
    /// Of which: the event → the sidecar's log line after it wrote the EndpointSlice (ms)...
    pub healthy_to_slice_written: Stats,
    /// ...and that line → the answer through Traefik (the controller's share, ms).
    pub slice_written_to_routable: Stats,
    /// Docker's `health_status: unhealthy` event → Traefik no longer passes requests on (ms).
    pub unhealthy_to_unrouted: Stats,
    /// Samples that did not converge within 30 s.
    pub failed: usize,
    /// Compositions whose starting container answered through Traefik before it was healthy.
    pub routed_while_starting: usize,
}

fn compose_file(pod: &testbed::RunnerPod, project: &str, host_label: &str) -> std::path::PathBuf {
    let yaml = format!(
        "services:\n  web:\n    image: {}\n    command: [\"sh\", \"-c\", \"echo {project} > /www/index.html && exec httpd -f -p 80 -h /www\"]\n    ports: [\"{}::80\"]\n    healthcheck: {{test: [\"CMD\", \"test\", \"-f\", \"/tmp/healthy\"], interval: 1s, timeout: 1s, retries: 1, start_period: 10m}}\n    labels:\n      compose-ingress.enable: \"true\"\n      compose-ingress.host: \"{host_label}\"\nnetworks:\n  default:\n    name: benchnet0\n    external: true\n",
        bed().get("TEST_IMAGE"),
        pod.ip
    );
    let path = pod.dir.join(format!("{project}.compose.yml"));
    std::fs::write(&path, yaml).expect("write compose file");
    path
}

fn docker_exec(pod: &testbed::RunnerPod, container: &str, args: &[&str]) {
    let out = Command::new("docker")
        .env("DOCKER_HOST", &pod.docker_host)
        .args(["exec", container])
        .args(args)
        .output()
        .expect("run docker exec");
    assert!(
        out.status.success(),
        "docker exec {container} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn since_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e3
}

/// Waits for the container's next `health_status: <state>` event; its time (ms since epoch).
async fn next_health_event(
    events: &mut (
             impl futures::Stream<Item = Result<bollard::models::EventMessage, bollard::errors::Error>>
             + Unpin
         ),
    state: &str,
) -> Option<f64> {
    let wanted = format!("health_status: {state}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let next = tokio::time::timeout_at(deadline, events.next())
            .await
            .ok()??;
        let Ok(event) = next else { continue };
        if event.action.as_deref() == Some(wanted.as_str()) {
            return event.time_nano.map(|ns| ns as f64 / 1e6);
        }
    }
}

/// Polls Traefik until `answers` says the container's page is (or is no longer) served; the
/// time it changed (ms since epoch).
async fn until_served(traefik: &str, host: &str, page: &str, served: bool) -> Option<f64> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let answer = http_get(traefik, host, "/", Duration::from_secs(2)).await;
        let now = since_epoch(SystemTime::now());
        let is_served = matches!(&answer, Some((200, body)) if body.trim() == page);
        if is_served == served {
            return Some(now);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

pub async fn phase_health(scale: &Scale) -> HealthResult {
    let (pod, kubeconfig) = phase_pod("health").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let traefik = bed()
        .get("TRAEFIK_WEB")
        .trim_start_matches("http://")
        .to_string();
    let sidecar =
        Sidecar::start_with_kubeconfig(&SIDECAR, &pod, &kubeconfig, &[], "sidecar-health");
    wait_ready(&sidecar, Duration::from_secs(60)).await;
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let (mut sidecar_share, mut controller_share) = (Vec::new(), Vec::new());
    let (mut failed, mut routed_while_starting) = (0, 0);
    for k in 0..scale.side_samples {
        let project = format!("health-{k}");
        let host = format!("{}.{DOMAIN}", chosen_host_label(&project, &pod));
        compose_up(
            &pod,
            &project,
            &compose_file(&pod, &project, &host_label_of(&host)),
        );
        let container = format!("{project}-web-1");
        // Exposed (its objects written: the sidecar lists its URL) while still starting.
        let exposed = Instant::now();
        loop {
            let doc = http_get(
                &sidecar.listen,
                "localhost",
                &format!("/v1/compositions/{project}"),
                Duration::from_secs(2),
            )
            .await;
            if matches!(&doc, Some((200, body)) if body.contains(&host))
                || exposed.elapsed() > Duration::from_secs(30)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if matches!(http_get(&traefik, &host, "/", Duration::from_secs(2)).await, Some((200, b)) if b.trim() == project)
        {
            routed_while_starting += 1;
        }
        let mut events = docker.events(Some(EventsOptions {
            filters: Some(std::collections::HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                ("container".to_string(), vec![container.clone()]),
            ])),
            ..Default::default()
        }));
        docker_exec(&pod, &container, &["touch", "/tmp/healthy"]);
        let sample = async {
            let healthy = next_health_event(&mut events, "healthy").await?;
            let routed = until_served(&traefik, &host, &project, true).await?;
            Some((healthy, routed))
        };
        match sample.await {
            Some((healthy, routed)) => {
                up.push(routed - healthy);
                if let Some(written) = routed_again_logged(&sidecar, &project, healthy) {
                    sidecar_share.push(written - healthy);
                    controller_share.push(routed - written);
                }
            }
            None => failed += 1,
        }
        docker_exec(&pod, &container, &["rm", "-f", "/tmp/healthy"]);
        let sample = async {
            let unhealthy = next_health_event(&mut events, "unhealthy").await?;
            let unrouted = until_served(&traefik, &host, &project, false).await?;
            Some(unrouted - unhealthy)
        };
        match sample.await {
            Some(ms) => down.push(ms),
            None => failed += 1,
        }
    }
    let result = HealthResult {
        healthy_to_routable: stats(&up),
        healthy_to_slice_written: stats(&sidecar_share),
        slice_written_to_routable: stats(&controller_share),
        unhealthy_to_unrouted: stats(&down),
        failed,
        routed_while_starting,
    };
    say(format!("health: {result:?}"));
    sidecar.stop();
    remove_all(&docker).await;
    finish_pod(&pod);
    result
}

/// When the sidecar logged, after `after` (ms since epoch), that every service of `project` is
/// routed again (the EndpointSlice is written by then).
fn routed_again_logged(sidecar: &Sidecar, project: &str, after: f64) -> Option<f64> {
    sidecar
        .log_lines("routed services changed")
        .iter()
        .filter(|l| l["span"]["composition"] == project)
        .filter(|l| l["not_routed"].as_str() == Some("[]"))
        .filter_map(|l| l["timestamp"].as_str().and_then(rfc3339_ms))
        .find(|t| *t >= after - 1.0)
}

/// `2026-11-27T21:36:37.197419Z` → ms since the epoch (the sidecar's log timestamps, UTC).
fn rfc3339_ms(s: &str) -> Option<f64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days as f64 * 86_400.0) + hh * 3600.0 + mm * 60.0 + ss) * 1e3)
}

fn host_label_of(host: &str) -> String {
    host.split('.').next().unwrap_or_default().to_string()
}
