//! Patch flavours: JSON merge patch, JSON patch, an approximation of strategic merge patch, and a simplified
//! server-side apply with per-manager field ownership.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::status::{ApiError, ApiResult};

/// List fields whose elements are merged by `name` in strategic merge patch (the core kinds kubectl patches).
const MERGE_BY_NAME: &[&str] = &[
    "containers",
    "initContainers",
    "ephemeralContainers",
    "env",
    "volumes",
    "volumeMounts",
    "ports",
    "imagePullSecrets",
    "conditions",
    "ownerReferences",
];

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON patch. Like kube-apiserver (evanphx/json-patch), a `test` of `null` against an absent path
/// succeeds (kube-rs' finalizer helper relies on this).
pub fn json_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let ops = patch.as_array().ok_or_else(|| {
        ApiError::bad_request("the body of the request is not a valid JSON patch: expected an array")
    })?;
    for (i, op) in ops.iter().enumerate() {
        let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
        if op.get("op").and_then(Value::as_str) == Some("test")
            && op.get("value").is_none_or(Value::is_null)
            && target.pointer(path).is_none_or(Value::is_null)
        {
            continue;
        }
        let p: json_patch::Patch = serde_json::from_value(Value::Array(vec![op.clone()])).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request is not a valid JSON patch: operation {i}: {e}"
            ))
        })?;
        json_patch::patch(target, &p).map_err(|e| {
            ApiError::new(
                422,
                "Invalid",
                format!("the server rejected our request due to an error in our request: operation {i}: {e}"),
            )
        })?;
    }
    Ok(())
}

fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "ports" => Some("containerPort"),
        "volumeMounts" => Some("mountPath"),
        f if MERGE_BY_NAME.contains(&f) => Some("name"),
        _ => None,
    }
}

/// Strategic merge patch, approximated: a merge patch in which known list fields (containers, env, volumes,
/// conditions...) merge their elements by key, `$patch: delete|replace` is honoured on list elements and maps,
/// and ordering directives (`$setElementOrder/...`, `$retainKeys`, `$deleteFromPrimitiveList/...`) are ignored.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = pm.clone();
        p.remove("$patch");
        *target = Value::Object(p);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(tm) = target.as_object_mut() else { return };
    for (k, pv) in pm {
        if k.starts_with('$') {
            continue;
        }
        match pv {
            Value::Null => {
                tm.remove(k);
            }
            Value::Object(_) if pv.get("$patch").and_then(Value::as_str) == Some("delete") => {
                tm.remove(k);
            }
            Value::Object(_) => strategic_merge(tm.entry(k.clone()).or_insert(Value::Null), pv),
            Value::Array(items) => match (merge_key(k), tm.get_mut(k)) {
                (Some(key), Some(Value::Array(existing))) => merge_list(existing, items, key),
                _ => {
                    let cleaned: Vec<Value> = items
                        .iter()
                        .filter(|i| i.get("$patch").is_none())
                        .cloned()
                        .collect();
                    tm.insert(k.clone(), Value::Array(cleaned));
                }
            },
            other => {
                tm.insert(k.clone(), other.clone());
            }
        }
    }
}

fn merge_list(existing: &mut Vec<Value>, patch: &[Value], key: &str) {
    for p in patch {
        let Some(id) = p.get(key) else {
            existing.push(p.clone());
            continue;
        };
        let pos = existing.iter().position(|e| e.get(key) == Some(id));
        let delete = p.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut existing[i], p),
            (None, false) => {
                let mut v = Value::Null;
                strategic_merge(&mut v, p);
                existing.push(v);
            }
        }
    }
}

/// Field paths (as `f:`-segments) an apply configuration sets; lists and scalars are leaves.
pub fn field_set(config: &Value) -> BTreeSet<Vec<String>> {
    fn walk(v: &Value, prefix: &mut Vec<String>, out: &mut BTreeSet<Vec<String>>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, c) in m {
                    if prefix.len() == 1
                        && prefix[0] == "metadata"
                        && !matches!(
                            k.as_str(),
                            "labels" | "annotations" | "finalizers" | "ownerReferences"
                        )
                    {
                        continue;
                    }
                    prefix.push(k.clone());
                    walk(c, prefix, out);
                    prefix.pop();
                }
            }
            _ => {
                out.insert(prefix.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    if let Some(m) = config.as_object() {
        for (k, c) in m {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            walk(c, &mut vec![k.clone()], &mut out);
        }
    }
    out.retain(|p| !(p.len() == 1 && p[0] == "metadata"));
    out
}

/// `managedFields[].fieldsV1` for a field set.
pub fn fields_v1(set: &BTreeSet<Vec<String>>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for seg in path {
            let entry = cur
                .entry(format!("f:{seg}"))
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else { break };
            cur = next;
        }
    }
    Value::Object(root)
}

/// Inverse of [`fields_v1`].
pub fn parse_fields_v1(v: &Value) -> BTreeSet<Vec<String>> {
    fn walk(v: &Value, prefix: &mut Vec<String>, out: &mut BTreeSet<Vec<String>>) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, c) in m {
                    let seg = k.strip_prefix("f:").unwrap_or(k).to_string();
                    prefix.push(seg);
                    walk(c, prefix, out);
                    prefix.pop();
                }
            }
            _ => {
                if !prefix.is_empty() {
                    out.insert(prefix.clone());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, seg| cur.get(seg))
}

fn get_path_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |cur, seg| cur.get_mut(seg))
}

/// Removes the field at `path` from the merged apply result, then settles the maps this emptied, innermost
/// first, like structured-merge-diff's pruning in kube-apiserver: an emptied map that some manager still
/// owns (an applied `spec: {}` owns `spec` itself) stays as `null`, one nobody owns is removed as well.
/// So an applier that owned every field of `spec` and applies `spec: {}` leaves `spec: null`, which a CRD
/// schema then refuses (`spec in body must be of type object: "null"`), as the real server does.
fn remove_owned_path(v: &mut Value, path: &[String], owned: impl Fn(&[String]) -> bool) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let removed = get_path_mut(v, parents)
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove(last))
        .is_some();
    if !removed {
        return;
    }
    for depth in (1..path.len()).rev() {
        let map = &path[..depth];
        if !get_path(v, map)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            return;
        }
        if owned(map) {
            if let Some(slot) = get_path_mut(v, map) {
                *slot = Value::Null;
            }
            return;
        }
        let (last, parents) = map.split_last().unwrap_or_else(|| unreachable!());
        if let Some(m) = get_path_mut(v, parents).and_then(Value::as_object_mut) {
            m.remove(last);
        }
    }
}

/// Drops `null` fields the way decoding into a typed object does (absent and `null` are the same there):
/// everywhere in a built-in kind, in `metadata` of a custom resource.
pub fn drop_typed_nulls(obj: &mut Value, everywhere: bool) {
    fn walk(v: &mut Value) {
        if let Some(m) = v.as_object_mut() {
            m.retain(|_, c| !c.is_null());
            m.values_mut().for_each(walk);
        }
    }
    match (everywhere, obj.get_mut("metadata")) {
        (true, _) => walk(obj),
        (false, Some(meta)) => walk(meta),
        (false, None) => {}
    }
}

/// One `managedFields` entry's identity: who wrote, how (`Apply` or `Update`), through which subresource.
struct Writer<'a> {
    manager: &'a str,
    operation: &'static str,
    subresource: Option<&'a str>,
}

impl Writer<'_> {
    fn wrote(&self, entry: &Value) -> bool {
        entry.get("manager").and_then(Value::as_str) == Some(self.manager)
            && entry.get("operation").and_then(Value::as_str) == Some(self.operation)
            && entry.get("subresource").and_then(Value::as_str).unwrap_or("")
                == self.subresource.unwrap_or("")
    }

    /// Whether a field path belongs to the part of the object this writer's endpoint writes.
    fn in_scope(&self, path: &[String]) -> bool {
        (path.first().map(String::as_str) == Some("status")) == (self.subresource == Some("status"))
    }

    /// Replaces the object's `managedFields` by `others` followed by this writer's entry for `set`.
    fn record(
        &self,
        obj: &mut Value,
        mut others: Vec<Value>,
        set: &BTreeSet<Vec<String>>,
        api_version: &str,
        now: &str,
    ) {
        let mut entry = json!({
            "manager": self.manager, "operation": self.operation, "apiVersion": api_version, "time": now,
            "fieldsType": "FieldsV1", "fieldsV1": fields_v1(set),
        });
        if let Some(s) = self.subresource {
            entry["subresource"] = json!(s);
        }
        others.push(entry);
        if let Some(meta) = obj
            .as_object_mut()
            .map(|m| m.entry("metadata").or_insert_with(|| json!({})))
        {
            meta["managedFields"] = Value::Array(others);
        }
    }
}

fn managed_entries(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn entry_fields(entry: &Value) -> BTreeSet<Vec<String>> {
    entry.get("fieldsV1").map(parse_fields_v1).unwrap_or_default()
}

/// Server-side apply (simplified ownership model, see docs/testbed.md): overlays the configuration onto the
/// live object, removes fields this manager applied before but no longer sets (unless another manager owns
/// them), reports conflicts with other appliers' differing values unless `force`, and records
/// `managedFields`. `subresource` is `Some("status")` for `/status` applies.
pub fn server_side_apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    subresource: Option<&str>,
    api_version: &str,
    now: &str,
) -> ApiResult<Value> {
    let me = Writer {
        manager,
        operation: "Apply",
        subresource,
    };
    let new_set: BTreeSet<Vec<String>> = field_set(config).into_iter().filter(|p| me.in_scope(p)).collect();
    let mut obj = live.cloned().unwrap_or_else(|| json!({}));
    let managed = managed_entries(&obj);
    let prev_set = managed
        .iter()
        .find(|e| me.wrote(e))
        .map(entry_fields)
        .unwrap_or_default();
    let mut others: Vec<(String, BTreeSet<Vec<String>>)> = managed
        .iter()
        .filter(|e| !me.wrote(e))
        .map(|e| {
            (
                e.get("manager")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                entry_fields(e),
            )
        })
        .collect();

    // An applied empty `labels: {}` or `annotations: {}` is owned as a whole (a leaf): kube-apiserver reports
    // a conflict on the map when another manager's apply sets a key in it. (An applied empty object such as
    // `spec: {}` owns `spec` itself, which keeps it as `null` once emptied, but conflicts with no key in it.)
    let set_inside = |owned: &Vec<String>| {
        matches!(owned.as_slice(), [m, f] if m == "metadata" && (f == "labels" || f == "annotations"))
            && new_set
                .iter()
                .any(|p| p.len() > owned.len() && p.starts_with(owned))
    };
    let mut conflicts = Vec::new();
    for (other, set) in &others {
        for p in set.iter().filter(|p| new_set.contains(*p) || set_inside(p)) {
            if get_path(&obj, p) != get_path(config, p) {
                conflicts.push((other.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(m, p)| format!("conflict with \"{m}\": .{}", p.join(".")))
            .collect();
        let msg = if lines.len() == 1 {
            format!("Apply failed with 1 conflict: {}", lines[0])
        } else {
            format!(
                "Apply failed with {} conflicts: {}",
                lines.len(),
                lines.join("\n")
            )
        };
        return Err(ApiError::new(409, "Conflict", msg));
    }
    if force {
        for (_, set) in others.iter_mut() {
            set.retain(|p| !new_set.contains(p) && !set_inside(p));
        }
    }
    // Merge first, then prune what this manager gave up, as kube-apiserver does: an applied `spec: {}`
    // merges into the live `spec` before its former fields are removed.
    let mut cfg = config.clone();
    if subresource.is_none()
        && let Some(m) = cfg.as_object_mut()
    {
        m.remove("status");
    }
    let overlay = match (subresource, config.get("status")) {
        (Some("status"), Some(status)) => json!({"status": status}),
        (Some("status"), None) => json!({}),
        _ => cfg,
    };
    strategic_merge(&mut obj, &overlay);
    let owned_by_others = |p: &[String]| others.iter().any(|(_, s)| s.iter().any(|o| o.starts_with(p)));
    for p in prev_set.difference(&new_set) {
        if !owned_by_others(p) {
            remove_owned_path(&mut obj, p, |map| {
                new_set.contains(map) || others.iter().any(|(_, s)| s.contains(map))
            });
        }
    }

    let mut entries: Vec<Value> = Vec::new();
    for e in managed.iter().filter(|e| !me.wrote(e)) {
        let name = e.get("manager").and_then(Value::as_str).unwrap_or_default();
        let mut e = e.clone();
        if let Some((_, set)) = others.iter().find(|(m, _)| m == name) {
            if set.is_empty() {
                continue;
            }
            e["fieldsV1"] = fields_v1(set);
        }
        entries.push(e);
    }
    me.record(&mut obj, entries, &new_set, api_version, now);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asserts::assert_contains;

    /// An unforced apply of the main resource that must succeed.
    pub(super) fn apply_as(live: Option<&Value>, config: Value, manager: &str) -> Value {
        server_side_apply(live, &config, manager, false, None, "v1", "t").expect("apply")
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut t =
            json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        strategic_merge(
            &mut t,
            &json!({"$setElementOrder/containers": [], "spec": {"containers": [{"name": "b", "image": "z"}, {"name": "a", "$patch": "delete"}]}}),
        );
        assert_eq!(t, json!({"spec": {"containers": [{"name": "b", "image": "z"}]}}));
    }

    #[test]
    fn apply_removes_fields_the_manager_stopped_setting() {
        let first = apply_as(None, json!({"spec": {"a": 1, "b": 2}}), "m1");
        let second = apply_as(Some(&first), json!({"spec": {"a": 1}}), "m1");
        assert_eq!(second["spec"], json!({"a": 1}));
    }

    #[test]
    fn apply_conflicts_with_other_manager_unless_forced() {
        let first = apply_as(None, json!({"spec": {"a": 1}}), "m1");
        let err = server_side_apply(
            Some(&first),
            &json!({"spec": {"a": 2}}),
            "m2",
            false,
            None,
            "v1",
            "t",
        )
        .expect_err("conflict");
        assert_eq!(err.code, 409);
        assert_contains(&err.message, "conflict with \"m1\": .spec.a");
        let forced = server_side_apply(
            Some(&first),
            &json!({"spec": {"a": 2}}),
            "m2",
            true,
            None,
            "v1",
            "t",
        )
        .expect("forced");
        assert_eq!(forced["spec"]["a"], 2);
        let mf = forced["metadata"]["managedFields"].as_array().expect("managed");
        assert_eq!(mf.len(), 1, "m1 lost its only field: {mf:?}");
    }

    #[test]
    fn an_applied_empty_map_is_owned_whole_so_adding_a_key_conflicts() {
        let first = apply_as(
            None,
            json!({"metadata": {"name": "x", "labels": {}}, "spec": {"a": 1}}),
            "m1",
        );
        let add = json!({"metadata": {"name": "x", "labels": {"team": "b"}}});
        let err = server_side_apply(Some(&first), &add, "m2", false, None, "v1", "t").expect_err("conflict");
        assert_eq!(err.code, 409);
        assert_contains(
            &err.message,
            "Apply failed with 1 conflict: conflict with \"m1\": .metadata.labels",
        );
        let forced = server_side_apply(Some(&first), &add, "m2", true, None, "v1", "t").expect("forced");
        assert_eq!(forced["metadata"]["labels"]["team"], "b");
        let m1 = &forced["metadata"]["managedFields"][0];
        assert_eq!(m1["manager"], "m1");
        assert_eq!(m1["fieldsV1"], json!({"f:spec": {"f:a": {}}}), "m1 lost the map");
    }

    /// What kube-apiserver v1.28 answers (seen on it): a map emptied by an apply stays as `null` while a
    /// manager owns it (an applied `spec: {}` owns `spec`), and goes when none does.
    #[test]
    fn an_emptied_map_is_null_while_owned_and_gone_when_not() {
        let full = apply_as(None, json!({"spec": {"a": 1, "sub": {"x": 1}}}), "m1");
        let emptied = apply_as(Some(&full), json!({"spec": {}}), "m1");
        assert_eq!(emptied["spec"], Value::Null, "{emptied}");
        assert!(emptied.as_object().is_some_and(|o| o.contains_key("spec")));
        assert_eq!(
            emptied["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:spec": {}})
        );

        let sub_emptied = apply_as(Some(&full), json!({"spec": {"a": 1, "sub": {}}}), "m1");
        assert_eq!(sub_emptied["spec"], json!({"a": 1, "sub": null}));
        let sub_dropped = apply_as(Some(&full), json!({"spec": {"a": 1}}), "m1");
        assert_eq!(sub_dropped["spec"], json!({"a": 1}), "nobody owns spec.sub");
        let all_dropped = apply_as(Some(&full), json!({"metadata": {"name": "x"}}), "m1");
        assert_eq!(all_dropped.get("spec"), None, "nobody owns spec");

        let leaf_of_another = apply_as(Some(&full), json!({"spec": {}}), "m2");
        assert_eq!(
            leaf_of_another["spec"], full["spec"],
            "an applied spec: {{}} conflicts with no key"
        );
        let emptied_under_m2 = apply_as(Some(&leaf_of_another), json!({}), "m1");
        assert_eq!(emptied_under_m2["spec"], Value::Null, "m2 still owns spec");
    }

    #[test]
    fn a_status_apply_without_status_removes_only_the_appliers_fields() {
        let live = json!({"spec": {"a": 1}, "status": {"mine": 1, "theirs": 2},
            "metadata": {"managedFields": [
                {"manager": "m", "operation": "Apply", "subresource": "status", "fieldsV1": {"f:status": {"f:mine": {}}}},
                {"manager": "o", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {"f:theirs": {}}}}]}});
        let out =
            server_side_apply(Some(&live), &json!({}), "m", false, Some("status"), "v1", "t").expect("apply");
        assert_eq!(out["status"], json!({"theirs": 2}));
        assert_eq!(out["spec"], json!({"a": 1}));
    }

    #[test]
    fn typed_nulls_are_dropped() {
        let mut builtin = json!({"metadata": {"labels": null}, "data": null, "spec": {"x": null, "y": 1}});
        drop_typed_nulls(&mut builtin, true);
        assert_eq!(builtin, json!({"metadata": {}, "spec": {"y": 1}}));
        let mut custom = json!({"metadata": {"labels": null}, "spec": null});
        drop_typed_nulls(&mut custom, false);
        assert_eq!(custom, json!({"metadata": {}, "spec": null}));
    }

    #[test]
    fn status_apply_only_touches_status() {
        let live = json!({"spec": {"a": 1}});
        let out = server_side_apply(
            Some(&live),
            &json!({"spec": {"a": 9}, "status": {"ok": true}}),
            "m",
            false,
            Some("status"),
            "v1",
            "t",
        )
        .expect("apply");
        assert_eq!(out["spec"]["a"], 1);
        assert_eq!(out["status"]["ok"], true);
    }
}

/// Records an `Update` operation in `managedFields` like kube-apiserver: the manager takes ownership of every
/// field it changed (or set, on create), and other managers lose those fields. Updates never conflict.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    api_version: &str,
    now: &str,
) {
    let me = Writer {
        manager,
        operation: "Update",
        subresource,
    };
    let changed: BTreeSet<Vec<String>> = field_set(new)
        .into_iter()
        .filter(|p| me.in_scope(p))
        .filter(|p| old.is_none_or(|o| get_path(o, p) != get_path(new, p)))
        .collect();
    if changed.is_empty() {
        return;
    }
    let entries = managed_entries(new);
    let mut mine: BTreeSet<Vec<String>> = entries
        .iter()
        .find(|e| me.wrote(e))
        .map(entry_fields)
        .unwrap_or_default();
    mine.extend(changed.iter().cloned());
    let mut out: Vec<Value> = Vec::new();
    for e in entries.iter().filter(|e| !me.wrote(e)) {
        let mut set = entry_fields(e);
        let before = set.len();
        set.retain(|p| !changed.contains(p));
        if set.is_empty() {
            continue;
        }
        let mut e = e.clone();
        if set.len() != before {
            e["fieldsV1"] = fields_v1(&set);
        }
        out.push(e);
    }
    me.record(new, out, &mine, api_version, now);
}

#[cfg(test)]
mod update_tests {
    use super::tests::apply_as;
    use super::*;
    use crate::asserts::assert_contains;

    #[test]
    fn updates_take_ownership_from_appliers_so_reapply_conflicts() {
        let applied = apply_as(None, json!({"spec": {"a": 1, "b": 1}}), "tf");
        let mut edited = applied.clone();
        edited["spec"]["a"] = json!(2);
        record_update(Some(&applied), &mut edited, "kubectl-edit", None, "v1", "t");
        let mf = edited["metadata"]["managedFields"].as_array().expect("managed");
        assert_eq!(mf.len(), 2);
        let e = server_side_apply(
            Some(&edited),
            &json!({"spec": {"a": 1, "b": 1}}),
            "tf",
            false,
            None,
            "v1",
            "t",
        )
        .expect_err("conflict");
        assert_contains(&e.message, "conflict with \"kubectl-edit\": .spec.a");
        let mut unchanged = edited.clone();
        record_update(Some(&edited), &mut unchanged, "other", None, "v1", "t2");
        assert_eq!(unchanged, edited, "a no-op update records nothing");
    }
}
