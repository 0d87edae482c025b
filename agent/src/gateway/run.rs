//! Gateway mode's control loop: watch configurations, their key Secrets and PodEndpoints; on any change
//! (including deletions) wait a short debounce so a burst of pod events becomes one batch, then rebuild the
//! plan from the caches and apply it. Deleted PodEndpoints disappear from the cache at once, so their
//! peers are removed by the next apply (within the debounce), not by a periodic sweep.

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
use super::plan::{GatewayPlan, gateway_plan};
use super::probe::ProbeState;
use super::select::{KeySecrets, NodeSettings, active_uids, gateway_status, select};
use super::tunnels::{TunnelLink, TunnelView};
use crate::error::ClusterError;
use crate::metrics::Metrics;
use crate::node::kube_cluster::server_side_apply;

/// Something that makes a plan real: the kernel applier in production, a recorder in tests of the watch
/// wiring (which need no root).
pub trait PlanApplier: std::fmt::Debug + Send + Sync + 'static {
    /// Applies `plan`.
    fn apply_plan(&self, plan: &GatewayPlan) -> Result<ApplyReport, ApplyError>;
}

impl PlanApplier for GatewayApplier {
    fn apply_plan(&self, plan: &GatewayPlan) -> Result<ApplyReport, ApplyError> {
        self.apply(plan)
    }
}

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

fn spawn_watch<K>(api: Api<K>, writer: reflector::store::Writer<K>, notify: Arc<Notify>, what: &'static str)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        reflector::reflector(writer, watcher(api, watcher::Config::default()))
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

/// The applied links with the configuration each serves.
fn tunnel_links(input: &super::plan::GatewayInput, plan: &GatewayPlan) -> Vec<TunnelLink> {
    plan.links
        .values()
        .map(|l| TunnelLink {
            ifname: l.ifname.clone(),
            control_name: l.control_name.clone(),
            configuration: input
                .configs
                .iter()
                .find(|c| c.port == l.port)
                .map(|c| c.sgc.clone())
                .unwrap_or_else(|| l.uid.clone()),
            port: l.port,
        })
        .collect()
}

fn key_secrets(store: &Store<Secret>) -> KeySecrets {
    store
        .state()
        .iter()
        .filter_map(|s| {
            let key = s.data.as_ref()?.get(api::names::SECRET_PRIVATE_KEY)?;
            let text = String::from_utf8(key.0.clone()).ok()?;
            Some(((s.metadata.namespace.clone()?, s.metadata.name.clone()?), text))
        })
        .collect()
}

impl GatewayLoop {
    /// Runs until `shutdown` becomes true.
    pub async fn run(self, client: Client, mut shutdown: watch::Receiver<bool>) {
        let notify = Arc::new(Notify::new());
        let (sgcs, sgc_w) = reflector::store::<StaticGatewayConfiguration>();
        let (secrets, secret_w) = reflector::store::<Secret>();
        let (pes, pe_w) = reflector::store::<PodEndpoint>();
        spawn_watch(
            Api::all(client.clone()),
            sgc_w,
            notify.clone(),
            "staticgatewayconfigurations",
        );
        spawn_watch(
            Api::namespaced(client.clone(), &self.secret_namespace),
            secret_w,
            notify.clone(),
            "secrets",
        );
        spawn_watch(Api::all(client.clone()), pe_w, notify.clone(), "podendpoints");
        tokio::select! {
            r = async { tokio::try_join!(sgcs.wait_until_ready(), secrets.wait_until_ready(), pes.wait_until_ready()) } => {
                if r.is_err() { tracing::error!("watch caches closed before sync"); return; }
            }
            _ = shutdown.changed() => return,
        }
        tracing::info!("gateway caches synced");
        let mut last_status: Option<GatewayStatusSpec> = None;
        let mut retry = Duration::from_secs(1);
        loop {
            let sgc_list: Vec<StaticGatewayConfiguration> =
                sgcs.state().iter().map(|s| (**s).clone()).collect();
            let pe_list: Vec<PodEndpoint> = pes.state().iter().map(|s| (**s).clone()).collect();
            let sel = select(&self.settings, &sgc_list, &key_secrets(&secrets), &pe_list);
            for s in &sel.skipped {
                tracing::debug!(reason = %s, "skipped");
            }
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
            match res {
                Ok(Ok(report)) => {
                    self.metrics.gateway_applies.inc();
                    self.probe.set_active(active_uids(&plan));
                    self.tunnels.set(tunnel_links(&sel.input, &plan));
                    self.metrics.gateway_configurations.set(plan.links.len() as i64);
                    self.metrics
                        .gateway_peers
                        .set(plan.links.values().map(|l| l.peers.len() as i64).sum());
                    if !report.changes.is_empty() {
                        tracing::info!(changes = ?report.changes, elapsed_ms = started.elapsed().as_millis() as u64, "applied");
                    }
                    self.ready.store(true, Ordering::Release);
                    let status = gateway_status(&sel.input, &plan);
                    let written = if last_status.as_ref() == Some(&status) {
                        Ok(())
                    } else {
                        self.write_status(&client, &status).await
                    };
                    match written {
                        Ok(()) => {
                            last_status = Some(status);
                            retry = Duration::from_secs(1);
                        }
                        Err(e) => {
                            self.metrics.gateway_status_update_failed(e.reason());
                            tracing::warn!(error = %e, reason = e.reason(), "GatewayStatus update failed; retrying");
                            // Retried with backoff: waiting for the next event or the resync would leave the
                            // operator's view of this gateway stale that long.
                            next_wait = back_off(&mut retry);
                        }
                    }
                }
                Ok(Err(e)) => {
                    self.metrics.gateway_apply_failures.inc();
                    tracing::error!(error = %e, "gateway apply failed; retrying");
                    next_wait = back_off(&mut retry);
                }
                Err(e) => {
                    self.metrics.gateway_apply_failures.inc();
                    tracing::error!(error = %e, "gateway apply task failed");
                    next_wait = retry;
                }
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
        server_side_apply(client, &self.agent_namespace, &self.node_name, &gs).await
    }
}

#[cfg(test)]
mod tests {
    use kube::api::PostParams;
    use testbed::kube::{KubeSim, KubeSimConfig};
    use testbed::wait::eventually;

    use super::*;
    use crate::imds::NodeIdentity;

    /// Applies nothing: this test is about the status write, not the kernel.
    #[derive(Debug)]
    struct NoKernel;

    impl PlanApplier for NoKernel {
        fn apply_plan(&self, _: &GatewayPlan) -> Result<ApplyReport, ApplyError> {
            Ok(ApplyReport::default())
        }
    }

    #[tokio::test]
    async fn a_failed_gateway_status_write_is_counted_by_reason_and_retried() {
        let sim = KubeSim::start(KubeSimConfig::default())
            .await
            .expect("simulator starts");
        let client = sim.client("admin").expect("client");
        sim.install_crds().await.expect("CRDs install");
        let metrics = Arc::new(Metrics::default());
        let lp = GatewayLoop {
            node_name: "gw-node-1".into(),
            agent_namespace: "kube-system".into(),
            secret_namespace: "kube-system".into(),
            // No configuration exists, so which pool this node is in does not matter.
            settings: NodeSettings {
                identity: NodeIdentity::default(),
                netns_name: String::new(),
            },
            applier: Arc::new(NoKernel),
            probe: ProbeState::default(),
            tunnels: Default::default(),
            metrics: metrics.clone(),
            ready: Arc::new(AtomicBool::new(false)),
            debounce: Duration::from_millis(50),
            // Far longer than the test: only the loop's own retry can write the status once the Node exists.
            resync: Duration::from_secs(3600),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(lp.run(client.clone(), stop_rx));

        // The GatewayStatus is owned by its Node; while the Node does not exist the write fails. Nothing the
        // loop watches changes after its first passes, so a second failure means the write is retried by the
        // loop itself.
        let failures = || {
            let text = metrics.encode();
            text.lines()
                .find_map(|l| l.strip_prefix("gateway_status_update_failures_total{reason=\"not_found\"} "))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        eventually(
            "the failed write is counted as not_found, and retried",
            || async { failures() >= 2 },
        )
        .await;

        let node: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "gw-node-1"}})).expect("node");
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
        let statuses: Api<GatewayStatus> = Api::namespaced(client.clone(), "kube-system");
        eventually("the retry writes the GatewayStatus", || async {
            statuses.get_opt("gw-node-1").await.ok().flatten().is_some()
        })
        .await;
        let counted = failures();
        assert!(counted >= 2, "{counted}");
        assert!(
            !metrics
                .encode()
                .contains("gateway_status_update_failures_total{reason=\"unreachable\"}"),
            "only the missing Node failed the writes"
        );
        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("loop stops on shutdown")
            .expect("join");
    }
}
