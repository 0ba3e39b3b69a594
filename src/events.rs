//! Kubernetes Events on the runner pod (`events.k8s.io/v1`): the reconciler queues a
//! [`PodEvent`] and never waits; this task rate-limits them (a token bucket per (reason,
//! composition) plus a global one, so a crash-looping composition cannot flood the apiserver)
//! and posts the rest. Events are best effort: a failed post is counted and logged, not retried.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api_reach::describe;
use crate::status::{PodEvent, Status};

/// The `reportingController` of every Event.
pub(crate) const REPORTING_CONTROLLER: &str = "compose-ingress";
/// The apiserver refuses notes longer than this (bytes).
const MAX_NOTE: usize = 1024;
/// An Event post that takes longer than this is given up (the next ones must not queue up).
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Token-bucket parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Events of one (reason, composition) allowed in a burst.
    pub(crate) burst: f64,
    /// Then one more every this long.
    pub(crate) refill: Duration,
    /// All Events of this pod: burst...
    pub(crate) global_burst: f64,
    /// ...then one more every this long.
    pub(crate) global_refill: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            burst: 5.0,
            refill: Duration::from_secs(60),
            global_burst: 30.0,
            global_refill: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Events dropped since the last one let through (logged once per run of drops).
    dropped: u64,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            last: now,
            dropped: 0,
        }
    }

    fn refill(&mut self, burst: f64, every: Duration, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let per_token = every.as_secs_f64().max(f64::MIN_POSITIVE);
        self.tokens = (self.tokens + elapsed / per_token).min(burst);
        self.last = now;
    }
}

/// What the limiter decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Post,
    /// Dropped; `first` is true for the first drop of a run (after an event went through), so
    /// that one log line covers the run.
    Drop {
        first: bool,
        limit: Limit,
    },
}

/// Which bucket dropped an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// This (reason, composition) produced Events too fast.
    Composition,
    /// The pod as a whole did (many compositions at once).
    Pod,
}

/// Token buckets per (reason, composition) and for the whole pod. Pure (time is passed in).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limits: Limits,
    keys: HashMap<(&'static str, String), Bucket>,
    global: Option<Bucket>,
}

/// Buckets kept before idle (full) ones are forgotten.
const MAX_KEYS: usize = 1024;

impl RateLimiter {
    pub(crate) fn new(limits: Limits) -> Self {
        RateLimiter {
            limits,
            keys: HashMap::new(),
            global: None,
        }
    }

    pub(crate) fn check(
        &mut self,
        reason: &'static str,
        composition: &str,
        now: Instant,
    ) -> Verdict {
        let l = self.limits;
        if self.keys.len() >= MAX_KEYS {
            for b in self.keys.values_mut() {
                b.refill(l.burst, l.refill, now);
            }
            self.keys.retain(|_, b| b.tokens < l.burst);
            if self.keys.len() >= MAX_KEYS {
                // Under a flood of distinct keys: forget them all; the global bucket still
                // bounds what reaches the apiserver.
                self.keys.clear();
            }
        }
        let global = self
            .global
            .get_or_insert_with(|| Bucket::full(l.global_burst, now));
        global.refill(l.global_burst, l.global_refill, now);
        let bucket = self
            .keys
            .entry((reason, composition.to_string()))
            .or_insert_with(|| Bucket::full(l.burst, now));
        bucket.refill(l.burst, l.refill, now);
        if bucket.tokens >= 1.0 && global.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            global.tokens -= 1.0;
            bucket.dropped = 0;
            global.dropped = 0;
            Verdict::Post
        } else if bucket.tokens < 1.0 {
            bucket.dropped += 1;
            Verdict::Drop {
                first: bucket.dropped == 1,
                limit: Limit::Composition,
            }
        } else {
            global.dropped += 1;
            Verdict::Drop {
                first: global.dropped == 1,
                limit: Limit::Pod,
            }
        }
    }
}

/// The `action` of an Event, from its reason.
pub(crate) fn action_of(reason: &str) -> &'static str {
    match reason {
        "Exposed" => "Expose",
        "LabelRefused" | "HostRefused" => "Refuse",
        "Unexposed" | "Expired" => "Delete",
        _ => "Reconcile",
    }
}

/// The pod the Events are about.
#[derive(Debug, Clone)]
pub struct RegardingPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Builds the `events.k8s.io/v1` Event for `e` (name unique per pod and instant, like client-go).
pub(crate) fn build_event(pod: &RegardingPod, e: &PodEvent, seq: u64) -> Event {
    let now = k8s_openapi::jiff::Timestamp::now();
    Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.{:x}{:04x}",
                pod.name,
                now.as_nanosecond(),
                seq & 0xffff
            )),
            namespace: Some(pod.namespace.clone()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    REPORTING_CONTROLLER.to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(e.type_.to_string()),
        reason: Some(e.reason.to_string()),
        action: Some(action_of(e.reason).to_string()),
        note: Some(truncate(&e.note, MAX_NOTE)),
        reporting_controller: Some(REPORTING_CONTROLLER.to_string()),
        reporting_instance: Some(format!("{REPORTING_CONTROLLER}-{}", pod.name))
            .map(|s| truncate(&s, 128)),
        regarding: Some(ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("Pod".to_string()),
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Posts the queued events until cancelled (or until every sender is gone).
pub async fn run(
    client: kube::Client,
    pod: RegardingPod,
    status: Arc<Status>,
    limits: Limits,
    mut queue: UnboundedReceiver<PodEvent>,
    cancel: CancellationToken,
) {
    let api: Api<Event> = Api::namespaced(client, &pod.namespace);
    let mut limiter = RateLimiter::new(limits);
    let mut seq: u64 = 0;
    let mut last_error: Option<String> = None;
    loop {
        let event = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            e = queue.recv() => match e { Some(e) => e, None => break },
        };
        match limiter.check(event.reason, &event.composition, Instant::now()) {
            Verdict::Drop { first, limit } => {
                status.metrics.kube_event(event.reason, "rate-limited");
                match (first, limit) {
                    (false, _) => {}
                    (true, Limit::Composition) => {
                        info!(reason = event.reason, composition = %event.composition,
                        "Kubernetes Events rate-limited: dropping further {} events of this composition for now", event.reason)
                    }
                    (true, Limit::Pod) => {
                        info!(reason = event.reason, composition = %event.composition,
                        "Kubernetes Events rate-limited: this pod posts at most {} Events in a burst, then one every {} ms; dropping Events of every composition for now",
                        limits.global_burst, limits.global_refill.as_millis())
                    }
                }
                continue;
            }
            Verdict::Post => {}
        }
        seq = seq.wrapping_add(1);
        let object = build_event(&pod, &event, seq);
        let pp = PostParams::default();
        let result = tokio::select! {
            _ = cancel.cancelled() => break,
            r = tokio::time::timeout(POST_TIMEOUT, api.create(&pp, &object)) => r,
        };
        match result {
            Ok(Ok(_)) => {
                status.metrics.kube_event(event.reason, "posted");
                debug!(reason = event.reason, composition = %event.composition, "Kubernetes Event posted");
                last_error = None;
            }
            Ok(Err(e)) => {
                status.metrics.kube_event(event.reason, "error");
                let message = describe(&e);
                if last_error.as_deref() != Some(message.as_str()) {
                    warn!(error = %message, reason = event.reason, composition = %event.composition,
                        "cannot post a Kubernetes Event on the pod; dropping it");
                }
                last_error = Some(message);
            }
            Err(_) => {
                status.metrics.kube_event(event.reason, "error");
                warn!(
                    timeout_ms = POST_TIMEOUT.as_millis() as u64,
                    reason = event.reason,
                    "posting a Kubernetes Event timed out; dropping it"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            burst: 5.0,
            refill: Duration::from_secs(60),
            global_burst: 100.0,
            global_refill: Duration::from_millis(10),
        }
    }

    #[test]
    fn burst_then_one_per_refill_per_key() {
        let mut l = RateLimiter::new(limits());
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.check("Exposed", "web", t0), Verdict::Post);
        }
        let drop = |first| Verdict::Drop {
            first,
            limit: Limit::Composition,
        };
        assert_eq!(l.check("Exposed", "web", t0), drop(true));
        assert_eq!(l.check("Exposed", "web", t0), drop(false));
        // other keys are independent
        assert_eq!(l.check("Unexposed", "web", t0), Verdict::Post);
        assert_eq!(l.check("Exposed", "api", t0), Verdict::Post);
        // one token per minute
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(l.check("Exposed", "web", t1), Verdict::Post);
        assert_eq!(l.check("Exposed", "web", t1), drop(true));
    }

    #[test]
    fn global_bucket_caps_many_compositions() {
        let mut l = RateLimiter::new(Limits {
            global_burst: 3.0,
            global_refill: Duration::from_secs(10),
            ..limits()
        });
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..10)
            .map(|i| l.check("Exposed", &format!("p{i}"), t0))
            .collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Post).count(), 3);
        // One log-worthy drop for the whole run of pod-wide drops, not one per composition.
        let firsts = verdicts
            .iter()
            .filter(|v| {
                **v == Verdict::Drop {
                    first: true,
                    limit: Limit::Pod,
                }
            })
            .count();
        assert_eq!(firsts, 1);
    }

    #[test]
    fn key_map_stays_bounded() {
        let mut l = RateLimiter::new(limits());
        let t0 = Instant::now();
        for i in 0..5000 {
            let t = t0 + Duration::from_millis(10 * i);
            l.check("Exposed", &format!("p{i}"), t);
        }
        assert!(l.keys.len() <= MAX_KEYS + 1, "{}", l.keys.len());
    }

    #[test]
    fn event_regards_the_pod_and_notes_are_bounded() {
        let pod = RegardingPod {
            namespace: "ci".into(),
            name: "runner-3".into(),
            uid: "u-1".into(),
        };
        let e = PodEvent {
            type_: "Warning",
            reason: "LabelRefused",
            composition: "demo".into(),
            note: "é".repeat(2000),
        };
        let ev = build_event(&pod, &e, 7);
        let r = ev.regarding.as_ref().expect("regarding");
        assert_eq!(r.kind.as_deref(), Some("Pod"));
        assert_eq!(r.uid.as_deref(), Some("u-1"));
        assert_eq!(ev.action.as_deref(), Some("Refuse"));
        assert_eq!(ev.reporting_controller.as_deref(), Some("compose-ingress"));
        assert!(ev.note.as_ref().expect("note").len() <= MAX_NOTE);
        assert!(
            ev.metadata
                .name
                .as_ref()
                .expect("name")
                .starts_with("runner-3.")
        );
    }
}
