//! HTTP as a person would check it: curl against loopback or the bed's own pod addresses, and
//! through the bed's Traefik with a Host header.

use std::process::Command;
use std::time::Duration;

use crate::bed::bed;
use crate::wait::{CONVERGE, eventually};

/// HTTP GET with curl (what a person would run): returns (status, body). `host` sets the Host
/// header. Only loopback and the bed's own pod addresses are ever targets.
pub fn http_get(url: &str, host: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"]);
    if let Some(h) = host {
        cmd.arg("-H").arg(format!("Host: {h}"));
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// GET through Traefik with the Host header until it answers 200; returns the body.
pub async fn through_ingress(host: &str) -> String {
    through_ingress_within(host, CONVERGE).await
}

pub async fn through_ingress_within(host: &str, deadline: Duration) -> String {
    through_controller("Traefik", bed().get("TRAEFIK_WEB"), host, deadline).await
}

/// GET through the controller whose HTTP entry is `web` (e.g. the bed's `CONTOUR_WEB`) with the
/// Host header until it answers 200; returns the body. `name` is for the failure message.
pub async fn through_controller(name: &str, web: &str, host: &str, deadline: Duration) -> String {
    eventually(&format!("{name} routes {host}"), deadline, || async {
        let (code, body) = http_get(&format!("{web}/"), Some(host));
        (code == 200).then_some(body)
    })
    .await
}

/// The status of one GET with the shared client (http-get/; None on any failure or after 10 s),
/// for load where a curl process per request would be the bottleneck. Loopback or the bed's
/// addresses only.
pub async fn raw_get(addr: &str, host: &str, path: &str) -> Option<u16> {
    http_get::get(addr, host, path, Duration::from_secs(10))
        .await
        .ok()
        .map(|answer| answer.status)
}

/// What a paced load got back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadResult {
    pub sent: u32,
    /// 200 answers.
    pub ok: u32,
    /// 429 Too Many Requests.
    pub limited: u32,
    /// Anything else (another status, or no answer).
    pub other: u32,
    /// From the first request sent to the last one sent: longer than planned when the machine
    /// is busy.
    pub sending: Duration,
    /// From the first request sent to the last answer: a server sees the requests arrive within
    /// this time (later than they were sent when the machine is busy), so a rate limiter refills
    /// over at most this long.
    pub answered: Duration,
}

/// Sends `rate` GETs per second for `duration` to `addr` with `Host: host`, each at its own
/// planned instant (not one after another, so a slow answer does not lower the rate), and
/// counts the answers.
pub async fn load(addr: &str, host: &str, rate: u32, duration: Duration) -> LoadResult {
    let n = (f64::from(rate) * duration.as_secs_f64()).round() as u32;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        tokio::time::sleep_until(start + Duration::from_secs_f64(f64::from(i) / f64::from(rate)))
            .await;
        let (addr, host) = (addr.to_string(), host.to_string());
        tasks.push(tokio::spawn(async move {
            let status = raw_get(&addr, &host, "/").await;
            (status, start.elapsed())
        }));
    }
    let mut result = LoadResult {
        sent: n,
        sending: start.elapsed(),
        ..LoadResult::default()
    };
    for t in tasks {
        let (status, at) = t.await.unwrap_or((None, Duration::ZERO));
        result.answered = result.answered.max(at);
        match status {
            Some(200) => result.ok += 1,
            Some(429) => result.limited += 1,
            _ => result.other += 1,
        }
    }
    result
}

/// Traefik's plain-HTTP entry point as `host:port` (for [`load`] and [`raw_get`]).
pub fn traefik_addr() -> String {
    bed()
        .get("TRAEFIK_WEB")
        .trim_start_matches("http://")
        .to_string()
}
