//! The Kubernetes half: configurations' rules re-check, WireGuard key Secrets, finalizers, status and Events.
//! Work is grouped per pool: every configuration on a pool is reconciled together so that Azure sees one set
//! of writes (see `desired.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::names::{
    REASON_ACCEPTED, REASON_AS_EXPECTED, REASON_AZURE_ERROR, REASON_BLOCKED, REASON_INSTANCES_NOT_READY,
    REASON_INSTANCES_READY, REASON_INVALID_SPEC, REASON_POOL_NOT_FOUND, REASON_PREFIX_SIZE_MISMATCH,
    REASON_PROVISIONED, REASON_PROVISIONING, REASON_SOME_INSTANCES_NOT_READY, SECRET_OWNER_NAME_LABEL,
    SECRET_OWNER_NAMESPACE_LABEL, SECRET_PRIVATE_KEY, SECRET_PUBLIC_KEY, SGC_FINALIZER, key_secret_name,
};
use api::pool_ref::is_gateway_node;
use api::rules::{PoolFacts, validate_sgc};
use api::{
    GatewayPool, GatewayServerProfile, PoolRef, StaticGatewayConfiguration, StaticGatewayConfigurationStatus,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::azure::{Arm, ArmError};
use crate::config::CloudConfig;
use crate::desired::{Config, ConfigFacts, ConfigProblem, Egress};
use crate::metrics::{FailLabels, LatencyLabels, Metrics};
use crate::reconcile::pool::{self, PassReads, PoolError};

/// Condition types (defined in `api`, where the provider and kubectl columns read them too).
pub use api::names::{
    CONDITION_ACCEPTED as ACCEPTED, CONDITION_DEGRADED as DEGRADED, CONDITION_READY as READY,
};
/// Field manager of the operator's writes.
pub const MANAGER: &str = "kube-egress-gateway-operator";

// ---------------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------------

/// A WireGuard key pair as base64 text (wg(8) format).
pub struct KeyPair {
    /// Private key (never logged).
    pub private: String,
    /// Public key.
    pub public: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("private", &"<redacted>")
            .field("public", &self.public)
            .finish()
    }
}

/// Generates a fresh x25519 key pair.
pub fn generate_key_pair() -> KeyPair {
    let secret = x25519_dalek::StaticSecret::random();
    let public = x25519_dalek::PublicKey::from(&secret);
    KeyPair {
        private: B64.encode(secret.to_bytes()),
        public: B64.encode(public.as_bytes()),
    }
}

/// The public key of a stored private key; None when the text is not a 32-byte base64 key.
pub fn public_key_of(private_b64: &str) -> Option<String> {
    let bytes: [u8; 32] = B64.decode(private_b64.trim()).ok()?.try_into().ok()?;
    let secret = x25519_dalek::StaticSecret::from(bytes);
    Some(B64.encode(x25519_dalek::PublicKey::from(&secret).as_bytes()))
}

/// Sets a condition; keeps `lastTransitionTime` when the status does not change. Returns whether anything
/// changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> bool {
    let status = if status { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c)
            if c.status == status
                && c.reason == reason
                && c.message == message
                && c.observed_generation == generation =>
        {
            false
        }
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::now());
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
            true
        }
        None => {
            conditions.push(Condition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation: generation,
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
            });
            true
        }
    }
}

/// What happened to one configuration in a pool reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The spec breaks a rule.
    Invalid(String),
    /// No scale set or VM pool matches.
    PoolNotFound(String),
    /// A prefix of the wrong length (BYO or existing managed).
    PrefixSizeMismatch(String),
    /// Azure failed (message carries the ARM code).
    AzureFailed {
        /// `AzureThrottled` or `AzureError`.
        reason: &'static str,
        /// Message.
        message: String,
    },
    /// Another problem that blocks this configuration only.
    Blocked(String),
    /// Azure is provisioned as far as known.
    Provisioned(ConfigFacts),
}

/// Computes the new status from the old one; returns (status, events to emit as (type, reason, note)).
pub fn next_status(
    old: &StaticGatewayConfigurationStatus,
    generation: Option<i64>,
    outcome: &Outcome,
    key: Option<(&str, ObjectReference)>,
) -> (StaticGatewayConfigurationStatus, Vec<(EventType, String, String)>) {
    let mut st = old.clone();
    st.observed_generation = generation;
    let mut events = Vec::new();
    let mut cond = |st: &mut StaticGatewayConfigurationStatus, t: &str, ok: bool, reason: &str, msg: &str| {
        let before = st
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone()));
        set_condition(&mut st.conditions, t, ok, reason, msg, generation);
        let after = Some((if ok { "True" } else { "False" }.to_string(), reason.to_string()));
        if before != after {
            let ty = if ok || reason == REASON_PROVISIONING {
                EventType::Normal
            } else {
                EventType::Warning
            };
            events.push((ty, reason.to_string(), format!("{t}={}: {msg}", ok)));
        }
    };
    if let Some((public, secret_ref)) = &key {
        let p = st
            .gateway_server_profile
            .get_or_insert_with(GatewayServerProfile::default);
        p.public_key = public.to_string();
        p.private_key_secret_ref = Some(secret_ref.clone());
    }
    // Not accepted: Accepted=False says why, Ready=False mirrors its reason.
    let rejected = match outcome {
        Outcome::Invalid(m) => Some((REASON_INVALID_SPEC, m, "the spec breaks a rule; see Accepted")),
        Outcome::PoolNotFound(m) => Some((
            REASON_POOL_NOT_FOUND,
            m,
            "the gateway pool does not exist in Azure",
        )),
        Outcome::PrefixSizeMismatch(m) => Some((
            REASON_PREFIX_SIZE_MISMATCH,
            m,
            "the public IP prefix does not fit the pool",
        )),
        _ => None,
    };
    if let Some((reason, accepted_msg, ready_msg)) = rejected {
        cond(&mut st, ACCEPTED, false, reason, accepted_msg);
        cond(&mut st, READY, false, reason, ready_msg);
    }
    const VALID: &str = "the spec is valid and the pool exists";
    match outcome {
        Outcome::Invalid(_) | Outcome::PoolNotFound(_) | Outcome::PrefixSizeMismatch(_) => {}
        Outcome::AzureFailed { reason, message } => {
            cond(&mut st, READY, false, reason, message);
        }
        Outcome::Blocked(m) => {
            cond(&mut st, ACCEPTED, true, REASON_ACCEPTED, VALID);
            cond(&mut st, READY, false, REASON_BLOCKED, m);
        }
        Outcome::Provisioned(f) => {
            cond(&mut st, ACCEPTED, true, REASON_ACCEPTED, VALID);
            let p = st
                .gateway_server_profile
                .get_or_insert_with(GatewayServerProfile::default);
            p.ip = f.frontend_ip.clone().unwrap_or_default();
            p.port = f.port.map(i32::from).unwrap_or_default();
            st.egress_ip_prefix = f.egress_ip_prefix.clone();
            st.gateway_vm_profiles = f.vm_profiles.clone();
            if f.is_complete() && st.is_ready_for_pods() {
                let prefix = f.egress_ip_prefix.clone().unwrap_or_default();
                cond(
                    &mut st,
                    READY,
                    true,
                    REASON_PROVISIONED,
                    &format!("egress prefix {prefix}"),
                );
            } else {
                cond(
                    &mut st,
                    READY,
                    false,
                    REASON_PROVISIONING,
                    "waiting for Azure to allocate addresses",
                );
            }
        }
    }
    (st, events)
}

/// A Node as pool status needs it: its name and `spec.providerID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// `metadata.name`.
    pub name: String,
    /// `spec.providerID`, e.g. `azure:///subscriptions/…/virtualMachines/<vm>`.
    pub provider_id: Option<String>,
}

impl NodeIdentity {
    /// Of a Node object.
    pub fn of(n: &Node) -> Self {
        NodeIdentity {
            name: n.name_any(),
            provider_id: n.spec.as_ref().and_then(|s| s.provider_id.clone()),
        }
    }
}

/// A GatewayPool's status from the pool's Azure state: its instances, the shared frontend, Ready.
pub fn pool_status(
    old: &api::GatewayPoolStatus,
    generation: Option<i64>,
    pool: &crate::desired::Pool,
    state: &crate::desired::AzureState,
    wanted_ip_configs: &[String],
    nodes: &[NodeIdentity],
) -> api::GatewayPoolStatus {
    use api::pool::{LoadBalancerFrontend, PoolInstance, PoolType};
    let ready = |prov: &str, a: &crate::desired::NicAddresses| {
        prov.eq_ignore_ascii_case("Succeeded")
            && a.primary_ip.is_some()
            && wanted_ip_configs
                .iter()
                .all(|n| a.by_ip_config.contains_key(&n.to_ascii_lowercase()))
    };
    let node = |name: &str| {
        nodes
            .iter()
            .find(|n| n.name.eq_ignore_ascii_case(name))
            .map(|n| n.name.clone())
    };
    // A VM-based pool's NIC names no node: its VM does. The Node whose providerID is that VM is the one
    // (what the cloud provider sets: `azure://<VM resource ID>`); AKS names that Node after the VM.
    let vm_node = |vm_id: Option<&str>| {
        let vm_id = vm_id?;
        nodes
            .iter()
            .find(|n| {
                n.provider_id.as_deref().is_some_and(|p| {
                    p.strip_prefix("azure://")
                        .is_some_and(|id| id.eq_ignore_ascii_case(vm_id))
                })
            })
            .map(|n| n.name.clone())
            .or_else(|| node(crate::desired::last_segment(vm_id)))
    };
    let instances: Vec<PoolInstance> = match pool.kind {
        crate::desired::PoolKind::Vmss => state
            .instances
            .iter()
            .map(|i| PoolInstance {
                name: i.computer_name.clone(),
                node_name: node(&i.computer_name),
                primary_ip: i.addresses.primary_ip.clone().unwrap_or_default(),
                provisioning_state: i.provisioning_state.clone(),
                ready: ready(&i.provisioning_state, &i.addresses),
            })
            .collect(),
        crate::desired::PoolKind::Vm => state
            .vm_nics
            .iter()
            .map(|n| PoolInstance {
                name: n.name.clone(),
                node_name: vm_node(n.vm_id.as_deref()),
                primary_ip: n.addresses.primary_ip.clone().unwrap_or_default(),
                provisioning_state: n.provisioning_state.clone(),
                ready: ready(&n.provisioning_state, &n.addresses),
            })
            .collect(),
    };
    let ready_instances = i32::try_from(instances.iter().filter(|i| i.ready).count()).unwrap_or(i32::MAX);
    let frontend = state
        .lb
        .as_ref()
        .and_then(|lb| {
            lb.frontends
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(&pool.uid))
        })
        .map(|f| LoadBalancerFrontend {
            name: f.name.clone(),
            ip: f.private_ip.clone().unwrap_or_default(),
        });
    let mut st = old.clone();
    st.pool_type = Some(match pool.kind {
        crate::desired::PoolKind::Vmss => PoolType::VirtualMachineScaleSet,
        crate::desired::PoolKind::Vm => PoolType::VirtualMachines,
    });
    st.pool_uid = Some(pool.uid.clone());
    st.ready_instances = ready_instances;
    let total = instances.len();
    st.instances = instances;
    st.load_balancer_frontend = frontend;
    st.observed_generation = generation;
    let all_ready = total > 0 && usize::try_from(ready_instances).unwrap_or(0) == total;
    let msg = format!("{ready_instances} of {total} instances ready");
    set_condition(
        &mut st.conditions,
        READY,
        all_ready,
        if all_ready {
            REASON_INSTANCES_READY
        } else {
            REASON_INSTANCES_NOT_READY
        },
        &msg,
        generation,
    );
    set_condition(
        &mut st.conditions,
        DEGRADED,
        !all_ready && ready_instances > 0,
        if !all_ready && ready_instances > 0 {
            REASON_SOME_INSTANCES_NOT_READY
        } else {
            REASON_AS_EXPECTED
        },
        &msg,
        generation,
    );
    st
}

/// A GatewayPool's status when its node pool is not in Azure: Ready=False with the reason, no instances or
/// frontend.
pub fn pool_not_found_status(
    old: &api::GatewayPoolStatus,
    generation: Option<i64>,
    message: &str,
) -> api::GatewayPoolStatus {
    let mut st = old.clone();
    st.observed_generation = generation;
    st.instances.clear();
    st.ready_instances = 0;
    st.load_balancer_frontend = None;
    set_condition(
        &mut st.conditions,
        READY,
        false,
        REASON_POOL_NOT_FOUND,
        message,
        generation,
    );
    st
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: `new`, plus `null` for every field `old` has and
/// `new` lacks, recursively. Status types omit empty fields when serialised, so a plain merge patch of `new`
/// would leave a cleared field's old value on the object (and the status would differ, and be written, on every
/// pass).
pub fn merge_patch(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = serde_json::Map::new();
            for (k, v) in n {
                patch.insert(k.clone(), merge_patch(o.get(k).unwrap_or(&Value::Null), v));
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

/// `{"status": …}` merge patch from the status read to the status wanted.
fn status_patch<T: serde::Serialize>(old: &T, new: &T) -> serde_json::Value {
    let (old, new) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    json!({ "status": merge_patch(&old, &new) })
}

/// Normalised key of a pool reference (ARM compares names case-insensitively).
pub fn pool_key(r: &PoolRef) -> String {
    match r {
        PoolRef::Nodepool(n) => format!("nodepool/{}", n.to_ascii_lowercase()),
        PoolRef::Vmss { resource_group, name } => {
            format!(
                "vmss/{}/{}",
                resource_group.to_ascii_lowercase(),
                name.to_ascii_lowercase()
            )
        }
    }
}

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

// ---------------------------------------------------------------------------------------------
// The reconciler
// ---------------------------------------------------------------------------------------------

/// Shared state of the reconcilers.
pub struct Operator {
    /// Kubernetes client.
    pub client: kube::Client,
    /// Azure.
    pub arm: Arm,
    /// Cloud config.
    pub cfg: CloudConfig,
    /// Namespace of the key Secrets (`--secret-namespace`).
    pub secret_namespace: String,
    /// The operator's own namespace (metrics label).
    pub namespace: String,
    /// `--gateway-lb-probe-port`.
    pub probe_port: i32,
    /// Metrics.
    pub metrics: Metrics,
    /// Event recorder.
    pub recorder: Recorder,
    /// The pools (by [`pool_key`]) still converging (writes just made, addresses or operations pending): the
    /// work loop looks at them again soon instead of waiting for the periodic resync. See
    /// [`Operator::take_converging`].
    converging: std::sync::Mutex<BTreeSet<String>>,
    /// Passes (`reconcile_pools`) started and finished, for tests and benchmarks that wait for the work loop.
    pub passes: PassCounter,
}

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
    /// Pools reconciled, by [`pool_key`] (failed or not).
    pub reconciled: BTreeSet<String>,
    /// Pools whose reconcile failed.
    pub failed: BTreeSet<String>,
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
            .field("secret_namespace", &self.secret_namespace)
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
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("HOSTNAME").ok(),
            },
        );
        Operator {
            client,
            arm,
            cfg,
            secret_namespace,
            namespace,
            probe_port,
            metrics,
            recorder,
            converging: std::sync::Mutex::default(),
            passes: PassCounter::default(),
        }
    }

    /// Ensures the configuration's key Secret; returns its public key. A Secret without a usable private key
    /// gets a new key pair (as upstream: deleting the Secret rotates the key). With `cache`, a Secret the cache
    /// has is not read again; one it does not have is read from the API server (it may just not have arrived
    /// yet) before anything is created.
    pub async fn ensure_key_secret(
        &self,
        sgc: &StaticGatewayConfiguration,
        cache: Option<&kube::runtime::reflector::Store<Secret>>,
    ) -> Result<(String, ObjectReference), kube::Error> {
        let uid = sgc.uid().unwrap_or_default();
        let name = key_secret_name(&uid);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.secret_namespace);
        let labels = BTreeMap::from([
            (
                SECRET_OWNER_NAMESPACE_LABEL.to_string(),
                sgc.namespace().unwrap_or_default(),
            ),
            (SECRET_OWNER_NAME_LABEL.to_string(), sgc.name_any()),
        ]);
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            name: Some(name.clone()),
            namespace: Some(self.secret_namespace.clone()),
            ..ObjectReference::default()
        };
        let cached = cache.and_then(|c| {
            c.get(&kube::runtime::reflector::ObjectRef::new(&name).within(&self.secret_namespace))
        });
        let existing = match cached {
            Some(s) => Some(Secret::clone(&s)),
            None => api.get_opt(&name).await?,
        };
        let stored = existing.as_ref().and_then(|s| {
            let data = s.data.as_ref()?;
            let private = String::from_utf8(data.get(SECRET_PRIVATE_KEY)?.0.clone()).ok()?;
            let public = public_key_of(&private)?;
            Some((private, public))
        });
        if let (Some(s), Some((_, public))) = (&existing, &stored) {
            let labelled = labels.iter().all(|(k, v)| s.labels().get(k) == Some(v));
            let public_ok = s
                .data
                .as_ref()
                .and_then(|d| d.get(SECRET_PUBLIC_KEY))
                .is_some_and(|p| p.0 == public.as_bytes());
            if labelled && public_ok {
                return Ok((public.clone(), reference));
            }
        }
        let (private, public) = match stored {
            Some(pair) => pair,
            None => {
                let k = generate_key_pair();
                (k.private, k.public)
            }
        };
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.secret_namespace.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                (SECRET_PRIVATE_KEY.to_string(), ByteString(private.into_bytes())),
                (
                    SECRET_PUBLIC_KEY.to_string(),
                    ByteString(public.clone().into_bytes()),
                ),
            ])),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        match existing {
            None => {
                api.create(&PostParams::default(), &secret).await?;
            }
            Some(_) => {
                api.patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await?;
            }
        }
        tracing::info!(secret = %name, "WireGuard key Secret written");
        Ok((public, reference))
    }

    /// Computes the status synchronously and returns a future that owns everything it needs: keeping
    /// borrowed arguments out of the future keeps it `Send` for every lifetime (rustc's higher-ranked check).
    fn write_status(
        &self,
        sgc: &StaticGatewayConfiguration,
        outcome: &Outcome,
        key: Option<(&str, ObjectReference)>,
    ) -> impl std::future::Future<Output = Result<(), kube::Error>> + Send + 'static {
        let old = sgc.status.clone().unwrap_or_default();
        let (new, events) = next_status(&old, sgc.metadata.generation, outcome, key);
        // Written only when it changed; the patch also clears what the new status no longer has.
        let patch = (new != old).then(|| status_patch(&old, &new));
        let api: Api<StaticGatewayConfiguration> =
            Api::namespaced(self.client.clone(), &sgc.namespace().unwrap_or_default());
        let name = sgc.name_any();
        let reference = sgc.object_ref(&());
        let recorder = self.recorder.clone();
        async move {
            if let Some(patch) = patch {
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
            for (type_, reason, note) in events {
                let ev = Event {
                    type_,
                    reason,
                    note: Some(note),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    tracing::warn!(error = %e, "publishing an Event failed");
                }
            }
            Ok(())
        }
    }

    async fn add_finalizer(&self, sgc: &StaticGatewayConfiguration) -> Result<(), kube::Error> {
        if sgc.finalizers().iter().any(|f| f == SGC_FINALIZER) {
            return Ok(());
        }
        let api: Api<StaticGatewayConfiguration> =
            Api::namespaced(self.client.clone(), &sgc.namespace().unwrap_or_default());
        let mut finalizers = sgc.finalizers().to_vec();
        finalizers.push(SGC_FINALIZER.into());
        api.patch(
            &sgc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": finalizers, "resourceVersion": sgc.resource_version()}}),
            ),
        )
        .await?;
        Ok(())
    }

    async fn finish_deletion(&self, sgc: &StaticGatewayConfiguration) -> Result<(), kube::Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.secret_namespace);
        match secrets
            .delete(
                &key_secret_name(&sgc.uid().unwrap_or_default()),
                &DeleteParams::default(),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
        let api: Api<StaticGatewayConfiguration> =
            Api::namespaced(self.client.clone(), &sgc.namespace().unwrap_or_default());
        let finalizers: Vec<&String> = sgc.finalizers().iter().filter(|f| *f != SGC_FINALIZER).collect();
        match api
            .patch(
                &sgc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": finalizers, "resourceVersion": sgc.resource_version()}})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
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
        if result.is_err() {
            // A failure may hide a write (a lost response): what follows reads afresh.
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
                .get_or_create(&fail("reconcile_gateway_pool", sub, rg, &pool_key(pool_ref)))
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
        let node_count = nodes
            .iter()
            .filter(|n| {
                let labels = n.labels();
                is_gateway_node(labels)
                    && pool_ref.matches_node(labels, n.spec.as_ref().and_then(|s| s.provider_id.as_deref()))
            })
            .count();
        let facts = PoolFacts {
            pool: pool_obj.map(|p| p.spec.clone()),
            node_count: u32::try_from(node_count).ok().filter(|n| *n > 0),
        };

        // Rules, finalizer, key.
        let mut keys: BTreeMap<String, (String, ObjectReference)> = BTreeMap::new();
        let mut configs: Vec<(Arc<StaticGatewayConfiguration>, Config)> = Vec::new();
        let mut declared_prefix = pool_obj.map(|p| p.spec.public_ip_prefix_size);
        let mut byo_ids: BTreeMap<String, api::arm::PublicIpPrefixId> = BTreeMap::new();
        for sgc in sgcs {
            let uid = sgc.uid().unwrap_or_default();
            let deleting = sgc.metadata.deletion_timestamp.is_some();
            let egress = if !sgc.spec.provision_public_ips {
                Egress::Private
            } else if let Some(id) = sgc.spec.byo_prefix_id() {
                Egress::Byo {
                    prefix_id: id.to_string(),
                }
            } else {
                Egress::Managed
            };
            if deleting {
                if sgc.finalizers().iter().any(|f| f == SGC_FINALIZER) {
                    report.record(sgc, true);
                    configs.push((
                        sgc.clone(),
                        Config {
                            uid,
                            egress,
                            deleting: true,
                        },
                    ));
                }
                continue;
            }
            let verdict = validate_sgc(&sgc.spec, None, &facts);
            if !verdict.is_allowed() {
                report.record(sgc, false);
                report.fail(&uid, &[Layer::Sgc]);
                self.write_status(sgc, &Outcome::Invalid(verdict.message()), None)
                    .await?;
                continue;
            }
            report.record(sgc, true);
            // Rule 6 (just checked) refuses a BYO prefix ID that does not parse, so an accepted one parses.
            if let Egress::Byo { prefix_id } = &egress
                && let Ok(id) = api::arm::parse_public_ip_prefix_id(prefix_id)
            {
                byo_ids.insert(uid.clone(), id);
            }
            self.add_finalizer(sgc).await?;
            let key = self.ensure_key_secret(sgc, ctx.key_secrets).await?;
            keys.insert(uid.clone(), key);
            if declared_prefix.is_none() {
                declared_prefix = sgc.spec.vmss_profile().map(|p| p.public_ip_prefix_size);
            }
            configs.push((
                sgc.clone(),
                Config {
                    uid,
                    egress,
                    deleting: false,
                },
            ));
        }
        // A GatewayPool reports its instances (and Ready) even before a configuration uses it, so whoever
        // declared it (kubectl, Terraform) can wait for it; a pool nobody declared has nothing to report.
        let live_pool_obj = pool_obj.filter(|p| p.metadata.deletion_timestamp.is_none());
        if configs.is_empty() && live_pool_obj.is_none() {
            return Ok(());
        }

        let resolved = match pool::resolve_in(&self.arm, &self.cfg, pool_ref, declared_prefix, reads).await {
            Ok(r) => r,
            Err(PoolError::NotFound(m)) => {
                if let Some(p) = live_pool_obj {
                    let old = p.status.clone().unwrap_or_default();
                    self.write_pool_status(p, &pool_not_found_status(&old, p.metadata.generation, &m))
                        .await?;
                }
                // Nothing to clean on a pool that is gone, except the LB rules and prefixes (found by name).
                for (sgc, c) in &configs {
                    if !c.deleting {
                        report.fail(&c.uid, &[Layer::Lb, Layer::Vm]);
                    }
                    if c.deleting {
                        self.cleanup_without_pool(c).await?;
                        reads.forget(); // it wrote the load balancer
                        self.finish_deletion(sgc).await?;
                    } else {
                        let key = keys.get(&c.uid).map(|(p, r)| (p.as_str(), r.clone()));
                        self.write_status(sgc, &Outcome::PoolNotFound(m.clone()), key)
                            .await?;
                    }
                }
                return Ok(());
            }
            Err(e @ PoolError::PrefixSize(_)) => {
                report.fail_all(Layer::of_pool_error(&e));
                for (sgc, c) in configs.iter() {
                    if c.deleting {
                        continue;
                    }
                    let key = keys.get(&c.uid).map(|(p, r)| (p.as_str(), r.clone()));
                    self.write_status(sgc, &Outcome::PrefixSizeMismatch(e.to_string()), key)
                        .await?;
                }
                return Err(e.into());
            }
            Err(e) => {
                report.fail_all(Layer::of_pool_error(&e));
                return self.fail_all(&configs, &keys, e).await;
            }
        };

        // BYO prefixes: same subscription, right length (upstream's checks), CIDR for the status.
        let mut byo_cidrs = BTreeMap::new();
        let mut blocked: BTreeSet<String> = BTreeSet::new();
        for (sgc, c) in configs.iter() {
            if c.deleting {
                continue;
            }
            let (Egress::Byo { prefix_id }, Some(id)) = (&c.egress, byo_ids.get(&c.uid)) else {
                continue;
            };
            match self.check_byo(prefix_id, id, resolved.pool.prefix_len).await {
                Ok(cidr) => {
                    byo_cidrs.insert(id.name.to_ascii_lowercase(), cidr);
                }
                Err(outcome) => {
                    report.fail(&c.uid, &[Layer::Vm]);
                    let key = keys.get(&c.uid).map(|(p, r)| (p.as_str(), r.clone()));
                    self.write_status(sgc, &outcome, key).await?;
                    blocked.insert(c.uid.clone());
                }
            }
        }
        let plan_configs: Vec<Config> = configs
            .iter()
            .filter(|(_, c)| !blocked.contains(&c.uid))
            .map(|(_, c)| c.clone())
            .collect();

        let outcome = match pool::reconcile_in(
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
                return self.fail_all(&configs, &keys, e).await;
            }
        };
        tracing::info!(pool = %pool_ref, writes = outcome.writes, "pool reconciled");
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
        if outcome.writes > 0 || pending_ops || incomplete {
            self.converging
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pool_key(pool_ref));
        }
        if let Some(p) = pool_obj {
            let wanted: Vec<String> = plan_configs
                .iter()
                .filter(|c| !c.deleting && !outcome.plan.problems.contains_key(&c.uid))
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
            self.write_pool_status(p, &new).await?;
        }
        for (sgc, c) in &configs {
            if blocked.contains(&c.uid) {
                continue;
            }
            if c.deleting {
                self.finish_deletion(sgc).await?;
                continue;
            }
            let key = keys.get(&c.uid).map(|(p, r)| (p.as_str(), r.clone()));
            let o = match outcome.plan.problems.get(&c.uid) {
                Some(p @ ConfigProblem::PrefixSizeMismatch { .. }) => {
                    report.fail(&c.uid, &[Layer::Vm]);
                    Outcome::PrefixSizeMismatch(p.to_string())
                }
                Some(p @ ConfigProblem::NoAvailablePorts(_)) => {
                    report.fail(&c.uid, &[Layer::Lb]);
                    Outcome::Blocked(p.to_string())
                }
                None => Outcome::Provisioned(outcome.facts.get(&c.uid).cloned().unwrap_or_default()),
            };
            self.write_status(sgc, &o, key).await?;
        }
        Ok(())
    }

    async fn fail_all(
        &self,
        configs: &[(Arc<StaticGatewayConfiguration>, Config)],
        keys: &BTreeMap<String, (String, ObjectReference)>,
        e: PoolError,
    ) -> Result<(), Error> {
        let (reason, message) = match &e {
            PoolError::Arm(a) => (a.reason(), a.to_string()),
            other => (REASON_AZURE_ERROR, other.to_string()),
        };
        for (sgc, c) in configs.iter() {
            if c.deleting {
                continue;
            }
            let key = keys.get(&c.uid).map(|(p, r)| (p.as_str(), r.clone()));
            let outcome = Outcome::AzureFailed {
                reason,
                message: message.clone(),
            };
            self.write_status(sgc, &outcome, key).await?;
        }
        Err(e.into())
    }

    /// A BYO prefix's checks (upstream's): same subscription as the cluster, the pool's length, an address
    /// range; returns its CIDR. The ID was parsed (and its syntax checked by rule 6) before.
    async fn check_byo(
        &self,
        prefix_id: &str,
        id: &api::arm::PublicIpPrefixId,
        required: i32,
    ) -> Result<String, Outcome> {
        if !id.subscription.eq_ignore_ascii_case(&self.cfg.subscription_id) {
            return Err(Outcome::Invalid(format!(
                "public ip prefix subscription({}) is not in the same subscription({})",
                id.subscription, self.cfg.subscription_id
            )));
        }
        let failed = |e: ArmError| Outcome::AzureFailed {
            reason: e.reason(),
            message: format!("failed to get public ip prefix({prefix_id}): {e}"),
        };
        let p = self
            .arm
            .get_prefix(&id.resource_group, &id.name)
            .await
            .map_err(failed)?
            .ok_or_else(|| Outcome::Blocked(format!("public ip prefix({prefix_id}) does not exist")))?;
        let p = crate::arm_json::prefix_from_json(&p);
        match p.prefix_len {
            Some(l) if l == required => p.cidr.ok_or_else(|| {
                Outcome::Blocked(format!("public ip prefix({prefix_id}) has no address range yet"))
            }),
            Some(l) => Err(Outcome::PrefixSizeMismatch(format!(
                "provided public ip prefix has invalid length({l}), required({required})"
            ))),
            None => Err(Outcome::Blocked(format!(
                "public ip prefix({prefix_id}) has empty properties"
            ))),
        }
    }

    /// The pool is gone from Azure: remove the configuration's rule and probe (by name) and its managed prefix.
    async fn cleanup_without_pool(&self, c: &Config) -> Result<(), Error> {
        let cfg = &self.cfg;
        let mut refetches = 0;
        loop {
            match self.remove_rule_without_pool(c).await {
                Err(e) if e.is_precondition_failed() && refetches < pool::MAX_PRECONDITION_REFETCHES => {
                    refetches += 1;
                }
                r => break r.map_err(PoolError::from)?,
            }
        }
        let name = api::names::managed_resource_name(&c.uid);
        if let Some(p) = self
            .arm
            .get_prefix(&cfg.resource_group, &name)
            .await
            .map_err(PoolError::from)?
        {
            for pip in crate::arm_json::prefix_from_json(&p).public_ip_ids {
                self.arm
                    .delete_public_ip(&cfg.resource_group, crate::desired::last_segment(&pip))
                    .await
                    .map_err(PoolError::from)?;
            }
            self.arm
                .delete_prefix(&cfg.resource_group, &name)
                .await
                .map_err(PoolError::from)?;
        }
        Ok(())
    }

    /// Removes a configuration's rule and probe (and the pool's frontend/backend when unused, or the whole load
    /// balancer) by name, with the load balancer's ETag: a concurrent change gives 412 and the caller re-reads.
    async fn remove_rule_without_pool(&self, c: &Config) -> Result<(), ArmError> {
        let cfg = &self.cfg;
        let Some(lb_json) = self
            .arm
            .get_lb(&cfg.load_balancer_resource_group, &cfg.load_balancer_name)
            .await?
        else {
            return Ok(());
        };
        let expect = crate::azure::Expect::read_as(Some(&lb_json));
        let lb = crate::arm_json::lb_from_json(&lb_json);
        let Some(uid) = lb
            .rules
            .iter()
            .find(|r| r.name.eq_ignore_ascii_case(&c.uid))
            .and_then(|r| r.frontend.clone())
        else {
            return Ok(());
        };
        let pool = crate::desired::Pool {
            uid,
            kind: crate::desired::PoolKind::Vmss,
            prefix_len: 31,
        };
        let env = pool::env_of(cfg, self.probe_port);
        let plan = crate::desired::plan_lb(&pool, std::slice::from_ref(c), &BTreeMap::new(), Some(&lb), &env);
        match plan.write {
            crate::desired::LbWrite::Keep => Ok(()),
            crate::desired::LbWrite::Delete => {
                self.arm
                    .delete_lb(&cfg.load_balancer_resource_group, &cfg.load_balancer_name, expect)
                    .await
            }
            crate::desired::LbWrite::Put { lb: desired, .. } => {
                let body = crate::arm_json::merge_lb(
                    Some(&lb_json),
                    &desired,
                    &cfg.load_balancer_id(),
                    &cfg.load_balancer_name,
                    &cfg.location,
                );
                self.arm
                    .put_lb(
                        &cfg.load_balancer_resource_group,
                        &cfg.load_balancer_name,
                        body,
                        expect,
                    )
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Every object of a kind, cluster-wide.
    async fn list_all<K>(&self) -> Result<Vec<Arc<K>>, kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let list = Api::<K>::all(self.client.clone())
            .list(&ListParams::default())
            .await?;
        Ok(list.items.into_iter().map(Arc::new).collect())
    }

    /// Writes a GatewayPool's status when it differs from the one read.
    async fn write_pool_status(
        &self,
        p: &GatewayPool,
        new: &api::GatewayPoolStatus,
    ) -> Result<(), kube::Error> {
        let old = p.status.clone().unwrap_or_default();
        if *new != old {
            Api::<GatewayPool>::all(self.client.clone())
                .patch_status(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(status_patch(&old, new)),
                )
                .await?;
        }
        Ok(())
    }

    /// One pass over every pool (or the pools in `only`), from objects listed from the API server now. The work
    /// loop runs [`Operator::pass`] from its watch caches instead; this is for tools and tests that drive passes
    /// themselves. Returns how many pools were reconciled, or the first error.
    pub async fn reconcile_pools(&self, only: Option<&BTreeSet<String>>) -> Result<usize, Error> {
        let inputs = Inputs {
            sgcs: self.list_all().await?,
            pools: self.list_all().await?,
            nodes: self.list_all().await?,
            key_secrets: None,
        };
        let out = self.pass(&inputs, only).await;
        match out.error {
            Some(e) => Err(e),
            None => Ok(out.reconciled.len()),
        }
    }

    /// One pass over every pool that has configurations or a GatewayPool (or only the pools in `only`, by
    /// [`pool_key`]), working from `inputs`: the periodic drift repair, and what the watch loop runs for the
    /// pools an event touched. Pools that are still converging are added to [`Operator::take_converging`].
    pub async fn pass(&self, inputs: &Inputs, only: Option<&BTreeSet<String>>) -> PassOutcome {
        self.passes
            .started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut out = PassOutcome::default();
        self.pass_inner(inputs, only, &mut out).await;
        self.passes
            .finished
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        out
    }

    async fn pass_inner(&self, inputs: &Inputs, only: Option<&BTreeSet<String>>, out: &mut PassOutcome) {
        let Inputs {
            sgcs,
            pools,
            nodes,
            key_secrets,
        } = inputs;
        let mut by_pool: BTreeMap<String, (PoolRef, Vec<Arc<StaticGatewayConfiguration>>)> = BTreeMap::new();
        for sgc in sgcs {
            let Some(r) = sgc.spec.pool_ref() else {
                // Rule 1 broken: report it (no pool to group by).
                let result = if sgc.metadata.deletion_timestamp.is_none() {
                    let verdict = validate_sgc(&sgc.spec, None, &PoolFacts::default());
                    self.write_status(sgc, &Outcome::Invalid(verdict.message()), None)
                        .await
                } else if sgc.finalizers().iter().any(|f| f == SGC_FINALIZER) {
                    self.finish_deletion(sgc).await
                } else {
                    Ok(())
                };
                if let Err(e) = result {
                    out.fail_outside_pools(e.into());
                }
                continue;
            };
            let key = pool_key(&r);
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
            let used = by_pool.contains_key(&pool_key(&r));
            let has = p.finalizers().iter().any(|f| f == api::names::POOL_FINALIZER);
            let result = match (p.metadata.deletion_timestamp.is_some(), has, used) {
                (false, false, _) => {
                    let finalizers = p
                        .finalizers()
                        .iter()
                        .cloned()
                        .chain([api::names::POOL_FINALIZER.to_string()])
                        .collect();
                    self.set_pool_finalizers(p, finalizers).await
                }
                // Released after the pool passes below if they deleted its last configurations.
                (true, true, true) => {
                    held.push(p);
                    Ok(())
                }
                (true, true, false) => self.release_pool(p).await,
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
                by_pool.entry(pool_key(&r)).or_insert_with(|| (r, Vec::new()));
            }
        }
        for (key, (r, mut list)) in by_pool {
            if only.is_some_and(|o| !o.contains(&key)) {
                continue;
            }
            list.sort_by_key(|s| s.metadata.creation_timestamp.clone().map(|t| t.0));
            out.reconciled.insert(key.clone());
            let ctx = PassContext {
                reads: &reads,
                key_secrets: key_secrets.as_ref(),
            };
            if let Err(e) = self.reconcile_pool(&r, &list, pools, nodes, &ctx).await {
                out.failed.insert(key);
                out.error.get_or_insert(e);
            }
        }
        if let Err(e) = self.release_pools_left_unused(&held).await {
            out.fail_outside_pools(e.into());
        }
    }

    /// The pools found converging since the last call (writes just made, instance operations pending, addresses
    /// not yet allocated), by [`pool_key`]: the work loop looks at exactly these again soon.
    pub fn take_converging(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.converging.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Deleted pools that still had configurations when the pass began: those whose last configuration went
    /// in this pass are released now (read again, as the pass may have written their status).
    async fn release_pools_left_unused(&self, held: &[&GatewayPool]) -> Result<(), kube::Error> {
        if held.is_empty() {
            return Ok(());
        }
        let used: BTreeSet<String> = self
            .list_all::<StaticGatewayConfiguration>()
            .await?
            .iter()
            .filter_map(|s| s.spec.pool_ref())
            .map(|r| pool_key(&r))
            .collect();
        let api = Api::<GatewayPool>::all(self.client.clone());
        for p in held {
            if p.spec.pool_ref().is_some_and(|r| used.contains(&pool_key(&r))) {
                continue;
            }
            if let Some(p) = api.get_opt(&p.name_any()).await? {
                self.release_pool(&p).await?;
            }
        }
        Ok(())
    }

    /// Removes the pool finalizer.
    async fn release_pool(&self, p: &GatewayPool) -> Result<(), kube::Error> {
        let finalizers = p
            .finalizers()
            .iter()
            .filter(|f| *f != api::names::POOL_FINALIZER)
            .cloned()
            .collect();
        self.set_pool_finalizers(p, finalizers).await
    }

    /// Patches a GatewayPool's finalizers, conditional on the version read.
    async fn set_pool_finalizers(&self, p: &GatewayPool, finalizers: Vec<String>) -> Result<(), kube::Error> {
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": p.resource_version()}});
        Api::<GatewayPool>::all(self.client.clone())
            .patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }
}

/// How often every pool is re-read to repair drift (upstream: 5 minutes).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pairs_are_valid_and_private_keys_redacted() {
        let k = generate_key_pair();
        assert_eq!(public_key_of(&k.private).as_deref(), Some(k.public.as_str()));
        assert_eq!(B64.decode(&k.public).expect("base64").len(), 32);
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&k.private) && dbg.contains("<redacted>"));
        assert_ne!(generate_key_pair().private, k.private);
        assert_eq!(public_key_of("not a key"), None);
    }

    fn secret_ref() -> ObjectReference {
        ObjectReference {
            name: Some("sgw-u".into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn status_goes_provisioning_then_ready_with_events_only_on_transitions() {
        let old = StaticGatewayConfigurationStatus::default();
        let partial = ConfigFacts {
            frontend_ip: Some("10.1.0.4".into()),
            port: Some(6000),
            egress_ip_prefix: None,
            vm_profiles: vec![],
        };
        let (st, ev) = next_status(
            &old,
            Some(1),
            &Outcome::Provisioned(partial),
            Some(("pub", secret_ref())),
        );
        let ready = st.conditions.iter().find(|c| c.type_ == READY).expect("ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Provisioning")
        );
        assert_eq!(ev.len(), 2, "Accepted and Ready appeared");
        let full = ConfigFacts {
            frontend_ip: Some("10.1.0.4".into()),
            port: Some(6000),
            egress_ip_prefix: Some("20.0.0.0/31".into()),
            vm_profiles: vec![],
        };
        let (st2, ev2) = next_status(
            &st,
            Some(1),
            &Outcome::Provisioned(full.clone()),
            Some(("pub", secret_ref())),
        );
        assert!(st2.is_ready_for_pods());
        assert_eq!(st2.egress_ip_prefix.as_deref(), Some("20.0.0.0/31"));
        assert_eq!(st2.gateway_server_profile.as_ref().map(|p| p.port), Some(6000));
        assert_eq!(
            ev2.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(),
            ["Provisioned"]
        );
        assert!(st2.conditions.iter().all(|c| c.observed_generation == Some(1)));
        let (st3, ev3) = next_status(
            &st2,
            Some(1),
            &Outcome::Provisioned(full),
            Some(("pub", secret_ref())),
        );
        assert_eq!(st3, st2, "steady state writes nothing");
        assert!(ev3.is_empty());
    }

    #[test]
    fn failures_surface_with_their_reason() {
        let old = StaticGatewayConfigurationStatus::default();
        let (st, ev) = next_status(
            &old,
            Some(2),
            &Outcome::AzureFailed {
                reason: "AzureThrottled",
                message: "PUT loadBalancers ilb: TooManyRequests: slow down".into(),
            },
            None,
        );
        let ready = st.conditions.iter().find(|c| c.type_ == READY).expect("ready");
        assert_eq!(ready.reason, "AzureThrottled");
        assert!(ready.message.contains("TooManyRequests"));
        assert_eq!(ev[0].0, EventType::Warning);
        let (st, _) = next_status(&st, Some(3), &Outcome::Invalid("rule 6 ...".into()), None);
        let accepted = st
            .conditions
            .iter()
            .find(|c| c.type_ == ACCEPTED)
            .expect("accepted");
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert_eq!(accepted.observed_generation, Some(3));
        let (st, _) = next_status(
            &st,
            Some(3),
            &Outcome::PoolNotFound("gateway VMSS not found".into()),
            None,
        );
        assert_eq!(
            st.conditions
                .iter()
                .find(|c| c.type_ == ACCEPTED)
                .map(|c| c.reason.as_str()),
            Some("PoolNotFound")
        );
    }

    #[test]
    fn status_patches_clear_what_the_new_status_no_longer_has() {
        let old = StaticGatewayConfigurationStatus {
            egress_ip_prefix: Some("10.0.0.5,10.0.0.6".into()),
            gateway_server_profile: Some(GatewayServerProfile {
                ip: "10.1.0.4".into(),
                port: 6000,
                public_key: "pub".into(),
                private_key_secret_ref: Some(secret_ref()),
            }),
            gateway_vm_profiles: vec![api::GatewayVmProfile {
                node_name: "n0".into(),
                primary_ip: "10.0.0.4".into(),
                secondary_ip: "10.0.0.5".into(),
            }],
            observed_generation: Some(1),
            conditions: vec![],
        };
        // A node lost its address and the frontend is being re-created: those fields go away.
        let mut new = old.clone();
        new.egress_ip_prefix = None;
        new.gateway_vm_profiles.clear();
        if let Some(p) = new.gateway_server_profile.as_mut() {
            p.ip.clear();
        }
        new.observed_generation = Some(2);
        let mut object = json!({"status": old});
        json_patch::merge(&mut object, &status_patch(&old, &new));
        assert_eq!(object, json!({ "status": new }));
        let back: StaticGatewayConfigurationStatus =
            serde_json::from_value(object["status"].clone()).expect("status");
        assert_eq!(
            back, new,
            "the object now equals the wanted status: no write next pass"
        );

        // Pools: instances gone when the scale set is scaled to zero.
        let old_pool = api::GatewayPoolStatus {
            instances: vec![api::pool::PoolInstance {
                name: "vmss000000".into(),
                node_name: Some("vmss000000".into()),
                primary_ip: "10.0.0.4".into(),
                provisioning_state: "Succeeded".into(),
                ready: true,
            }],
            ready_instances: 1,
            ..Default::default()
        };
        let new_pool = api::GatewayPoolStatus {
            instances: vec![],
            ready_instances: 0,
            ..old_pool.clone()
        };
        let mut object = json!({"status": old_pool});
        json_patch::merge(&mut object, &status_patch(&old_pool, &new_pool));
        assert_eq!(object, json!({ "status": new_pool }));
    }

    #[test]
    fn vm_pool_instances_name_the_node_of_their_vm() {
        use crate::desired::{AzureState, NicAddresses, Pool, PoolKind, VmNic};
        let vm = |n: &str| {
            format!("/subscriptions/s/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachines/{n}")
        };
        let nic = |name: &str, vm_id: Option<String>| VmNic {
            name: name.into(),
            provisioning_state: "Succeeded".into(),
            nic: crate::desired::Nic::default(),
            addresses: NicAddresses {
                primary_ip: Some("10.0.0.4".into()),
                by_ip_config: BTreeMap::new(),
            },
            vm_id,
        };
        let state = AzureState {
            vm_nics: vec![
                nic("aks-gw-vm0-nic", Some(vm("aks-gw-vm0"))),
                nic("aks-gw-vm1-nic", Some(vm("aks-gw-vm1"))),
                nic("aks-gw-spare-nic", None),
            ],
            ..AzureState::default()
        };
        let nodes = [
            // The cloud provider's providerID (lower-cased resource group), Node named otherwise.
            NodeIdentity {
                name: "node-a".into(),
                provider_id: Some(format!("azure://{}", vm("aks-gw-vm0").to_ascii_lowercase())),
            },
            // No providerID yet: the Node is named after its VM, as AKS does.
            NodeIdentity {
                name: "aks-gw-vm1".into(),
                provider_id: None,
            },
        ];
        let pool = Pool {
            uid: "u".into(),
            kind: PoolKind::Vm,
            prefix_len: 31,
        };
        let st = pool_status(&Default::default(), Some(1), &pool, &state, &[], &nodes);
        let names: Vec<(&str, Option<&str>)> = st
            .instances
            .iter()
            .map(|i| (i.name.as_str(), i.node_name.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("aks-gw-vm0-nic", Some("node-a")),
                ("aks-gw-vm1-nic", Some("aks-gw-vm1")),
                ("aks-gw-spare-nic", None),
            ]
        );
    }

    #[test]
    fn a_pool_not_in_azure_clears_its_instances_and_is_not_ready() {
        let old = api::GatewayPoolStatus {
            ready_instances: 2,
            instances: vec![api::pool::PoolInstance::default()],
            load_balancer_frontend: Some(api::pool::LoadBalancerFrontend::default()),
            ..Default::default()
        };
        let st = pool_not_found_status(&old, Some(3), "no node pool 'nope'");
        assert_eq!(st.observed_generation, Some(3));
        assert!(st.instances.is_empty());
        assert_eq!(st.ready_instances, 0);
        assert!(st.load_balancer_frontend.is_none());
        let ready = st.conditions.iter().find(|c| c.type_ == READY).expect("Ready");
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("False", REASON_POOL_NOT_FOUND, "no node pool 'nope'")
        );
        assert_eq!(
            pool_not_found_status(&st, Some(3), "no node pool 'nope'"),
            st,
            "stable"
        );
    }

    #[test]
    fn pool_keys_ignore_case() {
        assert_eq!(
            pool_key(&PoolRef::Nodepool("GW".into())),
            pool_key(&PoolRef::Nodepool("gw".into()))
        );
        assert_ne!(
            pool_key(&PoolRef::Nodepool("gw".into())),
            pool_key(&PoolRef::Vmss {
                resource_group: "rg".into(),
                name: "gw".into()
            })
        );
    }
}
