//! Label and field selectors: the query-string syntax and `metav1.LabelSelector` objects.

use std::collections::BTreeMap;

use serde_json::Value;

use super::status::{ApiError, ApiResult};

/// One parsed selector requirement.
#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (`a=b,c!=d,e in (f,g),!h`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Req>);

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn set_values(s: &str) -> ApiResult<Vec<String>> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to parse requirement: expected a set like (a,b), found {s:?}"
            ))
        })?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(s: &str) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            let r = if let Some(k) = term.strip_prefix('!') {
                Req::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = term.split_once("!=") {
                Req::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once("==") {
                Req::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once('=') {
                Req::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once(" notin ") {
                Req::NotIn(k.trim().to_string(), set_values(v)?)
            } else if let Some((k, v)) = term.split_once(" in ") {
                Req::In(k.trim().to_string(), set_values(v)?)
            } else if term.chars().all(|c| c.is_alphanumeric() || "-_./".contains(c)) {
                Req::Exists(term)
            } else {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: {term:?}"
                )));
            };
            reqs.push(r);
        }
        Ok(Self(reqs))
    }

    /// Builds a selector from a `metav1.LabelSelector` object (`matchLabels` / `matchExpressions`).
    /// An absent selector (`None`) matches everything, like kube-apiserver treats webhook selectors.
    pub fn from_object(sel: Option<&Value>) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        let Some(sel) = sel else { return Ok(Self(reqs)) };
        if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in ml {
                reqs.push(Req::Eq(k.clone(), v.as_str().unwrap_or_default().to_string()));
            }
        }
        for e in sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let vals: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            let r = match e.get("operator").and_then(Value::as_str) {
                Some("In") => Req::In(key, vals),
                Some("NotIn") => Req::NotIn(key, vals),
                Some("Exists") => Req::Exists(key),
                Some("DoesNotExist") => Req::NotExists(key),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "matchExpressions.operator: Unsupported value: {other:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
                    )));
                }
            };
            reqs.push(r);
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => labels.get(k) == Some(v),
            Req::NotEq(k, v) => labels.get(k) != Some(v),
            Req::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Req::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Req::Exists(k) => labels.contains_key(k),
            Req::NotExists(k) => !labels.contains_key(k),
        })
    }

    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(&labels_of(obj))
    }
}

/// `metadata.labels` as a map (empty when absent).
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A parsed field selector (`metadata.name=x,spec.nodeName!=y`); any dotted path is accepted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> ApiResult<Self> {
        let mut out = Vec::new();
        for term in split_terms(s) {
            if let Some((k, v)) = term.split_once("!=") {
                out.push((k.trim().to_string(), false, v.trim().to_string()));
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                out.push((k.trim().to_string(), true, v.trim().to_string()));
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                )));
            }
        }
        Ok(Self(out))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let ptr = format!("/{}", path.replace('.', "/"));
            let got = match obj.pointer(&ptr) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (got == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An object carrying `labels` (a JSON map), as the server matches selectors against stored objects.
    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"labels": labels}})
    }

    #[test]
    fn label_selector_syntax() {
        let s = LabelSelector::parse("app=web,tier!=db,env in (a, b),!legacy,team").expect("parses");
        assert!(s.matches_object(&labelled(json!({"app": "web", "env": "a", "team": "x"}))));
        assert!(!s.matches_object(&labelled(json!({"app": "web", "env": "c", "team": "x"}))));
        assert!(!s.matches_object(&labelled(
            json!({"app": "web", "env": "a", "team": "x", "legacy": "1"})
        )));
        assert!(!s.matches_object(&labelled(json!({"app": "web", "env": "a"}))));
        let n = LabelSelector::parse("x notin (1,2)").expect("parses");
        assert!(n.matches_object(&labelled(json!({}))));
        assert!(!n.matches_object(&labelled(json!({"x": "1"}))));
    }

    #[test]
    fn label_selector_object() {
        let s = LabelSelector::from_object(Some(&json!({
            "matchLabels": {"a": "1"},
            "matchExpressions": [{"key": "b", "operator": "DoesNotExist"}]
        })))
        .expect("valid");
        assert!(s.matches_object(&labelled(json!({"a": "1"}))));
        assert!(!s.matches_object(&labelled(json!({"a": "1", "b": ""}))));
        assert!(
            LabelSelector::from_object(Some(
                &json!({"matchExpressions": [{"key": "b", "operator": "Bogus"}]})
            ))
            .is_err()
        );
    }

    #[test]
    fn field_selector_paths() {
        let obj = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}});
        assert!(
            FieldSelector::parse("metadata.name=p,spec.nodeName=n1")
                .expect("parses")
                .matches(&obj)
        );
        assert!(
            !FieldSelector::parse("spec.nodeName!=n1")
                .expect("parses")
                .matches(&obj)
        );
        assert!(
            FieldSelector::parse("spec.missing=")
                .expect("parses")
                .matches(&obj)
        );
    }
}
