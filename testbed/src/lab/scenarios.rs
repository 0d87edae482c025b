//! Upstream's end-to-end scenarios (https://github.com/Azure/kube-egress-gateway/tree/main/e2e) and ours, run on the lab after its default steps when
//! asked (`lab --scenarios all` or e.g. `--scenarios 2,3,9`). Scenarios 1 (egress via the gateway, plain pods
//! isolated), 4 (excludeCidrs bypass) and 7 (an invalid configuration refused with the rule's message) are
//! part of every run (steps 3 and 8). Each scenario here creates what it needs, checks behaviour (source
//! addresses the echo host sees, the Azure simulator's inventory, Kubernetes objects), and removes what it
//! created, so the next one starts from the default run's state. Scenario 8 (Terraform) is in [`super::terraform`].

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use api::StaticGatewayConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;

use super::steps::{
    DEMO_NS, ECHO_IP, ECHO_PORT, Lab, ONPREM_IP, ONPREM_OTHER_IP, ONPREM_RANGE, POOL, VM_POOL, lab_seed,
};
use super::{Options, fabric, info, ok, runtime};
use crate::azure::SimHandle;

/// A scenario the lab can run after its default steps; the number is upstream's (§8.1) or ours (7–10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// (2) Bring-your-own public IP prefix; deleting the configuration frees it.
    ByoPrefix = 2,
    /// (3) Ingress to an annotated pod is unaffected.
    Ingress = 3,
    /// (5) Two configurations on one pool, each pod inside its own prefix.
    TwoConfigs = 5,
    /// (6) Private mode with azureNetworking on a VM-based pool.
    Private = 6,
    /// (8) `terraform apply` of a pool and a configuration with our provider; the prefix in its outputs.
    Terraform = 8,
    /// (9) A gateway node dies: traffic moves to the other gateway (measured).
    Failover = 9,
    /// (10) Deleting everything leaves Azure and the namespaces clean.
    Cleanup = 10,
}

impl Scenario {
    /// Every scenario, in the order they run (cleanup last: it deletes everything).
    pub const ALL: [Scenario; 7] = [
        Scenario::ByoPrefix,
        Scenario::Ingress,
        Scenario::TwoConfigs,
        Scenario::Private,
        Scenario::Terraform,
        Scenario::Failover,
        Scenario::Cleanup,
    ];

    fn title(self) -> &'static str {
        match self {
            Scenario::ByoPrefix => {
                "scenario 2: bring-your-own public IP prefix; deleting the configuration frees it"
            }
            Scenario::Ingress => "scenario 3: ingress to an annotated pod is unaffected",
            Scenario::TwoConfigs => {
                "scenario 5: two configurations on one pool, each pod inside its own prefix"
            }
            Scenario::Private => "scenario 6: private egress (azureNetworking) on a VM-based pool",
            Scenario::Terraform => {
                "scenario 8: terraform apply of a pool and a configuration; the egress prefix in its outputs"
            }
            Scenario::Failover => "scenario 9: a gateway dies; traffic moves to the other gateway (measured)",
            Scenario::Cleanup => "scenario 10: deleting everything leaves Azure and the namespaces clean",
        }
    }
}

/// Parses `--scenarios`: `all`, `none`, or a comma-separated list of numbers (any order; run in the order of
/// [`Scenario::ALL`]).
pub fn parse(text: &str) -> Result<Vec<Scenario>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("all") {
        return Ok(Scenario::ALL.to_vec());
    }
    if text.is_empty() || text.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let n: u32 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a scenario number (use all, or e.g. 2,3,9)"))?;
        let s = match n {
            2 => Scenario::ByoPrefix,
            3 => Scenario::Ingress,
            5 => Scenario::TwoConfigs,
            6 => Scenario::Private,
            8 => Scenario::Terraform,
            9 => Scenario::Failover,
            10 => Scenario::Cleanup,
            1 | 4 | 7 => {
                return Err(format!(
                    "scenario {n} is part of every lab run (steps 3 and 8); choose from 2,3,5,6,8,9,10"
                ));
            }
            _ => return Err(format!("no scenario {n}; choose from 2,3,5,6,8,9,10 or all")),
        };
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out.sort();
    Ok(out)
}

/// Runs the chosen scenarios (steps 9, 10, ... of the lab).
pub(super) async fn run(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    for (i, s) in opts.scenarios.iter().enumerate() {
        lab.begin(9 + i, s.title());
        match s {
            Scenario::ByoPrefix => byo_prefix(lab, opts).await?,
            Scenario::Ingress => ingress(lab, opts).await?,
            Scenario::TwoConfigs => two_configs(lab, opts).await?,
            Scenario::Private => private(lab, opts).await?,
            Scenario::Terraform => super::terraform::scenario(lab, opts).await?,
            Scenario::Failover => failover(lab, opts).await?,
            Scenario::Cleanup => cleanup(lab, opts).await?,
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------ helpers

fn sgc_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: {name}\n  namespace: {DEMO_NS}\nspec:\n  gatewayNodepoolName: {POOL}\n{extra_spec}"
    )
}

/// Writes `yaml` to the work dir and `kubectl apply`s it.
async fn apply(lab: &Lab, opts: &Options, file: &str, yaml: &str) -> anyhow::Result<()> {
    std::fs::write(opts.work_dir.join(file), yaml).with_context(|| format!("writing {file}"))?;
    let out = lab.kubectl(opts, &["apply", "-f", file]).await?;
    if !out.ok {
        bail!("kubectl apply -f {file} failed: {}", out.stderr.trim());
    }
    info(&format!("$ kubectl apply -f {file}   # {}", out.stdout.trim()));
    Ok(())
}

/// Waits until configuration `name` is Ready with a prefix; returns it.
async fn ready_sgc(lab: &mut Lab, opts: &Options, name: &str) -> anyhow::Result<StaticGatewayConfiguration> {
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(lab.client()?, DEMO_NS);
    let got = Arc::new(Mutex::new(None));
    lab.wait(
        &format!("{DEMO_NS}/{name} is Ready with status.egressIpPrefix"),
        opts,
        || {
            let (sgcs, got, name) = (sgcs.clone(), got.clone(), name.to_string());
            async move {
                let s = sgcs.get(&name).await?;
                let ready = s.status.as_ref().is_some_and(|st| {
                    st.is_ready_for_pods()
                        && st.egress_ip_prefix.is_some()
                        && st.gateway_server_profile.is_some()
                });
                if ready && let Ok(mut g) = got.lock() {
                    *g = Some(s);
                }
                Ok(ready)
            }
        },
    )
    .await?;
    let s = got.lock().ok().and_then(|mut g| g.take());
    s.context("configuration vanished")
}

pub(super) fn prefix_of(s: &StaticGatewayConfiguration) -> anyhow::Result<ipnet::Ipv4Net> {
    let p = s
        .status
        .as_ref()
        .and_then(|st| st.egress_ip_prefix.clone())
        .unwrap_or_default();
    p.parse()
        .with_context(|| format!("status.egressIpPrefix {p:?} is not an IPv4 CIDR"))
}

pub(super) fn uid_of(s: &StaticGatewayConfiguration) -> String {
    s.metadata.uid.clone().unwrap_or_default()
}

/// CNI DEL and Pod deletion of a pod the lab runs; waits for its PodEndpoint to go.
pub(super) async fn remove_pod(lab: &mut Lab, opts: &Options, name: &str) -> anyhow::Result<()> {
    let Some(i) = lab.pods.iter().position(|(_, sb)| sb.name == name) else {
        bail!("the lab runs no pod {name}");
    };
    let (node_idx, sb) = lab.pods.remove(i);
    let node = lab
        .nodes
        .get(node_idx)
        .cloned()
        .with_context(|| format!("no regular node {node_idx}"))?;
    let netns = sb.netns.clone();
    tokio::task::spawn_blocking(move || node.del(&sb))
        .await
        .context("CNI DEL thread")?
        .with_context(|| format!("CNI DEL of pod {DEMO_NS}/{name}"))?;
    if super::dataplane::netns_inode(&netns).is_some() {
        super::dataplane::ip(&["netns", "del", &netns])?;
    }
    lab.netns.retain(|n| *n != netns);
    let pods: Api<Pod> = Api::namespaced(lab.client()?, DEMO_NS);
    pods.delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting Pod {DEMO_NS}/{name}"))?;
    // The kubelet, its sandbox gone, confirms the graceful deletion (kube-sim has deleted it already).
    super::kubelet::confirm_deleted(&pods, name).await?;
    let pes: Api<api::PodEndpoint> = Api::namespaced(lab.client()?, DEMO_NS);
    let (pes2, pods2, n) = (pes.clone(), pods.clone(), name.to_string());
    lab.wait(
        &format!("Pod and PodEndpoint {DEMO_NS}/{name} gone"),
        opts,
        move || {
            let (pes, pods, n) = (pes2.clone(), pods2.clone(), n.clone());
            async move { Ok(pes.get_opt(&n).await?.is_none() && pods.get_opt(&n).await?.is_none()) }
        },
    )
    .await?;
    info(&format!(
        "pod {DEMO_NS}/{name}: CNI DEL, Pod deleted, PodEndpoint gone"
    ));
    Ok(())
}

/// Every stored Azure resource as one lower-case JSON text (to look for a configuration's UID anywhere).
pub(super) fn azure_text(azure: &SimHandle) -> String {
    azure
        .with_state(|s| {
            s.world
                .resource_ids()
                .iter()
                .filter_map(|id| s.world.get(id).map(|v| v.to_string()))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .to_ascii_lowercase()
}

pub(super) fn azure(lab: &Lab) -> anyhow::Result<SimHandle> {
    Ok(lab.azure.as_ref().context("azure-sim not started")?.handle())
}

/// `kubectl delete` of configuration `name`, then waits until it is gone and nothing in Azure mentions its UID.
async fn delete_sgc(lab: &mut Lab, opts: &Options, name: &str, uid: &str) -> anyhow::Result<()> {
    let out = lab
        .kubectl(opts, &["delete", "sgc", "-n", DEMO_NS, name, "--wait=false"])
        .await?;
    if !out.ok {
        bail!("kubectl delete sgc {name}: {}", out.stderr.trim());
    }
    info(&format!(
        "$ kubectl delete sgc -n {DEMO_NS} {name}   # {}",
        out.stdout.trim()
    ));
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(lab.client()?, DEMO_NS);
    let n = name.to_string();
    lab.wait(&format!("{DEMO_NS}/{name} gone (finalizer done)"), opts, || {
        let (sgcs, n) = (sgcs.clone(), n.clone());
        async move { Ok(sgcs.get_opt(&n).await?.is_none()) }
    })
    .await?;
    let az = azure(lab)?;
    let uid_lc = uid.to_ascii_lowercase();
    lab.wait(
        &format!("no Azure resource mentions {name}'s UID (LB rule, probe, ipConfigs, public IPs)"),
        opts,
        || {
            let found = !uid_lc.is_empty() && azure_text(&az).contains(&uid_lc);
            async move { Ok(!found) }
        },
    )
    .await?;
    ok(&format!(
        "{DEMO_NS}/{name} deleted: the object is gone and no Azure resource mentions its UID {uid}"
    ));
    Ok(())
}

fn echo() -> SocketAddr {
    SocketAddr::from((ECHO_IP, ECHO_PORT))
}

/// The source addresses (UDP, TCP) the echo host sees from pod `sb`; fails when it does not answer.
async fn seen_from(opts: &Options, sb: &runtime::Sandbox) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    use super::dataplane::{tcp_source_seen, udp_source_seen};
    let udp = udp_source_seen(&sb.netns, echo(), opts.step_timeout)
        .await
        .with_context(|| format!("the echo host never answered UDP from pod {}", sb.name))?;
    let tcp = tcp_source_seen(&sb.netns, echo(), opts.step_timeout)
        .await
        .with_context(|| format!("the echo host did not answer TCP from pod {}", sb.name))?;
    Ok((udp, tcp))
}

/// Checks the echo host sees pod `sb` from inside `prefix` (UDP and TCP), and from outside every `others`.
pub(super) async fn check_egress(
    opts: &Options,
    sb: &runtime::Sandbox,
    prefix: ipnet::Ipv4Net,
    others: &[ipnet::Ipv4Net],
) -> anyhow::Result<Ipv4Addr> {
    let (udp, tcp) = seen_from(opts, sb).await?;
    let line = format!(
        "{DEMO_NS}/{}: the echo host saw UDP from {udp}, TCP from {tcp} -> inside {prefix}{}",
        sb.name,
        others
            .iter()
            .map(|o| format!(", outside {o}"))
            .collect::<String>()
    );
    let good = [udp, tcp]
        .iter()
        .all(|a| prefix.contains(a) && !others.iter().any(|o| o.contains(a)));
    if !good {
        println!("    \u{2718} {line}: NO");
        bail!("wrong egress address for {}", sb.name);
    }
    ok(&line);
    Ok(udp)
}

// ------------------------------------------------------------------------------------------ scenario 2

async fn byo_prefix(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    const RG: &str = "node-rg";
    const NAME: &str = "byo-egress-prefix";
    let az = azure(lab)?;
    let location = lab_seed().location;
    let put = az
        .with_state(|s| {
            s.world.put_public_ip_prefix(
                RG,
                NAME,
                json!({"location": location, "sku": {"name": "Standard", "tier": "Regional"},
                    "properties": {"prefixLength": 31, "publicIPAddressVersion": "IPv4"}}),
            )
        })
        .map_err(|e| anyhow!("creating the public IP prefix: {} {}", e.code, e.message))?;
    let id = put.resource["id"].as_str().unwrap_or_default().to_string();
    let cidr: ipnet::Ipv4Net = put
        .resource
        .pointer("/properties/ipPrefix")
        .and_then(|v| v.as_str())
        .and_then(|v| v.parse().ok())
        .context("the new prefix has no ipPrefix")?;
    ok(&format!(
        "the user's public IP prefix {NAME} = {cidr} (Standard, Regional, IPv4 /31) in azure-sim"
    ));
    apply(
        lab,
        opts,
        "byo-sgc.yaml",
        &sgc_yaml("byo", &format!("  publicIpPrefixId: {id}\n")),
    )
    .await?;
    let s = ready_sgc(lab, opts, "byo").await?;
    let (got, uid) = (prefix_of(&s)?, uid_of(&s));
    if got != cidr {
        bail!("status.egressIpPrefix is {got}, not the BYO prefix {cidr}");
    }
    ok(&format!(
        "{DEMO_NS}/byo is Ready; status.egressIpPrefix = {got}, the BYO prefix's CIDR"
    ));
    let sb = lab.add_pod(opts, "byo-client", 0, Some("byo")).await?;
    let demo = lab.prefix.into_iter().collect::<Vec<_>>();
    check_egress(opts, &sb, cidr, &demo).await?;
    match az.with_state(|s| s.world.delete_public_ip_prefix(RG, NAME)) {
        Err(e) => ok(&format!(
            "deleting the prefix while the configuration uses it is refused: {} ({})",
            e.code, e.message
        )),
        Ok(_) => bail!("azure-sim deleted the prefix while the configuration used it"),
    }
    remove_pod(lab, opts, "byo-client").await?;
    delete_sgc(lab, opts, "byo", &uid).await?;
    let exists = az.with_state(|s| s.world.get_public_ip_prefix(RG, NAME).is_ok());
    if !exists {
        bail!("the operator deleted the user's own prefix (it must only release it)");
    }
    match az.with_state(|s| s.world.delete_public_ip_prefix(RG, NAME)) {
        Ok(true) => {}
        Ok(false) => bail!("the prefix vanished before it was deleted"),
        Err(e) => bail!(
            "the prefix is still not deletable after the configuration was deleted: {} ({})",
            e.code,
            e.message
        ),
    }
    let blocks = lab
        .azure
        .as_ref()
        .map(|a| a.inventory()["publicBlocks"].to_string())
        .unwrap_or_default();
    if blocks.contains(&cidr.to_string()) {
        bail!("{cidr} is still allocated after the prefix was deleted: {blocks}");
    }
    ok(&format!(
        "the operator left the user's prefix in place and released it: deleting {NAME} succeeded, {cidr} is free again"
    ));
    Ok(())
}

// ------------------------------------------------------------------------------------------ scenario 3

/// A TCP service in pod namespace `ns` on `port`: answers `hello from <pod>, you are <peer address>\n`.
fn serve_hello(ns: &str, pod: &str, port: u16) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let l = super::dataplane::in_netns(ns, move || {
        let l = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .with_context(|| format!("binding TCP port {port}"))?;
        l.set_nonblocking(true).context("nonblocking")?;
        Ok(l)
    })?;
    let l = tokio::net::TcpListener::from_std(l).context("tokio listener")?;
    let pod = pod.to_string();
    Ok(tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        while let Ok((mut s, from)) = l.accept().await {
            let msg = format!("hello from {pod}, you are {}\n", from.ip());
            tokio::spawn(async move {
                let _ = s.write_all(msg.as_bytes()).await;
            });
        }
    }))
}

/// One TCP connection from inside `ns` to `to`: what the server wrote.
async fn tcp_get(ns: &str, to: SocketAddr) -> Option<String> {
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || {
        super::dataplane::in_netns(&ns, move || {
            use std::io::Read as _;
            let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut out = String::new();
            c.read_to_string(&mut out)?;
            Ok(out)
        })
        .ok()
    })
    .await
    .ok()
    .flatten()
}

async fn ingress(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    // No excludeCidrs: everything the pod starts goes to wg0, so a reply to the client (another pod) only takes
    // eth0 because the connection came in there.
    apply(lab, opts, "ingress-sgc.yaml", &sgc_yaml("ingress", "")).await?;
    let s = ready_sgc(lab, opts, "ingress").await?;
    let (prefix, uid) = (prefix_of(&s)?, uid_of(&s));
    let server = lab.add_pod(opts, "web", 0, Some("ingress")).await?;
    check_egress(opts, &server, prefix, &[]).await?;
    let web_ip = server.ipv4().context("web has no IPv4")?;
    let client = lab
        .pods
        .iter()
        .find(|(_, sb)| sb.annotations.is_empty())
        .map(|(_, sb)| sb.clone())
        .context("no plain pod")?;
    let client_ip = client.ipv4().context("the plain pod has no IPv4")?;
    let handle = serve_hello(&server.netns, "web", 8080)?;
    let to = SocketAddr::from((web_ip, 8080));
    let answer = tcp_get(&client.netns, to).await;
    handle.abort();
    let want = format!("hello from web, you are {client_ip}");
    match answer {
        Some(a) if a.trim() == want => ok(&format!(
            "plain pod {DEMO_NS}/{} ({client_ip}) -> annotated pod {DEMO_NS}/web {to}: {:?} (served, no NAT, the reply left by eth0 although web's default route is wg0)",
            client.name,
            a.trim()
        )),
        other => bail!(
            "ingress to the annotated pod failed: {} -> {to} answered {other:?}, want {want:?}",
            client.name
        ),
    }
    remove_pod(lab, opts, "web").await?;
    delete_sgc(lab, opts, "ingress", &uid).await
}

// ------------------------------------------------------------------------------------------ scenario 5

async fn two_configs(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    let mut made = Vec::new();
    for name in ["team-a", "team-b"] {
        apply(lab, opts, &format!("{name}-sgc.yaml"), &sgc_yaml(name, "")).await?;
    }
    for name in ["team-a", "team-b"] {
        let s = ready_sgc(lab, opts, name).await?;
        let port = s
            .status
            .as_ref()
            .and_then(|st| st.gateway_server_profile.as_ref())
            .map(|p| format!("{}:{}", p.ip, p.port))
            .unwrap_or_default();
        made.push((name, prefix_of(&s)?, uid_of(&s), port));
    }
    let (a, b) = (made[0].1, made[1].1);
    if a == b || a.contains(&b.network()) || b.contains(&a.network()) {
        bail!("the two configurations share a prefix: {a} and {b}");
    }
    ok(&format!(
        "{DEMO_NS}/team-a egressIpPrefix {a} (tunnel {}), {DEMO_NS}/team-b {b} (tunnel {}): one pool, two prefixes, two LB rules",
        made[0].3, made[1].3
    ));
    let pa = lab.add_pod(opts, "client-a", 0, Some("team-a")).await?;
    let pb = lab.add_pod(opts, "client-b", 1, Some("team-b")).await?;
    let demo: Vec<ipnet::Ipv4Net> = lab.prefix.into_iter().collect();
    check_egress(opts, &pa, a, &[vec![b], demo.clone()].concat()).await?;
    check_egress(opts, &pb, b, &[vec![a], demo].concat()).await?;
    remove_pod(lab, opts, "client-a").await?;
    remove_pod(lab, opts, "client-b").await?;
    for (name, _, uid, _) in made {
        delete_sgc(lab, opts, name, &uid).await?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------ scenario 6

/// One ipConfiguration of a VM-based pool's NIC as azure-sim holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NicIpConfig {
    vm: String,
    nic: String,
    name: String,
    primary: bool,
    private: Option<Ipv4Addr>,
    has_public: bool,
    backend_pools: usize,
}

/// Every ipConfiguration of the primary NICs of VMs `vms`.
fn nic_ip_configs(az: &SimHandle, vms: &[String]) -> Vec<NicIpConfig> {
    az.with_state(|s| {
        let mut out = Vec::new();
        for vm in vms {
            let Some(nic) = s.world.node(vm).and_then(|n| s.world.node_primary_nic(&n)) else {
                continue;
            };
            let configs = nic
                .pointer("/properties/ipConfigurations")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            for c in configs {
                let at = |ptr: &str| c.pointer(ptr);
                out.push(NicIpConfig {
                    vm: vm.clone(),
                    nic: nic["name"].as_str().unwrap_or_default().to_string(),
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    primary: at("/properties/primary").and_then(|v| v.as_bool()) == Some(true),
                    private: at("/properties/privateIPAddress")
                        .and_then(|v| v.as_str())
                        .and_then(|v| v.parse().ok()),
                    has_public: at("/properties/publicIPAddress").is_some(),
                    backend_pools: at("/properties/loadBalancerBackendAddressPools")
                        .and_then(|v| v.as_array())
                        .map_or(0, Vec::len),
                });
            }
        }
        out
    })
}

/// The load balancers' frontends, rules and probes, to compare before and after a scenario.
fn lb_layout(az: &SimHandle) -> (Vec<Ipv4Addr>, Vec<String>, Vec<String>) {
    let v = az.with_state(|s| fabric::read_view(&s.world, &Vec::<String>::new()));
    let mut frontends = v.frontends;
    frontends.sort();
    let rules = v.rules.iter().map(|r| r.name.clone()).collect();
    let probes = v.probes.iter().map(|p| p.id.clone()).collect();
    (frontends, rules, probes)
}

/// The VM-based pool's gateway nodes as AKS registers them (Node with its agent pool label and the VM as
/// `spec.providerID`) and the chart's gateway DaemonSet pod on each; once per run.
async fn start_vm_pool_gateways(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    if lab.vm_pool_agents {
        return Ok(());
    }
    let az = azure(lab)?;
    // DaemonSet pod numbers after those of the gateway VMs step 5 started.
    let first = lab.gateway_vms.len() + lab.other_pool_vms.values().map(Vec::len).sum::<usize>();
    for (j, (node, _, ns)) in lab.vm_pool_vms.clone().iter().enumerate() {
        let vm_id = az
            .with_state(|s| {
                s.world
                    .node(node)
                    .and_then(|v| v["id"].as_str().map(str::to_string))
            })
            .with_context(|| format!("azure-sim has no VM {node}"))?;
        let provider_id = format!("azure://{vm_id}");
        lab.start_gateway_agent(
            &format!("gateway-agent-{VM_POOL}-{j}"),
            first + j,
            node,
            ns,
            VM_POOL,
            Some(&provider_id),
            opts,
        )
        .await?;
    }
    lab.vm_pool_agents = true;
    ok(&format!(
        "the {VM_POOL} VMs joined as gateway Nodes (agentpool={VM_POOL}, providerID azure://<VM ID>); the chart's gateway DaemonSet selects them and runs the real agent on each"
    ));
    Ok(())
}

/// Asks the echo service at `to` from pod `sb` which source it saw (UDP, TCP); fails when it does not answer.
async fn seen_at(
    opts: &Options,
    sb: &runtime::Sandbox,
    to: Ipv4Addr,
) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    use super::dataplane::{tcp_source_seen, udp_source_seen};
    let to = SocketAddr::from((to, ECHO_PORT));
    let udp = udp_source_seen(&sb.netns, to, opts.step_timeout)
        .await
        .with_context(|| format!("{to} never answered UDP from pod {}", sb.name))?;
    let tcp = tcp_source_seen(&sb.netns, to, opts.step_timeout)
        .await
        .with_context(|| format!("{to} did not answer TCP from pod {}", sb.name))?;
    Ok((udp, tcp))
}

/// Prints `line` as verified when `good`, else as failed and returns an error naming `what`.
fn verdict(good: bool, line: &str, what: &str) -> anyhow::Result<()> {
    if good {
        ok(line);
        Ok(())
    } else {
        println!("    \u{2718} {line}: NO");
        bail!("{what}")
    }
}

async fn private(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    const NAME: &str = "private";
    const POD: &str = "private-client";
    let az = azure(lab)?;
    let vms: Vec<String> = lab.vm_pool_vms.iter().map(|v| v.0.clone()).collect();
    if vms.is_empty() {
        bail!("the lab wired no VM of the {VM_POOL} pool (is it in the seed?)");
    }
    let lb_before = lb_layout(&az);
    start_vm_pool_gateways(lab, opts).await?;

    apply(
        lab,
        opts,
        "gwvms-pool.yaml",
        &format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: GatewayPool\nmetadata:\n  name: {VM_POOL}\nspec:\n  gatewayNodepoolName: {VM_POOL}\n  publicIpPrefixSize: 31\n"
        ),
    )
    .await?;
    apply(
        lab,
        opts,
        "private-sgc.yaml",
        &format!(
            "apiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: StaticGatewayConfiguration\nmetadata:\n  name: {NAME}\n  namespace: {DEMO_NS}\nspec:\n  gatewayNodepoolName: {VM_POOL}\n  provisionPublicIps: false\n  defaultRoute: azureNetworking\n  excludeCidrs:\n    - {ONPREM_RANGE}\n"
        ),
    )
    .await?;
    let s = ready_sgc(lab, opts, NAME).await?;
    let uid = uid_of(&s);
    let st = s.status.clone().unwrap_or_default();
    let prefix = st.egress_ip_prefix.clone().unwrap_or_default();
    let listed: Vec<Ipv4Addr> = prefix
        .split(',')
        .map(|a| {
            a.trim()
                .parse()
                .with_context(|| format!("status.egressIpPrefix {prefix:?}: {a:?} is not an IPv4 address"))
        })
        .collect::<anyhow::Result<_>>()?;
    let ip_config = api::names::managed_resource_name(&uid);
    let ours: Vec<NicIpConfig> = nic_ip_configs(&az, &vms)
        .into_iter()
        .filter(|c| c.name == ip_config)
        .collect();
    let mut in_azure: Vec<Ipv4Addr> = ours.iter().filter_map(|c| c.private).collect();
    in_azure.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    let public: Vec<&str> = ours
        .iter()
        .filter(|c| c.has_public)
        .map(|c| c.nic.as_str())
        .collect();
    verdict(
        sorted == in_azure && in_azure.len() == vms.len() && public.is_empty(),
        &format!(
            "{DEMO_NS}/{NAME} is Ready; status.egressIpPrefix = {prefix:?}: the secondary private IPs of ipConfiguration {ip_config} on the {VM_POOL} NICs in azure-sim ({}), no public IP on them{}",
            ours.iter()
                .map(|c| format!(
                    "{} {}",
                    c.nic,
                    c.private.map(|p| p.to_string()).unwrap_or_default()
                ))
                .collect::<Vec<_>>()
                .join(", "),
            if public.is_empty() {
                String::new()
            } else {
                format!(" (public IP on {})", public.join(", "))
            }
        ),
        "status.egressIpPrefix is not the VM-based pool's secondary private IPs",
    )?;

    // The pool: VM-based, its instances the NICs, each naming its Node by providerID.
    let pools: Api<api::GatewayPool> = Api::all(lab.client()?);
    let want_nodes = vms.clone();
    lab.wait(
        &format!("GatewayPool {VM_POOL}: VirtualMachines, 2 ready instances naming the Nodes"),
        opts,
        || {
            let (pools, want) = (pools.clone(), want_nodes.clone());
            async move {
                let Some(st) = pools.get(VM_POOL).await?.status else {
                    return Ok(false);
                };
                let mut nodes: Vec<String> =
                    st.instances.iter().filter_map(|i| i.node_name.clone()).collect();
                nodes.sort();
                Ok(st.pool_type == Some(api::pool::PoolType::VirtualMachines)
                    && st.ready_instances == want.len() as i32
                    && nodes == want)
            }
        },
    )
    .await?;
    ok(&format!(
        "GatewayPool {VM_POOL}: poolType VirtualMachines, {} ready instances (the pre-created NICs) on Nodes {}",
        vms.len(),
        vms.join(", ")
    ));

    // The gateways: the agents put the frontend on eth0 and answer the probe; the fabric balances the rule.
    let profile = st
        .gateway_server_profile
        .clone()
        .context("no gatewayServerProfile")?;
    let frontend: Ipv4Addr = profile
        .ip
        .parse()
        .with_context(|| format!("gatewayServerProfile.ip {:?}", profile.ip))?;
    for (node, _, ns) in lab.vm_pool_vms.clone() {
        let want = format!("{frontend}/32");
        lab.wait(
            &format!("the LB frontend {want} on eth0 of {node} (floating IP)"),
            opts,
            move || {
                let found = ip_out(&ns, &["-4", "-o", "addr", "show", "dev", "eth0"])
                    .split_whitespace()
                    .any(|w| w == want);
                async move { Ok(found) }
            },
        )
        .await?;
    }
    let rule = az
        .with_state(|s| fabric::read_view(&s.world, &vms))
        .rules
        .into_iter()
        .find(|r| r.frontend == frontend && i64::from(r.port) == i64::from(profile.port))
        .with_context(|| format!("azure-sim has no LB rule for {frontend}:{}", profile.port))?;
    let primaries: Vec<Ipv4Addr> = lab.vm_pool_vms.iter().map(|v| v.1).collect();
    let mut status = lab.fabric.as_ref().context("fabric not running")?.status.clone();
    let (rule_name, all) = (rule.name.clone(), primaries.clone());
    lab.wait(
        &format!("the fabric's probes put both {VM_POOL} VMs behind rule {rule_name}"),
        opts,
        || {
            let s = status.borrow_and_update().clone();
            let good = s
                .desired
                .serving
                .get(&rule_name)
                .is_some_and(|b| all.iter().all(|a| b.contains(a)));
            async move { Ok(good) }
        },
    )
    .await?;
    ok(&format!(
        "LB rule {} ({frontend}:{} UDP, floating IP, the {VM_POOL} frontend): backends {:?} healthy (each agent answers {})",
        rule.name,
        profile.port,
        primaries,
        api::names::lb_probe_path(&uid)
    ));

    // A pod using it: only the on-premises range goes through the gateways.
    let sb = lab.add_pod(opts, POD, 0, Some(NAME)).await?;
    let pod_ip = sb.ipv4().context("the pod has no IPv4")?;
    let dev_of = |to: Ipv4Addr| -> String {
        let out = ip_out(&sb.netns, &["-4", "route", "get", &to.to_string()]);
        let mut w = out.split_whitespace();
        w.position(|x| x == "dev");
        w.next().unwrap_or("(no route)").to_string()
    };
    let (onprem_dev, inet_dev, other_dev) = (dev_of(ONPREM_IP), dev_of(ECHO_IP), dev_of(ONPREM_OTHER_IP));
    verdict(
        onprem_dev == "wg0" && inet_dev == "eth0" && other_dev == "eth0",
        &format!(
            "{DEMO_NS}/{POD} (defaultRoute azureNetworking): {ONPREM_RANGE} via {onprem_dev}, {ECHO_IP} and {ONPREM_OTHER_IP} via {inet_dev} and {other_dev} -> only excludeCidrs through the tunnel, the default route stays eth0"
        ),
        "the pod's routes do not follow defaultRoute azureNetworking",
    )?;
    let (udp, tcp) = seen_at(opts, &sb, ONPREM_IP).await?;
    let whose = |a: Ipv4Addr| {
        ours.iter()
            .find(|c| c.private == Some(a))
            .map(|c| format!(" ({}'s secondary IP)", c.vm))
            .unwrap_or_default()
    };
    verdict(
        listed.contains(&udp) && listed.contains(&tcp),
        &format!(
            "{DEMO_NS}/{POD} -> on-premises {ONPREM_IP} (in excludeCidrs): it saw UDP from {udp}, TCP from {tcp}{} -> one of the gateways' private IPs {prefix}",
            whose(udp)
        ),
        "on-premises traffic did not leave from a gateway's private IP",
    )?;
    let (udp, tcp) = seen_at(opts, &sb, ONPREM_OTHER_IP).await?;
    verdict(
        udp == pod_ip && tcp == pod_ip,
        &format!(
            "{DEMO_NS}/{POD} -> on-premises {ONPREM_OTHER_IP} (not in excludeCidrs): it saw UDP from {udp}, TCP from {tcp} -> the pod's own IP {pod_ip} (Azure networking, no gateway)"
        ),
        "traffic outside excludeCidrs did not keep Azure networking",
    )?;
    let (udp, tcp) = seen_at(opts, &sb, ECHO_IP).await?;
    let outbound = lab.outbound;
    verdict(
        !listed.contains(&udp) && !listed.contains(&tcp) && Some(udp) == outbound && Some(tcp) == outbound,
        &format!(
            "{DEMO_NS}/{POD} -> internet {ECHO_IP}: the echo host saw UDP from {udp}, TCP from {tcp} -> not from {prefix} (upstream scenario 6): the cluster's outbound IP, the node's own path"
        ),
        "internet traffic of the private-mode pod did not take the node's default path",
    )?;

    // Everything of it goes again, and nothing of it is left in Azure or on the gateways.
    remove_pod(lab, opts, POD).await?;
    delete_sgc(lab, opts, NAME, &uid).await?;
    let out = lab
        .kubectl(opts, &["delete", "gatewaypool", VM_POOL, "--wait=false"])
        .await?;
    if !out.ok {
        bail!("kubectl delete gatewaypool {VM_POOL}: {}", out.stderr.trim());
    }
    info(&format!(
        "$ kubectl delete gatewaypool {VM_POOL}   # {}",
        out.stdout.trim()
    ));
    lab.wait(&format!("GatewayPool {VM_POOL} gone"), opts, || {
        let pools = pools.clone();
        async move { Ok(pools.get_opt(VM_POOL).await?.is_none()) }
    })
    .await?;
    lab.wait_until_none(
        &format!("the {VM_POOL} NICs hold only their primary ipConfiguration without backend pool; the load balancer is as before"),
        opts,
        "azure-sim",
        ", ",
        || {
            let mut l: Vec<String> = nic_ip_configs(&az, &vms)
                .into_iter()
                .filter(|c| !c.primary || c.backend_pools > 0)
                .map(|c| format!("{}/{} (backend pools: {})", c.nic, c.name, c.backend_pools))
                .collect();
            let lb = lb_layout(&az);
            if lb != lb_before {
                l.push(format!("load balancer {lb:?}, before {lb_before:?}"));
            }
            l
        },
    )
    .await?;
    let (frontends, rules, probes) = &lb_before;
    ok(&format!(
        "azure-sim: the {VM_POOL} NICs are back to their primary ipConfiguration (no secondary, no backend pool); the load balancer has the {} frontend(s), {} rule(s) and {} probe(s) it had before",
        frontends.len(),
        rules.len(),
        probes.len()
    ));
    let gws = lab.vm_pool_vms.clone();
    lab.wait(
        &format!("the {VM_POOL} gateways drop the frontend address, wg links and wireguard-go"),
        opts,
        move || {
            let empty = dataplane_leftovers(&gws, &[]).is_empty();
            async move { Ok(empty) }
        },
    )
    .await?;
    ok(&format!(
        "data plane: no frontend address, wg link or wireguard-go left on the {VM_POOL} gateways"
    ));
    Ok(())
}

// ------------------------------------------------------------------------------------------ scenario 9

/// Packets per second of the failover stream.
const STREAM_PPS: u64 = 200;

/// A UDP stream from a pod to the echo host with sequence numbers; the echo host's answers say which source
/// address it saw for each.
struct Stream {
    start: Instant,
    /// Send time of each sequence number.
    sent: Arc<Mutex<Vec<Duration>>>,
    /// (receive time, sequence number, source the echo host saw).
    got: Arc<Mutex<Vec<(Duration, u64, Ipv4Addr)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Stream {
    fn start(ns: &str) -> anyhow::Result<Stream> {
        let sock = super::dataplane::in_netns(ns, || {
            let s = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })?;
        let sock = Arc::new(tokio::net::UdpSocket::from_std(sock).context("tokio UDP socket")?);
        let start = Instant::now();
        let sent: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let got: Arc<Mutex<Vec<(Duration, u64, Ipv4Addr)>>> = Arc::default();
        let (s2, sent2) = (sock.clone(), sent.clone());
        let sender = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / STREAM_PPS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for seq in 0u64.. {
                tick.tick().await;
                if let Ok(mut g) = sent2.lock() {
                    g.push(start.elapsed());
                }
                let _ = s2.send_to(format!("seq:{seq}").as_bytes(), echo()).await;
            }
        });
        let got2 = got.clone();
        let receiver = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                // A failed receive (e.g. an ICMP error queued while the path changes) is not the end.
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                if from != echo() {
                    continue;
                }
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let Some((src, payload)) = text.split_once(' ') else {
                    continue;
                };
                let (Ok(src), Some(Ok(seq))) = (
                    src.parse::<Ipv4Addr>(),
                    payload.strip_prefix("seq:").map(str::parse::<u64>),
                ) else {
                    continue;
                };
                if let Ok(mut g) = got2.lock() {
                    g.push((start.elapsed(), seq, src));
                }
            }
        });
        Ok(Stream {
            start,
            sent,
            got,
            tasks: vec![sender, receiver],
        })
    }

    fn got(&self) -> Vec<(Duration, u64, Ipv4Addr)> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// The source of the last `n` answers when they all agree.
    fn steady(&self, n: usize) -> Option<Ipv4Addr> {
        let got = self.got();
        if got.len() < n {
            return None;
        }
        let last = &got[got.len() - n..];
        let src = last[0].2;
        last.iter().all(|g| g.2 == src).then_some(src)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How the gateway fails in one measured run of scenario 9.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// SIGKILL of the gateway agent; the node's data plane (its `wireguard-go`, routes, nft) lives on.
    AgentKilled,
    /// The node is gone: its VM is cut off the network (every packet in or out dropped) and its agent
    /// SIGKILLed; brought back as it was afterwards.
    NodeGone,
    /// SIGTERM of the gateway agent (planned drain): the probe answers 503 while the node keeps forwarding
    /// until its pods have moved.
    Drain,
}

impl Outage {
    /// The kinds, in the order each round runs them.
    pub const ALL: [Outage; 3] = [Outage::AgentKilled, Outage::NodeGone, Outage::Drain];

    /// The label printed in the scenario's lines (`failover <label>: ...`).
    pub fn label(self) -> &'static str {
        match self {
            Outage::AgentKilled => "agent-SIGKILL",
            Outage::NodeGone => "node-gone",
            Outage::Drain => "SIGTERM-drain",
        }
    }
}

/// Rounds of scenario 9 (one run of each kind per round): `LAB_FAILOVER_RUNS`, default 1 (CI). The benchmark
/// in docs/performance.md uses 5 or more.
fn failover_rounds() -> anyhow::Result<usize> {
    match std::env::var("LAB_FAILOVER_RUNS") {
        Err(_) => Ok(1),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => bail!("LAB_FAILOVER_RUNS={v:?}: must be a number of rounds from 1 to 100"),
        },
    }
}

/// The longest drain the gateway agents get for scenario 9 (the lab's chart values give 1 s, which is
/// shorter than the fabric's probe interval, so a SIGTERM could not be a drain).
const FAILOVER_DRAIN_SECONDS: &str = "30";

/// One measured failover.
#[derive(Debug, Clone)]
struct Failover {
    outage: Outage,
    /// From the outage until the fabric's probe took the gateway out of the rule.
    detect: Option<Duration>,
    /// The last answer through the old gateway and the first through the new one, after the outage.
    last_old: Option<Duration>,
    first_new: Duration,
    /// Packets sent after the outage and before the first answer through the new gateway that got no answer.
    lost: usize,
    /// Answers through the old gateway after the outage (its data plane outlives the agent).
    old_after: usize,
    /// SIGTERM: when the agent exited (its drain ended), from the signal.
    exited: Option<Duration>,
    /// Failback: packets sent after the gateway came back that got no answer before the stream was steady
    /// again, and the longest time without answers.
    failback_lost: usize,
    failback_gap: Duration,
    /// Session restarts the node agent made for the pod during the run (forced handshakes).
    restarts: Option<u64>,
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The gateway (index in `lab.gateway_vms`) whose secondary IP has public address `public`.
fn gateway_of(lab: &Lab, public: Ipv4Addr) -> Option<(usize, Ipv4Addr)> {
    let names: Vec<String> = lab.gateway_vms.iter().map(|g| g.0.clone()).collect();
    let view = lab
        .azure
        .as_ref()?
        .handle()
        .with_state(|s| fabric::read_view(&s.world, &names));
    let vm = view
        .vms
        .iter()
        .find(|v| v.secondaries.iter().any(|(_, p)| *p == Some(public)))?;
    let i = lab.gateway_vms.iter().position(|g| g.0 == vm.vm)?;
    Some((i, vm.primary))
}

/// The other gateway's public address inside `prefix`.
fn other_public(lab: &Lab, not: usize, prefix: ipnet::Ipv4Net) -> Option<Ipv4Addr> {
    let names: Vec<String> = lab.gateway_vms.iter().map(|g| g.0.clone()).collect();
    let view = lab
        .azure
        .as_ref()?
        .handle()
        .with_state(|s| fabric::read_view(&s.world, &names));
    let other = lab.gateway_vms.iter().enumerate().find(|(i, _)| *i != not)?.1;
    view.vms
        .iter()
        .find(|v| v.vm == other.0)?
        .secondaries
        .iter()
        .find_map(|(_, p)| p.filter(|p| prefix.contains(p)))
}

/// Waits until every gateway answers the fabric's probe and is behind the demo rule again.
async fn all_gateways_serving(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    let mut status = lab.fabric.as_ref().context("fabric not running")?.status.clone();
    let all: Vec<Ipv4Addr> = lab.gateway_vms.iter().map(|g| g.1).collect();
    lab.wait(
        "the fabric's probes put every gateway behind the rule again",
        opts,
        || {
            let s = status.borrow_and_update().clone();
            let all = all.clone();
            async move {
                Ok(!s.desired.serving.is_empty()
                    && s.desired
                        .serving
                        .values()
                        .all(|b| all.iter().all(|a| b.contains(a))))
            }
        },
    )
    .await
}

/// Whether process `pid` has exited (gone, or a zombie not yet reaped).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// The node agent's `pod_tunnel_session_restarts_total` for pod `<ns>/<name>` on node `node` (its metrics
/// port in the node's namespace), or None when it does not answer.
async fn session_restarts(lab: &Lab, node: usize, pod: &str) -> Option<u64> {
    let ns = &lab.nodes.get(node)?.netns;
    let (code, body) =
        super::dataplane::get_from(ns, Ipv4Addr::LOCALHOST, NODE_AGENT_METRICS_PORT, "/metrics").await?;
    if code != 200 {
        return None;
    }
    let needle = format!("pod=\"{pod}\"");
    Some(
        body.lines()
            .filter(|l| l.starts_with("pod_tunnel_session_restarts_total{") && l.contains(&needle))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

/// The node agent's metrics port (the chart's `gatewayCNIManager.metricsBindPort`).
const NODE_AGENT_METRICS_PORT: u16 = 8083;

/// Answers after `from`: packets sent at or after `from` (and before `until`) without an answer, and the
/// longest time without an answer from `from` on (until the last answer).
fn gaps_after(
    sent: &[Duration],
    got: &[(Duration, u64, Ipv4Addr)],
    from: Duration,
    until: Duration,
) -> (usize, Duration) {
    let answered: std::collections::BTreeSet<u64> = got.iter().map(|g| g.1).collect();
    let lost = sent
        .iter()
        .enumerate()
        .filter(|(seq, at)| **at >= from && **at < until && !answered.contains(&(*seq as u64)))
        .count();
    let mut times: Vec<Duration> = got.iter().map(|g| g.0).filter(|t| *t >= from).collect();
    times.sort();
    let mut prev = from;
    let mut gap = Duration::ZERO;
    for t in times {
        gap = gap.max(t.saturating_sub(prev));
        prev = t;
    }
    (lost, gap)
}

async fn measure(
    lab: &mut Lab,
    opts: &Options,
    node: usize,
    sb: &runtime::Sandbox,
    prefix: ipnet::Ipv4Net,
    outage: Outage,
    long_drain: &mut std::collections::BTreeMap<String, super::procs::Stopped>,
) -> anyhow::Result<Failover> {
    use nix::sys::signal::{Signal, kill};
    let stream = Stream::start(&sb.netns)?;
    let deadline = Instant::now() + opts.step_timeout;
    info("waiting: 100 answers in a row through one gateway");
    let old = loop {
        if let Some(a) = stream.steady(100) {
            break a;
        }
        if Instant::now() >= deadline {
            bail!(
                "the stream never settled on one gateway: {:?}",
                stream.got().last()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (idx, old_primary) =
        gateway_of(lab, old).with_context(|| format!("{old} is no gateway's public IP (prefix {prefix})"))?;
    if !prefix.contains(&old) {
        bail!("the stream leaves from {old}, outside {prefix}");
    }
    let new = other_public(lab, idx, prefix).context("no other gateway in the prefix")?;
    let agent = format!("gateway-agent-{idx}");
    let vm_ns = lab.gateway_vms[idx].2.clone();
    let pod = format!("{}/{}", sb.namespace, sb.name);
    let restarts_before = session_restarts(lab, node, &pod).await;
    info(&format!(
        "{} pps from {pod} to {}: answered through {} ({old}); {}",
        STREAM_PPS,
        echo(),
        lab.gateway_vms[idx].0,
        match outage {
            Outage::AgentKilled => format!("SIGKILL to {agent}"),
            Outage::NodeGone => format!(
                "cutting {} off the network and SIGKILL to {agent}",
                lab.gateway_vms[idx].0
            ),
            Outage::Drain => format!("SIGTERM to {agent} (drain up to {FAILOVER_DRAIN_SECONDS} s)"),
        }
    ));
    let pid = lab
        .children
        .pid(&agent)
        .with_context(|| format!("{agent} is not running"))?;
    let raw = nix::unistd::Pid::from_raw(i32::try_from(pid).context("pid")?);
    let mut status = lab.fabric.as_ref().context("fabric not running")?.status.clone();
    let t0 = stream.start.elapsed();
    match outage {
        Outage::AgentKilled => kill(raw, Signal::SIGKILL)?,
        Outage::NodeGone => {
            super::dataplane::cut_off(&vm_ns)?;
            kill(raw, Signal::SIGKILL)?;
        }
        Outage::Drain => kill(raw, Signal::SIGTERM)?,
    }
    let mut detect = None;
    let mut exit_at = None;
    let limit = opts.step_timeout.max(Duration::from_secs(60));
    let deadline = Instant::now() + limit;
    loop {
        if detect.is_none() {
            let s = status.borrow_and_update().clone();
            if s.desired.serving.values().all(|b| !b.contains(&old_primary)) {
                detect = Some(stream.start.elapsed().saturating_sub(t0));
            }
        }
        if exit_at.is_none() && exited(pid) {
            exit_at = Some(stream.start.elapsed().saturating_sub(t0));
        }
        if stream.steady(40) == Some(new) && exit_at.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let s = status.borrow().clone();
            bail!(
                "after {} of {agent}, the echo host did not see {new} within {}s (last answer {:?}; agent exited: {exit_at:?}); the fabric took the gateway out after {detect:?}, serves {:?}",
                outage.label(),
                limit.as_secs(),
                stream.got().last(),
                s.desired.serving,
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = lab
        .children
        .stop_one(&agent, Signal::SIGKILL, Duration::from_secs(5))
        .await?;
    let got = stream.got();
    let sent = stream.sent.lock().map(|g| g.clone()).unwrap_or_default();
    let after: Vec<&(Duration, u64, Ipv4Addr)> = got.iter().filter(|g| g.0 >= t0).collect();
    let first = after
        .iter()
        .find(|g| g.2 == new)
        .context("no answer through the new gateway")?;
    let last_old = after.iter().filter(|g| g.2 == old).map(|g| g.0 - t0).max();
    let old_after = after.iter().filter(|g| g.2 == old).count();
    let answered: std::collections::BTreeSet<u64> = got.iter().map(|g| g.1).collect();
    let lost = sent
        .iter()
        .enumerate()
        .filter(|(seq, at)| **at >= t0 && (*seq as u64) < first.1 && !answered.contains(&(*seq as u64)))
        .count();
    let first_new = first.0 - t0;
    ok(&format!(
        "{} of {agent}: the echo host sees {new} (the other gateway) {} after it; the probe took {} out after {}; last answer through {old} at {} ({} answers after it); {} packets lost ({} pps){}",
        outage.label(),
        fmt_ms(first_new),
        lab.gateway_vms[idx].0,
        detect.map(fmt_ms).unwrap_or_else(|| "(not seen)".into()),
        last_old.map(fmt_ms).unwrap_or_else(|| "-".into()),
        old_after,
        lost,
        STREAM_PPS,
        match (outage, exit_at) {
            (Outage::Drain, Some(e)) => format!("; the agent drained for {}", fmt_ms(e)),
            _ => String::new(),
        }
    ));
    // Bring the node back, as its replacement would be (the stream keeps running: failback is measured).
    if outage == Outage::NodeGone {
        super::dataplane::reconnect(&vm_ns)?;
    }
    let again = long_drain
        .entry(agent.clone())
        .or_insert_with(|| stopped.with_flag("lb-probe-drain-delay-seconds", FAILOVER_DRAIN_SECONDS))
        .clone();
    let back = stream.start.elapsed();
    lab.children.restart(&again, &opts.work_dir)?;
    all_gateways_serving(lab, opts).await?;
    let serving = stream.start.elapsed();
    let deadline = Instant::now() + opts.step_timeout;
    let steady_from = loop {
        let got = stream.got();
        if got.len() >= 100 && got[got.len() - 100].0 > serving && stream.steady(100).is_some() {
            break got[got.len() - 100].0;
        }
        if Instant::now() >= deadline {
            bail!(
                "after {agent} came back, the stream did not settle (last answer {:?})",
                got.last()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let got = stream.got();
    let sent = stream.sent.lock().map(|g| g.clone()).unwrap_or_default();
    drop(stream);
    let (failback_lost, failback_gap) = gaps_after(&sent, &got, back, steady_from);
    let restarts_after = session_restarts(lab, node, &pod).await;
    let restarts = restarts_before
        .zip(restarts_after)
        .map(|(b, a)| a.saturating_sub(b));
    // Slower than the node agent should make it (the probe interval plus a few seconds): show what it saw.
    if first_new > limit_hint() || failback_gap > limit_hint() {
        let log = lab
            .children
            .logs()
            .into_iter()
            .find(|(n, _)| *n == format!("node-agent-{node}"))
            .map(|(_, p)| super::procs::tail(&p, 25))
            .unwrap_or_default();
        info(&format!("slow run: node-agent-{node}'s last log lines:\n{log}"));
    }
    info(&format!(
        "{agent} back; both gateways behind the rule {} after the restart; failback: {failback_lost} packets lost, longest gap {}; the node agent restarted the pod's session {} times in this run",
        fmt_ms(serving.saturating_sub(back)),
        fmt_ms(failback_gap),
        restarts
            .map(|n| n.to_string())
            .unwrap_or_else(|| "(metrics unreadable)".into())
    ));
    Ok(Failover {
        outage,
        detect,
        last_old,
        first_new,
        lost,
        old_after,
        exited: exit_at,
        failback_lost,
        failback_gap,
        restarts,
    })
}

/// A failover or failback slower than this is shown with the node agent's log (diagnosis, not a check).
fn limit_hint() -> Duration {
    Duration::from_secs(8)
}

/// p50 and max of `v` (sorted copy; nearest rank).
fn p50_max<T: Copy + Ord>(v: &[T]) -> Option<(T, T)> {
    let mut v = v.to_vec();
    v.sort();
    Some((*v.get((v.len().saturating_sub(1)) / 2)?, *v.last()?))
}

async fn failover(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    use nix::sys::signal::Signal;
    let prefix = lab.prefix.context("no egress prefix")?;
    let (node, sb) = lab
        .pods
        .iter()
        .find(|(_, sb)| sb.name == super::steps::PODS[0].0)
        .map(|(n, sb)| (*n, sb.clone()))
        .context("no annotated demo pod")?;
    let names: Vec<String> = lab.gateway_vms.iter().map(|g| g.0.clone()).collect();
    let view = azure(lab)?.with_state(|s| fabric::read_view(&s.world, &names));
    let limit = view
        .probes
        .first()
        .map(|p| p.interval * p.threshold)
        .unwrap_or_default();
    let rounds = failover_rounds()?;
    // The gateway agents get a drain longer than the fabric's probe interval (restarted with it once, before
    // the first run; the chart's own arguments are restored at the end).
    let mut original = Vec::new();
    let mut long_drain = std::collections::BTreeMap::new();
    for i in 0..lab.gateway_vms.len() {
        let agent = format!("gateway-agent-{i}");
        let stopped = lab
            .children
            .stop_one(&agent, Signal::SIGTERM, Duration::from_secs(10))
            .await?;
        let again = stopped.with_flag("lb-probe-drain-delay-seconds", FAILOVER_DRAIN_SECONDS);
        lab.children.restart(&again, &opts.work_dir)?;
        long_drain.insert(agent, again);
        original.push(stopped);
    }
    all_gateways_serving(lab, opts).await?;
    info(&format!(
        "gateway agents restarted with --lb-probe-drain-delay-seconds={FAILOVER_DRAIN_SECONDS}; {rounds} round(s) of {}",
        Outage::ALL.map(Outage::label).join(", ")
    ));
    let mut results = Vec::new();
    for round in 1..=rounds {
        for outage in Outage::ALL {
            info(&format!("round {round}/{rounds}: {}", outage.label()));
            results.push(measure(lab, opts, node, &sb, prefix, outage, &mut long_drain).await?);
        }
    }
    for stopped in original {
        lab.children
            .stop_one(&stopped.name, Signal::SIGTERM, Duration::from_secs(40))
            .await?;
        lab.children.restart(&stopped, &opts.work_dir)?;
    }
    all_gateways_serving(lab, opts).await?;
    for f in &results {
        info(&format!(
            "failover {}: {} (probe detection {}, physical limit: probe interval x threshold = {} + one WireGuard handshake); lost {}; failback lost {}, gap {}; session restarts {}",
            f.outage.label(),
            fmt_ms(f.first_new),
            f.detect.map(fmt_ms).unwrap_or_else(|| "-".into()),
            fmt_ms(limit),
            f.lost,
            f.failback_lost,
            fmt_ms(f.failback_gap),
            f.restarts.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
        ));
    }
    for outage in Outage::ALL {
        let of: Vec<&Failover> = results.iter().filter(|f| f.outage == outage).collect();
        let first: Vec<Duration> = of.iter().map(|f| f.first_new).collect();
        let lost: Vec<usize> = of.iter().map(|f| f.lost).collect();
        let back: Vec<usize> = of.iter().map(|f| f.failback_lost).collect();
        let detect: Vec<Duration> = of.iter().filter_map(|f| f.detect).collect();
        let (Some((f50, fmax)), Some((l50, lmax)), Some((b50, bmax))) =
            (p50_max(&first), p50_max(&lost), p50_max(&back))
        else {
            continue;
        };
        let d = p50_max(&detect)
            .map(|(a, b)| format!("{} / {}", fmt_ms(a), fmt_ms(b)))
            .unwrap_or_else(|| "-".into());
        let last_old: Vec<Duration> = of.iter().filter_map(|f| f.last_old).collect();
        let lo = p50_max(&last_old)
            .map(|(a, b)| format!("{} / {}", fmt_ms(a), fmt_ms(b)))
            .unwrap_or_else(|| "-".into());
        let old_after: usize = of.iter().map(|f| f.old_after).sum();
        let drained: Vec<Duration> = of.iter().filter_map(|f| f.exited).collect();
        let drained = match (outage, p50_max(&drained)) {
            (Outage::Drain, Some((a, b))) => format!("; the agent drained for {} / {}", fmt_ms(a), fmt_ms(b)),
            _ => String::new(),
        };
        ok(&format!(
            "failover summary {} over {} run(s), p50 / max: first answer via the other gateway {} / {}; packets lost {l50} / {lmax}; probe detection {d}; last answer via the old gateway {lo} ({old_after} answers after the outage in all); failback packets lost {b50} / {bmax}{drained}",
            outage.label(),
            of.len(),
            fmt_ms(f50),
            fmt_ms(fmax),
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------ scenario 10

/// azure-sim's inventory right after step 1 (the seed plus the cluster's outbound IP), from a fresh simulator.
async fn baseline_inventory() -> anyhow::Result<serde_json::Value> {
    let seed = lab_seed();
    let fresh = crate::azure::AzureSim::start(&seed)
        .await
        .context("starting a fresh Azure simulator for the baseline")?;
    fresh
        .with_state(|s| {
            s.world.put_public_ip(
                "node-rg",
                "aks-outbound-ip",
                json!({"location": seed.location, "tags": {fabric::OUTBOUND_TAG.0: fabric::OUTBOUND_TAG.1}}),
            )
        })
        .map_err(|e| anyhow!("baseline outbound IP: {} {}", e.code, e.message))?;
    Ok(fresh.inventory())
}

/// What differs between two inventories (resources, private and public allocations), or empty.
fn inventory_diff(live: &serde_json::Value, base: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let ids = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
        v["resources"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_ascii_lowercase))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (l, b) = (ids(live), ids(base));
    out.extend(l.difference(&b).map(|r| format!("extra resource {r}")));
    out.extend(b.difference(&l).map(|r| format!("missing resource {r}")));
    for key in ["privateAddresses", "publicBlocks", "prefixAddresses"] {
        if live[key] != base[key] {
            out.push(format!("{key}: {} (fresh: {})", live[key], base[key]));
        }
    }
    out
}

/// `ip -n <ns> <args>` output (empty when it fails).
fn ip_out(ns: &str, args: &[&str]) -> String {
    std::process::Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// What the data plane still holds for configurations: the gateways' frontend addresses, their wg links and
/// wireguard-go processes, and pod wireguard sockets on the nodes.
pub(super) fn dataplane_leftovers(
    gateway_vms: &[(String, Ipv4Addr, String)],
    nodes: &[runtime::Node],
) -> Vec<String> {
    let mut left = Vec::new();
    for (node, primary, ns) in gateway_vms {
        let addrs: Vec<String> = ip_out(ns, &["-4", "-o", "addr", "show", "dev", "eth0"])
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.position(|x| x == "inet")?;
                w.next().map(str::to_string)
            })
            .filter(|a| *a != format!("{primary}/16"))
            .collect();
        if !addrs.is_empty() {
            left.push(format!("{node} eth0 still has {}", addrs.join(", ")));
        }
        let egw = format!("{ns}-egw");
        let links: Vec<String> = ip_out(&egw, &["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
            .filter(|n| n.starts_with("wg"))
            .collect();
        if !links.is_empty() {
            left.push(format!("{egw} still has {}", links.join(", ")));
        }
        if let Some(inode) = super::dataplane::netns_inode(&egw) {
            let procs: Vec<String> = super::dataplane::processes_in(&[inode])
                .into_iter()
                .map(|(pid, name)| format!("{name} ({pid})"))
                .collect();
            if !procs.is_empty() {
                left.push(format!("{egw} still runs {}", procs.join(", ")));
            }
        }
    }
    for n in nodes {
        let socks: Vec<String> = std::fs::read_dir(n.wireguard_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !socks.is_empty() {
            left.push(format!("{} has wireguard sockets {}", n.name, socks.join(", ")));
        }
    }
    left
}

async fn cleanup(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    use super::steps::SYSTEM_NS;
    let pods: Vec<String> = lab.pods.iter().map(|(_, sb)| sb.name.clone()).collect();
    for name in pods.iter().rev() {
        remove_pod(lab, opts, name).await?;
    }
    ok(&format!(
        "pods {} deleted (CNI DEL, then the Pod objects)",
        pods.join(", ")
    ));
    let client = lab.client()?;
    let sgcs: Api<StaticGatewayConfiguration> = Api::all(client.clone());
    let pools: Api<api::GatewayPool> = Api::all(client.clone());
    let pes: Api<api::PodEndpoint> = Api::all(client.clone());
    for (args, what) in [
        (
            ["delete", "sgc", "--all", "-n", DEMO_NS, "--wait=false"],
            "configurations",
        ),
        (
            ["delete", "gatewaypool", "--all", "--wait=false", "-o", "name"],
            "pools",
        ),
    ] {
        let out = lab.kubectl(opts, &args).await?;
        if !out.ok {
            bail!("kubectl {}: {}", args.join(" "), out.stderr.trim());
        }
        info(&format!(
            "$ kubectl {}   # {}",
            args.join(" "),
            out.stdout.trim().replace('\n', "; ")
        ));
        if what == "configurations" {
            let sgcs = sgcs.clone();
            lab.wait(
                "every StaticGatewayConfiguration gone (finalizers done)",
                opts,
                || {
                    let sgcs = sgcs.clone();
                    async move { Ok(sgcs.list(&Default::default()).await?.items.is_empty()) }
                },
            )
            .await?;
        }
    }
    lab.wait("every GatewayPool and PodEndpoint gone", opts, || {
        let (pools, pes) = (pools.clone(), pes.clone());
        async move {
            Ok(pools.list(&Default::default()).await?.items.is_empty()
                && pes.list(&Default::default()).await?.items.is_empty())
        }
    })
    .await?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), SYSTEM_NS);
    lab.wait("no configuration key Secret (sgw-<uid>) left", opts, || {
        let secrets = secrets.clone();
        async move {
            Ok(!secrets
                .list(&Default::default())
                .await?
                .items
                .iter()
                .any(|s| s.metadata.name.as_deref().is_some_and(|n| n.starts_with("sgw-"))))
        }
    })
    .await?;
    ok("Kubernetes: no StaticGatewayConfiguration, GatewayPool, PodEndpoint or key Secret left");

    let base = baseline_inventory().await?;
    let live = lab.azure.as_ref().context("azure-sim")?.handle();
    lab.wait_until_none(
        "azure-sim's inventory equals a freshly seeded one (no LB, prefixes, public IPs but the outbound one, secondary ipConfigs)",
        opts,
        "azure-sim",
        "\n      ",
        || inventory_diff(&live.with_state(|s| s.inventory()), &base),
    )
    .await?;
    let count = base["resources"].as_array().map(Vec::len).unwrap_or(0);
    ok(&format!(
        "azure-sim's inventory is the seed's again: the same {count} resources, private and public allocations as a fresh simulator"
    ));

    let snapshot = LabView::of(lab);
    lab.wait_until_none(
        "the gateways drop the frontend address, wg links and wireguard-go; no pod wireguard socket on the nodes",
        opts,
        "the data plane",
        "; ",
        || snapshot.leftovers(),
    )
    .await?;
    // Each agent writes its GatewayStatus after changing its data plane: await it, as for any written state.
    let gw_status: Api<api::GatewayStatus> = Api::namespaced(client, SYSTEM_NS);
    let busy = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(0usize));
    let waited = lab
        .wait("every GatewayStatus lists no configuration or peer", opts, || {
            let (gw_status, busy, statuses) = (gw_status.clone(), busy.clone(), statuses.clone());
            async move {
                let items = gw_status.list(&Default::default()).await?.items;
                let names: Vec<String> = items
                    .iter()
                    .filter(|s| {
                        !s.spec.ready_gateway_configurations.is_empty()
                            || !s.spec.ready_peer_configurations.is_empty()
                    })
                    .filter_map(|s| s.metadata.name.clone())
                    .collect();
                let done = names.is_empty();
                if let Ok(mut g) = busy.lock() {
                    *g = names;
                }
                if let Ok(mut g) = statuses.lock() {
                    *g = items.len();
                }
                Ok(done)
            }
        })
        .await;
    if let Err(e) = waited {
        let names = busy.lock().map(|g| g.join(", ")).unwrap_or_default();
        bail!("GatewayStatus still lists configurations or peers: {names} ({e:#})");
    }
    let statuses = statuses.lock().map(|g| *g).unwrap_or_default();
    ok(&format!(
        "data plane: no frontend address, wg link or wireguard-go on {} gateways, no pod wireguard socket on {} nodes; {} GatewayStatus objects list nothing",
        lab.gateway_vms.len()
            + lab.other_pool_vms.values().map(Vec::len).sum::<usize>()
            + lab.vm_pool_vms.len(),
        lab.nodes.len(),
        statuses
    ));
    Ok(())
}

/// The parts of the lab the data-plane check reads, owned (so a wait closure can use them).
#[derive(Clone)]
struct LabView {
    gateway_vms: Vec<(String, Ipv4Addr, String)>,
    nodes: Vec<runtime::Node>,
}

impl LabView {
    fn of(lab: &Lab) -> Self {
        LabView {
            // Every gateway VM: the demo pool's, the other VMSS pools' (scenario 8's tfpool) and the VM-based
            // pool's (scenario 6's gwvms).
            gateway_vms: lab
                .gateway_vms
                .iter()
                .chain(lab.other_pool_vms.values().flatten())
                .chain(&lab.vm_pool_vms)
                .cloned()
                .collect(),
            nodes: lab.nodes.clone(),
        }
    }

    fn leftovers(&self) -> Vec<String> {
        dataplane_leftovers(&self.gateway_vms, &self.nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_all_none_and_lists_in_run_order() {
        assert_eq!(parse("all"), Ok(Scenario::ALL.to_vec()));
        assert_eq!(parse("none"), Ok(vec![]));
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(
            parse("10, 3,2,3"),
            Ok(vec![Scenario::ByoPrefix, Scenario::Ingress, Scenario::Cleanup])
        );
        // Cleanup deletes everything, so it runs last even when listed first.
        assert_eq!(parse("10,9"), Ok(vec![Scenario::Failover, Scenario::Cleanup]));
        // Terraform runs before failover and cleanup.
        assert_eq!(
            parse("10,8,2"),
            Ok(vec![Scenario::ByoPrefix, Scenario::Terraform, Scenario::Cleanup])
        );
    }

    #[test]
    fn parse_names_why_a_number_is_refused() {
        assert!(parse("1").expect_err("refused").contains("part of every lab run"));
        assert!(parse("7").expect_err("refused").contains("part of every lab run"));
        assert!(parse("12").expect_err("refused").contains("no scenario 12"));
        assert!(
            parse("2;3")
                .expect_err("refused")
                .contains("not a scenario number")
        );
    }

    #[tokio::test]
    async fn the_lab_seed_has_a_vm_based_gateway_pool_with_one_pre_created_nic_per_vm() {
        let sim = crate::azure::AzureSim::start(&lab_seed())
            .await
            .expect("azure-sim starts with the lab's seed");
        let az = sim.handle();
        let vms = super::super::steps::vm_pool_nodes(&az);
        assert_eq!(vms.len(), 2, "{vms:?}");
        let configs = nic_ip_configs(&az, &vms);
        assert_eq!(configs.len(), 2, "{configs:?}");
        let mut nics: Vec<&str> = configs.iter().map(|c| c.nic.as_str()).collect();
        nics.dedup();
        assert_eq!(nics.len(), 2, "one NIC per VM: {configs:?}");
        for c in &configs {
            assert!(
                c.primary && c.private.is_some() && !c.has_public && c.backend_pools == 0,
                "{c:?}"
            );
        }
        // The NICs are what the operator looks for: tagged as static gateway NICs of the pool.
        let tagged = az.with_state(|s| {
            s.world
                .resource_ids()
                .iter()
                .filter_map(|id| s.world.get(id))
                .filter(|r| {
                    r["tags"][api::names::TAG_STATIC_GATEWAY_NIC].is_string()
                        && r["tags"][api::names::TAG_AKS_POOL_NAME] == VM_POOL
                })
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        });
        let mut want: Vec<String> = configs.iter().map(|c| c.nic.clone()).collect();
        want.sort();
        let mut tagged = tagged;
        tagged.sort();
        assert_eq!(tagged, want);
        // No load balancer before any configuration (what scenario 6 compares against afterwards).
        assert_eq!(lb_layout(&az), (vec![], vec![], vec![]));
    }

    #[test]
    fn inventory_diff_names_extra_and_missing_resources_and_allocations() {
        let base = json!({"resources": ["/a", "/B"], "privateAddresses": {"s": [1]}, "publicBlocks": [], "prefixAddresses": {}});
        assert!(inventory_diff(&base, &base).is_empty());
        let live = json!({"resources": ["/b", "/c"], "privateAddresses": {"s": [1, 2]}, "publicBlocks": [], "prefixAddresses": {}});
        let d = inventory_diff(&live, &base);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].contains("extra resource /c"));
        assert!(d[1].contains("missing resource /a"));
        assert!(d[2].starts_with("privateAddresses"));
    }
}
