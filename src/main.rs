//! Wiring only: flags -> config -> tasks (Docker watcher, reconciler, HTTP) -> shutdown.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use compose_ingress::cluster::Cluster;
use compose_ingress::config::{Args, CleanupOnExit, Config};
use compose_ingress::docker::DockerClient;
use compose_ingress::events;
use compose_ingress::model::{DryRun, RateLimitMode, RouteApi};
use compose_ingress::proxy::PodProxy;
use compose_ingress::reconcile::{Proxy, Reconciler, delete_all_owned};
use compose_ingress::status::Status;
use compose_ingress::{
    gateway_listener, kube_client, lease_watch, logging, pod_route, probe_socket, retry, routable,
    shutdown, telemetry,
};

// One thread runs every task. The sidecar's work is I/O: a serial reconciler, one Docker event
// reader, a few HTTP requests; a worker per core (tokio's default, 64 on a big node without a CPU
// limit) buys nothing here and costs memory: glibc gives each thread that allocates its own malloc
// arena, and the peaks of a start-up resync stay fragmented across them (BENCHMARKS.md, "Cost").
fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("compose-ingress: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(sidecar_main());
    // The shutdown is bounded by --shutdown-timeout (see `shut_down`): whatever still runs then
    // (a task, a blocking DNS lookup of the HTTP client) must not hold the exit. Dropping the
    // runtime would wait for blocking threads without a bound; this does not wait.
    runtime.shutdown_background();
    code
}

async fn sidecar_main() -> ExitCode {
    // `compose-ingress wait|urls ...`: the CI job's commands, not the sidecar.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if matches!(argv.get(1).and_then(|a| a.to_str()), Some("wait" | "urls")) {
        return compose_ingress::cli::run(argv).await;
    }
    // `compose-ingress probe healthz|readyz`: the kubelet's exec probe, asking the sidecar.
    if argv.get(1).and_then(|a| a.to_str()) == Some("probe") {
        return compose_ingress::probe_socket::ask(&argv[2..]).await;
    }
    let config = match Args::try_parse() {
        Ok(args) => match args.validate() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("compose-ingress: invalid configuration: {e}");
                return ExitCode::from(2);
            }
        },
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, whatever clap's multi-line rendering is, so that logs stay greppable.
            let text = e.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("For more information")
                        && !l.starts_with("Usage:")
                })
                .collect();
            eprintln!(
                "compose-ingress: invalid configuration: {} (see --help)",
                line.join(" ").trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    logging::init(config.log_format);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    // Pod scope with --no-kubernetes: no client, no token, nothing written to the apiserver.
    let cluster = match config.kubernetes {
        true => {
            let client = kube_client::client(config.api_timeout).await?;
            let settings = &config.settings;
            Some(
                Cluster::new(
                    client,
                    &settings.namespace,
                    &settings.pod_name,
                    config.dry_run,
                )
                .with_middlewares(settings.rate_limit == RateLimitMode::TraefikMiddleware),
            )
        }
        false => None,
    };
    let settings = config.settings.clone();
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));

    // The HTTP endpoints come first: /healthz answers while start-up waits for the apiserver.
    let status = Arc::new(Status::default());
    let listener = telemetry::bind(config.listen).await?;
    let probe_socket = match &config.probe_socket {
        Some(path) => Some(probe_socket::bind(path)?),
        None => None,
    };
    let info = telemetry::ServerInfo {
        namespace: settings.namespace.clone(),
        pod: settings.pod_name.clone(),
        heartbeat_stale: config.heartbeat_stale,
        probe: config.probe.clone().map(|(addr, base)| routable::Probe {
            addr,
            base,
            domain: settings.domain.clone(),
        }),
        node_ip: config.host_ip,
    };
    let mut last = Vec::new();
    if let Some(socket) = probe_socket {
        let probes = probe_socket::serve(
            socket,
            status.clone(),
            Arc::new(info.clone()),
            cancel.clone(),
        );
        last.push(("probe-socket", tokio::spawn(probes)));
    }
    let server = tokio::spawn(telemetry::serve(
        listener,
        status.clone(),
        info,
        cancel.clone(),
    ));
    last.push(("http-server", server));
    // Pod scope: the proxy listens from the start too (503 until the first listing).
    let publisher = match &config.proxy {
        Some(proxy) => {
            let proxy = PodProxy::bind(proxy, &settings, status.clone()).await?;
            let port = proxy.port();
            let (serving, publisher) = proxy.serve(cancel.clone());
            last.push(("proxy", tokio::spawn(serving)));
            Some((publisher, port))
        }
        None => None,
    };

    let identity = match &cluster {
        Some(cluster) => pod_identity(&config, cluster, &cancel)
            .await
            .map(|(uid, ip)| (uid, Some(ip))),
        None => Some((config.pod_uid.clone().unwrap_or_default(), config.pod_ip)),
    };
    let Some((uid, pod_ip)) = identity else {
        info!("stopped before start-up completed");
        shut_down(&config, None, vec![], last).await;
        return Ok(());
    };
    let mut settings = settings;
    settings.pod_ip = pod_ip;
    // Gateway mode: the URLs' scheme is the listener's, before any URL is handed out.
    if let (Some(cluster), RouteApi::Gateway, Some(gateway)) =
        (&cluster, settings.route_api, settings.gateway.as_mut())
    {
        let https = gateway_listener::https_or_warn(
            cluster.client(),
            gateway,
            &settings.namespace,
            &settings.domain,
            &cancel,
        )
        .await;
        gateway.set_https(https);
    }
    for warning in &config.obsolete {
        warn!("{warning}");
    }
    match pod_ip {
        Some(pod_ip) => {
            info!(%pod_ip, "ports published on every IPv4 address of the pod, or on this one, are exposed; endpoints point at this address")
        }
        None => info!(
            "the pod's address is not known (POD_IP): ports published on every address are exposed, dialled on loopback"
        ),
    }
    let owner = config.owner(uid.clone());
    // Events are writes: the pod scope makes none while compositions come and go.
    let poster = match (&cluster, &publisher) {
        (Some(cluster), None) if config.dry_run == DryRun::None => {
            let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
            status.set_event_sink(events_tx);
            Some(tokio::spawn(events::run(
                cluster.client(),
                events::RegardingPod {
                    namespace: settings.namespace.clone(),
                    name: settings.pod_name.clone(),
                    uid,
                },
                status.clone(),
                events::Limits::default(),
                events_rx,
                cancel.clone(),
            )))
        }
        _ => None,
    };
    if let Some(poster) = poster {
        last.insert(0, ("event-poster", poster));
    }
    let Some(docker) = docker_client(&config, &cancel).await else {
        info!("stopped before Docker was reachable");
        shut_down(&config, None, vec![], last).await;
        return Ok(());
    };
    info!(
        namespace = %settings.namespace, pod = %settings.pod_name, domain = %settings.domain,
        route_api = ?settings.route_api, route_scope = ?settings.scope, docker_host = %config.docker_host,
        dry_run = ?config.dry_run, "compose-ingress starting"
    );

    let (hints_tx, hints_rx) = tokio::sync::mpsc::unbounded_channel();
    let metrics = status.clone();
    let watching = docker.clone().watch(
        hints_tx.clone(),
        move |action| metrics.metrics.docker_event_action(action),
        cancel.clone(),
    );
    let watcher = long_lived("docker-watcher", watching, &status, &cancel);
    let mut first = Vec::new();
    let reconciling = match (publisher, &cluster) {
        (Some((publisher, port)), cluster) => {
            if let Some(cluster) = cluster {
                let keeper = pod_route::keep(
                    cluster.clone(),
                    settings.clone(),
                    owner.clone(),
                    port,
                    config.timings.resync_interval,
                    status.clone(),
                    cancel.clone(),
                );
                first.push(long_lived("pod-route", keeper, &status, &cancel));
            }
            let reconciler = Reconciler::for_proxy(
                docker,
                Proxy::fed_by(publisher, pod_ip),
                settings,
                owner,
                config.timings,
                status.clone(),
            );
            long_lived(
                "reconciler",
                reconciler.run(hints_rx, cancel.clone()),
                &status,
                &cancel,
            )
        }
        (None, Some(cluster)) => {
            if config.dry_run != DryRun::Client {
                let lease_watcher = lease_watch::run(
                    cluster.client(),
                    settings.namespace.clone(),
                    hints_tx,
                    lease_watch::watch_seconds(config.api_timeout),
                    cancel.clone(),
                );
                first.push(long_lived("lease-watcher", lease_watcher, &status, &cancel));
            }
            let reconciler = Reconciler::new(
                docker,
                cluster.clone(),
                settings,
                owner,
                config.timings,
                status.clone(),
            );
            long_lived(
                "reconciler",
                reconciler.run(hints_rx, cancel.clone()),
                &status,
                &cancel,
            )
        }
        (None, None) => anyhow::bail!(
            "the composition scope needs the Kubernetes API (--no-kubernetes is for --route-scope pod)"
        ),
    };
    first.insert(0, reconciling);
    first.insert(1, watcher);

    cancel.cancelled().await;
    info!("shutting down: stopped watching Docker");
    shut_down(&config, cluster.as_ref(), first, last).await;
    info!("bye");
    Ok(())
}

/// Everything after the cancellation (SIGTERM), under one deadline (see [`shutdown::bounded`]):
/// the reconciler (which drops its pass at once) and the Docker watcher, then the clean-up at
/// exit (with a cluster), then the Event poster and the HTTP server. Past the deadline one
/// warning names what was still running and the sidecar exits (status 0, as after a completed
/// shutdown: the objects it could not delete go with the pod, through their ownerReferences, or
/// are resynced by the next start when the pod lives on); `main` then drops the runtime without
/// waiting for anything.
async fn shut_down(
    config: &Config,
    cluster: Option<&Cluster>,
    first: Vec<shutdown::Task>,
    last: Vec<shutdown::Task>,
) {
    let timeout = config.timings.shutdown_timeout;
    let step = shutdown::Step::default();
    let cleanup = async {
        if let Some(cluster) = cluster {
            cleanup_on_exit(config, cluster, &step).await;
        }
    };
    if let Err(running) = shutdown::bounded(timeout, first, cleanup, &step, last).await {
        warn!(
            timeout_ms = timeout.as_millis() as u64,
            still_running = ?running,
            "shutdown timed out (--shutdown-timeout): exiting with work still running; the pod's \
             garbage collection removes any objects left behind (the next start resyncs them if \
             the pod lives on)"
        );
    }
}

/// The Docker client. bollard refuses a unix socket that does not exist yet, which is the normal
/// state while dind starts (a native sidecar starts before it): retry with backoff, not ready
/// meanwhile, instead of exiting.
async fn docker_client(config: &Config, cancel: &CancellationToken) -> Option<DockerClient> {
    let mut backoff = retry::backoff(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match DockerClient::new(&config.docker_host, config.settings.expose_plain_containers) {
            Ok(docker) => return Some(docker),
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Docker is not reachable yet; retrying");
                tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = cancel.cancelled() => return None }
            }
        }
    }
}

/// Spawns a long-lived task under `name`, for the shutdown to wait for (see [`report_end`]).
fn long_lived(
    name: &'static str,
    task: impl std::future::Future<Output = ()> + Send + 'static,
    status: &Arc<Status>,
    cancel: &CancellationToken,
) -> shutdown::Task {
    (
        name,
        tokio::spawn(report_end(name, task, status.clone(), cancel.clone())),
    )
}

/// Runs a long-lived task; if it ends before shutdown, `/healthz` reports it (and the kubelet
/// restarts the sidecar).
async fn report_end(
    name: &'static str,
    task: impl std::future::Future<Output = ()>,
    status: Arc<Status>,
    cancel: CancellationToken,
) {
    task.await;
    if !cancel.is_cancelled() {
        error!(
            task = name,
            "a long-running task ended unexpectedly; /healthz now fails"
        );
        status.loop_stopped(name);
    }
}

async fn cancel_on_signal(cancel: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
    cancel.cancel();
}

/// The pod's uid (for ownerReferences) and IPv4 address (the address of its EndpointSlices, and
/// which port bindings it reaches): from the downward API, or read from the API server (retried
/// with backoff: the API server may be briefly unreachable when the pod starts). Nothing is
/// exposed without the address.
async fn pod_identity(
    config: &Config,
    cluster: &Cluster,
    cancel: &CancellationToken,
) -> Option<(String, std::net::Ipv4Addr)> {
    if let (Some(uid), Some(ip)) = (&config.pod_uid, config.pod_ip) {
        return Some((uid.clone(), ip));
    }
    let mut backoff = retry::backoff(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        // A SIGTERM is not held up by a request in flight (the shutdown has its own bound).
        let pod = tokio::select! {
            pod = cluster.own_pod() => pod,
            _ = cancel.cancelled() => return None,
        };
        let problem = match pod {
            Ok(pod) => {
                let uid = config.pod_uid.clone().or(pod.metadata.uid)?;
                let ip = config.pod_ip.or_else(|| {
                    let ips = pod.status.and_then(|s| s.pod_ips).unwrap_or_default();
                    ips.iter().find_map(|ip| ip.ip.parse().ok())
                });
                match ip {
                    Some(ip) => return Some((uid, ip)),
                    None => "this pod has no IPv4 address in its status (IPv6-only pods are not \
                             supported); set POD_IP from the downward API"
                        .to_string(),
                }
            }
            Err(e) => format!(
                "cannot read this pod's uid and IP (set POD_UID and POD_IP from the downward API \
                 to skip this): {e}"
            ),
        };
        let delay = backoff.next().unwrap_or(Duration::from_secs(30));
        warn!(
            retry_in_ms = delay.as_millis() as u64,
            "{problem}; retrying"
        );
        tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = cancel.cancelled() => return None }
    }
}

/// On SIGTERM: delete this pod's objects when the pod itself is terminating (auto), or as the
/// flag forces; a restart of the sidecar alone leaves them in place (no outage for users).
/// Bounded by the shutdown's deadline (see `shut_down`), which reads `step` to name what was
/// under way.
async fn cleanup_on_exit(config: &Config, cluster: &Cluster, step: &shutdown::Step) {
    if config.dry_run == DryRun::Client {
        return;
    }
    let delete = match config.cleanup_on_exit {
        CleanupOnExit::Never => false,
        CleanupOnExit::Always => true,
        CleanupOnExit::Auto => {
            step.set(Some("clean-up at exit: reading this pod"));
            match cluster.own_pod().await {
                Ok(pod) => pod.metadata.deletion_timestamp.is_some(),
                Err(e) if e.status() == Some(404) => {
                    info!("this pod is already gone: the garbage collector removes its objects");
                    false
                }
                Err(e) => {
                    warn!(error = %e, "cannot tell whether this pod is terminating; leaving its objects (the next start resyncs, the pod's deletion garbage-collects them)");
                    false
                }
            }
        }
    };
    if !delete {
        step.set(None);
        info!(cleanup_on_exit = ?config.cleanup_on_exit, "leaving this pod's objects in place");
        return;
    }
    step.set(Some("clean-up at exit: deleting this pod's objects"));
    match delete_all_owned(cluster).await {
        Ok(n) => info!(objects = n, "pod terminating: deleted this pod's objects"),
        Err(e) => {
            warn!(error = %e, "clean-up at exit failed; the pod's garbage collection removes the rest")
        }
    }
    step.set(None);
}
