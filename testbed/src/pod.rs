//! Runner pods (a network namespace with its own dockerd and a Pod object, made by
//! tests/testbed/pod.sh) and the Compose versions that drive projects in them.

use std::path::PathBuf;
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};

use crate::bed::{Bed, bed, engine, parse_env, repo_root};

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
    /// The Docker Engine of the pod's dockerd: "29" or "20.10" (pod.sh --engine), and the
    /// version it reports.
    pub engine: String,
    pub engine_version: String,
    /// The pod's network namespace (`/run/netns/<netns>`): a process started in it is in the
    /// pod as a container of it would be (the pod scope's sidecar).
    pub netns: String,
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
    /// in this pod's namespace and returns a token for that ServiceAccount, bound to this pod as
    /// the kubelet's projected token is (its user info names the pod, which the admission guard
    /// of deploy/admission checks).
    pub async fn sidecar_token(&self, admin: &kube::Client) -> String {
        self.grant(admin, "deploy/base/rbac.yaml").await;
        pod_bound_token(admin, &self.namespace, &self.name, &self.uid).await
    }

    /// Creates the ServiceAccount, Roles and RoleBindings of one of deploy/'s RBAC files (path
    /// from the repository root) in this pod's namespace: the tests run the sidecar under
    /// exactly what deploy/ grants.
    pub async fn grant(&self, admin: &kube::Client, file: &str) {
        let text = std::fs::read_to_string(repo_root().join(file))
            .unwrap_or_else(|e| panic!("read {file}: {e}"));
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
                other => panic!("unexpected kind {other:?} in {file}"),
            }
        }
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

/// Runner pods are made through the bed they run on.
impl Bed {
    /// Creates a runner pod (netns + dockerd + Pod object) in `namespace` on the test's Docker
    /// Engine (see [`engine`]); see pod.sh.
    pub fn runner_pod(&self, namespace: &str, pod: &str) -> RunnerPod {
        self.runner_pod_on(namespace, pod, &engine())
    }

    /// A runner pod whose dockerd is Docker Engine `engine` ("29" or "20.10").
    pub fn runner_pod_on(&self, namespace: &str, pod: &str, engine: &str) -> RunnerPod {
        let out = Command::new(repo_root().join("tests/testbed/pod.sh"))
            .args(["create", namespace, pod, "--engine", engine])
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
            engine: env["ENGINE"].clone(),
            engine_version: env["ENGINE_VERSION"].clone(),
            netns: env["NETNS"].clone(),
        }
    }
}

/// A token of the sidecar's ServiceAccount (`compose-ingress`) bound to the Pod `pod` (uid
/// `uid`) of `namespace`, as `kubectl create token --bound-object-kind Pod` makes one: valid while
/// that pod exists, its user info carrying the pod's name and uid.
pub async fn pod_bound_token(
    admin: &kube::Client,
    namespace: &str,
    pod: &str,
    uid: &str,
) -> String {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(24 * 3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("Pod".to_string()),
                name: Some(pod.to_string()),
                uid: Some(uid.to_string()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = api
        .create_token_request("compose-ingress", &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token of compose-ingress bound to pod {pod}: {e}"));
    token
        .status
        .and_then(|s| s.token)
        .expect("token in the TokenRequest status")
}
