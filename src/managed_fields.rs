//! One field manager per object (pure): the fields a create (`POST`) recorded under an `Update`
//! entry of our manager are handed to our `Apply` entry.
//!
//! Why: an object's first write must be a create (only a create fails on a name that exists, so
//! the sidecar never writes into someone else's object), and later writes are server-side
//! applies. The apiserver records the create as an `Update` by our manager and the applies as an
//! `Apply` by it: two entries. An apply removes only the fields its own entry owns, so a field the
//! create set and a later apply no longer sends (a removed rate-limit annotation, a dropped
//! Service port, the selector of a Service written before health-gated routing) would stay on the
//! object for ever. Moving the create's fields into the `Apply` entry (what kubectl's
//! client-side-apply upgrade does, `k8s.io/client-go/util/csaupgrade`) makes the next apply
//! the sole owner. Done once per object, right before the first apply it needs (a create alone
//! costs no second write: what it wrote is what is desired), and at once for an object whose
//! create's entry owns fields the last apply no longer sent ([`has_leftovers`]: objects an older
//! sidecar created and later changed).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta};
use serde_json::{Value, json};

/// Whether `entry` is `manager`'s record of `operation` (`Update`: a create or other non-apply
/// write; `Apply`) on the object itself, not on a subresource.
fn is_entry_of(entry: &ManagedFieldsEntry, manager: &str, operation: &str) -> bool {
    entry.manager.as_deref() == Some(manager)
        && entry.operation.as_deref() == Some(operation)
        && entry.subresource.as_deref().unwrap_or_default().is_empty()
}

fn is_update_of(entry: &ManagedFieldsEntry, manager: &str) -> bool {
    is_entry_of(entry, manager, "Update")
}

/// Whether some field of the object is still owned by `manager`'s `Update` entry.
pub fn needs_hand_over(meta: &ObjectMeta, manager: &str) -> bool {
    meta.managed_fields
        .iter()
        .flatten()
        .any(|e| is_update_of(e, manager))
}

/// Whether `manager`'s `Update` entry owns a field its `Apply` entry does not, while an `Apply`
/// entry exists: a field a create set and a later apply dropped, still on the object. Only an
/// apply can remove it, so such an object is written even when its spec is unchanged. Without an
/// `Apply` entry the object is as its create wrote it: nothing left over.
pub fn has_leftovers(meta: &ObjectMeta, manager: &str) -> bool {
    let entries = meta.managed_fields.iter().flatten();
    let Some(apply) = entries.clone().find(|e| is_entry_of(e, manager, "Apply")) else {
        return false;
    };
    let fields = |e: &ManagedFieldsEntry| e.fields_v1.as_ref().map(|f| f.0.clone());
    let applied = fields(apply).unwrap_or_else(|| json!({}));
    entries
        .filter(|e| is_update_of(e, manager))
        .filter_map(fields)
        .any(|created| !covers(&applied, &created))
}

/// Whether every field of `b` (its leaves, not the `.` marks of the maps and structs that hold
/// them) is in `a`.
fn covers(a: &Value, b: &Value) -> bool {
    match b {
        Value::Object(b) => b.iter().all(|(key, value)| {
            if key == "." {
                return true;
            }
            match a.get(key) {
                Some(inner) => covers(inner, value),
                None => only_marks(value),
            }
        }),
        _ => true,
    }
}

/// A subtree that is only the mark of a map or struct (`{".": {}}`), no field of its own. (`{}`
/// is a leaf: a field.)
fn only_marks(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| !o.is_empty() && o.keys().all(|k| k == "."))
}

/// Whether one of `manager`'s entries owns the field at `path` (`["f:spec", "f:selector"]`).
pub fn owns(meta: &ObjectMeta, manager: &str, path: &[&str]) -> bool {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|e| e.manager.as_deref() == Some(manager))
        .filter_map(|e| e.fields_v1.as_ref())
        .any(|f| path.iter().try_fold(&f.0, |v, key| v.get(*key)).is_some())
}

/// The union of two `fieldsV1` sets (nested objects of `f:`/`k:`/`v:`/`i:` keys, `{}` leaves).
fn union(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = a.clone();
            for (key, value) in b {
                let merged = match out.get(key) {
                    Some(existing) => union(existing, value),
                    None => value.clone(),
                };
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        (a, _) => a.clone(),
    }
}

/// The merge patch that moves `manager`'s `Update` fields into its `Apply` entry (made from the
/// `Update` entry when there is none): the whole `managedFields` list (a merge patch replaces a
/// list), and the object's resourceVersion, so that a concurrent write makes it fail (409)
/// instead of losing that write's record. `None`: nothing to hand over.
pub fn hand_over_patch(meta: &ObjectMeta, manager: &str) -> Option<Value> {
    let entries = meta.managed_fields.clone().unwrap_or_default();
    let updates: Vec<&ManagedFieldsEntry> = entries
        .iter()
        .filter(|e| is_update_of(e, manager))
        .collect();
    let first = *updates.first()?;
    let fields = |e: &ManagedFieldsEntry| {
        e.fields_v1
            .as_ref()
            .map(|f| f.0.clone())
            .unwrap_or_else(|| json!({}))
    };
    let mut owned = updates
        .iter()
        .fold(json!({}), |acc, e| union(&acc, &fields(e)));
    let apply = entries.iter().find(|e| is_entry_of(e, manager, "Apply"));
    let mut merged = match apply {
        Some(a) => {
            owned = union(&fields(a), &owned);
            a.clone()
        }
        None => ManagedFieldsEntry {
            operation: Some("Apply".to_string()),
            ..first.clone()
        },
    };
    merged.fields_v1 = Some(FieldsV1(owned));
    merged.fields_type = Some("FieldsV1".to_string());
    let mut out: Vec<ManagedFieldsEntry> = entries
        .iter()
        .filter(|e| !is_update_of(e, manager) && !is_entry_of(e, manager, "Apply"))
        .cloned()
        .collect();
    out.push(merged);
    Some(json!({"metadata": {"resourceVersion": meta.resource_version, "managedFields": out}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(manager: &str, operation: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            api_version: Some("v1".into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            subresource: None,
            time: None,
        }
    }

    fn meta(entries: Vec<ManagedFieldsEntry>) -> ObjectMeta {
        ObjectMeta {
            resource_version: Some("42".into()),
            managed_fields: Some(entries),
            ..ObjectMeta::default()
        }
    }

    fn patched_entries(patch: &Value) -> Vec<Value> {
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        patch["metadata"]["managedFields"]
            .as_array()
            .expect("entries")
            .clone()
    }

    #[test]
    fn a_created_object_s_fields_become_the_apply_entry_s() {
        let created = meta(vec![entry(
            "compose-ingress",
            "Update",
            json!({"f:metadata": {"f:annotations": {".": {}, "f:rps": {}}}}),
        )]);
        assert!(needs_hand_over(&created, "compose-ingress"));
        let out = patched_entries(&hand_over_patch(&created, "compose-ingress").expect("patch"));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["operation"], "Apply");
        assert_eq!(out[0]["manager"], "compose-ingress");
        assert_eq!(
            out[0]["fieldsV1"],
            json!({"f:metadata": {"f:annotations": {".": {}, "f:rps": {}}}})
        );
    }

    #[test]
    fn create_and_apply_entries_merge_and_other_managers_stay() {
        let live = meta(vec![
            entry(
                "compose-ingress",
                "Update",
                json!({"f:metadata": {"f:annotations": {"f:rps": {}}}, "f:spec": {"f:selector": {}}}),
            ),
            entry("kube-controller-manager", "Update", json!({"f:status": {}})),
            entry(
                "compose-ingress",
                "Apply",
                json!({"f:metadata": {"f:annotations": {"f:hash": {}}}, "f:spec": {"f:ports": {}}}),
            ),
        ]);
        let out = patched_entries(&hand_over_patch(&live, "compose-ingress").expect("patch"));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0]["manager"], "kube-controller-manager");
        assert_eq!(
            out[1]["fieldsV1"],
            json!({
                "f:metadata": {"f:annotations": {"f:hash": {}, "f:rps": {}}},
                "f:spec": {"f:ports": {}, "f:selector": {}},
            })
        );
        assert_eq!(out[1]["operation"], "Apply");
    }

    #[test]
    fn leftovers_are_fields_the_create_set_and_the_last_apply_did_not() {
        let created = json!({"f:metadata": {"f:annotations": {".": {}, "f:hash": {}, "f:rps": {}}}, "f:spec": {".": {}, "f:ports": {}}});
        // Only created: as desired, nothing left over.
        assert!(!has_leftovers(
            &meta(vec![entry("compose-ingress", "Update", created.clone())]),
            "compose-ingress"
        ));
        // Applied since with every field the create set: nothing left over.
        let all = json!({"f:metadata": {"f:annotations": {"f:hash": {}, "f:rps": {}}}, "f:spec": {"f:ports": {}}});
        assert!(!has_leftovers(
            &meta(vec![
                entry("compose-ingress", "Update", created.clone()),
                entry("compose-ingress", "Apply", all)
            ]),
            "compose-ingress"
        ));
        // Applied since without the rate-limit annotation: it is still on the object.
        let without =
            json!({"f:metadata": {"f:annotations": {"f:hash": {}}}, "f:spec": {"f:ports": {}}});
        assert!(has_leftovers(
            &meta(vec![
                entry("compose-ingress", "Update", created),
                entry("compose-ingress", "Apply", without)
            ]),
            "compose-ingress"
        ));
        // Someone else's fields are not ours to remove.
        assert!(!has_leftovers(
            &meta(vec![
                entry("kubectl", "Update", json!({"f:spec": {"f:selector": {}}})),
                entry(
                    "compose-ingress",
                    "Apply",
                    json!({"f:spec": {"f:ports": {}}})
                ),
            ]),
            "compose-ingress"
        ));
    }

    #[test]
    fn owned_fields_by_path() {
        let m = meta(vec![
            entry(
                "compose-ingress",
                "Update",
                json!({"f:spec": {"f:selector": {}}}),
            ),
            entry("kubectl", "Update", json!({"f:spec": {"f:type": {}}})),
        ]);
        assert!(owns(&m, "compose-ingress", &["f:spec", "f:selector"]));
        assert!(!owns(&m, "compose-ingress", &["f:spec", "f:type"]));
        assert!(!owns(&m, "kubectl", &["f:spec", "f:selector"]));
    }

    #[test]
    fn nothing_to_hand_over_without_our_update_entry() {
        let applied = meta(vec![
            entry("compose-ingress", "Apply", json!({})),
            entry("someone-else", "Update", json!({"f:data": {}})),
        ]);
        assert!(!needs_hand_over(&applied, "compose-ingress"));
        assert!(hand_over_patch(&applied, "compose-ingress").is_none());
        assert!(hand_over_patch(&ObjectMeta::default(), "compose-ingress").is_none());
    }
}
