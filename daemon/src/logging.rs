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
    let filter = filter(std::env::var(filter_env).ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Targets whose events print whole HTTP requests, headers included, and which are held at `info` whatever
/// the filter asks: azure_core 0.21's header redaction is inverted (its `Debug` of headers hides every value
/// but `Authorization`), so at `debug` its transport policy would log every ARM call's bearer token, and its
/// retry policy (`trace`) the request likewise.
const REQUEST_PRINTING_TARGETS: [&str; 2] = [
    "azure_core::policies::transport",
    "azure_core::policies::retry_policies",
];

/// The level filter from `spec` (a `RUST_LOG` value; `info` when absent or invalid), with
/// [`REQUEST_PRINTING_TARGETS`] held at `info`.
fn filter(spec: Option<&str>) -> EnvFilter {
    let mut filter = spec
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    for target in REQUEST_PRINTING_TARGETS {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
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

    /// A writer into a shared buffer, for reading back what a subscriber logged.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn requests_azure_core_would_print_with_their_bearer_token_are_never_logged() {
        for spec in [
            Some("debug"),
            Some("trace"),
            Some("info,azure_core=trace"),
            Some("info,azure_core::policies::transport=debug,azure_core::policies::retry_policies=trace"),
            None,
        ] {
            let out = Captured::default();
            let writer = out.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(filter(spec))
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                tracing::debug!(target: "azure_core::policies::transport", "Authorization: Bearer secret-1");
                tracing::trace!(
                    target: "azure_core::policies::retry_policies::retry_policy",
                    "Request=Authorization: Bearer secret-2"
                );
                tracing::info!(target: "operator::azure", "an info line");
                tracing::debug!(target: "operator::azure", "a debug line");
            });
            let text = String::from_utf8_lossy(&out.0.lock().expect("lock")).into_owned();
            assert!(!text.contains("secret"), "{spec:?}: {text}");
            assert!(text.contains("an info line"), "{spec:?}: {text}");
            let debug_asked = spec.is_some_and(|s| s == "debug" || s == "trace");
            assert_eq!(text.contains("a debug line"), debug_asked, "{spec:?}: {text}");
        }
    }
}
