//! The composition the renderers' tests render: two services, three hosts, one of them with
//! two paths, a class, a rate limit and a TLS secret.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{Backend, DesiredComposition, Health, OwnerPod, PlanSettings, RateLimitMode};
use crate::naming;
use crate::objects::{
    PROJECT_NAME_ANNOTATION, SPEC_HASH_ANNOTATION, owner_reference, ownership_labels,
};
use crate::test_support::settings;

pub(super) fn owner() -> OwnerPod {
    OwnerPod {
        name: "runner-3".into(),
        uid: "uid-123".into(),
    }
}

pub(super) fn backend(service: &str, port: u16, host: &str, path: &str, host_port: u16) -> Backend {
    Backend {
        service: service.into(),
        container_port: port,
        host_port,
        port_name: naming::port_name(service, port),
        service_port: if service == "api" {
            3000 + port
        } else {
            2000 + port
        },
        host: host.into(),
        path: path.into(),
        chosen_host: false,
        protocol: None,
        ready: true,
        health: Health::None,
        class: Some("public".into()),
        tls_secret: Some("wildcard-tls".into()),
    }
}

pub(super) fn desired() -> DesiredComposition {
    DesiredComposition {
        name: "Demo_Chat".into(),
        object_name: naming::object_name("runner-3", "Demo_Chat"),
        backends: vec![
            backend("api", 80, "chat.composition.example.com", "/api", 32001),
            backend("web", 80, "chat.composition.example.com", "/", 32000),
            backend("web", 80, "www.composition.example.com", "/", 32000),
            backend("web", 443, "web-443.composition.example.com", "/", 32002),
        ],
        access: None,
        rate_limit_rps: Some(20),
    }
}

pub(super) fn check_meta(meta: &ObjectMeta) {
    assert_eq!(meta.namespace.as_deref(), Some("ci"));
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels, &ownership_labels("runner-3", "Demo_Chat"));
    let ann = meta.annotations.as_ref().unwrap();
    assert_eq!(ann[PROJECT_NAME_ANNOTATION], "Demo_Chat");
    assert_eq!(ann[SPEC_HASH_ANNOTATION].len(), 16);
    assert_eq!(
        meta.owner_references.as_ref().unwrap(),
        &vec![owner_reference(&owner())]
    );
}

pub(super) fn traefik_settings() -> PlanSettings {
    PlanSettings {
        rate_limit: RateLimitMode::TraefikMiddleware,
        namespace: "ci".into(),
        ..settings()
    }
}
