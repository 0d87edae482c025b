//! The lab's harness: the [`Lab`] (everything a run started, so teardown can stop it), its names and
//! addresses, and the helpers every job uses: kubectl, waiting for a condition, the seed's node names. The
//! jobs that fill the `Lab` are its submodules, one file each: [`boot`] (starting components from the chart's
//! workloads, as their service accounts), [`cluster`] (Azure and the Kubernetes API, the chart, webhook,
//! operator and the demo configuration), [`network`] (the node fabric: network namespaces, VM links, the
//! Azure fabric's wiring, gateway and regular nodes), [`pods`] (pods as kubelet creates them and the egress
//! they see), [`checks`] (apply / wait-Ready / check-egress helpers the scenarios share) and [`teardown`].
//! The harness imports none of the lab's steps, scenarios or terraform modules; they import it.

mod boot;
pub(in crate::lab) mod checks;
mod cluster;
mod network;
mod pods;
mod teardown;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::azure::{AzureSim, Seed};
use crate::cluster::{Backend, Kubectl, KubectlOutput};
use crate::lab::chart;
use crate::lab::fabric;
use crate::lab::kube_api::KubeApi;
use crate::lab::kubelet::Heartbeat;
use crate::lab::procs::{Children, tail};
use crate::lab::report::{info, step};
use crate::lab::runtime;

use boot::PodNetwork;

/// What the lab binary was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Leave everything running and print a kubeconfig for `kubectl`.
    pub keep: bool,
    /// Directory holding the workspace binaries (webhook, operator).
    pub bin_dir: PathBuf,
    /// Scratch directory for kubeconfig, cloud config, manifests and logs (created, removed at teardown).
    pub work_dir: PathBuf,
    /// `scripts/render-chart.py`: renders the Helm chart the lab installs.
    pub render_chart: PathBuf,
    /// Longest wait for any one condition.
    pub step_timeout: std::time::Duration,
    /// Upstream e2e scenarios (and ours) to run after the default steps, in order (`--scenarios`).
    pub scenarios: Vec<crate::lab::catalog::Scenario>,
    /// `--from-images`: run every component from its image with podman instead of from `bin_dir`.
    pub images: Option<crate::lab::images::ImageMode>,
    /// `--kube`: the real control plane or kube-sim.
    pub kube: crate::cluster::Backend,
}

/// The chart's release namespace: the components' namespace.
pub(in crate::lab) const SYSTEM_NS: &str = "kube-egress-gateway-system";
/// The chart's release name.
const RELEASE: &str = "kube-egress-gateway";
/// Namespace of the demo configuration and pods.
pub(in crate::lab) const DEMO_NS: &str = "demo";
/// The chart's workloads (and, for the webhook, its Service).
const WEBHOOK: &str = "kube-egress-gateway-webhook";
const OPERATOR: &str = "kube-egress-gateway-operator";
const GATEWAY_AGENT: &str = "kube-egress-gateway-gateway-agent";
const NODE_AGENT: &str = "kube-egress-gateway-node-agent";
/// The gateway node pool (AKS agent pool name, and the GatewayPool's name).
pub(in crate::lab) const POOL: &str = "gwpool";
/// The gateway node pool Terraform declares a GatewayPool for (scenario 8); nothing uses it before.
pub(in crate::lab) const TF_POOL: &str = "tfpool";
/// The demo StaticGatewayConfiguration.
pub(in crate::lab) const SGC: &str = "egress";
/// The regular node pool.
const NODE_POOL: &str = "nodepool1";
/// The VM-based gateway pool (AKS VirtualMachines pool with pre-created NICs: private IP mode), and the
/// GatewayPool scenario 6 declares for it.
pub(in crate::lab) const VM_POOL: &str = "gwvms";
/// Its VMs (each with one pre-created NIC).
const VM_POOL_VMS: u32 = 2;
/// The on-premises echo host (reached over a private link: ExpressRoute/VPN, no SNAT) in the range scenario 6
/// routes through the gateways (`excludeCidrs`), and a second address of it outside that range.
pub(in crate::lab) const ONPREM_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 10);
pub(in crate::lab) const ONPREM_RANGE: &str = "192.168.100.0/24";
pub(in crate::lab) const ONPREM_OTHER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 10);
/// The fabric's address on every VM link (the VMs' default gateway, as Azure's x.x.x.1).
const FABRIC_GW: Ipv4Addr = Ipv4Addr::new(10, 224, 0, 1);
/// The "internet" echo host and its service port.
pub(in crate::lab) const ECHO_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub(in crate::lab) const ECHO_PORT: u16 = 7777;
/// A second address of the echo host, listed in the configuration's `excludeCidrs`.
const ECHO_EXCLUDED_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// The pods: (name, node index, annotated).
pub(in crate::lab) const PODS: [(&str, usize, bool); 2] =
    [("egress-client", 0, true), ("plain-client", 1, false)];

/// Everything the lab started, so teardown can stop it whatever happened.
#[derive(Default)]
pub(in crate::lab) struct Lab {
    pub(in crate::lab) children: Children,
    pub(in crate::lab) kube: Option<KubeApi>,
    /// The kubelet's part for every Node the lab registers (Ready, Lease renewed).
    heartbeat: Option<Heartbeat>,
    /// On the real server: the namespace whose veth's host end carries the Deployments' pod IPs.
    pod_network: Option<PodNetwork>,
    pub(in crate::lab) azure: Option<AzureSim>,
    pub(in crate::lab) client: Option<kube::Client>,
    pub(in crate::lab) kubeconfig: PathBuf,
    /// The chart as rendered for the lab and applied to kube-sim.
    pub(in crate::lab) chart: chart::Rendered,
    /// The step that is running (number, name), for the failure message.
    pub(in crate::lab) current: (usize, &'static str),
    /// UID and gateway profiles of the demo configuration once Ready.
    sgc_uid: String,
    pub(in crate::lab) profiles: Vec<api::sgc::GatewayVmProfile>,
    /// Network namespaces the lab created (`ip netns` names) and their inodes.
    pub(in crate::lab) netns: Vec<String>,
    netns_inodes: Vec<u64>,
    /// Loopback forwarders into the namespaces, the echo host's service.
    forwarders: Vec<tokio::task::JoinHandle<()>>,
    /// The Azure fabric's namespace, wiring and background loop.
    pub(in crate::lab) fabric_ns: String,
    pub(in crate::lab) wiring: fabric::Wiring,
    pub(in crate::lab) fabric: Option<fabric::Running>,
    /// Gateway VMs (node name, primary IP, namespace) and regular nodes.
    pub(in crate::lab) gateway_vms: Vec<(String, Ipv4Addr, String)>,
    /// The VM-based pool's VMs (node name, primary IP, namespace): wired into the fabric in step 4, their
    /// Nodes and gateway agents started by scenario 6 (`vm_pool_agents`).
    pub(in crate::lab) vm_pool_vms: Vec<(String, Ipv4Addr, String)>,
    pub(in crate::lab) vm_pool_agents: bool,
    /// The gateway VMs of the seed's other gateway pools (pool -> VMs as in `gateway_vms`): wired into the
    /// fabric and running the chart's gateway agent from step 5 on, like gateway nodes of an AKS pool that
    /// no GatewayPool uses yet (scenario 8 declares one for `tfpool` with Terraform).
    pub(in crate::lab) other_pool_vms: std::collections::BTreeMap<String, Vec<(String, Ipv4Addr, String)>>,
    pub(in crate::lab) nodes: Vec<runtime::Node>,
    /// Directory (a private mount) holding the nodes' persisted mount namespaces.
    mnt_dir: Option<PathBuf>,
    /// Pods the runtime set up (node index, sandbox), for CNI DEL at teardown.
    pub(in crate::lab) pods: Vec<(usize, runtime::Sandbox)>,
    /// status.egressIpPrefix and the cluster's outbound public IP.
    pub(in crate::lab) prefix: Option<ipnet::Ipv4Net>,
    pub(in crate::lab) outbound: Option<Ipv4Addr>,
}

impl Lab {
    /// A lab that has started nothing yet, its files (the admin kubeconfig first) under `opts.work_dir`.
    pub(in crate::lab) fn new(opts: &Options) -> Self {
        Self {
            kubeconfig: opts.work_dir.join("kubeconfig"),
            ..Self::default()
        }
    }

    pub(in crate::lab) fn begin(&mut self, n: usize, name: &'static str) {
        self.current = (n, name);
        step(n, name);
    }

    pub(in crate::lab) fn client(&self) -> anyhow::Result<kube::Client> {
        self.client.clone().context("Kubernetes client not set up")
    }

    /// Which API server the lab runs on.
    pub(in crate::lab) fn backend(&self) -> anyhow::Result<Backend> {
        Ok(self.kube.as_ref().context("no API server")?.backend())
    }

    /// Polls `cond` until true, failing at the step timeout or when a component exits.
    pub(in crate::lab) async fn wait<F, Fut>(
        &mut self,
        what: &str,
        opts: &Options,
        mut cond: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        info(&format!("waiting: {what}"));
        let deadline = tokio::time::Instant::now() + opts.step_timeout;
        let mut last_err = String::new();
        loop {
            match cond().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last_err = format!("{e:#}"),
            }
            if let Some(gone) = self.children.exited() {
                bail!("while waiting for {what}: {gone}");
            }
            if tokio::time::Instant::now() >= deadline {
                let logs = self
                    .children
                    .logs()
                    .iter()
                    .map(|(n, l)| format!("{n}:\n{}", tail(l, 10)))
                    .collect::<Vec<_>>()
                    .join("\n");
                bail!(
                    "timed out after {}s waiting for {what}{}\n{logs}",
                    opts.step_timeout.as_secs(),
                    if last_err.is_empty() {
                        String::new()
                    } else {
                        format!(" (last error: {last_err})")
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// [`Lab::wait`] until `leftovers` finds nothing; on timeout the error lists what it last found in
    /// `place` (e.g. "azure-sim"), joined by `sep`.
    pub(in crate::lab) async fn wait_until_none(
        &mut self,
        what: &str,
        opts: &Options,
        place: &str,
        sep: &str,
        mut leftovers: impl FnMut() -> Vec<String>,
    ) -> anyhow::Result<()> {
        let mut last = Vec::new();
        let waited = self
            .wait(what, opts, || {
                last = leftovers();
                let none = last.is_empty();
                async move { Ok(none) }
            })
            .await;
        waited.map_err(|e| anyhow::anyhow!("{e:#}\n    left in {place}: {}", last.join(sep)))
    }

    /// `kubectl <args>` as the cluster's admin, run in the work directory (where the lab writes its manifests):
    /// the control plane's own kubectl on the real server (same version), the one on PATH on kube-sim.
    pub(in crate::lab) async fn kubectl(
        &self,
        opts: &Options,
        args: &[&str],
    ) -> anyhow::Result<KubectlOutput> {
        let program = self
            .kube
            .as_ref()
            .map_or_else(|| "kubectl".into(), KubeApi::kubectl);
        Kubectl::new(program, &self.kubeconfig, opts.work_dir.join("kube-cache"))
            .in_dir(&opts.work_dir)
            .try_run(args)
            .await
    }
}

/// The lab's Azure world: AKS-like, with the gateway VMSS pool `gwpool` (2 instances, /31 prefix size tag),
/// the regular pool `nodepool1` (2 instances, no gateway tag), a second gateway VMSS pool `tfpool` (2
/// instances, /31) that only scenario 8 declares a GatewayPool for (with Terraform), and the VM-based gateway
/// pool `gwvms` (2 VMs, each with a pre-created NIC tagged as a static gateway NIC of the pool, /31 prefix
/// size tag). Pools are seeded in this order, so adding one after the others leaves their addresses as they
/// were.
pub(in crate::lab) fn lab_seed() -> Seed {
    let mut seed = Seed::aks_like(2);
    for v in &mut seed.vm_scale_sets {
        v.name = format!("aks-{POOL}-12345678-vmss");
        v.pool_name = POOL.into();
        v.gateway_prefix_size = Some(31);
    }
    let mut regular = seed.vm_scale_sets[0].clone();
    regular.name = format!("aks-{NODE_POOL}-12345678-vmss");
    regular.pool_name = NODE_POOL.into();
    regular.gateway_prefix_size = None;
    seed.vm_scale_sets.push(regular);
    let mut tf = seed.vm_scale_sets[0].clone();
    tf.name = format!("aks-{TF_POOL}-12345678-vmss");
    tf.pool_name = TF_POOL.into();
    seed.vm_scale_sets.push(tf);
    seed.with_vm_pool(VM_POOL, VM_POOL_VMS, VM_POOL_VMS)
}

/// (pool, computer name) of every gateway VMSS instance in the lab's seed, in seed order.
fn gateway_nodes() -> Vec<(String, String)> {
    lab_seed()
        .vm_scale_sets
        .iter()
        .filter(|v| v.gateway_prefix_size.is_some())
        .flat_map(|v| (0..v.instances).map(move |i| (v.pool_name.clone(), format!("{}{i:06}", v.name))))
        .collect()
}

/// Computer names of the VM-based pool's VMs as azure-sim holds them (VMs tagged with the pool), sorted.
pub(in crate::lab) fn vm_pool_nodes(azure: &crate::azure::SimHandle) -> Vec<String> {
    use crate::azure::world::VM_TYPE;
    let mut names: Vec<String> = azure.with_state(|s| {
        s.world
            .resource_ids()
            .iter()
            .filter_map(|id| s.world.get(id))
            .filter(|v| {
                v["type"]
                    .as_str()
                    .is_some_and(|t| t.eq_ignore_ascii_case(VM_TYPE))
            })
            .filter(|v| {
                v.pointer(&format!("/tags/{}", api::names::TAG_AKS_POOL_NAME))
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.eq_ignore_ascii_case(VM_POOL))
            })
            .filter_map(|v| {
                v.pointer("/properties/osProfile/computerName")
                    .and_then(|n| n.as_str())
                    .map(str::to_string)
            })
            .collect()
    });
    names.sort();
    names
}

/// IDs of the resources azure-sim holds (its inventory) whose lower-cased ID contains `segment`.
fn azure_ids(azure: &AzureSim, segment: &str) -> Vec<String> {
    azure.inventory()["resources"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|r| r.as_str())
                .filter(|r| r.to_ascii_lowercase().contains(segment))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Prefix of the names this run gives host-wide things (network namespaces, the nodes' mount directory), so
/// teardown finds whatever of them is left: `lab<pid>-`.
fn lab_tag() -> String {
    crate::lab::leftovers::run_tag(std::process::id())
}

/// The labels AKS gives a regular node.
fn regular_node_labels() -> std::collections::BTreeMap<String, String> {
    [
        (api::names::NODE_AGENTPOOL_LABEL, NODE_POOL),
        ("kubernetes.io/os", "linux"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into()
}

/// Regular node `i`'s pod CIDR (kubenet's per-node range).
fn regular_pod_cidr(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// Computer names of the regular nodes (VMSS instances of `nodepool1`).
fn regular_nodes() -> Vec<String> {
    let seed = lab_seed();
    seed.vm_scale_sets
        .iter()
        .filter(|v| v.pool_name == NODE_POOL)
        .flat_map(|v| (0..v.instances).map(move |i| format!("{}{i:06}", v.name)))
        .collect()
}
