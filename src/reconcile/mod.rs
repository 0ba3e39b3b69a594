//! The reconciler: the I/O loop. Hints come in from the Docker reader; a due composition's
//! containers are read fresh from Docker, planned, and converged in the cluster; a periodic full
//! resync converges everything and GCs the orphans. Level-triggered: a hint only says "look at
//! composition P"; what to do is recomputed from Docker (the source of truth) and the live owned
//! objects.
//!
//! When a composition is due is the [`queue`]'s business, the timing rules (debounce, settle time,
//! delete grace, forgetting) are [`lifecycle`]'s; an exposed composition is rendered once
//! (src/render/: objects, URLs), then written and reported ([`apply`]: claims, applies,
//! deletes, log lines, Events, status, metrics).

mod apply;
mod lifecycle;
mod output;
mod pod_scope;
mod queue;
mod report;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::cluster::{Cluster, ClusterError};
use crate::config::{HEARTBEAT, Timings};
use crate::docker::{CompositionKey, DockerClient, Hint};
use crate::model::{ObservedComposition, OwnerPod, PlanSettings, Reason, Refusal};
use crate::plan::plan;
use crate::retry::Retry;
use crate::status::{CompositionState, Status};

use self::lifecycle::{Exposure, Lifecycle, PlanShape, Settle};
use self::output::Output;
pub use self::output::{Objects, Proxy};
use self::queue::DelayQueue;

/// The `target` of every log line of the reconciler, its submodules' too: log collectors and
/// docs/operability.md know the reconciler's lines by it.
const LOG_TARGET: &str = module_path!();

/// What happened to one composition in one pass (for tests of the queue logic and for metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Objects written (or the composition's URLs changed).
    Exposed,
    /// Exposed already, exactly as planned: zero writes.
    Unchanged,
    /// Nothing to expose any more; the objects stay until the delete grace is over.
    GracePending,
    /// The grace is over: the composition's objects were deleted.
    Deleted,
    /// Nothing to expose and nothing in the cluster.
    Nothing,
    /// Opted-in services are created but not started yet: no write until they start or the
    /// settle time runs out.
    Waiting,
}

impl Outcome {
    /// The `outcome` label of `compose_ingress_reconciles_total` (docs/operability.md): `changed`
    /// when the pass changed the cluster or what users see, `unchanged` when it wrote nothing
    /// (holding a delete grace or having nothing to do writes nothing either), `waiting` while
    /// services are still starting. A failed pass is `error`, counted by the caller.
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            Outcome::Exposed | Outcome::Deleted => "changed",
            Outcome::Unchanged | Outcome::GracePending | Outcome::Nothing => "unchanged",
            Outcome::Waiting => "waiting",
        }
    }
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
    /// The whole composition is refused (a cap, its name).
    Composition { reason: Reason, message: String },
    /// A host another pod (or another composition) holds the Lease of.
    HostTaken {
        host: String,
        holder_pod: String,
        holder_composition: String,
    },
}

struct CompositionRecord {
    lifecycle: Lifecycle,
    retry: Retry,
    /// The problems logged at the last pass, so that a warning is logged once per change, not
    /// on every pass.
    problems: BTreeSet<Problem>,
    last_error: Option<String>,
    urls: Vec<String>,
    /// Exposed services not routed at the last pass (their container's healthcheck does not
    /// pass), with their health: a change is logged once.
    unhealthy: BTreeSet<(String, &'static str)>,
}

impl Default for CompositionRecord {
    fn default() -> Self {
        Self {
            lifecycle: Lifecycle::default(),
            retry: retry(),
            problems: BTreeSet::new(),
            last_error: None,
            urls: Vec::new(),
            unhealthy: BTreeSet::new(),
        }
    }
}

/// The one retry policy of the reconciler, for a composition (a failed Docker read or cluster
/// write) and for the full resync alike.
fn retry() -> Retry {
    Retry::new(Duration::from_millis(500), Duration::from_secs(60))
}

/// The reconciler of one scope: `O` is where exposed compositions go, the composition scope's
/// Kubernetes objects ([`Objects`]) or the pod scope's proxy ([`Proxy`]); everything else (the
/// queue, the plan, the timing rules, the status) is the same in both.
pub struct Reconciler<O> {
    docker: DockerClient,
    output: O,
    settings: PlanSettings,
    owner: OwnerPod,
    timings: Timings,
    status: Arc<Status>,
    compositions: HashMap<CompositionKey, CompositionRecord>,
    queue: DelayQueue<CompositionKey>,
    resync_due: Option<Instant>,
    resync_retry: Retry,
}

impl Reconciler<Objects> {
    /// The composition scope's reconciler: each composition's objects written to the cluster.
    pub fn new(
        docker: DockerClient,
        cluster: Cluster,
        settings: PlanSettings,
        owner: OwnerPod,
        timings: Timings,
        status: Arc<Status>,
    ) -> Self {
        // Every API request that comes back is progress for the liveness heartbeat: a pass of
        // many writes, or a listing of many pages, against a slow apiserver is alive as long as
        // its requests come back; only one request can stand between two beats, and
        // `--api-timeout` bounds it.
        let beat = status.clone();
        let cluster = cluster.with_progress(Arc::new(move || beat.heartbeat()));
        Self::with_output(
            docker,
            Objects::new(cluster),
            settings,
            owner,
            timings,
            status,
        )
    }
}

impl Reconciler<Proxy> {
    /// The pod scope's reconciler: each composition published to the pod's proxy; nothing is
    /// written to Kubernetes.
    pub fn for_proxy(
        docker: DockerClient,
        proxy: Proxy,
        settings: PlanSettings,
        owner: OwnerPod,
        timings: Timings,
        status: Arc<Status>,
    ) -> Self {
        Self::with_output(docker, proxy, settings, owner, timings, status)
    }
}

impl<O> Reconciler<O> {
    fn with_output(
        docker: DockerClient,
        output: O,
        settings: PlanSettings,
        owner: OwnerPod,
        timings: Timings,
        status: Arc<Status>,
    ) -> Self {
        Self {
            docker,
            output,
            settings,
            owner,
            timings,
            status,
            compositions: HashMap::new(),
            queue: DelayQueue::default(),
            resync_due: None,
            resync_retry: retry(),
        }
    }
}

impl Reconciler<Objects> {
    /// Runs until cancelled or until the hint channel closes.
    pub async fn run(self, hints: UnboundedReceiver<Hint>, cancel: CancellationToken) {
        self.run_loop(hints, cancel).await;
    }
}

impl Reconciler<Proxy> {
    /// Runs until cancelled or until the hint channel closes.
    pub async fn run(self, hints: UnboundedReceiver<Hint>, cancel: CancellationToken) {
        self.run_loop(hints, cancel).await;
    }
}

// The bound is the seam between the two scopes' outputs, private to the reconciler: nothing
// outside it names the trait (each scope's `run` is public, the loop is not).
#[allow(private_bounds)]
impl<O> Reconciler<O>
where
    Self: Output,
{
    async fn run_loop(mut self, mut hints: UnboundedReceiver<Hint>, cancel: CancellationToken) {
        loop {
            self.status.heartbeat();
            let next_due = self.queue.next_due();
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
                // A pass stops at once on SIGTERM, in the middle of a request if need be: the
                // shutdown has a deadline (--shutdown-timeout) and the clean-up at exit should get
                // it, not the rest of a long resync. Level-triggered, nothing is lost: a request
                // cut short is redone by the next start's resync, or its object goes with the pod.
                _ = tokio::time::sleep_until(self.resync_due.unwrap_or(far)), if self.resync_due.is_some() => {
                    tokio::select! {
                        _ = self.full_resync() => {}
                        _ = cancel.cancelled() => break,
                    }
                }
                _ = tokio::time::sleep_until(next_due.unwrap_or(far)), if next_due.is_some() => {
                    tokio::select! {
                        _ = self.process_due(&mut hints) => {}
                        _ = cancel.cancelled() => break,
                    }
                }
            }
        }
    }

    fn on_hint(&mut self, hint: Hint) {
        let health = matches!(hint, Hint::Health(_));
        match hint {
            Hint::Composition(key) | Hint::Health(key) => {
                let state = self.compositions.get(&key);
                let expecting = state.is_some_and(|s| s.lifecycle.expecting_start);
                let exposed = state.is_some_and(|s| !s.urls.is_empty());
                let hint = lifecycle::HintContext {
                    expecting_start: expecting,
                    health_of_exposed: health && exposed,
                    last_pass: state.and_then(|s| s.lifecycle.last_pass),
                };
                let due = lifecycle::hint_due(&self.timings, hint, Instant::now());
                self.queue.schedule(key, due);
            }
            Hint::Resync => {
                self.status.set_docker_connected(true);
                self.resync_due = Some(Instant::now());
            }
            Hint::HostReleased(host) => {
                // A composition refused for that host is retried now, not at the next resync.
                self.retry_refused("a host it was refused may be free", |p| {
                    matches!(p, Problem::HostTaken { host: taken, .. }
                        if host.as_deref().is_none_or(|h| h == taken))
                });
            }
            Hint::DockerDown => {
                if self.status.docker_connected() {
                    self.status.metrics.docker_reconnect();
                }
                self.status.set_docker_connected(false);
            }
        }
    }

    /// The operator's maximum exposure (`--max-exposure`) and the labels' (`compose-ingress.ttl`):
    /// a composition whose exposure time is over has nothing to expose any more, and says why
    /// (a composition refusal: logged and posted once, kept across passes); its message, for
    /// `/exposures`, is returned. Before its end, a pass is due at the end: the queue drops a
    /// key's deadline when it is popped, so every pass schedules it again. Computed from
    /// Docker's creation times at every pass, so neither a resync nor a restart of the sidecar
    /// exposes it again.
    fn expire(&mut self, key: &str, plan: &mut crate::model::Plan) -> Option<String> {
        let at = plan.expires_at?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        if now < at {
            let left = Duration::from_secs(u64::try_from(at - now).unwrap_or(0));
            self.queue.schedule(key.to_string(), Instant::now() + left);
            return None;
        }
        plan.desired.take()?;
        let message = format!(
            "composition {key}'s exposure time ended at unix time {at} (--max-exposure, or a \
             shorter compose-ingress.ttl): its routes are removed and stay removed, its \
             containers are not touched; recreate its containers for a new exposure"
        );
        plan.refusals
            .push(Refusal::composition(Reason::Expired, message.clone()));
        Some(message)
    }

    /// This pod gave up a host (a Lease deleted, a composition gone from the proxy): the
    /// compositions refused for the pod's host cap may fit now, so they are retried at once
    /// rather than at the next full resync (refused again, they are logged only if the reason
    /// changed).
    fn room_for_hosts(&mut self) {
        self.retry_refused("the pod gave up a host, refused for the host cap", |p| {
            matches!(
                p,
                Problem::Composition {
                    reason: Reason::TooManyHosts,
                    ..
                }
            )
        });
    }

    /// Schedules now every composition with a problem that `refused` picks.
    fn retry_refused(&mut self, why: &str, refused: impl Fn(&Problem) -> bool) {
        let now = Instant::now();
        let waiting: Vec<CompositionKey> = self
            .compositions
            .iter()
            .filter(|(_, state)| state.problems.iter().any(&refused))
            .map(|(key, _)| key.clone())
            .collect();
        for key in waiting {
            debug!(composition = %key, "{why}: retrying");
            self.queue.schedule(key, now);
        }
    }

    /// Reconciles every due composition; a burst (a hundred jobs starting at once) can make
    /// this a long pass, so each composition and each request in it is progress for the
    /// heartbeat.
    async fn process_due(&mut self, hints: &mut UnboundedReceiver<Hint>) {
        loop {
            // Hints that came during the last composition's pass are queued before the next one
            // is picked: a composition that a Docker event made due goes before the deletes of
            // a batch of graces that ended together (background keys, see `DelayQueue`).
            while let Ok(hint) = hints.try_recv() {
                self.on_hint(hint);
            }
            let Some(key) = self.queue.pop_next_due(Instant::now()) else {
                break;
            };
            let span = info_span!("reconcile", composition = %key);
            let observed = self.docker.composition(&key).instrument(span.clone()).await;
            self.status.heartbeat();
            match observed {
                Ok(observed) => {
                    self.reconcile_composition(&key, &observed)
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

    /// Lists everything in Docker and every owned object, converges each composition and GCs the
    /// orphans. GC runs only from a complete, successful listing of the Docker daemon.
    async fn full_resync(&mut self) {
        self.resync_due = None;
        let started = Instant::now();
        let snapshot = self.docker.snapshot().await;
        self.status.heartbeat();
        let snapshot = match snapshot {
            Ok(s) => s,
            Err(e) => {
                return self.resync_failed(format!("Docker listing failed, no GC this time: {e}"));
            }
        };
        self.resync_from(snapshot, started).await;
    }

    /// The rest of a full resync, from a complete Docker listing taken at `started`: a seam so
    /// that tests can drive the cluster side against a mock API without a Docker daemon.
    pub(crate) async fn resync_from(
        &mut self,
        mut snapshot: BTreeMap<CompositionKey, ObservedComposition>,
        started: Instant,
    ) {
        let projects = snapshot.len();
        let held = match self.list_output().await {
            Ok(keys) => keys,
            Err(e) => return self.resync_failed(format!("listing this pod's objects failed: {e}")),
        };
        self.resync_retry.reset();
        let mut keys: BTreeSet<CompositionKey> = snapshot.keys().cloned().collect();
        keys.extend(held);
        keys.extend(self.compositions.keys().cloned());
        let empty = ObservedComposition::default();
        for key in keys {
            self.queue.remove(&key);
            // Taken out, not cloned: a full resync holds one copy of the listing, shrinking.
            let observed = snapshot
                .remove(&key)
                .unwrap_or_else(|| ObservedComposition {
                    name: key.clone(),
                    ..empty.clone()
                });
            self.reconcile_composition(&key, &observed)
                .instrument(info_span!("reconcile", composition = %key))
                .await;
        }
        self.resync_due = Some(Instant::now() + self.timings.resync_interval);
        self.status.resync_done();
        self.listing_complete();
        info!(
            projects,
            owned_objects = self.owned_count(),
            took_ms = started.elapsed().as_millis() as u64,
            "full resync done"
        );
    }

    fn resync_failed(&mut self, why: String) {
        let delay = self.resync_retry.next_delay();
        warn!(
            retry_in_ms = delay.as_millis() as u64,
            "full resync incomplete: {why}"
        );
        self.resync_due = Some(Instant::now() + delay);
    }

    fn schedule_retry(&mut self, key: &str) {
        let state = self.compositions.entry(key.to_string()).or_default();
        let delay = state.retry.next_delay();
        self.queue.schedule(key.to_string(), Instant::now() + delay);
    }

    async fn reconcile_composition(&mut self, key: &str, observed: &ObservedComposition) {
        let started = std::time::Instant::now();
        let result = self.converge(key, observed).await;
        // One composition done, whatever the result: progress (see `Status::heartbeat`).
        self.status.heartbeat();
        let state = self.compositions.entry(key.to_string()).or_default();
        match result {
            Ok(outcome) => {
                self.status.metrics.reconcile(outcome.metric_label());
                state.retry.reset();
                state.last_error = None;
                debug!(
                    ?outcome,
                    took_us = started.elapsed().as_micros() as u64,
                    "reconciled"
                );
                if state
                    .lifecycle
                    .forgettable(&outcome, !state.problems.is_empty())
                {
                    self.compositions.remove(key);
                }
            }
            Err(e) => {
                self.status.metrics.reconcile("error");
                let message = e.to_string();
                let delay = state.retry.next_delay();
                if state.last_error.as_deref() != Some(message.as_str()) {
                    warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "reconcile failed; will retry");
                } else {
                    debug!(error = %message, retry_in_ms = delay.as_millis() as u64, "reconcile failed again");
                }
                state.last_error = Some(message);
                self.queue.schedule(key.to_string(), Instant::now() + delay);
            }
        }
    }

    async fn converge(
        &mut self,
        key: &str,
        observed: &ObservedComposition,
    ) -> Result<Outcome, ClusterError> {
        let mut plan = plan(observed, &self.settings);
        let expired = self.expire(key, &mut plan);
        let now = Instant::now();
        let shape = PlanShape {
            exposable: plan.desired.is_some(),
            awaiting_start: !plan.awaiting_start.is_empty(),
        };
        let lifecycle = &mut self
            .compositions
            .entry(key.to_string())
            .or_default()
            .lifecycle;
        lifecycle.last_pass = Some(now);
        let settle = lifecycle.settle(shape, self.timings.settle_time, now);
        if let Settle::Wait { until } = settle {
            debug!(
                awaiting = ?plan.awaiting_start,
                wait_ms = until.saturating_duration_since(now).as_millis() as u64,
                "services created and not started yet; waiting for them"
            );
            // A start event re-queues the composition earlier; this is the deadline if none comes.
            self.queue.schedule(key.to_string(), until);
            return Ok(Outcome::Waiting);
        }
        if let Some(at) = lifecycle.start_recheck(shape.awaiting_start, now) {
            debug!(
                awaiting = ?plan.awaiting_start,
                recheck_in_ms = at.saturating_duration_since(now).as_millis() as u64,
                "services created and not started yet; looking again then if no start event comes"
            );
            self.queue.schedule(key.to_string(), at);
        }
        let mut problems = self.label_problems(key, &plan.refusals);
        let desired = match plan.desired {
            Some(d) => self.claim_hosts(key, d, &mut problems).await?,
            None => None,
        };
        self.compositions
            .entry(key.to_string())
            .or_default()
            .problems = problems;
        let has_objects = self.has_output(key);
        let exposure = self
            .compositions
            .entry(key.to_string())
            .or_default()
            .lifecycle
            .exposure(
                desired,
                has_objects,
                // An expired composition's routes go now: the grace is for restarts.
                if expired.is_some() {
                    Duration::ZERO
                } else {
                    self.timings.delete_grace
                },
                Instant::now(),
            );
        let outcome = match exposure {
            Exposure::Expose(d) => {
                let refused = report::refused_reasons(&plan.refusals, self.compositions.get(key));
                return self.expose(key, d, refused).await;
            }
            Exposure::Nothing => {
                self.status.remove_composition(key);
                Outcome::Nothing
            }
            Exposure::StartGrace { until } => {
                self.start_grace(key).await?;
                self.queue.schedule_background(key.to_string(), until);
                self.status
                    .set_composition(key, CompositionState::PendingDeletion);
                Outcome::GracePending
            }
            Exposure::HoldGrace { until } => {
                // What a failed pass left behind (or an older sidecar's) goes too.
                self.withdraw(key).await?;
                self.queue.schedule_background(key.to_string(), until);
                Outcome::GracePending
            }
            Exposure::Delete => {
                self.delete_composition(key).await?;
                Outcome::Deleted
            }
        };
        if matches!(outcome, Outcome::Nothing | Outcome::Deleted) {
            let reasons = report::refused_reasons(&plan.refusals, self.compositions.get(key));
            if !reasons.is_empty() {
                self.status
                    .set_composition(key, CompositionState::Refused { reasons });
            }
        }
        if let Some(message) = expired {
            self.status
                .set_composition(key, CompositionState::Expired { message });
        }
        Ok(outcome)
    }
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

#[cfg(test)]
mod tests;
