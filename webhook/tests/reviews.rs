//! Every handler path through real AdmissionReview v1 JSON, in the shape kube-apiserver sends, checking the
//! response shape it expects back (uid echo, status, patchType + base64 patch, warnings).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Value, json};
use webhook::facts::StaticFacts;
use webhook::handlers::{Endpoint, Policy, review};
use webhook::review::{DecodeError, decode};

const NODE_AGENT: &str = "system:serviceaccount:kube-egress-gateway-system:kube-egress-gateway-node-agent";

fn request(kind: (&str, &str), operation: &str, object: Value, old: Option<Value>) -> Value {
    let (group, kind) = kind;
    let resource = match kind {
        "StaticGatewayConfiguration" => "staticgatewayconfigurations",
        "GatewayPool" => "gatewaypools",
        "PodEndpoint" => "podendpoints",
        _ => "pods",
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": if group.is_empty() { "v1" } else { "v1alpha1" }, "kind": kind},
            "resource": {"group": group, "version": "v1alpha1", "resource": resource},
            "requestKind": {"group": group, "version": "v1alpha1", "kind": kind},
            "requestResource": {"group": group, "version": "v1alpha1", "resource": resource},
            "name": "gw",
            "namespace": "team-a",
            "operation": operation,
            "userInfo": {"username": "admin", "uid": "014fbff9a07c", "groups": ["system:authenticated", "my-admin-group"]},
            "object": object,
            "oldObject": old,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

const SGC: (&str, &str) = ("egressgateway.kubernetes.azure.com", "StaticGatewayConfiguration");
const POOL: (&str, &str) = ("egressgateway.kubernetes.azure.com", "GatewayPool");
const POD: (&str, &str) = ("", "Pod");
const PODENDPOINT: (&str, &str) = ("egressgateway.kubernetes.azure.com", "PodEndpoint");

fn sgc(spec: Value) -> Value {
    json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
           "metadata": {"name": "gw", "namespace": "team-a"}, "spec": spec})
}

fn facts() -> StaticFacts {
    let gw_node = |i: u32| {
        let labels: BTreeMap<String, String> = [
            ("kubernetes.azure.com/agentpool".to_string(), "gwpool".to_string()),
            ("kubernetes.azure.com/mode".to_string(), "gateway".to_string()),
        ]
        .into();
        let provider = format!(
            "azure:///subscriptions/3fa85f64-5717-4562-b3fc-2c963f66afa6/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/gw/virtualMachines/{i}"
        );
        (labels, Some(provider))
    };
    StaticFacts {
        nodes: (0..3).map(gw_node).collect(),
        pools: vec![],
        namespaces: [
            (
                "team-a".to_string(),
                [(
                    api::names::NAMESPACE_DEFAULT_GATEWAY_ANNOTATION.to_string(),
                    "gw".to_string(),
                )]
                .into(),
            ),
            ("plain".to_string(), BTreeMap::new()),
        ]
        .into(),
        sgcs: vec![("team-a".into(), "gw".into())],
        deleting_pools: vec![],
    }
}

/// [`facts`] with a GatewayPool giving node pool `gwpool` (whose 3 gateway nodes do not fit) a /31 prefix.
fn facts_with_gwpool_31() -> StaticFacts {
    let mut f = facts();
    f.pools.push(api::GatewayPoolSpec {
        gateway_nodepool_name: Some("gwpool".into()),
        gateway_vmss_profile: None,
        public_ip_prefix_size: 31,
        instance_count: None,
    });
    f
}

/// A configuration on node pool `gwpool`, with nothing else set.
fn gwpool_sgc() -> Value {
    sgc(json!({"gatewayNodepoolName": "gwpool"}))
}

/// Runs a review end to end through the wire format and returns the response JSON.
fn run(endpoint: Endpoint, review_json: &Value, facts: &StaticFacts) -> Value {
    let body = serde_json::to_vec(review_json).expect("encode");
    let req = decode(&body).expect("decodes");
    let policy = Policy {
        podendpoint_writers: vec![NODE_AGENT.to_string()],
    };
    let out: Value =
        serde_json::from_slice(&review(endpoint, &req, facts, &policy).to_review_json()).expect("json");
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(
        out["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002",
        "uid echoed"
    );
    out["response"].clone()
}

/// [`run`] of a CREATE of `object` (a `kind`) with [`facts`].
fn create(endpoint: Endpoint, kind: (&str, &str), object: Value) -> Value {
    run(endpoint, &request(kind, "CREATE", object, None), &facts())
}

fn patch_of(resp: &Value) -> Value {
    assert_eq!(resp["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().expect("patch"))
        .expect("b64");
    serde_json::from_slice(&bytes).expect("patch json")
}

#[test]
fn valid_configuration_is_allowed_without_status() {
    let resp = create(Endpoint::ValidateSgc, SGC, gwpool_sgc());
    assert_eq!(resp["allowed"], true);
    assert!(
        resp.get("status").is_none() && resp.get("patch").is_none(),
        "{resp}"
    );
}

#[test]
fn invalid_configuration_is_denied_with_every_violation_and_its_path() {
    let spec = json!({"gatewayVmssProfile": {"vmssResourceGroup": "rg", "vmssName": "gw", "publicIpPrefixSize": 31},
                      "excludeCidrs": ["10.0.0.0/8", "1.2.3.4"], "publicIpPrefixId": "nope"});
    let resp = create(Endpoint::ValidateSgc, SGC, sgc(spec));
    assert_eq!(resp["allowed"], false);
    let status = &resp["status"];
    assert_eq!(status["code"], 400);
    assert_eq!(status["reason"], "BadRequest");
    let message = status["message"].as_str().expect("message");
    assert!(
        message.starts_with("StaticGatewayConfiguration team-a/gw is invalid: "),
        "{message}"
    );
    // rule 4 uses the cluster's 3 gateway nodes of that VMSS
    assert!(
        message.contains("spec.gatewayVmssProfile.publicIpPrefixSize: rule 4"),
        "{message}"
    );
    assert!(message.contains("spec.excludeCidrs[1]: rule 7"), "{message}");
    assert!(message.contains("spec.publicIpPrefixId: rule 6"), "{message}");
    let fields: Vec<&str> = status["details"]["causes"]
        .as_array()
        .expect("causes")
        .iter()
        .map(|c| c["field"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(fields.len(), 3, "{fields:?}");
}

#[test]
fn pool_in_gateway_pool_gives_rule_four_facts() {
    let f = facts_with_gwpool_31();
    let resp = run(
        Endpoint::ValidateSgc,
        &request(SGC, "CREATE", sgc(json!({"gatewayNodepoolName": "GWPOOL"})), None),
        &f,
    );
    assert_eq!(resp["allowed"], false, "3 nodes do not fit /31");
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("spec.gatewayNodepoolName: rule 4"),
        "{resp}"
    );
}

#[test]
fn new_configurations_on_a_deleting_pool_are_denied() {
    let mut f = facts();
    f.nodes.clear();
    f.deleting_pools
        .push(("gw-pool".into(), api::PoolRef::Nodepool("gwpool".into())));
    let create = run(
        Endpoint::ValidateSgc,
        &request(SGC, "CREATE", gwpool_sgc(), None),
        &f,
    );
    assert_eq!(create["allowed"], false, "{create}");
    let causes = create["status"]["details"]["causes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(causes.len(), 1, "{create}");
    assert_eq!(causes[0]["field"], "spec.gatewayNodepoolName");
    assert!(
        causes[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("GatewayPool 'gw-pool' is being deleted"),
        "{create}"
    );
    let other_pool = run(
        Endpoint::ValidateSgc,
        &request(
            SGC,
            "CREATE",
            sgc(json!({"gatewayNodepoolName": "otherpool"})),
            None,
        ),
        &f,
    );
    assert_eq!(other_pool["allowed"], true, "{other_pool}");
    let existing = gwpool_sgc();
    let update = run(
        Endpoint::ValidateSgc,
        &request(SGC, "UPDATE", existing.clone(), Some(existing)),
        &f,
    );
    assert_eq!(
        update["allowed"], true,
        "existing configurations stay updatable: {update}"
    );
}

#[test]
fn finalizers_come_off_while_a_pool_is_over_its_prefix() {
    // A surge upgrade: the /31 pool has 3 gateway nodes. The operator must still be able to remove its
    // finalizers from a configuration and a pool being deleted; the update is warned, not refused.
    let f = facts_with_gwpool_31();
    let deleting = |mut obj: Value, finalizer: &str| {
        obj["metadata"]["deletionTimestamp"] = json!("2026-12-07T10:00:00Z");
        obj["metadata"]["finalizers"] = json!([finalizer]);
        obj
    };
    let released = |mut obj: Value| {
        obj["metadata"]["finalizers"] = json!([]);
        obj
    };
    let old = deleting(
        sgc(json!({"gatewayNodepoolName": "gwpool", "provisionPublicIps": true})),
        api::names::SGC_FINALIZER,
    );
    let resp = run(
        Endpoint::ValidateSgc,
        &request(SGC, "UPDATE", released(old.clone()), Some(old)),
        &f,
    );
    assert_eq!(resp["allowed"], true, "{resp}");
    let warnings = resp["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap_or("").contains("3 gateway nodes")),
        "rule 4 is still said: {resp}"
    );

    let pool = json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayPool",
        "metadata": {"name": "gwpool"}, "spec": {"gatewayNodepoolName": "gwpool", "publicIpPrefixSize": 31}});
    let old = deleting(pool, api::names::POOL_FINALIZER);
    let mut req = request(POOL, "UPDATE", released(old.clone()), Some(old));
    req["request"]["namespace"] = Value::Null;
    let resp = run(Endpoint::ValidatePool, &req, &f);
    assert_eq!(resp["allowed"], true, "{resp}");
}

#[test]
fn configurations_admitted_before_the_rules_can_still_lose_their_finalizer() {
    // Upstream's CRD took a publicIpPrefixId our rule 6 refuses and a /27 prefix (rule 3). The configuration is
    // being deleted; the operator's finalizer removal keeps the spec and must go through, warned.
    let mut old = sgc(json!({
        "gatewayVmssProfile": {"vmssResourceGroup": "rg", "vmssName": "gw", "publicIpPrefixSize": 27},
        "publicIpPrefixId": "upstream-prefix",
        "defaultRoute": "staticEgressGateway",
        "provisionPublicIps": true
    }));
    old["metadata"]["deletionTimestamp"] = json!("2026-12-07T10:00:00Z");
    old["metadata"]["finalizers"] = json!([api::names::SGC_FINALIZER]);
    let mut released = old.clone();
    released["metadata"]["finalizers"] = json!([]);
    let resp = run(
        Endpoint::ValidateSgc,
        &request(SGC, "UPDATE", released, Some(old.clone())),
        &facts(),
    );
    assert_eq!(resp["allowed"], true, "{resp}");
    let warnings: Vec<String> = resp["warnings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|w| w.as_str().unwrap_or_default().to_string())
        .collect();
    for (path, rule) in [
        ("spec.publicIpPrefixId", "rule 6"),
        ("spec.gatewayVmssProfile.publicIpPrefixSize", "rule 3"),
    ] {
        assert!(
            warnings.iter().any(|w| w.starts_with(path)
                && w.contains(rule)
                && w.contains("does not change the spec, so it is not refused")),
            "{rule} is still said, as a warning: {warnings:?}"
        );
    }

    // An update that changes the spec is judged as before: refused for both.
    let mut edited = old.clone();
    edited["spec"]["excludeCidrs"] = json!(["10.0.0.0/8"]);
    let resp = run(
        Endpoint::ValidateSgc,
        &request(SGC, "UPDATE", edited, Some(old)),
        &facts(),
    );
    assert_eq!(resp["allowed"], false, "{resp}");
    let fields: Vec<&str> = resp["status"]["details"]["causes"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["field"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        fields.contains(&"spec.publicIpPrefixId")
            && fields.contains(&"spec.gatewayVmssProfile.publicIpPrefixSize"),
        "{resp}"
    );

    // A GatewayPool alike: a /27 pool loses its finalizer; resizing it is refused.
    let pool = json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayPool",
        "metadata": {"name": "gw", "deletionTimestamp": "2026-12-07T10:00:00Z",
                     "finalizers": [api::names::POOL_FINALIZER]},
        "spec": {"gatewayNodepoolName": "other", "publicIpPrefixSize": 27}});
    let mut released = pool.clone();
    released["metadata"]["finalizers"] = json!([]);
    let mut req = request(POOL, "UPDATE", released, Some(pool.clone()));
    req["request"]["namespace"] = Value::Null;
    let resp = run(Endpoint::ValidatePool, &req, &facts());
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(resp["warnings"].to_string().contains("rule 3"), "{resp}");
    let mut counted = pool.clone();
    counted["spec"]["instanceCount"] = json!(1);
    let mut req = request(POOL, "UPDATE", counted, Some(pool));
    req["request"]["namespace"] = Value::Null;
    assert_eq!(run(Endpoint::ValidatePool, &req, &facts())["allowed"], false);
}

#[test]
fn immutable_pool_reference_on_update() {
    let old = gwpool_sgc();
    let new = sgc(json!({"gatewayNodepoolName": "other"}));
    let resp = run(
        Endpoint::ValidateSgc,
        &request(SGC, "UPDATE", new, Some(old)),
        &facts(),
    );
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("move the pods"),
        "{resp}"
    );
}

#[test]
fn a_hand_set_adoption_annotation_is_judged_at_admission() {
    let annotate = |value: &str| {
        let mut obj = gwpool_sgc();
        obj["metadata"]["annotations"] = json!({api::names::ADOPTED_PREFIX_ANNOTATION: value});
        obj
    };
    let upstream = "/subscriptions/3fa85f64-5717-4562-b3fc-2c963f66afa6/resourceGroups/mc_rg/providers/\
                    Microsoft.Network/publicIPPrefixes/egressgateway-0b4e2c64-3f1d-4a63-9c55-2b8f0d3e7a19";
    let users = "/subscriptions/3fa85f64-5717-4562-b3fc-2c963f66afa6/resourceGroups/mc_rg/providers/\
                 Microsoft.Network/publicIPPrefixes/corp-egress";
    let update = |new: Value| {
        run(
            Endpoint::ValidateSgc,
            &request(SGC, "UPDATE", new, Some(gwpool_sgc())),
            &facts(),
        )
    };
    assert_eq!(update(annotate(upstream))["allowed"], true);
    let resp = update(annotate(users));
    assert_eq!(resp["allowed"], false, "{resp}");
    let causes = resp["status"]["details"]["causes"].as_array().expect("causes");
    assert_eq!(causes.len(), 1, "{resp}");
    assert_eq!(
        causes[0]["field"],
        format!("metadata.annotations[{}]", api::names::ADOPTED_PREFIX_ANNOTATION)
    );
    assert!(
        causes[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("corp-egress"),
        "{resp}"
    );
    // The same value kept on a later update (the operator removing its finalizer) is not judged again.
    let kept = run(
        Endpoint::ValidateSgc,
        &request(SGC, "UPDATE", annotate(users), Some(annotate(users))),
        &facts(),
    );
    assert_eq!(kept["allowed"], true, "{kept}");
}

#[test]
fn warnings_are_returned_with_an_allow() {
    let resp = create(
        Endpoint::ValidateSgc,
        SGC,
        sgc(json!({"gatewayNodepoolName": "gwpool", "excludeCidrs": ["10.1.2.3/16"]})),
    );
    assert_eq!(resp["allowed"], true);
    let warnings = resp["warnings"].as_array().expect("warnings");
    assert!(
        warnings[0].as_str().unwrap_or("").contains("10.1.0.0/16"),
        "{warnings:?}"
    );
}

#[test]
fn delete_and_status_updates_are_not_judged() {
    let bad = sgc(json!({}));
    assert_eq!(
        run(
            Endpoint::ValidateSgc,
            &request(SGC, "DELETE", Value::Null, Some(bad.clone())),
            &facts()
        )["allowed"],
        true
    );
    let mut status_update = request(SGC, "UPDATE", bad.clone(), Some(bad));
    status_update["request"]["subResource"] = json!("status");
    assert_eq!(
        run(Endpoint::ValidateSgc, &status_update, &facts())["allowed"],
        true
    );
}

#[test]
fn defaults_come_back_as_a_json_patch() {
    let resp = create(Endpoint::MutateSgc, SGC, gwpool_sgc());
    assert_eq!(resp["allowed"], true);
    assert_eq!(
        patch_of(&resp),
        json!([{"op": "add", "path": "/spec/defaultRoute", "value": "staticEgressGateway"},
               {"op": "add", "path": "/spec/provisionPublicIps", "value": true}])
    );
    let complete = sgc(
        json!({"gatewayNodepoolName": "gwpool", "defaultRoute": "azureNetworking", "provisionPublicIps": false}),
    );
    let resp = create(Endpoint::MutateSgc, SGC, complete);
    assert!(
        resp.get("patch").is_none() && resp.get("patchType").is_none(),
        "no-op mutation carries no patch: {resp}"
    );
}

#[test]
fn pools_are_validated() {
    let pool = |spec: Value| json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayPool", "metadata": {"name": "gwpool"}, "spec": spec});
    let mut req = request(
        POOL,
        "CREATE",
        pool(json!({"gatewayNodepoolName": "gwpool", "publicIpPrefixSize": 31})),
        None,
    );
    req["request"]["namespace"] = Value::Null;
    let resp = run(Endpoint::ValidatePool, &req, &facts());
    assert_eq!(resp["allowed"], false, "3 nodes do not fit /31");
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("GatewayPool gw is invalid"),
        "{resp}"
    );
    let req = request(
        POOL,
        "CREATE",
        pool(json!({"gatewayNodepoolName": "gwpool", "publicIpPrefixSize": 30})),
        None,
    );
    assert_eq!(run(Endpoint::ValidatePool, &req, &facts())["allowed"], true);
    // GatewayPools have no defaults, so no endpoint mutates them (and the chart registers no mutating
    // webhook for them: tests/chart/test_webhook.py).
    assert!(
        Endpoint::ALL
            .iter()
            .all(|e| e.kind().1 != "GatewayPool" || e.path().starts_with("/validate-"))
    );
}

fn pod(annotations: Value, host_network: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "app-", "namespace": "team-a", "annotations": annotations},
           "spec": {"hostNetwork": host_network, "containers": [{"name": "app", "image": "nginx"}]}})
}

#[test]
fn pods_get_the_namespace_default() {
    let resp = create(Endpoint::MutatePod, POD, pod(json!({"team": "a"}), false));
    assert_eq!(
        patch_of(&resp),
        json!([{"op": "add", "path": "/metadata/annotations/kubernetes.azure.com~1static-gateway-configuration", "value": "gw"}])
    );
    // Own choice, hostNetwork, or a namespace without default: untouched.
    for (p, ns) in [
        (
            pod(json!({api::names::POD_GATEWAY_ANNOTATION: "other"}), false),
            "team-a",
        ),
        (pod(Value::Null, true), "team-a"),
        (pod(Value::Null, false), "plain"),
        (pod(Value::Null, false), "unknown-namespace"),
    ] {
        let mut req = request(POD, "CREATE", p, None);
        req["request"]["namespace"] = json!(ns);
        let resp = run(Endpoint::MutatePod, &req, &facts());
        assert_eq!(resp["allowed"], true);
        assert!(resp.get("patch").is_none(), "{resp}");
    }
}

#[test]
fn annotated_host_network_pods_are_denied_and_missing_configurations_warned() {
    let resp = create(
        Endpoint::ValidatePod,
        POD,
        pod(json!({api::names::POD_GATEWAY_ANNOTATION: "gw"}), true),
    );
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("hostNetwork"),
        "{resp}"
    );

    let resp = create(
        Endpoint::ValidatePod,
        POD,
        pod(json!({api::names::POD_GATEWAY_ANNOTATION: "missing"}), false),
    );
    assert_eq!(
        resp["allowed"], true,
        "a missing configuration warns, it does not deny"
    );
    assert!(
        resp["warnings"][0]
            .as_str()
            .unwrap_or("")
            .contains("'missing' does not exist in namespace 'team-a'"),
        "{resp}"
    );

    let resp = create(
        Endpoint::ValidatePod,
        POD,
        pod(json!({api::names::POD_GATEWAY_ANNOTATION: "gw"}), false),
    );
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("warnings").is_none(), "{resp}");
    let resp = create(Endpoint::ValidatePod, POD, pod(Value::Null, true));
    assert_eq!(resp["allowed"], true, "plain hostNetwork pods pass");
}

#[test]
fn only_the_node_agent_writes_podendpoints() {
    let pe = json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "PodEndpoint",
                    "metadata": {"name": "app", "namespace": "team-a"},
                    "spec": {"staticGatewayConfiguration": "gw", "podIpAddress": "10.244.0.5/32", "podPublicKey": "x"}});
    let resp = create(Endpoint::ValidatePodEndpoint, PODENDPOINT, pe.clone());
    assert_eq!(resp["allowed"], false);
    assert_eq!(resp["status"]["code"], 403);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("user \"admin\" may not create"),
        "{resp}"
    );
    let mut by_agent = request(PODENDPOINT, "UPDATE", pe.clone(), Some(pe));
    by_agent["request"]["userInfo"]["username"] = json!(NODE_AGENT);
    assert_eq!(
        run(Endpoint::ValidatePodEndpoint, &by_agent, &facts())["allowed"],
        true
    );
}

#[test]
fn wrong_kind_on_an_endpoint_is_denied_not_crashed() {
    let resp = create(Endpoint::ValidateSgc, POD, pod(Value::Null, false));
    assert_eq!(resp["allowed"], false);
    assert_eq!(resp["status"]["code"], 400);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("admits StaticGatewayConfiguration objects, got core/Pod"),
        "{resp}"
    );
}

#[test]
fn malformed_reviews() {
    assert!(matches!(decode(b"not json"), Err(DecodeError::NotJson(_))));
    assert!(matches!(decode(b""), Err(DecodeError::NotJson(_))));
    let v1beta1 =
        br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u1"}}"#;
    match decode(v1beta1) {
        Err(DecodeError::Unreviewable { uid, message }) => {
            assert_eq!(uid, "u1");
            assert!(message.contains("admission.k8s.io/v1beta1"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decode(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
        Err(DecodeError::Unreviewable { .. })
    ));
    assert!(matches!(
        decode(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":5}}"#),
        Err(DecodeError::Unreviewable { .. })
    ));
    assert!(matches!(decode(br#"[1,2]"#), Err(DecodeError::NotJson(_))));
    // An object that is not an object is a malformed request.
    let body = serde_json::to_vec(&request(SGC, "CREATE", json!("a string"), None)).expect("json");
    let req = decode(&body).expect("decodes");
    let resp = review(Endpoint::ValidateSgc, &req, &facts(), &Policy::default());
    assert!(!resp.allowed);
    let denial = resp.denial.as_ref().expect("denied");
    assert_eq!((denial.code, denial.reason), (400, "BadRequest"));
    assert_eq!(denial.message, "request.object is not a JSON object");
}
