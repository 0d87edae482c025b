//! `terraform-provider-egressgateway`: started by Terraform, speaks plugin protocol 6 on loopback.

use std::io::Write as _;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // Terraform starts the provider without arguments; `--version` is for humans and the release checks.
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("terraform-provider-egressgateway {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    // stdout carries only the handshake line; logs go to stderr, where Terraform collects them (TF_LOG).
    daemon::logging::init_with_filter_env("TF_PROVIDER_LOG", daemon::logging::LogFormat::Text);
    let env = tf_provider::server::LaunchEnv::from_env();
    let result = tf_provider::server::serve(&env, |line| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
