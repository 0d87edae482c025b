//! `kube-egress-gateway-webhook`: [`webhook::cli::Args`], started by [`daemon::main`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    daemon::main::<webhook::cli::Args>().await
}
