//! A configuration stored under an older CRD schema, which the current schema refuses on every write (status,
//! finalizer: Kubernetes 1.28 has no validation ratcheting), only affects itself: the other configurations of
//! its pool are reconciled (Azure and status), and it gets a Warning Event, a fail metric and a retry. Against
//! the binary's cluster (`TestCluster`: the real kube-apiserver by default, kube-sim with `TESTBED_KUBE=sim`)
//! with azure-sim. Its own test binary (and control plane): it replaces the CRDs, which are cluster-wide.

use api::StaticGatewayConfiguration;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use operator::pass::{Error, REASON_WRITE_FAILED};
use operator::status::READY;
use serde_json::json;
use testbed::azure::{AzureSim, Seed};
use testbed::cluster::TestCluster;
use testbed::wait::eventually_within;

mod common;

const SGC_CRD: &str = "staticgatewayconfigurations.egressgateway.kubernetes.azure.com";

/// The current CRD of configurations without the schema's per-entry excludeCidrs rule, as CRDs were before
/// it (and upstream's is): an entry such as `10.0.0.1` is stored.
fn crd_predating_the_cidr_rule() -> CustomResourceDefinition {
    let crd = api::crd::all()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(SGC_CRD))
        .expect("the configuration CRD");
    let mut older = serde_json::to_value(crd).expect("json");
    older
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/excludeCidrs/items")
        .and_then(|items| items.as_object_mut())
        .expect("excludeCidrs items")
        .remove("x-kubernetes-validations")
        .expect("the per-entry rule");
    older["apiVersion"] = json!("apiextensions.k8s.io/v1");
    older["kind"] = json!("CustomResourceDefinition");
    serde_json::from_value(older).expect("CRD")
}

fn ready(s: &StaticGatewayConfiguration) -> Option<(String, String)> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_the_current_schema_refuses_only_affects_itself() {
    let cp = TestCluster::shared().await;
    let client = cp.client().expect("client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    // The CRDs of an older release; the GatewayPool CRD as today.
    cp.install_crds().await.expect("CRDs");
    crds.patch(
        SGC_CRD,
        &PatchParams::apply("older-release").force(),
        &Patch::Apply(crd_predating_the_cidr_rule()),
    )
    .await
    .expect("older CRD");
    let system = cp.namespace("keg-system", &[]).await.expect("namespace");
    let app = cp.namespace("app", &[]).await.expect("namespace");
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(client.clone(), &app);
    let create = |name: &str, spec: serde_json::Value| {
        let sgcs = sgcs.clone();
        let sgc: StaticGatewayConfiguration = serde_json::from_value(json!({
            "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
            "metadata": {"name": name}, "spec": spec}))
        .expect("sgc");
        async move { sgcs.create(&PostParams::default(), &sgc).await }
    };
    // The older schema takes it (the CRD's new version may take a moment to be served).
    eventually_within(
        "the older schema stores `old`",
        std::time::Duration::from_secs(30),
        || {
            let create = &create;
            async move {
                create(
                    "old",
                    json!({"gatewayNodepoolName": "gateway", "excludeCidrs": ["10.0.0.1"]}),
                )
                .await
                .is_ok()
            }
        },
    )
    .await;

    // The upgrade: today's CRDs. Once served, the old object cannot be written at all.
    cp.install_crds().await.expect("current CRDs");
    eventually_within(
        "the current schema refuses writes to `old`",
        std::time::Duration::from_secs(30),
        || {
            let sgcs = sgcs.clone();
            async move {
                let touch = json!({"metadata": {"labels": {"touched": "1"}}});
                let params = PatchParams {
                    dry_run: true,
                    ..PatchParams::default()
                };
                matches!(sgcs.patch("old", &params, &Patch::Merge(touch)).await,
                    Err(kube::Error::Api(s)) if s.code == 422)
            }
        },
    )
    .await;
    create("good", json!({"gatewayNodepoolName": "gateway"}))
        .await
        .expect("good");

    let seed = Seed::aks_like(2);
    let azure = AzureSim::start(&seed).await.expect("azure-sim");
    let before = common::resources(&azure);
    let op = common::operator(&client, &common::cloud_config(&seed, &azure), &system);

    // One pass: `old` fails alone (its status write is refused), `good` is provisioned.
    match op.reconcile_pools(None).await {
        Err(Error::Configs(failed)) => {
            let names: Vec<&str> = failed.0.iter().map(|f| f.resource.as_str()).collect();
            assert_eq!(names, [format!("{app}/old")], "{failed}");
            assert!(failed.0[0].reason.contains("excludeCidrs"), "{failed}");
        }
        other => panic!("expected the failure of `old` alone, got {other:?}"),
    }
    let good = sgcs.get("good").await.expect("good");
    assert_eq!(
        ready(&good),
        Some(("True".into(), "Provisioned".into())),
        "{:?}",
        good.status
    );
    assert!(good.finalizers().contains(&api::names::SGC_FINALIZER.to_string()));
    assert_eq!(
        azure.count_calls("PUT", "(?i)/loadBalancers/[^/]+$"),
        1,
        "the pool's Azure writes were made"
    );
    let lb = op
        .arm
        .get_lb("node-rg", "kubeegressgateway-ilb")
        .await
        .expect("lb")
        .expect("exists");
    assert_eq!(
        lb["properties"]["loadBalancingRules"].as_array().map(Vec::len),
        Some(1),
        "one rule: `good`'s (`old` breaks rule 7 and gets nothing in Azure)"
    );
    let old = sgcs.get("old").await.expect("old");
    assert!(old.status.is_none(), "nothing could be written to `old`");

    // `old` says why, on itself: a Warning Event naming the refused write and the schema's reason.
    let warned = common::event_about(&client, &app, "old", REASON_WRITE_FAILED).await;
    assert_eq!(warned.type_.as_deref(), Some("Warning"));
    let note = warned.note.unwrap_or_default();
    assert!(
        note.contains("writing the status failed") && note.contains("excludeCidrs"),
        "{note}"
    );
    let metrics = op.metrics.encode();
    let resource = format!("resource=\"{app}/old\"");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("controller_reconcile_fail_count{")
                && l.contains("operation=\"reconcile_static_gateway_configuration\"")
                && l.contains(&resource)),
        "{metrics}"
    );

    // Fixed by its owner (the edit is accepted: the new object is valid): the next pass converges both.
    sgcs.patch(
        "old",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"excludeCidrs": ["10.0.0.1/32"]}})),
    )
    .await
    .expect("fix");
    op.reconcile_pools(None).await.expect("reconcile");
    let old = sgcs.get("old").await.expect("old");
    assert!(
        old.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == READY)),
        "{:?}",
        old.status
    );

    for name in ["good", "old"] {
        sgcs.delete(name, &DeleteParams::default()).await.expect("delete");
    }
    op.reconcile_pools(None).await.expect("reconcile");
    assert!(
        sgcs.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert_eq!(common::resources(&azure), before, "nothing left behind in Azure");
}
