//! Objects as the sidecar of one pod writes them (src/render/): each test of refusals.rs takes
//! one, changes the one thing its rule forbids, and sees it refused; unchanged, each passes.

use serde_json::{Value, json};

use super::{name_of, ours};

/// The pod whose sidecar writes the objects, and where.
pub(crate) struct Objects {
    pub(crate) ns: String,
    pub(crate) pod: String,
    pub(crate) uid: String,
    pub(crate) ip: String,
    pub(crate) domain: String,
}

impl Objects {
    pub(crate) fn meta(&self, name: &str) -> Value {
        json!({
            "name": name,
            "labels": ours(&self.pod),
            "annotations": {"compose-ingress/project-name": "x"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": self.pod,
                "uid": self.uid, "controller": false, "blockOwnerDeletion": false}],
        })
    }

    pub(crate) fn name(&self, project: &str) -> String {
        name_of(&self.pod, project)
    }

    pub(crate) fn host(&self, label: &str) -> String {
        format!("{label}.{}", self.domain)
    }

    pub(crate) fn service(&self, project: &str) -> Value {
        json!({
            "metadata": self.meta(&self.name(project)),
            "spec": {"type": "ClusterIP", "ports": [{"name": "p0123456789", "port": 2080,
                "targetPort": 32000, "protocol": "TCP"}]},
        })
    }

    pub(crate) fn slice(&self, project: &str) -> Value {
        let service = self.name(project);
        let mut meta = self.meta(&format!("{service}-89abcdef"));
        meta["labels"]["kubernetes.io/service-name"] = json!(service);
        meta["labels"]["endpointslice.kubernetes.io/managed-by"] = json!("compose-ingress.io");
        json!({
            "metadata": meta,
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self.ip], "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "namespace": self.ns, "name": self.pod, "uid": self.uid}}],
            "ports": [{"name": "p0123456789", "port": 32000, "protocol": "TCP"}],
        })
    }

    pub(crate) fn ingress(&self, project: &str, host: &str) -> Value {
        let name = self.name(project);
        json!({
            "metadata": self.meta(&name),
            "spec": {"ingressClassName": "traefik", "rules": [{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": name,
                    "port": {"name": "p0123456789"}}}}]}}]},
        })
    }

    /// An HTTPRoute attached to the Gateway `gateway` (`namespace/name`).
    pub(crate) fn http_route(&self, project: &str, host: &str, gateway: &str) -> Value {
        let service = self.name(project);
        let (gw_ns, gw_name) = gateway.split_once('/').expect("namespace/name");
        json!({
            "metadata": self.meta(&format!("{service}-76543210")),
            "spec": {
                "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                    "namespace": gw_ns, "name": gw_name}],
                "hostnames": [host],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"group": "", "kind": "Service", "name": service, "port": 2080}]}],
            },
        })
    }

    pub(crate) fn middleware(&self, project: &str) -> Value {
        json!({
            "metadata": self.meta(&self.name(project)),
            "spec": {"rateLimit": {"average": 5, "period": "1s", "burst": 5,
                "sourceCriterion": {"requestHost": true}}},
        })
    }
}
