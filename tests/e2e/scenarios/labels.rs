//! Labels shape the objects: bad labels are refused one warning each, kompose and
//! rate-limit/TLS labels shape the Ingress.

use std::collections::BTreeSet;

use testbed::{
    CONVERGE, ComposeVersion, ENABLE, Sidecar, bed, compose_file, domain, eventually,
    ingress_hosts, ingresses_of, services_of, through_ingress, wait_exposed, web,
};

use super::{host_of, setup};
use crate::SIDECAR;
use crate::operability::Endpoints;

pub(super) async fn bad_labels_are_refused_one_warning_each_and_others_still_expose(
    compose: ComposeVersion,
) {
    let (ns, pod, admin) = setup("badlabels").await;
    let sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &[
            "--max-rps",
            "50",
            "--default-rps",
            "20",
            "--resync-interval",
            "2s",
        ],
    )
    .await;
    let huge = "a".repeat(64 * 1024);
    let long_name = "x".repeat(70);
    let cases: Vec<(&str, &str, String, &str)> = vec![
        // (service, label, value, expected reason)
        (
            "badchars",
            "compose-ingress.host",
            "my_host!".into(),
            "invalid-host",
        ),
        (
            "outside",
            "compose-ingress.host",
            "evil.attacker.example.org".into(),
            "host-outside-domain",
        ),
        (
            "rpshigh",
            "compose-ingress.rate-limit.rps",
            "5000".into(),
            "rate-limit-above-max",
        ),
        (
            "rpsnan",
            "compose-ingress.rate-limit.rps",
            "fast".into(),
            "invalid-rate-limit",
        ),
        (
            "badclass",
            "compose-ingress.class",
            "vip".into(),
            "class-not-allowed",
        ),
        (
            "notpub",
            "compose-ingress.ports",
            "9999".into(),
            "port-not-published",
        ),
        ("huge", "compose-ingress.path", huge, "value-too-long"),
        (
            "junk",
            "compose-ingress.host",
            "\u{1b}[31mÿ\u{202e}".into(),
            "invalid-host",
        ),
        (
            "longhost",
            "compose-ingress.host",
            long_name,
            "invalid-host",
        ),
    ];
    let mut services = vec![web("good", "good-page", 80, "80", &[ENABLE])];
    for (svc, label, value, _) in &cases {
        services.push(web(svc, svc, 80, "80", &[ENABLE, (label, value.as_str())]));
    }
    // Two services claiming the same host: the first (by name) keeps it.
    // Hosts are unique per test namespace: Traefik serves every namespace, including the
    // namespaces that failed runs keep for inspection.
    let shared = format!("shared-{ns}");
    services.push(web(
        "claima",
        "claim-a",
        80,
        "80",
        &[ENABLE, ("compose-ingress.host", shared.as_str())],
    ));
    services.push(web(
        "claimb",
        "claim-b",
        80,
        "80",
        &[ENABLE, ("compose-ingress.host", shared.as_str())],
    ));
    let yaml = compose_file(&services);
    pod.compose_as(compose, "bad", &yaml, &["up", "-d"]);
    let (_, ingress) = eventually("good and claima exposed", CONVERGE, || async {
        let i = ingresses_of(&admin, &ns, "runner-0", "bad").await;
        let s = services_of(&admin, &ns, "runner-0", "bad").await;
        (i.len() == 1 && ingress_hosts(&i[0]).len() == 2).then(|| (s[0].clone(), i[0].clone()))
    })
    .await;
    let mut hosts = ingress_hosts(&ingress);
    hosts.sort();
    assert_eq!(
        hosts,
        vec![
            host_of(&ns, "good", 80, "bad", "runner-0"),
            format!("{shared}.{}", domain(&ns))
        ]
    );
    assert_eq!(
        through_ingress(&format!("{shared}.{}", domain(&ns)))
            .await
            .trim(),
        "claim-a"
    );
    // A further event and a resync must not repeat the warnings.
    // (Two full resyncs after the restart: each re-plans every service from Docker.)
    pod.compose_as(compose, "bad", &yaml, &["restart", "good"]);
    let resyncs = sidecar.log_lines("full resync done").len();
    sidecar.wait_resyncs(resyncs + 2).await;
    let refusals = sidecar.log_lines("label refused");
    for (svc, label, _, reason) in &cases {
        let matching: Vec<_> = refusals.iter().filter(|l| l["service"] == *svc).collect();
        assert_eq!(
            matching.len(),
            1,
            "exactly one warning for service {svc}: {matching:?}"
        );
        assert_eq!(matching[0]["label"], *label, "warning names the label");
        assert_eq!(
            matching[0]["reason"], *reason,
            "service {svc}: {:?}",
            matching[0]
        );
        assert_eq!(matching[0]["level"], "WARN");
        assert!(
            matching[0]["value"]
                .as_str()
                .is_some_and(|v| v.chars().count() <= 80),
            "the value shown is shortened"
        );
    }
    let claim: Vec<_> = refusals
        .iter()
        .filter(|l| l["service"] == "claimb")
        .collect();
    assert_eq!(
        claim.len(),
        1,
        "one warning for the second claim of a host: {claim:?}"
    );
    // /exposures shows the composition exposed, with every refused service and its reason.
    let exposures = sidecar.exposures();
    let bad = exposures["compositions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "bad"))
        .unwrap_or_else(|| panic!("composition bad in /exposures: {exposures}"));
    assert_eq!(bad["state"], "exposed");
    let refused: BTreeSet<(String, String)> = bad["refused"]
        .as_array()
        .unwrap_or_else(|| panic!("a refused list: {bad}"))
        .iter()
        .map(|r| {
            (
                r["service"].as_str().unwrap_or_default().to_string(),
                r["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut expected: BTreeSet<(String, String)> = cases
        .iter()
        .map(|(svc, _, _, reason)| (svc.to_string(), reason.to_string()))
        .collect();
    expected.insert((
        "claimb".to_string(),
        "host-taken-in-composition".to_string(),
    ));
    assert_eq!(refused, expected, "/exposures lists what was refused");
}

pub(super) async fn kompose_labels_rate_limits_and_tls_shape_the_ingress() {
    let (ns, pod, admin) = setup("shape").await;
    let _sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &[
            "--default-rps",
            "20",
            "--max-rps",
            "50",
            "--tls-secret",
            "wildcard-cert",
            "--allowed-classes",
            "internal",
        ],
    )
    .await;
    let kompose_host = format!("kp-{ns}.{}", domain(&ns));
    let expose = format!("{kompose_host}/api");
    pod.compose_as(
        ComposeVersion::V1,
        "shape",
        &compose_file(&[
            web(
                "api",
                "api",
                8080,
                "8080",
                &[("kompose.service.expose", expose.as_str())],
            ),
            web(
                "web",
                "web",
                80,
                "80",
                &[ENABLE, ("compose-ingress.rate-limit.rps", "5")],
            ),
        ]),
        &["up", "-d"],
    );
    let (_, ingress) = eventually("both services exposed", CONVERGE, || async {
        let i = ingresses_of(&admin, &ns, "runner-0", "shape").await;
        let s = services_of(&admin, &ns, "runner-0", "shape").await;
        (i.len() == 1 && ingress_hosts(&i[0]).len() == 2).then(|| (s[0].clone(), i[0].clone()))
    })
    .await;
    let spec = ingress.spec.clone().expect("spec");
    let rules = spec.rules.clone().expect("rules");
    let api_rule = rules
        .iter()
        .find(|r| r.host.as_deref() == Some(kompose_host.as_str()))
        .expect("kompose host rule");
    let api_path = &api_rule.http.as_ref().expect("http").paths[0];
    assert_eq!(api_path.path.as_deref(), Some("/api"));
    assert_eq!(api_path.path_type, "Prefix");
    // The lowest of the operator's default (20) and the labels (5) wins; nothing else from
    // labels reaches the annotations.
    let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("nginx.ingress.kubernetes.io/limit-rps")
            .map(String::as_str),
        Some("5")
    );
    let foreign: Vec<&String> = annotations
        .keys()
        .filter(|k| {
            !k.starts_with("compose-ingress/")
                && !k.starts_with("nginx.ingress.kubernetes.io/limit-rps")
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "only allow-listed annotations: {foreign:?}"
    );
    let tls = spec.tls.expect("TLS block with the operator's secret");
    assert_eq!(tls.len(), 1);
    assert_eq!(tls[0].secret_name.as_deref(), Some("wildcard-cert"));
    let mut tls_hosts = tls[0].hosts.clone().unwrap_or_default();
    tls_hosts.sort();
    let mut hosts = ingress_hosts(&ingress);
    hosts.sort();
    assert_eq!(tls_hosts, hosts);
}

/// Caps on what a hostile (or careless) job can make: a published range over
/// `--max-ports-per-composition`, and a composition that would take the pod over
/// `--max-hosts-per-pod`, are each refused whole, with a log line, the refusal in `/exposures`
/// and the metric; a composition within the caps is exposed as usual.
pub(super) async fn compositions_over_a_cap_are_refused_whole_with_a_reason() {
    let (ns, pod, admin) = setup("caps").await;
    let sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &["--max-hosts-per-pod", "3", "--resync-interval", "2s"],
    )
    .await;
    // 25 container ports (8000-8024), each published: over the default cap of 20.
    let range = compose_file(&[web("web", "range", 80, "8000-8024", &[ENABLE])]);
    pod.compose("range", &range, &["up", "-d"]);
    // Two hosts: within both caps.
    let two = |a: &str, b: &str| {
        compose_file(&[
            web(a, a, 80, "80", &[ENABLE]),
            web(b, b, 80, "80", &[ENABLE]),
        ])
    };
    pod.compose("small", &two("a", "b"), &["up", "-d"]);
    wait_exposed(&admin, &ns, "runner-0", "small").await;
    // Two more hosts would make 4 > 3.
    pod.compose("third", &two("c", "d"), &["up", "-d"]);

    let refused = |reason: &'static str| {
        let sidecar = &sidecar;
        async move {
            eventually(&format!("a logged refusal {reason}"), CONVERGE, || async {
                sidecar
                    .log_lines("composition refused")
                    .into_iter()
                    .find(|l| l["reason"] == reason)
            })
            .await
        }
    };
    let ports = refused("too-many-ports").await;
    let message = ports["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("composition range exposes 25 ports"),
        "{message}"
    );
    let hosts = refused("too-many-hosts").await;
    let message = hosts["message"].as_str().unwrap_or_default();
    assert!(message.contains("--max-hosts-per-pod"), "{message}");

    // Nothing of either, also after a full resync has looked at every composition again.
    sidecar
        .wait_resyncs(sidecar.log_count("full resync done") + 1)
        .await;
    for project in ["range", "third"] {
        assert!(
            services_of(&admin, &ns, "runner-0", project)
                .await
                .is_empty()
        );
        assert!(
            ingresses_of(&admin, &ns, "runner-0", project)
                .await
                .is_empty()
        );
    }
    assert_eq!(
        ingresses_of(&admin, &ns, "runner-0", "small").await.len(),
        1
    );
    let doc = sidecar.exposures();
    let reasons = |name: &str| -> Vec<String> {
        doc["compositions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == name)
            .flat_map(|c| c["reasons"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["reason"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(reasons("range"), ["too-many-ports"], "{doc}");
    assert_eq!(reasons("third"), ["too-many-hosts"], "{doc}");
    let metrics = sidecar.metrics();
    for reason in ["too-many-ports", "too-many-hosts"] {
        assert_eq!(
            metrics.value(
                "compose_ingress_refused_labels_total",
                &[("reason", reason)]
            ),
            1.0,
            "{reason}: counted once, not per pass"
        );
    }
}
