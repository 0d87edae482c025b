//! GatewayPool rules, pod rules and the defaulting patches.

use std::collections::BTreeMap;

use api::rules::{Rule, validate_pod, validate_pool_object};
use serde_json::{Value, json};

fn pool(spec: Value) -> Value {
    json!({"spec": spec})
}

fn only(v: &api::rules::Verdict) -> (Rule, &str) {
    assert_eq!(v.violations.len(), 1, "{}", v.message());
    (v.violations[0].rule, v.violations[0].path.as_str())
}

#[test]
fn pool_identity_and_prefix() {
    let ok = pool(json!({"gatewayNodepoolName": "gwpool", "publicIpPrefixSize": 31}));
    assert!(validate_pool_object(&ok, None, Some(2)).is_allowed());
    let vmss = pool(
        json!({"gatewayVmssProfile": {"vmssResourceGroup": "rg", "vmssName": "gw"}, "publicIpPrefixSize": 28}),
    );
    assert!(validate_pool_object(&vmss, None, Some(16)).is_allowed());

    type Case = (&'static str, Value, Option<u32>, (Rule, &'static str));
    let cases: Vec<Case> = vec![
        (
            "no identity",
            pool(json!({"publicIpPrefixSize": 31})),
            None,
            (Rule::OnePool, "spec.gatewayNodepoolName"),
        ),
        (
            "both identities",
            pool(
                json!({"gatewayNodepoolName": "a", "gatewayVmssProfile": {"vmssResourceGroup": "rg", "vmssName": "gw"}, "publicIpPrefixSize": 31}),
            ),
            None,
            (Rule::OnePool, "spec.gatewayNodepoolName"),
        ),
        (
            "vmss without group",
            pool(
                json!({"gatewayVmssProfile": {"vmssResourceGroup": "", "vmssName": "gw"}, "publicIpPrefixSize": 31}),
            ),
            None,
            (
                Rule::VmssProfileComplete,
                "spec.gatewayVmssProfile.vmssResourceGroup",
            ),
        ),
        (
            "vmss without name",
            pool(json!({"gatewayVmssProfile": {"vmssResourceGroup": "rg"}, "publicIpPrefixSize": 31})),
            None,
            (Rule::VmssProfileComplete, "spec.gatewayVmssProfile.vmssName"),
        ),
        (
            "size missing",
            pool(json!({"gatewayNodepoolName": "a"})),
            None,
            (Rule::PrefixSize, "spec.publicIpPrefixSize"),
        ),
        (
            "/27",
            pool(json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": 27})),
            None,
            (Rule::PrefixSize, "spec.publicIpPrefixSize"),
        ),
        (
            "/32",
            pool(json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": 32})),
            None,
            (Rule::PrefixSize, "spec.publicIpPrefixSize"),
        ),
        (
            "3 nodes on /31",
            pool(json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": 31})),
            Some(3),
            (Rule::InstancesFitPrefix, "spec.publicIpPrefixSize"),
        ),
        (
            "declares 3 on /31",
            pool(json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": 31, "instanceCount": 3})),
            None,
            (Rule::InstancesFitPrefix, "spec.instanceCount"),
        ),
        (
            "declares 0",
            pool(json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": 31, "instanceCount": 0})),
            None,
            (Rule::InstancesFitPrefix, "spec.instanceCount"),
        ),
        (
            "string size",
            pool(json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": "31"})),
            None,
            (Rule::FieldType, "spec.publicIpPrefixSize"),
        ),
    ];
    for (name, obj, nodes, want) in cases {
        let v = validate_pool_object(&obj, None, nodes);
        assert_eq!(only(&v), want, "{name}");
    }
    // Edges of the declared size.
    for (size, count, ok) in [
        (31, 2, true),
        (30, 4, true),
        (30, 5, false),
        (28, 16, true),
        (28, 17, false),
    ] {
        let v = validate_pool_object(
            &pool(json!({"gatewayNodepoolName": "a", "publicIpPrefixSize": size, "instanceCount": count})),
            None,
            None,
        );
        assert_eq!(v.is_allowed(), ok, "/{size} with {count}: {}", v.message());
    }
}

#[test]
fn pool_update_immutability_and_warnings() {
    let old = pool(json!({"gatewayNodepoolName": "gwpool", "publicIpPrefixSize": 31, "instanceCount": 2}));
    let grown = pool(json!({"gatewayNodepoolName": "gwpool", "publicIpPrefixSize": 31, "instanceCount": 1}));
    assert!(validate_pool_object(&grown, Some(&old), None).is_allowed());
    let resized = pool(json!({"gatewayNodepoolName": "gwpool", "publicIpPrefixSize": 30}));
    assert_eq!(
        only(&validate_pool_object(&resized, Some(&old), None)),
        (Rule::Immutable, "spec.publicIpPrefixSize")
    );
    let renamed = pool(json!({"gatewayNodepoolName": "other", "publicIpPrefixSize": 31}));
    assert_eq!(
        only(&validate_pool_object(&renamed, Some(&old), None)),
        (Rule::Immutable, "spec.gatewayNodepoolName")
    );
    let v = validate_pool_object(&grown, None, Some(2));
    assert!(v.is_allowed());
    assert!(
        v.warnings.iter().any(|w| w.path == "spec.instanceCount"),
        "{:?}",
        v.warnings
    );
}

#[test]
fn pool_update_over_its_prefix_is_warned_not_refused() {
    let gwpool = pool(json!({"gatewayNodepoolName": "gwpool", "publicIpPrefixSize": 31}));
    // Creating a pool that already has more nodes than its prefix holds is refused...
    assert_eq!(
        only(&validate_pool_object(&gwpool, None, Some(3))),
        (Rule::InstancesFitPrefix, "spec.publicIpPrefixSize")
    );
    // ...but an update (the operator's finalizer write while a surge upgrade adds a node) goes through, warned.
    let v = validate_pool_object(&gwpool, Some(&gwpool), Some(3));
    assert!(v.is_allowed(), "{}", v.message());
    let warning = warning_at(&v, "spec.publicIpPrefixSize");
    assert!(warning.message.contains("3 gateway nodes"), "{warning}");
    // A declared instanceCount over the prefix is part of the request: refused on update too.
    let declared =
        pool(json!({"gatewayNodepoolName": "gwpool", "publicIpPrefixSize": 31, "instanceCount": 3}));
    assert_eq!(
        only(&validate_pool_object(&declared, Some(&gwpool), None)),
        (Rule::InstancesFitPrefix, "spec.instanceCount")
    );
}

/// The warning at `path`: a violation still reported, as a warning.
fn warning_at<'a>(v: &'a api::rules::Verdict, path: &str) -> &'a api::rules::Warning {
    v.warnings
        .iter()
        .find(|w| w.path == path)
        .unwrap_or_else(|| panic!("{path} is still reported, as a warning: {:?}", v.warnings))
}

/// The typed pod view the rules take, from JSON as the apiserver sends it.
fn pod(json: Value) -> api::pod::PodView {
    serde_json::from_value(json).expect("a pod")
}

/// Namespace annotations, from JSON.
fn annotations(json: Value) -> BTreeMap<String, String> {
    serde_json::from_value(json).expect("annotations")
}

#[test]
fn pods() {
    let annotated = |host: bool| {
        pod(
            json!({"metadata": {"annotations": {api::names::POD_GATEWAY_ANNOTATION: "gw"}}, "spec": {"hostNetwork": host}}),
        )
    };
    assert!(validate_pod(&annotated(false)).is_allowed());
    let v = validate_pod(&annotated(true));
    assert!(!v.is_allowed());
    assert_eq!(
        only(&v),
        (
            Rule::HostNetworkPod,
            "metadata.annotations[kubernetes.azure.com/static-gateway-configuration]"
        )
    );
    assert!(v.message().contains("hostNetwork"), "{}", v.message());
    assert!(
        validate_pod(&pod(json!({"spec": {"hostNetwork": true}}))).is_allowed(),
        "plain hostNetwork pods pass"
    );
    assert!(validate_pod(&pod(json!({}))).is_allowed());
    let bad_name =
        pod(json!({"metadata": {"annotations": {api::names::POD_GATEWAY_ANNOTATION: "Not_A_Name"}}}));
    let v = validate_pod(&bad_name);
    assert!(v.is_allowed() && v.warnings.len() == 1, "{v:?}");
    let w = api::rules::missing_sgc_warning("demo", "gw");
    assert!(w.message.contains("'gw'") && w.message.contains("'demo'"), "{w}");
}

fn apply(mut obj: Value, patch: &json_patch::Patch) -> Value {
    json_patch::patch(&mut obj, patch).expect("patch applies");
    obj
}

#[test]
fn sgc_defaults() {
    let obj = json!({"spec": {"gatewayNodepoolName": "gwpool"}});
    let out = apply(obj.clone(), &api::defaults::sgc_defaults(&obj));
    assert_eq!(out["spec"]["defaultRoute"], "staticEgressGateway");
    assert_eq!(out["spec"]["provisionPublicIps"], true);

    // Values the user gave are kept.
    let obj = json!({"spec": {"gatewayNodepoolName": "gwpool", "defaultRoute": "azureNetworking", "provisionPublicIps": false}});
    assert!(api::defaults::sgc_defaults(&obj).0.is_empty());

    // An all-empty profile beside a node pool is dropped (upstream treats it as absent).
    let obj = json!({"spec": {"gatewayNodepoolName": "gwpool", "gatewayVmssProfile": {"vmssName": "", "publicIpPrefixSize": 0}, "defaultRoute": "staticEgressGateway", "provisionPublicIps": true}});
    let out = apply(obj.clone(), &api::defaults::sgc_defaults(&obj));
    assert!(out["spec"].get("gatewayVmssProfile").is_none(), "{out}");

    // A missing spec gets one with the defaults.
    let obj = json!({"metadata": {"name": "x"}});
    let out = apply(obj.clone(), &api::defaults::sgc_defaults(&obj));
    assert_eq!(out["spec"]["provisionPublicIps"], true);

    // Defaulting is idempotent.
    let obj = json!({"spec": {"gatewayNodepoolName": "gwpool"}});
    let once = apply(obj.clone(), &api::defaults::sgc_defaults(&obj));
    assert!(api::defaults::sgc_defaults(&once).0.is_empty());
}

#[test]
fn pod_default_injection() {
    let ns = annotations(json!({api::names::NAMESPACE_DEFAULT_GATEWAY_ANNOTATION: "team-gw"}));
    let key = api::names::POD_GATEWAY_ANNOTATION;

    let plain = json!({"metadata": {"name": "p"}, "spec": {}});
    let out = apply(
        plain.clone(),
        &api::defaults::pod_default_gateway(&pod(plain.clone()), Some(&ns)).expect("injects"),
    );
    assert_eq!(out["metadata"]["annotations"][key], "team-gw");

    let other = json!({"metadata": {"name": "p", "annotations": {"other": "x"}}});
    let out = apply(
        other.clone(),
        &api::defaults::pod_default_gateway(&pod(other), Some(&ns)).expect("injects"),
    );
    assert_eq!(out["metadata"]["annotations"][key], "team-gw");
    assert_eq!(out["metadata"]["annotations"]["other"], "x");

    let own = pod(json!({"metadata": {"annotations": {key: "mine"}}}));
    assert!(
        api::defaults::pod_default_gateway(&own, Some(&ns)).is_none(),
        "a pod's own choice wins"
    );
    let host = pod(json!({"metadata": {}, "spec": {"hostNetwork": true}}));
    assert!(
        api::defaults::pod_default_gateway(&host, Some(&ns)).is_none(),
        "hostNetwork pods are left alone"
    );
    let plain = pod(plain);
    assert!(api::defaults::pod_default_gateway(&plain, None).is_none());
    assert!(
        api::defaults::pod_default_gateway(&plain, Some(&annotations(json!({"unrelated": "x"})))).is_none()
    );
}

#[test]
fn kubernetes_name_syntax() {
    use api::rules::{is_dns1123_label, is_dns1123_subdomain};
    for ok in ["a", "gw-1", "a.b", &"a".repeat(63)] {
        assert!(is_dns1123_subdomain(ok), "{ok}");
    }
    for bad in ["", "A", "-a", "a-", "a..b", "a_b", &"a".repeat(64)] {
        assert!(!is_dns1123_subdomain(bad), "{bad}");
    }
    for ok in ["a", "team-a", &"a".repeat(63)] {
        assert!(is_dns1123_label(ok), "{ok}");
    }
    for bad in ["", "a.b", "A", "-a", "a-", &"a".repeat(64)] {
        assert!(!is_dns1123_label(bad), "{bad}");
    }
}

#[test]
fn pool_update_that_keeps_the_spec_is_warned_not_refused() {
    let old = json!({"metadata": {"finalizers": ["egressgateway.kubernetes.azure.com/finalizer"]},
                     "spec": {"gatewayNodepoolName": "gwpool", "publicIpPrefixSize": 27}});
    let mut released = old.clone();
    released["metadata"]["finalizers"] = json!([]);
    let v = validate_pool_object(&released, Some(&old), None);
    assert!(v.is_allowed(), "{}", v.message());
    let warning = warning_at(&v, "spec.publicIpPrefixSize");
    assert!(
        warning.message.contains("rule 3") && warning.message.contains("does not change the spec"),
        "{warning}"
    );
    // A spec change is judged: refused for rule 3 still.
    let mut counted = old.clone();
    counted["spec"]["instanceCount"] = json!(1);
    assert_eq!(
        only(&validate_pool_object(&counted, Some(&old), None)),
        (Rule::PrefixSize, "spec.publicIpPrefixSize")
    );
    // The typed check still reports it.
    let spec: api::pool::GatewayPoolSpec = serde_json::from_value(old["spec"].clone()).expect("typed");
    assert!(!api::rules::validate_pool(&spec, Some(&spec), None).is_allowed());
}
