//! Scenario 10: deleting everything leaves Azure and the namespaces clean.

use std::net::Ipv4Addr;

use anyhow::{Context as _, anyhow, bail};
use api::StaticGatewayConfiguration;
use kube::Api;
use serde_json::json;

use crate::lab::harness::checks::{dataplane_leftovers, remove_pod};
use crate::lab::harness::{DEMO_NS, Lab, Options, SYSTEM_NS, lab_seed};
use crate::lab::report::{info, ok};
use crate::lab::{fabric, runtime};

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

pub(super) async fn cleanup(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    use SYSTEM_NS;
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
        snapshot.gateway_vms.len(),
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
            // Every gateway VM that ran a gateway agent: the demo pool's, the other VMSS pools' (scenario 8's
            // tfpool) and the VM-based pool's once scenario 6 started their agents (before, they have no
            // gateway namespace to read, and nothing to leave).
            gateway_vms: lab
                .gateway_vms
                .iter()
                .chain(lab.other_pool_vms.values().flatten())
                .chain(lab.vm_pool_vms.iter().filter(|_| lab.vm_pool_agents))
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
