//! The label contract (pure): one container's labels -> what its compose service asks for.
//!
//! Labels are user input: any value can be junk, huge or hostile. Parsing never panics, checks
//! every value against a narrow grammar and the operator's allow-lists, and reports *all*
//! problems of a service at once (so users fix them in one round), each as a [`Refusal`] that
//! names the container, label, value, broken rule and the fix. A refused service is simply not
//! exposed; other services of the composition are unaffected.

use std::collections::BTreeMap;

use crate::model::{
    AppProtocol, PUBLIC_POLICY, PlanSettings, Reason, Refusal, RouteApi, RouteScope,
};
use crate::naming;

pub const ENABLE: &str = "compose-ingress.enable";
pub const PORTS: &str = "compose-ingress.ports";
pub const HOST: &str = "compose-ingress.host";
pub const PATH: &str = "compose-ingress.path";
pub const RATE_LIMIT_RPS: &str = "compose-ingress.rate-limit.rps";
pub const CLASS: &str = "compose-ingress.class";
pub(crate) const ACCESS: &str = "compose-ingress.access";
pub(crate) const PROTOCOL: &str = "compose-ingress.protocol";
pub(crate) const HEALTH: &str = "compose-ingress.health";
pub(crate) const TTL: &str = "compose-ingress.ttl";
/// Prefix of every label of ours: an unknown key under it is most likely a typo.
pub(crate) const PREFIX: &str = "compose-ingress.";
pub const KOMPOSE_EXPOSE: &str = "kompose.service.expose";
pub const KOMPOSE_CLASS: &str = "kompose.service.expose.ingress-class-name";
pub const KOMPOSE_TLS_SECRET: &str = "kompose.service.expose.tls-secret";

// Compose's own labels on every container it creates: which composition, which service, which
// replica, and whether it is a `compose run` one-off. Read, never written; part of the contract
// because the planner and the Docker reader key on them (never on container names).
pub(crate) const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub(crate) const COMPOSE_SERVICE: &str = "com.docker.compose.service";
pub(crate) const COMPOSE_CONTAINER_NUMBER: &str = "com.docker.compose.container-number";
pub(crate) const COMPOSE_ONEOFF: &str = "com.docker.compose.oneoff";
/// The label keys the sidecar reads start with one of these (Compose's, ours, kompose's): the
/// Docker reader keeps no other label of a container (src/docker/listing.rs).
pub(crate) const READ_PREFIXES: [&str; 3] = ["com.docker.compose.", PREFIX, "kompose."];

/// Longest label value we look at; longer ones are refused before any parsing.
pub(crate) const MAX_VALUE_BYTES: usize = 1024;
/// Longest path prefix accepted.
pub(crate) const MAX_PATH_LEN: usize = 256;
/// Longest value shown in a refusal (after escaping), so that log lines stay readable.
pub const MAX_SHOWN_CHARS: usize = 80;
/// Unknown `compose-ingress.*` labels of one service refused one by one; more are counted.
const MAX_UNKNOWN_LISTED: usize = 8;

const OUR_LABELS: [&str; 10] = [
    ENABLE,
    PORTS,
    HOST,
    PATH,
    RATE_LIMIT_RPS,
    CLASS,
    ACCESS,
    PROTOCOL,
    HEALTH,
    TTL,
];
const KOMPOSE_LABELS: [&str; 3] = [KOMPOSE_EXPOSE, KOMPOSE_CLASS, KOMPOSE_TLS_SECRET];

/// A host chosen by a label (instead of the template), with its own path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChosenHost {
    /// The single DNS label under the operator's domain.
    pub label: String,
    pub path: String,
    /// The label that chose it, for refusals raised later by the planner.
    pub(crate) source: &'static str,
}

/// What one compose service asks for, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceExposure {
    pub(crate) enabled: bool,
    /// `None`: every published TCP port.
    pub(crate) ports: Option<Vec<u16>>,
    /// Empty: hosts come from the template. kompose allows several hosts, hence a list; as in
    /// kompose, chosen hosts route to the service's first exposed port.
    pub hosts: Vec<ChosenHost>,
    /// The template hosts too, beside chosen ones: kompose's `true` entry in a host list
    /// (`kompose.service.expose: "true,host1"`), its rule without a host.
    pub(crate) template_hosts: bool,
    /// Path prefix for template hosts and for `compose-ingress.host`.
    pub path: String,
    pub rate_limit_rps: Option<u32>,
    pub class: Option<String>,
    pub tls_secret: Option<String>,
    /// The access policy a label chose (a policy name or `public`); `None`: the default.
    pub(crate) access: Option<String>,
    /// The protocol of every exposed port of the service; `None`: undeclared (HTTP/1.1).
    pub(crate) protocol: Option<AppProtocol>,
    /// Whether traffic waits for the container's healthcheck (`compose-ingress.health`,
    /// default `gate`; `ignore` routes it as soon as it runs).
    pub(crate) health_gate: bool,
    /// How long the service may stay exposed (`compose-ingress.ttl`), at most the operator's
    /// `--max-exposure`; `None`: the operator's.
    pub(crate) ttl: Option<std::time::Duration>,
}

/// `compose-ingress.health` values.
pub(crate) const HEALTH_GATE: &str = "gate";
pub(crate) const HEALTH_IGNORE: &str = "ignore";

impl ServiceExposure {
    /// A service that is not exposed (opted out, or not opted in).
    pub(crate) fn disabled() -> Self {
        Self {
            enabled: false,
            ports: None,
            hosts: Vec::new(),
            template_hosts: true,
            path: "/".to_string(),
            rate_limit_rps: None,
            class: None,
            tls_secret: None,
            access: None,
            protocol: None,
            health_gate: true,
            ttl: None,
        }
    }
}

/// `value` cut to [`MAX_SHOWN_CHARS`] and escaped, so control characters, newlines and megabytes
/// of junk cannot forge or flood log lines.
pub(crate) fn shown_value(value: &str) -> String {
    const ELLIPSIS: &str = "...";
    let mut out = String::new();
    let mut count = 0;
    // Byte length of `out` at the last point where it still left room for the ellipsis.
    let mut cut_at = 0;
    for c in value.chars() {
        let escaped: String = c.escape_debug().collect();
        let n = escaped.chars().count();
        if count + n > MAX_SHOWN_CHARS {
            out.truncate(cut_at);
            out.push_str(ELLIPSIS);
            return out;
        }
        out.push_str(&escaped);
        count += n;
        if count <= MAX_SHOWN_CHARS - ELLIPSIS.len() {
            cut_at = out.len();
        }
    }
    out
}

/// Builds a refusal with the shown (shortened, escaped) value and a message that names the
/// container, service, label, value, rule and the fix. Used by the planner too, so that every
/// refusal reads the same.
pub(crate) fn refusal(
    container: &str,
    service: &str,
    label: &str,
    value: &str,
    reason: Reason,
    rule_and_fix: &str,
) -> Refusal {
    let shown = shown_value(value);
    Refusal {
        container: container.to_string(),
        service: service.to_string(),
        label: label.to_string(),
        message: format!(
            "service `{service}` not exposed: label {label}=\"{shown}\" on container `{container}`: {rule_and_fix}",
        ),
        value: shown,
        host: None,
        reason,
    }
}

struct Ctx<'a> {
    container: &'a str,
    service: &'a str,
    refusals: Vec<Refusal>,
}

impl Ctx<'_> {
    fn refuse(&mut self, label: &str, value: &str, reason: Reason, rule_and_fix: &str) {
        self.refusals.push(refusal(
            self.container,
            self.service,
            label,
            value,
            reason,
            rule_and_fix,
        ));
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `/`-prefixed, `[A-Za-z0-9/_.~-]`, no `//`, no `.`/`..` segments, ≤ 256: a plain prefix that
/// every controller reads the same way (no regex, no encoding tricks, no traversal).
pub fn is_valid_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= MAX_PATH_LEN
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'.' | b'~' | b'-'))
        && !path.contains("//")
        && !path.split('/').any(|seg| seg == "." || seg == "..")
}

const PATH_RULE: &str = "a path must start with '/', use only letters, digits and / _ . ~ -, contain no '//' or '.'/'..' segments and be at most 256 characters; set e.g. compose-ingress.path=/api";

/// Reads `labels[key]` if present and not over-long; an over-long value is refused once here so
/// that each later check can treat it as absent.
fn get<'l>(ctx: &mut Ctx<'_>, labels: &'l BTreeMap<String, String>, key: &str) -> Option<&'l str> {
    let value = labels.get(key)?;
    if value.len() > MAX_VALUE_BYTES {
        ctx.refuse(
            key,
            value,
            Reason::ValueTooLong,
            &format!("label values are limited to {MAX_VALUE_BYTES} bytes; shorten the value"),
        );
        return None;
    }
    Some(value.as_str())
}

fn parse_ports(ctx: &mut Ctx<'_>, value: &str) -> Option<Vec<u16>> {
    let mut ports = Vec::new();
    for item in value.split(',') {
        match item.trim().parse::<u16>() {
            Ok(p) if p > 0 => ports.push(p),
            _ => {
                ctx.refuse(
                    PORTS,
                    value,
                    Reason::InvalidPort,
                    "expected a comma-separated list of container ports 1-65535, e.g. compose-ingress.ports=5000,8080",
                );
                return None;
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Some(ports)
}

/// `compose-ingress.host`: one label, or for convenience the full `<label>.<domain>`.
fn parse_host(ctx: &mut Ctx<'_>, value: &str, domain: &str) -> Option<String> {
    let v = value.trim().to_ascii_lowercase();
    if naming::is_dns_label(&v) {
        return Some(v);
    }
    if v.contains('.') {
        if let Some(label) = naming::host_label_under(&v, domain) {
            return Some(label);
        }
        ctx.refuse(
            HOST,
            value,
            Reason::HostOutsideDomain,
            &format!(
                "a chosen host is ONE DNS label under {domain}; set only that label, e.g. compose-ingress.host=myapp (giving myapp.{domain})"
            ),
        );
    } else {
        ctx.refuse(
            HOST,
            value,
            Reason::InvalidHost,
            "a host label is 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'; e.g. compose-ingress.host=myapp",
        );
    }
    None
}

/// `kompose.service.expose=host[/path][,host[/path]...]`, every host `<label>.<domain>`; a
/// `true` entry asks for the template hosts too (kompose: a rule without a host). Entries are
/// split as kompose splits them (commas, with any spaces and empty entries between them).
/// Returns the chosen hosts and whether a `true` entry was among them.
fn parse_kompose_hosts(
    ctx: &mut Ctx<'_>,
    value: &str,
    domain: &str,
    default_path: &str,
) -> (Vec<ChosenHost>, bool) {
    let mut hosts = Vec::new();
    let mut template = false;
    for entry in value.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        if parse_bool(entry) == Some(true) {
            template = true;
            continue;
        }
        let (host, path) = match entry.find('/') {
            Some(i) => (&entry[..i], entry[i..].to_string()),
            None => (entry, default_path.to_string()),
        };
        if !is_valid_path(&path) {
            ctx.refuse(KOMPOSE_EXPOSE, value, Reason::InvalidPath, PATH_RULE);
            continue;
        }
        match naming::host_label_under(host, domain) {
            Some(label) => hosts.push(ChosenHost {
                label,
                path,
                source: KOMPOSE_EXPOSE,
            }),
            None => {
                let reason = if host.contains('.') {
                    Reason::HostOutsideDomain
                } else {
                    Reason::InvalidHost
                };
                ctx.refuse(
                    KOMPOSE_EXPOSE,
                    value,
                    reason,
                    &format!(
                        "each host must be exactly one DNS label under {domain} (optionally followed by /path); use e.g. kompose.service.expose=myapp.{domain} or kompose.service.expose=true"
                    ),
                );
            }
        }
    }
    (hosts, template)
}

fn parse_rps(ctx: &mut Ctx<'_>, value: &str, max: Option<u32>) -> Option<u32> {
    match value.trim().parse::<u32>() {
        Ok(n) if n >= 1 => match max {
            Some(max) if n > max => {
                ctx.refuse(
                    RATE_LIMIT_RPS,
                    value,
                    Reason::RateLimitAboveMax,
                    &format!(
                        "labels may only lower the operator's limit, at most {max} requests per second; set a value between 1 and {max}"
                    ),
                );
                None
            }
            _ => Some(n),
        },
        _ => {
            ctx.refuse(
                RATE_LIMIT_RPS,
                value,
                Reason::InvalidRateLimit,
                "expected a whole number of requests per second, at least 1; e.g. compose-ingress.rate-limit.rps=20",
            );
            None
        }
    }
}

fn parse_class(ctx: &mut Ctx<'_>, key: &str, value: &str, allowed: &[String]) -> Option<String> {
    let v = value.trim();
    if allowed.iter().any(|a| a == v) {
        return Some(v.to_string());
    }
    let list = if allowed.is_empty() {
        "none are allowed; remove the label".to_string()
    } else {
        format!("use one of: {}", allowed.join(", "))
    };
    ctx.refuse(
        key,
        value,
        Reason::ClassNotAllowed,
        &format!("the class is not in the operator's allow-list; {list}"),
    );
    None
}

/// `compose-ingress.access`: a policy the operator defined, or `public` when allowed.
fn parse_access(ctx: &mut Ctx<'_>, value: &str, settings: &PlanSettings) -> Option<String> {
    let v = value.trim();
    let access = &settings.access;
    if access.policies.contains_key(v) || (v == PUBLIC_POLICY && access.allow_public) {
        return Some(v.to_string());
    }
    let choosable = access.choosable().join(", ");
    let (reason, rule) = if v == PUBLIC_POLICY {
        (
            Reason::PublicNotAllowed,
            format!(
                "the operator does not allow public compositions; choose one of: {choosable}, or remove the label for the default"
            ),
        )
    } else {
        (
            Reason::UnknownAccessPolicy,
            format!("no such access policy; the operator's policies: {choosable}"),
        )
    };
    ctx.refuse(ACCESS, value, reason, &rule);
    None
}

/// Pod scope: the pod has one route, of the operator's class and certificate, that speaks
/// plain HTTP or h2c to the proxy, so a label that asks for a route of its own is refused with
/// what to do instead (never silently ignored).
fn refuse_what_the_pod_route_cannot_carry<'l>(
    ctx: &mut Ctx<'_>,
    value: impl Fn(&str) -> Option<&'l str>,
    protocol: Option<AppProtocol>,
    ingress_h2c: bool,
    settings: &PlanSettings,
) {
    for key in [CLASS, KOMPOSE_CLASS] {
        if let Some(v) = value(key) {
            ctx.refuse(
                key,
                v,
                Reason::NotInPodScope,
                "in pod scope the runner pod has one route, of the operator's class: remove the \
                 label (a class of its own needs --route-scope composition)",
            );
        }
    }
    if let Some(v) = value(KOMPOSE_TLS_SECRET) {
        ctx.refuse(
            KOMPOSE_TLS_SECRET,
            v,
            Reason::NotInPodScope,
            "in pod scope the runner pod's route has the operator's one certificate: remove the \
             label",
        );
    }
    let refusal = match protocol {
        Some(AppProtocol::Https) => Some(
            "the sidecar's proxy speaks plain HTTP or h2c to the service, not TLS: serve plain \
             HTTP in the container (TLS ends at the ingress controller)",
        ),
        Some(AppProtocol::H2c | AppProtocol::Grpc)
            if settings.route_api == RouteApi::Ingress && !ingress_h2c =>
        {
            Some(
                "the pod's Ingress speaks HTTP/1.1 to the proxy (--pod-route-protocol http), \
                 which cannot carry HTTP/2; the operator can set --pod-route-protocol h2c or \
                 --route-api gateway",
            )
        }
        _ => None,
    };
    if let (Some(rule), Some(v)) = (refusal, value(PROTOCOL)) {
        ctx.refuse(PROTOCOL, v, Reason::NotInPodScope, rule);
    }
}

/// Parses the labels of one container of compose service `service`.
///
/// Enabling: `compose-ingress.enable` decides when present; otherwise a `kompose.service.expose`
/// label (other than `false`) enables; otherwise `settings.expose_by_default`. The other labels
/// of a service that is not enabled are not checked: nobody asked to expose it, so nobody should
/// get warnings about it.
pub fn parse_service_labels(
    container: &str,
    service: &str,
    labels: &BTreeMap<String, String>,
    settings: &PlanSettings,
) -> Result<ServiceExposure, Vec<Refusal>> {
    let mut ctx = Ctx {
        container,
        service,
        refusals: Vec::new(),
    };

    let enable = get(&mut ctx, labels, ENABLE);
    let kompose_expose = get(&mut ctx, labels, KOMPOSE_EXPOSE);
    let enabled = match enable {
        Some(v) => match parse_bool(v) {
            Some(b) => b,
            None => {
                ctx.refuse(
                    ENABLE,
                    v,
                    Reason::InvalidEnable,
                    "expected true or false; set compose-ingress.enable=true to expose the service",
                );
                return Err(ctx.refusals);
            }
        },
        None if labels.contains_key(ENABLE) => return Err(ctx.refusals),
        None => match kompose_expose {
            Some(v) => parse_bool(v) != Some(false),
            None if labels.contains_key(KOMPOSE_EXPOSE) => return Err(ctx.refusals),
            None => settings.expose_by_default,
        },
    };
    if !enabled {
        return Ok(ServiceExposure::disabled());
    }

    // Unknown keys are a job's input of any size and number: each is shown shortened and
    // escaped like a value, and only the first few are listed.
    let mut unknown = labels
        .iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && !OUR_LABELS.contains(&k.as_str()));
    let known = OUR_LABELS.join(", ");
    for (key, value) in unknown.by_ref().take(MAX_UNKNOWN_LISTED) {
        ctx.refuse(
            &shown_value(key),
            value,
            Reason::UnknownLabel,
            &format!("unknown compose-ingress label (a typo?); known labels: {known}"),
        );
    }
    let more = unknown.count();
    if let (true, Some(last)) = (more > 0, ctx.refusals.last_mut()) {
        last.message.push_str(&format!(
            " ({more} more unknown compose-ingress labels not listed)"
        ));
    }
    for key in OUR_LABELS.iter().chain(KOMPOSE_LABELS.iter()) {
        if *key != ENABLE && *key != KOMPOSE_EXPOSE {
            // Over-long values are refused here, once; later reads see them as absent.
            let _ = get(&mut ctx, labels, key);
        }
    }
    let value = |key: &str| {
        labels
            .get(key)
            .map(String::as_str)
            .filter(|v| v.len() <= MAX_VALUE_BYTES)
    };

    let path = match value(PATH) {
        Some(p) if is_valid_path(p.trim()) => p.trim().to_string(),
        Some(p) => {
            ctx.refuse(PATH, p, Reason::InvalidPath, PATH_RULE);
            "/".to_string()
        }
        None => "/".to_string(),
    };
    let ports = value(PORTS).and_then(|v| parse_ports(&mut ctx, v));

    let mut hosts = Vec::new();
    if let Some(label) = value(HOST).and_then(|v| parse_host(&mut ctx, v, &settings.domain)) {
        hosts.push(ChosenHost {
            label,
            path: path.clone(),
            source: HOST,
        });
    }
    let mut template_hosts = hosts.is_empty();
    if let Some(v) = kompose_expose
        && parse_bool(v).is_none()
    {
        let (chosen, template) = parse_kompose_hosts(&mut ctx, v, &settings.domain, &path);
        // `true,host1`: the template hosts and host1; `host1`: host1 only.
        template_hosts = (template_hosts && chosen.is_empty()) || template;
        hosts.extend(chosen);
    }
    hosts.sort();
    hosts.dedup_by(|a, b| a.label == b.label && a.path == b.path);
    // Chosen hosts and template hosts are disjoint name spaces: a chosen host that the
    // operator's template could render for ANY composition or pod (naming::HostShape) is
    // refused, so that no label can take the URL the template gives somebody else, whoever comes
    // up first. A template that does not parse renders nothing (config refuses it at start-up;
    // the planner refuses every template host), so there is nothing to keep apart.
    if !hosts.is_empty()
        && let Ok(shape) = naming::HostShape::of_template(&settings.host_template)
    {
        let template = settings.host_template.as_str();
        hosts.retain(|h| {
            if !shape.matches(&h.label) {
                return true;
            }
            ctx.refuse(
                h.source,
                value(h.source).unwrap_or_default(),
                Reason::HostLooksLikeTemplate,
                &format!(
                    "host {} has the shape of the operator's host template `{template}`, so it could be the host the template gives another composition or pod, and a chosen host never takes a template host; choose a host that does not look like `{template}`, or remove the label to get this service's template host",
                    naming::full_host(&h.label, &settings.domain)
                ),
            );
            false
        });
    }

    let rate_limit_rps =
        value(RATE_LIMIT_RPS).and_then(|v| parse_rps(&mut ctx, v, settings.max_rps));

    let ours =
        value(CLASS).and_then(|v| parse_class(&mut ctx, CLASS, v, &settings.allowed_classes));
    let theirs = value(KOMPOSE_CLASS)
        .and_then(|v| parse_class(&mut ctx, KOMPOSE_CLASS, v, &settings.allowed_classes));
    let class = match (ours, theirs) {
        (Some(a), Some(b)) if a != b => {
            ctx.refuse(
                KOMPOSE_CLASS,
                &b,
                Reason::ClassConflict,
                &format!("{CLASS} chose `{a}`; set both labels to the same class or remove one"),
            );
            None
        }
        (a, b) => a.or(b),
    };

    let tls_secret = value(KOMPOSE_TLS_SECRET).and_then(|v| {
        let v = v.trim();
        // kompose's `true`: TLS with the default certificate, here the operator's.
        if v == "true" {
            if settings.tls_secret.is_none() {
                ctx.refuse(
                    KOMPOSE_TLS_SECRET,
                    v,
                    Reason::TlsSecretNotAllowed,
                    "`true` asks for the operator's default TLS secret, and the operator set none \
                     (--tls-secret); name a secret of the allow-list, or remove the label",
                );
            }
            settings.tls_secret.clone()
        } else if settings.allowed_tls_secrets.iter().any(|s| s == v) {
            Some(v.to_string())
        } else {
            let fix = if settings.allowed_tls_secrets.is_empty() {
                "none may be chosen; remove the label".to_string()
            } else {
                format!("use one of: {}", settings.allowed_tls_secrets.join(", "))
            };
            ctx.refuse(
                KOMPOSE_TLS_SECRET,
                v,
                Reason::TlsSecretNotAllowed,
                &format!("the TLS secret is not in the operator's allow-list; {fix}"),
            );
            None
        }
    });

    let access = value(ACCESS).and_then(|v| parse_access(&mut ctx, v, settings));
    let protocol = value(PROTOCOL).and_then(|v| {
        let found = AppProtocol::ALL
            .into_iter()
            .find(|p| p.as_str() == v.trim().to_ascii_lowercase());
        if found.is_none() {
            let known: Vec<&str> = AppProtocol::ALL.iter().map(|p| p.as_str()).collect();
            ctx.refuse(
                PROTOCOL,
                v,
                Reason::UnknownProtocol,
                &format!("unknown protocol; use one of: {}", known.join(", ")),
            );
        }
        found
    });
    if let RouteScope::Pod { ingress_h2c } = settings.scope {
        refuse_what_the_pod_route_cannot_carry(&mut ctx, value, protocol, ingress_h2c, settings);
    }
    let health_gate = match value(HEALTH).map(|v| v.trim().to_ascii_lowercase()) {
        None => true,
        Some(v) if v == HEALTH_GATE => true,
        Some(v) if v == HEALTH_IGNORE => false,
        Some(_) => {
            ctx.refuse(
                HEALTH,
                value(HEALTH).unwrap_or_default(),
                Reason::InvalidHealth,
                &format!(
                    "use {HEALTH_GATE} (route only while the container's healthcheck passes, \
                     the default) or {HEALTH_IGNORE} (route as soon as it runs)"
                ),
            );
            true
        }
    };

    let ttl = value(TTL).and_then(|v| parse_ttl(&mut ctx, v, settings.max_exposure));

    if !ctx.refusals.is_empty() {
        return Err(ctx.refusals);
    }
    Ok(ServiceExposure {
        enabled,
        ports,
        hosts,
        template_hosts,
        path,
        rate_limit_rps,
        class,
        tls_secret,
        access,
        protocol,
        health_gate,
        ttl,
    })
}

/// `compose-ingress.ttl=2h`: a duration of at least a second that may only shorten the
/// operator's `--max-exposure`.
fn parse_ttl(
    ctx: &mut Ctx<'_>,
    value: &str,
    max: Option<std::time::Duration>,
) -> Option<std::time::Duration> {
    let rule = match (crate::model::parse_duration(value), max) {
        (Ok(ttl), Some(max)) if ttl > max => format!(
            "labels may only shorten the operator's maximum exposure of {}s; set at most \
             compose-ingress.ttl={}s",
            max.as_secs(),
            max.as_secs()
        ),
        (Ok(ttl), _) if ttl.as_secs() >= 1 => return Some(ttl),
        (Ok(_), _) => "the exposure time is at least 1s".to_string(),
        (Err(e), _) => format!("{e}; e.g. compose-ingress.ttl=2h"),
    };
    ctx.refuse(TTL, value, Reason::InvalidTtl, &rule);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::settings;

    fn parse(pairs: &[(&str, &str)]) -> Result<ServiceExposure, Vec<Refusal>> {
        let labels: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_service_labels("demo-web-1", "web", &labels, &settings())
    }

    fn refused(pairs: &[(&str, &str)]) -> Vec<Refusal> {
        match parse(pairs) {
            Err(r) => r,
            Ok(e) => panic!("expected refusal, got {e:?}"),
        }
    }

    #[test]
    fn absent_labels_follow_expose_by_default() {
        assert!(!parse(&[]).unwrap().enabled);
        let mut s = settings();
        s.expose_by_default = true;
        let e = parse_service_labels("c", "web", &BTreeMap::new(), &s).unwrap();
        assert!(e.enabled);
        assert_eq!(e.path, "/");
        assert!(e.hosts.is_empty());
        assert_eq!(e.ports, None);
    }

    #[test]
    fn enable_true_with_all_labels() {
        let e = parse(&[
            (ENABLE, "true"),
            (PORTS, "8080, 5000,5000"),
            (PATH, "/api"),
            (RATE_LIMIT_RPS, "20"),
            (CLASS, "heavy"),
        ])
        .unwrap();
        assert!(e.enabled);
        assert_eq!(e.ports, Some(vec![5000, 8080]));
        assert_eq!(e.path, "/api");
        assert_eq!(e.rate_limit_rps, Some(20));
        assert_eq!(e.class.as_deref(), Some("heavy"));
        assert_eq!(e.tls_secret, None);
    }

    #[test]
    fn enable_false_wins_and_skips_checks() {
        let e = parse(&[
            (ENABLE, "FALSE"),
            (HOST, "bad host!"),
            (KOMPOSE_EXPOSE, "true"),
        ])
        .unwrap();
        assert!(!e.enabled);
    }

    #[test]
    fn invalid_enable_is_refused() {
        let r = refused(&[(ENABLE, "yes please")]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reason, Reason::InvalidEnable);
        assert_eq!(r[0].label, ENABLE);
        assert_eq!(r[0].container, "demo-web-1");
        assert_eq!(r[0].service, "web");
        assert!(r[0].message.contains("yes please"));
        assert!(r[0].message.contains("compose-ingress.enable=true"));
    }

    #[test]
    fn chosen_host_label_and_full_host() {
        let e = parse(&[(ENABLE, "true"), (HOST, "MyApp")]).unwrap();
        assert_eq!(e.hosts.len(), 1);
        assert_eq!(e.hosts[0].label, "myapp");
        assert_eq!(e.hosts[0].path, "/");
        assert_eq!(e.hosts[0].source, HOST);
        let e = parse(&[(ENABLE, "true"), (HOST, "myapp.composition.example.com")]).unwrap();
        assert_eq!(e.hosts[0].label, "myapp");
    }

    #[test]
    fn bad_hosts_are_refused() {
        let r = refused(&[(ENABLE, "true"), (HOST, "evil.com")]);
        assert_eq!(r[0].reason, Reason::HostOutsideDomain);
        assert_eq!(r[0].label, HOST);
        let r = refused(&[(ENABLE, "true"), (HOST, "a.b.composition.example.com")]);
        assert_eq!(r[0].reason, Reason::HostOutsideDomain);
        let r = refused(&[(ENABLE, "true"), (HOST, "-x")]);
        assert_eq!(r[0].reason, Reason::InvalidHost);
        let r = refused(&[(ENABLE, "true"), (HOST, &"a".repeat(64))]);
        assert_eq!(r[0].reason, Reason::InvalidHost);
        let r = refused(&[(ENABLE, "true"), (HOST, "")]);
        assert_eq!(r[0].reason, Reason::InvalidHost);
    }

    #[test]
    fn chosen_hosts_shaped_like_the_template_are_refused() {
        // What the default template gives service web, port 80, of composition victim on pod
        // runner-0: no label may choose it, whichever comes up first.
        let r = refused(&[(ENABLE, "true"), (HOST, "web-80-victim-runner-0")]);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].reason, Reason::HostLooksLikeTemplate);
        assert_eq!(r[0].label, HOST);
        assert_eq!(r[0].value, "web-80-victim-runner-0");
        for needle in [
            "label compose-ingress.host=\"web-80-victim-runner-0\"",
            "host web-80-victim-runner-0.composition.example.com",
            "choose a host that does not look like `{service}-{port}-{project}-{pod}`",
        ] {
            assert!(r[0].message.contains(needle), "{}", r[0].message);
        }
        let r = refused(&[
            (ENABLE, "true"),
            (HOST, "Web-80-Victim-Runner-0.composition.example.com"),
        ]);
        assert_eq!(r[0].reason, Reason::HostLooksLikeTemplate);
        let r = refused(&[(
            KOMPOSE_EXPOSE,
            "ok.composition.example.com,api-8080-x-y.composition.example.com/api",
        )]);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].reason, Reason::HostLooksLikeTemplate);
        assert_eq!(r[0].label, KOMPOSE_EXPOSE);
        assert!(
            r[0].message
                .contains("api-8080-x-y.composition.example.com")
        );
        // Not something the template renders: chosen as usual.
        let e = parse(&[(ENABLE, "true"), (HOST, "victim-web")]).unwrap();
        assert_eq!(e.hosts[0].label, "victim-web");
        // The shape is the operator's template's.
        let mut s = settings();
        s.host_template = "ci-{pod}-{service}".into();
        let one = |host: &str| {
            let labels = BTreeMap::from([
                (ENABLE.to_string(), "true".to_string()),
                (HOST.to_string(), host.to_string()),
            ]);
            parse_service_labels("c", "web", &labels, &s)
        };
        assert!(one("web-80-victim-runner-0").is_ok());
        let r = one("ci-runner-0-web").unwrap_err();
        assert_eq!(r[0].reason, Reason::HostLooksLikeTemplate);
        assert!(
            r[0].message.contains("`ci-{pod}-{service}`"),
            "{}",
            r[0].message
        );
    }

    #[test]
    fn ports_rules() {
        for bad in ["", "0", "65536", "80,x", "-1", "80;81"] {
            let r = refused(&[(ENABLE, "true"), (PORTS, bad)]);
            assert_eq!(r[0].reason, Reason::InvalidPort, "{bad}");
            assert_eq!(r[0].label, PORTS);
        }
    }

    #[test]
    fn path_rules() {
        for good in ["/", "/api", "/a/b_c.d~e-f/", "/v1.2"] {
            assert!(is_valid_path(good), "{good}");
        }
        for bad in [
            "", "api", "//", "/a//b", "/a b", "/a?b", "/%2e", "/../x", "/./", "/é",
        ] {
            let r = refused(&[(ENABLE, "true"), (PATH, bad)]);
            assert_eq!(r[0].reason, Reason::InvalidPath, "{bad:?}");
        }
        assert!(!is_valid_path(&format!("/{}", "a".repeat(256))));
        assert!(is_valid_path(&format!("/{}", "a".repeat(255))));
    }

    #[test]
    fn rate_limit_rules() {
        let r = refused(&[(ENABLE, "true"), (RATE_LIMIT_RPS, "101")]);
        assert_eq!(r[0].reason, Reason::RateLimitAboveMax);
        assert!(r[0].message.contains("100"));
        for bad in ["0", "-5", "ten", "1.5", "99999999999"] {
            let r = refused(&[(ENABLE, "true"), (RATE_LIMIT_RPS, bad)]);
            assert_eq!(r[0].reason, Reason::InvalidRateLimit, "{bad}");
        }
        let e = parse(&[(ENABLE, "true"), (RATE_LIMIT_RPS, "100")]).unwrap();
        assert_eq!(e.rate_limit_rps, Some(100));
    }

    #[test]
    fn class_rules() {
        let r = refused(&[(ENABLE, "true"), (CLASS, "vip")]);
        assert_eq!(r[0].reason, Reason::ClassNotAllowed);
        assert!(r[0].message.contains("public, heavy"));
        let e = parse(&[(KOMPOSE_EXPOSE, "true"), (KOMPOSE_CLASS, "heavy")]).unwrap();
        assert_eq!(e.class.as_deref(), Some("heavy"));
        let r = refused(&[
            (ENABLE, "true"),
            (CLASS, "public"),
            (KOMPOSE_CLASS, "heavy"),
        ]);
        assert_eq!(r[0].reason, Reason::ClassConflict);
    }

    #[test]
    fn kompose_expose_true_and_hosts() {
        let e = parse(&[(KOMPOSE_EXPOSE, "true")]).unwrap();
        assert!(e.enabled && e.hosts.is_empty() && e.template_hosts);
        // kompose's list with `true`: the template hosts and the chosen ones.
        let e = parse(&[(KOMPOSE_EXPOSE, "true,a.composition.example.com")]).unwrap();
        assert!(e.template_hosts);
        assert_eq!(e.hosts.len(), 1);
        let e = parse(&[(
            KOMPOSE_EXPOSE,
            "a.composition.example.com/api, b.composition.example.com",
        )])
        .unwrap();
        assert!(e.enabled && !e.template_hosts);
        assert_eq!(
            e.hosts,
            vec![
                ChosenHost {
                    label: "a".into(),
                    path: "/api".into(),
                    source: KOMPOSE_EXPOSE
                },
                ChosenHost {
                    label: "b".into(),
                    path: "/".into(),
                    source: KOMPOSE_EXPOSE
                },
            ]
        );
        let r = refused(&[(KOMPOSE_EXPOSE, "a.composition.example.com,evil.org")]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reason, Reason::HostOutsideDomain);
        assert_eq!(r[0].label, KOMPOSE_EXPOSE);
        let r = refused(&[(KOMPOSE_EXPOSE, "a.composition.example.com/a b")]);
        assert_eq!(r[0].reason, Reason::InvalidPath);
        let r = refused(&[(KOMPOSE_EXPOSE, "justalabel")]);
        assert_eq!(r[0].reason, Reason::InvalidHost);
        assert!(!parse(&[(KOMPOSE_EXPOSE, "false")]).unwrap().enabled);
    }

    #[test]
    fn tls_secret_allow_list() {
        let e = parse(&[(KOMPOSE_EXPOSE, "true"), (KOMPOSE_TLS_SECRET, "other-tls")]).unwrap();
        assert_eq!(e.tls_secret.as_deref(), Some("other-tls"));
        let r = refused(&[
            (KOMPOSE_EXPOSE, "true"),
            (KOMPOSE_TLS_SECRET, "kube-system-secret"),
        ]);
        assert_eq!(r[0].reason, Reason::TlsSecretNotAllowed);
        // kompose's `true`: TLS with the default certificate, the operator's.
        let e = parse(&[(KOMPOSE_EXPOSE, "true"), (KOMPOSE_TLS_SECRET, "true")]).unwrap();
        assert_eq!(e.tls_secret.as_deref(), Some("wildcard-tls"));
    }

    #[test]
    fn tls_secret_true_without_an_operator_default_is_refused_with_the_fix() {
        let mut s = settings();
        s.tls_secret = None;
        let labels: BTreeMap<String, String> =
            [(KOMPOSE_EXPOSE, "true"), (KOMPOSE_TLS_SECRET, "true")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let r = parse_service_labels("c", "web", &labels, &s).expect_err("no default secret");
        assert_eq!(r[0].reason, Reason::TlsSecretNotAllowed);
        assert!(r[0].message.contains("--tls-secret"), "{}", r[0].message);
    }

    #[test]
    fn unknown_label_is_refused() {
        let r = refused(&[(ENABLE, "true"), ("compose-ingress.hosts", "x")]);
        assert_eq!(r[0].reason, Reason::UnknownLabel);
        assert_eq!(r[0].label, "compose-ingress.hosts");
    }

    /// A job's megabyte-long unknown keys, a thousand of them: every refusal's label and message
    /// stay short, and only a few are listed (seen failing with the raw key as the label).
    #[test]
    fn unknown_label_keys_are_bounded_in_length_and_number() {
        // Sorts first, so it is among the listed ones.
        let long = format!("{PREFIX}{}\n", "a".repeat(1024 * 1024));
        let mut pairs = vec![(ENABLE.to_string(), "true".to_string()), (long, "v".into())];
        pairs.extend((0..1000).map(|i| (format!("{PREFIX}typo{i:04}"), "v".to_string())));
        let borrowed: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = refused(&borrowed);
        assert_eq!(r.len(), MAX_UNKNOWN_LISTED, "{r:?}");
        for refusal in &r {
            assert!(
                refusal.label.chars().count() <= MAX_SHOWN_CHARS,
                "{}",
                refusal.label.len()
            );
            assert!(refusal.message.len() < 1024, "{}", refusal.message.len());
            assert!(!refusal.label.contains('\n'));
        }
        assert!(
            r[MAX_UNKNOWN_LISTED - 1]
                .message
                .contains("993 more unknown compose-ingress labels"),
            "{}",
            r[MAX_UNKNOWN_LISTED - 1].message
        );
    }

    #[test]
    fn protocol_is_one_of_the_known_ones() {
        let r = refused(&[(ENABLE, "true"), (PROTOCOL, "grpcs")]);
        assert_eq!(r[0].reason, Reason::UnknownProtocol);
        assert!(
            r[0].message
                .contains("use one of: http, h2c, grpc, ws, https"),
            "{}",
            r[0].message
        );
        let labels = BTreeMap::from([
            (ENABLE.to_string(), "true".to_string()),
            (PROTOCOL.to_string(), " GRPC ".to_string()),
        ]);
        let e = parse_service_labels("c", "s", &labels, &settings()).unwrap();
        assert_eq!(e.protocol, Some(AppProtocol::Grpc));
    }

    #[test]
    fn health_is_gate_or_ignore() {
        let r = refused(&[(ENABLE, "true"), (HEALTH, "off")]);
        assert_eq!(r[0].reason, Reason::InvalidHealth);
        assert!(r[0].message.contains("use gate"), "{}", r[0].message);
        let gate = |v: Option<&str>| {
            let mut labels = BTreeMap::from([(ENABLE.to_string(), "true".to_string())]);
            if let Some(v) = v {
                labels.insert(HEALTH.to_string(), v.to_string());
            }
            parse_service_labels("c", "s", &labels, &settings())
                .unwrap()
                .health_gate
        };
        assert!(gate(None));
        assert!(gate(Some("gate")));
        assert!(!gate(Some(" Ignore ")));
    }

    #[test]
    fn all_problems_reported_at_once() {
        let r = refused(&[
            (ENABLE, "true"),
            (HOST, "a.evil.com"),
            (PATH, "nope"),
            (RATE_LIMIT_RPS, "0"),
        ]);
        let mut reasons: Vec<_> = r.iter().map(|r| r.reason).collect();
        reasons.sort();
        assert_eq!(
            reasons,
            vec![
                Reason::HostOutsideDomain,
                Reason::InvalidPath,
                Reason::InvalidRateLimit
            ]
        );
    }

    #[test]
    fn huge_values_are_refused_and_shown_short() {
        let huge = "x\n".repeat(5000);
        let r = refused(&[(ENABLE, "true"), (HOST, &huge)]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reason, Reason::ValueTooLong);
        assert!(r[0].value.chars().count() <= MAX_SHOWN_CHARS);
        assert!(!r[0].value.contains('\n'));
        assert!(r[0].value.ends_with("..."));
        assert!(r[0].message.len() < 600);
        let r = refused(&[(ENABLE, &huge)]);
        assert_eq!(r[0].reason, Reason::ValueTooLong);
        assert_eq!(r[0].label, ENABLE);
    }

    #[test]
    fn shown_value_escapes_and_cuts() {
        assert_eq!(shown_value("a\"b\n"), "a\\\"b\\n");
        assert_eq!(shown_value(&"a".repeat(80)), "a".repeat(80));
        let cut = shown_value(&"a".repeat(81));
        assert_eq!(cut.chars().count(), 80);
        assert!(cut.ends_with("..."));
        assert!(shown_value(&"\u{1b}".repeat(100)).chars().count() <= 80);
    }
}
