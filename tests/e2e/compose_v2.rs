//! Compose v2 specifics: a recreate (`--force-recreate`, or a changed service definition)
//! creates the new container under a temporary name, stops and removes the old one, then
//! renames the new one. The route must survive it: same Service and Ingress objects (same
//! uids), targetPort following the new host port, and the URL answering throughout but for the
//! container's own restart gap. The failed-request count is printed for the record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::scenarios::{ENABLE, compose_file, through_ingress, web};
use crate::sidecar::{Sidecar, ingress_hosts, services_of, target_ports, wait_exposed, wait_gone};
use crate::support::{CONVERGE, ComposeVersion, bed, eventually, http_get, unique_namespace};

const V2: ComposeVersion = ComposeVersion::V2;

/// Polls the URL through Traefik every 50 ms until stopped; counts requests and failures.
struct Poller {
    stop: Arc<AtomicBool>,
    total: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    handle: std::thread::JoinHandle<Vec<Duration>>,
}

impl Poller {
    fn start(host: String) -> Poller {
        let traefik = format!("{}/", bed().get("TRAEFIK_WEB"));
        let (stop, total, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (s, t, f) = (stop.clone(), total.clone(), failed.clone());
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut failures = Vec::new();
            // Bounded: at most 20 minutes' worth of 50 ms polls, whatever happens to the test.
            for _ in 0..24_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let (code, _) = http_get(&traefik, Some(&host));
                t.fetch_add(1, Ordering::Relaxed);
                if code != 200 {
                    f.fetch_add(1, Ordering::Relaxed);
                    failures.push(start.elapsed());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            failures
        });
        Poller {
            stop,
            total,
            failed,
            handle,
        }
    }

    fn finish(self) -> (usize, usize, Vec<Duration>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.handle.join().expect("poller thread");
        (
            self.total.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            failures,
        )
    }
}

async fn recreate_keeps_the_route(test: &str, second_file_page: &str, extra_up_args: &[&str]) {
    let bed = bed();
    let ns = unique_namespace(test);
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    // The production default grace: a recreate must fit in it.
    let _sidecar = Sidecar::start(bed, &pod, &["--delete-grace", "10s"]).await;
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
    let (total, failed, failures) = poller.finish();
    eprintln!(
        "RECREATE {test}: {failed} of {total} requests failed during the recreate (host port {old_port} -> {new_port}); failures at {:?}",
        failures
            .iter()
            .map(|d| format!("{:.2}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
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
