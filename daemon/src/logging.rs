//! Log flags and set-up shared by every binary, so they all behave alike under Kubernetes: logs on stderr,
//! level filter from an environment variable (default `info`), colours only when stderr is a terminal
//! (container log files must not carry escape codes), or one JSON object per line.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The log flags of every daemon binary ([`crate::main`] adds them to its own flags). The chart passes
/// `--log-format`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log format (`RUST_LOG` sets the level).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global subscriber with the filter read from `RUST_LOG`.
    pub fn init(&self) {
        init(self.log_format);
    }
}

/// Installs the global subscriber with the filter read from `RUST_LOG`.
pub fn init(format: LogFormat) {
    init_with_filter_env("RUST_LOG", format);
}

/// As [`init`], with the filter read from `filter_env` (the Terraform provider uses its own variable).
/// A second call in the same process is ignored (tests start binaries' entry points more than once).
pub fn init_with_filter_env(filter_env: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_env(filter_env).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn log_format_defaults_to_text_and_refuses_unknown_formats() {
        assert_eq!(
            Flags::try_parse_from(["bin"]).expect("no flags").log.log_format,
            LogFormat::Text
        );
        let json = Flags::try_parse_from(["bin", "--log-format", "json"]).expect("json");
        assert_eq!(json.log.log_format, LogFormat::Json);
        let err = Flags::try_parse_from(["bin", "--log-format", "xml"]).expect_err("xml is no format");
        assert!(err.to_string().contains("--log-format"), "{err}");
    }
}
