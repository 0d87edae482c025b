//! What the kubelet and the container runtime do for the lab's regular nodes: each node has its own network
//! and mount namespace (its own `/etc/cni/net.d`, `/run/kube-egress-gateway` and `/run/wireguard`), and pods
//! get a network namespace plus a CNI ADD of the node's first conflist, plugin by plugin, as libcni runs it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use dataplane::ANNOTATIONS_CAPABILITY;
use serde_json::{Value, json};

use super::procs::run_checked;

/// Where Debian's containernetworking-plugins are.
pub const CNI_DIR: &str = "/usr/lib/cni";
/// Host paths a node's mount namespace replaces with directories of its own (created on the host as empty
/// mount points when missing).
pub const NODE_PRIVATE_DIRS: [(&str, &str); 3] = [
    ("/etc/cni/net.d", "net.d"),
    ("/run/kube-egress-gateway", "run-kube-egress-gateway"),
    ("/run/wireguard", "run-wireguard"),
];

/// One regular node as the runtime sees it.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    /// `ip netns` name.
    pub netns: String,
    /// Persisted mount namespace (a file under the lab's private mount directory).
    pub mntns: PathBuf,
    /// Host directory behind the node's private dirs (`<dir>/net.d`, ...).
    pub dir: PathBuf,
    /// Directories searched for plugin binaries (CNI_PATH).
    pub cni_path: Vec<PathBuf>,
}

/// A pod sandbox the runtime set up.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub namespace: String,
    pub name: String,
    /// The Pod's uid, which containerd and CRI-O pass as `K8S_POD_UID`.
    pub pod_uid: String,
    pub container_id: String,
    /// `ip netns` name.
    pub netns: String,
    pub annotations: BTreeMap<String, String>,
    /// Each plugin's conf as run by ADD, and the final result (DEL's prevResult).
    pub result: Value,
}

impl Sandbox {
    /// The pod's IPv4 from the CNI result.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.result["ips"]
            .as_array()?
            .iter()
            .find_map(|i| i["address"].as_str()?.split('/').next()?.parse::<Ipv4Addr>().ok())
    }

    /// Interface names in the CNI result.
    pub fn interfaces(&self) -> Vec<String> {
        self.result["interfaces"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Persists a new mount namespace at `file` in which the node's private dirs are bind mounts of `dir`'s
/// subdirectories. `file`'s directory must be a private mount ([`private_mount_dir`]).
pub fn create_mount_ns(file: &Path, dir: &Path) -> anyhow::Result<()> {
    let mut script = String::from("set -e\n");
    for (target, sub) in NODE_PRIVATE_DIRS {
        let src = dir.join(sub);
        std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
        std::fs::create_dir_all(target).with_context(|| format!("creating mount point {target}"))?;
        script.push_str(&format!("mount --bind '{}' '{target}'\n", src.display()));
    }
    std::fs::write(file, b"").with_context(|| format!("creating {}", file.display()))?;
    // slave: later `ip netns add`s on the host (pod namespaces) still appear in the node's /run/netns.
    run_checked(
        std::process::Command::new("unshare")
            .arg(format!("--mount={}", file.display()))
            .args(["--propagation", "slave", "sh", "-c", &script]),
        "running unshare",
        format_args!("unshare --mount={}", file.display()),
    )?;
    Ok(())
}

/// Makes `dir` a private bind mount of itself, so mount namespaces can be persisted in it.
pub fn private_mount_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for args in [
        vec!["--bind", &*dir.to_string_lossy(), &*dir.to_string_lossy()],
        vec!["--make-private", &*dir.to_string_lossy()],
    ] {
        run_checked(
            std::process::Command::new("mount").args(&args),
            "running mount",
            format_args!("mount {}", args.join(" ")),
        )?;
    }
    Ok(())
}

/// Unmounts `path` (lazily, so a busy mount still goes); Ok when it was not mounted.
pub fn unmount(path: &Path) -> anyhow::Result<()> {
    if !mounts_under(path).iter().any(|m| Path::new(m) == path) {
        return Ok(());
    }
    run_checked(
        std::process::Command::new("umount").arg("-l").arg(path),
        "running umount",
        format_args!("umount {}", path.display()),
    )?;
    Ok(())
}

/// Mount points (of this process's mount namespace) at or under `path`.
pub fn mounts_under(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(path))
        .map(str::to_string)
        .collect()
}

impl Node {
    /// The node's CNI configuration directory as seen from the host.
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    /// The node's `/run/wireguard` as seen from the host.
    pub fn wireguard_dir(&self) -> PathBuf {
        self.dir.join("run-wireguard")
    }

    /// The wireguard-go sockets in the node's `/run/wireguard` (pods' tunnels that are still up); an error when
    /// the directory cannot be read, which would otherwise look like no tunnel at all.
    pub fn wireguard_sockets(&self) -> anyhow::Result<Vec<String>> {
        let dir = self.wireguard_dir();
        let entries = std::fs::read_dir(&dir)
            .and_then(|d| d.collect::<std::io::Result<Vec<_>>>())
            .with_context(|| format!("reading {}'s /run/wireguard ({})", self.name, dir.display()))?;
        Ok(entries
            .iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }

    /// `nsenter` arguments that run a program inside the node (network + mount namespace).
    pub fn enter_args(&self) -> Vec<String> {
        vec![
            format!("--net={}", super::dataplane::netns_path(&self.netns).display()),
            format!("--mount={}", self.mntns.display()),
            "--".into(),
        ]
    }

    /// The configuration the runtime uses: the lexicographically first `.conflist`, `.conf` or `.json`.
    pub fn network_config(&self) -> anyhow::Result<(String, Value)> {
        let dir = self.conf_dir();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| [".conflist", ".conf", ".json"].iter().any(|x| n.ends_with(x)))
            .collect();
        names.sort();
        let first = names
            .into_iter()
            .next()
            .with_context(|| format!("no CNI configuration in {}", dir.display()))?;
        let text = std::fs::read_to_string(dir.join(&first)).with_context(|| format!("reading {first}"))?;
        let mut conf: Value = serde_json::from_str(&text).with_context(|| format!("{first} is not JSON"))?;
        if conf.get("plugins").is_none() {
            // A single-plugin .conf is a list of one.
            conf = json!({"cniVersion": conf["cniVersion"], "name": conf["name"], "plugins": [conf]});
        }
        Ok((first, conf))
    }

    /// CNI ADD of the whole chain for a pod whose network namespace exists; returns the sandbox.
    pub fn add(
        &self,
        namespace: &str,
        name: &str,
        pod_uid: &str,
        container_id: &str,
        netns: &str,
        annotations: &BTreeMap<String, String>,
    ) -> anyhow::Result<Sandbox> {
        let (file, list) = self.network_config()?;
        let plugins = list["plugins"].as_array().cloned().unwrap_or_default();
        if plugins.is_empty() {
            bail!("{file} has no plugins");
        }
        let mut sandbox = Sandbox {
            namespace: namespace.into(),
            name: name.into(),
            pod_uid: pod_uid.into(),
            container_id: container_id.into(),
            netns: netns.into(),
            annotations: annotations.clone(),
            result: Value::Null,
        };
        let mut prev: Option<Value> = None;
        for p in &plugins {
            let conf = plugin_conf(&list, p, annotations, prev.as_ref());
            let out = self
                .exec(&sandbox, "ADD", &conf)
                .with_context(|| format!("{file}: ADD of plugin {}", p["type"]))?;
            prev = Some(out);
        }
        sandbox.result = prev.unwrap_or(Value::Null);
        Ok(sandbox)
    }

    /// CNI DEL of the chain (plugins in reverse order, each with the ADD result as prevResult).
    pub fn del(&self, sandbox: &Sandbox) -> anyhow::Result<()> {
        let (file, list) = self.network_config()?;
        let plugins = list["plugins"].as_array().cloned().unwrap_or_default();
        let mut errors = Vec::new();
        for p in plugins.iter().rev() {
            let prev = (!sandbox.result.is_null()).then_some(&sandbox.result);
            let conf = plugin_conf(&list, p, &sandbox.annotations, prev);
            if let Err(e) = self.exec(sandbox, "DEL", &conf) {
                errors.push(format!("{file}: DEL of plugin {}: {e:#}", p["type"]));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("; "))
        }
    }

    fn find_plugin(&self, ty: &str) -> anyhow::Result<PathBuf> {
        if ty.is_empty() || ty.contains('/') {
            bail!("invalid plugin type {ty:?}");
        }
        self.cni_path
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.is_file())
            .with_context(|| format!("plugin {ty} not found in CNI_PATH {:?}", self.cni_path))
    }

    /// Runs one plugin inside the node, as a runtime does: env, conf on stdin, result on stdout.
    fn exec(&self, sandbox: &Sandbox, command: &str, conf: &Value) -> anyhow::Result<Value> {
        use std::io::Write as _;
        let ty = conf["type"].as_str().unwrap_or_default();
        let bin = self.find_plugin(ty)?;
        let cni_path = std::env::join_paths(&self.cni_path).context("CNI_PATH")?;
        let mut child = std::process::Command::new("nsenter")
            .args(self.enter_args())
            .arg(&bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &sandbox.container_id)
            .env("CNI_NETNS", super::dataplane::netns_path(&sandbox.netns))
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    sandbox.namespace, sandbox.name, sandbox.container_id, sandbox.pod_uid
                ),
            )
            .env("CNI_PATH", cni_path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.to_string().as_bytes())
                .context("writing the plugin's configuration")?;
        }
        let out = child.wait_with_output().context("waiting for the plugin")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            // A CNI error is JSON {code, msg, details} on stdout.
            let msg = serde_json::from_str::<Value>(&stdout)
                .ok()
                .and_then(|v| {
                    Some(format!(
                        "{} (code {})",
                        v["msg"].as_str()?,
                        v["code"].as_u64().unwrap_or_default()
                    ))
                })
                .unwrap_or_else(|| {
                    format!(
                        "{} {}",
                        stdout.trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                });
            bail!("{} {command} failed: {msg}", bin.display());
        }
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).with_context(|| format!("{} printed no JSON: {stdout}", bin.display()))
    }
}

/// One plugin's stdin: the list's name and version, the plugin's keys, `runtimeConfig` for the capabilities
/// the plugin declares (only the pod-annotations one here), and `prevResult`.
pub fn plugin_conf(
    list: &Value,
    plugin: &Value,
    annotations: &BTreeMap<String, String>,
    prev: Option<&Value>,
) -> Value {
    let mut conf = plugin.clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    if plugin
        .pointer(&format!(
            "/capabilities/{}",
            ANNOTATIONS_CAPABILITY.replace('/', "~1")
        ))
        .and_then(Value::as_bool)
        == Some(true)
    {
        conf["runtimeConfig"] = json!({ ANNOTATIONS_CAPABILITY: annotations });
    }
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    conf
}

/// The primary CNI configuration of a node, as a kubenet-like cluster would install it.
pub fn primary_conflist(pod_cidr: &str, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "kubenet",
        "plugins": [{
            "type": "bridge", "bridge": "cbr0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
            "ipam": {"type": "host-local", "dataDir": ipam_dir, "ranges": [[{"subnet": pod_cidr}]],
                "routes": [{"dst": "0.0.0.0/0"}]}
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_conf_passes_runtime_config_only_to_plugins_that_declare_the_capability() {
        let list = json!({"cniVersion": "1.0.0", "name": "kubenet", "plugins": []});
        let ann = BTreeMap::from([("a".to_string(), "b".to_string())]);
        let bridge = plugin_conf(&list, &json!({"type": "bridge"}), &ann, None);
        assert_eq!(
            bridge,
            json!({"type": "bridge", "cniVersion": "1.0.0", "name": "kubenet"})
        );
        let ours = json!({"type": "kube-egress-cni", "capabilities": {ANNOTATIONS_CAPABILITY: true}});
        let prev = json!({"ips": []});
        let c = plugin_conf(&list, &ours, &ann, Some(&prev));
        assert_eq!(c["runtimeConfig"][ANNOTATIONS_CAPABILITY]["a"], "b");
        assert_eq!(c["prevResult"], prev);
        // libcni passes the plugin's keys through unchanged, `capabilities` included.
        assert_eq!(c["capabilities"], ours["capabilities"]);
    }
}
