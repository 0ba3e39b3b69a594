//! Compose files of the phases that run real `docker-compose up` (Compose v2), and running it.

use std::path::{Path, PathBuf};
use std::process::Command;

use testbed::{RunnerPod, bed};

/// The host label a phase's composition chooses (`compose-ingress.host`): `<project>-<pod>`,
/// with an `n` before every part that is only digits (`wait-3-bench-wait` becomes
/// `wait-n3-bench-wait`). The sidecar refuses a chosen host that its host template could render
/// for some composition or pod (`host-looks-like-template`); under the default template the
/// plain `<project>-<pod>` is one (service `wait`, port 3, composition `bench`, pod `wait`).
pub fn chosen_host_label(project: &str, pod: &RunnerPod) -> String {
    let label = format!("{project}-{}", pod.name)
        .split('-')
        .map(|part| {
            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                format!("n{part}")
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("-");
    let shape = compose_ingress::naming::HostShape::of_template("{service}-{port}-{project}-{pod}")
        .expect("the default host template parses");
    assert!(
        !shape.matches(&label),
        "{label} looks like a template host: the sidecar would refuse it"
    );
    label
}

pub fn compose_file(
    pod: &RunnerPod,
    project: &str,
    host_label: &str,
    traefik_host: Option<&str>,
) -> PathBuf {
    let mut labels = Vec::new();
    if let Some(h) = traefik_host {
        labels = vec![
            ("traefik.enable".to_string(), "true".to_string()),
            (
                format!("traefik.http.routers.{project}.rule"),
                format!("Host(`{h}`)"),
            ),
            (
                format!("traefik.http.services.{project}.loadbalancer.server.port"),
                "80".to_string(),
            ),
        ];
    }
    compose_file_labelled(pod, project, host_label, &labels)
}

/// A one-service composition (busybox httpd on port 80, published on the pod IP) choosing
/// `host_label`, with further labels on the service (e.g. `compose-ingress.class`).
pub fn compose_file_labelled(
    pod: &RunnerPod,
    project: &str,
    host_label: &str,
    extra: &[(String, String)],
) -> PathBuf {
    let mut labels = format!(
        "      compose-ingress.enable: \"true\"\n      compose-ingress.host: \"{host_label}\"\n"
    );
    for (k, v) in extra {
        labels.push_str(&format!(
            "      {k}: {}\n",
            serde_json::Value::String(v.clone())
        ));
    }
    let yaml = format!(
        "services:\n  web:\n    image: {}\n    command: [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n    ports: [\"{}::80\"]\n    labels:\n{labels}networks:\n  default:\n    name: benchnet0\n    external: true\n",
        bed().get("TEST_IMAGE"),
        pod.ip
    );
    let path = pod.dir.join(format!("{project}.compose.yml"));
    std::fs::write(&path, yaml).expect("write compose file");
    path
}

/// A one-service composition of the bed's protoecho (Go's net/http: keep-alive, WebSocket echo
/// on /ws) on port 80, published on the pod IP, choosing `host_label`: the backend of the proxy
/// phases, where busybox httpd (one request per connection) would measure itself.
pub fn compose_file_echo(pod: &RunnerPod, project: &str, host_label: &str) -> PathBuf {
    let yaml = format!(
        "services:\n  web:\n    image: {}\n    stop_signal: SIGKILL\n    command: [\"protoecho\", \"serve\", \"--http-port\", \"80\", \"--page\", \"{project}\"]\n    ports: [\"{}::80\"]\n    labels:\n      compose-ingress.enable: \"true\"\n      compose-ingress.host: \"{host_label}\"\nnetworks:\n  default:\n    name: benchnet0\n    external: true\n",
        bed().get("TEST_IMAGE"),
        pod.ip
    );
    let path = pod.dir.join(format!("{project}.compose.yml"));
    std::fs::write(&path, yaml).expect("write compose file");
    path
}

/// `docker-compose-v2 -p P -f F up -d`; returns when it returns.
pub fn compose_up(pod: &RunnerPod, project: &str, file: &Path) {
    let out = Command::new(bed().get("COMPOSE_V2"))
        .env("DOCKER_HOST", &pod.docker_host)
        .args(["-p", project, "-f"])
        .arg(file)
        .args(["up", "-d", "--quiet-pull"])
        .output()
        .expect("run docker-compose-v2");
    assert!(
        out.status.success(),
        "compose up {project} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
