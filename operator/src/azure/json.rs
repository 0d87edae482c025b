//! Bridge between ARM JSON (what ARM answers, as it answers it) and the planner's models.
//!
//! Reading reduces an ARM object to the fields the operator owns; merging writes a desired model back into
//! the object as read: every field outside the owned entries stays as ARM returned it (whether or not any
//! SDK model knows it), entries whose owned fields already match are kept byte for byte, changed or new
//! entries are built fresh, and entries the model no longer has are dropped. No SDK model is involved, so
//! nothing a newer API version added is lost, and this is testable with literals.

use serde_json::{Map, Value, json};

use crate::desired::{Frontend, IpConfig, Lb, LbRule, Nic, NicAddresses, PrefixState, Probe, last_segment};

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn i(v: &Value, ptr: &str) -> Option<i32> {
    v.pointer(ptr)
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn name_of(v: &Value) -> String {
    s(v, "/name").unwrap_or_default().to_string()
}

fn ref_name(v: &Value, ptr: &str) -> Option<String> {
    s(v, ptr).map(|id| last_segment(id).to_string())
}

fn is_ipv4(v: &Value, ptr: &str) -> bool {
    s(v, ptr).is_none_or(|ver| ver.eq_ignore_ascii_case("IPv4"))
}

// ---------------------------------------------------------------------------------------------
// Load balancer
// ---------------------------------------------------------------------------------------------

/// Reads the owned view of a load balancer.
pub fn lb_from_json(lb: &Value) -> Lb {
    Lb {
        frontends: arr(lb, "/properties/frontendIPConfigurations")
            .iter()
            .map(frontend_from_json)
            .collect(),
        backends: arr(lb, "/properties/backendAddressPools")
            .iter()
            .map(name_of)
            .collect(),
        rules: arr(lb, "/properties/loadBalancingRules")
            .iter()
            .map(rule_from_json)
            .collect(),
        probes: arr(lb, "/properties/probes")
            .iter()
            .map(probe_from_json)
            .collect(),
        failed: failed(lb),
    }
}

/// `properties.provisioningState` is `Failed`.
fn failed(v: &Value) -> bool {
    s(v, "/properties/provisioningState").is_some_and(|p| p.eq_ignore_ascii_case(crate::desired::FAILED))
}

fn frontend_from_json(f: &Value) -> Frontend {
    Frontend {
        name: name_of(f),
        private_ip: s(f, "/properties/privateIPAddress").map(str::to_string),
        subnet_id: s(f, "/properties/subnet/id").map(str::to_string),
    }
}

fn rule_from_json(r: &Value) -> LbRule {
    LbRule {
        name: name_of(r),
        protocol: s(r, "/properties/protocol").unwrap_or_default().to_string(),
        floating_ip: r
            .pointer("/properties/enableFloatingIP")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        frontend: ref_name(r, "/properties/frontendIPConfiguration/id"),
        backend: ref_name(r, "/properties/backendAddressPool/id").or_else(|| {
            arr(r, "/properties/backendAddressPools")
                .first()
                .and_then(|b| ref_name(b, "/id"))
        }),
        probe: ref_name(r, "/properties/probe/id"),
        frontend_port: i(r, "/properties/frontendPort"),
        backend_port: i(r, "/properties/backendPort"),
    }
}

fn probe_from_json(p: &Value) -> Probe {
    Probe {
        name: name_of(p),
        protocol: s(p, "/properties/protocol").unwrap_or_default().to_string(),
        port: i(p, "/properties/port").unwrap_or_default(),
        path: s(p, "/properties/requestPath").map(str::to_string),
        interval: i(p, "/properties/intervalInSeconds"),
        threshold: i(p, "/properties/probeThreshold"),
    }
}

/// Keeps a current entry whose owned view equals the desired one; otherwise builds it.
fn merge_list<T: PartialEq>(
    current: &[Value],
    desired: &[T],
    name: impl Fn(&T) -> &str,
    read: impl Fn(&Value) -> T,
    build: impl Fn(&T) -> Value,
) -> Value {
    Value::Array(
        desired
            .iter()
            .map(|d| {
                current
                    .iter()
                    .find(|c| name_of(c).eq_ignore_ascii_case(name(d)) && read(c) == *d)
                    .cloned()
                    .unwrap_or_else(|| build(d))
            })
            .collect(),
    )
}

/// The load balancer to PUT: `current` (if it exists) with the desired frontends, backend pools, rules and
/// probes; a new Standard internal load balancer otherwise.
pub fn merge_lb(current: Option<&Value>, desired: &Lb, lb_id: &str, name: &str, location: &str) -> Value {
    let mut out = current.cloned().unwrap_or_else(|| {
        json!({
            "name": name,
            "location": location,
            "sku": {"name": "Standard", "tier": "Regional"},
            "properties": {}
        })
    });
    let cur = current.cloned().unwrap_or(Value::Null);
    let sub = |kind: &str, n: &str| json!({"id": format!("{lb_id}/{kind}/{n}")});
    let frontends = merge_list(
        arr(&cur, "/properties/frontendIPConfigurations"),
        &desired.frontends,
        |f| &f.name,
        frontend_from_json,
        |f| {
            let mut props = json!({
                "privateIPAllocationMethod": "Dynamic",
                "privateIPAddressVersion": "IPv4",
            });
            if let Some(subnet) = &f.subnet_id {
                props["subnet"] = json!({"id": subnet});
            }
            json!({"name": f.name, "properties": props})
        },
    );
    let backends = Value::Array(
        desired
            .backends
            .iter()
            .map(|b| {
                arr(&cur, "/properties/backendAddressPools")
                    .iter()
                    .find(|c| name_of(c).eq_ignore_ascii_case(b))
                    .cloned()
                    .unwrap_or_else(|| json!({"name": b, "properties": {}}))
            })
            .collect(),
    );
    let rules = merge_list(
        arr(&cur, "/properties/loadBalancingRules"),
        &desired.rules,
        |r| &r.name,
        rule_from_json,
        |r| {
            let mut props = Map::new();
            props.insert("protocol".into(), Value::from(r.protocol.clone()));
            props.insert("enableFloatingIP".into(), Value::Bool(r.floating_ip));
            if let Some(f) = &r.frontend {
                props.insert(
                    "frontendIPConfiguration".into(),
                    sub("frontendIPConfigurations", f),
                );
            }
            if let Some(b) = &r.backend {
                props.insert("backendAddressPool".into(), sub("backendAddressPools", b));
            }
            if let Some(p) = &r.probe {
                props.insert("probe".into(), sub("probes", p));
            }
            if let Some(p) = r.frontend_port {
                props.insert("frontendPort".into(), Value::from(p));
            }
            if let Some(p) = r.backend_port {
                props.insert("backendPort".into(), Value::from(p));
            }
            json!({"name": r.name, "properties": props})
        },
    );
    let probes = merge_list(
        arr(&cur, "/properties/probes"),
        &desired.probes,
        |p| &p.name,
        probe_from_json,
        |p| {
            let mut props = json!({"protocol": p.protocol, "port": p.port});
            if let Some(path) = &p.path {
                props["requestPath"] = Value::from(path.clone());
            }
            if let Some(v) = p.interval {
                props["intervalInSeconds"] = Value::from(v);
            }
            if let Some(v) = p.threshold {
                props["probeThreshold"] = Value::from(v);
            }
            json!({"name": p.name, "properties": props})
        },
    );
    if !out.get("properties").is_some_and(Value::is_object) {
        out["properties"] = json!({});
    }
    out["properties"]["frontendIPConfigurations"] = frontends;
    out["properties"]["backendAddressPools"] = backends;
    out["properties"]["loadBalancingRules"] = rules;
    out["properties"]["probes"] = probes;
    out
}

// ---------------------------------------------------------------------------------------------
// NICs: VMSS network interface configurations (model and instances) and VM-pool NICs
// ---------------------------------------------------------------------------------------------

/// Index of the primary NIC configuration: `primary: true`, or the only one.
pub fn primary_nic_index(nic_configs: &[Value]) -> Option<usize> {
    nic_configs
        .iter()
        .position(|n| n.pointer("/properties/primary").and_then(Value::as_bool) == Some(true))
        .or((nic_configs.len() == 1).then_some(0))
}

fn ip_config_from_json(c: &Value) -> IpConfig {
    IpConfig {
        name: name_of(c),
        primary: c
            .pointer("/properties/primary")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        ipv4: is_ipv4(c, "/properties/privateIPAddressVersion"),
        subnet_id: s(c, "/properties/subnet/id").map(str::to_string),
        public_ip_config: c
            .pointer("/properties/publicIPAddressConfiguration")
            .filter(|v| !v.is_null())
            .map(|p| {
                (
                    name_of(p),
                    s(p, "/properties/publicIPPrefix/id")
                        .unwrap_or_default()
                        .to_string(),
                )
            }),
        public_ip_address_id: s(c, "/properties/publicIPAddress/id").map(str::to_string),
        backend_pools: arr(c, "/properties/loadBalancerBackendAddressPools")
            .iter()
            .filter_map(|b| s(b, "/id").map(str::to_string))
            .collect(),
    }
}

fn ip_config_to_json(c: &IpConfig, current: Option<&Value>) -> Value {
    let mut out = current
        .cloned()
        .unwrap_or_else(|| json!({"name": c.name, "properties": {}}));
    if !out.get("properties").is_some_and(Value::is_object) {
        out["properties"] = json!({});
    }
    let p = &mut out["properties"];
    p["primary"] = Value::Bool(c.primary);
    p["privateIPAddressVersion"] = Value::from(if c.ipv4 { "IPv4" } else { "IPv6" });
    match &c.subnet_id {
        Some(id) => p["subnet"] = json!({"id": id}),
        None => {
            if let Some(o) = p.as_object_mut() {
                o.remove("subnet");
            }
        }
    }
    let o = p.as_object_mut();
    if let Some(o) = o {
        match &c.public_ip_config {
            Some((name, prefix)) => {
                o.insert(
                    "publicIPAddressConfiguration".into(),
                    json!({"name": name, "properties": {"publicIPPrefix": {"id": prefix}}}),
                );
            }
            None => {
                o.remove("publicIPAddressConfiguration");
            }
        }
        match &c.public_ip_address_id {
            Some(id) => {
                o.insert("publicIPAddress".into(), json!({"id": id}));
            }
            None => {
                o.remove("publicIPAddress");
            }
        }
        o.insert(
            "loadBalancerBackendAddressPools".into(),
            Value::Array(c.backend_pools.iter().map(|id| json!({"id": id})).collect()),
        );
    }
    out
}

/// Owned view of a NIC (configuration)'s ipConfigurations.
pub fn nic_from_json(ip_configurations: &[Value]) -> Nic {
    Nic {
        ip_configs: ip_configurations.iter().map(ip_config_from_json).collect(),
    }
}

/// The desired ipConfigurations as ARM JSON, keeping unchanged entries as they are.
pub fn merge_ip_configs(current: &[Value], desired: &Nic) -> Value {
    Value::Array(
        desired
            .ip_configs
            .iter()
            .map(|d| {
                let cur = current.iter().find(|c| name_of(c).eq_ignore_ascii_case(&d.name));
                match cur {
                    Some(c) if ip_config_from_json(c) == *d => c.clone(),
                    Some(c) => ip_config_to_json(d, Some(c)),
                    None => ip_config_to_json(d, None),
                }
            })
            .collect(),
    )
}

/// The primary NIC configuration's view, from a VMSS `networkInterfaceConfigurations` array.
pub fn primary_nic_from_configs(nic_configs: &[Value]) -> Option<Nic> {
    let idx = primary_nic_index(nic_configs)?;
    Some(nic_from_json(arr(
        &nic_configs[idx],
        "/properties/ipConfigurations",
    )))
}

/// The `networkInterfaceConfigurations` array with the primary one's ipConfigurations replaced.
pub fn merge_nic_configs(nic_configs: &[Value], desired: &Nic) -> Option<Value> {
    let idx = primary_nic_index(nic_configs)?;
    let mut out = nic_configs.to_vec();
    let merged = merge_ip_configs(arr(&nic_configs[idx], "/properties/ipConfigurations"), desired);
    out[idx]["properties"]["ipConfigurations"] = merged;
    Some(Value::Array(out))
}

/// Addresses of a network interface resource (instance NIC or VM-pool NIC).
pub fn nic_addresses(nic: &Value) -> NicAddresses {
    let mut out = NicAddresses::default();
    for c in arr(nic, "/properties/ipConfigurations") {
        let Some(ip) = s(c, "/properties/privateIPAddress") else {
            continue;
        };
        if c.pointer("/properties/primary").and_then(Value::as_bool) == Some(true) {
            out.primary_ip = Some(ip.to_string());
        }
        out.by_ip_config
            .insert(name_of(c).to_ascii_lowercase(), ip.to_string());
    }
    out
}

/// Owned view of a public IP prefix.
pub fn prefix_from_json(p: &Value) -> PrefixState {
    PrefixState {
        prefix_len: i(p, "/properties/prefixLength"),
        cidr: s(p, "/properties/ipPrefix").map(str::to_string),
        public_ip_ids: arr(p, "/properties/publicIPAddresses")
            .iter()
            .filter_map(|a| s(a, "/id").map(str::to_string))
            .collect(),
        failed: failed(p),
    }
}

/// Body of a managed prefix PUT (upstream's: Standard/Regional IPv4, no tags).
pub fn managed_prefix_body(location: &str, prefix_len: i32) -> Value {
    json!({
        "location": location,
        "sku": {"name": "Standard", "tier": "Regional"},
        "properties": {"prefixLength": prefix_len, "publicIPAddressVersion": "IPv4"}
    })
}

/// Body of a public IP address PUT, allocated from `prefix_id`. The operator's own for a VM pool's NIC carry
/// the pool's uid (`pool`) in [`api::names::TAG_GATEWAY_POOL_UID`].
pub fn public_ip_body(location: &str, prefix_id: &str, pool: Option<&str>) -> Value {
    let tags: serde_json::Map<String, Value> = pool
        .map(|uid| (api::names::TAG_GATEWAY_POOL_UID.to_string(), json!(uid)))
        .into_iter()
        .collect();
    json!({
        "location": location,
        "tags": tags,
        "sku": {"name": "Standard", "tier": "Regional"},
        "properties": {
            "publicIPAddressVersion": "IPv4",
            "publicIPAllocationMethod": "Static",
            "publicIPPrefix": {"id": prefix_id}
        }
    })
}

/// The public IP `read` (as ARM returned it) tagged with the pool's uid (`pool`) in
/// [`api::names::TAG_GATEWAY_POOL_UID`]: every other tag and field goes back as read.
pub fn with_pool_tag(read: &Value, pool: &str) -> Value {
    let mut body = read.clone();
    if let Some(obj) = body.as_object_mut() {
        let tags = obj
            .entry("tags")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if !tags.is_object() {
            *tags = Value::Object(serde_json::Map::new());
        }
        if let Some(tags) = tags.as_object_mut() {
            tags.insert(api::names::TAG_GATEWAY_POOL_UID.to_string(), json!(pool));
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Env, Pool, PoolKind};

    const LB_ID: &str =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/kubeegressgateway-ilb";

    fn env() -> Env {
        Env {
            lb_id: LB_ID.into(),
            resource_group_id: "/subscriptions/s/resourceGroups/rg".into(),
            frontend_subnet_id:
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/gw"
                    .into(),
            probe_port: 8082,
        }
    }

    #[test]
    fn a_planned_load_balancer_round_trips_through_arm_json() {
        let pool = Pool {
            uid: "pool".into(),
            kind: PoolKind::Vmss,
            prefix_len: 31,
        };
        let configs = [crate::desired::Config {
            uid: "a".into(),
            egress: crate::desired::Egress::Private,
            deleting: false,
            kept: false,
            adopted: None,
            status_port: None,
        }];
        let plan = crate::desired::plan_lb(&pool.uid, &configs, None, &env(), false);
        let crate::desired::LbWrite::Put { lb, .. } = plan.write else {
            panic!("expected a PUT");
        };
        let body = merge_lb(None, &lb, LB_ID, "kubeegressgateway-ilb", "eastus");
        assert_eq!(body["sku"]["name"], "Standard");
        assert_eq!(
            body["properties"]["loadBalancingRules"][0]["properties"]["probe"]["id"],
            format!("{LB_ID}/probes/a")
        );
        assert_eq!(
            body["properties"]["probes"][0]["properties"]["requestPath"],
            "/gw/a"
        );
        assert_eq!(lb_from_json(&body), lb);
    }

    #[test]
    fn merging_keeps_fields_and_entries_the_operator_does_not_own() {
        let current = json!({
            "name": "kubeegressgateway-ilb", "location": "eastus", "etag": "W/\"1\"",
            "properties": {
                "frontendIPConfigurations": [{"name": "pool", "id": format!("{LB_ID}/frontendIPConfigurations/pool"),
                    "properties": {"privateIPAddress": "10.1.0.4", "subnet": {"id": "sn"}, "zones": ["1"]}}],
                "backendAddressPools": [{"name": "pool", "properties": {"loadBalancerBackendAddresses": []}}],
                "loadBalancingRules": [{"name": "a", "properties": {"protocol": "Udp", "enableFloatingIP": true,
                    "idleTimeoutInMinutes": 4,
                    "frontendIPConfiguration": {"id": format!("{LB_ID}/frontendIPConfigurations/POOL")},
                    "backendAddressPool": {"id": format!("{LB_ID}/backendAddressPools/pool")},
                    "probe": {"id": format!("{LB_ID}/probes/a")}, "frontendPort": 6000, "backendPort": 6000}}],
                "probes": [],
                "inboundNatRules": [{"name": "foreign"}]
            }
        });
        let model = lb_from_json(&current);
        assert_eq!(model.rules[0].frontend.as_deref(), Some("POOL"));
        let merged = merge_lb(Some(&current), &model, LB_ID, "x", "y");
        assert_eq!(merged, current, "an unchanged model merges to the same object");
    }

    #[test]
    fn vmss_nic_configuration_merge_keeps_the_primary_and_foreign_fields() {
        let configs = json!([{
            "name": "nic", "properties": {"primary": true, "enableAcceleratedNetworking": true,
                "ipConfigurations": [{"name": "ipconfig1", "properties": {"primary": true,
                    "subnet": {"id": "sn"}, "applicationSecurityGroups": [{"id": "asg"}]}}]}
        }]);
        let configs = configs.as_array().expect("array").clone();
        let mut nic = primary_nic_from_configs(&configs).expect("primary");
        assert!(nic.ip_configs[0].ipv4 && nic.ip_configs[0].primary);
        nic.ip_configs[0].backend_pools.push("be".into());
        nic.ip_configs.push(IpConfig {
            name: "egressgateway-a".into(),
            ipv4: true,
            subnet_id: Some("sn".into()),
            public_ip_config: Some(("egressgateway-a".into(), "prefix".into())),
            ..IpConfig::default()
        });
        let merged = merge_nic_configs(&configs, &nic).expect("merge");
        let ipcs = &merged[0]["properties"]["ipConfigurations"];
        assert_eq!(ipcs[0]["properties"]["applicationSecurityGroups"][0]["id"], "asg");
        assert_eq!(
            ipcs[0]["properties"]["loadBalancerBackendAddressPools"][0]["id"],
            "be"
        );
        assert_eq!(
            ipcs[1]["properties"]["publicIPAddressConfiguration"]["properties"]["publicIPPrefix"]["id"],
            "prefix"
        );
        assert_eq!(merged[0]["properties"]["enableAcceleratedNetworking"], true);
        let back = primary_nic_from_configs(merged.as_array().expect("array")).expect("primary");
        assert_eq!(back, nic);
    }

    #[test]
    fn nic_addresses_and_prefixes_are_read() {
        let nic = json!({"properties": {"ipConfigurations": [
            {"name": "ipconfig1", "properties": {"primary": true, "privateIPAddress": "10.0.0.4"}},
            {"name": "egressgateway-A", "properties": {"primary": false, "privateIPAddress": "10.0.0.9"}},
            {"name": "pending", "properties": {"primary": false}}
        ]}});
        let a = nic_addresses(&nic);
        assert_eq!(a.primary_ip.as_deref(), Some("10.0.0.4"));
        assert_eq!(
            a.by_ip_config.get("egressgateway-a").map(String::as_str),
            Some("10.0.0.9")
        );
        assert!(!a.by_ip_config.contains_key("pending"));
        let p = prefix_from_json(
            &json!({"properties": {"prefixLength": 31, "ipPrefix": "20.1.2.4/31",
            "publicIPAddresses": [{"id": "/x/publicIPAddresses/p1"}]}}),
        );
        assert_eq!(p.prefix_len, Some(31));
        assert_eq!(p.cidr.as_deref(), Some("20.1.2.4/31"));
        assert_eq!(p.public_ip_ids, vec!["/x/publicIPAddresses/p1".to_string()]);
    }

    #[test]
    fn the_pool_tag_is_merged_into_a_public_ip_as_read() {
        let read = json!({"name": "ip", "etag": "W/\"1\"", "tags": {"owner": "me"},
                          "properties": {"idleTimeoutInMinutes": 17}});
        let body = with_pool_tag(&read, "pool");
        let mut expected = read.clone();
        expected["tags"][api::names::TAG_GATEWAY_POOL_UID] = json!("pool");
        assert_eq!(body, expected);
        for tags in [None, Some(Value::Null)] {
            let mut read = json!({"name": "ip"});
            if let Some(t) = tags {
                read["tags"] = t;
            }
            assert_eq!(
                with_pool_tag(&read, "pool")["tags"],
                json!({api::names::TAG_GATEWAY_POOL_UID: "pool"})
            );
        }
    }
}
