//! What ships: the kustomize manifests in deploy/ (accepted by the real apiserver, with the
//! native sidecar, probes and security context an operator expects) and the container image
//! built from the Dockerfile (run inside a runner pod's dockerd, it exposes a composition).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Probe};

use testbed::{
    Bed, CONVERGE, bed, domain, eventually, http_get, ingress_hosts, repo_root, stdout_ok,
    unique_namespace, wait_exposed,
};

const OVERLAYS: [&str; 3] = ["base", "overlays/ingress", "overlays/gateway"];

fn kubectl(bed: &Bed, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(Path::new(bed.get("BIN")).join("kubectl"))
        .arg("--kubeconfig")
        .arg(bed.kubeconfig())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    let mut input = child.stdin.take().expect("kubectl stdin");
    if let Some(text) = stdin {
        input
            .write_all(text.as_bytes())
            .expect("write kubectl stdin");
    }
    drop(input);
    child.wait_with_output().expect("wait for kubectl")
}

/// `kubectl kustomize deploy/<dir>`, as YAML text and as JSON documents.
fn render(bed: &Bed, dir: &str) -> (String, Vec<serde_json::Value>) {
    let path = repo_root().join("deploy").join(dir);
    let yaml = stdout_ok(
        kubectl(bed, &["kustomize", &path.to_string_lossy()], None),
        &format!("kubectl kustomize deploy/{dir}"),
    );
    let docs = serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML document"))
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect();
    (yaml, docs)
}

fn of_kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn statefulset(docs: &[serde_json::Value]) -> StatefulSet {
    let sts = of_kind(docs, "StatefulSet");
    assert_eq!(sts.len(), 1, "one runner StatefulSet");
    serde_json::from_value(sts[0].clone()).expect("StatefulSet")
}

fn pod_spec(sts: &StatefulSet) -> &PodSpec {
    sts.spec
        .template
        .spec
        .as_ref()
        .expect("the StatefulSet has a pod template spec")
}

fn sidecar(sts: &StatefulSet) -> Container {
    let inits = pod_spec(sts).init_containers.clone().unwrap_or_default();
    inits
        .into_iter()
        .find(|c| c.name == "compose-ingress")
        .expect("compose-ingress is an init container (native sidecar)")
}

fn dind(sts: &StatefulSet) -> Container {
    pod_spec(sts)
        .containers
        .clone()
        .into_iter()
        .find(|c| c.name == "dind")
        .expect("a dind container")
}

fn env_of(c: &Container) -> BTreeMap<String, EnvVar> {
    c.env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect()
}

fn env_value(c: &Container, name: &str) -> String {
    env_of(c)
        .get(name)
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| panic!("sidecar env {name} has no literal value"))
}

/// (path, port) of an HTTP probe; a named port is resolved through the container's ports.
/// The command of an exec probe of the sidecar.
fn exec_probe(probe: Option<&Probe>, what: &str) -> Vec<String> {
    probe
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
        .unwrap_or_else(|| panic!("sidecar has an exec {what} probe"))
}

/// Every rendered manifest is accepted by the real apiserver (server-side dry run into a fresh
/// namespace), and the runner StatefulSet is what an operator expects of it.
#[tokio::test]
async fn deploy_manifests_are_accepted_by_the_apiserver() {
    let bed = bed();
    let ns = unique_namespace("deploy");
    stdout_ok(
        kubectl(bed, &["create", "namespace", &ns], None),
        "create namespace",
    );

    for dir in OVERLAYS {
        let (yaml, docs) = render(bed, dir);
        let mut expected: Vec<String> = docs
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().expect("kind"),
                    d["metadata"]["name"].as_str().expect("name")
                )
            })
            .collect();
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        for kind in [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Service",
            "StatefulSet",
        ] {
            assert!(kinds.contains(&kind), "deploy/{dir} renders no {kind}");
        }
        if dir == "overlays/gateway" {
            assert!(
                kinds.contains(&"Gateway"),
                "the gateway overlay has a Gateway"
            );
        }
        // -o name would hide the "(server dry run)" marker; the default output lists each object.
        let out = stdout_ok(
            kubectl(
                bed,
                &["apply", "-n", &ns, "--dry-run=server", "-f", "-"],
                Some(&yaml),
            ),
            &format!("server dry run of deploy/{dir}"),
        );
        let accepted: Vec<&str> = out
            .lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .collect();
        assert_eq!(
            accepted.len(),
            docs.len(),
            "deploy/{dir}: every object accepted; kubectl said:\n{out}"
        );
        // kubectl prints kind.group/name; compare kinds (lowercase) and names.
        let mut got: Vec<String> = accepted
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .map(|s| {
                let (kind, name) = s.split_once('/').expect("kind/name");
                let kind = kind.split('.').next().unwrap_or(kind);
                format!("{kind}/{name}")
            })
            .collect();
        got.sort();
        expected
            .iter_mut()
            .for_each(|e| *e = e.to_ascii_lowercase());
        expected.sort();
        let got: Vec<String> = got.into_iter().map(|g| g.to_ascii_lowercase()).collect();
        assert_eq!(got, expected, "deploy/{dir}: accepted objects");

        // The Roles the sidecar runs under are deploy/base/rbac.yaml's and the Traefik
        // component's, unchanged by any overlay (the sidecar tests read those files:
        // testbed/src/pod.rs, grant).
        let role_of = |file: &str| {
            let text = std::fs::read_to_string(repo_root().join(file)).expect("rbac");
            serde_yaml_ng::Deserializer::from_str(&text)
                .map(|d| serde::Deserialize::deserialize(d).expect("rbac yaml"))
                .find(|v: &serde_json::Value| v["kind"] == "Role")
                .unwrap_or_else(|| panic!("a Role in {file}"))
        };
        let mut roles = of_kind(&docs, "Role");
        roles.sort_by_key(|r| r["metadata"]["name"].as_str().map(str::to_string));
        let names: Vec<&str> = roles
            .iter()
            .filter_map(|r| r["metadata"]["name"].as_str())
            .collect();
        let overlay = dir.starts_with("overlays/");
        let expected_roles: &[&str] = match dir {
            "overlays/gateway" => &[
                "compose-ingress",
                "compose-ingress-gateway",
                "compose-ingress-traefik",
            ],
            _ if overlay => &["compose-ingress", "compose-ingress-traefik"],
            _ => &["compose-ingress"],
        };
        assert_eq!(
            names, expected_roles,
            "deploy/{dir}: the base Role, in the overlays the Traefik component's, and the \
             gateway overlay's read of its Gateway"
        );
        if dir == "overlays/gateway" {
            assert_eq!(
                roles[1]["rules"],
                serde_json::json!([{
                    "apiGroups": ["gateway.networking.k8s.io"],
                    "resources": ["gateways"],
                    "resourceNames": ["compose-ingress"],
                    "verbs": ["get"],
                }]),
                "the gateway overlay reads its own Gateway only"
            );
            roles.remove(1);
        }
        assert_eq!(
            roles[0]["rules"],
            role_of("deploy/base/rbac.yaml")["rules"],
            "deploy/{dir}: the Role is deploy/base/rbac.yaml's"
        );
        if overlay {
            assert_eq!(
                roles[1]["rules"],
                role_of("deploy/components/traefik/rbac.yaml")["rules"],
                "deploy/{dir}: the Traefik Role is deploy/components/traefik/rbac.yaml's"
            );
            assert_eq!(
                env_value(
                    &sidecar(&statefulset(&docs)),
                    "COMPOSE_INGRESS_RATE_LIMIT_MODE"
                ),
                "traefik-middleware",
                "deploy/{dir}: the overlays are written for Traefik"
            );
        }

        let sts = statefulset(&docs);
        assert_sidecar(&sts, dir);
        assert_api_port_policy(&docs, &sts, dir);
        match dir {
            "overlays/ingress" => {
                let c = sidecar(&sts);
                assert_eq!(env_value(&c, "COMPOSE_INGRESS_INGRESS_CLASS"), "traefik");
                assert!(!env_value(&c, "COMPOSE_INGRESS_TLS_SECRET").is_empty());
                let rps: u32 = env_value(&c, "COMPOSE_INGRESS_DEFAULT_RPS")
                    .parse()
                    .expect("rps");
                assert!(rps >= 1);
            }
            "overlays/gateway" => {
                let c = sidecar(&sts);
                assert_eq!(env_value(&c, "COMPOSE_INGRESS_ROUTE_API"), "gateway");
                // The sidecar's Gateway reference names the overlay's Gateway and listener, and
                // that listener's wildcard hostname is exactly one label under the domain.
                let reference = env_value(&c, "COMPOSE_INGRESS_GATEWAY");
                let (name, section) = reference.split_once(':').expect("name:section");
                let gw = of_kind(&docs, "Gateway")[0];
                assert_eq!(
                    gw["metadata"]["name"], name,
                    "the Gateway the sidecar names"
                );
                let listener = gw["spec"]["listeners"]
                    .as_array()
                    .expect("listeners")
                    .iter()
                    .find(|l| l["name"] == section)
                    .unwrap_or_else(|| panic!("Gateway has no listener {section}"));
                let domain = env_value(&c, "COMPOSE_INGRESS_DOMAIN");
                assert_eq!(listener["hostname"], format!("*.{domain}"));
                assert_eq!(listener["protocol"], "HTTPS");
                assert!(
                    gw["spec"]["gatewayClassName"].is_string(),
                    "an example GatewayClass reference"
                );
            }
            _ => {}
        }
        assert_config_accepted(&sidecar(&sts), dir);
    }
    stdout_ok(
        kubectl(bed, &["delete", "namespace", &ns, "--wait=false"], None),
        "delete namespace",
    );
}

/// The NetworkPolicy of the sidecar's port: it selects the runner pods, leaves every other port
/// open to all, and opens the sidecar's port (its containerPort `metrics`) to one selected peer
/// only (the operator's monitoring). The bed's CNI does not enforce NetworkPolicy, so this is
/// what can be checked: the object, accepted by the apiserver with the rest, and its selectors.
fn assert_api_port_policy(docs: &[serde_json::Value], sts: &StatefulSet, dir: &str) {
    let policies = of_kind(docs, "NetworkPolicy");
    assert_eq!(policies.len(), 1, "deploy/{dir}: one NetworkPolicy");
    let spec = &policies[0]["spec"];
    let labels = serde_json::to_value(
        sts.spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .expect("pod template labels"),
    )
    .expect("labels");
    let selected = spec["podSelector"]["matchLabels"]
        .as_object()
        .expect("a podSelector by labels");
    assert!(
        selected.iter().all(|(k, v)| labels[k] == *v),
        "deploy/{dir}: the NetworkPolicy selects the runner pods ({labels})"
    );
    assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress"]));
    let api_port = sidecar(sts)
        .ports
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("the sidecar's metrics port")
        .container_port;
    let covers = |port: &serde_json::Value| {
        let start = port["port"].as_i64().expect("a numbered port");
        let end = port["endPort"].as_i64().unwrap_or(start);
        port["protocol"] == "TCP" && (start..=end).contains(&i64::from(api_port))
    };
    let rules = spec["ingress"].as_array().expect("ingress rules");
    for rule in rules {
        let ports = rule["ports"]
            .as_array()
            .expect("every rule names its ports");
        if ports.iter().any(covers) {
            let from = rule["from"]
                .as_array()
                .expect("the API port only from selected peers");
            assert!(
                !from.is_empty() && from.iter().all(|f| f.get("ipBlock").is_none()),
                "deploy/{dir}: port {api_port} from selected pods only: {rule}"
            );
        }
    }
    // Every other TCP port stays open to all (a composition's published port, the proxy).
    let open = |port: i32| {
        rules.iter().any(|r| {
            r.get("from").is_none()
                && r["ports"].as_array().is_some_and(|ps| {
                    ps.iter().any(|p| {
                        let start = p["port"].as_i64().unwrap_or(0);
                        let end = p["endPort"].as_i64().unwrap_or(start);
                        p["protocol"] == "TCP" && (start..=end).contains(&i64::from(port))
                    })
                })
        })
    };
    for port in [1, 80, 9101, 9103, 9180, 32768, 65535] {
        assert!(open(port), "deploy/{dir}: TCP port {port} open to all");
    }
    assert!(
        !open(api_port),
        "deploy/{dir}: port {api_port} not open to all"
    );
}

/// The native sidecar: restartPolicy Always, downward-API env, the Docker socket shared with
/// dind through an emptyDir, probes on the health endpoints, requests/limits, a locked-down
/// security context, and no startup probe (it must not wait for dind, which starts after it).
fn assert_sidecar(sts: &StatefulSet, dir: &str) {
    let c = sidecar(sts);
    assert_eq!(
        c.restart_policy.as_deref(),
        Some("Always"),
        "{dir}: native sidecar"
    );
    let env = env_of(&c);
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_UID", "metadata.uid"),
        ("POD_IP", "status.podIP"),
        ("HOST_IP", "status.hostIP"),
    ] {
        let field = env
            .get(name)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone());
        assert_eq!(
            field.as_deref(),
            Some(path),
            "{dir}: {name} from the downward API"
        );
    }

    // DOCKER_HOST points into a volume that dind mounts too, at a path where dind's socket is.
    let docker_host = env_value(&c, "DOCKER_HOST");
    let socket = docker_host
        .strip_prefix("unix://")
        .expect("DOCKER_HOST is a unix socket");
    let socket_dir = Path::new(socket).parent().expect("socket directory");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(&m.mount_path) == socket_dir)
        .unwrap_or_else(|| panic!("{dir}: the sidecar mounts {}", socket_dir.display()));
    let d = dind(sts);
    let dind_mount = d
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == mount.name)
        .unwrap_or_else(|| panic!("{dir}: dind mounts volume {}", mount.name));
    let volumes = pod_spec(sts).volumes.clone().unwrap_or_default();
    let vol = volumes
        .iter()
        .find(|v| v.name == mount.name)
        .expect("socket volume");
    assert!(
        vol.empty_dir.is_some(),
        "{dir}: the socket is shared through an emptyDir"
    );
    let dind_socket = Path::new(&dind_mount.mount_path).join("docker.sock");
    let args = d.args.clone().unwrap_or_default().join(" ");
    assert!(
        args.contains(&format!("--host=unix://{}", dind_socket.display()))
            && Path::new(socket) == Path::new(&mount.mount_path).join("docker.sock"),
        "{dir}: dind serves its socket where the sidecar looks (dind args: {args})"
    );
    assert_eq!(
        d.security_context.as_ref().and_then(|s| s.privileged),
        Some(true),
        "{dir}: dind is privileged"
    );

    // The probes ask the probe socket (src/probe_socket.rs), in a volume dind does not mount:
    // no job can starve them on any CNI.
    assert_eq!(
        exec_probe(c.liveness_probe.as_ref(), "liveness"),
        ["/compose-ingress", "probe", "healthz"],
        "{dir}: liveness asks /healthz on the probe socket"
    );
    assert_eq!(
        exec_probe(c.readiness_probe.as_ref(), "readiness"),
        ["/compose-ingress", "probe", "readyz"],
        "{dir}: readiness asks /readyz on the probe socket"
    );
    let probe_socket = env_value(&c, "COMPOSE_INGRESS_PROBE_SOCKET");
    let probe_dir = Path::new(&probe_socket)
        .parent()
        .expect("probe socket directory");
    let probe_mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(&m.mount_path) == probe_dir)
        .unwrap_or_else(|| panic!("{dir}: the sidecar mounts {}", probe_dir.display()));
    assert!(
        volumes
            .iter()
            .any(|v| v.name == probe_mount.name && v.empty_dir.is_some()),
        "{dir}: the probe socket is in an emptyDir"
    );
    assert!(
        !d.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == probe_mount.name),
        "{dir}: dind does not mount the probe socket's volume"
    );
    assert!(
        c.startup_probe.is_none(),
        "{dir}: no startup probe (it would wait for dind, which starts after the sidecar)"
    );

    let res = c.resources.as_ref().expect("resources");
    let requests = res.requests.as_ref().expect("requests");
    let limits = res.limits.as_ref().expect("limits");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    assert!(limits.contains_key("memory"), "{dir}: a memory limit");

    let sc = c.security_context.as_ref().expect("security context");
    assert_eq!(sc.run_as_non_root, Some(true), "{dir}: runAsNonRoot");
    assert!(
        sc.run_as_user.is_some_and(|u| u != 0),
        "{dir}: a non-root uid"
    );
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{dir}: read-only root fs"
    );
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{dir}: no escalation"
    );
    assert_ne!(sc.privileged, Some(true));
    let drop = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.clone())
        .unwrap_or_default();
    assert_eq!(
        drop,
        vec!["ALL".to_string()],
        "{dir}: drops ALL capabilities"
    );

    assert_eq!(
        pod_spec(sts).service_account_name.as_deref(),
        Some("compose-ingress"),
        "{dir}: pods run as the sidecar's ServiceAccount"
    );
    assert_token_only_in_the_sidecar(sts, dir);
}

/// The ServiceAccount token reaches the sidecar and no other container: no automount, and the
/// one projected token volume is mounted by the sidecar alone, where kube's in-cluster config
/// reads it. (That dind really cannot read a token needs a kubelet: the real-node tests.)
fn assert_token_only_in_the_sidecar(sts: &StatefulSet, dir: &str) {
    const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let spec = pod_spec(sts);
    assert_eq!(
        spec.automount_service_account_token,
        Some(false),
        "{dir}: no automatic token mount into every container"
    );
    let volumes = spec.volumes.clone().unwrap_or_default();
    let token_volumes: Vec<&str> = volumes
        .iter()
        .filter(|v| {
            v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.service_account_token.is_some())
            })
        })
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(token_volumes.len(), 1, "{dir}: one token volume");
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for c in containers {
        let mounts: Vec<&str> = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| token_volumes.contains(&m.name.as_str()))
            .map(|m| m.mount_path.as_str())
            .collect();
        if c.name == "compose-ingress" {
            assert_eq!(mounts, vec![TOKEN_DIR], "{dir}: the sidecar's token");
        } else {
            assert!(
                mounts.is_empty(),
                "{dir}: container {} mounts the token",
                c.name
            );
        }
    }
}

/// The sidecar's env, as rendered, is a configuration the binary accepts (a bad value would
/// stop it at start-up with "invalid configuration", exit code 2).
fn assert_config_accepted(c: &Container, dir: &str) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_compose-ingress"));
    cmd.env_clear()
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .args(["--listen", "127.0.0.1:0"]);
    for (name, e) in env_of(c) {
        let value = match (e.value, name.as_str()) {
            (Some(v), _) => v,
            (None, "POD_NAME") => "runner-0".to_string(),
            (None, "POD_NAMESPACE") => "ci".to_string(),
            (None, "POD_UID") => "00000000-0000-0000-0000-000000000000".to_string(),
            (None, "POD_IP") => "198.18.232.10".to_string(),
            (None, "HOST_IP") => "198.18.231.1".to_string(),
            (None, other) => panic!("{dir}: sidecar env {other} has no value"),
        };
        if name != "COMPOSE_INGRESS_LISTEN" {
            cmd.env(name, value);
        }
    }
    let out = cmd.output().expect("run compose-ingress");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(2),
        "{dir}: the sidecar refuses its rendered configuration: {stderr}"
    );
    assert!(
        stderr.contains("cannot configure a Kubernetes client"),
        "{dir}: expected the run to get as far as the Kubernetes client, got: {stderr}"
    );
}

/// Forwards TCP connections from `listen` (the host end of a runner pod's veth) to the
/// apiserver on the host's loopback, which a container in the pod's network cannot reach.
async fn forward_to_apiserver(listen: SocketAddr, apiserver: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| panic!("bind the apiserver forward on {listen}: {e}"));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(apiserver).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

const IMAGE: &str = "compose-ingress:e2e";

const WEB_COMPOSE: &str = r#"
version: "2.4"
services:
  web:
    image: compose-ingress-test/busybox:1
    command: ["sh", "-c", "echo hello from the image test > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: ["80"]
    labels:
      compose-ingress.enable: "true"
"#;

/// The image of the Dockerfile's runtime stage around the static release binary, run
/// in a runner pod's dockerd like the sidecar in a real pod: non-root, read-only, no
/// capabilities, the pod's Docker socket mounted, the sidecar ServiceAccount's kubeconfig. It
/// exposes a composition, routable through Traefik.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_image_exposes_a_composition() {
    let bed = bed();
    let ns = unique_namespace("image");
    let pod = bed.runner_pod(&ns, "runner-0");

    // The offline build docs/install.md names (step 1), run as it says.
    let script = testbed::doc_inline("docs/install.md", "tests/testbed/image.sh");
    let out = Command::new(repo_root().join(script))
        .arg(IMAGE)
        .env("DOCKER_HOST", &pod.docker_host)
        .output()
        .expect("run tests/testbed/image.sh");
    let built = testbed::parse_env(&stdout_ok(out, "tests/testbed/image.sh"));
    let size: u64 = built["IMAGE_SIZE"].parse().expect("IMAGE_SIZE");
    eprintln!("image {IMAGE}: {size} bytes");
    assert!(size < 40 << 20, "a minimal image (got {size} bytes)");

    let inspect = pod.docker_cli(&["image", "inspect", IMAGE]);
    let inspect: serde_json::Value =
        serde_json::from_slice(&stdout_ok(inspect, "docker image inspect").into_bytes())
            .expect("json");
    let config = &inspect[0]["Config"];
    assert_eq!(config["User"], "65532:65532", "runs as a non-root user");
    assert_eq!(config["Entrypoint"][0], "/compose-ingress");
    let labels = config["Labels"].as_object().expect("OCI labels");
    for key in [
        "org.opencontainers.image.title",
        "org.opencontainers.image.version",
        "org.opencontainers.image.source",
        "org.opencontainers.image.licenses",
    ] {
        assert!(labels.contains_key(key), "OCI label {key}");
    }
    assert_eq!(
        inspect[0]["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(1),
        "FROM scratch: one layer, the binary"
    );

    // The apiserver listens on the host's 127.0.0.1 only; reach it through the host end of the
    // pod's veth (the pod's default route), like a pod reaches its cluster's apiserver.
    let pod_ip: Ipv4Addr = pod.ip.parse().expect("pod ip");
    let [a, b, c, _] = pod_ip.octets();
    let host_end = Ipv4Addr::new(a, b, c, 1);
    let apiserver: url_parts::HostPort = url_parts::parse(bed.get("APISERVER"));
    forward_to_apiserver(
        SocketAddr::new(host_end.into(), apiserver.port),
        SocketAddr::new(apiserver.host, apiserver.port),
    )
    .await;

    let admin = bed.admin().await;
    let token = pod.sidecar_token(&admin).await;
    let ca = std::fs::read(bed.get("CA_CRT")).expect("read CA");
    // The certificate names 127.0.0.1 and localhost, not the veth address: tls-server-name.
    let kubeconfig = pod.dir.join("image.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster:\n    server: https://{host_end}:{}\n    \
             tls-server-name: localhost\n    certificate-authority-data: {}\n\
             users:\n- name: sidecar\n  user:\n    token: {token}\ncontexts:\n- name: sidecar\n  context: {{cluster: bed, user: sidecar, namespace: {}}}\n\
             current-context: sidecar\n",
            apiserver.port,
            base64(&ca),
            pod.namespace
        ),
    )
    .expect("write kubeconfig");

    // The pod's socket is root:<docker group> 0660; in a cluster the StatefulSet gives the
    // sidecar dind's socket group (supplementalGroups), here the same through --group-add.
    let socket = pod.docker_host.trim_start_matches("unix://");
    let gid = std::fs::metadata(socket).expect("docker socket").gid();
    let run = pod.docker_cli(&[
        "run",
        "-d",
        "--name",
        "compose-ingress",
        "--network",
        "host",
        "--user",
        "65532:65532",
        "--group-add",
        &gid.to_string(),
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
        &format!("{socket}:/var/run/dind/docker.sock"),
        "-v",
        &format!(
            "{}:/etc/compose-ingress/kubeconfig:ro",
            kubeconfig.display()
        ),
        "-e",
        "KUBECONFIG=/etc/compose-ingress/kubeconfig",
        "-e",
        "DOCKER_HOST=unix:///var/run/dind/docker.sock",
        "-e",
        &format!("POD_NAME={}", pod.name),
        "-e",
        &format!("POD_NAMESPACE={}", pod.namespace),
        "-e",
        &format!("POD_UID={}", pod.uid),
        "-e",
        &format!("COMPOSE_INGRESS_DOMAIN={}", domain(&pod.namespace)),
        "-e",
        "COMPOSE_INGRESS_INGRESS_CLASS=traefik",
        "-e",
        "COMPOSE_INGRESS_DELETE_GRACE=2s",
        IMAGE,
    ]);
    stdout_ok(run, "docker run the image");
    let logs = || {
        let out = pod.docker_cli(&["logs", "compose-ingress"]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    // /readyz on the pod IP (the container shares the pod's network, like a sidecar).
    let ready = format!("http://{}:9102/readyz", pod.ip);
    let deadline = std::time::Instant::now() + CONVERGE;
    while http_get(&ready, None).0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sidecar in the image never became ready; its logs:\n{}",
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }

    pod.compose("imageweb", WEB_COMPOSE, &["up", "-d"]);
    let client = bed.admin().await;
    let (_svc, ingress) = wait_exposed(&client, &ns, &pod.name, "imageweb").await;
    let host = format!("web-80-imageweb-{}.{}", pod.name, domain(&pod.namespace));
    assert_eq!(ingress_hosts(&ingress), vec![host.clone()]);
    let traefik = format!("{}/", bed.get("TRAEFIK_WEB"));
    let body = eventually(
        "the composition through Traefik, exposed by the image",
        CONVERGE,
        || async {
            let (code, body) = http_get(&traefik, Some(&host));
            (code == 200).then_some(body)
        },
    )
    .await;
    assert_eq!(body.trim(), "hello from the image test");
    assert!(
        logs().contains("composition exposed"),
        "the exposure is logged; logs:\n{}",
        logs()
    );
    let _ = pod.docker_cli(&["rm", "-f", "compose-ingress"]);
}

fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

mod url_parts {
    use std::net::IpAddr;

    pub struct HostPort {
        pub host: IpAddr,
        pub port: u16,
    }

    /// `https://127.0.0.1:16443` -> (127.0.0.1, 16443).
    pub fn parse(url: &str) -> HostPort {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = authority.rsplit_once(':').expect("host:port");
        HostPort {
            host: host.parse().expect("apiserver IP"),
            port: port.parse().expect("apiserver port"),
        }
    }
}
