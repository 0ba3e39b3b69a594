//! The Docker edge: lists containers into observed compositions, and turns the daemon's event
//! stream into composition hints. The event reader never does I/O besides reading the stream: the
//! daemon drops events for a subscriber slower than 100 ms, so it only pushes keys into a queue.
//!
//! Version negotiation goes through bollard; the container listing ([`listing`]), parsed into
//! only the fields the sidecar reads, and the event stream ([`events`]), split into events on
//! every newline whatever its framing, are our own requests.

mod events;
mod json_array;
mod lag;
mod listing;
mod reach;
#[cfg(test)]
mod stream_tests;

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::models::EventMessage;
use bollard::{BollardRequest, Docker};
use hyper::Uri;
use hyper::http::uri::PathAndQuery;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::labels::COMPOSE_PROJECT;
use crate::model::{
    ContainerState, Health, ObservedComposition, ObservedContainer, Protocol, PublishedPort,
};
use crate::retry::Retry;

/// A composition key: the compose project name, or `/<container name>` for a plain container
/// (compose project names cannot contain '/').
pub(crate) type CompositionKey = String;

/// The longest composition key kept as it is: a project name the planner accepts (or a plain
/// container's `/name`). Longer ones come from a hand-set label or name of any size.
const MAX_KEY_BYTES: usize = crate::plan::MAX_PROJECT_NAME + 1;
/// What is kept of an over-long key's start.
const KEPT_OF_LONG_KEY: usize = 64;
/// Marks a shortened key; not a character of any project or container name, so a shortened key
/// can neither collide with a real one nor pass the planner's name check.
const SHORTENED: char = '\u{2026}';

/// `raw` as a composition key: itself when at most [`MAX_KEY_BYTES`], else its start, the
/// marker and a hash of the whole (distinct and stable per raw name). Every key the reader
/// pushes on the hint channel or lists goes through here, so no key that reaches a log line, a
/// status document or a refusal is longer than about 90 bytes more than a valid name.
fn bounded_key(raw: &str) -> CompositionKey {
    if raw.len() <= MAX_KEY_BYTES {
        return raw.to_string();
    }
    let mut cut = KEPT_OF_LONG_KEY;
    while !raw.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}{SHORTENED}{}",
        &raw[..cut],
        crate::naming::hash_hex(raw, 16)
    )
}

/// What failed underneath a [`DockerError`]: bollard's error, or our own listing's (a dial, an
/// exchange, a body that does not decode).
type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot connect to Docker at {host}: {}", reach::explain(host, source.as_ref()))]
    Connect { host: String, source: Cause },
    /// The exchange broke, timed out, or bollard's request failed.
    #[error("Docker request {what} to {host} failed: {}", reach::explain(host, source.as_ref()))]
    Request {
        host: String,
        what: &'static str,
        source: Cause,
    },
    /// Our own requests (the listing): the daemon said no.
    #[error(
        "Docker request {what} was answered {status}: {message} (is {host} a Docker daemon, and does any proxy in front of it allow the request?)"
    )]
    Status {
        host: String,
        what: &'static str,
        status: hyper::StatusCode,
        message: String,
    },
    /// Our own requests: an answer that is not what Docker sends (not JSON of the expected
    /// shape, or not a whole JSON array).
    #[error(
        "Docker request {what} got an answer this sidecar cannot read: {source} (is {host} a Docker daemon?)"
    )]
    Decode {
        host: String,
        what: &'static str,
        source: Cause,
    },
}

/// What the reader tells the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Something about this composition may have changed.
    Composition(CompositionKey),
    /// A container of this composition changed its health (`health_status`): for an exposed
    /// composition only an endpoint's readiness changes, and nothing is left to coalesce.
    Health(CompositionKey),
    /// (Re)connected to Docker: list everything and converge, GC included.
    Resync,
    /// The event stream broke: Docker is unreachable until the next `Resync`.
    DockerDown,
    /// From the Lease watcher (src/lease_watch.rs), not Docker: this host's Lease was deleted,
    /// or (`None`) any may have been while the watch was down.
    HostReleased(Option<String>),
}

/// Container actions that can change what a composition exposes (exec_*, attach, ... cannot).
const RELEVANT_ACTIONS: &[&str] = &[
    "create", "start", "restart", "die", "stop", "kill", "destroy", "pause", "unpause", "rename",
    "update",
];
/// The health action (`health_status: healthy`, ...): Docker matches an `event` filter of
/// exactly this word by prefix (moby's events filter, #25798), so it takes every status.
const HEALTH_ACTION: &str = "health_status";

/// The event subscription's filters, applied by the daemon: container events of the actions
/// above only (an exec event, one per healthcheck probe or `docker exec` and each carrying all of
/// the container's labels, never reaches the sidecar), and, unless plain containers are exposed,
/// only those of Compose's containers.
fn event_filters(expose_plain: bool) -> HashMap<String, Vec<String>> {
    let mut filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        (
            "event".to_string(),
            RELEVANT_ACTIONS
                .iter()
                .chain([&HEALTH_ACTION])
                .map(|a| a.to_string())
                .collect(),
        ),
    ]);
    if !expose_plain {
        filters.insert("label".to_string(), vec![COMPOSE_PROJECT.to_string()]);
    }
    filters
}

/// The Docker client of the sidecar. Every clone (the event watcher's, the reconciler's) shares
/// one negotiated bollard client: the watcher negotiates the API version at each (re)connect and
/// stores the result here, so every request of every clone carries a version the engine accepts.
/// Shared by us, explicitly, rather than through bollard's clones happening to share their
/// version; and each negotiation starts from the client's own version, so a dind replaced by a
/// newer engine is not held to an older one's.
#[derive(Clone)]
pub struct DockerClient {
    docker: Arc<RwLock<Docker>>,
    host: String,
    expose_plain: bool,
}

/// `request` with `prefix` (`/v1.41`) before its path, unless it has one.
fn with_version_prefix(request: BollardRequest, prefix: &str) -> BollardRequest {
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if !path.starts_with(&format!("{prefix}/")) {
        let mut uri = parts.uri.clone().into_parts();
        if let Ok(versioned) = PathAndQuery::try_from(format!("{prefix}{path}")) {
            uri.path_and_query = Some(versioned);
            if let Ok(uri) = Uri::from_parts(uri) {
                parts.uri = uri;
            }
        }
    }
    BollardRequest::from_parts(parts, body)
}

/// A bollard client at bollard's own API version (no I/O).
fn connect(host: &str) -> Result<Docker, DockerError> {
    let connect = |e: bollard::errors::Error| DockerError::Connect {
        host: host.to_string(),
        source: e.into(),
    };
    if let Some(path) = host.strip_prefix("unix://") {
        Docker::connect_with_unix(path, 60, bollard::API_DEFAULT_VERSION).map_err(connect)
    } else {
        Docker::connect_with_http(host, 60, bollard::API_DEFAULT_VERSION).map_err(connect)
    }
}

impl DockerClient {
    /// Creates the client (no I/O yet: the daemon may still be starting, as dind is when a native
    /// sidecar starts before it).
    pub fn new(host: &str, expose_plain: bool) -> Result<Self, DockerError> {
        Ok(Self {
            docker: Arc::new(RwLock::new(connect(host)?)),
            host: host.to_string(),
            expose_plain,
        })
    }

    /// The shared client as negotiated last (a cheap clone of bollard's handle).
    fn client(&self) -> Docker {
        match self.docker.read() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The API version every request carries now (bollard puts it in the path).
    pub(crate) fn api_version(&self) -> String {
        self.client().client_version().to_string()
    }

    fn request_error(
        &self,
        what: &'static str,
    ) -> impl Fn(bollard::errors::Error) -> DockerError + '_ {
        move |source| DockerError::Request {
            host: self.host.clone(),
            what,
            source: source.into(),
        }
    }

    /// Agrees on the API version with the daemon (dind may be older than this client), for
    /// every clone. bollard 0.21 builds its request paths without the version (its `/vX.Y`
    /// prefix is lost in a URL join), so an engine would answer every request with its own
    /// newest API, whatever was negotiated: the negotiated client puts the version into each
    /// path itself, and the engine answers in the schema this client was built for.
    pub(crate) async fn negotiate(&self) -> Result<(), DockerError> {
        let negotiated = connect(&self.host)?
            .negotiate_version()
            .await
            .map_err(self.request_error("version"))?;
        let version = negotiated.client_version();
        let prefix = format!("/v{}.{}", version.major_version, version.minor_version);
        let negotiated =
            negotiated.with_request_modifier(move |request| with_version_prefix(request, &prefix));
        match self.docker.write() {
            Ok(mut d) => *d = negotiated,
            Err(poisoned) => *poisoned.into_inner() = negotiated,
        }
        Ok(())
    }

    /// Every container (all states) matching `filters`, with the API version every request
    /// carries now.
    async fn list(
        &self,
        filters: &BTreeMap<&str, Vec<String>>,
    ) -> Result<Vec<listing::Listed>, DockerError> {
        listing::list_containers(&self.host, &self.api_version(), filters).await
    }

    /// Every container of one composition, fresh from the daemon.
    pub(crate) async fn composition(&self, key: &str) -> Result<ObservedComposition, DockerError> {
        let mut filters = BTreeMap::new();
        if key.contains(SHORTENED) {
            // A shortened key names no container itself: list those it may stand for and keep
            // the ones whose key shortens to it (below).
            if !key.starts_with('/') {
                filters.insert("label", vec![COMPOSE_PROJECT.to_string()]);
            }
        } else if let Some(name) = key.strip_prefix('/') {
            filters.insert("name", vec![format!("^/{name}$")]);
        } else {
            filters.insert("label", vec![format!("{COMPOSE_PROJECT}={key}")]);
        }
        let containers = self
            .list(&filters)
            .await?
            .into_iter()
            .filter(|c| composition_key(c, self.expose_plain).as_deref() == Some(key))
            .map(observe)
            .collect();
        Ok(ObservedComposition {
            name: key.to_string(),
            containers,
        })
    }

    /// A complete listing of the daemon, grouped by composition key. Only a successful snapshot
    /// may drive orphan GC (an empty answer from a daemon that is still starting is an error).
    pub(crate) async fn snapshot(
        &self,
    ) -> Result<BTreeMap<CompositionKey, ObservedComposition>, DockerError> {
        let mut compositions: BTreeMap<CompositionKey, ObservedComposition> = BTreeMap::new();
        for c in self.list(&BTreeMap::new()).await? {
            if let Some(key) = composition_key(&c, self.expose_plain) {
                let entry =
                    compositions
                        .entry(key.clone())
                        .or_insert_with(|| ObservedComposition {
                            name: key.clone(),
                            containers: Vec::new(),
                        });
                entry.containers.push(observe(c));
            }
        }
        Ok(compositions)
    }

    /// Reads the event stream until cancelled, reconnecting with backoff. Sends `Resync` after
    /// every (re)connect and `DockerDown` when the stream breaks.
    pub async fn watch(
        self,
        hints: UnboundedSender<Hint>,
        events_seen: impl Fn(&str),
        cancel: CancellationToken,
    ) {
        let mut reconnect = Reconnect::new();
        let mut connected_once = false;
        while !cancel.is_cancelled() {
            if let Err(e) = self.negotiate().await {
                let delay = reconnect.failed(Instant::now());
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Docker is not reachable; retrying");
                let _ = hints.send(Hint::DockerDown);
                tokio::select! { _ = tokio::time::sleep(delay) => continue, _ = cancel.cancelled() => break }
            }
            // Replay from a little before the resync's listing, so that an event between the
            // listing and the subscription is never lost (hints are idempotent).
            let since = SystemTime::now()
                .checked_sub(Duration::from_secs(2))
                .unwrap_or(UNIX_EPOCH);
            let since = since
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            // The API version every request carries: the client's own unless the daemon is
            // older, then the daemon's (`negotiate`).
            let api_version = self.api_version();
            let path = events::events_path(&api_version, since, &event_filters(self.expose_plain));
            if connected_once {
                info!(docker_host = %self.host, %api_version, "reconnected to Docker; full resync");
            } else {
                info!(docker_host = %self.host, %api_version, "connected to Docker; full resync");
            }
            connected_once = true;
            if hints.send(Hint::Resync).is_err() {
                break;
            }
            reconnect.connected(Instant::now());
            // Events logged before this are the replay (see `lag::lag`).
            let subscribed = SystemTime::now();
            let on_event = |event: EventMessage| {
                let Some((action, key)) = hint_of(&event, self.expose_plain) else {
                    return ControlFlow::Continue(());
                };
                events_seen(action);
                let lag = lag::lag(event.time_nano, subscribed, SystemTime::now());
                let lag_ms = lag.map(|l| l.as_millis() as u64);
                debug!(action, project = %key, lag_ms, "docker event");
                if lag.is_some_and(|l| l >= lag::LATE_EVENT) {
                    info!(
                        action,
                        project = %key,
                        lag_ms,
                        "a Docker event reached the sidecar late: the sidecar's view of Docker \
                         lagged (a loaded machine, or a stalled event stream); passes re-read \
                         Docker, so it costs time, not state"
                    );
                }
                let hint = if action == HEALTH_ACTION {
                    Hint::Health(key)
                } else {
                    Hint::Composition(key)
                };
                // The reconciler is gone: stop reading.
                if hints.send(hint).is_err() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            let ended = tokio::select! {
                ended = events::stream(&self.host, &path, on_event) => ended,
                _ = cancel.cancelled() => return,
            };
            match ended {
                Ok(events::StreamEnd::Stopped) => return,
                Ok(events::StreamEnd::Ended) => warn!("Docker event stream ended; reconnecting"),
                Err(e) => warn!(error = %e, "Docker event stream broke; reconnecting"),
            }
            let _ = hints.send(Hint::DockerDown);
            let delay = reconnect.failed(Instant::now());
            debug!(
                retry_in_ms = delay.as_millis() as u64,
                "reconnecting to Docker"
            );
            tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = cancel.cancelled() => break }
        }
    }
}

/// How long the event stream must have stayed up for its break to count as a new outage (the
/// delays then start from the minimum again). A stream that fails at once (a socket proxy that
/// denies `/events`, a dockerd that is shutting down) keeps backing off instead, and so do the
/// full resyncs that every reconnect brings.
const HEALTHY_STREAM: Duration = Duration::from_secs(30);

/// The delays between reconnects of the event stream.
#[derive(Debug)]
struct Reconnect {
    retry: Retry,
    /// When the current stream was subscribed; `None` while disconnected.
    connected_at: Option<Instant>,
}

impl Reconnect {
    fn new() -> Self {
        Self {
            retry: Retry::new(Duration::from_millis(200), Duration::from_secs(30)),
            connected_at: None,
        }
    }

    fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The delay before the next attempt, after a failure (to connect, or of the stream) at `now`.
    fn failed(&mut self, now: Instant) -> Duration {
        if self
            .connected_at
            .take()
            .is_some_and(|at| now.saturating_duration_since(at) >= HEALTHY_STREAM)
        {
            self.retry.reset();
        }
        self.retry.next_delay()
    }
}

/// The composition an event is about, when its action can change what is exposed.
fn hint_of(event: &EventMessage, expose_plain: bool) -> Option<(&str, CompositionKey)> {
    let action = event.action.as_deref()?;
    let base = action.split(':').next().unwrap_or(action).trim();
    let relevant = RELEVANT_ACTIONS.contains(&base) || base == HEALTH_ACTION;
    if !relevant {
        return None;
    }
    let attributes = event.actor.as_ref()?.attributes.as_ref()?;
    if let Some(project) = attributes.get(COMPOSE_PROJECT) {
        return Some((base, bounded_key(project)));
    }
    if expose_plain {
        // "rename" carries the new name; the old name's key is cleaned up by the next resync.
        return attributes.get("name").map(|n| {
            (
                base,
                bounded_key(&format!("/{}", n.trim_start_matches('/'))),
            )
        });
    }
    None
}

fn composition_key(c: &listing::Listed, expose_plain: bool) -> Option<CompositionKey> {
    if let Some(p) = c.labels.get(COMPOSE_PROJECT) {
        return Some(bounded_key(p));
    }
    if expose_plain {
        return c
            .names
            .first()
            .map(|n| bounded_key(&format!("/{}", n.trim_start_matches('/'))));
    }
    None
}

/// The container's health: the listing's `Health` field (API 1.52+), else the `(healthy)` /
/// `(unhealthy)` / `(health: starting)` suffix that every engine puts in `Status`.
fn health_of(c: &listing::Listed) -> Health {
    match c.health.as_ref().map(|h| h.status.as_str()) {
        Some("healthy") => return Health::Healthy,
        Some("unhealthy") => return Health::Unhealthy,
        Some("starting") => return Health::Starting,
        _ => {}
    }
    let status = c.status.as_str();
    if status.ends_with("(healthy)") {
        Health::Healthy
    } else if status.ends_with("(unhealthy)") {
        Health::Unhealthy
    } else if status.ends_with("(health: starting)") {
        Health::Starting
    } else {
        Health::None
    }
}

fn observe(c: listing::Listed) -> ObservedContainer {
    let health = health_of(&c);
    let mut published: Vec<PublishedPort> = c
        .ports
        .into_iter()
        // Every binding with its address: which ones the pod's IP reaches is the planner's rule
        // (`PublishedPort::reachable_on`).
        .filter_map(|p| {
            let protocol = match p.typ.as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "sctp" => Protocol::Sctp,
                _ => return None,
            };
            Some(PublishedPort {
                container_port: p.private_port?,
                protocol,
                host_port: p.public_port?,
                host_ip: p.ip.unwrap_or_default(),
            })
        })
        .collect();
    published.sort();
    published.dedup();
    ObservedContainer {
        name: c
            .names
            .first()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default(),
        id: c.id,
        labels: c.labels,
        state: match c.state.as_str() {
            "running" => ContainerState::Running,
            "created" => ContainerState::Created,
            _ => ContainerState::Stopped,
        },
        published,
        health,
        created: c.created,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stream_that_fails_at_once_keeps_backing_off_and_a_healthy_one_starts_over() {
        let t0 = Instant::now();
        let mut r = Reconnect::new();
        // Subscribed, and broken within a second, five times: the delays keep growing
        // (jittered doubling from 200 ms: the fifth is at least 3.2 s), where a reset at every
        // subscription kept them at 200-400 ms, a reconnect and a full resync each time.
        let mut at = t0;
        let mut delays = Vec::new();
        for _ in 0..5 {
            r.connected(at);
            at += Duration::from_millis(500);
            let d = r.failed(at);
            delays.push(d);
            at += d;
        }
        assert!(delays[0] <= Duration::from_millis(400), "{delays:?}");
        assert!(delays[4] >= Duration::from_millis(3200), "{delays:?}");
        // Failures to connect at all grow the same delays.
        let d = r.failed(at);
        assert!(d >= Duration::from_millis(6400), "{d:?}");
        // A stream that stayed up for HEALTHY_STREAM: its break is a new outage.
        r.connected(at);
        at += HEALTHY_STREAM;
        assert!(r.failed(at) <= Duration::from_millis(400));
    }

    use super::*;
    use bollard::models::EventActor;
    use listing::{Listed, ListedHealth, ListedPort};

    fn event(action: &str, attrs: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            action: Some(action.to_string()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_state_changes_of_compose_containers_are_hints() {
        let labelled = [(COMPOSE_PROJECT, "demochat"), ("name", "demochat_web_1")];
        assert_eq!(
            hint_of(&event("start", &labelled), false),
            Some(("start", "demochat".to_string()))
        );
        assert_eq!(
            hint_of(&event("health_status: healthy", &labelled), false).map(|h| h.0),
            Some("health_status")
        );
        assert_eq!(hint_of(&event("exec_start: sh", &labelled), false), None);
        assert_eq!(hint_of(&event("start", &[("name", "plain")]), false), None);
        assert_eq!(
            hint_of(&event("start", &[("name", "plain")]), true),
            Some(("start", "/plain".to_string()))
        );
    }

    /// The subscription asks the daemon for state changes only: no exec events (seen failing
    /// with the old type-only filter), compose containers only unless plain ones are exposed.
    #[test]
    fn the_daemon_filters_the_event_stream() {
        let f = event_filters(false);
        assert_eq!(f["type"], ["container"]);
        let events = &f["event"];
        for action in ["start", "die", "destroy", "health_status", "rename"] {
            assert!(events.iter().any(|e| e == action), "{action}: {events:?}");
        }
        assert!(!events.iter().any(|e| e.starts_with("exec")), "{events:?}");
        assert_eq!(f["label"], [COMPOSE_PROJECT]);
        assert!(!event_filters(true).contains_key("label"));
    }

    /// A project label of a megabyte (or a plain container's long name): the key pushed on the
    /// hint channel and listed is short, distinct per raw name and stable (seen failing with
    /// the raw label pushed as it is).
    #[test]
    fn over_long_keys_are_shortened_with_a_hash() {
        let long = "p".repeat(1024 * 1024);
        let (_, key) =
            hint_of(&event("start", &[(COMPOSE_PROJECT, long.as_str())]), false).unwrap();
        assert!(key.len() <= 100, "{}", key.len());
        assert!(key.starts_with(&"p".repeat(KEPT_OF_LONG_KEY)) && key.contains(SHORTENED));
        let other = format!("{long}q");
        let (_, other_key) =
            hint_of(&event("start", &[(COMPOSE_PROJECT, other.as_str())]), false).unwrap();
        assert_ne!(key, other_key);
        assert_eq!(bounded_key(&long), key);
        let (_, plain) = hint_of(&event("start", &[("name", long.as_str())]), true).unwrap();
        assert!(
            plain.starts_with("/p") && plain.len() <= 100,
            "{}",
            plain.len()
        );
        // Multi-byte characters are cut on a boundary; names within the bound are kept.
        assert!(bounded_key(&"é".repeat(100)).contains(SHORTENED));
        let name = "a".repeat(crate::plan::MAX_PROJECT_NAME);
        assert_eq!(bounded_key(&name), name);
        // The planner refuses a shortened key, naming the rule.
        assert!(crate::plan::project_name_refusal(&key).is_some());
    }

    /// The request heads a fake daemon has seen.
    type Seen = Arc<std::sync::Mutex<Vec<String>>>;

    /// A fake daemon's answer to a listing request (by its path and query): status, JSON body.
    type Answer = fn(&str) -> (u16, String);

    /// A daemon speaking API 1.41 (like Docker 20.10) on `s`: answers one request, `/version`
    /// itself and anything else with `listing`, in two chunks as dockerd sends a large listing,
    /// and records the request head.
    async fn serve<S>(mut s: S, listing: Answer, seen: Seen)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let path = head.split(' ').nth(1).unwrap_or_default().to_string();
        let (status, body) = if path.ends_with("/version") {
            (
                200,
                r#"{"ApiVersion":"1.41","MinAPIVersion":"1.12","Version":"20.10.24"}"#.to_string(),
            )
        } else {
            listing(&path)
        };
        seen.lock().expect("seen").push(head);
        let (first, second) = body.split_at(body.len() / 2);
        let mut reply = format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        for chunk in [first, second] {
            if !chunk.is_empty() {
                reply.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
            }
        }
        reply.push_str("0\r\n\r\n");
        let _ = s.write_all(reply.as_bytes()).await;
    }

    /// A fake 1.41 daemon on TCP (see [`serve`]).
    async fn fake_daemon(listing: Answer) -> (String, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Seen = Arc::default();
        let heads = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, listing, heads.clone()));
            }
        });
        (format!("tcp://{addr}"), seen)
    }

    /// A daemon that lists no containers.
    async fn old_daemon() -> (String, Seen) {
        fake_daemon(|_| (200, "[]".to_string())).await
    }

    /// The path of a recorded request head.
    fn path_of(head: &str) -> &str {
        head.split(' ').nth(1).unwrap_or_default()
    }

    #[tokio::test]
    async fn one_negotiation_serves_every_clone() {
        let (host, seen) = old_daemon().await;
        let watcher = DockerClient::new(&host, false).expect("client");
        let reconciler = watcher.clone();
        assert_ne!(
            reconciler.api_version(),
            "1.41",
            "bollard's own version first"
        );
        watcher.negotiate().await.expect("negotiate");
        assert_eq!(reconciler.api_version(), "1.41");
        reconciler.snapshot().await.expect("listing");
        let heads = seen.lock().expect("seen").clone();
        assert!(
            heads
                .last()
                .is_some_and(|h| path_of(h).starts_with("/v1.41/containers/json")),
            "the reconciler's listing carries the negotiated version: {heads:?}"
        );
    }

    /// Two containers as Docker 29 (API 1.52+) lists them: every field of the listing, most of
    /// which the sidecar never reads.
    const DOCKER_29_LISTING: &str = r#"[
      {
        "Id": "8dfafdbc3a40",
        "Names": ["/demochat-web-1"],
        "Image": "demochat-web",
        "ImageID": "sha256:5f9d5c8b3c1e",
        "ImageManifestDescriptor": {
          "mediaType": "application/vnd.oci.image.manifest.v1+json",
          "digest": "sha256:c0537ff6a5218ef531ece93d4984efc99bbf3f7497c0a7726c88e2bb7584dc96",
          "size": 3987495,
          "urls": ["https://example.com"],
          "annotations": {"com.docker.official-images.bashbrew.arch": "amd64"},
          "platform": {"architecture": "arm", "os": "windows", "os.version": "10.0.19041.1165",
                       "os.features": ["win32k"], "variant": "v7"}
        },
        "Command": "python app.py",
        "Created": 1764000000,
        "Ports": [
          {"IP": "0.0.0.0", "PrivatePort": 5000, "PublicPort": 32768, "Type": "tcp"},
          {"IP": "::", "PrivatePort": 5000, "PublicPort": 32768, "Type": "tcp"},
          {"PrivatePort": 9000, "Type": "tcp"},
          {"IP": "0.0.0.0", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"}
        ],
        "Labels": {
          "com.docker.compose.project": "demochat",
          "com.docker.compose.service": "web"
        },
        "State": "running",
        "Status": "Up 5 minutes (healthy)",
        "Health": {"Status": "healthy", "FailingStreak": 0},
        "HostConfig": {"NetworkMode": "demochat_default", "Annotations": {"a": "b"}},
        "NetworkSettings": {
          "Networks": {
            "demochat_default": {
              "IPAMConfig": null, "Links": null, "Aliases": null,
              "MacAddress": "02:42:ac:11:00:02", "DriverOpts": null, "GwPriority": 0,
              "NetworkID": "7ea29fc1412292a2d7bba362f9253545fecdfa8ce9a6e37dd10ba8bee7129812",
              "EndpointID": "2cdc4edb1ded3631c81f57966563e5c8525b81121bb3706a9a9a3ae102711f3f",
              "Gateway": "172.17.0.1", "IPAddress": "172.17.0.2", "IPPrefixLen": 16,
              "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
              "DNSNames": ["demochat-web-1", "web", "8dfafdbc3a40"]
            }
          }
        },
        "Mounts": [
          {"Type": "volume", "Name": "demochat_data", "Source": "/var/lib/docker/volumes/demochat_data/_data",
           "Destination": "/data", "Driver": "local", "Mode": "z", "RW": true, "Propagation": ""}
        ]
      },
      {
        "Id": "f00dfeed",
        "Names": ["/lonely"],
        "Image": "busybox",
        "Ports": [],
        "Labels": null,
        "State": "exited",
        "Status": "Exited (0) 2 hours ago",
        "Health": {"Status": "none", "FailingStreak": 0},
        "Mounts": null,
        "NetworkSettings": {"Networks": null}
      }
    ]"#;

    #[tokio::test]
    async fn a_docker_29_listing_reads_into_observed_containers() {
        let (host, seen) = fake_daemon(|_| (200, DOCKER_29_LISTING.to_string())).await;
        let docker = DockerClient::new(&host, true).expect("client");
        docker.negotiate().await.expect("negotiate");
        let project = docker.composition("demochat").await.expect("listing");
        let heads = seen.lock().expect("seen").clone();
        let head = heads.last().expect("a listing request");
        // {"label":["com.docker.compose.project=demochat"]}, percent-encoded.
        assert_eq!(
            path_of(head),
            "/v1.41/containers/json?all=1&filters=%7B%22label%22%3A%5B%22com.docker.compose.project%3Ddemochat%22%5D%7D"
        );
        assert!(head.starts_with("GET "), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("\r\nhost: 127.0.0.1:"),
            "{head}"
        );
        // The daemon ignored the filter: the listing's other container is not the project's.
        assert_eq!(project.name, "demochat");
        let [web] = project.containers.as_slice() else {
            panic!("one container: {:?}", project.containers);
        };
        assert_eq!(web.id, "8dfafdbc3a40");
        assert_eq!(web.name, "demochat-web-1");
        assert_eq!(web.state, ContainerState::Running);
        assert_eq!(web.health, Health::Healthy);
        assert_eq!(web.created, 1764000000);
        assert_eq!(
            web.labels
                .get("com.docker.compose.service")
                .map(String::as_str),
            Some("web")
        );
        let bindings: Vec<(u16, u16, &str, Protocol)> = web
            .published
            .iter()
            .map(|p| {
                (
                    p.container_port,
                    p.host_port,
                    p.host_ip.as_str(),
                    p.protocol,
                )
            })
            .collect();
        assert_eq!(
            bindings,
            [
                (53, 5353, "0.0.0.0", Protocol::Udp),
                (5000, 32768, "0.0.0.0", Protocol::Tcp),
                (5000, 32768, "::", Protocol::Tcp),
            ]
        );

        // The whole listing: the plain container too (null Labels), under its name.
        let snapshot = docker.snapshot().await.expect("snapshot");
        let heads = seen.lock().expect("seen").clone();
        assert_eq!(
            heads.last().map(|h| path_of(h)),
            Some("/v1.41/containers/json?all=1")
        );
        assert_eq!(
            snapshot.keys().map(String::as_str).collect::<Vec<_>>(),
            ["/lonely", "demochat"]
        );
        let lonely = &snapshot["/lonely"].containers[0];
        assert_eq!(lonely.state, ContainerState::Stopped);
        assert_eq!(lonely.health, Health::None);
        assert!(lonely.labels.is_empty() && lonely.published.is_empty());
    }

    #[tokio::test]
    async fn a_refused_listing_is_an_error_naming_status_and_message() {
        let (host, _) = fake_daemon(|_| {
            (
                400,
                r#"{"message":"client version 1.53 is too new. Maximum supported API version is 1.41"}"#
                    .to_string(),
            )
        })
        .await;
        let docker = DockerClient::new(&host, false).expect("client");
        let error = docker.snapshot().await.expect_err("a 400").to_string();
        assert!(error.contains("400"), "{error}");
        assert!(error.contains("client version 1.53 is too new"), "{error}");
        assert!(error.contains(&host), "{error}");

        let (host, _) = fake_daemon(|_| (403, "forbidden by the socket proxy\n".to_string())).await;
        let docker = DockerClient::new(&host, false).expect("client");
        let error = docker
            .composition("demochat")
            .await
            .expect_err("a 403")
            .to_string();
        assert!(
            error.contains("403") && error.contains("forbidden by the socket proxy"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn listings_go_over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!(
            "compose-ingress-docker-test-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let socket = dir.join("docker.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let seen: Seen = Arc::default();
        let heads = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(
                    s,
                    |_| (200, DOCKER_29_LISTING.to_string()),
                    heads.clone(),
                ));
            }
        });
        let docker =
            DockerClient::new(&format!("unix://{}", socket.display()), false).expect("client");
        let snapshot = docker.snapshot().await.expect("snapshot");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            snapshot.keys().map(String::as_str).collect::<Vec<_>>(),
            ["demochat"]
        );
        let heads = seen.lock().expect("seen").clone();
        let head = heads.last().expect("a listing request");
        assert!(
            path_of(head).starts_with(&format!("/v{}/containers/json?all=1", docker.api_version())),
            "{head}"
        );
    }

    /// A listed container, for the unit tests below.
    fn listed(status: &str, health: Option<&str>) -> Listed {
        Listed {
            status: status.to_string(),
            health: health.map(|status| ListedHealth {
                status: status.to_string(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn health_comes_from_the_health_field_or_the_status_text() {
        let summary = |status: &str, health: Option<&str>| health_of(&listed(status, health));
        // Engines before API 1.52 (20.10): only the status text says it.
        assert_eq!(summary("Up 3 seconds", None), Health::None);
        assert_eq!(
            summary("Up 3 seconds (health: starting)", None),
            Health::Starting
        );
        assert_eq!(summary("Up 9 seconds (healthy)", None), Health::Healthy);
        assert_eq!(summary("Up 2 minutes (unhealthy)", None), Health::Unhealthy);
        // Docker 29: the field, which wins.
        assert_eq!(summary("Up 1 second", Some("healthy")), Health::Healthy);
        assert_eq!(
            summary("Up 1 second (healthy)", Some("unhealthy")),
            Health::Unhealthy
        );
        assert_eq!(summary("Up 1 second", Some("starting")), Health::Starting);
        assert_eq!(summary("Up 1 second", Some("none")), Health::None);
    }

    #[test]
    fn observed_ports_keep_their_binding_address() {
        let port = |ip: &str, private: u16, public: Option<u16>, typ: &str| ListedPort {
            ip: Some(ip.to_string()),
            private_port: Some(private),
            public_port: public,
            typ: typ.to_string(),
        };
        let c = Listed {
            id: "id1".into(),
            names: vec!["/demochat_web_1".into()],
            state: "running".into(),
            ports: vec![
                port("0.0.0.0", 5000, Some(32768), "tcp"),
                port("::", 5000, Some(32768), "tcp"),
                // Docker < 27: the IPv6 binding of 8000 on a lower port than its IPv4 one (that
                // port may be another container's IPv4 port): only the IPv4 one counts.
                port("0.0.0.0", 8000, Some(40002), "tcp"),
                port("::", 8000, Some(40001), "tcp"),
                port("::", 8001, Some(40003), "tcp"),
                port("127.0.0.1", 6000, Some(6000), "tcp"),
                port("198.19.0.5", 6001, Some(6001), "tcp"),
                port("0.0.0.0", 53, Some(5353), "udp"),
                port("", 7000, None, "tcp"),
                // A protocol the sidecar does not know: skipped.
                port("0.0.0.0", 7001, Some(7001), "quic"),
            ],
            ..Default::default()
        };
        let o = observe(c);
        assert_eq!(o.name, "demochat_web_1");
        assert_eq!(o.state, ContainerState::Running);
        let bindings: Vec<(u16, u16, &str)> = o
            .published
            .iter()
            .map(|p| (p.container_port, p.host_port, p.host_ip.as_str()))
            .collect();
        assert_eq!(
            bindings,
            [
                (53, 5353, "0.0.0.0"),
                (5000, 32768, "0.0.0.0"),
                (5000, 32768, "::"),
                (6000, 6000, "127.0.0.1"),
                (6001, 6001, "198.19.0.5"),
                (8000, 40001, "::"),
                (8000, 40002, "0.0.0.0"),
                (8001, 40003, "::"),
            ]
        );
    }
}
