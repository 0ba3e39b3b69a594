//! Ownership: two pods never fight over a host, a chosen host never takes a template host, and
//! a sidecar never touches objects that are not its pod's.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams};
use testbed::{
    CONVERGE, ComposeVersion, ENABLE, Sidecar, bed, compose_file, domain, eventually,
    ingress_hosts, ingresses_of, through_ingress, unique_namespace, wait_exposed, web,
};

use super::{host_of, setup};
use crate::SIDECAR;
use crate::operability::Endpoints;

pub(super) async fn two_pods_racing_for_one_host_exactly_one_wins_without_flapping(
    compose: ComposeVersion,
) {
    let bed = bed();
    let ns = unique_namespace("race");
    let a = bed.runner_pod(&ns, "runner-0");
    let b = bed.runner_pod(&ns, "runner-1");
    let admin = bed.admin().await;
    let contested = format!("contested-{ns}");
    let labels = [ENABLE, ("compose-ingress.host", contested.as_str())];
    a.compose_as(
        compose,
        "proj",
        &compose_file(&[web("web", "from-a", 80, "80", &labels)]),
        &["up", "-d"],
    );
    b.compose_as(
        compose,
        "proj",
        &compose_file(&[web("web", "from-b", 80, "80", &labels)]),
        &["up", "-d"],
    );
    let fast = ["--resync-interval", "1s"];
    let (sa, sb) = tokio::join!(
        Sidecar::start(&SIDECAR, bed, &a, &fast),
        Sidecar::start(&SIDECAR, bed, &b, &fast)
    );
    let host = format!("{contested}.{}", domain(&ns));
    let winner = eventually("one pod wins the host", CONVERGE, || async {
        let ia = ingresses_of(&admin, &ns, "runner-0", "proj").await;
        let ib = ingresses_of(&admin, &ns, "runner-1", "proj").await;
        let refused =
            !sa.log_lines("host refused").is_empty() || !sb.log_lines("host refused").is_empty();
        match (ia.len(), ib.len(), refused) {
            (1, 0, true) => Some(("runner-0", ia[0].clone())),
            (0, 1, true) => Some(("runner-1", ib[0].clone())),
            _ => None,
        }
    })
    .await;
    assert_eq!(ingress_hosts(&winner.1), vec![host.clone()]);
    let expected_page = if winner.0 == "runner-0" {
        "from-a"
    } else {
        "from-b"
    };
    assert_eq!(through_ingress(&host).await.trim(), expected_page);
    let loser = if winner.0 == "runner-0" { &sb } else { &sa };
    let line = loser.wait_log("host refused").await;
    assert_eq!(
        line["holder_pod"], winner.0,
        "the refusal names the pod that holds the host"
    );
    assert!(
        loser.metrics().value(
            "compose_ingress_api_requests_total",
            &[
                ("verb", "create"),
                ("kind", "Lease"),
                ("result", "conflict")
            ]
        ) >= 1.0,
        "the lost claim is counted as a conflict"
    );
    // Nothing flaps: both sidecars re-check everything every second; after several passes the
    // winner's Ingress is the same object, never rewritten, and the loser has none.
    let (ra, rb) = (
        sa.log_lines("full resync done").len(),
        sb.log_lines("full resync done").len(),
    );
    sa.wait_resyncs(ra + 3).await;
    sb.wait_resyncs(rb + 3).await;
    let now = ingresses_of(&admin, &ns, winner.0, "proj").await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].metadata.uid, winner.1.metadata.uid);
    assert_eq!(
        now[0].metadata.resource_version,
        winner.1.metadata.resource_version
    );
    let loser_pod = if winner.0 == "runner-0" {
        "runner-1"
    } else {
        "runner-0"
    };
    assert!(
        ingresses_of(&admin, &ns, loser_pod, "proj")
            .await
            .is_empty()
    );
    assert_eq!(
        loser.log_lines("host refused").len(),
        1,
        "the refusal is logged once, not on every pass"
    );
}

/// Chosen hosts and template hosts are disjoint (issue 14, item 2). An attacker's composition
/// on another pod chooses the host that the template will give a composition of runner-0, before
/// that composition exists: it is refused (`host-looks-like-template`: log line, `/exposures`,
/// metric) and claims nothing, and when the victim comes up its URL answers from its own
/// container. Before the rule, the squatter got an Ingress and the host's Lease, and the victim
/// got an Ingress with the same host: two routes for one host, the controller's pick.
pub(super) async fn a_chosen_host_cannot_squat_another_pods_template_host() {
    let bed = bed();
    let ns = unique_namespace("squat");
    let victim_pod = bed.runner_pod(&ns, "runner-0");
    let squatter_pod = bed.runner_pod(&ns, "runner-1");
    let admin = bed.admin().await;
    let fast = ["--resync-interval", "2s"];
    let (victim, squatter) = tokio::join!(
        Sidecar::start(&SIDECAR, bed, &victim_pod, &fast),
        Sidecar::start(&SIDECAR, bed, &squatter_pod, &fast)
    );
    // What the default template will give service web, port 80, of composition `victim` on
    // runner-0; both pods serve the test namespace's domain.
    let label = "web-80-victim-runner-0";
    let host = host_of(&ns, "web", 80, "victim", "runner-0");
    assert_eq!(host, format!("{label}.{}", domain(&ns)));
    squatter_pod.compose(
        "squat",
        &compose_file(&[web(
            "web",
            "from-squatter",
            80,
            "80",
            &[ENABLE, ("compose-ingress.host", label)],
        )]),
        &["up", "-d"],
    );
    let refusal = eventually("the squatter refused in /exposures", CONVERGE, || async {
        let doc = squatter.exposures();
        doc["compositions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "squat" && c["state"] == "refused")
            .and_then(|c| c["reasons"].get(0).cloned())
    })
    .await;
    assert_eq!(refusal["reason"], "host-looks-like-template", "{refusal}");
    assert_eq!(refusal["label"], "compose-ingress.host", "{refusal}");
    assert_eq!(refusal["value"], label, "{refusal}");
    let message = refusal["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&host)
            && message.contains("does not look like `{service}-{port}-{project}-{pod}`"),
        "the refusal names the host and the fix: {message}"
    );
    let line = squatter.wait_log("label refused").await;
    assert_eq!(line["reason"], "host-looks-like-template", "{line}");
    assert_eq!(line["label"], "compose-ingress.host", "{line}");
    assert_eq!(line["value"], label, "{line}");
    assert_eq!(
        squatter.metrics().value(
            "compose_ingress_refused_labels_total",
            &[("reason", "host-looks-like-template")]
        ),
        1.0
    );
    // Refused in the plan: no Ingress, and no Lease that would hold the host.
    assert!(
        ingresses_of(&admin, &ns, "runner-1", "squat")
            .await
            .is_empty()
    );
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &ns);
    let selector = ListParams::default().labels("app.kubernetes.io/managed-by=compose-ingress");
    assert!(
        leases
            .list(&selector)
            .await
            .expect("list leases")
            .items
            .is_empty(),
        "the squatter claims no host"
    );

    // The victim comes up and gets its template host, answered by its own container.
    victim_pod.compose(
        "victim",
        &compose_file(&[web("web", "from-victim", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    let (_, ingress) = wait_exposed(&admin, &ns, "runner-0", "victim").await;
    assert_eq!(ingress_hosts(&ingress), vec![host.clone()]);
    for _ in 0..5 {
        assert_eq!(through_ingress(&host).await.trim(), "from-victim");
    }
    // Full resyncs on both sides change nothing: the squatter stays refused (one warning, not
    // one per pass), and the host has one route, the victim's.
    let (rv, rs) = (
        victim.log_count("full resync done"),
        squatter.log_count("full resync done"),
    );
    victim.wait_resyncs(rv + 2).await;
    squatter.wait_resyncs(rs + 2).await;
    assert!(
        ingresses_of(&admin, &ns, "runner-1", "squat")
            .await
            .is_empty()
    );
    assert_eq!(
        ingresses_of(&admin, &ns, "runner-0", "victim").await.len(),
        1
    );
    assert_eq!(through_ingress(&host).await.trim(), "from-victim");
    assert_eq!(squatter.log_lines("label refused").len(), 1);
    assert!(
        victim.log_lines("label refused").is_empty() && victim.log_lines("host refused").is_empty(),
        "{}",
        victim.logs()
    );
}

pub(super) async fn objects_that_are_not_this_pods_are_never_touched(compose: ComposeVersion) {
    let (ns, pod, admin) = setup("foreign").await;
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let svc = |name: &str, labels: serde_json::Value| -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"ports": [{"port": 80}]}
        }))
        .expect("service")
    };
    let object_name = compose_ingress::naming::object_name("runner-0", "taken");
    let pp = PostParams::default();
    // Same name the sidecar would use for composition "taken", no labels.
    services
        .create(&pp, &svc(&object_name, serde_json::json!({})))
        .await
        .expect("create");
    // Another pod's object, and one of "ours" by name pattern but without labels.
    services
        .create(&pp, &svc("other-pods", serde_json::json!({"app.kubernetes.io/managed-by": "compose-ingress", "compose-ingress/pod": "runner-9", "compose-ingress/project": "x"})))
        .await
        .expect("create");
    services
        .create(
            &pp,
            &svc("ci-lookalike-runner-0-1234abcd", serde_json::json!({})),
        )
        .await
        .expect("create");
    let before: Vec<(String, String)> = services
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap_or_default(),
                s.metadata.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect();

    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--resync-interval", "2s"]).await;
    pod.compose_as(
        compose,
        "taken",
        &compose_file(&[web("web", "taken", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    pod.compose_as(
        compose,
        "fine",
        &compose_file(&[web("web", "fine", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    wait_exposed(&admin, &ns, "runner-0", "fine").await;
    sidecar.wait_resyncs(3).await;
    let line = sidecar.wait_log("reconcile failed").await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("not owned by compose-ingress")),
        "{line}"
    );
    for (name, rv) in before {
        let now = services
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("{name} must still exist: {e}"));
        assert_eq!(
            now.metadata.resource_version.as_deref(),
            Some(rv.as_str()),
            "{name} must not be modified"
        );
    }
    assert!(
        ingresses_of(&admin, &ns, "runner-0", "taken")
            .await
            .is_empty(),
        "no route to a Service that is not ours"
    );
}

/// A host's Lease deleted by hand (or lost) is noticed and claimed again at the next full
/// resync, so that no other pod can take a host whose route is still ours.
pub(super) async fn a_lease_deleted_by_hand_is_claimed_again_at_the_next_resync() {
    let (ns, pod, admin) = setup("lease-lost").await;
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--resync-interval", "2s"]).await;
    let chosen = format!("kept-{ns}");
    pod.compose(
        "proj",
        &compose_file(&[web(
            "web",
            "kept",
            80,
            "80",
            &[ENABLE, ("compose-ingress.host", chosen.as_str())],
        )]),
        &["up", "-d"],
    );
    wait_exposed(&admin, &ns, "runner-0", "proj").await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &ns);
    let selector = ListParams::default().labels("app.kubernetes.io/managed-by=compose-ingress");
    let before = leases.list(&selector).await.expect("list leases").items;
    assert_eq!(before.len(), 1, "one host, one Lease");
    let name = before[0].metadata.name.clone().expect("lease name");
    leases
        .delete(&name, &Default::default())
        .await
        .expect("delete the Lease by hand");

    let again = eventually("the Lease is claimed again", CONVERGE, || async {
        let l = leases.get_opt(&name).await.expect("get lease")?;
        (l.metadata.uid != before[0].metadata.uid).then_some(l)
    })
    .await;
    let holder = again.spec.and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("runner-0"));
    assert!(
        sidecar.log_lines("label refused").is_empty()
            && sidecar.log_lines("host refused").is_empty(),
        "{}",
        sidecar.logs()
    );
}

/// A composition refused because another pod holds its host gets the host as soon as the holder
/// gives it up (issue 14, item 9): the sidecars watch the host Leases, so the refused one is
/// retried when the holder's Lease is deleted, not at the next full resync (5 minutes by
/// default, longer than this test's deadline). Before the watch, the URL stayed refused until
/// that resync.
pub(super) async fn a_host_given_up_by_its_holder_goes_to_the_refused_composition_at_once() {
    let bed = bed();
    let ns = unique_namespace("handoff");
    let a = bed.runner_pod(&ns, "runner-0");
    let b = bed.runner_pod(&ns, "runner-1");
    let admin = bed.admin().await;
    let (sa, sb) = tokio::join!(
        Sidecar::start(&SIDECAR, bed, &a, &[]),
        Sidecar::start(&SIDECAR, bed, &b, &[])
    );
    let contested = format!("handoff-{ns}");
    let labels = [ENABLE, ("compose-ingress.host", contested.as_str())];
    let host = format!("{contested}.{}", domain(&ns));
    let v2 = ComposeVersion::V2;
    let file_a = compose_file(&[web("web", "from-a", 80, "80", &labels)]);
    a.compose_as(v2, "proj", &file_a, &["up", "-d"]);
    wait_exposed(&admin, &ns, "runner-0", "proj").await;
    assert_eq!(through_ingress(&host).await.trim(), "from-a");
    b.compose_as(
        v2,
        "proj",
        &compose_file(&[web("web", "from-b", 80, "80", &labels)]),
        &["up", "-d"],
    );
    let refused = sb.wait_log("host refused").await;
    assert_eq!(refused["holder_pod"], "runner-0");
    assert!(
        ingresses_of(&admin, &ns, "runner-1", "proj")
            .await
            .is_empty()
    );

    // The holder goes (its grace is 2 s): the refused composition gets the host.
    a.compose_as(v2, "proj", &file_a, &["down"]);
    let (_, ingress) = wait_exposed(&admin, &ns, "runner-1", "proj").await;
    assert_eq!(ingress_hosts(&ingress), vec![host.clone()]);
    assert_eq!(through_ingress(&host).await.trim(), "from-b");
    assert!(
        sb.log_lines("full resync done").len() <= 1,
        "only the start-up resync ran: the watch, not a resync, retried the composition"
    );
    drop(sa);
}
