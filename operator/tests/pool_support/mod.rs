//! What the tests that drive the operator's Azure half on the seed's `gateway` pool share.

use std::collections::BTreeMap;

use api::PoolRef;
use operator::azure::Arm;
use operator::azure::apply::{self, PoolOutcome};
use operator::azure::observe::{self, ResolvedPool};
use operator::config::CloudConfig;
use operator::desired::Config;

/// The same configurations, being deleted.
pub fn deleting(configs: &[Config]) -> Vec<Config> {
    configs
        .iter()
        .map(|c| Config {
            deleting: true,
            ..c.clone()
        })
        .collect()
}

/// The `gateway` node pool, as found in Azure.
pub async fn resolve(arm: &Arm, cfg: &CloudConfig) -> ResolvedPool {
    observe::resolve(arm, cfg, &PoolRef::Nodepool("gateway".into()), None)
        .await
        .expect("pool found")
}

/// One pool reconcile outside a pass (probe port 8082, no BYO prefixes).
pub async fn try_reconcile(
    arm: &Arm,
    cfg: &CloudConfig,
    pool: &ResolvedPool,
    configs: &[Config],
) -> Result<PoolOutcome, observe::PoolError> {
    apply::reconcile(
        arm,
        cfg,
        pool,
        configs,
        &BTreeMap::new(),
        8082,
        &observe::PassReads::default(),
    )
    .await
}

/// [`try_reconcile`] that must succeed.
pub async fn reconcile(arm: &Arm, cfg: &CloudConfig, pool: &ResolvedPool, configs: &[Config]) -> PoolOutcome {
    try_reconcile(arm, cfg, pool, configs).await.expect("reconcile")
}
