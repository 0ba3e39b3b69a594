//! Property tests: whatever users put in names and labels, naming yields valid DNS names, hosts
//! stay under the operator's domain, and nothing panics.

use std::collections::{BTreeMap, BTreeSet};

use compose_ingress::labels::{self, MAX_SHOWN_CHARS};
use compose_ingress::model::{
    ContainerState, ObservedComposition, ObservedContainer, PlanSettings, Protocol, PublishedPort,
    Reason,
};
use compose_ingress::{naming, plan};
use proptest::prelude::*;

const DOMAIN: &str = "composition.example.com";

/// The unit tests' settings, made lenient enough that a good share of generated label sets is
/// accepted: every service exposed by default, plain containers too, a higher rate-limit cap, one
/// TLS secret, no pod IP.
fn settings(template: &str) -> PlanSettings {
    PlanSettings {
        host_template: template.into(),
        allowed_tls_secrets: vec!["wildcard-tls".into()],
        max_rps: Some(200),
        expose_by_default: true,
        expose_plain_containers: true,
        pod_ip: None,
        ..compose_ingress::test_support::settings()
    }
}

/// Unicode junk, near-valid text, huge values and values around the 1024-byte limit.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9._/~ ,:-]{0,80}",
        "[a-z0-9-]{0,70}(\\.composition\\.example\\.com)?(/[a-z]{0,5})?",
        "[a-z0-9.-]{1020,1030}",
        ".{0,3000}",
        Just(String::new()),
    ]
}

/// Host-ish values: valid and invalid labels, full hosts, other domains, paths, dots, case.
fn host_like() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{0,70}(\\.[a-z]{1,8})?(\\.composition\\.example\\.com|\\.evil\\.com|\\.)?(/[a-z./]{0,6})?"
}

/// Values the label contract accepts for `key` (with the settings below), so that a good share
/// of generated label sets is accepted and the properties about accepted values are exercised.
fn valid_value(key: &'static str) -> BoxedStrategy<String> {
    let host = "[a-z][a-z0-9-]{0,20}[a-z0-9]";
    match key {
        k if k == labels::ENABLE => prop_oneof![Just("true"), Just("True")]
            .prop_map(String::from)
            .boxed(),
        k if k == labels::PORTS => "[1-9][0-9]{0,3}(,[1-9][0-9]{0,3}){0,2}".boxed(),
        k if k == labels::HOST => host.boxed(),
        k if k == labels::PATH => "/([a-z0-9]{1,6}/?){0,3}".boxed(),
        k if k == labels::RATE_LIMIT_RPS => (1u32..=200).prop_map(|n| n.to_string()).boxed(),
        k if k == labels::CLASS || k == labels::KOMPOSE_CLASS => {
            prop_oneof![Just("public"), Just("heavy")]
                .prop_map(String::from)
                .boxed()
        }
        k if k == labels::KOMPOSE_EXPOSE => prop_oneof![
            Just("true".to_string()),
            "[a-z][a-z0-9-]{0,20}[a-z0-9]\\.composition\\.example\\.com(/[a-z]{1,5})?",
        ]
        .boxed(),
        k if k == labels::KOMPOSE_TLS_SECRET => Just("wildcard-tls".to_string()).boxed(),
        _ => text().boxed(),
    }
}

/// Mostly valid values for `key`, sometimes anything at all.
fn value_for(key: &'static str) -> BoxedStrategy<String> {
    prop_oneof![4 => valid_value(key), 1 => text()].boxed()
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

fn is_iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn assert_host_under_domain(host: &str) {
    let label = host
        .strip_suffix(&format!(".{DOMAIN}"))
        .unwrap_or_else(|| panic!("{host} is not under {DOMAIN}"));
    assert!(naming::is_dns_label(label), "{host}");
    assert_eq!(
        naming::host_label_under(host, DOMAIN).as_deref(),
        Some(label)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn names_are_valid(raw in text(), other in text(), port in any::<u16>()) {
        let l = naming::dns_label(&raw);
        prop_assert!(naming::is_dns_label(&l), "{l:?}");
        prop_assert_eq!(naming::dns_label(&l), l.clone());
        let o = naming::object_name(&raw, &other);
        prop_assert!(naming::is_dns_label(&o) && o.starts_with("ci-"), "{o:?}");
        prop_assert_eq!(o, naming::object_name(&raw, &other));
        prop_assert!(is_label_value(&naming::label_value(&raw)));
        prop_assert!(is_iana_svc_name(&naming::port_name(&raw, port)));
        prop_assert!(naming::is_dns_label(&naming::lease_name(&raw)));
        prop_assert_eq!(naming::short_hash(&raw).len(), 8);
    }

    #[test]
    fn distinct_long_inputs_stay_distinct(a in "[a-z]{64,120}", b in "[a-z]{64,120}") {
        prop_assume!(a != b);
        prop_assert_ne!(naming::dns_label(&a), naming::dns_label(&b));
    }

    #[test]
    fn default_template_always_renders_a_host(
        service in text(), project in text(), pod in text(), port in any::<u16>()
    ) {
        let label = naming::render_host_label(
            "{service}-{port}-{project}-{pod}", &service, port, &project, &pod,
        );
        prop_assert!(label.is_ok());
        let label = label.unwrap_or_default();
        prop_assert!(naming::is_dns_label(&label), "{label:?}");
        assert_host_under_domain(&naming::full_host(&label, DOMAIN));
    }

    #[test]
    fn any_template_renders_a_label_or_a_clear_error(
        template in prop_oneof![text(), "[a-z{}.-]{0,30}", "(\\{(service|port|project|pod|x)\\}|[a-z-]){0,6}"],
        service in text(),
    ) {
        let checked = naming::validate_host_template(&template);
        match naming::render_host_label(&template, &service, 80, "p", "pod") {
            Ok(label) => {
                prop_assert!(checked.is_ok());
                prop_assert!(naming::is_dns_label(&label));
                prop_assert!(!template.contains('.'));
            }
            Err(e) => {
                prop_assert!(checked.is_err());
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}

/// Runs `case` on `cases` generated values (as `proptest!` does, shrinking included) and returns
/// how many of them the code under test accepted (`case` returned `Ok(true)`): a property about
/// accepted values is only worth something if enough generated values were accepted.
fn accepted_of<S: Strategy>(
    cases: u32,
    strategy: S,
    case: impl Fn(S::Value) -> Result<bool, TestCaseError>,
) -> u32 {
    let accepted = std::cell::Cell::new(0u32);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    let result = runner.run(&strategy, |value| {
        if case(value)? {
            accepted.set(accepted.get() + 1);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("{} of {cases} generated cases accepted", accepted.get());
    accepted.get()
}

const CASES: u32 = 512;

/// At least this many of `CASES` must reach the branch a property is about (5%).
const ENOUGH: u32 = CASES / 20;

#[test]
fn label_parsing_never_panics_and_hosts_stay_under_the_domain() {
    let keys = [
        labels::ENABLE,
        labels::PORTS,
        labels::HOST,
        labels::PATH,
        labels::RATE_LIMIT_RPS,
        labels::CLASS,
        labels::KOMPOSE_EXPOSE,
        labels::KOMPOSE_CLASS,
        labels::KOMPOSE_TLS_SECRET,
    ];
    let strategy = (
        keys.map(value_for).to_vec(),
        proptest::collection::vec(any::<bool>(), 9),
        text(),
    );
    let accepted = accepted_of(CASES, strategy, |(values, present, junk_key)| {
        let mut map = BTreeMap::new();
        for ((key, value), on) in keys.iter().zip(&values).zip(&present) {
            if *on {
                map.insert((*key).to_string(), value.clone());
            }
        }
        map.insert(junk_key, "x".to_string());
        match labels::parse_service_labels("c", "s", &map, &settings("{service}-{port}")) {
            Ok(e) => {
                for h in &e.hosts {
                    prop_assert!(naming::is_dns_label(&h.label));
                    assert_host_under_domain(&naming::full_host(&h.label, DOMAIN));
                    prop_assert!(labels::is_valid_path(&h.path));
                }
                prop_assert!(labels::is_valid_path(&e.path));
                prop_assert!(e.rate_limit_rps.is_none_or(|r| (1..=200).contains(&r)));
                prop_assert!(e.class.is_none_or(|c| c == "public" || c == "heavy"));
                prop_assert!(e.tls_secret.is_none_or(|t| t == "wildcard-tls"));
                Ok(true)
            }
            Err(refusals) => {
                prop_assert!(!refusals.is_empty());
                for r in refusals {
                    prop_assert!(r.value.chars().count() <= MAX_SHOWN_CHARS);
                    prop_assert!(!r.value.contains('\n'));
                    prop_assert!(!r.message.contains('\n'));
                    prop_assert!(r.message.contains(&r.label));
                }
                Ok(false)
            }
        }
    });
    assert!(
        accepted >= ENOUGH,
        "only {accepted} of {CASES} label sets were accepted"
    );
    assert!(
        CASES - accepted >= ENOUGH,
        "only {} of {CASES} label sets were refused",
        CASES - accepted
    );
}

#[test]
fn accepted_chosen_hosts_are_one_label_under_the_domain() {
    let strategy = (
        prop_oneof![text(), host_like(), valid_value(labels::HOST)],
        prop_oneof![
            text(),
            host_like(),
            "(x\\.composition\\.example\\.com,){0,3}[a-z.]{0,40}",
            valid_value(labels::KOMPOSE_EXPOSE),
        ],
        any::<bool>(),
        any::<bool>(),
    );
    let accepted = accepted_of(
        CASES,
        strategy,
        |(host, kompose, with_host, with_kompose)| {
            let mut map = BTreeMap::new();
            if with_host {
                map.insert(labels::HOST.to_string(), host);
            }
            if with_kompose {
                map.insert(labels::KOMPOSE_EXPOSE.to_string(), kompose);
            }
            // (Not a template of one free placeholder: that one renders every label, so it
            // leaves no chosen host free.)
            let Ok(e) = labels::parse_service_labels("c", "s", &map, &settings("ci-{service}"))
            else {
                return Ok(false);
            };
            for h in &e.hosts {
                assert_host_under_domain(&naming::full_host(&h.label, DOMAIN));
                prop_assert!(labels::is_valid_path(&h.path));
            }
            Ok(!e.hosts.is_empty())
        },
    );
    assert!(
        accepted >= ENOUGH,
        "only {accepted} of {CASES} cases had an accepted chosen host"
    );
}

#[test]
fn plans_route_only_to_hosts_under_the_domain() {
    // Project names: mostly names Compose gives (up to the 128 the sidecar takes), some hostile
    // text (refused whole: the property then holds with nothing exposed).
    let project = prop_oneof![
        3 => "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}",
        1 => text(),
    ];
    let strategy = (
        proptest::collection::vec((text(), text(), text(), any::<u16>(), any::<u16>()), 1..6),
        project,
    );
    let exposed = accepted_of(CASES, strategy, |(services, project)| {
        let containers: Vec<ObservedContainer> = services
            .iter()
            .enumerate()
            .map(
                |(i, (service, host, ports, cport, hport))| ObservedContainer {
                    id: i.to_string(),
                    name: format!("c{i}"),
                    labels: BTreeMap::from([
                        ("com.docker.compose.service".to_string(), service.clone()),
                        (labels::ENABLE.to_string(), "true".to_string()),
                        (labels::HOST.to_string(), host.clone()),
                        (labels::PORTS.to_string(), ports.clone()),
                    ])
                    .into_iter()
                    .filter(|(k, v)| k != labels::HOST || !v.is_empty())
                    .filter(|(k, _)| k != labels::PORTS || i % 2 == 0)
                    .collect(),
                    state: ContainerState::Running,
                    health: Default::default(),
                    created: 0,
                    published: vec![
                        PublishedPort {
                            container_port: *cport,
                            protocol: Protocol::Tcp,
                            host_port: *hport,
                            host_ip: "0.0.0.0".into(),
                        },
                        PublishedPort {
                            container_port: cport.wrapping_add(1),
                            protocol: Protocol::Tcp,
                            host_port: *hport,
                            host_ip: "0.0.0.0".into(),
                        },
                    ],
                },
            )
            .collect();
        // What may reach the project-name annotation: bounded, Compose's characters.
        let name_ok = !project.is_empty()
            && project.len() <= 128
            && project
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        let p = plan::plan(
            &ObservedComposition {
                name: project,
                containers,
            },
            &settings("{service}-{port}-{project}-{pod}"),
        );
        let Some(d) = p.desired else {
            return Ok(false);
        };
        prop_assert!(name_ok, "a composition named {:?} was exposed", d.name);
        prop_assert!(!d.backends.is_empty());
        prop_assert!(naming::is_dns_label(&d.object_name));
        let mut routes = BTreeSet::new();
        let mut ports: BTreeMap<(String, u16), (u16, String)> = BTreeMap::new();
        for b in &d.backends {
            assert_host_under_domain(&b.host);
            prop_assert!(
                routes.insert((b.host.clone(), b.path.clone())),
                "duplicate route"
            );
            prop_assert!((1024..61024).contains(&b.service_port));
            ports.insert(
                (b.service.clone(), b.container_port),
                (b.service_port, b.port_name.clone()),
            );
        }
        let numbers: BTreeSet<u16> = ports.values().map(|(n, _)| *n).collect();
        let names: BTreeSet<&String> = ports.values().map(|(_, n)| n).collect();
        prop_assert_eq!(numbers.len(), ports.len());
        prop_assert_eq!(names.len(), ports.len());
        Ok(true)
    });
    assert!(
        exposed >= ENOUGH,
        "only {exposed} of {CASES} generated compositions were exposed"
    );
}

/// Host templates an operator could write: placeholders and literal text in any order, the
/// default one often.
fn template() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{service}".to_string()),
        Just("{port}".to_string()),
        Just("{project}".to_string()),
        Just("{pod}".to_string()),
        "[a-zA-Z0-9-]{1,4}",
    ];
    prop_oneof![
        1 => Just("{service}-{port}-{project}-{pod}".to_string()),
        3 => proptest::collection::vec(piece, 1..7).prop_map(|p| p.concat()),
    ]
}

/// A pod name as Kubernetes gives one (a DNS subdomain), or any text with at least one letter
/// or digit in it: the shape's only assumption about `{pod}`.
fn pod() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]([a-z0-9.-]{0,60}[a-z0-9])?",
        (text(), "[a-zA-Z0-9]", text()).prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
}

/// Service and composition names: anything (a hand-set compose label can say anything), long
/// ones (shortened renders), and ones that sanitize to nothing.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        text(),
        "[a-zA-Z0-9_.-]{0,30}",
        "[a-z0-9-]{40,80}",
        "[_.-]{0,3}",
    ]
}

#[test]
fn the_shape_of_a_template_covers_everything_it_renders() {
    // Whatever the composition, service, port and pod, a template host matches the template's
    // shape: the shape is a superset of the template name space, not just this pod's.
    let strategy = (template(), name(), any::<u16>(), name(), pod());
    let shortened = accepted_of(
        CASES * 4,
        strategy,
        |(template, service, port, project, pod)| {
            let shape = naming::HostShape::of_template(&template);
            let label = naming::render_host_label(&template, &service, port, &project, &pod);
            let (Ok(shape), Ok(label)) = (shape, label) else {
                prop_assert!(false, "{template} does not parse");
                return Ok(false);
            };
            prop_assert!(
                shape.matches(&label),
                "{template:?} rendered {label:?} for service {service:?} port {port} project {project:?} pod {pod:?}, outside its shape"
            );
            Ok(label.len() >= 62)
        },
    );
    // The shortened form (cut + hash) is its own branch of the shape: it must be exercised.
    assert!(
        shortened >= ENOUGH,
        "only {shortened} of {} renders were shortened",
        CASES * 4
    );
}

/// Chosen host labels: another composition's template host (rendered), or a random label.
fn chosen_label() -> impl Strategy<Value = (String, String)> {
    template().prop_flat_map(|template| {
        let rendered = (name(), any::<u16>(), name(), pod()).prop_map({
            let template = template.clone();
            move |(service, port, project, pod)| {
                naming::render_host_label(&template, &service, port, &project, &pod)
                    .unwrap_or_default()
            }
        });
        let random = prop_oneof![
            "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            "[a-z]{1,6}(-[0-9]{1,5}){0,2}(-[a-z0-9]{1,8}){0,3}",
        ];
        (Just(template), prop_oneof![rendered, random])
    })
}

#[test]
fn chosen_hosts_the_template_could_render_are_refused() {
    let free = accepted_of(CASES * 2, chosen_label(), |(template, label)| {
        prop_assert!(naming::is_dns_label(&label), "{label:?}");
        let shape = naming::HostShape::of_template(&template);
        prop_assert!(shape.is_ok());
        let looks_like_template = shape.is_ok_and(|s| s.matches(&label));
        let map = BTreeMap::from([
            (labels::ENABLE.to_string(), "true".to_string()),
            (labels::HOST.to_string(), label.clone()),
        ]);
        match labels::parse_service_labels("c", "s", &map, &settings(&template)) {
            Ok(e) => {
                prop_assert!(!looks_like_template, "{label} was chosen under {template}");
                prop_assert_eq!(e.hosts.len(), 1);
                Ok(true)
            }
            Err(refusals) => {
                prop_assert!(
                    looks_like_template,
                    "{label} under {template}: {refusals:?}"
                );
                prop_assert_eq!(refusals.len(), 1);
                prop_assert_eq!(refusals[0].reason, Reason::HostLooksLikeTemplate);
                prop_assert_eq!(refusals[0].label.as_str(), labels::HOST);
                prop_assert!(refusals[0].message.contains(&template));
                Ok(false)
            }
        }
    });
    let shaped = CASES * 2 - free;
    assert!(free >= ENOUGH, "only {free} chosen hosts were free");
    assert!(
        shaped >= ENOUGH,
        "only {shaped} chosen hosts looked like the template"
    );
}

/// The rule the README gives for the default template, written out by hand: a `-`-separated
/// part that is a port number (no leading zero, at most 65535) with another part after it, or
/// 62-63 characters that end in `-` and 8 hex digits (a shortened template host).
fn default_rule(label: &str) -> bool {
    let parts: Vec<&str> = label.split('-').collect();
    let port_then_more = parts[..parts.len() - 1]
        .iter()
        .any(|p| p.parse::<u16>().is_ok_and(|n| n.to_string() == *p));
    let n = label.len();
    let shortened = (62..=63).contains(&n)
        && label.as_bytes()[n - 9] == b'-'
        && label[n - 8..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (port_then_more || shortened) && !label.contains("--")
}

#[test]
fn the_default_shape_is_the_documented_rule() {
    let shape = naming::HostShape::of_template("{service}-{port}-{project}-{pod}")
        .expect("the default template");
    let label = prop_oneof![
        "[a-z0-9]{1,4}(-[a-z0-9]{1,6}){0,4}",
        "[a-z]{1,3}(-(0|[1-9][0-9]{0,5}|0[0-9]{1,3})){1,3}(-[a-z]{1,3}){0,2}",
        "[a-f0-9][a-f0-9-]{51,52}[a-f0-9]-[a-f0-9]{8}",
    ];
    let refused = accepted_of(CASES * 2, label, |label| {
        prop_assert!(naming::is_dns_label(&label), "{label:?}");
        let matches = shape.matches(&label);
        prop_assert_eq!(matches, default_rule(&label), "{}", label);
        Ok(matches)
    });
    assert!(
        refused >= ENOUGH,
        "only {refused} labels looked like template hosts"
    );
    assert!(
        CASES * 2 - refused >= ENOUGH,
        "only {} labels were free",
        CASES * 2 - refused
    );
}
