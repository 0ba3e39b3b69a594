//! The metadata every rendered object carries: its name and namespace, the ownership labels
//! and annotations (src/objects.rs), and the owner reference to the pod.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{OwnerPod, PlanSettings};
use crate::objects::{owner_reference, ownership_annotations, ownership_labels};

pub(super) fn metadata(
    name: String,
    composition: &str,
    settings: &PlanSettings,
    owner: &OwnerPod,
    mut annotations: BTreeMap<String, String>,
) -> ObjectMeta {
    annotations.extend(ownership_annotations(composition));
    ObjectMeta {
        name: Some(name),
        namespace: Some(settings.namespace.clone()),
        labels: Some(ownership_labels(&settings.pod_name, composition)),
        annotations: Some(annotations),
        owner_references: Some(vec![owner_reference(owner)]),
        ..ObjectMeta::default()
    }
}
