//! `egressgateway_gateway_pool`: a cluster-scoped GatewayPool.

use std::time::Duration;

use api::{GatewayPool, StaticGatewayConfiguration};

use super::plan::{Derived, PlanRules, plan as plan_generic};
use super::{Extracted, conditions_type, object, remote_string};
use crate::diag::Path;
use crate::proto::tfplugin6 as pb;
use crate::schema::{Attribute, Block, NestedBlock, Nesting, Type, timeouts_block};
use crate::value::{Number, Value};

/// The attributes that name the object (metadata, not spec).
pub(crate) const IDENTITY: &[&str] = &["name"];
/// How long create and update wait for the pool to be Ready when `timeouts` does not say.
pub(crate) const DEFAULT_APPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// What the diagnostic says of a pool apply's wait gave up on.
pub(crate) const NOT_READY: &str = "is not ready";

/// What an in-place update (only `instance_count`, a declaration the operator checks but does not act on,
/// or a node pool name's letter case) does to the status the pool reports: its UID and kind stay; the
/// instance count, the load-balancer frontend (there while configurations use the pool) and the conditions
/// are live, so they are read again.
const DERIVED: &[(&str, Derived)] = &[("uid", Derived::On(&[])), ("pool_type", Derived::On(&[]))];

/// The resource schema.
pub fn resource_schema() -> Block {
    Block {
        description: "A GatewayPool: the gateway nodes (an AKS gateway node pool or a self-managed VMSS) that serve static gateway configurations, with the public IP prefix size each configuration on it gets.",
        attributes: vec![
            Attribute::computed("id", Type::String, "The pool's name."),
            Attribute::computed(
                "uid",
                Type::String,
                "The GatewayPool's Kubernetes UID. A replaced pool gets a new one, unknown until apply: configurations on the pool name it in `lifecycle { replace_triggered_by = [egressgateway_gateway_pool.<name>.uid] }` so that Terraform replaces them with the pool (the operator keeps a pool while configurations use it).",
            ),
            Attribute::required("name", Type::String, "Name of the GatewayPool (cluster-scoped). Changing it replaces the pool.").force_new(),
            Attribute::optional(
                "gateway_nodepool_name",
                Type::String,
                "The AKS gateway node pool (e.g. `azurerm_kubernetes_cluster_node_pool.gw.name`). Exactly one of `gateway_nodepool_name` and `gateway_vmss_profile`. Changing it replaces the pool.",
            )
            .force_new()
            .case_insensitive(),
            Attribute::required(
                "public_ip_prefix_size",
                Type::Number,
                "Public IP prefix length per configuration, 28 to 31 (/31: 2 instances, /30: 4, /29: 8, /28: 16). Match the node pool's `gateway_public_ip_prefix_size`. Changing it replaces the pool.",
            )
            .force_new(),
            Attribute::optional(
                "instance_count",
                Type::Number,
                "Declared maximum number of gateway instances; checked at plan time against `public_ip_prefix_size`.",
            ),
            Attribute::computed("pool_type", Type::String, "`VirtualMachineScaleSet` or `VirtualMachines`."),
            Attribute::computed("ready_instances", Type::Number, "Gateway instances provisioned and ready."),
            Attribute::computed("load_balancer_frontend_ip", Type::String, "Private IP of the pool's internal load-balancer frontend."),
            Attribute::computed("conditions", conditions_type(), "The pool's status conditions."),
        ],
        blocks: vec![
            NestedBlock {
                name: "gateway_vmss_profile",
                block: Block {
                    description: "A self-managed gateway VMSS. Changing it replaces the pool.",
                    attributes: vec![
                        Attribute::required("vmss_resource_group", Type::String, "Resource group of the VMSS."),
                        Attribute::required("vmss_name", Type::String, "Name of the VMSS."),
                    ],
                    blocks: vec![],
                },
                nesting: Nesting::List,
                min_items: 0,
                max_items: 1,
                force_new: true,
            },
            timeouts_block("How long apply waits for the operator to take the pool on and report it Ready for its current generation (default create/update `5m`), and delete for the pool to be gone (default `5m`)."),
        ],
    }
}

/// The data source schema.
pub fn data_source_schema() -> Block {
    resource_schema().to_data_source(
        "Reads an existing GatewayPool.",
        IDENTITY,
        &[(
            "gateway_vmss_profile",
            "The self-managed gateway VMSS, if the pool is one.",
        )],
    )
}

/// The spec part of a value, with the paths of unknown values.
pub fn extract(config: &Value) -> Extracted {
    super::extract(&resource_schema(), config, IDENTITY)
}

/// Plans a create or update.
pub fn plan(prior: &Value, config: &Value) -> (Value, Vec<Path>) {
    let id = config.get("name").clone();
    plan_generic(
        &resource_schema(),
        prior,
        config,
        &PlanRules {
            // GatewayPools have no defaults: admission does not mutate them.
            defaults: &[],
            id,
            derived: DERIVED,
        },
    )
}

/// The object to server-side apply.
pub fn manifest(planned: &Value) -> serde_json::Value {
    super::manifest::<GatewayPool>(&resource_schema(), planned, IDENTITY)
}

/// The state for a pool read from the cluster (prior spelling kept where only normalisation differs).
pub fn state_from_object(prior: &Value, obj: &GatewayPool) -> Value {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let spec = &obj.spec;
    let profile = match &spec.gateway_vmss_profile {
        Some(p) => Value::List(vec![object([
            ("vmss_resource_group", Value::str(&p.vmss_resource_group)),
            ("vmss_name", Value::str(&p.vmss_name)),
        ])]),
        None => Value::List(vec![]),
    };
    let status = obj.status.clone().unwrap_or_default();
    let attributes = [
        ("id", Value::str(&name)),
        ("uid", obj.metadata.uid.as_deref().map_or(Value::Null, Value::str)),
        ("name", Value::str(&name)),
        (
            "gateway_nodepool_name",
            remote_string(
                spec.gateway_nodepool_name.as_deref(),
                prior.get("gateway_nodepool_name"),
            ),
        ),
        (
            "public_ip_prefix_size",
            Value::Number(Number::Int(spec.public_ip_prefix_size.into())),
        ),
        (
            "instance_count",
            spec.instance_count
                .map_or(Value::Null, |c| Value::Number(Number::Int(c.into()))),
        ),
        ("gateway_vmss_profile", profile),
        (
            "pool_type",
            status.pool_type.map_or(Value::Null, |t| {
                Value::str(match t {
                    api::pool::PoolType::VirtualMachineScaleSet => "VirtualMachineScaleSet",
                    api::pool::PoolType::VirtualMachines => "VirtualMachines",
                })
            }),
        ),
        (
            "ready_instances",
            Value::Number(Number::Int(status.ready_instances.into())),
        ),
        (
            "load_balancer_frontend_ip",
            status
                .load_balancer_frontend
                .map_or(Value::Null, |f| Value::str(f.ip)),
        ),
    ];
    super::state(attributes, &status.conditions, prior)
}

/// The configurations that use a pool. The operator keeps a pool (its finalizer) while any configuration uses
/// it, so deleting the pool while some stay would wait until `timeouts.delete` and leave it Terminating.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PoolUsers {
    /// Those not being deleted (`namespace/name`, sorted).
    pub staying: Vec<String>,
    /// How many are being deleted: they release the pool as they go.
    pub leaving: usize,
}

/// The configurations of `sgcs` that use `pool`.
pub fn users(pool: &GatewayPool, sgcs: &[StaticGatewayConfiguration]) -> PoolUsers {
    let Some(key) = pool.spec.pool_ref().map(|r| r.key()) else {
        return PoolUsers::default();
    };
    let mut users = PoolUsers::default();
    for s in sgcs
        .iter()
        .filter(|s| s.spec.pool_ref().is_some_and(|r| r.key() == key))
    {
        if s.metadata.deletion_timestamp.is_some() {
            users.leaving += 1;
        } else {
            users.staying.push(format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
    users.staying.sort();
    users
}

/// The error of a pool delete refused because configurations still use the pool: which, why, and the fix.
pub fn in_use(name: &str, users: &[String]) -> pb::Diagnostic {
    crate::diag::error(
        format!("GatewayPool {name} is still in use"),
        format!(
            "The GatewayPool was not deleted: the StaticGatewayConfigurations {} still use it, and the operator \
             keeps a pool while any configuration uses it, so the delete would wait until timeouts.delete. \
             Delete those configurations first, or move them to another pool. When Terraform replaces the pool \
             (a change of `name`, `public_ip_prefix_size`, `gateway_nodepool_name` or `gateway_vmss_profile`), \
             have it replace the configurations on the pool too: add \
             `lifecycle {{ replace_triggered_by = [egressgateway_gateway_pool.<pool>.uid] }}` to each of them.",
            users.join(", ")
        ),
        None,
    )
}

impl super::Object for GatewayPool {
    const KIND: super::Kind = super::Kind::Pool;
    fn api(client: kube::Client, _: &Value) -> kube::Api<Self> {
        kube::Api::all(client)
    }
    object_fns_from_module!();
}

/// Has the operator taken the pool on (its finalizer) and reported it Ready for the current generation? The
/// operator publishes every declared pool's instances and Ready, used by a configuration or not.
pub fn is_ready(obj: &GatewayPool) -> bool {
    acknowledged(obj) && unready_condition(obj).is_none() && ready_now(obj)
}

/// A `Ready=True` condition about the current generation.
fn ready_now(obj: &GatewayPool) -> bool {
    obj.status
        .as_ref()
        .is_some_and(|s| super::ready_for_generation(&s.conditions, obj.metadata.generation))
}

fn acknowledged(obj: &GatewayPool) -> bool {
    obj.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == api::names::POOL_FINALIZER)
}

/// The Ready condition, when it is not `True` for the current generation.
fn unready_condition(
    obj: &GatewayPool,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let generation = obj.metadata.generation;
    obj.status.as_ref()?.conditions.iter().find(|c| {
        c.type_ == api::names::CONDITION_READY
            && c.status != "True"
            && (generation.is_none()
                || c.observed_generation.is_none()
                || c.observed_generation >= generation)
    })
}

/// Why [`is_ready`] does not hold (for the timeout diagnostic).
pub fn describe_wait(obj: Option<&GatewayPool>) -> String {
    match obj {
        None => "the GatewayPool does not exist (deleted meanwhile?)".to_string(),
        Some(o) if !acknowledged(o) => format!(
            "the operator has not taken the pool on (no {} finalizer; is the operator running?)",
            api::names::POOL_FINALIZER
        ),
        Some(o) => match unready_condition(o) {
            Some(c) => format!("Ready={} ({}: {})", c.status, c.reason, c.message),
            None if ready_now(o) => "ready".to_string(),
            None => "the operator has not reported the pool Ready for its current generation yet".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Kind;
    use crate::resources::test_support::error_paths;

    fn validate(config: &Value) -> Vec<pb::Diagnostic> {
        Kind::Pool.validate(config, None)
    }

    #[test]
    fn instance_count_must_fit_the_prefix_when_both_are_known() {
        let bad = Kind::Pool.config(vec![
            ("name", Value::str("gw")),
            ("gateway_nodepool_name", Value::str("gw")),
            ("public_ip_prefix_size", Value::Number(Number::Int(31))),
            ("instance_count", Value::Number(Number::Int(3))),
        ]);
        let diags = validate(&bad);
        assert_eq!(error_paths(&diags), vec![".instance_count".to_string()]);
        assert!(
            diags[0].detail.contains("public_ip_prefix_size: 30"),
            "{}",
            diags[0].detail
        );

        let later = Kind::Pool.config(vec![
            ("name", Value::str("gw")),
            ("gateway_nodepool_name", Value::str("gw")),
            ("public_ip_prefix_size", Value::unknown()),
            ("instance_count", Value::Number(Number::Int(3))),
        ]);
        assert!(error_paths(&validate(&later)).is_empty());

        // The node pool's name does not matter to this rule: an unknown one does not hide the finding.
        let nodepool_later = Kind::Pool.config(vec![
            ("name", Value::str("gw")),
            ("gateway_nodepool_name", Value::unknown()),
            ("public_ip_prefix_size", Value::Number(Number::Int(31))),
            ("instance_count", Value::Number(Number::Int(3))),
        ]);
        assert_eq!(
            error_paths(&validate(&nodepool_later)),
            vec![".instance_count".to_string()]
        );
    }

    fn pool_object(finalizer: bool, ready: Option<(&str, i64)>) -> GatewayPool {
        let mut conditions = vec![];
        if let Some((status, observed)) = ready {
            conditions.push(
                serde_json::json!({"type": "Ready", "status": status, "reason": "R", "message": "m",
                "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": observed}),
            );
        }
        let finalizers: Vec<&str> = if finalizer {
            vec![api::names::POOL_FINALIZER]
        } else {
            vec![]
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayPool",
            "metadata": {"name": "gw", "generation": 2, "finalizers": finalizers},
            "spec": {"gatewayNodepoolName": "gw", "publicIpPrefixSize": 31},
            "status": {"conditions": conditions}
        }))
        .expect("pool")
    }

    #[test]
    fn a_pool_is_ready_once_the_operator_took_it_on_and_reports_it_ready_for_this_generation() {
        assert!(!is_ready(&pool_object(false, None)));
        assert!(describe_wait(Some(&pool_object(false, None))).contains("is the operator running?"));
        // Taken on but no verdict yet.
        assert!(!is_ready(&pool_object(true, None)));
        assert!(describe_wait(Some(&pool_object(true, None))).contains("not reported the pool Ready"));
        assert!(is_ready(&pool_object(true, Some(("True", 2)))));
        assert_eq!(
            describe_wait(Some(&pool_object(true, Some(("True", 2))))),
            "ready"
        );
        let unready = pool_object(true, Some(("False", 2)));
        assert!(!is_ready(&unready));
        assert_eq!(describe_wait(Some(&unready)), "Ready=False (R: m)");
        // A verdict about an older generation, either way, does not end the wait.
        assert!(!is_ready(&pool_object(true, Some(("False", 1)))));
        assert!(!is_ready(&pool_object(true, Some(("True", 1)))));
    }

    #[test]
    fn a_pool_is_used_by_the_configurations_on_it_that_are_not_being_deleted() {
        let sgc = |ns: &str, name: &str, spec: serde_json::Value, deleting: bool| {
            let mut metadata = serde_json::json!({"namespace": ns, "name": name});
            if deleting {
                metadata["deletionTimestamp"] = "2025-01-01T00:00:00Z".into();
                metadata["finalizers"] = serde_json::json!(["x"]);
            }
            serde_json::from_value::<StaticGatewayConfiguration>(serde_json::json!({
                "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
                "kind": "StaticGatewayConfiguration", "metadata": metadata, "spec": spec,
            }))
            .expect("configuration")
        };
        let on = |np: &str| serde_json::json!({"gatewayNodepoolName": np});
        let sgcs = [
            sgc("b", "egress", on("GW"), false), // node pool names compare without case, as in Azure
            sgc("a", "egress", on("gw"), false),
            sgc("a", "leaving", on("gw"), true),
            sgc("a", "elsewhere", on("other"), false),
            sgc(
                "a",
                "vmss",
                serde_json::json!({"gatewayVmssProfile": {"vmssResourceGroup": "rg", "vmssName": "gw", "publicIpPrefixSize": 31}}),
                false,
            ),
        ];
        let pool = pool_object(true, None);
        assert_eq!(
            users(&pool, &sgcs),
            PoolUsers {
                staying: vec!["a/egress".to_string(), "b/egress".to_string()],
                leaving: 1
            }
        );
        assert!(users(&pool, &sgcs[2..4]).staying.is_empty());
        assert_eq!(users(&pool, &sgcs[3..]), PoolUsers::default());

        let d = in_use("gw", &users(&pool, &sgcs).staying);
        assert_eq!(d.summary, "GatewayPool gw is still in use");
        assert!(
            d.detail
                .contains("StaticGatewayConfigurations a/egress, b/egress still use it"),
            "{}",
            d.detail
        );
        assert!(
            d.detail
                .contains("replace_triggered_by = [egressgateway_gateway_pool.<pool>.uid]"),
            "{}",
            d.detail
        );
    }

    #[test]
    fn prefix_size_range() {
        let bad = Kind::Pool.config(vec![
            ("name", Value::str("gw")),
            ("gateway_nodepool_name", Value::str("gw")),
            ("public_ip_prefix_size", Value::Number(Number::Int(27))),
        ]);
        assert_eq!(
            error_paths(&validate(&bad)),
            vec![".public_ip_prefix_size".to_string()]
        );
    }

    #[test]
    fn a_nodepool_name_differing_only_in_case_is_no_change() {
        let named = |np: &str| {
            Kind::Pool.config(vec![
                ("name", Value::str("gw")),
                ("gateway_nodepool_name", Value::str(np)),
                ("public_ip_prefix_size", Value::Number(Number::Int(31))),
            ])
        };
        let (state, _) = plan(&Value::Null, &named("GwPool"));
        // Azure node pool names are case-insensitive, and so is the rules' immutability check.
        let (planned, replace) = plan(&state, &named("gwpool"));
        assert_eq!(replace, Vec::<Path>::new());
        assert_eq!(planned, state, "the prior spelling is kept: no update either");
        let (_, replace) = plan(&state, &named("otherpool"));
        assert_eq!(replace, vec![Path::attr("gateway_nodepool_name")]);
    }

    #[test]
    fn prefix_size_change_replaces() {
        let c = Kind::Pool.config(vec![
            ("name", Value::str("gw")),
            ("gateway_nodepool_name", Value::str("gw")),
            ("public_ip_prefix_size", Value::Number(Number::Int(31))),
        ]);
        let (state, _) = plan(&Value::Null, &c);
        // Nothing is defaulted: the optional instance_count stays unset.
        assert!(matches!(state.get("instance_count"), Value::Null), "{state:?}");
        let c2 = Kind::Pool.config(vec![
            ("name", Value::str("gw")),
            ("gateway_nodepool_name", Value::str("gw")),
            ("public_ip_prefix_size", Value::Number(Number::Int(30))),
        ]);
        let (_, replace) = plan(&state, &c2);
        assert_eq!(replace, vec![Path::attr("public_ip_prefix_size")]);
    }
}
