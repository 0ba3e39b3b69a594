//! Watches the namespace's host Leases, every sidecar's (by the managed-by label), for deletions.
//! A deleted Lease is a host given up: its composition went away, or its pod did and the garbage
//! collector took the Lease. A composition refused because another pod (or composition) held that
//! host is then retried at once rather than at the next full resync.
//!
//! Metadata only, and a watch that the apiserver ends every `timeout` (below the client's read
//! timeout, so a quiet watch is not mistaken for a hung request). After any gap (a failed watch,
//! an expired resourceVersion) the reconciler is told that any host may have been released.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{ListParams, WatchEvent, WatchParams};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::api_reach::describe;
use crate::docker::Hint;
use crate::objects::{HOST_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::retry::Retry;

/// How long one watch request lasts at most: `api_timeout` less a margin, within what the
/// apiserver accepts.
pub fn watch_seconds(api_timeout: Duration) -> u32 {
    let secs = api_timeout.as_secs().saturating_sub(1).clamp(1, 290);
    u32::try_from(secs).unwrap_or(290)
}

/// Runs until cancelled; sends [`Hint::HostReleased`] for every host Lease deleted in the
/// namespace, and `HostReleased(None)` after a gap in which one may have been.
pub async fn run(
    client: kube::Client,
    namespace: String,
    hints: UnboundedSender<Hint>,
    watch_seconds: u32,
    cancel: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
    let mut retry = Retry::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut version: Option<String> = None;
    let mut last_problem: Option<String> = None;
    while !cancel.is_cancelled() {
        let problem = match watch_once(
            &api,
            &selector,
            &mut version,
            &hints,
            watch_seconds,
            &cancel,
        )
        .await
        {
            Ok(()) => {
                retry.reset();
                last_problem = None;
                continue;
            }
            Err(problem) => problem,
        };
        let delay = retry.next_delay();
        if last_problem.as_deref() != Some(problem.as_str()) {
            warn!(
                retry_in_ms = delay.as_millis() as u64,
                "watching host Leases failed: {problem}; a composition refused for a taken host is retried at the next full resync meanwhile"
            );
        } else {
            debug!(
                retry_in_ms = delay.as_millis() as u64,
                "watching host Leases failed again: {problem}"
            );
        }
        last_problem = Some(problem);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// One watch request (after a listing for its starting point when there is none). `Ok` when
/// the apiserver ended it in order.
async fn watch_once(
    api: &Api<Lease>,
    selector: &str,
    version: &mut Option<String>,
    hints: &UnboundedSender<Hint>,
    watch_seconds: u32,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let from = match version.clone() {
        Some(v) => v,
        None => {
            // Only the collection's resourceVersion is needed: one item is enough.
            let list = api
                .list_metadata(&ListParams::default().labels(selector).limit(1))
                .await
                .map_err(|e| format!("cannot list leases: {}", describe(&e)))?;
            let v = list.metadata.resource_version.unwrap_or_default();
            // Deletions before this point were not seen: any refused host may be free now.
            let _ = hints.send(Hint::HostReleased(None));
            *version = Some(v.clone());
            v
        }
    };
    let params = WatchParams::default()
        .labels(selector)
        .timeout(watch_seconds);
    let stream = api.watch_metadata(&params, &from).await.map_err(|e| {
        *version = None;
        format!("cannot watch leases: {}", describe(&e))
    })?;
    futures::pin_mut!(stream);
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = cancel.cancelled() => return Ok(()),
        };
        match event {
            None => return Ok(()),
            Some(Ok(WatchEvent::Deleted(lease))) => {
                *version = lease.metadata.resource_version.clone();
                if let Some(host) = lease
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(HOST_ANNOTATION))
                {
                    debug!(%host, "host Lease deleted");
                    let _ = hints.send(Hint::HostReleased(Some(host.clone())));
                }
            }
            Some(Ok(WatchEvent::Added(lease) | WatchEvent::Modified(lease))) => {
                *version = lease.metadata.resource_version.clone();
            }
            Some(Ok(WatchEvent::Bookmark(b))) => {
                *version = Some(b.metadata.resource_version);
            }
            Some(Ok(WatchEvent::Error(e))) => {
                // 410 Gone: the starting point expired; list again.
                *version = None;
                return if e.code == 410 {
                    Ok(())
                } else {
                    Err(format!("watch error {}: {}", e.code, e.message))
                };
            }
            Some(Err(e)) => {
                *version = None;
                return Err(format!("watch stream broke: {}", describe(&e)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_ends_before_the_client_gives_up_on_it() {
        assert_eq!(watch_seconds(Duration::from_secs(30)), 29);
        assert_eq!(watch_seconds(Duration::from_secs(2)), 1);
        assert_eq!(watch_seconds(Duration::from_millis(500)), 1);
        assert_eq!(watch_seconds(Duration::from_secs(3600)), 290);
    }
}
