//! Test support: attach to (or start) the test bed once per run, hand tests a runner pod with its
//! own namespace, dockerd and compose projects, and clients for Docker and Kubernetes.
//! A bed that cannot start fails the test with the component and the tail of its log.

#![allow(dead_code)] // each test module uses a different part of this support module

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The running test bed, as described by `.testbed/env`.
pub struct Bed {
    pub env: BTreeMap<String, String>,
    pub dir: PathBuf,
}

static BED: OnceLock<Bed> = OnceLock::new();

/// Starts the bed if it is not up (up.sh is idempotent and locked), then reads its env file.
pub fn bed() -> &'static Bed {
    BED.get_or_init(|| {
        let dir = std::env::var("TESTBED_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join(".testbed"));
        let up = Command::new(repo_root().join("tests/testbed/up.sh"))
            .env("TESTBED_DIR", &dir)
            .output()
            .expect("cannot run tests/testbed/up.sh");
        if !up.status.success() {
            panic!(
                "the test bed did not start (tests/testbed/up.sh failed):\n{}",
                String::from_utf8_lossy(&up.stderr)
            );
        }
        let text = std::fs::read_to_string(dir.join("env"))
            .unwrap_or_else(|e| panic!("test bed env file {}: {e}", dir.join("env").display()));
        Bed {
            env: parse_env(&text),
            dir,
        }
    })
}

pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

impl Bed {
    pub fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("test bed env has no {key}"))
    }

    pub fn kubeconfig(&self) -> &str {
        self.get("KUBECONFIG")
    }

    /// An admin client (system:masters) for test set-up and assertions.
    pub async fn admin(&self) -> kube::Client {
        let kubeconfig =
            Kubeconfig::read_from(self.kubeconfig()).expect("read test bed kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("test bed kubeconfig");
        kube::Client::try_from(config).expect("kube client")
    }

    /// A client that authenticates with a bearer token (e.g. the sidecar's ServiceAccount).
    pub async fn client_with_token(&self, token: &str) -> kube::Client {
        let mut config = kube::Config::new(self.get("APISERVER").parse().expect("apiserver url"));
        let ca_pem = std::fs::read(self.get("CA_CRT")).expect("read test bed CA");
        config.root_cert = Some(pem_certs(&ca_pem));
        config.auth_info.token = Some(token.to_string().into());
        kube::Client::try_from(config).expect("kube client with token")
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(Path::new(self.get("BIN")).join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Creates a runner pod (netns + dockerd + Pod object) in `namespace`; see pod.sh.
    pub fn runner_pod(&self, namespace: &str, pod: &str) -> RunnerPod {
        let out = Command::new(repo_root().join("tests/testbed/pod.sh"))
            .args(["create", namespace, pod])
            .env("TESTBED_DIR", &self.dir)
            .output()
            .expect("run tests/testbed/pod.sh");
        if !out.status.success() {
            panic!(
                "runner pod {namespace}/{pod} did not start:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let env = parse_env(&String::from_utf8_lossy(&out.stdout));
        RunnerPod {
            namespace: env["POD_NAMESPACE"].clone(),
            name: env["POD_NAME"].clone(),
            uid: env["POD_UID"].clone(),
            ip: env["POD_IP"].clone(),
            docker_host: env["DOCKER_HOST"].clone(),
            dir: PathBuf::from(&env["POD_DIR"]),
        }
    }
}

/// PEM bundle -> DER certificates (kube::Config wants DER).
fn pem_certs(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let mut certs = Vec::new();
    let mut current = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            inside = true;
            current.clear();
        } else if line.starts_with("-----END CERTIFICATE-----") {
            inside = false;
            certs.push(base64_decode(&current));
        } else if inside {
            current.push_str(line.trim());
        }
    }
    certs
}

fn base64_decode(input: &str) -> Vec<u8> {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in input.bytes().filter(|c| *c != b'=') {
        let v = TABLE
            .iter()
            .position(|t| *t == c)
            .expect("base64 character") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Which Docker Compose drives a project. Users run both: v1 is Debian's Python
/// `docker-compose` 1.29 (containers `project_service_1`), v2 the Go rewrite the bed builds from
/// its module as the standalone binary `docker-compose-v2` (containers `project-service-1`, more
/// labels, recreate through a temporary name). `Display` gives "v1"/"v2", for test and namespace
/// names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ComposeVersion {
    V1,
    V2,
}

impl ComposeVersion {
    pub const ALL: [ComposeVersion; 2] = [ComposeVersion::V1, ComposeVersion::V2];

    /// The program that runs this version, as the bed's env names it (`COMPOSE_V1`/`COMPOSE_V2`).
    pub fn program(self) -> PathBuf {
        let key = match self {
            ComposeVersion::V1 => "COMPOSE_V1",
            ComposeVersion::V2 => "COMPOSE_V2",
        };
        match bed().env.get(key) {
            Some(path) => PathBuf::from(path),
            None => panic!(
                "the test bed env has no {key}: the bed predates Compose v2; \
                 run tests/testbed/up.sh (it adds it to a running bed)"
            ),
        }
    }

    /// The name this version gives container `number` of `service` in `project`.
    pub fn container_name(self, project: &str, service: &str, number: u32) -> String {
        match self {
            ComposeVersion::V1 => format!("{project}_{service}_{number}"),
            ComposeVersion::V2 => format!("{project}-{service}-{number}"),
        }
    }
}

impl std::fmt::Display for ComposeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ComposeVersion::V1 => "v1",
            ComposeVersion::V2 => "v2",
        })
    }
}

/// One runner pod of the bed. Removed when dropped, unless the test is failing: then its
/// dockerd, containers and logs stay for inspection (`tests/testbed/down.sh` clears them).
pub struct RunnerPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: String,
    pub docker_host: String,
    pub dir: PathBuf,
}

impl RunnerPod {
    pub fn docker(&self) -> bollard::Docker {
        let socket = self.docker_host.trim_start_matches("unix://");
        bollard::Docker::connect_with_unix(socket, 60, bollard::API_DEFAULT_VERSION)
            .expect("connect to the runner pod's dockerd")
    }

    /// Runs docker-compose (v1) for `project` with the compose file `yaml`; panics with its
    /// output when it fails. Shorthand for `compose_as(ComposeVersion::V1, ..)`.
    pub fn compose(&self, project: &str, yaml: &str, args: &[&str]) -> Output {
        self.compose_as(ComposeVersion::V1, project, yaml, args)
    }

    /// Runs Compose `version` for `project` with the compose file `yaml` (written to the pod's
    /// directory, so a later call without a changed file can reuse it); panics with its output
    /// when it fails.
    pub fn compose_as(
        &self,
        version: ComposeVersion,
        project: &str,
        yaml: &str,
        args: &[&str],
    ) -> Output {
        let file = self.compose_file(project);
        std::fs::write(&file, yaml).expect("write compose file");
        let program = version.program();
        let out = Command::new(&program)
            .env("DOCKER_HOST", &self.docker_host)
            .arg("-p")
            .arg(project)
            .arg("-f")
            .arg(&file)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {} ({version}): {e}", program.display()));
        assert!(
            out.status.success(),
            "{} ({version}) -p {project} {args:?} failed:\n{}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn compose_file(&self, project: &str) -> PathBuf {
        self.dir.join(format!("{project}.compose.yml"))
    }

    /// Deletes the Pod object at once: without a kubelet, a graceful delete would leave it
    /// Terminating forever; a forced delete is what the kubelet's final confirmation amounts to.
    pub async fn force_delete(&self, admin: &kube::Client) {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(admin.clone(), &self.namespace);
        let params = kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        pods.delete(&self.name, &params)
            .await
            .expect("force-delete the runner Pod object");
    }

    pub fn docker_cli(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", &self.docker_host)
            .args(args)
            .output()
            .expect("run docker")
    }

    /// The host port a container port of a compose service is published on (in the pod), as
    /// docker-compose (v1) reports it. Shorthand for `published_port_as(ComposeVersion::V1, ..)`.
    pub fn published_port(&self, project: &str, service: &str, container_port: u16) -> u16 {
        self.published_port_as(ComposeVersion::V1, project, service, container_port)
    }

    /// The host port a container port of a compose service is published on (in the pod), as
    /// `compose port` of Compose `version` reports it (for the project's last compose file).
    pub fn published_port_as(
        &self,
        version: ComposeVersion,
        project: &str,
        service: &str,
        container_port: u16,
    ) -> u16 {
        let out = Command::new(version.program())
            .env("DOCKER_HOST", &self.docker_host)
            .args(["-p", project, "-f"])
            .arg(self.compose_file(project))
            .args(["port", service, &container_port.to_string()])
            .output()
            .unwrap_or_else(|e| panic!("run compose port ({version}): {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no published port for {project}/{service}:{container_port} ({version}): \
                     {text:?} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// Sets up the sidecar's ServiceAccount, Role and RoleBinding from `deploy/base/rbac.yaml`
    /// in this pod's namespace and returns a token for that ServiceAccount.
    pub async fn sidecar_token(&self, admin: &kube::Client) -> String {
        let text = std::fs::read_to_string(repo_root().join("deploy/base/rbac.yaml"))
            .expect("read deploy/base/rbac.yaml");
        let pp = PostParams::default();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc).expect("rbac yaml");
            match value["kind"].as_str() {
                Some("ServiceAccount") => {
                    let sa: ServiceAccount = serde_json::from_value(value).expect("sa");
                    let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), &self.namespace);
                    create_or_exists(api.create(&pp, &sa).await);
                }
                Some("Role") => {
                    let role: Role = serde_json::from_value(value).expect("role");
                    let api: Api<Role> = Api::namespaced(admin.clone(), &self.namespace);
                    create_or_exists(api.create(&pp, &role).await);
                }
                Some("RoleBinding") => {
                    let mut rb: RoleBinding = serde_json::from_value(value).expect("rolebinding");
                    for s in rb.subjects.iter_mut().flatten() {
                        s.namespace = Some(self.namespace.clone());
                    }
                    let api: Api<RoleBinding> = Api::namespaced(admin.clone(), &self.namespace);
                    create_or_exists(api.create(&pp, &rb).await);
                }
                other => panic!("unexpected kind {other:?} in deploy/base/rbac.yaml"),
            }
        }
        let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), &self.namespace);
        let request = k8s_openapi::api::authentication::v1::TokenRequest {
            spec: Some(k8s_openapi::api::authentication::v1::TokenRequestSpec {
                expiration_seconds: Some(24 * 3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = api
            .create_token_request("compose-ingress", &pp, &request)
            .await
            .expect("token request for the sidecar's ServiceAccount");
        token
            .status
            .and_then(|s| s.token)
            .expect("token in the TokenRequest status")
    }
}

fn create_or_exists<T>(result: kube::Result<T>) {
    match result {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create RBAC object: {e}"),
    }
}

impl Drop for RunnerPod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test failed: runner pod {}/{} kept for inspection in {} (DOCKER_HOST={})",
                self.namespace,
                self.name,
                self.dir.display(),
                self.docker_host
            );
            return;
        }
        let _ = Command::new(repo_root().join("tests/testbed/pod.sh"))
            .arg("delete")
            .arg(&self.dir)
            .output();
    }
}

/// A fresh namespace name per test (tests run in parallel and leave evidence behind).
pub fn unique_namespace(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("t-{test}-{:05x}", (nanos ^ std::process::id()) & 0xfffff)
}

/// HTTP GET with curl (what a person would run): returns (status, body). `host` sets the Host
/// header. Only loopback and the bed's own pod addresses are ever targets.
pub fn http_get(url: &str, host: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"]);
    if let Some(h) = host {
        cmd.arg("-H").arg(format!("Host: {h}"));
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Polls `check` until it returns Some, for at most `deadline` (a generous convergence bound,
/// not a performance assertion); panics with `what` when it never converges.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("{what}: not reached within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Generous: a loaded 2-core CI machine (parallel tests, busy CPUs) must never hit it while the
/// sidecar converges; it only bounds how long a broken run takes to fail.
pub const CONVERGE: Duration = Duration::from_secs(120);
