//! The lab's default steps, in order: each one a job of the [`Lab`] harness.

use crate::lab::harness::{Lab, Options};
use crate::lab::report::info;

/// How far the default steps went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::lab) enum Reached {
    /// Steps 1–8: the control plane and the data plane.
    DataPlane,
    /// Steps 1–3 only: the data plane needs root and the agent and CNI binaries.
    ControlPlaneOnly,
}

/// Runs steps 1 to 8 (the data plane's only with root and the agent and CNI binaries).
pub(in crate::lab) async fn run(lab: &mut Lab, opts: &Options) -> anyhow::Result<Reached> {
    lab.begin(
        1,
        "simulators: Azure and the Kubernetes API, the Helm chart installed with kubectl",
    );
    lab.simulators(opts).await?;
    lab.begin(2, "webhook and operator (real binaries)");
    lab.webhook(opts).await?;
    lab.operator(opts).await?;
    lab.begin(3, "kubectl apply: GatewayPool and StaticGatewayConfiguration");
    lab.configure(opts).await?;
    let agent = opts.bin_dir.join("kube-egress-gateway-agent");
    let cni = opts.bin_dir.join(api::names::CNI_PLUGIN_TYPE);
    if !nix::unistd::geteuid().is_root() || !agent.exists() || !cni.exists() {
        lab.begin(4, "data plane");
        info(&format!(
            "SKIPPED: needs root, {} and {} (scripts/lab.sh builds them and runs as root)",
            agent.display(),
            cni.display()
        ));
        return Ok(Reached::ControlPlaneOnly);
    }
    lab.begin(
        4,
        "Azure fabric: VM networks, load balancer, edge and the internet echo host",
    );
    lab.fabric(opts).await?;
    lab.begin(5, "gateway nodes: real gateway agents behind the load balancer");
    lab.gateways(opts).await?;
    lab.begin(6, "regular nodes: real node agents and the CNI chain");
    lab.nodes(opts).await?;
    lab.begin(7, "pods, created as kubelet and the container runtime would");
    lab.pods(opts).await?;
    lab.begin(8, "egress: the source address the internet echo host sees");
    lab.egress(opts).await?;
    Ok(Reached::DataPlane)
}
