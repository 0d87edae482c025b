//! The workspace's binaries for tests that run them as processes (the lab runs every component, the agent's
//! data-plane tests run the CNI plugin): built before they are used, so a test never runs a binary older than
//! the source beside it, as it would if it only built the ones that are missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds every binary of the workspace into `dir` and returns `dir`: the directory of the calling test's own
/// binaries (`<target>/debug`, or `<target>/release` for a release build). The command is the one
/// `scripts/test.sh` and the chart tests run (`cargo build --workspace --bins`), so dependencies resolve with
/// the same features and it is a no-op when everything is up to date. Built once per test process.
///
/// The build runs without the variables cargo sets for the test it runs ([`set_by_cargo_for_the_test`]):
/// build scripts watch some of them (ring's watches `CARGO_MANIFEST_DIR` and `CARGO_PKG_*`), so a build that
/// inherited them would redo ring and everything above it, and the next build from a shell would redo it all
/// again.
pub fn built_in(dir: &Path) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("testbed lives in the workspace");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut cmd = Command::new(cargo);
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(set_by_cargo_for_the_test) {
                cmd.env_remove(name);
            }
        }
        cmd.arg("build")
            .arg("-q")
            .arg("--manifest-path")
            .arg(root.join("Cargo.toml"))
            .args(["--workspace", "--bins"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo build runs");
        assert!(
            status.success(),
            "building the workspace binaries failed ({status})"
        );
    });
    dir.to_path_buf()
}

/// Whether cargo sets the environment variable `name` for the program it runs (cargo's "Environment variables
/// Cargo sets for crates"), rather than the user for cargo (`CARGO_HOME`, `CARGO_TARGET_DIR`, ...).
fn set_by_cargo_for_the_test(name: &str) -> bool {
    const EXACT: [&str; 9] = [
        "CARGO",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("__CARGO")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_cargo_sets_for_the_test_is_left_out() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "OUT_DIR",
        ] {
            assert!(set_by_cargo_for_the_test(name), "{name}");
        }
        for name in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "RUSTFLAGS",
            "PATH",
        ] {
            assert!(!set_by_cargo_for_the_test(name), "{name}");
        }
    }
}
