//! The seed: a JSON description of the world the simulator starts with (also the binary's input file).

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use api::names::{TAG_AKS_POOL_NAME, TAG_GATEWAY_PREFIX_SIZE};

use super::error::ArmError;
use super::world::{VNET_TYPE, World};

/// Client credentials the token endpoint accepts. `Debug` redacts the secret.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePrincipal {
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for ServicePrincipal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServicePrincipal")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SubnetSeed {
    pub name: String,
    pub address_prefix: Ipv4Net,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VnetSeed {
    pub resource_group: String,
    pub name: String,
    pub address_prefixes: Vec<Ipv4Net>,
    pub subnets: Vec<SubnetSeed>,
}

/// Points at a seeded subnet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SubnetRef {
    pub resource_group: String,
    pub vnet: String,
    pub subnet: String,
}

/// A gateway (or ordinary) scale set, AKS style: tag `aks-managed-poolName`, optional
/// `aks-managed-gatewayIPPrefixSize`, one NIC configuration with one primary ipConfiguration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmssSeed {
    pub resource_group: String,
    pub name: String,
    pub pool_name: String,
    #[serde(default)]
    pub gateway_prefix_size: Option<u8>,
    pub instances: u32,
    pub subnet: SubnetRef,
}

/// A VM-based pool: `vms` VMs each with its NIC, plus spare pre-created NICs up to `nics`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmPoolSeed {
    pub resource_group: String,
    pub pool_name: String,
    #[serde(default)]
    pub gateway_prefix_size: Option<u8>,
    pub vms: u32,
    pub nics: u32,
    pub subnet: SubnetRef,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Seed {
    pub subscription_id: String,
    pub tenant_id: String,
    #[serde(default = "default_location")]
    pub location: String,
    /// Service principals accepted by the AAD token endpoint.
    #[serde(default)]
    pub service_principals: Vec<ServicePrincipal>,
    pub resource_groups: Vec<String>,
    #[serde(default)]
    pub virtual_networks: Vec<VnetSeed>,
    /// Public address space public IP prefixes and addresses are carved from.
    #[serde(default)]
    pub public_ip_ranges: Vec<Ipv4Net>,
    #[serde(default)]
    pub vm_scale_sets: Vec<VmssSeed>,
    #[serde(default)]
    pub vm_pools: Vec<VmPoolSeed>,
    /// Load balancers that exist before the operator runs, each with one entry of every kind that belongs
    /// to someone else (frontend, backend pool, rule and probe named `other-*`).
    #[serde(default)]
    pub load_balancers: Vec<LoadBalancerSeed>,
    /// Write properties no model of the operator knows into every seeded scale set, instance, NIC and load
    /// balancer (see [`World::seed_foreign_fields`]): what newer API versions, AKS and other controllers add.
    #[serde(default)]
    pub foreign_fields: bool,
}

/// A load balancer in the seed's first subnet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSeed {
    pub resource_group: String,
    pub name: String,
}

fn default_location() -> String {
    "eastus".to_owned()
}

impl Seed {
    /// A small AKS-like world: node RG with a vnet 10.224.0.0/12 (subnet aks-subnet 10.224.0.0/16),
    /// a gateway scale set `aks-gateway-12345678-vmss` (pool `gateway`, /31, `instances` instances),
    /// public range 20.10.0.0/24, one service principal.
    pub fn aks_like(instances: u32) -> Self {
        let subnet = SubnetRef {
            resource_group: "node-rg".into(),
            vnet: "aks-vnet".into(),
            subnet: "aks-subnet".into(),
        };
        Seed {
            subscription_id: "00000000-0000-0000-0000-00000000a5b1".into(),
            tenant_id: "11111111-1111-1111-1111-111111111111".into(),
            location: default_location(),
            service_principals: vec![ServicePrincipal {
                client_id: "sim-client".into(),
                client_secret: "sim-secret".into(),
            }],
            resource_groups: vec!["node-rg".into()],
            virtual_networks: vec![VnetSeed {
                resource_group: "node-rg".into(),
                name: "aks-vnet".into(),
                address_prefixes: vec!["10.224.0.0/12".parse().unwrap_or_default()],
                subnets: vec![SubnetSeed {
                    name: "aks-subnet".into(),
                    address_prefix: "10.224.0.0/16".parse().unwrap_or_default(),
                }],
            }],
            public_ip_ranges: vec!["20.10.0.0/24".parse().unwrap_or_default()],
            vm_scale_sets: vec![VmssSeed {
                resource_group: "node-rg".into(),
                name: "aks-gateway-12345678-vmss".into(),
                pool_name: "gateway".into(),
                gateway_prefix_size: Some(31),
                instances,
                subnet,
            }],
            vm_pools: vec![],
            load_balancers: vec![],
            foreign_fields: false,
        }
    }

    /// Adds the operator's default load balancer (`kubeegressgateway-ilb` in the node resource group) as
    /// already existing, with entries of another owner, and properties no model knows everywhere.
    pub fn with_foreign_fields(mut self) -> Self {
        let rg = self
            .virtual_networks
            .first()
            .map(|v| v.resource_group.clone())
            .unwrap_or_default();
        self.load_balancers.push(LoadBalancerSeed {
            resource_group: rg,
            name: "kubeegressgateway-ilb".into(),
        });
        self.foreign_fields = true;
        self
    }

    /// Adds a VM-based gateway pool (an AKS VirtualMachines pool tagged for a /31 prefix) of `vms` VMs and
    /// `nics` pre-created NICs in the seed's first subnet (the node resource group's).
    pub fn with_vm_pool(mut self, pool_name: &str, vms: u32, nics: u32) -> Self {
        let vnet = self.virtual_networks.first();
        let subnet = SubnetRef {
            resource_group: vnet.map(|v| v.resource_group.clone()).unwrap_or_default(),
            vnet: vnet.map(|v| v.name.clone()).unwrap_or_default(),
            subnet: vnet
                .and_then(|v| v.subnets.first())
                .map(|s| s.name.clone())
                .unwrap_or_default(),
        };
        self.vm_pools.push(VmPoolSeed {
            resource_group: subnet.resource_group.clone(),
            pool_name: pool_name.to_owned(),
            gateway_prefix_size: Some(31),
            vms,
            nics,
            subnet,
        });
        self
    }

    /// The operator's cloud config (upstream's `azure.json` keys) for the cluster this seed describes: its
    /// subscription, tenant and location, the first VNet and subnet (their resource group as the node
    /// resource group), the first service principal's credentials, and `endpoint` (the simulator's URL) as
    /// both the ARM and the AAD endpoint. Callers add or replace keys (other credentials) on the object.
    pub fn cloud_config(&self, endpoint: &str) -> Value {
        let vnet = self.virtual_networks.first();
        let mut cfg = json!({
            "cloud": "AzurePublicCloud",
            "location": self.location,
            "subscriptionId": self.subscription_id,
            "tenantId": self.tenant_id,
            "resourceGroup": vnet.map(|v| v.resource_group.as_str()).unwrap_or_default(),
            "vnetName": vnet.map(|v| v.name.as_str()).unwrap_or_default(),
            "subnetName": vnet.and_then(|v| v.subnets.first()).map(|s| s.name.as_str()).unwrap_or_default(),
            "resourceManagerEndpoint": endpoint,
            "activeDirectoryAuthorityHost": endpoint,
        });
        if let Some(sp) = self.service_principals.first() {
            cfg["aadClientId"] = json!(sp.client_id);
            cfg["aadClientSecret"] = json!(sp.client_secret);
        }
        cfg
    }

    /// Builds the world the seed describes; errors name the seed entry that is wrong.
    pub fn build(&self) -> Result<World, ArmError> {
        let mut w = World::new(
            &self.subscription_id,
            &self.location,
            self.public_ip_ranges.clone(),
        );
        for rg in &self.resource_groups {
            w.put_resource_group(rg, None);
        }
        for v in &self.virtual_networks {
            let subnets: Vec<(String, Ipv4Net)> = v
                .subnets
                .iter()
                .map(|s| (s.name.clone(), s.address_prefix))
                .collect();
            w.add_virtual_network(&v.resource_group, &v.name, &v.address_prefixes, &subnets)?;
        }
        for s in &self.vm_scale_sets {
            let subnet_id = subnet_id(&w, &s.subnet);
            let mut tags = json!({ TAG_AKS_POOL_NAME: s.pool_name });
            if let Some(p) = s.gateway_prefix_size {
                tags[TAG_GATEWAY_PREFIX_SIZE] = json!(p.to_string());
            }
            let nic_name = format!("{}-nic", s.name.trim_end_matches("-vmss"));
            let model = json!({
                "location": self.location, "tags": tags,
                "properties": {"virtualMachineProfile": {
                    "osProfile": {"computerNamePrefix": s.name, "adminUsername": "azureuser"},
                    "networkProfile": {"networkInterfaceConfigurations": [{
                        "name": nic_name,
                        "properties": {"primary": true, "enableIPForwarding": true, "ipConfigurations": [{
                            "name": "ipconfig1",
                            "properties": {"primary": true, "privateIPAddressVersion": "IPv4", "subnet": {"id": subnet_id}}
                        }]}
                    }]}
                }}
            });
            w.create_vmss(&s.resource_group, &s.name, model, s.instances)?;
        }
        for p in &self.vm_pools {
            let subnet_id = subnet_id(&w, &p.subnet);
            let mut tags = json!({ TAG_AKS_POOL_NAME: p.pool_name });
            if let Some(sz) = p.gateway_prefix_size {
                tags[TAG_GATEWAY_PREFIX_SIZE] = json!(sz.to_string());
            }
            for i in 0..p.nics.max(p.vms) {
                let vm_name = format!("aks-{}-12345678-vm{i}", p.pool_name);
                let nic_name = format!("aks-{}-12345678-nic{i}", p.pool_name);
                if i < p.vms {
                    w.create_vm_with_nic(&p.resource_group, &vm_name, &nic_name, &subnet_id, &tags)?;
                } else {
                    w.create_spare_nic(&p.resource_group, &nic_name, &subnet_id, &tags)?;
                }
            }
        }
        let subnet = self.virtual_networks.first().and_then(|v| {
            v.subnets.first().map(|s| SubnetRef {
                resource_group: v.resource_group.clone(),
                vnet: v.name.clone(),
                subnet: s.name.clone(),
            })
        });
        for lb in &self.load_balancers {
            let subnet_id = subnet.as_ref().map(|s| subnet_id(&w, s)).unwrap_or_default();
            let id = w.resource_id(&lb.resource_group, super::world::LB_TYPE, &lb.name);
            let body = json!({
                "location": self.location,
                "sku": {"name": "Standard", "tier": "Regional"},
                "properties": {
                    "frontendIPConfigurations": [{"name": "other-frontend", "properties": {
                        "privateIPAllocationMethod": "Dynamic", "subnet": {"id": subnet_id}}}],
                    "backendAddressPools": [{"name": "other-backend", "properties": {}}],
                    "probes": [{"name": "other-probe", "properties": {"protocol": "Tcp", "port": 9000}}],
                    "loadBalancingRules": [{"name": "other-rule", "properties": {
                        "protocol": "Tcp", "frontendPort": 9000, "backendPort": 9000, "enableFloatingIP": false,
                        "frontendIPConfiguration": {"id": format!("{id}/frontendIPConfigurations/other-frontend")},
                        "backendAddressPool": {"id": format!("{id}/backendAddressPools/other-backend")},
                        "probe": {"id": format!("{id}/probes/other-probe")}}}]
                }
            });
            w.put_load_balancer(&lb.resource_group, &lb.name, body)?;
        }
        if self.foreign_fields {
            w.seed_foreign_fields();
        }
        Ok(w)
    }
}

fn subnet_id(w: &World, r: &SubnetRef) -> String {
    format!(
        "{}/subnets/{}",
        w.resource_id(&r.resource_group, VNET_TYPE, &r.vnet),
        r.subnet
    )
}

/// Parses a seed file's JSON, naming the offending field on error.
pub fn parse_seed(text: &str) -> Result<Seed, String> {
    serde_json::from_str::<Seed>(text).map_err(|e| format!("invalid seed: {e}"))
}

/// Value helper for callers that want the seed as JSON.
pub fn seed_to_json(seed: &Seed) -> Value {
    serde_json::to_value(seed).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_seed_file_parses_and_builds() {
        let seed = parse_seed(include_str!("../../seeds/azure-aks.json")).expect("example seed parses");
        let world = seed.build().expect("example seed builds");
        assert!(world.node("aks-gateway-12345678-vmss000001").is_some());
        assert!(world.node("aks-gwvms-12345678-vm1").is_some());
    }

    #[test]
    fn seed_errors_name_the_field() {
        let err = parse_seed(
            r#"{"subscriptionId": "s", "tenantId": "t", "resourceGroups": [], "publicIpRanges": ["nope"]}"#,
        )
        .expect_err("bad CIDR");
        assert!(err.contains("invalid seed"), "{err}");
        let mut seed = Seed::aks_like(1);
        seed.virtual_networks[0].subnets[0].address_prefix = "192.168.0.0/24".parse().expect("cidr");
        let err = seed.build().expect_err("subnet outside vnet");
        assert_eq!(err.code, "NetcfgSubnetRangeOutsideVnet");
    }

    #[test]
    fn service_principal_debug_redacts_the_secret() {
        let sp = ServicePrincipal {
            client_id: "id".into(),
            client_secret: "hunter2".into(),
        };
        assert!(!format!("{sp:?}").contains("hunter2"));
    }
}
