//! `lab`: the README's main-job command (run by `scripts/lab.sh`): flags, then [`testbed::lab::cli::Args::run`].

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    daemon::exit_code(testbed::lab::cli::Args::parse().run().await)
}
