//! The two resource types (and their data sources): schemas, the mapping between Terraform values and
//! Kubernetes specs, plan-time validation with `api::rules`, and planning. Pure: no I/O here.

pub mod plan;
pub mod pool;
pub mod sgc;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::diag::{self, Path};
use crate::proto::tfplugin6 as pb;
use crate::schema::{Block, Nesting};
use crate::value::Value;

/// Which kind a Terraform type name refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `egressgateway_static_gateway_configuration`
    Sgc,
    /// `egressgateway_gateway_pool`
    Pool,
}

/// Resource (and data source) type names.
pub const SGC_TYPE: &str = "egressgateway_static_gateway_configuration";
/// See [`SGC_TYPE`].
pub const POOL_TYPE: &str = "egressgateway_gateway_pool";

impl Kind {
    /// Parses a Terraform type name.
    pub fn from_type_name(name: &str) -> Option<Kind> {
        match name {
            SGC_TYPE => Some(Kind::Sgc),
            POOL_TYPE => Some(Kind::Pool),
            _ => None,
        }
    }

    /// The resource schema.
    pub fn resource_schema(self) -> Block {
        match self {
            Kind::Sgc => sgc::resource_schema(),
            Kind::Pool => pool::resource_schema(),
        }
    }

    /// The data source schema.
    pub fn data_source_schema(self) -> Block {
        match self {
            Kind::Sgc => sgc::data_source_schema(),
            Kind::Pool => pool::data_source_schema(),
        }
    }

    /// Plan-time rule check of a (possibly partly unknown) configuration.
    pub fn validate(self, config: &Value) -> Vec<pb::Diagnostic> {
        match self {
            Kind::Sgc => sgc::validate(config),
            Kind::Pool => pool::validate(config),
        }
    }
}

/// A spec built from a Terraform value, with the paths whose values are not known yet.
#[derive(Debug, Default)]
pub struct Extracted {
    /// The spec as JSON (unknown fields left out or given a neutral placeholder).
    pub spec: serde_json::Value,
    /// Terraform paths of unknown values.
    pub unknown: Vec<Path>,
}

/// Turns a rules verdict into diagnostics on Terraform paths, leaving out every finding that depends on
/// a value not known yet (it is checked again when Terraform knows it). The `schema` gives the Terraform
/// spelling: which JSON fields are blocks addressed with `[0]`, and which names messages mention.
pub(crate) fn verdict_diagnostics(
    verdict: &api::rules::Verdict,
    extracted: &Extracted,
    schema: &Block,
    kind_label: &str,
) -> Vec<pb::Diagnostic> {
    let block_lists: Vec<String> = schema
        .blocks
        .iter()
        .filter(|b| b.nesting == Nesting::List && b.max_items == 1)
        .map(|b| diag::camel_case(b.name))
        .collect();
    let names = schema.names();
    let touches_unknown = |inputs: &[Path]| {
        inputs.iter().any(|i| {
            extracted
                .unknown
                .iter()
                .any(|u| u.starts_with(i) || i.starts_with(u))
        })
    };
    let mut out = Vec::new();
    for v in &verdict.violations {
        let path = diag::terraform_path(&v.path, &block_lists);
        let mut inputs = rule_inputs(v.rule);
        inputs.push(path.clone());
        if touches_unknown(&inputs) {
            continue;
        }
        out.push(diag::error(
            format!("Invalid {kind_label}: {}", v.rule.title()),
            diag::terraform_wording(&v.message, &names),
            Some(&path),
        ));
    }
    for w in &verdict.warnings {
        let path = diag::terraform_path(&w.path, &block_lists);
        if touches_unknown(std::slice::from_ref(&path)) {
            continue;
        }
        out.push(diag::warning(
            format!("{kind_label} advice"),
            diag::terraform_wording(&w.message, &names),
            Some(&path),
        ));
    }
    out
}

/// Terraform attributes each rule reads (beyond the path it reports at).
fn rule_inputs(rule: api::rules::Rule) -> Vec<Path> {
    use api::rules::Rule;
    let names: &[&str] = match rule {
        Rule::OnePool => &["gateway_nodepool_name", "gateway_vmss_profile"],
        Rule::InstancesFitPrefix => &[
            "gateway_nodepool_name",
            "gateway_vmss_profile",
            "instance_count",
            "public_ip_prefix_size",
        ],
        Rule::PrivateNeedsNodepool => &["provision_public_ips", "gateway_vmss_profile"],
        Rule::PublicIpPrefixId => &["provision_public_ips", "public_ip_prefix_id"],
        _ => &[],
    };
    names.iter().map(|n| Path::attr(n)).collect()
}

/// Reads a string attribute into `spec[json_key]`, tracking unknowns.
pub(crate) fn put_string(
    obj: &Value,
    tf: &str,
    json_key: &str,
    spec: &mut serde_json::Map<String, serde_json::Value>,
    unknown: &mut Vec<Path>,
    base: &Path,
) {
    match obj.get(tf) {
        Value::Null => {}
        Value::Unknown(_) => unknown.push(child(base, tf)),
        Value::String(s) => {
            spec.insert(json_key.into(), serde_json::Value::String(s.clone()));
        }
        other => {
            spec.insert(json_key.into(), to_json(other));
        }
    }
}

/// Reads a number attribute into `spec[json_key]` (whole numbers as integers, anything else as is, so
/// that the rules report it).
pub(crate) fn put_number(
    obj: &Value,
    tf: &str,
    json_key: &str,
    spec: &mut serde_json::Map<String, serde_json::Value>,
    unknown: &mut Vec<Path>,
    base: &Path,
) {
    match obj.get(tf) {
        Value::Null => {}
        Value::Unknown(_) => unknown.push(child(base, tf)),
        v => {
            let j = match v.as_i64() {
                Some(i) => serde_json::Value::from(i),
                None => to_json(v),
            };
            spec.insert(json_key.into(), j);
        }
    }
}

pub(crate) fn child(base: &Path, name: &str) -> Path {
    let mut p = base.clone();
    p.0.push(diag::Step::Attr(name.to_string()));
    p
}

/// Known value → JSON (unknowns become null; callers track them separately).
pub fn to_json(v: &Value) -> serde_json::Value {
    use crate::value::Number;
    match v {
        Value::Null | Value::Unknown(_) => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Number(Number::Int(i)) => (*i).into(),
        Value::Number(Number::UInt(u)) => (*u).into(),
        Value::Number(Number::Float(f)) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Number(Number::Text(s)) => s
            .parse::<serde_json::Number>()
            .map(serde_json::Value::Number)
            .unwrap_or_else(|_| serde_json::Value::String(s.clone())),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::List(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Map(m) => serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

/// Builds an object value from pairs.
pub fn object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// Kubernetes conditions as the `conditions` attribute value.
pub fn conditions_value(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> Value {
    Value::List(
        conditions
            .iter()
            .map(|c| {
                object([
                    ("type", Value::str(&c.type_)),
                    ("status", Value::str(&c.status)),
                    ("reason", Value::str(&c.reason)),
                    ("message", Value::str(&c.message)),
                ])
            })
            .collect(),
    )
}

/// The `conditions` attribute type.
pub fn conditions_type() -> crate::schema::Type {
    use crate::schema::Type;
    Type::List(Box::new(Type::Object(vec![
        ("type", Type::String),
        ("status", Type::String),
        ("reason", Type::String),
        ("message", Type::String),
    ])))
}

/// Which operation a timeout applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Creation.
    Create,
    /// Update.
    Update,
    /// Deletion.
    Delete,
}

/// Reads `timeouts.<op>` (default when unset); a malformed duration is an error naming the attribute.
pub fn timeout(state: &Value, op: Op, default: Duration) -> Result<Duration, pb::Diagnostic> {
    let key = match op {
        Op::Create => "create",
        Op::Update => "update",
        Op::Delete => "delete",
    };
    match state.get("timeouts").get(key).as_str() {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            diag::error(
                "Invalid timeout",
                format!(
                    "timeouts.{key} = \"{s}\" is not a duration ({e}); write e.g. \"30s\", \"10m\" or \"1h\""
                ),
                Some(&Path(vec![
                    diag::Step::Attr("timeouts".into()),
                    diag::Step::Attr(key.into()),
                ])),
            )
        }),
    }
}

/// Checks every `timeouts` value that is known.
pub fn validate_timeouts(config: &Value) -> Vec<pb::Diagnostic> {
    [Op::Create, Op::Update, Op::Delete]
        .into_iter()
        .filter_map(|op| timeout(config, op, Duration::ZERO).err())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_and_name_the_bad_attribute() {
        let cfg = object([(
            "timeouts",
            object([("create", Value::str("90s")), ("delete", Value::str("soon"))]),
        )]);
        assert_eq!(
            timeout(&cfg, Op::Create, Duration::ZERO).ok(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            timeout(&cfg, Op::Update, Duration::from_secs(7)).ok(),
            Some(Duration::from_secs(7))
        );
        let diags = validate_timeouts(&cfg);
        assert_eq!(diags.len(), 1);
        assert!(diags[0].detail.contains("timeouts.delete"), "{}", diags[0].detail);
    }
}
