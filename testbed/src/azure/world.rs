//! The simulated Azure world: resource groups, resources (stored as the JSON ARM returns) and the IP
//! bookkeeping behind them. Every mutating operation validates first, then allocates addresses
//! transactionally, so a refused request leaves the world unchanged. No HTTP here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Map, Value, json};

use super::error::ArmError;
use super::ipam::{PrefixPool, PublicRange, SubnetPool};

pub const LB_TYPE: &str = "Microsoft.Network/loadBalancers";
pub const VNET_TYPE: &str = "Microsoft.Network/virtualNetworks";
pub const PREFIX_TYPE: &str = "Microsoft.Network/publicIPPrefixes";
pub const PIP_TYPE: &str = "Microsoft.Network/publicIPAddresses";
pub const NIC_TYPE: &str = "Microsoft.Network/networkInterfaces";
pub const VMSS_TYPE: &str = "Microsoft.Compute/virtualMachineScaleSets";
pub const VM_TYPE: &str = "Microsoft.Compute/virtualMachines";
pub const VMSS_VM_TYPE: &str = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines";

/// Lower-cased key: ARM IDs are case-insensitive.
pub fn key(id: &str) -> String {
    id.to_ascii_lowercase()
}

fn new_etag() -> String {
    format!("W/\"{}\"", uuid::Uuid::new_v4())
}

/// A private address an IP configuration needs: (owner ID, subnet ID, static address if any).
type PrivateNeed = (String, String, Option<Ipv4Addr>);
/// A public address taken from a prefix: (owner ID, prefix ID).
type PublicNeed = (String, String);

/// Outcome of a successful PUT: the stored resource and whether it was created (201) or updated (200).
#[derive(Debug, Clone)]
pub struct PutOutcome {
    pub resource: Value,
    pub created: bool,
}

/// The whole simulated state of one subscription.
#[derive(Debug, Clone)]
pub struct World {
    pub subscription_id: String,
    pub location: String,
    resource_groups: BTreeMap<String, Value>,
    resources: BTreeMap<String, Value>,
    subnets: BTreeMap<String, SubnetPool>,
    public_range: PublicRange,
    prefix_pools: BTreeMap<String, PrefixPool>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn arr(v: &Value, field: &str) -> Vec<Value> {
    v.get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn ensure_object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

fn props(v: &mut Value) -> &mut Map<String, Value> {
    let obj = ensure_object(v);
    let p = obj
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    ensure_object(p)
}

/// Deep merge used for the partial-body PUTs ARM accepts on compute models: objects merge key by key,
/// arrays and scalars replace, nulls are ignored (the SDKs omit unset fields).
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    continue;
                }
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) if !p.is_null() => *b = p.clone(),
        _ => {}
    }
}

/// Checks that names in a child collection are present and unique (case-insensitively).
fn check_names(items: &[Value], collection: &str) -> Result<(), ArmError> {
    let mut seen = BTreeSet::new();
    for item in items {
        let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            return Err(ArmError::bad_request(
                "InvalidRequestFormat",
                format!("{collection}: every item needs a non-empty name."),
            ));
        }
        if !seen.insert(key(name)) {
            return Err(ArmError::bad_request(
                "DuplicateResourceName",
                format!("{collection}: name '{name}' is used more than once."),
            ));
        }
    }
    Ok(())
}

fn int_field(p: &Value, field: &str, what: &str, lo: i64, hi: i64) -> Result<Option<i64>, ArmError> {
    match p.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            _ => Err(ArmError::bad_request(
                "InvalidRequestFormat",
                format!("{what}: {field} must be an integer in [{lo}, {hi}], got {v}."),
            )),
        },
    }
}

impl World {
    pub fn new(subscription_id: &str, location: &str, public_ranges: Vec<Ipv4Net>) -> Self {
        Self {
            subscription_id: subscription_id.to_owned(),
            location: location.to_owned(),
            resource_groups: BTreeMap::new(),
            resources: BTreeMap::new(),
            subnets: BTreeMap::new(),
            public_range: PublicRange::new(public_ranges),
            prefix_pools: BTreeMap::new(),
        }
    }

    pub fn resource_id(&self, rg: &str, ty: &str, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/{ty}/{name}",
            self.subscription_id
        )
    }

    // ---------------------------------------------------------------- generic access

    pub fn check_subscription(&self, sub: &str) -> Result<(), ArmError> {
        if sub.eq_ignore_ascii_case(&self.subscription_id) {
            Ok(())
        } else {
            Err(ArmError::new(
                404,
                "SubscriptionNotFound",
                format!("The subscription '{sub}' could not be found."),
            ))
        }
    }

    pub fn check_rg(&self, rg: &str) -> Result<(), ArmError> {
        if self.resource_groups.contains_key(&key(rg)) {
            Ok(())
        } else {
            Err(ArmError::new(
                404,
                "ResourceGroupNotFound",
                format!("Resource group '{rg}' could not be found."),
            ))
        }
    }

    pub fn put_resource_group(&mut self, name: &str, location: Option<&str>) -> PutOutcome {
        let created = !self.resource_groups.contains_key(&key(name));
        let rg = json!({
            "id": format!("/subscriptions/{}/resourceGroups/{name}", self.subscription_id),
            "name": name,
            "type": "Microsoft.Resources/resourceGroups",
            "location": location.unwrap_or(&self.location),
            "properties": {"provisioningState": "Succeeded"},
        });
        self.resource_groups.insert(key(name), rg.clone());
        PutOutcome {
            resource: rg,
            created,
        }
    }

    pub fn get_resource_group(&self, name: &str) -> Result<Value, ArmError> {
        self.check_rg(name)?;
        self.resource_groups
            .get(&key(name))
            .cloned()
            .ok_or_else(|| ArmError::not_found(name))
    }

    pub fn get(&self, id: &str) -> Option<&Value> {
        self.resources.get(&key(id))
    }

    pub fn get_or_404(&self, id: &str) -> Result<Value, ArmError> {
        self.get(id).cloned().ok_or_else(|| ArmError::not_found(id))
    }

    /// Direct children of `parent_id` of type segment `child` (e.g. an RG's loadBalancers).
    pub fn list(&self, collection_id: &str) -> Vec<Value> {
        let prefix = format!("{}/", key(collection_id));
        self.resources
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn etag(&self, id: &str) -> Option<String> {
        self.get(id)
            .and_then(|v| v.get("etag"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    pub fn set_provisioning_state(&mut self, id: &str, state: &str) {
        if let Some(v) = self.resources.get_mut(&key(id)) {
            props(v).insert("provisioningState".into(), json!(state));
        }
    }

    /// Out-of-band change (as if someone used the portal): merges `patch` into the stored resource.
    pub fn patch_resource(&mut self, id: &str, patch: &Value) -> Result<Value, ArmError> {
        let v = self
            .resources
            .get_mut(&key(id))
            .ok_or_else(|| ArmError::not_found(id))?;
        merge(v, patch);
        Ok(v.clone())
    }

    fn store(&mut self, id: &str, mut v: Value) -> Value {
        ensure_object(&mut v).insert("etag".into(), json!(new_etag()));
        self.resources.insert(key(id), v.clone());
        v
    }

    fn require_location(body: &Value, id: &str) -> Result<String, ArmError> {
        match body.get("location").and_then(Value::as_str) {
            Some(l) if !l.is_empty() => Ok(l.to_owned()),
            _ => Err(ArmError::bad_request(
                "LocationRequired",
                format!("The location property is required for resource {id}."),
            )),
        }
    }

    /// Every resource JSON that mentions `target` as a reference `{"id": target}` somewhere, excluding `except`.
    fn referrers(&self, target: &str, except_prefix: &str) -> Vec<String> {
        fn mentions(v: &Value, target: &str) -> bool {
            match v {
                Value::Object(m) => {
                    m.get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|s| s.eq_ignore_ascii_case(target))
                        && m.len() == 1
                        || m.values().any(|c| mentions(c, target))
                }
                Value::Array(a) => a.iter().any(|c| mentions(c, target)),
                _ => false,
            }
        }
        let except = key(except_prefix);
        self.resources
            .iter()
            .filter(|(k, _)| !k.starts_with(&except))
            .filter(|(_, v)| mentions(v, target))
            .filter_map(|(_, v)| v.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }

    // ---------------------------------------------------------------- virtual networks

    pub fn add_virtual_network(
        &mut self,
        rg: &str,
        name: &str,
        address_prefixes: &[Ipv4Net],
        subnets: &[(String, Ipv4Net)],
    ) -> Result<Value, ArmError> {
        self.check_rg(rg)?;
        let id = self.resource_id(rg, VNET_TYPE, name);
        let mut subnet_values = Vec::new();
        for (sname, prefix) in subnets {
            if !address_prefixes.iter().any(|p| p.contains(prefix)) {
                return Err(ArmError::bad_request(
                    "NetcfgSubnetRangeOutsideVnet",
                    format!(
                        "Subnet '{sname}' is not valid because its IP address range is outside the IP address range of virtual network '{name}'."
                    ),
                ));
            }
            let sid = format!("{id}/subnets/{sname}");
            self.subnets.insert(key(&sid), SubnetPool::new(*prefix));
            subnet_values.push(
                json!({"id": sid, "name": sname, "type": "Microsoft.Network/virtualNetworks/subnets",
                "properties": {"addressPrefix": prefix.to_string(), "provisioningState": "Succeeded"}}),
            );
        }
        let vnet = json!({"id": id, "name": name, "type": VNET_TYPE, "location": self.location,
            "properties": {"addressSpace": {"addressPrefixes": address_prefixes.iter().map(ToString::to_string).collect::<Vec<_>>()},
                "subnets": subnet_values, "provisioningState": "Succeeded"}});
        Ok(self.store(&id, vnet))
    }

    pub fn get_subnet(&self, rg: &str, vnet: &str, subnet: &str) -> Result<Value, ArmError> {
        let vid = self.resource_id(rg, VNET_TYPE, vnet);
        let v = self.get(&vid).ok_or_else(|| ArmError::not_found(&vid))?;
        let sid = format!("{vid}/subnets/{subnet}");
        let mut s = v
            .get("properties")
            .map(|p| arr(p, "subnets"))
            .unwrap_or_default()
            .into_iter()
            .find(|s| {
                s.get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|i| i.eq_ignore_ascii_case(&sid))
            })
            .ok_or_else(|| ArmError::not_found(&sid))?;
        if let Some(etag) = v.get("etag") {
            ensure_object(&mut s).insert("etag".into(), etag.clone());
        }
        if let Some(pool) = self.subnets.get(&key(&sid)) {
            let users: Vec<Value> = pool.allocations().map(|(_, o)| json!({"id": o})).collect();
            props(&mut s).insert("ipConfigurations".into(), Value::Array(users));
        }
        Ok(s)
    }

    pub fn list_subnets(&self, rg: &str, vnet: &str) -> Result<Vec<Value>, ArmError> {
        let vid = self.resource_id(rg, VNET_TYPE, vnet);
        let v = self.get(&vid).ok_or_else(|| ArmError::not_found(&vid))?;
        let names: Vec<String> = v
            .get("properties")
            .map(|p| arr(p, "subnets"))
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect();
        names.iter().map(|n| self.get_subnet(rg, vnet, n)).collect()
    }

    fn subnet_exists(&self, subnet_id: &str) -> bool {
        self.subnets.contains_key(&key(subnet_id))
    }

    /// Addresses in use per subnet (for inventory dumps and invariants).
    pub fn subnet_allocations(&self) -> BTreeMap<String, Vec<(Ipv4Addr, String)>> {
        self.subnets
            .iter()
            .map(|(k, p)| {
                (
                    k.clone(),
                    p.allocations().map(|(ip, o)| (*ip, o.clone())).collect(),
                )
            })
            .collect()
    }

    pub fn public_allocations(&self) -> Vec<(Ipv4Net, String)> {
        self.public_range
            .allocations()
            .map(|(n, o)| (*n, o.clone()))
            .collect()
    }

    pub fn prefix_allocations(&self) -> BTreeMap<String, Vec<(Ipv4Addr, String)>> {
        self.prefix_pools
            .iter()
            .map(|(k, p)| {
                (
                    k.clone(),
                    p.allocations().map(|(ip, o)| (*ip, o.clone())).collect(),
                )
            })
            .collect()
    }

    pub fn resource_ids(&self) -> Vec<String> {
        self.resources
            .values()
            .filter_map(|v| v.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }

    /// Reserves private and public addresses for all IP configurations of one resource (identified by
    /// `owner_prefix`), releasing the ones no longer wanted. All-or-nothing.
    fn reconcile_addresses(
        &mut self,
        owner_prefix: &str,
        private: &[PrivateNeed],
        public: &[PublicNeed],
    ) -> Result<BTreeMap<String, Ipv4Addr>, ArmError> {
        let saved_subnets = self.subnets.clone();
        let saved_prefixes = self.prefix_pools.clone();
        let result = self.reconcile_addresses_inner(owner_prefix, private, public);
        if result.is_err() {
            self.subnets = saved_subnets;
            self.prefix_pools = saved_prefixes;
        }
        result
    }

    fn reconcile_addresses_inner(
        &mut self,
        owner_prefix: &str,
        private: &[PrivateNeed],
        public: &[PublicNeed],
    ) -> Result<BTreeMap<String, Ipv4Addr>, ArmError> {
        let mut out = BTreeMap::new();
        // Release whatever this resource holds in pools other than the one each config now wants.
        for (skey, pool) in self.subnets.iter_mut() {
            let keep: Vec<(String, Ipv4Addr)> = private
                .iter()
                .filter(|(_, s, _)| key(s) == *skey)
                .filter_map(|(o, _, _)| pool.address_of(o).map(|ip| (o.clone(), ip)))
                .collect();
            pool.release_prefix(owner_prefix);
            for (o, ip) in keep {
                pool.allocate_static(&o, ip, skey)?;
            }
        }
        for (pkey, pool) in self.prefix_pools.iter_mut() {
            let keep: Vec<String> = public
                .iter()
                .filter(|(_, p)| key(p) == *pkey)
                .map(|(o, _)| o.clone())
                .collect();
            let held: Vec<(String, Ipv4Addr)> = pool
                .allocations()
                .filter(|(_, o)| keep.iter().any(|k| k.eq_ignore_ascii_case(o)))
                .map(|(ip, o)| (o.clone(), *ip))
                .collect();
            pool.release_prefix(owner_prefix);
            for (o, ip) in held {
                pool.restore(&o, ip);
            }
        }
        for (owner, subnet_id, fixed) in private {
            let pool = self
                .subnets
                .get_mut(&key(subnet_id))
                .ok_or_else(|| ArmError::invalid_reference("subnet", subnet_id))?;
            let ip = match fixed {
                Some(ip) => {
                    pool.allocate_static(owner, *ip, subnet_id)?;
                    *ip
                }
                None => pool.allocate(owner, subnet_id)?,
            };
            out.insert(key(owner), ip);
        }
        for (owner, prefix_id) in public {
            let pool = self
                .prefix_pools
                .get_mut(&key(prefix_id))
                .ok_or_else(|| ArmError::invalid_reference("publicIPPrefix", prefix_id))?;
            out.insert(key(owner), pool.allocate(owner, prefix_id)?);
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- load balancers

    pub fn put_load_balancer(&mut self, rg: &str, name: &str, body: Value) -> Result<PutOutcome, ArmError> {
        self.check_rg(rg)?;
        let id = self.resource_id(rg, LB_TYPE, name);
        let location = Self::require_location(&body, &id)?;
        let existing = self.get(&id).cloned();
        let mut lb = body;
        {
            let o = ensure_object(&mut lb);
            o.insert("id".into(), json!(id));
            o.insert("name".into(), json!(name));
            o.insert("type".into(), json!(LB_TYPE));
            o.insert("location".into(), json!(location));
            o.entry("sku")
                .or_insert_with(|| json!({"name": "Standard", "tier": "Regional"}));
        }
        let p = lb.get("properties").cloned().unwrap_or_else(|| json!({}));
        let mut frontends = arr(&p, "frontendIPConfigurations");
        let mut pools = arr(&p, "backendAddressPools");
        let mut probes = arr(&p, "probes");
        let mut rules = arr(&p, "loadBalancingRules");
        check_names(&frontends, "frontendIPConfigurations")?;
        check_names(&pools, "backendAddressPools")?;
        check_names(&probes, "probes")?;
        check_names(&rules, "loadBalancingRules")?;
        let set_id = |items: &mut Vec<Value>, coll: &str| -> BTreeSet<String> {
            let mut ids = BTreeSet::new();
            for item in items.iter_mut() {
                let n = item
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let cid = format!("{id}/{coll}/{n}");
                ids.insert(key(&cid));
                ensure_object(item).insert("id".into(), json!(cid));
                props(item);
            }
            ids
        };
        let fe_ids = set_id(&mut frontends, "frontendIPConfigurations");
        let pool_ids = set_id(&mut pools, "backendAddressPools");
        let probe_ids = set_id(&mut probes, "probes");
        set_id(&mut rules, "loadBalancingRules");

        // Probes.
        for probe in &mut probes {
            let pname = probe["name"].as_str().unwrap_or_default().to_owned();
            let what = format!("probe '{pname}'");
            let pp = props(probe);
            let proto = pp
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let path = pp.get("requestPath").and_then(Value::as_str).map(str::to_owned);
            match (proto.as_str(), &path) {
                ("Http" | "Https", Some(rp)) if rp.starts_with('/') => {}
                ("Http" | "Https", _) => {
                    return Err(ArmError::bad_request(
                        "ProbeRequestPathRequired",
                        format!("{what}: protocol {proto} requires a requestPath starting with '/'."),
                    ));
                }
                ("Tcp", None) => {}
                ("Tcp", Some(_)) => {
                    return Err(ArmError::bad_request(
                        "ProbeRequestPathNotAllowedForTcp",
                        format!("{what}: requestPath is not allowed with protocol Tcp."),
                    ));
                }
                _ => {
                    return Err(ArmError::bad_request(
                        "InvalidProbeProtocol",
                        format!("{what}: protocol must be Http, Https or Tcp, got '{proto}'."),
                    ));
                }
            }
            let pv = Value::Object(pp.clone());
            if int_field(&pv, "port", &what, 1, 65535)?.is_none() {
                return Err(ArmError::bad_request(
                    "InvalidRequestFormat",
                    format!("{what}: port is required."),
                ));
            }
            int_field(&pv, "intervalInSeconds", &what, 5, 2_147_483_647)?;
            int_field(&pv, "probeThreshold", &what, 1, 2_147_483_647)?;
            int_field(&pv, "numberOfProbes", &what, 1, 2_147_483_647)?;
        }

        // Rules: references and frontend port conflicts.
        let mut fe_ports: BTreeMap<(String, String, i64), String> = BTreeMap::new();
        let mut refs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for rule in &rules {
            let rname = rule["name"].as_str().unwrap_or_default();
            let rid = rule["id"].as_str().unwrap_or_default().to_owned();
            let what = format!("loadBalancingRule '{rname}'");
            let rp = rule.get("properties").cloned().unwrap_or_else(|| json!({}));
            let fe = str_at(&rp, &["frontendIPConfiguration", "id"]).ok_or_else(|| {
                ArmError::bad_request(
                    "InvalidRequestFormat",
                    format!("{what}: frontendIPConfiguration is required."),
                )
            })?;
            if !fe_ids.contains(&key(fe)) {
                return Err(ArmError::invalid_reference(
                    &format!("{what}.frontendIPConfiguration"),
                    fe,
                ));
            }
            refs.entry(key(fe)).or_default().push(rid.clone());
            if let Some(bp) = str_at(&rp, &["backendAddressPool", "id"]) {
                if !pool_ids.contains(&key(bp)) {
                    return Err(ArmError::invalid_reference(
                        &format!("{what}.backendAddressPool"),
                        bp,
                    ));
                }
                refs.entry(key(bp)).or_default().push(rid.clone());
            }
            if let Some(pr) = str_at(&rp, &["probe", "id"]) {
                if !probe_ids.contains(&key(pr)) {
                    return Err(ArmError::invalid_reference(&format!("{what}.probe"), pr));
                }
                refs.entry(key(pr)).or_default().push(rid.clone());
            }
            let proto = rp
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if !matches!(proto.as_str(), "Tcp" | "Udp" | "All") {
                return Err(ArmError::bad_request(
                    "InvalidLoadBalancingRuleProtocol",
                    format!("{what}: protocol must be Tcp, Udp or All, got '{proto}'."),
                ));
            }
            let lo = if proto == "All" { 0 } else { 1 };
            let fport = int_field(&rp, "frontendPort", &what, lo, 65534)?.ok_or_else(|| {
                ArmError::bad_request(
                    "InvalidRequestFormat",
                    format!("{what}: frontendPort is required."),
                )
            })?;
            int_field(&rp, "backendPort", &what, lo, 65535)?;
            let conflict_key = (key(fe), proto.to_ascii_lowercase(), fport);
            if let Some(other) = fe_ports.insert(conflict_key, rname.to_owned()) {
                return Err(ArmError::bad_request(
                    "LoadBalancingRulesWithSameFrontendPortAndProtocol",
                    format!(
                        "Load balancing rules '{other}' and '{rname}' use the same frontend IP configuration, protocol {proto} and frontend port {fport}."
                    ),
                ));
            }
        }

        // Backend pools still used by NICs / scale sets cannot be removed.
        if let Some(old) = &existing {
            for oldpool in old
                .get("properties")
                .map(|p| arr(p, "backendAddressPools"))
                .unwrap_or_default()
            {
                let oid = oldpool["id"].as_str().unwrap_or_default();
                if !pool_ids.contains(&key(oid)) {
                    let users = self.referrers(oid, &id);
                    if let Some(user) = users.first() {
                        return Err(ArmError::bad_request(
                            "InUseBackendAddressPoolCannotBeDeleted",
                            format!("Backend address pool {oid} is in use by {user} and cannot be deleted."),
                        ));
                    }
                }
            }
        }

        // Frontend private IPs (validation done; now allocate).
        let mut private = Vec::new();
        for fe in &frontends {
            let fid = fe["id"].as_str().unwrap_or_default().to_owned();
            let fp = fe.get("properties").cloned().unwrap_or_default();
            let Some(subnet) = str_at(&fp, &["subnet", "id"]) else {
                if fp.get("publicIPAddress").is_some() {
                    continue;
                }
                return Err(ArmError::bad_request(
                    "InvalidRequestFormat",
                    format!(
                        "frontendIPConfiguration '{}': subnet or publicIPAddress is required.",
                        fe["name"]
                    ),
                ));
            };
            if !self.subnet_exists(subnet) {
                return Err(ArmError::invalid_reference(
                    &format!("frontendIPConfiguration {fid}.subnet"),
                    subnet,
                ));
            }
            let method = fp
                .get("privateIPAllocationMethod")
                .and_then(Value::as_str)
                .unwrap_or("Dynamic");
            let fixed = if method.eq_ignore_ascii_case("Static") {
                let ip = fp
                    .get("privateIPAddress")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                Some(ip.parse::<Ipv4Addr>().map_err(|_| {
                    ArmError::bad_request(
                        "InvalidPrivateIPAddress",
                        format!("frontendIPConfiguration {fid}: privateIPAddress '{ip}' is not a valid IPv4 address."),
                    )
                })?)
            } else {
                None
            };
            private.push((fid, subnet.to_owned(), fixed));
        }
        let ips = self.reconcile_addresses(&format!("{id}/"), &private, &[])?;
        for fe in &mut frontends {
            let fid = key(fe["id"].as_str().unwrap_or_default());
            let fp = props(fe);
            if let Some(ip) = ips.get(&fid) {
                fp.insert("privateIPAddress".into(), json!(ip.to_string()));
                fp.entry("privateIPAllocationMethod").or_insert(json!("Dynamic"));
                fp.entry("privateIPAddressVersion").or_insert(json!("IPv4"));
            }
        }
        // ARM fills in the back-references from frontends/pools/probes to rules.
        for coll in [&mut frontends, &mut pools, &mut probes] {
            for item in coll.iter_mut() {
                let cid = key(item["id"].as_str().unwrap_or_default());
                let users: Vec<Value> = refs
                    .get(&cid)
                    .map(|r| r.iter().map(|i| json!({"id": i})).collect())
                    .unwrap_or_default();
                let ip = props(item);
                if users.is_empty() {
                    ip.remove("loadBalancingRules");
                } else {
                    ip.insert("loadBalancingRules".into(), Value::Array(users));
                }
                ip.insert("provisioningState".into(), json!("Succeeded"));
            }
        }
        for rule in &mut rules {
            props(rule).insert("provisioningState".into(), json!("Succeeded"));
        }
        let lp = props(&mut lb);
        lp.insert("frontendIPConfigurations".into(), Value::Array(frontends));
        lp.insert("backendAddressPools".into(), Value::Array(pools));
        lp.insert("probes".into(), Value::Array(probes));
        lp.insert("loadBalancingRules".into(), Value::Array(rules));
        lp.insert("provisioningState".into(), json!("Succeeded"));
        lp.entry("resourceGuid").or_insert_with(|| {
            existing
                .as_ref()
                .and_then(|e| str_at(e, &["properties", "resourceGuid"]))
                .map_or_else(|| json!(uuid::Uuid::new_v4().to_string()), |g| json!(g))
        });
        let stored = self.store(&id, lb);
        Ok(PutOutcome {
            resource: self.decorate_lb(stored),
            created: existing.is_none(),
        })
    }

    pub fn get_load_balancer(&self, id: &str) -> Result<Value, ArmError> {
        Ok(self.decorate_lb(self.get_or_404(id)?))
    }

    /// Fills `backendAddressPools[].properties.backendIPConfigurations` with the NIC and scale set
    /// instance ipConfigurations that are members of each pool, as ARM reports them.
    pub fn decorate_lb(&self, mut lb: Value) -> Value {
        let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut note = |cid: String, c: &Value| {
            for pool in arr(&c["properties"], "loadBalancerBackendAddressPools") {
                if let Some(pid) = pool["id"].as_str() {
                    members.entry(key(pid)).or_default().push(cid.clone());
                }
            }
        };
        for r in self.resources.values() {
            let ty = r["type"].as_str().unwrap_or_default();
            let rid = r["id"].as_str().unwrap_or_default();
            if ty.eq_ignore_ascii_case(NIC_TYPE) {
                for c in arr(&r["properties"], "ipConfigurations") {
                    note(c["id"].as_str().unwrap_or_default().to_owned(), &c);
                }
            } else if ty.eq_ignore_ascii_case(VMSS_VM_TYPE) {
                for nc in Self::instance_nic_configs(r) {
                    let ncname = nc["name"].as_str().unwrap_or_default();
                    for c in arr(&nc["properties"], "ipConfigurations") {
                        let cname = c["name"].as_str().unwrap_or_default();
                        note(
                            format!("{rid}/networkInterfaces/{ncname}/ipConfigurations/{cname}"),
                            &c,
                        );
                    }
                }
            }
        }
        if let Some(pools) = lb
            .get_mut("properties")
            .and_then(|p| p.get_mut("backendAddressPools"))
            .and_then(Value::as_array_mut)
        {
            for pool in pools {
                let pid = key(pool["id"].as_str().unwrap_or_default());
                let refs: Vec<Value> = members
                    .get(&pid)
                    .map(|m| m.iter().map(|i| json!({"id": i})).collect())
                    .unwrap_or_default();
                let pp = props(pool);
                if refs.is_empty() {
                    pp.remove("backendIPConfigurations");
                } else {
                    pp.insert("backendIPConfigurations".into(), Value::Array(refs));
                }
            }
        }
        lb
    }

    /// Returns whether something was deleted (ARM answers 204 when there was nothing).
    pub fn delete_load_balancer(&mut self, rg: &str, name: &str) -> Result<bool, ArmError> {
        self.check_rg(rg)?;
        let id = self.resource_id(rg, LB_TYPE, name);
        let Some(lb) = self.get(&id).cloned() else {
            return Ok(false);
        };
        for pool in lb
            .get("properties")
            .map(|p| arr(p, "backendAddressPools"))
            .unwrap_or_default()
        {
            let pid = pool["id"].as_str().unwrap_or_default();
            if let Some(user) = self.referrers(pid, &id).first() {
                return Err(ArmError::bad_request(
                    "LoadBalancerInUseByVirtualMachineScaleSet",
                    format!(
                        "Cannot delete load balancer {id}: backend address pool {pid} is in use by {user}."
                    ),
                ));
            }
        }
        for pool in self.subnets.values_mut() {
            pool.release_prefix(&format!("{id}/"));
        }
        self.resources.remove(&key(&id));
        Ok(true)
    }

    // ---------------------------------------------------------------- public IP prefixes and addresses

    pub fn put_public_ip_prefix(
        &mut self,
        rg: &str,
        name: &str,
        body: Value,
    ) -> Result<PutOutcome, ArmError> {
        self.check_rg(rg)?;
        let id = self.resource_id(rg, PREFIX_TYPE, name);
        let location = Self::require_location(&body, &id)?;
        let existing = self.get(&id).cloned();
        let p = body.get("properties").cloned().unwrap_or_default();
        let what = format!("publicIPPrefix '{name}'");
        let len = int_field(&p, "prefixLength", &what, 21, 31)?.ok_or_else(|| {
            ArmError::bad_request(
                "InvalidRequestFormat",
                format!("{what}: prefixLength is required."),
            )
        })?;
        let version = p
            .get("publicIPAddressVersion")
            .and_then(Value::as_str)
            .unwrap_or("IPv4");
        if version != "IPv4" {
            return Err(ArmError::bad_request(
                "UnsupportedPublicIPAddressVersion",
                format!("{what}: only IPv4 is simulated, got {version}."),
            ));
        }
        if let Some(old) = &existing {
            let old_len = old["properties"]["prefixLength"].as_i64();
            if old_len != Some(len) {
                return Err(ArmError::bad_request(
                    "PublicIPPrefixLengthCannotBeChanged",
                    format!("{what}: prefixLength cannot be changed from {old_len:?} to {len}."),
                ));
            }
        }
        let len_u8 = u8::try_from(len).unwrap_or(31);
        let block = self.public_range.allocate(&id, len_u8)?;
        self.prefix_pools
            .entry(key(&id))
            .or_insert_with(|| PrefixPool::new(block));
        let mut v = body;
        {
            let o = ensure_object(&mut v);
            o.insert("id".into(), json!(id));
            o.insert("name".into(), json!(name));
            o.insert("type".into(), json!(PREFIX_TYPE));
            o.insert("location".into(), json!(location));
            o.entry("sku")
                .or_insert_with(|| json!({"name": "Standard", "tier": "Regional"}));
        }
        let vp = props(&mut v);
        vp.insert("ipPrefix".into(), json!(block.to_string()));
        vp.insert("publicIPAddressVersion".into(), json!("IPv4"));
        vp.insert("provisioningState".into(), json!("Succeeded"));
        vp.remove("publicIPAddresses");
        let stored = self.store(&id, v);
        Ok(PutOutcome {
            resource: self.decorate_prefix(stored),
            created: existing.is_none(),
        })
    }

    /// Adds the computed `publicIPAddresses` list (every address handed out of the prefix).
    fn decorate_prefix(&self, mut v: Value) -> Value {
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        if let Some(pool) = self.prefix_pools.get(&key(&id)) {
            let users: Vec<Value> = pool.owners().map(|o| json!({"id": o})).collect();
            if !users.is_empty() {
                props(&mut v).insert("publicIPAddresses".into(), Value::Array(users));
            }
        }
        v
    }

    pub fn get_public_ip_prefix(&self, rg: &str, name: &str) -> Result<Value, ArmError> {
        self.check_rg(rg)?;
        let id = self.resource_id(rg, PREFIX_TYPE, name);
        Ok(self.decorate_prefix(self.get_or_404(&id)?))
    }

    pub fn delete_public_ip_prefix(&mut self, rg: &str, name: &str) -> Result<bool, ArmError> {
        self.check_rg(rg)?;
        let id = self.resource_id(rg, PREFIX_TYPE, name);
        if self.get(&id).is_none() {
            return Ok(false);
        }
        let holder = self
            .prefix_pools
            .get(&key(&id))
            .and_then(|p| p.owners().next().cloned())
            .or_else(|| self.referrers(&id, &id).into_iter().next());
        if let Some(holder) = holder {
            return Err(ArmError::bad_request(
                "InUsePublicIpPrefixCannotBeDeleted",
                format!(
                    "Public IP prefix {id} cannot be deleted since it is still allocated to resource {holder}."
                ),
            ));
        }
        self.prefix_pools.remove(&key(&id));
        self.public_range.release(&id);
        self.resources.remove(&key(&id));
        Ok(true)
    }

    pub fn put_public_ip(&mut self, rg: &str, name: &str, body: Value) -> Result<PutOutcome, ArmError> {
        self.check_rg(rg)?;
        let id = self.resource_id(rg, PIP_TYPE, name);
        let location = Self::require_location(&body, &id)?;
        let existing = self.get(&id).cloned();
        let p = body.get("properties").cloned().unwrap_or_default();
        let version = p
            .get("publicIPAddressVersion")
            .and_then(Value::as_str)
            .unwrap_or("IPv4");
        if version != "IPv4" {
            return Err(ArmError::bad_request(
                "UnsupportedPublicIPAddressVersion",
                format!("publicIPAddress '{name}': only IPv4 is simulated, got {version}."),
            ));
        }
        let method = p
            .get("publicIPAllocationMethod")
            .and_then(Value::as_str)
            .unwrap_or("Static");
        let sku = body
            .get("sku")
            .and_then(|s| s.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("Standard");
        if sku == "Standard" && method != "Static" {
            return Err(ArmError::bad_request(
                "StandardSkuPublicIPAddressesMustBeStatic",
                format!(
                    "publicIPAddress '{name}': Standard SKU public IP addresses require publicIPAllocationMethod Static."
                ),
            ));
        }
        let prefix = str_at(&p, &["publicIPPrefix", "id"]).map(str::to_owned);
        let old_prefix = existing
            .as_ref()
            .and_then(|e| str_at(e, &["properties", "publicIPPrefix", "id"]))
            .map(key);
        if existing.is_some() && old_prefix != prefix.as_deref().map(key) {
            return Err(ArmError::bad_request(
                "PublicIPPrefixCannotBeChangedOnPublicIPAddress",
                format!("publicIPAddress '{name}': publicIPPrefix cannot be changed after creation."),
            ));
        }
        let ip = match &prefix {
            Some(pid) => {
                if self.get(pid).is_none() {
                    return Err(ArmError::invalid_reference(
                        &format!("publicIPAddress '{name}'.publicIPPrefix"),
                        pid,
                    ));
                }
                let pool = self
                    .prefix_pools
                    .get_mut(&key(pid))
                    .ok_or_else(|| ArmError::invalid_reference("publicIPPrefix", pid))?;
                pool.allocate(&id, pid)?
            }
            None => self.public_range.allocate(&id, 32)?.network(),
        };
        let mut v = body;
        {
            let o = ensure_object(&mut v);
            o.insert("id".into(), json!(id));
            o.insert("name".into(), json!(name));
            o.insert("type".into(), json!(PIP_TYPE));
            o.insert("location".into(), json!(location));
            o.entry("sku")
                .or_insert_with(|| json!({"name": "Standard", "tier": "Regional"}));
        }
        let vp = props(&mut v);
        vp.insert("ipAddress".into(), json!(ip.to_string()));
        vp.insert("publicIPAllocationMethod".into(), json!("Static"));
        vp.insert("publicIPAddressVersion".into(), json!("IPv4"));
        vp.insert("provisioningState".into(), json!("Succeeded"));
        let stored = self.store(&id, v);
        Ok(PutOutcome {
            resource: self.decorate_public_ip(stored),
            created: existing.is_none(),
        })
    }

    /// Adds `ipConfiguration` (which NIC ipConfiguration uses this public IP), as ARM does.
    fn decorate_public_ip(&self, mut v: Value) -> Value {
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        let user = self.resources.values().find_map(|r| {
            if !r["type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case(NIC_TYPE))
            {
                return None;
            }
            arr(&r["properties"], "ipConfigurations")
                .into_iter()
                .find_map(|c| {
                    str_at(&c, &["properties", "publicIPAddress", "id"])
                        .filter(|p| p.eq_ignore_ascii_case(&id))
                        .and(c["id"].as_str().map(str::to_owned))
                })
        });
        if let Some(user) = user {
            props(&mut v).insert("ipConfiguration".into(), json!({"id": user}));
        }
        v
    }

    pub fn get_public_ip(&self, rg: &str, name: &str) -> Result<Value, ArmError> {
        self.check_rg(rg)?;
        let id = self.resource_id(rg, PIP_TYPE, name);
        Ok(self.decorate_public_ip(self.get_or_404(&id)?))
    }

    pub fn delete_public_ip(&mut self, rg: &str, name: &str) -> Result<bool, ArmError> {
        self.check_rg(rg)?;
        let id = self.resource_id(rg, PIP_TYPE, name);
        let Some(v) = self.get(&id).cloned() else {
            return Ok(false);
        };
        let v = self.decorate_public_ip(v);
        if let Some(user) = str_at(&v, &["properties", "ipConfiguration", "id"]) {
            return Err(ArmError::bad_request(
                "PublicIPAddressCannotBeDeleted",
                format!(
                    "Public IP address {id} can not be deleted since it is still allocated to resource {user}."
                ),
            ));
        }
        if let Some(pid) = str_at(&v, &["properties", "publicIPPrefix", "id"])
            && let Some(pool) = self.prefix_pools.get_mut(&key(pid))
        {
            pool.release(&id);
        }
        self.public_range.release(&id);
        self.resources.remove(&key(&id));
        Ok(true)
    }

    // ---------------------------------------------------------------- IP configurations (NICs, VMSS)

    /// Validates the ipConfigurations of one NIC (or NIC configuration) and lists the addresses they need.
    /// `public_from_prefix`: VMSS-style `publicIPAddressConfiguration` (address taken from a prefix).
    fn plan_ip_configs(
        &self,
        what: &str,
        nic_id: &str,
        configs: &[Value],
    ) -> Result<(Vec<PrivateNeed>, Vec<PublicNeed>), ArmError> {
        check_names(configs, &format!("{what}.ipConfigurations"))?;
        if configs.is_empty() {
            return Err(ArmError::bad_request(
                "InvalidRequestFormat",
                format!("{what}: at least one ipConfiguration is required."),
            ));
        }
        let primaries = configs
            .iter()
            .filter(|c| c["properties"]["primary"].as_bool() == Some(true))
            .count();
        if configs.len() > 1 && primaries != 1 {
            return Err(ArmError::bad_request(
                "NicMustHaveExactlyOnePrimaryIpConfiguration",
                format!("{what}: exactly one ipConfiguration must be primary, found {primaries}."),
            ));
        }
        let mut private = Vec::new();
        let mut public = Vec::new();
        for c in configs {
            let cname = c["name"].as_str().unwrap_or_default();
            let cid = format!("{nic_id}/ipConfigurations/{cname}");
            let cp = &c["properties"];
            let subnet = str_at(cp, &["subnet", "id"]).ok_or_else(|| {
                ArmError::bad_request(
                    "InvalidRequestFormat",
                    format!("{what}: ipConfiguration '{cname}' needs a subnet."),
                )
            })?;
            if !self.subnet_exists(subnet) {
                return Err(ArmError::invalid_reference(
                    &format!("{what}.ipConfigurations['{cname}'].subnet"),
                    subnet,
                ));
            }
            for pool in arr(cp, "loadBalancerBackendAddressPools") {
                let pid = pool["id"].as_str().unwrap_or_default();
                if !self.backend_pool_exists(pid) {
                    return Err(ArmError::invalid_reference(
                        &format!("{what}.ipConfigurations['{cname}'].loadBalancerBackendAddressPools"),
                        pid,
                    ));
                }
            }
            if let Some(pip) = str_at(cp, &["publicIPAddress", "id"])
                && self.get(pip).is_none()
            {
                return Err(ArmError::invalid_reference(
                    &format!("{what}.ipConfigurations['{cname}'].publicIPAddress"),
                    pip,
                ));
            }
            if let Some(pc) = cp.get("publicIPAddressConfiguration").filter(|v| !v.is_null()) {
                let pcname = pc["name"].as_str().unwrap_or(cname);
                let prefix = str_at(pc, &["properties", "publicIPPrefix", "id"]);
                match prefix {
                    Some(prefix) if self.get(prefix).is_some() => {
                        public.push((format!("{cid}/publicIPAddresses/{pcname}"), prefix.to_owned()));
                    }
                    Some(prefix) => {
                        return Err(ArmError::invalid_reference(
                            &format!(
                                "{what}.ipConfigurations['{cname}'].publicIPAddressConfiguration.publicIPPrefix"
                            ),
                            prefix,
                        ));
                    }
                    None => {
                        return Err(ArmError::bad_request(
                            "PublicIPAddressConfigurationWithoutPrefixNotSimulated",
                            format!(
                                "{what}: ipConfiguration '{cname}': publicIPAddressConfiguration without publicIPPrefix is not simulated."
                            ),
                        ));
                    }
                }
            }
            let fixed = if cp["privateIPAllocationMethod"].as_str() == Some("Static") {
                cp["privateIPAddress"].as_str().and_then(|s| s.parse().ok())
            } else {
                None
            };
            private.push((cid, subnet.to_owned(), fixed));
        }
        Ok((private, public))
    }

    fn backend_pool_exists(&self, pool_id: &str) -> bool {
        let Some(idx) = key(pool_id).find("/backendaddresspools/") else {
            return false;
        };
        let lb_id = &pool_id[..idx];
        self.get(lb_id).is_some_and(|lb| {
            arr(&lb["properties"], "backendAddressPools")
                .iter()
                .any(|p| p["id"].as_str().is_some_and(|i| i.eq_ignore_ascii_case(pool_id)))
        })
    }

    // ---------------------------------------------------------------- standalone NICs (VM pools)

    pub fn put_network_interface(
        &mut self,
        rg: &str,
        name: &str,
        body: Value,
    ) -> Result<PutOutcome, ArmError> {
        self.check_rg(rg)?;
        let id = self.resource_id(rg, NIC_TYPE, name);
        let location = Self::require_location(&body, &id)?;
        let existing = self.get(&id).cloned();
        let mut v = body;
        let mut configs = arr(&v["properties"], "ipConfigurations");
        let what = format!("networkInterface '{name}'");
        let (private, public) = self.plan_ip_configs(&what, &id, &configs)?;
        if !public.is_empty() {
            return Err(ArmError::bad_request(
                "InvalidRequestFormat",
                format!(
                    "{what}: publicIPAddressConfiguration is a scale set property; use publicIPAddress on a NIC."
                ),
            ));
        }
        // A public IP may be attached to one ipConfiguration only.
        for c in &configs {
            if let Some(pip) = str_at(&c["properties"], &["publicIPAddress", "id"]) {
                let cid = format!("{id}/ipConfigurations/{}", c["name"].as_str().unwrap_or_default());
                if let Some(user) = self
                    .get_public_ip_user(pip)
                    .filter(|u| !u.eq_ignore_ascii_case(&cid))
                {
                    return Err(ArmError::bad_request(
                        "PublicIPAddressInUse",
                        format!("Public IP address {pip} is already used by {user}."),
                    ));
                }
            }
        }
        let ips = self.reconcile_addresses(&format!("{id}/"), &private, &[])?;
        let single = configs.len() == 1;
        for c in &mut configs {
            let cid = format!("{id}/ipConfigurations/{}", c["name"].as_str().unwrap_or_default());
            ensure_object(c).insert("id".into(), json!(cid));
            let cp = props(c);
            if let Some(ip) = ips.get(&key(&cid)) {
                cp.insert("privateIPAddress".into(), json!(ip.to_string()));
            }
            cp.entry("privateIPAllocationMethod").or_insert(json!("Dynamic"));
            cp.entry("privateIPAddressVersion").or_insert(json!("IPv4"));
            if single {
                cp.insert("primary".into(), json!(true));
            }
            cp.entry("primary").or_insert(json!(false));
            // ARM keeps only the reference to the public IP inside the NIC.
            if let Some(pip) = cp.get("publicIPAddress").and_then(|p| p.get("id")).cloned() {
                cp.insert("publicIPAddress".into(), json!({"id": pip}));
            }
            cp.insert("provisioningState".into(), json!("Succeeded"));
        }
        {
            let o = ensure_object(&mut v);
            o.insert("id".into(), json!(id));
            o.insert("name".into(), json!(name));
            o.insert("type".into(), json!(NIC_TYPE));
            o.insert("location".into(), json!(location));
        }
        let mac = existing
            .as_ref()
            .and_then(|e| str_at(e, &["properties", "macAddress"]))
            .map(str::to_owned);
        let vm = existing
            .as_ref()
            .and_then(|e| e["properties"].get("virtualMachine"))
            .cloned();
        let vp = props(&mut v);
        vp.insert("ipConfigurations".into(), Value::Array(configs));
        vp.insert("provisioningState".into(), json!("Succeeded"));
        vp.insert("macAddress".into(), json!(mac.unwrap_or_else(|| mac_for(&id))));
        if let Some(vm) = vm {
            vp.insert("virtualMachine".into(), vm);
        }
        let stored = self.store(&id, v);
        Ok(PutOutcome {
            resource: stored,
            created: existing.is_none(),
        })
    }

    fn get_public_ip_user(&self, pip: &str) -> Option<String> {
        self.get(pip)
            .map(|v| self.decorate_public_ip(v.clone()))
            .and_then(|v| str_at(&v, &["properties", "ipConfiguration", "id"]).map(str::to_owned))
    }

    pub fn delete_network_interface(&mut self, rg: &str, name: &str) -> Result<bool, ArmError> {
        self.check_rg(rg)?;
        let id = self.resource_id(rg, NIC_TYPE, name);
        let Some(v) = self.get(&id) else { return Ok(false) };
        if let Some(vm) = str_at(v, &["properties", "virtualMachine", "id"]) {
            return Err(ArmError::bad_request(
                "NicInUse",
                format!("Network interface {id} is in use by virtual machine {vm} and cannot be deleted."),
            ));
        }
        for pool in self.subnets.values_mut() {
            pool.release_prefix(&format!("{id}/"));
        }
        self.resources.remove(&key(&id));
        Ok(true)
    }

    // ---------------------------------------------------------------- scale sets

    fn vmss_nic_configs(v: &Value) -> Vec<Value> {
        arr(
            &v["properties"]["virtualMachineProfile"]["networkProfile"],
            "networkInterfaceConfigurations",
        )
    }

    fn instance_nic_configs(v: &Value) -> Vec<Value> {
        arr(
            &v["properties"]["networkProfileConfiguration"],
            "networkInterfaceConfigurations",
        )
    }

    fn validate_nic_configs(&self, what: &str, base_id: &str, nic_configs: &[Value]) -> Result<(), ArmError> {
        check_names(nic_configs, &format!("{what}.networkInterfaceConfigurations"))?;
        for nc in nic_configs {
            let ncname = nc["name"].as_str().unwrap_or_default();
            let configs = arr(&nc["properties"], "ipConfigurations");
            self.plan_ip_configs(
                &format!("{what}.networkInterfaceConfigurations['{ncname}']"),
                &format!("{base_id}/networkInterfaces/{ncname}"),
                &configs,
            )?;
        }
        Ok(())
    }

    /// Creates a scale set with `instances` instances (used by seeding; the operator never creates one).
    pub fn create_vmss(
        &mut self,
        rg: &str,
        name: &str,
        model: Value,
        instances: u32,
    ) -> Result<Value, ArmError> {
        self.check_rg(rg)?;
        let id = self.resource_id(rg, VMSS_TYPE, name);
        let mut v = model;
        {
            let o = ensure_object(&mut v);
            o.insert("id".into(), json!(id));
            o.insert("name".into(), json!(name));
            o.insert("type".into(), json!(VMSS_TYPE));
            o.entry("location").or_insert(json!(self.location));
            o.insert(
                "sku".into(),
                json!({"name": "Standard_D2s_v5", "tier": "Standard", "capacity": instances}),
            );
        }
        self.validate_nic_configs(
            &format!("virtualMachineScaleSet '{name}'"),
            &id,
            &Self::vmss_nic_configs(&v),
        )?;
        let vp = props(&mut v);
        vp.insert("uniqueId".into(), json!(uuid::Uuid::new_v4().to_string()));
        vp.insert("provisioningState".into(), json!("Succeeded"));
        vp.entry("upgradePolicy").or_insert(json!({"mode": "Manual"}));
        let stored = self.store(&id, v);
        for i in 0..instances {
            self.add_vmss_instance(rg, name, i)?;
        }
        Ok(stored)
    }

    fn add_vmss_instance(&mut self, rg: &str, vmss: &str, instance: u32) -> Result<Value, ArmError> {
        let vmss_id = self.resource_id(rg, VMSS_TYPE, vmss);
        let model = self.get_or_404(&vmss_id)?;
        let iid = instance.to_string();
        let id = format!("{vmss_id}/virtualMachines/{iid}");
        let computer_name = format!("{vmss}{}", base36_padded(instance));
        let nic_configs = Self::vmss_nic_configs(&model);
        let v = json!({
            "id": id, "name": format!("{vmss}_{iid}"), "instanceId": iid, "type": VMSS_VM_TYPE,
            "location": model["location"], "tags": model.get("tags").cloned().unwrap_or(json!({})),
            "properties": {
                "latestModelApplied": true, "provisioningState": "Succeeded",
                "vmId": uuid::Uuid::new_v4().to_string(),
                "osProfile": {"computerName": computer_name, "adminUsername": "azureuser"},
                "networkProfileConfiguration": {"networkInterfaceConfigurations": nic_configs},
            }
        });
        self.resources.insert(key(&id), v);
        self.apply_instance_network(&id)?;
        self.get_or_404(&id)
    }

    /// Allocates the addresses the instance's NIC configurations need and refreshes `networkProfile`.
    fn apply_instance_network(&mut self, instance_id: &str) -> Result<(), ArmError> {
        let inst = self.get_or_404(instance_id)?;
        let mut private = Vec::new();
        let mut public = Vec::new();
        let mut nics = Vec::new();
        for nc in Self::instance_nic_configs(&inst) {
            let ncname = nc["name"].as_str().unwrap_or_default();
            let nic_id = format!("{instance_id}/networkInterfaces/{ncname}");
            let (pr, pu) = self.plan_ip_configs(
                &format!("networkInterfaceConfiguration '{ncname}'"),
                &nic_id,
                &arr(&nc["properties"], "ipConfigurations"),
            )?;
            private.extend(pr);
            public.extend(pu);
            nics.push(json!({"id": nic_id, "properties": {"primary": nc["properties"]["primary"].as_bool().unwrap_or(false)}}));
        }
        self.reconcile_addresses(&format!("{instance_id}/"), &private, &public)?;
        if let Some(v) = self.resources.get_mut(&key(instance_id)) {
            props(v).insert("networkProfile".into(), json!({"networkInterfaces": nics}));
        }
        Ok(())
    }

    /// PUT on a scale set: the body is merged into the stored model, like ARM treats partial models.
    pub fn put_vmss(&mut self, rg: &str, name: &str, body: Value) -> Result<PutOutcome, ArmError> {
        self.check_rg(rg)?;
        let id = self.resource_id(rg, VMSS_TYPE, name);
        Self::require_location(&body, &id)?;
        let Some(existing) = self.get(&id).cloned() else {
            return Err(ArmError::bad_request(
                "ScaleSetCreationNotSimulated",
                format!("Creating scale set {id} through the API is not simulated; seed it instead."),
            ));
        };
        let mut v = existing.clone();
        merge(&mut v, &body);
        // Server-owned fields cannot be overwritten.
        for f in ["uniqueId", "provisioningState"] {
            if let Some(old) = existing["properties"].get(f) {
                props(&mut v).insert(f.into(), old.clone());
            }
        }
        ensure_object(&mut v).insert("id".into(), json!(id));
        self.validate_nic_configs(
            &format!("virtualMachineScaleSet '{name}'"),
            &id,
            &Self::vmss_nic_configs(&v),
        )?;
        let model_changed = Self::vmss_nic_configs(&v) != Self::vmss_nic_configs(&existing);
        let stored = self.store(&id, v);
        if model_changed {
            let new_model = Self::vmss_nic_configs(&stored);
            for inst in self.list(&format!("{id}/virtualMachines")) {
                let iid = inst["id"].as_str().unwrap_or_default().to_owned();
                let applied = Self::instance_nic_configs(&inst) == new_model;
                if let Some(iv) = self.resources.get_mut(&key(&iid)) {
                    props(iv).insert("latestModelApplied".into(), json!(applied));
                }
            }
        }
        Ok(PutOutcome {
            resource: stored,
            created: false,
        })
    }

    /// PUT on a scale set instance (`VirtualMachineScaleSetVMs.Update`): replaces the instance model,
    /// allocates its addresses and clears a `Failed` provisioning state.
    pub fn put_vmss_vm(
        &mut self,
        rg: &str,
        vmss: &str,
        instance: &str,
        body: Value,
    ) -> Result<PutOutcome, ArmError> {
        self.check_rg(rg)?;
        let vmss_id = self.resource_id(rg, VMSS_TYPE, vmss);
        let model = self.get_or_404(&vmss_id)?;
        let id = format!("{vmss_id}/virtualMachines/{instance}");
        let existing = self.get_or_404(&id)?;
        let mut v = existing.clone();
        merge(&mut v, &body);
        for f in ["vmId", "osProfile"] {
            if let Some(old) = existing["properties"].get(f) {
                props(&mut v).insert(f.into(), old.clone());
            }
        }
        let configs = Self::instance_nic_configs(&v);
        self.validate_nic_configs(&format!("virtualMachineScaleSetVM '{instance}'"), &id, &configs)?;
        let applied = configs == Self::vmss_nic_configs(&model);
        let vp = props(&mut v);
        vp.insert("latestModelApplied".into(), json!(applied));
        vp.insert("provisioningState".into(), json!("Succeeded"));
        self.resources.insert(key(&id), v.clone());
        if let Err(e) = self.apply_instance_network(&id) {
            self.resources.insert(key(&id), existing);
            return Err(e);
        }
        let stored = self.get_or_404(&id)?;
        let stored = self.store(&id, stored);
        Ok(PutOutcome {
            resource: stored,
            created: false,
        })
    }

    /// `GetVirtualMachineScaleSetNetworkInterface`: the NIC of an instance with its allocated addresses.
    pub fn get_vmss_nic(&self, rg: &str, vmss: &str, instance: &str, nic: &str) -> Result<Value, ArmError> {
        self.check_rg(rg)?;
        let inst_id = format!(
            "{}/virtualMachines/{instance}",
            self.resource_id(rg, VMSS_TYPE, vmss)
        );
        let inst = self.get_or_404(&inst_id)?;
        let nic_id = format!("{inst_id}/networkInterfaces/{nic}");
        let nc = Self::instance_nic_configs(&inst)
            .into_iter()
            .find(|c| c["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(nic)))
            .ok_or_else(|| ArmError::not_found(&nic_id))?;
        Ok(self.render_vmss_nic(&nic_id, &nc))
    }

    fn render_vmss_nic(&self, nic_id: &str, nc: &Value) -> Value {
        let mut configs = Vec::new();
        for c in arr(&nc["properties"], "ipConfigurations") {
            let cname = c["name"].as_str().unwrap_or_default();
            let cid = format!("{nic_id}/ipConfigurations/{cname}");
            let cp = &c["properties"];
            let ip = self.subnets.values().find_map(|p| p.address_of(&cid));
            let mut out = json!({"id": cid, "name": cname, "properties": {
                "primary": cp["primary"].as_bool().unwrap_or(false),
                "privateIPAddressVersion": cp["privateIPAddressVersion"].as_str().unwrap_or("IPv4"),
                "privateIPAllocationMethod": "Dynamic",
                "subnet": cp["subnet"].clone(),
                "provisioningState": "Succeeded",
            }});
            let op = props(&mut out);
            if let Some(ip) = ip {
                op.insert("privateIPAddress".into(), json!(ip.to_string()));
            }
            if let Some(pools) = cp.get("loadBalancerBackendAddressPools") {
                op.insert("loadBalancerBackendAddressPools".into(), pools.clone());
            }
            if let Some(pc) = cp.get("publicIPAddressConfiguration").filter(|v| !v.is_null()) {
                let pcname = pc["name"].as_str().unwrap_or(cname);
                op.insert(
                    "publicIPAddress".into(),
                    json!({"id": format!("{cid}/publicIPAddresses/{pcname}")}),
                );
            }
            configs.push(out);
        }
        json!({"id": nic_id, "name": nc["name"], "type": NIC_TYPE, "properties": {
            "primary": nc["properties"]["primary"].as_bool().unwrap_or(false),
            "ipConfigurations": configs, "macAddress": mac_for(nic_id), "provisioningState": "Succeeded",
        }})
    }

    /// Public address handed to a VMSS ipConfiguration from its prefix (for IMDS and tests).
    pub fn public_address_of(&self, owner: &str) -> Option<Ipv4Addr> {
        self.prefix_pools.values().find_map(|p| {
            p.allocations()
                .find(|(_, o)| o.eq_ignore_ascii_case(owner))
                .map(|(ip, _)| *ip)
        })
    }

    pub fn private_address_of(&self, owner: &str) -> Option<Ipv4Addr> {
        self.subnets.values().find_map(|p| p.address_of(owner))
    }

    pub fn subnet_prefix(&self, subnet_id: &str) -> Option<Ipv4Net> {
        self.subnets.get(&key(subnet_id)).map(SubnetPool::prefix)
    }

    // ---------------------------------------------------------------- standalone VMs (VM pools)

    /// Creates a VM with its NIC (seeding only).
    pub fn create_vm_with_nic(
        &mut self,
        rg: &str,
        vm_name: &str,
        nic_name: &str,
        subnet_id: &str,
        tags: &Value,
    ) -> Result<Value, ArmError> {
        let nic_id = self.resource_id(rg, NIC_TYPE, nic_name);
        let vm_id = self.resource_id(rg, VM_TYPE, vm_name);
        let mut nic_tags = tags.clone();
        ensure_object(&mut nic_tags).insert("aks-managed-static-gateway-nic".into(), json!("true"));
        self.put_network_interface(rg, nic_name, json!({"location": self.location, "tags": nic_tags, "properties": {"ipConfigurations": [
            {"name": "ipconfig1", "properties": {"primary": true, "subnet": {"id": subnet_id}, "privateIPAllocationMethod": "Dynamic"}}
        ]}}))?;
        if let Some(n) = self.resources.get_mut(&key(&nic_id)) {
            props(n).insert("virtualMachine".into(), json!({"id": vm_id}));
        }
        let mut vm_tags = tags.clone();
        ensure_object(&mut vm_tags).insert("aks-managed-nic-name".into(), json!(nic_name));
        let vm = json!({"id": vm_id, "name": vm_name, "type": VM_TYPE, "location": self.location, "tags": vm_tags,
            "properties": {"vmId": uuid::Uuid::new_v4().to_string(), "provisioningState": "Succeeded",
                "osProfile": {"computerName": vm_name, "adminUsername": "azureuser"},
                "networkProfile": {"networkInterfaces": [{"id": nic_id, "properties": {"primary": true}}]}}});
        Ok(self.store(&vm_id, vm))
    }

    /// Creates a spare NIC tagged as a static gateway NIC, not attached to any VM (seeding only).
    pub fn create_spare_nic(
        &mut self,
        rg: &str,
        nic_name: &str,
        subnet_id: &str,
        tags: &Value,
    ) -> Result<Value, ArmError> {
        let mut nic_tags = tags.clone();
        ensure_object(&mut nic_tags).insert("aks-managed-static-gateway-nic".into(), json!("true"));
        Ok(self
            .put_network_interface(
                rg,
                nic_name,
                json!({"location": self.location, "tags": nic_tags, "properties": {"ipConfigurations": [
                    {"name": "ipconfig1", "properties": {"primary": true, "subnet": {"id": subnet_id}}}
                ]}}),
            )?
            .resource)
    }

    /// All simulated nodes (VMSS instances and VMs) by computer name, for IMDS.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.resources
            .values()
            .find(|v| {
                let ty = v["type"].as_str().unwrap_or_default();
                (ty.eq_ignore_ascii_case(VMSS_VM_TYPE) || ty.eq_ignore_ascii_case(VM_TYPE))
                    && str_at(v, &["properties", "osProfile", "computerName"])
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .cloned()
    }

    /// Primary NIC JSON of a node (VMSS instance or VM), with addresses.
    pub fn node_primary_nic(&self, node: &Value) -> Option<Value> {
        let id = node["id"].as_str()?;
        if node["type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case(VMSS_VM_TYPE))
        {
            let nc = Self::instance_nic_configs(node)
                .into_iter()
                .find(|c| c["properties"]["primary"].as_bool() == Some(true))?;
            Some(self.render_vmss_nic(&format!("{id}/networkInterfaces/{}", nc["name"].as_str()?), &nc))
        } else {
            let nic_id = arr(&node["properties"]["networkProfile"], "networkInterfaces").first()?["id"]
                .as_str()?
                .to_owned();
            self.get(&nic_id).cloned()
        }
    }
}

/// AKS instance computer names: scale set name + base-36 instance id, 6 digits.
fn base36_padded(mut n: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Stable pseudo MAC address derived from the NIC ID (locally administered).
fn mac_for(id: &str) -> String {
    let u = uuid::Uuid::new_v3(&uuid::Uuid::NAMESPACE_URL, key(id).as_bytes());
    let b = u.as_bytes();
    format!(
        "02-{:02X}-{:02X}-{:02X}-{:02X}-{:02X}",
        b[0], b[1], b[2], b[3], b[4]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_objects_recursively_replaces_arrays_and_ignores_nulls() {
        let mut base = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        merge(&mut base, &json!({"a": {"c": [3], "e": true}, "d": null}));
        assert_eq!(base, json!({"a": {"b": 1, "c": [3], "e": true}, "d": "x"}));
    }

    /// An instance keeps its public address across updates even when a lower address became free.
    #[test]
    fn instance_public_address_is_stable_across_updates() {
        let mut w = crate::azure::Seed::aks_like(2).build().expect("seed");
        let prefix = w
            .put_public_ip_prefix(
                "node-rg",
                "p",
                json!({"location": "eastus", "properties": {"prefixLength": 30}}),
            )
            .expect("prefix")
            .resource["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let vmss = "aks-gateway-12345678-vmss";
        let subnet = format!(
            "{}/subnets/aks-subnet",
            w.resource_id("node-rg", VNET_TYPE, "aks-vnet")
        );
        let configs = |with_public: bool| {
            let mut secondary =
                json!({"name": "gw", "properties": {"primary": false, "subnet": {"id": subnet}}});
            if with_public {
                secondary["properties"]["publicIPAddressConfiguration"] =
                    json!({"name": "gw", "properties": {"publicIPPrefix": {"id": prefix}}});
            }
            json!({"properties": {"networkProfileConfiguration": {"networkInterfaceConfigurations": [
                {"name": "nic", "properties": {"primary": true, "ipConfigurations": [
                    {"name": "ipconfig1", "properties": {"primary": true, "subnet": {"id": subnet}}}, secondary]}}]}}})
        };
        let public_of = |w: &World, i: &str| {
            let id = format!(
                "{}/virtualMachines/{i}/networkInterfaces/nic/ipConfigurations/gw/publicIPAddresses/gw",
                w.resource_id("node-rg", VMSS_TYPE, vmss)
            );
            w.public_address_of(&id)
        };
        w.put_vmss_vm("node-rg", vmss, "0", configs(true))
            .expect("instance 0");
        w.put_vmss_vm("node-rg", vmss, "1", configs(true))
            .expect("instance 1");
        let before = public_of(&w, "1").expect("instance 1 has a public address");
        w.put_vmss_vm("node-rg", vmss, "0", configs(false))
            .expect("instance 0 drops its public IP");
        assert_eq!(public_of(&w, "0"), None);
        w.put_vmss_vm("node-rg", vmss, "1", configs(true))
            .expect("instance 1 updated again");
        assert_eq!(public_of(&w, "1"), Some(before));
    }

    #[test]
    fn computer_names_follow_aks_pattern() {
        assert_eq!(base36_padded(0), "000000");
        assert_eq!(base36_padded(37), "000011");
    }
}
