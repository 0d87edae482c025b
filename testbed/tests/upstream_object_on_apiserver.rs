//! A configuration upstream wrote on a node pool, already stored when this product's CRDs are installed over
//! upstream's: upstream's Go type embeds the VMSS profile as a struct value, so the object carries
//! `gatewayVmssProfile: {}`. The CRD's CEL rules count that empty profile as absent, as every rule in `api/`
//! does: the operator's status writes and finalizer removal go through (Kubernetes 1.28 has no validation
//! ratcheting: a rule that refused the stored object would refuse every write, and `kubectl delete` would hang on
//! the finalizer), while moving the configuration to another pool is still refused. On the binary's cluster
//! (`TestCluster`: the real kube-apiserver by default), which runs no admission webhook: the object is written
//! as an apiserver that never ran ours stored it. Its own test binary: it replaces the CRDs, which are
//! cluster-wide.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use testbed::cluster::TestCluster;
use testbed::wait::{eventually, eventually_within};

const SGC_CRD: &str = "staticgatewayconfigurations.egressgateway.kubernetes.azure.com";

/// The configuration CRD as upstream's schema has it: no CEL rules, publicIpPrefixSize 0 to 31.
fn upstream_shaped_crd() -> CustomResourceDefinition {
    fn drop_rules(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("x-kubernetes-validations");
                map.values_mut().for_each(drop_rules);
            }
            Value::Array(items) => items.iter_mut().for_each(drop_rules),
            _ => {}
        }
    }
    let crd = api::crd::all()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(SGC_CRD))
        .expect("the configuration CRD");
    let mut upstream = serde_json::to_value(crd).expect("json");
    let spec = upstream
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
        .expect("spec schema");
    drop_rules(spec);
    spec["properties"]["gatewayVmssProfile"]["properties"]["publicIpPrefixSize"]["minimum"] = json!(0.0);
    upstream["apiVersion"] = json!("apiextensions.k8s.io/v1");
    upstream["kind"] = json!("CustomResourceDefinition");
    serde_json::from_value(upstream).expect("CRD")
}

fn sgcs(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(
        "egressgateway.kubernetes.azure.com",
        "v1alpha1",
        "StaticGatewayConfiguration",
    );
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk))
}

/// A spec as upstream's clients write it for a node pool, with `profile` as the profile.
fn upstream_spec(profile: Value) -> Value {
    json!({"gatewayNodepoolName": "gwpool", "gatewayVmssProfile": profile,
        "provisionPublicIps": true, "defaultRoute": "staticEgressGateway"})
}

/// The apiserver's refusal of a write (422), or a panic naming what was written.
#[track_caller]
fn refusal(what: &str, result: Result<DynamicObject, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(s)) if s.code == 422 => s.message,
        other => panic!("{what}: expected a 422 refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_configuration_with_an_empty_vmss_profile_stays_writable() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().expect("client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        SGC_CRD,
        &PatchParams::apply("upstream").force(),
        &Patch::Apply(upstream_shaped_crd()),
    )
    .await
    .expect("upstream's CRD");
    let app = cluster.namespace("app", &[]).await.expect("namespace");
    let sgcs = sgcs(&client, &app);
    let stored = |name: &str, profile: Value| {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
            "metadata": {"name": name, "finalizers": [api::names::SGC_FINALIZER]},
            "spec": upstream_spec(profile)}))
        .expect("object");
        let sgcs = sgcs.clone();
        async move {
            match sgcs.create(&PostParams::default(), &object).await {
                Ok(_) => true,
                Err(kube::Error::Api(s)) => s.code == 409, // stored by an earlier try
                Err(_) => false,
            }
        }
    };
    // What upstream's Go client writes (the CRD's schema may take a moment to be served), and a hand-written
    // manifest with the profile's size spelt out as 0, which upstream's schema allows.
    eventually_within(
        "upstream's schema stores the configurations",
        std::time::Duration::from_secs(30),
        || async {
            stored("upstream", json!({})).await && stored("zero-size", json!({"publicIpPrefixSize": 0})).await
        },
    )
    .await;

    // The upgrade: this product's CRDs, once served (a configuration with both pools is refused).
    cluster.install_crds().await.expect("current CRDs");
    eventually("the product's CEL rules are served", || {
        let sgcs = sgcs.clone();
        async move {
            let both = json!({"spec": {"gatewayVmssProfile": {"vmssResourceGroup": "rg", "vmssName": "gw", "publicIpPrefixSize": 31}}});
            let dry_run = PatchParams {
                dry_run: true,
                ..PatchParams::default()
            };
            matches!(sgcs.patch("upstream", &dry_run, &Patch::Merge(both)).await,
                Err(kube::Error::Api(s)) if s.code == 422)
        }
    })
    .await;

    // The operator's status write.
    let status = json!({"status": {"observedGeneration": 1, "egressIpPrefix": "20.1.2.4/31"}});
    let written = sgcs
        .patch_status("upstream", &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("a status write to an upstream configuration");
    assert_eq!(written.data["status"]["egressIpPrefix"], "20.1.2.4/31");
    assert_eq!(written.data["spec"]["gatewayVmssProfile"], json!({}));

    // A merge patch of configuration `name` (the writes a kubectl user or the operator makes).
    let merge = |name: &'static str, body: Value| {
        let sgcs = sgcs.clone();
        async move {
            sgcs.patch(name, &PatchParams::default(), &Patch::Merge(body))
                .await
        }
    };
    // A metadata write that keeps the spec (no webhook drops the empty profile here).
    let labelled = merge("upstream", json!({"metadata": {"labels": {"team": "a"}}}))
        .await
        .expect("a label on an upstream configuration");
    assert_eq!(labelled.data["spec"]["gatewayVmssProfile"], json!({}));

    // Changing the pool is still refused: to a VMSS, beside the node pool, or to another node pool.
    let profile = json!({"vmssResourceGroup": "rg", "vmssName": "gw", "publicIpPrefixSize": 31});
    let why = refusal(
        "moving to a VMSS",
        merge(
            "upstream",
            json!({"spec": {"gatewayNodepoolName": null, "gatewayVmssProfile": profile}}),
        )
        .await,
    );
    assert!(why.contains("gatewayNodepoolName is immutable"), "{why}");
    let why = refusal(
        "adding a VMSS beside the node pool",
        merge("upstream", json!({"spec": {"gatewayVmssProfile": profile}})).await,
    );
    assert!(why.contains("rule 1 (one gateway pool)"), "{why}");
    let why = refusal(
        "another node pool",
        merge("upstream", json!({"spec": {"gatewayNodepoolName": "other"}})).await,
    );
    assert!(why.contains("gatewayNodepoolName is immutable"), "{why}");

    // `kubectl delete`: the operator removes its finalizer (upstream's name), and the object goes.
    sgcs.delete("upstream", &DeleteParams::default())
        .await
        .expect("delete");
    merge("upstream", json!({"metadata": {"finalizers": null}}))
        .await
        .expect("the finalizer's removal from an upstream configuration");
    eventually("the deleted configuration is gone", || {
        let sgcs = sgcs.clone();
        async move { sgcs.get_opt("upstream").await.is_ok_and(|o| o.is_none()) }
    })
    .await;

    // A size spelt out as 0 is below the product's schema minimum (28). A status write is still accepted (the
    // status subresource checks only the status against the schema; the CEL rules count the profile as
    // empty); a write of the object itself is refused while it holds the 0, unless it drops the empty profile,
    // as the webhook's defaults do on each update (the finalizer's removal included).
    sgcs.patch_status(
        "zero-size",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"observedGeneration": 1}})),
    )
    .await
    .expect("a status write with publicIpPrefixSize: 0 stored");
    let why = refusal(
        "the finalizer's removal without the webhook, publicIpPrefixSize: 0 stored",
        merge("zero-size", json!({"metadata": {"finalizers": null}})).await,
    );
    assert!(why.contains("publicIpPrefixSize"), "{why}");
    let fixed = merge(
        "zero-size",
        json!({"spec": {"gatewayVmssProfile": null}, "metadata": {"finalizers": null}}),
    )
    .await
    .expect("the finalizer's removal with the empty profile dropped");
    assert!(
        fixed.data["spec"].get("gatewayVmssProfile").is_none(),
        "{:?}",
        fixed.data
    );
    sgcs.delete("zero-size", &DeleteParams::default())
        .await
        .expect("delete");
}
