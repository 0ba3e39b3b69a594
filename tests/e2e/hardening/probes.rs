//! The routability probe's memory: a job's backend that answers megabytes to every probe of
//! many `wait` requests does not grow the sidecar (its memory limit is 64 Mi).

use std::time::{Duration, Instant};

use testbed::{Sidecar, bed, compose_file, through_ingress, wait_exposed};

use super::setup;
use crate::SIDECAR;

/// The sidecar's peak resident memory so far (KiB).
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM")
}

/// Eight `wait` requests at once (all one address may hold), again and again for a few
/// seconds, against a backend whose page is 4 MiB: every probe through Traefik reads a 4 KiB
/// prefix, so the sidecar's peak memory grows by far less than one answer. Seen failing with
/// the prefix raised to the old megabyte (peak up by more than 4 MiB).
#[tokio::test]
async fn waits_against_a_backend_that_answers_megabytes_do_not_grow_the_sidecar() {
    let (ns, pod, admin) = setup("probe-memory").await;
    let sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &["--probe-url", bed().get("TRAEFIK_WEB")],
    )
    .await;
    let big = "  web:\n    image: compose-ingress-test/busybox:1\n    stop_signal: SIGKILL\n    \
               command: [\"sh\", \"-c\", \"dd if=/dev/zero bs=1048576 count=4 2>/dev/null | tr '\\\\0' x > /www/index.html; exec httpd -f -p 80 -h /www\"]\n    \
               ports: [\"80\"]\n    labels: {compose-ingress.enable: \"true\"}\n";
    pod.compose("big", &compose_file(&[big.to_string()]), &["up", "-d"]);
    let (_, ingress) = wait_exposed(&admin, &ns, "runner-0", "big").await;
    let host = testbed::ingress_hosts(&ingress)[0].clone();
    assert!(
        through_ingress(&host).await.len() > 1024 * 1024,
        "a big page"
    );
    let listen = sidecar.listen.clone();
    let ask = || {
        http_get::get(
            &listen,
            "localhost",
            "/v1/compositions/big?wait=routable&timeout=20s",
            Duration::from_secs(30),
        )
    };
    assert!(ask().await.expect("asked").body.contains("\"routable\""));
    let before = peak_kib(sidecar.pid());
    let until = Instant::now() + Duration::from_secs(5);
    let mut asked = 0;
    while Instant::now() < until {
        let answers = futures::future::join_all((0..8).map(|_| ask())).await;
        for a in answers {
            let a = a.expect("the sidecar answers");
            assert!(a.body.contains("\"routable\""), "{}", a.body);
            asked += 1;
        }
    }
    let after = peak_kib(sidecar.pid());
    eprintln!("{asked} waits against a 4 MiB page: the sidecar's peak {before} KiB -> {after} KiB");
    assert!(asked >= 8, "{asked}");
    assert!(
        after.saturating_sub(before) < 4 * 1024,
        "{asked} waits: the sidecar's peak grew from {before} KiB to {after} KiB"
    );
}
