//! `lab --from-images`: every component runs from its release image (`podman run`) instead of the binary in
//! `--bin-dir`, in the namespaces the binary mode enters with `nsenter`: the host's network for the operator
//! and the webhook, a gateway VM's network namespace for a gateway agent, a node's network namespace for a node
//! agent, with the node's private directories mounted where the chart mounts the host's. Each container gets
//! the chart's security context (user, read-only root, capabilities; privileged only where the chart is), its
//! Secret volumes, hostPaths and service-account kubeconfig. The chart's init containers run from the image
//! too: the gateway agent's `netns-init` (privileged, as in the chart) creates the gateway namespace, the node
//! agent's `cni-install` copies the image's CNI plugin into the node's plugin directory.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::chart::{HostPath, LaunchSpec, normalize_run};
use super::runtime::{self, NODE_PRIVATE_DIRS};

/// The node's plugin directory (the chart's `gatewayCNIManager.cniBinDir`), which only the node agent's
/// `cni-install` writes: under the node's directory as `cni-bin`, which the runtime then searches.
const NODE_CNI_BIN: (&str, &str) = ("/opt/cni/bin", "cni-bin");

/// Where a component runs.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    /// The host's namespaces (the lab's Deployments: operator and webhook).
    Host,
    /// A gateway VM: network namespace `ip netns` name; the host's mounts.
    Netns(&'a str),
    /// A regular node: its network namespace and private directories.
    Node(&'a runtime::Node),
}

impl Place<'_> {
    /// `nsenter` arguments of the binary mode (empty for the host).
    pub fn nsenter_args(&self) -> Vec<String> {
        match self {
            Place::Host => Vec::new(),
            Place::Netns(ns) => vec![
                format!("--net={}", super::dataplane::netns_path(ns).display()),
                "--".to_string(),
            ],
            Place::Node(n) => n.enter_args(),
        }
    }

    fn network(&self) -> String {
        match self {
            Place::Host => "--network=host".to_string(),
            Place::Netns(ns) => format!("--network=ns:{}", super::dataplane::netns_path(ns).display()),
            Place::Node(n) => format!(
                "--network=ns:{}",
                super::dataplane::netns_path(&n.netns).display()
            ),
        }
    }

    /// The host directory behind the chart's hostPath `path` at this place.
    fn host_dir(&self, path: &str) -> anyhow::Result<PathBuf> {
        match self {
            Place::Node(n) => NODE_PRIVATE_DIRS
                .iter()
                .chain([NODE_CNI_BIN].iter())
                .find(|(target, _)| normalize_run(target) == normalize_run(path))
                .map(|(_, sub)| n.dir.join(sub))
                .with_context(|| {
                    format!(
                        "node {}: hostPath {path} is not one of the node's directories",
                        n.name
                    )
                }),
            _ => Ok(PathBuf::from(path)),
        }
    }
}

/// How the lab runs images: the OCI runtime and the prefix of its container names.
#[derive(Debug, Clone)]
pub struct ImageMode {
    pub runtime: String,
    pub prefix: String,
}

impl ImageMode {
    /// crun refuses hosts whose cgroups are in hybrid mode (v1 controllers plus a v2 hierarchy with
    /// controllers); runc runs there.
    pub fn detect() -> ImageMode {
        let hybrid = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
            .is_ok_and(|c| !c.trim().is_empty());
        ImageMode {
            runtime: if hybrid { "runc" } else { "crun" }.to_string(),
            prefix: format!("keg-lab-{}-", std::process::id()),
        }
    }

    /// `podman` arguments shared by every container: removed when it stops, never pulled, resource limits
    /// no higher than the lab's own (raising them needs CAP_SYS_RESOURCE).
    fn base(&self, name: &str) -> Vec<String> {
        vec![
            "--runtime".into(),
            self.runtime.clone(),
            "run".into(),
            "--rm".into(),
            "--pull=never".into(),
            format!("--name={}{name}", self.prefix),
            format!("--ulimit=nofile={n}:{n}", n = nofile_limit()),
            "--ulimit=nproc=4096:4096".into(),
        ]
    }

    /// The `podman` arguments that run `spec` as container `name` at `place`, authenticating with
    /// `kubeconfig`.
    pub fn run_args(
        &self,
        name: &str,
        spec: &LaunchSpec,
        place: &Place<'_>,
        kubeconfig: &Path,
    ) -> anyhow::Result<Vec<String>> {
        let mut a = self.base(name);
        a.push(place.network());
        a.extend(security_flags(&spec.security_context));
        // Secret volumes, materialised by the lab where the (localised) arguments point.
        let mut dirs: Vec<&Path> = spec.secret_files.iter().filter_map(|f| f.path.parent()).collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            a.push(format!("--volume={0}:{0}:ro", d.display()));
        }
        for h in &spec.host_paths {
            if h.char_device {
                a.push(device_arg(h)?);
                continue;
            }
            let host = place.host_dir(&h.host_path)?;
            create_host_dir(&host)?;
            // The gateway agent sees namespaces created on the host later (HostToContainer in the chart).
            let propagation = if normalize_run(&h.mount_path) == "/run/netns" {
                ":rslave"
            } else {
                ""
            };
            a.push(format!(
                "--volume={}:{}{propagation}",
                host.display(),
                h.mount_path
            ));
        }
        a.push(format!("--volume={0}:{0}:ro", kubeconfig.display()));
        for (k, v) in &spec.env {
            a.push(format!("--env={k}={v}"));
        }
        a.push(format!("--env=KUBECONFIG={}", kubeconfig.display()));
        a.push(spec.image.clone());
        a.extend(spec.argv());
        Ok(a)
    }

    /// The `podman` arguments that run init container `c` (as rendered) at `place`, its hostPath volumes
    /// (`volumes`: the pod's volumes) mounted from the place, with `replace` applied to its arguments.
    pub fn init_args(
        &self,
        name: &str,
        c: &Value,
        volumes: &[Value],
        place: &Place<'_>,
        replace: Option<(&str, &str)>,
    ) -> anyhow::Result<Vec<String>> {
        let mut a = self.base(name);
        a.push(match place {
            Place::Node(_) => "--network=none".to_string(),
            p => p.network(),
        });
        a.extend(security_flags(c.get("securityContext").unwrap_or(&Value::Null)));
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let vname = m["name"].as_str().unwrap_or_default();
            let v = volumes
                .iter()
                .find(|v| v["name"] == vname)
                .with_context(|| format!("init container mounts {vname}, which the pod does not have"))?;
            let Some(path) = v.pointer("/hostPath/path").and_then(Value::as_str) else {
                bail!("init container volume {vname} is not a hostPath; the lab mounts only those");
            };
            let propagation = match m["mountPropagation"].as_str() {
                Some("Bidirectional") => ":rshared",
                Some("HostToContainer") => ":rslave",
                _ => "",
            };
            let mount_path = m["mountPath"].as_str().unwrap_or_default();
            let host = place.host_dir(path)?;
            create_host_dir(&host)?;
            a.push(format!("--volume={}:{mount_path}{propagation}", host.display()));
        }
        let command: Vec<String> = strings(&c["command"]);
        let Some((entry, rest)) = command.split_first() else {
            bail!("init container has no command");
        };
        a.push(format!("--entrypoint={entry}"));
        a.push(
            c["image"]
                .as_str()
                .context("init container has no image")?
                .to_string(),
        );
        a.extend(rest.iter().cloned());
        a.extend(strings(&c["args"]).into_iter().map(|s| match replace {
            Some((from, to)) => s.replace(from, to),
            None => s,
        }));
        Ok(a)
    }

    /// Runs an init container to completion; fails with its output unless it exits 0.
    pub async fn run_init(&self, args: &[String]) -> anyhow::Result<()> {
        let out = tokio::process::Command::new("podman")
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("running podman")?;
        if !out.status.success() {
            bail!(
                "podman {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Fails naming the images that podman's local storage lacks (the lab never pulls).
    pub fn check_present(&self, images: &[String]) -> anyhow::Result<()> {
        let missing: Vec<&String> = images
            .iter()
            .filter(|i| {
                !std::process::Command::new("podman")
                    .args(["image", "exists", i.as_str()])
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .collect();
        if !missing.is_empty() {
            bail!(
                "--from-images: podman has no {missing:?}; build them with scripts/release.sh (or images/build.sh --bin-dir <release binaries>)"
            );
        }
        Ok(())
    }

    /// Removes every container of this lab that is left (a `podman run` killed before its container
    /// stopped); returns their names.
    pub fn remove_leftovers(&self) -> Vec<String> {
        let out = std::process::Command::new("podman")
            .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
            .arg(format!("name=^{}", self.prefix))
            .output();
        let names: Vec<String> = out
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        for n in &names {
            let _ = std::process::Command::new("podman")
                .args(["rm", "-f", "-t", "2", n])
                .output();
        }
        names
    }
}

/// Makes the files a container reads its own, as the kubelet does for a pod's Secret volumes and token:
/// the Secret files (already private copies) are given to the container's user, and the service account's
/// kubeconfig is copied into `dir` for it. Returns that copy.
pub fn hand_over(spec: &LaunchSpec, kubeconfig: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let sc = &spec.security_context;
    let (uid, gid) = if sc["privileged"].as_bool() == Some(true) {
        (0, 0)
    } else {
        let uid = sc["runAsUser"].as_u64().unwrap_or(0);
        (uid, sc["runAsGroup"].as_u64().unwrap_or(uid))
    };
    let (uid, gid) = (
        u32::try_from(uid).context("runAsUser out of range")?,
        u32::try_from(gid).context("runAsGroup out of range")?,
    );
    for f in &spec.secret_files {
        std::os::unix::fs::chown(&f.path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", f.path.display()))?;
        if let Some(d) = f.path.parent() {
            std::os::unix::fs::chown(d, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", d.display()))?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let copy = dir.join("kubeconfig");
    std::fs::copy(kubeconfig, &copy).with_context(|| format!("copying {}", kubeconfig.display()))?;
    std::os::unix::fs::chown(&copy, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", copy.display()))?;
    Ok(copy)
}

/// podman options for a Kubernetes container securityContext.
pub fn security_flags(sc: &Value) -> Vec<String> {
    if sc["privileged"].as_bool() == Some(true) {
        return vec!["--privileged".into(), "--user=0".into()];
    }
    let mut f = Vec::new();
    match (sc["runAsUser"].as_u64(), sc["runAsGroup"].as_u64()) {
        (Some(u), Some(g)) => f.push(format!("--user={u}:{g}")),
        (Some(u), None) => f.push(format!("--user={u}")),
        _ => {}
    }
    if sc["readOnlyRootFilesystem"].as_bool() == Some(true) {
        f.push("--read-only".into());
    }
    let caps = &sc["capabilities"];
    if strings(&caps["drop"]).iter().any(|c| c == "ALL") {
        f.push("--cap-drop=ALL".into());
    }
    for c in strings(&caps["add"]) {
        f.push(format!("--cap-add={c}"));
    }
    if sc["allowPrivilegeEscalation"].as_bool() == Some(false) {
        f.push("--security-opt=no-new-privileges".into());
    }
    f
}

/// A `CharDevice` hostPath as podman's `--device`: the device node, and access to it in the container's
/// device cgroup, which is what a kubelet's bind mount of it gives (runc and crun allow the TUN device by
/// default). Like the kubelet, refuses a path that is not a character device.
fn device_arg(h: &HostPath) -> anyhow::Result<String> {
    use std::os::unix::fs::FileTypeExt as _;
    let meta = std::fs::metadata(&h.host_path)
        .with_context(|| format!("hostPath {} (type CharDevice)", h.host_path))?;
    if !meta.file_type().is_char_device() {
        bail!(
            "hostPath {} is not a character device (type CharDevice)",
            h.host_path
        );
    }
    Ok(format!("--device={}:{}", h.host_path, h.mount_path))
}

/// The chart's other hostPaths are `DirectoryOrCreate`: the kubelet creates a missing one.
fn create_host_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating hostPath {}", dir.display()))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// The lab's open-files limit (its hard limit), which containers get too.
fn nofile_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn security_flags_follow_the_charts_security_context() {
        let restricted = json!({"runAsUser": 65532, "runAsGroup": 65532, "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
        assert_eq!(
            security_flags(&restricted),
            [
                "--user=65532:65532",
                "--read-only",
                "--cap-drop=ALL",
                "--security-opt=no-new-privileges"
            ]
        );
        let gateway = json!({"runAsUser": 0, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]}});
        assert_eq!(
            security_flags(&gateway),
            [
                "--user=0",
                "--read-only",
                "--cap-drop=ALL",
                "--cap-add=NET_ADMIN",
                "--cap-add=NET_RAW",
                "--cap-add=SYS_ADMIN"
            ]
        );
        // Privileged only where the chart says so, and then nothing else matters.
        assert_eq!(
            security_flags(&json!({"privileged": true, "runAsUser": 0})),
            ["--privileged", "--user=0"]
        );
        assert!(!security_flags(&gateway).iter().any(|f| f == "--privileged"));
    }

    #[test]
    fn char_device_host_paths_become_devices_and_must_be_devices() {
        let device = |path: &str| HostPath {
            mount_path: path.into(),
            host_path: path.into(),
            char_device: true,
        };
        assert_eq!(
            device_arg(&device("/dev/null")).expect("a character device"),
            "--device=/dev/null:/dev/null"
        );
        let dir = std::env::temp_dir();
        let err = device_arg(&device(&dir.display().to_string())).expect_err("a directory");
        assert!(err.to_string().contains("is not a character device"), "{err}");
        let err = device_arg(&device("/dev/keg-lab-no-such-device")).expect_err("missing");
        assert!(format!("{err:#}").contains("keg-lab-no-such-device"), "{err:#}");
    }

    #[test]
    fn init_containers_mount_their_host_paths_with_the_charts_propagation() {
        let mode = ImageMode {
            runtime: "runc".into(),
            prefix: "keg-lab-1-".into(),
        };
        let c = json!({"name": "netns-init", "image": "r/kube-egress-gateway-agent:1", "command": ["/bin/sh", "-ec"],
            "args": ["ip netns add ns-static-egress-gateway"], "securityContext": {"privileged": true, "runAsUser": 0},
            "volumeMounts": [{"name": "netns", "mountPath": "/var/run/netns", "mountPropagation": "Bidirectional"}]});
        let vols = [json!({"name": "netns", "hostPath": {"path": "/var/run/netns"}})];
        let a = mode
            .init_args(
                "gw-0-init",
                &c,
                &vols,
                &Place::Netns("vm0"),
                Some(("ns-static-egress-gateway", "vm0-egw")),
            )
            .expect("args");
        let s = a.join(" ");
        assert!(
            s.starts_with("--runtime runc run --rm --pull=never --name=keg-lab-1-gw-0-init"),
            "{s}"
        );
        assert!(s.contains("--network=ns:/var/run/netns/vm0"), "{s}");
        assert!(s.contains("--privileged"), "{s}");
        assert!(
            s.contains("--volume=/var/run/netns:/var/run/netns:rshared"),
            "{s}"
        );
        assert!(
            s.ends_with("--entrypoint=/bin/sh r/kube-egress-gateway-agent:1 -ec ip netns add vm0-egw"),
            "{s}"
        );
    }
}
