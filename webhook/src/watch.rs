//! The watches that keep [`ReflectorFacts`] current. The stores keep only what the facts read: a Node is
//! mostly status (conditions, images) and managed fields, and a webhook that cached them whole would need
//! memory in proportion to the cluster's size for nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use api::cache::strip_managed_fields;
use api::{GatewayPool, StaticGatewayConfiguration};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::facts::ReflectorFacts;

/// Starts the watches; the returned facts report `synced()` once every store has its first full list.
pub fn start(client: Client) -> ReflectorFacts {
    let ready = Arc::new(AtomicBool::new(false));
    let (nodes, nodes_w) = reflector::store();
    let (pools, pools_w) = reflector::store();
    let (namespaces, namespaces_w) = reflector::store();
    let (sgcs, sgcs_w) = reflector::store();

    let cfg = watcher::Config::default();
    let run = |name: &'static str, stream: futures::stream::BoxStream<'static, ()>| {
        tokio::spawn(async move {
            stream.for_each(|_| async {}).await;
            tracing::warn!(watch = name, "watch ended");
        });
    };
    // Each store gets its objects cut down (`modify`) before they are stored.
    run(
        "nodes",
        watcher(Api::<Node>::all(client.clone()), cfg.clone())
            .default_backoff()
            .modify(node_facts_only)
            .reflect(nodes_w)
            .applied_objects()
            .map(|_| ())
            .boxed(),
    );
    run(
        "gatewaypools",
        watcher(Api::<GatewayPool>::all(client.clone()), cfg.clone())
            .default_backoff()
            .modify(strip_managed_fields)
            .reflect(pools_w)
            .applied_objects()
            .map(|_| ())
            .boxed(),
    );
    run(
        "namespaces",
        watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            cfg.clone(),
        )
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(namespaces_w)
        .applied_objects()
        .map(|_| ())
        .boxed(),
    );
    run(
        "staticgatewayconfigurations",
        watcher(
            Api::<PartialObjectMeta<StaticGatewayConfiguration>>::all(client),
            cfg,
        )
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(sgcs_w)
        .applied_objects()
        .map(|_| ())
        .boxed(),
    );

    let facts = ReflectorFacts {
        nodes,
        pools,
        namespaces,
        sgcs,
        ready: ready.clone(),
    };
    let waiting = facts.clone();
    tokio::spawn(async move {
        let synced = tokio::join!(
            waiting.nodes.wait_until_ready(),
            waiting.pools.wait_until_ready(),
            waiting.namespaces.wait_until_ready(),
            waiting.sgcs.wait_until_ready(),
        );
        if matches!(synced, (Ok(()), Ok(()), Ok(()), Ok(()))) {
            ready.store(true, Ordering::Release);
            tracing::info!("cluster watches synced");
        }
    });
    facts
}

/// What rule 4's node count reads of a Node (`ReflectorFacts::node_count`): its labels and `spec.providerID`;
/// its name, uid and resourceVersion identify it. Everything else (status with its images and conditions,
/// managed fields, annotations, taints, pod CIDRs) is dropped before the Node is stored.
pub fn node_facts_only(node: &mut Node) {
    let meta = std::mem::take(&mut node.metadata);
    node.metadata = ObjectMeta {
        name: meta.name,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels: meta.labels,
        ..ObjectMeta::default()
    };
    node.spec = node.spec.take().map(|spec| NodeSpec {
        provider_id: spec.provider_id,
        ..NodeSpec::default()
    });
    node.status = None;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::api::{Patch, PatchParams, PostParams};
    use kube::runtime::reflector::ObjectRef;
    use serde_json::json;
    use testbed::kube::{KubeSim, KubeSimConfig};
    use testbed::wait::eventually;

    use super::*;

    #[tokio::test]
    async fn nodes_are_stored_with_only_the_fields_the_facts_read() {
        let sim = KubeSim::start(KubeSimConfig::default())
            .await
            .expect("simulator starts");
        let client = sim.client("admin").expect("client");
        sim.install_crds().await.expect("CRDs install");
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "gw-1", "labels": {"kubernetes.azure.com/agentpool": "gwpool"},
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"providerID": "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/gw/virtualMachines/1",
                     "podCIDR": "10.244.1.0/24",
                     "taints": [{"key": "egressgateway.kubernetes.azure.com/cni-not-ready", "effect": "NoSchedule"}]}
        }))
        .expect("node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
        let written = nodes
            .patch_status(
                "gw-1",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "images": [{"names": ["registry.example/big@sha256:0"], "sizeBytes": 123456789}],
                    "conditions": [{"type": "Ready", "status": "True"}]}})),
            )
            .await
            .expect("node status");
        // What the API server holds is whole: the test would prove nothing otherwise.
        assert!(written.status.as_ref().is_some_and(|s| s.images.is_some()));
        assert!(written.metadata.managed_fields.is_some());

        let facts = start(client);
        let stored = || facts.nodes.get(&ObjectRef::new("gw-1"));
        eventually("the Node's status update is stored", || async {
            stored().is_some_and(|n| n.metadata.resource_version == written.metadata.resource_version)
        })
        .await;
        let stored = stored().expect("stored");
        let expected = Node {
            metadata: ObjectMeta {
                name: Some("gw-1".into()),
                uid: written.metadata.uid.clone(),
                resource_version: written.metadata.resource_version.clone(),
                labels: Some(BTreeMap::from([(
                    "kubernetes.azure.com/agentpool".to_string(),
                    "gwpool".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                provider_id: node.spec.as_ref().and_then(|s| s.provider_id.clone()),
                ..NodeSpec::default()
            }),
            status: None,
        };
        assert_eq!(
            *stored, expected,
            "no status, managed fields, annotations, taints or pod CIDR"
        );
    }
}
