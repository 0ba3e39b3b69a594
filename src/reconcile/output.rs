//! Where the reconciler puts what it plans: the one seam between the two route scopes. The
//! composition scope writes each composition's Kubernetes objects ([`Objects`], src/reconcile/
//! apply.rs); the pod scope publishes it to the pod's proxy ([`Proxy`], src/reconcile/
//! pod_scope.rs) and writes nothing. Both run the same queue, plan, timing rules and status.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use tokio::time::Instant;

use super::{Outcome, Problem};
use crate::cluster::{Cluster, ClusterError, OwnedObject};
use crate::docker::CompositionKey;
use crate::model::{DesiredComposition, Refusal};
use crate::objects::Kind;
use std::net::Ipv4Addr;

use crate::proxy::{Publisher, Registry};

/// The composition scope's output: this pod's objects in the cluster.
pub struct Objects {
    pub(super) cluster: Cluster,
    /// This pod's live objects, from the last listing plus our own writes since.
    pub(super) owned: BTreeMap<(Kind, String), OwnedObject>,
    /// Leases of hosts that an exposed composition no longer serves (one of its services
    /// stopped), by Lease name: each is kept until its own delete grace ends, so that the host
    /// stays the composition's while the service restarts.
    pub(super) lease_grace: BTreeMap<String, Instant>,
}

impl Objects {
    pub(super) fn new(cluster: Cluster) -> Self {
        Self {
            cluster,
            owned: BTreeMap::new(),
            lease_grace: BTreeMap::new(),
        }
    }
}

/// The pod scope's output: the proxy's registry of what it serves.
pub struct Proxy {
    pub(super) registry: Registry,
}

impl Proxy {
    /// The output that feeds the pod's proxy (`publisher`), dialling the published ports at
    /// `pod_ip` (loopback when it is not known).
    pub fn fed_by(publisher: Publisher, pod_ip: Option<Ipv4Addr>) -> Self {
        Self {
            registry: publisher.into_registry(pod_ip),
        }
    }
}

/// What a scope does at each step of a pass (implemented by `Reconciler<Objects>` and
/// `Reconciler<Proxy>`, which have the status and the compositions' records at hand).
pub(super) trait Output {
    /// The compositions the output holds anything of (a full resync visits them all, and the
    /// orphans among them are collected).
    fn list_output(
        &mut self,
    ) -> impl Future<Output = Result<BTreeSet<CompositionKey>, ClusterError>> + Send;

    /// Whether the output holds anything of `key` (then it has a delete grace to go through).
    fn has_output(&self, key: &str) -> bool;

    /// For the resync's log line: how many objects the output holds.
    fn owned_count(&self) -> usize;

    /// The first complete Docker listing has been reconciled.
    fn listing_complete(&mut self);

    /// Claims the composition's hosts; backends whose host is somebody else's are dropped (and
    /// their problem recorded).
    fn claim_hosts(
        &mut self,
        key: &str,
        d: DesiredComposition,
        problems: &mut BTreeSet<Problem>,
    ) -> impl Future<Output = Result<Option<DesiredComposition>, ClusterError>> + Send;

    /// Makes `d` what the output serves for `key`, and reports it.
    fn expose(
        &mut self,
        key: &str,
        d: DesiredComposition,
        refused: Vec<Refusal>,
    ) -> impl Future<Output = Result<Outcome, ClusterError>> + Send;

    /// The composition stopped exposing: nothing of it is served from now on, but its hosts
    /// stay its own for the delete grace. Logs the change.
    fn start_grace(&mut self, key: &str) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// As [`Output::start_grace`], again and silently (a pass during the grace).
    fn withdraw(&mut self, key: &str) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// The grace is over: everything of the composition goes, its hosts are free.
    fn delete_composition(
        &mut self,
        key: &str,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;
}
