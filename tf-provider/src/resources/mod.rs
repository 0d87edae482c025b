//! The two resource types (and their data sources): schemas, the mapping between Terraform values and
//! Kubernetes specs, plan-time validation with `api::rules`, and planning. Pure: no I/O here.

/// The [`Object`] methods a kind's module already defines as free functions of the same name (`manifest`,
/// `state_from_object`, `is_ready`, `describe_wait`), written once for every kind's impl.
macro_rules! object_fns_from_module {
    () => {
        fn manifest(planned: &crate::value::Value) -> serde_json::Value {
            manifest(planned)
        }
        fn state_from_object(prior: &crate::value::Value, obj: &Self) -> crate::value::Value {
            state_from_object(prior, obj)
        }
        fn is_ready(obj: &Self) -> bool {
            is_ready(obj)
        }
        fn describe_wait(obj: Option<&Self>) -> String {
            describe_wait(obj)
        }
    };
}

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
    /// Every kind: the provider's resource and data source types.
    pub const ALL: [Kind; 2] = [Kind::Sgc, Kind::Pool];

    /// The Terraform type name.
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Sgc => SGC_TYPE,
            Kind::Pool => POOL_TYPE,
        }
    }

    /// Parses a Terraform type name.
    pub fn from_type_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_name() == name)
    }

    /// The attributes that name an object (its metadata): `namespace` and `name`, or `name`.
    pub fn identity(self) -> &'static [&'static str] {
        match self {
            Kind::Sgc => sgc::IDENTITY,
            Kind::Pool => pool::IDENTITY,
        }
    }

    /// How users name an object (the import ID): its identity values joined by `/`.
    pub fn display_id(self, v: &Value) -> String {
        self.identity()
            .iter()
            .map(|a| v.get(a).as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("/")
    }

    /// How long create and update wait for [`Object::is_ready`] when `timeouts` does not say.
    pub fn default_apply_timeout(self) -> Duration {
        match self {
            Kind::Sgc => sgc::DEFAULT_APPLY_TIMEOUT,
            Kind::Pool => pool::DEFAULT_APPLY_TIMEOUT,
        }
    }

    /// What apply's diagnostic says of an object the wait gave up on (after its kind and name).
    pub fn not_ready(self) -> &'static str {
        match self {
            Kind::Sgc => sgc::NOT_READY,
            Kind::Pool => pool::NOT_READY,
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

    /// The spec fields (CRD spelling) the resource manages: every configurable attribute and block but the
    /// identity and `timeouts`.
    pub fn spec_fields(self) -> Vec<String> {
        let schema = self.resource_schema();
        let identity = self.identity();
        schema
            .attributes
            .iter()
            .filter(|a| (a.required || a.optional) && !identity.contains(&a.name))
            .map(|a| a.name)
            .chain(
                schema
                    .blocks
                    .iter()
                    .filter(|b| b.name != "timeouts")
                    .map(|b| b.name),
            )
            .map(diag::camel_case)
            .collect()
    }

    /// Plan-time rule check of a (possibly partly unknown) configuration, as an in-place update of
    /// `prior` when given.
    /// The rules are `api::rules`' (through their JSON entry points, which also report wrong enum values
    /// such as `default_route`); an update adds their update warnings. Planning never contacts the
    /// cluster: configurations are checked without pool facts, and a pool's declared `instance_count`
    /// against its prefix size (the node count is not known offline).
    pub fn validate(self, config: &Value, prior: Option<&Value>) -> Vec<pb::Diagnostic> {
        if config.is_unknown() || config.is_null() {
            return Vec::new();
        }
        let (schema, identity) = (self.resource_schema(), self.identity());
        let extracted = extract(&schema, config, identity);
        let object = serde_json::json!({ "spec": extracted.spec });
        let old = prior.map(|p| serde_json::json!({ "spec": extract(&schema, p, identity).spec }));
        let (verdict, inputs, label): (_, RuleInputs, _) = match self {
            Kind::Sgc => (
                api::rules::validate_sgc_object(&object, old.as_ref(), &api::rules::PoolFacts::default()),
                api::rules::sgc_rule_inputs,
                "static gateway configuration",
            ),
            Kind::Pool => (
                api::rules::validate_pool_object(&object, old.as_ref(), None),
                api::rules::pool_rule_inputs,
                "gateway pool",
            ),
        };
        let mut diags = verdict_diagnostics(&verdict, &extracted, &schema, inputs, label);
        diags.extend(validate_names(config, identity));
        diags.extend(validate_timeouts(config));
        diags
    }
}

/// The Kubernetes object of a kind, as the provider reads, writes and waits for it.
pub trait Object:
    kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug
{
    /// The resource type (and with it the kind's facts).
    const KIND: Kind;
    /// The API of the object a state or planned value names.
    fn api(client: kube::Client, v: &Value) -> kube::Api<Self>;
    /// The object to server-side apply for a planned value.
    fn manifest(planned: &Value) -> serde_json::Value;
    /// The state for the object read from the cluster (prior spelling kept where only normalisation differs).
    fn state_from_object(prior: &Value, obj: &Self) -> Value;
    /// Whether apply's wait is over.
    fn is_ready(obj: &Self) -> bool;
    /// Why [`Object::is_ready`] does not hold, for the timeout diagnostic.
    fn describe_wait(obj: Option<&Self>) -> String;
}

/// The `name` of a state or planned value (both kinds name their object with it).
pub fn object_name(v: &Value) -> &str {
    v.get("name").as_str().unwrap_or_default()
}

/// A spec built from a Terraform value, with the paths whose values are not known yet.
#[derive(Debug, Default)]
pub struct Extracted {
    /// The spec as JSON (unknown fields left out or given a neutral placeholder).
    pub spec: serde_json::Value,
    /// Terraform paths of unknown values.
    pub unknown: Vec<Path>,
}

/// A kind's `api::rules::*_rule_inputs`.
pub(crate) type RuleInputs = fn(api::rules::Rule) -> &'static [&'static str];

/// Turns a rules verdict into diagnostics on Terraform paths, leaving out every finding that depends on
/// a value not known yet (it is checked again when Terraform knows it). The `schema` gives the Terraform
/// spelling: which JSON fields are blocks addressed with `[0]`, and which names messages mention. `inputs`
/// is the kind's `api::rules::*_rule_inputs`: the fields a rule reads besides the one it reports.
pub(crate) fn verdict_diagnostics(
    verdict: &api::rules::Verdict,
    extracted: &Extracted,
    schema: &Block,
    inputs: RuleInputs,
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
        let mut read: Vec<Path> = inputs(v.rule)
            .iter()
            .map(|i| diag::terraform_path(i, &block_lists))
            .collect();
        read.push(path.clone());
        if touches_unknown(&read) {
            continue;
        }
        out.push(diag::error(
            format!(
                "Invalid {kind_label}: {}",
                diag::terraform_wording(v.rule.title(), &names)
            ),
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

/// The CRD spec a Terraform object describes: every configurable attribute and nested block (but
/// `timeouts`, and the `identity` attributes, which are metadata) under its camelCase name. Unknown values
/// are left out and their paths recorded.
pub fn extract(schema: &Block, obj: &Value, identity: &[&str]) -> Extracted {
    let mut unknown: Vec<Path> = identity
        .iter()
        .filter(|a| obj.get(a).is_unknown())
        .map(|a| Path::attr(a))
        .collect();
    let spec = spec_fields(schema, obj, identity, &Path::default(), &mut unknown);
    Extracted {
        spec: serde_json::Value::Object(spec),
        unknown,
    }
}

/// The defaults admission gives the fields of an empty spec (`api::defaults`, a JSON patch), as Terraform
/// attribute values: what plan shows for an optional+computed attribute left unset.
pub(crate) fn spec_defaults<P: serde::Serialize>(
    defaults: impl Fn(&serde_json::Value) -> P,
) -> Vec<(String, Value)> {
    let ops = serde_json::to_value(defaults(&serde_json::json!({ "spec": {} }))).unwrap_or_default();
    let mut out = Vec::new();
    for op in ops.as_array().into_iter().flatten() {
        if op.get("op").and_then(serde_json::Value::as_str) != Some("add") {
            continue;
        }
        let field = op
            .get("path")
            .and_then(serde_json::Value::as_str)
            .and_then(|p| p.strip_prefix("/spec/"))
            .filter(|f| !f.contains('/'));
        if let (Some(field), Some(value)) = (field, op.get("value")) {
            out.push((diag::snake_case(field), Value::from_json(value)));
        }
    }
    out
}

/// The object of kind `K` to server-side apply for a planned value: the `identity` attributes are its
/// metadata (`name`, `namespace`), the rest its spec.
pub(crate) fn manifest<K: kube::Resource<DynamicType = ()>>(
    schema: &Block,
    planned: &Value,
    identity: &[&str],
) -> serde_json::Value {
    let metadata: serde_json::Map<String, serde_json::Value> = identity
        .iter()
        .map(|a| (a.to_string(), to_json(planned.get(a))))
        .collect();
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
        "spec": extract(schema, planned, identity).spec,
    })
}

/// A valid IPv4 CIDR standing in for an unknown list element (the one list attribute is
/// `exclude_cidrs`): it keeps later indexes aligned, and findings at its index are dropped as unknown.
const UNKNOWN_ITEM: &str = "192.0.2.0/32";

fn spec_fields(
    block: &Block,
    obj: &Value,
    skip: &[&str],
    base: &Path,
    unknown: &mut Vec<Path>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut spec = serde_json::Map::new();
    for a in block
        .attributes
        .iter()
        .filter(|a| (a.required || a.optional) && !skip.contains(&a.name))
    {
        let path = child(base, a.name);
        let json = match obj.get(a.name) {
            Value::Null => continue,
            Value::Unknown(_) => {
                unknown.push(path);
                continue;
            }
            Value::List(items) => serde_json::Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| match item {
                        Value::Unknown(_) => {
                            let mut p = path.clone();
                            p.0.push(diag::Step::Index(i as i64));
                            unknown.push(p);
                            serde_json::Value::String(UNKNOWN_ITEM.into())
                        }
                        known => to_json(known),
                    })
                    .collect(),
            ),
            v => to_json(v),
        };
        spec.insert(diag::camel_case(a.name), json);
    }
    for b in block.blocks.iter().filter(|b| b.name != "timeouts") {
        let path = child(base, b.name);
        let (item, path) = match (b.nesting, obj.get(b.name)) {
            (_, Value::Unknown(_)) => {
                unknown.push(path);
                continue;
            }
            // At most one item (max_items 1), addressed as `[0]`.
            (Nesting::List, Value::List(items)) => match items.first() {
                Some(item) => {
                    let mut p = path;
                    p.0.push(diag::Step::Index(0));
                    (item, p)
                }
                None => continue,
            },
            (Nesting::Single, item @ Value::Map(_)) => (item, path),
            _ => continue,
        };
        if item.is_unknown() {
            unknown.push(path.clone());
        }
        let fields = spec_fields(&b.block, item, &[], &path, unknown);
        spec.insert(diag::camel_case(b.name), fields.into());
    }
    spec
}

fn child(base: &Path, name: &str) -> Path {
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
        // cty numbers have no integer type: a whole float is written as an integer, as the CRD expects.
        Value::Number(n @ Number::Float(_)) if n.as_i64().is_some() => n.as_i64().into(),
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

/// An Azure name or ID read back from the cluster: the prior spelling when the two differ only in case
/// (Azure names are case-insensitive, so that is no drift), an empty string when the prior one was empty
/// and the cluster has none, otherwise the cluster's value.
pub(crate) fn remote_string(remote: Option<&str>, prior: &Value) -> Value {
    match (remote, prior.as_str()) {
        (Some(r), Some(p)) if r.eq_ignore_ascii_case(p) => Value::str(p),
        (Some(r), _) if !r.is_empty() => Value::str(r),
        (_, Some("")) => Value::str(""),
        _ => Value::Null,
    }
}

/// The state of an object: its kind's `attributes`, then what every kind's state ends with: its status
/// `conditions`, and the `timeouts` of `prior` (Terraform's setting, which the object does not hold).
pub(crate) fn state<const N: usize>(
    attributes: [(&str, Value); N],
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    prior: &Value,
) -> Value {
    let common = [
        ("conditions", conditions_value(conditions)),
        ("timeouts", prior.get("timeouts").clone()),
    ];
    object(attributes.into_iter().chain(common))
}

/// Builds an object value from pairs.
pub fn object<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// Is there a `Ready=True` condition about `generation` (the object's current one)? A condition without
/// `observedGeneration` does not count when the object has a generation: after an update it could be about the
/// previous spec, and apply would return before the operator has seen the change. Both kinds wait with this.
pub(crate) fn ready_for_generation(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    generation: Option<i64>,
) -> bool {
    conditions.iter().any(|c| {
        c.type_ == api::names::CONDITION_READY
            && c.status == "True"
            && (generation.is_none() || c.observed_generation >= generation)
    })
}

/// Kubernetes conditions as the `conditions` attribute value.
fn conditions_value(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> Value {
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

/// Checks the known `identity` attributes (the object's name, namespace) with the Kubernetes name syntax.
pub(crate) fn validate_names(config: &Value, identity: &[&str]) -> Vec<pb::Diagnostic> {
    identity
        .iter()
        .filter_map(|attr| {
            let s = config.get(attr).as_str()?;
            // Namespaces are labels (no dots); object names are subdomains.
            let (valid, rule) = if *attr == "namespace" {
                (
                    api::rules::is_dns1123_label(s),
                    "lowercase letters, digits and '-', at most 63 characters",
                )
            } else {
                (
                    api::rules::is_dns1123_subdomain(s),
                    "lowercase letters, digits, '-' and '.', at most 253 characters",
                )
            };
            (!valid).then(|| {
                diag::error(
                    format!("Invalid {attr}"),
                    format!("'{s}' is not a valid Kubernetes {attr} ({rule})"),
                    Some(&Path::attr(attr)),
                )
            })
        })
        .collect()
}

/// Checks every `timeouts` value that is known.
pub fn validate_timeouts(config: &Value) -> Vec<pb::Diagnostic> {
    [Op::Create, Op::Update, Op::Delete]
        .into_iter()
        .filter_map(|op| timeout(config, op, Duration::ZERO).err())
        .collect()
}

/// What the kinds' unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{Kind, object, pb};
    use crate::value::Value;

    impl Kind {
        /// A configuration as Terraform sends it: the given attributes, null for the others.
        pub(crate) fn config(self, pairs: Vec<(&str, Value)>) -> Value {
            self.resource_schema().normalise(object(pairs))
        }
    }

    /// Where the error diagnostics point, written as `.exclude_cidrs[1]`.
    pub(crate) fn error_paths(diags: &[pb::Diagnostic]) -> Vec<String> {
        diags
            .iter()
            .filter(|d| d.severity == pb::diagnostic::Severity::Error as i32)
            .map(|d| {
                d.attribute
                    .as_ref()
                    .map(|p| {
                        p.steps
                            .iter()
                            .map(|s| match &s.selector {
                                Some(pb::attribute_path::step::Selector::AttributeName(a)) => format!(".{a}"),
                                Some(pb::attribute_path::step::Selector::ElementKeyInt(i)) => {
                                    format!("[{i}]")
                                }
                                _ => "?".into(),
                            })
                            .collect::<String>()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_counts_only_conditions_about_the_current_generation() {
        let ready = |status: &str, observed: Option<i64>| {
            serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>(
                serde_json::json!({"type": api::names::CONDITION_READY, "status": status, "reason": "R",
                                   "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z",
                                   "observedGeneration": observed}),
            )
            .expect("condition")
        };
        assert!(ready_for_generation(&[ready("True", Some(2))], Some(2)));
        assert!(ready_for_generation(&[ready("True", Some(3))], Some(2)));
        assert!(
            !ready_for_generation(&[ready("True", Some(1))], Some(2)),
            "about the old spec"
        );
        assert!(
            !ready_for_generation(&[ready("True", None)], Some(2)),
            "unknown generation"
        );
        assert!(!ready_for_generation(&[ready("False", Some(2))], Some(2)));
        assert!(!ready_for_generation(&[], Some(1)));
        assert!(
            ready_for_generation(&[ready("True", None)], None),
            "objects without a generation"
        );
    }

    #[test]
    fn extract_spells_the_spec_as_the_crd_does() {
        use crate::value::Number;
        let at = |steps: Vec<diag::Step>| Path(steps);
        let cfg = sgc::resource_schema().normalise(object([
            ("namespace", Value::str("app")),
            ("name", Value::unknown()),
            ("gateway_nodepool_name", Value::str("gw")),
            ("provision_public_ips", Value::Bool(false)),
            (
                "exclude_cidrs",
                Value::List(vec![Value::unknown(), Value::str("10.0.0.0/8")]),
            ),
            ("egress_ip_prefix", Value::str("20.0.0.0/31")),
            ("timeouts", object([("create", Value::str("1m"))])),
        ]));
        let e = sgc::extract(&cfg);
        assert_eq!(
            e.spec,
            serde_json::json!({
                "gatewayNodepoolName": "gw",
                "provisionPublicIps": false,
                "excludeCidrs": [UNKNOWN_ITEM, "10.0.0.0/8"],
            })
        );
        assert_eq!(
            e.unknown,
            vec![
                Path::attr("name"),
                at(vec![
                    diag::Step::Attr("exclude_cidrs".into()),
                    diag::Step::Index(0)
                ]),
            ]
        );

        let cfg = pool::resource_schema().normalise(object([
            ("name", Value::str("gw")),
            ("public_ip_prefix_size", Value::Number(Number::Float(30.0))),
            (
                "gateway_vmss_profile",
                Value::List(vec![object([
                    ("vmss_resource_group", Value::str("rg")),
                    ("vmss_name", Value::unknown()),
                ])]),
            ),
        ]));
        let e = pool::extract(&cfg);
        assert_eq!(
            e.spec,
            serde_json::json!({
                "publicIpPrefixSize": 30,
                "gatewayVmssProfile": {"vmssResourceGroup": "rg"},
            })
        );
        assert_eq!(
            e.unknown,
            vec![at(vec![
                diag::Step::Attr("gateway_vmss_profile".into()),
                diag::Step::Index(0),
                diag::Step::Attr("vmss_name".into()),
            ])]
        );
    }

    #[test]
    fn manifests_name_the_crd_kind_and_carry_identity_as_metadata() {
        let planned = sgc::resource_schema().normalise(object([
            ("namespace", Value::str("app")),
            ("name", Value::str("egress")),
            ("gateway_nodepool_name", Value::str("gw")),
        ]));
        assert_eq!(
            sgc::manifest(&planned),
            serde_json::json!({
                "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
                "kind": "StaticGatewayConfiguration",
                "metadata": {"namespace": "app", "name": "egress"},
                "spec": {"gatewayNodepoolName": "gw"},
            })
        );
        let planned = pool::resource_schema().normalise(object([
            ("name", Value::str("gw")),
            ("gateway_nodepool_name", Value::str("gw")),
            (
                "public_ip_prefix_size",
                Value::Number(crate::value::Number::Int(31)),
            ),
        ]));
        assert_eq!(
            pool::manifest(&planned),
            serde_json::json!({
                "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
                "kind": "GatewayPool",
                "metadata": {"name": "gw"},
                "spec": {"gatewayNodepoolName": "gw", "publicIpPrefixSize": 31},
            })
        );
    }

    #[test]
    fn rule_inputs_name_attributes_of_the_schema() {
        use api::rules::Rule;
        let rules = [
            Rule::OnePool,
            Rule::VmssProfileComplete,
            Rule::PrefixSize,
            Rule::InstancesFitPrefix,
            Rule::PrivateNeedsNodepool,
            Rule::PublicIpPrefixId,
            Rule::ExcludeCidrs,
            Rule::DefaultRoute,
            Rule::Immutable,
            Rule::FieldType,
        ];
        let kinds: [(Kind, RuleInputs); 2] = [
            (Kind::Sgc, api::rules::sgc_rule_inputs),
            (Kind::Pool, api::rules::pool_rule_inputs),
        ];
        for (kind, inputs) in kinds {
            let names = kind.resource_schema().names();
            for rule in rules {
                for input in inputs(rule) {
                    let path = diag::terraform_path(input, &[] as &[&str]);
                    for step in &path.0 {
                        if let diag::Step::Attr(a) = step {
                            assert!(
                                names.contains(&a.as_str()),
                                "{kind:?} {rule:?}: {input} is no attribute ({a})"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn defaults_come_from_admission() {
        assert_eq!(
            spec_defaults(api::defaults::sgc_defaults),
            vec![
                ("default_route".to_string(), Value::str("staticEgressGateway")),
                ("provision_public_ips".to_string(), Value::Bool(true)),
            ]
        );
    }

    #[test]
    fn managed_spec_fields_are_the_configurable_ones_in_crd_spelling() {
        assert_eq!(
            Kind::Pool.spec_fields(),
            vec![
                "gatewayNodepoolName",
                "publicIpPrefixSize",
                "instanceCount",
                "gatewayVmssProfile"
            ]
        );
        assert_eq!(
            Kind::Sgc.spec_fields(),
            vec![
                "gatewayNodepoolName",
                "defaultRoute",
                "provisionPublicIps",
                "publicIpPrefixId",
                "excludeCidrs",
                "gatewayVmssProfile"
            ]
        );
    }

    #[test]
    fn objects_are_named_by_their_identity() {
        let v = object([
            ("namespace", Value::str("app")),
            ("name", Value::str("egress")),
            ("conditions", Value::Null),
        ]);
        assert_eq!(Kind::Sgc.display_id(&v), "app/egress");
        assert_eq!(Kind::Pool.display_id(&v), "egress");
    }

    #[test]
    fn identity_names_are_kubernetes_names() {
        let cfg = object([("namespace", Value::str("App")), ("name", Value::unknown())]);
        let diags = validate_names(&cfg, &["namespace", "name"]);
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].summary, "Invalid namespace");
        assert_eq!(diags[0].attribute, Some(Path::attr("namespace").to_proto()));
        assert!(validate_names(&object([("name", Value::str("gw.pool"))]), &["name"]).is_empty());
        // A namespace is a DNS label: dots are refused at plan, as the API server would.
        let diags = validate_names(&object([("namespace", Value::str("a.b"))]), &["namespace"]);
        assert_eq!(diags.len(), 1, "{diags:?}");
    }

    #[test]
    fn remote_strings_keep_the_prior_spelling_and_show_drift() {
        assert_eq!(
            remote_string(Some("gwpool"), &Value::str("GwPool")),
            Value::str("GwPool")
        );
        assert_eq!(
            remote_string(Some("other"), &Value::str("GwPool")),
            Value::str("other")
        );
        assert_eq!(remote_string(None, &Value::str("")), Value::str(""));
        assert_eq!(remote_string(Some(""), &Value::Null), Value::Null);
        assert_eq!(remote_string(None, &Value::str("GwPool")), Value::Null);
    }

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
