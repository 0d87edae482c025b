//! The lab's child processes: started with their output in a log file, stopped with SIGTERM (then SIGKILL
//! after a grace period), and checked gone at teardown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// One running component.
#[derive(Debug)]
struct Proc {
    name: String,
    log: PathBuf,
    child: tokio::process::Child,
    /// How it was started, so a stopped component can be started again the same way.
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

/// Every process the lab started, in start order.
#[derive(Debug, Default)]
pub struct Children {
    procs: Vec<Proc>,
}

impl Children {
    /// Starts `program` with `args` and `envs`; stdout and stderr go to `<log_dir>/<name>.log`.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<()> {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("log file handle")?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", name, program.display()))?;
        self.procs.push(Proc {
            name: name.to_string(),
            log,
            child,
            program: program.to_path_buf(),
            args: args.to_vec(),
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        });
        Ok(())
    }

    /// The process id of component `name`, while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.iter().find(|p| p.name == name)?.child.id()
    }

    /// Sends `signal` to component `name` and waits (up to `grace`, then SIGKILL) until it has exited, taking it
    /// out of the list (so its exit is not reported as a failure). Returns how to start it again: program,
    /// arguments, environment (its log is appended to).
    pub async fn stop_one(&mut self, name: &str, signal: Signal, grace: Duration) -> anyhow::Result<Stopped> {
        let i = self
            .procs
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("no component {name}"))?;
        let mut p = self.procs.remove(i);
        if let Some(pid) = p.child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
        if tokio::time::timeout(grace, p.child.wait()).await.is_err() {
            let _ = p.child.kill().await;
        }
        Ok(Stopped {
            name: p.name,
            program: p.program,
            args: p.args,
            envs: p.envs,
        })
    }

    /// Starts a component stopped by [`Children::stop_one`] again, as it was started.
    pub fn restart(&mut self, s: &Stopped, log_dir: &Path) -> anyhow::Result<()> {
        let envs: Vec<(&str, String)> = s.envs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.spawn(&s.name, &s.program, &s.args, &envs, log_dir)
    }

    /// The first component that has exited, with its status and the tail of its log.
    pub fn exited(&mut self) -> Option<String> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Some(format!(
                    "{} exited ({status}); last log lines:\n{}",
                    p.name,
                    tail(&p.log, 15)
                ));
            }
        }
        None
    }

    /// (name, log path) of every component, for the `--keep` summary.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        self.procs
            .iter()
            .map(|p| (p.name.clone(), p.log.clone()))
            .collect()
    }

    /// Stops every component, as a node shutting down stops its pods: SIGTERM to all at once (newest
    /// first), then SIGKILL to whatever has not exited `grace` later. Returns what was stopped (newest first).
    /// At once, because each gateway agent drains for its probe delay before it exits.
    pub async fn stop_all(&mut self, grace: Duration) -> Vec<String> {
        let procs: Vec<Proc> = self.procs.drain(..).rev().collect();
        for p in &procs {
            if let Some(pid) = p.child.id().and_then(|id| i32::try_from(id).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        let mut stopped = Vec::new();
        for mut p in procs {
            if p.child.id().is_some() && tokio::time::timeout_at(deadline, p.child.wait()).await.is_err() {
                let _ = p.child.kill().await;
                stopped.push(format!("{} (killed after {}s)", p.name, grace.as_secs()));
                continue;
            }
            stopped.push(p.name);
        }
        stopped
    }
}

/// A component taken out by [`Children::stop_one`]: how to start it again.
#[derive(Debug, Clone)]
pub struct Stopped {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Stopped {
    /// The same component with `--<flag>=<value>` instead of the `--<flag>=...` it was started with (added
    /// when it had none).
    pub fn with_flag(&self, flag: &str, value: &str) -> Stopped {
        let prefix = format!("--{flag}=");
        let mut args: Vec<String> = self
            .args
            .iter()
            .filter(|a| !a.starts_with(&prefix))
            .cloned()
            .collect();
        args.push(format!("{prefix}{value}"));
        Stopped { args, ..self.clone() }
    }
}

/// The last `n` lines of a log file (empty when unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("      | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Processes whose parent is this process (read from /proc), as "pid name".
pub fn live_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        if field("PPid:").as_deref() == Some(me.as_str()) {
            let state = field("State:").unwrap_or_default();
            // A zombie is already gone as far as resources go, but it still means a child was not reaped.
            out.push(format!(
                "{} {} ({state})",
                e.file_name().to_string_lossy(),
                field("Name:").unwrap_or_default()
            ));
        }
    }
    out
}

/// Runs `cmd` to completion (the short commands the lab sets the machine up with: `ip`, `mount`, ...). The
/// error says `starting` when it cannot start, and `failed` with its stderr when it exits non-zero.
pub fn run_checked(
    cmd: &mut std::process::Command,
    starting: &str,
    failed: impl std::fmt::Display,
) -> anyhow::Result<std::process::Output> {
    let out = cmd.output().with_context(|| starting.to_string())?;
    if !out.status.success() {
        anyhow::bail!("{failed}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}
