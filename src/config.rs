//! Flags with environment fallbacks, and their validation into the settings every other module
//! uses. A bad flag fails at start-up with one line naming the flag, the value and the fix,
//! before anything is touched (exit code 2).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::model::{
    AccessPolicies, Cidr, DryRun, GatewayRef, OwnerPod, PlanSettings, RateLimitMode, RouteApi,
    RouteScope,
};
use crate::naming;

/// What `--help` adds after the flags: a CI job needs these two commands of the same binary, and
/// the flags above are the sidecar's, not the job's (src/cli.rs).
const JOB_COMMANDS: &str = "\
Commands for a CI job in the runner pod (they ask this sidecar, at http://127.0.0.1:9102):
  compose-ingress wait PROJECT [--service S] [--timeout 2m] [--format text|json|dotenv|github]
      wait until the composition's URLs are routable, then print them
      (exit 0; 1 sidecar not reachable, 3 refused, 4 timed out)
  compose-ingress urls PROJECT    print the URLs now, routable or not
  compose-ingress wait --help     all of their options (docs/ci-jobs.md)";

/// Expose docker-compose projects of this runner pod's Docker daemon through a Kubernetes Service
/// and an Ingress (or Gateway API HTTPRoute) per composition.
///
/// Every flag also reads an environment variable (shown as [env: ...]).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "compose-ingress",
    version,
    about,
    long_about = None,
    args_override_self = true,
    after_help = JOB_COMMANDS
)]
pub struct Args {
    /// Domain every host lives under, e.g. composition.example.com (wildcard DNS points here).
    #[arg(long, env = "COMPOSE_INGRESS_DOMAIN")]
    pub(crate) domain: String,

    /// Namespace of this runner pod; all objects are created there (downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub(crate) namespace: String,

    /// Name of this runner pod (downward API).
    #[arg(long = "pod-name", env = "POD_NAME")]
    pub(crate) pod_name: String,

    /// UID of this runner pod, for ownerReferences (downward API); read from the API when unset.
    #[arg(long = "pod-uid", env = "POD_UID")]
    pub(crate) pod_uid: Option<String>,

    /// Address of this runner pod (downward API status.podIP): a port published on exactly this
    /// IPv4 address counts like one published on all of them; read from the API when unset (an
    /// IPv6 address is accepted and not used: the pods are IPv4).
    #[arg(long = "pod-ip", env = "POD_IP")]
    pub(crate) pod_ip: Option<std::net::IpAddr>,

    /// Address of the node (downward API status.hostIP): the kubelet's probes come from it, and
    /// it keeps HTTP connection slots that no CI job can take.
    #[arg(long = "host-ip", env = "HOST_IP")]
    pub(crate) host_ip: Option<std::net::IpAddr>,

    /// Docker daemon to watch: unix:///path or tcp://host:port (port 2375 when left out, as
    /// Docker's own CLI does).
    #[arg(
        long = "docker-host",
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub(crate) docker_host: String,

    /// Route object per composition: an Ingress (networking.k8s.io/v1) or an HTTPRoute (Gateway API).
    #[arg(long = "route-api", env = "COMPOSE_INGRESS_ROUTE_API", value_enum, default_value_t = RouteApiArg::Ingress)]
    pub(crate) route_api: RouteApiArg,

    /// ingressClassName of the Ingresses (Ingress mode); unset leaves the cluster default.
    #[arg(long = "ingress-class", env = "COMPOSE_INGRESS_INGRESS_CLASS")]
    pub(crate) ingress_class: Option<String>,

    /// Further classes a composition may choose with the compose-ingress.class label (comma list).
    #[arg(
        long = "allowed-classes",
        env = "COMPOSE_INGRESS_ALLOWED_CLASSES",
        value_delimiter = ','
    )]
    pub(crate) allowed_classes: Vec<String>,

    /// Secret with the wildcard certificate, put in every Ingress's TLS block.
    #[arg(long = "tls-secret", env = "COMPOSE_INGRESS_TLS_SECRET")]
    pub(crate) tls_secret: Option<String>,

    /// Further TLS secrets a composition may choose with kompose.service.expose.tls-secret (comma list).
    #[arg(
        long = "allowed-tls-secrets",
        env = "COMPOSE_INGRESS_ALLOWED_TLS_SECRETS",
        value_delimiter = ','
    )]
    pub(crate) allowed_tls_secrets: Vec<String>,

    /// Gateway the HTTPRoutes attach to: [namespace/]name[:sectionName] (required with --route-api=gateway).
    #[arg(long, env = "COMPOSE_INGRESS_GATEWAY")]
    pub(crate) gateway: Option<String>,

    /// Template of the first DNS label of each host; placeholders {service} {port} {project}
    /// {pod}. Default: {service}-{port}-{project}-{pod} in composition scope,
    /// {service}-{port}-{project} in pod scope (where the pod's own label always follows).
    #[arg(long = "host-template", env = "COMPOSE_INGRESS_HOST_TEMPLATE")]
    pub(crate) host_template: Option<String>,

    /// Where URLs are routed: `composition` (a Service, EndpointSlices and a route per
    /// composition) or `pod` (one wildcard route per runner pod to the sidecar's proxy, which
    /// routes each composition inside the pod: no Kubernetes write when one starts; see
    /// docs/pod-scope.md).
    #[arg(long = "route-scope", env = "COMPOSE_INGRESS_ROUTE_SCOPE", value_enum, default_value_t = RouteScopeArg::Composition)]
    pub(crate) route_scope: RouteScopeArg,

    /// Pod scope: the proxy's address; the pod's route points at its port.
    #[arg(
        long = "proxy-listen",
        env = "COMPOSE_INGRESS_PROXY_LISTEN",
        default_value = "0.0.0.0:9180"
    )]
    pub(crate) proxy_listen: SocketAddr,

    /// Pod scope, Ingress mode: what the controller speaks to the proxy. `http` (HTTP/1.1,
    /// WebSockets; a port labelled grpc or h2c is refused) or `h2c` (HTTP/2: gRPC too, and
    /// WebSockets only on controllers that send upgrades over HTTP/1.1). Gateway mode carries
    /// both whatever this says.
    #[arg(long = "pod-route-protocol", env = "COMPOSE_INGRESS_POD_ROUTE_PROTOCOL", value_enum, default_value_t = PodRouteProtocol::Http)]
    pub(crate) pod_route_protocol: PodRouteProtocol,

    /// Pod scope: the proxies in front of the sidecar, your ingress controller's pod addresses
    /// (comma list of addresses or CIDRs): their X-Forwarded-For/-Proto/-Host are believed; an
    /// ipAllowList policy judges the client address they report.
    #[arg(
        long = "trusted-proxies",
        env = "COMPOSE_INGRESS_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub(crate) trusted_proxies: Vec<String>,

    /// Pod scope: most connections the proxy holds open; more are closed at once.
    #[arg(
        long = "proxy-max-connections",
        env = "COMPOSE_INGRESS_PROXY_MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    pub(crate) proxy_max_connections: usize,

    /// Pod scope: most backend connections (requests in flight, WebSockets) one composition may
    /// hold; more are answered 503.
    #[arg(
        long = "proxy-max-connections-per-composition",
        env = "COMPOSE_INGRESS_PROXY_MAX_CONNECTIONS_PER_COMPOSITION",
        default_value_t = 128
    )]
    pub(crate) proxy_max_connections_per_composition: usize,

    /// Pod scope: a client must send a request's head within this; on HTTP/1.1 also the longest
    /// wait for the next request on a kept-alive connection.
    #[arg(long = "proxy-header-timeout", env = "COMPOSE_INGRESS_PROXY_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub(crate) proxy_header_timeout: Duration,

    /// Pod scope: a connection or WebSocket with no byte either way and no request in flight for
    /// this long is closed.
    #[arg(long = "proxy-idle-timeout", env = "COMPOSE_INGRESS_PROXY_IDLE_TIMEOUT", default_value = "180s", value_parser = parse_duration)]
    pub(crate) proxy_idle_timeout: Duration,

    /// Pod scope: never use the Kubernetes API (no token needed); the operator provides this
    /// pod's Service and route (docs/pod-scope.md). /exposures, wait and urls work as before.
    #[arg(long = "no-kubernetes", env = "COMPOSE_INGRESS_NO_KUBERNETES")]
    pub(crate) no_kubernetes: bool,

    /// Per-composition rate limit (requests/s) set on every Ingress; labels may only lower it.
    #[arg(long = "default-rps", env = "COMPOSE_INGRESS_DEFAULT_RPS")]
    pub(crate) default_rps: Option<u32>,

    /// Highest rate limit a label may ask for (default: --default-rps).
    #[arg(long = "max-rps", env = "COMPOSE_INGRESS_MAX_RPS")]
    pub(crate) max_rps: Option<u32>,

    /// Most ports one composition may expose (each is a Service port, an Ingress rule and
    /// usually a host and a Lease); a composition over it is refused whole.
    #[arg(
        long = "max-ports-per-composition",
        env = "COMPOSE_INGRESS_MAX_PORTS_PER_COMPOSITION",
        default_value_t = 20
    )]
    pub(crate) max_ports_per_composition: usize,

    /// Most hosts one runner pod may expose over all its compositions; a composition that would
    /// take the pod over it is refused whole.
    #[arg(
        long = "max-hosts-per-pod",
        env = "COMPOSE_INGRESS_MAX_HOSTS_PER_POD",
        default_value_t = 200
    )]
    pub(crate) max_hosts_per_pod: usize,

    /// The longest a composition stays exposed, from its first exposed container's creation
    /// (e.g. 8h); its routes then go (its containers are not touched). A
    /// `compose-ingress.ttl` label may only shorten it. Unset: no bound but the labels'.
    #[arg(long = "max-exposure", env = "COMPOSE_INGRESS_MAX_EXPOSURE", value_parser = parse_duration)]
    pub(crate) max_exposure: Option<Duration>,

    /// How the rate limit reaches your ingress controller: `annotation` (one Ingress annotation,
    /// --rate-limit-annotation) or `traefik-middleware` (a Traefik rateLimit Middleware per
    /// composition, referenced from the Ingress or HTTPRoute; needs Traefik's CRDs and the RBAC
    /// of deploy/components/traefik).
    #[arg(long = "rate-limit-mode", env = "COMPOSE_INGRESS_RATE_LIMIT_MODE", value_enum, default_value_t = RateLimitModeArg::Annotation)]
    pub(crate) rate_limit_mode: RateLimitModeArg,

    /// The operator's access policies (YAML, see docs/policies.md); labels pick one by name with
    /// compose-ingress.access. Without it every composition is public.
    #[arg(long = "access-policies", env = "COMPOSE_INGRESS_ACCESS_POLICIES")]
    pub(crate) access_policies: Option<String>,

    /// The one annotation that carries the rate limit in `annotation` mode (depends on your
    /// ingress controller).
    #[arg(
        long = "rate-limit-annotation",
        env = "COMPOSE_INGRESS_RATE_LIMIT_ANNOTATION",
        default_value = "nginx.ingress.kubernetes.io/limit-rps"
    )]
    pub(crate) rate_limit_annotation: String,

    /// Expose services that publish ports even without compose-ingress.enable=true.
    #[arg(long = "expose-by-default", env = "COMPOSE_INGRESS_EXPOSE_BY_DEFAULT")]
    pub(crate) expose_by_default: bool,

    /// Treat a container without compose labels as a project of its own.
    #[arg(
        long = "expose-plain-containers",
        env = "COMPOSE_INGRESS_EXPOSE_PLAIN_CONTAINERS"
    )]
    pub(crate) expose_plain_containers: bool,

    /// Full resync (Docker listing, owned objects, orphan GC) interval, e.g. 5m.
    #[arg(long = "resync-interval", env = "COMPOSE_INGRESS_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// Quiet time after a Docker event before the project is reconciled (coalesces compose up).
    #[arg(long, env = "COMPOSE_INGRESS_DEBOUNCE", default_value = "300ms", value_parser = parse_duration)]
    pub(crate) debounce: Duration,

    /// Longest wait for opted-in services that are created but not started yet (compose creates
    /// every container of `up` before starting them) before the rest is exposed without them;
    /// 0 exposes each service as soon as it runs.
    #[arg(long = "settle-time", env = "COMPOSE_INGRESS_SETTLE_TIME", default_value = "10s", value_parser = parse_duration)]
    pub(crate) settle_time: Duration,

    /// Wait this long after a composition stops exposing before deleting its objects.
    #[arg(long = "delete-grace", env = "COMPOSE_INGRESS_DELETE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub(crate) delete_grace: Duration,

    /// Print the planned objects as YAML instead of writing them; =server also validates them
    /// with the apiserver (dryRun=All).
    #[arg(long = "dry-run", env = "COMPOSE_INGRESS_DRY_RUN", value_enum, num_args = 0..=1, default_missing_value = "client", default_value_t = DryRunArg::None)]
    pub(crate) dry_run: DryRunArg,

    /// Log format.
    #[arg(long = "log-format", env = "COMPOSE_INGRESS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub(crate) log_format: LogFormat,

    /// Address of the HTTP server for /metrics, /healthz, /readyz, /exposures and
    /// /v1/compositions/{project}.
    #[arg(long, env = "COMPOSE_INGRESS_LISTEN", default_value = "0.0.0.0:9102")]
    pub(crate) listen: SocketAddr,

    /// A unix socket that answers /healthz and /readyz only, for exec probes
    /// (`compose-ingress probe healthz|readyz`): no CI job reaches it, whatever the CNI.
    #[arg(long = "probe-socket", env = "COMPOSE_INGRESS_PROBE_SOCKET")]
    pub(crate) probe_socket: Option<std::path::PathBuf>,

    /// The ingress controller's plain-HTTP address inside the cluster (e.g.
    /// http://traefik.kube-system.svc:80): `wait=routable` then checks each URL with a request
    /// through it. Unset: it checks that the objects are applied.
    #[arg(long = "probe-url", env = "COMPOSE_INGRESS_PROBE_URL")]
    pub(crate) probe_url: Option<String>,

    /// No longer used: Services have no selector, the sidecar writes their EndpointSlices
    /// (health-gated routing). Accepted so that an old setting is reported, not fatal.
    #[arg(
        long = "pod-selector",
        env = "COMPOSE_INGRESS_POD_SELECTOR",
        hide = true
    )]
    pub(crate) pod_selector: Option<String>,

    /// On SIGTERM: delete this pod's objects when the pod is terminating (auto), always, or never.
    #[arg(long = "cleanup-on-exit", env = "COMPOSE_INGRESS_CLEANUP_ON_EXIT", value_enum, default_value_t = CleanupOnExit::Auto)]
    pub(crate) cleanup_on_exit: CleanupOnExit,

    /// Upper bound for the whole shutdown, from SIGTERM to exit (the clean-up at exit
    /// included): what is still running then is left to the pod's garbage collection.
    #[arg(long = "shutdown-timeout", env = "COMPOSE_INGRESS_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub(crate) shutdown_timeout: Duration,

    /// Longest wait for one Kubernetes API request (connect, send, answer); a request that takes
    /// longer fails and is retried with backoff like any other error.
    #[arg(long = "api-timeout", env = "COMPOSE_INGRESS_API_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub(crate) api_timeout: Duration,

    /// `/healthz` fails when the reconciler made no progress (no composition, page or request
    /// done, no idle turn) for this long. Unset: max(180s, 3 x --api-timeout). For tests; must
    /// be at least 10s and more than twice --api-timeout.
    #[arg(long = "heartbeat-stale", env = "COMPOSE_INGRESS_HEARTBEAT_STALE", value_parser = parse_duration, hide = true)]
    pub(crate) heartbeat_stale: Option<Duration>,
}

/// The idle reconciler loop still turns this often (its heartbeat for `/healthz`; a busy pass
/// beats after every composition, request and listing page, see `Status::heartbeat`).
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);

/// The default of `--heartbeat-stale` when `--api-timeout` is at most a minute: long enough for a
/// Docker request (bounded at 60 s by the Docker client) and for a full resync to get going.
pub(crate) const DEFAULT_HEARTBEAT_STALE: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RateLimitModeArg {
    Annotation,
    TraefikMiddleware,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RouteApiArg {
    Ingress,
    Gateway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DryRunArg {
    None,
    Client,
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RouteScopeArg {
    Composition,
    Pod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PodRouteProtocol {
    Http,
    H2c,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CleanupOnExit {
    Auto,
    Always,
    Never,
}

/// Timings of the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub resync_interval: Duration,
    pub(crate) debounce: Duration,
    pub(crate) settle_time: Duration,
    pub(crate) delete_grace: Duration,
    pub shutdown_timeout: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: PlanSettings,
    pub pod_uid: Option<String>,
    pub pod_ip: Option<std::net::Ipv4Addr>,
    pub host_ip: Option<std::net::IpAddr>,
    pub docker_host: String,
    pub timings: Timings,
    pub dry_run: DryRun,
    pub log_format: LogFormat,
    pub listen: SocketAddr,
    /// `--probe-socket`: where the kubelet's exec probes ask, if set.
    pub probe_socket: Option<std::path::PathBuf>,
    pub cleanup_on_exit: CleanupOnExit,
    /// `--probe-url` as (address, path prefix).
    pub probe: Option<(String, String)>,
    /// Bound of one Kubernetes API request (`--api-timeout`).
    pub api_timeout: Duration,
    /// `/healthz` fails when the reconciler made no progress for this long (see
    /// [`Args::heartbeat_stale`]).
    pub heartbeat_stale: Duration,
    /// Settings that are accepted but do nothing any more, with the fix: logged at start-up.
    pub obsolete: Vec<String>,
    /// Pod scope: the proxy's settings.
    pub proxy: Option<ProxyConfig>,
    /// Whether the sidecar uses the Kubernetes API (not with `--no-kubernetes`).
    pub kubernetes: bool,
}

/// The pod scope's proxy, validated.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub trusted_proxies: Vec<Cidr>,
    pub max_connections: usize,
    pub max_connections_per_composition: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Config {
    pub fn owner(&self, uid: String) -> OwnerPod {
        OwnerPod {
            name: self.settings.pod_name.clone(),
            uid,
        }
    }
}

/// A flag that cannot work, with the fix.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {value:?}: {problem}")]
pub struct ConfigError {
    pub(crate) flag: &'static str,
    pub(crate) value: String,
    pub(crate) problem: String,
}

fn bad(flag: &'static str, value: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        value: value.to_string(),
        problem: problem.into(),
    }
}

/// `--docker-host` as the Docker clients dial it: `unix:///path`, or `tcp://host:port` where a
/// left-out port is Docker's plain-TCP default 2375 (what `docker -H tcp://dind` does; without
/// it the dial would fail with a less helpful error at every reconnect).
fn docker_host(text: &str) -> Result<String, String> {
    if let Some(path) = text.strip_prefix("unix://") {
        if path.is_empty() {
            return Err("needs a socket path, e.g. unix:///var/run/docker.sock".into());
        }
        return Ok(text.to_string());
    }
    let Some(authority) = text.strip_prefix("tcp://") else {
        return Err("must start with unix:// or tcp://".into());
    };
    let authority = authority.trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        // A bracketed IPv6 address with no port ("[::1]"), or no colon at all.
        Some((host, port)) if !port.ends_with(']') => (host, Some(port)),
        _ => (authority, None),
    };
    if host.is_empty() || host.contains('/') || (host.contains(':') && !host.starts_with('[')) {
        return Err(
            "tcp:// needs a host and an optional port, e.g. tcp://127.0.0.1:2375 or \
             tcp://[::1]:2375"
                .into(),
        );
    }
    match port {
        None => Ok(format!("tcp://{host}:2375")),
        Some(p) if p.parse::<u16>().is_ok_and(|p| p > 0) => Ok(format!("tcp://{host}:{p}")),
        Some(p) => Err(format!(
            "the port '{p}' is not a TCP port (1-65535), e.g. tcp://127.0.0.1:2375"
        )),
    }
}

pub(crate) use crate::model::parse_duration;

fn ipv4(ip: Option<std::net::IpAddr>) -> Option<std::net::Ipv4Addr> {
    match ip {
        Some(std::net::IpAddr::V4(v4)) => Some(v4),
        _ => None,
    }
}

fn validate_names(flag: &'static str, names: &[String]) -> Result<(), ConfigError> {
    for n in names {
        if !naming::is_dns_subdomain(n) {
            return Err(bad(
                flag,
                n,
                "must be a lowercase DNS name ([a-z0-9-.], at most 253 characters)",
            ));
        }
    }
    Ok(())
}

fn parse_gateway(text: &str) -> Result<GatewayRef, ConfigError> {
    let (path, section) = match text.split_once(':') {
        Some((p, s)) => (p, Some(s.to_string())),
        None => (text, None),
    };
    let (namespace, name) = match path.split_once('/') {
        Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
        None => (None, path.to_string()),
    };
    let valid = naming::is_dns_label(&name)
        && namespace.as_deref().is_none_or(naming::is_dns_label)
        && section.as_deref().is_none_or(naming::is_dns_label);
    if !valid {
        return Err(bad(
            "--gateway",
            text,
            "expected [namespace/]name[:sectionName], each a DNS label",
        ));
    }
    Ok(GatewayRef {
        namespace,
        name,
        section_name: section,
        https: false,
    })
}

/// `/healthz`'s staleness bound. The reconciler feeds its heartbeat after every request, page
/// and composition of a pass and at every idle turn (every few seconds), so the longest gap
/// between two beats is about one request, which `--api-timeout` bounds (a stalled response
/// body: a second more). Twice that keeps one slow request, and the work around it, from ever
/// failing liveness; the 10 s floor is twice the idle loop's turn.
fn heartbeat_stale(set: Option<Duration>, api_timeout: Duration) -> Result<Duration, ConfigError> {
    let Some(stale) = set else {
        return Ok(DEFAULT_HEARTBEAT_STALE.max(api_timeout.saturating_mul(3)));
    };
    let floor = HEARTBEAT.saturating_mul(2);
    if stale < floor || stale <= api_timeout.saturating_mul(2) {
        return Err(bad(
            "--heartbeat-stale",
            &format!("{stale:?}"),
            format!(
                "must be at least {floor:?} and more than twice --api-timeout ({api_timeout:?}): \
                 one API request may take that long, and the kubelet would restart a healthy \
                 sidecar; raise it, lower --api-timeout, or leave it unset"
            ),
        ));
    }
    Ok(stale)
}

/// Whether every policy of the file holds in the scope: the controller's entries in composition
/// scope, the proxy's in pod scope; never silently ignored.
fn enforceable(
    access: &AccessPolicies,
    pod_scope: bool,
    proxy: Option<&ProxyConfig>,
) -> Result<(), String> {
    for (name, p) in &access.policies {
        if pod_scope && p.for_controller() {
            return Err(format!(
                "policy `{name}` has traefikMiddlewares, ingressAnnotations or httpRouteFilters, \
                 which only a route of its own per composition carries; in pod scope give it \
                 basicAuth or ipAllowList (the sidecar's proxy enforces them)"
            ));
        }
        if !pod_scope && p.for_proxy() {
            return Err(format!(
                "policy `{name}` has basicAuth or ipAllowList, which only the pod scope's proxy \
                 enforces; in composition scope use your controller's (traefikMiddlewares, \
                 ingressAnnotations, httpRouteFilters), or set --route-scope pod"
            ));
        }
        if !p.ip_allow_list.is_empty() && proxy.is_some_and(|p| p.trusted_proxies.is_empty()) {
            return Err(format!(
                "policy `{name}` has an ipAllowList, but --trusted-proxies is empty: every request \
                 comes from the ingress controller, so set --trusted-proxies to its pod addresses \
                 (the client address is the one it reports)"
            ));
        }
    }
    Ok(())
}

impl Args {
    /// The pod scope's proxy settings (`None` in composition scope, where the flags are unused;
    /// `--no-kubernetes` there is refused: the composition scope's objects are its output).
    fn proxy_config(&self, pod_scope: bool) -> Result<Option<ProxyConfig>, ConfigError> {
        if !pod_scope {
            if self.no_kubernetes {
                return Err(bad(
                    "--no-kubernetes",
                    "true",
                    "only works with --route-scope pod: in composition scope the Kubernetes \
                     objects are what the sidecar makes",
                ));
            }
            return Ok(None);
        }
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .map(|c| Cidr::parse(c).map_err(|e| bad("--trusted-proxies", c, e)))
            .collect::<Result<Vec<_>, _>>()?;
        for (flag, n) in [
            ("--proxy-max-connections", self.proxy_max_connections),
            (
                "--proxy-max-connections-per-composition",
                self.proxy_max_connections_per_composition,
            ),
        ] {
            if n == 0 {
                return Err(bad(flag, "0", "must be at least 1"));
            }
        }
        for (flag, d) in [
            ("--proxy-header-timeout", self.proxy_header_timeout),
            ("--proxy-idle-timeout", self.proxy_idle_timeout),
        ] {
            if d.is_zero() {
                return Err(bad(flag, "0", "must be more than zero"));
            }
        }
        if self.listen.port() == self.proxy_listen.port() {
            return Err(bad(
                "--proxy-listen",
                &self.proxy_listen.to_string(),
                format!(
                    "uses the port of --listen ({}): give each its own",
                    self.listen
                ),
            ));
        }
        Ok(Some(ProxyConfig {
            listen: self.proxy_listen,
            trusted_proxies,
            max_connections: self.proxy_max_connections,
            max_connections_per_composition: self.proxy_max_connections_per_composition,
            header_timeout: self.proxy_header_timeout,
            idle_timeout: self.proxy_idle_timeout,
        }))
    }

    /// Validates every flag; the first problem found is returned.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let domain = self
            .domain
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if !naming::is_dns_subdomain(&domain) || !domain.contains('.') {
            return Err(bad(
                "--domain",
                &self.domain,
                "must be a DNS name with at least two labels, e.g. composition.example.com",
            ));
        }
        if !naming::is_dns_label(&self.namespace) {
            return Err(bad(
                "--namespace",
                &self.namespace,
                "must be a Kubernetes namespace name (set POD_NAMESPACE from the downward API)",
            ));
        }
        if !naming::is_dns_subdomain(&self.pod_name) {
            return Err(bad(
                "--pod-name",
                &self.pod_name,
                "must be a pod name (set POD_NAME from the downward API)",
            ));
        }
        if let Some(uid) = &self.pod_uid
            && (uid.is_empty() || uid.len() > 128)
        {
            return Err(bad(
                "--pod-uid",
                uid,
                "must be the pod's metadata.uid (downward API), or unset",
            ));
        }
        let docker_host = docker_host(&self.docker_host)
            .map_err(|problem| bad("--docker-host", &self.docker_host, problem))?;
        let pod_scope = self.route_scope == RouteScopeArg::Pod;
        let host_template = self.host_template.clone().unwrap_or_else(|| {
            if pod_scope {
                "{service}-{port}-{project}"
            } else {
                "{service}-{port}-{project}-{pod}"
            }
            .to_string()
        });
        naming::validate_host_template(&host_template)
            .map_err(|e| bad("--host-template", &host_template, e.to_string()))?;
        // Pod scope: every host ends in the pod's own label, so no composition can name a host
        // of another pod.
        let domain = if pod_scope {
            if !naming::is_dns_label(&self.pod_name) {
                return Err(bad(
                    "--pod-name",
                    &self.pod_name,
                    "in pod scope the pod's name is a DNS label of every host: it must be one \
                     DNS label (a StatefulSet's pods are)",
                ));
            }
            format!("{}.{domain}", self.pod_name)
        } else {
            domain
        };
        let tls_secret = match (&self.tls_secret, pod_scope) {
            (Some(s), true) => Some(s.replace("{pod}", &self.pod_name)),
            (secret, _) => secret.clone(),
        };
        let proxy = self.proxy_config(pod_scope)?;
        if let Some(c) = &self.ingress_class {
            validate_names("--ingress-class", std::slice::from_ref(c))?;
        }
        validate_names("--allowed-classes", &self.allowed_classes)?;
        if let Some(s) = &tls_secret {
            validate_names("--tls-secret", std::slice::from_ref(s))?;
        }
        validate_names("--allowed-tls-secrets", &self.allowed_tls_secrets)?;
        let route_api = match self.route_api {
            RouteApiArg::Ingress => RouteApi::Ingress,
            RouteApiArg::Gateway => RouteApi::Gateway,
        };
        let gateway = self.gateway.as_deref().map(parse_gateway).transpose()?;
        if route_api == RouteApi::Gateway && gateway.is_none() {
            return Err(bad(
                "--gateway",
                "",
                "is required with --route-api=gateway: name the Gateway the HTTPRoutes attach to",
            ));
        }
        if self.default_rps == Some(0) {
            return Err(bad(
                "--default-rps",
                "0",
                "must be at least 1 (leave it unset for no limit)",
            ));
        }
        let max_rps = self.max_rps.or(self.default_rps);
        if let (Some(d), Some(m)) = (self.default_rps, max_rps)
            && m < d
        {
            return Err(bad(
                "--max-rps",
                &m.to_string(),
                format!("must not be below --default-rps ({d})"),
            ));
        }
        let key = &self.rate_limit_annotation;
        let key_ok = naming::is_annotation_key(key);
        if !key_ok {
            return Err(bad(
                "--rate-limit-annotation",
                key,
                "must be an annotation key prefix/name, e.g. nginx.ingress.kubernetes.io/limit-rps",
            ));
        }
        for (flag, n) in [
            (
                "--max-ports-per-composition",
                self.max_ports_per_composition,
            ),
            ("--max-hosts-per-pod", self.max_hosts_per_pod),
        ] {
            if n == 0 {
                return Err(bad(flag, "0", "must be at least 1"));
            }
        }
        for (flag, d) in [
            ("--resync-interval", self.resync_interval),
            ("--shutdown-timeout", self.shutdown_timeout),
            ("--api-timeout", self.api_timeout),
        ] {
            if d.is_zero() {
                return Err(bad(flag, "0", "must be more than zero"));
            }
        }
        let heartbeat_stale = heartbeat_stale(self.heartbeat_stale, self.api_timeout)?;
        let probe = match &self.probe_url {
            Some(url) => Some(http_get::split_url(url).map_err(|_| {
                bad(
                    "--probe-url",
                    url,
                    "must be http://host[:port][/path], the ingress controller's plain-HTTP address in the cluster",
                )
            })?),
            None => None,
        };
        let access = match &self.access_policies {
            Some(path) => crate::policy::load(path)
                .map_err(|e| bad("--access-policies", path, e.to_string()))?,
            None => AccessPolicies::public_only(),
        };
        if let Some(path) = &self.access_policies {
            enforceable(&access, pod_scope, proxy.as_ref())
                .map_err(|problem| bad("--access-policies", path, problem))?;
            // Fail closed at start-up for the default policy: every composition that names no
            // policy would be refused (a chosen policy's gap refuses its compositions only).
            if let (false, Some(name)) = (pod_scope, access.default.as_deref())
                && let Some(gap) = access
                    .named(Some(name))
                    .and_then(|p| p.gap(route_api, false))
            {
                return Err(bad(
                    "--access-policies",
                    path,
                    format!("the default policy `{name}` would not protect any composition: {gap}"),
                ));
            }
        }
        if pod_scope && self.rate_limit_mode == RateLimitModeArg::TraefikMiddleware {
            return Err(bad(
                "--rate-limit-mode",
                "traefik-middleware",
                "in pod scope the sidecar's proxy enforces the rate limit itself: drop \
                 --rate-limit-mode (and deploy/components/traefik)",
            ));
        }

        let mut allowed_classes = self.allowed_classes.clone();
        allowed_classes.extend(self.ingress_class.clone());
        allowed_classes.sort();
        allowed_classes.dedup();
        let mut allowed_tls_secrets = self.allowed_tls_secrets.clone();
        allowed_tls_secrets.extend(tls_secret.clone());
        allowed_tls_secrets.sort();
        allowed_tls_secrets.dedup();

        Ok(Config {
            settings: PlanSettings {
                domain,
                host_template,
                pod_name: self.pod_name,
                namespace: self.namespace,
                route_api,
                ingress_class: self.ingress_class,
                allowed_classes,
                tls_secret,
                allowed_tls_secrets,
                gateway,
                default_rps: self.default_rps,
                max_rps,
                rate_limit: match self.rate_limit_mode {
                    RateLimitModeArg::Annotation => {
                        RateLimitMode::Annotation(self.rate_limit_annotation)
                    }
                    RateLimitModeArg::TraefikMiddleware => RateLimitMode::TraefikMiddleware,
                },
                access,
                expose_by_default: self.expose_by_default,
                expose_plain_containers: self.expose_plain_containers,
                pod_ip: ipv4(self.pod_ip),
                max_ports_per_composition: self.max_ports_per_composition,
                max_hosts_per_pod: self.max_hosts_per_pod,
                scope: if pod_scope {
                    RouteScope::Pod {
                        ingress_h2c: self.pod_route_protocol == PodRouteProtocol::H2c,
                    }
                } else {
                    RouteScope::Composition
                },
                max_exposure: self.max_exposure,
            },
            proxy,
            kubernetes: !self.no_kubernetes,
            pod_uid: self.pod_uid,
            pod_ip: ipv4(self.pod_ip),
            host_ip: self.host_ip,
            docker_host,
            timings: Timings {
                resync_interval: self.resync_interval,
                debounce: self.debounce,
                settle_time: self.settle_time,
                delete_grace: self.delete_grace,
                shutdown_timeout: self.shutdown_timeout,
            },
            dry_run: match self.dry_run {
                DryRunArg::None => DryRun::None,
                DryRunArg::Client => DryRun::Client,
                DryRunArg::Server => DryRun::Server,
            },
            log_format: self.log_format,
            listen: self.listen,
            probe_socket: self.probe_socket.clone(),
            cleanup_on_exit: self.cleanup_on_exit,
            probe,
            api_timeout: self.api_timeout,
            heartbeat_stale,
            obsolete: self
                .pod_selector
                .iter()
                .map(|v| {
                    format!(
                        "--pod-selector (COMPOSE_INGRESS_POD_SELECTOR) {v:?} is no longer used: \
                         Services have no selector, the sidecar writes their EndpointSlices \
                         (health-gated routing); remove the setting"
                    )
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/configuration.md lists every flag `--help` shows, with its environment variable, and
    /// nothing else: the reference cannot drift from the binary.
    #[test]
    fn the_configuration_reference_lists_exactly_the_flags_of_help() {
        use clap::CommandFactory;
        let help: std::collections::BTreeSet<(String, String)> = Args::command()
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| {
                let env = a.get_env()?.to_string_lossy().to_string();
                Some((format!("--{}", a.get_long()?), env))
            })
            .collect();
        let doc = include_str!("../docs/configuration.md");
        let documented: std::collections::BTreeSet<(String, String)> = doc
            .lines()
            .filter(|l| l.starts_with("| `--"))
            .map(|l| {
                // `\|` is a `|` inside a cell (`--dry-run[=client\|server]`).
                let l = l.replace("\\|", "/");
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let flag = cells[1]
                    .trim_matches('`')
                    .split(['[', '`', ' '])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                (flag, cells[2].trim_matches('`').to_string())
            })
            .collect();
        let missing: Vec<_> = help.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&help).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "docs/configuration.md drifted from --help: not documented {missing:?}, not a flag {extra:?}"
        );
        assert!(help.len() > 40, "{}", help.len());
    }

    fn args(extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec![
            "compose-ingress",
            "--domain",
            "composition.example.com",
            "--namespace",
            "ci",
            "--pod-name",
            "runner-3",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    /// A default policy that the configured route API would not carry stops the start (seen
    /// failing with the check removed: the sidecar started and exposed every composition
    /// without it); a chosen policy's gap is the composition's refusal (src/plan.rs).
    #[test]
    fn a_default_policy_the_route_api_does_not_carry_fails_at_start() {
        let path = std::env::temp_dir().join(format!(
            "compose-ingress-policy-test-{}.yaml",
            std::process::id()
        ));
        std::fs::write(
            &path,
            "default: filters\npolicies:\n  filters:\n    httpRouteFilters: [{type: RequestHeaderModifier}]\n",
        )
        .unwrap();
        let file = path.display().to_string();
        let ingress = args(&["--access-policies", file.as_str()]).unwrap_err();
        assert!(
            ingress.contains("the default policy `filters` would not protect")
                && ingress.contains("adds nothing to an Ingress"),
            "{ingress}"
        );
        let gateway = args(&[
            "--access-policies",
            file.as_str(),
            "--route-api",
            "gateway",
            "--gateway",
            "gw",
        ]);
        std::fs::remove_file(&path).unwrap();
        assert!(gateway.is_ok(), "{gateway:?}");
    }

    #[test]
    fn an_obsolete_pod_selector_is_reported_not_fatal() {
        let c = args(&["--pod-selector", "app=x"]).expect("accepted");
        assert_eq!(c.obsolete.len(), 1);
        assert!(c.obsolete[0].contains("no longer used"), "{:?}", c.obsolete);
        assert!(args(&[]).expect("valid").obsolete.is_empty());
    }

    #[test]
    fn a_tcp_docker_host_without_a_port_gets_dockers_default_and_junk_is_refused() {
        let host = |h: &str| args(&["--docker-host", h]).map(|c| c.docker_host);
        assert_eq!(host("tcp://dind").as_deref(), Ok("tcp://dind:2375"));
        assert_eq!(host("tcp://dind/").as_deref(), Ok("tcp://dind:2375"));
        assert_eq!(
            host("tcp://10.0.0.2:2376").as_deref(),
            Ok("tcp://10.0.0.2:2376")
        );
        assert_eq!(host("tcp://[::1]").as_deref(), Ok("tcp://[::1]:2375"));
        assert_eq!(host("tcp://[::1]:2376").as_deref(), Ok("tcp://[::1]:2376"));
        assert_eq!(
            host("unix:///var/run/docker.sock").as_deref(),
            Ok("unix:///var/run/docker.sock")
        );
        for (junk, says) in [
            ("tcp://", "needs a host"),
            ("tcp://::1", "needs a host"),
            ("tcp://dind/v1.41", "needs a host"),
            ("tcp://dind:", "not a TCP port"),
            ("tcp://dind:0", "not a TCP port"),
            ("tcp://dind:65536", "not a TCP port"),
            ("unix://", "needs a socket path"),
            ("http://dind:2375", "must start with unix:// or tcp://"),
        ] {
            let e = host(junk).expect_err(junk);
            assert!(
                e.contains("--docker-host") && e.contains(says),
                "{junk}: {e}"
            );
        }
    }

    #[test]
    fn defaults_are_sane() {
        let c = args(&[]).expect("valid");
        assert_eq!(c.settings.domain, "composition.example.com");
        assert_eq!(c.settings.host_template, "{service}-{port}-{project}-{pod}");
        assert_eq!(c.timings.delete_grace, Duration::from_secs(10));
        assert_eq!(c.timings.resync_interval, Duration::from_secs(300));
        assert_eq!(c.dry_run, DryRun::None);
        assert_eq!(c.cleanup_on_exit, CleanupOnExit::Auto);
    }

    #[test]
    fn each_bad_flag_names_itself() {
        for (extra, flag) in [
            (vec!["--domain", "nodots"], "--domain"),
            (
                vec!["--host-template", "{service}.{pod}"],
                "--host-template",
            ),
            (vec!["--host-template", "{nope}"], "--host-template"),
            (vec!["--route-api", "gateway"], "--gateway"),
            (vec!["--gateway", "a/b/c"], "--gateway"),
            (vec!["--default-rps", "10", "--max-rps", "5"], "--max-rps"),
            (
                vec!["--docker-host", "/var/run/docker.sock"],
                "--docker-host",
            ),
            (vec!["--allowed-classes", "Bad_Class"], "--allowed-classes"),
            (
                vec!["--rate-limit-annotation", "snippet"],
                "--rate-limit-annotation",
            ),
        ] {
            let mut argv: Vec<&str> = vec![];
            argv.extend(extra.iter().copied());
            let err = args(&argv).expect_err(&format!("{extra:?} must be refused"));
            assert!(
                err.contains(flag),
                "{extra:?}: error {err:?} does not name {flag}"
            );
        }
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(args(&["--debounce", "abc"]).is_err());
    }

    #[test]
    fn api_timeout_and_heartbeat_stale_defaults() {
        let c = args(&[]).expect("valid");
        assert_eq!(c.api_timeout, Duration::from_secs(30));
        assert_eq!(c.heartbeat_stale, Duration::from_secs(180));
        // A longer API timeout moves the unset staleness bound with it.
        let c = args(&["--api-timeout", "2m"]).expect("valid");
        assert_eq!(c.heartbeat_stale, Duration::from_secs(360));
        let c = args(&["--api-timeout", "2s", "--heartbeat-stale", "10s"]).expect("valid");
        assert_eq!(
            (c.api_timeout, c.heartbeat_stale),
            (Duration::from_secs(2), Duration::from_secs(10))
        );
    }

    #[test]
    fn heartbeat_stale_must_outlast_two_api_requests_and_the_idle_turn() {
        for extra in [
            // twice the API timeout is not enough: strictly more
            vec!["--api-timeout", "30s", "--heartbeat-stale", "60s"],
            vec!["--heartbeat-stale", "59s"],
            // below the floor of two idle turns
            vec!["--api-timeout", "1s", "--heartbeat-stale", "9s"],
            vec!["--api-timeout", "2m", "--heartbeat-stale", "3m"],
        ] {
            let err = args(&extra).expect_err(&format!("{extra:?} must be refused"));
            assert!(err.contains("--heartbeat-stale"), "{extra:?}: {err}");
            assert!(err.contains("--api-timeout"), "{extra:?}: {err}");
        }
        assert!(args(&["--api-timeout", "30s", "--heartbeat-stale", "61s"]).is_ok());
        let err = args(&["--api-timeout", "0"]).expect_err("zero");
        assert!(err.contains("--api-timeout"), "{err}");
    }

    #[test]
    fn heartbeat_stale_is_a_hidden_test_flag() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("--api-timeout"), "{help}");
        assert!(!help.contains("--heartbeat-stale"), "{help}");
    }

    #[test]
    fn gateway_reference_forms() {
        let g = parse_gateway("infra/public:web").expect("valid");
        assert_eq!(g.namespace.as_deref(), Some("infra"));
        assert_eq!(g.name, "public");
        assert_eq!(g.section_name.as_deref(), Some("web"));
        assert!(parse_gateway("public").expect("valid").namespace.is_none());
    }

    #[test]
    fn ingress_class_is_always_allowed() {
        let c = args(&[
            "--ingress-class",
            "traefik",
            "--allowed-classes",
            "internal,dedicated",
        ])
        .expect("valid");
        assert_eq!(
            c.settings.allowed_classes,
            vec!["dedicated", "internal", "traefik"]
        );
    }
}
