//! `testbed::cluster::TestCluster` behaves the same on both backends: CRDs are served, namespaces are
//! fresh, and a ServiceAccount's token is authorized by RBAC only (refused, then allowed once bound).

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use testbed::cluster::{Backend, TestCluster};

async fn service_account_is_authorized_by_rbac_only(backend: Backend) {
    let cluster = TestCluster::start(backend).await.expect("cluster");
    cluster.install_crds().await.expect("CRDs");
    cluster
        .install_crds()
        .await
        .expect("installing the CRDs again is a no-op");
    let ns = cluster
        .namespace("cluster", &[("team", "a")])
        .await
        .expect("namespace");
    let admin = cluster.client().expect("admin client");
    let sgcs: Api<api::sgc::StaticGatewayConfiguration> = Api::namespaced(admin.clone(), &ns);
    assert!(
        sgcs.list(&ListParams::default())
            .await
            .expect("CRD served")
            .items
            .is_empty()
    );

    let token = cluster.service_account_token(&ns, "reader").await.expect("token");
    let again = cluster.service_account_token(&ns, "reader").await.expect("token");
    let pods: Api<Pod> = Api::namespaced(cluster.client_for(&token).expect("client"), &ns);
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{backend}: {s:?}"),
        other => panic!("{backend}: an unbound ServiceAccount listed pods: {other:?}"),
    }
    let post = PostParams::default();
    let role = serde_json::from_value(json!({"metadata": {"name": "read-pods"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}))
    .expect("role");
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), &ns)
        .create(&post, &role)
        .await
        .expect("Role");
    let binding = serde_json::from_value(json!({"metadata": {"name": "read-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-pods"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]}))
    .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin, &ns)
        .create(&post, &binding)
        .await
        .expect("RoleBinding");
    // The real authorizer learns bindings from its watch cache: await the change rather than assume it.
    let bound_pods: Api<Pod> = Api::namespaced(cluster.client_for(&again).expect("client"), &ns);
    let what = format!("{backend}: the bound ServiceAccount lists pods");
    testbed::wait::eventually(&what, || {
        let pods = bound_pods.clone();
        async move { pods.list(&ListParams::default()).await.is_ok() }
    })
    .await;
}

#[tokio::test]
async fn sim_service_account_is_authorized_by_rbac_only() {
    service_account_is_authorized_by_rbac_only(Backend::Sim).await;
}

#[tokio::test]
async fn real_service_account_is_authorized_by_rbac_only() {
    service_account_is_authorized_by_rbac_only(Backend::Real).await;
}
