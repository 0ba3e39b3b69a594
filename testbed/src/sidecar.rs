//! Runs the compose-ingress binary against a runner pod of the test bed, as the pod's
//! ServiceAccount (the least-privilege Role from deploy/base/rbac.yaml), with its logs in files
//! of the pod's directory. The tests and the benchmarks run it the same way, with their own
//! [`Launch`] settings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::bed::Bed;
use crate::pod::RunnerPod;
use crate::wait::{CONVERGE, eventually};

/// How to run the sidecar: which binary (only the caller's build knows its path: cargo sets
/// `CARGO_BIN_EXE_compose-ingress` for integration tests and benches, not for a library), its
/// log filter, its domain and the flags every run gets before the caller's own (later flags win).
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    pub binary: &'static str,
    pub rust_log: &'static str,
    /// One domain per pod namespace (see [`domain`]) or the bed's base [`DOMAIN`].
    pub domain_per_namespace: bool,
    pub flags: &'static [&'static str],
}

impl Launch {
    /// The integration tests' settings: debug logs (tests read them), a domain per test
    /// namespace, test-friendly timings (grace 2 s, debounce 200 ms).
    pub const fn tests(binary: &'static str) -> Launch {
        Launch {
            binary,
            rust_log: "info,compose_ingress=debug",
            domain_per_namespace: true,
            flags: &["--delete-grace", "2s", "--debounce", "200ms"],
        }
    }

    /// The benchmarks' settings: info logs (debug logging would be part of what is measured),
    /// the bed's wildcard domain, grace 2 s, the default debounce, objects left in place at
    /// exit (a phase deletes its namespace itself), and a host cap far above the default 200
    /// per pod: a phase puts hundreds to thousands of compositions in one pod on purpose.
    pub const fn bench(binary: &'static str) -> Launch {
        Launch {
            binary,
            rust_log: "info",
            domain_per_namespace: false,
            flags: &[
                "--delete-grace",
                "2s",
                "--cleanup-on-exit",
                "never",
                "--max-hosts-per-pod",
                "100000",
            ],
        }
    }
}

/// The port of the pod scope's proxy in a bed pod (the sidecar's own `--proxy-listen` there).
pub const POD_PROXY_PORT: u16 = 9180;

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

/// Stops a process as Kubernetes stops a container: SIGTERM, then SIGKILL if it has not exited
/// after 30 s.
pub fn stop_process(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A free loopback port for the sidecar's HTTP endpoints.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The Role of deploy/'s pod-scope component (the pod route only).
pub const POD_SCOPE_RBAC: &str = "deploy/components/pod-scope/role.yaml";

/// The Role of deploy/'s Traefik component (rate-limit Middlewares).
pub const TRAEFIK_RBAC: &str = "deploy/components/traefik/rbac.yaml";

/// Writes a kubeconfig for the sidecar's ServiceAccount token in the pod's directory.
pub async fn sidecar_kubeconfig(bed: &Bed, pod: &RunnerPod) -> PathBuf {
    sidecar_kubeconfig_via(bed, pod, bed.get("APISERVER")).await
}

/// [`sidecar_kubeconfig`] with another apiserver URL (a proxy in front of the bed's, see
/// [`crate::ApiProxy`]); the bed's CA still verifies it, the certificate naming 127.0.0.1.
pub async fn sidecar_kubeconfig_via(bed: &Bed, pod: &RunnerPod, server: &str) -> PathBuf {
    let admin = bed.admin().await;
    let token = pod.sidecar_token(&admin).await;
    let path = pod.dir.join("sidecar.kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
         users:\n- name: sidecar\n  user:\n    token: {token}\ncontexts:\n- name: sidecar\n  context: {{cluster: bed, user: sidecar, namespace: {}}}\n\
         current-context: sidecar\n",
        server,
        bed.get("CA_CRT"),
        pod.namespace
    );
    std::fs::write(&path, text).expect("write sidecar kubeconfig");
    path
}

impl Sidecar {
    /// Starts the sidecar for `pod` with `launch`'s settings and `extra` flags (later flags win).
    /// In `traefik-middleware` rate-limit mode the sidecar also gets deploy/components/traefik's
    /// Role, as a user of that component grants it.
    pub async fn start(launch: &Launch, bed: &Bed, pod: &RunnerPod, extra: &[&str]) -> Sidecar {
        let kubeconfig = sidecar_kubeconfig(bed, pod).await;
        if launch
            .flags
            .iter()
            .chain(extra)
            .any(|f| f.contains("traefik-middleware"))
        {
            pod.grant(&bed.admin().await, TRAEFIK_RBAC).await;
        }
        Self::start_with_kubeconfig(launch, pod, &kubeconfig, extra, "sidecar")
    }

    /// [`Sidecar::start`] with the apiserver at `server` (e.g. an [`crate::ApiProxy`]'s URL);
    /// without the Traefik Role of `traefik-middleware` mode.
    pub async fn start_via(
        launch: &Launch,
        bed: &Bed,
        pod: &RunnerPod,
        server: &str,
        extra: &[&str],
    ) -> Sidecar {
        let kubeconfig = sidecar_kubeconfig_via(bed, pod, server).await;
        Self::start_with_kubeconfig(launch, pod, &kubeconfig, extra, "sidecar")
    }

    /// Starts one named sidecar (its log is `<name>.log` in the pod's directory) with a given
    /// kubeconfig: several sidecars of one pod, or a bench phase reusing one token.
    pub fn start_with_kubeconfig(
        launch: &Launch,
        pod: &RunnerPod,
        kubeconfig: &Path,
        extra: &[&str],
        name: &str,
    ) -> Sidecar {
        let listen = format!("127.0.0.1:{}", free_port());
        Self::spawn(launch, pod, Some(kubeconfig), extra, name, None, listen)
    }

    /// Starts the sidecar inside the pod's network namespace, as the pod scope runs it: its
    /// proxy listens on the pod's address ([`POD_PROXY_PORT`]) and dials the published ports
    /// there; its HTTP endpoints are at `<pod ip>:9102` ([`Sidecar::listen`]). Without a
    /// kubeconfig it runs with `--no-kubernetes`.
    pub async fn start_in_pod(
        launch: &Launch,
        bed: &Bed,
        pod: &RunnerPod,
        extra: &[&str],
    ) -> Sidecar {
        // The pod scope's Role (deploy/components/pod-scope) before the base's: the base's
        // Role of the same name then exists already and is left as it is.
        pod.grant(&bed.admin().await, POD_SCOPE_RBAC).await;
        let kubeconfig = sidecar_kubeconfig(bed, pod).await;
        Self::start_in_pod_with(launch, pod, Some(&kubeconfig), extra, "sidecar")
    }

    /// [`Sidecar::start_in_pod`] with a given kubeconfig, or none (`--no-kubernetes`).
    pub fn start_in_pod_with(
        launch: &Launch,
        pod: &RunnerPod,
        kubeconfig: Option<&Path>,
        extra: &[&str],
        name: &str,
    ) -> Sidecar {
        let listen = format!("{}:9102", pod.ip);
        Self::spawn(
            launch,
            pod,
            kubeconfig,
            extra,
            name,
            Some(&pod.netns),
            listen,
        )
    }

    fn spawn(
        launch: &Launch,
        pod: &RunnerPod,
        kubeconfig: Option<&Path>,
        extra: &[&str],
        name: &str,
        netns: Option<&str>,
        listen: String,
    ) -> Sidecar {
        let log = pod.dir.join(format!("{name}.log"));
        let stdout = pod.dir.join(format!("{name}.stdout"));
        let domain = if launch.domain_per_namespace {
            domain(&pod.namespace)
        } else {
            DOMAIN.to_string()
        };
        let mut command = match netns {
            // nsenter, not `ip netns exec`, as the bed starts the pods' dockerd (no remount).
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{netns}"))
                    .arg(launch.binary);
                c
            }
            None => Command::new(launch.binary),
        };
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", launch.rust_log)
            .env("POD_NAME", &pod.name)
            .env("POD_NAMESPACE", &pod.namespace)
            .env("DOCKER_HOST", &pod.docker_host);
        match kubeconfig {
            Some(path) => command.env("KUBECONFIG", path),
            None => command.arg("--no-kubernetes").env("POD_IP", &pod.ip),
        };
        if netns.is_some() {
            command.args([
                "--route-scope",
                "pod",
                "--proxy-listen",
                &format!("0.0.0.0:{POD_PROXY_PORT}"),
            ]);
        }
        let listen_flag = if netns.is_some() {
            "0.0.0.0:9102".to_string()
        } else {
            listen.clone()
        };
        let child = command
            .args(["--domain", &domain, "--ingress-class", "traefik"])
            .args(launch.flags)
            .args(["--log-format", "json", "--listen", &listen_flag])
            .args(extra)
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("start compose-ingress ({}): {e}", launch.binary));
        Sidecar {
            child: Some(child),
            log,
            stdout,
            listen,
            pod_name: pod.name.clone(),
        }
    }

    /// The process id (for /proc readings).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("sidecar running").id()
    }

    /// Stops the sidecar as Kubernetes would: see [`stop_process`].
    pub fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            stop_process(&mut child);
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
