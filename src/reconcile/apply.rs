//! The composition scope's output: each composition's objects in the cluster. Host claims
//! (Leases), the server-side applies of the rendered objects (src/render/) in their waves,
//! withdrawn endpoints during the delete grace, and deletes; every request is counted in the
//! metrics.

use std::collections::BTreeSet;

use tokio::time::Instant;
use tracing::info;

use super::output::Output;
use super::report::Done;
use super::{LOG_TARGET, Objects, Outcome, Problem, Reconciler};
use crate::cluster::{Claim, ClusterError, OwnedObject, Upserted};
use crate::docker::CompositionKey;
use crate::model::{DesiredComposition, Refusal};
use crate::objects::{DesiredObject, Kind};
use crate::render::{self, Rendered};
use crate::status::Metrics;

impl Output for Reconciler<Objects> {
    async fn list_output(&mut self) -> Result<BTreeSet<CompositionKey>, ClusterError> {
        let owned = self.output.cluster.list_owned().await?;
        self.output.owned = owned
            .into_iter()
            .map(|o| ((o.kind, o.name.clone()), o))
            .collect();
        Ok(self
            .output
            .owned
            .values()
            .map(|o| o.composition.clone())
            .collect())
    }

    fn has_output(&self, key: &str) -> bool {
        self.output.owned.values().any(|o| o.composition == key)
    }

    fn owned_count(&self) -> usize {
        self.output.owned.len()
    }

    fn listing_complete(&mut self) {}

    async fn claim_hosts(
        &mut self,
        key: &str,
        d: DesiredComposition,
        problems: &mut BTreeSet<Problem>,
    ) -> Result<Option<DesiredComposition>, ClusterError> {
        self.claim_with_leases(key, d, problems).await
    }

    /// Rendered once; written; then reported.
    async fn expose(
        &mut self,
        key: &str,
        d: DesiredComposition,
        refused: Vec<Refusal>,
    ) -> Result<Outcome, ClusterError> {
        let rendered = render::composition(&d, &self.settings, &self.owner)?;
        let wrote = self.write(key, &rendered).await?;
        let Rendered {
            objects,
            urls,
            not_routed,
            ..
        } = rendered;
        let done = Done {
            objects: objects.len(),
            urls,
            not_routed,
            backends: d.backends,
            refused,
        };
        Ok(self.report(key, done, wrote))
    }

    async fn start_grace(&mut self, key: &str) -> Result<(), ClusterError> {
        let slices = self.withdraw_endpoints(key).await?;
        info!(
            grace_ms = self.timings.delete_grace.as_millis() as u64,
            endpoint_slices_deleted = slices,
            "composition no longer exposed: its endpoints are withdrawn now, its other objects deleted after the grace"
        );
        Ok(())
    }

    async fn withdraw(&mut self, key: &str) -> Result<(), ClusterError> {
        self.withdraw_endpoints(key).await.map(|_| ())
    }

    /// Deletes every object of a composition whose grace is over: routes first, leases last.
    async fn delete_composition(&mut self, key: &str) -> Result<(), ClusterError> {
        let mut objects = self.owned_of(key);
        objects.sort_by_key(|o| std::cmp::Reverse(o.kind));
        for o in &objects {
            self.delete_owned(o).await?;
        }
        self.unexposed(key, objects.len());
        Ok(())
    }
}

impl Reconciler<Objects> {
    fn owned_of(&self, composition: &str) -> Vec<OwnedObject> {
        self.output
            .owned
            .values()
            .filter(|o| o.composition == composition)
            .cloned()
            .collect()
    }

    /// Claims every host of the composition with a Lease; backends whose host another pod (or
    /// another composition) holds are dropped with one warning.
    async fn claim_with_leases(
        &mut self,
        key: &str,
        mut d: DesiredComposition,
        problems: &mut BTreeSet<Problem>,
    ) -> Result<Option<DesiredComposition>, ClusterError> {
        // The pod's cap on hosts, over every composition: the others' claimed hosts (their
        // Leases) plus this one's. Checked before any claim, so that nothing is half-claimed.
        let others = self
            .output
            .owned
            .values()
            .filter(|o| o.kind == Kind::Lease && o.composition != key)
            .filter_map(|o| o.host.as_deref())
            .collect::<BTreeSet<_>>()
            .len();
        let Some(hosts) = self.hosts_within_cap(key, &d, others, problems) else {
            return Ok(None);
        };
        let mut refused: BTreeSet<String> = BTreeSet::new();
        for host in hosts {
            let lease = DesiredObject::new(
                Kind::Lease,
                &render::host_lease(&host, &d.name, &self.owner, &self.settings),
            )?;
            let id = (Kind::Lease, lease.name().to_string());
            if self
                .output
                .owned
                .get(&id)
                .is_some_and(|o| o.composition == key)
            {
                // Served again within its grace: the host is kept, no grace runs for it.
                self.output.lease_grace.remove(lease.name());
                continue;
            }
            let claim = measured(
                &self.status.metrics,
                "create",
                Kind::Lease,
                self.output.cluster.claim(&lease),
                |claim| match claim {
                    Ok(Claim::Ours { .. }) => "ok",
                    Ok(Claim::Taken { .. }) => "conflict",
                    Err(_) => "error",
                },
            )
            .await;
            match claim? {
                Claim::Ours { uid } => {
                    self.output
                        .owned
                        .insert(id.clone(), owned_record(&lease, key, uid, Some(host)));
                }
                Claim::Taken {
                    holder_pod,
                    holder_composition,
                } => {
                    problems.insert(self.host_refused(
                        key,
                        &d,
                        &host,
                        &holder_pod,
                        &holder_composition,
                    ));
                    refused.insert(host);
                }
            }
        }
        d.backends.retain(|b| !refused.contains(&b.host));
        Ok((!d.backends.is_empty()).then_some(d))
    }

    /// Writes a rendered composition: every object whose spec changed since our last write (zero
    /// writes when none did), then deletes the composition's objects that the plan no longer
    /// wants. Returns whether anything was written.
    async fn write(&mut self, key: &str, rendered: &Rendered) -> Result<bool, ClusterError> {
        let mut wrote = false;
        // Two waves: what a route points at (the Service, a Middleware), then the EndpointSlices
        // and the routes together. A route never points at an object that does not exist yet,
        // and slices and routes, which do not point at each other, do not wait for one another:
        // one request less between a container's start and a routable URL.
        for wave in [Wave::Referenced, Wave::Referring] {
            let mut todo: Vec<(&DesiredObject, Option<OwnedObject>)> = Vec::new();
            for obj in rendered.objects.iter().filter(|o| wave_of(o.kind) == wave) {
                let known = self
                    .output
                    .owned
                    .get(&(obj.kind, obj.name().to_string()))
                    .cloned();
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
        let now = Instant::now();
        for o in stale {
            // A host the composition stopped serving (one of its services stopped) stays its
            // own for the delete grace, as a whole composition's hosts do: a pod refused for
            // it gets it when the grace ends (the Lease delete wakes it), not while the
            // service restarts.
            if o.kind == Kind::Lease && !self.timings.delete_grace.is_zero() {
                let until = *self
                    .output
                    .lease_grace
                    .entry(o.name.clone())
                    .or_insert(now + self.timings.delete_grace);
                if now < until {
                    self.queue.schedule_background(key.to_string(), until);
                    continue;
                }
            }
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
                self.output.cluster.upsert(obj, known.as_ref()),
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
                    self.output
                        .owned
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

    /// Deletes the composition's EndpointSlices as its delete grace starts, and returns how many.
    /// Its containers are gone, so their host ports are free for the next job's container: with
    /// fixed ports it would be served under this composition's URL for the whole grace. The
    /// Service, the routes and the Leases stay, so the URL stays claimed (the controller answers
    /// it with no endpoints), and a comeback within the grace writes the slices again.
    async fn withdraw_endpoints(&mut self, key: &str) -> Result<usize, ClusterError> {
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
            self.output.cluster.delete(o.kind, &o.name, &o.uid),
            ok_or_error,
        )
        .await?;
        self.output.owned.remove(&(o.kind, o.name.clone()));
        if o.kind == Kind::Lease {
            self.output.lease_grace.remove(&o.name);
            self.room_for_hosts();
        }
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
