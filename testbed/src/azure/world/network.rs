//! Network resources: load balancers, public IP prefixes and addresses, standalone NICs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::*;

impl World {
    // ---------------------------------------------------------------- load balancers

    pub fn put_load_balancer(&mut self, rg: &str, name: &str, body: Value) -> Result<PutOutcome, ArmError> {
        let (id, location, existing) = self.network_put(LB_TYPE, rg, name, &body)?;
        let mut lb = body;
        envelope(&mut lb, &id, name, LB_TYPE, &location)
            .entry("sku")
            .or_insert_with(standard_sku);
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
                let n = str_at(item, &["name"]).unwrap_or_default().to_owned();
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
            // Each reference must name an entry of this body; the entry then lists the rule as a user.
            let references = [
                ("frontendIPConfiguration", Some(fe), &fe_ids),
                (
                    "backendAddressPool",
                    str_at(&rp, &["backendAddressPool", "id"]),
                    &pool_ids,
                ),
                ("probe", str_at(&rp, &["probe", "id"]), &probe_ids),
            ];
            for (field, id, known) in references {
                let Some(id) = id else { continue };
                if !known.contains(&key(id)) {
                    return Err(ArmError::invalid_reference(&format!("{what}.{field}"), id));
                }
                refs.entry(key(id)).or_default().push(rid.clone());
            }
            let proto = str_at(&rp, &["protocol"]).unwrap_or_default().to_owned();
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
            let method = str_at(&fp, &["privateIPAllocationMethod"]).unwrap_or("Dynamic");
            let fixed = if method.eq_ignore_ascii_case("Static") {
                let ip = str_at(&fp, &["privateIPAddress"]).unwrap_or_default();
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
                set_back_references(item, "loadBalancingRules", refs.get(&cid));
                props(item).insert("provisioningState".into(), json!("Succeeded"));
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
        Ok(self.store_put(&id, lb, existing.is_none(), Self::decorate_lb))
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
                set_back_references(pool, "backendIPConfigurations", members.get(&pid));
            }
        }
        lb
    }

    /// Returns whether something was deleted (ARM answers 204 when there was nothing).
    pub fn delete_load_balancer(&mut self, rg: &str, name: &str) -> Result<bool, ArmError> {
        let id = self.id_in(rg, LB_TYPE, name)?;
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
        let (id, location, existing) = self.network_put(PREFIX_TYPE, rg, name, &body)?;
        let p = body.get("properties").cloned().unwrap_or_default();
        let what = format!("publicIPPrefix '{name}'");
        let len = int_field(&p, "prefixLength", &what, 21, 31)?.ok_or_else(|| {
            ArmError::bad_request(
                "InvalidRequestFormat",
                format!("{what}: prefixLength is required."),
            )
        })?;
        ipv4_only(&p, &what)?;
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
        envelope(&mut v, &id, name, PREFIX_TYPE, &location)
            .entry("sku")
            .or_insert_with(standard_sku);
        let vp = props(&mut v);
        vp.insert("ipPrefix".into(), json!(block.to_string()));
        vp.insert("publicIPAddressVersion".into(), json!("IPv4"));
        vp.insert("provisioningState".into(), json!("Succeeded"));
        vp.remove("publicIPAddresses");
        Ok(self.store_put(&id, v, existing.is_none(), Self::decorate_prefix))
    }

    /// Adds the computed `publicIPAddresses` list (every address handed out of the prefix).
    pub(crate) fn decorate_prefix(&self, mut v: Value) -> Value {
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        if let Some(pool) = self.prefix_pools.get(&key(&id)) {
            let users: Vec<Value> = pool.owners().map(|o| json!({"id": o})).collect();
            if !users.is_empty() {
                props(&mut v).insert("publicIPAddresses".into(), Value::Array(users));
            }
        }
        v
    }

    pub fn delete_public_ip_prefix(&mut self, rg: &str, name: &str) -> Result<bool, ArmError> {
        let id = self.id_in(rg, PREFIX_TYPE, name)?;
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
        let (id, location, existing) = self.network_put(PIP_TYPE, rg, name, &body)?;
        let p = body.get("properties").cloned().unwrap_or_default();
        ipv4_only(&p, &format!("publicIPAddress '{name}'"))?;
        let method = str_at(&p, &["publicIPAllocationMethod"]).unwrap_or("Static");
        let sku = str_at(&body, &["sku", "name"]).unwrap_or("Standard");
        // ARM takes enum values in any case and answers in its own (kept below).
        if sku.eq_ignore_ascii_case("Standard") && !method.eq_ignore_ascii_case("Static") {
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
        envelope(&mut v, &id, name, PIP_TYPE, &location)
            .entry("sku")
            .or_insert_with(standard_sku);
        let vp = props(&mut v);
        vp.insert("ipAddress".into(), json!(ip.to_string()));
        vp.insert("publicIPAllocationMethod".into(), json!("Static"));
        vp.insert("publicIPAddressVersion".into(), json!("IPv4"));
        vp.insert("provisioningState".into(), json!("Succeeded"));
        // Read-only: ARM derives it from the NICs (decorate_public_ip) and ignores what a PUT sends back.
        vp.remove("ipConfiguration");
        Ok(self.store_put(&id, v, existing.is_none(), Self::decorate_public_ip))
    }

    /// Adds `ipConfiguration` (which NIC ipConfiguration uses this public IP), as ARM does.
    pub(crate) fn decorate_public_ip(&self, mut v: Value) -> Value {
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

    pub fn delete_public_ip(&mut self, rg: &str, name: &str) -> Result<bool, ArmError> {
        let id = self.id_in(rg, PIP_TYPE, name)?;
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

    // ---------------------------------------------------------------- standalone NICs (VM pools)

    pub fn put_network_interface(
        &mut self,
        rg: &str,
        name: &str,
        body: Value,
    ) -> Result<PutOutcome, ArmError> {
        let (id, location, existing) = self.network_put(NIC_TYPE, rg, name, &body)?;
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
        envelope(&mut v, &id, name, NIC_TYPE, &location);
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

    pub(crate) fn get_public_ip_user(&self, pip: &str) -> Option<String> {
        self.get(pip)
            .map(|v| self.decorate_public_ip(v.clone()))
            .and_then(|v| str_at(&v, &["properties", "ipConfiguration", "id"]).map(str::to_owned))
    }

    pub fn delete_network_interface(&mut self, rg: &str, name: &str) -> Result<bool, ArmError> {
        let id = self.id_in(rg, NIC_TYPE, name)?;
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
}

/// Sets `properties.<field>` of a sub-resource to the `{"id": ...}` references ARM derives for it (the rules
/// using a frontend, the ipConfigurations in a pool), or removes it when there are none, as ARM shows it.
fn set_back_references(item: &mut Value, field: &str, ids: Option<&Vec<String>>) {
    let refs: Vec<Value> = ids
        .map(|ids| ids.iter().map(|id| json!({"id": id})).collect())
        .unwrap_or_default();
    let p = props(item);
    if refs.is_empty() {
        p.remove(field);
    } else {
        p.insert(field.into(), Value::Array(refs));
    }
}

impl World {
    /// What every PUT of a network resource checks and reads first: the resource group, the name and the
    /// body's `location`. Returns the resource's ID, its location and the resource as it was (`None` when
    /// the PUT creates it).
    fn network_put(
        &self,
        ty: &str,
        rg: &str,
        name: &str,
        body: &Value,
    ) -> Result<(String, String, Option<Value>), ArmError> {
        let id = self.id_in(rg, ty, name)?;
        check_network_name(name)?;
        check_tags(body)?;
        let location = Self::require_location(body, &id)?;
        let existing = self.get(&id).cloned();
        Ok((id, location, existing))
    }

    /// Stores the resource a PUT wrote and answers with it as ARM shows it (`decorate` adds what ARM derives).
    fn store_put(
        &mut self,
        id: &str,
        v: Value,
        created: bool,
        decorate: fn(&World, Value) -> Value,
    ) -> PutOutcome {
        let stored = self.store(id, v);
        PutOutcome {
            resource: decorate(self, stored),
            created,
        }
    }
}

/// Public IP addresses and prefixes are simulated for IPv4 only: refuse any other `publicIPAddressVersion`
/// (absent means IPv4, as on ARM; any case, as ARM takes enum values). `what` names the resource in the
/// message.
fn ipv4_only(props: &Value, what: &str) -> Result<(), ArmError> {
    let version = str_at(props, &["publicIPAddressVersion"]).unwrap_or("IPv4");
    if version.eq_ignore_ascii_case("IPv4") {
        Ok(())
    } else {
        Err(ArmError::bad_request(
            "UnsupportedPublicIPAddressVersion",
            format!("{what}: only IPv4 is simulated, got {version}."),
        ))
    }
}
