//! The Kubernetes objects the sidecar writes for one composition, found by its labels, and waits
//! for them to appear or go.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};

use crate::wait::{CONVERGE, eventually};

/// The Services and Ingresses of one composition, selected by the sidecar's labels.
pub fn project_selector(pod: &str, project: &str) -> String {
    format!(
        "app.kubernetes.io/managed-by=compose-ingress,compose-ingress/pod={pod},compose-ingress/project={project}"
    )
}

pub async fn services_of(
    client: &kube::Client,
    ns: &str,
    pod: &str,
    project: &str,
) -> Vec<Service> {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&project_selector(pod, project)))
        .await
        .expect("list services")
        .items
}

pub async fn ingresses_of(
    client: &kube::Client,
    ns: &str,
    pod: &str,
    project: &str,
) -> Vec<Ingress> {
    let api: Api<Ingress> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&project_selector(pod, project)))
        .await
        .expect("list ingresses")
        .items
}

/// Waits until the composition has exactly one Service and one Ingress, and returns them.
pub async fn wait_exposed(
    client: &kube::Client,
    ns: &str,
    pod: &str,
    project: &str,
) -> (Service, Ingress) {
    eventually(
        &format!("Service + Ingress of {ns}/{project}"),
        CONVERGE,
        || async {
            let s = services_of(client, ns, pod, project).await;
            let i = ingresses_of(client, ns, pod, project).await;
            (s.len() == 1 && i.len() == 1).then(|| (s[0].clone(), i[0].clone()))
        },
    )
    .await
}

pub async fn wait_gone(client: &kube::Client, ns: &str, pod: &str, project: &str) {
    eventually(
        &format!("objects of {ns}/{project} deleted"),
        CONVERGE,
        || async {
            let s = services_of(client, ns, pod, project).await;
            let i = ingresses_of(client, ns, pod, project).await;
            (s.is_empty() && i.is_empty()).then_some(())
        },
    )
    .await
}

/// The hosts of an Ingress's rules.
pub fn ingress_hosts(ingress: &Ingress) -> Vec<String> {
    ingress
        .spec
        .as_ref()
        .and_then(|s| s.rules.as_ref())
        .map(|rules| rules.iter().filter_map(|r| r.host.clone()).collect())
        .unwrap_or_default()
}

/// (port name, targetPort) of a Service.
pub fn target_ports(service: &Service) -> Vec<(String, i32)> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    let t = match &p.target_port {
                        Some(IntOrString::Int(i)) => *i,
                        other => {
                            panic!("targetPort must be the published host port, got {other:?}")
                        }
                    };
                    (p.name.clone().unwrap_or_default(), t)
                })
                .collect()
        })
        .unwrap_or_default()
}
