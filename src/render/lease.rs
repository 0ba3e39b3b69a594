//! The Lease that claims a host.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};

use super::metadata::metadata;
use crate::model::{OwnerPod, PlanSettings};
use crate::naming;
use crate::objects::{HOST_ANNOTATION, stamp};

/// The Lease that claims `host` for this pod. It is *created* (never applied) before the route,
/// so two pods racing for one host collide on the name and exactly one create succeeds.
pub(crate) fn host_lease(
    host: &str,
    composition: &str,
    owner: &OwnerPod,
    settings: &PlanSettings,
) -> Lease {
    stamp(Lease {
        metadata: metadata(
            naming::lease_name(host),
            composition,
            settings,
            owner,
            BTreeMap::from([(HOST_ANNOTATION.to_string(), host.to_string())]),
        ),
        spec: Some(LeaseSpec {
            holder_identity: Some(owner.name.clone()),
            ..LeaseSpec::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{check_meta, owner};
    use super::*;
    use crate::test_support::settings;

    #[test]
    fn lease_claims_host() {
        let l = host_lease(
            "chat.composition.example.com",
            "Demo_Chat",
            &owner(),
            &settings(),
        );
        check_meta(&l.metadata);
        assert_eq!(
            l.metadata.name.as_deref(),
            Some(naming::lease_name("chat.composition.example.com").as_str())
        );
        assert_eq!(
            l.metadata.annotations.as_ref().unwrap()[HOST_ANNOTATION],
            "chat.composition.example.com"
        );
        assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("runner-3"));
        let v = serde_json::to_value(host_lease("h", "p", &owner(), &settings())).unwrap();
        assert_eq!(v["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(v["kind"], "Lease");
    }
}
