//! CNI configuration manager (node mode): keeps our conflist chained after the node's primary CNI
//! configuration, regenerates it when the primary changes, and removes it on shutdown when the
//! `cni-uninstall` ConfigMap asks for it (as upstream's cnimanager, https://github.com/Azure/kube-egress-gateway/tree/main/pkg/cni/conf).
//!
//! The directory is polled (cheap: one `readdir` + `stat` per file) rather than watched with inotify, so it
//! also works on filesystems without inotify and needs no extra dependency.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use api::names::CNI_PLUGIN_TYPE;
use serde_json::Value;
use tokio::sync::watch;

use crate::admin::NotReady;
use crate::error::{CniConfigError, CniInstallError, FileError};
use crate::metrics::Metrics;
use crate::node::chained_conflist;

/// The name [`ConfManager::run`] records its problems under in [`NotReady`].
pub const NOT_READY_SOURCE: &str = "cni_config";

/// Extensions of CNI configuration files.
const CNI_EXTENSIONS: [&str; 3] = [".conflist", ".conf", ".json"];

/// The primary configuration: the lexicographically first `.conflist|.conf|.json` regular file that is not ours.
pub fn primary_file(mut names: Vec<String>, ours: &str) -> Option<String> {
    names.retain(|n| n != ours && CNI_EXTENSIONS.iter().any(|e| n.ends_with(e)));
    names.sort();
    names.into_iter().next()
}

/// Whether the CNI configuration `v` (a `.conflist`'s `plugins`, or a single `.conf`) runs our plugin
/// ([`CNI_PLUGIN_TYPE`]).
fn runs_our_plugin(v: &Value) -> bool {
    let is_it = |p: &Value| p.get("type").and_then(Value::as_str) == Some(CNI_PLUGIN_TYPE);
    match v.get("plugins").and_then(Value::as_array) {
        Some(plugins) => plugins.iter().any(is_it),
        None => is_it(v),
    }
}

/// Whether our file should be removed on shutdown, from the `cni-uninstall` ConfigMap's `data.uninstall`:
/// no ConfigMap keeps the file; `"false"` keeps it; anything else removes it.
pub fn should_uninstall(configmap_data: Option<Option<&str>>) -> bool {
    match configmap_data {
        None => false,
        Some(v) => v != Some("false"),
    }
}

/// What an install pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// Our file was written (new or changed content); the primary file's name.
    Written(String),
    /// Our file already had the right content.
    Unchanged(String),
    /// No primary configuration yet.
    NoPrimary,
}

/// The manager.
#[derive(Debug, Clone)]
pub struct ConfManager {
    /// `/etc/cni/net.d`.
    pub dir: PathBuf,
    /// Our file name (`01-egressgateway.conflist`).
    pub file_name: String,
    /// Our plugin entry.
    pub entry: Value,
}

fn regular_files(dir: &Path) -> Result<Vec<(String, u64, Option<SystemTime>)>, FileError> {
    let rd = std::fs::read_dir(dir).map_err(FileError::at("read", dir))?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        // Through symlinks, as runtimes load them.
        let Ok(meta) = std::fs::metadata(e.path()) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if let Some(n) = e.file_name().to_str() {
            out.push((n.to_string(), meta.len(), meta.modified().ok()));
        }
    }
    out.sort();
    Ok(out)
}

/// What a change of the directory is judged by: its regular files without in-flight `.tmp` writes.
fn dir_snapshot(dir: &Path) -> Option<Vec<(String, u64, Option<SystemTime>)>> {
    let mut v = regular_files(dir).ok()?;
    v.retain(|f| !f.0.ends_with(".tmp"));
    Some(v)
}

impl ConfManager {
    /// Our file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file_name)
    }

    /// Writes our conflist from the current primary configuration when it differs from what is on disk.
    /// A primary that sorts before our file is an error ([`CniInstallError::Shadowed`]): the runtime would
    /// load it, never ours.
    pub fn install(&self) -> Result<Installed, CniInstallError> {
        let mut names: Vec<String> = regular_files(&self.dir)?.into_iter().map(|f| f.0).collect();
        names.retain(|n| !self.remove_if_an_earlier_copy_of_ours(n));
        let Some(primary) = primary_file(names, &self.file_name) else {
            return Ok(Installed::NoPrimary);
        };
        // Runtimes (libcni's ConfFiles) sort the names byte by byte, as `str`'s order does.
        if primary.as_str() < self.file_name.as_str() {
            return Err(CniInstallError::Shadowed {
                dir: self.dir.display().to_string(),
                ours: self.file_name.clone(),
                by: primary,
            });
        }
        let ppath = self.dir.join(&primary);
        let text = std::fs::read_to_string(&ppath).map_err(FileError::at("read", &ppath))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| CniConfigError::NotJson {
            file: ppath.display().to_string(),
            message: e.to_string(),
        })?;
        let ours = chained_conflist(&primary, &value, &self.entry)?;
        let mut bytes = serde_json::to_vec_pretty(&ours)?;
        bytes.push(b'\n');
        let target = self.path();
        if std::fs::read(&target).ok().as_deref() == Some(bytes.as_slice()) {
            return Ok(Installed::Unchanged(primary));
        }
        let tmp = self.dir.join(format!("{}.tmp", self.file_name));
        std::fs::write(&tmp, &bytes).map_err(FileError::at("write", &tmp))?;
        std::fs::rename(&tmp, &target).map_err(FileError::at("rename to", &target))?;
        Ok(Installed::Written(primary))
    }

    /// Whether `name` is an earlier copy of our conflist under another name (the agent ran with another
    /// `--cni-conf-file`): a CNI configuration file other than ours that chains our plugin. It is removed (an
    /// earlier copy chains an old primary, and would shadow ours or be taken for the primary). Returns true
    /// when it is such a copy, removed or not (a copy is never the primary).
    fn remove_if_an_earlier_copy_of_ours(&self, name: &str) -> bool {
        if name == self.file_name || !CNI_EXTENSIONS.iter().any(|e| name.ends_with(e)) {
            return false;
        }
        let path = self.dir.join(name);
        let chains_ours = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| runs_our_plugin(&v));
        if chains_ours {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::warn!(file = %path.display(), "removed an earlier copy of our CNI configuration")
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot remove an earlier copy of our CNI configuration")
                }
            }
        }
        chains_ours
    }

    /// Removes our file (absent is fine).
    pub fn uninstall(&self) -> Result<(), FileError> {
        match std::fs::remove_file(self.path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FileError::at("remove", self.path())(e)),
        }
    }

    /// Polls the directory every `interval`, installing on every change of any file except ours (and on
    /// changes to ours, to undo edits by others). `installed` becomes true once our file is in place. While
    /// another configuration shadows ours, `not_ready` holds the problem (the agent is not ready).
    pub async fn run(
        self,
        interval: Duration,
        metrics: Arc<Metrics>,
        installed: watch::Sender<bool>,
        not_ready: NotReady,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut last = None;
        let mut first = true;
        loop {
            let snapshot = dir_snapshot(&self.dir);
            if snapshot != last || snapshot.is_none() {
                let op = if first { "install" } else { "regenerate" };
                let result = self.install();
                match &result {
                    Err(e @ CniInstallError::Shadowed { .. }) => {
                        not_ready.set(NOT_READY_SOURCE, e.to_string())
                    }
                    _ => not_ready.clear(NOT_READY_SOURCE),
                }
                match result {
                    Ok(Installed::Written(p)) => {
                        tracing::info!(primary = %p, file = %self.path().display(), "CNI configuration written");
                        first = false;
                        let _ = installed.send(true);
                    }
                    Ok(Installed::Unchanged(_)) => {
                        first = false;
                        let _ = installed.send(true);
                    }
                    Ok(Installed::NoPrimary) => {
                        tracing::info!(dir = %self.dir.display(), "no existing cni plugin configuration file found");
                    }
                    Err(e) => {
                        metrics.cni_config_failed(op);
                        tracing::error!(error = %e, reason = e.reason(), operation = op, "CNI configuration");
                    }
                }
                // Re-read so our own write does not count as a change.
                last = dir_snapshot(&self.dir);
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> Value {
        crate::node::plugin_entry(&["169.254.169.254/32".into()], Path::new("/run/x.sock"))
    }

    #[test]
    fn primary_is_first_config_that_is_not_ours() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            primary_file(
                names(&[
                    "10-b.conf",
                    "01-egressgateway.conflist",
                    "05-a.conflist",
                    "README"
                ]),
                "01-egressgateway.conflist"
            ),
            Some("05-a.conflist".into())
        );
        assert_eq!(primary_file(names(&["x.txt"]), "01-egressgateway.conflist"), None);
        assert_eq!(
            primary_file(
                names(&["99.json", "01-egressgateway.conflist"]),
                "01-egressgateway.conflist"
            ),
            Some("99.json".into())
        );
    }

    #[test]
    fn uninstall_decision_follows_the_configmap() {
        assert!(!should_uninstall(None));
        assert!(!should_uninstall(Some(Some("false"))));
        assert!(should_uninstall(Some(Some("true"))));
        assert!(should_uninstall(Some(None)));
    }

    #[test]
    fn install_writes_once_and_follows_primary_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = ConfManager {
            dir: dir.path().to_path_buf(),
            file_name: "01-egressgateway.conflist".into(),
            entry: entry(),
        };
        assert_eq!(m.install().expect("no primary is no error"), Installed::NoPrimary);
        std::fs::write(
            dir.path().join("10-bridge.conflist"),
            json!({"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"},{"type":"portmap"}]})
                .to_string(),
        )
        .expect("write primary");
        assert_eq!(
            m.install().expect("installs"),
            Installed::Written("10-bridge.conflist".into())
        );
        assert_eq!(
            m.install().expect("installs"),
            Installed::Unchanged("10-bridge.conflist".into())
        );
        let v: Value = serde_json::from_slice(&std::fs::read(m.path()).expect("ours")).expect("json");
        assert_eq!(v["plugins"][1]["type"], "kube-egress-cni");
        assert_eq!(v["plugins"][2]["type"], "portmap");
        // primary replaced by a .conf: regenerated from it
        std::fs::remove_file(dir.path().join("10-bridge.conflist")).expect("rm");
        std::fs::write(
            dir.path().join("20-ptp.conf"),
            json!({"cniVersion":"0.4.0","name":"p","type":"ptp"}).to_string(),
        )
        .expect("write conf");
        assert_eq!(
            m.install().expect("installs"),
            Installed::Written("20-ptp.conf".into())
        );
        let v: Value = serde_json::from_slice(&std::fs::read(m.path()).expect("ours")).expect("json");
        assert_eq!(v["plugins"][0]["type"], "ptp");
        std::fs::write(dir.path().join("05-broken.conflist"), "{").expect("broken");
        let broken = m.install().expect_err("broken primary");
        assert_eq!(broken.reason(), "invalid_primary_config");
        assert!(broken.to_string().contains("05-broken.conflist"), "{broken}");
        m.uninstall().expect("remove");
        assert!(!m.path().exists());
        m.uninstall().expect("absent is fine");
    }

    #[test]
    fn an_earlier_copy_of_ours_under_another_name_is_removed_not_taken_for_the_primary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = ConfManager {
            dir: dir.path().to_path_buf(),
            file_name: "00-egressgateway.conflist".into(),
            entry: entry(),
        };
        std::fs::write(
            dir.path().join("10-bridge.conflist"),
            json!({"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]}).to_string(),
        )
        .expect("write primary");
        std::fs::write(dir.path().join("05-other.txt"), "not a CNI configuration").expect("other file");
        // An agent ran with `--cni-conf-file 00-egressgateway.conflist` before: that copy sorts before ours.
        let installed = old.clone();
        assert_eq!(
            installed.install().expect("installs"),
            Installed::Written("10-bridge.conflist".into())
        );
        let now = ConfManager {
            file_name: "01-egressgateway.conflist".into(),
            ..old
        };
        assert_eq!(
            now.install().expect("not shadowed by our own earlier copy"),
            Installed::Written("10-bridge.conflist".into())
        );
        assert!(!installed.path().exists(), "the earlier copy is removed");
        assert!(dir.path().join("05-other.txt").exists());
        // An earlier copy that sorts after ours but before the primary is not taken for the primary either.
        let copy = dir.path().join("05-egress.conflist");
        std::fs::copy(now.path(), &copy).expect("copy");
        assert_eq!(
            now.install().expect("installs"),
            Installed::Unchanged("10-bridge.conflist".into())
        );
        assert!(!copy.exists());
    }

    #[tokio::test]
    async fn run_regenerates_when_the_primary_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = ConfManager {
            dir: dir.path().to_path_buf(),
            file_name: "01-egressgateway.conflist".into(),
            entry: entry(),
        };
        let path = m.path();
        let (itx, mut irx) = watch::channel(false);
        let (stx, srx) = watch::channel(false);
        let task = tokio::spawn(m.run(
            Duration::from_millis(20),
            Arc::new(Metrics::default()),
            itx,
            NotReady::default(),
            srx,
        ));
        std::fs::write(
            dir.path().join("10-a.conflist"),
            json!({"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}).to_string(),
        )
        .expect("primary");
        tokio::time::timeout(Duration::from_secs(5), irx.wait_for(|v| *v))
            .await
            .expect("installed in time")
            .expect("sender alive");
        std::fs::write(
            dir.path().join("10-a.conflist"),
            json!({"cniVersion":"1.0.0","name":"changed","plugins":[{"type":"bridge"}]}).to_string(),
        )
        .expect("primary change");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let v: Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap_or_default()).unwrap_or_default();
            if v["name"] == "changed" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not regenerated");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stx.send(true);
        task.await.expect("join");
    }

    #[tokio::test]
    async fn a_configuration_sorting_before_ours_keeps_the_agent_not_ready_and_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = ConfManager {
            dir: dir.path().to_path_buf(),
            file_name: "01-egressgateway.conflist".into(),
            entry: entry(),
        };
        let primary = json!({"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}).to_string();
        std::fs::write(dir.path().join("00-a.conflist"), &primary).expect("shadowing config");
        let e = m.install().expect_err("shadowed");
        assert_eq!(e.reason(), "shadowed");
        assert!(
            e.to_string()
                .contains("00-a.conflist sorts before ours (01-egressgateway.conflist)"),
            "{e}"
        );
        assert!(!m.path().exists(), "nothing written the runtime would never load");

        let (metrics, not_ready) = (Arc::new(Metrics::default()), NotReady::default());
        let (itx, mut irx) = watch::channel(false);
        let (stx, srx) = watch::channel(false);
        let task = tokio::spawn(m.clone().run(
            Duration::from_millis(20),
            metrics.clone(),
            itx,
            not_ready.clone(),
            srx,
        ));
        let reasons = tokio::time::timeout(Duration::from_secs(5), not_ready.changed_to(|r| r.is_some()))
            .await
            .expect("never not ready")
            .unwrap_or_default();
        assert!(reasons.contains("00-a.conflist"), "{reasons}");
        assert!(
            metrics
                .encode()
                .contains("cnimanager_cni_config_operation_failures_total{operation=\"install\"} 1"),
            "{}",
            metrics.encode()
        );
        assert!(!*irx.borrow(), "not installed while shadowed");
        // Renamed to sort after ours: installed, and the problem is gone.
        std::fs::rename(dir.path().join("00-a.conflist"), dir.path().join("10-a.conflist")).expect("rename");
        tokio::time::timeout(Duration::from_secs(5), irx.wait_for(|v| *v))
            .await
            .expect("installed in time")
            .expect("sender alive");
        assert_eq!(not_ready.reasons(), None);
        let _ = stx.send(true);
        task.await.expect("join");
    }
}
