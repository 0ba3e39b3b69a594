//! The pod scope's one Kubernetes write: this pod's route (src/render/pod_route.rs), put in
//! place when the sidecar starts and checked at every resync interval; an object that is as it
//! should be is not written (its spec hash), one edited by hand is set back. Every other object
//! of this pod (an earlier composition-scope sidecar's) is deleted. Nothing here runs when a
//! composition starts or stops.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::{Cluster, ClusterError};
use crate::model::{OwnerPod, PlanSettings};
use crate::objects::{DesiredObject, Kind};
use crate::render;
use crate::retry::Retry;
use crate::status::Status;

/// What one look at the pod route did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Converged {
    pub(crate) written: usize,
    pub(crate) deleted: usize,
}

/// Puts the pod's route in place and deletes the pod's other objects; writes nothing when all
/// is as it should be.
pub(crate) async fn converge(
    cluster: &Cluster,
    desired: &[DesiredObject],
    status: &Status,
) -> Result<Converged, ClusterError> {
    let owned = cluster.list_owned().await?;
    let mut done = Converged::default();
    for obj in desired {
        let known = owned
            .iter()
            .find(|o| o.kind == obj.kind && o.name == obj.name());
        let unchanged = known.is_some_and(|o| {
            o.spec_hash.as_deref() == obj.spec_hash() && !o.leftovers && !o.edited
        });
        if unchanged {
            continue;
        }
        let verb = if known.is_some() { "apply" } else { "create" };
        let started = std::time::Instant::now();
        let result = cluster.upsert(obj, known).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        status
            .metrics
            .api_request(verb, obj.kind, outcome, started.elapsed());
        result?;
        done.written += 1;
    }
    let wanted: BTreeSet<(Kind, &str)> = desired.iter().map(|o| (o.kind, o.name())).collect();
    let mut stale: Vec<_> = owned
        .iter()
        .filter(|o| !wanted.contains(&(o.kind, o.name.as_str())))
        .collect();
    // Routes first, Leases last, as a composition's objects go.
    stale.sort_by_key(|o| std::cmp::Reverse(o.kind));
    for o in stale {
        let started = std::time::Instant::now();
        let result = cluster.delete(o.kind, &o.name, &o.uid).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        status
            .metrics
            .api_request("delete", o.kind, outcome, started.elapsed());
        result?;
        done.deleted += 1;
    }
    Ok(done)
}

/// Keeps the pod's route until cancelled: at once, then every `interval` (a failed look is
/// retried with backoff). One log line when it writes or deletes, none when nothing changed.
pub async fn keep(
    cluster: Cluster,
    settings: PlanSettings,
    owner: OwnerPod,
    proxy_port: u16,
    interval: Duration,
    status: Arc<Status>,
    cancel: CancellationToken,
) {
    let desired = match render::pod_route(&settings, &owner, proxy_port) {
        Ok(objects) => objects,
        Err(e) => {
            // A bug, not input: the objects are made of validated flags only.
            warn!(error = %e, "cannot render this pod's route; the pod's URLs are not routed");
            return;
        }
    };
    let host = format!("*.{}", settings.domain);
    let mut retry = Retry::new(Duration::from_millis(500), Duration::from_secs(60));
    loop {
        let wait = match converge(&cluster, &desired, &status).await {
            Ok(Converged {
                written: 0,
                deleted: 0,
            }) => interval,
            Ok(done) => {
                info!(
                    host = %host,
                    written = done.written,
                    deleted = done.deleted,
                    "this pod's route is in place: every composition of the pod is routed through the proxy"
                );
                retry.reset();
                interval
            }
            Err(e) => {
                let delay = retry.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot put this pod's route in place; retrying");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
