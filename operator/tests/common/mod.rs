//! Set-up shared by the integration tests (and benchmarks) that run the operator against the ARM simulator.

#![allow(dead_code)] // each test binary uses its own subset

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use operator::azure::{Arm, RetryBudget, Timeouts};
use operator::config::CloudConfig;
use operator::metrics::Metrics;
use operator::pass::Operator;
use serde_json::json;
use testbed::azure::{AzureSim, Seed};
use testbed::kube::{Access, KubeSim, KubeSimConfig, User};

/// The operator's identity on a [`counting_sim`]: its requests are counted apart from the test's.
pub const OPERATOR_USER: &str = "operator";

/// The cloud config of the seed's cluster, with the simulator as ARM and AAD endpoint (service principal).
pub fn cloud_config(seed: &Seed, sim: &AzureSim) -> CloudConfig {
    let text = seed.cloud_config(sim.url()).to_string();
    CloudConfig::parse(&text, |_| None).expect("config")
}

/// ARM clients with a short retry budget, so that injected faults surface quickly.
pub fn arm(cfg: &CloudConfig, metrics: &Metrics) -> Arm {
    let retry = RetryBudget {
        initial: Duration::from_millis(5),
        max_delay: Duration::from_millis(200),
        max_retries: 4,
    };
    arm_with(cfg, metrics, retry)
}

/// ARM clients with `retry` as their retry budget.
pub fn arm_with(cfg: &CloudConfig, metrics: &Metrics, retry: RetryBudget) -> Arm {
    let timeouts = Timeouts::default();
    Arm::new(
        cfg,
        operator::azure::credential(cfg, &timeouts).expect("credential"),
        retry,
        &timeouts,
        metrics,
    )
    .expect("clients")
}

/// Every resource ID in the simulator, lower-cased and sorted.
pub fn resources(sim: &AzureSim) -> Vec<String> {
    let mut v: Vec<String> = sim.inventory()["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str().map(str::to_ascii_lowercase))
        .collect();
    v.sort();
    v
}

/// A fresh operator process (new ARM clients as [`arm`] makes them, no memory of earlier runs) on `client`,
/// with `system` as its namespace and its key Secrets' namespace.
pub fn operator(client: &kube::Client, cfg: &CloudConfig, system: &str) -> Operator {
    let metrics = Metrics::new();
    let arm = arm(cfg, &metrics);
    Operator::new(
        client.clone(),
        arm,
        cfg.clone(),
        system.into(),
        system.into(),
        i32::from(api::names::DEFAULT_LB_PROBE_PORT),
        metrics,
    )
}

/// A kube-sim of the caller's own with the CRDs, `namespaces`, and the admin-level user [`OPERATOR_USER`],
/// whose requests it counts apart from the admin's (`KubeSim::requests_by`).
pub async fn counting_sim(namespaces: &[&str]) -> KubeSim {
    let mut config = KubeSimConfig::default();
    config.users.push(User::new(
        OPERATOR_USER,
        &testbed::kube::random_token(),
        Access::Admin,
    ));
    let kube = KubeSim::start(config).await.expect("kube-sim");
    kube.install_crds().await.expect("CRDs");
    kube.create_namespaces(namespaces).await.expect("namespaces");
    kube
}

/// A Node with `labels` whose kubelet reports Ready.
pub fn ready_node(name: &str, labels: serde_json::Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    }))
    .expect("node")
}

/// The Event with `reason` about object `name` in `namespace`; panics naming both when there is none.
pub async fn event_about(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    reason: &str,
) -> k8s_openapi::api::events::v1::Event {
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(client.clone(), namespace);
    events
        .list(&kube::api::ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason)
        })
        .unwrap_or_else(|| panic!("no {reason} Event on {namespace}/{name}"))
}

/// Tries `candidate` until it takes the Lease over (within `timeout`); returns what `before` said just before
/// the winning attempt: whether the old leader had already stopped when the takeover began.
pub async fn takeover_after(
    candidate: &operator::leader::LeaseLock,
    timeout: Duration,
    before: impl Fn() -> bool,
) -> bool {
    let seen = std::sync::atomic::AtomicBool::new(false);
    testbed::wait::eventually_within("another candidate takes the Lease over", timeout, || async {
        let stopped = before();
        let won = candidate.try_acquire_or_renew().await.expect("candidate");
        seen.store(stopped, std::sync::atomic::Ordering::SeqCst);
        won
    })
    .await;
    seen.load(std::sync::atomic::Ordering::SeqCst)
}

/// `n` managed configurations, as a pool pass plans them, with uids `00000000-0000-0000-0000-<i>`.
pub fn managed_configs(n: usize) -> Vec<operator::desired::Config> {
    (0..n)
        .map(|i| operator::desired::Config {
            uid: format!("00000000-0000-0000-0000-{i:012}"),
            egress: operator::desired::Egress::Managed,
            deleting: false,
            kept: false,
            adopted: None,
            status_port: None,
        })
        .collect()
}
