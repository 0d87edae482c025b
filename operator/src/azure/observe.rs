//! Reading a pool from Azure: find it, and read everything its plan needs, keeping each object as ARM
//! returned it (the writers in `apply.rs` merge into those objects).

use std::collections::BTreeMap;

use api::PoolRef;
use api::names::{
    TAG_AKS_POOL_NAME, TAG_GATEWAY_POOL_UID, TAG_GATEWAY_PREFIX_SIZE, TAG_STATIC_GATEWAY_NIC,
    managed_resource_name,
};
use futures::StreamExt;
use serde_json::Value;

use super::client::{Arm, ArmError, ArmResult};
use super::json::{
    lb_from_json, nic_addresses, nic_from_json, prefix_from_json, primary_nic_from_configs, primary_nic_index,
};
use crate::config::CloudConfig;
use crate::desired::{AzureState, Config, Env, Instance, PoolKind, PoolProblem, PublicIp, VmNic};

/// Other independent ARM calls (prefix reads, creates, deletes) in flight at once per pool: bounded so that a
/// burst of configurations does not turn into a burst of 429s.
pub const ARM_CONCURRENCY: usize = 8;

/// A pool found in Azure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPool {
    /// The planner's view.
    pub pool: crate::desired::Pool,
    /// Resource group of the scale set / VMs / NICs.
    pub resource_group: String,
    /// Scale set name (VMSS pools) or node pool name (VM pools).
    pub name: String,
    /// Location of the scale set / VMs.
    pub location: String,
    /// The AKS node pool a scale set belongs to (its `aks-managed-poolName` tag): a node-pool reference of
    /// that name resolves to it when it is in the node resource group.
    pub aks_pool_name: Option<String>,
}

/// Why a pool cannot be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No scale set or VM pool matches.
    #[error("gateway VMSS not found: no scale set or VM pool matches {0}")]
    NotFound(String),
    /// The pool has no usable prefix size.
    #[error("{0}")]
    PrefixSize(String),
    /// A VMSS without `uniqueId`.
    #[error("gateway node pool does not have UID. {0}")]
    NoUid(String),
    /// The pool's Azure objects are not usable.
    #[error(transparent)]
    Problem(#[from] PoolProblem),
    /// ARM said no.
    #[error(transparent)]
    Arm(#[from] ArmError),
}

/// ARM reads the pools of one pass share, so that the same object is not read twice in a pass: the scale-set,
/// VM, NIC and public IP listings of a resource group, the gateway load balancer, and each scale set found by
/// [`resolve_in`] (which [`observe_in`] then does not GET again). Whatever was read is forgotten as soon as
/// anything is written, or may have been (any failure): what follows a write reads afresh.
#[derive(Debug, Default)]
pub struct PassReads {
    inner: std::sync::Mutex<Memo>,
}

#[derive(Debug, Default)]
struct Memo {
    /// By (listing, lower-cased resource group).
    lists: BTreeMap<(&'static str, String), Vec<Value>>,
    /// The load balancer as read (`Some(None)`: it does not exist).
    lb: Option<Option<Value>>,
    /// Scale sets found by `resolve_in`, by lower-cased (resource group, name).
    scale_sets: BTreeMap<(String, String), Value>,
    /// Public IP prefixes read by name, by lower-cased (resource group, name) (`None`: it does not exist).
    prefixes: BTreeMap<(String, String), Option<Value>>,
}

const LIST_VMSS: &str = "virtualMachineScaleSets";
const LIST_VMS: &str = "virtualMachines";
const LIST_NICS: &str = "networkInterfaces";
const LIST_PUBLIC_IPS: &str = "publicIPAddresses";
const LIST_PREFIXES: &str = "publicIPPrefixes";

impl PassReads {
    fn memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything read: after a write, or a failure that may hide one.
    pub fn forget(&self) {
        *self.memo() = Memo::default();
    }

    /// A resource group's listing of `kind`, read at most once until forgotten.
    async fn list(&self, arm: &Arm, kind: &'static str, rg: &str) -> ArmResult<Vec<Value>> {
        let key = (kind, rg.to_ascii_lowercase());
        if let Some(v) = self.memo().lists.get(&key) {
            return Ok(v.clone());
        }
        let v = match kind {
            LIST_VMSS => arm.list_vmss(rg).await?,
            LIST_VMS => arm.list_vms(rg).await?,
            LIST_NICS => arm.list_nics(rg).await?,
            LIST_PREFIXES => arm.list_prefixes(rg).await?,
            _ => arm.list_public_ips(rg).await?,
        };
        self.memo().lists.insert(key, v.clone());
        Ok(v)
    }

    /// The public IP prefixes of a resource group (one LIST), read at most once until forgotten: what the
    /// adoption of upstream's prefixes looks through.
    pub async fn prefixes(&self, arm: &Arm, rg: &str) -> ArmResult<Vec<Value>> {
        self.list(arm, LIST_PREFIXES, rg).await
    }

    /// A public IP prefix (`None`: it does not exist), read at most once until forgotten.
    pub async fn prefix(&self, arm: &Arm, rg: &str, name: &str) -> ArmResult<Option<Value>> {
        let key = (rg.to_ascii_lowercase(), name.to_ascii_lowercase());
        if let Some(v) = self.memo().prefixes.get(&key) {
            return Ok(v.clone());
        }
        let v = arm.get_prefix(rg, name).await?;
        self.memo().prefixes.insert(key, v.clone());
        Ok(v)
    }

    /// The gateway load balancer, read at most once until forgotten.
    async fn lb(&self, arm: &Arm, cfg: &CloudConfig) -> ArmResult<Option<Value>> {
        if let Some(v) = &self.memo().lb {
            return Ok(v.clone());
        }
        let v = arm
            .get_lb(&cfg.load_balancer_resource_group, &cfg.load_balancer_name)
            .await?;
        self.memo().lb = Some(v.clone());
        Ok(v)
    }

    fn remember_scale_set(&self, rg: &str, vmss: &Value) {
        if let Some(name) = vmss.get("name").and_then(Value::as_str) {
            self.memo()
                .scale_sets
                .insert((rg.to_ascii_lowercase(), name.to_ascii_lowercase()), vmss.clone());
        }
    }

    /// A scale set `resolve_in` found, when it came with its ETag (a write of the model must be conditional
    /// on it); otherwise the caller GETs it.
    fn scale_set(&self, rg: &str, name: &str) -> Option<Value> {
        self.memo()
            .scale_sets
            .get(&(rg.to_ascii_lowercase(), name.to_ascii_lowercase()))
            .filter(|v| etag_of(v).is_some())
            .cloned()
    }
}

fn tag<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get("tags")?
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))?
        .1
        .as_str()
}

fn parse_prefix_size(raw: Option<&str>) -> Result<i32, PoolError> {
    let raw = raw.ok_or_else(|| PoolError::PrefixSize("nodepool does not have IP prefix size".into()))?;
    match raw.trim().parse::<i32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(PoolError::PrefixSize(format!(
            "failed to parse nodepool IP prefix size: {raw}"
        ))),
    }
}

/// Finds the pool in Azure. `declared_prefix_len` comes from a GatewayPool or the configuration's VMSS profile;
/// without it a node pool's `aks-managed-gatewayIPPrefixSize` tag is read (as upstream).
pub async fn resolve(
    arm: &Arm,
    cfg: &CloudConfig,
    pool_ref: &PoolRef,
    declared_prefix_len: Option<i32>,
) -> Result<ResolvedPool, PoolError> {
    resolve_in(arm, cfg, pool_ref, declared_prefix_len, &PassReads::default()).await
}

/// [`resolve`] within a pass: listings already read in the pass are not read again, and the scale set found
/// is kept for [`observe_in`].
pub async fn resolve_in(
    arm: &Arm,
    cfg: &CloudConfig,
    pool_ref: &PoolRef,
    declared_prefix_len: Option<i32>,
    reads: &PassReads,
) -> Result<ResolvedPool, PoolError> {
    match pool_ref {
        PoolRef::Vmss { resource_group, name } => {
            let vmss = match reads.scale_set(resource_group, name) {
                Some(v) => v,
                None => arm
                    .get_vmss(resource_group, name)
                    .await?
                    .ok_or_else(|| PoolError::NotFound(pool_ref.to_string()))?,
            };
            reads.remember_scale_set(resource_group, &vmss);
            vmss_pool(&vmss, resource_group, declared_prefix_len, pool_ref)
        }
        PoolRef::Nodepool(np) => {
            // One lookup order for everything (upstream's two controllers disagreed): scale sets, then VMs.
            let sets = reads.list(arm, LIST_VMSS, &cfg.resource_group).await?;
            if let Some(vmss) = sets
                .iter()
                .find(|v| tag(v, TAG_AKS_POOL_NAME).is_some_and(|t| t.eq_ignore_ascii_case(np)))
            {
                reads.remember_scale_set(&cfg.resource_group, vmss);
                return vmss_pool(vmss, &cfg.resource_group, declared_prefix_len, pool_ref);
            }
            let vms = reads.list(arm, LIST_VMS, &cfg.resource_group).await?;
            let vm = vms
                .iter()
                .find(|v| tag(v, TAG_AKS_POOL_NAME).is_some_and(|t| t.eq_ignore_ascii_case(np)))
                .ok_or_else(|| PoolError::NotFound(pool_ref.to_string()))?;
            let prefix_len = match declared_prefix_len {
                Some(p) => p,
                None => parse_prefix_size(tag(vm, TAG_GATEWAY_PREFIX_SIZE))?,
            };
            Ok(ResolvedPool {
                pool: crate::desired::Pool {
                    uid: api::names::vm_pool_uid(np),
                    kind: PoolKind::Vm,
                    prefix_len,
                },
                resource_group: cfg.resource_group.clone(),
                name: np.clone(),
                aks_pool_name: Some(np.clone()),
                location: vm
                    .get("location")
                    .and_then(Value::as_str)
                    .unwrap_or(&cfg.location)
                    .to_string(),
            })
        }
    }
}

fn vmss_pool(
    vmss: &Value,
    rg: &str,
    declared: Option<i32>,
    pool_ref: &PoolRef,
) -> Result<ResolvedPool, PoolError> {
    let name = vmss
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let uid = vmss
        .pointer("/properties/uniqueId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            PoolError::NoUid(format!(
                "pool={pool_ref}, vmssName={name}, vmssResourceGroup={rg}"
            ))
        })?;
    let prefix_len = match declared {
        Some(p) => p,
        None => parse_prefix_size(tag(vmss, TAG_GATEWAY_PREFIX_SIZE))?,
    };
    Ok(ResolvedPool {
        pool: crate::desired::Pool {
            uid: uid.to_string(),
            kind: PoolKind::Vmss,
            prefix_len,
        },
        resource_group: rg.to_string(),
        name,
        aks_pool_name: tag(vmss, TAG_AKS_POOL_NAME).map(str::to_string),
        location: vmss
            .get("location")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

/// The pool's Azure state plus each object the appliers merge into, whole and as read (with its ETag).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The planner's view.
    pub state: AzureState,
    /// The load balancer.
    pub(crate) lb: Option<Value>,
    /// The scale set (VMSS pools).
    pub(crate) vmss: Option<Value>,
    /// The scale set's instances, by instance ID.
    pub(crate) instances: BTreeMap<String, Value>,
    /// The pool's gateway NICs (VM pools), by name.
    pub(crate) vm_nics: BTreeMap<String, Value>,
    /// The public IPs of a VM pool's resource group allocated from a prefix, as listed, by lower-cased name.
    pub(crate) public_ips: BTreeMap<String, Value>,
}

/// The `networkInterfaceConfigurations` at `ptr` of a scale set or instance.
pub(crate) fn nic_configs_at<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Where a scale set keeps its model's NIC configurations.
pub(crate) const VMSS_NIC_CONFIGS: &str =
    "/properties/virtualMachineProfile/networkProfile/networkInterfaceConfigurations";
/// Where a scale-set instance keeps its NIC configurations.
pub(crate) const INSTANCE_NIC_CONFIGS: &str =
    "/properties/networkProfileConfiguration/networkInterfaceConfigurations";

/// The `etag` of an ARM object as read.
pub(crate) fn etag_of(v: &Value) -> Option<String> {
    v.get("etag")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
}

/// The environment of the plan.
pub fn env_of(cfg: &CloudConfig, probe_port: i32) -> Env {
    Env {
        lb_id: cfg.load_balancer_id(),
        resource_group_id: format!(
            "/subscriptions/{}/resourceGroups/{}",
            cfg.subscription_id, cfg.resource_group
        ),
        frontend_subnet_id: cfg.subnet_id(),
        probe_port,
    }
}

/// Reads everything the plan needs.
pub async fn observe(
    arm: &Arm,
    cfg: &CloudConfig,
    pool: &ResolvedPool,
    configs: &[Config],
) -> ArmResult<Observed> {
    observe_in(arm, cfg, pool, configs, &PassReads::default()).await
}

/// [`observe`] within a pass: what the pass read already (load balancer, listings, the scale set `resolve_in`
/// found) is not read again.
pub async fn observe_in(
    arm: &Arm,
    cfg: &CloudConfig,
    pool: &ResolvedPool,
    configs: &[Config],
    reads: &PassReads,
) -> ArmResult<Observed> {
    let lb = reads.lb(arm, cfg).await?;
    let mut o = Observed {
        lb,
        ..Observed::default()
    };
    o.state.lb = o.lb.as_ref().map(lb_from_json);
    // Every configuration's managed prefix name, and the prefix it adopted; not a kept configuration's (the
    // plan neither creates nor deletes them, nor reports on it).
    let planned = || configs.iter().filter(|c| !c.kept);
    let mut names: Vec<String> = planned().map(|c| managed_resource_name(&c.uid)).collect();
    names.extend(planned().filter_map(|c| c.adopted.clone()));
    names.sort_by_key(|n| n.to_ascii_lowercase());
    names.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    let prefixes: Vec<ArmResult<(String, Option<Value>)>> =
        futures::stream::iter(names.into_iter().map(|name| {
            let rg = cfg.resource_group.clone();
            async move { reads.prefix(arm, &rg, &name).await.map(|p| (name, p)) }
        }))
        .buffered(ARM_CONCURRENCY)
        .collect()
        .await;
    for r in prefixes {
        let (name, p) = r?;
        if let Some(p) = p {
            o.state
                .managed_prefixes
                .insert(name.to_ascii_lowercase(), prefix_from_json(&p));
        }
    }
    match pool.pool.kind {
        PoolKind::Vmss => {
            let vmss = match reads.scale_set(&pool.resource_group, &pool.name) {
                Some(v) => Some(v),
                None => arm.get_vmss(&pool.resource_group, &pool.name).await?,
            };
            let Some(vmss) = vmss else {
                return Ok(o); // gone: nothing to clean on it
            };
            o.state.vmss_model = primary_nic_from_configs(nic_configs_at(&vmss, VMSS_NIC_CONFIGS));
            o.vmss = Some(vmss);
            let vms = arm.list_instances(&pool.resource_group, &pool.name).await?;
            // The instances' NICs are read concurrently (bounded): one GET each, the only per-instance read.
            let reads: Vec<ArmResult<(Value, crate::desired::NicAddresses)>> =
                futures::stream::iter(vms.into_iter().map(|vm| {
                    let (arm, rg, vmss) = (arm.clone(), pool.resource_group.clone(), pool.name.clone());
                    async move {
                        let id = vm
                            .get("instanceId")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        let nic_configs = nic_configs_at(&vm, INSTANCE_NIC_CONFIGS);
                        let nic_name = primary_nic_index(nic_configs)
                            .and_then(|i| nic_configs[i].get("name").and_then(Value::as_str))
                            .map(str::to_string);
                        let addresses = match nic_name {
                            Some(n) => arm
                                .get_instance_nic(&rg, &vmss, &id, &n)
                                .await?
                                .map(|nic| nic_addresses(&nic))
                                .unwrap_or_default(),
                            None => Default::default(),
                        };
                        Ok((vm, addresses))
                    }
                }))
                .buffered(ARM_CONCURRENCY)
                .collect()
                .await;
            for r in reads {
                let (vm, addresses) = r?;
                let id = vm
                    .get("instanceId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                o.state.instances.push(Instance {
                    instance_id: id.clone(),
                    computer_name: vm
                        .pointer("/properties/osProfile/computerName")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    provisioning_state: vm
                        .pointer("/properties/provisioningState")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    nic: primary_nic_from_configs(nic_configs_at(&vm, INSTANCE_NIC_CONFIGS)),
                    addresses,
                });
                o.instances.insert(id, vm);
            }
        }
        PoolKind::Vm => {
            for nic in reads.list(arm, LIST_NICS, &pool.resource_group).await? {
                let is_gateway = tag(&nic, TAG_STATIC_GATEWAY_NIC).is_some()
                    && tag(&nic, TAG_AKS_POOL_NAME).is_some_and(|p| p.eq_ignore_ascii_case(&pool.name));
                if !is_gateway {
                    continue;
                }
                let name = nic
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let ipcs = nic
                    .pointer("/properties/ipConfigurations")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                o.state.vm_nics.push(VmNic {
                    name: name.clone(),
                    provisioning_state: nic
                        .pointer("/properties/provisioningState")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    nic: nic_from_json(&ipcs),
                    addresses: nic_addresses(&nic),
                    vm_id: nic
                        .pointer("/properties/virtualMachine/id")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
                o.vm_nics.insert(name, nic);
            }
            for pip in reads.list(arm, LIST_PUBLIC_IPS, &pool.resource_group).await? {
                let name = pip.get("name").and_then(Value::as_str).unwrap_or_default();
                if let Some(prefix) = pip
                    .pointer("/properties/publicIPPrefix/id")
                    .and_then(Value::as_str)
                {
                    let ip = PublicIp {
                        prefix_id: prefix.to_string(),
                        pool: tag(&pip, TAG_GATEWAY_POOL_UID).map(str::to_string),
                        used_by: pip
                            .pointer("/properties/ipConfiguration/id")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    };
                    o.state.public_ips.insert(name.to_ascii_lowercase(), ip);
                    o.public_ips.insert(name.to_ascii_lowercase(), pip.clone());
                }
            }
        }
    }
    Ok(o)
}
