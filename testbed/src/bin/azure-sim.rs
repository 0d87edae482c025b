//! Serves the Azure simulator on a loopback port from a seed file, for the lab and for humans.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, clap::Parser)]
#[command(
    name = "azure-sim",
    version,
    about = "Azure Resource Manager + AAD + IMDS simulator"
)]
struct Args {
    /// Seed file (JSON, see testbed::azure::Seed).
    #[arg(long, env = "AZURE_SIM_SEED")]
    seed: PathBuf,
    /// Listen address (loopback recommended).
    #[arg(long, env = "AZURE_SIM_LISTEN", default_value = "127.0.0.1:8790")]
    listen: SocketAddr,
}

impl daemon::Daemon for Args {
    /// Serves until SIGTERM or Ctrl-C. Logs are plain text by default, so scripts can read the `url=` line (on
    /// stderr).
    async fn run(self) -> anyhow::Result<()> {
        let args = self;
        let text = std::fs::read_to_string(&args.seed)
            .map_err(|e| anyhow::anyhow!("cannot read seed file {}: {e}", args.seed.display()))?;
        let seed = testbed::azure::seed::parse_seed(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.seed.display()))?;
        let sim = testbed::azure::AzureSim::start_on(&seed, args.listen).await?;
        tracing::info!(url = sim.url(), "azure simulator listening");
        daemon::shutdown_signal().await;
        tracing::info!("shutting down");
        drop(sim);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    daemon::main::<Args>().await
}
