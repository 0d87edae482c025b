//! Log set-up shared by every binary (feature `logging`), so they all behave alike under Kubernetes: logs on
//! stderr, level filter from an environment variable (default `info`), colours only when stderr is a terminal
//! (container log files must not carry escape codes), or one JSON object per line.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber with the filter read from `RUST_LOG`. `json` selects JSON lines.
pub fn init(json: bool) {
    init_with_filter_env("RUST_LOG", json);
}

/// As [`init`], with the filter read from `filter_env` (the Terraform provider uses its own variable).
/// A second call in the same process is ignored (tests start binaries' entry points more than once).
pub fn init_with_filter_env(filter_env: &str, json: bool) {
    let filter = EnvFilter::try_from_env(filter_env).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
