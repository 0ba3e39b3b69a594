//! The CI job's side (issue 17): `compose up -d`, then `compose-ingress wait` hands over the URLs
//! once a request through the bed's Traefik reaches the container, as a job would use them.

use std::process::{Command, Output};

use testbed::{
    ComposeVersion, ENABLE, RunnerPod, Sidecar, bed, compose_file, domain, http_get,
    unique_namespace, web,
};

use crate::SIDECAR;

/// `compose-ingress <args>` as a job in the runner pod runs it, against `sidecar`.
pub(crate) fn job(sidecar: &Sidecar, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(SIDECAR.binary)
        .args(args)
        .args(["--sidecar", &format!("http://{}", sidecar.listen)])
        .envs(env.iter().copied())
        .output()
        .expect("run compose-ingress as a job")
}

pub(crate) fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn wait_hands_over_urls_that_answer_at_once_and_fails_fast_on_refusal() {
    let ns = unique_namespace("cijob");
    let pod: RunnerPod = bed().runner_pod(&ns, "runner-0");
    // The bed's Traefik is the ingress controller; the sidecar runs on the host here, so its
    // in-cluster address is loopback.
    let sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &["--probe-url", bed().get("TRAEFIK_WEB")],
    )
    .await;
    let v2 = ComposeVersion::V2;

    // An app that needs a few seconds before it listens: routed by Traefik before it answers
    // (502 meanwhile), as a starting application is.
    let slow = "  web:\n    image: compose-ingress-test/busybox:1\n    stop_signal: SIGKILL\n    \
                command: [\"sh\", \"-c\", \"sleep 4; echo job-page > /www/index.html; exec httpd -f -p 8080 -h /www\"]\n    \
                ports: [\"8080\"]\n    labels: {compose-ingress.enable: \"true\"}\n";
    pod.compose_as(
        v2,
        "jobapp",
        &compose_file(&[slow.to_string()]),
        &["up", "-d"],
    );
    let out = job(
        &sidecar,
        &["wait", "jobapp", "--format", "dotenv", "--timeout", "2m"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let host = format!("web-8080-jobapp-runner-0.{}", domain(&ns));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("WEB_8080_URL=http://{host}/\n"),
        "{}",
        show(&out)
    );
    // The URL answers now, through the controller: no retry after `wait` returned.
    let (code, body) = http_get(&format!("{}/", bed().get("TRAEFIK_WEB")), Some(&host));
    assert_eq!((code, body.trim()), (200, "job-page"));

    // `urls` and the GitHub output.
    let outputs = pod.dir.join("github-output");
    let gh = outputs.to_str().expect("path");
    let out = job(
        &sidecar,
        &["urls", "jobapp", "--format", "github"],
        &[("GITHUB_OUTPUT", gh)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        std::fs::read_to_string(&outputs).expect("GITHUB_OUTPUT written"),
        format!("web_8080_url=http://{host}/\n")
    );

    // A composition refused by a bad label: `wait` fails with the reason, not at its timeout.
    pod.compose_as(
        v2,
        "badjob",
        &compose_file(&[web(
            "web",
            "x",
            8080,
            "8080",
            &[ENABLE, ("compose-ingress.host", "a.evil.example")],
        )]),
        &["up", "-d"],
    );
    let out = job(&sidecar, &["wait", "badjob", "--timeout", "5m"], &[]);
    assert_eq!(out.status.code(), Some(3), "refused: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("host-outside-domain"),
        "{}",
        show(&out)
    );

    // A service that never comes: the timeout status, naming it.
    let out = job(
        &sidecar,
        &["wait", "jobapp", "--service", "worker", "--timeout", "3s"],
        &[],
    );
    assert_eq!(out.status.code(), Some(4), "timeout: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing: worker"),
        "{}",
        show(&out)
    );
}
