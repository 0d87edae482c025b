//! `meta.k8s.io/v1` Table responses for `kubectl get` (CRD printer columns, name/age for core kinds).

use serde_json::{Value, json};

use super::registry::ResourceType;

/// Whether the client asked for a Table (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`).
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// A human age like kubectl prints (`5s`, `3m`, `2h`, `4d`).
pub fn age(timestamp: &str, now: jiff::Timestamp) -> String {
    let Ok(t) = timestamp.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (now.as_second() - t.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Splits a JSONPath on dots outside brackets.
fn segments(p: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for c in p.chars() {
        match c {
            '[' => {
                depth += 1;
                cur.push(c);
            }
            ']' => {
                depth -= 1;
                cur.push(c);
            }
            '.' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

/// Evaluates the JSONPath subset printer columns use: `.spec.a`, `.list[0].b`, `.conditions[?(@.type=="Ready")].status`.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    let p = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    for seg in segments(p) {
        let (field, index) = match seg.split_once('[') {
            Some((f, rest)) => (f.to_string(), Some(rest.trim_end_matches(']').to_string())),
            None => (seg.clone(), None),
        };
        if !field.is_empty() {
            cur = cur.get(&field)?;
        }
        if let Some(ix) = index {
            if let Ok(i) = ix.parse::<usize>() {
                cur = cur.get(i)?;
            } else if let Some(filter) = ix.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (key, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches('"').trim_matches('\'');
                cur = cur
                    .as_array()?
                    .iter()
                    .find(|e| e.get(key.trim()).and_then(Value::as_str) == Some(want))?;
            } else {
                return None;
            }
        }
    }
    Some(cur)
}

fn column(name: &str, ty: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

/// Builds the Table for `objects`; `include` is the `includeObject` query parameter.
pub fn table(
    rt: &ResourceType,
    version: &str,
    objects: &[Value],
    resource_version: &str,
    include: &str,
) -> Value {
    let now = jiff::Timestamp::now();
    let mut columns = vec![column(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    )];
    type Cell = Box<dyn Fn(&Value) -> Value>;
    let mut cells: Vec<Cell> = vec![Box::new(|o: &Value| json!(super::store::meta_str(o, "name")))];
    let printer = rt
        .version(version)
        .map(|v| v.printer_columns.clone())
        .unwrap_or_default();
    if rt.crd && !printer.is_empty() {
        for c in printer {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let ty = c
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("string")
                .to_string();
            let path = c
                .get("jsonPath")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let desc = c.get("description").and_then(Value::as_str).unwrap_or_default();
            let prio = c.get("priority").and_then(Value::as_i64).unwrap_or(0);
            columns.push(column(
                &name,
                &ty,
                c.get("format").and_then(Value::as_str).unwrap_or_default(),
                desc,
                prio,
            ));
            cells.push(Box::new(move |o: &Value| {
                match (json_path(o, &path), ty.as_str()) {
                    (None | Some(Value::Null), _) => Value::Null,
                    (Some(Value::String(s)), "date") => json!(age(s, now)),
                    (Some(Value::String(s)), _) => json!(s),
                    (Some(v @ (Value::Number(_) | Value::Bool(_))), _) => v.clone(),
                    (Some(v), _) => json!(v.to_string()),
                }
            }));
        }
    } else {
        if rt.group.is_empty() && matches!(rt.plural.as_str(), "pods" | "namespaces" | "nodes") {
            columns.push(column("Status", "string", "", "The status of the object.", 0));
            let node = rt.plural == "nodes";
            cells.push(Box::new(move |o: &Value| {
                if node {
                    let ready = o
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .and_then(|cs| {
                            cs.iter()
                                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                                .and_then(|c| c.get("status"))
                                .and_then(Value::as_str)
                                .map(|s| s == "True")
                        });
                    json!(match ready {
                        Some(true) => "Ready",
                        Some(false) => "NotReady",
                        None => "Unknown",
                    })
                } else if o.pointer("/metadata/deletionTimestamp").is_some() {
                    json!("Terminating")
                } else {
                    json!(
                        o.pointer("/status/phase")
                            .and_then(Value::as_str)
                            .unwrap_or("Unknown")
                    )
                }
            }));
        }
        columns.push(column(
            "Age",
            "string",
            "",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
            0,
        ));
        cells.push(Box::new(move |o: &Value| {
            json!(age(super::store::meta_str(o, "creationTimestamp"), now))
        }));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells.iter().map(|c| c(o)).collect::<Vec<_>>()});
            match include {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(Value::Null)})
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns, "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_supports_printer_column_subset() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}, "l": [1, 2]});
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(json_path(&o, ".l[1]"), Some(&json!(2)));
        assert_eq!(json_path(&o, ".status.missing"), None);
    }
}
