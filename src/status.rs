//! What the sidecar knows about itself, shared between the reconciler and the HTTP endpoints:
//! readiness, the exposures of this pod's compositions, Prometheus metrics, and the queue of
//! Kubernetes Events to post on the pod.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::model::{Backend, Reason, Refusal};
use crate::objects::Kind;

/// The state of one composition, as `/exposures` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub(crate) enum CompositionState {
    Exposed {
        urls: Vec<String>,
        #[serde(serialize_with = "serialize_backends")]
        backends: Vec<Backend>,
        /// What of the composition was refused while the rest is exposed (omitted when empty).
        #[serde(
            skip_serializing_if = "Vec::is_empty",
            serialize_with = "serialize_refusals"
        )]
        refused: Vec<Refusal>,
    },
    PendingDeletion,
    /// Its exposure time (`--max-exposure`, `compose-ingress.ttl`) is over: its routes are gone,
    /// its containers run on.
    Expired {
        message: String,
    },
    /// Nothing of the composition is exposed because every candidate was refused.
    Refused {
        #[serde(serialize_with = "serialize_refusals")]
        reasons: Vec<Refusal>,
    },
}

/// A composition's refusals as `/exposures` shows them: `reason`, `message`, then where a label
/// refusal points (`container`, `service`, `label`, `value`) or the host a `host-taken` is about.
fn serialize_refusals<S: serde::Serializer>(refusals: &[Refusal], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct View<'a> {
        reason: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        container: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        service: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        host: Option<&'a str>,
    }
    s.collect_seq(refusals.iter().map(|r| {
        // A refusal of a host names no label; a label refusal names all four, even empty ones.
        let of_label = r.host.is_none();
        View {
            reason: r.reason.as_str(),
            message: &r.message,
            container: of_label.then_some(r.container.as_str()),
            service: of_label.then_some(r.service.as_str()),
            label: of_label.then_some(r.label.as_str()),
            value: of_label.then_some(r.value.as_str()),
            host: r.host.as_deref(),
        }
    }))
}

fn serialize_backends<S: serde::Serializer>(backends: &[Backend], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct View<'a> {
        service: &'a str,
        container_port: u16,
        host_port: u16,
        host: &'a str,
        path: &'a str,
    }
    s.collect_seq(backends.iter().map(|b| View {
        service: &b.service,
        container_port: b.container_port,
        host_port: b.host_port,
        host: &b.host,
        path: &b.path,
    }))
}

/// A Kubernetes Event to post on the runner pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    /// `Normal` or `Warning`.
    pub(crate) type_: &'static str,
    /// CamelCase reason, e.g. `Exposed`, `LabelRefused`, `Unexposed`.
    pub(crate) reason: &'static str,
    pub(crate) composition: String,
    pub(crate) note: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    reason: String,
    result: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    kind: String,
    result: String,
}

/// Prometheus metrics; every method is cheap and never blocks.
pub struct Metrics {
    pub(crate) registry: Registry,
    docker_events: Family<ActionLabels, Counter>,
    reconciles: Family<OutcomeLabels, Counter>,
    api_requests: Family<RequestLabels, Counter>,
    apply_seconds: Histogram,
    refused_labels: Family<ReasonLabels, Counter>,
    docker_reconnects: Counter,
    exposed_compositions: Gauge,
    exposed_hosts: Gauge,
    last_resync: Gauge<i64, AtomicI64>,
    ready: Gauge,
    docker_connected: Gauge,
    kube_events: Family<EventLabels, Counter>,
    proxy_requests: Family<AnswerLabels, Counter>,
    proxy_connections: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabels {
    answer: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("compose_ingress");
        let m = Metrics {
            docker_events: Family::default(),
            reconciles: Family::default(),
            api_requests: Family::default(),
            apply_seconds: Histogram::new([
                0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            refused_labels: Family::default(),
            docker_reconnects: Counter::default(),
            exposed_compositions: Gauge::default(),
            exposed_hosts: Gauge::default(),
            last_resync: Gauge::default(),
            ready: Gauge::default(),
            docker_connected: Gauge::default(),
            kube_events: Family::default(),
            proxy_requests: Family::default(),
            proxy_connections: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "docker_events",
            "Docker container events received, by action",
            m.docker_events.clone(),
        );
        registry.register(
            "reconciles",
            "Project reconciles, by outcome (changed, unchanged, waiting, error)",
            m.reconciles.clone(),
        );
        registry.register(
            "api_requests",
            "Kubernetes API writes, by verb, kind and result",
            m.api_requests.clone(),
        );
        registry.register(
            "apply_duration_seconds",
            "Latency of Kubernetes API writes",
            m.apply_seconds.clone(),
        );
        registry.register(
            "refused_labels",
            "Label values refused, by reason",
            m.refused_labels.clone(),
        );
        registry.register(
            "docker_reconnects",
            "Times the Docker event stream was lost",
            m.docker_reconnects.clone(),
        );
        registry.register(
            "exposed_compositions",
            "Compositions of this pod currently exposed",
            m.exposed_compositions.clone(),
        );
        registry.register(
            "exposed_hosts",
            "Hosts of this pod currently routed",
            m.exposed_hosts.clone(),
        );
        registry.register(
            "last_resync_timestamp_seconds",
            "Unix time of the last successful full resync (time since = now - this)",
            m.last_resync.clone(),
        );
        registry.register(
            "ready",
            "1 once the initial full sync is done (what /readyz answers; a later Docker outage does not change it)",
            m.ready.clone(),
        );
        registry.register(
            "docker_connected",
            "1 while the sidecar is connected to Docker and has resynced since it (re)connected",
            m.docker_connected.clone(),
        );
        registry.register(
            "kube_events",
            "Kubernetes Events on the pod, by reason and result (posted, rate-limited, error)",
            m.kube_events.clone(),
        );
        registry.register(
            "proxy_requests",
            "Requests the pod scope's proxy answered, by answer (forwarded, not-found, starting, \
             withdrawn, gated, busy, rate-limited, forbidden, unauthorized, bad-gateway, bad-request)",
            m.proxy_requests.clone(),
        );
        registry.register(
            "proxy_connections",
            "Connections the pod scope's proxy holds open (WebSockets included)",
            m.proxy_connections.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn docker_event_action(&self, action: &str) {
        self.docker_events
            .get_or_create(&ActionLabels {
                action: action.to_string(),
            })
            .inc();
    }
    pub(crate) fn docker_reconnect(&self) {
        self.docker_reconnects.inc();
    }
    pub(crate) fn reconcile(&self, outcome: &str) {
        self.reconciles
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }
    pub(crate) fn refused(&self, reason: Reason) {
        self.refused_labels
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().to_string(),
            })
            .inc();
    }
    /// A Kubernetes Event was posted, dropped by the rate limiter, or failed.
    pub(crate) fn kube_event(&self, reason: &str, result: &str) {
        self.kube_events
            .get_or_create(&EventLabels {
                reason: reason.to_string(),
                result: result.to_string(),
            })
            .inc();
    }
    /// One request the pod scope's proxy answered, by what it answered.
    pub(crate) fn proxy_request(&self, answer: &'static str) {
        self.proxy_requests
            .get_or_create(&AnswerLabels { answer })
            .inc();
    }
    /// A connection to the proxy opened (`+1`) or closed (`-1`).
    pub(crate) fn proxy_connection(&self, delta: i64) {
        self.proxy_connections.inc_by(delta);
    }
    /// One Kubernetes API write; `result` is `ok`, `error`, or `conflict` (a host claim that
    /// found the Lease held by someone else: the apiserver's 409, an answer rather than a fault).
    pub(crate) fn api_request(&self, verb: &str, kind: Kind, result: &str, took: Duration) {
        self.api_requests
            .get_or_create(&RequestLabels {
                verb: verb.to_string(),
                kind: kind.as_str().to_string(),
                result: result.to_string(),
            })
            .inc();
        if !took.is_zero() {
            self.apply_seconds.observe(took.as_secs_f64());
        }
    }
}

/// Shared state of the running sidecar.
#[derive(Default)]
pub struct Status {
    pub metrics: Metrics,
    docker_connected: AtomicBool,
    initial_sync_done: AtomicBool,
    /// A full resync completed since Docker was last (re)connected.
    synced_since_connect: AtomicBool,
    /// Unix milliseconds of the reconciler's last progress (see [`Status::heartbeat`]).
    heartbeat_ms: AtomicI64,
    /// The first long-running task that ended before shutdown, if any.
    stopped_loop: Mutex<Option<&'static str>>,
    compositions: RwLock<BTreeMap<String, CompositionState>>,
    events: Mutex<Option<UnboundedSender<PodEvent>>>,
}

impl Status {
    pub fn set_event_sink(&self, sink: UnboundedSender<PodEvent>) {
        if let Ok(mut guard) = self.events.lock() {
            *guard = Some(sink);
        }
    }

    fn post(&self, event: PodEvent) {
        if let Ok(guard) = self.events.lock()
            && let Some(sink) = guard.as_ref()
        {
            let _ = sink.send(event);
        }
    }

    /// The reconciler made progress: it calls this on every turn of its loop (at least every
    /// few seconds when idle) and, within a long pass, after every composition, every API
    /// request and every page of a listing. Progress, not turns: a full resync of a thousand
    /// compositions against a slow apiserver keeps `/healthz` passing as long as it moves, and
    /// only a pass stuck on one step for `--heartbeat-stale` fails it (every API request is
    /// bounded by `--api-timeout`, every Docker request by 60 s).
    pub(crate) fn heartbeat(&self) {
        self.heartbeat_ms.store(unix_millis(), Ordering::Relaxed);
    }
    /// Unix milliseconds of the last [`Status::heartbeat`] (0: none yet).
    #[cfg(test)]
    pub(crate) fn last_heartbeat_ms(&self) -> i64 {
        self.heartbeat_ms.load(Ordering::Relaxed)
    }
    /// A long-running task (`reconciler`, `docker-watcher`, ...) ended while the process runs on.
    pub fn loop_stopped(&self, name: &'static str) {
        if let Ok(mut guard) = self.stopped_loop.lock() {
            guard.get_or_insert(name);
        }
    }
    /// Liveness: `Err(reason)` when a loop ended or the reconciler made no progress for `stale`.
    pub(crate) fn alive(&self, stale: Duration) -> Result<(), String> {
        if let Ok(guard) = self.stopped_loop.lock()
            && let Some(name) = *guard
        {
            return Err(format!("the {name} loop has stopped"));
        }
        let last = self.heartbeat_ms.load(Ordering::Relaxed);
        if last == 0 {
            return Ok(()); // starting up: the reconciler has not started yet
        }
        let age = unix_millis().saturating_sub(last);
        if age > stale.as_millis() as i64 {
            return Err(format!(
                "the reconciler has made no progress for {} s",
                age / 1000
            ));
        }
        Ok(())
    }
    /// Readiness with its reason: `Err` names what is missing.
    /// Ready once the initial full sync is done, and from then on. A native sidecar's readiness
    /// is part of the pod's Ready condition and Services route only to Ready pods: were a Docker
    /// outage to make the sidecar unready, every composition URL of the pod would go offline
    /// with it, while the routes it keeps are still right (level-triggered: it resyncs when
    /// Docker is back). The outage is reported by [`Status::docker_trouble`] instead.
    pub(crate) fn readiness(&self) -> Result<(), &'static str> {
        if self.initial_sync_done.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the initial full sync has not completed yet")
        }
    }

    /// What keeps the sidecar from following Docker right now, if anything.
    pub(crate) fn docker_trouble(&self) -> Option<&'static str> {
        if !self.docker_connected() {
            Some("Docker is not connected")
        } else if !self.synced_since_connect.load(Ordering::Relaxed) {
            Some("resyncing after a Docker reconnect")
        } else {
            None
        }
    }

    pub(crate) fn docker_connected(&self) -> bool {
        self.docker_connected.load(Ordering::Relaxed)
    }
    pub(crate) fn set_docker_connected(&self, up: bool) {
        self.docker_connected.store(up, Ordering::Relaxed);
        if !up {
            self.synced_since_connect.store(false, Ordering::Relaxed);
        }
        self.publish_readiness();
    }
    fn publish_readiness(&self) {
        self.metrics.ready.set(i64::from(self.ready()));
        self.metrics
            .docker_connected
            .set(i64::from(self.docker_trouble().is_none()));
    }
    /// See [`Status::readiness`].
    pub(crate) fn ready(&self) -> bool {
        self.readiness().is_ok()
    }
    pub(crate) fn resync_done(&self) {
        self.initial_sync_done.store(true, Ordering::Relaxed);
        self.synced_since_connect.store(true, Ordering::Relaxed);
        self.metrics.last_resync.set(unix_millis() / 1000);
        self.publish_readiness();
    }

    pub(crate) fn compositions(&self) -> BTreeMap<String, CompositionState> {
        self.compositions
            .read()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// One composition's state (what a waiting job polls: no copy of the others).
    pub(crate) fn composition(&self, key: &str) -> Option<CompositionState> {
        self.compositions.read().ok()?.get(key).cloned()
    }

    fn update_gauges(&self, map: &BTreeMap<String, CompositionState>) {
        let exposed = map
            .values()
            .filter(|s| matches!(s, CompositionState::Exposed { .. }))
            .count();
        let hosts: usize = map
            .values()
            .map(|s| match s {
                CompositionState::Exposed { urls, .. } => urls.len(),
                CompositionState::PendingDeletion
                | CompositionState::Expired { .. }
                | CompositionState::Refused { .. } => 0,
            })
            .sum();
        self.metrics.exposed_compositions.set(exposed as i64);
        self.metrics.exposed_hosts.set(hosts as i64);
    }

    pub(crate) fn set_composition(&self, key: &str, state: CompositionState) {
        if let Ok(mut map) = self.compositions.write() {
            map.insert(key.to_string(), state);
            self.update_gauges(&map);
        }
    }
    pub(crate) fn remove_composition(&self, key: &str) {
        if let Ok(mut map) = self.compositions.write() {
            map.remove(key);
            self.update_gauges(&map);
        }
    }

    pub(crate) fn event_exposed(&self, composition: &str, urls: &[String]) {
        self.post(PodEvent {
            type_: "Normal",
            reason: "Exposed",
            composition: composition.to_string(),
            note: format!("composition {composition} exposed at {}", urls.join(", ")),
        });
    }
    pub(crate) fn event_refused(&self, composition: &str, r: &Refusal) {
        self.post(PodEvent {
            type_: "Warning",
            reason: "LabelRefused",
            composition: composition.to_string(),
            note: format!(
                "container {}: label {}={}: {}",
                r.container, r.label, r.value, r.message
            ),
        });
    }
    pub(crate) fn event_host_taken(&self, composition: &str, host: &str, holder_pod: &str) {
        self.post(PodEvent {
            type_: "Warning",
            reason: "HostRefused",
            composition: composition.to_string(),
            note: format!(
                "composition {composition}: host {host} is already claimed by pod {holder_pod}; choose another compose-ingress.host"
            ),
        });
    }
    pub(crate) fn event_expired(&self, composition: &str, message: &str) {
        self.post(PodEvent {
            type_: "Normal",
            reason: "Expired",
            composition: composition.to_string(),
            note: message.to_string(),
        });
    }
    pub(crate) fn event_deleted(&self, composition: &str, objects: usize) {
        self.post(PodEvent {
            type_: "Normal",
            reason: "Unexposed",
            composition: composition.to_string(),
            note: format!("composition {composition} is gone: {objects} objects deleted"),
        });
    }
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Reason;

    /// The JSON of `/exposures` is a contract (docs/operability.md): a label refusal names its
    /// container, service, label and value (even an empty value), a host refusal only its host.
    #[test]
    fn refusals_serialize_as_documented() {
        let label = Refusal {
            container: "c-1".into(),
            service: "web".into(),
            label: "compose-ingress.enable".into(),
            value: String::new(),
            host: None,
            reason: Reason::InvalidEnable,
            message: "m".into(),
        };
        let host = Refusal::host_taken("a.example.com", "runner-1", "other");
        let state = CompositionState::Refused {
            reasons: vec![label, host],
        };
        let json = serde_json::to_string(&state).expect("serializes");
        assert_eq!(
            json,
            r#"{"state":"refused","reasons":[{"reason":"invalid-enable","message":"m","container":"c-1","service":"web","label":"compose-ingress.enable","value":""},{"reason":"host-taken","message":"host a.example.com is already claimed by pod runner-1 (composition other); choose another compose-ingress.host","host":"a.example.com"}]}"#
        );
    }
}
