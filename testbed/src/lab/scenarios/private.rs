//! Scenario 6: private egress (azureNetworking) on the VM-based pool `gwvms`.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context as _, bail};
use kube::Api;

use crate::azure::SimHandle;
use crate::lab::harness::checks::{
    apply, azure, dataplane_leftovers, delete_sgc, ip_out, kubectl_delete, ready_sgc, remove_pod, uid_of,
};
use crate::lab::harness::{
    DEMO_NS, ECHO_IP, ECHO_PORT, Lab, ONPREM_IP, ONPREM_OTHER_IP, ONPREM_RANGE, Options, VM_POOL,
};
use crate::lab::report::ok;
use crate::lab::{fabric, runtime};

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
    use crate::lab::dataplane::{tcp_source_seen, udp_source_seen};
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

pub(super) async fn private(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
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
                    .map(|out| out.split_whitespace().any(|w| w == want));
                async move { found }
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
    let dev_of = |to: Ipv4Addr| -> anyhow::Result<String> {
        let out = ip_out(&sb.netns, &["-4", "route", "get", &to.to_string()])?;
        let mut w = out.split_whitespace();
        w.position(|x| x == "dev");
        Ok(w.next().unwrap_or("(no route)").to_string())
    };
    let (onprem_dev, inet_dev, other_dev) = (dev_of(ONPREM_IP)?, dev_of(ECHO_IP)?, dev_of(ONPREM_OTHER_IP)?);
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
    kubectl_delete(lab, opts, "gatewaypool", None, VM_POOL).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::harness::{lab_seed, vm_pool_nodes};

    #[tokio::test]
    async fn the_lab_seed_has_a_vm_based_gateway_pool_with_one_pre_created_nic_per_vm() {
        let sim = crate::azure::AzureSim::start(&lab_seed())
            .await
            .expect("azure-sim starts with the lab's seed");
        let az = sim.handle();
        let vms = vm_pool_nodes(&az);
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
}
