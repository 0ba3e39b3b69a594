//! Command-line modes: client and server dry runs write nothing; bad flags fail at start.

use testbed::{
    CONVERGE, ComposeVersion, ENABLE, Sidecar, bed, compose_file, eventually, ingresses_of,
    services_of, web,
};

use super::{host_of, setup};
use crate::SIDECAR;

pub(super) async fn dry_run_prints_the_objects_and_writes_nothing(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("dryrun").await;
    pod.compose_as(
        compose,
        "dry",
        &compose_file(&[web("web", "dry", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--dry-run"]).await;
    let stdout = eventually("dry-run YAML on stdout", CONVERGE, || async {
        let out = std::fs::read_to_string(&sidecar.stdout).unwrap_or_default();
        (out.contains("kind: Ingress") && out.contains("kind: Service")).then_some(out)
    })
    .await;
    assert!(
        stdout.contains(&format!(
            "host: {}",
            host_of(&ns, "web", 80, "dry", "runner-0")
        )),
        "{stdout}"
    );
    sidecar.wait_resyncs(1).await;
    assert!(
        services_of(&admin, &ns, "runner-0", "dry").await.is_empty(),
        "dry run created a Service"
    );
    assert!(
        ingresses_of(&admin, &ns, "runner-0", "dry")
            .await
            .is_empty(),
        "dry run created an Ingress"
    );
    let leases = bed().kubectl(&["-n", &ns, "get", "leases", "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&leases.stdout).trim(),
        "",
        "dry run created a Lease"
    );
}

pub(super) async fn server_dry_run_validates_with_the_apiserver_and_writes_nothing(
    compose: ComposeVersion,
) {
    let (ns, pod, admin) = setup("dryrunsrv").await;
    pod.compose_as(
        compose,
        "dry",
        &compose_file(&[web("web", "dry", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--dry-run=server"]).await;
    eventually("server dry-run YAML on stdout", CONVERGE, || async {
        let out = std::fs::read_to_string(&sidecar.stdout).unwrap_or_default();
        out.contains("kind: Ingress").then_some(())
    })
    .await;
    sidecar.wait_resyncs(1).await;
    assert!(
        sidecar.log_lines("reconcile failed").is_empty(),
        "the apiserver accepted the objects: {}",
        sidecar.logs()
    );
    assert!(services_of(&admin, &ns, "runner-0", "dry").await.is_empty());
    assert!(
        ingresses_of(&admin, &ns, "runner-0", "dry")
            .await
            .is_empty()
    );
}

pub(super) fn bad_flags_fail_at_start_with_one_line_and_exit_code_2() {
    for (args, flag) in [
        (vec!["--domain", "nodots"], "--domain"),
        (
            vec![
                "--domain",
                "composition.example.com",
                "--host-template",
                "{service}.{pod}",
            ],
            "--host-template",
        ),
        (
            vec![
                "--domain",
                "composition.example.com",
                "--route-api",
                "gateway",
            ],
            "--gateway",
        ),
        (
            vec![
                "--domain",
                "composition.example.com",
                "--delete-grace",
                "soon",
            ],
            "--delete-grace",
        ),
        (
            vec![
                "--domain",
                "composition.example.com",
                "--route-api",
                "carrier-pigeon",
            ],
            "--route-api",
        ),
    ] {
        // An unreachable apiserver: a bad flag must fail before any API call is attempted.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_compose-ingress"))
            .env_clear()
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env("POD_NAME", "runner-0")
            .env("POD_NAMESPACE", "ci")
            .args(&args)
            .output()
            .expect("run compose-ingress");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        // What an operator sees in the container log: the whole of stderr is one line.
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr:?}");
        assert!(
            lines[0].starts_with("compose-ingress: invalid configuration: "),
            "{args:?}: the line says what failed: {stderr:?}"
        );
        assert!(
            lines[0].contains(flag),
            "{args:?}: the line names {flag}: {stderr:?}"
        );
        assert!(
            !stderr.contains("kubeconfig"),
            "{args:?}: no API client was built: {stderr:?}"
        );
    }
}
