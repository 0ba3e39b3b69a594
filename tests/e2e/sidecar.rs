//! Runs the real compose-ingress binary against a runner pod of the test bed, as the pod's
//! ServiceAccount (the least-privilege Role from deploy/base/rbac.yaml), with its logs in a file.

#![allow(dead_code)] // each test module uses a different part of this helper

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};

use crate::support::{Bed, CONVERGE, RunnerPod, eventually};

/// The domain a test's sidecar serves: one per test namespace. Traefik serves every namespace,
/// so equal hosts in two namespaces (the v1 and v2 run of one scenario, or a namespace a failed
/// run kept for inspection) would otherwise shadow each other.
pub fn domain(namespace: &str) -> String {
    format!("{namespace}.{DOMAIN}")
}

/// The base domain of the bed's wildcard (the bench serves it directly).
pub const DOMAIN: &str = "composition.example.com";

pub struct Sidecar {
    child: Option<Child>,
    pub log: PathBuf,
    pub stdout: PathBuf,
    pub listen: String,
    pub pod_name: String,
}

/// A free loopback port for the sidecar's HTTP endpoints.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Writes a kubeconfig for the sidecar's ServiceAccount token in the pod's directory.
pub async fn sidecar_kubeconfig(bed: &Bed, pod: &RunnerPod) -> PathBuf {
    let admin = bed.admin().await;
    let token = pod.sidecar_token(&admin).await;
    let path = pod.dir.join("sidecar.kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
         users:\n- name: sidecar\n  user:\n    token: {token}\ncontexts:\n- name: sidecar\n  context: {{cluster: bed, user: sidecar, namespace: {}}}\n\
         current-context: sidecar\n",
        bed.get("APISERVER"),
        bed.get("CA_CRT"),
        pod.namespace
    );
    std::fs::write(&path, text).expect("write sidecar kubeconfig");
    path
}

impl Sidecar {
    /// Starts the sidecar for `pod` with test-friendly timings (grace 2 s, debounce 200 ms)
    /// and `extra` flags (later flags win).
    pub async fn start(bed: &Bed, pod: &RunnerPod, extra: &[&str]) -> Sidecar {
        let kubeconfig = sidecar_kubeconfig(bed, pod).await;
        Self::start_with_kubeconfig(pod, &kubeconfig, extra, "sidecar")
    }

    pub fn start_with_kubeconfig(
        pod: &RunnerPod,
        kubeconfig: &std::path::Path,
        extra: &[&str],
        name: &str,
    ) -> Sidecar {
        let listen = format!("127.0.0.1:{}", free_port());
        let log = pod.dir.join(format!("{name}.log"));
        let stdout = pod.dir.join(format!("{name}.stdout"));
        let child = Command::new(env!("CARGO_BIN_EXE_compose-ingress"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,compose_ingress=debug")
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", &pod.name)
            .env("POD_NAMESPACE", &pod.namespace)
            .env("DOCKER_HOST", &pod.docker_host)
            .args([
                "--domain",
                &domain(&pod.namespace),
                "--ingress-class",
                "traefik",
                "--delete-grace",
                "2s",
                "--debounce",
                "200ms",
            ])
            .args(["--log-format", "json", "--listen", &listen])
            .args(extra)
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start compose-ingress");
        Sidecar {
            child: Some(child),
            log,
            stdout,
            listen,
            pod_name: pod.name.clone(),
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines (JSON objects) whose `message` contains `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(needle)))
            .collect()
    }

    pub async fn wait_log(&self, needle: &str) -> serde_json::Value {
        eventually(
            &format!("sidecar log line {needle:?} (log: {})", self.log.display()),
            CONVERGE,
            || async { self.log_lines(needle).into_iter().next() },
        )
        .await
    }

    /// Whether the sidecar has held `project` back, waiting for created services to start (its
    /// debug line, in the composition's span).
    pub fn waited_for(&self, project: &str) -> bool {
        self.log_lines("waiting for them")
            .iter()
            .any(|l| l["span"]["composition"] == project)
    }

    /// Waits until the sidecar says it holds `project` back for services not started yet.
    pub async fn wait_waiting_for(&self, project: &str) {
        eventually(
            &format!(
                "the sidecar waits for the rest of {project} to start (log: {})",
                self.log.display()
            ),
            CONVERGE,
            || async { self.waited_for(project).then_some(()) },
        )
        .await
    }

    /// Waits until `count` full resyncs have been logged (start-up is the first).
    pub async fn wait_resyncs(&self, count: usize) {
        eventually(
            &format!("{count} full resyncs (log: {})", self.log.display()),
            CONVERGE,
            || async { (self.log_lines("full resync done").len() >= count).then_some(()) },
        )
        .await
    }

    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
            assert!(status.is_ok_and(|s| s.success()), "kill -{signal} sidecar");
        }
    }

    /// Waits (generously) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("sidecar running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait sidecar") {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "sidecar did not exit within {deadline:?}; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the process is still alive (it has not exited, for whatever reason).
    pub fn still_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn kill9(&mut self) {
        self.signal("KILL");
        self.wait_exit(CONVERGE);
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "sidecar log of pod {}: {}",
                self.pod_name,
                self.log.display()
            );
        }
    }
}

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
