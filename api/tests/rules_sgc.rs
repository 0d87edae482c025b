//! Every StaticGatewayConfiguration rule, accepted and refused at its edges, through the JSON entry point the
//! webhook uses (so wrong types and enum values are covered too).

use api::pool::{GatewayPoolSpec, PoolVmssProfile};
use api::rules::{PoolFacts, Rule, validate_sgc, validate_sgc_object};
use serde_json::{Value, json};

const SUB: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";

fn byo(rest: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg-egress/providers/{rest}")
}

fn vmss(size: Value) -> Value {
    json!({"spec": {"gatewayVmssProfile": {"vmssResourceGroup": "rg", "vmssName": "gw", "publicIpPrefixSize": size}}})
}

fn nodepool() -> Value {
    json!({"spec": {"gatewayNodepoolName": "gwpool"}})
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base["spec"][key] = value;
    base
}

fn no_facts() -> PoolFacts {
    PoolFacts::default()
}

fn nodes(n: u32) -> PoolFacts {
    PoolFacts {
        pool: None,
        node_count: Some(n),
    }
}

fn pool(size: i32, declared: Option<i32>, nodes: Option<u32>) -> PoolFacts {
    PoolFacts {
        pool: Some(GatewayPoolSpec {
            gateway_nodepool_name: Some("gwpool".into()),
            gateway_vmss_profile: None,
            public_ip_prefix_size: size,
            instance_count: declared,
        }),
        node_count: nodes,
    }
}

fn vmss_pool(size: i32) -> PoolFacts {
    PoolFacts {
        pool: Some(GatewayPoolSpec {
            gateway_nodepool_name: None,
            gateway_vmss_profile: Some(PoolVmssProfile {
                vmss_resource_group: "rg".into(),
                vmss_name: "gw".into(),
            }),
            public_ip_prefix_size: size,
            instance_count: None,
        }),
        node_count: None,
    }
}

/// `None`: allowed. `Some((rule, path))`: refused with exactly that one violation.
type Expect = Option<(Rule, &'static str)>;

fn check(name: &str, obj: &Value, facts: &PoolFacts, expect: Expect) {
    let verdict = validate_sgc_object(obj, None, facts);
    match expect {
        None => assert!(
            verdict.is_allowed(),
            "{name}: expected allowed, got: {}",
            verdict.message()
        ),
        Some((rule, path)) => {
            assert_eq!(
                verdict.violations.len(),
                1,
                "{name}: expected one violation, got: {}",
                verdict.message()
            );
            let v = &verdict.violations[0];
            assert_eq!(v.rule, rule, "{name}: {}", verdict.message());
            assert_eq!(v.path, path, "{name}: {}", verdict.message());
            if let Some(n) = rule.number() {
                assert!(
                    v.message.starts_with(&format!("rule {n} (")),
                    "{name}: message names the rule: {}",
                    v.message
                );
            }
        }
    }
}

#[test]
fn rule1_exactly_one_pool() {
    let empty_profile = json!({"spec": {"gatewayNodepoolName": "gwpool", "gatewayVmssProfile": {}}});
    let both = json!({"spec": {"gatewayNodepoolName": "gwpool",
        "gatewayVmssProfile": {"vmssResourceGroup": "rg", "vmssName": "gw", "publicIpPrefixSize": 31}}});
    let cases: Vec<(&str, Value, Expect)> = vec![
        ("nodepool only", nodepool(), None),
        ("profile only", vmss(json!(31)), None),
        (
            "neither",
            json!({"spec": {}}),
            Some((Rule::OnePool, "spec.gatewayNodepoolName")),
        ),
        (
            "no spec at all",
            json!({}),
            Some((Rule::OnePool, "spec.gatewayNodepoolName")),
        ),
        (
            "empty nodepool name",
            json!({"spec": {"gatewayNodepoolName": ""}}),
            Some((Rule::OnePool, "spec.gatewayNodepoolName")),
        ),
        ("both", both, Some((Rule::OnePool, "spec.gatewayNodepoolName"))),
        // Upstream treats an all-empty profile as absent; manifests rely on it.
        ("nodepool + empty profile", empty_profile, None),
        (
            "only an empty profile",
            json!({"spec": {"gatewayVmssProfile": {"publicIpPrefixSize": 0}}}),
            Some((Rule::OnePool, "spec.gatewayNodepoolName")),
        ),
    ];
    for (name, obj, expect) in cases {
        check(name, &obj, &no_facts(), expect);
    }
}

#[test]
fn rule2_complete_vmss_profile() {
    let p = |rg: &str, name: &str, size: i32| json!({"spec": {"gatewayVmssProfile": {"vmssResourceGroup": rg, "vmssName": name, "publicIpPrefixSize": size}}});
    let cases: Vec<(&str, Value, Expect)> = vec![
        ("complete", p("rg", "gw", 30), None),
        (
            "missing resource group",
            p("", "gw", 30),
            Some((
                Rule::VmssProfileComplete,
                "spec.gatewayVmssProfile.vmssResourceGroup",
            )),
        ),
        (
            "bad resource group",
            p("rg.", "gw", 30),
            Some((
                Rule::VmssProfileComplete,
                "spec.gatewayVmssProfile.vmssResourceGroup",
            )),
        ),
        (
            "missing name",
            p("rg", "", 30),
            Some((Rule::VmssProfileComplete, "spec.gatewayVmssProfile.vmssName")),
        ),
        (
            "missing size",
            p("rg", "gw", 0),
            Some((
                Rule::VmssProfileComplete,
                "spec.gatewayVmssProfile.publicIpPrefixSize",
            )),
        ),
        (
            "size key absent",
            json!({"spec": {"gatewayVmssProfile": {"vmssResourceGroup": "rg", "vmssName": "gw"}}}),
            Some((
                Rule::VmssProfileComplete,
                "spec.gatewayVmssProfile.publicIpPrefixSize",
            )),
        ),
    ];
    for (name, obj, expect) in cases {
        check(name, &obj, &no_facts(), expect);
    }
}

#[test]
fn rule3_prefix_size_edges() {
    let path = "spec.gatewayVmssProfile.publicIpPrefixSize";
    for (size, ok) in [
        (27, false),
        (28, true),
        (29, true),
        (30, true),
        (31, true),
        (32, false),
        (40, false),
        (-1, false),
        (1, false),
    ] {
        let expect = if ok { None } else { Some((Rule::PrefixSize, path)) };
        check(&format!("/{size}"), &vmss(json!(size)), &no_facts(), expect);
    }
    check(
        "out of int32",
        &vmss(json!(1u64 << 40)),
        &no_facts(),
        Some((Rule::PrefixSize, path)),
    );
    check(
        "wrong type",
        &vmss(json!("31")),
        &no_facts(),
        Some((Rule::FieldType, path)),
    );
    check(
        "fraction",
        &vmss(json!(30.5)),
        &no_facts(),
        Some((Rule::FieldType, path)),
    );
}

#[test]
fn rule4_instances_fit_the_prefix() {
    let vp = "spec.gatewayVmssProfile.publicIpPrefixSize";
    let np = "spec.gatewayNodepoolName";
    let cases: Vec<(&str, Value, PoolFacts, Expect)> = vec![
        ("/31 with 2 nodes", vmss(json!(31)), nodes(2), None),
        (
            "/31 with 3 nodes",
            vmss(json!(31)),
            nodes(3),
            Some((Rule::InstancesFitPrefix, vp)),
        ),
        ("/30 with 4 nodes", vmss(json!(30)), nodes(4), None),
        (
            "/30 with 5 nodes",
            vmss(json!(30)),
            nodes(5),
            Some((Rule::InstancesFitPrefix, vp)),
        ),
        ("/28 with 16 nodes", vmss(json!(28)), nodes(16), None),
        (
            "/28 with 17 nodes",
            vmss(json!(28)),
            nodes(17),
            Some((Rule::InstancesFitPrefix, vp)),
        ),
        ("unknown node count", vmss(json!(31)), no_facts(), None),
        (
            "nodepool, pool /31, 2 nodes",
            nodepool(),
            pool(31, None, Some(2)),
            None,
        ),
        (
            "nodepool, pool /31, 3 nodes",
            nodepool(),
            pool(31, None, Some(3)),
            Some((Rule::InstancesFitPrefix, np)),
        ),
        (
            "nodepool, pool /31 declares 3",
            nodepool(),
            pool(31, Some(3), Some(1)),
            Some((Rule::InstancesFitPrefix, np)),
        ),
        (
            "nodepool, pool /30 declares 4",
            nodepool(),
            pool(30, Some(4), None),
            None,
        ),
        // Without a GatewayPool the prefix size lives in an Azure tag: only the operator can check.
        ("nodepool, no pool, 3 nodes", nodepool(), nodes(3), None),
        // Private mode uses no public prefix: nothing to fit.
        (
            "private, pool /31, 3 nodes",
            with(nodepool(), "provisionPublicIps", json!(false)),
            pool(31, None, Some(3)),
            None,
        ),
        (
            "vmss /31 but pool says /30",
            vmss(json!(31)),
            vmss_pool(30),
            Some((Rule::InstancesFitPrefix, vp)),
        ),
        ("vmss /30 and pool /30", vmss(json!(30)), vmss_pool(30), None),
    ];
    for (name, obj, facts, expect) in cases {
        check(name, &obj, &facts, expect);
    }
}

#[test]
fn rule4_message_says_how_to_fix() {
    let v = validate_sgc_object(&vmss(json!(31)), None, &nodes(3));
    let msg = v.message();
    assert!(msg.contains("3 gateway nodes"), "{msg}");
    assert!(msg.contains("/31 prefix has only 2 addresses"), "{msg}");
    assert!(msg.contains("publicIpPrefixSize: 30"), "{msg}");
    let v = validate_sgc_object(&vmss(json!(28)), None, &nodes(20));
    assert!(v.message().contains("shrink the pool"), "{}", v.message());
}

#[test]
fn rule4_on_update_refuses_only_a_change_of_pool_or_egress() {
    let over = pool(31, None, Some(3));
    // The pool's node count is not part of the request: an update that keeps the configuration public on its
    // pool (the operator removing its finalizer, a label, an edit of excludeCidrs) goes through, warned.
    let kept = nodepool();
    let edited = with(nodepool(), "excludeCidrs", json!(["10.0.0.0/8"]));
    for (name, new) in [("unchanged", &kept), ("excludeCidrs edited", &edited)] {
        let v = validate_sgc_object(new, Some(&kept), &over);
        assert!(v.is_allowed(), "{name}: {}", v.message());
        let warning = v
            .warnings
            .iter()
            .find(|w| w.path == "spec.gatewayNodepoolName")
            .unwrap_or_else(|| panic!("{name}: rule 4 is still reported, as a warning: {:?}", v.warnings));
        assert!(warning.message.contains("3 gateway nodes"), "{name}: {warning}");
        assert!(warning.message.contains("not refused"), "{name}: {warning}");
    }
    // A new configuration, or an update that makes a private one public, is refused as before.
    let private = with(nodepool(), "provisionPublicIps", json!(false));
    for (name, old) in [("create", None), ("private to public", Some(&private))] {
        let v = validate_sgc_object(&kept, old, &over);
        assert_eq!(
            v.rules(),
            [Rule::InstancesFitPrefix].into(),
            "{name}: {}",
            v.message()
        );
    }
    // An update that moves the configuration to another VMSS is refused for rule 4 too, beside immutability.
    let v = validate_sgc_object(&vmss(json!(31)), Some(&vmss(json!(30))), &nodes(3));
    assert!(v.rules().contains(&Rule::InstancesFitPrefix), "{}", v.message());
    assert!(v.rules().contains(&Rule::Immutable), "{}", v.message());
}

#[test]
fn rule5_private_mode_needs_nodepool() {
    let private_vmss = with(vmss(json!(31)), "provisionPublicIps", json!(false));
    check(
        "private + vmss",
        &private_vmss,
        &no_facts(),
        Some((Rule::PrivateNeedsNodepool, "spec.gatewayVmssProfile")),
    );
    check(
        "private + nodepool",
        &with(nodepool(), "provisionPublicIps", json!(false)),
        &no_facts(),
        None,
    );
    check(
        "public + vmss",
        &with(vmss(json!(31)), "provisionPublicIps", json!(true)),
        &no_facts(),
        None,
    );
    check(
        "provisionPublicIps wrong type",
        &with(nodepool(), "provisionPublicIps", json!("false")),
        &no_facts(),
        Some((Rule::FieldType, "spec.provisionPublicIps")),
    );
}

#[test]
fn rule6_public_ip_prefix_id() {
    let path = "spec.publicIpPrefixId";
    let id = byo("Microsoft.Network/publicIPPrefixes/my-prefix");
    let cases: Vec<(&str, Value, Expect)> = vec![
        (
            "well-formed",
            with(nodepool(), "publicIpPrefixId", json!(id)),
            None,
        ),
        (
            "other case",
            with(
                nodepool(),
                "publicIpPrefixId",
                json!(format!(
                    "/SUBSCRIPTIONS/{SUB}/resourcegroups/rg/providers/microsoft.network/PUBLICIPPREFIXES/p"
                )),
            ),
            None,
        ),
        (
            "empty string means managed",
            with(nodepool(), "publicIpPrefixId", json!("")),
            None,
        ),
        (
            "malformed",
            with(nodepool(), "publicIpPrefixId", json!("my-prefix")),
            Some((Rule::PublicIpPrefixId, path)),
        ),
        (
            "trailing slash",
            with(nodepool(), "publicIpPrefixId", json!(format!("{id}/"))),
            Some((Rule::PublicIpPrefixId, path)),
        ),
        (
            "wrong type",
            with(
                nodepool(),
                "publicIpPrefixId",
                json!(byo("Microsoft.Network/publicIPAddresses/my-ip")),
            ),
            Some((Rule::PublicIpPrefixId, path)),
        ),
        (
            "placeholder subscription",
            with(
                nodepool(),
                "publicIpPrefixId",
                json!(
                    "/subscriptions/mySubscriptionID/resourceGroups/rg/providers/Microsoft.Network/publicIPPrefixes/p"
                ),
            ),
            Some((Rule::PublicIpPrefixId, path)),
        ),
        (
            "set in private mode",
            with(
                with(nodepool(), "provisionPublicIps", json!(false)),
                "publicIpPrefixId",
                json!(id),
            ),
            Some((Rule::PublicIpPrefixId, path)),
        ),
        (
            "empty in private mode",
            with(
                with(nodepool(), "provisionPublicIps", json!(false)),
                "publicIpPrefixId",
                json!(""),
            ),
            None,
        ),
        (
            "not a string",
            with(nodepool(), "publicIpPrefixId", json!(42)),
            Some((Rule::FieldType, path)),
        ),
    ];
    for (name, obj, expect) in cases {
        check(name, &obj, &no_facts(), expect);
    }
    let v = validate_sgc_object(
        &with(
            nodepool(),
            "publicIpPrefixId",
            json!(byo("Microsoft.Network/publicIPAddresses/x")),
        ),
        None,
        &no_facts(),
    );
    assert!(
        v.message().contains("Microsoft.Network/publicIPAddresses"),
        "names the wrong type: {}",
        v.message()
    );
}

/// The CRD's bounds (`maxItems` 256, `maxLength` 64) are rule 7's too, so the webhook, the operator and a
/// Terraform plan report them with the field, not only the API server's schema.
#[test]
fn rule7_exclude_cidrs_bounds() {
    let cidrs = |list: Vec<String>| with(nodepool(), "excludeCidrs", json!(list));
    let distinct = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect()
    };
    let v = validate_sgc_object(&cidrs(distinct(256)), None, &no_facts());
    assert!(v.is_allowed() && v.warnings.is_empty(), "{v:?}");
    check(
        "257 entries",
        &cidrs(distinct(257)),
        &no_facts(),
        Some((Rule::ExcludeCidrs, "spec.excludeCidrs")),
    );
    let v = validate_sgc_object(&cidrs(distinct(257)), None, &no_facts());
    assert!(
        v.message().contains("257 entries") && v.message().contains("256"),
        "{}",
        v.message()
    );

    let long = format!("10.0.0.0/8{}", " ".repeat(55));
    assert_eq!(long.chars().count(), 65);
    check(
        "65 characters",
        &cidrs(vec!["10.0.0.0/8".into(), long.clone()]),
        &no_facts(),
        Some((Rule::ExcludeCidrs, "spec.excludeCidrs[1]")),
    );
    let v = validate_sgc_object(&cidrs(vec![long]), None, &no_facts());
    assert!(
        v.message().contains("65 characters") && v.message().contains("64") && !v.message().contains("  "),
        "{}",
        v.message()
    );
    // Characters, not bytes, as the schema counts: 64 of them is within the bound (and refused for its syntax).
    let v = validate_sgc_object(&cidrs(vec!["é".repeat(64)]), None, &no_facts());
    assert!(!v.message().contains("characters long"), "{}", v.message());
}

#[test]
fn rule7_exclude_cidrs() {
    let cidrs = |list: Value| with(nodepool(), "excludeCidrs", list);
    let cases: Vec<(&str, Value, Expect)> = vec![
        (
            "valid list",
            cidrs(json!(["10.244.0.0/16", "169.254.169.254/32", "0.0.0.0/0"])),
            None,
        ),
        (
            "bad second entry",
            cidrs(json!(["10.0.0.0/8", "10.0.0.0/33"])),
            Some((Rule::ExcludeCidrs, "spec.excludeCidrs[1]")),
        ),
        (
            "bare address",
            cidrs(json!(["1.2.3.4"])),
            Some((Rule::ExcludeCidrs, "spec.excludeCidrs[0]")),
        ),
        (
            "ipv6",
            cidrs(json!(["fd00::/8"])),
            Some((Rule::ExcludeCidrs, "spec.excludeCidrs[0]")),
        ),
        (
            "garbage",
            cidrs(json!(["not-a-cidr"])),
            Some((Rule::ExcludeCidrs, "spec.excludeCidrs[0]")),
        ),
        (
            "spaces",
            cidrs(json!([" 10.0.0.0/8"])),
            Some((Rule::ExcludeCidrs, "spec.excludeCidrs[0]")),
        ),
        (
            "empty",
            cidrs(json!([""])),
            Some((Rule::ExcludeCidrs, "spec.excludeCidrs[0]")),
        ),
        (
            "leading zero octet",
            cidrs(json!(["010.0.0.0/8"])),
            Some((Rule::ExcludeCidrs, "spec.excludeCidrs[0]")),
        ),
        (
            "leading zero length",
            cidrs(json!(["10.0.0.0/08"])),
            Some((Rule::ExcludeCidrs, "spec.excludeCidrs[0]")),
        ),
        (
            "not a list",
            cidrs(json!("10.0.0.0/8")),
            Some((Rule::FieldType, "spec.excludeCidrs")),
        ),
        (
            "number entry",
            cidrs(json!([10])),
            Some((Rule::FieldType, "spec.excludeCidrs[0]")),
        ),
    ];
    for (name, obj, expect) in cases {
        check(name, &obj, &no_facts(), expect);
    }
    let v = validate_sgc_object(&cidrs(json!(["1.2.3.4"])), None, &no_facts());
    assert!(
        v.message().contains("1.2.3.4/32"),
        "suggests the fix: {}",
        v.message()
    );
}

#[test]
fn rule7_warnings_do_not_deny() {
    let obj = with(
        nodepool(),
        "excludeCidrs",
        json!(["10.1.2.3/16", "10.1.0.0/16", "0.0.0.0/0"]),
    );
    let v = validate_sgc_object(&obj, None, &no_facts());
    assert!(v.is_allowed(), "{}", v.message());
    let text: Vec<String> = v.warnings.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|w| w.contains("spec.excludeCidrs[0]") && w.contains("10.1.0.0/16")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|w| w.contains("spec.excludeCidrs[1]") && w.contains("repeats")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|w| w.contains("spec.excludeCidrs[2]") && w.contains("nothing will use")),
        "{text:?}"
    );
}

#[test]
fn rule8_default_route() {
    let path = "spec.defaultRoute";
    check(
        "staticEgressGateway",
        &with(nodepool(), "defaultRoute", json!("staticEgressGateway")),
        &no_facts(),
        None,
    );
    check(
        "azureNetworking",
        &with(
            with(nodepool(), "defaultRoute", json!("azureNetworking")),
            "excludeCidrs",
            json!(["10.0.0.0/8"]),
        ),
        &no_facts(),
        None,
    );
    check("absent defaults", &nodepool(), &no_facts(), None);
    check(
        "wrong enum",
        &with(nodepool(), "defaultRoute", json!("internet")),
        &no_facts(),
        Some((Rule::DefaultRoute, path)),
    );
    check(
        "wrong case",
        &with(nodepool(), "defaultRoute", json!("AzureNetworking")),
        &no_facts(),
        Some((Rule::DefaultRoute, path)),
    );
    check(
        "wrong type",
        &with(nodepool(), "defaultRoute", json!(1)),
        &no_facts(),
        Some((Rule::FieldType, path)),
    );
    let v = validate_sgc_object(
        &with(nodepool(), "defaultRoute", json!("azureNetworking")),
        None,
        &no_facts(),
    );
    assert!(v.is_allowed());
    assert!(
        v.warnings
            .iter()
            .any(|w| w.message.contains("no traffic will use the gateway")),
        "{:?}",
        v.warnings
    );
}

#[test]
fn all_violations_are_reported_together() {
    let obj = json!({"spec": {
        "gatewayVmssProfile": {"vmssResourceGroup": "", "vmssName": "gw", "publicIpPrefixSize": 27},
        "provisionPublicIps": false,
        "publicIpPrefixId": "x",
        "defaultRoute": "nope",
        "excludeCidrs": ["10.0.0.0/8", "bad"],
    }});
    let v = validate_sgc_object(&obj, None, &no_facts());
    let rules = v.rules();
    for r in [
        Rule::VmssProfileComplete,
        Rule::PrefixSize,
        Rule::PrivateNeedsNodepool,
        Rule::PublicIpPrefixId,
        Rule::DefaultRoute,
        Rule::ExcludeCidrs,
    ] {
        assert!(rules.contains(&r), "missing {r:?} in {}", v.message());
    }
    let msg = v.message();
    assert!(
        msg.contains("spec.gatewayVmssProfile.vmssResourceGroup: rule 2"),
        "{msg}"
    );
    assert!(msg.contains("spec.excludeCidrs[1]: rule 7"), "{msg}");
}

#[test]
fn immutable_fields_on_update() {
    let old = nodepool();
    let moved = with(nodepool(), "gatewayNodepoolName", json!("other"));
    let v = validate_sgc_object(&moved, Some(&old), &no_facts());
    assert_eq!(
        v.rules().into_iter().collect::<Vec<_>>(),
        vec![Rule::Immutable],
        "{}",
        v.message()
    );
    assert_eq!(v.violations[0].path, "spec.gatewayNodepoolName");
    assert!(
        v.violations[0]
            .message
            .contains("create a new StaticGatewayConfiguration"),
        "{}",
        v.message()
    );

    // Same pool in another case is the same pool (Azure compares names case-insensitively).
    let recased = with(nodepool(), "gatewayNodepoolName", json!("GwPool"));
    assert!(validate_sgc_object(&recased, Some(&old), &no_facts()).is_allowed());

    let v = validate_sgc_object(&vmss(json!(30)), Some(&vmss(json!(31))), &no_facts());
    assert_eq!(v.violations.len(), 1, "{}", v.message());
    assert_eq!(
        (v.violations[0].rule, v.violations[0].path.as_str()),
        (Rule::Immutable, "spec.gatewayVmssProfile")
    );

    let switched = vmss(json!(31));
    let v = validate_sgc_object(&switched, Some(&old), &no_facts());
    assert_eq!(v.violations.len(), 2, "both pool fields changed: {}", v.message());

    // Mutable fields pass, with a warning about existing pods.
    let new = with(
        with(nodepool(), "excludeCidrs", json!(["10.0.0.0/8"])),
        "provisionPublicIps",
        json!(false),
    );
    let v = validate_sgc_object(&new, Some(&old), &no_facts());
    assert!(v.is_allowed(), "{}", v.message());
    assert!(
        v.warnings
            .iter()
            .any(|w| w.message.contains("existing pods keep their routes")),
        "{:?}",
        v.warnings
    );
    assert!(
        v.warnings.iter().any(|w| w.message.contains("egress addresses")),
        "{:?}",
        v.warnings
    );

    // An unchanged update warns about nothing.
    let v = validate_sgc_object(&old, Some(&old), &no_facts());
    assert!(v.is_allowed() && v.warnings.is_empty(), "{v:?}");
}

#[test]
fn typed_and_json_entry_points_agree() {
    for obj in [
        nodepool(),
        vmss(json!(31)),
        vmss(json!(27)),
        with(nodepool(), "excludeCidrs", json!(["x"])),
    ] {
        let spec: api::StaticGatewayConfigurationSpec =
            serde_json::from_value(obj["spec"].clone()).expect("typed");
        assert_eq!(
            validate_sgc(&spec, None, &nodes(1)),
            validate_sgc_object(&obj, None, &nodes(1))
        );
    }
}

const ADOPTED: &str = api::names::ADOPTED_PREFIX_ANNOTATION;
const ADOPTED_PATH: &str =
    "metadata.annotations[egressgateway.kubernetes.azure.com/adopted-public-ip-prefix]";
const UPSTREAM_UUID: &str = "0b4e2c64-3f1d-4a63-9c55-2b8f0d3e7a19";
const OWN_UID: &str = "6f2d1c3e-8b4a-4e5f-9a7b-1c2d3e4f5a6b";

fn annotated(value: Value) -> Value {
    let mut obj = nodepool();
    obj["metadata"] = json!({"uid": OWN_UID, "annotations": {ADOPTED: value}});
    obj
}

#[test]
fn the_adopted_prefix_annotation_names_a_prefix_the_operator_may_adopt() {
    let prefix = |name: &str| json!(byo(&format!("Microsoft.Network/publicIPPrefixes/{name}")));
    let cases: Vec<(&str, Value, Expect)> = vec![
        (
            "upstream's prefix",
            prefix(&format!("egressgateway-{UPSTREAM_UUID}")),
            None,
        ),
        (
            "any case, surrounding blanks",
            json!(format!(
                " {} ",
                byo(&format!(
                    "Microsoft.Network/publicIPPrefixes/EgressGateway-{}",
                    UPSTREAM_UUID.to_uppercase()
                ))
            )),
            None,
        ),
        (
            "a user's prefix",
            prefix("corp-egress"),
            Some((Rule::AdoptedPrefixAnnotation, ADOPTED_PATH)),
        ),
        (
            "no UUID",
            prefix("egressgateway-notauuid"),
            Some((Rule::AdoptedPrefixAnnotation, ADOPTED_PATH)),
        ),
        (
            "its own prefix",
            prefix(&format!("egressgateway-{OWN_UID}")),
            Some((Rule::AdoptedPrefixAnnotation, ADOPTED_PATH)),
        ),
        (
            "not a prefix",
            json!(byo(&format!(
                "Microsoft.Network/publicIPAddresses/egressgateway-{UPSTREAM_UUID}"
            ))),
            Some((Rule::AdoptedPrefixAnnotation, ADOPTED_PATH)),
        ),
        (
            "not an ARM ID",
            json!("egressgateway-x"),
            Some((Rule::AdoptedPrefixAnnotation, ADOPTED_PATH)),
        ),
        (
            "empty",
            json!(""),
            Some((Rule::AdoptedPrefixAnnotation, ADOPTED_PATH)),
        ),
        (
            "not a string",
            json!(7),
            Some((Rule::AdoptedPrefixAnnotation, ADOPTED_PATH)),
        ),
    ];
    for (name, value, expect) in cases {
        check(name, &annotated(value), &no_facts(), expect);
    }
    let refused = validate_sgc_object(&annotated(prefix("corp-egress")), None, &no_facts());
    let message = refused.message();
    assert!(
        message.contains("corp-egress") && message.contains("egressgateway-<UUID>"),
        "names the value and the rule: {message}"
    );
}

#[test]
fn an_adopted_prefix_annotation_is_judged_when_set_or_changed_not_when_kept() {
    let bad = annotated(json!("not an id"));
    // Kept as it was (the operator removing its finalizer, a spec edit): not judged again.
    assert!(validate_sgc_object(&bad, Some(&bad), &no_facts()).is_allowed());
    // Set on an update, or changed: judged.
    let before = nodepool();
    let v = validate_sgc_object(&bad, Some(&before), &no_facts());
    assert_eq!(v.violations.len(), 1, "{}", v.message());
    assert_eq!(v.violations[0].path, ADOPTED_PATH);
    let good = annotated(json!(byo(&format!(
        "Microsoft.Network/publicIPPrefixes/egressgateway-{UPSTREAM_UUID}"
    ))));
    let v = validate_sgc_object(&bad, Some(&good), &no_facts());
    assert_eq!(v.violations.len(), 1, "{}", v.message());
    // Removed: nothing to judge.
    assert!(validate_sgc_object(&before, Some(&bad), &no_facts()).is_allowed());
}

/// A configuration admitted before these rules (upstream's CRD took a malformed publicIpPrefixId and any prefix
/// size), terminating: the operator's finalizer removal is an update that keeps the spec.
fn admitted_before_the_rules() -> Value {
    json!({
        "metadata": {"name": "old", "finalizers": ["egressgateway.kubernetes.azure.com/finalizer"],
                     "deletionTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"gatewayVmssProfile": {"vmssResourceGroup": "rg", "vmssName": "gw", "publicIpPrefixSize": 27},
                 "publicIpPrefixId": "not-an-arm-id"}
    })
}

#[test]
fn an_update_that_keeps_the_spec_is_warned_not_refused() {
    let old = admitted_before_the_rules();
    let mut released = old.clone();
    released["metadata"]["finalizers"] = json!([]);
    let v = validate_sgc_object(&released, Some(&old), &no_facts());
    assert!(v.is_allowed(), "{}", v.message());
    for path in [
        "spec.gatewayVmssProfile.publicIpPrefixSize",
        "spec.publicIpPrefixId",
    ] {
        let warning = v
            .warnings
            .iter()
            .find(|w| w.path == path)
            .unwrap_or_else(|| panic!("{path} is still reported, as a warning: {:?}", v.warnings));
        assert!(
            warning
                .message
                .contains("does not change the spec, so it is not refused"),
            "{warning}"
        );
    }

    // The stored object may predate the mutating webhook's defaults (upstream's `gatewayVmssProfile: {}`, no
    // defaultRoute); the webhook passes it on defaulted, which is still the same spec.
    let bare = json!({"spec": {"gatewayNodepoolName": "gwpool", "gatewayVmssProfile": {},
                               "provisionPublicIps": false, "publicIpPrefixId": "x"}});
    let defaulted = json!({"spec": {"gatewayNodepoolName": "gwpool", "defaultRoute": "staticEgressGateway",
                                    "provisionPublicIps": false, "publicIpPrefixId": "x"}});
    let v = validate_sgc_object(&defaulted, Some(&bare), &no_facts());
    assert!(v.is_allowed(), "{}", v.message());
    assert!(
        v.warnings.iter().any(|w| w.path == "spec.publicIpPrefixId"),
        "{:?}",
        v.warnings
    );

    // An update that changes the spec is judged as a create is: refused for every rule it breaks.
    let edited = with(old.clone(), "excludeCidrs", json!(["10.0.0.0/8"]));
    let v = validate_sgc_object(&edited, Some(&old), &no_facts());
    assert_eq!(
        v.rules(),
        [Rule::PrefixSize, Rule::PublicIpPrefixId].into(),
        "{}",
        v.message()
    );
    // A create of the same spec is refused.
    assert!(!validate_sgc_object(&old, None, &no_facts()).is_allowed());
}

/// The operator re-checks an admitted configuration with `validate_sgc(spec, Some(spec), ..)` (operator/src/
/// pass.rs): it must still see the violations, so the status says what is wrong; only admission stops refusing.
#[test]
fn the_typed_check_of_an_admitted_spec_still_reports_its_violations() {
    let obj = admitted_before_the_rules();
    let spec: api::StaticGatewayConfigurationSpec =
        serde_json::from_value(obj["spec"].clone()).expect("typed");
    let v = validate_sgc(&spec, Some(&spec), &no_facts());
    assert_eq!(
        v.rules(),
        [Rule::PrefixSize, Rule::PublicIpPrefixId].into(),
        "{}",
        v.message()
    );
}
