//! What the simulated Azure holds for the lab's configuration after the operator ran: the load-balancer
//! frontend, rules and probes, and each gateway's primary and secondary IP.

use anyhow::bail;
use serde_json::Value;

use super::report::info;
use crate::azure::AzureSim;

/// The value at `ptr` as text ("?" when absent).
fn text_at(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "?".into(),
    }
}

/// Prints the load balancers `lbs` as azure-sim holds them and the gateways of `profiles`.
pub fn show(
    azure: &AzureSim,
    lbs: &[String],
    profiles: &[api::sgc::GatewayVmProfile],
    prefix: ipnet::Ipv4Net,
) -> anyhow::Result<()> {
    for id in lbs {
        let Some(lb) = azure.with_state(|s| s.world.get(id).cloned()) else {
            continue;
        };
        let arr = |ptr: &str| {
            lb.pointer(ptr)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        for fe in arr("/properties/frontendIPConfigurations") {
            info(&format!(
                "azure-sim: LB frontend {} ({})",
                text_at(&fe, "/properties/privateIPAddress"),
                text_at(&fe, "/name")
            ));
        }
        for r in arr("/properties/loadBalancingRules") {
            info(&format!(
                "azure-sim: LB rule {}: {} {} -> {}, floating IP {}",
                text_at(&r, "/name"),
                text_at(&r, "/properties/protocol"),
                text_at(&r, "/properties/frontendPort"),
                text_at(&r, "/properties/backendPort"),
                text_at(&r, "/properties/enableFloatingIP")
            ));
        }
        for p in arr("/properties/probes") {
            info(&format!(
                "azure-sim: LB probe {}: {} :{}{} every {}s",
                text_at(&p, "/name"),
                text_at(&p, "/properties/protocol"),
                text_at(&p, "/properties/port"),
                text_at(&p, "/properties/requestPath"),
                text_at(&p, "/properties/intervalInSeconds")
            ));
        }
    }
    if profiles.is_empty() {
        bail!("status.gatewayVMProfiles is empty");
    }
    for vm in profiles {
        info(&format!(
            "gateway {}: primary IP {}, secondary IP {} (status.gatewayVMProfiles)",
            vm.node_name, vm.primary_ip, vm.secondary_ip
        ));
    }
    info(&format!(
        "(Azure maps each secondary IP to a public IP from {prefix}; the lab's fabric realises that edge in step 4)"
    ));
    Ok(())
}
