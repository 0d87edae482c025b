//! Request decoding and review are total: any bytes give a 400-class error or a review response that echoes
//! the uid, never a panic.

use proptest::prelude::*;
use serde_json::{Value, json};
use webhook::facts::StaticFacts;
use webhook::handlers::{Endpoint, Policy, review};
use webhook::review::decode;

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    prop::sample::select(Endpoint::ALL.to_vec())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), ep in endpoint()) {
        if let Ok(req) = decode(&bytes) {
            let _ = review(ep, &req, &StaticFacts::default(), &Policy::default());
        }
    }

    #[test]
    fn reviews_with_arbitrary_objects_answer_with_the_uid(
        object in any_json(), old in any_json(), op in prop::sample::select(vec!["CREATE", "UPDATE", "DELETE", "CONNECT", "?"]),
        ep in endpoint(), sub in prop::option::of("[a-z]{0,6}"),
    ) {
        let (group, kind) = ep.kind();
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "uid-1", "kind": {"group": group, "version": "v1", "kind": kind}, "operation": op,
            "subResource": sub, "namespace": "ns", "name": "n", "object": object, "oldObject": old}});
        let bytes = serde_json::to_vec(&body).expect("json");
        let req = decode(&bytes).expect("well-formed envelope decodes");
        let resp = review(ep, &req, &StaticFacts::default(), &Policy::default());
        prop_assert_eq!(&resp.uid, "uid-1");
        let out: Value = serde_json::from_slice(&resp.to_review_json()).expect("response is JSON");
        prop_assert_eq!(out["response"]["uid"].as_str(), Some("uid-1"));
        if !resp.allowed {
            prop_assert!(resp.denial.as_ref().is_some_and(|d| !d.message.is_empty()));
        }
    }
}
