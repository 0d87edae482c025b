//! The fabric job (named `network` beside [`crate::lab::fabric`], the Azure fabric's model it wires): the
//! lab's network namespaces, the VMs' links into the Azure fabric, the gateway nodes with their agents and the
//! regular nodes with their node agents and CNI chain (steps 4 to 6).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use api::StaticGatewayConfiguration;
use kube::Api;
use serde_json::json;

use super::{
    DEMO_NS, ECHO_EXCLUDED_IP, ECHO_IP, ECHO_PORT, FABRIC_GW, GATEWAY_AGENT, Lab, NODE_AGENT, ONPREM_IP,
    ONPREM_OTHER_IP, Options, POOL, SGC, SYSTEM_NS, VM_POOL, gateway_nodes, lab_tag, regular_node_labels,
    regular_nodes, regular_pod_cidr, vm_pool_nodes,
};
use crate::lab::chart;
use crate::lab::images::Place;
use crate::lab::report::{info, ok};
use crate::lab::{fabric, runtime};

impl Lab {
    /// Creates network namespace `name` (lo up) and remembers it for teardown.
    pub(super) fn add_netns(&mut self, name: &str) -> anyhow::Result<()> {
        use crate::lab::dataplane::{ip, netns_inode};
        ip(&["netns", "add", name])?;
        self.netns.push(name.to_string());
        if let Some(i) = netns_inode(name) {
            self.netns_inodes.push(i);
        }
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// A VM: its own namespace whose `eth0` is a point-to-point link into the fabric (`fabric_if`), with the
    /// primary IP Azure gave it (no subnet route: Azure's SDN, not an L2 segment, delivers everything).
    fn add_vm(&mut self, ns: &str, fabric_if: &str, primary: Ipv4Addr, table: u32) -> anyhow::Result<()> {
        use crate::lab::dataplane::ip;
        let fabric = self.linked_to_fabric(ns, fabric_if)?;
        ip(&[
            "-n",
            &fabric,
            "addr",
            "add",
            &format!("{FABRIC_GW}/32"),
            "dev",
            fabric_if,
        ])?;
        ip(&["-n", &fabric, "link", "set", fabric_if, "up"])?;
        let t = table.to_string();
        ip(&[
            "-n", &fabric, "rule", "add", "pref", &t, "fwmark", &t, "lookup", &t,
        ])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{primary}/16"),
            "dev",
            "eth0",
            "noprefixroute",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &FABRIC_GW.to_string(),
            "dev",
            "eth0",
            "onlink",
        ])?;
        sysctl(ns, "net.ipv4.ip_forward", "1")
    }

    /// A new network namespace `ns` whose eth0 is a veth to the fabric's `fabric_if`; the fabric's namespace.
    fn linked_to_fabric(&mut self, ns: &str, fabric_if: &str) -> anyhow::Result<String> {
        let fabric = self.fabric_ns.clone();
        self.add_netns(ns)?;
        crate::lab::dataplane::ip(&[
            "link", "add", "name", fabric_if, "netns", &fabric, "type", "veth", "peer", "name", "eth0",
            "netns", ns,
        ])?;
        Ok(fabric)
    }

    /// An echo host behind the fabric: namespace `ns` linked to the fabric's `fabric_if` (addresses
    /// `fabric_side`, the first its default gateway) with the `hosts` addresses (/24) on its eth0, each
    /// answering on the echo port with the source address it sees.
    fn echo_host(
        &mut self,
        ns: &str,
        fabric_if: &str,
        fabric_side: &[&str],
        hosts: &[Ipv4Addr],
    ) -> anyhow::Result<()> {
        use crate::lab::dataplane::ip;
        let fabric = self.linked_to_fabric(ns, fabric_if)?;
        for a in fabric_side {
            ip(&["-n", &fabric, "addr", "add", a, "dev", fabric_if])?;
        }
        for h in hosts {
            ip(&["-n", ns, "addr", "add", &format!("{h}/24"), "dev", "eth0"])?;
        }
        ip(&["-n", &fabric, "link", "set", fabric_if, "up"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        let gateway = fabric_side
            .first()
            .and_then(|a| a.split('/').next())
            .context("an echo host needs a fabric address")?;
        ip(&["-n", ns, "route", "add", "default", "via", gateway])?;
        self.forwarders
            .extend(crate::lab::dataplane::echo_server(ns, hosts, ECHO_PORT)?);
        Ok(())
    }

    /// The Azure fabric namespace, the echo host behind its edge, one namespace per VM (gateway and regular
    /// nodes), and the fabric loop realising the Azure simulator's state.
    pub(in crate::lab) async fn fabric(&mut self, opts: &Options) -> anyhow::Result<()> {
        let tag = lab_tag();
        self.fabric_ns = format!("{tag}fabric");
        let fabric = self.fabric_ns.clone();
        self.add_netns(&fabric)?;
        sysctl(&fabric, "net.ipv4.ip_forward", "1")?;
        for k in ["all", "default"] {
            sysctl(&fabric, &format!("net.ipv4.conf.{k}.rp_filter"), "0")?;
        }
        self.echo_host(
            &format!("{tag}inet"),
            "edge0",
            &["198.51.100.1/24"],
            &[ECHO_IP, ECHO_EXCLUDED_IP],
        )?;
        ok(&format!(
            "internet echo host {ECHO_IP} and {ECHO_EXCLUDED_IP}, port {ECHO_PORT} (UDP and TCP answer the source address they see) behind the fabric's edge"
        ));
        // On-premises, behind a private link (ExpressRoute / VPN gateway): reached from the VNet without the
        // edge's SNAT, so it sees private sources as they are.
        self.echo_host(
            &format!("{tag}onprem"),
            "onprem0",
            &["192.168.100.1/24", "192.168.200.1/24"],
            &[ONPREM_IP, ONPREM_OTHER_IP],
        )?;
        ok(&format!(
            "on-premises echo host {ONPREM_IP} and {ONPREM_OTHER_IP}, port {ECHO_PORT}, behind a private link of the fabric (no SNAT: it sees private source addresses)"
        ));

        let azure = self.azure.as_ref().context("azure-sim")?.handle();
        // The demo pool's gateways are those of the configuration's profiles; the other gateway pools' VMs
        // (no configuration yet) follow them.
        let gateways: Vec<String> = self.profiles.iter().map(|p| p.node_name.clone()).collect();
        let others: Vec<(String, String)> = gateway_nodes()
            .into_iter()
            .filter(|(pool, node)| pool != POOL && !gateways.contains(node))
            .collect();
        let regular = regular_nodes();
        let vm_pool = vm_pool_nodes(&azure);
        let names: Vec<String> = gateways
            .iter()
            .chain(others.iter().map(|(_, n)| n))
            .chain(&regular)
            .chain(&vm_pool)
            .cloned()
            .collect();
        let view = azure.with_state(|s| fabric::read_view(&s.world, &names));
        let primary_of = |n: &str| view.vms.iter().find(|v| v.vm == n).map(|v| v.primary);
        let mut wiring = fabric::Wiring {
            edge: "edge0".into(),
            private_space: vec!["10.0.0.0/8".parse()?],
            ..Default::default()
        };
        for (i, node) in gateways.iter().enumerate() {
            let primary =
                primary_of(node).with_context(|| format!("azure-sim has no NIC for gateway {node}"))?;
            let (ns, dev, table) = (format!("{tag}gw{i}"), format!("gw{i}"), 0x100 + i as u32);
            self.add_vm(&ns, &dev, primary, table)?;
            wiring.nics.insert(node.clone(), (dev, table));
            self.gateway_vms.push((node.clone(), primary, ns));
        }
        for (j, (pool, node)) in others.iter().enumerate() {
            let i = gateways.len() + j;
            if i >= 0x10 {
                bail!("the lab wires at most 16 gateway VMs (fabric tables 0x100-0x10f)");
            }
            let primary =
                primary_of(node).with_context(|| format!("azure-sim has no NIC for gateway {node}"))?;
            let (ns, dev, table) = (format!("{tag}gw{i}"), format!("gw{i}"), 0x100 + i as u32);
            self.add_vm(&ns, &dev, primary, table)?;
            wiring.nics.insert(node.clone(), (dev, table));
            self.other_pool_vms
                .entry(pool.clone())
                .or_default()
                .push((node.clone(), primary, ns));
        }
        for (i, node) in regular.iter().enumerate() {
            let primary =
                primary_of(node).with_context(|| format!("azure-sim has no NIC for node {node}"))?;
            let (ns, dev, table) = (format!("{tag}node{i}"), format!("node{i}"), 0x110 + i as u32);
            self.add_vm(&ns, &dev, primary, table)?;
            wiring.nics.insert(node.clone(), (dev, table));
            wiring
                .pod_cidrs
                .push((regular_pod_cidr(i).parse()?, node.clone()));
        }
        // The VM-based pool's VMs are wired like the others (cheap; their gateway agents start in scenario 6).
        for (i, node) in vm_pool.iter().enumerate() {
            let primary = primary_of(node).with_context(|| format!("azure-sim has no NIC for VM {node}"))?;
            let (ns, dev, table) = (format!("{tag}gwvm{i}"), format!("gwvm{i}"), 0x120 + i as u32);
            self.add_vm(&ns, &dev, primary, table)?;
            wiring.nics.insert(node.clone(), (dev, table));
            self.vm_pool_vms.push((node.clone(), primary, ns));
        }
        self.wiring = wiring.clone();
        let running = fabric::start(&fabric, azure, wiring, Duration::from_millis(250));
        let mut status = running.status.clone();
        self.fabric = Some(running);
        // Per VM its /32 and its LB table's default route, plus its secondaries; plus one route per pod CIDR.
        let want = view.vms.iter().map(|v| 2 + v.secondaries.len()).sum::<usize>() + regular.len();
        self.wait(
            "the fabric routes every VM, secondary IP and pod CIDR",
            opts,
            || {
                let s = status.borrow_and_update().clone();
                async move {
                    if let Some(e) = s.error {
                        bail!("{e}");
                    }
                    Ok(s.desired.routes.len() >= want)
                }
            },
        )
        .await?;
        for vm in &view.vms {
            let role = if gateways.contains(&vm.vm) {
                format!("gateway, {POOL}")
            } else if let Some((pool, _)) = others.iter().find(|(_, n)| *n == vm.vm) {
                format!("gateway, {pool}: no configuration yet")
            } else if vm_pool.contains(&vm.vm) {
                format!("gateway, {VM_POOL} (VM-based): its agents start with scenario 6")
            } else {
                "node".to_string()
            };
            let extra = vm
                .secondaries
                .iter()
                .map(|(p, public)| match public {
                    Some(pub_ip) => format!(", secondary {p} (public {pub_ip})"),
                    None => format!(", secondary {p}"),
                })
                .collect::<String>();
            info(&format!("VM {} ({role}): primary {}{extra}", vm.vm, vm.primary));
        }
        for r in &view.rules {
            info(&format!(
                "LB rule {}: {:?} {}:{} floating IP {} -> backends {:?} (probe {})",
                r.name,
                r.proto,
                r.frontend,
                r.port,
                r.floating_ip,
                r.backends,
                r.probe
                    .as_deref()
                    .map(|p| p.rsplit('/').next().unwrap_or(p))
                    .unwrap_or("none")
            ));
        }
        ok(&format!(
            "Azure fabric {fabric}: each VM on its own link, secondary IPs routed to their VM, pod CIDRs to their node, floating-IP LB rules to healthy backends only, edge SNAT secondary -> public IP and other private sources -> {}",
            self.outbound
                .map(|o| o.to_string())
                .unwrap_or_else(|| "(no outbound IP)".into())
        ));
        Ok(())
    }

    /// The real gateway agent in each gateway VM, the LB frontend on its eth0, and the fabric's probes.
    pub(in crate::lab) async fn gateways(&mut self, opts: &Options) -> anyhow::Result<()> {
        use crate::lab::dataplane::probe_from;
        let mut vms: Vec<(String, (String, Ipv4Addr, String))> = self
            .gateway_vms
            .iter()
            .map(|vm| (POOL.to_string(), vm.clone()))
            .collect();
        for (pool, list) in &self.other_pool_vms {
            vms.extend(list.iter().map(|vm| (pool.clone(), vm.clone())));
        }
        for (i, (pool, (node_name, _, ns))) in vms.iter().enumerate() {
            self.start_gateway_agent(&format!("gateway-agent-{i}"), i, node_name, ns, pool, None, opts)
                .await?;
        }
        for (pool, list) in &self.other_pool_vms {
            let names: Vec<&str> = list.iter().map(|vm| vm.0.as_str()).collect();
            info(&format!(
                "pool {pool} ({}): gateway agents running; no GatewayPool or configuration uses the pool yet",
                names.join(", ")
            ));
        }
        let path = api::names::lb_probe_path(&self.sgc_uid);
        let frontend = Api::<StaticGatewayConfiguration>::namespaced(self.client()?, DEMO_NS)
            .get(SGC)
            .await?
            .status
            .and_then(|s| s.gateway_server_profile)
            .map(|p| p.ip)
            .unwrap_or_default();
        for (node, _, ns) in self.gateway_vms.clone() {
            let want = format!("{frontend}/32");
            self.wait(
                &format!("the LB frontend {want} on eth0 of {node} (floating IP)"),
                opts,
                move || {
                    let ns = ns.clone();
                    let want = want.clone();
                    async move {
                        let out = tokio::process::Command::new("ip")
                            .args(["-n", &ns, "-4", "-o", "addr", "show", "dev", "eth0"])
                            .output()
                            .await?;
                        Ok(String::from_utf8_lossy(&out.stdout)
                            .split_whitespace()
                            .any(|w| w == want))
                    }
                },
            )
            .await?;
            ok(&format!(
                "the agent put the LB frontend {frontend}/32 on eth0 of {node} (floating IP)"
            ));
        }
        let fabric = self.fabric_ns.clone();
        // The port lab_values gives the chart (gatewayLbProbePort), which the operator puts in the LB probe.
        let port = api::names::DEFAULT_LB_PROBE_PORT;
        for (node, primary, _) in self.gateway_vms.clone() {
            let (f, p) = (fabric.clone(), path.clone());
            self.wait(
                &format!("the fabric's probe of {node} ({primary}:{port}{path}) answers 200"),
                opts,
                move || {
                    let (f, p) = (f.clone(), p.clone());
                    async move { Ok(probe_from(&f, primary, port, &p).await == Some(200)) }
                },
            )
            .await?;
            ok(&format!(
                "gateway agent on {node} ({primary}, own netns) is up; the fabric's LB probe :{port}{path} answers 200"
            ));
        }
        let mut status = self.fabric.as_ref().context("fabric not running")?.status.clone();
        let all: Vec<Ipv4Addr> = self.gateway_vms.iter().map(|g| g.1).collect();
        let serving = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        self.wait(
            &format!(
                "the fabric's health probes (every {}s) put every gateway behind the floating-IP rule",
                api::names::LB_PROBE_INTERVAL_SECONDS
            ),
            opts,
            || {
                let s = status.borrow_and_update().clone();
                let (all, serving) = (all.clone(), serving.clone());
                async move {
                    let Some((rule, backends)) = s.desired.serving.iter().next() else {
                        return Ok(false);
                    };
                    if let Ok(mut g) = serving.lock() {
                        *g = format!("{rule} -> {backends:?}");
                    }
                    Ok(all.iter().all(|a| backends.contains(a)))
                }
            },
        )
        .await?;
        let serving = serving.lock().map(|g| g.clone()).unwrap_or_default();
        ok(&format!(
            "the fabric load-balances {serving} (healthy backends only)"
        ));
        self.check_identity(
            "gateway agents",
            &format!("system:serviceaccount:{SYSTEM_NS}:{GATEWAY_AGENT}"),
        )
    }

    /// A gateway node as AKS registers it (Node `node_name` labelled with its agent pool `pool` and the gateway
    /// mode the chart's DaemonSet selects; `provider_id` for VM-based pools, whose instances name their Node by
    /// it) and the chart's gateway DaemonSet pod on it: the real agent in the VM's network namespace `ns`, as
    /// child `name`; `i` numbers the DaemonSet's pods.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::lab) async fn start_gateway_agent(
        &mut self,
        name: &str,
        i: usize,
        node_name: &str,
        ns: &str,
        pool: &str,
        provider_id: Option<&str>,
        opts: &Options,
    ) -> anyhow::Result<()> {
        use crate::lab::dataplane::forward_loopback;
        let kube_port = self.kube.as_ref().context("no API server")?.port()?;
        let azure_addr = self.azure.as_ref().context("azure-sim")?.addr();
        let primary = self
            .azure
            .as_ref()
            .context("azure-sim")?
            .handle()
            .with_state(|s| fabric::read_view(&s.world, [&node_name.to_string()]))
            .vms
            .first()
            .map(|v| v.primary)
            .with_context(|| format!("azure-sim has no NIC for {node_name}"))?;
        self.forwarders.push(forward_loopback(ns, kube_port)?);
        let (imds_port, imds) = crate::lab::dataplane::imds_for_node(ns, azure_addr, node_name)?;
        self.forwarders.push(imds);
        // AKS gateway pool nodes: their pool and the gateway mode label the chart's DaemonSet selects.
        let labels: std::collections::BTreeMap<String, String> = [
            (api::names::NODE_AGENTPOOL_LABEL, pool),
            (api::names::NODE_GATEWAY_MODE_LABEL, "true"),
            ("kubernetes.io/os", "linux"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        let mut node = json!({"metadata": {"name": node_name, "labels": labels}});
        if let Some(p) = provider_id {
            node["spec"] = json!({"providerID": p});
        }
        self.heartbeat
            .as_ref()
            .context("no heartbeat")?
            .register(&self.client()?, node, primary)
            .await?;
        // The DaemonSet's pod on this node: hostNetwork, so the VM's own network namespace; the chart's
        // ports as they are. The gateway VMs share the host's mount namespace, so hostPaths are the host's.
        let mut spec = self.daemonset_pod(GATEWAY_AGENT, "gateway-agent", i, node_name, &labels, opts)?;
        spec.add_lab_arg(
            "--netns-name",
            &format!("{ns}-egw"),
            "all gateway VMs share the host's /var/run/netns; on a node it is ns-static-egress-gateway, made by the chart's netns-init init container",
        )?;
        spec.add_lab_arg(
            "--imds-endpoint",
            &format!("http://127.0.0.1:{imds_port}"),
            "this VM's instance metadata from azure-sim, instead of 169.254.169.254",
        )?;
        if let Some(mode) = &opts.images {
            // The chart's netns-init, privileged as in the chart, makes the gateway namespace (the lab's name).
            let args = self.init_container_args(
                mode,
                GATEWAY_AGENT,
                "netns-init",
                &format!("{name}-netns-init"),
                &Place::Netns(ns),
                Some(("ns-static-egress-gateway", &format!("{ns}-egw"))),
            )?;
            mode.run_init(&args).await?;
            info(&format!(
                "{name}: init container netns-init (privileged, as in the chart) made {ns}-egw"
            ));
        }
        self.launch(name, &spec, Place::Netns(ns), opts)?;
        self.netns.push(format!("{ns}-egw"));
        Ok(())
    }

    /// Regular nodes: their own mount namespace, the primary CNI configuration (bridge + host-local), the
    /// real node agent that chains our plugin after it and removes the node's cni-not-ready taint.
    pub(in crate::lab) async fn nodes(&mut self, opts: &Options) -> anyhow::Result<()> {
        use crate::lab::dataplane::forward_loopback;
        let tag = lab_tag();
        let mnt_dir = crate::lab::leftovers::mount_dir(std::path::Path::new("/run"), std::process::id());
        runtime::private_mount_dir(&mnt_dir)?;
        self.mnt_dir = Some(mnt_dir.clone());
        let kube_port = self.kube.as_ref().context("no API server")?.port()?;
        let nodes_api: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client()?);
        for (i, name) in regular_nodes().iter().enumerate() {
            let node = runtime::Node {
                name: name.clone(),
                netns: format!("{tag}node{i}"),
                mntns: mnt_dir.join(format!("node{i}")),
                dir: opts.work_dir.join("nodes").join(name),
                // From images, the plugin is the one the chart's cni-install copied from the agent image.
                cni_path: vec![
                    PathBuf::from(runtime::CNI_DIR),
                    if opts.images.is_some() {
                        opts.work_dir.join("nodes").join(name).join("cni-bin")
                    } else {
                        opts.bin_dir.clone()
                    },
                ],
            };
            runtime::create_mount_ns(&node.mntns, &node.dir)?;
            self.nodes.push(node.clone());
            let pod_cidr = regular_pod_cidr(i);
            let primary = runtime::primary_conflist(&pod_cidr, &node.dir.join("ipam"));
            std::fs::write(
                node.conf_dir().join("10-kubenet.conflist"),
                serde_json::to_vec_pretty(&primary)?,
            )
            .context("writing the primary CNI configuration")?;
            self.forwarders.push(forward_loopback(&node.netns, kube_port)?);
            let labels = regular_node_labels();
            // The DaemonSet's pod on this node: hostNetwork, so the node's network namespace, and its hostPath
            // volumes, which must be the node's own directories (bind mounts in its mount namespace).
            let spec = self.daemonset_pod(NODE_AGENT, "node-agent", i, name, &labels, opts)?;
            let shared: Vec<&str> = spec
                .host_paths
                .iter()
                .map(|h| h.host_path.as_str())
                .filter(|h| {
                    !runtime::NODE_PRIVATE_DIRS
                        .iter()
                        .any(|(d, _)| chart::normalize_run(h) == chart::normalize_run(d))
                })
                .collect();
            if !shared.is_empty() {
                bail!("{NODE_AGENT} mounts hostPaths that are not the lab node's own: {shared:?}");
            }
            if let Some(mode) = &opts.images {
                // The chart's cni-install copies the image's plugin into the node's plugin directory.
                let args = self.init_container_args(
                    mode,
                    NODE_AGENT,
                    "cni-install",
                    &format!("node-agent-{i}-cni-install"),
                    &Place::Node(&node),
                    None,
                )?;
                mode.run_init(&args).await?;
                info(&format!(
                    "node-agent-{i}: init container cni-install copied the image's {} into {}",
                    api::names::CNI_PLUGIN_TYPE,
                    node.dir.join("cni-bin").display()
                ));
            }
            self.launch(&format!("node-agent-{i}"), &spec, Place::Node(&node), opts)?;
        }
        for node in self.nodes.clone() {
            let ours = node.conf_dir().join(api::names::CNI_CONF_FILE);
            let (api, name) = (nodes_api.clone(), node.name.clone());
            self.wait(
                &format!(
                    "the node agent on {name} installs /etc/cni/net.d/{} and removes the {} taint",
                    api::names::CNI_CONF_FILE,
                    api::names::CNI_NOT_READY_TAINT
                ),
                opts,
                move || {
                    let (api, name, ours) = (api.clone(), name.clone(), ours.clone());
                    async move {
                        if !ours.exists() {
                            return Ok(false);
                        }
                        let n = api.get(&name).await?;
                        let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
                        Ok(!taints.iter().any(|t| t.key == api::names::CNI_NOT_READY_TAINT))
                    }
                },
            )
            .await?;
            let (file, list) = node.network_config()?;
            let chain: Vec<String> = list["plugins"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p["type"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            ok(&format!(
                "node {} (own network and mount namespace): node agent installed {file} = [{}] (the runtime's first conflist), taint removed",
                node.name,
                chain.join(" -> ")
            ));
        }
        self.check_identity(
            "node agents",
            &format!("system:serviceaccount:{SYSTEM_NS}:{NODE_AGENT}"),
        )
    }
}

/// Sets a sysctl inside network namespace `ns`.
pub(in crate::lab) fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    crate::lab::dataplane::run_in(ns, "sysctl", &["-q", "-w", &format!("{key}={value}")], "")
}
