//! A healthcheck that flaps fast: its EndpointSlice writes are bounded per composition
//! (src/reconcile/lifecycle.rs, at most one health pass per 500 ms).

use std::time::Duration;

use testbed::{CONVERGE, Sidecar, bed, compose_file, eventually};

use super::setup;
use crate::SIDECAR;
use crate::operability::Endpoints;

/// A container whose healthcheck (every 50 ms) sees a file that a loop in it creates and
/// removes every 100 ms: many health flaps a second. Over six seconds the sidecar hears each
/// flap (`health_status` events) but writes the composition's EndpointSlice at most once per
/// 500 ms, fewer than half as often as it flaps. Seen
/// failing with the interval ignored (a write per flap).
#[tokio::test]
async fn a_flapping_healthcheck_makes_bounded_endpoint_slice_writes() {
    let (_ns, pod, _admin) = setup("flaps").await;
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &[]).await;
    let flapping = "  web:\n    image: compose-ingress-test/busybox:1\n    stop_signal: SIGKILL\n    \
        command: [\"sh\", \"-c\", \"echo flapping > /www/index.html; (while true; do touch /tmp/healthy; sleep 0.1; rm -f /tmp/healthy; sleep 0.1; done) & exec httpd -f -p 80 -h /www\"]\n    \
        ports: [\"80\"]\n    \
        healthcheck: {test: [\"CMD\", \"test\", \"-f\", \"/tmp/healthy\"], interval: 50ms, timeout: 1s, retries: 1}\n    \
        labels: {compose-ingress.enable: \"true\"}\n";
    pod.compose(
        "flaps",
        &compose_file(&[flapping.to_string()]),
        &["up", "-d"],
    );
    let slice_writes = |m: &crate::operability::Metrics| {
        m.value(
            "compose_ingress_api_requests_total",
            &[("kind", "EndpointSlice"), ("verb", "apply")],
        ) + m.value(
            "compose_ingress_api_requests_total",
            &[("kind", "EndpointSlice"), ("verb", "create")],
        )
    };
    let flaps = |m: &crate::operability::Metrics| {
        m.value(
            "compose_ingress_docker_events_total",
            &[("action", "health_status")],
        )
    };
    // Flapping and written at least once.
    let before = eventually("the slice written and flapping", CONVERGE, || async {
        let m = sidecar.metrics();
        (slice_writes(&m) >= 1.0 && flaps(&m) >= 4.0).then_some(m)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = sidecar.metrics();
    let (flapped, written) = (
        flaps(&after) - flaps(&before),
        slice_writes(&after) - slice_writes(&before),
    );
    eprintln!("in 6 s: {flapped} health changes, {written} EndpointSlice writes");
    assert!(
        flapped >= 12.0,
        "the healthcheck flapped only {flapped} times"
    );
    assert!(
        written * 2.0 < flapped,
        "{written} EndpointSlice writes for {flapped} health changes"
    );
}
