//! Structural-schema behaviour of CRDs: defaulting, pruning and validation like kube-apiserver.

use serde_json::{Map, Value};

/// Applies `default`s from the schema to absent fields, top-down (defaults are themselves defaulted).
pub fn apply_defaults(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    if !map.contains_key(k)
                        && let Some(d) = s.get("default")
                    {
                        map.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = map.get_mut(k) {
                        apply_defaults(child, s);
                    }
                }
            }
            if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for child in map.values_mut() {
                    apply_defaults(child, ap);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for child in items {
                    apply_defaults(child, s);
                }
            }
        }
        _ => {}
    }
}

/// Removes fields the schema does not declare (unless `x-kubernetes-preserve-unknown-fields`), returning the
/// pruned paths (`spec.foo`) so strict field validation can reject them instead.
pub fn prune(value: &mut Value, schema: &Value, path: &str, pruned: &mut Vec<String>) {
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    let embedded = schema
        .get("x-kubernetes-embedded-resource")
        .and_then(Value::as_bool)
        == Some(true);
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let child_path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(s) = props.and_then(|p| p.get(&k)) {
                    if let Some(child) = map.get_mut(&k) {
                        prune(child, s, &child_path, pruned);
                    }
                } else if let Some(ap) = additional {
                    if let Some(child) = map.get_mut(&k) {
                        prune(child, ap, &child_path, pruned);
                    }
                } else if preserve
                    || schema.get("additionalProperties") == Some(&Value::Bool(true))
                    || (embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                {
                } else {
                    map.remove(&k);
                    pruned.push(child_path);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, child) in items.iter_mut().enumerate() {
                    prune(child, s, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

/// Prunes a whole custom object: `apiVersion`, `kind` and `metadata` are always kept.
pub fn prune_object(obj: &mut Value, schema: &Value) -> Vec<String> {
    let mut pruned = Vec::new();
    let Some(map) = obj.as_object_mut() else {
        return pruned;
    };
    let props = schema.get("properties").and_then(Value::as_object);
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    let keys: Vec<String> = map.keys().cloned().collect();
    for k in keys {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.and_then(|p| p.get(&k)) {
            Some(s) => {
                if let Some(child) = map.get_mut(&k) {
                    prune(child, s, &k, &mut pruned);
                }
            }
            None if preserve => {}
            None => {
                map.remove(&k);
                pruned.push(k);
            }
        }
    }
    pruned
}

/// Rewrites an OpenAPI v3 structural schema into JSON Schema draft 4 (nullable, int-or-string, no metadata
/// constraints) for the `jsonschema` crate.
pub fn to_json_schema(schema: &Value) -> Value {
    fn walk(s: &Value) -> Value {
        let Some(obj) = s.as_object() else {
            return s.clone();
        };
        let mut out = Map::new();
        for (k, v) in obj {
            match k.as_str() {
                "properties" | "patternProperties" | "definitions" => {
                    let inner = v
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(pk, pv)| (pk.clone(), walk(pv)))
                                .collect::<Map<_, _>>()
                        })
                        .unwrap_or_default();
                    out.insert(k.clone(), Value::Object(inner));
                }
                "items" | "additionalProperties" | "not" => {
                    out.insert(k.clone(), walk(v));
                }
                "allOf" | "anyOf" | "oneOf" => {
                    out.insert(
                        k.clone(),
                        Value::Array(
                            v.as_array()
                                .map(|a| a.iter().map(walk).collect())
                                .unwrap_or_default(),
                        ),
                    );
                }
                k2 if k2.starts_with("x-kubernetes-")
                    || k2 == "nullable"
                    || k2 == "default"
                    || k2 == "description" => {}
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        if obj.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
            out.remove("type");
            out.remove("anyOf");
        }
        if obj.get("nullable").and_then(Value::as_bool) == Some(true)
            && let Some(Value::String(t)) = out.get("type").cloned()
        {
            out.insert(
                "type".into(),
                Value::Array(vec![Value::String(t), Value::String("null".into())]),
            );
        }
        Value::Object(out)
    }
    let mut root = walk(schema);
    // metadata is validated by the server itself, not by the CRD schema.
    if let Some(props) = root.get_mut("properties").and_then(Value::as_object_mut) {
        props.remove("metadata");
    }
    root
}

/// Validates an object against a CRD version schema, returning `(field, message)` causes worded like
/// kube-apiserver's OpenAPI validation.
pub fn validate(obj: &Value, schema: &Value) -> Vec<(String, String)> {
    let js = to_json_schema(schema);
    let validator = match jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&js)
    {
        Ok(v) => v,
        Err(e) => return vec![(String::new(), format!("invalid CRD schema: {e}"))],
    };
    let mut causes = Vec::new();
    for err in validator.iter_errors(obj) {
        let field = pointer_to_field(err.instance_path().as_str());
        let inst = err.instance().as_ref().clone();
        let shown = match &inst {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        use jsonschema::error::ValidationErrorKind as K;
        let msg = match err.kind() {
            K::Required { property } => {
                let p = property.as_str().unwrap_or_default();
                let f = if field.is_empty() {
                    p.to_string()
                } else {
                    format!("{field}.{p}")
                };
                causes.push((f, "Required value".to_string()));
                continue;
            }
            K::Enum { options } => {
                let opts: Vec<String> = options
                    .as_array()
                    .map(|a| a.iter().map(|o| o.to_string()).collect())
                    .unwrap_or_default();
                format!(
                    "Unsupported value: {shown}: supported values: {}",
                    opts.join(", ")
                )
            }
            // kube-apiserver names the type it found, not the value: `"null"`, `"integer"`, ...
            K::Type { kind } => {
                let found = json_type(&inst);
                format!(
                    "Invalid value: \"{found}\": {field} in body must be of type {}: \"{found}\"",
                    type_name(kind)
                )
            }
            K::Pattern { pattern } => {
                format!("Invalid value: {shown}: {field} in body should match '{pattern}'")
            }
            K::MaxLength { limit } => format!("Too long: may not be more than {limit} bytes"),
            K::MinLength { limit } => {
                format!("Invalid value: {shown}: {field} in body should be at least {limit} chars long")
            }
            K::MaxItems { limit } => format!(
                "Too many: {}: must have at most {limit} items",
                inst.as_array().map_or(0, Vec::len)
            ),
            K::MinItems { limit } => format!(
                "Invalid value: {}: {field} in body should have at least {limit} items",
                inst.as_array().map_or(0, Vec::len)
            ),
            K::Maximum { limit } => {
                format!("Invalid value: {shown}: {field} in body should be less than or equal to {limit}")
            }
            K::Minimum { limit } => {
                format!("Invalid value: {shown}: {field} in body should be greater than or equal to {limit}")
            }
            _ => format!("Invalid value: {shown}: {err}"),
        };
        causes.push((field, msg));
    }
    list_type_errors(obj, schema, "", &mut causes);
    causes
}

/// The OpenAPI name of a JSON value's type.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Validation of a `/status` write. kube-apiserver checks `status` against the status schema alone, so the
/// fields it names are relative to `status` (`conditions[0].type`, and `<nil>` for `status` itself).
pub fn validate_status(obj: &Value, schema: &Value) -> Vec<(String, String)> {
    let (Some(status), Some(status_schema)) = (obj.get("status"), schema.pointer("/properties/status"))
    else {
        return Vec::new();
    };
    validate(status, status_schema)
        .into_iter()
        .map(|(field, msg)| {
            (
                if field.is_empty() {
                    "<nil>".to_string()
                } else {
                    field
                },
                msg,
            )
        })
        .collect()
}

fn type_name(kind: &jsonschema::error::TypeKind) -> String {
    match kind {
        jsonschema::error::TypeKind::Single(t) => t.to_string(),
        jsonschema::error::TypeKind::Multiple(ts) => ts
            .iter()
            .map(|t| t.to_string())
            .filter(|t| t != "null")
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// `x-kubernetes-list-type: set|map` uniqueness (`Duplicate value`), which JSON Schema cannot express.
pub fn list_type_errors(value: &Value, schema: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(s) = props.and_then(|pr| pr.get(k)).or(additional) {
                    list_type_errors(child, s, &p, out);
                }
            }
        }
        Value::Array(items) => {
            let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen: Vec<Value> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let identity = match list_type {
                    Some("set") => Some(item.clone()),
                    Some("map") => Some(Value::Object(
                        keys.iter()
                            .filter_map(|k| item.get(*k).map(|v| ((*k).to_string(), v.clone())))
                            .collect(),
                    )),
                    _ => None,
                };
                if let Some(id) = identity {
                    if seen.contains(&id) {
                        out.push((format!("{path}[{i}]"), format!("Duplicate value: {id}")));
                    } else {
                        seen.push(id);
                    }
                }
                if let Some(s) = schema.get("items") {
                    list_type_errors(item, s, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// `/spec/items/0/name` -> `spec.items[0].name`
pub fn pointer_to_field(ptr: &str) -> String {
    let mut out = String::new();
    for seg in ptr.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-z]+$"},
                        "mode": {"type": "string", "default": "fast", "enum": ["fast", "slow"]},
                        "opt": {"type": "string", "nullable": true},
                        "port": {"x-kubernetes-int-or-string": true},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "items": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "integer", "default": 1}}}}
                    }
                },
                "status": {"type": "object", "properties": {"ok": {"type": "boolean"}}}
            }
        })
    }

    #[test]
    fn defaults_fill_absent_fields_recursively() {
        let mut o = json!({"spec": {"name": "x", "items": [{}, {"a": 5}]}});
        apply_defaults(&mut o, &schema());
        assert_eq!(o["spec"]["mode"], "fast");
        assert_eq!(o["spec"]["items"][0]["a"], 1);
        assert_eq!(o["spec"]["items"][1]["a"], 5);
    }

    #[test]
    fn prune_drops_unknown_fields_but_respects_preserve() {
        let mut o = json!({"apiVersion": "g/v1", "kind": "K", "metadata": {"name": "n"},
            "spec": {"name": "x", "bogus": 1, "free": {"anything": true}, "items": [{"a": 1, "b": 2}]}, "extra": 1});
        let pruned = prune_object(&mut o, &schema());
        assert_eq!(
            pruned,
            vec![
                "extra".to_string(),
                "spec.bogus".to_string(),
                "spec.items[0].b".to_string()
            ]
        );
        assert_eq!(o["spec"]["free"]["anything"], true);
        assert_eq!(o["metadata"]["name"], "n");
    }

    #[test]
    fn list_types_reject_duplicates() {
        let schema = json!({"type": "object", "properties": {"status": {"type": "object", "properties": {
            "conditions": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
                "items": {"type": "object", "properties": {"type": {"type": "string"}}}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}}}});
        let ok = json!({"status": {"conditions": [{"type": "A"}, {"type": "B"}], "tags": ["x", "y"]}});
        assert!(validate(&ok, &schema).is_empty());
        let dup = json!({"status": {"conditions": [{"type": "A"}, {"type": "A"}], "tags": ["x", "x"]}});
        let causes = validate(&dup, &schema);
        assert_eq!(
            causes,
            vec![
                (
                    "status.conditions[1]".to_string(),
                    "Duplicate value: {\"type\":\"A\"}".to_string()
                ),
                ("status.tags[1]".to_string(), "Duplicate value: \"x\"".to_string()),
            ]
        );
    }

    #[test]
    fn validation_messages_name_fields() {
        let o = json!({"spec": {"name": "X1", "mode": "medium", "opt": null, "port": "http"}});
        let causes = validate(&o, &schema());
        assert!(
            causes
                .iter()
                .any(|(f, m)| f == "spec.name" && m.contains("should match '^[a-z]+$'")),
            "{causes:?}"
        );
        assert!(
            causes
                .iter()
                .any(|(f, m)| f == "spec.mode" && m.starts_with("Unsupported value: \"medium\"")),
            "{causes:?}"
        );
        assert_eq!(causes.len(), 2, "{causes:?}");
        let wrong_types = validate(&json!({"spec": {"name": 5}, "status": null}), &schema());
        assert_eq!(
            wrong_types,
            vec![
                (
                    "spec.name".to_string(),
                    "Invalid value: \"integer\": spec.name in body must be of type string: \"integer\""
                        .to_string()
                ),
                (
                    "status".to_string(),
                    "Invalid value: \"null\": status in body must be of type object: \"null\"".to_string()
                ),
            ]
        );
        let missing = validate(&json!({"spec": {}}), &schema());
        assert_eq!(
            missing,
            vec![("spec.name".to_string(), "Required value".to_string())]
        );
    }

    #[test]
    fn a_status_write_is_validated_against_the_status_schema_alone() {
        let causes = validate_status(&json!({"spec": {"name": 1}, "status": {"ok": "yes"}}), &schema());
        assert_eq!(
            causes,
            vec![(
                "ok".to_string(),
                "Invalid value: \"string\": ok in body must be of type boolean: \"string\"".to_string()
            )]
        );
        let null = validate_status(&json!({"status": null}), &schema());
        assert_eq!(
            null,
            vec![(
                "<nil>".to_string(),
                "Invalid value: \"null\":  in body must be of type object: \"null\"".to_string()
            )]
        );
        assert!(validate_status(&json!({"spec": {}}), &schema()).is_empty());
    }
}
