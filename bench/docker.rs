//! Docker: compositions made the way Compose makes them (same labels, without running
//! Compose, so thousands start quickly), and the daemon's start events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, RemoveContainerOptions,
};
use futures::StreamExt;
use testbed::bed;

/// One shared user network per pod (a compose project's own network would exhaust dockerd's
/// address pool after 128 projects, and a bridge holds at most 1023 ports).
pub async fn ensure_networks(docker: &Docker, count: usize) {
    for i in 0..count {
        let name = format!("benchnet{i}");
        if docker
            .inspect_network(
                &name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .is_ok()
        {
            continue;
        }
        let body = bollard::models::NetworkCreateRequest {
            name: name.clone(),
            ipam: Some(bollard::models::Ipam {
                config: Some(vec![bollard::models::IpamConfig {
                    subnet: Some(format!("198.19.{}.0/20", 16 * (i + 1))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        docker
            .create_network(body)
            .await
            .expect("create bench network");
    }
}

pub fn container_name(project: &str, service: &str) -> String {
    format!("{project}-{service}-1")
}

/// Creates (does not start) the containers of `project`, one per service, labelled as Compose v2
/// labels them, each running busybox httpd on port 80 published on the pod IP.
pub async fn create_composition(
    docker: &Docker,
    project: &str,
    services: &[&str],
    network: &str,
    pod_ip: &str,
    extra: &[(&str, String)],
) {
    for service in services {
        let mut labels: HashMap<String, String> = [
            ("com.docker.compose.project", project.to_string()),
            ("com.docker.compose.service", service.to_string()),
            ("com.docker.compose.container-number", "1".to_string()),
            ("com.docker.compose.oneoff", "False".to_string()),
            ("com.docker.compose.version", "2.40.3".to_string()),
            ("compose-ingress.enable", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            labels.insert(k.to_string(), v.replace("{service}", service));
        }
        let body = ContainerCreateBody {
            image: Some(bed().get("TEST_IMAGE").to_string()),
            cmd: Some(
                ["httpd", "-f", "-p", "80", "-h", "/www"]
                    .map(String::from)
                    .to_vec(),
            ),
            labels: Some(labels),
            exposed_ports: Some(vec!["80/tcp".to_string()]),
            host_config: Some(HostConfig {
                network_mode: Some(network.to_string()),
                port_bindings: Some(HashMap::from([(
                    "80/tcp".to_string(),
                    Some(vec![PortBinding {
                        host_ip: Some(pod_ip.to_string()),
                        host_port: Some(String::new()),
                    }]),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(container_name(project, service)),
            ..Default::default()
        };
        docker
            .create_container(Some(options), body)
            .await
            .unwrap_or_else(|e| panic!("create container of {project}/{service}: {e}"));
    }
}

pub async fn start_composition(docker: &Docker, project: &str, services: &[&str]) {
    for service in services {
        docker
            .start_container(
                &container_name(project, service),
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .unwrap_or_else(|e| panic!("start {project}/{service}: {e}"));
    }
}

pub async fn remove_composition(docker: &Docker, project: &str, services: &[&str]) {
    for service in services {
        let _ = docker
            .remove_container(
                &container_name(project, service),
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
}

pub async fn remove_all(docker: &Docker) {
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    futures::stream::iter(list.into_iter().filter_map(|c| c.id))
        .for_each_concurrent(8, |id| async move {
            let _ = docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
        })
        .await;
}

/// Docker's own `create` and `start` events of the pod's dockerd: project -> timeNano of its first
/// start (and of its first event, where the sidecar's debounce starts), and the number of starts.
#[derive(Clone, Default)]
pub struct StartEvents {
    pub first: Arc<Mutex<HashMap<String, i128>>>,
    pub first_any: Arc<Mutex<HashMap<String, i128>>>,
    pub count: Arc<Mutex<usize>>,
}

pub fn watch_start_events(docker: Docker) -> (StartEvents, tokio::task::JoinHandle<()>) {
    let ev = StartEvents::default();
    let out = ev.clone();
    let task = tokio::spawn(async move {
        let options = EventsOptions {
            filters: Some(HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                (
                    "event".to_string(),
                    vec!["create".to_string(), "start".to_string()],
                ),
            ])),
            ..Default::default()
        };
        let mut stream = docker.events(Some(options));
        while let Some(Ok(e)) = stream.next().await {
            let project = e
                .actor
                .as_ref()
                .and_then(|a| a.attributes.as_ref())
                .and_then(|a| a.get("com.docker.compose.project").cloned());
            if let (Some(p), Some(t)) = (project, e.time_nano) {
                out.first_any
                    .lock()
                    .expect("lock")
                    .entry(p.clone())
                    .or_insert(t as i128);
                if e.action.as_deref() != Some("start") {
                    continue;
                }
                *out.count.lock().expect("lock") += 1;
                out.first
                    .lock()
                    .expect("lock")
                    .entry(p)
                    .or_insert(t as i128);
            }
        }
    });
    (ev, task)
}

/// The host port Docker published container port 80 of `container` on.
pub async fn published_port(docker: &Docker, container: &str) -> u16 {
    let info = docker
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap_or_else(|e| panic!("inspect {container}: {e}"));
    info.network_settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get("80/tcp").cloned().flatten())
        .and_then(|b| b.first().and_then(|b| b.host_port.clone()))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{container} publishes no port 80"))
}
