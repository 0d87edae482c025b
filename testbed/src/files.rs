//! Files only their owner may read: kubeconfigs with tokens, certificates' keys, the simulated service
//! principal's secret.

use std::path::Path;

use anyhow::Context as _;

/// Writes `data` to `path`, created (or truncated) with mode 0600 so it is never readable by others, not
/// even for a moment.
pub fn write_private(path: &Path, data: impl AsRef<[u8]>) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data.as_ref())
        .with_context(|| format!("writing {}", path.display()))
}
