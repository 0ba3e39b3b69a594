//! Compose v2 specifics: a recreate (`--force-recreate`, or a changed service definition)
//! creates the new container under a temporary name, stops and removes the old one, then
//! renames the new one. The route must survive it: same Service and Ingress objects (same
//! uids), targetPort following the new host port, and the URL answering throughout but for the
//! container's own restart gap: at most one outage window, asserted, and printed for the record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use testbed::{
    CONVERGE, ComposeVersion, ENABLE, Sidecar, bed, compose_file, eventually, http_get,
    ingress_hosts, services_of, target_ports, through_ingress, unique_namespace, wait_exposed,
    wait_gone, web,
};

use crate::SIDECAR;

const V2: ComposeVersion = ComposeVersion::V2;

/// Polls the URL through Traefik every 50 ms until stopped; records every answer.
struct Poller {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Sample>>,
}

/// One poll: when, and the HTTP status (0: curl got no answer within its own time-out).
struct Sample {
    at: Duration,
    code: u16,
}

impl Poller {
    fn start(host: String) -> Poller {
        let traefik = format!("{}/", bed().get("TRAEFIK_WEB"));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut samples = Vec::new();
            // Bounded: at most 20 minutes' worth of 50 ms polls, whatever happens to the test.
            for _ in 0..24_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let (code, _) = http_get(&traefik, Some(&host));
                samples.push(Sample {
                    at: start.elapsed(),
                    code,
                });
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        Poller { stop, handle }
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("poller thread")
    }
}

/// The runs of consecutive non-200 answers (outage windows), ignoring polls that got no answer
/// at all: a curl time-out on a starved CPU says nothing about the route.
fn outage_windows(samples: &[Sample]) -> Vec<(Duration, Duration, usize)> {
    let mut windows: Vec<(Duration, Duration, usize)> = Vec::new();
    let mut open = false;
    for s in samples.iter().filter(|s| s.code != 0) {
        if s.code == 200 {
            open = false;
        } else if open {
            if let Some(w) = windows.last_mut() {
                w.1 = s.at;
                w.2 += 1;
            }
        } else {
            windows.push((s.at, s.at, 1));
            open = true;
        }
    }
    windows
}

async fn recreate_keeps_the_route(test: &str, second_file_page: &str, extra_up_args: &[&str]) {
    let bed = bed();
    let ns = unique_namespace(test);
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    // A grace far above what a recreate takes even on a loaded machine: this test proves the
    // mechanism (a recreate within the grace keeps the objects), not this machine's speed.
    let _sidecar = Sidecar::start(&SIDECAR, bed, &pod, &["--delete-grace", "30s"]).await;
    let first = compose_file(&[web("web", "first", 80, "80", &[ENABLE])]);
    pod.compose_as(V2, "recr", &first, &["up", "-d"]);
    let (service, ingress) = wait_exposed(&admin, &ns, "runner-0", "recr").await;
    let host = ingress_hosts(&ingress)[0].clone();
    assert_eq!(through_ingress(&host).await.trim(), "first");
    let old_port = target_ports(&service)[0].1;

    let poller = Poller::start(host.clone());
    let second = compose_file(&[web("web", second_file_page, 80, "80", &[ENABLE])]);
    let mut args = vec!["up", "-d"];
    args.extend_from_slice(extra_up_args);
    pod.compose_as(V2, "recr", &second, &args);
    let new_port = pod.published_port_as(V2, "recr", "web", 80) as i32;
    eventually(
        "the route serves the recreated container",
        CONVERGE,
        || async {
            let (code, body) = http_get(&format!("{}/", bed.get("TRAEFIK_WEB")), Some(&host));
            (code == 200 && body.trim() == second_file_page).then_some(())
        },
    )
    .await;
    // Keep polling a little after the switch, to see that it stays up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = poller.finish();
    let windows = outage_windows(&samples);
    let failed: usize = windows.iter().map(|w| w.2).sum();
    let unanswered = samples.iter().filter(|s| s.code == 0).count();
    eprintln!(
        "RECREATE {test}: {failed} of {} requests failed during the recreate, {unanswered} got no answer (host port {old_port} -> {new_port}); outage windows {:?}",
        samples.len(),
        windows
            .iter()
            .map(|(from, to, n)| format!(
                "{:.2}s-{:.2}s ({n})",
                from.as_secs_f64(),
                to.as_secs_f64()
            ))
            .collect::<Vec<_>>()
    );
    // The bound: the route goes down at most once (the container's own restart gap), never
    // flaps, and answers 200 at the end.
    assert!(
        windows.len() <= 1,
        "the route flapped: {} outage windows",
        windows.len()
    );
    assert_eq!(
        samples.iter().rev().find(|s| s.code != 0).map(|s| s.code),
        Some(200),
        "the last answer during the recreate is a 200"
    );
    let (service_after, ingress_after) = wait_exposed(&admin, &ns, "runner-0", "recr").await;
    assert_eq!(
        service_after.metadata.uid, service.metadata.uid,
        "the Service was never deleted"
    );
    assert_eq!(
        ingress_after.metadata.uid, ingress.metadata.uid,
        "the Ingress was never deleted"
    );
    assert_eq!(
        ingress_after.metadata.resource_version, ingress.metadata.resource_version,
        "the Ingress was not even rewritten"
    );
    assert_eq!(
        target_ports(&service_after)[0].1,
        new_port,
        "targetPort follows the new host port"
    );
    let containers = pod.docker_cli(&["ps", "--format", "{{.Names}}"]);
    assert_eq!(
        String::from_utf8_lossy(&containers.stdout).trim(),
        "recr-web-1",
        "v2 renamed the new container back"
    );

    pod.compose_as(V2, "recr", &second, &["down"]);
    wait_gone(&admin, &ns, "runner-0", "recr").await;
    assert!(
        services_of(&admin, &ns, "runner-0", "recr")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn compose_v2_force_recreate_keeps_the_route() {
    recreate_keeps_the_route("v2-forcerecreate", "first", &["--force-recreate"]).await;
}

#[tokio::test]
async fn compose_v2_changed_definition_recreate_keeps_the_route() {
    recreate_keeps_the_route("v2-changed", "second", &[]).await;
}

/// Recreate on the oldest engine the sidecar supports (Debian's 20.10): its events and port
/// bindings during a recreate differ from Docker 29's.
#[tokio::test]
async fn compose_v2_force_recreate_keeps_the_route_engine_20_10() {
    testbed::on_engine(
        "20.10",
        recreate_keeps_the_route("v2-recreate-2010", "first", &["--force-recreate"]),
    )
    .await;
}
