//! `kube-sim`: [`testbed::kube::cli::Args`], started by [`daemon::main`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    daemon::main::<testbed::kube::cli::Args>().await
}
