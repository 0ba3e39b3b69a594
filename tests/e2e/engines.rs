//! The Docker Engines of the bed (29, the default, and 20.10, the oldest supported): the
//! sidecar negotiates an API version each engine accepts, and says which.

use std::process::Command;

use testbed::{ENABLE, Sidecar, bed, compose_file, unique_namespace, wait_exposed, web};

use crate::SIDECAR;

/// "1.41" -> (1, 41).
fn version(text: &str) -> (u32, u32) {
    let (major, minor) = text
        .trim()
        .split_once('.')
        .unwrap_or_else(|| panic!("not an API version: {text:?}"));
    (
        major.parse().expect("API major"),
        minor.parse().expect("API minor"),
    )
}

/// The engine's (newest, oldest) API versions, as `docker version` reports them.
fn engine_api(docker_host: &str) -> ((u32, u32), (u32, u32)) {
    let out = Command::new("docker")
        .args([
            "version",
            "--format",
            "{{.Server.APIVersion}} {{.Server.MinAPIVersion}}",
        ])
        .env("DOCKER_HOST", docker_host)
        .output()
        .expect("run docker version");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (max, min) = text.trim().split_once(' ').expect("two API versions");
    (version(max), version(min))
}

#[tokio::test]
async fn the_sidecar_speaks_an_api_version_each_engine_accepts() {
    let bed = bed();
    let client = (
        bollard::API_DEFAULT_VERSION.major_version as u32,
        bollard::API_DEFAULT_VERSION.minor_version as u32,
    );
    for engine in ["29", "20.10"] {
        let ns = unique_namespace(&format!("engine-{}", engine.replace('.', "")));
        let pod = bed.runner_pod_on(&ns, "runner-0", engine);
        let (newest, oldest) = engine_api(&pod.docker_host);
        let sidecar = Sidecar::start(&SIDECAR, bed, &pod, &[]).await;
        let line = sidecar.wait_log("connected to Docker; full resync").await;
        let used = version(line["api_version"].as_str().unwrap_or_default());
        // The client's own version, or the engine's newest when the engine is older: never one
        // the engine refuses.
        assert_eq!(
            used,
            client.min(newest),
            "engine {engine} ({}): API {newest:?}..{oldest:?}",
            pod.engine_version
        );
        assert!(
            oldest <= used && used <= newest,
            "engine {engine} accepts {oldest:?}..{newest:?}, the sidecar speaks {used:?}"
        );
        // And everything works on it.
        let admin = bed.admin().await;
        pod.compose(
            "api",
            &compose_file(&[web("web", "api", 80, "80", &[ENABLE])]),
            &["up", "-d"],
        );
        wait_exposed(&admin, &ns, "runner-0", "api").await;
        eprintln!(
            "engine {engine} ({}): API {oldest:?}..{newest:?}, the sidecar speaks {used:?}",
            pod.engine_version
        );
    }
}

/// Issue 14, item 5: a container port published on the pod's IPv4 addresses on one host port
/// and on IPv6 (`::`) on a lower one, which is another container's IPv4 port. The URL must serve
/// the composition's own container, never the neighbour whose IPv4 port the IPv6 binding shares
/// (today's code took the lowest port of any family). On both engines.
async fn the_service_targets_the_ipv4_binding(engine: &str, test: &str) {
    let bed = bed();
    let ns = unique_namespace(test);
    let pod = bed.runner_pod_on(&ns, "runner-0", engine);
    let _sidecar = Sidecar::start(&SIDECAR, bed, &pod, &[]).await;
    let v2 = testbed::ComposeVersion::V2;
    // The neighbour holds pod port 18080 on IPv4 (not exposed: it only has to answer).
    pod.compose_as(
        v2,
        "neighbour",
        &compose_file(&[web("web", "neighbour-page", 80, "0.0.0.0:18080:80", &[])]),
        &["up", "-d"],
    );
    let mine = "  web:\n    image: compose-ingress-test/busybox:1\n    stop_signal: SIGKILL\n    \
                command: [\"sh\", \"-c\", \"echo mine-page > /www/index.html && exec httpd -f -p 80 -h /www\"]\n    \
                ports: [\"0.0.0.0:18081:80\", \"[::]:18080:80\"]\n    labels: {compose-ingress.enable: \"true\"}\n";
    pod.compose_as(
        v2,
        "mine",
        &compose_file(&[mine.to_string()]),
        &["up", "-d"],
    );
    let host = format!("web-80-mine-runner-0.{}", testbed::domain(&ns));
    assert_eq!(
        testbed::through_ingress(&host).await.trim(),
        "mine-page",
        "the URL serves the composition's own container"
    );
    let admin = bed.admin().await;
    let (service, _) = wait_exposed(&admin, &ns, "runner-0", "mine").await;
    assert_eq!(
        testbed::target_ports(&service)
            .into_iter()
            .map(|(_, p)| p)
            .collect::<Vec<_>>(),
        [18081],
        "the Service targets the IPv4 binding"
    );
}

#[tokio::test]
async fn an_ipv6_binding_on_another_port_is_never_the_service_target() {
    the_service_targets_the_ipv4_binding("29", "v6bind-29").await;
}

#[tokio::test]
async fn an_ipv6_binding_on_another_port_is_never_the_service_target_engine_20_10() {
    the_service_targets_the_ipv4_binding("20.10", "v6bind-20").await;
}
