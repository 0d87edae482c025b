//! [`Cluster`] over the Kubernetes API.

use std::collections::BTreeMap;
use std::sync::Arc;

use api::internal::{PodEndpoint, PodEndpointSpec};
use api::names::CNI_NOT_READY_TAINT;
use api::sgc::StaticGatewayConfiguration;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Taint};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use super::ownership::{self, Sandbox};
use super::rekey::GatewayKeys;
use super::{Cluster, Deletion, Registration};
use crate::error::ClusterError;
use crate::metrics::{Metrics, PodEndpointLabels};
use crate::object::NamespacedName;

/// Field manager of every server-side apply the agent makes (PodEndpoints, GatewayStatus).
pub const FIELD_MANAGER: &str = "kube-egress-gateway-agent";

/// Writes `obj` as `id` with server-side apply under [`FIELD_MANAGER`], taking over any field another
/// manager holds: the agent is the only writer of its PodEndpoints and its GatewayStatus.
pub(crate) async fn server_side_apply<K>(
    client: &Client,
    id: &NamespacedName,
    obj: &K,
) -> Result<(), ClusterError>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let kind = K::kind(&());
    let mut v = serde_json::to_value(obj).map_err(|source| ClusterError::Encode {
        what: format!("{kind} {id}"),
        source,
    })?;
    v["apiVersion"] = K::api_version(&()).to_string().into();
    v["kind"] = kind.to_string().into();
    Api::<K>::namespaced(client.clone(), &id.namespace)
        .patch(
            &id.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&v),
        )
        .await
        .map_err(ClusterError::api(format!("apply {kind} {id}")))?;
    Ok(())
}

/// The API-server-backed cluster.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster").finish_non_exhaustive()
    }
}

impl KubeCluster {
    /// Wraps a client.
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        KubeCluster { client, metrics }
    }

    fn failed(&self, pod: &NamespacedName, op: &str) {
        self.metrics
            .podendpoint_failures
            .get_or_create(&PodEndpointLabels {
                namespace: pod.namespace.clone(),
                operation: op.into(),
                pod: pod.name.clone(),
            })
            .inc();
    }

    /// The pod; `None` when it does not exist.
    async fn get_pod(&self, pod: &NamespacedName) -> Result<Option<Pod>, ClusterError> {
        Api::<Pod>::namespaced(self.client.clone(), &pod.namespace)
            .get_opt(&pod.name)
            .await
            .map_err(ClusterError::api(format!("get pod {pod}")))
    }
}

/// The PodEndpoint object for a pod: same namespace and name, controlled by the pod so it is garbage
/// collected with it, recording the sandbox that wrote it. A sandbox of another pod uid (a former pod of
/// that name) is refused.
pub fn pod_endpoint_for(
    pod: &Pod,
    spec: PodEndpointSpec,
    sandbox: &Sandbox,
) -> Result<PodEndpoint, ClusterError> {
    let id = NamespacedName::of(&pod.metadata);
    if id.name.is_empty() {
        return Err(ClusterError::PodIncomplete("name"));
    }
    let uid = pod
        .metadata
        .uid
        .as_deref()
        .ok_or(ClusterError::PodIncomplete("uid"))?;
    if !sandbox.pod_uid.is_empty() && sandbox.pod_uid != uid {
        return Err(ClusterError::PodReplaced {
            namespace: id.namespace,
            name: id.name,
            sandbox_uid: sandbox.pod_uid.clone(),
            live_uid: uid.to_string(),
        });
    }
    Ok(ownership::pod_endpoint(&id, Some(uid), spec, sandbox))
}

#[tonic::async_trait]
impl Cluster for KubeCluster {
    async fn pod_annotations(
        &self,
        pod: &NamespacedName,
    ) -> Result<Option<BTreeMap<String, String>>, ClusterError> {
        let found = self.get_pod(pod).await?;
        Ok(found.map(|p| p.metadata.annotations.unwrap_or_default()))
    }

    async fn sgc(&self, config: &NamespacedName) -> Result<Option<StaticGatewayConfiguration>, ClusterError> {
        Api::<StaticGatewayConfiguration>::namespaced(self.client.clone(), &config.namespace)
            .get_opt(&config.name)
            .await
            .map_err(ClusterError::api(format!(
                "get StaticGatewayConfiguration {config}"
            )))
    }

    async fn upsert_pod_endpoint(&self, r: &Registration) -> Result<(), ClusterError> {
        let pod = &r.pod;
        let result = async {
            let owner = self
                .get_pod(pod)
                .await?
                .ok_or_else(|| ClusterError::PodNotFound {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                })?;
            let pe = pod_endpoint_for(&owner, r.spec.clone(), &r.sandbox)?;
            server_side_apply(&self.client, pod, &pe).await
        }
        .await;
        if result.is_err() {
            self.failed(pod, "create_or_update");
        }
        result
    }

    async fn pod_endpoint(&self, pod: &NamespacedName) -> Result<Option<PodEndpoint>, ClusterError> {
        Api::<PodEndpoint>::namespaced(self.client.clone(), &pod.namespace)
            .get_opt(&pod.name)
            .await
            .map_err(ClusterError::api(format!("get PodEndpoint {pod}")))
    }

    async fn delete_pod_endpoint(
        &self,
        pod: &NamespacedName,
        expected: Option<&Preconditions>,
    ) -> Result<Deletion, ClusterError> {
        let params = DeleteParams {
            preconditions: expected.cloned(),
            ..DeleteParams::default()
        };
        match Api::<PodEndpoint>::namespaced(self.client.clone(), &pod.namespace)
            .delete(&pod.name, &params)
            .await
        {
            Ok(_) => Ok(Deletion::Deleted),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Deletion::Absent),
            // A failed precondition: re-created or rewritten since it was read.
            Err(kube::Error::Api(s)) if s.code == 409 && expected.is_some() => Ok(Deletion::Changed),
            Err(e) => {
                self.failed(pod, "delete");
                Err(ClusterError::api(format!("delete PodEndpoint {pod}"))(e))
            }
        }
    }
}

/// Keeps `keys` at the gateway keys the configurations publish (a watch of them) until `stop`: the pod tunnel
/// watch re-keys running pods from it after a key rotation.
pub async fn watch_gateway_keys(
    client: Client,
    keys: watch::Sender<GatewayKeys>,
    mut stop: watch::Receiver<bool>,
) {
    let (store, writer) = reflector::store::<StaticGatewayConfiguration>();
    let mut events = Box::pin(
        reflector::reflector(
            writer,
            watcher(Api::all(client), watcher::Config::default()).modify(api::cache::strip_managed_fields),
        )
        .default_backoff(),
    );
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                None => {
                    tracing::warn!("configuration watch ended: running pods no longer follow key rotations");
                    return;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "configuration watch"),
                // While a (re)list streams in, the store is incomplete: rebuild once it is done.
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                Some(Ok(_)) => {
                    let sgcs: Vec<StaticGatewayConfiguration> =
                        store.state().iter().map(|s| (**s).clone()).collect();
                    let now = GatewayKeys::of(&sgcs);
                    keys.send_if_modified(|k| {
                        let changed = *k != now;
                        *k = now;
                        changed
                    });
                }
            },
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

/// The taints without ours, or `None` when ours is not there (nothing to do).
pub fn without_cni_taint(taints: &[Taint]) -> Option<Vec<Taint>> {
    let kept: Vec<Taint> = taints
        .iter()
        .filter(|t| t.key != CNI_NOT_READY_TAINT)
        .cloned()
        .collect();
    (kept.len() != taints.len()).then_some(kept)
}

/// Removes the `cni-not-ready` taint from `node` (AKS adds it; we remove it once our plugin is installed).
/// Uses the node's resourceVersion so a concurrent change makes us re-read instead of overwriting it.
pub async fn remove_cni_taint(client: &Client, node: &str) -> Result<bool, ClusterError> {
    let api = Api::<Node>::all(client.clone());
    for _ in 0..5 {
        let n = api
            .get(node)
            .await
            .map_err(ClusterError::api(format!("get node {node}")))?;
        let taints = n.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let Some(kept) = without_cni_taint(&taints) else {
            return Ok(false);
        };
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": n.metadata.resource_version},
            "spec": {"taints": kept},
        });
        match api
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(ClusterError::api(format!("patch node {node}"))(e)),
        }
    }
    Err(ClusterError::Conflicts {
        what: format!("patch node {node}"),
        attempts: 5,
    })
}

/// Reads the uninstall ConfigMap: `None` when absent, else its `data.uninstall` value.
pub async fn uninstall_setting(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<Option<String>>, ClusterError> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(ClusterError::api(format!("get ConfigMap {ns}/{name}")))?;
    Ok(cm.map(|c| c.data.and_then(|d| d.get("uninstall").cloned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_taint_is_removed() {
        let t = |k: &str| Taint {
            key: k.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        assert_eq!(without_cni_taint(&[t("a")]), None);
        assert_eq!(
            without_cni_taint(&[t("a"), t(CNI_NOT_READY_TAINT), t("b")]),
            Some(vec![t("a"), t("b")])
        );
        assert_eq!(without_cni_taint(&[t(CNI_NOT_READY_TAINT)]), Some(vec![]));
    }

    #[test]
    fn pod_endpoint_is_controlled_by_its_pod() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("app".into());
        pod.metadata.uid = Some("u-1".into());
        let sandbox = Sandbox {
            container_id: "sandbox-1".into(),
            pod_uid: "u-1".into(),
        };
        let pe = pod_endpoint_for(
            &pod,
            PodEndpointSpec {
                static_gateway_configuration: "gw".into(),
                pod_ip_address: "10.244.0.5/32".into(),
                pod_public_key: "k".into(),
            },
            &sandbox,
        )
        .expect("pod has name and uid");
        assert_eq!(pe.metadata.name.as_deref(), Some("p"));
        assert_eq!(pe.metadata.namespace.as_deref(), Some("app"));
        let o = &pe.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (o.kind.as_str(), o.uid.as_str(), o.controller),
            ("Pod", "u-1", Some(true))
        );
        assert_eq!(
            pe.metadata.annotations.expect("annotations")[api::names::POD_ENDPOINT_SANDBOX_ANNOTATION],
            "sandbox-1"
        );
        let former = Sandbox {
            container_id: "sandbox-0".into(),
            pod_uid: "u-0".into(),
        };
        let e =
            pod_endpoint_for(&pod, PodEndpointSpec::default(), &former).expect_err("a former pod's sandbox");
        assert_eq!(
            e.to_string(),
            "pod app/p now has uid u-1, not u-0: the CNI ADD comes from a sandbox of a former pod of that name"
        );
        pod.metadata.uid = None;
        assert!(pod_endpoint_for(&pod, PodEndpointSpec::default(), &Sandbox::default()).is_err());
    }
}
