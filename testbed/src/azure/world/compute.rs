//! Compute resources: scale sets, their instances and instance NICs, standalone VMs of VM pools.

use serde_json::{Value, json};

use super::*;

impl World {
    // ---------------------------------------------------------------- scale sets

    pub(crate) fn vmss_nic_configs(v: &Value) -> Vec<Value> {
        arr(
            &v["properties"]["virtualMachineProfile"]["networkProfile"],
            "networkInterfaceConfigurations",
        )
    }

    pub(crate) fn instance_nic_configs(v: &Value) -> Vec<Value> {
        arr(
            &v["properties"]["networkProfileConfiguration"],
            "networkInterfaceConfigurations",
        )
    }

    pub(crate) fn validate_nic_configs(
        &self,
        what: &str,
        base_id: &str,
        nic_configs: &[Value],
    ) -> Result<(), ArmError> {
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
        let id = self.id_in(rg, VMSS_TYPE, name)?;
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

    /// Adds instance `instance` to a scale set, from its model (a scale-out, as an AKS surge upgrade makes);
    /// fails, keeping the instance without addresses, when they cannot be allocated (a full prefix).
    pub fn add_vmss_instance(&mut self, rg: &str, vmss: &str, instance: u32) -> Result<Value, ArmError> {
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
        self.store(&id, v);
        self.apply_instance_network(&id)?;
        self.get_or_404(&id)
    }

    /// Removes instance `instance` of a scale set and releases its addresses (a scale-in, as the end of an AKS
    /// surge upgrade makes).
    pub fn remove_vmss_instance(&mut self, rg: &str, vmss: &str, instance: u32) -> Result<(), ArmError> {
        let id = format!("{}/virtualMachines/{instance}", self.id_in(rg, VMSS_TYPE, vmss)?);
        self.get_or_404(&id)?;
        self.reconcile_addresses(&format!("{id}/"), &[], &[])?;
        self.resources.remove(&key(&id));
        Ok(())
    }

    /// Allocates the addresses the instance's NIC configurations need and refreshes `networkProfile`.
    pub(crate) fn apply_instance_network(&mut self, instance_id: &str) -> Result<(), ArmError> {
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
        let id = self.id_in(rg, VMSS_TYPE, name)?;
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
        let vmss_id = self.id_in(rg, VMSS_TYPE, vmss)?;
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
        let inst_id = format!("{}/virtualMachines/{instance}", self.id_in(rg, VMSS_TYPE, vmss)?);
        let inst = self.get_or_404(&inst_id)?;
        let nic_id = format!("{inst_id}/networkInterfaces/{nic}");
        let nc = Self::instance_nic_configs(&inst)
            .into_iter()
            .find(|c| c["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(nic)))
            .ok_or_else(|| ArmError::not_found(&nic_id))?;
        Ok(self.render_vmss_nic(&nic_id, &nc))
    }

    pub(crate) fn render_vmss_nic(&self, nic_id: &str, nc: &Value) -> Value {
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
        ensure_object(&mut nic_tags).insert(api::names::TAG_STATIC_GATEWAY_NIC.into(), json!("true"));
        self.put_network_interface(rg, nic_name, json!({"location": self.location, "tags": nic_tags, "properties": {"ipConfigurations": [
            {"name": "ipconfig1", "properties": {"primary": true, "subnet": {"id": subnet_id}, "privateIPAllocationMethod": "Dynamic"}}
        ]}}))?;
        if let Some(n) = self.resources.get_mut(&key(&nic_id)) {
            props(n).insert("virtualMachine".into(), json!({"id": vm_id}));
        }
        let mut vm_tags = tags.clone();
        ensure_object(&mut vm_tags).insert(api::names::TAG_AKS_NIC_NAME.into(), json!(nic_name));
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
        ensure_object(&mut nic_tags).insert(api::names::TAG_STATIC_GATEWAY_NIC.into(), json!("true"));
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
