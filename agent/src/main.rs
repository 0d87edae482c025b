//! `kube-egress-gateway-agent --mode gateway|node`: [`agent::cli::Args`], started by [`daemon::main`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    daemon::main::<agent::cli::Args>().await
}
