//! How the operator stops writing: on SIGTERM the work loop finishes the pool it is on and stops before the
//! Lease is released (a replica that takes over never writes while this one still does), and a pass starts no
//! pool once it is told to stop (leadership lost, shutting down). On a kube-sim of the test's own with
//! azure-sim.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use api::StaticGatewayConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams, PostParams};
use operator::leader::{LEASE_NAME, LeaseLock};
use operator::pass::Inputs;
use operator::run::{RunOptions, run_until};
use serde_json::json;
use testbed::azure::{AzureSim, Seed};
use testbed::wait::eventually;

mod common;

const SYSTEM: &str = "keg-system";

async fn create_sgc(client: &kube::Client, name: &str, nodepool: &str) {
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(client.clone(), "app");
    let sgc = serde_json::from_value(json!({
        "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
        "metadata": {"name": name}, "spec": {"gatewayNodepoolName": nodepool}}))
    .expect("sgc");
    sgcs.create(&PostParams::default(), &sgc).await.expect("create");
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE_NAME)
        .await
        .expect("lease")
        .and_then(|l| l.spec?.holder_identity)
}

/// A configuration "gw" on a 2-instance pool whose every ARM call is slow, so a pass takes seconds and a stop or
/// a loss of leadership comes while the pool is being written; and the operator for it.
struct SlowPool {
    kube: testbed::kube::KubeSim,
    client: kube::Client,
    azure: AzureSim,
    op: Arc<operator::pass::Operator>,
}

impl SlowPool {
    async fn start() -> Self {
        let kube = common::counting_sim(&[SYSTEM, "app"]).await;
        let client = kube.client("admin").expect("client");
        let seed = Seed::aks_like(2);
        let azure = AzureSim::start(&seed).await.expect("azure-sim");
        azure.set_latency(Duration::from_millis(150));
        create_sgc(&client, "gw", "gateway").await;
        let op = Arc::new(common::operator(
            &client,
            &common::cloud_config(&seed, &azure),
            SYSTEM,
        ));
        SlowPool {
            kube,
            client,
            azure,
            op,
        }
    }
}

/// The operator's run (work loop and elector through `lock`) until `stop`, with a grace longer than any pass.
fn run_as_leader(
    op: &Arc<operator::pass::Operator>,
    lock: LeaseLock,
    stop: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(run_until(
        op.clone(),
        Some(lock),
        Arc::new(AtomicBool::new(false)),
        RunOptions::default(),
        Duration::from_secs(120),
        stop,
    ))
}

#[tokio::test]
async fn sigterm_lets_the_pass_finish_before_the_lease_is_released() {
    let SlowPool {
        kube: _kube,
        client,
        azure: _azure,
        op,
    } = SlowPool::start().await;
    let lock = LeaseLock::new(client.clone(), SYSTEM, LEASE_NAME, "me", Duration::from_secs(15));
    let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
    let running = run_as_leader(&op, lock, async {
        let _ = stopping.await;
    });
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    eventually("a pass under way as leader", || async {
        op.passes.started() > 0 && !op.passes.idle() && holder(&leases).await.as_deref() == Some("me")
    })
    .await;

    stop.send(()).expect("stop");
    let idle_at_release = Arc::new(AtomicBool::new(false));
    eventually("the Lease released", || async {
        if holder(&leases).await.is_some() {
            return false;
        }
        idle_at_release.store(op.passes.idle(), Ordering::SeqCst);
        true
    })
    .await;
    assert!(
        idle_at_release.load(Ordering::SeqCst),
        "the Lease was released while the pass was still writing"
    );
    running.await.expect("join").expect("stopped as asked");
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(client, "app");
    let gw = sgcs.get("gw").await.expect("gw");
    assert!(
        gw.status.is_some_and(|s| !s.conditions.is_empty()),
        "the pool under way was finished (its status written)"
    );
}

#[tokio::test]
async fn lost_leadership_cuts_the_pass_off_and_stops_the_operator_before_a_takeover() {
    let SlowPool {
        kube,
        client,
        azure: _azure,
        op,
    } = SlowPool::start().await;
    // The Lease is renewed through a proxy that goes silent; Azure and the rest of the API stay reachable.
    let (config, proxy) =
        testbed::proxy::StallableProxy::in_front_of(kube.client_config("admin").expect("config"))
            .await
            .expect("proxy");
    let lease_client = kube::Client::try_from(config).expect("client");
    let duration = Duration::from_secs(3);
    let lock = LeaseLock::new(lease_client, SYSTEM, LEASE_NAME, "me", duration);
    let running = run_as_leader(&op, lock, std::future::pending());
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    eventually("a pass under way as leader", || async {
        op.passes.started() > 0 && !op.passes.idle() && holder(&leases).await.as_deref() == Some("me")
    })
    .await;

    proxy.stall();
    let other = LeaseLock::new(client, SYSTEM, LEASE_NAME, "other", duration);
    let stopped_before_takeover =
        common::takeover_after(&other, testbed::wait::DEFAULT_TIMEOUT, || running.is_finished()).await;
    assert!(
        stopped_before_takeover,
        "the operator was still running when another replica took the Lease over"
    );
    let err = running
        .await
        .expect("join")
        .expect_err("lost leadership ends the operator with an error");
    assert!(err.to_string().contains("leadership lost"), "{err:#}");
}

#[tokio::test]
async fn a_pass_starts_no_pool_once_told_to_stop() {
    let kube = common::counting_sim(&[SYSTEM, "app"]).await;
    let client = kube.client("admin").expect("client");
    let mut seed = Seed::aks_like(1);
    let mut other = seed.vm_scale_sets[0].clone();
    other.name = "aks-other-12345678-vmss".into();
    other.pool_name = "other".into();
    seed.vm_scale_sets.push(other);
    let azure = AzureSim::start(&seed).await.expect("azure-sim");
    create_sgc(&client, "a", "gateway").await;
    create_sgc(&client, "b", "other").await;
    let op = common::operator(&client, &common::cloud_config(&seed, &azure), SYSTEM);
    let sgcs: Api<StaticGatewayConfiguration> = Api::all(client.clone());
    let inputs = Inputs {
        sgcs: sgcs
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .map(Arc::new)
            .collect(),
        ..Inputs::default()
    };

    // Told to stop after the first pool: the second is not started, nor reported as reconciled.
    let asked = AtomicUsize::new(0);
    let proceed = || asked.fetch_add(1, Ordering::SeqCst) == 0;
    let out = op.pass_while(&inputs, None, &proceed).await;
    assert_eq!(out.reconciled.len(), 1, "{out:?}");
    assert!(out.failed.is_empty(), "{out:?}");
    let untouched = if out.reconciled.iter().any(|k| k.as_str() == "nodepool/gateway") {
        "aks-other-12345678-vmss"
    } else {
        "aks-gateway-12345678-vmss"
    };
    assert_eq!(
        azure.count_calls("PUT", untouched),
        0,
        "nothing written for the pool not started"
    );
    assert!(op.passes.idle());
}
