//! `kube-egress-gateway-operator`: flags, then [`operator::cli::Args::run`].

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    daemon::exit_code(operator::cli::Args::parse().run().await)
}
