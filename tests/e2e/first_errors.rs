//! Errors a newcomer can act on (issue 29, item 7): the real binary against the bed's real
//! apiserver, misconfigured one way per test as a newcomer gets it wrong (a wrong address in the
//! kubeconfig, a CA that is not the cluster's, a bad token, a ServiceAccount without the Role),
//! and against a Docker socket that is missing or that nobody listens on. Each test reads the
//! log lines a user sees (WARN and ERROR) and checks that every one names what it tried to reach,
//! what failed, and the fix; none is kube's own `failed with error client error (Connect)`, and
//! no line blames the Role for a failure that is not a 403.
//!
//! The sidecar runs as deploy/ runs it (POD_UID and POD_IP from the downward API, here as flags),
//! so its first requests are the reconciler's, the Lease watch's and the Event poster's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use testbed::{
    CONVERGE, RunnerPod, Sidecar, bed, doc_inline, eventually, run_doc_line_ok, sidecar_kubeconfig,
    substitute, unique_namespace,
};

use crate::SIDECAR;

/// A kubeconfig for the sidecar with the given server, CA file and token.
fn kubeconfig(pod: &RunnerPod, name: &str, server: &str, ca: &Path, token: &str) -> PathBuf {
    let path = pod.dir.join(format!("{name}.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster:\n    server: {server}\n    \
         certificate-authority: {}\nusers:\n- name: sidecar\n  user:\n    token: {token}\n\
         contexts:\n- name: sidecar\n  context: {{cluster: bed, user: sidecar, namespace: {}}}\n\
         current-context: sidecar\n",
        ca.display(),
        pod.namespace
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// The sidecar's token (with deploy/'s Role), read back from the kubeconfig the bed writes.
async fn good_token(pod: &RunnerPod) -> String {
    let path = sidecar_kubeconfig(bed(), pod).await;
    let text = std::fs::read_to_string(path).expect("read sidecar kubeconfig");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("token in the kubeconfig")
        .to_string()
}

/// Starts the sidecar as deploy/ does (its pod's uid and address given).
fn start(pod: &RunnerPod, kubeconfig: &Path, extra: &[&str]) -> Sidecar {
    let mut flags = vec!["--pod-uid", &pod.uid, "--pod-ip", &pod.ip];
    flags.extend_from_slice(extra);
    Sidecar::start_with_kubeconfig(&SIDECAR, pod, kubeconfig, &flags, "sidecar")
}

/// A log line as a user reads it: the message and every field (the error is a field).
fn line_text(line: &serde_json::Value) -> String {
    line.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "timestamp" | "level" | "target"))
                .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_string)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The WARN and ERROR lines of the sidecar's log.
fn problems(sidecar: &Sidecar) -> Vec<String> {
    sidecar
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("WARN" | "ERROR")))
        .map(|v| line_text(&v))
        .collect()
}

/// Waits until the log has a WARN/ERROR line with each of `needles` (the lines of every task
/// that meets the failure), then checks every such line: it has all of `every` (the address,
/// what failed, the fix), and none of what misleads.
async fn check_lines(sidecar: &Sidecar, needles: &[&str], every: &[&str]) -> Vec<String> {
    let lines = eventually(
        &format!(
            "WARN/ERROR lines with {needles:?} (log: {})",
            sidecar.log.display()
        ),
        CONVERGE,
        || async {
            let lines = problems(sidecar);
            needles
                .iter()
                .all(|n| lines.iter().any(|l| l.contains(n)))
                .then_some(lines)
        },
    )
    .await;
    for line in &lines {
        for part in every {
            assert!(line.contains(part), "{part:?} missing from: {line}");
        }
        assert!(line.contains("fix: "), "no fix in: {line}");
        assert!(!line.contains("failed with error"), "kube's line: {line}");
    }
    lines
}

#[tokio::test]
async fn an_apiserver_address_where_nothing_listens_is_named_with_the_kubeconfig_to_fix() {
    let bed = bed();
    let ns = unique_namespace("err-addr");
    let pod = bed.runner_pod(&ns, "runner-0");
    let token = good_token(&pod).await;
    // A port nothing listens on: bound, then released.
    let port = testbed::free_port();
    let server = format!("https://127.0.0.1:{port}");
    let ca = PathBuf::from(bed.get("CA_CRT"));
    let path = kubeconfig(&pod, "wrong-address", &server, &ca, &token);
    let sidecar = start(&pod, &path, &[]);
    let lines = check_lines(
        &sidecar,
        &["full resync incomplete", "watching host Leases failed"],
        &[
            &server,
            "connection refused",
            &path.display().to_string(),
            "`server:`",
        ],
    )
    .await;
    assert!(
        lines.iter().all(|l| !l.contains("Role")),
        "a refused connection blamed on the Role: {lines:#?}"
    );
    sidecar.stop();
}

/// Writes a self-signed CA of its own (not the bed's) into the pod's directory.
fn another_ca(pod: &RunnerPod) -> PathBuf {
    let (key, crt) = (pod.dir.join("other-ca.key"), pod.dir.join("other-ca.crt"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=not-the-cluster-ca", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crt
}

#[tokio::test]
async fn a_ca_that_is_not_the_clusters_is_named_with_the_setting_to_fix() {
    let bed = bed();
    let ns = unique_namespace("err-ca");
    let pod = bed.runner_pod(&ns, "runner-0");
    let token = good_token(&pod).await;
    let server = bed.get("APISERVER").to_string();
    let path = kubeconfig(&pod, "other-ca", &server, &another_ca(&pod), &token);
    let sidecar = start(&pod, &path, &[]);
    let lines = check_lines(
        &sidecar,
        &["full resync incomplete", "watching host Leases failed"],
        &[
            server.trim_end_matches('/'),
            "certificate is not signed by the CA this sidecar trusts",
            "`certificate-authority`",
        ],
    )
    .await;
    assert!(lines.iter().all(|l| !l.contains("Role")), "{lines:#?}");
    sidecar.stop();
}

#[tokio::test]
async fn a_token_the_apiserver_refuses_is_a_401_with_the_credentials_to_fix() {
    let bed = bed();
    let ns = unique_namespace("err-401");
    let pod = bed.runner_pod(&ns, "runner-0");
    let server = bed.get("APISERVER").to_string();
    let ca = PathBuf::from(bed.get("CA_CRT"));
    let path = kubeconfig(
        &pod,
        "bad-token",
        &server,
        &ca,
        "not-a-token-of-this-cluster",
    );
    let sidecar = start(&pod, &path, &[]);
    let lines = check_lines(
        &sidecar,
        &["full resync incomplete", "watching host Leases failed"],
        &[
            server.trim_end_matches('/'),
            "401 Unauthorized",
            "a valid token",
        ],
    )
    .await;
    assert!(lines.iter().all(|l| !l.contains("Role")), "{lines:#?}");
    sidecar.stop();

    // docs/troubleshooting.md's fix for this line, as written but for the namespace: a token of
    // this cluster's compose-ingress ServiceAccount (deploy/'s RBAC) in the same kubeconfig.
    pod.grant(&bed.admin().await, "deploy/base/rbac.yaml").await;
    let create = substitute(
        "docs/troubleshooting.md",
        &doc_inline(
            "docs/troubleshooting.md",
            "kubectl create token compose-ingress",
        ),
        &[("kubectl ", &format!("kubectl -n {ns} "))],
    );
    let token = run_doc_line_ok(bed, &create, &pod.dir, &[]);
    let path = kubeconfig(&pod, "created-token", &server, &ca, token.trim());
    let sidecar = start(&pod, &path, &[]);
    sidecar.wait_resyncs(1).await;
    let refused = problems(&sidecar)
        .into_iter()
        .filter(|l| l.contains("401"))
        .collect::<Vec<_>>();
    assert!(refused.is_empty(), "`{create}`'s token: {refused:#?}");
    sidecar.stop();
}

/// A token of a ServiceAccount that no Role is bound to.
async fn token_without_role(ns: &str) -> String {
    let admin = bed().admin().await;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin, ns);
    let account: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "no-role"},
    }))
    .expect("service account");
    accounts
        .create(&PostParams::default(), &account)
        .await
        .expect("create the ServiceAccount");
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    accounts
        .create_token_request("no-role", &PostParams::default(), &request)
        .await
        .expect("token request")
        .status
        .and_then(|s| s.token)
        .expect("token")
}

#[tokio::test]
async fn a_serviceaccount_without_the_role_is_a_403_naming_the_verb_and_the_role() {
    let bed = bed();
    let ns = unique_namespace("err-403");
    let pod = bed.runner_pod(&ns, "runner-0");
    let token = token_without_role(&ns).await;
    let server = bed.get("APISERVER").to_string();
    let ca = PathBuf::from(bed.get("CA_CRT"));
    let path = kubeconfig(&pod, "no-role", &server, &ca, &token);
    let sidecar = start(&pod, &path, &[]);
    let lines = check_lines(
        &sidecar,
        &["full resync incomplete", "watching host Leases failed"],
        &[
            "403 Forbidden",
            "system:serviceaccount:",
            "deploy/base/rbac.yaml",
        ],
    )
    .await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cannot list resource \"leases\"")),
        "the Lease watch's line names the verb and the resource: {lines:#?}"
    );
    sidecar.stop();
}

#[tokio::test]
async fn a_docker_socket_that_does_not_exist_is_named_with_the_fix() {
    let bed = bed();
    let ns = unique_namespace("err-nosock");
    let pod = bed.runner_pod(&ns, "runner-0");
    let kubeconfig = sidecar_kubeconfig(bed, &pod).await;
    let socket = pod.dir.join("no-such-docker.sock");
    let host = format!("unix://{}", socket.display());
    let sidecar = start(&pod, &kubeconfig, &["--docker-host", &host]);
    check_lines(
        &sidecar,
        &["Docker is not reachable"],
        &[
            &format!("{} does not exist", socket.display()),
            "DOCKER_HOST",
        ],
    )
    .await;
    sidecar.stop();
}

#[tokio::test]
async fn a_docker_socket_nobody_listens_on_is_named_as_refused() {
    let bed = bed();
    let ns = unique_namespace("err-refused");
    let pod = bed.runner_pod(&ns, "runner-0");
    let kubeconfig = sidecar_kubeconfig(bed, &pod).await;
    // A socket file left behind by a daemon that is gone: bound, then its listener dropped.
    let socket = pod.dir.join("stale-docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind a unix socket"));
    let host = format!("unix://{}", socket.display());
    let sidecar = start(&pod, &kubeconfig, &["--docker-host", &host]);
    check_lines(
        &sidecar,
        &["Docker is not reachable"],
        &[
            &format!("connection refused: {} exists", socket.display()),
            "dind",
        ],
    )
    .await;
    // It keeps retrying (a dind that comes up later is found), not exiting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sidecar = sidecar;
    assert!(sidecar.still_running(), "log: {}", sidecar.log.display());
    sidecar.stop();
}
