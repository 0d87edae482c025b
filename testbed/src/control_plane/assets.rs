//! Where the control plane's binaries are: the envtest convention, a folder named by `KUBEBUILDER_ASSETS`
//! holding `kube-apiserver`, `etcd` and `kubectl` (plus `kube-controller-manager` here).

use std::path::{Path, PathBuf};

/// The environment variable envtest (controller-runtime) reads; we honour the same one.
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";

/// The folder `scripts/install-deps.sh` prepares when `KUBEBUILDER_ASSETS` is not set, relative to the
/// workspace root (ignored by git).
pub const DEFAULT_ASSETS_DIR: &str = ".kubebuilder-assets";

/// The binaries one control plane needs.
#[derive(Debug, Clone)]
pub struct Assets {
    /// The folder they were found in.
    pub dir: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub etcd: PathBuf,
    pub kubectl: PathBuf,
}

impl Assets {
    /// The assets named by `KUBEBUILDER_ASSETS`, else the workspace's `.kubebuilder-assets`. `Err` says which
    /// folder was looked at and what is missing there (callers that can fall back to kube-sim print it).
    pub fn find() -> Result<Self, String> {
        match std::env::var_os(ASSETS_ENV) {
            Some(dir) if !dir.is_empty() => Self::in_dir(Path::new(&dir))
                .map_err(|e| format!("{ASSETS_ENV}={}: {e}", Path::new(&dir).display())),
            _ => {
                let dir = workspace_root().join(DEFAULT_ASSETS_DIR);
                Self::in_dir(&dir).map_err(|e| {
                    format!(
                        "{} (no {ASSETS_ENV} set): {e}; scripts/install-deps.sh prepares it from ../shared/kube",
                        dir.display()
                    )
                })
            }
        }
    }

    /// The assets in `dir`; `Err` lists the missing binaries.
    pub fn in_dir(dir: &Path) -> Result<Self, String> {
        let at = |name: &str| dir.join(name);
        let missing: Vec<&str> = ["kube-apiserver", "kube-controller-manager", "etcd", "kubectl"]
            .into_iter()
            .filter(|name| !is_executable(&at(name)))
            .collect();
        if !missing.is_empty() {
            return Err(format!("missing {}", missing.join(", ")));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            kube_apiserver: at("kube-apiserver"),
            kube_controller_manager: at("kube-controller-manager"),
            etcd: at("etcd"),
            kubectl: at("kubectl"),
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The workspace root (this crate's parent folder).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
