//! The simulated Azure world: resource groups, resources (stored as the JSON ARM returns) and the IP
//! bookkeeping behind them. Every mutating operation validates first, then allocates addresses
//! transactionally, so a refused request leaves the world unchanged. No HTTP here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Map, Value, json};

use super::error::ArmError;
use super::ipam::{Allocations, PrefixPool, PublicRange, SubnetPool};

mod compute;
mod foreign;
mod network;

pub use foreign::{FOREIGN_PREFIX, dropped_fields, foreign_fields};

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

/// Sets what ARM owns on a resource it stores (`id`, `name`, `type`, `location`) and returns the object for the
/// caller's own fields.
fn envelope<'a>(
    v: &'a mut Value,
    id: &str,
    name: &str,
    ty: &str,
    location: &str,
) -> &'a mut Map<String, Value> {
    let o = ensure_object(v);
    o.insert("id".into(), json!(id));
    o.insert("name".into(), json!(name));
    o.insert("type".into(), json!(ty));
    o.insert("location".into(), json!(location));
    o
}

/// The SKU ARM gives a load balancer, public IP prefix or public IP whose body names none.
fn standard_sku() -> Value {
    json!({"name": "Standard", "tier": "Regional"})
}

/// The allocations of each pool of a map of pools (subnets or public IP prefixes by ID).
fn by_pool<P: Allocations>(pools: &BTreeMap<String, P>) -> BTreeMap<String, Vec<(P::Key, String)>> {
    pools
        .iter()
        .map(|(k, p)| (k.clone(), p.allocation_list()))
        .collect()
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

/// ARM refuses a Microsoft.Network resource (or child resource) name outside the naming rules that
/// `api::arm::valid_network_resource_name` holds, before looking at the body.
fn check_network_name(name: &str) -> Result<(), ArmError> {
    if api::arm::valid_network_resource_name(name) {
        Ok(())
    } else {
        Err(ArmError::bad_request(
            "InvalidResourceName",
            format!(
                "Resource name {name} is invalid. The name can be up to 80 characters long. It must begin with a word \
                 character, and it must end with a word character or with '_'. The name may contain word characters \
                 or '.', '-', '_'."
            ),
        ))
    }
}

/// ARM's limits on a resource's `tags` (https://learn.microsoft.com/azure/azure-resource-manager/management/tag-resources#limitations):
/// an object of string values, names of at most 512 characters without `<>%&\?/` or control characters, values
/// of at most 256. ARM stores and returns the tags as given.
fn check_tags(body: &Value) -> Result<(), ArmError> {
    let Some(tags) = body.get("tags").filter(|t| !t.is_null()) else {
        return Ok(());
    };
    let Some(tags) = tags.as_object() else {
        return Err(ArmError::bad_request(
            "InvalidRequestContent",
            "The request content was invalid: 'tags' must be an object of strings.",
        ));
    };
    for (name, value) in tags {
        if name.chars().any(|c| "<>%&\\?/".contains(c) || c.is_control()) {
            return Err(ArmError::bad_request(
                "InvalidTagNameCharacters",
                format!(
                    "The tag names '{name}' have reserved characters '<,>,%,&,\\,?,/' or control characters."
                ),
            ));
        }
        if name.chars().count() > 512 {
            return Err(ArmError::bad_request(
                "InvalidTagNameLength",
                format!("The tag name '{name}' exceeds the maximum length of '512' characters."),
            ));
        }
        let Some(value) = value.as_str() else {
            return Err(ArmError::bad_request(
                "InvalidRequestContent",
                format!("The request content was invalid: the value of tag '{name}' must be a string."),
            ));
        };
        if value.chars().count() > 256 {
            return Err(ArmError::bad_request(
                "InvalidTagValueLength",
                format!("The value of tag '{name}' exceeds the maximum length of '256' characters."),
            ));
        }
    }
    Ok(())
}

/// Checks that names in a child collection are present, well-formed and unique (case-insensitively).
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
        check_network_name(name)?;
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

    /// The ID of resource `name` of type `ty` in resource group `rg`, which must exist: every read, write and
    /// delete of a resource answers 404 ResourceGroupNotFound for a missing group first.
    pub fn id_in(&self, rg: &str, ty: &str, name: &str) -> Result<String, ArmError> {
        self.check_rg(rg)?;
        Ok(self.resource_id(rg, ty, name))
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

    /// Out-of-band change (as if someone used the portal): merges `patch` into the stored resource. Like
    /// every write, it gives the resource a new ETag.
    pub fn patch_resource(&mut self, id: &str, patch: &Value) -> Result<Value, ArmError> {
        let v = self
            .resources
            .get_mut(&key(id))
            .ok_or_else(|| ArmError::not_found(id))?;
        merge(v, patch);
        ensure_object(v).insert("etag".into(), json!(new_etag()));
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
        let id = self.id_in(rg, VNET_TYPE, name)?;
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
        by_pool(&self.subnets)
    }

    pub fn public_allocations(&self) -> Vec<(Ipv4Net, String)> {
        self.public_range.allocation_list()
    }

    pub fn prefix_allocations(&self) -> BTreeMap<String, Vec<(Ipv4Addr, String)>> {
        by_pool(&self.prefix_pools)
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
    use crate::asserts::assert_contains;

    #[test]
    fn merge_objects_recursively_replaces_arrays_and_ignores_nulls() {
        let mut base = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        merge(&mut base, &json!({"a": {"c": [3], "e": true}, "d": null}));
        assert_eq!(base, json!({"a": {"b": 1, "c": [3], "e": true}, "d": "x"}));
    }

    /// Public IPs and prefixes are simulated for IPv4 only; both refuse IPv6 with the same code, naming the
    /// resource, and store nothing.
    #[test]
    fn public_ips_and_prefixes_refuse_ipv6() {
        let mut w = crate::azure::Seed::aks_like(1).build().expect("seed");
        let v6 = |extra: Value| {
            let mut body = json!({"location": "eastus", "properties": {"publicIPAddressVersion": "IPv6"}});
            merge(&mut body, &extra);
            body
        };
        let prefix = w
            .put_public_ip_prefix("node-rg", "p6", v6(json!({"properties": {"prefixLength": 30}})))
            .expect_err("an IPv6 prefix is refused");
        let ip = w
            .put_public_ip("node-rg", "ip6", v6(json!({})))
            .expect_err("an IPv6 public IP is refused");
        for (err, name) in [(prefix, "p6"), (ip, "ip6")] {
            assert_eq!(err.code, "UnsupportedPublicIPAddressVersion", "{name}");
            assert_contains(&err.message, &format!("'{name}'"));
            assert_contains(&err.message, "got IPv6");
        }
        assert!(w.get(&w.resource_id("node-rg", PREFIX_TYPE, "p6")).is_none());
        assert!(w.get(&w.resource_id("node-rg", PIP_TYPE, "ip6")).is_none());
        w.put_public_ip("node-rg", "ip4", json!({"location": "eastus", "properties": {}}))
            .expect("IPv4 (the default) is accepted");
    }

    /// Tags are stored and returned as given (on a GET, a LIST and the PUT's answer); tags ARM refuses are
    /// refused with its code, and store nothing.
    #[test]
    fn public_ips_keep_their_tags_and_refuse_what_arm_refuses() {
        let mut w = crate::azure::Seed::aks_like(1).build().expect("seed");
        let tags = json!({"egressgateway-pool-uid": "5f2b", "team": "net"});
        let put = w
            .put_public_ip(
                "node-rg",
                "tagged",
                json!({"location": "eastus", "tags": tags, "properties": {}}),
            )
            .expect("tagged");
        assert_eq!(put.resource["tags"], tags);
        let id = w.resource_id("node-rg", PIP_TYPE, "tagged");
        assert_eq!(w.get(&id).expect("stored")["tags"], tags);
        for (bad, code) in [
            (json!({"a/b": "x"}), "InvalidTagNameCharacters"),
            (json!({"a": 1}), "InvalidRequestContent"),
            (json!({"a": "x".repeat(257)}), "InvalidTagValueLength"),
            (json!(["a"]), "InvalidRequestContent"),
        ] {
            let err = w
                .put_public_ip(
                    "node-rg",
                    "bad",
                    json!({"location": "eastus", "tags": bad, "properties": {}}),
                )
                .expect_err("refused");
            assert_eq!(err.code, code, "{bad}");
        }
        assert!(w.get(&w.resource_id("node-rg", PIP_TYPE, "bad")).is_none());
    }

    /// A public IP keeps the properties the simulator does not model, as ARM does; the read-only
    /// `ipConfiguration` a PUT sends back is ignored (ARM derives it from the NICs).
    #[test]
    fn public_ips_keep_unmodelled_properties_and_ignore_a_sent_ip_configuration() {
        let mut w = crate::azure::Seed::aks_like(1).build().expect("seed");
        let ip_tags = json!([{"ipTagType": "FirstPartyUsage", "tagValue": "/Unprivileged"}]);
        let put = w
            .put_public_ip(
                "node-rg",
                "kept",
                json!({"location": "eastus", "zones": ["1"], "properties": {
                    "idleTimeoutInMinutes": 17, "ipTags": ip_tags,
                    "ipConfiguration": {"id": "/subscriptions/x/ipConfigurations/gone"}}}),
            )
            .expect("put");
        let id = w.resource_id("node-rg", PIP_TYPE, "kept");
        let stored = w.get(&id).expect("stored").clone();
        for v in [&put.resource, &stored] {
            assert_eq!(v["zones"], json!(["1"]));
            assert_eq!(v["properties"]["idleTimeoutInMinutes"], 17);
            assert_eq!(v["properties"]["ipTags"], ip_tags);
            assert!(v["properties"].get("ipConfiguration").is_none(), "{v}");
        }
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
