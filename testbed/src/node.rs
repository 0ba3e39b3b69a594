//! deploy/ on the bed's kubelet node, as a user runs it: `tests/testbed/deploy.sh` applies an
//! overlay with only what a user changes (images, domain, ingress class), and the helpers here do
//! what an operator or a CI job does next: `kubectl exec` into dind, `docker compose up`, curl
//! the URL through Traefik over HTTPS, read pod status, kill a container's process through the
//! node's containerd.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::Api;
use tokio::sync::{Mutex, MutexGuard};

use crate::bed::{Bed, parse_env, repo_root, stdout_ok};
use crate::docs::{doc_commands, doc_inline, run_doc_line_ok};
use crate::wait::{CONVERGE, eventually};

/// The node's CPU fits one StatefulSet of deploy/ at a time (dind requests 500m per pod, the
/// node has 2 CPUs): tests that deploy hold this lock.
static NODE: Mutex<()> = Mutex::const_new(());

pub async fn node_lock() -> MutexGuard<'static, ()> {
    NODE.lock().await
}

/// The sidecar container's name in deploy/ (a native sidecar: an init container).
pub const SIDECAR_CONTAINER: &str = "compose-ingress";
pub const DIND_CONTAINER: &str = "dind";

/// One applied overlay of deploy/ in its own namespace.
pub struct Deployment<'a> {
    bed: &'a Bed,
    pub namespace: String,
    pub domain: String,
    tls_ca: PathBuf,
}

fn script() -> PathBuf {
    repo_root().join("tests/testbed/deploy.sh")
}

/// Where the docs' install lines name the overlay, the bed applies the user's kustomization over
/// it (`deploy.sh kustomization`: only images, domain and class changed); this placeholder is
/// replaced by its directory.
const KUSTOMIZATION: &str = "<the user's kustomization over the overlay>";

/// The bed's substitutions for docs/install.md's install and uninstall lines: the test's
/// namespace for the user's `ci`, the user's kustomization for the overlay they apply
/// (`namespace ci` only where the block creates it).
fn install_substitutions(namespace: &str, create: bool) -> Vec<(&'static str, String)> {
    let mut subs = vec![
        ("-n ci", format!("-n {namespace}")),
        ("deploy/overlays/ingress", KUSTOMIZATION.to_string()),
    ];
    if create {
        subs.push(("namespace ci", format!("namespace {namespace}")));
    }
    subs
}

fn as_strs<'s>(subs: &'s [(&'static str, String)]) -> Vec<(&'static str, &'s str)> {
    subs.iter().map(|(a, b)| (*a, b.as_str())).collect()
}

/// docs/install.md's `install-apply` lines with the bed's substitutions; the README's quick
/// start says the same apply line (asserted: the two docs cannot drift apart).
fn install_lines(namespace: &str) -> Vec<String> {
    let subs = install_substitutions(namespace, true);
    let subs = as_strs(&subs);
    let readme = doc_commands("README.md", "readme-install", &[]);
    let install = doc_commands("docs/install.md", "install-apply", &[]);
    assert!(
        readme.len() == 1 && install.contains(&readme[0]),
        "README.md's quick start ({readme:?}) is not docs/install.md's apply line ({install:?})"
    );
    // The upgrade section's short form is the same line with the overlay left out.
    let upgrade = doc_inline(
        "docs/install.md",
        "kubectl kustomize … | kubectl apply -n ci -f -",
    );
    assert!(
        install.contains(&upgrade.replace('…', "deploy/overlays/ingress")),
        "docs/install.md's upgrade line ({upgrade}) is not its apply line ({install:?})"
    );
    doc_commands("docs/install.md", "install-apply", &subs)
}

impl<'a> Deployment<'a> {
    /// deploy/'s OVERLAY installed as docs/install.md says (step 6, `install-apply`, the README's
    /// quick start the same line): its command lines run as written but for
    /// [`install_substitutions`], over the kustomization a user writes (`deploy.sh
    /// kustomization`: images, domain, class, the certificate). The domain is the namespace's
    /// own, so that hosts never meet another test's.
    pub fn apply(bed: &'a Bed, namespace: &str, overlay: &str) -> Self {
        let domain = format!("{namespace}.bed.test");
        let lines = install_lines(namespace);
        let [create, apply, check] = lines.as_slice() else {
            panic!("docs/install.md install-apply: expected create, apply, get: {lines:?}");
        };
        // Made before the first line runs: a line that fails still has the namespace deleted
        // (Drop), so the node is free for the next test.
        let mut deployment = Deployment {
            bed,
            namespace: namespace.to_string(),
            domain,
            tls_ca: PathBuf::new(),
        };
        run_doc_line_ok(bed, create, &repo_root(), &[]);
        let out = Command::new(script())
            .args(["kustomization", namespace, overlay, &deployment.domain])
            .env("TESTBED_DIR", &bed.dir)
            .output()
            .expect("run tests/testbed/deploy.sh");
        let env = parse_env(&stdout_ok(
            out,
            &format!("deploy.sh kustomization {namespace} {overlay}"),
        ));
        deployment.tls_ca = PathBuf::from(&env["TLS_CA"]);
        let apply = apply.replace(KUSTOMIZATION, &env["KUSTOMIZATION"]);
        run_doc_line_ok(bed, &apply, &repo_root(), &[]);
        run_doc_line_ok(bed, check, &repo_root(), &[]);
        deployment
    }

    /// docs/install.md's uninstall (`install-uninstall`), with [`install_substitutions`].
    pub fn uninstall(&self) {
        let dir = self.bed.dir.join("deploy").join(&self.namespace);
        let subs = install_substitutions(&self.namespace, false);
        for line in doc_commands("docs/install.md", "install-uninstall", &as_strs(&subs)) {
            let line = line.replace(KUSTOMIZATION, &dir.to_string_lossy());
            run_doc_line_ok(self.bed, &line, &repo_root(), &[]);
        }
    }

    /// What an operator makes before installing by other means than deploy/ (the Helm chart):
    /// the namespace and the wildcard certificate Secret of `overlay`'s settings
    /// (`deploy.sh tls`). Nothing is deployed; the namespace goes when this is dropped.
    pub fn prepare(bed: &'a Bed, namespace: &str, overlay: &str) -> Self {
        let domain = format!("{namespace}.bed.test");
        let out = Command::new(script())
            .args(["tls", namespace, overlay, &domain])
            .env("TESTBED_DIR", &bed.dir)
            .output()
            .expect("run tests/testbed/deploy.sh");
        let env = parse_env(&stdout_ok(
            out,
            &format!("deploy.sh tls {namespace} {overlay}"),
        ));
        Deployment {
            bed,
            namespace: namespace.to_string(),
            domain,
            tls_ca: PathBuf::from(&env["TLS_CA"]),
        }
    }

    /// `kubectl -n NAMESPACE ARGS...`, asserting success; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.namespace];
        all.extend_from_slice(args);
        stdout_ok(
            self.bed.kubectl(&all),
            &format!("kubectl {}", args.join(" ")),
        )
    }

    /// `kubectl exec -i POD -c dind -- ARGS...` with `stdin`: what a person does to run docker
    /// in a runner pod. Returns the output (not asserted).
    pub fn exec_dind(&self, pod: &str, args: &[&str], stdin: &[u8]) -> Output {
        self.exec_in(pod, DIND_CONTAINER, args, stdin)
    }

    /// `kubectl exec -i POD -c CONTAINER -- ARGS...` with `stdin` (not asserted): a runner pod
    /// another chart makes names its Docker client's container otherwise (GitLab's `build`).
    pub fn exec_in(&self, pod: &str, container: &str, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(Path::new(self.bed.get("BIN")).join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.bed.kubeconfig())
            .args([
                "-n",
                &self.namespace,
                "exec",
                "-i",
                pod,
                "-c",
                container,
                "--",
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl exec");
        if let Some(mut input) = child.stdin.take() {
            // The command may not read its input (then the pipe closes early): not an error here.
            let _ = input.write_all(stdin);
        }
        child.wait_with_output().expect("kubectl exec output")
    }

    /// Like [`Deployment::exec_dind`], asserting success.
    pub fn dind(&self, pod: &str, args: &[&str], stdin: &[u8]) -> String {
        stdout_ok(
            self.exec_dind(pod, args, stdin),
            &format!("kubectl exec {pod} -c dind -- {}", args.join(" ")),
        )
    }

    /// Loads the bed's busybox test image into the pod's dind (no registry is reachable).
    pub fn load_test_image(&self, pod: &str) {
        let tar = std::fs::read(self.bed.dir.join("busybox-rootfs.tar")).expect("busybox tar");
        let image = self.bed.get("TEST_IMAGE");
        self.dind(pod, &["docker", "import", "-", image], &tar);
    }

    /// Copies `compose` into the pod's dind and runs `docker compose -p PROJECT up -d` there.
    pub fn compose_up(&self, pod: &str, project: &str, compose: &str) {
        let file = format!("/tmp/{project}.yml");
        self.dind(
            pod,
            &["sh", "-c", &format!("cat > {file}")],
            compose.as_bytes(),
        );
        self.dind(
            pod,
            &["docker", "compose", "-p", project, "-f", &file, "up", "-d"],
            b"",
        );
    }

    pub async fn pod(&self, name: &str) -> Option<Pod> {
        let client = self.bed.admin().await;
        let api: Api<Pod> = Api::namespaced(client, &self.namespace);
        api.get_opt(name).await.expect("get pod")
    }

    /// Waits until the pod is Ready with both containers ready; returns it.
    pub async fn wait_ready(&self, name: &str) -> Pod {
        eventually(
            &format!("pod {}/{name} Ready with both containers", self.namespace),
            CONVERGE,
            || async {
                let pod = self.pod(name).await?;
                let ready = pod_ready(&pod)
                    && container(&pod, SIDECAR_CONTAINER).is_some_and(|c| c.ready)
                    && container(&pod, DIND_CONTAINER).is_some_and(|c| c.ready);
                ready.then_some(pod)
            },
        )
        .await
    }

    /// GET https://HOST/PATH through Traefik's websecure entry point (127.0.0.1:443), checking
    /// the certificate against the deployment's wildcard CA: (status, body).
    pub fn https_get(&self, host: &str, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(&self.tls_ca)
            .arg("--resolve")
            .arg(format!("{host}:443:127.0.0.1"))
            .arg(format!("https://{host}{path}"))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// A gRPC health check of `service` at HOST over HTTPS (HTTP/2, ALPN) through Traefik's
    /// websecure entry point, as a gRPC client outside the cluster makes it, with curl: the
    /// request frame is written here, the answer's status read from its frame (`08 01` is
    /// SERVING). Returns the status number, or what went wrong.
    pub fn grpc_health_over_https(&self, host: &str, service: &str) -> Result<u8, String> {
        // HealthCheckRequest{service}: field 1, length-delimited; in a gRPC frame (no
        // compression, 4-byte big-endian length).
        let mut message = vec![
            0x0a,
            u8::try_from(service.len()).map_err(|e| e.to_string())?,
        ];
        message.extend_from_slice(service.as_bytes());
        let mut frame = vec![0u8];
        frame.extend_from_slice(
            &u32::try_from(message.len())
                .map_err(|e| e.to_string())?
                .to_be_bytes(),
        );
        frame.extend_from_slice(&message);
        let mut child = Command::new("curl")
            .args(["-s", "--http2", "--max-time", "5", "-o", "-", "-X", "POST"])
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .args(["--data-binary", "@-", "--cacert"])
            .arg(&self.tls_ca)
            .arg("--resolve")
            .arg(format!("{host}:443:127.0.0.1"))
            .arg(format!("https://{host}/grpc.health.v1.Health/Check"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run curl: {e}"))?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(&frame).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        // HealthCheckResponse{status}: one frame, field 1 varint.
        match out.stdout.as_slice() {
            [0, _, _, _, _, 0x08, status, ..] => Ok(*status),
            other => Err(format!(
                "no gRPC answer ({}): {other:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    /// Waits until https://HOST/PATH answers 200 through Traefik; returns the body.
    pub async fn answers(&self, host: &str, path: &str) -> String {
        eventually(
            &format!("https://{host}{path} answers"),
            CONVERGE,
            || async {
                let (code, body) = self.https_get(host, path);
                (code == 200).then_some(body)
            },
        )
        .await
    }

    /// A host under the deployment's domain.
    pub fn host(&self, label: &str) -> String {
        format!("{label}.{}", self.domain)
    }
}

/// The sidecar image (the Dockerfile's runtime stage around the static binary) imported into the node's
/// containerd (`deploy.sh image`, what `deploy.sh apply` uses): `compose-ingress:<digest>`.
pub fn sidecar_image(bed: &Bed) -> String {
    let out = Command::new(script())
        .arg("image")
        .env("TESTBED_DIR", &bed.dir)
        .output()
        .expect("run tests/testbed/deploy.sh");
    parse_env(&stdout_ok(out, "deploy.sh image"))["SIDECAR_IMAGE"].clone()
}

/// The stand-in for the CI runner images other charts put next to dind (ARC's actions-runner,
/// GitLab Runner's build and helper images), which the node cannot pull:
/// `tests/testbed/runner-image.sh` builds it offline and imports it into the node's containerd.
pub fn runner_image(bed: &Bed) -> String {
    let out = Command::new(repo_root().join("tests/testbed/runner-image.sh"))
        .env("TESTBED_DIR", &bed.dir)
        .output()
        .expect("run tests/testbed/runner-image.sh");
    parse_env(&stdout_ok(out, "runner-image.sh"))["RUNNER_IMAGE"].clone()
}

/// The namespace goes when the test ends, passed or failed: the next deployment needs the node's
/// CPU. Waits until it is gone.
impl Drop for Deployment<'_> {
    fn drop(&mut self) {
        let out = Command::new(script())
            .args(["delete", &self.namespace])
            .env("TESTBED_DIR", &self.bed.dir)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "deploy.sh delete {}: {}",
                self.namespace,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("deploy.sh delete {}: {e}", self.namespace),
        }
    }
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A container's status, regular or init (the native sidecar is an init container).
pub fn container<'p>(pod: &'p Pod, name: &str) -> Option<&'p ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .find(|c| c.name == name)
}

/// Kills a running container's process with `signal` through the node's containerd (what an
/// OOM kill or a crash does): `ctr -n k8s.io tasks kill`.
pub fn kill_container(bed: &Bed, pod: &Pod, name: &str, signal: &str) {
    let id = container(pod, name)
        .and_then(|c| c.container_id.as_deref())
        .and_then(|id| id.strip_prefix("containerd://"))
        .unwrap_or_else(|| panic!("container {name} has no containerd id"))
        .to_string();
    let out = Command::new(Path::new(bed.get("BIN")).join("ctr"))
        .args(["--address", bed.get("CONTAINERD_SOCK"), "-n", "k8s.io"])
        .args(["tasks", "kill", "--signal", signal, &id])
        .output()
        .expect("run ctr");
    stdout_ok(out, &format!("ctr tasks kill {name}"));
}

/// Where the kubelet keeps a pod's projected ServiceAccount token (deploy/'s kube-api-access).
pub fn projected_token(bed: &Bed, pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().expect("pod uid");
    let path = Path::new(bed.get("NODE_DIR")).join(format!(
        "kubelet/root/pods/{uid}/volumes/kubernetes.io~projected/kube-api-access/token"
    ));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read the sidecar's token at {}: {e}", path.display()))
}
