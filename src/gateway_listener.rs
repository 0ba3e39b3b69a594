//! Gateway mode: the scheme of the URLs is the one the Gateway's listener serves, which only the
//! Gateway says (TLS is terminated there, not in the route). Read once at start-up, before the
//! reconciler hands out any URL; a listener changed later is seen at the sidecar's next start.
//!
//! Reading the Gateway needs `get` on it (deploy/overlays/gateway/rbac.yaml grants it for the
//! overlay's Gateway). Without it the URLs say `http://`, and one warning says how to fix it.

use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api_reach::describe;
use crate::model::GatewayRef;

/// Why the listener's scheme is not known.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("cannot read Gateway {namespace}/{name}: {}", describe(source))]
    Read {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error(
        "Gateway {namespace}/{name} has no listener named {section} (it has: {listeners}); fix: \
         --gateway NAME:SECTION must name one of them"
    )]
    NoSuchListener {
        namespace: String,
        name: String,
        section: String,
        listeners: String,
    },
}

/// Whether the URLs of routes attached to `gateway` are https: the named listener serves HTTPS
/// (or TLS), or, without a section name, some listener for hosts under `domain` does (a route
/// attached to both an HTTP and an HTTPS listener is handed out by its secure URL).
pub(crate) fn serves_https(
    spec: &Value,
    gateway: &GatewayRef,
    namespace: &str,
    domain: &str,
) -> Result<bool, ListenerError> {
    let listeners = spec["listeners"].as_array().cloned().unwrap_or_default();
    let secure = |l: &Value| matches!(l["protocol"].as_str(), Some("HTTPS" | "TLS"));
    match &gateway.section_name {
        Some(section) => listeners
            .iter()
            .find(|l| l["name"].as_str() == Some(section))
            .map(secure)
            .ok_or_else(|| ListenerError::NoSuchListener {
                namespace: namespace.to_string(),
                name: gateway.name.clone(),
                section: section.clone(),
                listeners: listeners
                    .iter()
                    .filter_map(|l| l["name"].as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        None => Ok(listeners.iter().any(|l| {
            let for_domain = match l["hostname"].as_str() {
                None => true,
                Some(h) => {
                    h.trim_start_matches("*.") == domain || h.ends_with(&format!(".{domain}"))
                }
            };
            secure(l) && for_domain
        })),
    }
}

/// Reads the Gateway and decides the scheme; retried a few times when the apiserver does not
/// answer (it may be starting with the pod), not when it answered no.
pub async fn read_scheme(
    client: kube::Client,
    gateway: &GatewayRef,
    own_namespace: &str,
    domain: &str,
    cancel: &CancellationToken,
) -> Result<bool, ListenerError> {
    let namespace = gateway.namespace.as_deref().unwrap_or(own_namespace);
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "Gateway",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &resource);
    let mut delays = crate::retry::backoff(Duration::from_millis(500), Duration::from_secs(4));
    let mut attempts = 0;
    let object = loop {
        attempts += 1;
        let answer = tokio::select! {
            a = api.get(&gateway.name) => a,
            _ = cancel.cancelled() => return Ok(false),
        };
        match answer {
            Ok(object) => break object,
            Err(e) if attempts >= 4 || matches!(e, kube::Error::Api(_)) => {
                return Err(ListenerError::Read {
                    namespace: namespace.to_string(),
                    name: gateway.name.clone(),
                    source: Box::new(e),
                });
            }
            Err(_) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(4));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Ok(false),
                }
            }
        }
    };
    serves_https(&object.data["spec"], gateway, namespace, domain)
}

/// The scheme for the settings: the Gateway's, or http with a warning that names the fix.
pub async fn https_or_warn(
    client: kube::Client,
    gateway: &GatewayRef,
    own_namespace: &str,
    domain: &str,
    cancel: &CancellationToken,
) -> bool {
    match read_scheme(client, gateway, own_namespace, domain, cancel).await {
        Ok(https) => {
            info!(
                gateway = %gateway.name,
                scheme = if https { "https" } else { "http" },
                "the Gateway's listener decides the URLs' scheme"
            );
            https
        }
        Err(e) => {
            warn!(
                "{e}; the URLs say http:// (fix: give this pod's ServiceAccount `get` on that \
                 Gateway, as deploy/overlays/gateway/rbac.yaml does, or fix --gateway)"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn reference(section: Option<&str>) -> GatewayRef {
        GatewayRef {
            namespace: None,
            name: "compose-ingress".into(),
            section_name: section.map(str::to_string),
            https: false,
        }
    }

    fn spec() -> Value {
        json!({"listeners": [
            {"name": "web", "protocol": "HTTP", "port": 80},
            {"name": "https", "protocol": "HTTPS", "port": 443, "hostname": "*.composition.example.com"},
            {"name": "other", "protocol": "HTTPS", "port": 443, "hostname": "*.elsewhere.example.org"},
        ]})
    }

    #[test]
    fn the_named_listener_decides_and_a_missing_one_is_named() {
        let d = "composition.example.com";
        assert!(serves_https(&spec(), &reference(Some("https")), "ci", d).expect("known"));
        assert!(!serves_https(&spec(), &reference(Some("web")), "ci", d).expect("known"));
        let e = serves_https(&spec(), &reference(Some("websecure")), "ci", d)
            .expect_err("no such listener")
            .to_string();
        assert!(
            e.contains("websecure") && e.contains("web, https, other"),
            "{e}"
        );
    }

    #[test]
    fn without_a_section_an_https_listener_for_the_domain_makes_them_https() {
        let r = reference(None);
        assert!(serves_https(&spec(), &r, "ci", "composition.example.com").expect("ok"));
        assert!(!serves_https(&spec(), &r, "ci", "another.example.net").expect("ok"));
        let plain = json!({"listeners": [{"name": "web", "protocol": "HTTP", "port": 80}]});
        assert!(!serves_https(&plain, &r, "ci", "composition.example.com").expect("ok"));
    }
}
