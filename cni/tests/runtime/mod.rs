//! Running the plugin binary as a container runtime does: the CNI_* environment, the configuration on stdin.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};

/// Runs the plugin with `env` (CNI_COMMAND and whatever else the runtime sets; `CNI_PATH` is set) and `conf` on
/// stdin.
pub fn run(env: &[(&str, &OsStr)], conf: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kube-egress-cni"));
    c.env("CNI_PATH", "/opt/cni/bin");
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes())
        .expect("write the configuration");
    child.wait_with_output().expect("plugin exits")
}

/// Text of a captured stream.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
