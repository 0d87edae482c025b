//! The teardown job: stops everything the lab started, then checks nothing is left.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use super::{DEMO_NS, Lab, Options, lab_tag};
use crate::cluster::Backend;
use crate::lab::procs::live_children;
use crate::lab::report::{info, ok};
use crate::lab::{fabric, runtime};

impl Lab {
    /// Stops everything, then checks nothing is left: no child processes, simulators stopped, work dir gone.
    pub(in crate::lab) async fn teardown(&mut self, opts: &Options) -> anyhow::Result<()> {
        println!("\n==> teardown");
        let mut left = Vec::new();
        if let Some(f) = self.fabric.take() {
            f.stop();
        }
        // Pods first, while the node agents still answer the plugin's DEL (PodEndpoint removal).
        for (node_idx, sb) in std::mem::take(&mut self.pods).into_iter().rev() {
            let Some(node) = self.nodes.get(node_idx).cloned() else {
                continue;
            };
            let name = sb.name.clone();
            match tokio::task::spawn_blocking(move || node.del(&sb)).await {
                Ok(Ok(())) => info(&format!("CNI DEL of pod {DEMO_NS}/{name}")),
                Ok(Err(e)) => left.push(format!("CNI DEL of pod {name} failed: {e:#}")),
                Err(e) => left.push(format!("CNI DEL of pod {name}: {e}")),
            }
        }
        // wireguard-go processes of the lab, by the UAPI socket name they were started with.
        for ns in &self.netns {
            if let Some(i) = crate::lab::dataplane::netns_inode(ns)
                && !self.netns_inodes.contains(&i)
            {
                self.netns_inodes.push(i);
            }
        }
        let wg_sockets: Vec<PathBuf> = crate::lab::dataplane::processes_in(&self.netns_inodes)
            .into_iter()
            .filter(|(_, name)| name == "wireguard-go")
            .filter_map(|(pid, _)| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let last = cmdline.split(|b| *b == 0).rfind(|a| !a.is_empty())?;
                Some(PathBuf::from(format!(
                    "/run/wireguard/{}.sock",
                    String::from_utf8_lossy(last)
                )))
            })
            .collect();
        let stopped = self.children.stop_all(Duration::from_secs(5)).await;
        if let Some(mode) = &opts.images {
            let left = mode.remove_leftovers();
            if !left.is_empty() {
                info(&format!(
                    "removed containers left by killed `podman run`s: {left:?}"
                ));
            }
        }
        if !stopped.is_empty() {
            info(&format!("stopped {}", stopped.join(", ")));
        }
        // The shutdown paths (PodEndpoint deletion at CNI DEL, the agents' and the operator's cleanup on
        // SIGTERM) run with the chart's accounts too: a refusal there is a chart bug like any other.
        let refused = match self.kube.as_ref().map(|kube| self.rbac_refusals(kube)) {
            Some(Ok(r)) => r,
            Some(Err(e)) => vec![format!("cannot tell what the API server refused: {e:#}")],
            None => Vec::new(),
        };
        self.client = None;
        if let Some(h) = self.heartbeat.take() {
            h.stop();
        }
        if let Some(k) = self.kube.take() {
            let what = match k.backend() {
                Backend::Real => {
                    "the control plane (etcd, kube-apiserver, kube-controller-manager) stopped, its folder removed"
                }
                Backend::Sim => "kube-sim stopped",
            };
            k.shutdown().await;
            info(what);
        }
        if self.azure.take().is_some() {
            info("azure-sim stopped");
        }
        for h in self.forwarders.drain(..) {
            h.abort();
        }
        // Anything still living in the lab's namespaces (e.g. wireguard-go started by an agent) goes first.
        for (pid, name) in crate::lab::dataplane::processes_in(&self.netns_inodes) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            info(&format!("stopping {name} (pid {pid}) left in a lab namespace"));
        }
        for signal in [None, Some(nix::sys::signal::Signal::SIGKILL)] {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while tokio::time::Instant::now() < deadline
                && !crate::lab::dataplane::processes_in(&self.netns_inodes).is_empty()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Some(sig) = signal {
                for (pid, _) in crate::lab::dataplane::processes_in(&self.netns_inodes) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
            }
        }
        for ns in self.netns.drain(..).rev() {
            if crate::lab::dataplane::netns_inode(&ns).is_some()
                && let Err(e) = crate::lab::dataplane::ip(&["netns", "del", &ns])
            {
                left.push(format!("{e:#}"));
            }
        }
        // The nodes' mount namespaces: pods' wireguard sockets were in the nodes' own /run/wireguard.
        for node in std::mem::take(&mut self.nodes) {
            match node.wireguard_sockets() {
                Ok(sockets) if sockets.is_empty() => {}
                Ok(sockets) => left.push(format!(
                    "wireguard sockets on {}: {}",
                    node.name,
                    sockets.join(", ")
                )),
                Err(e) => left.push(format!("{e:#}")),
            }
            if let Err(e) = runtime::unmount(&node.mntns) {
                left.push(format!("{e:#}"));
            }
        }
        if let Some(dir) = self.mnt_dir.take() {
            if let Err(e) = runtime::unmount(&dir) {
                left.push(format!("{e:#}"));
            }
            let mounts = runtime::mounts_under(&dir);
            if !mounts.is_empty() {
                left.push(format!("mounts: {}", mounts.join(", ")));
            } else if let Err(e) = std::fs::remove_dir_all(&dir) {
                left.push(format!("{}: {e}", dir.display()));
            }
        }
        // Gateways' wireguard-go sockets are on the host; a process that had to be killed leaves its socket.
        for sock in wg_sockets {
            if sock.exists() {
                match std::fs::remove_file(&sock) {
                    Ok(()) => info(&format!(
                        "removed {} (its wireguard-go was killed)",
                        sock.display()
                    )),
                    Err(e) => left.push(format!("wireguard socket {}: {e}", sock.display())),
                }
            }
        }
        let tables = std::process::Command::new("nft")
            .args(["list", "tables"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if tables.contains(fabric::NFT_TABLE) {
            left.push(format!("nft table {} in the host namespace", fabric::NFT_TABLE));
        }
        let tag = lab_tag();
        let leftover_ns = crate::lab::dataplane::netns_with_prefix(&tag);
        if !leftover_ns.is_empty() {
            left.push(format!("network namespaces: {}", leftover_ns.join(", ")));
        }
        let stragglers = crate::lab::dataplane::processes_in(&self.netns_inodes);
        if !stragglers.is_empty() {
            left.push(format!("processes in lab namespaces: {stragglers:?}"));
        }
        if opts.work_dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&opts.work_dir)
        {
            left.push(format!("work dir {}: {e}", opts.work_dir.display()));
        }
        let children = live_children();
        if !children.is_empty() {
            left.push(format!("child processes: {}", children.join(", ")));
        }
        match (left.is_empty(), refused.is_empty()) {
            (true, true) => {
                ok("shutting down, the chart's RBAC refused its service accounts nothing");
                ok(
                    "nothing left: no child processes, no lab network namespaces, work dir removed; no lab mounts, nft tables or wireguard sockets",
                );
                Ok(())
            }
            (true, false) => bail!("during shutdown {}", refused.join("; ")),
            (false, true) => bail!("left behind: {}", left.join("; ")),
            (false, false) => bail!(
                "left behind: {}; during shutdown {}",
                left.join("; "),
                refused.join("; ")
            ),
        }
    }
}
