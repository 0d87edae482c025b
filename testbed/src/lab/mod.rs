//! The lab: the whole system on one machine, driven the way a user would (`kubectl`), with every step named
//! as it runs and everything torn down afterwards (also on failure or Ctrl-C) unless `--keep`.
//!
//! Steps: the Kubernetes API server (the real control plane, or kube-sim: `--kube`, [`kube_api`]; the lab
//! plays the node components it lacks, [`kubelet`]) and the Azure simulator and the Helm chart rendered and applied with kubectl ([`chart`]:
//! every component is then started from its rendered workload, as its service account), webhook + operator
//! as real processes, `kubectl apply` of a
//! GatewayPool and a StaticGatewayConfiguration (and an invalid one refused by the webhook), wait for Ready;
//! then the data plane: the Azure fabric computed from the Azure simulator ([`fabric`]), gateway VMs with the
//! real gateway agent, regular nodes (own network + mount namespace) with the real node agent and the CNI
//! chain, an annotated and a plain pod created as kubelet would ([`runtime`]), and the source address an
//! "internet" echo host sees from each. The fabric also reaches an "on-premises" echo host over a private
//! link (no SNAT), which scenario 6 (private mode on the VM-based pool `gwvms`) uses.

mod azure_view;
pub mod chart;
pub mod cli;
mod dataplane;
pub mod fabric;
pub mod images;
mod kube_api;
mod kubelet;
pub mod leftovers;
mod procs;
pub mod runtime;
pub mod scenarios;
mod steps;
mod terraform;

use std::path::PathBuf;

pub use procs::Children;
pub use steps::run;

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
    pub scenarios: Vec<scenarios::Scenario>,
    /// `--from-images`: run every component from its image with podman instead of from `bin_dir`.
    pub images: Option<images::ImageMode>,
    /// `--kube`: the real control plane or kube-sim.
    pub kube: crate::cluster::Backend,
}

/// Prints the start of a named step.
pub fn step(n: usize, name: &str) {
    println!("\n==> step {n}: {name}");
}

/// Prints a verified fact under the current step.
pub fn ok(msg: &str) {
    println!("    \u{2714} {msg}");
}

/// Prints information (not a verification) under the current step.
pub fn info(msg: &str) {
    println!("    {msg}");
}
