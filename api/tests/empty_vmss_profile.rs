//! An empty gatewayVmssProfile counts as absent in every enforcer: the rules the webhook and the operator run,
//! the CRD's CEL rules the apiserver runs, and the mutating defaults. Upstream's Go type embeds the profile as a
//! struct value, so every configuration its clients wrote on a node pool carries `gatewayVmssProfile: {}`; a CEL
//! rule that counted it as set would refuse every write to such an object (Kubernetes 1.28 has no ratcheting).

use api::rules::{PoolFacts, Rule, Verdict, decode_sgc_spec, validate_sgc_object};
use serde_json::{Value, json};

fn sgc(spec: Value) -> Value {
    json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
        "metadata": {"name": "x", "namespace": "app"}, "spec": spec})
}

/// The CEL rules' messages that fail on `new` (an update of `old` when given), as the apiserver would report them.
fn cel_failures(new: &Value, old: Option<&Value>) -> Vec<String> {
    static SCHEMA: std::sync::LazyLock<kube::core::cel::CompiledSchema> = std::sync::LazyLock::new(|| {
        let crd = api::crd::all().remove(0);
        kube::core::cel::compile_schema(&api::crd::openapi_schema(&crd).expect("schema"))
    });
    match kube::core::cel::Validator::new().validate_compiled(&SCHEMA, new, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

/// Every way a spec can name (or not name) its pool, with empty profiles spelled each way upstream's and
/// hand-written manifests do.
fn specs() -> Vec<Value> {
    let profiles = [
        None,
        Some(json!({})),
        Some(json!({"vmssName": "", "vmssResourceGroup": ""})),
        Some(json!({"publicIpPrefixSize": 0})),
        Some(json!({"vmssName": "gw"})),
        Some(json!({"vmssResourceGroup": "rg", "vmssName": "gw", "publicIpPrefixSize": 31})),
        Some(json!({"vmssResourceGroup": "rg", "vmssName": "other", "publicIpPrefixSize": 31})),
    ];
    let mut out = Vec::new();
    for nodepool in [None, Some(""), Some("gwpool")] {
        for profile in &profiles {
            for private in [false, true] {
                let mut spec = json!({"provisionPublicIps": !private, "defaultRoute": "staticEgressGateway"});
                if let Some(np) = nodepool {
                    spec["gatewayNodepoolName"] = json!(np);
                }
                if let Some(p) = profile {
                    spec["gatewayVmssProfile"] = p.clone();
                }
                out.push(sgc(spec));
            }
        }
    }
    out
}

/// The spec names a (non-empty) VMSS profile, as the rules read it.
fn has_profile(obj: &Value) -> bool {
    decode_sgc_spec(obj.get("spec"), &mut Verdict::default())
        .vmss_profile()
        .is_some()
}

fn rust_refuses(new: &Value, old: Option<&Value>, rule: Rule, path: &str) -> bool {
    validate_sgc_object(new, old, &PoolFacts::default())
        .violations
        .iter()
        .any(|v| v.rule == rule && v.path == path)
}

#[test]
fn cel_and_rules_agree_on_which_pool_a_spec_names() {
    for spec in specs() {
        let cel = cel_failures(&spec, None);
        let cel_says = |prefix: &str| cel.iter().any(|m| m.starts_with(prefix));
        assert_eq!(
            cel_says("rule 1 "),
            rust_refuses(&spec, None, Rule::OnePool, "spec.gatewayNodepoolName"),
            "rule 1 on {spec}: CEL {cel:?}"
        );
        assert_eq!(
            cel_says("rule 5 "),
            rust_refuses(&spec, None, Rule::PrivateNeedsNodepool, "spec.gatewayVmssProfile"),
            "rule 5 on {spec}: CEL {cel:?}"
        );
    }
}

#[test]
fn cel_and_rules_agree_on_when_the_profile_changes() {
    let specs = specs();
    for old in &specs {
        for new in &specs {
            // Only the profile's immutability: keep the node pool as it was.
            let mut new = new.clone();
            match old["spec"].get("gatewayNodepoolName") {
                Some(np) => new["spec"]["gatewayNodepoolName"] = np.clone(),
                None => drop(
                    new["spec"]
                        .as_object_mut()
                        .map(|s| s.remove("gatewayNodepoolName")),
                ),
            }
            let cel = cel_failures(&new, Some(old));
            // Setting a profile where none was set: the CEL rule leaves it to rule 1 (which refuses it beside
            // a node pool, and lets an object that named no pool at all be fixed); the rules refuse it as a change.
            if !has_profile(old) && has_profile(&new) {
                continue;
            }
            assert_eq!(
                cel.iter()
                    .any(|m| m.starts_with("gatewayVmssProfile is immutable")),
                rust_refuses(&new, Some(old), Rule::Immutable, "spec.gatewayVmssProfile"),
                "{old} -> {new}: CEL {cel:?}"
            );
        }
    }
}

#[test]
fn an_upstream_configuration_on_a_node_pool_passes_every_rule() {
    let upstream = sgc(json!({"gatewayNodepoolName": "gwpool", "gatewayVmssProfile": {},
        "provisionPublicIps": true, "defaultRoute": "staticEgressGateway"}));
    assert_eq!(cel_failures(&upstream, None), Vec::<String>::new());
    let verdict = validate_sgc_object(&upstream, None, &PoolFacts::default());
    assert!(verdict.is_allowed(), "{}", verdict.message());

    // A status or metadata write keeps the spec; the webhook's defaults drop the profile on an update: both pass.
    assert_eq!(cel_failures(&upstream, Some(&upstream)), Vec::<String>::new());
    let patch = api::defaults::sgc_defaults(&upstream);
    let mut defaulted = upstream.clone();
    json_patch::patch(&mut defaulted, &patch).expect("defaults apply");
    assert!(
        defaulted["spec"].get("gatewayVmssProfile").is_none(),
        "{defaulted}"
    );
    assert_eq!(cel_failures(&defaulted, Some(&upstream)), Vec::<String>::new());

    // Moving it to a VMSS is still refused: the node pool cannot go (and both cannot be set).
    let moved = sgc(
        json!({"gatewayVmssProfile": {"vmssResourceGroup": "rg", "vmssName": "gw", "publicIpPrefixSize": 31},
        "provisionPublicIps": true, "defaultRoute": "staticEgressGateway"}),
    );
    let cel = cel_failures(&moved, Some(&upstream));
    assert!(
        cel.iter()
            .any(|m| m.starts_with("gatewayNodepoolName is immutable")),
        "{cel:?}"
    );
    let both = sgc(json!({"gatewayNodepoolName": "gwpool",
        "gatewayVmssProfile": {"vmssResourceGroup": "rg", "vmssName": "gw", "publicIpPrefixSize": 31},
        "provisionPublicIps": true, "defaultRoute": "staticEgressGateway"}));
    let cel = cel_failures(&both, Some(&upstream));
    assert!(cel.iter().any(|m| m.starts_with("rule 1 ")), "{cel:?}");
}

#[test]
fn the_cel_zero_values_are_the_types_defaults() {
    let default = serde_json::to_value(api::GatewayVmssProfile::default()).expect("json");
    let fields = default.as_object().expect("object");
    assert_eq!(
        fields.len(),
        api::GatewayVmssProfile::ZERO_FIELDS.len(),
        "{default}"
    );
    for (field, zero) in api::GatewayVmssProfile::ZERO_FIELDS {
        let literal = match &fields[field] {
            Value::String(s) => format!("'{s}'"),
            other => other.to_string(),
        };
        assert_eq!(literal, zero, "{field}");
    }
}

#[test]
fn defaults_drop_an_empty_profile_and_keep_a_mistyped_one() {
    for (profile, dropped) in [
        (json!({}), true),
        (json!({"vmssName": "", "publicIpPrefixSize": 0}), true),
        (json!({"vmssName": null}), true),
        (json!({"vmssName": "gw"}), false),
        (json!({"vmssName": 0}), false),
        (json!({"publicIpPrefixSize": "0"}), false),
    ] {
        for nodepool in [json!("gwpool"), Value::Null] {
            let obj = sgc(json!({"gatewayNodepoolName": nodepool, "gatewayVmssProfile": profile}));
            let mut out = obj.clone();
            json_patch::patch(&mut out, &api::defaults::sgc_defaults(&obj)).expect("defaults apply");
            assert_eq!(
                out["spec"].get("gatewayVmssProfile").is_none(),
                dropped,
                "{obj} -> {out}"
            );
        }
    }
}
