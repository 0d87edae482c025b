//! Files only their owner may read: kubeconfigs with tokens, certificates' keys, the simulated service
//! principal's secret.

use std::path::Path;

use anyhow::Context as _;

/// Writes `data` to `path` with mode 0600: a new file is created so (never readable by others, not even for
/// a moment), an existing one is narrowed to it before the data goes in.
pub fn write_private(path: &Path, data: impl AsRef<[u8]>) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    f.write_all(data.as_ref())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn new_and_existing_files_end_up_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = dir.path().join("fresh");
        write_private(&fresh, "token").expect("writes");
        let existing = dir.path().join("existing");
        std::fs::write(&existing, "old, longer text").expect("seed");
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&existing, b"new").expect("writes");
        for (path, text) in [(&fresh, "token"), (&existing, "new")] {
            let mode = std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
            assert_eq!(std::fs::read_to_string(path).expect("read"), text);
        }
    }
}
