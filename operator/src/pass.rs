//! One pass: the only module that touches both Kubernetes and Azure. Work is grouped per pool: every
//! configuration on a pool is reconciled together (rules, finalizer, key Secret; then the pool's Azure plan;
//! then status), so that Azure sees one set of writes per pool (see `desired.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::names::{REASON_AZURE_ERROR, SGC_FINALIZER};
use api::rules::{PoolFacts, validate_sgc};
use api::{GatewayPool, PoolKey, PoolRef, StaticGatewayConfiguration};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Secret};
use kube::ResourceExt;

use crate::azure::observe::{self, PassReads, PoolError};
use crate::azure::{Arm, ArmError, apply};
use crate::config::CloudConfig;
use crate::desired::{self, Config, ConfigProblem, Egress};
use crate::kube::Kube;
use crate::metrics::{FailLabels, LatencyLabels, Metrics};
use crate::status::{NodeIdentity, Outcome, pool_exceeds_prefix, pool_not_found_status, pool_status};

/// Per configuration uid: its WireGuard public key and the Secret holding the private one.
type ConfigKeys = BTreeMap<String, (String, ObjectReference)>;

/// Upstream's three controllers, whose per-object metric series the operator keeps emitting (one pool pass
/// reconciles every configuration on the pool; each configuration gets the series its upstream objects had).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    /// StaticGatewayConfiguration controller: rules, finalizer, key Secret, status.
    Sgc,
    /// GatewayLBConfiguration controller: the load balancer.
    Lb,
    /// GatewayVMConfiguration controller: prefixes, scale set, instances, NICs, public IPs.
    Vm,
}

impl Layer {
    /// Upstream's `operation` label value.
    pub fn operation(self, deleting: bool) -> &'static str {
        match (self, deleting) {
            (Layer::Sgc, false) => "reconcile_static_gateway_configuration",
            (Layer::Sgc, true) => "delete_static_gateway_configuration",
            (Layer::Lb, false) => "reconcile_gateway_lb_configuration",
            (Layer::Lb, true) => "delete_gateway_lb_configuration",
            (Layer::Vm, false) => "reconcile_gateway_vm_configuration",
            (Layer::Vm, true) => "delete_gateway_vm_configuration",
        }
    }

    /// The layers an Azure-half failure belongs to: load-balancer calls to the LB controller's series,
    /// everything else (prefixes, scale set, instances, NICs, public IPs) to the VM controller's; a pool that
    /// cannot be found or has no UID failed both, as upstream's two `loadPool`s would.
    pub fn of_pool_error(e: &PoolError) -> &'static [Layer] {
        match e {
            PoolError::NotFound(_) | PoolError::NoUid(_) => &[Layer::Lb, Layer::Vm],
            PoolError::Arm(a) if a.operation.to_ascii_lowercase().contains("loadbalancers") => &[Layer::Lb],
            PoolError::PrefixSize(_) | PoolError::Problem(_) | PoolError::Arm(_) => &[Layer::Vm],
        }
    }
}

/// One configuration's part in a pool pass, for the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigReport {
    /// lower(`namespace/name`), upstream's `resource` label.
    pub resource: String,
    /// Reconciled for deletion.
    pub deleting: bool,
    /// Passed the rules: upstream would have had LB and VM configurations for it.
    pub in_azure: bool,
    /// Layers that failed.
    pub failed: BTreeSet<Layer>,
}

/// What a pool pass did per configuration uid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// By configuration uid.
    pub configs: BTreeMap<String, ConfigReport>,
}

impl PassReport {
    fn record(&mut self, sgc: &StaticGatewayConfiguration, in_azure: bool) {
        let resource =
            format!("{}/{}", sgc.namespace().unwrap_or_default(), sgc.name_any()).to_ascii_lowercase();
        self.configs.insert(
            sgc.uid().unwrap_or_default(),
            ConfigReport {
                resource,
                deleting: sgc.metadata.deletion_timestamp.is_some(),
                in_azure,
                failed: BTreeSet::new(),
            },
        );
    }

    fn fail(&mut self, uid: &str, layers: &[Layer]) {
        if let Some(c) = self.configs.get_mut(uid) {
            c.failed.extend(layers.iter().copied());
        }
    }

    fn fail_all(&mut self, layers: &[Layer]) {
        for c in self.configs.values_mut().filter(|c| c.in_azure) {
            c.failed.extend(layers.iter().copied());
        }
    }
}

/// One of a configuration's own Kubernetes writes in a pool pass. Each can fail for that configuration alone
/// (e.g. an object stored under an older CRD schema that the current one refuses on every write: Kubernetes
/// 1.28 does not exempt unchanged fields), so a failure stops that configuration, never its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigWrite {
    /// Adding the configuration finalizer (before anything is made in Azure for it).
    Finalizer,
    /// Creating or repairing the key Secret.
    KeySecret,
    /// Writing the status.
    Status,
    /// Deleting the key Secret and removing the finalizer, after its Azure part is gone.
    Release,
    /// Recording the public IP prefix the configuration adopts (its annotation), before any Azure write uses it.
    Adoption,
}

/// A configuration's part in its pool's Azure plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AzurePart {
    /// Planned: provisioned, or removed when it is being deleted.
    Planned,
    /// Kept as it is ([`desired::Config::kept`]): what it has in Azure stays, nothing is added or changed.
    Kept,
    /// Not in the plan at all: it owns nothing in Azure.
    Out,
}

impl ConfigWrite {
    /// The configuration's part in the pool's Azure plan after this write failed. Without its finalizer it
    /// must own nothing in Azure (deleting it would leave its resources behind), so it stays out; the
    /// finalizer is only ever missing before its first Azure write. A key Secret only feeds the status, so
    /// leaving the configuration out of the plan for it would delete what it already owns in Azure: it stays
    /// planned. Status and release come after the Azure plan. A configuration that was to adopt a prefix
    /// cannot be planned without the record of it (as a managed one it would get a new prefix: new egress IPs),
    /// nor left out (that would delete what it has): it is kept as it is.
    pub fn azure_part(self) -> AzurePart {
        match self {
            ConfigWrite::Finalizer => AzurePart::Out,
            ConfigWrite::Adoption => AzurePart::Kept,
            ConfigWrite::KeySecret | ConfigWrite::Status | ConfigWrite::Release => AzurePart::Planned,
        }
    }

    /// What was being written, for logs and Events.
    pub fn doing(self) -> &'static str {
        match self {
            ConfigWrite::Finalizer => "adding the finalizer",
            ConfigWrite::KeySecret => "writing the key Secret",
            ConfigWrite::Status => "writing the status",
            ConfigWrite::Release => "removing the finalizer",
            ConfigWrite::Adoption => "recording the adopted public ip prefix",
        }
    }
}

/// The Event reason of a configuration whose own write the API server refused.
pub const REASON_WRITE_FAILED: &str = "WriteFailed";

/// A configuration whose own write failed in a pool pass; the other configurations of the pool went on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFailure {
    /// `namespace/name`.
    pub resource: String,
    /// What failed.
    pub write: ConfigWrite,
    /// The API server's HTTP status, when it answered.
    pub code: Option<u16>,
    /// Why (the API server's message).
    pub reason: String,
}

impl ConfigFailure {
    /// From a failed write of `sgc`.
    pub fn new(sgc: &StaticGatewayConfiguration, write: ConfigWrite, e: &kube::Error) -> Self {
        let (code, reason) = match e {
            kube::Error::Api(s) => (Some(s.code), s.message.clone()),
            other => (None, other.to_string()),
        };
        ConfigFailure {
            resource: format!("{}/{}", sgc.namespace().unwrap_or_default(), sgc.name_any()),
            write,
            code,
            reason,
        }
    }

    /// The Warning Event for the configuration (reason, note), or none when the retry fixes it without
    /// anyone acting: 409 (the pass read an older version) and 404 (the object is gone).
    pub fn event(&self) -> Option<(&'static str, String)> {
        match self.code {
            Some(409 | 404) => None,
            _ => Some((
                REASON_WRITE_FAILED,
                format!(
                    "{} failed (retried with backoff; the other configurations of the pool are reconciled): {}",
                    self.write.doing(),
                    self.reason
                ),
            )),
        }
    }
}

impl std::fmt::Display for ConfigFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.resource, self.write.doing(), self.reason)
    }
}

/// The configurations whose own writes failed in one pool pass.
#[derive(Debug)]
pub struct ConfigFailures(pub Vec<ConfigFailure>);

impl std::fmt::Display for ConfigFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "configurations not written: {}", all.join("; "))
    }
}

/// Shared state of the reconcilers.
pub struct Operator {
    /// Kubernetes: key Secrets, finalizers, status.
    pub kube: Kube,
    /// Azure.
    pub arm: Arm,
    /// Cloud config.
    pub cfg: CloudConfig,
    /// The operator's own namespace (metrics label).
    pub namespace: String,
    /// `--gateway-lb-probe-port`.
    pub probe_port: i32,
    /// Metrics.
    pub metrics: Metrics,
    /// The pools (by [`PoolRef::key`]) still converging (writes just made, addresses or operations pending): the
    /// work loop looks at them again soon instead of waiting for the periodic resync. See
    /// [`Operator::take_converging`].
    converging: std::sync::Mutex<BTreeSet<PoolKey>>,
    /// Passes (`reconcile_pools`) started and finished, for tests and benchmarks that wait for the work loop.
    pub passes: PassCounter,
    /// Every pass's progress (a pass is under way from its start, and progresses at each pool and at each ARM
    /// call that returns), for the liveness probe: a pass stuck on a call that never returns fails `/healthz`.
    pub heartbeat: daemon::liveness::Heartbeat,
}

/// How long a pass may go without progress (a pool finished, an ARM call returned) before the liveness probe
/// fails (`--stuck-pass-seconds`): well above the longest legitimate quiet spell, one ARM call with its
/// retries' waits (each attempt is bounded by [`crate::azure::Timeouts`]).
pub const DEFAULT_LIVENESS_BOUND: Duration = Duration::from_secs(15 * 60);

/// The Kubernetes objects a pass works from: the work loop's watch caches, or lists. `Debug` shows counts
/// only (the Secrets hold private keys).
#[derive(Clone, Default)]
pub struct Inputs {
    /// Every StaticGatewayConfiguration.
    pub sgcs: Vec<Arc<StaticGatewayConfiguration>>,
    /// Every GatewayPool.
    pub pools: Vec<Arc<GatewayPool>>,
    /// Every Node (name, labels and `spec.providerID` are read).
    pub nodes: Vec<Arc<Node>>,
    /// The key Secrets as the work loop's cache has them (`None`: read each from the API server). A Secret the
    /// cache does not have is still read from the API server before it is created.
    pub key_secrets: Option<kube::runtime::reflector::Store<Secret>>,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("sgcs", &self.sgcs.len())
            .field("pools", &self.pools.len())
            .field("nodes", &self.nodes.len())
            .field("key_secrets", &self.key_secrets.as_ref().map(|s| s.state().len()))
            .finish()
    }
}

/// What the pools of one pass share: their ARM reads, the key Secret cache.
pub struct PassContext<'a> {
    /// ARM reads shared within the pass.
    pub reads: &'a PassReads,
    /// See [`Inputs::key_secrets`].
    pub key_secrets: Option<&'a kube::runtime::reflector::Store<Secret>>,
    /// Every StaticGatewayConfiguration of the pass, on every pool: which prefixes the operator may adopt
    /// depends on them all (their uids, the prefixes they adopted).
    pub sgcs: &'a [Arc<StaticGatewayConfiguration>],
}

impl std::fmt::Debug for PassContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassContext")
            .field("reads", &self.reads)
            .field("key_secrets", &self.key_secrets.map(|s| s.state().len()))
            .finish()
    }
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct PassOutcome {
    /// Pools reconciled, by [`PoolRef::key`] (failed or not).
    pub reconciled: BTreeSet<PoolKey>,
    /// Pools whose reconcile failed.
    pub failed: BTreeSet<PoolKey>,
    /// Something outside the pools failed (a GatewayPool's finalizer, a configuration naming no pool): the
    /// whole pass is to be retried.
    pub failed_outside_pools: bool,
    /// The first error.
    pub error: Option<Error>,
}

impl PassOutcome {
    fn fail_outside_pools(&mut self, e: Error) {
        self.failed_outside_pools = true;
        self.error.get_or_insert(e);
    }
}

/// Counts the work loop's passes.
#[derive(Debug, Default)]
pub struct PassCounter {
    started: std::sync::atomic::AtomicU64,
    finished: std::sync::atomic::AtomicU64,
}

impl PassCounter {
    /// Passes started so far.
    pub fn started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Passes finished so far (successfully or not).
    pub fn finished(&self) -> u64 {
        self.finished.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// No pass is running.
    pub fn idle(&self) -> bool {
        self.finished() == self.started()
    }
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("kube", &self.kube)
            .finish_non_exhaustive()
    }
}

/// Errors of the Kubernetes half.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kubernetes API.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Azure.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// Some configurations' own writes failed; the rest of their pool was reconciled.
    #[error("{0}")]
    Configs(ConfigFailures),
}

impl Operator {
    /// Builds the operator's shared state.
    pub fn new(
        client: kube::Client,
        arm: Arm,
        cfg: CloudConfig,
        secret_namespace: String,
        namespace: String,
        probe_port: i32,
        metrics: Metrics,
    ) -> Self {
        let heartbeat = daemon::liveness::Heartbeat::new("reconcile pass", DEFAULT_LIVENESS_BOUND);
        arm.report_progress_to(&heartbeat);
        Operator {
            kube: Kube::new(client, secret_namespace),
            arm,
            cfg,
            namespace,
            probe_port,
            metrics,
            converging: std::sync::Mutex::default(),
            passes: PassCounter::default(),
            heartbeat,
        }
    }

    /// The operator with `bound` as its liveness bound (see [`Operator::heartbeat`]).
    pub fn with_liveness_bound(self, bound: Duration) -> Self {
        self.heartbeat.set_bound(bound);
        self
    }

    /// Reconciles every configuration on one pool together. Metrics: one `reconcile_gateway_pool` series per
    /// pool, and upstream's per-object series (`reconcile_static_gateway_configuration`,
    /// `reconcile_gateway_lb_configuration`, `reconcile_gateway_vm_configuration` and their `delete_` forms)
    /// for every configuration the pass reconciled, with the pass's duration as their latency.
    pub async fn reconcile_pool(
        &self,
        pool_ref: &PoolRef,
        sgcs: &[Arc<StaticGatewayConfiguration>],
        pools: &[Arc<GatewayPool>],
        nodes: &[Arc<Node>],
        ctx: &PassContext<'_>,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let mut report = PassReport::default();
        let result = self
            .reconcile_pool_inner(pool_ref, sgcs, pools, nodes, &mut report, ctx)
            .await;
        if matches!(result, Err(Error::Kube(_) | Error::Pool(_))) {
            // A failure may hide a write (a lost response): what follows reads afresh. A configuration's own
            // Kubernetes write hides no Azure write.
            ctx.reads.forget();
        }
        if let Err(Error::Kube(_)) = &result {
            // A Kubernetes failure stops the pass: nobody got a complete reconcile of their own part.
            for c in report.configs.values_mut() {
                c.failed.insert(Layer::Sgc);
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let latency = |operation: &str, sub: &str, rg: &str| LatencyLabels {
            namespace: self.namespace.clone(),
            operation: operation.into(),
            subscription_id: sub.into(),
            resource_group: rg.into(),
        };
        let fail = |operation: &str, sub: &str, rg: &str, resource: &str| FailLabels {
            namespace: self.namespace.clone(),
            operation: operation.into(),
            subscription_id: sub.into(),
            resource_group: rg.into(),
            resource: resource.into(),
        };
        let (sub, rg) = (
            self.cfg.subscription_id.as_str(),
            self.cfg.resource_group.as_str(),
        );
        self.metrics
            .reconcile_latency
            .get_or_create(&latency("reconcile_gateway_pool", sub, rg))
            .observe(elapsed);
        if let Err(e) = &result {
            tracing::warn!(pool = %pool_ref, error = %e, "pool reconcile failed");
            self.metrics
                .reconcile_fail
                .get_or_create(&fail("reconcile_gateway_pool", sub, rg, pool_ref.key().as_str()))
                .inc();
        }
        for c in report.configs.values() {
            let layers: &[Layer] = if c.in_azure {
                &[Layer::Sgc, Layer::Lb, Layer::Vm]
            } else {
                &[Layer::Sgc]
            };
            for layer in layers {
                let (sub, rg) = match layer {
                    Layer::Sgc => ("n/a", "n/a"),
                    Layer::Lb => (sub, self.cfg.load_balancer_resource_group.as_str()),
                    Layer::Vm => (sub, rg),
                };
                let operation = layer.operation(c.deleting);
                self.metrics
                    .reconcile_latency
                    .get_or_create(&latency(operation, sub, rg))
                    .observe(elapsed);
                if c.failed.contains(layer) {
                    self.metrics
                        .reconcile_fail
                        .get_or_create(&fail(operation, sub, rg, &c.resource))
                        .inc();
                }
            }
        }
        result
    }

    async fn reconcile_pool_inner(
        &self,
        pool_ref: &PoolRef,
        sgcs: &[Arc<StaticGatewayConfiguration>],
        pools: &[Arc<GatewayPool>],
        nodes: &[Arc<Node>],
        report: &mut PassReport,
        ctx: &PassContext<'_>,
    ) -> Result<(), Error> {
        let reads = ctx.reads;
        let pool_obj = pools
            .iter()
            .find(|p| p.spec.pool_ref().as_ref() == Some(pool_ref));
        let node_count = pool_ref.gateway_node_count(
            nodes
                .iter()
                .map(|n| (n.labels(), n.spec.as_ref().and_then(|s| s.provider_id.as_deref()))),
        );
        let facts = PoolFacts {
            pool: pool_obj.map(|p| p.spec.clone()),
            node_count: Some(node_count).filter(|n| *n > 0),
        };

        // Rules, finalizer, key. A configuration whose own write fails is reported and retried; the others go on.
        let mut failures: Vec<ConfigFailure> = Vec::new();
        let mut keys: ConfigKeys = BTreeMap::new();
        let mut configs: Vec<(Arc<StaticGatewayConfiguration>, Config)> = Vec::new();
        let mut declared_prefix = pool_obj.map(|p| p.spec.public_ip_prefix_size);
        let adoptions = Adoptions::of(ctx.sgcs, &self.cfg);
        for sgc in sgcs {
            let uid = sgc.uid().unwrap_or_default();
            let deleting = sgc.metadata.deletion_timestamp.is_some();
            // The prefix it adopted (its annotation, checked): a refused annotation is reported below, and a
            // configuration being deleted with one never used that prefix.
            let adoption = adoptions.of_config(sgc);
            let config = config_of(sgc, adoption.as_ref());
            // The finalizer is added only once the configuration is accepted: it marks one the operator admitted.
            let admitted = sgc.finalizers().iter().any(|f| f == SGC_FINALIZER);
            if deleting {
                if admitted {
                    report.record(sgc, true);
                    configs.push((
                        sgc.clone(),
                        Config {
                            deleting: true,
                            ..config
                        },
                    ));
                }
                continue;
            }
            // An admitted configuration is judged as the webhook judges an update that keeps its pool: rule 4
            // (the cluster's node count against the prefix; an AKS surge upgrade adds a node for a while) is
            // only a warning there, and never takes it off Azure. It is reported (Degraded) once the pool's
            // prefix is known below.
            let verdict = validate_sgc(&sgc.spec, admitted.then_some(&sgc.spec), &facts);
            let refused = if verdict.is_allowed() {
                adoption.and_then(Result::err)
            } else {
                Some(verdict.message())
            };
            if let Some(message) = refused {
                report.record(sgc, false);
                report.fail(&uid, &[Layer::Sgc]);
                let written = self
                    .kube
                    .write_status(sgc, &Outcome::Invalid(message), None)
                    .await;
                self.own_write(sgc, ConfigWrite::Status, written, report, &mut failures)
                    .await;
                continue;
            }
            report.record(sgc, true);
            let added = self.kube.add_finalizer(sgc).await;
            let finalized = self
                .own_write(sgc, ConfigWrite::Finalizer, added, report, &mut failures)
                .await
                .is_some();
            if !finalized && ConfigWrite::Finalizer.azure_part() == AzurePart::Out {
                report.record(sgc, false);
                report.fail(&uid, &[Layer::Sgc]);
                continue;
            }
            let key = self.kube.ensure_key_secret(sgc, ctx.key_secrets).await;
            if let Some(key) = self
                .own_write(sgc, ConfigWrite::KeySecret, key, report, &mut failures)
                .await
            {
                keys.insert(uid.clone(), key);
            }
            if declared_prefix.is_none() {
                declared_prefix = sgc.spec.vmss_profile().map(|p| p.public_ip_prefix_size);
            }
            configs.push((sgc.clone(), config));
        }
        // A GatewayPool reports its instances (and Ready) even before a configuration uses it, so whoever
        // declared it (kubectl, Terraform) can wait for it; a pool nobody declared has nothing to report.
        let live_pool_obj = pool_obj.filter(|p| p.metadata.deletion_timestamp.is_none());
        if configs.is_empty() && live_pool_obj.is_none() {
            return Self::unless_failed(failures);
        }

        let resolved = match observe::resolve_in(&self.arm, &self.cfg, pool_ref, declared_prefix, reads).await
        {
            Ok(r) => r,
            Err(PoolError::NotFound(m)) => {
                if let Some(p) = live_pool_obj {
                    let old = p.status.clone().unwrap_or_default();
                    self.kube
                        .write_pool_status(p, &pool_not_found_status(&old, p.metadata.generation, &m))
                        .await?;
                }
                // Nothing to clean on a pool that is gone, except the LB rules and prefixes (found by name).
                for (sgc, c) in &configs {
                    if !c.deleting {
                        report.fail(&c.uid, &[Layer::Lb, Layer::Vm]);
                    }
                    if c.deleting {
                        apply::cleanup_without_pool(&self.arm, &self.cfg, c, self.probe_port)
                            .await
                            .map_err(PoolError::from)?;
                        reads.forget(); // it wrote the load balancer
                        let released = self.kube.finish_deletion(sgc).await;
                        self.own_write(sgc, ConfigWrite::Release, released, report, &mut failures)
                            .await;
                    } else {
                        let outcome = Outcome::PoolNotFound(m.clone());
                        self.write_config_status(sgc, &c.uid, &outcome, &keys, report, &mut failures)
                            .await;
                    }
                }
                return Self::unless_failed(failures);
            }
            Err(e @ PoolError::PrefixSize(_)) => {
                report.fail_all(Layer::of_pool_error(&e));
                for (sgc, c) in configs.iter() {
                    if c.deleting {
                        continue;
                    }
                    let outcome = Outcome::PrefixSizeMismatch(e.to_string());
                    self.write_config_status(sgc, &c.uid, &outcome, &keys, report, &mut failures)
                        .await;
                }
                return Err(e.into());
            }
            Err(e) => {
                report.fail_all(Layer::of_pool_error(&e));
                return self.fail_all(&configs, &keys, e, report, failures).await;
            }
        };

        // Upstream's prefixes, adopted before any Azure write: a configuration whose adoption could not be
        // recorded is kept as it is (as a managed one it would get a new prefix; left out, it would lose what it
        // has).
        let mut kept: BTreeSet<String> = BTreeSet::new();
        let adopted = self
            .adopt(
                &mut configs,
                &resolved,
                &adoptions,
                ctx,
                report,
                &mut failures,
                &mut kept,
            )
            .await;
        if let Err(e) = adopted {
            let e = PoolError::from(e);
            report.fail_all(Layer::of_pool_error(&e));
            return self.fail_all(&configs, &keys, e, report, failures).await;
        }

        // BYO prefixes: same subscription, right length (upstream's checks), CIDR for the status. A
        // configuration whose prefix fails them, or cannot be read, is kept as it is: its status says why, and
        // what it has in Azure stays (its egress goes on while the prefix is unreadable for a moment). A failed
        // read also fails the pool pass at its end, so that the work loop retries it with backoff.
        let mut byo_cidrs = BTreeMap::new();
        let mut byo_unread: Option<ArmError> = None;
        for (sgc, c) in configs.iter() {
            if c.deleting {
                continue;
            }
            let Egress::Byo { prefix } = &c.egress else {
                continue;
            };
            let outcome = match self.check_byo(prefix, resolved.pool.prefix_len).await {
                Ok(Ok(cidr)) => {
                    byo_cidrs.insert(prefix.name.to_ascii_lowercase(), cidr);
                    continue;
                }
                Ok(Err(unusable)) => unusable,
                Err(e) => {
                    let outcome = Outcome::AzureFailed {
                        reason: e.reason(),
                        message: format!("failed to get public ip prefix({prefix}): {e}"),
                    };
                    byo_unread.get_or_insert(e);
                    outcome
                }
            };
            report.fail(&c.uid, &[Layer::Vm]);
            self.write_config_status(sgc, &c.uid, &outcome, &keys, report, &mut failures)
                .await;
            kept.insert(c.uid.clone());
        }
        // This pool's configurations, and those of other pool references naming the same scale set: their
        // passes provision them, this one keeps what they have.
        let plan_configs: Vec<Config> = configs
            .iter()
            .map(|(_, c)| Config {
                kept: kept.contains(&c.uid),
                ..c.clone()
            })
            .chain(siblings(pool_ref, &resolved, &self.cfg, ctx.sgcs, &adoptions))
            .collect();

        let outcome = match apply::reconcile(
            &self.arm,
            &self.cfg,
            &resolved,
            &plan_configs,
            &byo_cidrs,
            self.probe_port,
            reads,
        )
        .await
        {
            Ok(o) => o,
            Err(e) => {
                report.fail_all(Layer::of_pool_error(&e));
                return self.fail_all(&configs, &keys, e, report, failures).await;
            }
        };
        tracing::info!(pool = %pool_ref, writes = outcome.writes, "pool reconciled");
        // Only public configurations use the prefix: a pool serving none has nothing to outgrow.
        let uses_prefix = configs
            .iter()
            .any(|(_, c)| !c.deleting && c.egress != Egress::Private);
        let exceeds =
            pool_exceeds_prefix(pool_ref, node_count, resolved.pool.prefix_len).filter(|_| uses_prefix);
        if let Some(m) = &exceeds {
            tracing::warn!(pool = %pool_ref, "{m}");
        }
        // Updates ARM refused for one instance: reported on it (by the name the status uses), the rest applied.
        let refused_updates: Vec<String> = outcome
            .failed_updates
            .iter()
            .map(|(target, e)| {
                let name = outcome
                    .state
                    .instances
                    .iter()
                    .find(|i| i.instance_id.eq_ignore_ascii_case(target))
                    .map_or(target.as_str(), |i| i.computer_name.as_str());
                tracing::warn!(pool = %pool_ref, instance = name, error = %e, "an instance update was refused");
                // The code only: ARM's message may differ on every try, the status should not.
                let code = e.code.clone().unwrap_or_else(|| format!("HTTP {}", e.status.unwrap_or_default()));
                format!("{name}: {code}")
            })
            .collect();
        let pending_ops = outcome
            .state
            .instances
            .iter()
            .map(|i| i.provisioning_state.as_str())
            .chain(
                outcome
                    .state
                    .vm_nics
                    .iter()
                    .map(|n| n.provisioning_state.as_str()),
            )
            .any(|p| !p.eq_ignore_ascii_case("Succeeded"));
        let incomplete = outcome.facts.values().any(|f| !f.is_complete());
        // A refused instance update is retried as a converging pool is re-checked.
        let refused = !outcome.failed_updates.is_empty();
        if outcome.writes > 0 || pending_ops || incomplete || refused {
            self.converging
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pool_ref.key());
        }
        let mut pool_written = Ok(());
        if let Some(p) = pool_obj {
            let wanted: Vec<String> = plan_configs
                .iter()
                .filter(|c| !c.deleting && !c.kept && !outcome.plan.problems.contains_key(&c.uid))
                .map(|c| api::names::managed_resource_name(&c.uid))
                .collect();
            let node_ids: Vec<NodeIdentity> = nodes.iter().map(|n| NodeIdentity::of(n)).collect();
            let new = pool_status(
                &p.status.clone().unwrap_or_default(),
                p.metadata.generation,
                &resolved.pool,
                &outcome.state,
                &wanted,
                &node_ids,
            );
            // The pool's own status: a failure fails the pool, after its configurations' statuses are written.
            pool_written = self.kube.write_pool_status(p, &new).await;
        }
        for (sgc, c) in &configs {
            if kept.contains(&c.uid) {
                continue;
            }
            if c.deleting {
                if desired::left_on_refused(&outcome.state, outcome.failed_updates.keys(), &c.uid) {
                    // ARM refused the update of an instance (or NIC) that still has the configuration's
                    // ipConfiguration (which references its prefix). The finalizer stays; the converging pool is
                    // retried. A refusal elsewhere in the pool does not hold it.
                    tracing::warn!(
                        pool = %pool_ref,
                        configuration = %format!("{}/{}", sgc.namespace().unwrap_or_default(), sgc.name_any()),
                        "deletion waits for a refused instance update that would remove its ipConfiguration"
                    );
                    continue;
                }
                let released = self.kube.finish_deletion(sgc).await;
                self.own_write(sgc, ConfigWrite::Release, released, report, &mut failures)
                    .await;
                continue;
            }
            let o = match outcome.plan.problems.get(&c.uid) {
                Some(p @ ConfigProblem::PrefixSizeMismatch { .. }) => {
                    report.fail(&c.uid, &[Layer::Vm]);
                    Outcome::PrefixSizeMismatch(p.to_string())
                }
                Some(p @ ConfigProblem::NoAvailablePorts(_)) => {
                    report.fail(&c.uid, &[Layer::Lb]);
                    Outcome::Blocked(p.to_string())
                }
                Some(p @ ConfigProblem::AdoptedPrefixMissing { .. }) => {
                    report.fail(&c.uid, &[Layer::Vm]);
                    Outcome::Blocked(p.to_string())
                }
                None => {
                    let mut facts = outcome.facts.get(&c.uid).cloned().unwrap_or_default();
                    if c.egress != Egress::Private {
                        facts.pool_exceeds_prefix = exceeds.clone();
                    }
                    facts.refused_updates = refused_updates.clone();
                    Outcome::Provisioned(facts)
                }
            };
            self.write_config_status(sgc, &c.uid, &o, &keys, report, &mut failures)
                .await;
        }
        pool_written?;
        if let Some(e) = byo_unread {
            return Err(PoolError::Arm(e).into());
        }
        Self::unless_failed(failures)
    }

    /// Adoption of upstream's prefixes (docs/operator.md): the configurations that may adopt one and whose own
    /// prefix does not exist look through one LIST of the node resource group's prefixes; each that finds its
    /// prefix records it (annotation) and becomes [`Egress::Adopted`]. One whose record fails is `kept` as it is
    /// ([`ConfigWrite::azure_part`]).
    #[allow(clippy::too_many_arguments)]
    async fn adopt(
        &self,
        configs: &mut [(Arc<StaticGatewayConfiguration>, Config)],
        resolved: &observe::ResolvedPool,
        adoptions: &Adoptions,
        ctx: &PassContext<'_>,
        report: &mut PassReport,
        failures: &mut Vec<ConfigFailure>,
        kept: &mut BTreeSet<String>,
    ) -> Result<(), ArmError> {
        let rg = &self.cfg.resource_group;
        let status_cidr =
            |sgc: &StaticGatewayConfiguration| sgc.status.as_ref().and_then(|s| s.egress_ip_prefix.clone());
        let mut candidates = Vec::new();
        for (sgc, c) in configs.iter() {
            let cidr = status_cidr(sgc);
            if !desired::may_adopt(c, cidr.as_deref()) {
                continue;
            }
            // Its own prefix exists (the usual case): nothing to adopt. Read through the pass's reads, so the
            // plan's read of it costs no second call.
            if ctx
                .reads
                .prefix(&self.arm, rg, &api::names::managed_resource_name(&c.uid))
                .await?
                .is_some()
            {
                continue;
            }
            candidates.push(desired::AdoptionCandidate {
                config: c.clone(),
                status_cidr: cidr,
            });
        }
        if candidates.is_empty() {
            return Ok(());
        }
        let listed: Vec<desired::ListedPrefix> = ctx
            .reads
            .prefixes(&self.arm, rg)
            .await?
            .iter()
            .map(|p| {
                let state = crate::azure::json::prefix_from_json(p);
                desired::ListedPrefix {
                    name: p
                        .get("name")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    cidr: state.cidr,
                    prefix_len: state.prefix_len,
                }
            })
            .collect();
        let verdicts = desired::plan_adoptions(
            &resolved.pool,
            &candidates,
            &listed,
            &adoptions.uids,
            &adoptions.taken,
        );
        let env = observe::env_of(&self.cfg, self.probe_port);
        for (sgc, c) in configs.iter_mut() {
            match verdicts.get(&c.uid) {
                None => {}
                Some(Err(why)) => tracing::info!(
                    configuration = %format!("{}/{}", sgc.namespace().unwrap_or_default(), sgc.name_any()),
                    reason = %why,
                    "no upstream public ip prefix adopted: the configuration gets its own prefix"
                ),
                Some(Ok(name)) => {
                    let id = env.prefix_id(name);
                    let written = self.kube.set_adopted_prefix(sgc, &id).await;
                    if self
                        .own_write(sgc, ConfigWrite::Adoption, written, report, failures)
                        .await
                        .is_some()
                    {
                        tracing::info!(
                            configuration = %format!("{}/{}", sgc.namespace().unwrap_or_default(), sgc.name_any()),
                            prefix = %id,
                            "adopted upstream's public ip prefix"
                        );
                        c.adopt(name);
                    } else if ConfigWrite::Adoption.azure_part() == AzurePart::Kept {
                        kept.insert(c.uid.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// `Ok` unless some configuration's own write failed.
    fn unless_failed(failures: Vec<ConfigFailure>) -> Result<(), Error> {
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Configs(ConfigFailures(failures)))
        }
    }

    /// Writes a configuration's status, with its WireGuard key (public half and Secret) when `keys` has one
    /// for `uid`; a failure is the configuration's own (see [`Self::own_write`]).
    async fn write_config_status(
        &self,
        sgc: &StaticGatewayConfiguration,
        uid: &str,
        outcome: &Outcome,
        keys: &ConfigKeys,
        report: &mut PassReport,
        failures: &mut Vec<ConfigFailure>,
    ) {
        let key = keys.get(uid).map(|(p, r)| (p.as_str(), r.clone()));
        let written = self.kube.write_status(sgc, outcome, key).await;
        self.own_write(sgc, ConfigWrite::Status, written, report, failures)
            .await;
    }

    /// The result of one configuration's own write: a failure is that configuration's alone. It is logged
    /// with the configuration's name and the reason, counted in its `reconcile_static_gateway_configuration`
    /// fail series, reported as a Warning Event on it (when the Event can be written), and fails the pool
    /// pass so that the work loop retries it with backoff; the pass goes on with the other configurations.
    async fn own_write<T>(
        &self,
        sgc: &StaticGatewayConfiguration,
        write: ConfigWrite,
        result: Result<T, kube::Error>,
        report: &mut PassReport,
        failures: &mut Vec<ConfigFailure>,
    ) -> Option<T> {
        let e = match result {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let failure = ConfigFailure::new(sgc, write, &e);
        tracing::warn!(
            configuration = %failure.resource,
            write = write.doing(),
            reason = %failure.reason,
            "a configuration's own write failed; the rest of its pool goes on"
        );
        report.fail(&sgc.uid().unwrap_or_default(), &[Layer::Sgc]);
        if let Some((reason, note)) = failure.event() {
            self.kube.warn(sgc, reason, note).await;
        }
        failures.push(failure);
        None
    }

    async fn fail_all(
        &self,
        configs: &[(Arc<StaticGatewayConfiguration>, Config)],
        keys: &ConfigKeys,
        e: PoolError,
        report: &mut PassReport,
        mut failures: Vec<ConfigFailure>,
    ) -> Result<(), Error> {
        let (reason, message) = match &e {
            PoolError::Arm(a) => (a.reason(), a.to_string()),
            other => (REASON_AZURE_ERROR, other.to_string()),
        };
        for (sgc, c) in configs.iter() {
            if c.deleting {
                continue;
            }
            let outcome = Outcome::AzureFailed {
                reason,
                message: message.clone(),
            };
            self.write_config_status(sgc, &c.uid, &outcome, keys, report, &mut failures)
                .await;
        }
        // The Azure failure is the pool's; the configurations' own ones were reported above.
        Err(e.into())
    }

    /// A BYO prefix's checks (upstream's): same subscription as the cluster, the pool's length, an address
    /// range; returns its CIDR, or why it cannot be used (`Ok(Err)`), or the error of reading it (`Err`). The ID
    /// was parsed (and its syntax checked by rule 6) before.
    async fn check_byo(
        &self,
        id: &api::arm::PublicIpPrefixId,
        required: i32,
    ) -> Result<Result<String, Outcome>, ArmError> {
        let prefix_id = id.to_string();
        if !id.subscription.eq_ignore_ascii_case(&self.cfg.subscription_id) {
            return Ok(Err(Outcome::Invalid(format!(
                "public ip prefix subscription({}) is not in the same subscription({})",
                id.subscription, self.cfg.subscription_id
            ))));
        }
        let Some(p) = self.arm.get_prefix(&id.resource_group, &id.name).await? else {
            return Ok(Err(Outcome::Blocked(format!(
                "public ip prefix({prefix_id}) does not exist"
            ))));
        };
        let p = crate::azure::json::prefix_from_json(&p);
        Ok(match p.prefix_len {
            Some(l) if l == required => p.cidr.ok_or_else(|| {
                Outcome::Blocked(format!("public ip prefix({prefix_id}) has no address range yet"))
            }),
            Some(l) => Err(Outcome::PrefixSizeMismatch(format!(
                "provided public ip prefix has invalid length({l}), required({required})"
            ))),
            None => Err(Outcome::Blocked(format!(
                "public ip prefix({prefix_id}) has empty properties"
            ))),
        })
    }

    /// One pass over every pool (or the pools in `only`), from objects listed from the API server now. The work
    /// loop runs [`Operator::pass`] from its watch caches instead; this is for tools and tests that drive passes
    /// themselves. Returns how many pools were reconciled, or the first error.
    pub async fn reconcile_pools(&self, only: Option<&BTreeSet<PoolKey>>) -> Result<usize, Error> {
        let inputs = Inputs {
            sgcs: self.kube.list_all().await?,
            pools: self.kube.list_all().await?,
            nodes: self.kube.list_all().await?,
            key_secrets: None,
        };
        let out = self.pass(&inputs, only).await;
        match out.error {
            Some(e) => Err(e),
            None => Ok(out.reconciled.len()),
        }
    }

    /// One pass over every pool that has configurations or a GatewayPool (or only the pools in `only`, by
    /// [`PoolRef::key`]), working from `inputs`: the periodic drift repair, and what the watch loop runs for the
    /// pools an event touched. Pools that are still converging are added to [`Operator::take_converging`].
    pub async fn pass(&self, inputs: &Inputs, only: Option<&BTreeSet<PoolKey>>) -> PassOutcome {
        self.pass_while(inputs, only, &|| true).await
    }

    /// [`Operator::pass`] that asks `proceed` before each pool (and before releasing GatewayPools) and stops
    /// when it says no: the work loop's pass starts no pool once leadership is lost or the operator is
    /// stopping. What a stopped pass skipped is not in [`PassOutcome::reconciled`].
    pub async fn pass_while(
        &self,
        inputs: &Inputs,
        only: Option<&BTreeSet<PoolKey>>,
        proceed: &(dyn Fn() -> bool + Sync),
    ) -> PassOutcome {
        self.passes
            .started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let busy = self.heartbeat.begin();
        let proceed = || {
            busy.progress();
            proceed()
        };
        let mut out = PassOutcome::default();
        self.pass_inner(inputs, only, &proceed, &mut out).await;
        drop(busy);
        self.passes
            .finished
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        out
    }

    async fn pass_inner(
        &self,
        inputs: &Inputs,
        only: Option<&BTreeSet<PoolKey>>,
        proceed: &(dyn Fn() -> bool + Sync),
        out: &mut PassOutcome,
    ) {
        let Inputs {
            sgcs,
            pools,
            nodes,
            key_secrets,
        } = inputs;
        let mut by_pool: BTreeMap<PoolKey, (PoolRef, Vec<Arc<StaticGatewayConfiguration>>)> = BTreeMap::new();
        for sgc in sgcs {
            let Some(r) = sgc.spec.pool_ref() else {
                // Rule 1 broken: report it (no pool to group by).
                let result = if sgc.metadata.deletion_timestamp.is_none() {
                    let verdict = validate_sgc(&sgc.spec, None, &PoolFacts::default());
                    self.kube
                        .write_status(sgc, &Outcome::Invalid(verdict.message()), None)
                        .await
                } else if sgc.finalizers().iter().any(|f| f == SGC_FINALIZER) {
                    self.kube.finish_deletion(sgc).await
                } else {
                    Ok(())
                };
                if let Err(e) = result {
                    out.fail_outside_pools(e.into());
                }
                continue;
            };
            let key = r.key();
            by_pool
                .entry(key)
                .or_insert_with(|| (r, Vec::new()))
                .1
                .push(sgc.clone());
        }
        // GatewayPools carry a finalizer while configurations use them, so a pool object cannot vanish under
        // its configurations (it is what admission checks rule 4 against).
        let mut held: Vec<&GatewayPool> = Vec::new();
        for p in pools {
            let Some(r) = p.spec.pool_ref() else { continue };
            let used = by_pool.contains_key(&r.key());
            let has = p.finalizers().iter().any(|f| f == api::names::POOL_FINALIZER);
            let result = match (p.metadata.deletion_timestamp.is_some(), has, used) {
                (false, false, _) => {
                    let finalizers = p
                        .finalizers()
                        .iter()
                        .cloned()
                        .chain([api::names::POOL_FINALIZER.to_string()])
                        .collect();
                    self.kube.set_pool_finalizers(p, finalizers).await
                }
                // Released after the pool passes below if they deleted its last configurations.
                (true, true, true) => {
                    held.push(p);
                    Ok(())
                }
                (true, true, false) => self.kube.release_pool(p).await,
                _ => Ok(()),
            };
            if let Err(e) = result {
                out.fail_outside_pools(e.into());
            }
        }
        // Reads the pools of this pass share (listings, the load balancer), forgotten at any write.
        let reads = PassReads::default();
        // Declared pools no configuration uses yet still get a pass (their status).
        for p in pools.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            if let Some(r) = p.spec.pool_ref() {
                by_pool.entry(r.key()).or_insert_with(|| (r, Vec::new()));
            }
        }
        for (key, (r, mut list)) in by_pool {
            if only.is_some_and(|o| !o.contains(&key)) {
                continue;
            }
            if !proceed() {
                return;
            }
            list.sort_by_key(|s| s.metadata.creation_timestamp.clone().map(|t| t.0));
            out.reconciled.insert(key.clone());
            let ctx = PassContext {
                reads: &reads,
                key_secrets: key_secrets.as_ref(),
                sgcs,
            };
            if let Err(e) = self.reconcile_pool(&r, &list, pools, nodes, &ctx).await {
                out.failed.insert(key);
                out.error.get_or_insert(e);
            }
        }
        if !proceed() {
            return;
        }
        if let Err(e) = self.release_pools_left_unused(&held).await {
            out.fail_outside_pools(e.into());
        }
    }

    /// The pools found converging since the last call (writes just made, instance operations pending, addresses
    /// not yet allocated), by [`PoolRef::key`]: the work loop looks at exactly these again soon.
    pub fn take_converging(&self) -> BTreeSet<PoolKey> {
        std::mem::take(&mut *self.converging.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Deleted pools that still had configurations when the pass began: those whose last configuration went
    /// in this pass are released now (read again, as the pass may have written their status).
    async fn release_pools_left_unused(&self, held: &[&GatewayPool]) -> Result<(), kube::Error> {
        if held.is_empty() {
            return Ok(());
        }
        let used: BTreeSet<PoolKey> = self
            .kube
            .list_all::<StaticGatewayConfiguration>()
            .await?
            .iter()
            .filter_map(|s| s.spec.pool_ref())
            .map(|r| r.key())
            .collect();
        let api = kube::Api::<GatewayPool>::all(self.kube.client.clone());
        for p in held {
            if p.spec.pool_ref().is_some_and(|r| used.contains(&r.key())) {
                continue;
            }
            if let Some(p) = api.get_opt(&p.name_any()).await? {
                self.kube.release_pool(&p).await?;
            }
        }
        Ok(())
    }
}

/// A configuration as a plan sees it (neither deleting nor kept), from its spec and its adoption annotation as
/// checked (`adoption`; a refused one is reported by the caller and adopts nothing). A public configuration
/// without a BYO prefix uses the prefix it adopted; any other still owns it (deleted once unused).
fn config_of(sgc: &StaticGatewayConfiguration, adoption: Option<&Result<String, String>>) -> Config {
    let egress = match (sgc.spec.provision_public_ips, sgc.spec.byo_prefix()) {
        (false, _) => Egress::Private,
        (true, Some(Ok(prefix))) => Egress::Byo { prefix },
        // An ID that does not parse is refused by rule 6; a configuration being deleted with one never had a
        // BYO prefix in Azure, so what it may own is what a managed one would.
        (true, Some(Err(_)) | None) => Egress::Managed,
    };
    let mut c = Config {
        uid: sgc.uid().unwrap_or_default(),
        egress,
        deleting: false,
        kept: false,
        adopted: None,
        status_port: sgc
            .status
            .as_ref()
            .and_then(|st| st.gateway_server_profile.as_ref())
            .and_then(|p| u16::try_from(p.port).ok())
            .filter(|p| *p != 0),
    };
    if let Some(Ok(name)) = adoption {
        if c.egress == Egress::Managed {
            c.adopt(name);
        } else {
            c.adopted = Some(name.clone());
        }
    }
    c
}

/// Whether `other`, a pool reference of another group, names the scale set `resolved` that this pool's
/// reference resolved to: a scale-set reference by its resource group and name, a node-pool reference when
/// the scale set is in the node resource group and carries that pool's `aks-managed-poolName` tag (what
/// resolving the reference looks for). Read from the scale set already in hand: no ARM call.
fn same_scale_set(other: &PoolRef, resolved: &observe::ResolvedPool, cfg: &CloudConfig) -> bool {
    if resolved.pool.kind != desired::PoolKind::Vmss {
        return false;
    }
    match other {
        PoolRef::Vmss { resource_group, name } => {
            resource_group.eq_ignore_ascii_case(&resolved.resource_group)
                && name.eq_ignore_ascii_case(&resolved.name)
        }
        PoolRef::Nodepool(np) => {
            resolved.resource_group.eq_ignore_ascii_case(&cfg.resource_group)
                && resolved
                    .aks_pool_name
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case(np))
        }
    }
}

/// The configurations of other pool references (`nodepool/<name>` and `vmss/<rg>/<name>` are grouped apart)
/// that name the same scale set as `pool_ref`, as kept configurations of this pool's plan: their own pool's
/// pass provisions or deletes them, this one leaves what they have as it is (two passes would otherwise
/// remove each other's ipConfigurations and rules). With or without their finalizer: the pass's objects may
/// predate the one their own pool's pass added a moment ago, and keeping adds nothing, so one without it still
/// owns nothing through this plan.
fn siblings(
    pool_ref: &PoolRef,
    resolved: &observe::ResolvedPool,
    cfg: &CloudConfig,
    sgcs: &[Arc<StaticGatewayConfiguration>],
    adoptions: &Adoptions,
) -> Vec<Config> {
    let key = pool_ref.key();
    sgcs.iter()
        .filter(|s| {
            s.spec
                .pool_ref()
                .is_some_and(|r| r.key() != key && same_scale_set(&r, resolved, cfg))
        })
        .map(|s| Config {
            kept: true,
            ..config_of(s, adoptions.of_config(s).as_ref())
        })
        .collect()
}

/// What the adoption of upstream's prefixes needs to know about every configuration of the pass.
struct Adoptions {
    /// Every configuration's uid, lower-cased.
    uids: BTreeSet<String>,
    /// The prefixes (names, lower-cased) that configurations adopted, or claim by annotation.
    taken: BTreeSet<String>,
    /// Per configuration uid: its annotation checked, `Err` with the reason it is refused. Of two
    /// configurations naming the same prefix the older keeps it.
    checked: BTreeMap<String, Result<String, String>>,
}

impl Adoptions {
    fn of(sgcs: &[Arc<StaticGatewayConfiguration>], cfg: &CloudConfig) -> Self {
        let uids: BTreeSet<String> = sgcs
            .iter()
            .filter_map(|s| s.uid())
            .map(|u| u.to_ascii_lowercase())
            .collect();
        let mut by_age: Vec<&Arc<StaticGatewayConfiguration>> = sgcs.iter().collect();
        by_age.sort_by_key(|s| (s.metadata.creation_timestamp.clone().map(|t| t.0), s.uid()));
        let claims: Vec<desired::AdoptionClaim> = by_age
            .iter()
            .filter_map(|s| {
                let value = s.annotations().get(api::names::ADOPTED_PREFIX_ANNOTATION)?;
                Some(desired::AdoptionClaim {
                    uid: s.uid().unwrap_or_default(),
                    who: format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()),
                    value: value.clone(),
                })
            })
            .collect();
        let (checked, taken) =
            desired::check_adoption_claims(&claims, &cfg.subscription_id, &cfg.resource_group, &uids);
        Adoptions { uids, taken, checked }
    }

    /// The configuration's annotation checked (`None`: it has none).
    fn of_config(&self, sgc: &StaticGatewayConfiguration) -> Option<Result<String, String>> {
        self.checked.get(&sgc.uid().unwrap_or_default()).cloned()
    }
}

/// How often every pool is re-read to repair drift (upstream: 5 minutes).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    fn sgc() -> StaticGatewayConfiguration {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "old", "namespace": "app", "uid": "u-1"},
            "spec": {"gatewayNodepoolName": "gateway"}
        }))
        .expect("sgc")
    }

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            serde_json::from_value(serde_json::json!({
                "status": "Failure", "message": message, "reason": "Invalid", "code": code
            }))
            .expect("status"),
        ))
    }

    #[test]
    fn without_its_finalizer_a_configuration_stays_out_and_without_its_adoption_it_is_kept() {
        assert_eq!(
            ConfigWrite::Finalizer.azure_part(),
            AzurePart::Out,
            "no finalizer: nothing in Azure"
        );
        assert_eq!(
            ConfigWrite::Adoption.azure_part(),
            AzurePart::Kept,
            "an adoption not recorded: no new prefix, and nothing it has is lost"
        );
        // Leaving these out would delete what the configuration already owns in Azure.
        for w in [ConfigWrite::KeySecret, ConfigWrite::Status, ConfigWrite::Release] {
            assert_eq!(w.azure_part(), AzurePart::Planned, "{w:?}");
        }
    }

    #[test]
    fn a_refused_write_names_the_configuration_and_the_reason_and_warns_on_it() {
        let refused = "StaticGatewayConfiguration.egressgateway.kubernetes.azure.com \"old\" is invalid: \
            spec.excludeCidrs[0]: Invalid value: \"string\": rule 7";
        let f = ConfigFailure::new(&sgc(), ConfigWrite::Status, &api_error(422, refused));
        assert_eq!(f.resource, "app/old");
        assert_eq!(f.code, Some(422));
        let (reason, note) = f.event().expect("a Warning Event");
        assert_eq!(reason, REASON_WRITE_FAILED);
        assert!(note.starts_with("writing the status failed"), "{note}");
        assert!(note.contains(refused), "{note}");
        let all = Error::Configs(ConfigFailures(vec![f])).to_string();
        assert!(
            all.contains("app/old: writing the status: ") && all.contains("rule 7"),
            "{all}"
        );
    }

    #[test]
    fn a_stale_read_or_a_vanished_object_is_retried_without_an_event() {
        for code in [409, 404] {
            let f = ConfigFailure::new(&sgc(), ConfigWrite::Finalizer, &api_error(code, "conflict"));
            assert_eq!(f.event(), None, "{code}");
        }
        // Not an API answer (connection lost): the Event says so.
        let f = ConfigFailure::new(
            &sgc(),
            ConfigWrite::KeySecret,
            &kube::Error::LinesCodecMaxLineLengthExceeded,
        );
        assert!(f.event().is_some());
    }
}
