//! What the lab tests share: the directory of the binaries the lab runs.

use std::path::PathBuf;
use std::process::Command;

/// Directory of the workspace binaries (next to the lab binary); builds the components the lab starts (and
/// the Terraform provider scenario 8 uses) when one is missing, in the lab binary's profile.
pub fn bin_dir() -> PathBuf {
    let lab = PathBuf::from(env!("CARGO_BIN_EXE_lab"));
    let dir = lab.parent().expect("lab binary has a directory").to_path_buf();
    let needed = [
        ("webhook", "kube-egress-gateway-webhook"),
        ("operator", "kube-egress-gateway-operator"),
        ("agent", "kube-egress-gateway-agent"),
        ("cni", "kube-egress-cni"),
        ("tf-provider", "terraform-provider-egressgateway"),
    ];
    if needed.iter().any(|(_, b)| !dir.join(b).exists()) {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-q"]);
        for (p, b) in needed {
            cmd.args(["-p", p, "--bin", b]);
        }
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo build runs");
        assert!(status.success(), "building the component binaries failed");
    }
    dir
}
