//! Fail closed: an access policy the configured route API would not carry never leaves a
//! composition public.

use testbed::{CONVERGE, ENABLE, Sidecar, bed, compose_file, eventually, ingresses_of, web};

use super::{setup, state_of};
use crate::SIDECAR;
use crate::operability::Endpoints;

/// Ingress mode, a policy with only `httpRouteFilters` (which only HTTPRoutes carry): as the
/// default it stops the start with one line naming the policy (exit 2, before any API call);
/// chosen by a label it refuses the composition (`policy-not-carried`, no Ingress) while one
/// under the default policy is exposed. Seen failing on the old code: the sidecar started and
/// exposed the composition with no policy on its Ingress.
#[tokio::test]
async fn a_policy_the_route_api_does_not_carry_never_leaves_a_composition_public() {
    let (ns, pod, admin) = setup("fail-closed").await;
    let file = pod.dir.join("access-policies.yaml");
    let policies = |default: &str| {
        format!(
            "default: {default}\npolicies:\n  sso:\n    traefikMiddlewares: [sso-auth]\n  \
             filters:\n    httpRouteFilters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: X-Policy, value: filters}}]}}}}]\n"
        )
    };
    std::fs::write(&file, policies("filters")).expect("write policy file");
    let path = file.to_str().expect("path").to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_compose-ingress"))
        .env_clear()
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("POD_NAME", "runner-0")
        .env("POD_NAMESPACE", &ns)
        .args([
            "--domain",
            "composition.example.com",
            "--access-policies",
            &path,
        ])
        .output()
        .expect("run compose-ingress");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the default policy `filters` would not protect any composition")
            && stderr.contains("adds nothing to an Ingress"),
        "{stderr}"
    );

    std::fs::write(&file, policies("sso")).expect("write policy file");
    let sidecar = Sidecar::start(&SIDECAR, bed(), &pod, &["--access-policies", &path]).await;
    pod.compose(
        "guarded",
        &compose_file(&[web("web", "guarded", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    pod.compose(
        "filtered",
        &compose_file(&[web(
            "web",
            "filtered",
            80,
            "80",
            &[ENABLE, ("compose-ingress.access", "filters")],
        )]),
        &["up", "-d"],
    );
    let refused = eventually("filtered refused", CONVERGE, || async {
        state_of(&sidecar.exposures(), "filtered").filter(|c| c["state"] == "refused")
    })
    .await;
    assert_eq!(
        refused["reasons"][0]["reason"], "policy-not-carried",
        "{refused}"
    );
    eventually("guarded exposed", CONVERGE, || async {
        (ingresses_of(&admin, &ns, "runner-0", "guarded").await.len() == 1).then_some(())
    })
    .await;
    assert!(
        ingresses_of(&admin, &ns, "runner-0", "filtered")
            .await
            .is_empty(),
        "no route without its policy"
    );
}

/// A policy whose `ingressAnnotations` set the rate-limit annotation itself (to lift the
/// limit): the Ingress carries the composition's limit, the policy's other annotations too.
/// Seen failing with the policy's annotations written last (the Ingress said 100000).
#[tokio::test]
async fn the_rate_limit_annotation_wins_over_a_policy_s() {
    let (ns, pod, admin) = setup("limit-wins").await;
    let file = pod.dir.join("access-policies.yaml");
    std::fs::write(
        &file,
        "default: open\npolicies:\n  open:\n    ingressAnnotations: \
         {nginx.ingress.kubernetes.io/limit-rps: \"100000\", example.org/policy: open}\n",
    )
    .expect("write policy file");
    let path = file.to_str().expect("path").to_string();
    let _sidecar = Sidecar::start(
        &SIDECAR,
        bed(),
        &pod,
        &["--access-policies", &path, "--default-rps", "10"],
    )
    .await;
    pod.compose(
        "limited",
        &compose_file(&[web("web", "limited", 80, "80", &[ENABLE])]),
        &["up", "-d"],
    );
    let annotations = eventually("the Ingress of limited", CONVERGE, || async {
        ingresses_of(&admin, &ns, "runner-0", "limited")
            .await
            .first()
            .and_then(|i| i.metadata.annotations.clone())
    })
    .await;
    assert_eq!(
        annotations
            .get("nginx.ingress.kubernetes.io/limit-rps")
            .map(String::as_str),
        Some("10"),
        "{annotations:?}"
    );
    assert_eq!(
        annotations.get("example.org/policy").map(String::as_str),
        Some("open")
    );
}
