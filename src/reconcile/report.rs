//! What a pass tells, the same in both scopes: the plan's refusals and the hosts somebody else
//! holds as problems (logged, counted and posted once each), the pod's host cap, and the report
//! of an exposed composition (its log lines, Event and `/exposures` state).

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::{CompositionRecord, LOG_TARGET, Outcome, Problem, Reconciler};
use crate::model::{Backend, DesiredComposition, Reason, Refusal};
use crate::status::CompositionState;

/// What an exposed composition's pass did, for its report.
pub(super) struct Done {
    /// How many objects the composition has in the cluster (none in pod scope).
    pub(super) objects: usize,
    /// The URLs users get, sorted.
    pub(super) urls: Vec<String>,
    /// Exposed services whose healthcheck does not pass (not routed), with their health.
    pub(super) not_routed: BTreeSet<(String, &'static str)>,
    pub(super) backends: Vec<Backend>,
    pub(super) refused: Vec<Refusal>,
}

impl<O> Reconciler<O> {
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
            if self.is_new(key, &problem) && r.reason == Reason::Expired {
                info!(target: LOG_TARGET, reason = r.reason.as_str(), "composition expired: {}", r.message);
                self.status.metrics.refused(r.reason);
                self.status.event_expired(key, &r.message);
            } else if self.is_new(key, &problem) {
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

    /// Whether `problem` was not already there at the composition's last pass (then it is logged).
    fn is_new(&self, key: &str, problem: &Problem) -> bool {
        !self
            .compositions
            .get(key)
            .is_some_and(|s| s.problems.contains(problem))
    }

    /// A host of the composition is somebody else's: its problem (logged, counted and posted
    /// once).
    pub(super) fn host_refused(
        &self,
        key: &str,
        d: &DesiredComposition,
        host: &str,
        holder_pod: &str,
        holder_composition: &str,
    ) -> Problem {
        let problem = Problem::HostTaken {
            host: host.to_string(),
            holder_pod: holder_pod.to_string(),
            holder_composition: holder_composition.to_string(),
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
            self.status.event_host_taken(key, host, holder_pod);
        }
        problem
    }

    /// The composition's hosts, unless they would take the pod over its cap with the `others`
    /// its other compositions hold; then it is refused whole (nothing is half-claimed).
    pub(super) fn hosts_within_cap(
        &self,
        key: &str,
        d: &DesiredComposition,
        others: usize,
        problems: &mut BTreeSet<Problem>,
    ) -> Option<BTreeSet<String>> {
        let hosts: BTreeSet<String> = d.backends.iter().map(|b| b.host.clone()).collect();
        let cap = self.settings.max_hosts_per_pod;
        if others + hosts.len() <= cap {
            return Some(hosts);
        }
        let refusal = Refusal::composition(
            Reason::TooManyHosts,
            format!(
                "composition {key} would expose {} hosts while the pod already exposes \
                 {others}, over the operator's limit of {cap} per pod (--max-hosts-per-pod): \
                 nothing of it is exposed; it is retried when it changes, when the pod \
                 gives up a host, and at every full resync",
                hosts.len()
            ),
        );
        problems.extend(self.label_problems(key, std::slice::from_ref(&refusal)));
        None
    }

    /// The grace is over and everything of the composition is gone: forgotten, and said once.
    pub(super) fn unexposed(&mut self, key: &str, objects: usize) {
        let state = self.compositions.entry(key.to_string()).or_default();
        state.lifecycle.deleted();
        state.urls.clear();
        info!(
            target: LOG_TARGET,
            objects,
            "composition unexposed: objects deleted"
        );
        self.status.event_deleted(key, objects);
        self.status.remove_composition(key);
    }
    /// Tells what a pass of an exposed composition did, after its writes: one log line and one
    /// Event when its URLs change, one log line when its routed services change, and its
    /// `/exposures` state.
    pub(super) fn report(&mut self, key: &str, done: Done, wrote: bool) -> Outcome {
        let Done {
            objects,
            urls,
            not_routed,
            backends,
            refused,
        } = done;
        let state = self.compositions.entry(key.to_string()).or_default();
        let changed = state.urls != urls;
        if changed {
            info!(target: LOG_TARGET, urls = ?urls, objects, "composition exposed");
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
