//! The README's main-job command, end to end: the lab binary with the real webhook and operator binaries.
//! Covers upstream scenario (7) (an invalid configuration refused with the rule's message) and the control-plane
//! half of scenario (1) (the configuration becomes Ready with a prefix from the public range), and that the
//! teardown leaves no process or work directory behind.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Directory of the workspace binaries (next to the lab binary); builds webhook and operator when missing.
fn bin_dir() -> PathBuf {
    let lab = PathBuf::from(env!("CARGO_BIN_EXE_lab"));
    let dir = lab.parent().expect("lab binary has a directory").to_path_buf();
    let needed = ["kube-egress-gateway-webhook", "kube-egress-gateway-operator"];
    if needed.iter().any(|b| !dir.join(b).exists()) {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "-q",
            "-p",
            "webhook",
            "--bin",
            "kube-egress-gateway-webhook",
            "-p",
            "operator",
            "--bin",
            "kube-egress-gateway-operator",
        ]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo build runs");
        assert!(status.success(), "building webhook and operator failed");
    }
    dir
}

fn work_dir_of(stdout: &str) -> Option<PathBuf> {
    let line = stdout.lines().find(|l| l.contains("(work dir "))?;
    let start = line.find("(work dir ")? + "(work dir ".len();
    Some(PathBuf::from(line[start..].trim_end_matches(')')))
}

#[test]
fn lab_runs_the_control_plane_end_to_end_and_leaves_nothing() {
    let dir = bin_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_lab"))
        .arg("--bin-dir")
        .arg(&dir)
        .arg("--step-timeout")
        .arg("40")
        .output()
        .expect("lab runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lab failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        "==> step 1: simulators",
        "==> step 2: webhook and operator",
        "operator elected leader",
        "denied the request: StaticGatewayConfiguration demo/broken is invalid: spec.publicIpPrefixId: rule 6",
        "\u{2714} the webhook refused the invalid configuration",
        "demo/egress is Ready; status.egressIpPrefix = 20.10.0.",
        "azure-sim now has the internal load balancer",
        "\u{2714} nothing left: no child processes, work dir removed",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in the lab's output:\n{stdout}"
        );
    }
    // The printed table comes from kubectl itself.
    let table = stdout
        .lines()
        .skip_while(|l| !l.contains("$ kubectl get sgc -n demo"))
        .nth(2)
        .unwrap_or_default();
    assert!(
        table.contains("egress") && table.contains("True"),
        "kubectl get sgc row: {table:?}\n{stdout}"
    );
    let work = work_dir_of(&stdout).expect("the lab names its work dir");
    assert!(
        !Path::new(&work).exists(),
        "work dir {} left behind",
        work.display()
    );
}
