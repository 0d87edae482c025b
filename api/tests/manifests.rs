//! Upstream's sample manifests (https://github.com/Azure/kube-egress-gateway: README, docs, samples) and malformed ones, each with its expected
//! outcome at every layer an apiserver applies: the generated openAPIV3Schema (jsonschema), the CRD's CEL
//! rules, and the rules the webhook enforces.

use std::path::PathBuf;

use api::rules::{PoolFacts, Rule, validate_pool_object, validate_sgc_object};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Allowed,
    SchemaRefuses,
    Denied(Rule, &'static str),
}

const CASES: &[(&str, Outcome)] = &[
    (
        "seed000-vmss-byo.yaml",
        Outcome::Denied(Rule::PublicIpPrefixId, "spec.publicIpPrefixId"),
    ),
    ("seed000-vmss-byo-real-subscription.yaml", Outcome::Allowed),
    ("seed000-private.yaml", Outcome::Allowed),
    ("seed002-nodepool-byo.yaml", Outcome::Allowed),
    (
        "seed002-unsubstituted.yaml",
        Outcome::Denied(Rule::PublicIpPrefixId, "spec.publicIpPrefixId"),
    ),
    ("seed004-private-fragment.yaml", Outcome::Allowed),
    ("upstream-readme-private-misplaced-size.yaml", Outcome::Allowed),
    ("upstream-docs-sample-wrong-case.yaml", Outcome::Allowed),
    ("invalid-enum.yaml", Outcome::SchemaRefuses),
    ("invalid-prefix-40.yaml", Outcome::SchemaRefuses),
    ("invalid-types.yaml", Outcome::SchemaRefuses),
    ("pool-vmss.yaml", Outcome::Allowed),
    ("pool-invalid-size.yaml", Outcome::SchemaRefuses),
];

fn load(file: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/manifests")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn schema_for(kind: &str) -> Value {
    let crd = api::crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("known kind");
    api::crd::openapi_schema(&crd).expect("schema")
}

/// Applies the mutating defaults, as the apiserver does before validating.
fn defaulted(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if obj["kind"] == "StaticGatewayConfiguration" {
        let patch = api::defaults::sgc_defaults(&obj);
        json_patch::patch(&mut obj, &patch).expect("defaults apply");
    }
    obj
}

#[test]
fn every_sample_has_its_expected_outcome() {
    for (file, want) in CASES {
        let obj = defaulted(&load(file));
        let kind = obj["kind"].as_str().expect("kind");
        let schema = schema_for(kind);
        let validator = jsonschema::draft4::new(&schema).expect("schema compiles");
        let schema_errors: Vec<String> = validator
            .iter_errors(&obj)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        let cel = kube::core::cel::Validator::new().validate(&schema, &obj, None);
        let verdict = match kind {
            "StaticGatewayConfiguration" => validate_sgc_object(&obj, None, &PoolFacts::default()),
            _ => validate_pool_object(&obj, None, None),
        };
        match want {
            Outcome::Allowed => {
                assert!(
                    schema_errors.is_empty(),
                    "{file}: schema refused: {schema_errors:?}"
                );
                assert!(cel.is_ok(), "{file}: CEL refused: {cel:?}");
                assert!(
                    verdict.is_allowed(),
                    "{file}: rules refused: {}",
                    verdict.message()
                );
            }
            Outcome::SchemaRefuses => {
                assert!(!schema_errors.is_empty(), "{file}: schema accepted it");
                // The webhook's rules refuse it too, should the schema ever be relaxed.
                assert!(!verdict.is_allowed(), "{file}: rules accepted it");
            }
            Outcome::Denied(rule, path) => {
                assert!(
                    schema_errors.is_empty(),
                    "{file}: schema refused: {schema_errors:?}"
                );
                assert_eq!(verdict.violations.len(), 1, "{file}: {}", verdict.message());
                assert_eq!(
                    (verdict.violations[0].rule, verdict.violations[0].path.as_str()),
                    (*rule, *path),
                    "{file}"
                );
            }
        }
    }
}

#[test]
fn cel_rules_refuse_what_the_webhook_refuses() {
    let schema = schema_for("StaticGatewayConfiguration");
    let cel = |obj: Value, old: Option<Value>| {
        kube::core::cel::Validator::new().validate(&schema, &obj, old.as_ref())
    };
    let sgc = |spec: Value| {
        serde_json::json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
        "kind": "StaticGatewayConfiguration", "metadata": {"name": "x"}, "spec": spec})
    };
    let profile = serde_json::json!({"vmssResourceGroup": "rg", "vmssName": "gw", "publicIpPrefixSize": 31});
    // rule 1
    assert!(cel(sgc(serde_json::json!({"provisionPublicIps": true})), None).is_err());
    assert!(cel(sgc(serde_json::json!({"gatewayNodepoolName": "a", "gatewayVmssProfile": profile, "provisionPublicIps": true})), None).is_err());
    assert!(
        cel(
            sgc(serde_json::json!({"gatewayNodepoolName": "a", "provisionPublicIps": true})),
            None
        )
        .is_ok()
    );
    // rule 5
    assert!(
        cel(
            sgc(serde_json::json!({"gatewayVmssProfile": profile, "provisionPublicIps": false})),
            None
        )
        .is_err()
    );
    // rule 6
    assert!(cel(sgc(serde_json::json!({"gatewayNodepoolName": "a", "provisionPublicIps": false, "publicIpPrefixId": "x"})), None).is_err());
    // immutability (transition rules)
    let old = sgc(serde_json::json!({"gatewayNodepoolName": "a", "provisionPublicIps": true}));
    assert!(
        cel(
            sgc(serde_json::json!({"gatewayNodepoolName": "b", "provisionPublicIps": true})),
            Some(old.clone())
        )
        .is_err()
    );
    assert!(
        cel(
            sgc(serde_json::json!({"gatewayNodepoolName": "a", "provisionPublicIps": false})),
            Some(old)
        )
        .is_ok()
    );

    let schema = schema_for("GatewayPool");
    let pool = |spec: Value| {
        serde_json::json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
        "kind": "GatewayPool", "metadata": {"name": "p"}, "spec": spec})
    };
    let cel = |obj: Value, old: Option<Value>| {
        kube::core::cel::Validator::new().validate(&schema, &obj, old.as_ref())
    };
    assert!(
        cel(
            pool(
                serde_json::json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": 31, "instanceCount": 2})
            ),
            None
        )
        .is_ok()
    );
    assert!(
        cel(
            pool(
                serde_json::json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": 31, "instanceCount": 3})
            ),
            None
        )
        .is_err()
    );
    assert!(
        cel(
            pool(
                serde_json::json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": 28, "instanceCount": 16})
            ),
            None
        )
        .is_ok()
    );
    let old = pool(serde_json::json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": 31}));
    assert!(
        cel(
            pool(serde_json::json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": 30})),
            Some(old)
        )
        .is_err()
    );
}

/// Node pool names are case-insensitive in Azure, the webhook's rules and the pool lookups: the CRDs'
/// immutability rules must not refuse a re-cased name that the webhook accepts, and both refuse a rename.
#[test]
fn cel_nodepool_immutability_ignores_case_as_the_rules_do() {
    for kind in ["StaticGatewayConfiguration", "GatewayPool"] {
        let schema = schema_for(kind);
        let cel =
            |obj: &Value, old: &Value| kube::core::cel::Validator::new().validate(&schema, obj, Some(old));
        let obj = |name: Value| {
            let mut spec = serde_json::json!({"gatewayNodepoolName": name, "publicIpPrefixSize": 31});
            if kind == "StaticGatewayConfiguration" {
                spec = serde_json::json!({"gatewayNodepoolName": name, "provisionPublicIps": true,
                                          "defaultRoute": "staticEgressGateway"});
            }
            serde_json::json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
                "kind": kind, "metadata": {"name": "x"}, "spec": spec})
        };
        let rules = |new: &Value, old: &Value| match kind {
            "GatewayPool" => validate_pool_object(new, Some(old), None),
            _ => validate_sgc_object(new, Some(old), &PoolFacts::default()),
        };
        let old = obj("GwPool".into());
        for (new, same) in [
            ("gwpool", true),
            ("GWPOOL", true),
            ("GwPool", true),
            ("other", false),
        ] {
            let new = obj(new.into());
            assert_eq!(
                cel(&new, &old).is_ok(),
                same,
                "{kind} GwPool -> {}: CEL {:?}",
                new["spec"]["gatewayNodepoolName"],
                cel(&new, &old)
            );
            assert_eq!(
                rules(&new, &old).is_allowed(),
                same,
                "{kind} GwPool -> {}: rules",
                new["spec"]["gatewayNodepoolName"]
            );
        }
    }
}
