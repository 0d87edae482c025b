//! Instance Metadata Service documents per simulated node, with the fields the gateway agent reads
//! (`compute.osProfile.computerName`, `vmScaleSetName`, `resourceGroupName`, `tags` as `"k:v;k2:v2"`,
//! `network.interface[].ipv4`).

use serde_json::{Value, json};

use super::world::{VMSS_VM_TYPE, World};

fn rg_of(id: &str) -> String {
    let parts: Vec<&str> = id.split('/').collect();
    parts
        .iter()
        .position(|p| p.eq_ignore_ascii_case("resourceGroups"))
        .and_then(|i| parts.get(i + 1))
        .map(|s| (*s).to_owned())
        .unwrap_or_default()
}

/// IMDS tags string: `k:v` pairs joined by `;`, sorted for stable output.
pub fn tags_string(tags: &Value) -> String {
    tags.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(";")
        })
        .unwrap_or_default()
}

/// `/metadata/instance?api-version=2021-10-01` for node `name` (computer name of a VMSS instance or a VM).
pub fn instance_metadata(w: &World, name: &str) -> Option<Value> {
    let node = w.node(name)?;
    let id = node["id"].as_str()?.to_owned();
    let is_vmss = node["type"]
        .as_str()
        .is_some_and(|t| t.eq_ignore_ascii_case(VMSS_VM_TYPE));
    let vmss_name = if is_vmss {
        id.split('/').nth(8).unwrap_or_default().to_owned()
    } else {
        String::new()
    };
    let nic = w.node_primary_nic(&node);
    let mut addresses = Vec::new();
    let mut subnets = Vec::new();
    if let Some(nic) = &nic {
        for c in nic["properties"]["ipConfigurations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let cp = &c["properties"];
            let private = cp["privateIPAddress"].as_str().unwrap_or_default().to_owned();
            let public = cp["publicIPAddress"]["id"]
                .as_str()
                .and_then(|pid| {
                    w.public_address_of(pid).map(|ip| ip.to_string()).or_else(|| {
                        w.get(pid)
                            .and_then(|p| p["properties"]["ipAddress"].as_str().map(str::to_owned))
                    })
                })
                .unwrap_or_default();
            addresses.push(json!({"privateIpAddress": private, "publicIpAddress": public}));
            if let Some(prefix) = cp["subnet"]["id"].as_str().and_then(|s| w.subnet_prefix(s)) {
                let entry = json!({"address": prefix.network().to_string(), "prefix": prefix.prefix_len().to_string()});
                if !subnets.contains(&entry) {
                    subnets.push(entry);
                }
            }
        }
    }
    let mac = nic
        .as_ref()
        .and_then(|n| n["properties"]["macAddress"].as_str())
        .map(|m| m.replace('-', ""))
        .unwrap_or_default();
    Some(json!({
        "compute": {
            "azEnvironment": "AzurePublicCloud",
            "location": node["location"],
            "name": node["name"],
            "osProfile": {"computerName": node["properties"]["osProfile"]["computerName"], "adminUsername": "azureuser"},
            "osType": "Linux",
            "resourceGroupName": rg_of(&id),
            "resourceId": id,
            "subscriptionId": w.subscription_id,
            "tags": tags_string(&node["tags"]),
            "tagsList": node["tags"].as_object().map(|m| m.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>()).unwrap_or_default(),
            "vmId": node["properties"]["vmId"],
            "vmScaleSetName": vmss_name,
            "vmSize": "Standard_D2s_v5",
            "zone": "",
        },
        "network": {"interface": [{
            "ipv4": {"ipAddress": addresses, "subnet": subnets},
            "ipv6": {"ipAddress": []},
            "macAddress": mac,
        }]}
    }))
}

/// `/metadata/loadbalancer?api-version=2020-10-01`: the simulator has no public load balancer in front of
/// nodes, so the lists are empty (which is what an internal-only node sees).
pub fn loadbalancer_metadata(w: &World, name: &str) -> Option<Value> {
    w.node(name)?;
    Some(json!({"loadbalancer": {"publicIpAddresses": [], "inboundRules": [], "outboundRules": []}}))
}
