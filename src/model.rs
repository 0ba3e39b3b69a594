//! Plain data that flows one way: Docker -> observed state -> plan -> Kubernetes.
//! No I/O here; every type is built by the docker edge or the planner and read by the next stage.
//!
//! Vocabulary: the user's docker-compose project is a **composition** in identifiers, comments
//! and docs. "project" stays only where it is a contract or public: Compose's own label
//! (`com.docker.compose.project`), our Kubernetes label and annotation keys
//! (`compose-ingress/project`, ...), JSON and log field names, metric help texts, the
//! `{project}` placeholder of `--host-template` and the `wait`/`urls` commands' argument.
//! Renaming those would break users, dashboards or stored objects.

use std::collections::BTreeMap;

/// Transport protocol of a published port, as Docker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// One container port published on the pod's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishedPort {
    pub container_port: u16,
    pub protocol: Protocol,
    /// The port dind bound; what the Service's `targetPort` points at when the binding is
    /// reachable on the pod's IP (see `host_ip`).
    pub host_port: u16,
    /// The address of the binding as Docker reports it: `0.0.0.0` (or empty) for every IPv4
    /// address of the pod, `::` for IPv6, or one address.
    pub host_ip: String,
}

impl PublishedPort {
    /// Whether a connection to the pod's IPv4 address `pod_ip` reaches this binding: a binding on
    /// every IPv4 address, or on exactly the pod's. Never an IPv6 binding: before Docker 27 its
    /// host port can differ from the IPv4 one, and be another container's IPv4 port.
    pub(crate) fn reachable_on(&self, pod_ip: Option<std::net::Ipv4Addr>) -> bool {
        match self.host_ip.as_str() {
            "" | "0.0.0.0" => true,
            ip => pod_ip.is_some_and(|p| ip.parse() == Ok(p)),
        }
    }
}

/// A container as the docker edge observed it (from a container listing, not from events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    /// Display name without the leading '/': used in log lines only, never as a key.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Only running containers are exposed; the docker edge may still report others.
    pub state: ContainerState,
    pub published: Vec<PublishedPort>,
    /// Docker's verdict of the container's HEALTHCHECK, if it has one.
    pub health: Health,
    /// When Docker created the container (unix seconds; 0 when unknown): the start of the
    /// composition's exposure time, which no restart of the sidecar or the container resets.
    pub created: i64,
}

/// The state of a container's Docker HEALTHCHECK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Health {
    /// No healthcheck: routed as soon as it runs.
    #[default]
    None,
    /// Within its start period, or no check has passed yet.
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    /// Docker's word for the state (`docker ps`, the `health_status` event).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Health::None => "none",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// The part of Docker's container state the planner cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Running,
    /// Created and never started: Compose v2 creates every container of `up` first and then
    /// starts them, and a recreate creates the replacement before it starts it.
    Created,
    /// Exited, paused, restarting, dead, being removed.
    Stopped,
}

/// Every container the docker edge saw for one composition key (compose project, or a plain
/// container's own key when `--expose-plain-containers` is on).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedComposition {
    pub name: String,
    pub containers: Vec<ObservedContainer>,
}

/// How writes reach the cluster (`--dry-run`): for real, printed only, or printed and validated by
/// the apiserver (`dryRun=All`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRun {
    None,
    Client,
    Server,
}

/// Which route object the cluster gets per composition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteApi {
    #[default]
    Ingress,
    Gateway,
}

/// Where a composition's URL is routed (`--route-scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteScope {
    /// Kubernetes objects per composition: a Service, its EndpointSlices, a route, Leases.
    #[default]
    Composition,
    /// One wildcard route per runner pod to the sidecar's proxy (src/proxy/), which routes
    /// each composition inside the pod; hosts are one label under `<pod>.<domain>`.
    /// `ingress_h2c`: the pod's Ingress sends everything to the proxy over HTTP/2 (gRPC can be
    /// carried; `--pod-route-protocol h2c`).
    Pod { ingress_h2c: bool },
}

/// The form of the per-composition rate limit (`--rate-limit-mode`): what the operator's
/// ingress controller reads and enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitMode {
    /// One annotation on the Ingress whose value is the limit in requests/s (controllers that
    /// read one, e.g. HAProxy's `haproxy.org/rate-limit-requests`). Not rendered on HTTPRoutes:
    /// Gateway API has no such annotation.
    Annotation(String),
    /// A Traefik `Middleware` (`traefik.io/v1alpha1`, `rateLimit`) per composition, referenced
    /// from the Ingress (`traefik.ingress.kubernetes.io/router.middlewares`) or from each
    /// HTTPRoute rule (an `ExtensionRef` filter).
    TraefikMiddleware,
}

/// The label value (and policy name) that means "no access policy".
pub(crate) const PUBLIC_POLICY: &str = "public";

/// The operator's access policies (`--access-policies`, see src/policy.rs for the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicies {
    /// The policy of a composition whose services name none; `None`: public.
    pub(crate) default: Option<String>,
    /// Whether `public` (no policy) may be chosen by a label.
    pub(crate) allow_public: bool,
    pub(crate) policies: BTreeMap<String, AccessPolicy>,
}

impl AccessPolicies {
    /// Without a policy file: every composition is public, and only `public` may be named.
    pub fn public_only() -> Self {
        Self {
            default: None,
            allow_public: true,
            policies: BTreeMap::new(),
        }
    }

    /// The policy named `name` (a composition's access policy), `None` when public.
    pub(crate) fn named(&self, name: Option<&str>) -> Option<&AccessPolicy> {
        self.policies.get(name?)
    }

    /// The names a label may choose, for refusals.
    pub(crate) fn choosable(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.policies.keys().map(String::as_str).collect();
        if self.allow_public {
            names.push(PUBLIC_POLICY);
        }
        names
    }
}

/// What one access policy adds to a composition's route; operator text, never a label's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct AccessPolicy {
    /// Traefik Middlewares of the runner pods' namespace, referenced from the Ingress (after the
    /// rate limit's) and as `ExtensionRef` filters of every HTTPRoute rule.
    pub(crate) traefik_middlewares: Vec<String>,
    /// Annotations set on the Ingress as written (controllers that read annotations).
    pub(crate) ingress_annotations: BTreeMap<String, String>,
    /// Gateway API `HTTPRouteFilter`s added to every HTTPRoute rule as written.
    pub(crate) http_route_filters: Vec<serde_json::Value>,
    /// Pod scope: HTTP basic auth the proxy checks itself.
    pub(crate) basic_auth: Option<BasicAuthPolicy>,
    /// Pod scope: the client addresses the proxy lets in (empty: any).
    pub(crate) ip_allow_list: Vec<Cidr>,
}

impl AccessPolicy {
    /// Whether an ingress controller carries it (composition scope).
    pub(crate) fn for_controller(&self) -> bool {
        !self.traefik_middlewares.is_empty()
            || !self.ingress_annotations.is_empty()
            || !self.http_route_filters.is_empty()
    }

    /// Whether the sidecar's proxy enforces it (pod scope).
    pub(crate) fn for_proxy(&self) -> bool {
        self.basic_auth.is_some() || !self.ip_allow_list.is_empty()
    }

    /// Why the composition scope's routes of `api` would not carry this policy whole, if they
    /// would not: it adds nothing to that route kind, or (`grpc`: the composition has gRPC
    /// ports, routed by GRPCRoutes) it has filters a GRPCRoute cannot take. A policy not
    /// carried must fail closed: a composition that asked for it is not exposed at all.
    pub(crate) fn gap(&self, api: RouteApi, grpc: bool) -> Option<String> {
        let middlewares = !self.traefik_middlewares.is_empty();
        match api {
            RouteApi::Ingress if !middlewares && self.ingress_annotations.is_empty() => Some(
                "it adds nothing to an Ingress (it has only httpRouteFilters, which only \
                 HTTPRoutes carry); give it traefikMiddlewares or ingressAnnotations, or use \
                 --route-api gateway"
                    .to_string(),
            ),
            RouteApi::Gateway if !middlewares && self.http_route_filters.is_empty() => Some(
                "it adds nothing to an HTTPRoute (it has only ingressAnnotations, which only \
                 Ingresses carry); give it traefikMiddlewares or httpRouteFilters, or use \
                 --route-api ingress"
                    .to_string(),
            ),
            RouteApi::Gateway if grpc => {
                let types: Vec<&str> = self
                    .http_route_filters
                    .iter()
                    .filter_map(|f| f["type"].as_str())
                    .filter(|t| !GRPC_FILTER_TYPES.contains(t))
                    .collect();
                (!types.is_empty()).then(|| {
                    format!(
                        "its httpRouteFilters of type {} cannot be carried by the GRPCRoute of \
                         the composition's gRPC ports (a GRPCRoute takes {}); give the gRPC \
                         services a policy without them",
                        types.join(", "),
                        GRPC_FILTER_TYPES.join(", ")
                    )
                })
            }
            _ => None,
        }
    }
}

/// The filter types a GRPCRoute rule accepts (Gateway API v1).
pub(crate) const GRPC_FILTER_TYPES: [&str; 4] = [
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "ExtensionRef",
];

/// The users of a policy's basic auth, from an htpasswd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BasicAuthPolicy {
    /// What the browser's login prompt names (a policy file's text, validated).
    pub(crate) realm: String,
    pub(crate) users: Htpasswd,
}

/// An address range, `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: std::net::IpAddr = addr.parse().map_err(|_| {
            format!("{text:?} is not an address or range, e.g. 10.0.0.0/8 or 192.0.2.7")
        })?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { network, prefix })
    }

    pub(crate) fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
            let bits = usize::from(bits);
            let (full, rest) = (bits / 8, bits % 8);
            a[..full] == b[..full] && {
                let mask = 0xffu8.checked_shl(8 - rest as u32).unwrap_or(0);
                rest == 0 || a[full] & mask == b[full] & mask
            }
        }
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The users of an htpasswd file (`user:hash` lines, bcrypt hashes as `htpasswd -B` writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Htpasswd {
    users: BTreeMap<String, String>,
}

impl Htpasswd {
    /// Most users one file may list, and the longest line read.
    const MAX_USERS: usize = 1000;
    const MAX_LINE: usize = 512;

    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut users = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = n + 1;
            if line.len() > Self::MAX_LINE {
                return Err(format!("line {at} is longer than {} bytes", Self::MAX_LINE));
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("line {at} is not user:hash"));
            };
            if user.is_empty() {
                return Err(format!("line {at} has no user name"));
            }
            if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
                return Err(format!(
                    "line {at} (user {user:?}) is not a bcrypt hash: only bcrypt is accepted \
                     (MD5, SHA-1 and crypt hashes are too weak); write it with `htpasswd -B`"
                ));
            }
            if users.insert(user.to_string(), hash.to_string()).is_some() {
                return Err(format!("line {at}: user {user:?} is listed twice"));
            }
            if users.len() > Self::MAX_USERS {
                return Err(format!("more than {} users", Self::MAX_USERS));
            }
        }
        if users.is_empty() {
            return Err("it lists no user (user:hash lines, from `htpasswd -B`)".into());
        }
        Ok(Self { users })
    }

    /// The bcrypt hash of `user`, if the file lists them.
    pub(crate) fn hash_of(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }
}

/// A Gateway the HTTPRoutes attach to (`--gateway namespace/name` or `name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRef {
    pub(crate) namespace: Option<String>,
    pub(crate) name: String,
    pub(crate) section_name: Option<String>,
    /// Whether the listener serves HTTPS, which makes the URLs https: not part of the flag, read
    /// from the Gateway at start-up (src/gateway_listener.rs).
    pub(crate) https: bool,
}

impl GatewayRef {
    pub fn set_https(&mut self, https: bool) {
        self.https = https;
    }
}

/// Parses `500ms`, `10s`, `5m`, `1h` (or a bare number of seconds).
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: write e.g. 500ms, 10s, 5m or 1h"))?;
    let d = match unit {
        "ms" => std::time::Duration::from_millis(n),
        "" | "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "'{text}' has an unknown unit '{unit}': use ms, s, m or h"
            ));
        }
    };
    Ok(d)
}

/// Operator settings the planner needs; built once from the validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSettings {
    /// e.g. `composition.example.com`; every host is exactly one DNS label under it.
    pub domain: String,
    /// Host-label template, placeholders `{service}`, `{port}`, `{project}`, `{pod}`.
    pub host_template: String,
    pub pod_name: String,
    pub namespace: String,
    pub route_api: RouteApi,
    pub ingress_class: Option<String>,
    /// Classes a label may choose; always contains `ingress_class` when that is set.
    pub allowed_classes: Vec<String>,
    pub tls_secret: Option<String>,
    /// TLS secrets a kompose label may choose; always contains `tls_secret` when set.
    pub allowed_tls_secrets: Vec<String>,
    pub gateway: Option<GatewayRef>,
    /// Operator's per-composition limit; labels may only lower it.
    pub default_rps: Option<u32>,
    /// Upper bound for a label's `rate-limit.rps`; a label above it is refused.
    pub max_rps: Option<u32>,
    /// How the rate limit reaches the controller that enforces it.
    pub rate_limit: RateLimitMode,
    /// The operator's access policies; labels pick one by name.
    pub access: AccessPolicies,
    pub expose_by_default: bool,
    pub expose_plain_containers: bool,
    /// The pod's IPv4 address, when known: bindings on exactly it are reachable too.
    pub pod_ip: Option<std::net::Ipv4Addr>,
    /// Most ports (Service ports, Ingress rules) one composition may expose; over it the
    /// composition is refused whole.
    pub max_ports_per_composition: usize,
    /// Most hosts the pod exposes over all its compositions. The reconciler checks it (it knows
    /// every composition's hosts); a composition that would go over it is refused whole.
    pub max_hosts_per_pod: usize,
    /// Where the URLs are routed: per composition, or through the pod's proxy. In pod scope
    /// `domain` is already the pod's own (`<pod>.<operator's domain>`).
    pub scope: RouteScope,
    /// The longest a composition stays exposed (`--max-exposure`); `compose-ingress.ttl` may
    /// only shorten it. `None`: no bound but the labels'.
    pub max_exposure: Option<std::time::Duration>,
}

/// The runner pod every object is owned by (ownerReference) and labelled with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerPod {
    pub(crate) name: String,
    pub(crate) uid: String,
}

crate::variants::with_all! {
    /// Why something of a composition is not exposed. [`Reason::as_str`] gives the stable kebab-case
    /// code that logs (`reason=`), `/exposures` (`"reason"`), the `refused_labels_total{reason}` metric
    /// and docs/operability.md all use: the one place each code is spelled.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Reason {
        /// `compose-ingress.enable` is neither `true` nor `false`.
        InvalidEnable,
        /// A `compose-ingress.*` key we do not know (most likely a typo).
        UnknownLabel,
        /// A label value over the size we look at.
        ValueTooLong,
        /// `compose-ingress.ports` is not a list of ports.
        InvalidPort,
        /// A chosen host that is not one DNS label.
        InvalidHost,
        /// A chosen host under another domain than the operator's.
        HostOutsideDomain,
        /// A path prefix outside the safe grammar.
        InvalidPath,
        /// `compose-ingress.rate-limit.rps` is not a whole number >= 1.
        InvalidRateLimit,
        /// A rate limit above the operator's maximum (labels may only lower it).
        RateLimitAboveMax,
        /// A class outside the operator's allow-list.
        ClassNotAllowed,
        /// Two labels of one service choose different classes, or a service wants another class
        /// than a service routed on the same host (one host, one controller).
        ClassConflict,
        /// A TLS secret outside the operator's allow-list.
        TlsSecretNotAllowed,
        /// A service wants another TLS secret than a service routed on the same host.
        TlsSecretConflict,
        /// `compose-ingress.ports` names a port that is not published over TCP.
        PortNotPublished,
        /// The operator's `--host-template` does not render to a DNS label for this service.
        InvalidHostTemplate,
        /// Another service of the same composition already routes this host and path.
        HostTakenInComposition,
        /// Another pod (or composition) holds the host's Lease.
        HostTaken,
        /// A chosen host the operator's `--host-template` could render for some composition or pod:
        /// chosen hosts and template hosts are disjoint, so no label can take a template host.
        HostLooksLikeTemplate,
        /// The composition exposes more ports than `--max-ports-per-composition`: refused whole.
        TooManyPorts,
        /// Exposing the composition would take the pod over `--max-hosts-per-pod`: refused whole.
        TooManyHosts,
        /// `compose-ingress.access` names a policy the operator did not define.
        UnknownAccessPolicy,
        /// `compose-ingress.access=public` where the operator does not allow public compositions.
        PublicNotAllowed,
        /// Two services of one composition want different access policies (the route has one).
        AccessConflict,
        /// `compose-ingress.protocol` is not one of the known protocols.
        UnknownProtocol,
        /// `compose-ingress.health` is neither `gate` nor `ignore`.
        InvalidHealth,
        /// The compose project name is too long or has characters Compose never gives one: it
        /// would reach object metadata, so the composition is refused whole.
        InvalidProjectName,
        /// A label only a route of its own can carry (a class, a TLS secret, a protocol the pod's
        /// route does not speak), in pod scope.
        NotInPodScope,
        /// The composition's access policy would not be carried whole by its routes (it adds
        /// nothing to the configured route API, or has filters a GRPCRoute cannot take): refused
        /// whole, so that it never goes public by accident.
        PolicyNotCarried,
        /// `compose-ingress.ttl` is not a duration, or is longer than the operator's
        /// `--max-exposure` (labels may only shorten it).
        InvalidTtl,
        /// The composition's exposure time is over: its routes are gone, its containers run on.
        Expired,
    }
}

impl Reason {
    /// The stable machine-readable code (a metric label value, a JSON and log field).
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidEnable => "invalid-enable",
            Reason::UnknownLabel => "unknown-label",
            Reason::ValueTooLong => "value-too-long",
            Reason::InvalidPort => "invalid-port",
            Reason::InvalidHost => "invalid-host",
            Reason::HostOutsideDomain => "host-outside-domain",
            Reason::InvalidPath => "invalid-path",
            Reason::InvalidRateLimit => "invalid-rate-limit",
            Reason::RateLimitAboveMax => "rate-limit-above-max",
            Reason::ClassNotAllowed => "class-not-allowed",
            Reason::ClassConflict => "class-conflict",
            Reason::TlsSecretNotAllowed => "tls-secret-not-allowed",
            Reason::TlsSecretConflict => "tls-secret-conflict",
            Reason::PortNotPublished => "port-not-published",
            Reason::InvalidHostTemplate => "invalid-host-template",
            Reason::HostTakenInComposition => "host-taken-in-composition",
            Reason::HostTaken => "host-taken",
            Reason::HostLooksLikeTemplate => "host-looks-like-template",
            Reason::TooManyPorts => "too-many-ports",
            Reason::TooManyHosts => "too-many-hosts",
            Reason::UnknownAccessPolicy => "unknown-access-policy",
            Reason::PublicNotAllowed => "public-not-allowed",
            Reason::AccessConflict => "access-conflict",
            Reason::UnknownProtocol => "unknown-protocol",
            Reason::InvalidHealth => "invalid-health",
            Reason::InvalidProjectName => "invalid-project-name",
            Reason::NotInPodScope => "not-in-pod-scope",
            Reason::PolicyNotCarried => "policy-not-carried",
            Reason::InvalidTtl => "invalid-ttl",
            Reason::Expired => "expired",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something of a composition that is not exposed, and why: a label value the contract refuses
/// (the container, service, label and shown value say where), or a host another pod holds
/// (`host` says which; the label fields are then empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub(crate) container: String,
    pub(crate) service: String,
    pub label: String,
    /// The offending value, shortened and escaped so that a log line stays readable.
    pub value: String,
    /// The host a refusal of the host itself ([`Reason::HostTaken`]) is about.
    pub(crate) host: Option<String>,
    pub reason: Reason,
    /// Human sentence: what was wrong and what to do.
    pub message: String,
}

impl Refusal {
    /// The whole composition is refused (a cap, its name): no container, service or label is
    /// to blame alone.
    pub(crate) fn composition(reason: Reason, message: String) -> Self {
        Refusal {
            container: String::new(),
            service: String::new(),
            label: String::new(),
            value: String::new(),
            host: None,
            reason,
            message,
        }
    }

    /// A host that another pod (or another composition) holds the Lease of.
    pub(crate) fn host_taken(host: &str, holder_pod: &str, holder_composition: &str) -> Self {
        Refusal {
            container: String::new(),
            service: String::new(),
            label: String::new(),
            value: String::new(),
            host: Some(host.to_string()),
            reason: Reason::HostTaken,
            message: format!(
                "host {host} is already claimed by pod {holder_pod} (composition {holder_composition}); choose another compose-ingress.host"
            ),
        }
    }
}

/// The application protocol of an exposed port (`compose-ingress.protocol`), for controllers
/// that must know how to speak to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum AppProtocol {
    Http,
    /// HTTP/2 over cleartext (prior knowledge).
    H2c,
    /// gRPC: HTTP/2 over cleartext; in Gateway mode routed by a GRPCRoute.
    Grpc,
    /// WebSocket over HTTP/1.1.
    Ws,
    /// The backend itself speaks TLS.
    Https,
}

impl AppProtocol {
    pub(crate) const ALL: [AppProtocol; 5] = [
        AppProtocol::Http,
        AppProtocol::H2c,
        AppProtocol::Grpc,
        AppProtocol::Ws,
        AppProtocol::Https,
    ];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::H2c => "h2c",
            AppProtocol::Grpc => "grpc",
            AppProtocol::Ws => "ws",
            AppProtocol::Https => "https",
        }
    }

    /// The Service port's `appProtocol` (Kubernetes' standard names, which Gateway API
    /// implementations read).
    pub(crate) fn app_protocol(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::H2c | AppProtocol::Grpc => "kubernetes.io/h2c",
            AppProtocol::Ws => "kubernetes.io/ws",
            AppProtocol::Https => "https",
        }
    }
}

/// One route: a host (and path) to one (compose service, container port).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub service: String,
    pub container_port: u16,
    pub(crate) host_port: u16,
    /// Stable Service port name (IANA_SVC_NAME) for this (service, container port).
    pub port_name: String,
    /// Stable Service port number for this (service, container port), unique in the Service.
    pub service_port: u16,
    /// Full host name, always `<one label>.<domain>`.
    pub host: String,
    /// Path prefix, starts with '/'.
    pub path: String,
    /// True when the host came from a label (it must be claimed with a Lease before use).
    pub(crate) chosen_host: bool,
    /// The protocol a label declared for the service's ports; `None`: HTTP/1.1, undeclared.
    pub(crate) protocol: Option<AppProtocol>,
    /// Whether the controller may send traffic to it (the endpoint's `ready` condition): the
    /// container is healthy, has no healthcheck, or its service opted out of health gating.
    pub(crate) ready: bool,
    /// The container's health as Docker reports it (for `/exposures` and `wait`).
    pub(crate) health: Health,
    /// The ingress class of its route: its service's label, else the operator's
    /// (`--ingress-class`). Per service, as in kompose: services of one composition that differ
    /// get an Ingress each.
    pub(crate) class: Option<String>,
    /// The TLS secret of its route: its service's label, else the operator's (`--tls-secret`).
    pub(crate) tls_secret: Option<String>,
}

/// Everything one composition needs in the cluster, or nothing when `backends` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredComposition {
    /// The composition's name as Docker reports it (the compose project name, raw).
    pub name: String,
    /// Deterministic object name shared by the Service and the (first) Ingress/HTTPRoute.
    pub object_name: String,
    /// Sorted by (service, container_port, ...); (host, path) pairs unique. One host may carry
    /// several paths, and one (service, container port) several hosts (kompose host lists).
    pub backends: Vec<Backend>,
    pub(crate) rate_limit_rps: Option<u32>,
    /// The access policy of the composition (a name of `PlanSettings::access`); `None`: public.
    pub(crate) access: Option<String>,
}

/// The planner's output for one composition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `None` when nothing of the composition is to be exposed (objects go after the grace).
    pub desired: Option<DesiredComposition>,
    pub(crate) refusals: Vec<Refusal>,
    /// Opted-in services with no running container but one that is created and not yet started
    /// (sorted): the composition is still coming up, so the reconciler may wait for them.
    pub(crate) awaiting_start: Vec<String>,
    /// When the composition's exposure time ends (unix seconds): its first exposed container's
    /// creation plus the shortest of `--max-exposure` and its services' `compose-ingress.ttl`.
    /// `None`: no bound.
    pub(crate) expires_at: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_unique_kebab_case() {
        let codes: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(codes.len(), Reason::ALL.len(), "a code is used twice");
        for code in codes {
            assert!(
                !code.is_empty()
                    && code
                        .split('-')
                        .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase())),
                "{code}"
            );
        }
    }

    #[test]
    fn documented_reason_codes_exist() {
        // docs/operability.md lists the codes of `refused_labels_total`; each must be one of ours.
        let doc = include_str!("../docs/operability.md");
        let row = doc
            .lines()
            .find(|l| l.starts_with("| `compose_ingress_refused_labels_total`"))
            .expect("the metric's row in docs/operability.md");
        let listed: Vec<&str> = row.split('`').skip(5).step_by(2).collect();
        assert!(listed.len() > 5, "{listed:?}");
        for code in listed {
            assert!(
                Reason::ALL.iter().any(|r| r.as_str() == code),
                "docs name `{code}`, which is no Reason"
            );
        }
    }

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_contain_what_they_should() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.2.3")) && !c.contains(ip("10.2.0.1")));
        assert!(
            c.contains(ip("::ffff:10.1.0.9")),
            "a v4-mapped address is the v4 one"
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("203.0.113.5"))
        );
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let odd = Cidr::parse("198.18.0.0/15").unwrap();
        assert!(odd.contains(ip("198.19.255.1")) && !odd.contains(ip("198.20.0.1")));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        for bad in ["10.0.0.0/33", "::/129", "ten", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn htpasswd_accepts_bcrypt_only_and_says_why_not() {
        let ok = Htpasswd::parse(
            "# users\nalice:$2y$05$abcdefghijklmnopqrstuu5Rz3Y0W8Wd1mXQ4v0b1rj7L6n9u\n\n",
        )
        .expect("bcrypt");
        assert!(ok.hash_of("alice").is_some() && ok.hash_of("bob").is_none());
        for (text, says) in [
            ("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "bcrypt"),
            ("carol:$apr1$xyz$abc", "htpasswd -B"),
            ("nocolon", "user:hash"),
            (":$2y$05$x", "no user"),
            ("", "no user"),
            ("a:$2y$x\na:$2y$y", "twice"),
        ] {
            let e = Htpasswd::parse(text).expect_err(text);
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
