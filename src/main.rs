//! Wiring only: flags -> config -> tasks (Docker watcher, reconciler, HTTP) -> shutdown.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use compose_ingress::cluster::Cluster;
use compose_ingress::config::{Args, CleanupOnExit, Config, DryRun};
use compose_ingress::docker::DockerClient;
use compose_ingress::events;
use compose_ingress::model::RateLimitMode;
use compose_ingress::reconcile::{Reconciler, delete_all_owned};
use compose_ingress::status::Status;
use compose_ingress::{lease_watch, logging, retry, routable, telemetry};

// One thread runs every task. The sidecar's work is I/O: a serial reconciler, one Docker event
// reader, a few HTTP requests; a worker per core (tokio's default, 64 on a big node without a CPU
// limit) buys nothing here and costs memory: glibc gives each thread that allocates its own malloc
// arena, and the peaks of a start-up resync stay fragmented across them (BENCHMARKS.md, "Cost").
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // `compose-ingress wait|urls ...`: the CI job's commands, not the sidecar.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if matches!(argv.get(1).and_then(|a| a.to_str()), Some("wait" | "urls")) {
        return compose_ingress::cli::run(argv).await;
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
    let client = kube::Client::try_default()
        .await
        .context("cannot configure a Kubernetes client: run in a pod with a ServiceAccount, or set KUBECONFIG")?;
    let settings = config.settings.clone();
    let cluster = Cluster::new(
        client.clone(),
        &settings.namespace,
        &settings.pod_name,
        config.dry_run,
    )
    .with_middlewares(settings.rate_limit == RateLimitMode::TraefikMiddleware);
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));

    // The HTTP endpoints come first: /healthz answers while start-up waits for the apiserver.
    let status = Arc::new(Status::default());
    let listener = telemetry::bind(config.listen).await?;
    let server = tokio::spawn(telemetry::serve(
        listener,
        status.clone(),
        telemetry::ServerInfo {
            namespace: settings.namespace.clone(),
            pod: settings.pod_name.clone(),
            heartbeat_stale: HEARTBEAT_STALE,
            probe: config.probe.clone().map(|(addr, base)| routable::Probe {
                addr,
                base,
                domain: settings.domain.clone(),
            }),
            node_ip: config.host_ip,
        },
        cancel.clone(),
    ));

    let Some((uid, pod_ip)) = pod_identity(&config, &cluster, &cancel).await else {
        info!("stopped before start-up completed");
        let _ = server.await;
        return Ok(());
    };
    let mut settings = settings;
    settings.pod_ip = Some(pod_ip);
    for warning in &config.obsolete {
        warn!("{warning}");
    }
    info!(%pod_ip, "ports published on every IPv4 address of the pod, or on this one, are exposed; endpoints point at this address");
    let owner = config.owner(uid.clone());
    let poster = if config.dry_run == DryRun::None {
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        status.set_event_sink(events_tx);
        Some(tokio::spawn(events::run(
            client.clone(),
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
    } else {
        None
    };
    let Some(docker) = docker_client(&config, &cancel).await else {
        info!("stopped before Docker was reachable");
        if let Some(poster) = poster {
            let _ = poster.await;
        }
        let _ = server.await;
        return Ok(());
    };
    info!(
        namespace = %settings.namespace, pod = %settings.pod_name, domain = %settings.domain,
        route_api = ?settings.route_api, docker_host = %config.docker_host, dry_run = ?config.dry_run,
        "compose-ingress starting"
    );

    let (hints_tx, hints_rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = {
        let status = status.clone();
        let metrics = status.clone();
        tokio::spawn(report_end(
            "docker-watcher",
            docker.clone().watch(
                hints_tx.clone(),
                move |action| metrics.metrics.docker_event_action(action),
                cancel.clone(),
            ),
            status,
            cancel.clone(),
        ))
    };
    let lease_watcher = (config.dry_run != DryRun::Client).then(|| {
        tokio::spawn(report_end(
            "lease-watcher",
            lease_watch::run(
                client.clone(),
                settings.namespace.clone(),
                hints_tx,
                // kube's default read timeout is 295 s.
                lease_watch::watch_seconds(Duration::from_secs(295)),
                cancel.clone(),
            ),
            status.clone(),
            cancel.clone(),
        ))
    });
    let reconciler = Reconciler::new(
        docker,
        cluster.clone(),
        settings,
        owner,
        config.timings,
        status.clone(),
    );
    let reconciling = tokio::spawn(report_end(
        "reconciler",
        reconciler.run(hints_rx, cancel.clone()),
        status.clone(),
        cancel.clone(),
    ));

    cancel.cancelled().await;
    info!("shutting down: stopped watching Docker");
    let _ = reconciling.await;
    let _ = watcher.await;
    if let Some(lease_watcher) = lease_watcher {
        let _ = lease_watcher.await;
    }
    cleanup_on_exit(&config, &cluster).await;
    if let Some(poster) = poster {
        let _ = poster.await;
    }
    let _ = server.await;
    info!("bye");
    Ok(())
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

/// `/healthz` fails when the reconciler loop has not turned for this long (it turns every
/// few seconds when idle; a full resync against a slow apiserver may hold it for a while).
const HEARTBEAT_STALE: Duration = Duration::from_secs(180);

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
        let problem = match cluster.own_pod().await {
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
async fn cleanup_on_exit(config: &Config, cluster: &Cluster) {
    if config.dry_run == DryRun::Client {
        return;
    }
    let delete = match config.cleanup_on_exit {
        CleanupOnExit::Never => false,
        CleanupOnExit::Always => true,
        CleanupOnExit::Auto => match cluster.own_pod().await {
            Ok(pod) => pod.metadata.deletion_timestamp.is_some(),
            Err(e) if e.status() == Some(404) => {
                info!("this pod is already gone: the garbage collector removes its objects");
                false
            }
            Err(e) => {
                warn!(error = %e, "cannot tell whether this pod is terminating; leaving its objects (the next start resyncs, the pod's deletion garbage-collects them)");
                false
            }
        },
    };
    if !delete {
        info!(cleanup_on_exit = ?config.cleanup_on_exit, "leaving this pod's objects in place");
        return;
    }
    match tokio::time::timeout(config.timings.shutdown_timeout, delete_all_owned(cluster)).await {
        Ok(Ok(n)) => info!(objects = n, "pod terminating: deleted this pod's objects"),
        Ok(Err(e)) => {
            warn!(error = %e, "clean-up at exit failed; the pod's garbage collection removes the rest")
        }
        Err(_) => warn!(
            timeout_ms = config.timings.shutdown_timeout.as_millis() as u64,
            "clean-up at exit timed out; the pod's garbage collection removes the rest"
        ),
    }
}
