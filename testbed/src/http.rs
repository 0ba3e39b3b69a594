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
    let traefik = bed().get("TRAEFIK_WEB").to_string();
    eventually(&format!("Traefik routes {host}"), deadline, || async {
        let (code, body) = http_get(&format!("{traefik}/"), Some(host));
        (code == 200).then_some(body)
    })
    .await
}
