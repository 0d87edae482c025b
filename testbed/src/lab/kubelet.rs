//! What the lab does in place of the node components a real cluster has and the lab does not run: the
//! kubelet (registers its Node, reports it Ready, renews its Lease in `kube-node-lease`, reports a pod's
//! status once its container runs, confirms a pod's deletion once its sandbox is gone) and the scheduler
//! (binds a pod to a node). kube-controller-manager's controllers (endpoints, node lifecycle, pod GC) then
//! act on those objects as in any cluster.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// The namespace of the nodes' heartbeat Leases (kube-apiserver creates it at start).
pub(super) const NODE_LEASE_NS: &str = "kube-node-lease";
/// How often a kubelet renews its Lease (a quarter of its 40 s duration, as kubelet does).
const LEASE_RENEW: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;

/// The Nodes the lab plays kubelet for, and the loop renewing their Leases.
pub(super) struct Heartbeat {
    nodes: Arc<Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Starts renewing the Leases of the nodes [`Heartbeat::add`]ed, every 10 s. Creates `kube-node-lease`
    /// when the server has not (kube-sim creates no namespaces of its own).
    pub(super) async fn start(client: kube::Client) -> anyhow::Result<Self> {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        if namespaces.get_opt(NODE_LEASE_NS).await?.is_none() {
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NODE_LEASE_NS}}))?;
            namespaces
                .create(&PostParams::default(), &ns)
                .await
                .context("creating namespace kube-node-lease")?;
        }
        let nodes: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let names = nodes.clone();
        let leases: Api<Lease> = Api::namespaced(client, NODE_LEASE_NS);
        let task = tokio::spawn(async move {
            loop {
                let current: Vec<String> = names
                    .lock()
                    .map(|n| n.iter().cloned().collect())
                    .unwrap_or_default();
                for node in current {
                    if let Err(e) = renew(&leases, &node).await {
                        tracing::warn!(node, error = %format!("{e:#}"), "renewing the node's Lease");
                    }
                }
                tokio::time::sleep(LEASE_RENEW).await;
            }
        });
        Ok(Self { nodes, task })
    }

    /// Registers Node `node` (its labels and spec as given) as its kubelet does, reports it Ready with its
    /// primary IP as InternalIP, and renews its Lease from now on.
    pub(super) async fn register(
        &self,
        client: &kube::Client,
        mut node: serde_json::Value,
        internal_ip: Ipv4Addr,
    ) -> anyhow::Result<()> {
        let name = node["metadata"]["name"].as_str().unwrap_or_default().to_string();
        node["metadata"]["labels"]["kubernetes.io/hostname"] = json!(name);
        let nodes: Api<Node> = Api::all(client.clone());
        let n: Node = serde_json::from_value(node)?;
        nodes
            .create(&PostParams::default(), &n)
            .await
            .with_context(|| format!("creating Node {name}"))?;
        let now = now();
        let ready = |t: &str, status: &str, reason: &str| json!({"type": t, "status": status, "reason": reason, "lastHeartbeatTime": now, "lastTransitionTime": now});
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "conditions": [
                        ready("Ready", "True", "KubeletReady"),
                        ready("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                        ready("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                        ready("PIDPressure", "False", "KubeletHasSufficientPID"),
                    ],
                    "addresses": [{"type": "InternalIP", "address": internal_ip.to_string()},
                        {"type": "Hostname", "address": name}],
                }})),
            )
            .await
            .with_context(|| format!("reporting Node {name} Ready"))?;
        if let Ok(mut n) = self.nodes.lock() {
            n.insert(name.clone());
        }
        let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NS);
        renew(&leases, &name).await
    }

    /// Stops renewing.
    pub(super) fn stop(self) {
        self.task.abort();
    }
}

/// Creates or renews Lease `kube-node-lease/<node>`, as the node's kubelet does.
async fn renew(leases: &Api<Lease>, node: &str) -> anyhow::Result<()> {
    let spec =
        json!({"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now_micro()});
    match leases.get_opt(node).await? {
        Some(_) => {
            leases
                .patch(
                    node,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": spec})),
                )
                .await?;
        }
        None => {
            let lease: Lease = serde_json::from_value(json!({"metadata": {"name": node}, "spec": spec}))?;
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

/// Now, as a `metav1.Time` (seconds).
fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Now, as a `metav1.MicroTime` (a Lease's renewTime).
fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// The scheduler's part: binds pod `ns/name` to `node` (the `binding` subresource).
pub(super) async fn bind(pods: &Api<Pod>, name: &str, node: &str) -> anyhow::Result<()> {
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    pods.create_subresource::<serde_json::Value, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &binding,
    )
    .await
    .with_context(|| format!("binding Pod {name} to {node}"))?;
    Ok(())
}

/// The kubelet's status report once the pod's containers run and pass their readiness probe: Running,
/// Ready, with its IP and its node's.
pub(super) async fn report_running(
    pods: &Api<Pod>,
    name: &str,
    pod_ip: Ipv4Addr,
    host_ip: Ipv4Addr,
) -> anyhow::Result<()> {
    let now = now();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    let pod = pods.get(name).await?;
    let containers: Vec<serde_json::Value> = pod
        .spec
        .map(|s| s.containers)
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            json!({"name": c.name, "image": c.image.unwrap_or_default(), "imageID": "", "ready": true,
                "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running",
            "podIP": pod_ip.to_string(), "podIPs": [{"ip": pod_ip.to_string()}],
            "hostIP": host_ip.to_string(), "startTime": now,
            "conditions": [cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
            "containerStatuses": containers,
        }})),
    )
    .await
    .with_context(|| format!("reporting Pod {name} Running"))?;
    Ok(())
}

/// The kubelet's last word on a pod being deleted, once its sandbox is gone: delete it for good (grace 0).
/// Nothing to do when the server already removed it (kube-sim deletes pods at once).
pub(super) async fn confirm_deleted(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    match pods.delete(name, &DeleteParams::default().grace_period(0)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting Pod {name} (grace 0)")),
    }
}

/// The ready `ip:port` addresses of Endpoints `ns/name` (what kube-controller-manager's endpoints controller
/// derived from the Service's Ready pods), empty while there are none.
pub(super) async fn ready_endpoints(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<Vec<String>> {
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    let Some(e) = eps.get_opt(name).await? else {
        return Ok(Vec::new());
    };
    Ok(e.subsets
        .unwrap_or_default()
        .into_iter()
        .flat_map(|s| {
            let ports: Vec<i32> = s.ports.unwrap_or_default().into_iter().map(|p| p.port).collect();
            s.addresses
                .unwrap_or_default()
                .into_iter()
                .flat_map(move |a| ports.clone().into_iter().map(move |p| format!("{}:{p}", a.ip)))
        })
        .collect())
}
