//! An apiserver that accepts connections and never answers (issue 14, item 9): the sidecar talks
//! to the bed's apiserver through a proxy of its own ([`testbed::ApiProxy`]) that the test
//! freezes, so only this sidecar sees the brownout and the shared bed is not disturbed.
//! - Liveness: every API request is bounded by `--api-timeout` and the heartbeat counts
//!   progress, so `/healthz` never fails while CI jobs go on; the work converges after the thaw.
//! - Shutdown: SIGTERM with requests hanging exits within `--shutdown-timeout`, with one warning
//!   naming what was still running.
//!
//! The liveness test is `timed_`: its assertion (no `/healthz` failure with a 10 s staleness
//! bound) depends on the sidecar getting the CPU, so it runs alone.

use std::time::{Duration, Instant};

use testbed::{
    ApiProxy, CONVERGE, ENABLE, Sidecar, bed, compose_file, services_of, unique_namespace,
    wait_exposed, wait_gone, web,
};

use crate::SIDECAR;
use crate::operability::Endpoints;

/// How long the apiserver stays frozen in the liveness test: three times `--heartbeat-stale`.
const FREEZE: Duration = Duration::from_secs(30);

/// The log lines that carry the request timeout's error (it names the flag).
fn timed_out_requests(sidecar: &Sidecar) -> usize {
    sidecar
        .logs()
        .lines()
        .filter(|l| l.contains("(--api-timeout)"))
        .count()
}

#[tokio::test]
async fn timed_a_frozen_apiserver_never_fails_healthz_and_the_work_converges_after_the_thaw() {
    let bed = bed();
    let ns = unique_namespace("frozen");
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    let proxy = ApiProxy::start(bed);
    let mut sidecar = Sidecar::start_via(
        &SIDECAR,
        bed,
        &pod,
        &proxy.url(),
        &["--api-timeout", "2s", "--heartbeat-stale", "10s"],
    )
    .await;
    pod.compose(
        "before",
        &compose_file(&[web("web", "before", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    wait_exposed(&admin, &ns, "runner-0", "before").await;
    sidecar.wait_status("/readyz", 200).await;

    proxy.freeze();
    let frozen = Instant::now();
    // CI jobs go on meanwhile: one composition comes, one goes; the reconciler has work, and
    // every request it sends hangs.
    pod.compose(
        "during",
        &compose_file(&[web("web", "during", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    pod.compose(
        "before",
        &compose_file(&[web("web", "before", 80, "80", &[ENABLE])]),
        &["down"],
    );
    let mut polls = 0;
    while frozen.elapsed() < FREEZE {
        match sidecar.get("/healthz") {
            Ok((200, _)) => {}
            other => panic!(
                "/healthz failed {:?} into the freeze: {other:?}; log: {}",
                frozen.elapsed(),
                sidecar.log.display()
            ),
        }
        polls += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(polls >= 10, "only {polls} /healthz polls in {FREEZE:?}");
    // The freeze held (nothing of the new composition reached the apiserver) and the sidecar
    // met it as timeouts, not as a hang.
    assert!(
        services_of(&admin, &ns, "runner-0", "during")
            .await
            .is_empty(),
        "a write got through the frozen proxy"
    );
    assert!(
        timed_out_requests(&sidecar) >= 1,
        "no request timed out with the --api-timeout error; log: {}",
        sidecar.log.display()
    );
    assert!(sidecar.still_running());

    proxy.thaw();
    wait_exposed(&admin, &ns, "runner-0", "during").await;
    wait_gone(&admin, &ns, "runner-0", "before").await;
    assert_eq!(sidecar.get("/healthz").expect("GET /healthz").0, 200);
    assert!(sidecar.still_running());
    sidecar.signal("TERM");
    assert_eq!(sidecar.wait_exit(CONVERGE).code(), Some(0));
}

#[tokio::test]
async fn a_sigterm_while_the_apiserver_is_frozen_exits_within_the_shutdown_timeout() {
    let bed = bed();
    let ns = unique_namespace("frozen-term");
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    let proxy = ApiProxy::start(bed);
    // A long --api-timeout: it is the shutdown's own deadline that must end the wait. The
    // clean-up at exit always runs, so the shutdown has API work of its own.
    let mut sidecar = Sidecar::start_via(
        &SIDECAR,
        bed,
        &pod,
        &proxy.url(),
        &[
            "--shutdown-timeout",
            "3s",
            "--cleanup-on-exit",
            "always",
            "--api-timeout",
            "60s",
        ],
    )
    .await;
    pod.compose(
        "kept",
        &compose_file(&[web("web", "kept", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    wait_exposed(&admin, &ns, "runner-0", "kept").await;
    sidecar.wait_status("/readyz", 200).await;

    proxy.freeze();
    // A composition the reconciler is busy with when SIGTERM comes: its host claim hangs.
    pod.compose(
        "during",
        &compose_file(&[web("web", "during", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let term = Instant::now();
    sidecar.signal("TERM");
    // Generous (the feature's bound is 3 s); without a bound the sidecar hung until SIGKILL.
    let status = sidecar.wait_exit(Duration::from_secs(30));
    let took = term.elapsed();
    assert_eq!(status.code(), Some(0), "log: {}", sidecar.log.display());
    let warned = sidecar.log_lines("shutdown timed out (--shutdown-timeout)");
    assert_eq!(
        warned.len(),
        1,
        "one warning when the deadline passes (exited after {took:?}); log:\n{}",
        sidecar.logs()
    );
    let running = warned[0]["still_running"].as_str().unwrap_or_default();
    assert!(
        running.contains("clean-up at exit"),
        "the warning names the clean-up it gave up: {}",
        warned[0]
    );
    // Nothing was deleted (the requests never reached the apiserver): the objects stay for the
    // pod's garbage collection, or the next start's resync.
    proxy.thaw();
    assert_eq!(services_of(&admin, &ns, "runner-0", "kept").await.len(), 1);
}
