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
