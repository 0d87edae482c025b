//! The running operator: watches, the per-pool work loop, leader gating.

use api::cache::strip_managed_fields;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use api::{GatewayPool, PoolKey, PoolRef, StaticGatewayConfiguration};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::leader::LeaseLock;
use crate::pass::{Inputs, Operator, RESYNC_INTERVAL};

/// How soon a converging pool is looked at again.
pub const CONVERGING_RECHECK: Duration = Duration::from_secs(10);

/// The work loop's timers. `Default` is what the binary runs with; tests and benchmarks shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Every pool is re-read this often to repair drift.
    pub resync: Duration,
    /// A converging pool is looked at again this soon.
    pub converging_recheck: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            resync: RESYNC_INTERVAL,
            converging_recheck: CONVERGING_RECHECK,
        }
    }
}

/// What needs a reconcile: some pools, or all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// One pool, by key.
    Pool(PoolKey),
    /// Every pool (a configuration naming no pool, a watch re-listed).
    All,
}

/// What a watched object means to the work loop: a fingerprint of the fields the operator reads (a change
/// of anything else triggers nothing) and the pools it concerns (`None`: it cannot tell, every pool).
type Relevance<F> = (F, Option<BTreeSet<PoolKey>>);

/// How a watch tells what an object means to the work loop.
type RelevanceFn<K, F> = Box<dyn Fn(&K) -> Relevance<F> + Send>;

/// Turns a watch's events into triggers: an object whose fingerprint changed (or that appeared or went away)
/// triggers the pools it concerned before and concerns now. Re-lists (after a watch expired) are compared
/// with what was known, so what changed while the watch was down triggers too. The first list triggers
/// nothing: the work loop's first pass, after every cache is filled, covers every pool.
struct Tracker<K, F> {
    relevance: RelevanceFn<K, F>,
    known: BTreeMap<String, Relevance<F>>,
    relisted: Option<BTreeMap<String, Relevance<F>>>,
    synced: bool,
}

impl<K: kube::Resource, F: PartialEq> Tracker<K, F> {
    fn new(relevance: impl Fn(&K) -> Relevance<F> + Send + 'static) -> Self {
        Tracker {
            relevance: Box::new(relevance),
            known: BTreeMap::new(),
            relisted: None,
            synced: false,
        }
    }

    fn key(o: &K) -> String {
        // The UID tells a re-created object from the old one; the name keeps objects without one apart.
        let m = o.meta();
        format!(
            "{}/{}/{}",
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
            m.uid.as_deref().unwrap_or_default()
        )
    }

    /// The triggers one watch event calls for.
    fn on(&mut self, ev: &watcher::Event<K>) -> Vec<Trigger> {
        let mut out = Triggers::default();
        match ev {
            watcher::Event::Apply(o) => {
                let now = (self.relevance)(o);
                match self.known.get(&Self::key(o)) {
                    Some(before) if before.0 == now.0 && before.1 == now.1 => {}
                    before => {
                        out.add(before.and_then(|b| b.1.as_ref()).cloned(), before.is_some());
                        out.add(now.1.clone(), true);
                    }
                }
                self.known.insert(Self::key(o), now);
            }
            watcher::Event::Delete(o) => {
                // The pools it concerned when last seen, and the pools it concerns as the caches are now: a
                // relevance that reads another watch's cache (a key Secret's configuration) may have been
                // taken before that watch caught up, when it concerned no pool it could tell.
                if let Some(before) = self.known.remove(&Self::key(o)) {
                    out.add(before.1, true);
                }
                out.add((self.relevance)(o).1, true);
            }
            watcher::Event::Init => self.relisted = Some(BTreeMap::new()),
            watcher::Event::InitApply(o) => {
                let now = (self.relevance)(o);
                self.relisted
                    .get_or_insert_with(BTreeMap::new)
                    .insert(Self::key(o), now);
            }
            watcher::Event::InitDone if !self.synced => {
                self.known = self.relisted.take().unwrap_or_default();
                self.synced = true;
            }
            watcher::Event::InitDone => {
                let fresh = self.relisted.take().unwrap_or_default();
                for (k, before) in &self.known {
                    match fresh.get(k) {
                        Some(now) if now.0 == before.0 && now.1 == before.1 => {}
                        Some(now) => {
                            out.add(before.1.clone(), true);
                            out.add(now.1.clone(), true);
                        }
                        None => out.add(before.1.clone(), true),
                    }
                }
                for (k, now) in &fresh {
                    if !self.known.contains_key(k) {
                        out.add(now.1.clone(), true);
                    }
                }
                self.known = fresh;
            }
        }
        out.into_triggers()
    }
}

/// Triggers being collected: pool keys, or every pool.
#[derive(Default)]
struct Triggers {
    pools: BTreeSet<PoolKey>,
    all: bool,
}

impl Triggers {
    /// The pools an object concerns; `None` (cannot tell) means every pool, unless `counts` is false.
    fn add(&mut self, pools: Option<BTreeSet<PoolKey>>, counts: bool) {
        match pools {
            Some(p) => self.pools.extend(p),
            None if counts => self.all = true,
            None => {}
        }
    }

    fn into_triggers(self) -> Vec<Trigger> {
        if self.all {
            vec![Trigger::All]
        } else {
            self.pools.into_iter().map(Trigger::Pool).collect()
        }
    }
}

/// A configuration concerns the pool it names (`None`: it names none, which every pass reports). Any change
/// counts (spec, metadata, status): the pass compares the status it would write with the one stored.
fn sgc_relevance(s: &StaticGatewayConfiguration) -> Relevance<Option<String>> {
    (
        s.metadata.resource_version.clone(),
        s.spec.pool_ref().map(|r| BTreeSet::from([r.key()])),
    )
}

/// A GatewayPool concerns the node pool it declares. Any change counts, as for configurations.
fn gateway_pool_relevance(p: &GatewayPool) -> Relevance<Option<String>> {
    (
        p.metadata.resource_version.clone(),
        Some(p.spec.pool_ref().map(|r| r.key()).into_iter().collect()),
    )
}

/// What a pass reads of a Node: whether it is a gateway node, and what ties it to a pool (the agent pool
/// label, `spec.providerID`, also what names it in a GatewayPool's status). Status (conditions, heartbeats,
/// addresses), other labels, annotations, taints, `unschedulable` and the resourceVersion are not read, so
/// their changes trigger nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Gateway node (AKS gateway mode or the self-managed label).
    pub gateway: bool,
    /// `kubernetes.azure.com/agentpool`.
    pub agentpool: Option<String>,
    /// `spec.providerID`.
    pub provider_id: Option<String>,
}

/// A gateway Node concerns the pool named by its agent pool label and the scale set its providerID names;
/// other Nodes concern no pool. A gateway Node with neither concerns every pool (it may still match one).
pub fn node_relevance(n: &Node) -> Relevance<NodeFacts> {
    let empty = BTreeMap::new();
    let labels = n.metadata.labels.as_ref().unwrap_or(&empty);
    let facts = NodeFacts {
        gateway: api::pool_ref::is_gateway_node(labels),
        agentpool: labels.get(api::names::NODE_AGENTPOOL_LABEL).cloned(),
        provider_id: n.spec.as_ref().and_then(|s| s.provider_id.clone()),
    };
    if !facts.gateway {
        return (facts, Some(BTreeSet::new()));
    }
    let mut pools = BTreeSet::new();
    if let Some(np) = &facts.agentpool {
        pools.insert(PoolRef::Nodepool(np.clone()).key());
    }
    if let Some((rg, vmss)) = facts
        .provider_id
        .as_deref()
        .and_then(api::pool_ref::vmss_of_provider_id)
    {
        pools.insert(
            PoolRef::Vmss {
                resource_group: rg.to_string(),
                name: vmss.to_string(),
            }
            .key(),
        );
    }
    let pools = (!pools.is_empty()).then_some(pools);
    (facts, pools)
}

/// Keeps a watch cache (`writer`) and forwards its relevant changes as triggers until the channel closes.
/// The store is updated before the event is looked at, so the pass it triggers sees the change.
async fn watch_into<K, F>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    strip: fn(&mut K),
    relevance: impl Fn(&K) -> Relevance<F> + Send + 'static,
    tx: mpsc::UnboundedSender<Trigger>,
    what: &'static str,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: PartialEq,
{
    let mut tracker = Tracker::new(relevance);
    let stream = watcher(api, config)
        .default_backoff()
        .modify(strip)
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, kind = what, "watch error");
                continue;
            }
        };
        for t in tracker.on(&ev) {
            if tx.send(t).is_err() {
                return;
            }
        }
    }
}

/// Nodes are kept without status (never read; conditions and images are most of a Node).
fn strip_node(n: &mut Node) {
    strip_managed_fields(n);
    n.status = None;
}

/// A key Secret concerns the pool of the configuration its owner labels name (as the cache of configurations
/// has it). Any change counts: a deleted Secret is a key rotation, a changed one may need repair.
fn key_secret_relevance(
    sgcs: Store<StaticGatewayConfiguration>,
) -> impl Fn(&Secret) -> Relevance<Option<String>> + Send + 'static {
    move |secret: &Secret| {
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        let owner = match (
            labels.get(api::names::SECRET_OWNER_NAMESPACE_LABEL),
            labels.get(api::names::SECRET_OWNER_NAME_LABEL),
        ) {
            (Some(ns), Some(name)) => sgcs.get(&ObjectRef::new(name).within(ns)),
            _ => None,
        };
        (
            secret.metadata.resource_version.clone(),
            Some(
                owner
                    .and_then(|s| s.spec.pool_ref())
                    .map(|r| r.key())
                    .into_iter()
                    .collect(),
            ),
        )
    }
}

/// The watch caches a pass reads.
#[derive(Clone)]
struct Caches {
    sgcs: Store<StaticGatewayConfiguration>,
    pools: Store<GatewayPool>,
    nodes: Store<Node>,
    key_secrets: Store<Secret>,
}

impl Caches {
    fn inputs(&self) -> Inputs {
        Inputs {
            sgcs: self.sgcs.state(),
            pools: self.pools.state(),
            nodes: self.nodes.state(),
            key_secrets: Some(self.key_secrets.clone()),
        }
    }

    async fn wait_until_ready(&self) -> bool {
        self.sgcs.wait_until_ready().await.is_ok()
            && self.pools.wait_until_ready().await.is_ok()
            && self.nodes.wait_until_ready().await.is_ok()
            && self.key_secrets.wait_until_ready().await.is_ok()
    }
}

/// Runs the work loop until `shutdown`: batches triggers (so that configurations created together are
/// reconciled together), reconciles only while leading, re-checks converging pools, retries failed pools with
/// backoff, and resyncs every pool every five minutes.
pub async fn run_operator(
    op: Arc<Operator>,
    leading: watch::Receiver<bool>,
    ready: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
) {
    run_operator_with(op, leading, ready, shutdown, RunOptions::default()).await;
}

/// [`run_operator`] with other timers.
pub async fn run_operator_with(
    op: Arc<Operator>,
    leading: watch::Receiver<bool>,
    ready: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
    options: RunOptions,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = op.kube.client.clone();
    let (sgcs, sgcs_w) = reflector::store();
    let (pools, pools_w) = reflector::store();
    let (nodes, nodes_w) = reflector::store();
    let (key_secrets, key_secrets_w) = reflector::store();
    let caches = Caches {
        sgcs,
        pools,
        nodes,
        key_secrets,
    };
    let all = watcher::Config::default;
    let watches = [
        tokio::spawn(watch_into(
            Api::<StaticGatewayConfiguration>::all(client.clone()),
            all(),
            sgcs_w,
            strip_managed_fields,
            sgc_relevance,
            tx.clone(),
            "StaticGatewayConfiguration",
        )),
        tokio::spawn(watch_into(
            Api::<GatewayPool>::all(client.clone()),
            all(),
            pools_w,
            strip_managed_fields,
            gateway_pool_relevance,
            tx.clone(),
            "GatewayPool",
        )),
        tokio::spawn(watch_into(
            Api::<Node>::all(client.clone()),
            all(),
            nodes_w,
            strip_node,
            node_relevance,
            tx.clone(),
            "Node",
        )),
        // Key Secrets only: those labelled with their configuration, in the operator's Secret namespace.
        tokio::spawn(watch_into(
            Api::<Secret>::namespaced(client, &op.kube.secret_namespace),
            all().labels(api::names::SECRET_OWNER_NAME_LABEL),
            key_secrets_w,
            strip_managed_fields,
            key_secret_relevance(caches.sgcs.clone()),
            tx.clone(),
            "Secret",
        )),
    ];
    // Passes read the caches, so none runs before all three are filled.
    let synced = tokio::select! {
        ok = caches.wait_until_ready() => ok,
        _ = shutdown.changed() => false,
    };
    if synced {
        ready.store(true, Ordering::Relaxed);
        work_loop(&op, &caches, leading, &mut rx, shutdown, options).await;
    }
    ready.store(false, Ordering::Relaxed);
    for w in watches {
        w.abort();
    }
}

/// Runs the operator's work loop, leading through `lock` when given (else always leading), until `stop`; then
/// ends in order. The work loop finishes the pool it is on and stops (at most `grace`, then it is cut off);
/// only then is the Lease released, so a replica that takes over never writes while this one still does.
/// An error: the work loop or the elector ended before `stop` (they should not), or leadership was lost (the
/// work loop is then cut off at once).
pub async fn run_until(
    op: Arc<Operator>,
    lock: Option<LeaseLock>,
    ready: Arc<AtomicBool>,
    options: RunOptions,
    grace: Duration,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (leading_tx, leading) = watch::channel(lock.is_none());
    let (stop_loop, loop_stopping) = watch::channel(false);
    let (stop_elector, elector_stopping) = watch::channel(false);
    // Without an elector the sender stays here: the work loop takes a closed channel for a change.
    let (mut elector, _always_leading) = match lock {
        Some(lock) => {
            let elector = tokio::spawn(async move { lock.run(leading_tx, elector_stopping).await });
            (Some(elector), None)
        }
        None => (None, Some(leading_tx)),
    };
    let elector_ended = async {
        match elector.as_mut() {
            Some(e) => e.await,
            None => std::future::pending().await,
        }
    };
    // Leadership once held and then lost (not renewed in time, or taken over).
    let mut leadership = leading.clone();
    let lost = async move {
        if leadership.wait_for(|l| *l).await.is_err() || leadership.wait_for(|l| !*l).await.is_err() {
            // The elector is gone: the branch below tells.
            std::future::pending::<()>().await;
        }
    };
    let mut work = tokio::spawn(run_operator_with(op, leading, ready, loop_stopping, options));
    // Why the operator stops before a signal: the work loop or the elector ended (a panic, or a bug). A dead
    // elector leaves the last leadership value standing while the Lease expires: stop rather than write beside
    // the replica that takes over. Lost leadership stops it too, as controller-runtime's "leader election lost"
    // does: the pool under way is cut off at once (another replica may take over a third of a lease duration
    // later), and the restarted process is a candidate again.
    let mut leadership_lost = false;
    let ended_early = tokio::select! {
        _ = stop => None,
        () = lost => {
            leadership_lost = true;
            Some("leadership lost: the Lease was not renewed in time or another replica holds it".to_string())
        }
        r = &mut work => Some(match r {
            Ok(()) => "the work loop ended on its own".to_string(),
            Err(e) => format!("the work loop failed: {e}"),
        }),
        r = elector_ended => Some(match r {
            Ok(()) => "leader election ended on its own".to_string(),
            Err(e) => format!("leader election failed: {e}"),
        }),
    };
    stop_loop.send_replace(true);
    if leadership_lost {
        work.abort();
        let _ = (&mut work).await;
    } else if !work.is_finished() && tokio::time::timeout(grace, &mut work).await.is_err() {
        tracing::warn!(
            grace_seconds = grace.as_secs_f64(),
            "the work loop did not stop within the grace period; cut off"
        );
        work.abort();
        // Gone before the Lease is released: abort only asks, a poll under way on another thread finishes.
        let _ = (&mut work).await;
    }
    stop_elector.send_replace(true);
    if let Some(elector) = elector.filter(|e| !e.is_finished()) {
        // Releasing is one write; an API server that does not answer must not hold the pod past its grace
        // (the Lease then expires instead).
        if tokio::time::timeout(LEASE_RELEASE_LIMIT, elector).await.is_err() {
            tracing::warn!("the Lease was not released in time; it expires instead");
        }
    }
    match ended_early {
        Some(why) => anyhow::bail!(why),
        None => Ok(()),
    }
}

/// How long shutdown waits for the Lease's release after the work loop stopped (the chart leaves 5 s).
const LEASE_RELEASE_LIMIT: Duration = Duration::from_secs(3);

/// When pools are to be looked at again: converging ones soon, failed ones after their backoff.
#[derive(Default)]
struct Schedule {
    due: BTreeMap<PoolKey, Instant>,
    all_due: Option<Instant>,
    /// The current backoff of each failing pool, and of failures outside pools.
    backoff: BTreeMap<PoolKey, Duration>,
    all_backoff: Option<Duration>,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl Schedule {
    fn next(&self) -> Option<Instant> {
        self.due.values().chain(self.all_due.iter()).min().copied()
    }

    /// Moves what is due into `pending` / `all`.
    fn fire(&mut self, now: Instant, pending: &mut BTreeSet<PoolKey>, all: &mut bool) {
        let (ready, later): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.due)
            .into_iter()
            .partition(|(_, at)| *at <= now);
        self.due = later;
        pending.extend(ready.into_keys());
        if self.all_due.is_some_and(|at| at <= now) {
            self.all_due = None;
            *all = true;
        }
    }

    /// Sets `key` due at `at` unless it is due earlier already.
    fn at(&mut self, key: PoolKey, at: Instant) {
        let e = self.due.entry(key).or_insert(at);
        *e = (*e).min(at);
    }

    fn next_backoff(current: Option<Duration>) -> Duration {
        current.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF))
    }
}

async fn work_loop(
    op: &Operator,
    caches: &Caches,
    mut leading: watch::Receiver<bool>,
    rx: &mut mpsc::UnboundedReceiver<Trigger>,
    mut shutdown: watch::Receiver<bool>,
    options: RunOptions,
) {
    let mut resync = tokio::time::interval(options.resync);
    let mut pending: BTreeSet<PoolKey> = BTreeSet::new();
    let mut all = false;
    let mut schedule = Schedule::default();
    loop {
        let next = schedule.next();
        tokio::select! {
            t = rx.recv() => match t {
                Some(Trigger::Pool(k)) => { pending.insert(k); }
                Some(Trigger::All) => all = true,
                None => break,
            },
            _ = resync.tick() => all = true,
            _ = leading.changed() => all = true,
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                schedule.fire(Instant::now(), &mut pending, &mut all);
            }
            _ = shutdown.changed() => break,
        }
        // Batch: whatever else arrives within a short window joins this pass.
        let window = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(window);
        loop {
            tokio::select! {
                t = rx.recv() => match t {
                    Some(Trigger::Pool(k)) => { pending.insert(k); }
                    Some(Trigger::All) => all = true,
                    None => break,
                },
                _ = &mut window => break,
            }
        }
        if !*leading.borrow() || (!all && pending.is_empty()) {
            continue;
        }
        let only = (!all).then(|| std::mem::take(&mut pending));
        // What this pass covers is not due separately any more.
        match &only {
            None => {
                pending.clear();
                schedule.due.clear();
                schedule.all_due = None;
            }
            Some(keys) => schedule.due.retain(|k, _| !keys.contains(k)),
        }
        all = false;
        // A pass starts no pool once leadership is lost or the operator is stopping (the pool under way ends).
        let proceed = || *leading.borrow() && !*shutdown.borrow();
        let out = op.pass_while(&caches.inputs(), only.as_ref(), &proceed).await;
        let now = Instant::now();
        for k in op.take_converging() {
            schedule.at(k, now + options.converging_recheck);
        }
        for k in out.reconciled.difference(&out.failed) {
            schedule.backoff.remove(k);
        }
        for k in &out.failed {
            let b = Schedule::next_backoff(schedule.backoff.get(k).copied());
            schedule.backoff.insert(k.clone(), b);
            schedule.at(k.clone(), now + b);
        }
        if only.is_none() {
            // Pools that are gone keep no backoff.
            schedule.backoff.retain(|k, _| out.reconciled.contains(k));
        }
        if out.failed_outside_pools {
            let b = Schedule::next_backoff(schedule.all_backoff);
            schedule.all_backoff = Some(b);
            schedule.all_due = Some(now + b);
        } else if only.is_none() {
            schedule.all_backoff = None;
        }
        if let Some(e) = out.error {
            tracing::warn!(error = %e, failed = ?out.failed, "reconcile failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, uid: &str, labels: serde_json::Value, provider_id: Option<&str>, rv: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": uid, "labels": labels, "resourceVersion": rv},
            "spec": {"providerID": provider_id},
            "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": format!("2026-01-01T00:00:{rv:0>2}Z")}]}
        }))
        .expect("node")
    }

    fn gateway(pool: &str) -> serde_json::Value {
        json!({"kubernetes.azure.com/agentpool": pool, "kubernetes.azure.com/mode": "gateway"})
    }

    /// Triggers for `nodepool/<name>` and `vmss/<group>/<name>`.
    fn pools(keys: &[&str]) -> Vec<Trigger> {
        keys.iter()
            .map(|k| {
                let r = match k.split('/').collect::<Vec<_>>().as_slice() {
                    ["nodepool", name] => PoolRef::Nodepool((*name).into()),
                    ["vmss", rg, name] => PoolRef::Vmss {
                        resource_group: (*rg).into(),
                        name: (*name).into(),
                    },
                    _ => panic!("not a pool key: {k}"),
                };
                Trigger::Pool(r.key())
            })
            .collect()
    }

    /// A tracker that has seen its first list (`nodes`).
    fn synced(nodes: &[Node]) -> Tracker<Node, NodeFacts> {
        let mut t = Tracker::new(node_relevance);
        t.on(&watcher::Event::Init);
        for n in nodes {
            t.on(&watcher::Event::InitApply(n.clone()));
        }
        assert!(
            t.on(&watcher::Event::InitDone).is_empty(),
            "the first list triggers nothing: the first pass is a full one"
        );
        t
    }

    #[test]
    fn node_heartbeats_and_unread_fields_trigger_nothing() {
        let a = node("a", "u-a", gateway("gw"), None, "1");
        let mut t = synced(std::slice::from_ref(&a));
        // Heartbeat: status and resourceVersion change.
        assert!(
            t.on(&watcher::Event::Apply(node("a", "u-a", gateway("gw"), None, "2")))
                .is_empty()
        );
        // A label the operator does not read.
        let mut labels = gateway("gw");
        labels["topology.kubernetes.io/zone"] = json!("1");
        assert!(
            t.on(&watcher::Event::Apply(node("a", "u-a", labels, None, "3")))
                .is_empty()
        );
        // Non-gateway nodes concern no pool, whatever changes.
        let user = json!({"kubernetes.azure.com/agentpool": "user"});
        assert!(
            t.on(&watcher::Event::Apply(node("u", "u-u", user.clone(), None, "4")))
                .is_empty()
        );
        assert!(
            t.on(&watcher::Event::Delete(node("u", "u-u", user, None, "5")))
                .is_empty()
        );
    }

    #[test]
    fn node_changes_that_matter_trigger_the_pools_concerned() {
        let a = node("a", "u-a", gateway("gw"), None, "1");
        let mut t = synced(std::slice::from_ref(&a));
        // Joining: its pool only.
        assert_eq!(
            t.on(&watcher::Event::Apply(node(
                "b",
                "u-b",
                gateway("GW2"),
                None,
                "2"
            ))),
            pools(&["nodepool/gw2"])
        );
        // Moving to another pool: both.
        assert_eq!(
            t.on(&watcher::Event::Apply(node(
                "a",
                "u-a",
                gateway("gw3"),
                None,
                "3"
            ))),
            pools(&["nodepool/gw", "nodepool/gw3"])
        );
        // providerID set: its scale set's key as well.
        let pid = "azure:///subscriptions/s/resourceGroups/RG/providers/Microsoft.Compute/virtualMachineScaleSets/VMSS/virtualMachines/0";
        assert_eq!(
            t.on(&watcher::Event::Apply(node(
                "a",
                "u-a",
                gateway("gw3"),
                Some(pid),
                "4"
            ))),
            pools(&["nodepool/gw3", "vmss/rg/vmss"])
        );
        // No longer a gateway node: the pools it was in.
        let demoted = json!({"kubernetes.azure.com/agentpool": "gw3"});
        assert_eq!(
            t.on(&watcher::Event::Apply(node("a", "u-a", demoted, Some(pid), "5"))),
            pools(&["nodepool/gw3", "vmss/rg/vmss"])
        );
        // Leaving.
        assert_eq!(
            t.on(&watcher::Event::Delete(node(
                "b",
                "u-b",
                gateway("gw2"),
                None,
                "6"
            ))),
            pools(&["nodepool/gw2"])
        );
        // A self-managed gateway node tied to no pool by its labels or providerID may match any pool.
        let loose = json!({"kubeegressgateway.azure.com/mode": "true"});
        assert_eq!(
            t.on(&watcher::Event::Apply(node("c", "u-c", loose, None, "7"))),
            vec![Trigger::All]
        );
    }

    #[test]
    fn a_relist_triggers_what_changed_while_the_watch_was_down() {
        let a = node("a", "u-a", gateway("gw"), None, "1");
        let b = node("b", "u-b", gateway("gw2"), None, "1");
        let c = node("c", "u-c", gateway("gw3"), None, "1");
        let mut t = synced(&[a, b, c]);
        t.on(&watcher::Event::Init);
        // a: heartbeat only; b: gone; c: moved; d: new.
        for n in [
            node("a", "u-a", gateway("gw"), None, "9"),
            node("c", "u-c", gateway("gw4"), None, "9"),
            node("d", "u-d", gateway("gw5"), None, "9"),
        ] {
            assert!(t.on(&watcher::Event::InitApply(n)).is_empty());
        }
        assert_eq!(
            t.on(&watcher::Event::InitDone),
            pools(&["nodepool/gw2", "nodepool/gw3", "nodepool/gw4", "nodepool/gw5"])
        );
    }

    #[test]
    fn gateway_pool_changes_trigger_their_pool_only() {
        let pool = |rv: &str, np: &str| -> GatewayPool {
            serde_json::from_value(json!({
                "metadata": {"name": "p", "uid": "u-p", "resourceVersion": rv},
                "spec": {"gatewayNodepoolName": np, "publicIpPrefixSize": 31}
            }))
            .expect("pool")
        };
        let mut t = Tracker::new(gateway_pool_relevance);
        t.on(&watcher::Event::Init);
        t.on(&watcher::Event::InitApply(pool("1", "gw")));
        t.on(&watcher::Event::InitDone);
        // Its status written: its pool, not every pool.
        assert_eq!(
            t.on(&watcher::Event::Apply(pool("2", "gw"))),
            pools(&["nodepool/gw"])
        );
    }

    #[test]
    fn a_key_secret_listed_before_its_configuration_triggers_its_pool_when_deleted() {
        // The Secret watch's first list may land before the configuration watch has filled its cache: the
        // Secret is then known as concerning no pool. Its deletion (a key rotation) must still reach its pool.
        let (sgcs, mut sgcs_w) = reflector::store::<StaticGatewayConfiguration>();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "sgw-u-gw", "namespace": "keg-system", "uid": "u-s", "resourceVersion": "1",
                "labels": {(api::names::SECRET_OWNER_NAMESPACE_LABEL): "app",
                           (api::names::SECRET_OWNER_NAME_LABEL): "gw"}}
        }))
        .expect("secret");
        let mut t = Tracker::new(key_secret_relevance(sgcs));
        t.on(&watcher::Event::Init);
        t.on(&watcher::Event::InitApply(secret.clone()));
        t.on(&watcher::Event::InitDone);
        let sgc: StaticGatewayConfiguration = serde_json::from_value(json!({
            "metadata": {"name": "gw", "namespace": "app", "uid": "u-gw"},
            "spec": {"gatewayNodepoolName": "gwpool"}
        }))
        .expect("sgc");
        sgcs_w.apply_watcher_event(&watcher::Event::Apply(sgc));
        assert_eq!(t.on(&watcher::Event::Delete(secret)), pools(&["nodepool/gwpool"]));
    }
}
