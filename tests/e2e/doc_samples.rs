//! The docs' sample output (docs/operability.md's `/exposures` document and JSON log line)
//! against what the sidecar says on the bed: the same keys at every level, so a field renamed,
//! added or dropped in the code fails until the doc shows it. Values differ (another pod,
//! another domain) and are not compared.

use std::collections::BTreeSet;

use serde_json::Value;
use testbed::doc_block;

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn items(v: &Value) -> Vec<&Value> {
    v.as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

/// Refusal entries: a label refusal (no `host`) or a host refusal.
fn refusals(c: &Value) -> Vec<&Value> {
    items(&c["refused"])
        .into_iter()
        .chain(items(&c["reasons"]))
        .collect()
}

/// `seen`: `/exposures` documents of the test, between them with compositions in every state the
/// doc shows and a label refusal. Every composition the doc shows is compared with one of the
/// same state in `seen`: its keys, its backends' and its refusals' (a label refusal with a label
/// refusal). An exposed composition's `refused` is omitted when empty (src/status.rs): the doc
/// may show it where the test has none.
pub(crate) fn assert_exposures_like_the_doc(seen: &[&Value]) {
    let doc: Value = serde_json::from_str(&doc_block("docs/operability.md", "exposures-json"))
        .expect("docs/operability.md's /exposures sample is JSON");
    let what = "docs/operability.md exposures-json";
    for s in seen {
        assert_eq!(keys(&doc), keys(s), "{what}: the document's keys vs {s}");
    }
    let compositions: Vec<&Value> = seen
        .iter()
        .flat_map(|s| items(&s["compositions"]))
        .collect();
    let seen_refusals: Vec<&Value> = compositions.iter().flat_map(|c| refusals(c)).collect();
    for shown in items(&doc["compositions"]) {
        let state = &shown["state"];
        let Some(test) = compositions.iter().find(|c| &c["state"] == state) else {
            panic!("{what}: the test saw no composition in state {state}: {seen:?}");
        };
        let (mut want, got) = (keys(shown), keys(test));
        if state == "exposed" && !got.contains("refused") {
            want.remove("refused");
        }
        assert_eq!(
            want, got,
            "{what}: a {state} composition's keys: {shown} vs {test}"
        );
        if let Some(t) = items(&test["backends"]).first() {
            for b in items(&shown["backends"]) {
                assert_eq!(keys(b), keys(t), "{what}: a backend's keys: {b} vs {t}");
            }
        }
        for r in refusals(shown) {
            let of_label = |v: &Value| v.get("host").is_none();
            if !of_label(r) {
                // No test of this one sees a host refusal; hardening::hosts does.
                continue;
            }
            let t = seen_refusals
                .iter()
                .find(|t| of_label(t))
                .unwrap_or_else(|| panic!("{what}: the test saw no label refusal: {seen:?}"));
            assert_eq!(
                keys(r),
                keys(t),
                "{what}: a label refusal's keys: {r} vs {t}"
            );
        }
    }
}

/// `seen`: a `composition exposed` line of the sidecar's JSON log: its keys and its span's are
/// the doc's example line's.
pub(crate) fn assert_log_line_like_the_doc(seen: &Value) {
    let doc: Value = serde_json::from_str(&doc_block("docs/operability.md", "log-line-json"))
        .expect("docs/operability.md's log line sample is JSON");
    let what = "docs/operability.md log-line-json";
    assert_eq!(doc["message"], seen["message"], "{what}: the same line");
    assert_eq!(keys(&doc), keys(seen), "{what}: the line's keys: {seen}");
    assert_eq!(
        keys(&doc["span"]),
        keys(&seen["span"]),
        "{what}: its span's keys: {seen}"
    );
}
