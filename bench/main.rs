//! Benchmarks of compose-ingress on the real test bed (see BENCHMARKS.md).
//!
//!   cargo bench --bench bench                      # every phase, full size (~22 min)
//!   cargo bench --bench bench -- --smoke           # tiny run of every phase (CI keeps it alive)
//!   cargo bench --bench bench -- --only e2o,burst  # some phases: e2o routable side burst restart
//!   cargo bench --bench bench -- --replot          # redraw the plots from results.json
//!
//! `cargo bench` builds the sidecar with the release settings (the bench profile inherits them)
//! and runs this program (harness = false; it ignores the `--bench` flag cargo adds). It starts
//! the bed with tests/testbed/up.sh, makes its own runner pods (tests/testbed/pod.sh) and
//! namespaces (`bench-*`), runs the release sidecar as the pod's ServiceAccount, and writes the
//! results (`results.json`, `results.md`) and plots (`*.png`) into the output directory
//! (default bench/plots for a full run, target/bench-smoke for --smoke). Every loop has a count
//! and a deadline; traffic goes only to loopback and the bed's 198.18.x.y pod addresses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, RemoveContainerOptions,
};
use futures::{StreamExt, TryStreamExt};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
    WatchEvent, WatchParams,
};
use serde_json::{Value, json};

use testbed::{Bed, DOMAIN, Launch, RunnerPod, Sidecar, bed};

/// The release sidecar (the bench profile inherits the release settings), run by the bed's
/// sidecar runner with the bench's settings.
const SIDECAR: Launch = Launch::bench(env!("CARGO_BIN_EXE_compose-ingress"));
const SA_USER: &str = "compose-ingress";

// ------------------------------------------------------------------------------------------------
// Settings

#[derive(Clone, Debug)]
struct Scale {
    smoke: bool,
    e2o_n: usize,
    routable_levels: Vec<usize>,
    routable_samples: usize,
    side_samples: usize,
    burst_compositions: usize,
    restart_live: usize,
    restart_orphans: usize,
    cost_compositions: usize,
}

impl Scale {
    fn full() -> Scale {
        Scale {
            smoke: false,
            e2o_n: 200,
            routable_levels: vec![0, 100, 500, 1000, 2000],
            routable_samples: 12,
            side_samples: 20,
            burst_compositions: 100,
            restart_live: 500,
            restart_orphans: 50,
            cost_compositions: 1000,
        }
    }
    fn smoke() -> Scale {
        Scale {
            smoke: true,
            e2o_n: 5,
            routable_levels: vec![0],
            routable_samples: 2,
            side_samples: 2,
            burst_compositions: 5,
            restart_live: 5,
            restart_orphans: 2,
            cost_compositions: 10,
        }
    }
}

const PHASES: [&str; 5] = ["e2o", "routable", "side", "burst", "restart"];

struct Args {
    scale: Scale,
    only: Vec<String>,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut smoke = false;
    let mut only: Vec<String> = PHASES.iter().map(|s| s.to_string()).collect();
    let mut out = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--bench" => {} // added by `cargo bench`
            "--only" => {
                only = it
                    .next()
                    .expect("--only needs a comma list")
                    .split(',')
                    .map(str::to_string)
                    .collect();
                for p in &only {
                    assert!(
                        PHASES.contains(&p.as_str()),
                        "unknown phase {p}; phases: {PHASES:?}"
                    );
                }
            }
            "--replot" => only = vec!["replot".to_string()],
            "--out" => out = Some(PathBuf::from(it.next().expect("--out needs a directory"))),
            "-h" | "--help" => {
                println!(
                    "cargo bench --bench bench -- [--smoke] [--only {}] [--replot] [--out DIR]",
                    PHASES.join(",")
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?} (try --help)"),
        }
    }
    let out = out.unwrap_or_else(|| {
        testbed::repo_root().join(if smoke {
            "target/bench-smoke"
        } else {
            "bench/plots"
        })
    });
    std::fs::create_dir_all(&out).expect("create output directory");
    Args {
        scale: if smoke { Scale::smoke() } else { Scale::full() },
        only,
        out,
    }
}

fn say(msg: impl AsRef<str>) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[bench {t:7.1}s] {}", msg.as_ref());
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i128
}

// ------------------------------------------------------------------------------------------------
// Statistics

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Stats {
    n: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    min_ms: f64,
}

fn stats(samples_ms: &[f64]) -> Stats {
    let mut v: Vec<f64> = samples_ms
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        return Stats::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    // Nearest-rank percentile.
    let pct = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Stats {
        n: v.len(),
        p50_ms: pct(50.0),
        p90_ms: pct(90.0),
        p99_ms: pct(99.0),
        max_ms: v[v.len() - 1],
        min_ms: v[0],
    }
}

// ------------------------------------------------------------------------------------------------
// Processes: /proc readings, HTTP over loopback

/// A process the bench started (Traefik with its Docker provider), stopped as the sidecar is, and
/// killed if a phase fails.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn stop(mut self) {
        testbed::stop_process(&mut self.0);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12) // utime (field 14) and stime (15); `rest` starts at field 3
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

#[derive(Clone, Debug, serde::Serialize)]
struct Cost {
    rss_mib: f64,
    hwm_mib: f64,
    cpu_percent: f64,
    window_s: f64,
}

async fn measure_cost(pid: u32, window: Duration) -> Cost {
    let t0 = cpu_ticks(pid);
    let start = Instant::now();
    let mut rss_max = 0;
    while start.elapsed() < window {
        rss_max = rss_max.max(proc_status_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ticks = cpu_ticks(pid).saturating_sub(t0) as f64;
    Cost {
        rss_mib: rss_max as f64 / 1024.0,
        hwm_mib: proc_status_kib(pid, "VmHWM:") as f64 / 1024.0,
        cpu_percent: 100.0 * ticks / clk_tck() / start.elapsed().as_secs_f64(),
        window_s: start.elapsed().as_secs_f64(),
    }
}

/// A minimal HTTP/1.0 GET (status code and body); None on connect/read failure or timeout.
async fn http_get(addr: &str, host: &str, path: &str, timeout: Duration) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

async fn metric(listen: &str, name_and_labels: &str) -> f64 {
    let Some((_, body)) = http_get(listen, "localhost", "/metrics", Duration::from_secs(5)).await
    else {
        return f64::NAN;
    };
    body.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_ready(p: &Sidecar, deadline: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Some((200, _)) =
            http_get(&p.listen, "localhost", "/readyz", Duration::from_secs(2)).await
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "sidecar not ready within {deadline:?} (log {})",
            p.log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------------------------------------
// Docker: compositions made the way compose makes them (same labels), events

/// One shared user network per pod (a compose project's own network would exhaust dockerd's
/// address pool after 128 projects, and a bridge holds at most 1023 ports).
async fn ensure_networks(docker: &Docker, count: usize) {
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

fn container_name(project: &str, service: &str) -> String {
    format!("{project}-{service}-1")
}

/// Creates (does not start) the containers of `project`, one per service, labelled as Compose v2
/// labels them, each running busybox httpd on port 80 published on the pod IP.
async fn create_composition(
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

async fn start_composition(docker: &Docker, project: &str, services: &[&str]) {
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

async fn remove_composition(docker: &Docker, project: &str, services: &[&str]) {
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

async fn remove_all(docker: &Docker) {
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
struct StartEvents {
    first: Arc<Mutex<HashMap<String, i128>>>,
    first_any: Arc<Mutex<HashMap<String, i128>>>,
    count: Arc<Mutex<usize>>,
}

fn watch_start_events(docker: Docker) -> (StartEvents, tokio::task::JoinHandle<()>) {
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

// ------------------------------------------------------------------------------------------------
// Kubernetes: watches, audit log, filler objects

fn resource(kind: &str) -> ApiResource {
    let gvk = match kind {
        "Service" => GroupVersionKind::gvk("", "v1", "Service"),
        "Ingress" => GroupVersionKind::gvk("networking.k8s.io", "v1", "Ingress"),
        "HTTPRoute" => GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "Lease" => GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"),
        other => panic!("unknown kind {other}"),
    };
    ApiResource::from_gvk(&gvk)
}

fn dyn_api(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &resource(kind))
}

/// When each (kind, project) was first seen through an apiserver watch (local wall clock, ns).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<(String, String), i128>>>);

impl Seen {
    fn get(&self, kind: &str, project: &str) -> Option<i128> {
        self.0
            .lock()
            .expect("lock")
            .get(&(kind.to_string(), project.to_string()))
            .copied()
    }
}

/// Watches `kind` in `ns` (re-listing when a watch ends) and records first sightings by the
/// compose-ingress/project label.
fn watch_kind(
    client: kube::Client,
    ns: String,
    kind: &'static str,
    seen: Seen,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api = dyn_api(&client, &ns, kind);
        let record = |o: &DynamicObject| {
            if let Some(p) = o
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("compose-ingress/project"))
            {
                seen.0
                    .lock()
                    .expect("lock")
                    .entry((kind.to_string(), p.clone()))
                    .or_insert_with(now_ns);
            }
        };
        loop {
            let Ok(list) = api.list(&ListParams::default()).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            list.items.iter().for_each(record);
            let rv = list.metadata.resource_version.unwrap_or_default();
            let Ok(stream) = api.watch(&WatchParams::default().timeout(240), &rv).await else {
                continue;
            };
            let mut stream = stream.boxed();
            while let Ok(Some(ev)) = stream.try_next().await {
                match ev {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => record(&o),
                    WatchEvent::Error(_) => break,
                    _ => {}
                }
            }
        }
    })
}

/// The apiserver's audit log: writes (create/update/patch/delete) made since `offset` by the
/// sidecar's ServiceAccount of `ns`, counted by "verb resource".
fn audit_offset() -> u64 {
    std::fs::metadata(audit_path())
        .map(|m| m.len())
        .unwrap_or(0)
}

fn audit_path() -> PathBuf {
    PathBuf::from(bed().get("TESTBED_DIR")).join("logs/audit.log")
}

fn audit_writes(offset: u64, ns: &str) -> BTreeMap<String, usize> {
    let user = format!("system:serviceaccount:{ns}:{SA_USER}");
    let mut out = BTreeMap::new();
    let Ok(mut f) = std::fs::File::open(audit_path()) else {
        return out;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < offset {
        say("WARNING: the audit log was rotated during the measurement; counts are partial");
    } else {
        let _ = f.seek(std::io::SeekFrom::Start(offset));
    }
    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["user"]["username"] != user.as_str() || v["stage"] != "ResponseComplete" {
            continue;
        }
        let verb = v["verb"].as_str().unwrap_or("?");
        if !matches!(
            verb,
            "create" | "update" | "patch" | "delete" | "deletecollection"
        ) {
            continue;
        }
        let res = v["objectRef"]["resource"].as_str().unwrap_or("?");
        let code = v["responseStatus"]["code"].as_i64().unwrap_or(0);
        let ok = if (200..300).contains(&code) {
            ""
        } else {
            " (failed)"
        };
        *out.entry(format!("{verb} {res}{ok}")).or_insert(0) += 1;
    }
    out
}

async fn count_owned(client: &kube::Client, ns: &str, kind: &str) -> usize {
    dyn_api(client, ns, kind)
        .list_metadata(
            &ListParams::default().labels("app.kubernetes.io/managed-by=compose-ingress"),
        )
        .await
        .map(|l| l.items.len())
        .unwrap_or(usize::MAX)
}

/// Projects that have owned objects of `kind` in `ns`.
async fn owned_projects(client: &kube::Client, ns: &str, kind: &str) -> HashSet<String> {
    dyn_api(client, ns, kind)
        .list_metadata(
            &ListParams::default().labels("app.kubernetes.io/managed-by=compose-ingress"),
        )
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|o| o.metadata.labels?.get("compose-ingress/project").cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes every object compose-ingress owns in `ns` (between modes of a phase).
async fn delete_owned(admin: &kube::Client, ns: &str) {
    for k in ["Ingress", "HTTPRoute", "Service", "Lease"] {
        let _ = dyn_api(admin, ns, k)
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels("app.kubernetes.io/managed-by=compose-ingress"),
            )
            .await;
    }
}

/// A runner pod for a phase, with its sidecar kubeconfig (the ServiceAccount's token).
async fn phase_pod(name: &str) -> (RunnerPod, PathBuf) {
    let b = bed();
    let ns = format!("bench-{name}-{:04x}", (now_ns() as u64 >> 10) & 0xffff);
    let pod = b.runner_pod(&ns, &format!("bench-{name}"));
    let kubeconfig = testbed::sidecar_kubeconfig(b, &pod).await;
    (pod, kubeconfig)
}

/// Deletes a phase's namespace. Its runner Pod is bound to a node without a kubelet, so it would
/// stay Terminating (and the namespace with it): force it, as a kubelet confirming the kill would.
fn delete_namespace(ns: &str) {
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
fn finish_pod(pod: &RunnerPod) {
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

// ------------------------------------------------------------------------------------------------
// Phase 1: event to object

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct E2oResult {
    debounce: String,
    /// From the project's first `start` event to both objects seen through the watch.
    stats: Stats,
    /// From the project's first Docker event (`create`, where the debounce starts) to both
    /// objects, minus the debounce: the sidecar's own overhead plus apiserver and watch delivery.
    beyond_debounce_from_first_event: Stats,
    missing: usize,
    samples_ms: Vec<f64>,
}

async fn phase_e2o(scale: &Scale) -> Vec<E2oResult> {
    let (pod, kubeconfig) = phase_pod("e2o").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let admin = bed().admin().await;
    let seen = Seen::default();
    let watches = ["Service", "Ingress"]
        .map(|k| watch_kind(admin.clone(), pod.namespace.clone(), k, seen.clone()));
    let (events, ev_task) = watch_start_events(docker.clone());
    let mut results = Vec::new();
    for (tag, debounce) in [("d300", "300ms"), ("d0", "0s")] {
        say(format!(
            "e2o: {} compositions, --debounce {debounce}",
            scale.e2o_n
        ));
        let side = Sidecar::start_with_kubeconfig(
            &SIDECAR,
            &pod,
            &kubeconfig,
            &["--debounce", debounce],
            &format!("sidecar-{tag}"),
        );
        wait_ready(&side, Duration::from_secs(60)).await;
        let projects: Vec<String> = (0..scale.e2o_n)
            .map(|i| format!("e2o-{tag}-{i:04}"))
            .collect();
        for p in &projects {
            create_composition(&docker, p, &["web"], "benchnet0", &pod.ip, &[]).await;
            start_composition(&docker, p, &["web"]).await;
            // Compositions arrive one after another, ~5 per second (each is measured alone).
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let done = || {
            projects
                .iter()
                .all(|p| seen.get("Service", p).is_some() && seen.get("Ingress", p).is_some())
        };
        while !done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut samples = Vec::new();
        let mut beyond = Vec::new();
        let mut missing = 0;
        let debounce_ms = if tag == "d300" { 300.0 } else { 0.0 };
        for p in &projects {
            let start = events.first.lock().expect("lock").get(p).copied();
            let first = events.first_any.lock().expect("lock").get(p).copied();
            match (start, first, seen.get("Service", p), seen.get("Ingress", p)) {
                (Some(s), Some(f), Some(a), Some(b)) => {
                    samples.push((a.max(b) - s) as f64 / 1e6);
                    beyond.push((a.max(b) - f) as f64 / 1e6 - debounce_ms);
                }
                _ => missing += 1,
            }
        }
        let st = stats(&samples);
        let bd = stats(&beyond);
        say(format!(
            "e2o {debounce}: {st:?}, beyond debounce from first event {bd:?}, missing {missing}"
        ));
        results.push(E2oResult {
            debounce: debounce.to_string(),
            stats: st,
            beyond_debounce_from_first_event: bd,
            missing,
            samples_ms: samples,
        });
        side.stop();
        for p in &projects {
            remove_composition(&docker, p, &["web"]).await;
        }
        // The next sidecar must not start with these as orphans to GC (its start-up GC would
        // hold up the first compositions it measures): delete them as an admin.
        delete_owned(&admin, &pod.namespace).await;
    }
    ev_task.abort();
    watches.iter().for_each(|w| w.abort());
    remove_all(&docker).await;
    finish_pod(&pod);
    results
}

// ------------------------------------------------------------------------------------------------
// Phase 2: time to routable vs number of existing routes (Ingress and HTTPRoute)

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RoutableResult {
    api: String,
    existing: usize,
    stats: Stats,
    failed: usize,
    samples_ms: Vec<f64>,
}

/// Creates filler routes `filler-<i>` for i in from..to in `ns` (the phase pod's namespace), of
/// `kind`, each routing a host of its own to the dummy Service (which selects the pod, so it has
/// an endpoint and Traefik builds a router for every filler).
async fn create_fillers(admin: &kube::Client, ns: &str, kind: &str, from: usize, to: usize) {
    let api = dyn_api(admin, ns, kind);
    futures::stream::iter(from..to)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            async move {
                let host = format!("filler-{i}.filler.example.com");
                let name = format!("filler-{i}");
                let obj = if kind == "Ingress" {
                    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                      "metadata": {"name": name, "labels": {"bench": "filler"}},
                      "spec": {"ingressClassName": "traefik", "rules": [{"host": host, "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "dummy", "port": {"number": 80}}}}]}}]}})
                } else {
                    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                      "metadata": {"name": name, "labels": {"bench": "filler"}},
                      "spec": {"parentRefs": [{"name": bed().get("GATEWAY_NAME"), "namespace": bed().get("GATEWAY_NAMESPACE")}],
                        "hostnames": [host], "rules": [{"backendRefs": [{"name": "dummy", "port": 80}]}]}})
                };
                let obj: DynamicObject = serde_json::from_value(obj).expect("filler object");
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => panic!("create filler {kind} {i}: {e}"),
                }
            }
        })
        .await;
}

async fn prepare_filler_ns(admin: &kube::Client, pod: &RunnerPod) {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dummy"},
        "spec": {"selector": {"statefulset.kubernetes.io/pod-name": pod.name},
                 "ports": [{"port": 80, "targetPort": 9}]}});
    let api = dyn_api(admin, &pod.namespace, "Service");
    let _ = api.delete("dummy", &DeleteParams::default()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.create(
        &PostParams::default(),
        &serde_json::from_value(svc).expect("svc"),
    )
    .await
    .expect("create dummy Service");
}

async fn delete_fillers(admin: &kube::Client, ns: &str, kind: &str) {
    let api = dyn_api(admin, ns, kind);
    let _ = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("bench=filler"),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let n = api
            .list_metadata(&ListParams::default().labels("bench=filler"))
            .await
            .map(|l| l.items.len())
            .unwrap_or(1);
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the bed's Traefik reports at least `n` HTTP routers (its API), bounded.
async fn wait_traefik_routers(n: usize, deadline: Duration) -> usize {
    let admin_addr = bed()
        .get("TRAEFIK_ADMIN")
        .trim_start_matches("http://")
        .to_string();
    let start = Instant::now();
    let mut last = 0;
    while start.elapsed() < deadline {
        if let Some((200, body)) = http_get(
            &admin_addr,
            "localhost",
            "/api/overview",
            Duration::from_secs(5),
        )
        .await
        {
            last = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["http"]["routers"]["total"].as_u64())
                .unwrap_or(0) as usize;
            if last >= n {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last
}

fn compose_file(
    pod: &RunnerPod,
    project: &str,
    host_label: &str,
    traefik_host: Option<&str>,
) -> PathBuf {
    let mut labels = format!(
        "      compose-ingress.enable: \"true\"\n      compose-ingress.host: \"{host_label}\"\n"
    );
    if let Some(h) = traefik_host {
        labels.push_str(&format!(
            "      traefik.enable: \"true\"\n      traefik.http.routers.{project}.rule: \"Host(`{h}`)\"\n      traefik.http.services.{project}.loadbalancer.server.port: \"80\"\n"
        ));
    }
    let yaml = format!(
        "services:\n  web:\n    image: {}\n    command: [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n    ports: [\"{}::80\"]\n    labels:\n{labels}networks:\n  default:\n    name: benchnet0\n    external: true\n",
        bed().get("TEST_IMAGE"),
        pod.ip
    );
    let path = pod.dir.join(format!("{project}.compose.yml"));
    std::fs::write(&path, yaml).expect("write compose file");
    path
}

/// `docker-compose-v2 -p P -f F up -d`; returns when it returns.
fn compose_up(pod: &RunnerPod, project: &str, file: &Path) {
    let out = Command::new(bed().get("COMPOSE_V2"))
        .env("DOCKER_HOST", &pod.docker_host)
        .args(["-p", project, "-f"])
        .arg(file)
        .args(["up", "-d", "--quiet-pull"])
        .output()
        .expect("run docker-compose-v2");
    assert!(
        out.status.success(),
        "compose up {project} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `addr` with Host `host` every 10 ms until HTTP 200; the time it took, or None.
async fn until_200(addr: &str, host: &str, start: Instant, limit: Duration) -> Option<f64> {
    while start.elapsed() < limit {
        if let Some((200, _)) = http_get(addr, host, "/", Duration::from_secs(2)).await {
            return Some(start.elapsed().as_secs_f64() * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

async fn phase_routable(scale: &Scale) -> Vec<RoutableResult> {
    let (pod, kubeconfig) = phase_pod("routable").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let admin = bed().admin().await;
    // "N existing routes" is only true on a bed without other routes: Traefik builds routers for
    // every namespace, so leftovers of an interrupted run or of tests would skew every point.
    // (The smoke run in ./test comes after the integration tests, whose routes it tolerates.)
    for kind in ["Ingress", "HTTPRoute"] {
        let all: Api<DynamicObject> = Api::all_with(admin.clone(), &resource(kind));
        let others = all
            .list_metadata(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("routable: cannot list the bed's {kind} objects: {e}"))
            .items
            .len();
        say(format!(
            "routable: {others} {kind} objects of others on the bed"
        ));
        assert!(
            others == 0 || scale.smoke,
            "routable: {others} {kind} objects already exist on the bed (an interrupted run or \
             tests left them): delete their namespaces, or start from a fresh bed \
             (tests/testbed/down.sh), and run again"
        );
    }
    prepare_filler_ns(&admin, &pod).await;
    let traefik = bed()
        .get("TRAEFIK_WEB")
        .trim_start_matches("http://")
        .to_string();
    let mut results = Vec::new();
    for api in ["ingress", "gateway"] {
        let kind = if api == "ingress" {
            "Ingress"
        } else {
            "HTTPRoute"
        };
        let gw = format!(
            "{}/{}",
            bed().get("GATEWAY_NAMESPACE"),
            bed().get("GATEWAY_NAME")
        );
        let mut flags = vec!["--route-api", api];
        if api == "gateway" {
            flags.extend(["--gateway", gw.as_str()]);
        }
        let side = Sidecar::start_with_kubeconfig(
            &SIDECAR,
            &pod,
            &kubeconfig,
            &flags,
            &format!("sidecar-{api}"),
        );
        wait_ready(&side, Duration::from_secs(60)).await;
        let mut have = 0;
        for &level in &scale.routable_levels {
            if level > have {
                say(format!("routable/{api}: creating fillers {have}..{level}"));
                create_fillers(&admin, &pod.namespace, kind, have, level).await;
                have = level;
                // Traefik has taken the fillers in when it routes the last one (its endpoint, the
                // pod IP on a closed port, answers 502 instead of the 404 of an unknown host).
                let last = format!("filler-{}.filler.example.com", level - 1);
                let t = Instant::now();
                let mut routed = false;
                while t.elapsed() < Duration::from_secs(180) && !routed {
                    let code = http_get(&traefik, &last, "/", Duration::from_secs(5)).await;
                    routed = code.is_some_and(|(c, _)| c != 404);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                say(format!(
                    "routable/{api}: Traefik routes the fillers after {:?} (routed: {routed}; {} routers)",
                    t.elapsed(),
                    wait_traefik_routers(0, Duration::from_secs(5)).await
                ));
            }
            let mut samples = Vec::new();
            let mut failed = 0;
            for k in 0..scale.routable_samples {
                let project = format!("rt-{api}-{level}-{k}");
                let host_label = format!("{project}-{}", pod.name);
                let file = compose_file(&pod, &project, &host_label, None);
                compose_up(&pod, &project, &file);
                let t0 = Instant::now();
                let host = format!("{host_label}.{DOMAIN}");
                match until_200(&traefik, &host, t0, Duration::from_secs(60)).await {
                    Some(ms) => samples.push(ms),
                    None => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let st = stats(&samples);
            say(format!(
                "routable/{api} with {level} existing: {st:?} failed {failed}"
            ));
            results.push(RoutableResult {
                api: api.to_string(),
                existing: level,
                stats: st,
                failed,
                samples_ms: samples,
            });
        }
        side.stop();
        remove_all(&docker).await;
        delete_fillers(&admin, &pod.namespace, kind).await;
        // The stopped sidecar leaves its objects (cleanup never); delete them for the next mode.
        delete_owned(&admin, &pod.namespace).await;
    }
    finish_pod(&pod);
    results
}

// ------------------------------------------------------------------------------------------------
// Phase 6: side by side with Traefik's own Docker provider (in the pod's network namespace)

#[derive(Debug, serde::Serialize)]
struct SideResult {
    compose_ingress: Stats,
    traefik_docker: Stats,
    ratio_p50: f64,
    ratio_p99: f64,
    failed_compose_ingress: usize,
    failed_traefik_docker: usize,
    traefik_docker_rss_mib: f64,
    traefik_bed_rss_mib: f64,
    sidecar_rss_mib: f64,
}

async fn phase_side(scale: &Scale) -> SideResult {
    let (pod, kubeconfig) = phase_pod("side").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let netns = pod.dir.join("env");
    let netns = std::fs::read_to_string(netns)
        .ok()
        .and_then(|t| testbed::parse_env(&t).get("NETNS").cloned())
        .expect("pod NETNS");
    let web = format!("{}:18100", pod.ip);
    let ping = format!("{}:18180", pod.ip);
    let sock = pod.docker_host.trim_start_matches("unix://").to_string();
    let tlog = pod.dir.join("traefik-docker.log");
    // Same throttle as the bed's Traefik (100 ms); Traefik's default would be 2 s.
    let traefik = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg(Path::new(bed().get("BIN")).join("traefik"))
        .args([
            "--providers.docker=true".to_string(),
            format!("--providers.docker.endpoint=unix://{sock}"),
            "--providers.docker.exposedbydefault=false".to_string(),
            "--providers.providersthrottleduration=100ms".to_string(),
            format!("--entrypoints.web.address={web}"),
            format!("--entrypoints.traefik.address={ping}"),
            "--ping=true".to_string(),
            "--log.level=INFO".to_string(),
            "--global.checknewversion=false".to_string(),
            "--global.sendanonymoususage=false".to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&tlog).expect("traefik log"))
        .spawn()
        .expect("start Traefik (docker provider) in the pod's netns");
    let traefik = Proc(traefik);
    let start = Instant::now();
    while http_get(&ping, "localhost", "/ping", Duration::from_secs(1))
        .await
        .map(|r| r.0)
        != Some(200)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Traefik (docker provider) did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let side = Sidecar::start_with_kubeconfig(&SIDECAR, &pod, &kubeconfig, &[], "sidecar-side");
    wait_ready(&side, Duration::from_secs(60)).await;
    let bed_traefik = bed()
        .get("TRAEFIK_WEB")
        .trim_start_matches("http://")
        .to_string();
    let (mut a, mut b, mut fa, mut fb) = (Vec::new(), Vec::new(), 0, 0);
    for k in 0..scale.side_samples {
        let project = format!("side-{k}");
        let host_a = format!("{project}-{}", pod.name);
        let host_b = format!("{project}.docker.example.com");
        let file = compose_file(&pod, &project, &host_a, Some(&host_b));
        compose_up(&pod, &project, &file);
        let t0 = Instant::now();
        let host_a = format!("{host_a}.{DOMAIN}");
        let (ra, rb) = tokio::join!(
            until_200(&bed_traefik, &host_a, t0, Duration::from_secs(60)),
            until_200(&web, &host_b, t0, Duration::from_secs(60)),
        );
        match ra {
            Some(ms) => a.push(ms),
            None => fa += 1,
        }
        match rb {
            Some(ms) => b.push(ms),
            None => fb += 1,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let bed_pid: u32 =
        std::fs::read_to_string(Path::new(bed().get("TESTBED_DIR")).join("traefik.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
    let (sa, sb) = (stats(&a), stats(&b));
    let result = SideResult {
        ratio_p50: sa.p50_ms / sb.p50_ms,
        ratio_p99: sa.p99_ms / sb.p99_ms,
        compose_ingress: sa,
        traefik_docker: sb,
        failed_compose_ingress: fa,
        failed_traefik_docker: fb,
        traefik_docker_rss_mib: proc_status_kib(traefik.pid(), "VmRSS:") as f64 / 1024.0,
        traefik_bed_rss_mib: proc_status_kib(bed_pid, "VmRSS:") as f64 / 1024.0,
        sidecar_rss_mib: proc_status_kib(side.pid(), "VmRSS:") as f64 / 1024.0,
    };
    say(format!("side by side: {result:?}"));
    side.stop();
    traefik.stop();
    remove_all(&docker).await;
    finish_pod(&pod);
    result
}

// ------------------------------------------------------------------------------------------------
// Phase 3: burst

#[derive(Debug, serde::Serialize)]
struct BurstResult {
    compositions: usize,
    containers_started: usize,
    all_exposed_ms: Option<f64>,
    writes: BTreeMap<String, usize>,
    route_and_service_writes_per_composition: f64,
    docker_start_events_seen_by_bench: usize,
    docker_start_events_seen_by_sidecar: f64,
    docker_events_dropped: f64,
    sidecar_cost_after: Cost,
}

async fn phase_burst(scale: &Scale) -> BurstResult {
    let (pod, kubeconfig) = phase_pod("burst").await;
    let docker = pod.docker();
    ensure_networks(&docker, 1).await;
    let admin = bed().admin().await;
    let services = ["web", "api", "docs"];
    let n = scale.burst_compositions;
    let projects: Vec<String> = (0..n).map(|i| format!("burst-{i:03}")).collect();
    say(format!(
        "burst: creating {n} compositions x 3 services (not started)"
    ));
    futures::stream::iter(&projects)
        .for_each_concurrent(8, |p| {
            create_composition(&docker, p, &services, "benchnet0", &pod.ip, &[])
        })
        .await;
    let side = Sidecar::start_with_kubeconfig(&SIDECAR, &pod, &kubeconfig, &[], "sidecar-burst");
    wait_ready(&side, Duration::from_secs(60)).await;
    let (events, ev_task) = watch_start_events(docker.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let offset = audit_offset();
    let before = metric(
        &side.listen,
        "compose_ingress_docker_events_total{action=\"start\"}",
    )
    .await;
    let before = if before.is_nan() { 0.0 } else { before };
    say("burst: starting every container at once");
    let t0 = Instant::now();
    let names: Vec<(String, &str)> = projects
        .iter()
        .flat_map(|p| services.iter().map(move |s| (p.clone(), *s)))
        .collect();
    futures::stream::iter(&names)
        .for_each_concurrent(64, |(p, s)| {
            start_composition(&docker, p, std::slice::from_ref(s))
        })
        .await;
    let started_in = t0.elapsed();
    say(format!(
        "burst: docker started {} containers in {started_in:?}",
        names.len()
    ));
    // All exposed: every composition has an Ingress with 3 hosts and a Service with 3 ports.
    let ing_api = dyn_api(&admin, &pod.namespace, "Ingress");
    let svc_api = dyn_api(&admin, &pod.namespace, "Service");
    let mut all_exposed = None;
    while t0.elapsed() < Duration::from_secs(300) {
        let lp = ListParams::default().labels("app.kubernetes.io/managed-by=compose-ingress");
        let (ings, svcs) = (ing_api.list(&lp).await, svc_api.list(&lp).await);
        if let (Ok(ings), Ok(svcs)) = (ings, svcs) {
            let full_ing = ings
                .items
                .iter()
                .filter(|o| o.data["spec"]["rules"].as_array().map(|r| r.len()) == Some(3))
                .count();
            let full_svc = svcs
                .items
                .iter()
                .filter(|o| o.data["spec"]["ports"].as_array().map(|r| r.len()) == Some(3))
                .count();
            if full_ing == n && full_svc == n {
                all_exposed = Some(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    say(format!("burst: all exposed after {all_exposed:?} ms"));
    // Let stragglers (retries, events) land, then count from the apiserver's side.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let writes = audit_writes(offset, &pod.namespace);
    let route_writes: usize = writes
        .iter()
        .filter(|(k, _)| k.contains(" services") || k.contains(" ingresses"))
        .map(|(_, v)| v)
        .sum();
    let after = metric(
        &side.listen,
        "compose_ingress_docker_events_total{action=\"start\"}",
    )
    .await;
    let seen_by_sidecar = after - before;
    let bench_seen = *events.count.lock().expect("lock");
    let cost = measure_cost(
        side.pid(),
        Duration::from_secs(if scale.smoke { 1 } else { 5 }),
    )
    .await;
    let result = BurstResult {
        compositions: n,
        containers_started: names.len(),
        all_exposed_ms: all_exposed,
        route_and_service_writes_per_composition: route_writes as f64 / n as f64,
        writes,
        docker_start_events_seen_by_bench: bench_seen,
        docker_start_events_seen_by_sidecar: seen_by_sidecar,
        docker_events_dropped: names.len() as f64 - seen_by_sidecar,
        sidecar_cost_after: cost,
    };
    say(format!("burst: {result:?}"));
    ev_task.abort();
    side.stop();
    remove_all(&docker).await;
    finish_pod(&pod);
    result
}

// ------------------------------------------------------------------------------------------------
// Phases 4 and 5: restart with live compositions and orphans; cost idle and at scale

#[derive(Debug, serde::Serialize)]
struct RestartResult {
    live: usize,
    orphans: usize,
    ready_after_restart_ms: f64,
    converged_ms: Option<f64>,
    writes: BTreeMap<String, usize>,
    writes_to_unchanged_objects: usize,
    orphans_left: usize,
}

#[derive(Debug, serde::Serialize)]
struct CostResult {
    idle: Cost,
    at_restart_live: Cost,
    compositions: usize,
    exposed_in_ms: Option<f64>,
    at_scale: Cost,
    binary_bytes: u64,
    static_binary_bytes: Option<u64>,
}

async fn start_many(
    docker: &Docker,
    projects: &[String],
    pod_ip: &str,
    net_of: impl Fn(usize) -> String,
) {
    futures::stream::iter(projects.iter().enumerate())
        .for_each_concurrent(6, |(i, p)| {
            let net = net_of(i);
            async move {
                create_composition(docker, p, &["web"], &net, pod_ip, &[]).await;
                start_composition(docker, p, &["web"]).await;
            }
        })
        .await;
}

async fn wait_count(admin: &kube::Client, ns: &str, want: usize, limit: Duration) -> Option<f64> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if count_owned(admin, ns, "Ingress").await == want
            && count_owned(admin, ns, "Service").await == want
        {
            return Some(t0.elapsed().as_secs_f64() * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn phase_restart_and_cost(scale: &Scale) -> (RestartResult, CostResult) {
    let (pod, kubeconfig) = phase_pod("scale").await;
    let docker = pod.docker();
    ensure_networks(&docker, 2).await;
    let admin = bed().admin().await;
    let ns = pod.namespace.clone();
    let first = Sidecar::start_with_kubeconfig(&SIDECAR, &pod, &kubeconfig, &[], "sidecar-1");
    wait_ready(&first, Duration::from_secs(60)).await;
    say("cost: idle sidecar (no compositions)");
    let idle = measure_cost(
        first.pid(),
        Duration::from_secs(if scale.smoke { 2 } else { 20 }),
    )
    .await;
    let total = scale.restart_live + scale.restart_orphans;
    // The first `total` start before the restart (the last `restart_orphans` of them are removed
    // while the sidecar is down); the rest top the live ones up to `cost_compositions`.
    let more = scale.cost_compositions.saturating_sub(scale.restart_live);
    let projects: Vec<String> = (0..total + more).map(|i| format!("c{i:04}")).collect();
    let half = 1000; // at most 1000 containers per bridge network (a bridge holds 1023 ports)
    say(format!("restart: starting {total} compositions"));
    start_many(&docker, &projects[..total], &pod.ip, |i| {
        format!("benchnet{}", i / half)
    })
    .await;
    let got = wait_count(&admin, &ns, total, Duration::from_secs(300)).await;
    say(format!(
        "restart: {total} exposed ({got:?} ms after the last start)"
    ));
    first.stop();
    let orphans: Vec<String> = projects[scale.restart_live..total].to_vec();
    for p in &orphans {
        remove_composition(&docker, p, &["web"]).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let offset = audit_offset();
    let t0 = Instant::now();
    let second = Sidecar::start_with_kubeconfig(&SIDECAR, &pod, &kubeconfig, &[], "sidecar-2");
    let ready = wait_ready(&second, Duration::from_secs(300)).await;
    let orphan_set: HashSet<String> = orphans.iter().cloned().collect();
    let mut converged = None;
    while t0.elapsed() < Duration::from_secs(300) {
        let mut any = false;
        for k in ["Service", "Ingress", "Lease"] {
            any |= owned_projects(&admin, &ns, k)
                .await
                .iter()
                .any(|p| orphan_set.contains(p));
        }
        if !any && count_owned(&admin, &ns, "Ingress").await == scale.restart_live {
            converged = Some(t0.elapsed().as_secs_f64() * 1e3);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let writes = audit_writes(offset, &ns);
    let unchanged: usize = writes
        .iter()
        .filter(|(k, _)| !k.starts_with("delete") && !k.contains(" events"))
        .map(|(_, v)| v)
        .sum();
    let mut orphans_left = 0;
    for k in ["Service", "Ingress", "Lease"] {
        orphans_left += owned_projects(&admin, &ns, k)
            .await
            .iter()
            .filter(|p| orphan_set.contains(*p))
            .count();
    }
    let restart = RestartResult {
        live: scale.restart_live,
        orphans: scale.restart_orphans,
        ready_after_restart_ms: ready.as_secs_f64() * 1e3,
        converged_ms: converged,
        writes,
        writes_to_unchanged_objects: unchanged,
        orphans_left,
    };
    say(format!("restart: {restart:?}"));
    let at_restart_live = measure_cost(
        second.pid(),
        Duration::from_secs(if scale.smoke { 2 } else { 10 }),
    )
    .await;

    // Cost at scale: top up to `cost_compositions` live compositions.
    let target = scale.restart_live + more;
    let extra: Vec<String> = projects[total..].to_vec();
    say(format!(
        "cost: starting {} more compositions (to {target})",
        extra.len()
    ));
    start_many(&docker, &extra, &pod.ip, |i| {
        format!("benchnet{}", (i + total) / half)
    })
    .await;
    let exposed_in = wait_count(&admin, &ns, target, Duration::from_secs(600)).await;
    say(format!(
        "cost: {target} exposed ({exposed_in:?} ms after the last start)"
    ));
    tokio::time::sleep(Duration::from_secs(if scale.smoke { 1 } else { 5 })).await;
    let at_scale = measure_cost(
        second.pid(),
        Duration::from_secs(if scale.smoke { 2 } else { 30 }),
    )
    .await;
    let bin = std::fs::metadata(env!("CARGO_BIN_EXE_compose-ingress"))
        .map(|m| m.len())
        .unwrap_or(0);
    let static_bin = std::fs::metadata(testbed::repo_root().join("target/static/compose-ingress"))
        .ok()
        .map(|m| m.len());
    let cost = CostResult {
        idle,
        at_restart_live,
        compositions: target,
        exposed_in_ms: exposed_in,
        at_scale,
        binary_bytes: bin,
        static_binary_bytes: static_bin,
    };
    say(format!("cost: {cost:?}"));
    second.stop();
    say("scale: removing containers");
    remove_all(&docker).await;
    finish_pod(&pod);
    (restart, cost)
}

// ------------------------------------------------------------------------------------------------
// Plots and report

fn load_font() {
    use plotters::style::FontStyle;
    for path in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ] {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return;
            }
        }
    }
    say("WARNING: no DejaVuSans.ttf found; plots will have no text");
}

fn plot_routable(
    results: &[RoutableResult],
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = results
        .iter()
        .map(|r| r.existing)
        .max()
        .unwrap_or(0)
        .max(100) as f64
        * 1.05;
    // Log scale: the medians are ~100 ms, a controller backlog can put a p99 at seconds.
    let ymax = results
        .iter()
        .map(|r| r.stats.p99_ms)
        .fold(1000.0, f64::max)
        * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Time to routable after `docker-compose up -d` returns (Traefik)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..xmax, (20f64..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("existing routes of the same kind in the cluster")
        .y_desc("milliseconds (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 15))
        .draw()?;
    let series = [
        ("ingress", "Ingress", RGBColor(31, 119, 180)),
        ("gateway", "HTTPRoute", RGBColor(214, 39, 40)),
    ];
    for (api, label, color) in series {
        let rs: Vec<&RoutableResult> = results
            .iter()
            .filter(|r| r.api == api && r.stats.n > 0)
            .collect();
        if rs.is_empty() {
            continue;
        }
        for (which, dashed) in [("p50", false), ("p99", true)] {
            let pts: Vec<(f64, f64)> = rs
                .iter()
                .map(|r| {
                    (
                        r.existing as f64,
                        if which == "p50" {
                            r.stats.p50_ms
                        } else {
                            r.stats.p99_ms
                        },
                    )
                })
                .collect();
            let style = if dashed {
                color.mix(0.5).stroke_width(2)
            } else {
                color.stroke_width(3)
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))?
                .label(format!("{label} {which}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_e2o(results: &[E2oResult], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = results.iter().map(|r| r.stats.max_ms).fold(50.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Docker `start` event to Service + Ingress seen by a watch (CDF)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..xmax, 0f64..1.0f64)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("fraction of compositions")
        .label_style(("sans-serif", 15))
        .draw()?;
    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
    for (r, color) in results.iter().zip(colors) {
        let mut v = r.samples_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len().max(1) as f64;
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(i, x)| (*x, (i + 1) as f64 / n))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(3)))?
            .label(format!(
                "--debounce {} (p99 {:.0} ms)",
                r.debounce, r.stats.p99_ms
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    json!({
        "cpu": cpu,
        "nproc": run("nproc", &[]),
        "free_g": run("free", &["-g"]),
        "kernel": run("uname", &["-r"]),
        "docker_engine": run("dockerd", &["--version"]),
    })
}

fn main() {
    // The phases are one large future; give it room (the main thread's 8 MiB is not enough).
    std::thread::Builder::new()
        .name("bench".into())
        .stack_size(256 << 20)
        .spawn(run)
        .expect("spawn the bench thread")
        .join()
        .expect("the bench failed");
}

fn run() {
    let args = parse_args();
    say(format!(
        "output: {} (smoke: {})",
        args.out.display(),
        args.scale.smoke
    ));
    load_font();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let b: &Bed = bed();
        say(format!("test bed up ({})", b.dir.display()));
        let path = args.out.join("results.json");
        let mut results: serde_json::Map<String, Value> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        results.insert("machine".into(), machine());
        let save = |results: &serde_json::Map<String, Value>| {
            std::fs::write(&path, serde_json::to_string_pretty(results).expect("json"))
                .expect("write results.json");
        };
        let only = |p: &str| args.only.iter().any(|o| o == p);
        if only("replot") {
            // Redraw the plots from results.json (no measurement).
            let get = |k: &str| results.get(k).cloned().unwrap_or(Value::Null);
            if let Ok(r) = serde_json::from_value::<Vec<E2oResult>>(get("event_to_object")) {
                plot_e2o(&r, &args.out.join("event_to_object.png")).expect("plot e2o");
            }
            if let Ok(r) = serde_json::from_value::<Vec<RoutableResult>>(get("time_to_routable")) {
                plot_routable(&r, &args.out.join("time_to_routable.png")).expect("plot routable");
            }
            say("plots redrawn");
            return;
        }
        if only("e2o") {
            let r = phase_e2o(&args.scale).await;
            if let Err(e) = plot_e2o(&r, &args.out.join("event_to_object.png")) {
                say(format!("plot e2o: {e}"));
            }
            results.insert("event_to_object".into(), json!(r));
            save(&results);
        }
        if only("routable") {
            let r = phase_routable(&args.scale).await;
            if let Err(e) = plot_routable(&r, &args.out.join("time_to_routable.png")) {
                say(format!("plot routable: {e}"));
            }
            results.insert("time_to_routable".into(), json!(r));
            save(&results);
        }
        if only("side") {
            let r = phase_side(&args.scale).await;
            results.insert("side_by_side".into(), json!(r));
            save(&results);
        }
        if only("burst") {
            let r = phase_burst(&args.scale).await;
            results.insert("burst".into(), json!(r));
            save(&results);
        }
        if only("restart") {
            let (r, c) = phase_restart_and_cost(&args.scale).await;
            results.insert("restart".into(), json!(r));
            results.insert("cost".into(), json!(c));
            save(&results);
        }
        say(format!("results in {}", path.display()));
    });
}
