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

/// The busybox stand-in for an image of docs/labels.md's examples (the bed reaches no
/// registry): `script` (ending in a foreground httpd) as its command.
fn stand_in(script: &str) -> String {
    format!(
        "    image: compose-ingress-test/busybox:1\n    stop_signal: SIGKILL\n    command: [\"sh\", \"-c\", {}]\n",
        serde_json::Value::String(script.to_string())
    )
}

/// The URL in the comment of service `name`'s line of a compose file (`  web:   # http://…`).
fn commented_url(file: &str, name: &str) -> String {
    let line = file
        .lines()
        .find(|l| l.starts_with(&format!("  {name}:")))
        .unwrap_or_else(|| panic!("no service {name} in:\n{file}"));
    let (_, comment) = line
        .split_once('#')
        .unwrap_or_else(|| panic!("no comment on {line:?}"));
    let at = comment
        .find("http")
        .unwrap_or_else(|| panic!("no URL in the comment {comment:?}"));
    comment[at..]
        .split_whitespace()
        .next()
        .expect("a URL")
        .to_string()
}

/// docs/labels.md's "Examples" compose file, run as project `demo` in pod `runner-0` (the
/// names its comments' URLs use): each service answers at the URL its comment gives. The images
/// are the bed's busybox (my/api serving a page of its own on 8080 and on 9000, my/docs on
/// 8000), the domain the test's; the TLS secret the kompose-style service names is the
/// operator's to allow (`--allowed-tls-secrets`), here a self-signed wildcard of the domain.
pub(super) async fn the_label_examples_answer_at_the_urls_their_comments_give() {
    let (ns, pod, admin) = setup("labelexamples").await;
    let dom = domain(&ns);
    let file = testbed::substitute(
        "docs/labels.md labels-examples",
        &testbed::doc_block("docs/labels.md", "labels-examples"),
        &[
            (
                "    image: nginx\n",
                &stand_in("echo web-page > /www/index.html && exec httpd -f -p 80 -h /www"),
            ),
            (
                "    image: my/api\n",
                &stand_in(
                    "mkdir -p /w8080 /w9000 && echo api-root > /w8080/index.html \
                     && echo api-8080 > /w8080/api && echo api-9000 > /w9000/api \
                     && echo api-9000-root > /w9000/index.html && httpd -p 9000 -h /w9000 \
                     && exec httpd -f -p 8080 -h /w8080",
                ),
            ),
            (
                "    image: my/docs\n",
                &stand_in("echo docs-page > /www/index.html && exec httpd -f -p 8000 -h /www"),
            ),
            ("composition.example.com", &dom),
        ],
    );
    let yaml: serde_json::Value = serde_yaml_ng::from_str(&file).expect("the examples are YAML");
    let secret = yaml["services"]["docs"]["labels"]["kompose.service.expose.tls-secret"]
        .as_str()
        .expect("the docs service names a TLS secret");
    let wildcard = format!("*.{dom}");
    let cert = testbed::self_signed(&pod.dir, "examples", "examples-wildcard", &[&wildcard]);
    testbed::create_tls_secret(&admin, &ns, secret, &cert).await;
    let _sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--allowed-tls-secrets", secret]).await;
    pod.compose_as(ComposeVersion::V2, "demo", &file, &["up", "-d"]);

    // web: its template host, over plain HTTP (the operator set no --tls-secret).
    let web_url = commented_url(&file, "web");
    assert_eq!(
        web_url,
        format!("http://{}/", host_of(&ns, "web", 80, "demo", "runner-0"))
    );
    let web_host = web_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    assert_eq!(through_ingress(&web_host).await.trim(), "web-page");

    // api: the chosen host at the chosen path, only to port 8080.
    let api_url = commented_url(&file, "api");
    let (api_host, api_path) = api_url
        .trim_start_matches("http://")
        .split_once('/')
        .map(|(h, p)| (h.to_string(), format!("/{p}")))
        .expect("a host and a path");
    let api = eventually(&format!("Traefik routes {api_url}"), CONVERGE, || async {
        let (code, body) = super::kompose::traefik(&api_host, &api_path);
        (code == 200).then_some(body)
    })
    .await;
    assert_eq!(api.trim(), "api-8080", "{api_url} is port 8080's");
    // The composition's routes are in, web's and api's: what is not routed is not.
    super::kompose::assert_not_routed(&api_host, "/");
    super::kompose::assert_not_routed(&host_of(&ns, "api", 9000, "demo", "runner-0"), "/");
    super::kompose::assert_not_routed(&host_of(&ns, "api", 8080, "demo", "runner-0"), "/");

    // docs: kompose's host, over HTTPS with the secret its label names.
    let docs_url = commented_url(&file, "docs");
    let docs_host = docs_url
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("{docs_url} is an https URL"))
        .trim_end_matches('/')
        .to_string();
    assert_eq!(
        super::kompose::https_trusting(&docs_host, &cert)
            .await
            .trim(),
        "docs-page"
    );
    let served = testbed::served_certificate(&docs_host);
    assert!(served.contains("CN = examples-wildcard"), "{served}");

    let hosts: BTreeSet<String> = ingresses_of(&admin, &ns, "runner-0", "demo")
        .await
        .iter()
        .flat_map(ingress_hosts)
        .collect();
    assert_eq!(
        hosts,
        BTreeSet::from([
            web_host.clone(),
            api_host.clone(),
            format!("docs-demo.{dom}")
        ]),
        "one host per service, none for api's 9000 (docs' Ingress, with its TLS, answered above)"
    );
}
