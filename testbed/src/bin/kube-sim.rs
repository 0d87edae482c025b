//! `kube-sim`: flags, then [`testbed::kube::cli::Args::run`].

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    daemon::exit_code(testbed::kube::cli::Args::parse().run().await)
}
