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
pub(crate) fn needs_hand_over(meta: &ObjectMeta, manager: &str) -> bool {
    meta.managed_fields
        .iter()
        .flatten()
        .any(|e| is_update_of(e, manager))
}

/// Whether `manager`'s `Update` entry owns a field its `Apply` entry does not, while an `Apply`
/// entry exists: a field a create set and a later apply dropped, still on the object. Only an
/// apply can remove it, so such an object is written even when its spec is unchanged. Without an
/// `Apply` entry the object is as its create wrote it: nothing left over.
pub(crate) fn has_leftovers(meta: &ObjectMeta, manager: &str) -> bool {
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
pub(crate) fn owns(meta: &ObjectMeta, manager: &str, path: &[&str]) -> bool {
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

/// An entry of another manager on the object itself (not on a subresource such as `status`).
fn is_foreign(entry: &ManagedFieldsEntry, manager: &str) -> bool {
    entry.manager.as_deref() != Some(manager)
        && entry.subresource.as_deref().unwrap_or_default().is_empty()
}

/// Fields another manager may own on our objects without that being an edit to revert: the
/// status (controllers write it, older apiservers record that without a subresource), and a
/// Service's allocated addresses (immutable: an apply could not remove them, it would fail).
const NOT_REVERTED: &[&[&str]] = &[
    &["f:status"],
    &["f:spec", "f:clusterIP"],
    &["f:spec", "f:clusterIPs"],
];

/// `fields` split into the part an edit to revert owns and the part [`NOT_REVERTED`] keeps.
fn split_revertable(fields: &Value) -> (Value, Value) {
    let mut revertable = fields.clone();
    let mut kept = json!({});
    for path in NOT_REVERTED {
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        if let Some(taken) = remove_path(&mut revertable, path) {
            let mut branch = json!({ *last: taken });
            for key in parents.iter().rev() {
                branch = json!({ *key: branch });
            }
            kept = union(&kept, &branch);
        }
    }
    (revertable, kept)
}

/// Removes the field at `path` and returns it; a map or struct left without fields by that goes
/// too (an empty `{}` would read as a field of its own).
fn remove_path(v: &mut Value, path: &[&str]) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    if rest.is_empty() {
        return v.as_object_mut()?.remove(*first);
    }
    let child = v.get_mut(*first)?;
    let taken = remove_path(child, rest)?;
    if child
        .as_object()
        .is_some_and(|o| o.keys().all(|k| k == "."))
    {
        v.as_object_mut()?.remove(*first);
    }
    Some(taken)
}

/// Whether a `fieldsV1` set owns at least one field (a `{}` leaf), not only the marks (`.`) of
/// maps and structs.
fn has_fields(v: &Value) -> bool {
    v.as_object().is_some_and(|o| {
        o.iter().any(|(key, inner)| {
            key != "." && (inner.as_object().is_some_and(|i| i.is_empty()) || has_fields(inner))
        })
    })
}

fn fields_of(e: &ManagedFieldsEntry) -> Value {
    e.fields_v1
        .as_ref()
        .map(|f| f.0.clone())
        .unwrap_or_else(|| json!({}))
}

/// Whether another manager owns a field of the object itself: someone edited it (`kubectl
/// edit`, `patch`, `apply`, another tool). The next write hands those fields to our `Apply`
/// entry ([`hand_over_patch`]), so that the apply sets back the ones we send and removes the
/// ones we do not (an added annotation, rule or port). An object nobody touched has no such
/// entry, so the check costs no write.
pub(crate) fn edited_by_others(meta: &ObjectMeta, manager: &str) -> bool {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|e| is_foreign(e, manager))
        .any(|e| has_fields(&split_revertable(&fields_of(e)).0))
}

/// The merge patch that moves `manager`'s `Update` fields, and the fields other managers own on
/// the object itself (see [`edited_by_others`]; minus [`NOT_REVERTED`]), into `manager`'s `Apply`
/// entry (made when there is none): the whole `managedFields` list (a merge patch replaces a
/// list), and the object's resourceVersion, so that a concurrent write makes it fail (409)
/// instead of losing that write's record. `None`: nothing to hand over.
pub(crate) fn hand_over_patch(meta: &ObjectMeta, manager: &str) -> Option<Value> {
    let entries = meta.managed_fields.clone().unwrap_or_default();
    let mut taken = json!({});
    let mut template: Option<&ManagedFieldsEntry> = None;
    let mut out: Vec<ManagedFieldsEntry> = Vec::new();
    for e in &entries {
        if is_update_of(e, manager) {
            taken = union(&taken, &fields_of(e));
            template = template.or(Some(e));
        } else if is_entry_of(e, manager, "Apply") {
            // Our apply entry takes the fields below, once the loop has gathered them.
        } else if is_foreign(e, manager) {
            let (revertable, kept) = split_revertable(&fields_of(e));
            if !has_fields(&revertable) {
                out.push(e.clone());
                continue;
            }
            taken = union(&taken, &revertable);
            template = template.or(Some(e));
            if has_fields(&kept) {
                let mut rest = e.clone();
                rest.fields_v1 = Some(FieldsV1(kept));
                out.push(rest);
            }
        } else {
            out.push(e.clone());
        }
    }
    let template = template?;
    let apply = entries.iter().find(|e| is_entry_of(e, manager, "Apply"));
    let mut merged = match apply {
        Some(a) => {
            taken = union(&fields_of(a), &taken);
            a.clone()
        }
        None => ManagedFieldsEntry {
            manager: Some(manager.to_string()),
            operation: Some("Apply".to_string()),
            subresource: None,
            ..template.clone()
        },
    };
    merged.fields_v1 = Some(FieldsV1(taken));
    merged.fields_type = Some("FieldsV1".to_string());
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
    fn nothing_to_hand_over_without_our_update_entry_or_an_edit() {
        let applied = meta(vec![
            entry("compose-ingress", "Apply", json!({})),
            entry(
                "someone-else",
                "Update",
                json!({"f:status": {"f:data": {}}}),
            ),
        ]);
        assert!(!needs_hand_over(&applied, "compose-ingress"));
        assert!(hand_over_patch(&applied, "compose-ingress").is_none());
        assert!(hand_over_patch(&ObjectMeta::default(), "compose-ingress").is_none());
    }

    fn status_entry(manager: &str) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            subresource: Some("status".into()),
            ..entry(
                manager,
                "Update",
                json!({"f:status": {"f:loadBalancer": {}}}),
            )
        }
    }

    #[test]
    fn only_another_manager_s_fields_of_the_object_itself_are_an_edit() {
        let ours = entry(
            "compose-ingress",
            "Apply",
            json!({"f:spec": {"f:rules": {}}}),
        );
        let untouched = meta(vec![
            ours.clone(),
            status_entry("traefik"),
            // An older apiserver's status write, without a subresource.
            entry(
                "kube-controller-manager",
                "Update",
                json!({"f:status": {".": {}, "f:x": {}}}),
            ),
            // A Service's allocated address, recorded for whoever created it.
            entry("kubectl", "Update", json!({"f:spec": {"f:clusterIP": {}}})),
            // Marks only: no field.
            entry(
                "kubectl",
                "Update",
                json!({"f:metadata": {"f:annotations": {".": {}}}}),
            ),
        ]);
        assert!(!edited_by_others(&untouched, "compose-ingress"));
        let edited = meta(vec![
            ours,
            entry(
                "kubectl-edit",
                "Update",
                json!({"f:metadata": {"f:annotations": {"f:nginx.ingress.kubernetes.io/configuration-snippet": {}}}}),
            ),
        ]);
        assert!(edited_by_others(&edited, "compose-ingress"));
    }

    #[test]
    fn an_edit_s_fields_go_to_the_apply_entry_and_its_status_and_addresses_stay() {
        let live = meta(vec![
            entry(
                "compose-ingress",
                "Apply",
                json!({"f:spec": {"f:ports": {}}}),
            ),
            entry(
                "kubectl-patch",
                "Update",
                json!({
                    "f:metadata": {"f:annotations": {".": {}, "f:added": {}}},
                    "f:spec": {"f:clusterIP": {}, "f:ports": {"k:{\"port\":1}": {}}},
                    "f:status": {"f:x": {}}
                }),
            ),
            status_entry("traefik"),
        ]);
        let out = patched_entries(&hand_over_patch(&live, "compose-ingress").expect("patch"));
        assert_eq!(out.len(), 3, "{out:#?}");
        let ours = out
            .iter()
            .find(|e| e["manager"] == "compose-ingress")
            .expect("our entry");
        assert_eq!(ours["operation"], "Apply");
        assert_eq!(
            ours["fieldsV1"],
            json!({
                "f:metadata": {"f:annotations": {".": {}, "f:added": {}}},
                "f:spec": {"f:ports": {"k:{\"port\":1}": {}}}
            })
        );
        let theirs = out
            .iter()
            .find(|e| e["manager"] == "kubectl-patch")
            .expect("the edit's entry keeps what is not reverted");
        assert_eq!(
            theirs["fieldsV1"],
            json!({"f:spec": {"f:clusterIP": {}}, "f:status": {"f:x": {}}})
        );
        assert!(out.iter().any(|e| e["manager"] == "traefik"));
    }

    #[test]
    fn an_edit_without_an_apply_entry_of_ours_makes_one() {
        let live = meta(vec![entry(
            "kubectl-edit",
            "Update",
            json!({"f:spec": {"f:rules": {}}}),
        )]);
        let out = patched_entries(&hand_over_patch(&live, "compose-ingress").expect("patch"));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["manager"], "compose-ingress");
        assert_eq!(out[0]["operation"], "Apply");
        assert_eq!(out[0]["fieldsV1"], json!({"f:spec": {"f:rules": {}}}));
    }
}
