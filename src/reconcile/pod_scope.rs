//! The pod scope's output: each composition published to the pod's proxy (src/proxy/), which
//! routes it from the next request on. Nothing is written to Kubernetes: hosts are claimed
//! inside the pod (every host ends in the pod's own label, so no other pod can hold one), the
//! delete grace keeps a stopped composition's hosts (answered 503, never dialled), and a host
//! given up is retried at once by the compositions that were refused it.

use std::collections::BTreeSet;

use tracing::info;

use super::output::Output;
use super::report::Done;
use super::{LOG_TARGET, Outcome, Problem, Proxy, Reconciler};
use crate::cluster::ClusterError;
use crate::docker::{CompositionKey, Hint};
use crate::model::{DesiredComposition, Refusal};
use crate::render;

impl Output for Reconciler<Proxy> {
    async fn list_output(&mut self) -> Result<BTreeSet<CompositionKey>, ClusterError> {
        Ok(self.output.registry.compositions())
    }

    fn has_output(&self, key: &str) -> bool {
        self.output.registry.has(key)
    }

    fn owned_count(&self) -> usize {
        0
    }

    fn listing_complete(&mut self) {
        self.output.registry.listing_complete();
    }

    /// A host is the composition's unless another composition of the pod serves or keeps it;
    /// the pod's cap counts every composition's hosts.
    async fn claim_hosts(
        &mut self,
        key: &str,
        mut d: DesiredComposition,
        problems: &mut BTreeSet<Problem>,
    ) -> Result<Option<DesiredComposition>, ClusterError> {
        let others = self.output.registry.host_count_without(key);
        let Some(hosts) = self.hosts_within_cap(key, &d, others, problems) else {
            return Ok(None);
        };
        let mut refused = BTreeSet::new();
        for host in hosts {
            let Some(holder) = self.output.registry.holder_of(&host, key) else {
                continue;
            };
            let holder = holder.to_string();
            problems.insert(self.host_refused(key, &d, &host, &self.owner.name, &holder));
            refused.insert(host);
        }
        d.backends.retain(|b| !refused.contains(&b.host));
        Ok((!d.backends.is_empty()).then_some(d))
    }

    async fn expose(
        &mut self,
        key: &str,
        d: DesiredComposition,
        refused: Vec<Refusal>,
    ) -> Result<Outcome, ClusterError> {
        let published = self.output.registry.expose(key, &d);
        let done = Done {
            objects: 0,
            urls: render::urls_of(&d, &self.settings),
            not_routed: render::not_routed(&d),
            backends: d.backends,
            refused,
        };
        Ok(self.report(key, done, published))
    }

    async fn start_grace(&mut self, key: &str) -> Result<(), ClusterError> {
        self.output.registry.withdraw(key);
        info!(
            target: LOG_TARGET,
            grace_ms = self.timings.delete_grace.as_millis() as u64,
            "composition no longer exposed: the proxy answers its hosts 503 now, and gives them up after the grace"
        );
        Ok(())
    }

    async fn withdraw(&mut self, key: &str) -> Result<(), ClusterError> {
        self.output.registry.withdraw(key);
        Ok(())
    }

    async fn delete_composition(&mut self, key: &str) -> Result<(), ClusterError> {
        let hosts = self.output.registry.hosts_of(key);
        self.output.registry.remove(key);
        self.unexposed(key, 0);
        // A composition of this pod that was refused one of these hosts gets it now, as a Lease
        // deleted by another pod does in composition scope.
        let freed = !hosts.is_empty();
        for host in hosts {
            self.on_hint(Hint::HostReleased(Some(host)));
        }
        if freed {
            self.room_for_hosts();
        }
        Ok(())
    }
}
