//! `kube-egress-gateway-webhook`: flags, then [`webhook::cli::Args::run`].

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    daemon::exit_code(webhook::cli::Args::parse().run().await)
}
