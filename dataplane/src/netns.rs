//! Running iproute2 / nft / sysctl in a network namespace.
//!
//! Thin I/O layer: the desired state is computed elsewhere as data; this module only executes idempotent
//! commands (`replace`, `nft -f` with a delete+create transaction) in the right namespace via `nsenter`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A network namespace: the caller's own, or one named by a path (`/var/run/netns/x`, `/proc/<pid>/ns/net`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    /// The namespace this process runs in.
    Current,
    /// A namespace file.
    Path(PathBuf),
}

/// A command that failed; says which command and what it printed.
#[derive(Debug, thiserror::Error)]
#[error("`{cmd}` failed: {msg}")]
pub struct CmdError {
    /// The command line (never contains secrets: keys are passed on stdin or over UAPI).
    pub cmd: String,
    /// stderr, or the spawn error.
    pub msg: String,
}

impl Netns {
    /// The namespace at `/var/run/netns/<name>` (as `ip netns add` creates it).
    pub fn named(name: &str) -> Self {
        Netns::Path(Path::new("/var/run/netns").join(name))
    }

    /// Whether the namespace exists.
    pub fn exists(&self) -> bool {
        match self {
            Netns::Current => true,
            Netns::Path(p) => p.exists(),
        }
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        match self {
            Netns::Current => Command::new(program),
            Netns::Path(p) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", p.display())).arg("--").arg(program);
                c
            }
        }
    }

    /// Runs `program args…` here, returning stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, CmdError> {
        self.run_with_stdin(program, args, None)
    }

    /// Runs `program args…` here with `stdin`, returning stdout.
    pub fn run_with_stdin(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, CmdError> {
        let cmd_line = format!("{} {}", program, args.join(" "));
        let mut c = self.command(program);
        c.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let err = |msg: String| CmdError {
            cmd: cmd_line.clone(),
            msg,
        };
        let mut child = c
            .spawn()
            .map_err(|e| err(format!("cannot start {program}: {e}")))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(|e| err(format!("writing stdin: {e}")))?;
        }
        let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
        }
    }

    /// `ip args…`.
    pub fn ip(&self, args: &[&str]) -> Result<String, CmdError> {
        self.run("ip", args)
    }

    /// `ip -j args…` parsed as JSON (empty output is an empty array).
    pub fn ip_json(&self, args: &[&str]) -> Result<serde_json::Value, CmdError> {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let out = self.run("ip", &a)?;
        if out.trim().is_empty() {
            return Ok(serde_json::Value::Array(Vec::new()));
        }
        serde_json::from_str(&out).map_err(|e| CmdError {
            cmd: format!("ip {}", a.join(" ")),
            msg: format!("unparsable JSON: {e}"),
        })
    }

    /// Whether a link of that name exists here.
    pub fn link_exists(&self, name: &str) -> Result<bool, CmdError> {
        Ok(self
            .ip_json(&["link", "show"])?
            .as_array()
            .is_some_and(|a| a.iter().any(|l| l["ifname"] == name)))
    }

    /// Applies an nftables script atomically (`nft -f -`).
    pub fn nft(&self, script: &str) -> Result<(), CmdError> {
        self.run_with_stdin("nft", &["-f", "-"], Some(script)).map(|_| ())
    }

    /// Writes a sysctl (path relative to /proc/sys, e.g. `net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), CmdError> {
        let dotted = key.replace('/', ".");
        self.run("sysctl", &["-q", "-w", &format!("{dotted}={value}")])
            .map(|_| ())
    }
}
