//! The Terraform provider installed as users install it: the binary packaged as a registry release
//! (`scripts/package-provider.sh`: per-platform zip, SHA256SUMS, detached signature, protocol-6 manifest),
//! verified and laid out as a filesystem mirror (`scripts/provider-mirror.sh`), and a lock file holding the
//! verified checksums, so `terraform init` installs it from the mirror and refuses an archive that does not
//! match. The provider acceptance tests and lab scenario 8 use this; `dev_overrides` stays for the edit loop.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Where a release is published (the repository's `release.env`).
const RELEASE_ENV: &str = include_str!("../../release.env");
/// The scripts that package and mirror a release (one implementation, also run by `scripts/release.sh`).
const PACKAGE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/package-provider.sh");
const MIRROR_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/provider-mirror.sh");

/// A value of `release.env` (`KEY=value` lines, `#` comments).
pub fn release_setting(key: &str) -> Option<&'static str> {
    RELEASE_ENV
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// The provider's full source address, e.g. `registry.terraform.io/kube-egress-gateway-rs/egressgateway`.
pub fn provider_source() -> &'static str {
    release_setting("PROVIDER_SOURCE").unwrap_or("registry.terraform.io/kube-egress-gateway-rs/egressgateway")
}

/// A verified provider release laid out as a filesystem mirror.
#[derive(Debug, Clone)]
pub struct ProviderMirror {
    /// The release folder (zip, SHA256SUMS, signature, manifest, public key).
    pub release: PathBuf,
    /// The filesystem mirror (packed layout).
    pub mirror: PathBuf,
    lock_file: String,
}

impl ProviderMirror {
    /// Packages `binary` into `<dir>/release` and mirrors it into `<dir>/mirror`; `dir` must not exist yet or be
    /// empty.
    pub fn build(binary: &Path, dir: &Path) -> anyhow::Result<ProviderMirror> {
        let release = dir.join("release");
        let mirror = dir.join("mirror");
        let lock = dir.join("terraform.lock.hcl");
        run(Command::new(PACKAGE_SCRIPT)
            .arg("--binary")
            .arg(binary)
            .arg("--out")
            .arg(&release))?;
        run(Command::new(MIRROR_SCRIPT)
            .arg("--release")
            .arg(&release)
            .arg("--mirror")
            .arg(&mirror)
            .arg("--lock-file")
            .arg(&lock))?;
        let lock_file =
            std::fs::read_to_string(&lock).with_context(|| format!("reading {}", lock.display()))?;
        Ok(ProviderMirror {
            release,
            mirror,
            lock_file,
        })
    }

    /// A Terraform CLI configuration that installs our provider from the mirror only (every other provider
    /// as usual).
    pub fn cli_config(&self) -> String {
        let source = provider_source();
        format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path    = \"{}\"\n    include = [\"{source}\"]\n  }}\n  direct {{\n    exclude = [\"{source}\"]\n  }}\n}}\n",
            self.mirror.display()
        )
    }

    /// The dependency lock file (`.terraform.lock.hcl`) with the release's verified checksums; written into a
    /// working directory before `terraform init`, it makes init check the mirrored archive against them.
    pub fn lock_file(&self) -> &str {
        &self.lock_file
    }

    /// Writes the CLI configuration as `<dir>/<cli_config_name>` and the lock file, then runs `terraform init`
    /// there with that configuration (offline: only the mirror is read).
    pub fn init_workspace(&self, dir: &Path, cli_config_name: &str) -> anyhow::Result<()> {
        std::fs::write(dir.join(cli_config_name), self.cli_config())
            .with_context(|| format!("writing {cli_config_name} in {}", dir.display()))?;
        std::fs::write(dir.join(".terraform.lock.hcl"), self.lock_file())
            .with_context(|| format!("writing .terraform.lock.hcl in {}", dir.display()))?;
        let mut cmd = Command::new("terraform");
        cmd.args(["init", "-no-color", "-input=false"]).current_dir(dir);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TF_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("TF_CLI_CONFIG_FILE", dir.join(cli_config_name))
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1");
        run(&mut cmd).context("terraform init from the provider mirror")
    }
}

/// Runs a command to completion; fails with its output unless it exits 0.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}):\n{}\n{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_address_comes_from_release_env() {
        assert_eq!(
            provider_source(),
            "registry.terraform.io/kube-egress-gateway-rs/egressgateway"
        );
        assert!(release_setting("IMAGE_REPOSITORY").is_some());
        assert_eq!(release_setting("NO_SUCH_KEY"), None);
    }

    #[test]
    fn the_cli_configuration_takes_only_our_provider_from_the_mirror() {
        let m = ProviderMirror {
            release: "/r".into(),
            mirror: "/m".into(),
            lock_file: String::new(),
        };
        let c = m.cli_config();
        assert!(c.contains("filesystem_mirror {\n    path    = \"/m\"\n    include = [\"registry.terraform.io/kube-egress-gateway-rs/egressgateway\"]"), "{c}");
        assert!(
            c.contains(
                "direct {\n    exclude = [\"registry.terraform.io/kube-egress-gateway-rs/egressgateway\"]"
            ),
            "{c}"
        );
        assert!(!c.contains("dev_overrides"), "{c}");
    }
}
