//! `kube-egress-gateway-agent --mode gateway|node`: flags, then [`agent::cli::Args::run`].

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    daemon::exit_code(agent::cli::Args::parse().run().await)
}
