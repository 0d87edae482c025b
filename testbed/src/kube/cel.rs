//! `x-kubernetes-validations` CEL rules of CRD schemas, evaluated with kube-cel (transition rules get
//! `oldSelf` on updates).

use serde_json::Value;

/// `(field, message)` causes for failed rules, worded like kube-apiserver (`Invalid value: "object": <msg>`).
/// The quoted type is that of the value the rule is attached to (an object for a rule on `spec` even when
/// its `fieldPath` names a string field; a string for a rule on the items of a string list), as kube-apiserver
/// words it.
pub fn validate(obj: &Value, old: Option<&Value>, schema: &Value) -> Vec<(String, String)> {
    let Err(errs) = kube_cel::validate(schema, obj, old) else {
        return Vec::new();
    };
    errs.into_vec()
        .into_iter()
        .map(|e| {
            let field = e.field_path.trim_start_matches('.').to_string();
            let rule_at = match rule_field_path(schema, &e.rule) {
                Some(suffix) => field
                    .strip_suffix(suffix.trim_start_matches('.'))
                    .unwrap_or(&field),
                None => &field,
            };
            let value_type = value_at(obj, rule_at.trim_end_matches('.'))
                .map(type_name)
                .unwrap_or("object");
            (field, format!("Invalid value: \"{value_type}\": {}", e.message))
        })
        .collect()
}

/// The `fieldPath` of the rule with expression `rule`, if it has one.
fn rule_field_path<'a>(schema: &'a Value, rule: &str) -> Option<&'a str> {
    match schema {
        Value::Object(map) => {
            if let Some(found) = map
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .and_then(|rules| {
                    rules
                        .iter()
                        .find(|r| r.get("rule").and_then(Value::as_str) == Some(rule))
                })
            {
                return found.get("fieldPath").and_then(Value::as_str);
            }
            map.values().find_map(|v| rule_field_path(v, rule))
        }
        Value::Array(items) => items.iter().find_map(|v| rule_field_path(v, rule)),
        _ => None,
    }
}

/// The value at a path such as `spec.excludeCidrs[1]`.
fn value_at<'a>(obj: &'a Value, field: &str) -> Option<&'a Value> {
    field
        .split('.')
        .filter(|s| !s.is_empty())
        .try_fold(obj, |cur, seg| {
            let (name, indexes) = seg.split_once('[').map_or((seg, ""), |(n, rest)| (n, rest));
            let mut at = if name.is_empty() { cur } else { cur.get(name)? };
            for index in indexes.split('[').filter(|i| !i.is_empty()) {
                at = at.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
            }
            Some(at)
        })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_and_transition_rules() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
        "properties": {"a": {"type": "integer"}},
        "x-kubernetes-validations": [
            {"rule": "self.a > 0", "message": "a must be positive"},
            {"rule": "self.a >= oldSelf.a", "message": "a may not shrink"}
        ]}}});
        assert!(validate(&json!({"spec": {"a": 1}}), None, &schema).is_empty());
        let bad = validate(&json!({"spec": {"a": 0}}), None, &schema);
        assert_eq!(
            bad,
            vec![(
                "spec".to_string(),
                "Invalid value: \"object\": a must be positive".to_string()
            )]
        );
        let shrink = validate(
            &json!({"spec": {"a": 1}}),
            Some(&json!({"spec": {"a": 2}})),
            &schema,
        );
        assert_eq!(shrink.len(), 1, "{shrink:?}");
        assert!(shrink[0].1.ends_with("a may not shrink"));
    }
}
