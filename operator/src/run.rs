//! The running operator: watches, the per-pool work loop, leader gating, the probe and metrics servers.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use api::{GatewayPool, StaticGatewayConfiguration};
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::reconcile::sgc::{Operator, RESYNC_INTERVAL, pool_key};

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
    Pool(String),
    /// Every pool (node and GatewayPool changes, resync).
    All,
}

/// Forwards watch events as triggers until the channel closes.
async fn watch_sgcs(client: kube::Client, tx: mpsc::UnboundedSender<Trigger>) {
    let api: Api<StaticGatewayConfiguration> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    while let Some(ev) = stream.next().await {
        let triggers: Vec<Trigger> = match ev {
            Ok(watcher::Event::Apply(s) | watcher::Event::Delete(s) | watcher::Event::InitApply(s)) => {
                vec![
                    s.spec
                        .pool_ref()
                        .map_or(Trigger::All, |r| Trigger::Pool(pool_key(&r))),
                ]
            }
            Ok(watcher::Event::InitDone) => vec![Trigger::All],
            Ok(watcher::Event::Init) => vec![],
            Err(e) => {
                tracing::warn!(error = %e, "StaticGatewayConfiguration watch error");
                vec![]
            }
        };
        for t in triggers {
            if tx.send(t).is_err() {
                return;
            }
        }
    }
}

async fn watch_all<K>(api: Api<K>, tx: mpsc::UnboundedSender<Trigger>, relevant: fn(&K) -> bool)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    while let Some(ev) = stream.next().await {
        let fire = match &ev {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => relevant(o),
            _ => false,
        };
        if fire && tx.send(Trigger::All).is_err() {
            return;
        }
    }
}

fn gateway_node(n: &Node) -> bool {
    api::pool_ref::is_gateway_node(n.metadata.labels.as_ref().unwrap_or(&Default::default()))
}

fn any_pool(_: &GatewayPool) -> bool {
    true
}

/// Runs the work loop until `shutdown`: batches triggers (so that configurations created together are
/// reconciled together), reconciles only while leading, retries failures with backoff, and resyncs every
/// pool every five minutes.
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
    let client = op.client.clone();
    let watches = [
        tokio::spawn(watch_sgcs(client.clone(), tx.clone())),
        tokio::spawn(watch_all(
            Api::<GatewayPool>::all(client.clone()),
            tx.clone(),
            any_pool,
        )),
        tokio::spawn(watch_all(Api::<Node>::all(client), tx.clone(), gateway_node)),
    ];
    let mut resync = tokio::time::interval(options.resync);
    let mut pending: BTreeSet<String> = BTreeSet::new();
    let mut all = false;
    let mut backoff = Duration::from_millis(500);
    let mut leading = leading;
    ready.store(true, Ordering::Relaxed);
    loop {
        tokio::select! {
            t = rx.recv() => match t {
                Some(Trigger::Pool(k)) => { pending.insert(k); }
                Some(Trigger::All) => all = true,
                None => break,
            },
            _ = resync.tick() => all = true,
            _ = leading.changed() => all = true,
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
        let result = op.reconcile_pools(only.as_ref()).await;
        match result {
            Ok(_) => {
                all = false;
                pending.clear();
                backoff = Duration::from_millis(500);
                if op.converging.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(options.converging_recheck).await;
                        let _ = tx.send(Trigger::All);
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "reconcile failed; will retry");
                if let Some(only) = only {
                    pending.extend(only);
                } else {
                    all = true;
                }
                let tx = tx.clone();
                let delay = backoff;
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(Trigger::All);
                });
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
    }
    ready.store(false, Ordering::Relaxed);
    for w in watches {
        w.abort();
    }
}

/// `/metrics` on one port.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }
        }),
    )
}

/// `/healthz` (the process serves) and `/readyz` (the work loop runs) on the probe port.
pub fn health_router(ready: Arc<AtomicBool>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok" })).route(
        "/readyz",
        get(move || {
            let ready = ready.clone();
            async move {
                if ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }
        }),
    )
}

/// Serves a router until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
}
