//! `kube-egress-gateway-operator`: [`operator::cli::Args`], started by [`daemon::main`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    daemon::main::<operator::cli::Args>().await
}
