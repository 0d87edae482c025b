//! What every kube-egress-gateway binary shares, so they all start, log, probe and stop alike: the start-up
//! ([`Daemon`], [`main`]: flags, the log flags and log set-up, the exit status), the shutdown signal, the tasks
//! that must run until it ([`tasks`]), a work loop's liveness ([`liveness`]), and the plain-HTTP probe
//! (`/healthz`, `/readyz`) and metrics servers. Each binary's `main.rs` is one call to
//! [`main`] with its flags, whose [`Daemon::run`] (in its library) uses these.

#![forbid(unsafe_code)]

pub mod http;
pub mod liveness;
pub mod logging;
pub mod tasks;

use std::ffi::OsString;

use clap::{Args as _, FromArgMatches as _};
pub use logging::LogArgs;

/// A long-running binary: its own flags (a `clap::Parser`, which also gives the command's name, version and
/// about text) and what it runs. [`main`] adds the log flags every binary takes ([`LogArgs`]) and sets logging
/// up before [`Daemon::run`], so no binary declares or initialises them itself.
pub trait Daemon: clap::Parser {
    /// Runs with logging set up, until SIGTERM or Ctrl-C (or the work is done); errors end the process
    /// non-zero.
    fn run(self) -> impl Future<Output = anyhow::Result<()>>;
}

/// The whole `main` of every daemon binary: parses its flags and the log flags (bad flags, `--help` and
/// `--version` end the process as clap does), sets logging up, runs it and ends as [`exit_code`] says.
pub async fn main<D: Daemon>() -> std::process::ExitCode {
    let (daemon, log) = try_parse_from::<D>(std::env::args_os()).unwrap_or_else(|e| e.exit());
    log.init();
    exit_code(daemon.run().await)
}

/// The command line of daemon `D`: its flags, then the log flags.
pub fn command<D: Daemon>() -> clap::Command {
    let daemon = D::command();
    // Adding the log flags also applies `LogArgs`' doc comment as the about text: the daemon's own stays.
    let kept = |text: Option<&clap::builder::StyledStr>| match text {
        Some(text) => clap::builder::Resettable::Value(text.clone()),
        None => clap::builder::Resettable::Reset,
    };
    let (about, long_about) = (kept(daemon.get_about()), kept(daemon.get_long_about()));
    LogArgs::augment_args(daemon).about(about).long_about(long_about)
}

/// Parses daemon `D`'s flags and the log flags from `args` (the first is the binary's name), as [`main`] does.
pub fn try_parse_from<D: Daemon>(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
) -> Result<(D, LogArgs), clap::Error> {
    let mut command = command::<D>();
    let mut matches = command.try_get_matches_from_mut(args)?;
    let parsed = D::from_arg_matches_mut(&mut matches)
        .and_then(|daemon| Ok((daemon, LogArgs::from_arg_matches_mut(&mut matches)?)));
    parsed.map_err(|e| e.format(&mut command))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::LogFormat;

    /// A daemon with one flag of its own, read from an environment variable too.
    #[derive(Debug, clap::Parser)]
    #[command(name = "test-daemon", version, about = "A daemon for the tests")]
    struct TestDaemon {
        /// Address to listen on.
        #[arg(long, env = "TEST_DAEMON_LISTEN", default_value = "127.0.0.1:1")]
        listen: String,
    }

    impl Daemon for TestDaemon {
        async fn run(self) -> anyhow::Result<()> {
            anyhow::ensure!(!self.listen.is_empty(), "--listen: must not be empty");
            Ok(())
        }
    }

    #[test]
    fn a_daemon_takes_its_own_flags_and_the_log_flags() {
        let (daemon, log) =
            try_parse_from::<TestDaemon>(["test-daemon", "--listen", "0.0.0.0:2", "--log-format", "json"])
                .expect("both kinds of flags");
        assert_eq!(
            (daemon.listen.as_str(), log.log_format),
            ("0.0.0.0:2", LogFormat::Json)
        );
        let (daemon, log) = try_parse_from::<TestDaemon>(["test-daemon"]).expect("defaults");
        assert_eq!(
            (daemon.listen.as_str(), log.log_format),
            ("127.0.0.1:1", LogFormat::Text)
        );

        let err = try_parse_from::<TestDaemon>(["test-daemon", "--log-format", "xml"])
            .expect_err("xml is no format");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(err.to_string().contains("--log-format"), "{err}");
        let err = try_parse_from::<TestDaemon>(["test-daemon", "--listne", "x"]).expect_err("a typo");
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn help_is_the_daemons_with_the_log_flags_last() {
        let mut command = command::<TestDaemon>();
        assert_eq!(
            command.render_version().to_string(),
            format!("test-daemon {}\n", env!("CARGO_PKG_VERSION"))
        );
        let help = command.render_long_help().to_string();
        assert!(
            help.starts_with("A daemon for the tests\n\nUsage: test-daemon [OPTIONS]\n"),
            "{help}"
        );
        let at = |text: &str| {
            help.find(text)
                .unwrap_or_else(|| panic!("{text} is not in:\n{help}"))
        };
        assert!(at("--listen <LISTEN>") < at("[env: TEST_DAEMON_LISTEN=]"));
        assert!(at("[env: TEST_DAEMON_LISTEN=]") < at("--log-format <LOG_FORMAT>"));
        assert!(at("--log-format <LOG_FORMAT>") < at("[env: LOG_FORMAT=]"));
        assert!(at("[env: LOG_FORMAT=]") < at("-h, --help"));
    }

    #[tokio::test]
    async fn exit_code_follows_run() {
        let ok = TestDaemon { listen: "x".into() }.run().await;
        assert_eq!(exit_code(ok), std::process::ExitCode::SUCCESS);
        let failed = TestDaemon {
            listen: String::new(),
        }
        .run()
        .await;
        assert_eq!(exit_code(failed), std::process::ExitCode::FAILURE);
    }
}
