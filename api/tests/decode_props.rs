//! Whatever JSON arrives, validation answers with violations that name a field, and never panics.

use api::rules::{PoolFacts, validate_pool_object, validate_sgc_object};
use proptest::prelude::*;
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just("staticEgressGateway".to_string()),
            Just("10.0.0.0/8".to_string()),
            Just("/subscriptions/x/resourceGroups/y".to_string()),
            ".{0,12}"
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let keys = prop_oneof![
            Just("spec".to_string()),
            Just("gatewayNodepoolName".to_string()),
            Just("gatewayVmssProfile".to_string()),
            Just("vmssResourceGroup".to_string()),
            Just("vmssName".to_string()),
            Just("publicIpPrefixSize".to_string()),
            Just("defaultRoute".to_string()),
            Just("provisionPublicIps".to_string()),
            Just("publicIpPrefixId".to_string()),
            Just("excludeCidrs".to_string()),
            Just("instanceCount".to_string()),
            "[a-z]{1,6}"
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn validation_is_total(spec in json_value(), old in proptest::option::of(json_value()), nodes in proptest::option::of(0u32..40)) {
        let obj = serde_json::json!({"spec": spec});
        let old = old.map(|o| serde_json::json!({"spec": o}));
        let facts = PoolFacts { pool: None, node_count: nodes };
        for v in [validate_sgc_object(&obj, old.as_ref(), &facts), validate_pool_object(&obj, old.as_ref(), nodes)] {
            for violation in &v.violations {
                prop_assert!(violation.path.starts_with("spec"), "{}", violation);
                prop_assert!(!violation.message.is_empty());
            }
        }
    }
}

proptest! {
    /// The CRD schema's excludeCidrs pattern accepts exactly what rule 7's parser accepts, so the schema and
    /// the webhook never disagree about an entry.
    #[test]
    fn schema_cidr_pattern_agrees_with_the_parser(
        raw in prop_oneof![
            "[0-9./: a-f]{0,20}",
            (0u16..300, 0u16..300, 0u16..300, 0u16..300, 0u8..40).prop_map(|(a, b, c, d, l)| format!("{a}.{b}.{c}.{d}/{l}")),
            (0u8..=255, 0u8..=255, 0u8..=255, 0u8..=255, 0u8..=32).prop_map(|(a, b, c, d, l)| format!("{a}.{b}.{c}.{d}/0{l}")),
        ]
    ) {
        let pattern = regex::Regex::new(api::cidr::IPV4_CIDR_PATTERN).expect("pattern");
        prop_assert_eq!(pattern.is_match(&raw), api::rules::parse_ipv4_cidr(&raw).is_ok(), "{}", raw);
    }
}
