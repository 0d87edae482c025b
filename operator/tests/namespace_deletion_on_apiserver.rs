//! The operator against the real kube-apiserver (and kube-controller-manager's namespace controller) with
//! azure-sim: deleting a namespace that holds configurations completes, because the operator releases its
//! finalizers once their Azure resources are gone.

use api::StaticGatewayConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use operator::status::READY;
use serde_json::json;
use testbed::azure::{AzureSim, Seed};
use testbed::control_plane::ControlPlane;
use testbed::wait::eventually_within;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_with_configurations_completes() {
    let cp = ControlPlane::shared().await;
    cp.install_crds().await.expect("CRDs");
    let client = cp.client().expect("client");
    let system = cp.namespace("keg-system", &[]).await.expect("namespace");
    let app = cp.namespace("app", &[]).await.expect("namespace");
    let seed = Seed::aks_like(2);
    let azure = AzureSim::start(&seed).await.expect("azure-sim");
    let before = common::resources(&azure);
    let op = common::operator(&client, &common::cloud_config(&seed, &azure), &system);

    // The pool's name is unique: GatewayPools are cluster-scoped and the control plane is shared.
    let pool_name = format!("gateway-{app}");
    let pool: api::GatewayPool = serde_json::from_value(json!({
        "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayPool",
        "metadata": {"name": pool_name}, "spec": {"gatewayNodepoolName": "gateway", "publicIpPrefixSize": 31}}))
    .expect("pool");
    let pools: Api<api::GatewayPool> = Api::all(client.clone());
    pools.create(&PostParams::default(), &pool).await.expect("pool");
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(client.clone(), &app);
    for name in ["a", "b"] {
        let sgc: StaticGatewayConfiguration = serde_json::from_value(json!({
            "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
            "metadata": {"name": name}, "spec": {"gatewayNodepoolName": "gateway"}}))
        .expect("sgc");
        sgcs.create(&PostParams::default(), &sgc).await.expect("sgc");
    }
    op.reconcile_pools(None).await.expect("reconcile");
    for name in ["a", "b"] {
        let got = sgcs.get(name).await.expect("get");
        assert!(
            got.metadata
                .finalizers
                .unwrap_or_default()
                .contains(&api::names::SGC_FINALIZER.to_string())
        );
        let ready = got
            .status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .find(|c| c.type_ == READY);
        assert_eq!(ready.map(|c| c.status), Some("True".to_string()), "{name}");
    }

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&app, &DeleteParams::default())
        .await
        .expect("delete namespace");
    // The namespace controller marks the configurations deleted; each operator pass releases what it cleaned.
    eventually_within(
        "the namespace is gone",
        std::time::Duration::from_secs(60),
        || {
            let (op, namespaces, app) = (&op, namespaces.clone(), app.clone());
            async move {
                op.reconcile_pools(None).await.expect("reconcile");
                namespaces.get_opt(&app).await.expect("get").is_none()
            }
        },
    )
    .await;

    pools
        .delete(&pool_name, &DeleteParams::default())
        .await
        .expect("delete pool");
    eventually_within("the pool is gone", std::time::Duration::from_secs(30), || {
        let (op, pools, pool_name) = (&op, pools.clone(), pool_name.clone());
        async move {
            op.reconcile_pools(None).await.expect("reconcile");
            pools.get_opt(&pool_name).await.expect("get").is_none()
        }
    })
    .await;
    assert_eq!(common::resources(&azure), before, "nothing left behind in Azure");
}
