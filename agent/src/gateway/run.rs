//! Gateway mode's control loop: watch configurations, their key Secrets and PodEndpoints; on any change
//! (including deletions) wait a short debounce so a burst of pod events becomes one batch, then rebuild the
//! plan from the caches and apply it. Deleted PodEndpoints disappear from the cache at once, so their
//! peers are removed by the next apply (within the debounce), not by a periodic sweep.
//!
//! The GatewayStatus each apply yields is written beside the loop, by [`keep_status_written`]: a write that
//! fails is retried on its own, so an API server that refuses the status does not make the node re-plan and
//! re-apply its data plane, and a status the next apply replaces is never written.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use api::internal::{GatewayStatus, GatewayStatusSpec};
use api::{PodEndpoint, StaticGatewayConfiguration};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio::sync::{Notify, watch};

use super::apply::{ApplyError, ApplyReport, GatewayApplier};
use super::plan::{GatewayInput, GatewayPlan, ObservedGateway, gateway_plan, serving_after_failure};
use super::probe::ProbeState;
use super::select::{KeySecrets, NodeSettings, Skipped, active_uids, gateway_status, select};
use super::tunnels::{TunnelLink, TunnelView};
use crate::error::ClusterError;
use crate::metrics::{ConfigurationLabels, Metrics, SkippedLabels};
use crate::node::kube_cluster::server_side_apply;
use crate::object::NamespacedName;

/// Something that makes a plan real: the kernel applier in production, a recorder in tests of the watch
/// wiring (which need no root).
pub trait PlanApplier: std::fmt::Debug + Send + Sync + 'static {
    /// Applies `plan`.
    fn apply_plan(&self, plan: &GatewayPlan) -> Result<ApplyReport, ApplyError>;
    /// What the node's gateway namespace has now: its links and the shared parts (read after an apply that
    /// failed as a whole).
    fn observe_gateway(&self) -> Result<ObservedGateway, ApplyError>;
}

impl PlanApplier for GatewayApplier {
    fn apply_plan(&self, plan: &GatewayPlan) -> Result<ApplyReport, ApplyError> {
        self.apply(plan)
    }
    fn observe_gateway(&self) -> Result<ObservedGateway, ApplyError> {
        self.observe()
    }
}

/// What the node still serves after the apply of `attempted` failed as a whole (or its task died), when it
/// served `serving` before: a failed apply may have removed or half-changed links, so the links are read back
/// ([`PlanApplier::observe_gateway`]) and judged by [`serving_after_failure`]. When they cannot be read,
/// nothing: the load balancer must not send a configuration's flows to a node that may not carry them.
/// Blocking.
pub fn still_serving(
    applier: &dyn PlanApplier,
    serving: &GatewayPlan,
    attempted: &GatewayPlan,
) -> GatewayPlan {
    match applier.observe_gateway() {
        Ok(found) => serving_after_failure(serving, attempted, &found),
        Err(e) => {
            tracing::error!(error = %e, "reading the gateway links after a failed apply; no configuration is served");
            serving.without_links(&serving.links.keys().cloned().collect())
        }
    }
}

/// What a failed apply's read-back is judged against: the plan of the last apply that succeeded (without the
/// links it could not apply), kept apart from what was served after each failure since. Judged against that
/// shrinking set instead, one read-back that found less (the namespace unreadable once) would keep those
/// configurations out for the rest of a failure streak.
#[derive(Debug, Clone)]
struct LastSuccess(GatewayPlan);

impl LastSuccess {
    /// Nothing applied yet (in the gateway namespace `netns_name`).
    fn new(netns_name: &str) -> LastSuccess {
        LastSuccess(gateway_plan(&GatewayInput {
            netns_name: netns_name.to_string(),
            primary_ip: std::net::Ipv4Addr::UNSPECIFIED,
            frontend_ips: vec![],
            configs: vec![],
        }))
    }

    /// An apply succeeded and `applied` is what it applied.
    fn succeeded(&mut self, applied: &GatewayPlan) {
        self.0 = applied.clone();
    }

    /// What the node still serves after the apply of `attempted` failed as a whole: [`still_serving`] against
    /// the last success, off the async threads; nothing when that fails too.
    async fn read_back(&self, applier: Arc<dyn PlanApplier>, attempted: GatewayPlan) -> GatewayPlan {
        let before = self.0.clone();
        let nothing = before.without_links(&before.links.keys().cloned().collect());
        tokio::task::spawn_blocking(move || still_serving(applier.as_ref(), &before, &attempted))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "reading the gateway links failed; no configuration is served");
                nothing
            })
    }
}

/// The wait before the first retry of a failed apply or status write.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The wait before the next retry: `retry`, which doubles for the one after (at most 30 s).
fn back_off(retry: &mut Duration) -> Duration {
    let wait = *retry;
    *retry = (wait * 2).min(Duration::from_secs(30));
    wait
}

/// Configuration of the gateway loop.
#[derive(Debug, Clone)]
pub struct GatewayLoop {
    /// Kubernetes node name (GatewayStatus name, owner).
    pub node_name: String,
    /// Namespace the agent runs in (GatewayStatus lives here).
    pub agent_namespace: String,
    /// Namespace of the key Secrets (the operator's).
    pub secret_namespace: String,
    /// Node settings.
    pub settings: NodeSettings,
    /// The applier.
    pub applier: Arc<dyn PlanApplier>,
    /// Probe state to update.
    pub probe: ProbeState,
    /// The applied tunnel links, for the data-plane metrics and the drain.
    pub tunnels: TunnelView,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set once the first apply succeeded (`/readyz`).
    pub ready: Arc<AtomicBool>,
    /// Quiet time collecting events into one batch.
    pub debounce: Duration,
    /// Full re-apply interval even without events (repairs out-of-band changes).
    pub resync: Duration,
}

fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    notify: Arc<Notify>,
    what: &'static str,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        // managedFields are never read here and can be most of an object's size.
        let stream = watcher(api, config).modify(api::cache::strip_managed_fields);
        reflector::reflector(writer, stream)
            .default_backoff()
            .for_each(|ev| {
                if let Err(e) = &ev {
                    tracing::warn!(watch = what, error = %e, "watch error");
                }
                notify.notify_one();
                async {}
            })
            .await;
        tracing::warn!(watch = what, "watch ended");
    });
}

/// Removes the `gateway_configuration_apply_failures_total` series of the configurations in `counted` that
/// are no longer in the cluster (`sgcs`), so a deleted configuration's series does not stay forever.
fn forget_gone_configurations(
    counted: &mut BTreeSet<String>,
    sgcs: &[StaticGatewayConfiguration],
    metrics: &Metrics,
) {
    if counted.is_empty() {
        return;
    }
    let present: BTreeSet<String> = sgcs
        .iter()
        .map(|s| crate::object::NamespacedName::of(&s.metadata).to_string())
        .collect();
    counted.retain(|configuration| {
        let keep = present.contains(configuration);
        if !keep {
            metrics
                .gateway_configuration_apply_failures
                .remove(&ConfigurationLabels {
                    configuration: configuration.clone(),
                });
        }
        keep
    });
}

/// The applied links with the configuration each serves.
fn tunnel_links(plan: &GatewayPlan) -> Vec<TunnelLink> {
    plan.links
        .values()
        .map(|l| TunnelLink {
            ifname: l.ifname.clone(),
            control_name: l.control_name.clone(),
            configuration: l.configuration.clone(),
            port: l.port,
        })
        .collect()
}

/// What the gateway cannot serve, as last recorded: each (configuration, reason) is warned about when it
/// appears (not on every apply), logged when it is gone, and exposed as `gateway_configurations_skipped`.
#[derive(Debug, Default)]
struct SkipLog {
    last: BTreeMap<(String, &'static str), i64>,
}

impl SkipLog {
    /// Records this plan's skips; returns the (configuration, reason) pairs that are new.
    fn record(&mut self, skipped: &[Skipped], metrics: &Metrics) -> Vec<(String, &'static str)> {
        let mut now: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
        for s in skipped {
            *now.entry((s.configuration.clone(), s.reason)).or_default() += 1;
        }
        let mut new = Vec::new();
        for s in skipped {
            let key = (s.configuration.clone(), s.reason);
            if self.last.contains_key(&key) || new.contains(&key) {
                continue;
            }
            // A configuration still being provisioned is expected, not a problem.
            if s.reason == "not_ready" {
                tracing::info!(configuration = %s.configuration, reason = s.reason, "{s}");
            } else {
                tracing::warn!(configuration = %s.configuration, reason = s.reason, "not served on this gateway: {s}");
            }
            new.push(key);
        }
        for (configuration, reason) in self.last.keys().filter(|k| !now.contains_key(*k)) {
            tracing::info!(%configuration, reason, "no longer skipped");
            metrics.gateway_configurations_skipped.remove(&SkippedLabels {
                configuration: configuration.clone(),
                reason: (*reason).into(),
            });
        }
        for ((configuration, reason), n) in &now {
            metrics
                .gateway_configurations_skipped
                .get_or_create(&SkippedLabels {
                    configuration: configuration.clone(),
                    reason: (*reason).into(),
                })
                .set(*n);
        }
        self.last = now;
        new
    }
}

/// The Secrets the gateway reads: only the WireGuard key Secrets, which the operator labels with their
/// configuration (the operator watches them with the same selector). The Secret namespace also holds other
/// Secrets (the Azure cloud config, the webhook's TLS key, Helm's release records), which no gateway node
/// needs, so they are never listed into its cache.
fn key_secrets_only() -> watcher::Config {
    watcher::Config::default().labels(api::names::SECRET_OWNER_NAME_LABEL)
}

fn key_secrets(store: &Store<Secret>) -> KeySecrets {
    store
        .state()
        .iter()
        .filter_map(|s| {
            let key = s.data.as_ref()?.get(api::names::SECRET_PRIVATE_KEY)?;
            let text = String::from_utf8(key.0.clone()).ok()?;
            Some((NamespacedName::of(&s.metadata), text))
        })
        .collect()
}

/// Keeps the latest GatewayStatus the apply loop computed (`desired`) written with `write`, until `desired`'s
/// sender is gone or `shutdown`. A failed write is counted by reason, logged and retried on its own backoff
/// (`first_retry`, doubling to 30 s): waiting for the next event or the resync would leave the operator's view
/// of this gateway stale that long, and re-running the apply for it would redo the data plane for nothing.
/// A newer status supersedes the one being retried and is written at once; a status equal to the last one
/// written is not written again.
async fn keep_status_written<W, Fut>(
    mut desired: watch::Receiver<Option<GatewayStatusSpec>>,
    mut shutdown: watch::Receiver<bool>,
    metrics: &Metrics,
    first_retry: Duration,
    mut write: W,
) where
    W: FnMut(GatewayStatusSpec) -> Fut,
    Fut: Future<Output = Result<(), ClusterError>>,
{
    let mut written: Option<GatewayStatusSpec> = None;
    let mut retry = first_retry;
    loop {
        let latest = desired.borrow_and_update().clone();
        let mut retry_in = None;
        if let Some(status) = latest.filter(|s| written.as_ref() != Some(s)) {
            match write(status.clone()).await {
                Ok(()) => {
                    written = Some(status);
                    retry = first_retry;
                }
                Err(e) => {
                    metrics.gateway_status_update_failed(e.reason());
                    tracing::warn!(error = %e, reason = e.reason(), "GatewayStatus update failed; retrying");
                    retry_in = Some(back_off(&mut retry));
                }
            }
        }
        tokio::select! {
            newer = desired.changed() => if newer.is_err() { return },
            _ = tokio::time::sleep(retry_in.unwrap_or_default()), if retry_in.is_some() => {}
            _ = shutdown.changed() => return,
        }
    }
}

impl GatewayLoop {
    /// Runs until `shutdown` becomes true.
    pub async fn run(self, client: Client, shutdown: watch::Receiver<bool>) {
        let (status_tx, status_rx) = watch::channel(None);
        let write = |spec: GatewayStatusSpec| {
            let (this, client) = (&self, &client);
            async move { this.write_status(client, &spec).await }
        };
        tokio::join!(
            self.apply_until_shutdown(&client, status_tx, shutdown.clone()),
            keep_status_written(status_rx, shutdown, &self.metrics, FIRST_RETRY, write),
        );
    }

    /// The loop proper: applies after every batch of events (and every resync), and hands each applied
    /// plan's GatewayStatus to `status` when it differs from the one before.
    async fn apply_until_shutdown(
        &self,
        client: &Client,
        status: watch::Sender<Option<GatewayStatusSpec>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let notify = Arc::new(Notify::new());
        let (sgcs, sgc_w) = reflector::store::<StaticGatewayConfiguration>();
        let (secrets, secret_w) = reflector::store::<Secret>();
        let (pes, pe_w) = reflector::store::<PodEndpoint>();
        spawn_watch(
            Api::all(client.clone()),
            watcher::Config::default(),
            sgc_w,
            notify.clone(),
            "staticgatewayconfigurations",
        );
        spawn_watch(
            Api::namespaced(client.clone(), &self.secret_namespace),
            key_secrets_only(),
            secret_w,
            notify.clone(),
            "secrets",
        );
        spawn_watch(
            Api::all(client.clone()),
            watcher::Config::default(),
            pe_w,
            notify.clone(),
            "podendpoints",
        );
        tokio::select! {
            r = async { tokio::try_join!(sgcs.wait_until_ready(), secrets.wait_until_ready(), pes.wait_until_ready()) } => {
                if r.is_err() { tracing::error!("watch caches closed before sync"); return; }
            }
            _ = shutdown.changed() => return,
        }
        tracing::info!("gateway caches synced");
        let mut retry = FIRST_RETRY;
        let mut skips = SkipLog::default();
        // Configurations with a `gateway_configuration_apply_failures_total` series: removed with them.
        let mut counted: BTreeSet<String> = BTreeSet::new();
        let mut last_success = LastSuccess::new(&self.settings.netns_name);
        loop {
            let sgc_list: Vec<StaticGatewayConfiguration> =
                sgcs.state().iter().map(|s| (**s).clone()).collect();
            forget_gone_configurations(&mut counted, &sgc_list, &self.metrics);
            let pe_list: Vec<PodEndpoint> = pes.state().iter().map(|s| (**s).clone()).collect();
            let sel = select(&self.settings, &sgc_list, &key_secrets(&secrets), &pe_list);
            skips.record(&sel.skipped, &self.metrics);
            let plan = gateway_plan(&sel.input);
            for w in &plan.warnings {
                tracing::warn!(warning = %w, "gateway plan");
            }
            let applier = self.applier.clone();
            let plan2 = plan.clone();
            let started = Instant::now();
            let res = tokio::task::spawn_blocking(move || applier.apply_plan(&plan2)).await;
            self.metrics
                .gateway_apply_duration
                .observe(started.elapsed().as_secs_f64());
            let mut next_wait = self.resync;
            let succeeded = matches!(res, Ok(Ok(_)));
            let applied = match res {
                Ok(Ok(report)) => {
                    // What the kernel now has: the plan without the links that could not be applied. Only
                    // those configurations are left out of the probe, the metrics and the GatewayStatus.
                    let plan = if report.failed.is_empty() {
                        plan
                    } else {
                        plan.without_links(&report.failed_links())
                    };
                    for f in &report.failed {
                        self.metrics.gateway_configuration_apply_failed(&f.configuration);
                        if !f.configuration.is_empty() {
                            counted.insert(f.configuration.clone());
                        }
                        tracing::error!(
                            configuration = %f.configuration,
                            link = %f.ifname,
                            error = %f,
                            "gateway link not applied (the other configurations are); retrying"
                        );
                    }
                    if report.failed.is_empty() {
                        self.metrics.gateway_applies.inc();
                        retry = FIRST_RETRY;
                    } else {
                        self.metrics.gateway_apply_failures.inc();
                        next_wait = back_off(&mut retry);
                    }
                    if !report.changes.is_empty() {
                        tracing::info!(changes = ?report.changes, elapsed_ms = started.elapsed().as_millis() as u64, "applied");
                    }
                    plan
                }
                Ok(Err(e)) => {
                    self.metrics.gateway_apply_failures.inc();
                    tracing::error!(error = %e, "gateway apply failed; retrying");
                    next_wait = back_off(&mut retry);
                    last_success.read_back(self.applier.clone(), plan).await
                }
                Err(e) => {
                    self.metrics.gateway_apply_failures.inc();
                    tracing::error!(error = %e, "gateway apply task failed");
                    next_wait = retry;
                    last_success.read_back(self.applier.clone(), plan).await
                }
            };
            // Whatever the outcome, the probe, the metrics and the GatewayStatus follow what the node has.
            self.publish(&sel.input, &applied, &status);
            if succeeded {
                self.ready.store(true, Ordering::Release);
                last_success.succeeded(&applied);
            }
            tokio::select! {
                _ = notify.notified() => {
                    // Collect the rest of the burst into this batch.
                    tokio::time::sleep(self.debounce).await;
                }
                _ = tokio::time::sleep(next_wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Hands what the node serves to the probe, the tunnel readers, the gauges and the GatewayStatus writer.
    fn publish(
        &self,
        input: &GatewayInput,
        serving: &GatewayPlan,
        status: &watch::Sender<Option<GatewayStatusSpec>>,
    ) {
        self.probe.set_active(active_uids(serving));
        self.tunnels.set(tunnel_links(serving));
        self.metrics
            .gateway_configurations
            .set(serving.links.len() as i64);
        self.metrics
            .gateway_peers
            .set(serving.links.values().map(|l| l.peers.len() as i64).sum());
        let applied = gateway_status(input, serving);
        status.send_if_modified(|desired| {
            let newer = desired.as_ref() != Some(&applied);
            if newer {
                *desired = Some(applied);
            }
            newer
        });
    }

    async fn write_status(&self, client: &Client, spec: &GatewayStatusSpec) -> Result<(), ClusterError> {
        let node = Api::<Node>::all(client.clone())
            .get(&self.node_name)
            .await
            .map_err(ClusterError::api(format!("get node {}", self.node_name)))?;
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.node_name.clone(),
            uid: node.metadata.uid.clone().unwrap_or_default(),
            ..Default::default()
        };
        let mut gs = GatewayStatus::new(&self.node_name, spec.clone());
        gs.metadata.namespace = Some(self.agent_namespace.clone());
        gs.metadata.owner_references = Some(vec![owner]);
        let id = NamespacedName::new(self.agent_namespace.clone(), self.node_name.clone());
        server_side_apply(client, &id, &gs).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use api::internal::GatewayConfigurationStatus;
    use kube::api::PostParams;
    use testbed::kube::{KubeSim, KubeSimConfig};
    use testbed::wait::{eventually, eventually_within};
    use tokio::sync::mpsc;

    use super::*;
    use crate::imds::NodeIdentity;

    /// Applies nothing and counts the applies: these tests are about the status write, not the kernel.
    #[derive(Debug, Default)]
    struct CountingApplier(AtomicUsize);

    impl PlanApplier for CountingApplier {
        fn apply_plan(&self, _: &GatewayPlan) -> Result<ApplyReport, ApplyError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(ApplyReport::default())
        }
        fn observe_gateway(&self) -> Result<ObservedGateway, ApplyError> {
            // Applies nothing: the node has nothing.
            Ok(ObservedGateway::default())
        }
    }

    /// Every apply fails as a whole; the gateway namespace cannot be read the first `unreadable` times, then
    /// it is exactly at `node` (what the failed applies did not touch).
    #[derive(Debug)]
    struct UnreadableAtFirst {
        unreadable: AtomicUsize,
        node: GatewayPlan,
    }

    impl PlanApplier for UnreadableAtFirst {
        fn apply_plan(&self, _: &GatewayPlan) -> Result<ApplyReport, ApplyError> {
            Err(ApplyError::Cmd(dataplane::netns::CmdError {
                cmd: "nft -f -".into(),
                msg: "Error: Could not process rule".into(),
            }))
        }
        fn observe_gateway(&self) -> Result<ObservedGateway, ApplyError> {
            let left = self.unreadable.load(Ordering::SeqCst);
            if left > 0 {
                self.unreadable.store(left - 1, Ordering::SeqCst);
                return Err(ApplyError::Cmd(dataplane::netns::CmdError {
                    cmd: "ip -j link show".into(),
                    msg: "Cannot open network namespace".into(),
                }));
            }
            Ok(ObservedGateway::at_plan(&self.node))
        }
    }

    #[tokio::test]
    async fn a_namespace_unreadable_once_then_readable_again_serves_again_within_the_failure_streak() {
        let key = dataplane::wg::PrivateKey::generate();
        let plan = gateway_plan(&GatewayInput {
            netns_name: "ns-static-egress-gateway".into(),
            primary_ip: std::net::Ipv4Addr::new(10, 0, 0, 4),
            frontend_ips: vec![std::net::Ipv4Addr::new(10, 0, 0, 100)],
            configs: vec![super::super::plan::ConfigInput {
                sgc: "app/egress".into(),
                uid: "uid-egress".into(),
                port: 6000,
                private_key: key,
                secondary_ip: std::net::Ipv4Addr::new(10, 0, 0, 6),
                peers: vec![],
            }],
        });
        let applier = Arc::new(UnreadableAtFirst {
            unreadable: AtomicUsize::new(1),
            node: plan.clone(),
        });
        let mut last = LastSuccess::new("ns-static-egress-gateway");
        last.succeeded(&plan);
        let first = last.read_back(applier.clone(), plan.clone()).await;
        assert!(first.links.is_empty(), "unreadable: nothing is served");
        let second = last.read_back(applier.clone(), plan.clone()).await;
        assert_eq!(second, plan, "readable again: what the node has is served again");
    }

    /// A gateway loop on the simulator whose Node does not exist (yet): the GatewayStatus is owned by its
    /// Node, so every write fails until the test creates it. Nothing the loop watches changes, and the
    /// resync is far longer than a test, so any second apply or write comes from the loop's own retries.
    struct NodelessGateway {
        _sim: KubeSim,
        client: Client,
        metrics: Arc<Metrics>,
        applier: Arc<CountingApplier>,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl NodelessGateway {
        const NODE: &str = "gw-node-1";

        async fn start() -> Self {
            let sim = KubeSim::start(KubeSimConfig::default())
                .await
                .expect("simulator starts");
            let client = sim.client("admin").expect("client");
            sim.install_crds().await.expect("CRDs install");
            let metrics = Arc::new(Metrics::default());
            let applier = Arc::new(CountingApplier::default());
            let lp = GatewayLoop {
                node_name: Self::NODE.into(),
                agent_namespace: "kube-system".into(),
                secret_namespace: "kube-system".into(),
                // No configuration exists, so which pool this node is in does not matter.
                settings: NodeSettings {
                    identity: NodeIdentity::default(),
                    netns_name: String::new(),
                },
                applier: applier.clone(),
                probe: ProbeState::default(),
                tunnels: Default::default(),
                metrics: metrics.clone(),
                ready: Arc::new(AtomicBool::new(false)),
                debounce: Duration::from_millis(50),
                resync: Duration::from_secs(3600),
            };
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(lp.run(client.clone(), stop_rx));
            NodelessGateway {
                _sim: sim,
                client,
                metrics,
                applier,
                stop,
                task,
            }
        }

        /// Failed writes counted as `not_found` (the missing Node).
        fn failures(&self) -> u64 {
            let text = self.metrics.encode();
            text.lines()
                .find_map(|l| l.strip_prefix("gateway_status_update_failures_total{reason=\"not_found\"} "))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        }

        fn applies(&self) -> usize {
            self.applier.0.load(Ordering::SeqCst)
        }

        async fn stop(self) {
            let _ = self.stop.send(true);
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("loop stops on shutdown")
                .expect("join");
        }
    }

    #[tokio::test]
    async fn a_failed_gateway_status_write_is_counted_by_reason_and_retried() {
        let gw = NodelessGateway::start().await;
        // A second failure means the write is retried by the loop itself.
        eventually(
            "the failed write is counted as not_found, and retried",
            || async { gw.failures() >= 2 },
        )
        .await;

        let node: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": NodelessGateway::NODE}}))
                .expect("node");
        Api::<Node>::all(gw.client.clone())
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
        let statuses: Api<GatewayStatus> = Api::namespaced(gw.client.clone(), "kube-system");
        eventually("the retry writes the GatewayStatus", || async {
            statuses
                .get_opt(NodelessGateway::NODE)
                .await
                .ok()
                .flatten()
                .is_some()
        })
        .await;
        let counted = gw.failures();
        assert!(counted >= 2, "{counted}");
        assert!(
            !gw.metrics
                .encode()
                .contains("gateway_status_update_failures_total{reason=\"unreachable\"}"),
            "only the missing Node failed the writes"
        );
        gw.stop().await;
    }

    #[tokio::test]
    async fn a_failed_gateway_status_write_is_retried_without_applying_again() {
        let gw = NodelessGateway::start().await;
        // By the second failure (1 s in) the applies of the start are over.
        eventually("the failed write is retried", || async { gw.failures() >= 2 }).await;
        let applies = gw.applies();
        assert!(applies >= 1, "the loop applied before it wrote a status");
        // Two more retries (2 s and 4 s later): a retry that re-ran the loop would apply each time.
        eventually_within("two more retries", Duration::from_secs(30), || async {
            gw.failures() >= 4
        })
        .await;
        assert_eq!(
            gw.applies(),
            applies,
            "a status write retry planned and applied the data plane again"
        );
        gw.stop().await;
    }

    fn status(configuration: &str) -> GatewayStatusSpec {
        GatewayStatusSpec {
            ready_gateway_configurations: vec![GatewayConfigurationStatus {
                static_gateway_configuration: configuration.into(),
                interface_name: "wg-6000".into(),
            }],
            ready_peer_configurations: vec![],
        }
    }

    /// [`keep_status_written`] with a writer that reports every attempt and fails the first `failing` ones
    /// (as a conflict).
    struct StatusWriter {
        desired: watch::Sender<Option<GatewayStatusSpec>>,
        attempts: mpsc::UnboundedReceiver<GatewayStatusSpec>,
        metrics: Arc<Metrics>,
        _stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl StatusWriter {
        fn start(first_retry: Duration, failing: usize) -> Self {
            let (desired, desired_rx) = watch::channel(None);
            let (stop, stop_rx) = watch::channel(false);
            let (attempt_tx, attempts) = mpsc::unbounded_channel();
            let metrics = Arc::new(Metrics::default());
            let failing = Arc::new(AtomicUsize::new(failing));
            let m = metrics.clone();
            let task = tokio::spawn(async move {
                let write = |spec: GatewayStatusSpec| {
                    let _ = attempt_tx.send(spec);
                    let fail = failing
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    let result = if fail {
                        Err(ClusterError::Conflicts {
                            what: "apply GatewayStatus".into(),
                            attempts: 1,
                        })
                    } else {
                        Ok(())
                    };
                    std::future::ready(result)
                };
                keep_status_written(desired_rx, stop_rx, &m, first_retry, write).await
            });
            StatusWriter {
                desired,
                attempts,
                metrics,
                _stop: stop,
                task,
            }
        }

        async fn next_attempt(&mut self) -> GatewayStatusSpec {
            tokio::time::timeout(Duration::from_secs(10), self.attempts.recv())
                .await
                .expect("a write is attempted")
                .expect("writer alive")
        }

        /// Ends the writer (the apply loop is gone) and returns the attempts not taken yet.
        async fn finish(mut self) -> (Vec<GatewayStatusSpec>, String) {
            drop(self.desired);
            self.task.await.expect("writer ends with its sender");
            let mut rest = vec![];
            while let Ok(s) = self.attempts.try_recv() {
                rest.push(s);
            }
            (rest, self.metrics.encode())
        }
    }

    #[tokio::test]
    async fn a_failed_status_write_is_retried_on_its_own_until_it_succeeds_and_not_again() {
        let mut w = StatusWriter::start(Duration::from_millis(10), 2);
        w.desired.send_replace(Some(status("demo/a")));
        for _ in 0..3 {
            assert_eq!(w.next_attempt().await, status("demo/a"));
        }
        // The same status again (a resync's apply) is not written again once written.
        w.desired.send_replace(Some(status("demo/a")));
        let (rest, metrics) = w.finish().await;
        assert_eq!(rest, vec![], "written once, so no further attempt");
        assert!(
            metrics.contains("gateway_status_update_failures_total{reason=\"conflict\"} 2"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn a_newer_status_supersedes_the_one_being_retried() {
        // The retry timer is far longer than the test: only a newer status can cause the next attempt.
        let mut w = StatusWriter::start(Duration::from_secs(3600), 2);
        w.desired.send_replace(Some(status("demo/a")));
        assert_eq!(w.next_attempt().await, status("demo/a"));
        w.desired.send_replace(Some(status("demo/b")));
        assert_eq!(w.next_attempt().await, status("demo/b"), "written at once");
        w.desired.send_replace(Some(status("demo/c")));
        assert_eq!(w.next_attempt().await, status("demo/c"));
        let (rest, metrics) = w.finish().await;
        assert_eq!(rest, vec![], "the superseded statuses are never retried");
        assert!(
            metrics.contains("gateway_status_update_failures_total{reason=\"conflict\"} 2"),
            "{metrics}"
        );
    }

    fn skipped(configuration: &str, reason: &'static str) -> Skipped {
        Skipped {
            configuration: configuration.into(),
            reason,
            message: format!("{configuration}: {reason}"),
        }
    }

    #[test]
    fn skipped_configurations_are_warned_about_once_per_change_and_exposed_by_reason() {
        let metrics = Metrics::default();
        let mut log = SkipLog::default();
        let key = |c: &str, r: &'static str| (c.to_string(), r);
        let first = vec![
            skipped("demo/a", "key_secret_missing"),
            skipped("demo/b", "invalid_pod_ip"),
            skipped("demo/b", "invalid_pod_ip"),
        ];
        assert_eq!(
            log.record(&first, &metrics),
            vec![
                key("demo/a", "key_secret_missing"),
                key("demo/b", "invalid_pod_ip")
            ]
        );
        let text = metrics.encode();
        for line in [
            "gateway_configurations_skipped{configuration=\"demo/a\",reason=\"key_secret_missing\"} 1",
            "gateway_configurations_skipped{configuration=\"demo/b\",reason=\"invalid_pod_ip\"} 2",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(
            log.record(&first, &metrics),
            vec![],
            "the same skips again: no new warning"
        );
        // a's Secret now exists but holds no valid key: a new reason, warned once; b is fixed.
        let second = vec![skipped("demo/a", "key_secret_invalid")];
        assert_eq!(
            log.record(&second, &metrics),
            vec![key("demo/a", "key_secret_invalid")]
        );
        let text = metrics.encode();
        assert!(
            text.contains(
                "gateway_configurations_skipped{configuration=\"demo/a\",reason=\"key_secret_invalid\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("key_secret_missing"), "{text}");
        assert!(!text.contains("demo/b"), "{text}");
    }
}
