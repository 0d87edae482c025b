//! What every kube-egress-gateway binary shares, so they all start, log, probe and stop alike: the log flags
//! and log set-up, the shutdown signal, and the plain-HTTP probe (`/healthz`, `/readyz`) and metrics servers.
//! Each binary's `main.rs` is its flags and one call into its library, which uses these.

#![forbid(unsafe_code)]

pub mod http;
pub mod logging;

pub use logging::LogArgs;

/// Resolves on SIGTERM (what kubelet sends) or Ctrl-C. If the SIGTERM handler cannot be installed, only
/// Ctrl-C is awaited.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term => {} }
}

/// Ends a binary the same way everywhere: on error, one line `error: <cause chain>` on stderr (start-up errors
/// name the field and the rule) and exit status 1.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
