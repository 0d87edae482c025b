//! The real control plane harness: one start per test binary, identities, controllers, clean-up.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use testbed::control_plane::ControlPlane;
use testbed::wait::eventually;

#[tokio::test]
async fn service_account_tokens_are_authorized_by_rbac() {
    let cp = ControlPlane::shared().await;
    let ns = cp.namespace("rbac", &[]).await.expect("namespace");
    let token = cp.service_account_token(&ns, "reader").await.expect("token");
    let reader = cp.client_for(&token).expect("client");
    let maps: Api<ConfigMap> = Api::namespaced(reader.clone(), &ns);
    let err = maps.list(&Default::default()).await.expect_err("no role yet");
    assert!(
        err.to_string().contains(&format!(
            "User \"system:serviceaccount:{ns}:reader\" cannot list resource \"configmaps\""
        )),
        "{err}"
    );
    let admin = cp.client().expect("admin");
    let role: Role = serde_json::from_value(json!({"metadata": {"name": "reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]}))
    .expect("role");
    let binding: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]}))
    .expect("binding");
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    Api::<RoleBinding>::namespaced(admin, &ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");
    eventually("the role binding takes effect", || async {
        maps.list(&Default::default()).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn controllers_collect_garbage_and_delete_namespaces() {
    let cp = ControlPlane::shared().await;
    let admin = cp.client().expect("admin");
    let ns = cp.namespace("gc", &[]).await.expect("namespace");
    let maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let owner = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).expect("cm"),
        )
        .await
        .expect("owner");
    let uid = owner.metadata.uid.clone().expect("uid");
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "dependent",
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}}))
        .expect("cm"),
    )
    .await
    .expect("dependent");
    maps.delete("owner", &DeleteParams::default())
        .await
        .expect("delete owner");
    eventually("the garbage collector deletes the dependent", || async {
        maps.get_opt("dependent").await.expect("get").is_none()
    })
    .await;

    let namespaces: Api<Namespace> = Api::all(admin);
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    eventually("the namespace controller finishes the deletion", || async {
        namespaces.get_opt(&ns).await.expect("get").is_none()
    })
    .await;
}

#[tokio::test]
async fn a_stopped_control_plane_leaves_nothing_behind() {
    let assets = testbed::control_plane::Assets::find().expect("assets");
    let mut cp = ControlPlane::start(&assets).await.expect("start");
    let dir = cp.dir().to_path_buf();
    let url = cp.url().to_string();
    assert!(dir.join("kube-apiserver.log").exists());
    cp.stop();
    assert!(!dir.exists(), "{} removed", dir.display());
    let port: u16 = url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the apiserver's port is free again"
    );
}
