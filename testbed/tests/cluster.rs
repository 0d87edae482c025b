//! `testbed::cluster::TestCluster` behaves the same on both backends: CRDs are served, namespaces are
//! fresh, a ServiceAccount's token is authorized by RBAC only (refused, then allowed once bound), and a
//! server-side apply that creates needs create permission.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
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

/// Server-side apply creates a missing object only for a user who may also create it: the real API server
/// authorizes `patch`, then `create` when the apply creates. Objects that exist need `patch` alone.
async fn server_side_apply_creates_only_with_create_permission(backend: Backend) {
    let cluster = TestCluster::start(backend).await.expect("cluster");
    let ns = cluster.namespace("apply", &[]).await.expect("namespace");
    let admin = cluster.client().expect("admin client");
    let post = PostParams::default();
    let role = serde_json::from_value(json!({"metadata": {"name": "patch-configmaps"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"]}]}))
    .expect("role");
    let roles = Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), &ns);
    roles.create(&post, &role).await.expect("Role");
    let binding = serde_json::from_value(json!({"metadata": {"name": "patch-configmaps"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "patch-configmaps"},
        "subjects": [{"kind": "ServiceAccount", "name": "writer", "namespace": ns}]}))
    .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&post, &binding)
        .await
        .expect("RoleBinding");
    let token = cluster.service_account_token(&ns, "writer").await.expect("token");
    let writer: Api<ConfigMap> = Api::namespaced(cluster.client_for(&token).expect("client"), &ns);
    let apply = |name: &str, value: &str| {
        let writer = writer.clone();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": value}});
        let name = name.to_string();
        async move {
            writer
                .patch(&name, &PatchParams::apply("writer"), &Patch::Apply(&cm))
                .await
        }
    };
    // The binding is learnt from the authorizer's watch cache: await it on an object that exists.
    let existing = serde_json::from_value(json!({"metadata": {"name": "exists"}})).expect("cm");
    Api::<ConfigMap>::namespaced(admin.clone(), &ns)
        .create(&post, &existing)
        .await
        .expect("ConfigMap");
    let what = format!("{backend}: patch permission applies to an existing ConfigMap");
    testbed::wait::eventually(&what, || async { apply("exists", "1").await.is_ok() }).await;

    match apply("missing", "1").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(
                (s.code, s.reason.as_str()),
                (403, "Forbidden"),
                "{backend}: {s:?}"
            );
            assert!(
                s.message.starts_with(r#"configmaps "missing" is forbidden"#),
                "{backend}: {s:?}"
            );
        }
        other => panic!("{backend}: an apply without create permission created the object: {other:?}"),
    }
    assert!(
        Api::<ConfigMap>::namespaced(admin.clone(), &ns)
            .get_opt("missing")
            .await
            .expect("get")
            .is_none(),
        "{backend}: nothing was created"
    );

    let role = serde_json::from_value(json!({"metadata": {"name": "patch-configmaps"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch", "create"]}]}))
    .expect("role");
    roles
        .replace("patch-configmaps", &post, &role)
        .await
        .expect("Role with create");
    let what = format!("{backend}: with create permission the apply creates the ConfigMap");
    testbed::wait::eventually(&what, || async { apply("missing", "2").await.is_ok() }).await;
}

#[tokio::test]
async fn sim_server_side_apply_creates_only_with_create_permission() {
    server_side_apply_creates_only_with_create_permission(Backend::Sim).await;
}

#[tokio::test]
async fn real_server_side_apply_creates_only_with_create_permission() {
    server_side_apply_creates_only_with_create_permission(Backend::Real).await;
}
