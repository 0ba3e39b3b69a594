//! The optional admission guard (`deploy/admission`), on the bed's real apiserver: whoever holds
//! the sidecar's ServiceAccount token (a CI job that got hold of it, say) can create, change or
//! delete only what the sidecar of the token's own pod would; and the sidecar works unchanged
//! under it, in both route APIs and both scopes. The guard is applied as a user applies it
//! (`kubectl kustomize deploy/admission | kubectl apply -n NS`), with the changes a user makes in
//! its ConfigMap: the domain, the pod address ranges, the Gateway.
//!
//! refusals.rs: what a stolen token is refused, one test per rule (each refusal a 403 that names
//! the rule); sidecar.rs: the sidecar's own objects pass.

mod objects;
mod refusals;
mod sidecar;

use std::io::Write;
use std::process::{Command, Stdio};

use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use tokio::sync::OnceCell;

use testbed::{
    Bed, CONVERGE, RunnerPod, bed, doc_commands, domain, eventually, repo_root, run_doc_line_ok,
    unique_namespace,
};

/// Renders `deploy/admission` with the test's settings: its documents, the ConfigMap first.
fn render_guard(bed: &Bed, ns: &str) -> Vec<String> {
    // docs/security.md's command: its render half runs as written (in the repository's root);
    // its apply half is what kubectl_apply runs, with the test's namespace for `ci`, one
    // document at a time (the ConfigMap first).
    let lines = doc_commands("docs/security.md", "admission-apply", &[]);
    let [line] = lines.as_slice() else {
        panic!("docs/security.md admission-apply: expected one line: {lines:?}");
    };
    let (render, apply) = line
        .split_once(" | ")
        .unwrap_or_else(|| panic!("docs/security.md admission-apply: not a pipe: {line}"));
    assert_eq!(apply, "kubectl apply -n ci -f -", "what kubectl_apply runs");
    let mut yaml = run_doc_line_ok(bed, render, &repo_root(), &[]);
    // The bed's pod addresses: runner pods 198.18.<n>.2, the kubelet node's 198.18.232.0/24.
    let settings = [
        ("domain", "composition.example.com", domain(ns)),
        ("podCIDRs", "10.0.0.0/8", "198.18.0.0/16".to_string()),
        // The bed's Gateway (every Gateway test's --gateway).
        ("gateways", "compose-ingress:https", bed.gateway()),
    ];
    for (key, default, value) in settings {
        let line = format!("  {key}: {default}\n");
        assert_eq!(
            yaml.matches(&line).count(),
            1,
            "the ConfigMap's {key} line:\n{yaml}"
        );
        yaml = yaml.replace(&line, &format!("  {key}: {value}\n"));
    }
    let mut docs: Vec<String> = yaml.split("\n---\n").map(str::to_string).collect();
    docs.sort_by_key(|d| !d.contains("kind: ConfigMap"));
    docs
}

fn kubectl_apply(bed: &Bed, ns: &str, yaml: &str) {
    let mut child = Command::new(std::path::Path::new(bed.get("BIN")).join("kubectl"))
        .args([
            "--kubeconfig",
            bed.kubeconfig(),
            "apply",
            "-n",
            ns,
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl apply");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write the guard to kubectl");
    let out = child.wait_with_output().expect("kubectl apply");
    assert!(
        out.status.success(),
        "apply deploy/admission: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kinds the guard covers, as the tests write them.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Service,
    EndpointSlice,
    Ingress,
    HttpRoute,
    Middleware,
}

impl Kind {
    fn resource(self) -> ApiResource {
        let (group, version, kind, plural) = match self {
            Kind::Service => ("", "v1", "Service", "services"),
            Kind::EndpointSlice => ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
            Kind::Ingress => ("networking.k8s.io", "v1", "Ingress", "ingresses"),
            Kind::HttpRoute => ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
            Kind::Middleware => ("traefik.io", "v1alpha1", "Middleware", "middlewares"),
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    }
}

/// `client`'s API for `kind` in `ns`.
pub(crate) fn api(client: &kube::Client, ns: &str, kind: Kind) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &kind.resource())
}

/// Creates the object `value` (its metadata and body as JSON) of `kind` with `client`.
pub(crate) async fn create(
    client: &kube::Client,
    ns: &str,
    kind: Kind,
    value: serde_json::Value,
) -> kube::Result<DynamicObject> {
    let mut object: DynamicObject = serde_json::from_value(value).expect("an object");
    let resource = kind.resource();
    object.types = Some(kube::api::TypeMeta {
        api_version: resource.api_version.clone(),
        kind: resource.kind.clone(),
    });
    api(client, ns, kind)
        .create(&PostParams::default(), &object)
        .await
}

/// The guard's answer to a request it must refuse: a 403 from the policy whose message names
/// `rule` (each validation's message starts with its rule's name). Returns the message.
pub(crate) fn refused<T: std::fmt::Debug>(
    what: &str,
    rule: &str,
    result: kube::Result<T>,
) -> String {
    match result {
        Err(kube::Error::Api(e)) if e.message.contains("compose-ingress-guard") => {
            assert_eq!(e.code, 403, "{what}: {e:?}");
            assert!(
                e.message.contains(&format!("{rule}:")),
                "{what}: refused, but not by rule {rule:?}: {}",
                e.message
            );
            e.message
        }
        other => panic!("{what}: the guard must refuse it (rule {rule}), got {other:?}"),
    }
}

/// The ownership labels of `pod`'s objects (src/objects.rs), for `project`.
pub(crate) fn ours(pod: &str) -> serde_json::Value {
    serde_json::json!({
        "app.kubernetes.io/managed-by": "compose-ingress",
        "compose-ingress/pod": pod,
        "compose-ingress/project": "x",
    })
}

/// A name as the sidecar of `pod` names its objects (src/naming.rs `object_name`:
/// `ci-<project>-<pod>-<hash>`).
pub(crate) fn name_of(pod: &str, project: &str) -> String {
    format!("ci-{project}-{pod}-0123abcd")
}

/// A namespace with the guard's parameters, where the guard acts, and a runner pod in it with
/// the sidecar's ServiceAccount and its pod-bound token.
pub(crate) struct Guarded {
    pub(crate) ns: String,
    pub(crate) pod: RunnerPod,
    pub(crate) admin: kube::Client,
    /// The sidecar's token, as a CI job that took it from the node would hold it.
    pub(crate) stolen: kube::Client,
}

/// The policy and its binding are cluster-wide, and the apiserver loads them asynchronously:
/// one left by an earlier run on a kept bed could answer for this one. So the first test of a
/// run removes them, sees a bad request get through with its namespace's parameters in place,
/// then applies the policy and sees it refused: a refusal can then only come from this
/// checkout's policy. The tests after it only add their namespace's parameters.
static POLICY: OnceCell<()> = OnceCell::const_new();

impl Guarded {
    /// Objects as this pod's sidecar writes them.
    pub(crate) fn objects(&self) -> objects::Objects {
        objects::Objects {
            ns: self.ns.clone(),
            pod: self.pod.name.clone(),
            uid: self.pod.uid.clone(),
            ip: self.pod.ip.clone(),
            domain: domain(&self.ns),
        }
    }
}

pub(crate) async fn guarded(test: &str) -> Guarded {
    let bed = bed();
    let ns = unique_namespace(test);
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    let token = pod.sidecar_token(&admin).await;
    let stolen = bed.client_with_token(&token).await;
    let docs = render_guard(bed, &ns);
    kubectl_apply(bed, &ns, &docs[0]);
    let g = Guarded {
        ns,
        pod,
        admin,
        stolen,
    };
    // An Ingress of the pod for a host outside the domain: refused wherever the guard acts.
    let evil = g.objects().ingress("evil", "evil.attacker.example.org");
    let ingresses = api(&g.stolen, &g.ns, Kind::Ingress);
    let name = g.objects().name("evil");
    let through = || async {
        let created = create(&g.stolen, &g.ns, Kind::Ingress, evil.clone()).await;
        let _ = ingresses.delete(&name, &DeleteParams::default()).await;
        created
    };
    POLICY
        .get_or_init(|| async {
            let deleted = bed.kubectl(&[
                "delete",
                "validatingadmissionpolicybinding/compose-ingress-guard",
                "validatingadmissionpolicy/compose-ingress-guard",
                "--ignore-not-found",
            ]);
            assert!(deleted.status.success(), "delete an old guard");
            eventually("no guard acts before it is applied", CONVERGE, || async {
                through().await.is_ok().then_some(())
            })
            .await;
            kubectl_apply(bed, &g.ns, &docs[1..].join("\n---\n"));
        })
        .await;
    let message = eventually("the guard acts in the namespace", CONVERGE, || async {
        match through().await {
            Ok(_) => None,
            result => Some(refused("an Ingress for another domain", "hosts", result)),
        }
    })
    .await;
    assert!(
        message.contains(&format!("one DNS label under {}", domain(&g.ns))),
        "{message}"
    );
    g
}
