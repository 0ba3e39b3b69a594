//! The two route scopes as the phases drive them: how a scope's sidecar is started for a runner
//! pod (with the Role deploy/ grants that scope) and which host a composition's chosen label
//! gives in it.
//!
//! - composition scope (the default): the sidecar writes a Service, EndpointSlices and a route
//!   per composition; it runs beside the pod (the bed's pods need no netns for it) and a chosen
//!   label `X` is `X.<domain>`.
//! - pod scope (`--route-scope pod`): one wildcard route per runner pod to the sidecar's proxy,
//!   which routes each composition inside the pod; the sidecar runs in the pod's network
//!   namespace (as a container of the pod does) and a chosen label `X` is `X.<pod>.<domain>`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testbed::{DOMAIN, Launch, POD_SCOPE_RBAC, RunnerPod, Sidecar, bed};

use crate::SIDECAR;
use crate::clock::now_ns;
use crate::compose::{chosen_host_label, compose_file_labelled, compose_up};
use crate::http::{http_get, until_200};

/// The body of the proxy's 404 for an unknown host under the pod (src/proxy/answer.rs).
const PROXY_NOT_FOUND: &str = "not found";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Composition,
    Pod,
}

impl Scope {
    pub const ALL: [Scope; 2] = [Scope::Composition, Scope::Pod];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Composition => "composition",
            Scope::Pod => "pod",
        }
    }

    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }

    /// A runner pod for this scope's sidecar, in a namespace of its own (one Role per
    /// namespace: the pod scope's is narrower than the base's), with its sidecar kubeconfig.
    pub async fn pod(self, phase: &str) -> (RunnerPod, PathBuf) {
        let b = bed();
        let tag = match self {
            Scope::Composition => phase.to_string(),
            Scope::Pod => format!("{phase}-pod"),
        };
        let ns = format!("bench-{tag}-{:04x}", (now_ns() as u64 >> 10) & 0xffff);
        let pod = b.runner_pod(&ns, &format!("bench-{tag}"));
        if self == Scope::Pod {
            // Before the base Role (sidecar_kubeconfig grants it): the pod scope's Role of the
            // same name is then the one in place, as deploy/overlays/pod-scope applies it.
            pod.grant(&b.admin().await, POD_SCOPE_RBAC).await;
        }
        let kubeconfig = testbed::sidecar_kubeconfig(b, &pod).await;
        (pod, kubeconfig)
    }

    /// Starts this scope's sidecar for `pod` with the bench's settings and `flags`.
    pub fn start(self, pod: &RunnerPod, kubeconfig: &Path, flags: &[&str], name: &str) -> Sidecar {
        self.start_as(&SIDECAR, pod, kubeconfig, flags, name)
    }

    /// [`Scope::start`] with other settings (e.g. [`crate::late::traced`]'s log filter).
    pub fn start_as(
        self,
        launch: &Launch,
        pod: &RunnerPod,
        kubeconfig: &Path,
        flags: &[&str],
        name: &str,
    ) -> Sidecar {
        match self {
            Scope::Composition => {
                Sidecar::start_with_kubeconfig(launch, pod, kubeconfig, flags, name)
            }
            Scope::Pod => Sidecar::start_in_pod_with(launch, pod, Some(kubeconfig), flags, name),
        }
    }

    /// Pod scope: waits (bounded) until the controller at `web` sends the pod's hosts to the
    /// sidecar's proxy, seen as the proxy's own 404 for a host under the pod that no composition
    /// has (a controller without the route answers its own 404, or nothing); how long it took.
    /// Composition scope: at once (there is no route before a composition's).
    pub async fn pod_route_routed(
        self,
        web: &str,
        pod: &RunnerPod,
        limit: Duration,
    ) -> Option<f64> {
        if self == Scope::Composition {
            return Some(0.0);
        }
        let host = self.host("bench-no-such-composition", pod);
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some((404, body)) = http_get(web, &host, "/", Duration::from_secs(2)).await
                && body.trim() == PROXY_NOT_FOUND
            {
                return Some(t.elapsed().as_secs_f64() * 1e3);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// The full host of a composition that chose `label` (`compose-ingress.host`).
    pub fn host(self, label: &str, pod: &RunnerPod) -> String {
        match self {
            Scope::Composition => format!("{label}.{DOMAIN}"),
            Scope::Pod => format!("{label}.{}.{DOMAIN}", pod.name),
        }
    }
}

/// Bound of one sample (up -d → 200).
pub const SAMPLE_LIMIT: Duration = Duration::from_secs(120);

/// One composition choosing a host of its own with `labels`, up; the time from `up -d`
/// returning to the first 200 through `web` (None: not within [`SAMPLE_LIMIT`]). Composition
/// scope (the isolation part's samples).
pub async fn sample(
    pod: &RunnerPod,
    project: &str,
    labels: &[(String, String)],
    web: &str,
) -> Option<f64> {
    sample_in(Scope::Composition, pod, project, labels, web).await
}

/// [`sample`] with a sidecar of `scope` routing `pod`.
pub async fn sample_in(
    scope: Scope,
    pod: &RunnerPod,
    project: &str,
    labels: &[(String, String)],
    web: &str,
) -> Option<f64> {
    let host_label = chosen_host_label(project, pod);
    let file = compose_file_labelled(pod, project, &host_label, labels);
    compose_up(pod, project, &file);
    let t0 = Instant::now();
    let got = until_200(web, &scope.host(&host_label, pod), t0, SAMPLE_LIMIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    got
}
