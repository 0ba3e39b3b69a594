//! A public URL has a bounded life (`--max-exposure`, `compose-ingress.ttl`).

use testbed::{
    CONVERGE, ComposeVersion, ENABLE, Sidecar, bed, compose_args, compose_file, eventually,
    ingress_hosts, services_of, through_ingress, wait_exposed, wait_gone, web,
};

use super::{setup, state_of};
use crate::SIDECAR;
use crate::operability::Endpoints;

/// A composition with a short TTL is routed, then unrouted at its end (an `Expired` line, its
/// container still running), `/exposures` and `wait` say `expired`; neither a full resync nor
/// a restart of the sidecar exposes it again; docs/troubleshooting.md's fix, recreating its
/// containers, does (a new exposure: routed and `wait` answers 200 again). A TTL over the
/// operator's maximum is refused. Seen failing on the old code: the composition stayed exposed (the label was refused as
/// unknown, the rest exposed without a bound).
#[tokio::test]
async fn a_composition_is_unrouted_at_the_end_of_its_ttl_and_stays_so() {
    let (ns, pod, admin) = setup("ttl").await;
    let flags = ["--max-exposure", "1h", "--resync-interval", "3s"];
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &flags).await;
    // Compose v2: the `docker compose` whose recreate docs/troubleshooting.md gives as the fix.
    let v2 = ComposeVersion::V2;
    let brief = compose_file(&[web(
        "web",
        "brief",
        80,
        "80",
        &[ENABLE, ("compose-ingress.ttl", "25s")],
    )]);
    pod.compose_as(v2, "brief", &brief, &["up", "-d"]);
    let (_, ingress) = wait_exposed(&admin, &ns, "runner-0", "brief").await;
    assert!(
        through_ingress(&ingress_hosts(&ingress)[0])
            .await
            .contains("brief")
    );
    wait_gone(&admin, &ns, "runner-0", "brief").await;
    let line = sidecar.wait_log("composition expired").await;
    assert_eq!(line["reason"], "expired", "{line}");
    let state = state_of(&sidecar.exposures(), "brief").expect("brief in /exposures");
    assert_eq!(state["state"], "expired", "{state}");
    let (code, body) = sidecar
        .get("/v1/compositions/brief?wait=routable&timeout=2s")
        .expect("the sidecar answers");
    assert_eq!(code, 410, "{body}");
    assert!(body.contains("\"expired\""), "{body}");
    let running = pod.docker_cli(&[
        "ps",
        "-q",
        "--filter",
        "label=com.docker.compose.project=brief",
    ]);
    assert!(
        !String::from_utf8_lossy(&running.stdout).trim().is_empty(),
        "its container is not touched"
    );
    // Full resyncs come and go: still nothing.
    let resyncs = sidecar.log_count("full resync done");
    sidecar.wait_resyncs(resyncs + 2).await;
    assert!(
        services_of(&admin, &ns, "runner-0", "brief")
            .await
            .is_empty()
    );
    // A new sidecar (its process restarted): the exposure time comes from Docker, not memory.
    sidecar.stop();
    let restarted = Sidecar::start(&SIDECAR, bed(), &pod, &flags).await;
    restarted.wait_resyncs(1).await;
    assert!(
        services_of(&admin, &ns, "runner-0", "brief")
            .await
            .is_empty()
    );
    let state = eventually("expired after the restart", CONVERGE, || async {
        state_of(&restarted.exposures(), "brief").filter(|s| s["state"] == "expired")
    })
    .await;
    assert_eq!(state["state"], "expired");

    // Labels only shorten the operator's maximum.
    pod.compose(
        "long",
        &compose_file(&[web(
            "web",
            "long",
            80,
            "80",
            &[ENABLE, ("compose-ingress.ttl", "2h")],
        )]),
        &["up", "-d"],
    );
    let refused = eventually("a TTL over the maximum refused", CONVERGE, || async {
        state_of(&restarted.exposures(), "long").filter(|s| s["state"] == "refused")
    })
    .await;
    assert_eq!(refused["reasons"][0]["reason"], "invalid-ttl", "{refused}");

    // docs/troubleshooting.md's fix for `composition expired`: recreate its containers, a new
    // exposure (its time counts from the new container's creation).
    let recreate = testbed::doc_inline(
        "docs/troubleshooting.md",
        "docker compose up -d --force-recreate",
    );
    let args = compose_args(&recreate);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pod.compose_as(v2, "brief", &brief, &args);
    let (_, ingress) = wait_exposed(&admin, &ns, "runner-0", "brief").await;
    assert!(
        through_ingress(&ingress_hosts(&ingress)[0])
            .await
            .contains("brief"),
        "`{recreate}` exposes it again"
    );
    let (code, body) = restarted
        .get("/v1/compositions/brief?wait=routable&timeout=20s")
        .expect("the sidecar answers");
    assert_eq!(code, 200, "`wait` after `{recreate}`: {body}");
}

/// The pod scope shares the plan and its timing: at the end of `--max-exposure` the proxy
/// stops serving the composition (its host is then unknown to it: 404), `/exposures` says
/// `expired`. Seen failing on the old code: the flag did not exist (and with the expiry
/// disabled the host kept answering 200).
#[tokio::test]
async fn in_pod_scope_the_proxy_stops_serving_at_the_end_of_the_maximum_exposure() {
    let ns = testbed::unique_namespace("pod-ttl");
    let pod = bed().runner_pod(&ns, "runner-0");
    let sidecar = crate::pod_scope::start(&pod, &["--max-exposure", "30s"]).await;
    pod.compose(
        "brief",
        &compose_file(&[web("web", "brief-page", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    let url = crate::pod_scope::host("web", 80, "brief", &pod);
    assert_eq!(
        crate::pod_scope::answers(&url, 200).await.trim(),
        "brief-page"
    );
    crate::pod_scope::answers(&url, 404).await;
    let state = eventually("expired in /exposures", CONVERGE, || async {
        state_of(&sidecar.exposures(), "brief").filter(|s| s["state"] == "expired")
    })
    .await;
    assert!(
        state["message"]
            .as_str()
            .is_some_and(|m| m.contains("exposure time ended")),
        "{state}"
    );
}
