//! Dedicated controllers per class (issue 28): the operator allows a second class, served by a
//! controller of its own, and a composition's `compose-ingress.class` label picks it. Two real
//! controllers run on the bed: the shared Traefik (class `traefik`, the sidecar's default) and
//! Contour with Envoy (class `contour`, tests/testbed/contour.sh). What a user would check:
//! the composition is answered through its own controller's port, and only there.
//!
//! No wall clock decides a negative answer: a controller's 404 is read only after that
//! controller has routed a composition whose Ingress was written *after* the one it must not
//! serve (each controller reads Ingresses from one ordered watch), so it has seen that Ingress.

use testbed::{
    CONVERGE, ComposeVersion, ENABLE, Sidecar, bed, compose_file, doc_block, doc_commands, domain,
    eventually, http_get, ingresses_of, through_controller, unique_namespace, web,
};

use crate::SIDECAR;
use crate::operability::Endpoints;

const CLASS: &str = "compose-ingress.class";

/// The template host of a one-service composition of runner-0 (service `web`, port 80).
fn host(ns: &str, project: &str) -> String {
    format!("web-80-{project}-runner-0.{}", domain(ns))
}

/// The HTTP status a controller's entry `web` answers for `host` now.
fn status(web: &str, host: &str) -> u16 {
    http_get(&format!("{web}/"), Some(host)).0
}

/// One composition of one busybox service answering `page`, with `labels` on it.
fn up(pod: &testbed::RunnerPod, project: &str, labels: &[(&str, &str)]) {
    let yaml = compose_file(&[web("web", &format!("{project}-page"), 80, "80", labels)]);
    pod.compose_as(ComposeVersion::V2, project, &yaml, &["up", "-d"]);
}

/// The ingressClassName of a composition's Ingress, once it exists.
async fn class_of(admin: &kube::Client, ns: &str, project: &str) -> String {
    eventually(&format!("the Ingress of {project}"), CONVERGE, || async {
        ingresses_of(admin, ns, "runner-0", project)
            .await
            .first()
            .and_then(|i| i.spec.as_ref()?.ingress_class_name.clone())
    })
    .await
}

#[tokio::test]
async fn a_class_label_picks_the_dedicated_controller_and_the_shared_one_never_serves_it() {
    let b = bed();
    let (traefik, contour) = (b.get("TRAEFIK_WEB"), b.get("CONTOUR_WEB"));
    let dedicated = b.get("CONTOUR_CLASS");
    let ns = unique_namespace("dedicated");
    let pod = b.runner_pod(&ns, "runner-0");
    let admin = b.admin().await;
    // The operator's configuration, docs/controllers.md's command line: the shared class by
    // default, the dedicated one allowed. The bed's substitution: the test's own domain (the
    // sidecar runner sets it) instead of the doc's.
    let line = doc_commands(
        "docs/controllers.md",
        "controllers-allowed-classes",
        &[("compose-ingress ", ""), ("--domain ci.example.com ", "")],
    );
    let flags: Vec<&str> = line.iter().flat_map(|l| l.split_whitespace()).collect();
    assert_eq!(
        flags,
        ["--ingress-class", "traefik", "--allowed-classes", dedicated],
        "the doc's flags name the bed's two classes"
    );
    let sidecar = Sidecar::start(&SIDECAR, b, &pod, &flags).await;

    // 1. The default class: the shared controller routes it.
    up(&pod, "shared", &[ENABLE]);
    let body = through_controller("Traefik", traefik, &host(&ns, "shared"), CONVERGE).await;
    assert_eq!(body.trim(), "shared-page");
    assert_eq!(class_of(&admin, &ns, "shared").await, "traefik");

    // 2. The dedicated class, chosen by docs/controllers.md's labels: its own controller routes
    // it...
    let example: serde_json::Value =
        serde_yaml_ng::from_str(&doc_block("docs/controllers.md", "controllers-class-label"))
            .expect("docs/controllers.md's compose example is YAML");
    let labels: Vec<(&str, &str)> = example["services"]["web"]["labels"]
        .as_object()
        .expect("the example's labels")
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().expect("a label value")))
        .collect();
    assert!(labels.contains(&(CLASS, dedicated)), "{labels:?}");
    up(&pod, "heavy", &labels);
    let body = through_controller("Contour", contour, &host(&ns, "heavy"), CONVERGE).await;
    assert_eq!(body.trim(), "heavy-page");
    assert_eq!(class_of(&admin, &ns, "heavy").await, dedicated);
    // ...and Contour, having routed an Ingress written after the shared one, has seen that one
    // too: it does not serve the shared class.
    assert_eq!(
        status(contour, &host(&ns, "shared")),
        404,
        "the dedicated controller must not serve the default class"
    );

    // 3. A later default-class composition: once Traefik routes it, Traefik has seen the
    // dedicated composition's Ingress, and answers 404 for it.
    up(&pod, "later", &[ENABLE]);
    through_controller("Traefik", traefik, &host(&ns, "later"), CONVERGE).await;
    assert_eq!(
        status(traefik, &host(&ns, "heavy")),
        404,
        "the shared controller must not serve the dedicated class"
    );
    assert_eq!(
        status(contour, &host(&ns, "heavy")),
        200,
        "still served by its own controller"
    );

    // 4. A class outside the allow-list is refused with its reason, and nothing is written.
    up(&pod, "vip", &[ENABLE, (CLASS, "vip")]);
    let doc = eventually("vip refused in the sidecar's answer", CONVERGE, || async {
        sidecar
            .get("/v1/compositions/vip")
            .ok()
            .filter(|(code, _)| *code == 422)
            .map(|(_, body)| body)
    })
    .await;
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("JSON");
    assert_eq!(doc["state"], "refused", "{doc}");
    assert!(
        doc["refused"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["reason"] == "class-not-allowed")),
        "the refusal names its reason: {doc}"
    );
    let warning = sidecar.wait_log("label refused").await;
    assert_eq!(warning["reason"], "class-not-allowed", "{warning}");
    assert_eq!(warning["value"], "vip", "{warning}");
    // The sidecar has decided (it answered 422): a refused composition gets no objects at all.
    assert!(
        ingresses_of(&admin, &ns, "runner-0", "vip")
            .await
            .is_empty(),
        "no Ingress for a refused class"
    );
    for (name, web) in [("Traefik", traefik), ("Contour", contour)] {
        assert_eq!(status(web, &host(&ns, "vip")), 404, "{name} serves vip");
    }
}
