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

fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for seg in parents {
        match cur.get_mut(seg) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Server-side apply (simplified ownership model, see docs/testbed.md): overlays the configuration onto the
/// live object, removes fields this manager applied before but no longer sets (unless another applier owns
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
    let in_scope = |p: &Vec<String>| {
        (p.first().map(String::as_str) == Some("status")) == (subresource == Some("status"))
    };
    let new_set: BTreeSet<Vec<String>> = field_set(config).into_iter().filter(|p| in_scope(p)).collect();
    let mut obj = live.cloned().unwrap_or_else(|| json!({}));
    let managed: Vec<Value> = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let sub = subresource.unwrap_or("");
    let is_mine = |e: &Value| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply")
            && e.get("subresource").and_then(Value::as_str).unwrap_or("") == sub
    };
    let prev_set = managed
        .iter()
        .find(|e| is_mine(e))
        .and_then(|e| e.get("fieldsV1"))
        .map(parse_fields_v1)
        .unwrap_or_default();
    let mut others: Vec<(String, BTreeSet<Vec<String>>)> = managed
        .iter()
        .filter(|e| !is_mine(e))
        .map(|e| {
            (
                e.get("manager")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                e.get("fieldsV1").map(parse_fields_v1).unwrap_or_default(),
            )
        })
        .collect();

    // An applied empty `labels: {}` or `annotations: {}` is owned as a whole (a leaf): kube-apiserver reports
    // a conflict on the map when another manager's apply sets a key in it. (An applied empty object such as
    // `spec: {}` owns nothing there.)
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
    for p in prev_set.difference(&new_set) {
        if !others.iter().any(|(_, s)| s.contains(p)) {
            remove_path(&mut obj, p);
        }
    }
    let mut cfg = config.clone();
    if subresource.is_none()
        && let Some(m) = cfg.as_object_mut()
    {
        m.remove("status");
    }
    let overlay = if subresource == Some("status") {
        json!({"status": config.get("status").cloned().unwrap_or(Value::Null)})
    } else {
        cfg
    };
    strategic_merge(&mut obj, &overlay);

    let mut entries: Vec<Value> = Vec::new();
    for e in &managed {
        if is_mine(e) {
            continue;
        }
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
    let mut mine = json!({
        "manager": manager, "operation": "Apply", "apiVersion": api_version, "time": now,
        "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&new_set),
    });
    if let Some(s) = subresource {
        mine["subresource"] = json!(s);
    }
    entries.push(mine);
    if let Some(meta) = obj
        .as_object_mut()
        .map(|m| m.entry("metadata").or_insert_with(|| json!({})))
    {
        meta["managedFields"] = Value::Array(entries);
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let first = server_side_apply(
            None,
            &json!({"spec": {"a": 1, "b": 2}}),
            "m1",
            false,
            None,
            "v1",
            "t",
        )
        .expect("apply");
        let second = server_side_apply(
            Some(&first),
            &json!({"spec": {"a": 1}}),
            "m1",
            false,
            None,
            "v1",
            "t",
        )
        .expect("apply");
        assert_eq!(second["spec"], json!({"a": 1}));
    }

    #[test]
    fn apply_conflicts_with_other_manager_unless_forced() {
        let first =
            server_side_apply(None, &json!({"spec": {"a": 1}}), "m1", false, None, "v1", "t").expect("apply");
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
        assert!(
            err.message.contains("conflict with \"m1\": .spec.a"),
            "{}",
            err.message
        );
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
        let first = server_side_apply(
            None,
            &json!({"metadata": {"name": "x", "labels": {}}, "spec": {"a": 1}}),
            "m1",
            false,
            None,
            "v1",
            "t",
        )
        .expect("apply");
        let add = json!({"metadata": {"name": "x", "labels": {"team": "b"}}});
        let err = server_side_apply(Some(&first), &add, "m2", false, None, "v1", "t").expect_err("conflict");
        assert_eq!(err.code, 409);
        assert!(
            err.message
                .contains("Apply failed with 1 conflict: conflict with \"m1\": .metadata.labels"),
            "{}",
            err.message
        );
        let forced = server_side_apply(Some(&first), &add, "m2", true, None, "v1", "t").expect("forced");
        assert_eq!(forced["metadata"]["labels"]["team"], "b");
        let m1 = &forced["metadata"]["managedFields"][0];
        assert_eq!(m1["manager"], "m1");
        assert_eq!(m1["fieldsV1"], json!({"f:spec": {"f:a": {}}}), "m1 lost the map");
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
    let in_scope = |p: &Vec<String>| {
        (p.first().map(String::as_str) == Some("status")) == (subresource == Some("status"))
    };
    let changed: BTreeSet<Vec<String>> = field_set(new)
        .into_iter()
        .filter(|p| in_scope(p))
        .filter(|p| old.is_none_or(|o| get_path(o, p) != get_path(new, p)))
        .collect();
    if changed.is_empty() {
        return;
    }
    let sub = subresource.unwrap_or("");
    let entries: Vec<Value> = new
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_mine = |e: &Value| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Update")
            && e.get("subresource").and_then(Value::as_str).unwrap_or("") == sub
    };
    let mut mine: BTreeSet<Vec<String>> = entries
        .iter()
        .find(|e| is_mine(e))
        .and_then(|e| e.get("fieldsV1"))
        .map(parse_fields_v1)
        .unwrap_or_default();
    mine.extend(changed.iter().cloned());
    let mut out: Vec<Value> = Vec::new();
    for e in entries.iter().filter(|e| !is_mine(e)) {
        let mut set = e.get("fieldsV1").map(parse_fields_v1).unwrap_or_default();
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
    let mut entry = json!({
        "manager": manager, "operation": "Update", "apiVersion": api_version, "time": now,
        "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&mine),
    });
    if let Some(s) = subresource {
        entry["subresource"] = json!(s);
    }
    out.push(entry);
    if let Some(meta) = new
        .as_object_mut()
        .map(|m| m.entry("metadata").or_insert_with(|| json!({})))
    {
        meta["managedFields"] = Value::Array(out);
    }
}

#[cfg(test)]
mod update_tests {
    use super::*;

    #[test]
    fn updates_take_ownership_from_appliers_so_reapply_conflicts() {
        let applied = server_side_apply(
            None,
            &json!({"spec": {"a": 1, "b": 1}}),
            "tf",
            false,
            None,
            "v1",
            "t",
        )
        .expect("apply");
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
        assert!(
            e.message.contains("conflict with \"kubectl-edit\": .spec.a"),
            "{}",
            e.message
        );
        let mut unchanged = edited.clone();
        record_update(Some(&edited), &mut unchanged, "other", None, "v1", "t2");
        assert_eq!(unchanged, edited, "a no-op update records nothing");
    }
}
