//! The `lab` binary's flags and run (`scripts/lab.sh`). `src/bin/lab.rs` parses the flags and calls
//! [`Args::run`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::leftovers::{self, Places};
use crate::cluster::Backend;
use crate::control_plane::Assets;

/// Brings up a Kubernetes API server (the real control plane or kube-sim) and the simulated Azure, installs the Helm chart, runs the real components from it, applies a GatewayPool and a
/// StaticGatewayConfiguration with kubectl, shows the result, and tears everything down.
#[derive(Debug, clap::Parser)]
#[command(name = "lab", version)]
pub struct Args {
    /// Leave everything running (until Ctrl-C) and print a kubeconfig for kubectl.
    #[arg(long)]
    pub keep: bool,
    /// Only remove what earlier lab runs that are gone (killed, crashed) left behind, then exit. Every run
    /// does this first.
    #[arg(long, conflicts_with = "keep")]
    pub cleanup: bool,
    /// Directory with the workspace binaries; default: the directory of this binary.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The chart renderer (Helm SDK); default: scripts/render-chart.py of the source tree this lab was built from.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/render-chart.py"))]
    pub render_chart: PathBuf,
    /// Longest wait for any one condition, in seconds.
    #[arg(long, default_value_t = 60)]
    pub step_timeout: u64,
    /// After the default steps, run these scenarios (upstream's e2e numbering, plus ours): `all`, or a list
    /// such as `2,3,9`. 2 BYO public IP prefix, 3 ingress to an annotated pod, 5 two configurations on one
    /// pool, 6 private mode, 8 terraform apply/destroy with our provider (needs `terraform` on PATH), 9 gateway
    /// failover (measured), 10 delete everything and check Azure is clean.
    #[arg(long, default_value = "none", value_parser = scenario_list)]
    pub scenarios: ScenarioList,
    /// The Kubernetes API server: `real` (etcd, kube-apiserver and kube-controller-manager from
    /// `KUBEBUILDER_ASSETS` or `.kubebuilder-assets/`, which scripts/install-deps.sh prepares) or `sim`
    /// (kube-sim, in process). Default: `TESTBED_KUBE` when set, else `real` when those binaries are found.
    #[arg(long, value_parser = ["real", "sim"])]
    pub kube: Option<String>,
    /// Run every component from its image (the chart's image references, in podman's local storage, e.g.
    /// built by scripts/release.sh) with `podman run` in the lab's namespaces, instead of the binaries.
    #[arg(long)]
    pub from_images: bool,
}

/// The scenarios `--scenarios` names, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioList(pub Vec<super::catalog::Scenario>);

fn scenario_list(text: &str) -> Result<ScenarioList, String> {
    super::catalog::parse(text).map(ScenarioList)
}

impl Args {
    /// Removes earlier runs' leftovers, then (unless `--cleanup`) runs the lab. Errors are bad flags, leftovers
    /// `--cleanup` could not remove, and a failed lab.
    pub async fn run(self) -> anyhow::Result<()> {
        let (kube, why) = match &self.kube {
            Some(k) => (k.parse::<Backend>()?, "--kube".to_string()),
            None => match std::env::var(crate::cluster::BACKEND_ENV) {
                Ok(v) if !v.is_empty() => (
                    Backend::from_env()?,
                    format!("{}={v}", crate::cluster::BACKEND_ENV),
                ),
                _ => (Backend::default_here(), "default".to_string()),
            },
        };
        // The first lines: which API server, and where it comes from.
        match kube {
            Backend::Real => match Assets::find() {
                Ok(a) => println!(
                    "Kubernetes API: the real control plane (etcd, kube-apiserver, kube-controller-manager from {}; chosen by {why}; --kube sim for kube-sim)",
                    a.dir.display()
                ),
                Err(e) if !self.cleanup => {
                    anyhow::bail!("--kube real (chosen by {why}): no control plane binaries: {e}")
                }
                Err(_) => {}
            },
            Backend::Sim => println!(
                "Kubernetes API: kube-sim, the in-process simulator (chosen by {why}{})",
                match Assets::find() {
                    Ok(_) => String::new(),
                    Err(e) => format!("; no real control plane: {e}"),
                }
            ),
        }
        let bin_dir = match self.bin_dir {
            Some(d) => d,
            None => std::env::current_exe()
                .context("cannot find the lab binary's directory")?
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default(),
        };
        println!("removing what earlier lab runs that are gone left behind");
        match leftovers::clean(&Places::host()) {
            Ok(removed) if removed.is_empty() => println!("    nothing left by earlier runs"),
            Ok(_) => {}
            Err(e) if self.cleanup => return Err(e),
            Err(e) => println!("    warning: {e:#}"),
        }
        if self.cleanup {
            return Ok(());
        }
        let opts = super::harness::Options {
            keep: self.keep,
            bin_dir,
            render_chart: self.render_chart,
            work_dir: leftovers::work_dir(&std::env::temp_dir(), std::process::id()),
            step_timeout: Duration::from_secs(self.step_timeout),
            scenarios: self.scenarios.0,
            images: self.from_images.then(super::images::ImageMode::detect),
            kube,
        };
        println!("kube-egress-gateway lab (work dir {})", opts.work_dir.display());
        super::run::run(opts).await.context("lab failed")?;
        println!("\nlab finished");
        Ok(())
    }
}
