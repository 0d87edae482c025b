//! The operator's work loop (`run::run_operator_with`: watches, caches, triggers, re-checks) against a
//! Kubernetes API server and the ARM simulator, through the real clients: what it costs in steady state.
//! Two VMSS pools, `gateway` (/31) and `other` (/30), two instances each, one configuration on each.
//! The tests that count the operator's Kubernetes requests per verb run on a kube-sim of their own (the real
//! server has no per-user request counts); the others run on the binary's one cluster (`TestCluster`: the
//! real kube-apiserver by default, kube-sim with `TESTBED_KUBE=sim`), taking turns (see `turn`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api::{GatewayPool, StaticGatewayConfiguration};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use operator::pass::Operator;
use operator::run::{RunOptions, run_operator_with};
use serde_json::json;
use testbed::azure::{AzureSim, LroConfig, Seed};
use testbed::kube::KubeSim;
use testbed::wait::eventually;

mod common;
mod turn;

/// The operator's namespace on a kube-sim of the test's own.
const NS: &str = "kube-egress-gateway-system";
const VMSS_A: &str = "aks-gateway-12345678-vmss";
const VMSS_B: &str = "aks-other-12345678-vmss";

/// Where a test runs.
enum On {
    /// A kube-sim of its own, whose per-user request counts the test reads.
    CountingSim,
    /// The binary's one cluster.
    Shared,
}

/// The Kubernetes API server of a test.
enum Cluster {
    CountingSim(Box<KubeSim>),
    /// Held for the test's duration.
    Shared {
        _turn: turn::Turn,
    },
}

struct World {
    cluster: Cluster,
    azure: AzureSim,
    admin: kube::Client,
    op: Arc<Operator>,
    /// The operator's namespace.
    system: String,
    /// The configurations' namespace.
    app: String,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

impl World {
    /// The kube-sim that counts requests.
    fn counting(&self) -> &KubeSim {
        match &self.cluster {
            Cluster::CountingSim(k) => k,
            Cluster::Shared { .. } => panic!("this test counts requests: start it On::CountingSim"),
        }
    }
}

fn gateway_node(name: &str, pool: &str) -> Node {
    common::ready_node(
        name,
        json!({"kubernetes.azure.com/agentpool": pool, "kubernetes.azure.com/mode": "gateway"}),
    )
}

/// Both pools converged by passes the test drives (`reconcile_pools`), then the work loop started; returns
/// once the loop's first pass (a full one) has finished.
async fn start(recheck: Duration, on: On) -> World {
    let mut seed = Seed::aks_like(2);
    let mut other = seed.vm_scale_sets[0].clone();
    other.name = VMSS_B.into();
    other.pool_name = "other".into();
    // Room for a third node (a /31 fits two: a third would break rule 4, and the configuration would report
    // Degraded, which these request counts do not want).
    other.gateway_prefix_size = Some(30);
    seed.vm_scale_sets.push(other);
    let azure = AzureSim::start(&seed).await.expect("azure-sim");
    azure.set_lro(LroConfig {
        in_progress_polls: 0,
        max_duration_ms: 0,
        ..Default::default()
    });
    let (cluster, admin, operator, system, app) = match on {
        On::CountingSim => {
            let kube = common::counting_sim(&[NS, "app"]).await;
            let admin = kube.client("admin").expect("client");
            let operator = kube.client(common::OPERATOR_USER).expect("operator client");
            (
                Cluster::CountingSim(Box::new(kube)),
                admin,
                operator,
                NS.to_string(),
                "app".to_string(),
            )
        }
        On::Shared => {
            let turn = turn::take().await;
            let (admin, system, app) = (turn.client.clone(), turn.system.clone(), turn.app.clone());
            (Cluster::Shared { _turn: turn }, admin.clone(), admin, system, app)
        }
    };
    let nodes: Api<Node> = Api::all(admin.clone());
    for (vmss, pool) in [(VMSS_A, "gateway"), (VMSS_B, "other")] {
        for i in 0..2 {
            nodes
                .create(
                    &PostParams::default(),
                    &gateway_node(&format!("{vmss}{i:06}"), pool),
                )
                .await
                .expect("gateway node");
        }
    }
    let user: Node = serde_json::from_value(json!({
        "metadata": {"name": "aks-user-0", "labels": {"kubernetes.azure.com/agentpool": "user"}}
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &user)
        .await
        .expect("user node");
    let pools: Api<GatewayPool> = Api::all(admin.clone());
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(admin.clone(), &app);
    for (pool, prefix) in [("gateway", 31), ("other", 30)] {
        let p: GatewayPool = serde_json::from_value(json!({
            "metadata": {"name": pool},
            "spec": {"gatewayNodepoolName": pool, "publicIpPrefixSize": prefix}
        }))
        .expect("pool");
        pools.create(&PostParams::default(), &p).await.expect("pool");
        let s: StaticGatewayConfiguration = serde_json::from_value(json!({
            "metadata": {"name": pool},
            "spec": {"gatewayNodepoolName": pool}
        }))
        .expect("sgc");
        sgcs.create(&PostParams::default(), &s).await.expect("sgc");
    }

    let op = Arc::new(common::operator(
        &operator,
        &common::cloud_config(&seed, &azure),
        &system,
    ));
    // Converge first, pass by pass: the loop then starts on a steady world.
    let (sgcs2, pools2, op2) = (sgcs.clone(), pools.clone(), op.clone());
    eventually("both pools converged", || {
        let (sgcs, pools, op) = (sgcs2.clone(), pools2.clone(), op2.clone());
        async move {
            op.reconcile_pools(None).await.expect("reconcile");
            let converging = op.take_converging();
            let ready = sgcs
                .list(&Default::default())
                .await
                .expect("list")
                .items
                .iter()
                .all(|s| s.status.as_ref().is_some_and(|st| st.is_ready_for_pods()));
            let pools_ready = pools
                .list(&Default::default())
                .await
                .expect("list")
                .items
                .iter()
                .all(|p| p.status.as_ref().is_some_and(|st| st.ready_instances == 2));
            converging.is_empty() && ready && pools_ready
        }
    })
    .await;

    let before = op.passes.finished();
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let (leading_tx, leading) = tokio::sync::watch::channel(true);
    let options = RunOptions {
        converging_recheck: recheck,
        ..RunOptions::default()
    };
    let looping = op.clone();
    tokio::spawn(async move {
        let _leading = leading_tx;
        run_operator_with(looping, leading, Default::default(), shutdown_rx, options).await;
    });
    let o = op.clone();
    eventually("the work loop's first pass", || {
        let o = o.clone();
        async move { o.passes.finished() > before && o.passes.idle() }
    })
    .await;
    World {
        cluster,
        azure,
        admin,
        op,
        system,
        app,
        _shutdown: shutdown,
    }
}

/// ARM calls (token requests aside) whose path names `what`, case-insensitively.
fn arm_calls_naming(azure: &AzureSim, what: &str) -> usize {
    let what = what.to_ascii_lowercase();
    azure
        .calls()
        .iter()
        .filter(|c| !c.path.contains("/oauth2/") && c.path.to_ascii_lowercase().contains(&what))
        .count()
}

/// ARM writes (token requests aside).
fn arm_writes(azure: &AzureSim) -> Vec<String> {
    azure
        .calls()
        .iter()
        .filter(|c| c.method != "GET" && !c.path.contains("/oauth2/"))
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

/// The operator's Kubernetes requests by verb (all resources).
fn kube_verbs(kube: &KubeSim) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for ((verb, _), n) in kube.verbs_by(common::OPERATOR_USER) {
        *out.entry(verb).or_default() += n;
    }
    out
}

#[tokio::test]
async fn node_heartbeats_cost_nothing_and_a_joining_node_rereads_only_its_pool() {
    let w = start(Duration::from_secs(3600), On::CountingSim).await;
    let nodes: Api<Node> = Api::all(w.admin.clone());
    let inventory = common::resources(&w.azure);
    w.azure.clear_calls();
    let kube_before = kube_verbs(w.counting());
    let passes = w.op.passes.started();

    // Status-only updates, as the kubelet makes them, of a gateway Node of pool `gateway` and of another
    // Node; and a change the operator does not read (an annotation: resourceVersion and metadata only).
    let heartbeat = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
        "lastHeartbeatTime": "2026-01-01T00:00:10Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    for name in [format!("{VMSS_A}000000"), "aks-user-0".to_string()] {
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(heartbeat.clone()),
            )
            .await
            .expect("heartbeat");
    }
    nodes
        .patch(
            &format!("{VMSS_A}000001"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"node.alpha.kubernetes.io/ttl": "0"}}})),
        )
        .await
        .expect("annotate");
    // Then a gateway Node joins pool `other`. The Node watch delivers events in order, so once the pass
    // this join triggers has run, the updates above have been looked at too.
    nodes
        .create(
            &PostParams::default(),
            &gateway_node(&format!("{VMSS_B}000002"), "other"),
        )
        .await
        .expect("joining node");
    let op = w.op.clone();
    eventually("the pass the joining node triggers", || {
        let op = op.clone();
        async move { op.passes.finished() > passes && op.passes.idle() }
    })
    .await;

    assert_eq!(
        w.op.passes.started() - passes,
        1,
        "one pass: the join's; the heartbeats and the annotation triggered none"
    );
    assert!(
        arm_calls_naming(&w.azure, VMSS_B) > 0,
        "the joining node's pool was read again: {:?}",
        w.azure.calls()
    );
    assert_eq!(
        arm_calls_naming(&w.azure, VMSS_A),
        0,
        "pool `gateway` was not read: {:?}",
        w.azure.calls()
    );
    assert_eq!(arm_writes(&w.azure), Vec::<String>::new(), "no ARM writes");
    assert_eq!(common::resources(&w.azure), inventory);
    let kube_after = kube_verbs(w.counting());
    let delta =
        |verb: &str| kube_after.get(verb).copied().unwrap_or(0) - kube_before.get(verb).copied().unwrap_or(0);
    assert_eq!(delta("list"), 0, "no Kubernetes LIST: {kube_after:?}");
    assert_eq!(
        delta("patch") + delta("create") + delta("update"),
        0,
        "no Kubernetes writes"
    );
}

#[tokio::test]
async fn one_pass_reads_the_shared_objects_once() {
    let w = start(Duration::from_secs(3600), On::CountingSim).await;
    w.azure.clear_calls();
    let passes = w.op.passes.started();
    let kube_before = kube_verbs(w.counting());
    // A GatewayPool's change triggers its pool; a label change of the other pool's configuration triggers
    // that pool: both land in one batch, one pass over two pools.
    Api::<GatewayPool>::all(w.admin.clone())
        .patch(
            "gateway",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "1"}}})),
        )
        .await
        .expect("label pool");
    Api::<StaticGatewayConfiguration>::namespaced(w.admin.clone(), &w.app)
        .patch(
            "other",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "1"}}})),
        )
        .await
        .expect("label configuration");
    let op = w.op.clone();
    let azure = w.azure.handle();
    eventually("both pools read again", || {
        let op = op.clone();
        let azure = azure.clone();
        async move {
            let calls = azure.with_state(|s| s.calls());
            let read = |vmss: &str| calls.iter().any(|c| c.path.contains(&format!("/{vmss}/")));
            op.passes.idle() && read(VMSS_A) && read(VMSS_B)
        }
    })
    .await;
    let passes = w.op.passes.started() - passes;
    let lists = w.azure.count_calls("GET", "/virtualMachineScaleSets$");
    let lb_reads = w.azure.count_calls("GET", "/loadBalancers/[^/]+$");
    let vmss_reads = w.azure.count_calls("GET", "/virtualMachineScaleSets/[^/]+$");
    // However the two triggers were batched, each pass read the scale-set listing and the load balancer
    // once, and no scale set again after finding it in the listing.
    assert_eq!(lists, passes as usize, "one scale-set listing per pass");
    assert_eq!(lb_reads, passes as usize, "one load-balancer read per pass");
    assert_eq!(vmss_reads, 0, "the listed scale set is not read again");
    let kube_after = kube_verbs(w.counting());
    for verb in ["list", "get"] {
        assert_eq!(
            kube_after.get(verb).copied().unwrap_or(0),
            kube_before.get(verb).copied().unwrap_or(0),
            "passes read the watch caches (configurations, pools, Nodes, key Secrets): {kube_after:?}"
        );
    }
}

#[tokio::test]
async fn a_deleted_key_secret_is_replaced_without_waiting_for_the_resync() {
    let w = start(Duration::from_secs(3600), On::Shared).await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.admin.clone(), &w.app);
    let public_key = |s: &StaticGatewayConfiguration| {
        s.status
            .as_ref()
            .and_then(|st| st.gateway_server_profile.as_ref())
            .map(|p| p.public_key.clone())
    };
    let before = sgcs.get("gateway").await.expect("get");
    let old_key = public_key(&before);
    assert!(old_key.is_some());
    let uid = before.metadata.uid.clone().expect("uid");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(w.admin.clone(), &w.system)
        .delete(&format!("sgw-{uid}"), &Default::default())
        .await
        .expect("delete key secret");
    // The resync is 5 minutes away: the Secret's deletion itself triggers the configuration's pool.
    eventually("a new key in the status", || {
        let sgcs = sgcs.clone();
        let old_key = old_key.clone();
        async move {
            let s = sgcs.get("gateway").await.expect("get");
            public_key(&s).is_some() && public_key(&s) != old_key
        }
    })
    .await;
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(w.admin.clone(), &w.system)
        .get(&format!("sgw-{uid}"))
        .await
        .expect("new key secret");
    let data = secret.data.expect("data");
    let status = sgcs.get("gateway").await.expect("get");
    assert_eq!(
        Some(String::from_utf8_lossy(&data["PublicKey"].0).to_string()),
        public_key(&status)
    );
}

#[tokio::test]
async fn only_the_converging_pool_is_checked_again() {
    let w = start(Duration::from_millis(100), On::Shared).await;
    // An instance operation of pool `gateway` that does not end: that pool converges (reads, no writes).
    let instance = format!(
        "/subscriptions/{}/resourceGroups/node-rg/providers/Microsoft.Compute/virtualMachineScaleSets/{VMSS_A}/virtualMachines/0",
        w.op.cfg.subscription_id
    );
    w.azure
        .patch_resource(
            &instance,
            &json!({"properties": {"provisioningState": "Updating"}}),
        )
        .expect("instance updating");
    w.azure.clear_calls();
    // Something the operator reads changes on pool `gateway` (a Node leaves it), so it is looked at and
    // found converging.
    Api::<Node>::all(w.admin.clone())
        .delete(&format!("{VMSS_A}000001"), &Default::default())
        .await
        .expect("delete node");
    let azure = w.azure.handle();
    let instances_a = format!("/{VMSS_A}/virtualMachines");
    // The Node's deletion and the status writes it causes trigger a few passes; re-checks go on after them.
    eventually("pool `gateway` read eight times", || {
        let azure = azure.clone();
        let instances_a = instances_a.clone();
        async move {
            azure
                .with_state(|s| s.calls())
                .iter()
                .filter(|c| c.method == "GET" && c.path.ends_with(&instances_a))
                .count()
                >= 8
        }
    })
    .await;
    assert_eq!(
        arm_calls_naming(&w.azure, VMSS_B),
        0,
        "the steady pool `other` was not read: {:?}",
        w.azure.calls()
    );
    assert_eq!(arm_writes(&w.azure), Vec::<String>::new(), "no ARM writes");
}
