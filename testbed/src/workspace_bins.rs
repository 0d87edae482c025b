//! The workspace's binaries for tests that run them as processes (the lab runs every component, the agent's
//! data-plane tests run the CNI plugin): built before they are used, so a test never runs a binary older than
//! the source beside it, as it would if it only built the ones that are missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds every binary of the workspace into `dir` and returns `dir`: the directory of the calling test's own
/// binaries (`<target>/debug`, `<target>/release` or another profile's, under `<target>/<triple>/` for a cross
/// build: [`layout_args`]). The command is the one
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
            .args(["--workspace", "--bins"])
            .args(layout_args(dir, |p| p.join("CACHEDIR.TAG").exists()));
        let status = cmd.status().expect("cargo build runs");
        assert!(
            status.success(),
            "building the workspace binaries failed ({status})"
        );
    });
    dir.to_path_buf()
}

/// The `cargo build` arguments that put the binaries into `dir`, a profile directory of a target directory:
/// `<target>/<profile dir>` or, for a cross build, `<target>/<triple>/<profile dir>` (`debug` is the dev
/// profile's directory; every other profile's is its name). `is_target_root` tells the target directory itself
/// (cargo marks it with a CACHEDIR.TAG). A `dir` of another shape gets no arguments: cargo's defaults.
fn layout_args(dir: &Path, is_target_root: impl Fn(&Path) -> bool) -> Vec<String> {
    let (Some(profile_dir), Some(parent)) = (dir.file_name().and_then(|n| n.to_str()), dir.parent()) else {
        return Vec::new();
    };
    let (root, triple) = if is_target_root(parent) {
        (parent, None)
    } else {
        match (parent.parent(), parent.file_name().and_then(|n| n.to_str())) {
            (Some(root), Some(triple)) if is_target_root(root) => (root, Some(triple)),
            _ => return Vec::new(),
        }
    };
    let mut args = vec!["--target-dir".to_string(), root.display().to_string()];
    if let Some(triple) = triple {
        args.extend(["--target".to_string(), triple.to_string()]);
    }
    if profile_dir != "debug" {
        args.extend(["--profile".to_string(), profile_dir.to_string()]);
    }
    args
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
    fn the_build_lands_in_the_calling_tests_own_profile_and_target() {
        let root = |p: &Path| p == Path::new("/t");
        let args = |dir: &str| layout_args(Path::new(dir), root);
        assert_eq!(args("/t/debug"), ["--target-dir", "/t"]);
        assert_eq!(args("/t/release"), ["--target-dir", "/t", "--profile", "release"]);
        assert_eq!(args("/t/ci-fast"), ["--target-dir", "/t", "--profile", "ci-fast"]);
        assert_eq!(
            args("/t/x86_64-unknown-linux-gnu/debug"),
            ["--target-dir", "/t", "--target", "x86_64-unknown-linux-gnu"]
        );
        assert_eq!(
            args("/t/aarch64-unknown-linux-gnu/release"),
            [
                "--target-dir",
                "/t",
                "--target",
                "aarch64-unknown-linux-gnu",
                "--profile",
                "release"
            ]
        );
        // Not inside a target directory: cargo's own defaults.
        assert!(args("/elsewhere/debug").is_empty());
        assert!(args("/").is_empty());
    }

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
