//! The agent binary as the tests run it: pointed at the API server of a kubeconfig, never at the cluster the
//! test itself may run in, and stopped when the test ends, whether it passes or fails.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// The agent binary: `KEG_AGENT_BIN` when set (e.g. a release build), else this package's.
pub fn agent_bin() -> PathBuf {
    let p = std::env::var_os("KEG_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kube-egress-gateway-agent")));
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p agent` (or set KEG_AGENT_BIN)",
        p.display()
    );
    p
}

/// `program` (the agent binary, or a launcher such as `nsenter` whose arguments end with it) talking to the
/// API server `kubeconfig` names: `KUBERNETES_SERVICE_HOST` is removed so the in-cluster configuration never
/// wins when the tests run in a pod. Its output is discarded; a caller that reads it sets its own.
pub fn agent_command(program: impl AsRef<OsStr>, kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// A running agent, killed when dropped so a failing test leaves no process behind.
pub struct RunningAgent(Option<Child>);

impl RunningAgent {
    /// Starts `cmd`.
    pub fn spawn(cmd: &mut Command) -> Self {
        RunningAgent(Some(cmd.spawn().expect("agent starts")))
    }

    /// Sends SIGTERM (what kubelet sends to stop a pod).
    pub fn terminate(&self) {
        let pid = self.0.as_ref().expect("agent running").id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill")
                .success(),
            "SIGTERM to agent {pid}"
        );
    }

    /// Waits for the agent to exit (blocking).
    pub fn wait(mut self) -> ExitStatus {
        self.0.take().expect("agent running").wait().expect("wait")
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
