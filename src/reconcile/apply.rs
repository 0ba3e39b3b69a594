//! The apply step of a pass: host claims (Leases), server-side applies and deletes of the
//! composition's rendered objects (src/render/), and then the report of what they
//! did (log lines, Events, the composition's status); every request is counted in the metrics.

use std::collections::BTreeSet;

use tracing::info;
use tracing::warn;

use super::{CompositionRecord, LOG_TARGET, Outcome, Problem, Reconciler};
use crate::cluster::{Claim, ClusterError, OwnedObject, Upserted};
use crate::model::{Backend, DesiredComposition, Reason, Refusal};
use crate::objects::{DesiredObject, Kind};
use crate::render::{self, Rendered};
use crate::status::{CompositionState, Metrics};

impl Reconciler {
    fn owned_of(&self, composition: &str) -> Vec<OwnedObject> {
        self.owned
            .values()
            .filter(|o| o.composition == composition)
            .cloned()
            .collect()
    }

    /// The plan's refusals (of a label, or of the whole composition) as problems; a new one is
    /// logged, counted and posted once.
    pub(super) fn label_problems(&self, key: &str, refusals: &[Refusal]) -> BTreeSet<Problem> {
        let mut problems = BTreeSet::new();
        for r in refusals {
            let problem = if r.label.is_empty() {
                Problem::Composition {
                    reason: r.reason,
                    message: r.message.clone(),
                }
            } else {
                Problem::Label {
                    container: r.container.clone(),
                    label: r.label.clone(),
                    message: r.message.clone(),
                }
            };
            if self.is_new(key, &problem) {
                if r.label.is_empty() {
                    warn!(target: LOG_TARGET, reason = r.reason.as_str(), "composition refused: {}", r.message);
                } else {
                    warn!(target: LOG_TARGET, container = %r.container, service = %r.service, label = %r.label, value = %r.value, reason = r.reason.as_str(), "label refused: {}", r.message);
                }
                self.status.metrics.refused(r.reason);
                self.status.event_refused(key, r);
            }
            problems.insert(problem);
        }
        problems
    }

    /// Claims every host of the composition with a Lease; backends whose host another pod (or
    /// another composition) holds are dropped with one warning.
    pub(super) async fn claim_hosts(
        &mut self,
        key: &str,
        mut d: DesiredComposition,
        problems: &mut BTreeSet<Problem>,
    ) -> Result<Option<DesiredComposition>, ClusterError> {
        let hosts: BTreeSet<String> = d.backends.iter().map(|b| b.host.clone()).collect();
        // The pod's cap on hosts, over every composition: the others' claimed hosts (their
        // Leases) plus this one's. Checked before any claim, so that nothing is half-claimed.
        let others = self
            .owned
            .values()
            .filter(|o| o.kind == Kind::Lease && o.composition != key)
            .filter_map(|o| o.host.as_deref())
            .collect::<BTreeSet<_>>()
            .len();
        let cap = self.settings.max_hosts_per_pod;
        if others + hosts.len() > cap {
            let refusal = Refusal::composition(
                Reason::TooManyHosts,
                format!(
                    "composition {key} would expose {} hosts while the pod already exposes \
                     {others}, over the operator's limit of {cap} per pod (--max-hosts-per-pod): \
                     nothing of it is exposed; it is retried when it changes and at every \
                     full resync",
                    hosts.len()
                ),
            );
            problems.extend(self.label_problems(key, std::slice::from_ref(&refusal)));
            return Ok(None);
        }
        let mut refused: BTreeSet<String> = BTreeSet::new();
        for host in hosts {
            let lease = DesiredObject::new(
                Kind::Lease,
                &render::host_lease(&host, &d.name, &self.owner, &self.settings),
            )?;
            let id = (Kind::Lease, lease.name().to_string());
            if self.owned.get(&id).is_some_and(|o| o.composition == key) {
                continue;
            }
            let claim = measured(
                &self.status.metrics,
                "create",
                Kind::Lease,
                self.cluster.claim(&lease),
                |claim| match claim {
                    Ok(Claim::Ours { .. }) => "ok",
                    Ok(Claim::Taken { .. }) => "conflict",
                    Err(_) => "error",
                },
            )
            .await;
            match claim? {
                Claim::Ours { uid } => {
                    self.owned
                        .insert(id.clone(), owned_record(&lease, key, uid, Some(host)));
                }
                Claim::Taken {
                    holder_pod,
                    holder_composition,
                } => {
                    let problem = Problem::HostTaken {
                        host: host.clone(),
                        holder_pod: holder_pod.clone(),
                        holder_composition: holder_composition.clone(),
                    };
                    if self.is_new(key, &problem) {
                        let services: Vec<&str> = d
                            .backends
                            .iter()
                            .filter(|b| b.host == host)
                            .map(|b| b.service.as_str())
                            .collect();
                        warn!(
                            target: LOG_TARGET,
                            host = %host, services = ?services, holder_pod = %holder_pod, holder_composition = %holder_composition,
                            reason = Reason::HostTaken.as_str(),
                            "host refused: it is already claimed by pod {holder_pod} (composition {holder_composition}); choose another compose-ingress.host"
                        );
                        self.status.metrics.refused(Reason::HostTaken);
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

    /// Whether `problem` was not already there at the composition's last pass (then it is logged).
    fn is_new(&self, key: &str, problem: &Problem) -> bool {
        !self
            .compositions
            .get(key)
            .is_some_and(|s| s.problems.contains(problem))
    }

    /// Writes a rendered composition: every object whose spec changed since our last write (zero
    /// writes when none did), then deletes the composition's objects that the plan no longer
    /// wants. Returns whether anything was written.
    pub(super) async fn write(
        &mut self,
        key: &str,
        rendered: &Rendered,
    ) -> Result<bool, ClusterError> {
        let mut wrote = false;
        // Two waves: what a route points at (the Service, a Middleware), then the EndpointSlices
        // and the routes together. A route never points at an object that does not exist yet,
        // and slices and routes, which do not point at each other, do not wait for one another:
        // one request less between a container's start and a routable URL.
        for wave in [Wave::Referenced, Wave::Referring] {
            let mut todo: Vec<(&DesiredObject, Option<OwnedObject>)> = Vec::new();
            for obj in rendered.objects.iter().filter(|o| wave_of(o.kind) == wave) {
                let known = self.owned.get(&(obj.kind, obj.name().to_string())).cloned();
                // Unchanged: zero writes. An object an older sidecar created is written once
                // more, after its fields are handed to the apply entry, so that fields it no
                // longer wants go.
                if known.as_ref().is_some_and(|o| {
                    o.spec_hash.as_deref() == obj.spec_hash()
                        && !o.leftovers
                        && !o.legacy_selector
                        && !o.edited
                }) {
                    continue;
                }
                if let Some(o) = known.as_ref().filter(|o| o.edited) {
                    info!(target: LOG_TARGET, kind = %o.kind, name = %o.name, "an owned object was edited by someone else: setting it back to what the composition wants");
                }
                // A Service an older sidecar gave a selector: made again (see `legacy_selector`).
                let known = match known {
                    Some(o) if o.legacy_selector => {
                        info!(target: LOG_TARGET, service = %o.name, "a Service with a selector (from before health-gated routing) is created again without one");
                        self.delete_owned(&o).await?;
                        None
                    }
                    known => known,
                };
                todo.push((obj, known));
            }
            wrote |= self.write_together(key, todo).await?;
        }
        // Objects of this composition that the plan no longer wants (a host dropped, a route of
        // the other API, a lease of a host given up): routes first, leases last.
        let wanted: BTreeSet<(Kind, &str)> = rendered
            .objects
            .iter()
            .map(|o| (o.kind, o.name()))
            .collect();
        let mut stale: Vec<OwnedObject> = self
            .owned_of(key)
            .into_iter()
            .filter(|o| match o.kind {
                Kind::Lease => !o.host.as_ref().is_some_and(|h| rendered.hosts.contains(h)),
                _ => !wanted.contains(&(o.kind, o.name.as_str())),
            })
            .collect();
        stale.sort_by_key(|o| std::cmp::Reverse(o.kind));
        for o in stale {
            self.delete_owned(&o).await?;
            wrote = true;
        }
        Ok(wrote)
    }

    /// Writes `todo` (each object with what we know of it live) concurrently and records what
    /// was written, even when another write failed; returns whether anything was written, or
    /// the first error.
    async fn write_together(
        &mut self,
        key: &str,
        todo: Vec<(&DesiredObject, Option<OwnedObject>)>,
    ) -> Result<bool, ClusterError> {
        let results = futures::future::join_all(todo.iter().map(|(obj, known)| {
            let verb = if known.is_some() { "apply" } else { "create" };
            measured(
                &self.status.metrics,
                verb,
                obj.kind,
                self.cluster.upsert(obj, known.as_ref()),
                ok_or_error,
            )
        }))
        .await;
        let mut wrote = false;
        let mut failed = None;
        for ((obj, _), result) in todo.into_iter().zip(results) {
            match result {
                Ok(upserted) => {
                    let mut record = owned_record(obj, key, upserted.uid().to_string(), None);
                    record.needs_hand_over = matches!(upserted, Upserted::Created(_));
                    self.owned
                        .insert((obj.kind, obj.name().to_string()), record);
                    wrote = true;
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(wrote),
        }
    }

    /// Tells what a pass of an exposed composition did, after its writes: one log line and one
    /// Event when its URLs change, one log line when its routed services change, and its
    /// `/exposures` state.
    pub(super) fn report(
        &mut self,
        key: &str,
        rendered: Rendered,
        backends: Vec<Backend>,
        refused: Vec<Refusal>,
        wrote: bool,
    ) -> Outcome {
        let Rendered {
            objects,
            urls,
            not_routed,
            ..
        } = rendered;
        let state = self.compositions.entry(key.to_string()).or_default();
        let changed = state.urls != urls;
        if changed {
            info!(target: LOG_TARGET, urls = ?urls, objects = objects.len(), "composition exposed");
            self.status.event_exposed(key, &urls);
            state.urls = urls.clone();
        }
        if state.unhealthy != not_routed {
            let names: Vec<String> = not_routed
                .iter()
                .map(|(service, health)| format!("{service} ({health})"))
                .collect();
            info!(target: LOG_TARGET, not_routed = ?names, "routed services changed: a container's healthcheck does not pass, or passes again");
            state.unhealthy = not_routed;
        }
        self.status.set_composition(
            key,
            CompositionState::Exposed {
                urls,
                backends,
                refused,
            },
        );
        if wrote || changed {
            Outcome::Exposed
        } else {
            Outcome::Unchanged
        }
    }

    /// Deletes every object of a composition whose grace is over: routes first, leases last.
    pub(super) async fn delete_composition(&mut self, key: &str) -> Result<(), ClusterError> {
        let mut objects = self.owned_of(key);
        objects.sort_by_key(|o| std::cmp::Reverse(o.kind));
        for o in &objects {
            self.delete_owned(o).await?;
        }
        let state = self.compositions.entry(key.to_string()).or_default();
        state.lifecycle.deleted();
        state.urls.clear();
        info!(
            target: LOG_TARGET,
            objects = objects.len(),
            "composition unexposed: objects deleted"
        );
        self.status.event_deleted(key, objects.len());
        self.status.remove_composition(key);
        Ok(())
    }

    /// Deletes the composition's EndpointSlices as its delete grace starts, and returns how many.
    /// Its containers are gone, so their host ports are free for the next job's container: with
    /// fixed ports it would be served under this composition's URL for the whole grace. The
    /// Service, the routes and the Leases stay, so the URL stays claimed (the controller answers
    /// it with no endpoints), and a comeback within the grace writes the slices again.
    pub(super) async fn withdraw_endpoints(&mut self, key: &str) -> Result<usize, ClusterError> {
        let slices: Vec<OwnedObject> = self
            .owned_of(key)
            .into_iter()
            .filter(|o| o.kind == Kind::EndpointSlice)
            .collect();
        for slice in &slices {
            self.delete_owned(slice).await?;
        }
        Ok(slices.len())
    }

    async fn delete_owned(&mut self, o: &OwnedObject) -> Result<(), ClusterError> {
        measured(
            &self.status.metrics,
            "delete",
            o.kind,
            self.cluster.delete(o.kind, &o.name, &o.uid),
            ok_or_error,
        )
        .await?;
        self.owned.remove(&(o.kind, o.name.clone()));
        Ok(())
    }
}

/// The write waves of a composition's objects, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wave {
    /// What routes point at.
    Referenced,
    /// The routes, and the EndpointSlices (which point at the Service, by label).
    Referring,
}

fn wave_of(kind: Kind) -> Wave {
    match kind {
        Kind::Lease | Kind::Service | Kind::Middleware => Wave::Referenced,
        Kind::EndpointSlice | Kind::Ingress | Kind::HttpRoute | Kind::GrpcRoute => Wave::Referring,
    }
}

fn owned_record(
    obj: &DesiredObject,
    composition: &str,
    uid: String,
    host: Option<String>,
) -> OwnedObject {
    OwnedObject {
        kind: obj.kind,
        name: obj.name().to_string(),
        uid,
        composition: composition.to_string(),
        spec_hash: obj.spec_hash().map(str::to_string),
        host,
        needs_hand_over: false,
        leftovers: false,
        legacy_selector: false,
        edited: false,
    }
}

/// What of a composition is refused: the plan's label refusals, and the hosts that other pods
/// (or compositions) hold.
pub(super) fn refused_reasons(
    refusals: &[Refusal],
    state: Option<&CompositionRecord>,
) -> Vec<Refusal> {
    let mut reasons = refusals.to_vec();
    for problem in state.into_iter().flat_map(|s| s.problems.iter()) {
        match problem {
            Problem::HostTaken {
                host,
                holder_pod,
                holder_composition,
            } => reasons.push(Refusal::host_taken(host, holder_pod, holder_composition)),
            // Found by the reconciler, not the plan (the pod's host cap): not among `refusals`.
            Problem::Composition { reason, message }
                if !refusals
                    .iter()
                    .any(|r| r.reason == *reason && r.message == *message) =>
            {
                reasons.push(Refusal::composition(*reason, message.clone()))
            }
            _ => {}
        }
    }
    reasons
}

/// Runs one API request and counts it by verb, kind and result (`result_of` names the outcome),
/// with its duration: one place for what every write reports.
async fn measured<T, E>(
    metrics: &Metrics,
    verb: &str,
    kind: Kind,
    request: impl Future<Output = Result<T, E>>,
    result_of: fn(&Result<T, E>) -> &'static str,
) -> Result<T, E> {
    let timer = std::time::Instant::now();
    let result = request.await;
    metrics.api_request(verb, kind, result_of(&result), timer.elapsed());
    result
}

/// The `result` label of an API request metric.
fn ok_or_error<T, E>(result: &Result<T, E>) -> &'static str {
    if result.is_ok() { "ok" } else { "error" }
}
