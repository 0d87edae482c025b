//! One Kubernetes API server for the whole test binary: testbed's `TestCluster` (the real control plane by
//! default, kube-sim with `TESTBED_KUBE=sim`). An operator works cluster-wide (configurations of every
//! namespace, cluster-scoped GatewayPools and Nodes), so the tests that run one take turns
//! (`TestCluster::exclusive`): a turn has the cluster to itself and, on top of that, starts without
//! configurations, GatewayPools or Nodes left by an earlier test (passed or failed), and has namespaces of
//! its own.

use std::time::Duration;

use api::{GatewayPool, StaticGatewayConfiguration};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use testbed::cluster::{Exclusive, TestCluster};
use testbed::wait::eventually_within;

/// The cluster, held by one test until dropped.
pub struct Turn {
    _turn: Exclusive,
    /// An admin client (of this test's runtime).
    pub client: kube::Client,
    /// The operator's namespace (key Secrets, Events of the operator).
    pub system: String,
    /// The configurations' namespace.
    pub app: String,
}

/// Waits for the cluster, clears it, and makes this test's namespaces.
pub async fn take() -> Turn {
    let turn = TestCluster::exclusive().await;
    let cluster = TestCluster::shared().await;
    let client = cluster.client().expect("client");
    clear(&client, |ns| {
        Api::<StaticGatewayConfiguration>::namespaced(client.clone(), ns.unwrap_or_default())
    })
    .await;
    clear(&client, |_| Api::<GatewayPool>::all(client.clone())).await;
    clear(&client, |_| Api::<Node>::all(client.clone())).await;
    let system = cluster.namespace("keg-system", &[]).await.expect("namespace");
    let app = cluster.namespace("app", &[]).await.expect("namespace");
    Turn {
        _turn: turn,
        client,
        system,
        app,
    }
}

/// Deletes every object of a kind, finalizers removed first (no operator is running), and waits until
/// they are gone (the real server may take a moment).
async fn clear<K>(client: &kube::Client, api_in: impl Fn(Option<&str>) -> Api<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = |client: kube::Client| async move {
        Api::<K>::all(client)
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
    };
    for o in list(client.clone()).await {
        let m = o.meta();
        let name = m.name.clone().unwrap_or_default();
        let api = api_in(m.namespace.as_deref());
        if m.finalizers.as_ref().is_some_and(|f| !f.is_empty()) {
            let patch = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
            ignore_gone(
                api.patch(&name, &PatchParams::default(), &patch)
                    .await
                    .map(|_| ()),
            );
        }
        ignore_gone(api.delete(&name, &DeleteParams::default()).await.map(|_| ()));
    }
    eventually_within(
        "objects of earlier tests are gone",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move { list(client).await.is_empty() }
        },
    )
    .await;
}

fn ignore_gone(r: Result<(), kube::Error>) {
    match r {
        Ok(()) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("clearing the cluster: {e}"),
    }
}
