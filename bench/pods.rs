//! A runner pod per phase, and its clean-up (logs kept in target/bench-logs/).

use std::path::PathBuf;

use bollard::Docker;
use testbed::{RunnerPod, bed};
use tokio::task::JoinHandle;

use crate::clock::now_ns;
use crate::cluster::{Seen, watch_kind};
use crate::docker::{StartEvents, remove_all, watch_start_events};

/// What a latency phase watches while it measures: first sightings of its namespace's Services
/// and Ingresses through an apiserver watch, and its pod's Docker `create`/`start` events.
pub struct Watching {
    seen: Seen,
    pub events: StartEvents,
    tasks: Vec<JoinHandle<()>>,
}

impl Watching {
    pub fn start(admin: &kube::Client, pod: &RunnerPod, docker: &Docker) -> Watching {
        let seen = Seen::default();
        let mut tasks: Vec<JoinHandle<()>> = ["Service", "Ingress"]
            .into_iter()
            .map(|k| watch_kind(admin.clone(), pod.namespace.clone(), k, seen.clone()))
            .collect();
        let (events, ev_task) = watch_start_events(docker.clone());
        tasks.push(ev_task);
        Watching {
            seen,
            events,
            tasks,
        }
    }

    /// Both objects of `project` seen: the later sighting (local clock, ns).
    pub fn objects_seen(&self, project: &str) -> Option<i128> {
        Some(
            self.seen
                .get("Service", project)?
                .max(self.seen.get("Ingress", project)?),
        )
    }

    /// Stops watching, removes every container of the pod, and finishes the pod (logs kept).
    pub async fn finish(self, docker: &Docker, pod: &RunnerPod) {
        self.tasks.iter().for_each(|t| t.abort());
        remove_all(docker).await;
        finish_pod(pod);
    }
}

/// A runner pod for a phase, with its sidecar kubeconfig (the ServiceAccount's token).
pub async fn phase_pod(name: &str) -> (RunnerPod, PathBuf) {
    let b = bed();
    let ns = format!("bench-{name}-{:04x}", (now_ns() as u64 >> 10) & 0xffff);
    let pod = b.runner_pod(&ns, &format!("bench-{name}"));
    let kubeconfig = testbed::sidecar_kubeconfig(b, &pod).await;
    (pod, kubeconfig)
}

/// Deletes a phase's namespace. Its runner Pod is bound to a node without a kubelet, so it would
/// stay Terminating (and the namespace with it): force it, as a kubelet confirming the kill would.
pub fn delete_namespace(ns: &str) {
    let _ = bed().kubectl(&[
        "-n",
        ns,
        "delete",
        "pod",
        "--all",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    let _ = bed().kubectl(&["delete", "namespace", ns, "--wait=false"]);
}

/// Copies a phase pod's logs (sidecars, Traefik, dockerd) to target/bench-logs/<namespace>/ and
/// deletes its namespace; the pod itself (netns, dockerd) goes when the RunnerPod is dropped.
pub fn finish_pod(pod: &RunnerPod) {
    let dest = testbed::repo_root()
        .join("target/bench-logs")
        .join(&pod.namespace);
    let _ = std::fs::create_dir_all(&dest);
    if let Ok(entries) = std::fs::read_dir(&pod.dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().ends_with(".log") {
                let _ = std::fs::copy(e.path(), dest.join(name));
            }
        }
    }
    delete_namespace(&pod.namespace);
}
