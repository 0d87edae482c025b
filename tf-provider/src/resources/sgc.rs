//! `egressgateway_static_gateway_configuration`: a StaticGatewayConfiguration.

use std::time::Duration;

use api::StaticGatewayConfiguration;

use super::plan::{Derived, PlanRules, plan as plan_generic};
use super::{Extracted, conditions_type, object, remote_string};
use crate::diag::Path;
use crate::schema::{Attribute, Block, NestedBlock, Nesting, Type, timeouts_block};
use crate::value::Value;

/// The attributes that name the object (metadata, not spec).
pub(crate) const IDENTITY: &[&str] = &["namespace", "name"];
/// How long create and update wait for the configuration to be Ready, with its egress prefix, when
/// `timeouts` does not say.
pub(crate) const DEFAULT_APPLY_TIMEOUT: Duration = Duration::from_secs(600);
/// What the diagnostic says of a configuration apply's wait gave up on.
pub(crate) const NOT_READY: &str = "did not become Ready";

fn vmss_profile_block() -> NestedBlock {
    NestedBlock {
        name: "gateway_vmss_profile",
        block: Block {
            description: "A self-managed gateway VMSS (instead of `gateway_nodepool_name`). Changing it replaces the configuration.",
            attributes: vec![
                Attribute::required(
                    "vmss_resource_group",
                    Type::String,
                    "Resource group of the gateway VMSS (the cluster's subscription).",
                ),
                Attribute::required("vmss_name", Type::String, "Name of the gateway VMSS."),
                Attribute::required(
                    "public_ip_prefix_size",
                    Type::Number,
                    "Length of the public IP prefix this configuration gets, 28 to 31; the VMSS may have at most 2^(32 - size) instances.",
                ),
            ],
            blocks: vec![],
        },
        nesting: Nesting::List,
        min_items: 0,
        max_items: 1,
        force_new: true,
    }
}

fn server_profile_type() -> Type {
    Type::Object(vec![
        ("ip", Type::String),
        ("port", Type::Number),
        ("public_key", Type::String),
    ])
}

/// The attributes that decide the egress mode: a managed prefix, the bring-your-own prefix, or the gateway
/// nodes' private IPs.
const EGRESS_MODE: &[&str] = &["provision_public_ips", "public_ip_prefix_id"];

/// What an in-place update does to what the operator reports. The egress prefix is decided by the egress
/// mode (and by the pool and the VMSS prefix size, which replace the configuration). The server profile is
/// the pool's load-balancer frontend, the configuration's own load-balancer rule port and its key Secret,
/// kept for the configuration's life, unless the operator drops the rule because the new mode is blocked
/// (a managed prefix of the wrong length), after which the port may differ: so it follows the mode too.
/// `default_route` and `exclude_cidrs` only steer pods' routes; the conditions follow every change.
const DERIVED: &[(&str, Derived)] = &[
    ("uid", Derived::On(&[])),
    ("egress_ip_prefix", Derived::On(EGRESS_MODE)),
    ("gateway_server_profile", Derived::On(EGRESS_MODE)),
];

/// The resource schema.
pub fn resource_schema() -> Block {
    Block {
        description: "A StaticGatewayConfiguration: a static egress IP prefix for the pods of a namespace that name it in the annotation `kubernetes.azure.com/static-gateway-configuration`. Validated at plan time with the same rules the admission webhook enforces; apply waits until the configuration is Ready and its egress prefix is known.",
        attributes: vec![
            Attribute::computed("id", Type::String, "`namespace/name`."),
            Attribute::computed(
                "uid",
                Type::String,
                "The configuration's Kubernetes UID (its WireGuard key Secret is `sgw-<uid>`); a replaced configuration gets a new one, unknown until apply.",
            ),
            Attribute::required("namespace", Type::String, "Namespace of the configuration (the pods' namespace). Changing it replaces the configuration.").force_new(),
            Attribute::required("name", Type::String, "Name of the configuration. Changing it replaces the configuration.").force_new(),
            Attribute::optional(
                "gateway_nodepool_name",
                Type::String,
                "Name of the AKS gateway node pool (e.g. `azurerm_kubernetes_cluster_node_pool.gw.name`). Exactly one of `gateway_nodepool_name` and `gateway_vmss_profile`. Changing it replaces the configuration.",
            )
            .force_new()
            .case_insensitive(),
            Attribute::optional_computed(
                "default_route",
                Type::String,
                "`staticEgressGateway` (default: all traffic except `exclude_cidrs` uses the gateway) or `azureNetworking` (only `exclude_cidrs` use it).",
            ),
            Attribute::optional_computed(
                "provision_public_ips",
                Type::Bool,
                "Egress from a public IP prefix (`true`, default) or from the gateway nodes' private IPs (`false`, needs `gateway_nodepool_name`).",
            ),
            Attribute::optional(
                "public_ip_prefix_id",
                Type::String,
                "ARM ID of an existing public IP prefix to egress from (bring your own); only with `provision_public_ips = true`.",
            )
            .case_insensitive(),
            Attribute::optional(
                "exclude_cidrs",
                Type::List(Box::new(Type::String)),
                "IPv4 CIDRs that bypass the gateway (or, with `azureNetworking`, the only ones that use it).",
            ),
            Attribute::computed(
                "egress_ip_prefix",
                Type::String,
                "The egress source addresses: the public IP prefix CIDR, or the comma-separated private IPs in private-IP mode. Feed it to firewall allowlists.",
            ),
            Attribute::computed(
                "gateway_server_profile",
                server_profile_type(),
                "Where pods' WireGuard tunnels terminate: load-balancer frontend `ip`, `port` and gateway `public_key`.",
            ),
            Attribute::computed(
                "conditions",
                conditions_type(),
                "The configuration's status conditions: Accepted, Ready and, once the configuration needed a look, Degraded (True with reason PoolExceedsPrefix or InstancesWithoutEgressIp, False with AsExpected once that is over).",
            ),
        ],
        blocks: vec![vmss_profile_block(), timeouts_block("How long apply waits for readiness (default create/update `10m`) and delete for the object to be gone (default `5m`).")],
    }
}

/// The data source schema: identity in, everything else read.
pub fn data_source_schema() -> Block {
    resource_schema().to_data_source(
        "Reads an existing StaticGatewayConfiguration, e.g. to use its egress prefix.",
        IDENTITY,
        &[(
            "gateway_vmss_profile",
            "The self-managed gateway VMSS, if the configuration uses one.",
        )],
    )
}

/// The spec part of a value, with the paths of unknown values.
pub fn extract(config: &Value) -> Extracted {
    super::extract(&resource_schema(), config, IDENTITY)
}

/// Plans a create or update.
pub fn plan(prior: &Value, config: &Value) -> (Value, Vec<Path>) {
    let id = match (config.get("namespace").as_str(), config.get("name").as_str()) {
        (Some(ns), Some(n)) => Value::str(format!("{ns}/{n}")),
        _ => Value::unknown(),
    };
    let defaults = super::spec_defaults(api::defaults::sgc_defaults);
    plan_generic(
        &resource_schema(),
        prior,
        config,
        &PlanRules {
            defaults: &defaults,
            id,
            derived: DERIVED,
        },
    )
}

/// The object to server-side apply for a planned state.
pub fn manifest(planned: &Value) -> serde_json::Value {
    super::manifest::<StaticGatewayConfiguration>(&resource_schema(), planned, IDENTITY)
}

/// The state for an object read from the cluster. Values equal to `prior` up to normalisation keep the
/// prior spelling (no spurious diffs); real differences are the remote value (drift).
pub fn state_from_object(prior: &Value, obj: &StaticGatewayConfiguration) -> Value {
    let ns = obj.metadata.namespace.clone().unwrap_or_default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    let spec = &obj.spec;
    let cidrs = if spec.exclude_cidrs.is_empty() && prior.get("exclude_cidrs").is_null() {
        Value::Null
    } else {
        Value::List(spec.exclude_cidrs.iter().map(Value::str).collect())
    };
    let profile = match &spec.gateway_vmss_profile {
        Some(p) if !p.is_empty() => Value::List(vec![object([
            ("vmss_resource_group", Value::str(&p.vmss_resource_group)),
            ("vmss_name", Value::str(&p.vmss_name)),
            (
                "public_ip_prefix_size",
                Value::Number(crate::value::Number::Int(p.public_ip_prefix_size.into())),
            ),
        ])]),
        _ => Value::List(vec![]),
    };
    let status = obj.status.clone().unwrap_or_default();
    let server_profile = match &status.gateway_server_profile {
        Some(g) => object([
            ("ip", Value::str(&g.ip)),
            ("port", Value::Number(crate::value::Number::Int(g.port.into()))),
            ("public_key", Value::str(&g.public_key)),
        ]),
        None => Value::Null,
    };
    let attributes = [
        ("id", Value::str(format!("{ns}/{name}"))),
        ("uid", obj.metadata.uid.as_deref().map_or(Value::Null, Value::str)),
        ("namespace", Value::str(ns)),
        ("name", Value::str(name)),
        (
            "gateway_nodepool_name",
            remote_string(
                spec.gateway_nodepool_name.as_deref(),
                prior.get("gateway_nodepool_name"),
            ),
        ),
        ("default_route", Value::str(spec.default_route.as_str())),
        ("provision_public_ips", Value::Bool(spec.provision_public_ips)),
        (
            "public_ip_prefix_id",
            remote_string(
                spec.public_ip_prefix_id.as_deref(),
                prior.get("public_ip_prefix_id"),
            ),
        ),
        ("exclude_cidrs", cidrs),
        ("gateway_vmss_profile", profile),
        (
            "egress_ip_prefix",
            status.egress_ip_prefix.clone().map_or(Value::Null, Value::String),
        ),
        ("gateway_server_profile", server_profile),
    ];
    super::state(attributes, &status.conditions, prior)
}

impl super::Object for StaticGatewayConfiguration {
    const KIND: super::Kind = super::Kind::Sgc;
    fn api(client: kube::Client, v: &Value) -> kube::Api<Self> {
        kube::Api::namespaced(client, v.get("namespace").as_str().unwrap_or_default())
    }
    object_fns_from_module!();
}

/// Is the configuration usable: Ready for its current generation, with the egress prefix known?
pub fn is_ready(obj: &StaticGatewayConfiguration) -> bool {
    obj.status.as_ref().is_some_and(|s| {
        s.egress_ip_prefix.as_deref().is_some_and(|p| !p.is_empty())
            && super::ready_for_generation(&s.conditions, obj.metadata.generation)
    })
}

/// Why [`is_ready`] does not hold: the conditions the operator reported.
pub fn describe_wait(obj: Option<&StaticGatewayConfiguration>) -> String {
    match obj
        .and_then(|o| o.status.as_ref())
        .map(|s| s.conditions.as_slice())
    {
        None | Some([]) => "the operator has not reported any condition yet (is it running?)".to_string(),
        Some(cs) => cs
            .iter()
            .map(|c| format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tfplugin6 as pb;
    use crate::resources::Kind;
    use crate::resources::test_support::error_paths;

    fn validate(config: &Value) -> Vec<pb::Diagnostic> {
        Kind::Sgc.validate(config, None)
    }

    fn validate_change(config: &Value, prior: Option<&Value>) -> Vec<pb::Diagnostic> {
        Kind::Sgc.validate(config, prior)
    }
    use crate::value::Number;

    fn profile(rg: Value, name: Value, size: Value) -> Value {
        Value::List(vec![object([
            ("vmss_resource_group", rg),
            ("vmss_name", name),
            ("public_ip_prefix_size", size),
        ])])
    }

    #[test]
    fn valid_nodepool_config_passes() {
        let c = Kind::Sgc.config(vec![
            ("namespace", Value::str("app")),
            ("name", Value::str("egress")),
            ("gateway_nodepool_name", Value::str("gwpool")),
            ("exclude_cidrs", Value::List(vec![Value::str("10.0.0.0/8")])),
        ]);
        assert_eq!(error_paths(&validate(&c)), Vec::<String>::new());
    }

    #[test]
    fn each_rule_points_at_its_attribute() {
        let ns = ("namespace", Value::str("app"));
        let name = ("name", Value::str("egress"));
        let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
            (vec![], ".gateway_nodepool_name"),
            (
                vec![(
                    "gateway_vmss_profile",
                    profile(
                        Value::str("rg"),
                        Value::str("vmss"),
                        Value::Number(Number::Int(27)),
                    ),
                )],
                ".gateway_vmss_profile[0].public_ip_prefix_size",
            ),
            (
                vec![(
                    "gateway_vmss_profile",
                    profile(
                        Value::str("rg/x"),
                        Value::str("vmss"),
                        Value::Number(Number::Int(30)),
                    ),
                )],
                ".gateway_vmss_profile[0].vmss_resource_group",
            ),
            (
                vec![
                    (
                        "gateway_vmss_profile",
                        profile(
                            Value::str("rg"),
                            Value::str("vmss"),
                            Value::Number(Number::Int(30)),
                        ),
                    ),
                    ("provision_public_ips", Value::Bool(false)),
                ],
                ".gateway_vmss_profile[0]",
            ),
            (
                vec![
                    ("gateway_nodepool_name", Value::str("gw")),
                    ("provision_public_ips", Value::Bool(false)),
                    ("public_ip_prefix_id", Value::str("/subscriptions/x")),
                ],
                ".public_ip_prefix_id",
            ),
            (
                vec![
                    ("gateway_nodepool_name", Value::str("gw")),
                    (
                        "exclude_cidrs",
                        Value::List(vec![Value::str("10.0.0.0/8"), Value::str("10.1.0.0/33")]),
                    ),
                ],
                ".exclude_cidrs[1]",
            ),
            // The CRD's bounds: at most 256 entries, each at most 64 characters.
            (
                vec![
                    ("gateway_nodepool_name", Value::str("gw")),
                    (
                        "exclude_cidrs",
                        Value::List(
                            (0..257)
                                .map(|i| Value::str(format!("10.{}.{}.0/24", i / 256, i % 256)))
                                .collect(),
                        ),
                    ),
                ],
                ".exclude_cidrs",
            ),
            (
                vec![
                    ("gateway_nodepool_name", Value::str("gw")),
                    ("default_route", Value::str("direct")),
                ],
                ".default_route",
            ),
        ];
        for (fields, want) in cases {
            let mut all = vec![ns.clone(), name.clone()];
            all.extend(fields);
            let got = error_paths(&validate(&Kind::Sgc.config(all)));
            assert!(got.iter().any(|p| p == want), "want {want}, got {got:?}");
        }
    }

    #[test]
    fn an_exclude_cidrs_entry_over_the_crds_length_is_reported_as_such() {
        // Any 65 characters are no CIDR either: what only the bound says is its length, unquoted.
        let c = Kind::Sgc.config(vec![
            ("namespace", Value::str("app")),
            ("name", Value::str("egress")),
            ("gateway_nodepool_name", Value::str("gw")),
            ("exclude_cidrs", Value::List(vec![Value::str("1".repeat(65))])),
        ]);
        let diags = validate(&c);
        assert_eq!(error_paths(&diags), vec![".exclude_cidrs[0]".to_string()]);
        let detail = diags
            .iter()
            .map(|d| d.detail.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            detail.contains("is 65 characters long, more than the 64 the CRD accepts")
                && !detail.contains(&"1".repeat(65)),
            "{detail}"
        );
    }

    #[test]
    fn findings_that_depend_on_unknowns_wait() {
        // Nodepool name unknown (it comes from azurerm): rule 1 cannot be judged yet.
        let c = Kind::Sgc.config(vec![
            ("namespace", Value::str("app")),
            ("name", Value::str("egress")),
            ("gateway_nodepool_name", Value::unknown()),
            (
                "exclude_cidrs",
                Value::List(vec![Value::unknown(), Value::str("bad")]),
            ),
        ]);
        assert_eq!(error_paths(&validate(&c)), vec![".exclude_cidrs[1]".to_string()]);
        // Unknown prefix size: no range finding; a known bad sibling is still reported.
        let c = Kind::Sgc.config(vec![
            ("namespace", Value::str("app")),
            ("name", Value::str("egress")),
            (
                "gateway_vmss_profile",
                profile(Value::str(""), Value::str("v"), Value::unknown()),
            ),
        ]);
        assert_eq!(
            error_paths(&validate(&c)),
            vec![".gateway_vmss_profile[0].vmss_resource_group".to_string()]
        );
        assert!(validate(&Value::unknown()).is_empty());
    }

    #[test]
    fn an_in_place_update_gets_the_rules_update_warnings() {
        let c = Kind::Sgc.config(vec![
            ("namespace", Value::str("app")),
            ("name", Value::str("egress")),
            ("gateway_nodepool_name", Value::str("gw")),
        ]);
        let (prior, _) = plan(&Value::Null, &c);
        let c2 = Kind::Sgc.config(vec![
            ("namespace", Value::str("app")),
            ("name", Value::str("egress")),
            ("gateway_nodepool_name", Value::str("gw")),
            ("exclude_cidrs", Value::List(vec![Value::str("10.0.0.0/8")])),
        ]);
        let warnings = |d: &[pb::Diagnostic]| {
            d.iter()
                .filter(|d| d.severity == pb::diagnostic::Severity::Warning as i32)
                .map(|d| d.detail.clone())
                .collect::<Vec<_>>()
        };
        let update = validate_change(&c2, Some(&prior));
        assert_eq!(error_paths(&update), Vec::<String>::new());
        assert!(
            warnings(&update)
                .iter()
                .any(|w| w.contains("existing pods keep their routes")),
            "{update:?}"
        );
        assert!(
            warnings(&validate_change(&c, Some(&prior))).is_empty(),
            "no change, no warning"
        );
        assert!(
            warnings(&validate(&c2)).is_empty(),
            "a new object has no existing pods"
        );
    }

    #[test]
    fn plan_create_defaults_and_unknown_status() {
        let c = Kind::Sgc.config(vec![
            ("namespace", Value::str("app")),
            ("name", Value::str("egress")),
            ("gateway_nodepool_name", Value::str("gw")),
        ]);
        let (p, replace) = plan(&Value::Null, &c);
        assert!(replace.is_empty());
        assert_eq!(p.get("id").as_str(), Some("app/egress"));
        assert_eq!(p.get("default_route").as_str(), Some("staticEgressGateway"));
        assert_eq!(p.get("provision_public_ips").as_bool(), Some(true));
        assert!(p.get("egress_ip_prefix").is_unknown());
        assert!(p.get("public_ip_prefix_id").is_null());
        assert_eq!(p, resource_schema().normalise(p.clone()), "every key present");
    }

    #[test]
    fn plan_without_change_is_prior_and_nodepool_change_replaces() {
        let c = Kind::Sgc.config(vec![
            ("namespace", Value::str("app")),
            ("name", Value::str("egress")),
            ("gateway_nodepool_name", Value::str("gw")),
        ]);
        let (mut state, _) = plan(&Value::Null, &c);
        if let Value::Map(m) = &mut state {
            m.insert("egress_ip_prefix".into(), Value::str("20.0.0.0/31"));
            m.insert("gateway_server_profile".into(), Value::Null);
            m.insert("conditions".into(), Value::List(vec![]));
        }
        let (same, replace) = plan(&state, &c);
        assert_eq!(same, state);
        assert!(replace.is_empty());

        let c2 = Kind::Sgc.config(vec![
            ("namespace", Value::str("app")),
            ("name", Value::str("egress")),
            ("gateway_nodepool_name", Value::str("gw2")),
        ]);
        let (changed, replace) = plan(&state, &c2);
        assert!(changed.get("egress_ip_prefix").is_unknown());
        assert_eq!(replace, vec![Path::attr("gateway_nodepool_name")]);
    }

    #[test]
    fn only_an_egress_mode_change_puts_the_egress_prefix_and_server_profile_in_doubt() {
        let config = |extra: Vec<(&'static str, Value)>| {
            let mut pairs = vec![
                ("namespace", Value::str("app")),
                ("name", Value::str("egress")),
                ("gateway_nodepool_name", Value::str("gw")),
            ];
            pairs.extend(extra);
            Kind::Sgc.config(pairs)
        };
        let (mut state, _) = plan(&Value::Null, &config(vec![]));
        let server = object([
            ("ip", Value::str("10.0.0.4")),
            ("port", Value::Number(Number::Int(6000))),
            ("public_key", Value::str("key")),
        ]);
        if let Value::Map(m) = &mut state {
            m.insert("uid".into(), Value::str("uid-1"));
            m.insert("egress_ip_prefix".into(), Value::str("20.0.0.0/31"));
            m.insert("gateway_server_profile".into(), server.clone());
            m.insert("conditions".into(), Value::List(vec![]));
        }
        let routes_only = [
            ("exclude_cidrs", Value::List(vec![Value::str("10.0.0.0/8")])),
            ("default_route", Value::str("azureNetworking")),
        ];
        for edit in routes_only {
            let name = edit.0;
            let (planned, replace) = plan(&state, &config(vec![edit]));
            assert!(replace.is_empty(), "{name}");
            assert_eq!(
                planned.get("egress_ip_prefix"),
                &Value::str("20.0.0.0/31"),
                "{name}"
            );
            assert_eq!(planned.get("gateway_server_profile"), &server, "{name}");
            assert_eq!(planned.get("uid"), &Value::str("uid-1"), "{name}");
            assert!(planned.get("conditions").is_unknown(), "{name}");
        }
        let mode_changes = [
            ("provision_public_ips", Value::Bool(false)),
            (
                "public_ip_prefix_id",
                Value::str(
                    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/p",
                ),
            ),
        ];
        for edit in mode_changes {
            let name = edit.0;
            let (planned, replace) = plan(&state, &config(vec![edit]));
            assert!(replace.is_empty(), "{name}");
            assert!(planned.get("egress_ip_prefix").is_unknown(), "{name}");
            assert!(planned.get("gateway_server_profile").is_unknown(), "{name}");
            assert_eq!(planned.get("uid"), &Value::str("uid-1"), "{name}");
        }
    }

    #[test]
    fn read_keeps_prior_spelling_and_reports_drift() {
        let c = Kind::Sgc.config(vec![
            ("namespace", Value::str("app")),
            ("name", Value::str("egress")),
            ("gateway_nodepool_name", Value::str("GwPool")),
        ]);
        let (prior, _) = plan(&Value::Null, &c);
        let obj: StaticGatewayConfiguration = serde_json::from_value(serde_json::json!({
            "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
            "kind": "StaticGatewayConfiguration",
            "metadata": {"name": "egress", "namespace": "app", "generation": 1},
            "spec": {"gatewayNodepoolName": "gwpool", "excludeCidrs": ["10.0.0.0/8"]},
            "status": {"egressIpPrefix": "20.1.2.4/31",
                       "conditions": [{"type": api::names::CONDITION_READY, "status": "True", "reason": api::names::REASON_PROVISIONED, "message": "",
                                       "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1}]}
        }))
        .expect("object");
        let s = state_from_object(&prior, &obj);
        assert_eq!(s.get("gateway_nodepool_name").as_str(), Some("GwPool"));
        assert_eq!(
            s.get("exclude_cidrs"),
            &Value::List(vec![Value::str("10.0.0.0/8")])
        );
        assert_eq!(s.get("egress_ip_prefix").as_str(), Some("20.1.2.4/31"));
        assert!(is_ready(&obj));
        assert_eq!(s, resource_schema().normalise(s.clone()), "every key present");
    }
}
