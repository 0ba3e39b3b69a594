//! Observed composition -> desired composition (pure).
//!
//! The planner is the only place that decides what is exposed. It is a pure function of what
//! Docker reports *now* and of the operator's settings, so the reconciler can call it on every
//! hint and every resync and get the same answer for the same input (level-triggered, no state).

use std::collections::{BTreeMap, BTreeSet};

use crate::labels::{
    self, COMPOSE_CONTAINER_NUMBER, COMPOSE_ONEOFF, COMPOSE_SERVICE, ServiceExposure,
};
use crate::model::{
    AppProtocol, Backend, ContainerState, DesiredComposition, Health, ObservedComposition,
    ObservedContainer, PUBLIC_POLICY, Plan, PlanSettings, Protocol, Reason, Refusal, RouteScope,
};
use crate::naming;

/// Service ports are drawn from `SERVICE_PORT_BASE .. SERVICE_PORT_BASE + SERVICE_PORT_SPAN`,
/// clear of the privileged range (some controllers and policies treat those specially).
pub(crate) const SERVICE_PORT_BASE: u16 = 1024;
pub(crate) const SERVICE_PORT_SPAN: u16 = 60000;

/// Pseudo-label named in refusals about template hosts, which come from the operator's flag.
pub(crate) const TEMPLATE_SOURCE: &str = "--host-template";

/// Plans one composition.
///
/// - Only running containers count; `compose run` containers (`com.docker.compose.oneoff=True`)
///   are skipped, they are throw-away tasks rather than the composition.
/// - Containers are grouped by `com.docker.compose.service`; without compose labels a container
///   is its own service (named after the container) only when `expose_plain_containers` is on.
/// - **Scaled services** (`compose up --scale web=3`): the running container with the lowest
///   `com.docker.compose.container-number` is exposed and the others are not. dind publishes each
///   replica on its own host port, and one Service port can target only one port of the pod, so
///   load balancing across replicas is not possible through this pod's Service.
/// - Only published TCP ports count. A service without one is simply not exposed.
/// - Opted-in services with a created but not yet started container and no running one are
///   listed in `awaiting_start` (Compose v2 creates every container before it starts them).
/// - Hosts come from the template unless a label chose one (or kompose's `true` entry asks for
///   both); a chosen host routes to the service's first exposed port, as in kompose. When two
///   backends claim the same host and path, the first in (service, container port) order keeps
///   it and the others are refused.
/// - Class and TLS secret are per service, as in kompose (the label's, else the operator's):
///   services that differ get route objects of their own; backends on one host must agree
///   (the first keeps the host). The rate limit is the minimum of the operator's default and
///   every label.
pub fn plan(composition: &ObservedComposition, settings: &PlanSettings) -> Plan {
    if let Some(refusal) = project_name_refusal(&composition.name) {
        return Plan {
            desired: None,
            refusals: vec![refusal],
            awaiting_start: Vec::new(),
            expires_at: None,
        };
    }
    let mut refusals = Vec::new();
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut access: Option<(String, String)> = None;

    let running = group_services(composition, settings, ContainerState::Running);
    let awaiting_start = awaiting_start(composition, settings, &running);
    for (service, members) in running {
        let Some(container) = pick_replica(&members) else {
            continue;
        };
        let exposure = match labels::parse_service_labels(
            &container.name,
            &service,
            &container.labels,
            settings,
        ) {
            Ok(e) if e.enabled => e,
            Ok(_) => continue,
            Err(mut r) => {
                refusals.append(&mut r);
                continue;
            }
        };
        match exposed_ports(&service, container, &exposure, settings.pod_ip) {
            Ok(ports) if ports.is_empty() => continue,
            Ok(ports) => {
                // The route has one access policy, and a service without the label does not
                // take another's choice: it wants the default, so that one `public` label
                // cannot open its neighbours. (Class and TLS secret are per service: below.)
                if let Some(r) = agree(
                    &mut access,
                    Some(effective_access(&exposure, settings)),
                    &service,
                    container,
                    "access",
                ) {
                    refusals.push(r);
                    continue;
                }
                accepted.push(Accepted {
                    service,
                    container,
                    exposure,
                    ports,
                });
            }
            Err(r) => refusals.push(*r),
        }
    }

    // A cap on what one composition may make (Service ports, Ingress rules, hosts, Leases): one
    // published range would otherwise make thousands. Over it, nothing is exposed.
    let ports: usize = accepted.iter().map(|a| a.ports.len()).sum();
    if ports > settings.max_ports_per_composition {
        refusals.push(Refusal::composition(
            Reason::TooManyPorts,
            format!(
                "composition {} exposes {ports} ports, more than the operator's limit of {} \
                 (--max-ports-per-composition): nothing of it is exposed; list the ports to \
                 expose with compose-ingress.ports",
                composition.name, settings.max_ports_per_composition
            ),
        ));
        return Plan {
            desired: None,
            refusals,
            awaiting_start,
            expires_at: None,
        };
    }
    let (mut backends, mut host_refusals) = claim_hosts(&accepted, &composition.name, settings);
    for b in &mut backends {
        if let Some(a) = accepted.iter().find(|a| a.service == b.service) {
            b.protocol = a.exposure.protocol;
            b.health = a.container.health;
            // Health-gated routing: a container with a healthcheck gets traffic only while it
            // passes, unless its service opted out.
            b.ready = !a.exposure.health_gate
                || matches!(a.container.health, Health::None | Health::Healthy);
            // Per service, as kompose has them: the service's choice, else the operator's.
            b.class = a
                .exposure
                .class
                .clone()
                .or_else(|| settings.ingress_class.clone());
            b.tls_secret = a
                .exposure
                .tls_secret
                .clone()
                .or_else(|| settings.tls_secret.clone());
        }
    }
    refusals.append(&mut host_refusals);
    refusals.append(&mut one_route_per_host(&mut backends, &accepted));
    refusals.sort_by(|a, b| {
        (
            &a.service,
            &a.label,
            a.reason.as_str(),
            &a.container,
            &a.value,
            &a.message,
        )
            .cmp(&(
                &b.service,
                &b.label,
                b.reason.as_str(),
                &b.container,
                &b.value,
                &b.message,
            ))
    });

    if backends.is_empty() {
        return Plan {
            desired: None,
            refusals,
            awaiting_start,
            expires_at: None,
        };
    }
    let live: BTreeSet<&str> = backends.iter().map(|b| b.service.as_str()).collect();
    let live_exposures = || {
        accepted
            .iter()
            .filter(|a| live.contains(a.service.as_str()))
            .map(|a| &a.exposure)
    };
    let rate_limit_rps = live_exposures()
        .filter_map(|e| e.rate_limit_rps)
        .chain(settings.default_rps)
        .min();
    let access = live_exposures()
        .map(|e| effective_access(e, settings))
        .find(|a| *a != PUBLIC_POLICY)
        .map(str::to_string);
    // The exposure time: the shortest of the operator's and every live service's label, from
    // the first live container's creation (Docker's, so a restart of anything resets nothing).
    let ttl = live_exposures()
        .filter_map(|e| e.ttl)
        .chain(settings.max_exposure)
        .min();
    let started = accepted
        .iter()
        .filter(|a| live.contains(a.service.as_str()))
        .map(|a| a.container.created)
        .min();
    let expires_at = ttl.zip(started).map(|(ttl, started)| {
        started.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
    });
    if let Some(refusal) = policy_not_carried(access.as_deref(), &backends, settings) {
        refusals.push(refusal);
        return Plan {
            desired: None,
            refusals,
            awaiting_start,
            expires_at: None,
        };
    }

    Plan {
        desired: Some(DesiredComposition {
            name: composition.name.clone(),
            object_name: naming::object_name(&settings.pod_name, &composition.name),
            backends,
            rate_limit_rps,
            access,
        }),
        refusals,
        awaiting_start,
        expires_at,
    }
}

/// The longest compose project name the sidecar handles (it is written into an annotation of
/// every object). Compose's own names are far shorter.
pub(crate) const MAX_PROJECT_NAME: usize = 128;

/// Why the project name cannot be used, if it cannot. Compose v2 gives and accepts names of
/// `[a-z0-9_-]` only (its `-p` refuses `.` and capitals), so the fix names that set; a plain
/// container's key is its `/name`. Anything else came
/// from a hand-set label, and it reaches object metadata: refused.
pub(crate) fn project_name_refusal(name: &str) -> Option<Refusal> {
    let body = name.strip_prefix('/').unwrap_or(name);
    let ok = !body.is_empty()
        && name.len() <= MAX_PROJECT_NAME
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    (!ok).then(|| {
        let shown: String = name.chars().take(crate::labels::MAX_SHOWN_CHARS).collect();
        Refusal::composition(
            Reason::InvalidProjectName,
            format!(
                "composition name {:?} ({} bytes) is not exposed: a name must be 1 to \
                 {MAX_PROJECT_NAME} characters of letters, digits, '-', '_' and '.' (name the \
                 project with docker compose -p and lowercase letters, digits, '-' and '_', \
                 which Compose v2 also accepts)",
                shown,
                name.len()
            ),
        )
    })
}

/// A service that passed every per-service check, with its exposed `(container, host)` ports.
struct Accepted<'a> {
    service: String,
    container: &'a ObservedContainer,
    exposure: ServiceExposure,
    ports: Vec<(u16, u16)>,
}

/// The composition's containers in `state`, by service (one-off containers left out).
fn group_services<'a>(
    composition: &'a ObservedComposition,
    settings: &PlanSettings,
    state: ContainerState,
) -> BTreeMap<String, Vec<&'a ObservedContainer>> {
    let mut groups: BTreeMap<String, Vec<&ObservedContainer>> = BTreeMap::new();
    for c in &composition.containers {
        if c.state != state {
            continue;
        }
        if c.labels
            .get(COMPOSE_ONEOFF)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            continue;
        }
        let service = match c.labels.get(COMPOSE_SERVICE) {
            Some(s) if !s.is_empty() => s.clone(),
            _ if settings.expose_plain_containers => c.name.clone(),
            _ => continue,
        };
        groups.entry(service).or_default().push(c);
    }
    groups
}

/// Services that opted in and have a created, never started container but no running one.
/// A created container lists no published ports yet, so the opt-in label is all there is to go
/// by; a label error is reported once the container runs, not here.
fn awaiting_start(
    composition: &ObservedComposition,
    settings: &PlanSettings,
    running: &BTreeMap<String, Vec<&ObservedContainer>>,
) -> Vec<String> {
    group_services(composition, settings, ContainerState::Created)
        .into_iter()
        .filter(|(service, _)| !running.contains_key(service))
        .filter(|(service, members)| {
            members.iter().any(|c| {
                matches!(
                    labels::parse_service_labels(&c.name, service, &c.labels, settings),
                    Ok(e) if e.enabled
                )
            })
        })
        .map(|(service, _)| service)
        .collect()
}

/// The replica with the lowest container number (ties and missing numbers: by name, then id),
/// so the choice is stable across resyncs.
fn pick_replica<'a>(members: &[&'a ObservedContainer]) -> Option<&'a ObservedContainer> {
    members.iter().copied().min_by(|a, b| {
        let num = |c: &ObservedContainer| {
            c.labels
                .get(COMPOSE_CONTAINER_NUMBER)
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        };
        (num(a), &a.name, &a.id).cmp(&(num(b), &b.name, &b.id))
    })
}

/// The `(container port, host port)` pairs to expose, sorted by container port. Docker may
/// report one container port several times (IPv4 and IPv6 bindings, or several host ports); the
/// lowest host port is used.
fn exposed_ports(
    service: &str,
    container: &ObservedContainer,
    exposure: &ServiceExposure,
    pod_ip: Option<std::net::Ipv4Addr>,
) -> Result<Vec<(u16, u16)>, Box<Refusal>> {
    let mut tcp: BTreeMap<u16, u16> = BTreeMap::new();
    for p in &container.published {
        if p.protocol != Protocol::Tcp || p.host_port == 0 || !p.reachable_on(pod_ip) {
            continue;
        }
        let host = tcp.entry(p.container_port).or_insert(p.host_port);
        *host = (*host).min(p.host_port);
    }
    let ports: Vec<(u16, u16)> = match &exposure.ports {
        None => tcp.into_iter().collect(),
        Some(wanted) => {
            let missing: Vec<String> = wanted
                .iter()
                .filter(|p| !tcp.contains_key(p))
                .map(u16::to_string)
                .collect();
            if !missing.is_empty() {
                let published: Vec<String> = tcp.keys().map(u16::to_string).collect();
                let published = if published.is_empty() {
                    "none".to_string()
                } else {
                    published.join(", ")
                };
                return Err(Box::new(labels::refusal(
                    &container.name,
                    service,
                    labels::PORTS,
                    container
                        .labels
                        .get(labels::PORTS)
                        .map_or("", String::as_str),
                    Reason::PortNotPublished,
                    &format!(
                        "container port(s) {} are not published over TCP on the pod's IPv4 address (published there: {published}); publish them under `ports:` in the compose file (e.g. \"5000\" or \"0.0.0.0:8080:5000\"; not on 127.0.0.1 or [::] only) or remove them from {}",
                        missing.join(", "),
                        labels::PORTS
                    ),
                )));
            }
            wanted
                .iter()
                .filter_map(|p| tcp.get(p).map(|h| (*p, *h)))
                .collect()
        }
    };
    Ok(ports)
}

/// Fail closed: a composition whose access policy its routes would not carry whole (see
/// `AccessPolicy::gap`) is refused whole rather than exposed without it. Composition scope only
/// (the pod scope's proxy enforces its own policies, checked at start-up).
fn policy_not_carried(
    access: Option<&str>,
    backends: &[Backend],
    settings: &PlanSettings,
) -> Option<Refusal> {
    if settings.scope != RouteScope::Composition {
        return None;
    }
    let name = access?;
    let grpc = backends
        .iter()
        .any(|b| b.protocol == Some(AppProtocol::Grpc));
    let gap = settings
        .access
        .named(Some(name))?
        .gap(settings.route_api, grpc)?;
    Some(Refusal::composition(
        Reason::PolicyNotCarried,
        format!(
            "the composition's access policy `{name}` would not protect it: {gap}; nothing of \
             it is exposed (the operator fixes the policy file, or the composition chooses \
             another policy with {})",
            labels::ACCESS
        ),
    ))
}

/// The access policy a service gets: its label's, else the operator's default, else public.
fn effective_access<'a>(exposure: &'a ServiceExposure, settings: &'a PlanSettings) -> &'a str {
    exposure
        .access
        .as_deref()
        .or(settings.access.default.as_deref())
        .unwrap_or(PUBLIC_POLICY)
}

/// The first service's access policy is the composition's; a later service wanting another
/// is refused, because the route has one policy.
fn agree(
    current: &mut Option<(String, String)>,
    wanted: Option<&str>,
    service: &str,
    container: &ObservedContainer,
    what: &str,
) -> Option<Refusal> {
    let wanted = wanted?;
    match current {
        None => {
            *current = Some((wanted.to_string(), service.to_string()));
            None
        }
        Some((have, _)) if have == wanted => None,
        Some((have, owner)) => Some(labels::refusal(
            &container.name,
            service,
            labels::ACCESS,
            wanted,
            Reason::AccessConflict,
            &format!(
                "the composition has one {what} and service `{owner}` already chose `{have}`; use the same {what} in every service or remove the label"
            ),
        )),
    }
}

/// One host is served by one controller with one certificate: the backends of a host must have
/// one class and one TLS secret. The first backend of a host (in (service, port) order) keeps
/// it; a later one of a service that wants another class or secret is refused (services on
/// different hosts may differ: each (class, secret) gets a route object of its own).
fn one_route_per_host(backends: &mut Vec<Backend>, accepted: &[Accepted<'_>]) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    let mut first: BTreeMap<String, (Option<String>, Option<String>, String)> = BTreeMap::new();
    backends.retain(|b| {
        let (class, tls, owner) = first
            .entry(b.host.clone())
            .or_insert_with(|| (b.class.clone(), b.tls_secret.clone(), b.service.clone()))
            .clone();
        if class == b.class && tls == b.tls_secret {
            return true;
        }
        let container = accepted.iter().find(|a| a.service == b.service).map(|a| a.container);
        let has = |label: &str| container.is_some_and(|c| c.labels.contains_key(label));
        let (label, reason, noun, theirs, ours) = if class != b.class {
            let label = if has(labels::CLASS) { labels::CLASS } else { labels::KOMPOSE_CLASS };
            (label, Reason::ClassConflict, "class", class, b.class.clone())
        } else {
            (labels::KOMPOSE_TLS_SECRET, Reason::TlsSecretConflict, "TLS secret", tls, b.tls_secret.clone())
        };
        let shown = |v: Option<String>| v.unwrap_or_else(|| "none".to_string());
        refusals.push(labels::refusal(
            container.map_or("", |c| c.name.as_str()),
            &b.service,
            label,
            container
                .and_then(|c| c.labels.get(label))
                .map_or("", String::as_str),
            reason,
            &format!(
                "host {} is routed to service `{owner}` with {noun} `{}`, and one host has one {noun}; this service wants `{}`: give it another host, or the same {noun}",
                b.host,
                shown(theirs),
                shown(ours)
            ),
        ));
        false
    });
    refusals
}

/// A backend before host claims: (service, container port, host port, host, path, the label
/// that chose the host or `None` for the template). Ordered so that sorting gives claim order.
type Candidate<'a> = (&'a str, u16, u16, String, String, Option<&'static str>);

/// Builds every candidate backend and gives each (host, path) to the first claimant in
/// (service, container port) order.
fn claim_hosts(
    accepted: &[Accepted<'_>],
    composition: &str,
    settings: &PlanSettings,
) -> (Vec<Backend>, Vec<Refusal>) {
    let mut refusals = Vec::new();
    // (service, container port, host port, host, path, source label or None for the template)
    let mut candidates: Vec<Candidate<'_>> = Vec::new();
    for a in accepted {
        for (index, &(container_port, host_port)) in a.ports.iter().enumerate() {
            if a.exposure.template_hosts {
                match naming::render_host_label(
                    &settings.host_template,
                    &a.service,
                    container_port,
                    composition,
                    &settings.pod_name,
                ) {
                    Ok(label) => candidates.push((
                        &a.service,
                        container_port,
                        host_port,
                        naming::full_host(&label, &settings.domain),
                        a.exposure.path.clone(),
                        None,
                    )),
                    Err(e) => refusals.push(labels::refusal(
                        &a.container.name,
                        &a.service,
                        TEMPLATE_SOURCE,
                        &settings.host_template,
                        Reason::InvalidHostTemplate,
                        &format!("{e}; the operator must fix --host-template"),
                    )),
                }
            }
            // A chosen host routes one port, as in kompose; kompose takes the compose file's first,
            // which Docker does not keep (ports come as a map), so ours is the lowest (sorted).
            if index == 0 {
                for h in &a.exposure.hosts {
                    candidates.push((
                        &a.service,
                        container_port,
                        host_port,
                        naming::full_host(&h.label, &settings.domain),
                        h.path.clone(),
                        Some(h.source),
                    ));
                }
            }
        }
    }
    candidates.sort();

    let containers: BTreeMap<&str, &ObservedContainer> = accepted
        .iter()
        .map(|a| (a.service.as_str(), a.container))
        .collect();
    let mut owners: BTreeMap<(String, String), (String, u16)> = BTreeMap::new();
    let mut kept = Vec::new();
    for (service, container_port, host_port, host, path, source) in candidates {
        let key = (host.clone(), path.clone());
        if let Some((owner, owner_port)) = owners.get(&key) {
            let container = containers.get(service).map_or("", |c| c.name.as_str());
            let (label, value) = match source {
                Some(l) => (
                    l,
                    containers
                        .get(service)
                        .and_then(|c| c.labels.get(l))
                        .cloned()
                        .unwrap_or_default(),
                ),
                None => (TEMPLATE_SOURCE, host.clone()),
            };
            let fix = if source.is_some() {
                "choose another host".to_string()
            } else {
                format!(
                    "set {} on one of them, or give them different {} values",
                    labels::HOST,
                    labels::PATH
                )
            };
            refusals.push(labels::refusal(
                container,
                service,
                label,
                &value,
                Reason::HostTakenInComposition,
                &format!(
                    "host {host} path {path} (port {container_port}) is already routed to service `{owner}` port {owner_port}; {fix}"
                ),
            ));
            continue;
        }
        owners.insert(key, (service.to_string(), container_port));
        kept.push((
            service,
            container_port,
            host_port,
            host,
            path,
            source.is_some(),
        ));
    }

    let keys: BTreeSet<(String, u16)> = kept.iter().map(|(s, p, ..)| (s.to_string(), *p)).collect();
    let numbers = assign_service_ports(&keys);
    let mut backends: Vec<Backend> = kept
        .into_iter()
        .filter_map(
            |(service, container_port, host_port, host, path, chosen_host)| {
                let service_port = *numbers.get(&(service.to_string(), container_port))?;
                Some(Backend {
                    service: service.to_string(),
                    container_port,
                    host_port,
                    port_name: naming::port_name(service, container_port),
                    service_port,
                    host,
                    path,
                    chosen_host,
                    protocol: None,
                    ready: true,
                    health: Health::None,
                    class: None,
                    tls_secret: None,
                })
            },
        )
        .collect();
    backends.sort();
    (backends, refusals)
}

/// A stable, unique Service port per (service, container port): `1024 + hash % 60000`, linear
/// probing in sorted key order on collision. The number only changes when a colliding key that
/// sorts earlier appears, and then only the Service changes: routes reference ports by name.
/// Keys beyond the range's capacity get no number (and their backends are dropped); no real
/// composition comes near 60000 ports.
pub(crate) fn assign_service_ports(keys: &BTreeSet<(String, u16)>) -> BTreeMap<(String, u16), u16> {
    let mut used: BTreeSet<u16> = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (service, port) in keys {
        let start =
            (naming::hash_u64(&format!("{service}/{port}")) % u64::from(SERVICE_PORT_SPAN)) as u16;
        let free = (0..SERVICE_PORT_SPAN)
            .map(|i| ((u32::from(start) + u32::from(i)) % u32::from(SERVICE_PORT_SPAN)) as u16)
            .find(|offset| !used.contains(offset));
        if let Some(offset) = free {
            used.insert(offset);
            out.insert((service.clone(), *port), SERVICE_PORT_BASE + offset);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::COMPOSE_PROJECT;
    use crate::model::PublishedPort;
    use crate::test_support::settings;

    fn container(
        name: &str,
        service: &str,
        number: u32,
        labels: &[(&str, &str)],
        ports: &[(u16, Protocol, u16)],
    ) -> ObservedContainer {
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.insert(COMPOSE_PROJECT.into(), "demochat".into());
        l.insert(COMPOSE_SERVICE.into(), service.into());
        l.insert(COMPOSE_CONTAINER_NUMBER.into(), number.to_string());
        l.insert(COMPOSE_ONEOFF.into(), "False".into());
        ObservedContainer {
            id: format!("id-{name}"),
            name: name.into(),
            labels: l,
            state: ContainerState::Running,
            published: ports
                .iter()
                .map(|&(container_port, protocol, host_port)| PublishedPort {
                    container_port,
                    protocol,
                    host_port,
                    host_ip: "0.0.0.0".into(),
                })
                .collect(),
            health: Default::default(),
            created: 1_700_000_000,
        }
    }

    fn composition(containers: Vec<ObservedContainer>) -> ObservedComposition {
        ObservedComposition {
            name: "demochat".into(),
            containers,
        }
    }

    const ON: (&str, &str) = (labels::ENABLE, "true");
    const TCP: Protocol = Protocol::Tcp;

    fn hosts(p: &Plan) -> Vec<String> {
        p.desired
            .as_ref()
            .map(|d| d.backends.iter().map(|b| b.host.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn exposes_template_hosts_for_tcp_ports() {
        let p = plan(
            &composition(vec![container(
                "demochat-web-1",
                "web",
                1,
                &[ON],
                &[
                    (5000, TCP, 32768),
                    (53, Protocol::Udp, 32769),
                    (9, Protocol::Sctp, 1),
                ],
            )]),
            &settings(),
        );
        assert!(p.refusals.is_empty(), "{:?}", p.refusals);
        let d = p.desired.unwrap();
        assert_eq!(d.backends.len(), 1);
        let b = &d.backends[0];
        assert_eq!(b.host, "web-5000-demochat-runner-3.composition.example.com");
        assert_eq!(b.path, "/");
        assert_eq!(b.container_port, 5000);
        assert_eq!(b.host_port, 32768);
        assert_eq!(b.port_name, naming::port_name("web", 5000));
        assert!(!b.chosen_host);
        assert!((1024..61024).contains(&b.service_port));
        assert_eq!(d.object_name, naming::object_name("runner-3", "demochat"));
        assert_eq!(b.class.as_deref(), Some("public"));
        assert_eq!(b.tls_secret.as_deref(), Some("wildcard-tls"));
        assert_eq!(d.rate_limit_rps, Some(100));
    }

    #[test]
    fn a_container_with_a_healthcheck_is_ready_only_while_healthy_unless_it_opts_out() {
        let ready = |health: Health, labels: &[(&str, &str)]| {
            let mut c = container("demo-web-1", "web", 1, labels, &[(80, TCP, 32768)]);
            c.health = health;
            let d = plan(&composition(vec![c]), &settings())
                .desired
                .expect("exposed");
            assert_eq!(d.backends[0].health, health);
            d.backends[0].ready
        };
        assert!(
            ready(Health::None, &[ON]),
            "no healthcheck: routed as it runs"
        );
        assert!(ready(Health::Healthy, &[ON]));
        assert!(!ready(Health::Starting, &[ON]));
        assert!(!ready(Health::Unhealthy, &[ON]));
        let ignore = [ON, (crate::labels::HEALTH, "ignore")];
        assert!(ready(Health::Starting, &ignore));
        assert!(ready(Health::Unhealthy, &ignore));
    }

    #[test]
    fn a_composition_over_the_port_cap_is_refused_whole() {
        // Two services, 12 + 9 published ports: 21 > 20. Not half: nothing.
        let many = |first: u16, n: u16| -> Vec<(u16, Protocol, u16)> {
            (0..n)
                .map(|i| (first + i, TCP, 40000 + first + i))
                .collect()
        };
        let p = plan(
            &composition(vec![
                container("web", "web", 1, &[ON], &many(8000, 12)),
                container("api", "api", 1, &[ON], &many(9000, 9)),
            ]),
            &settings(),
        );
        assert!(p.desired.is_none(), "{:?}", hosts(&p));
        let r = &p.refusals[0];
        assert_eq!(r.reason, Reason::TooManyPorts);
        assert!(r.message.contains("21 ports"), "{}", r.message);
        assert!(
            r.message.contains("--max-ports-per-composition"),
            "{}",
            r.message
        );
        // At the cap, all of it is exposed.
        let p = plan(
            &composition(vec![
                container("web", "web", 1, &[ON], &many(8000, 11)),
                container("api", "api", 1, &[ON], &many(9000, 9)),
            ]),
            &settings(),
        );
        assert_eq!(hosts(&p).len(), 20, "{:?}", p.refusals);
    }

    #[test]
    fn project_names_that_compose_never_gives_are_refused() {
        let web = || container("web", "web", 1, &[ON], &[(80, TCP, 32768)]);
        let named = |name: &str| {
            plan(
                &ObservedComposition {
                    name: name.to_string(),
                    containers: vec![web()],
                },
                &settings(),
            )
        };
        for good in [
            "demo",
            "Demo_Chat.v1",
            "a",
            "/plain-container",
            &"x".repeat(128),
        ] {
            assert!(named(good).desired.is_some(), "{good}");
        }
        for bad in [
            "",
            "/",
            &"x".repeat(129),
            "a b",
            "shop\nkubernetes.io/evil: x",
            "über",
            "a/b",
        ] {
            let p = named(bad);
            assert!(p.desired.is_none(), "{bad:?}");
            assert_eq!(p.refusals.len(), 1);
            assert_eq!(p.refusals[0].reason, Reason::InvalidProjectName);
            assert!(
                p.refusals[0].message.len() < 400,
                "{}",
                p.refusals[0].message
            );
        }
    }

    #[test]
    fn nothing_exposed_without_opt_in_or_ports() {
        let p = plan(
            &composition(vec![
                container("a", "a", 1, &[], &[(80, TCP, 1000)]),
                container("b", "b", 1, &[ON], &[(53, Protocol::Udp, 1001)]),
                container("c", "c", 1, &[ON], &[]),
            ]),
            &settings(),
        );
        assert_eq!(p.desired, None);
        assert!(p.refusals.is_empty());
    }

    #[test]
    fn skips_stopped_and_oneoff_containers() {
        let mut stopped = container("web-1", "web", 1, &[ON], &[(80, TCP, 1000)]);
        stopped.state = ContainerState::Stopped;
        let mut oneoff = container("web-run-1", "web", 1, &[ON], &[(80, TCP, 1001)]);
        oneoff.labels.insert(COMPOSE_ONEOFF.into(), "True".into());
        let p = plan(&composition(vec![stopped, oneoff]), &settings());
        assert_eq!(p.desired, None);
    }

    #[test]
    fn created_opted_in_services_without_a_running_container_are_awaited() {
        let web = container("demochat-web-1", "web", 1, &[ON], &[(80, TCP, 1000)]);
        let mut api = container("demochat-api-1", "api", 1, &[ON], &[]);
        api.state = ContainerState::Created;
        let mut db = container("demochat-db-1", "db", 1, &[], &[]);
        db.state = ContainerState::Created;
        let mut web2 = container("demochat-web-2", "web", 2, &[ON], &[]);
        web2.state = ContainerState::Created;
        let mut bad = container(
            "demochat-bad-1",
            "bad",
            1,
            &[(labels::ENABLE, "maybe")],
            &[],
        );
        bad.state = ContainerState::Created;
        let mut exited = container("demochat-old-1", "old", 1, &[ON], &[]);
        exited.state = ContainerState::Stopped;
        let p = plan(
            &composition(vec![web, api, db, web2, bad, exited]),
            &settings(),
        );
        // web runs (its second replica does not matter), db did not opt in, bad's label is
        // refused once it runs, old has stopped: only api is still to come.
        assert_eq!(p.awaiting_start, vec!["api".to_string()]);
        assert_eq!(
            hosts(&p),
            vec!["web-80-demochat-runner-3.composition.example.com"]
        );
        assert!(p.refusals.is_empty(), "{:?}", p.refusals);
    }

    #[test]
    fn plain_containers_only_when_enabled() {
        let mut plain = container("lonely", "x", 1, &[ON], &[(80, TCP, 1000)]);
        plain
            .labels
            .retain(|k, _| !k.starts_with("com.docker.compose"));
        let proj = ObservedComposition {
            name: "lonely".into(),
            containers: vec![plain],
        };
        assert_eq!(plan(&proj, &settings()).desired, None);
        let mut s = settings();
        s.expose_plain_containers = true;
        let p = plan(&proj, &s);
        assert_eq!(
            hosts(&p),
            vec!["lonely-80-lonely-runner-3.composition.example.com"]
        );
    }

    #[test]
    fn scaled_service_exposes_lowest_container_number() {
        let p = plan(
            &composition(vec![
                container("demochat-web-3", "web", 3, &[ON], &[(80, TCP, 3003)]),
                container("demochat-web-1", "web", 1, &[ON], &[(80, TCP, 3001)]),
                container("demochat-web-2", "web", 2, &[ON], &[(80, TCP, 3002)]),
            ]),
            &settings(),
        );
        let d = p.desired.unwrap();
        assert_eq!(d.backends.len(), 1);
        assert_eq!(d.backends[0].host_port, 3001);
    }

    #[test]
    fn ports_label_selects_and_refuses_unpublished() {
        let p = plan(
            &composition(vec![container(
                "web-1",
                "web",
                1,
                &[ON, (labels::PORTS, "8080")],
                &[(5000, TCP, 1000), (8080, TCP, 1001)],
            )]),
            &settings(),
        );
        let d = p.desired.unwrap();
        assert_eq!(d.backends.len(), 1);
        assert_eq!(d.backends[0].container_port, 8080);

        let p = plan(
            &composition(vec![
                container(
                    "web-1",
                    "web",
                    1,
                    &[ON, (labels::PORTS, "8080,9000")],
                    &[(8080, TCP, 1001), (9000, Protocol::Udp, 1002)],
                ),
                container("api-1", "api", 1, &[ON], &[(80, TCP, 1003)]),
            ]),
            &settings(),
        );
        assert_eq!(p.refusals.len(), 1);
        let r = &p.refusals[0];
        assert_eq!(r.reason, Reason::PortNotPublished);
        assert_eq!(r.label, labels::PORTS);
        assert_eq!(r.value, "8080,9000");
        assert!(r.message.contains("9000"), "{}", r.message);
        // the other service is unaffected
        assert_eq!(
            hosts(&p),
            vec!["api-80-demochat-runner-3.composition.example.com"]
        );
    }

    /// kompose routes a chosen host to one port (`svc.Spec.Ports[0]`, the file's first); Docker
    /// does not keep the file's order, so here it is the lowest, and the other ports are not routed.
    #[test]
    fn a_chosen_host_on_several_ports_routes_the_lowest_one() {
        for labels in [
            vec![ON, (labels::HOST, "chat")],
            vec![(labels::KOMPOSE_EXPOSE, "chat.composition.example.com")],
        ] {
            let p = plan(
                &composition(vec![container(
                    "web-1",
                    "web",
                    1,
                    &labels,
                    &[(443, TCP, 1001), (80, TCP, 1000)],
                )]),
                &settings(),
            );
            assert!(p.refusals.is_empty(), "{:?}", p.refusals);
            let d = p.desired.unwrap();
            let routes: Vec<_> = d
                .backends
                .iter()
                .map(|b| (b.host.as_str(), b.container_port, b.chosen_host))
                .collect();
            assert_eq!(routes, [("chat.composition.example.com", 80, true)]);
        }
        // compose-ingress.ports picks which port is first.
        let p = plan(
            &composition(vec![container(
                "web-1",
                "web",
                1,
                &[ON, (labels::HOST, "chat"), (labels::PORTS, "443")],
                &[(80, TCP, 1000), (443, TCP, 1001)],
            )]),
            &settings(),
        );
        let d = p.desired.unwrap();
        assert_eq!(d.backends[0].host, "chat.composition.example.com");
        assert_eq!(d.backends[0].container_port, 443);
    }

    /// `kompose.service.expose: "true,host1,host2"`: kompose's rule without a host (here the
    /// template hosts) and the two chosen hosts.
    #[test]
    fn kompose_true_in_a_host_list_adds_the_template_hosts() {
        let p = plan(
            &composition(vec![container(
                "web-1",
                "web",
                1,
                &[(
                    labels::KOMPOSE_EXPOSE,
                    "true, chat.composition.example.com ,,www.composition.example.com/app",
                )],
                &[(80, TCP, 1000), (8080, TCP, 1001)],
            )]),
            &settings(),
        );
        assert!(p.refusals.is_empty(), "{:?}", p.refusals);
        let routes: Vec<(String, String, u16)> = p
            .desired
            .unwrap()
            .backends
            .iter()
            .map(|b| (b.host.clone(), b.path.clone(), b.container_port))
            .collect();
        let template = |port: u16| format!("web-{port}-demochat-runner-3.composition.example.com");
        assert_eq!(
            routes,
            [
                ("chat.composition.example.com".into(), "/".into(), 80),
                (template(80), "/".into(), 80),
                ("www.composition.example.com".into(), "/app".into(), 80),
                (template(8080), "/".into(), 8080),
            ]
        );
    }

    #[test]
    fn same_host_and_path_first_service_wins() {
        let p = plan(
            &composition(vec![
                container(
                    "b-1",
                    "b",
                    1,
                    &[ON, (labels::HOST, "chat")],
                    &[(80, TCP, 1000)],
                ),
                container(
                    "a-1",
                    "a",
                    1,
                    &[ON, (labels::HOST, "chat")],
                    &[(80, TCP, 1001)],
                ),
                container(
                    "c-1",
                    "c",
                    1,
                    &[ON, (labels::HOST, "chat"), (labels::PATH, "/api")],
                    &[(80, TCP, 1002)],
                ),
            ]),
            &settings(),
        );
        let d = p.desired.unwrap();
        let routes: Vec<_> = d
            .backends
            .iter()
            .map(|b| (b.service.as_str(), b.path.as_str()))
            .collect();
        assert_eq!(routes, vec![("a", "/"), ("c", "/api")]);
        assert_eq!(p.refusals.len(), 1);
        assert_eq!(p.refusals[0].service, "b");
        assert_eq!(p.refusals[0].reason, Reason::HostTakenInComposition);
        assert_eq!(p.refusals[0].label, labels::HOST);
    }

    #[test]
    fn a_chosen_host_never_equals_a_template_host() {
        // The victim's template host, rendered by the planner itself.
        let victim = plan(
            &ObservedComposition {
                name: "victim".into(),
                containers: vec![container(
                    "victim-web-1",
                    "web",
                    1,
                    &[ON],
                    &[(80, TCP, 1000)],
                )],
            },
            &settings(),
        );
        let taken = hosts(&victim);
        assert_eq!(taken, ["web-80-victim-runner-3.composition.example.com"]);
        // A composition that chooses it is refused, whether it comes up first or not.
        let squat = plan(
            &ObservedComposition {
                name: "squat".into(),
                containers: vec![
                    container(
                        "squat-web-1",
                        "web",
                        1,
                        &[ON, (labels::HOST, &taken[0])],
                        &[(80, TCP, 1001)],
                    ),
                    container("squat-ok-1", "ok", 1, &[ON], &[(80, TCP, 1002)]),
                ],
            },
            &settings(),
        );
        assert_eq!(squat.refusals.len(), 1, "{:?}", squat.refusals);
        assert_eq!(squat.refusals[0].reason, Reason::HostLooksLikeTemplate);
        assert_eq!(squat.refusals[0].service, "web");
        assert_eq!(
            hosts(&squat),
            ["ok-80-squat-runner-3.composition.example.com"]
        );
    }

    #[test]
    fn template_without_port_collides_on_second_port() {
        let mut s = settings();
        s.host_template = "{service}-{project}".into();
        let p = plan(
            &composition(vec![container(
                "web-1",
                "web",
                1,
                &[ON],
                &[(80, TCP, 1000), (443, TCP, 1001)],
            )]),
            &s,
        );
        assert_eq!(hosts(&p), vec!["web-demochat.composition.example.com"]);
        assert_eq!(p.desired.unwrap().backends[0].container_port, 80);
        assert_eq!(p.refusals[0].reason, Reason::HostTakenInComposition);
        assert_eq!(p.refusals[0].label, TEMPLATE_SOURCE);
    }

    /// Class and TLS secret per service, as kompose has them: a service without the label gets
    /// the operator's, not its neighbour's choice; only services sharing a host must agree.
    #[test]
    fn class_and_tls_secret_are_per_service_and_one_per_host() {
        let p = plan(
            &composition(vec![
                container(
                    "a-1",
                    "a",
                    1,
                    &[
                        ON,
                        (labels::CLASS, "heavy"),
                        (labels::KOMPOSE_TLS_SECRET, "other-tls"),
                    ],
                    &[(80, TCP, 1000)],
                ),
                container(
                    "b-1",
                    "b",
                    1,
                    &[ON, (labels::CLASS, "public")],
                    &[(80, TCP, 1001)],
                ),
                container("c-1", "c", 1, &[ON], &[(80, TCP, 1002)]),
            ]),
            &settings(),
        );
        assert!(p.refusals.is_empty(), "{:?}", p.refusals);
        let d = p.desired.unwrap();
        let per_service: Vec<_> = d
            .backends
            .iter()
            .map(|b| {
                (
                    b.service.as_str(),
                    b.class.as_deref(),
                    b.tls_secret.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            per_service,
            [
                ("a", Some("heavy"), Some("other-tls")),
                ("b", Some("public"), Some("wildcard-tls")),
                ("c", Some("public"), Some("wildcard-tls")),
            ]
        );

        // One host, two services (paths): the later one wanting another class is refused.
        let p = plan(
            &composition(vec![
                container(
                    "a-1",
                    "a",
                    1,
                    &[ON, (labels::HOST, "shop"), (labels::PATH, "/api")],
                    &[(80, TCP, 1000)],
                ),
                container(
                    "b-1",
                    "b",
                    1,
                    &[ON, (labels::HOST, "shop"), (labels::CLASS, "heavy")],
                    &[(80, TCP, 1001)],
                ),
            ]),
            &settings(),
        );
        assert_eq!(p.refusals.len(), 1, "{:?}", p.refusals);
        assert_eq!(p.refusals[0].service, "b");
        assert_eq!(p.refusals[0].reason, Reason::ClassConflict);
        assert_eq!(p.refusals[0].label, labels::CLASS);
        assert!(
            p.refusals[0]
                .message
                .contains("shop.composition.example.com")
        );
        let services: Vec<_> = p
            .desired
            .unwrap()
            .backends
            .iter()
            .map(|b| b.service.clone())
            .collect();
        assert_eq!(services, ["a"]);
    }

    #[test]
    fn rate_limit_is_the_minimum_and_tls_from_kompose() {
        let p = plan(
            &composition(vec![
                container(
                    "a-1",
                    "a",
                    1,
                    &[ON, (labels::RATE_LIMIT_RPS, "30")],
                    &[(80, TCP, 1000)],
                ),
                container(
                    "b-1",
                    "b",
                    1,
                    &[
                        (labels::KOMPOSE_EXPOSE, "true"),
                        (labels::RATE_LIMIT_RPS, "50"),
                        (labels::KOMPOSE_TLS_SECRET, "other-tls"),
                    ],
                    &[(80, TCP, 1001)],
                ),
            ]),
            &settings(),
        );
        let d = p.desired.unwrap();
        assert_eq!(d.rate_limit_rps, Some(30));
        let tls: Vec<_> = d.backends.iter().map(|b| b.tls_secret.as_deref()).collect();
        assert_eq!(tls, [Some("wildcard-tls"), Some("other-tls")]);

        let mut s = settings();
        s.default_rps = None;
        s.max_rps = None;
        let p = plan(
            &composition(vec![container("a-1", "a", 1, &[ON], &[(80, TCP, 1000)])]),
            &s,
        );
        assert_eq!(p.desired.unwrap().rate_limit_rps, None);
    }

    #[test]
    fn only_bindings_the_pod_ip_reaches_are_exposed() {
        let mut c = container("web-1", "web", 1, &[ON], &[]);
        let bind = |cport: u16, hport: u16, ip: &str| PublishedPort {
            container_port: cport,
            protocol: TCP,
            host_port: hport,
            host_ip: ip.into(),
        };
        c.published = vec![
            // Docker < 27: IPv6 on a lower port than IPv4 (another container's IPv4 port)
            bind(8000, 40002, "0.0.0.0"),
            bind(8000, 40001, "::"),
            // IPv6 only, loopback only, a dind network address: not reachable on the pod IP
            bind(8001, 40003, "::"),
            bind(8002, 40004, "127.0.0.1"),
            bind(8003, 40005, "198.19.0.5"),
            // on exactly the pod's address
            bind(8004, 40006, "198.18.7.2"),
        ];
        let mut s = settings();
        s.pod_ip = Some("198.18.7.2".parse().unwrap());
        let d = plan(&composition(vec![c.clone()]), &s).desired.unwrap();
        let ports: Vec<(u16, u16)> = d
            .backends
            .iter()
            .map(|b| (b.container_port, b.host_port))
            .collect();
        assert_eq!(ports, [(8000, 40002), (8004, 40006)]);
        // without the pod's address known, only bindings on every IPv4 address
        let d = plan(&composition(vec![c]), &settings()).desired.unwrap();
        let ports: Vec<(u16, u16)> = d
            .backends
            .iter()
            .map(|b| (b.container_port, b.host_port))
            .collect();
        assert_eq!(ports, [(8000, 40002)]);
    }

    fn with_policies(text: &str) -> PlanSettings {
        let mut s = settings();
        s.access = crate::policy::parse(text).unwrap();
        s
    }

    #[test]
    fn access_is_the_label_s_policy_else_the_default() {
        let s = with_policies(
            "default: sso\nallowPublic: true\npolicies: {sso: {traefikMiddlewares: [a]}, office: {traefikMiddlewares: [b]}}",
        );
        let one = |labels: &[(&str, &str)]| {
            plan(
                &composition(vec![container("a-1", "a", 1, labels, &[(80, TCP, 1000)])]),
                &s,
            )
        };
        assert_eq!(one(&[ON]).desired.unwrap().access.as_deref(), Some("sso"));
        let office = one(&[ON, (labels::ACCESS, "office")]);
        assert_eq!(office.desired.unwrap().access.as_deref(), Some("office"));
        assert_eq!(
            one(&[ON, (labels::ACCESS, "public")])
                .desired
                .unwrap()
                .access,
            None
        );
        // Without a policy file every composition is public.
        let p = plan(
            &composition(vec![container("a-1", "a", 1, &[ON], &[(80, TCP, 1000)])]),
            &settings(),
        );
        assert_eq!(p.desired.unwrap().access, None);
    }

    /// Fail closed: a chosen policy the route API would not carry (only Ingress annotations
    /// under Gateway API; a filter a GRPCRoute cannot take on a gRPC composition) refuses the
    /// composition whole, where it was exposed without its policy (seen failing with the check
    /// removed).
    #[test]
    fn a_policy_the_routes_would_not_carry_refuses_the_composition() {
        let mut s = with_policies(
            "default: sso\npolicies:\n  sso: {traefikMiddlewares: [a]}\n  \
             annotations: {ingressAnnotations: {example.org/auth: x}}\n  \
             redirect: {httpRouteFilters: [{type: RequestRedirect}]}\n",
        );
        s.route_api = crate::model::RouteApi::Gateway;
        let one = |labels: &[(&str, &str)], s: &PlanSettings| {
            plan(
                &composition(vec![container("a-1", "a", 1, labels, &[(80, TCP, 1000)])]),
                s,
            )
        };
        let p = one(&[ON, (labels::ACCESS, "annotations")], &s);
        assert!(p.desired.is_none(), "{:?}", p.desired);
        assert_eq!(p.refusals[0].reason, Reason::PolicyNotCarried);
        assert!(
            p.refusals[0]
                .message
                .contains("adds nothing to an HTTPRoute"),
            "{}",
            p.refusals[0].message
        );
        // A filter an HTTPRoute takes: exposed over HTTP, refused for a gRPC service.
        assert!(
            one(&[ON, (labels::ACCESS, "redirect")], &s)
                .desired
                .is_some()
        );
        let grpc = one(
            &[ON, (labels::ACCESS, "redirect"), (labels::PROTOCOL, "grpc")],
            &s,
        );
        assert!(grpc.desired.is_none());
        assert!(
            grpc.refusals[0].message.contains("RequestRedirect"),
            "{}",
            grpc.refusals[0].message
        );
        // The default's middlewares are carried by both route kinds.
        assert!(one(&[ON], &s).desired.is_some());
        // Under Ingress, the annotations are carried and the filters are not.
        s.route_api = crate::model::RouteApi::Ingress;
        assert!(
            one(&[ON, (labels::ACCESS, "annotations")], &s)
                .desired
                .is_some()
        );
        assert_eq!(
            one(&[ON, (labels::ACCESS, "redirect")], &s).refusals[0].reason,
            Reason::PolicyNotCarried
        );
    }

    #[test]
    fn unknown_policies_and_forbidden_public_are_refused_with_the_choices() {
        let s = with_policies("default: sso\npolicies: {sso: {traefikMiddlewares: [a]}}");
        for (value, reason, needle) in [
            (
                "nope",
                Reason::UnknownAccessPolicy,
                "the operator's policies: sso",
            ),
            ("public", Reason::PublicNotAllowed, "choose one of: sso"),
        ] {
            let p = plan(
                &composition(vec![
                    container(
                        "a-1",
                        "a",
                        1,
                        &[ON, (labels::ACCESS, value)],
                        &[(80, TCP, 1000)],
                    ),
                    container("b-1", "b", 1, &[ON], &[(80, TCP, 1001)]),
                ]),
                &s,
            );
            assert_eq!(p.refusals.len(), 1, "{value}: {:?}", p.refusals);
            assert_eq!(p.refusals[0].reason, reason);
            assert!(
                p.refusals[0].message.contains(needle),
                "{}",
                p.refusals[0].message
            );
            // the other service is exposed, under the default
            let d = p.desired.unwrap();
            assert_eq!(d.access.as_deref(), Some("sso"));
            let services: Vec<_> = d.backends.iter().map(|b| b.service.as_str()).collect();
            assert_eq!(services, ["b"]);
        }
    }

    #[test]
    fn one_public_label_does_not_open_a_service_that_wants_the_default() {
        let s = with_policies(
            "default: sso\nallowPublic: true\npolicies: {sso: {traefikMiddlewares: [a]}}",
        );
        let p = plan(
            &composition(vec![
                container(
                    "a-1",
                    "a",
                    1,
                    &[ON, (labels::ACCESS, "public")],
                    &[(80, TCP, 1000)],
                ),
                container("b-1", "b", 1, &[ON], &[(80, TCP, 1001)]),
            ]),
            &s,
        );
        assert_eq!(p.refusals.len(), 1, "{:?}", p.refusals);
        assert_eq!(p.refusals[0].service, "b");
        assert_eq!(p.refusals[0].reason, Reason::AccessConflict);
        let d = p.desired.unwrap();
        assert_eq!(d.access, None);
        let services: Vec<_> = d.backends.iter().map(|b| b.service.as_str()).collect();
        assert_eq!(services, ["a"]);
    }

    #[test]
    fn kompose_hosts_with_one_port() {
        let p = plan(
            &composition(vec![container(
                "web-1",
                "web",
                1,
                &[(
                    labels::KOMPOSE_EXPOSE,
                    "chat.composition.example.com,www.composition.example.com/app",
                )],
                &[(80, TCP, 1000)],
            )]),
            &settings(),
        );
        let d = p.desired.unwrap();
        let routes: Vec<_> = d
            .backends
            .iter()
            .map(|b| (b.host.as_str(), b.path.as_str(), b.service_port))
            .collect();
        let sp = d.backends[0].service_port;
        assert_eq!(
            routes,
            vec![
                ("chat.composition.example.com", "/", sp),
                ("www.composition.example.com", "/app", sp)
            ]
        );
    }

    #[test]
    fn bad_label_refuses_only_that_service() {
        let p = plan(
            &composition(vec![
                container(
                    "a-1",
                    "a",
                    1,
                    &[ON, (labels::HOST, "x.evil.com")],
                    &[(80, TCP, 1)],
                ),
                container("b-1", "b", 1, &[ON], &[(80, TCP, 2)]),
            ]),
            &settings(),
        );
        assert_eq!(p.refusals.len(), 1);
        assert_eq!(p.refusals[0].container, "a-1");
        assert_eq!(p.refusals[0].reason, Reason::HostOutsideDomain);
        assert_eq!(
            hosts(&p),
            vec!["b-80-demochat-runner-3.composition.example.com"]
        );
    }

    #[test]
    fn deterministic_regardless_of_container_order() {
        let cs = vec![
            container("a-1", "a", 1, &[ON], &[(80, TCP, 1), (81, TCP, 2)]),
            container("b-1", "b", 1, &[ON], &[(80, TCP, 3)]),
            container(
                "c-1",
                "c",
                1,
                &[ON, (labels::HOST, "bad!")],
                &[(80, TCP, 4)],
            ),
            container(
                "d-1",
                "d",
                1,
                &[ON, (labels::ENABLE, "maybe")],
                &[(80, TCP, 5)],
            ),
        ];
        let mut rev = cs.clone();
        rev.reverse();
        let p1 = plan(&composition(cs), &settings());
        let p2 = plan(&composition(rev), &settings());
        assert_eq!(p1, p2);
        let d = p1.desired.unwrap();
        let mut sorted = d.backends.clone();
        sorted.sort();
        assert_eq!(d.backends, sorted);
    }

    #[test]
    fn service_ports_unique_stable_and_probed() {
        let keys: BTreeSet<(String, u16)> = (0..500u16)
            .map(|i| (format!("svc{}", i % 7), 80 + i))
            .collect();
        let a = assign_service_ports(&keys);
        assert_eq!(a.len(), keys.len());
        let distinct: BTreeSet<u16> = a.values().copied().collect();
        assert_eq!(distinct.len(), keys.len());
        assert!(a.values().all(|p| (1024..61024).contains(p)));
        // stable: a key's number does not depend on unrelated keys that do not collide with it
        let one: BTreeSet<(String, u16)> = [("web".to_string(), 80)].into();
        let two: BTreeSet<(String, u16)> =
            [("web".to_string(), 80), ("api".to_string(), 80)].into();
        assert_eq!(
            assign_service_ports(&one)[&("web".to_string(), 80)],
            assign_service_ports(&two)[&("web".to_string(), 80)]
        );
    }

    #[test]
    fn two_services_same_container_port_get_distinct_service_ports() {
        let p = plan(
            &composition(vec![
                container("a-1", "a", 1, &[ON], &[(80, TCP, 1000)]),
                container("b-1", "b", 1, &[ON], &[(80, TCP, 1001)]),
            ]),
            &settings(),
        );
        let d = p.desired.unwrap();
        assert_ne!(d.backends[0].service_port, d.backends[1].service_port);
        assert_ne!(d.backends[0].port_name, d.backends[1].port_name);
    }
}
