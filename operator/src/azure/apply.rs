//! Applying a pool's plan to Azure: every write merges the operator's entries into the object as read (whole,
//! ETag included) and PUTs it back, so fields the operator does not own go back as ARM returned them. One
//! load-balancer writer ([`write_lb`]) and one re-plan loop ([`replanning`]) serve both a pool reconcile and
//! the clean-up of a configuration whose pool is gone.

use std::collections::BTreeMap;
use std::future::Future;

use api::names::managed_resource_name;
use futures::StreamExt;
use serde_json::Value;

use super::client::{Arm, ArmError, ArmResult, Expect};
use super::json::{
    lb_from_json, managed_prefix_body, merge_ip_configs, merge_lb, merge_nic_configs, prefix_from_json,
    public_ip_body, with_pool_tag,
};
use super::observe::{
    ARM_CONCURRENCY, INSTANCE_NIC_CONFIGS, Observed, PassReads, PoolError, ResolvedPool, VMSS_NIC_CONFIGS,
    env_of, nic_configs_at, observe_in,
};
use crate::config::CloudConfig;
use crate::desired::{
    AzureState, Config, ConfigFacts, Egress, LbWrite, PoolKind, PoolPlan, config_facts, last_segment,
    plan_lb, plan_pool,
};

/// Instance / NIC updates in flight at once per pool.
pub const NIC_UPDATE_CONCURRENCY: usize = 8;

/// How often one pool reconcile re-reads and re-plans after a conditional write found its ETag stale (412):
/// someone else changed the load balancer, scale set, instance or NIC between our read and our write. Beyond
/// this the 412 surfaces (condition + Event) and the work loop retries with backoff.
pub const MAX_PRECONDITION_REFETCHES: usize = 3;

/// An error that may mean "the object changed since it was read".
pub trait Stale {
    /// A conditional write found its ETag stale (412).
    fn is_stale(&self) -> bool;
}

impl Stale for ArmError {
    fn is_stale(&self) -> bool {
        self.is_precondition_failed()
    }
}

impl Stale for PoolError {
    fn is_stale(&self) -> bool {
        matches!(self, PoolError::Arm(e) if e.is_precondition_failed())
    }
}

/// The re-plan loop: `round` reads, plans and writes; when a write finds its ETag stale (412), the round runs
/// again on a fresh read, at most [`MAX_PRECONDITION_REFETCHES`] times. Returns the last round's result and
/// how many times it re-read.
pub async fn replanning<T, E, F, Fut>(mut round: F) -> (Result<T, E>, usize)
where
    E: Stale + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut refetches = 0;
    loop {
        match round().await {
            Err(e) if e.is_stale() && refetches < MAX_PRECONDITION_REFETCHES => {
                // The writes that succeeded are in the new read, so the new plan does not repeat them.
                refetches += 1;
                tracing::info!(error = %e, refetches, "stale ETag: re-reading and re-planning");
            }
            r => return (r, refetches),
        }
    }
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

/// The condition of a write of an object read as `read`: its ETag, or none when it came without one.
fn expect_of(read: &Value) -> Expect<'_> {
    Expect::read_as(Some(read))
}

/// The one load-balancer writer: merges the planned load balancer into `current` (as read, `None`: absent)
/// and PUTs it, or DELETEs it, conditional on the version read. Returns the writes made.
pub async fn write_lb(
    arm: &Arm,
    cfg: &CloudConfig,
    current: Option<&Value>,
    write: &LbWrite,
) -> ArmResult<usize> {
    let expect = Expect::read_as(current);
    match write {
        LbWrite::Keep => Ok(0),
        LbWrite::Delete => {
            arm.delete_lb(&cfg.load_balancer_resource_group, &cfg.load_balancer_name, expect)
                .await?;
            Ok(1)
        }
        LbWrite::Put { lb, .. } => {
            let body = merge_lb(
                current,
                lb,
                &cfg.load_balancer_id(),
                &cfg.load_balancer_name,
                &cfg.location,
            );
            arm.put_lb(
                &cfg.load_balancer_resource_group,
                &cfg.load_balancer_name,
                &body,
                expect,
            )
            .await?;
            Ok(1)
        }
    }
}

/// One NIC write of a plan: the whole object to PUT, and the version it was read as.
struct NicWrite {
    target: String,
    body: Value,
    read: Value,
}

/// The scale set or instance `read` with the primary NIC configuration's ipConfigurations at `ptr` merged.
fn with_nic_configs(read: &Value, ptr: &str, desired: &crate::desired::Nic) -> Option<Value> {
    let merged = merge_nic_configs(nic_configs_at(read, ptr), desired)?;
    let mut body = read.clone();
    *body.pointer_mut(ptr)? = merged;
    Some(body)
}

/// ARM's 400 codes that concern the one instance or NIC being updated: its address could not be allocated.
const INSTANCE_REFUSAL_CODES: &[&str] = &["PublicIPPrefixOutOfIpAddressesForPublicIPAddress", "SubnetIsFull"];

/// Whether ARM refused an instance or NIC update for that instance alone: it is gone (404), busy or in a state
/// that refuses the change (409), or there is no address for it (e.g. the node a full prefix has none for),
/// whether ARM says so at once or as the end of the update's long-running operation (Compute reports an
/// allocation failure there). An update whose operation ended `Failed` or `Canceled` was accepted, so what
/// went wrong is that instance's too. Such a refusal is that instance's: it is reported for it, and the rest of
/// the plan goes on. Anything else (401/403: a missing role; another 400: a body the operator built wrong; 412,
/// 429, 5xx) is the pool's and fails the pass, as every other write's does.
fn refused_for_this_target(e: &ArmError) -> bool {
    if e.operation_ended {
        return true;
    }
    match e.status {
        Some(404 | 409) => true,
        Some(400) => e
            .code
            .as_deref()
            .is_some_and(|c| INSTANCE_REFUSAL_CODES.iter().any(|k| c.eq_ignore_ascii_case(k))),
        _ => false,
    }
}

/// Applies a plan in dependency order, adding the ARM writes made to `writes` (also when it fails half-way).
/// An instance (or NIC) update ARM refuses for that instance alone goes to `failed_updates` (by target) and
/// does not stop the plan: one node a full prefix has no address for must not hold up, or undo, the others.
/// Writes to objects the operator shares (load balancer, scale set, instances, NICs) carry the ETag read in
/// `observed`: a concurrent change fails them with 412 instead of being overwritten.
pub async fn apply(
    arm: &Arm,
    cfg: &CloudConfig,
    pool: &ResolvedPool,
    observed: &Observed,
    plan: &PoolPlan,
    writes: &mut usize,
    failed_updates: &mut BTreeMap<String, ArmError>,
) -> ArmResult<()> {
    let rg = &cfg.resource_group;
    let jobs: Vec<(String, Value)> = plan
        .prefixes_to_create
        .iter()
        .map(|p| (p.name.clone(), managed_prefix_body(&cfg.location, p.prefix_len)))
        .collect();
    let created: Vec<ArmResult<Value>> = futures::stream::iter(jobs.into_iter().map(|(name, body)| {
        let (arm, rg) = (arm.clone(), rg.clone());
        async move { arm.put_prefix(&rg, &name, &body).await }
    }))
    .buffer_unordered(ARM_CONCURRENCY)
    .collect()
    .await;
    tally(created, writes)?;
    for pip in &plan.public_ips_to_create {
        arm.put_public_ip(
            &pool.resource_group,
            &pip.name,
            &public_ip_body(&pool.location, &pip.prefix_id, Some(&pool.pool.uid)),
        )
        .await?;
        *writes += 1;
    }
    // An IP made before the tag is tagged in place: the tag merged into the IP as listed, PUT over the version
    // read, so the user's (or Azure Policy's) tags and every property the operator does not model stay.
    for pip in &plan.public_ips_to_tag {
        let Some(read) = observed.public_ips.get(&pip.name.to_ascii_lowercase()) else {
            continue;
        };
        arm.update_public_ip(
            &pool.resource_group,
            &pip.name,
            &with_pool_tag(read, &pool.pool.uid),
            expect_of(read),
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
        *writes += write_lb(arm, cfg, observed.lb.as_ref(), &plan.lb).await?;
    }
    if let Some(model) = &plan.vmss_model
        && let Some(vmss) = &observed.vmss
        && let Some(body) = with_nic_configs(vmss, VMSS_NIC_CONFIGS, model)
    {
        arm.put_vmss(&pool.resource_group, &pool.name, &body, expect_of(vmss))
            .await?;
        *writes += 1;
    }
    // Bodies are built first so the concurrent futures own their data (and stay `Send` for every lifetime).
    let mut nic_writes: Vec<NicWrite> = Vec::new();
    for u in &plan.nic_updates {
        let (read, body) = match pool.pool.kind {
            PoolKind::Vmss => {
                let Some(read) = observed.instances.get(&u.target) else {
                    continue;
                };
                (read, with_nic_configs(read, INSTANCE_NIC_CONFIGS, &u.nic))
            }
            PoolKind::Vm => {
                let Some(read) = observed.vm_nics.get(&u.target) else {
                    continue;
                };
                let mut body = read.clone();
                let merged = merge_ip_configs(nic_configs_at(read, "/properties/ipConfigurations"), &u.nic);
                let slot = body.pointer_mut("/properties/ipConfigurations");
                (read, slot.map(|s| *s = merged).map(|()| body))
            }
        };
        if let Some(body) = body {
            nic_writes.push(NicWrite {
                target: u.target.clone(),
                body,
                read: read.clone(),
            });
        }
    }
    let updates: Vec<(String, ArmResult<()>)> = futures::stream::iter(nic_writes.into_iter().map(|w| {
        let (arm, pool) = (arm.clone(), pool.clone());
        async move {
            let expect = expect_of(&w.read);
            let result = match pool.pool.kind {
                PoolKind::Vmss => {
                    arm.put_instance(&pool.resource_group, &pool.name, &w.target, &w.body, expect)
                        .await
                }
                PoolKind::Vm => arm
                    .put_nic(&pool.resource_group, &w.target, &w.body, expect)
                    .await
                    .map(|_| ()),
            };
            (w.target, result)
        }
    }))
    .buffer_unordered(NIC_UPDATE_CONCURRENCY)
    .collect()
    .await;
    let mut pool_wide = Vec::new();
    for (target, result) in updates {
        match result {
            Err(e) if refused_for_this_target(&e) => {
                failed_updates.insert(target, e);
            }
            other => pool_wide.push(other),
        }
    }
    tally(pool_wide, writes)?;
    if !lb_first {
        *writes += write_lb(arm, cfg, observed.lb.as_ref(), &plan.lb).await?;
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
    /// Instance (VMSS instance ID) or NIC (VM pool) updates ARM refused for that target alone, in the last
    /// round: the rest of the plan was applied.
    pub failed_updates: BTreeMap<String, ArmError>,
}

/// Read, plan, apply, re-read. `byo_cidrs` are the CIDRs of BYO prefixes (read and length-checked by the caller).
/// Within a pass, the first read uses what the pass's `reads` hold already; after a write, or a failure, they
/// are forgotten and everything is read afresh. Outside a pass, give `&PassReads::default()`.
pub async fn reconcile(
    arm: &Arm,
    cfg: &CloudConfig,
    pool: &ResolvedPool,
    configs: &[Config],
    byo_cidrs: &BTreeMap<String, String>,
    probe_port: i32,
    reads: &PassReads,
) -> Result<PoolOutcome, PoolError> {
    let env = env_of(cfg, probe_port);
    let writes = std::sync::atomic::AtomicUsize::new(0);
    let failed_updates = std::sync::Mutex::new(BTreeMap::new());
    let (applied, refetches) = replanning(|| async {
        let observed = observe_in(arm, cfg, pool, configs, reads).await?;
        let plan = plan_pool(&pool.pool, configs, &observed.state, &env)?;
        if plan.is_noop() {
            return Ok((plan, observed));
        }
        let mut made = 0;
        let mut failed = BTreeMap::new();
        let applied = apply(arm, cfg, pool, &observed, &plan, &mut made, &mut failed).await;
        let refused = !failed.is_empty();
        *failed_updates.lock().unwrap_or_else(|p| p.into_inner()) = failed;
        writes.fetch_add(made, std::sync::atomic::Ordering::Relaxed);
        if made > 0 || refused || applied.is_err() {
            reads.forget();
        }
        applied.map(|()| (plan, observed)).map_err(PoolError::from)
    })
    .await;
    let (plan, observed) = applied?;
    let writes = writes.into_inner();
    let after = if writes == 0 {
        observed
    } else {
        observe_in(arm, cfg, pool, configs, reads).await?
    };
    let facts = configs
        .iter()
        .filter(|c| !c.deleting && !c.kept)
        .map(|c| {
            let cidr = match &c.egress {
                Egress::Byo { prefix } => byo_cidrs.get(&prefix.name.to_ascii_lowercase()).cloned(),
                _ => c.egress_owned_prefix().and_then(|name| {
                    after
                        .state
                        .managed_prefixes
                        .get(&name.to_ascii_lowercase())
                        .and_then(|p| p.cidr.clone())
                }),
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
        failed_updates: failed_updates.into_inner().unwrap_or_else(|p| p.into_inner()),
    })
}

/// The pool of a configuration is gone from Azure: remove its rule and probe (and the pool's frontend and
/// backend when nothing else uses them, or the whole load balancer) through the same writer and re-plan loop
/// as a pool reconcile, then its managed (and adopted) prefix and that prefix's public IPs.
pub async fn cleanup_without_pool(
    arm: &Arm,
    cfg: &CloudConfig,
    c: &Config,
    probe_port: i32,
) -> ArmResult<()> {
    let env = env_of(cfg, probe_port);
    let (removed, _) = replanning(|| async {
        let Some(current) = arm
            .get_lb(&cfg.load_balancer_resource_group, &cfg.load_balancer_name)
            .await?
        else {
            return Ok(0);
        };
        let lb = lb_from_json(&current);
        // The rule names the frontend of its pool, named by the pool's uid: that is all of the pool left.
        let Some(pool_uid) = lb
            .rules
            .iter()
            .find(|r| r.name.eq_ignore_ascii_case(&c.uid))
            .and_then(|r| r.frontend.clone())
        else {
            return Ok(0);
        };
        let plan = plan_lb(&pool_uid, std::slice::from_ref(c), Some(&lb), &env, false);
        write_lb(arm, cfg, Some(&current), &plan.write).await
    })
    .await;
    removed?;
    for name in std::iter::once(managed_resource_name(&c.uid)).chain(c.adopted.clone()) {
        if let Some(p) = arm.get_prefix(&cfg.resource_group, &name).await? {
            for pip in prefix_from_json(&p).public_ip_ids {
                arm.delete_public_ip(&cfg.resource_group, last_segment(&pip))
                    .await?;
            }
            arm.delete_prefix(&cfg.resource_group, &name).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    fn refusal(status: u16, code: &str) -> ArmError {
        ArmError {
            operation: "PUT virtualMachines".into(),
            resource: "2".into(),
            status: Some(status),
            code: Some(code.into()),
            message: String::new(),
            operation_ended: false,
        }
    }

    #[test]
    fn an_update_whose_operation_failed_stays_with_its_instance() {
        let ended = ArmError {
            status: None,
            code: Some("AllocationFailed".into()),
            operation_ended: true,
            ..refusal(400, "")
        };
        assert!(refused_for_this_target(&ended));
        let timed_out = ArmError {
            status: None,
            code: None,
            ..refusal(400, "")
        };
        assert!(!refused_for_this_target(&timed_out), "a deadline is the pool's");
    }

    #[test]
    fn only_refusals_about_the_instance_itself_stay_with_it() {
        for (status, code) in [
            (400, "PublicIPPrefixOutOfIpAddressesForPublicIPAddress"),
            (400, "SubnetIsFull"),
            (404, "NotFound"),
            (409, "OperationNotAllowed"),
        ] {
            assert!(refused_for_this_target(&refusal(status, code)), "{status} {code}");
        }
        // A missing role, a wrong body, a stale ETag, throttling, a server error: the pool's.
        for (status, code) in [
            (401, "InvalidAuthenticationToken"),
            (403, "AuthorizationFailed"),
            (400, "InvalidParameter"),
            (412, "PreconditionFailed"),
            (429, "TooManyRequests"),
            (500, "InternalServerError"),
        ] {
            assert!(
                !refused_for_this_target(&refusal(status, code)),
                "{status} {code}"
            );
        }
    }
}
