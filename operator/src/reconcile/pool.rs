//! The Azure half of a pool reconcile: find the pool, read its state, apply the plan, read the facts back.

use std::collections::BTreeMap;

use api::PoolRef;
use api::names::{TAG_AKS_POOL_NAME, TAG_GATEWAY_PREFIX_SIZE, TAG_STATIC_GATEWAY_NIC, managed_resource_name};
use futures::StreamExt;
use serde_json::Value;

use crate::arm_json::{
    lb_from_json, managed_prefix_body, merge_ip_configs, merge_lb, merge_nic_configs, nic_addresses,
    nic_from_json, prefix_from_json, primary_nic_from_configs, primary_nic_index, public_ip_body,
};
use crate::azure::{Arm, ArmError, ArmResult, Expect};
use crate::config::CloudConfig;
use crate::desired::{
    AzureState, Config, ConfigFacts, Egress, Env, Instance, LbWrite, PoolKind, PoolPlan, PoolProblem, VmNic,
    config_facts, last_segment, plan_pool,
};

/// Instance / NIC updates in flight at once per pool.
pub const NIC_UPDATE_CONCURRENCY: usize = 8;
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
}

const LIST_VMSS: &str = "virtualMachineScaleSets";
const LIST_VMS: &str = "virtualMachines";
const LIST_NICS: &str = "networkInterfaces";
const LIST_PUBLIC_IPS: &str = "publicIPAddresses";

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
            _ => arm.list_public_ips(rg).await?,
        };
        self.memo().lists.insert(key, v.clone());
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
        location: vmss
            .get("location")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

/// How often one pool reconcile re-reads and re-plans after a conditional write found its ETag stale (412):
/// someone else changed the load balancer, scale set, instance or NIC between our read and our write. Beyond
/// this the 412 surfaces (condition + Event) and the work loop retries with backoff.
pub const MAX_PRECONDITION_REFETCHES: usize = 3;

/// The pool's Azure state plus the raw objects the appliers merge into, and the ETags they were read with.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The planner's view.
    pub state: AzureState,
    lb_json: Option<Value>,
    vmss_etag: Option<String>,
    vmss_nic_configs: Vec<Value>,
    instance_nic_configs: BTreeMap<String, Vec<Value>>,
    instance_etags: BTreeMap<String, String>,
    vm_nic_json: BTreeMap<String, Value>,
}

/// The `etag` of an ARM object as read.
fn etag_of(v: &Value) -> Option<String> {
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
    let lb_json = reads.lb(arm, cfg).await?;
    let mut o = Observed {
        lb_json,
        ..Observed::default()
    };
    o.state.lb = o.lb_json.as_ref().map(lb_from_json);
    let names: Vec<String> = configs.iter().map(|c| managed_resource_name(&c.uid)).collect();
    let prefixes: Vec<ArmResult<(String, Option<Value>)>> =
        futures::stream::iter(names.into_iter().map(|name| {
            let (arm, rg) = (arm.clone(), cfg.resource_group.clone());
            async move { arm.get_prefix(&rg, &name).await.map(|p| (name, p)) }
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
            o.vmss_etag = etag_of(&vmss);
            o.vmss_nic_configs = vmss
                .pointer("/properties/virtualMachineProfile/networkProfile/networkInterfaceConfigurations")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            o.state.vmss_model = primary_nic_from_configs(&o.vmss_nic_configs);
            let vms = arm.list_instances(&pool.resource_group, &pool.name).await?;
            // The instances' NICs are read concurrently (bounded): one GET each, the only per-instance read.
            let reads: Vec<ArmResult<(Value, Vec<Value>, crate::desired::NicAddresses)>> =
                futures::stream::iter(vms.into_iter().map(|vm| {
                    let (arm, rg, vmss) = (arm.clone(), pool.resource_group.clone(), pool.name.clone());
                    async move {
                        let id = vm
                            .get("instanceId")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        let nic_configs = vm
                            .pointer("/properties/networkProfileConfiguration/networkInterfaceConfigurations")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        let nic_name = primary_nic_index(&nic_configs)
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
                        Ok((vm, nic_configs, addresses))
                    }
                }))
                .buffered(ARM_CONCURRENCY)
                .collect()
                .await;
            for r in reads {
                let (vm, nic_configs, addresses) = r?;
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
                    nic: primary_nic_from_configs(&nic_configs),
                    addresses,
                });
                if let Some(etag) = etag_of(&vm) {
                    o.instance_etags.insert(id.clone(), etag);
                }
                o.instance_nic_configs.insert(id, nic_configs);
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
                o.vm_nic_json.insert(name, nic);
            }
            for pip in reads.list(arm, LIST_PUBLIC_IPS, &pool.resource_group).await? {
                let name = pip.get("name").and_then(Value::as_str).unwrap_or_default();
                if let Some(prefix) = pip
                    .pointer("/properties/publicIPPrefix/id")
                    .and_then(Value::as_str)
                {
                    o.state
                        .public_ips
                        .insert(name.to_ascii_lowercase(), prefix.to_string());
                }
            }
        }
    }
    Ok(o)
}

/// Counts the successful results and returns the first failure, preferring any failure over a stale ETag
/// (a real error is what to report; a 412 alone means "re-read and re-plan").
fn tally<T>(results: Vec<ArmResult<T>>, writes: &mut usize) -> ArmResult<()> {
    let mut failure: Option<ArmError> = None;
    for r in results {
        match r {
            Ok(_) => *writes += 1,
            Err(e) => {
                if failure
                    .as_ref()
                    .is_none_or(|f| f.is_precondition_failed() && !e.is_precondition_failed())
                {
                    failure = Some(e);
                }
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Applies a plan in dependency order, adding the ARM writes made to `writes` (also when it fails half-way).
/// Writes to objects the operator shares (load balancer, scale set, instances, NICs) carry the ETag read in
/// `observed`: a concurrent change fails them with 412 instead of being overwritten.
pub async fn apply(
    arm: &Arm,
    cfg: &CloudConfig,
    pool: &ResolvedPool,
    observed: &Observed,
    plan: &PoolPlan,
    writes: &mut usize,
) -> ArmResult<()> {
    let rg = &cfg.resource_group;
    let jobs: Vec<(String, Value)> = plan
        .prefixes_to_create
        .iter()
        .map(|p| (p.name.clone(), managed_prefix_body(&cfg.location, p.prefix_len)))
        .collect();
    let created: Vec<ArmResult<Value>> = futures::stream::iter(jobs.into_iter().map(|(name, body)| {
        let (arm, rg) = (arm.clone(), rg.clone());
        async move { arm.put_prefix(&rg, &name, body).await }
    }))
    .buffer_unordered(ARM_CONCURRENCY)
    .collect()
    .await;
    tally(created, writes)?;
    for pip in &plan.public_ips_to_create {
        arm.put_public_ip(
            &pool.resource_group,
            &pip.name,
            public_ip_body(&pool.location, &pip.prefix_id),
        )
        .await?;
        *writes += 1;
    }
    let lb_first = matches!(
        plan.lb,
        LbWrite::Put {
            after_nics: false,
            ..
        }
    );
    if lb_first {
        *writes += write_lb(arm, cfg, observed, &plan.lb).await?;
    }
    if let Some(model) = &plan.vmss_model
        && let Some(nic_configs) = merge_nic_configs(&observed.vmss_nic_configs, model)
    {
        arm.put_vmss_nics(
            &pool.resource_group,
            &pool.name,
            &pool.location,
            nic_configs,
            observed
                .vmss_etag
                .as_deref()
                .map_or(Expect::Anything, Expect::Version),
        )
        .await?;
        *writes += 1;
    }
    // Bodies are built first so the concurrent futures own their data (and stay `Send` for every lifetime).
    let mut bodies: Vec<(String, Value, Option<String>)> = Vec::new();
    for u in &plan.nic_updates {
        match pool.pool.kind {
            PoolKind::Vmss => {
                let configs = observed
                    .instance_nic_configs
                    .get(&u.target)
                    .cloned()
                    .unwrap_or_default();
                if let Some(merged) = merge_nic_configs(&configs, &u.nic) {
                    let etag = observed.instance_etags.get(&u.target).cloned();
                    bodies.push((u.target.clone(), merged, etag));
                }
            }
            PoolKind::Vm => {
                if let Some(mut nic) = observed.vm_nic_json.get(&u.target).cloned() {
                    let current = nic
                        .pointer("/properties/ipConfigurations")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    nic["properties"]["ipConfigurations"] = merge_ip_configs(&current, &u.nic);
                    let etag = etag_of(&nic);
                    bodies.push((u.target.clone(), nic, etag));
                }
            }
        }
    }
    let updates: Vec<ArmResult<()>> =
        futures::stream::iter(bodies.into_iter().map(|(target, body, etag)| {
            let (arm, pool) = (arm.clone(), pool.clone());
            async move {
                match pool.pool.kind {
                    PoolKind::Vmss => {
                        arm.update_instance(
                            &pool.resource_group,
                            &pool.name,
                            &target,
                            &pool.location,
                            body,
                            etag.as_deref().map_or(Expect::Anything, Expect::Version),
                        )
                        .await
                    }
                    PoolKind::Vm => arm
                        .put_nic(
                            &pool.resource_group,
                            &target,
                            body,
                            etag.as_deref().map_or(Expect::Anything, Expect::Version),
                        )
                        .await
                        .map(|_| ()),
                }
            }
        }))
        .buffer_unordered(NIC_UPDATE_CONCURRENCY)
        .collect()
        .await;
    tally(updates, writes)?;
    if !lb_first {
        *writes += write_lb(arm, cfg, observed, &plan.lb).await?;
    }
    for name in &plan.public_ips_to_delete {
        arm.delete_public_ip(&pool.resource_group, name).await?;
        *writes += 1;
    }
    let names: Vec<String> = plan.prefixes_to_delete.clone();
    let deleted: Vec<ArmResult<()>> = futures::stream::iter(names.into_iter().map(|name| {
        let (arm, rg) = (arm.clone(), rg.clone());
        async move { arm.delete_prefix(&rg, &name).await }
    }))
    .buffer_unordered(ARM_CONCURRENCY)
    .collect()
    .await;
    tally(deleted, writes)
}

async fn write_lb(arm: &Arm, cfg: &CloudConfig, observed: &Observed, write: &LbWrite) -> ArmResult<usize> {
    let expect = Expect::read_as(observed.lb_json.as_ref());
    match write {
        LbWrite::Keep => Ok(0),
        LbWrite::Delete => {
            arm.delete_lb(&cfg.load_balancer_resource_group, &cfg.load_balancer_name, expect)
                .await?;
            Ok(1)
        }
        LbWrite::Put { lb, .. } => {
            let body = merge_lb(
                observed.lb_json.as_ref(),
                lb,
                &cfg.load_balancer_id(),
                &cfg.load_balancer_name,
                &cfg.location,
            );
            arm.put_lb(
                &cfg.load_balancer_resource_group,
                &cfg.load_balancer_name,
                body,
                expect,
            )
            .await?;
            Ok(1)
        }
    }
}

/// What one pool reconcile produced.
#[derive(Debug)]
pub struct PoolOutcome {
    /// The plan that was applied.
    pub plan: PoolPlan,
    /// ARM writes made (successful ones).
    pub writes: usize,
    /// Times a stale ETag (412) made this reconcile re-read the pool and re-plan.
    pub refetches: usize,
    /// Per configuration uid: what Azure says after the writes.
    pub facts: BTreeMap<String, ConfigFacts>,
    /// The pool's Azure state after the writes (GatewayPool status).
    pub state: AzureState,
}

/// Read, plan, apply, re-read. `byo_cidrs` are the CIDRs of BYO prefixes (read and length-checked by the caller).
pub async fn reconcile(
    arm: &Arm,
    cfg: &CloudConfig,
    pool: &ResolvedPool,
    configs: &[Config],
    byo_cidrs: &BTreeMap<String, String>,
    probe_port: i32,
) -> Result<PoolOutcome, PoolError> {
    reconcile_in(
        arm,
        cfg,
        pool,
        configs,
        byo_cidrs,
        probe_port,
        &PassReads::default(),
    )
    .await
}

/// [`reconcile`] within a pass: the first read uses what the pass read already; after a write, or a failure,
/// the pass's reads are forgotten and everything is read afresh.
pub async fn reconcile_in(
    arm: &Arm,
    cfg: &CloudConfig,
    pool: &ResolvedPool,
    configs: &[Config],
    byo_cidrs: &BTreeMap<String, String>,
    probe_port: i32,
    reads: &PassReads,
) -> Result<PoolOutcome, PoolError> {
    let env = env_of(cfg, probe_port);
    let mut observed = observe_in(arm, cfg, pool, configs, reads).await?;
    let mut writes = 0;
    let mut refetches = 0;
    let plan = loop {
        let plan = plan_pool(&pool.pool, configs, &observed.state, &env)?;
        if plan.is_noop() {
            break plan;
        }
        let applied = apply(arm, cfg, pool, &observed, &plan, &mut writes).await;
        if writes > 0 || applied.is_err() {
            reads.forget();
        }
        match applied {
            Ok(()) => break plan,
            Err(e) if e.is_precondition_failed() && refetches < MAX_PRECONDITION_REFETCHES => {
                // Someone changed an object between our read and our write: re-read, re-plan, go on. The
                // writes that succeeded are in the new state, so the new plan does not repeat them.
                refetches += 1;
                tracing::info!(error = %e, refetches, "stale ETag: re-reading the pool and re-planning");
                observed = observe_in(arm, cfg, pool, configs, reads).await?;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let after = if writes == 0 {
        observed
    } else {
        observe_in(arm, cfg, pool, configs, reads).await?
    };
    let facts = configs
        .iter()
        .filter(|c| !c.deleting)
        .map(|c| {
            let cidr = match &c.egress {
                Egress::Managed => after
                    .state
                    .managed_prefixes
                    .get(&managed_resource_name(&c.uid).to_ascii_lowercase())
                    .and_then(|p| p.cidr.clone()),
                Egress::Byo { prefix_id } => byo_cidrs
                    .get(&last_segment(prefix_id).to_ascii_lowercase())
                    .cloned(),
                Egress::Private => None,
            };
            (
                c.uid.clone(),
                config_facts(&pool.pool, c, &after.state, &plan.ports, cidr.as_deref()),
            )
        })
        .collect();
    Ok(PoolOutcome {
        plan,
        writes,
        refetches,
        facts,
        state: after.state,
    })
}
