//! What the lab tests share: the directory of the binaries the lab runs.

use std::path::{Path, PathBuf};

/// Directory of the workspace binaries (next to the lab binary), with every component the lab starts (and the
/// Terraform provider scenario 8 uses) built from the current source first, in the lab binary's profile.
pub fn bin_dir() -> PathBuf {
    let lab = Path::new(env!("CARGO_BIN_EXE_lab"));
    testbed::workspace_bins::built_in(lab.parent().expect("lab binary has a directory"))
}
