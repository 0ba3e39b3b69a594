//! Late exposures: samples whose composition the sidecar wrote long after its `up -d`
//! (BENCHMARKS.md's findings: one of 430 exposed 120 s late, when the next composition's events
//! came, and the sidecar's info log said nothing in between). Counted per refresh point from the
//! sidecar's own log, and the phase's sidecars log the Docker reader's and the reconciler's
//! debug lines, so that a late one can be traced: each event with its lag from the daemon's
//! timestamp, each pass with its outcome and any re-check it set.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use testbed::{Launch, Sidecar};

/// A composition the sidecar exposed this long after its `up -d` began is late: a sample takes
/// a second or two on this machine, the controller's own share included.
pub const LATE_EXPOSURE: Duration = Duration::from_secs(10);

/// The bench's sidecar settings with the Docker reader's and the reconciler's debug lines (a
/// handful per composition: its events, its passes).
pub const fn traced(launch: Launch) -> Launch {
    Launch {
        rust_log: "info,compose_ingress::docker=debug,compose_ingress::reconcile=debug",
        ..launch
    }
}

/// The instant of a log line's `timestamp` (RFC 3339).
fn logged_at(line: &serde_json::Value) -> Option<SystemTime> {
    let ts: k8s_openapi::jiff::Timestamp = line["timestamp"].as_str()?.parse().ok()?;
    let nanos = u64::try_from(ts.as_nanosecond()).ok()?;
    Some(UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// How many of `started` (a project and when its `up -d` began) `side` exposed more than
/// [`LATE_EXPOSURE`] after, or not at all (a failed sample that the sidecar never wrote).
pub fn late_exposures(side: &Sidecar, started: &[(String, SystemTime)]) -> usize {
    let exposed = side.log_lines("composition exposed");
    started
        .iter()
        .filter(|(project, at)| {
            let first = exposed
                .iter()
                .filter(|l| l["span"]["composition"] == project.as_str())
                .filter_map(logged_at)
                .min();
            first.is_none_or(|t| t.duration_since(*at).unwrap_or_default() > LATE_EXPOSURE)
        })
        .count()
}
