//! `control-plane`: the real control plane of [`testbed::control_plane`] as a process, for suites that are
//! not Rust (the chart's install test): it starts etcd, kube-apiserver and kube-controller-manager from the
//! assets folder, writes the admin kubeconfig and one per `--service-account` (a TokenRequest token, what a
//! kubelet mounts into the account's pods), adds an address on `lo` that a Service's endpoints may hold
//! (`TestCluster::endpoint_address`), and then writes `<kubeconfig>.ready` (JSON: `url`, `endpointIp`). It
//! runs until SIGTERM or Ctrl-C, then removes the address and stops the control plane.

use std::path::PathBuf;

use anyhow::Context as _;
use testbed::cluster::TestCluster;

/// The `control-plane` flags.
#[derive(Debug, clap::Parser)]
#[command(
    name = "control-plane",
    version,
    about = "A real Kubernetes control plane on loopback for tests"
)]
struct Args {
    /// Where to write the admin kubeconfig; `<path>.sa.<namespace>.<name>` for each service account and
    /// `<path>.ready` last.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// A service account `namespace/name` (the namespace and account are created when absent) whose
    /// kubeconfig to write.
    #[arg(long = "service-account")]
    service_accounts: Vec<String>,
}

fn with_suffix(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut p = path.to_path_buf().into_os_string();
    p.push(suffix);
    PathBuf::from(p)
}

impl daemon::Daemon for Args {
    async fn run(self) -> anyhow::Result<()> {
        let args = self;
        let assets = testbed::control_plane::Assets::find().map_err(anyhow::Error::msg)?;
        let cluster = TestCluster::Real(std::sync::Arc::new(
            testbed::control_plane::ControlPlane::start(&assets).await?,
        ));
        cluster.write_admin_kubeconfig(&args.kubeconfig)?;
        for sa in &args.service_accounts {
            let (ns, name) = sa
                .split_once('/')
                .with_context(|| format!("--service-account {sa:?}: expected namespace/name"))?;
            cluster.ensure_namespace(ns, &[]).await?;
            let token = cluster.service_account_token(ns, name).await?;
            let path = with_suffix(&args.kubeconfig, &format!(".sa.{ns}.{name}"));
            std::fs::write(&path, cluster.kubeconfig_for(name, &token)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let address = cluster.endpoint_address()?;
        let ready = serde_json::json!({"url": cluster.url(), "endpointIp": address.ip().to_string()});
        let ready_path = with_suffix(&args.kubeconfig, ".ready");
        std::fs::write(&ready_path, ready.to_string())
            .with_context(|| format!("writing {}", ready_path.display()))?;
        tracing::info!(url = %cluster.url(), kubeconfig = %args.kubeconfig.display(), "ready");
        daemon::shutdown_signal().await;
        tracing::info!("shutting down");
        drop(address);
        drop(cluster);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    daemon::main::<Args>().await
}
