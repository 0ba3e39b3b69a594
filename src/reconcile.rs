//! The reconciler: a per-project work queue (debounced), the delete grace, retries with backoff,
//! the periodic full resync and orphan GC. Level-triggered: a hint only says "look at project P";
//! what to do is recomputed from Docker (the source of truth) and the live owned objects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use backon::ExponentialBackoff;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::cluster::{Claim, Cluster, ClusterError, DesiredObject, Kind, OwnedObject};
use crate::config::Timings;
use crate::docker::{DockerClient, Hint, ProjectKey};
use crate::model::{DesiredComposition, ObservedProject, OwnerPod, Plan, PlanSettings, RouteApi};
use crate::plan::plan;
use crate::render;
use crate::status::{CompositionState, RefusedReason, Status};

/// What happened to one project in one pass (for tests of the queue logic and for metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exposed,
    Unchanged,
    GracePending,
    Deleted,
    Nothing,
    /// Opted-in services are created but not started yet: no write until they start or the
    /// settle time runs out.
    Waiting,
}

/// Why (part of) a composition is not exposed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Problem {
    /// A label value the contract refuses.
    Label {
        container: String,
        label: String,
        message: String,
    },
    /// A host another pod (or another composition) holds the Lease of.
    HostTaken {
        host: String,
        holder_pod: String,
        holder_project: String,
    },
}

#[derive(Default)]
struct ProjectState {
    grace_until: Option<Instant>,
    backoff: Option<ExponentialBackoff>,
    /// The problems logged at the last pass, so that a warning is logged once per change, not
    /// on every pass.
    problems: BTreeSet<Problem>,
    last_error: Option<String>,
    urls: Vec<String>,
    /// Since when the composition has had something to expose while opted-in services were
    /// still created and not started (the settle clock).
    starting_since: Option<Instant>,
    /// The last pass found opted-in services created and not started, within the settle time:
    /// their `start` is expected, so its hint needs no debounce (see `on_hint`).
    expecting_start: bool,
}

pub struct Reconciler {
    docker: DockerClient,
    cluster: Cluster,
    settings: PlanSettings,
    owner: OwnerPod,
    timings: Timings,
    status: Arc<Status>,
    projects: HashMap<ProjectKey, ProjectState>,
    /// This pod's live objects, from the last listing plus our own writes since.
    owned: BTreeMap<(Kind, String), OwnedObject>,
    queue: BTreeMap<ProjectKey, Instant>,
    resync_due: Option<Instant>,
    resync_backoff: Option<ExponentialBackoff>,
}

/// The idle reconciler loop still turns this often (its heartbeat for `/healthz`).
pub const HEARTBEAT: Duration = Duration::from_secs(5);

fn retry_backoff() -> ExponentialBackoff {
    crate::retry::backoff(Duration::from_millis(500), Duration::from_secs(60))
}

impl Reconciler {
    pub fn new(
        docker: DockerClient,
        cluster: Cluster,
        settings: PlanSettings,
        owner: OwnerPod,
        timings: Timings,
        status: Arc<Status>,
    ) -> Self {
        Self {
            docker,
            cluster,
            settings,
            owner,
            timings,
            status,
            projects: HashMap::new(),
            owned: BTreeMap::new(),
            queue: BTreeMap::new(),
            resync_due: None,
            resync_backoff: None,
        }
    }

    /// Runs until cancelled or until the hint channel closes.
    pub async fn run(mut self, mut hints: UnboundedReceiver<Hint>, cancel: CancellationToken) {
        loop {
            self.status.heartbeat();
            let next_due = self.queue.values().min().copied();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                // Turn at least this often, so that /healthz sees the loop alive when idle.
                _ = tokio::time::sleep(HEARTBEAT) => {}
                hint = hints.recv() => match hint {
                    Some(h) => self.on_hint(h),
                    None => break,
                },
                _ = tokio::time::sleep_until(self.resync_due.unwrap_or(far)), if self.resync_due.is_some() => {
                    self.full_resync().await;
                }
                _ = tokio::time::sleep_until(next_due.unwrap_or(far)), if next_due.is_some() => {
                    self.process_due().await;
                }
            }
        }
    }

    fn on_hint(&mut self, hint: Hint) {
        match hint {
            Hint::Project(key) => {
                // The debounce guesses when a composition has finished coming up. When the last
                // pass saw which services are still to start, nothing is left to guess: the
                // settle wait (`wait_for_start`) coalesces their starts, so go at once.
                let expecting = self.projects.get(&key).is_some_and(|s| s.expecting_start);
                let debounce = if expecting {
                    Duration::ZERO
                } else {
                    self.timings.debounce
                };
                let due = Instant::now() + debounce;
                let entry = self.queue.entry(key).or_insert(due);
                *entry = (*entry).min(due);
            }
            Hint::Resync => {
                self.status.set_docker_connected(true);
                self.resync_due = Some(Instant::now());
            }
            Hint::DockerDown => {
                if self.status.docker_connected() {
                    self.status.metrics.docker_reconnect();
                }
                self.status.set_docker_connected(false);
            }
        }
    }

    async fn process_due(&mut self) {
        let now = Instant::now();
        let due: Vec<ProjectKey> = self
            .queue
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.queue.remove(&key);
            let span = info_span!("reconcile", composition = %key);
            match self.docker.project(&key).instrument(span.clone()).await {
                Ok(observed) => {
                    self.reconcile_project(&key, &observed)
                        .instrument(span)
                        .await
                }
                Err(e) => {
                    // Docker is the source of truth: without it, change nothing and retry.
                    let _enter = span.enter();
                    warn!(error = %e, "cannot read the project's containers; will retry");
                    self.schedule_retry(&key);
                }
            }
        }
    }

    /// Lists everything in Docker and every owned object, converges each project and GCs the
    /// orphans. GC runs only from a complete, successful listing of the Docker daemon.
    async fn full_resync(&mut self) {
        self.resync_due = None;
        let started = Instant::now();
        let snapshot = match self.docker.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                return self.resync_failed(format!("Docker listing failed, no GC this time: {e}"));
            }
        };
        let owned = match self.cluster.list_owned().await {
            Ok(o) => o,
            Err(e) => return self.resync_failed(format!("listing this pod's objects failed: {e}")),
        };
        self.resync_backoff = None;
        self.owned = owned
            .into_iter()
            .map(|o| ((o.kind, o.name.clone()), o))
            .collect();
        let mut keys: BTreeSet<ProjectKey> = snapshot.keys().cloned().collect();
        keys.extend(self.owned.values().map(|o| o.project.clone()));
        keys.extend(self.projects.keys().cloned());
        let empty = ObservedProject::default();
        for key in keys {
            self.queue.remove(&key);
            let observed = snapshot
                .get(&key)
                .cloned()
                .unwrap_or_else(|| ObservedProject {
                    name: key.clone(),
                    ..empty.clone()
                });
            self.reconcile_project(&key, &observed)
                .instrument(info_span!("reconcile", composition = %key))
                .await;
        }
        self.resync_due = Some(Instant::now() + self.timings.resync_interval);
        self.status.resync_done();
        info!(
            projects = snapshot.len(),
            owned_objects = self.owned.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "full resync done"
        );
    }

    fn resync_failed(&mut self, why: String) {
        let delay = self
            .resync_backoff
            .get_or_insert_with(retry_backoff)
            .next()
            .unwrap_or(Duration::from_secs(60));
        warn!(
            retry_in_ms = delay.as_millis() as u64,
            "full resync incomplete: {why}"
        );
        self.resync_due = Some(Instant::now() + delay);
    }

    fn schedule_retry(&mut self, key: &str) {
        let state = self.projects.entry(key.to_string()).or_default();
        let delay = state
            .backoff
            .get_or_insert_with(retry_backoff)
            .next()
            .unwrap_or(Duration::from_secs(60));
        self.queue.insert(key.to_string(), Instant::now() + delay);
    }

    fn owned_of(&self, project: &str) -> Vec<OwnedObject> {
        self.owned
            .values()
            .filter(|o| o.project == project)
            .cloned()
            .collect()
    }

    async fn reconcile_project(&mut self, key: &str, observed: &ObservedProject) {
        let started = std::time::Instant::now();
        let result = self.converge(key, observed).await;
        let state = self.projects.entry(key.to_string()).or_default();
        match result {
            Ok(outcome) => {
                self.status.metrics.reconcile(match outcome {
                    Outcome::Unchanged => "unchanged",
                    Outcome::Waiting => "waiting",
                    _ => "changed",
                });
                state.backoff = None;
                state.last_error = None;
                debug!(
                    ?outcome,
                    took_us = started.elapsed().as_micros() as u64,
                    "reconciled"
                );
                if outcome == Outcome::Deleted || outcome == Outcome::Nothing {
                    let forget = state.grace_until.is_none()
                        && state.problems.is_empty()
                        && !state.expecting_start;
                    if forget {
                        self.projects.remove(key);
                    }
                }
            }
            Err(e) => {
                self.status.metrics.reconcile("error");
                let message = e.to_string();
                let delay = state
                    .backoff
                    .get_or_insert_with(retry_backoff)
                    .next()
                    .unwrap_or(Duration::from_secs(60));
                if state.last_error.as_deref() != Some(message.as_str()) {
                    warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "reconcile failed; will retry");
                } else {
                    debug!(error = %message, retry_in_ms = delay.as_millis() as u64, "reconcile failed again");
                }
                state.last_error = Some(message);
                self.queue.insert(key.to_string(), Instant::now() + delay);
            }
        }
    }

    async fn converge(
        &mut self,
        key: &str,
        observed: &ObservedProject,
    ) -> Result<Outcome, ClusterError> {
        let plan = plan(observed, &self.settings);
        if let Some(wait) = self.wait_for_start(key, &plan) {
            debug!(
                awaiting = ?plan.awaiting_start,
                wait_ms = wait.as_millis() as u64,
                "services created and not started yet; waiting for them"
            );
            // A start event re-queues the project earlier; this is the deadline if none comes.
            self.queue.insert(key.to_string(), Instant::now() + wait);
            return Ok(Outcome::Waiting);
        }
        let mut problems: BTreeSet<Problem> = BTreeSet::new();
        for r in &plan.refusals {
            let problem = Problem::Label {
                container: r.container.clone(),
                label: r.label.clone(),
                message: r.message.clone(),
            };
            if self.is_new(key, &problem) {
                warn!(container = %r.container, service = %r.service, label = %r.label, value = %r.value, reason = r.reason, "label refused: {}", r.message);
                self.status.metrics.refused(r.reason);
                self.status.event_refused(key, r);
            }
            problems.insert(problem);
        }
        let desired = match plan.desired {
            Some(d) => self.claim_hosts(key, d, &mut problems).await?,
            None => None,
        };
        self.projects.entry(key.to_string()).or_default().problems = problems;
        match desired {
            Some(d) => {
                self.projects
                    .entry(key.to_string())
                    .or_default()
                    .grace_until = None;
                let refused = refused_reasons(&plan.refusals, self.projects.get(key));
                self.apply(key, &d, refused).await
            }
            None => {
                let outcome = self.stop_exposing(key).await?;
                if matches!(outcome, Outcome::Nothing | Outcome::Deleted) {
                    let reasons = refused_reasons(&plan.refusals, self.projects.get(key));
                    if !reasons.is_empty() {
                        self.status
                            .set_composition(key, CompositionState::Refused { reasons });
                    }
                }
                Ok(outcome)
            }
        }
    }

    /// How much longer to wait for the plan's `awaiting_start` services before exposing the
    /// rest, so that a composition that comes up in steps is written once, not once per step.
    /// The clock starts at the first pass that has something to expose while services are still
    /// awaited (a composition created long ago and started now gets the whole settle time).
    /// `None`: expose now (nothing awaited, nothing to expose yet, or the settle time is over).
    fn wait_for_start(&mut self, key: &str, plan: &Plan) -> Option<Duration> {
        let state = self.projects.entry(key.to_string()).or_default();
        if plan.awaiting_start.is_empty() || plan.desired.is_none() {
            state.starting_since = None;
            // `--settle-time 0` turns the whole mechanism off, the debounce included.
            state.expecting_start =
                !plan.awaiting_start.is_empty() && !self.timings.settle_time.is_zero();
            return None;
        }
        let since = *state.starting_since.get_or_insert_with(Instant::now);
        let left = self
            .timings
            .settle_time
            .checked_sub(since.elapsed())
            .filter(|left| !left.is_zero());
        state.expecting_start = left.is_some();
        left
    }

    /// Claims every host of the composition with a Lease; backends whose host another pod (or
    /// another composition) holds are dropped with one warning.
    async fn claim_hosts(
        &mut self,
        key: &str,
        mut d: DesiredComposition,
        problems: &mut BTreeSet<Problem>,
    ) -> Result<Option<DesiredComposition>, ClusterError> {
        let hosts: BTreeSet<String> = d.backends.iter().map(|b| b.host.clone()).collect();
        let mut refused: BTreeSet<String> = BTreeSet::new();
        for host in hosts {
            let lease = DesiredObject::new(
                Kind::Lease,
                &render::host_lease(&host, &d.project, &self.owner, &self.settings),
            )?;
            let id = (Kind::Lease, lease.name().to_string());
            if self.owned.get(&id).is_some_and(|o| o.project == key) {
                continue;
            }
            let timer = std::time::Instant::now();
            let claim = self.cluster.claim(&lease).await;
            let result = match &claim {
                Ok(Claim::Ours { .. }) => "ok",
                Ok(Claim::Taken { .. }) => "conflict",
                Err(_) => "error",
            };
            self.status
                .metrics
                .api_request("create", Kind::Lease, result, timer.elapsed());
            match claim? {
                Claim::Ours { uid } => {
                    self.owned
                        .insert(id.clone(), owned_record(&lease, key, uid, Some(host)));
                }
                Claim::Taken {
                    holder_pod,
                    holder_project,
                } => {
                    let problem = Problem::HostTaken {
                        host: host.clone(),
                        holder_pod: holder_pod.clone(),
                        holder_project: holder_project.clone(),
                    };
                    if self.is_new(key, &problem) {
                        let services: Vec<&str> = d
                            .backends
                            .iter()
                            .filter(|b| b.host == host)
                            .map(|b| b.service.as_str())
                            .collect();
                        warn!(
                            host = %host, services = ?services, holder_pod = %holder_pod, holder_composition = %holder_project,
                            reason = "host-taken",
                            "host refused: it is already claimed by pod {holder_pod} (composition {holder_project}); choose another compose-ingress.host"
                        );
                        self.status.metrics.refused("host-taken");
                        self.status.event_host_taken(key, &host, &holder_pod);
                    }
                    problems.insert(problem);
                    refused.insert(host);
                }
            }
        }
        d.backends.retain(|b| !refused.contains(&b.host));
        Ok((!d.backends.is_empty()).then_some(d))
    }

    /// Whether `problem` was not already there at the project's last pass (then it is logged).
    fn is_new(&self, key: &str, problem: &Problem) -> bool {
        !self
            .projects
            .get(key)
            .is_some_and(|s| s.problems.contains(problem))
    }

    fn render_all(&self, d: &DesiredComposition) -> Result<Vec<DesiredObject>, ClusterError> {
        let mut objects = vec![DesiredObject::new(
            Kind::Service,
            &render::service(d, &self.settings, &self.owner),
        )?];
        match self.settings.route_api {
            RouteApi::Ingress => objects.push(DesiredObject::new(
                Kind::Ingress,
                &render::ingress(d, &self.settings, &self.owner),
            )?),
            RouteApi::Gateway => {
                for r in render::http_routes(d, &self.settings, &self.owner) {
                    objects.push(DesiredObject::new(Kind::HttpRoute, &r)?);
                }
            }
        }
        Ok(objects)
    }

    async fn apply(
        &mut self,
        key: &str,
        d: &DesiredComposition,
        refused: Vec<RefusedReason>,
    ) -> Result<Outcome, ClusterError> {
        let objects = self.render_all(d)?;
        let mut wrote = false;
        // Service first, so that a route never points at a Service that does not exist yet.
        for obj in &objects {
            let id = (obj.kind, obj.name().to_string());
            let known = self.owned.get(&id);
            if known.is_some_and(|o| o.spec_hash.as_deref() == obj.spec_hash()) {
                continue; // unchanged: zero writes
            }
            let verb = if known.is_some() { "apply" } else { "create" };
            let timer = std::time::Instant::now();
            let result = self.cluster.upsert(obj, known.is_some()).await;
            self.status
                .metrics
                .api_request(verb, obj.kind, ok_or_error(&result), timer.elapsed());
            let uid = result?;
            self.owned.insert(id, owned_record(obj, key, uid, None));
            wrote = true;
        }
        // Objects of this composition that the plan no longer wants (a host dropped, a route of
        // the other API, a lease of a host given up): routes first, leases last.
        let wanted: BTreeSet<(Kind, String)> = objects
            .iter()
            .map(|o| (o.kind, o.name().to_string()))
            .collect();
        let wanted_hosts: BTreeSet<&str> = d.backends.iter().map(|b| b.host.as_str()).collect();
        let mut stale: Vec<OwnedObject> = self
            .owned_of(key)
            .into_iter()
            .filter(|o| match o.kind {
                Kind::Lease => !o.host.as_deref().is_some_and(|h| wanted_hosts.contains(h)),
                _ => !wanted.contains(&(o.kind, o.name.clone())),
            })
            .collect();
        stale.sort_by_key(|o| std::cmp::Reverse(o.kind));
        for o in stale {
            self.delete_owned(&o).await?;
            wrote = true;
        }
        let urls = urls_of(d, &self.settings);
        let state = self.projects.entry(key.to_string()).or_default();
        let changed = state.urls != urls;
        if changed {
            info!(urls = ?urls, objects = objects.len(), "composition exposed");
            self.status.event_exposed(key, &urls);
            state.urls = urls.clone();
        }
        self.status.set_composition(
            key,
            CompositionState::Exposed {
                urls,
                backends: d.backends.clone(),
                refused,
            },
        );
        Ok(if wrote || changed {
            Outcome::Exposed
        } else {
            Outcome::Unchanged
        })
    }

    async fn stop_exposing(&mut self, key: &str) -> Result<Outcome, ClusterError> {
        let mut objects = self.owned_of(key);
        if objects.is_empty() {
            self.status.remove_composition(key);
            return Ok(Outcome::Nothing);
        }
        let now = Instant::now();
        let state = self.projects.entry(key.to_string()).or_default();
        match state.grace_until {
            None => {
                let until = now + self.timings.delete_grace;
                state.grace_until = Some(until);
                self.queue.insert(key.to_string(), until);
                info!(
                    grace_ms = self.timings.delete_grace.as_millis() as u64,
                    "composition no longer exposed; deleting its objects after the grace"
                );
                self.status
                    .set_composition(key, CompositionState::PendingDeletion);
                Ok(Outcome::GracePending)
            }
            Some(until) if until > now => {
                self.queue.insert(key.to_string(), until);
                Ok(Outcome::GracePending)
            }
            Some(_) => {
                objects.sort_by_key(|o| std::cmp::Reverse(o.kind));
                for o in &objects {
                    self.delete_owned(o).await?;
                }
                let state = self.projects.entry(key.to_string()).or_default();
                state.grace_until = None;
                state.urls.clear();
                info!(
                    objects = objects.len(),
                    "composition unexposed: objects deleted"
                );
                self.status.event_deleted(key, objects.len());
                self.status.remove_composition(key);
                Ok(Outcome::Deleted)
            }
        }
    }

    async fn delete_owned(&mut self, o: &OwnedObject) -> Result<(), ClusterError> {
        let timer = std::time::Instant::now();
        let result = self.cluster.delete(o.kind, &o.name, &o.uid).await;
        self.status
            .metrics
            .api_request("delete", o.kind, ok_or_error(&result), timer.elapsed());
        result?;
        self.owned.remove(&(o.kind, o.name.clone()));
        Ok(())
    }
}

fn owned_record(
    obj: &DesiredObject,
    project: &str,
    uid: String,
    host: Option<String>,
) -> OwnedObject {
    OwnedObject {
        kind: obj.kind,
        name: obj.name().to_string(),
        uid,
        project: project.to_string(),
        spec_hash: obj.spec_hash().map(str::to_string),
        host,
    }
}

/// What of a composition is refused: the plan's label refusals, and the hosts that other pods
/// (or compositions) hold.
fn refused_reasons(
    refusals: &[crate::model::Refusal],
    state: Option<&ProjectState>,
) -> Vec<RefusedReason> {
    let mut reasons: Vec<RefusedReason> = refusals.iter().map(RefusedReason::from).collect();
    for problem in state.into_iter().flat_map(|s| s.problems.iter()) {
        if let Problem::HostTaken {
            host,
            holder_pod,
            holder_project,
        } = problem
        {
            reasons.push(RefusedReason {
                reason: "host-taken".to_string(),
                message: format!(
                    "host {host} is already claimed by pod {holder_pod} (composition {holder_project}); choose another compose-ingress.host"
                ),
                container: None,
                service: None,
                label: None,
                value: None,
                host: Some(host.clone()),
            });
        }
    }
    reasons
}

/// The URLs users get: https when the operator configured a TLS secret.
pub fn urls_of(d: &DesiredComposition, settings: &PlanSettings) -> Vec<String> {
    let scheme = if d.tls_secret.is_some() && settings.route_api == RouteApi::Ingress {
        "https"
    } else {
        "http"
    };
    let mut urls: Vec<String> = d
        .backends
        .iter()
        .map(|b| format!("{scheme}://{}{}", b.host, b.path))
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

/// Deletes every object of this pod (shutdown of a terminating pod): routes first, leases last.
pub async fn delete_all_owned(cluster: &Cluster) -> Result<usize, ClusterError> {
    let mut owned = cluster.list_owned().await?;
    owned.sort_by_key(|o| std::cmp::Reverse(o.kind));
    for o in &owned {
        cluster.delete(o.kind, &o.name, &o.uid).await?;
    }
    Ok(owned.len())
}
/// The `result` label of an API request metric.
fn ok_or_error<T, E>(result: &Result<T, E>) -> &'static str {
    if result.is_ok() { "ok" } else { "error" }
}
