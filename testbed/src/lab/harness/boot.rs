//! The boot job: starting the chart's components as processes (or from their images) in the places the lab
//! gives them, as their service accounts, and checking what the API server saw of them.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use kube::Api;

use super::{Lab, Options, SYSTEM_NS, lab_tag, regular_nodes};
use crate::cluster::Backend;
use crate::files::write_private;
use crate::lab::chart::{self, LaunchSpec, Localize};
use crate::lab::fabric;
use crate::lab::images::{self, Place};
use crate::lab::kube_api::{self, KubeApi};
use crate::lab::kubelet;
use crate::lab::report::{info, ok};

impl Lab {
    /// The kubeconfig holding service account `ns/name`'s token (as kube-sim's `--service-account` names it).
    pub(super) fn sa_kubeconfig(&self, ns: &str, name: &str) -> PathBuf {
        let mut p = self.kubeconfig.clone().into_os_string();
        p.push(format!(".sa.{ns}.{name}"));
        PathBuf::from(p)
    }

    /// Starts the process a kubelet would start for `spec`: its Secret volumes written to files, its environment,
    /// and its service account's token (a kubeconfig instead of the in-cluster token mount). `enter` are the
    /// `nsenter` arguments that put it in its node's namespaces (hostNetwork pods), empty for the host.
    pub(super) fn launch(
        &mut self,
        name: &str,
        spec: &LaunchSpec,
        place: Place<'_>,
        opts: &Options,
    ) -> anyhow::Result<()> {
        for f in &spec.secret_files {
            if let Some(dir) = f.path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            write_private(&f.path, &f.data)?;
        }
        let kubeconfig = self.sa_kubeconfig(&spec.service_account.0, &spec.service_account.1);
        if !kubeconfig.exists() {
            bail!("no token for service account {}", spec.user());
        }
        let mut envs: Vec<(&str, String)> = spec.env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        envs.push(("KUBECONFIG", kubeconfig.display().to_string()));
        let binary = opts.bin_dir.join(&spec.binary);
        let enter = place.nsenter_args();
        let (program, args) = if let Some(mode) = &opts.images {
            let kubeconfig = self.sa_kubeconfig(&spec.service_account.0, &spec.service_account.1);
            // Kubernetes makes Secret volumes and the token readable by the pod's user; so does the lab, with
            // the container's own copy of the kubeconfig.
            let kubeconfig = images::hand_over(spec, &kubeconfig, &opts.work_dir.join("pods").join(name))?;
            let a = mode.run_args(name, spec, &place, &kubeconfig)?;
            info(&format!(
                "{name}: podman run {} ({})",
                spec.image,
                images::security_flags(&spec.security_context).join(" ")
            ));
            (PathBuf::from("podman"), a)
        } else if enter.is_empty() {
            (binary.clone(), spec.argv())
        } else {
            let mut a = enter;
            a.push(binary.display().to_string());
            a.extend(spec.argv());
            (PathBuf::from("nsenter"), a)
        };
        info(&format!(
            "{name}: {} container {} ({}) as {}",
            spec.workload,
            spec.container,
            if opts.images.is_some() {
                &spec.image
            } else {
                &spec.binary
            },
            spec.user()
        ));
        info(&format!("  args: {}", spec.args.join(" ")));
        for (from, to) in &spec.localized {
            info(&format!("  localised: {from} -> {to}"));
        }
        for (arg, why) in &spec.lab_args {
            info(&format!("  lab-only: {arg} ({why})"));
        }
        self.children.spawn(name, &program, &args, &envs, &opts.work_dir)
    }

    /// The `podman` arguments of init container `container` of DaemonSet `ds` as rendered, at `place`.
    pub(super) fn init_container_args(
        &self,
        mode: &images::ImageMode,
        ds: &str,
        container: &str,
        name: &str,
        place: &Place<'_>,
        replace: Option<(&str, &str)>,
    ) -> anyhow::Result<Vec<String>> {
        let (pod, c) = self
            .chart
            .container("DaemonSet", ds, "initContainers", container)?;
        let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
        mode.init_args(name, c, &volumes, place, replace)
    }

    /// Checks that the API server served `user` (a component's service account) and refused it nothing (403).
    /// kube-sim counts each user's requests; the real apiserver's audit log has them.
    pub(in crate::lab) fn check_identity(&self, component: &str, user: &str) -> anyhow::Result<()> {
        let kube = self.kube.as_ref().context("no API server")?;
        let counts = kube.requests_by(user)?;
        let forbidden = count_requests(&counts, |_, code| code == 403);
        let served = count_requests(&counts, |_, code| (200..300).contains(&code));
        let writes = count_requests(&counts, |m, code| {
            !kube_api::is_read(m) && (200..300).contains(&code)
        });
        if forbidden > 0 {
            bail!("{component}: the chart's RBAC refused {user} {forbidden} request(s): {counts:?}");
        }
        if served == 0 {
            bail!("{component}: the API server served no request as {user}: {counts:?}");
        }
        ok(&format!(
            "{component}: API requests as {user} ({served} answered, {writes} of them writes), none forbidden by the chart's RBAC{}",
            match kube.backend() {
                Backend::Real => " (the apiserver's audit log)",
                Backend::Sim => "",
            }
        ));
        Ok(())
    }

    /// Over the whole run: the API server refused none of the chart's service accounts anything (403).
    pub(in crate::lab) fn check_accounts(&self) -> anyhow::Result<()> {
        let kube = self.kube.as_ref().context("no API server")?;
        if let Some(refused) = self.rbac_refusals(kube)?.into_iter().next() {
            bail!("{refused}");
        }
        let mut seen = Vec::new();
        for (ns, name) in self.chart.service_accounts() {
            let user = format!("system:serviceaccount:{ns}:{name}");
            seen.push(format!(
                "{name} {}",
                kube.requests_by(&user)?.values().sum::<u64>()
            ));
        }
        ok(&format!(
            "over the whole run the chart's RBAC refused its service accounts nothing (requests: {})",
            seen.join(", ")
        ));
        Ok(())
    }

    /// One line per chart service account the API server answered 403 so far.
    pub(super) fn rbac_refusals(&self, kube: &KubeApi) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for (ns, name) in self.chart.service_accounts() {
            let user = format!("system:serviceaccount:{ns}:{name}");
            let counts = kube.requests_by(&user)?;
            let forbidden = count_requests(&counts, |_, code| code == 403);
            if forbidden > 0 {
                out.push(format!(
                    "the chart's RBAC refused {user} {forbidden} request(s): {counts:?}"
                ));
            }
        }
        Ok(out)
    }

    /// The launch spec of Deployment `name`'s `container` (one replica: the lab runs one process), its
    /// listeners moved to `ports` (it runs in the host's network namespace, not a pod's own).
    pub(super) fn deployment_pod(
        &self,
        name: &str,
        container: &str,
        ports: &[(&str, String)],
        pod: &chart::Pod,
        opts: &Options,
    ) -> anyhow::Result<LaunchSpec> {
        let spec = self.chart.launch_spec(
            "Deployment",
            name,
            container,
            pod,
            &Localize {
                ports: ports.iter().map(|(f, v)| (f.to_string(), v.clone())).collect(),
                volume_root: opts.work_dir.join("pods").join(container),
            },
        )?;
        if spec.replicas != Some(1) {
            bail!(
                "the lab runs one {container} replica; the chart renders {:?}",
                spec.replicas
            );
        }
        Ok(spec)
    }

    /// The launch spec of DaemonSet `ds`'s `agent` container on node `node_name` (the `i`th of its kind, with
    /// `labels`): the DaemonSet must select the node and mount its hostPaths where they are on the host.
    pub(super) fn daemonset_pod(
        &self,
        ds: &str,
        short: &str,
        i: usize,
        node_name: &str,
        labels: &std::collections::BTreeMap<String, String>,
        opts: &Options,
    ) -> anyhow::Result<LaunchSpec> {
        if !self.chart.selects("DaemonSet", ds, labels)? {
            bail!("the chart's DaemonSet {ds} does not select node {node_name} ({labels:?})");
        }
        let spec = self.chart.launch_spec(
            "DaemonSet",
            ds,
            "agent",
            &chart::Pod {
                namespace: SYSTEM_NS.into(),
                name: format!("{ds}-{i}"),
                node_name: node_name.to_string(),
            },
            &Localize {
                ports: Vec::new(),
                volume_root: opts.work_dir.join("pods").join(format!("{short}-{i}")),
            },
        )?;
        let remapped = spec.remapped_host_paths();
        if !remapped.is_empty() {
            bail!("{ds} mounts hostPaths elsewhere, which the lab cannot honour: {remapped:?}");
        }
        Ok(spec)
    }

    /// Container `container`'s port named `port` in Deployment `name` as rendered.
    pub(super) fn container_port(&self, name: &str, container: &str, port: &str) -> anyhow::Result<u16> {
        let d = self.chart.get("Deployment", name)?;
        d.pointer("/spec/template/spec/containers")
            .and_then(|c| c.as_array())
            .and_then(|cs| cs.iter().find(|c| c["name"] == container))
            .and_then(|c| c["ports"].as_array())
            .and_then(|ps| ps.iter().find(|p| p["name"] == port))
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .with_context(|| format!("Deployment {name} has no port {port} on container {container}"))
    }

    /// The scheduler's part for Deployment `name` on the real server: waits for the pod its ReplicaSet
    /// creates, binds it to the first regular node (where the lab counts the Deployments' pods) and gives it
    /// an IP of the lab's pod network. Returns the pod as the downward API sees it, and its IP.
    pub(super) async fn schedule_deployment_pod(
        &mut self,
        name: &str,
        opts: &Options,
    ) -> anyhow::Result<(chart::Pod, Ipv4Addr)> {
        use k8s_openapi::api::core::v1::Pod;
        let d = self.chart.get("Deployment", name)?;
        let selector = d
            .pointer("/spec/selector/matchLabels")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .with_context(|| format!("Deployment {name} has no spec.selector.matchLabels"))?;
        let pods: Api<Pod> = Api::namespaced(self.client()?, SYSTEM_NS);
        let found = std::sync::Arc::new(std::sync::Mutex::new(None::<Pod>));
        self.wait(
            &format!("kube-controller-manager's ReplicaSet controller creates the pod of Deployment {name}"),
            opts,
            || {
                let (pods, found, selector) = (pods.clone(), found.clone(), selector.clone());
                async move {
                    let list = pods
                        .list(&kube::api::ListParams::default().labels(&selector))
                        .await?;
                    let pod = list
                        .items
                        .into_iter()
                        .find(|p| p.metadata.deletion_timestamp.is_none());
                    let there = pod.is_some();
                    if let Ok(mut g) = found.lock() {
                        *g = pod;
                    }
                    Ok(there)
                }
            },
        )
        .await?;
        let pod = found
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .context("no pod found")?;
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let node = regular_nodes().into_iter().next().context("no regular node")?;
        kubelet::bind(&pods, &pod_name, &node).await?;
        let ip = self.pod_network()?.next_ip()?;
        info(&format!(
            "$ (scheduler) bind Pod {SYSTEM_NS}/{pod_name} (ReplicaSet of Deployment {name}) to {node}; (kubelet) its IP {ip}"
        ));
        Ok((
            chart::Pod {
                namespace: SYSTEM_NS.into(),
                name: pod_name,
                node_name: node,
            },
            ip,
        ))
    }

    /// The kubelet's report for a Deployment's pod whose container passed its readiness probe.
    pub(in crate::lab) async fn report_running(&self, pod: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Pod;
        let node = regular_nodes().into_iter().next().context("no regular node")?;
        let host_ip = self
            .azure
            .as_ref()
            .context("azure-sim")?
            .handle()
            .with_state(|s| fabric::read_view(&s.world, [&node]))
            .vms
            .first()
            .map(|v| v.primary)
            .with_context(|| format!("azure-sim has no NIC for {node}"))?;
        let pods: Api<Pod> = Api::namespaced(self.client()?, SYSTEM_NS);
        kubelet::report_running(&pods, pod, ip, host_ip).await?;
        info(&format!(
            "$ (kubelet) Pod {SYSTEM_NS}/{pod} Running and Ready (readiness probe /readyz answered 200), podIP {ip}, hostIP {host_ip}"
        ));
        Ok(())
    }

    /// The pod network of the Deployments' pods (created on first use).
    pub(super) fn pod_network(&mut self) -> anyhow::Result<&mut PodNetwork> {
        if self.pod_network.is_none() {
            let net = PodNetwork::create(&lab_tag(), std::process::id())?;
            self.netns.push(net.ns.clone());
            if let Some(i) = crate::lab::dataplane::netns_inode(&net.ns) {
                self.netns_inodes.push(i);
            }
            info(&format!(
                "pod network of the Deployments' pods: veth {} on the host (its peer in namespace {}), addresses {}/30",
                net.link, net.ns, net.base
            ));
            self.pod_network = Some(net);
        }
        self.pod_network.as_mut().context("pod network")
    }
}

/// The Deployments' pods' IPs on the real server. The webhook's must be one the apiserver can reach and that
/// Endpoints accept (not loopback): the host end of a veth whose peer sits in the lab's namespace
/// `lab<pid>-pods`, so deleting that namespace (teardown, or the next run's leftovers clean-up) removes the
/// link too. A /30 of `10.254.0.0/16` per run, from its pid; refused when an interface already has it.
pub(super) struct PodNetwork {
    ns: String,
    link: String,
    base: Ipv4Addr,
    used: u32,
}

impl PodNetwork {
    pub(in crate::lab) fn create(tag: &str, pid: u32) -> anyhow::Result<Self> {
        use crate::lab::dataplane::ip;
        let n = pid % 16_000;
        let base = Ipv4Addr::new(10, 254, (n / 64) as u8, ((n % 64) * 4) as u8);
        let taken = std::process::Command::new("ip")
            .args(["-o", "-4", "addr", "show", "to", &format!("{base}/30")])
            .output()
            .context("running ip")?;
        if !taken.stdout.is_empty() {
            bail!(
                "the pod network {base}/30 is in use on this machine: {}",
                String::from_utf8_lossy(&taken.stdout).trim()
            );
        }
        let ns = format!("{tag}pods");
        let link = format!("{tag}pods");
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", "name", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &link, "up"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(Self {
            ns,
            link,
            base,
            used: 0,
        })
    }

    /// The next pod's IP (`.1`, `.2` of the /30), added to the host end.
    fn next_ip(&mut self) -> anyhow::Result<Ipv4Addr> {
        if self.used >= 2 {
            bail!("the lab's pod network has room for two Deployment pods");
        }
        self.used += 1;
        let ip = Ipv4Addr::from(u32::from(self.base) + self.used);
        crate::lab::dataplane::ip(&["addr", "add", &format!("{ip}/32"), "dev", &self.link])?;
        Ok(ip)
    }
}

/// How many of the requests counted by (method, status) in `counts` (kube-sim's `requests_by`) match `which`.
fn count_requests(
    counts: &std::collections::BTreeMap<(String, u16), u64>,
    which: impl Fn(&str, u16) -> bool,
) -> u64 {
    counts
        .iter()
        .filter(|((method, code), _)| which(method, *code))
        .map(|(_, n)| n)
        .sum()
}
