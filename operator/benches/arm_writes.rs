//! ARM writes and time-to-Ready of the per-pool operator on the ARM simulator, next to what upstream's
//! per-configuration algorithm issues for the same work.
//!
//! Run: `cargo bench -p operator --bench arm_writes` (or `--profile dev` to skip the release build; the
//! simulated ARM latency dominates either way). Prints Markdown tables for docs/performance.md: the writes of
//! the Azure half (argument `writes` for only those), and the steady-state cost of the whole operator, its
//! work loop on the Kubernetes simulator (argument `steady` for only that). `--smoke` runs each once at the
//! smallest size, with the same checks (scripts/test.sh does, so a bench that no longer runs is noticed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::PoolRef;
use operator::azure::RetryBudget;
use operator::azure::{apply, observe};
use operator::desired::Config;
use operator::metrics::Metrics;
use serde_json::json;
use testbed::azure::{AzureSim, LroConfig, Seed};

#[path = "../tests/common/mod.rs"]
mod common;

/// Per-request latency of the simulated ARM front door.
const ARM_LATENCY: Duration = Duration::from_millis(40);

/// Upstream's writes for N new configurations with managed prefixes on an I-instance VMSS pool, from its
/// algorithm (its GatewayLBConfiguration and GatewayVMConfiguration controllers,
/// https://github.com/Azure/kube-egress-gateway/tree/main/controllers/manager), per configuration:
/// - VM controller: GET prefix (404) then one prefix PUT;
/// - LB controller: one load-balancer PUT (its rule, probe, and for the first one the frontend/backend);
/// - VM controller: one VMSS model PUT (the configuration's ipConfiguration), then one `Update` PUT per
///   instance (its model differs from the wanted one);
/// - no public IP writes (VMSS instances get theirs from `publicIPAddressConfiguration`);
/// - no repeated writes: the re-reconciles triggered by the status updates between the three controllers
///   and the 5-minute requeue find nothing changed and write nothing.
///
/// = N × (1 + 1 + 1 + I).
fn upstream_create_writes(configs: u64, instances: u64) -> u64 {
    configs * (3 + instances)
}

/// Upstream's writes to delete them, per configuration: one LB PUT (DELETE for the last one), one VMSS
/// model PUT, one PUT per instance, one prefix DELETE (no public IPs to delete on a VMSS pool).
fn upstream_delete_writes(configs: u64, instances: u64) -> u64 {
    configs * (3 + instances)
}

/// The fewest writes any design can make for the same change: every configuration owns its prefix (one
/// create / delete each, which cannot be shared), and the pool's load balancer, scale-set model and each
/// instance must be written at least once.
fn floor_writes(configs: u64, instances: u64) -> u64 {
    configs + 2 + instances
}

/// Upstream's periodic resync (every 5 min per GatewayVMConfiguration): it recomputes and writes nothing when
/// nothing drifted, like here; listed for completeness.
fn upstream_resync_writes() -> u64 {
    0
}

struct Row {
    configs: usize,
    instances: u32,
    phase: &'static str,
    writes: usize,
    reads: u64,
    polls: u64,
    upstream: u64,
    floor: u64,
    seconds: f64,
}

async fn measure(configs: usize, instances: u32) -> Vec<Row> {
    let mut seed = Seed::aks_like(instances);
    let prefix_len: i32 = if instances <= 2 { 31 } else { 28 };
    if let Some(v) = seed.vm_scale_sets.first_mut() {
        v.gateway_prefix_size = u8::try_from(prefix_len).ok();
    }
    seed.public_ip_ranges = vec!["20.10.0.0/16".parse().expect("range")];
    let sim = AzureSim::start(&seed).await.expect("simulator");
    sim.set_latency(ARM_LATENCY);
    sim.set_lro(LroConfig {
        enabled: true,
        in_progress_polls: 1,
        retry_after_ms: 100,
        max_duration_ms: 2000,
        fail_next: 0,
        reject_concurrent: false,
        ..LroConfig::default()
    });
    let cfg = common::cloud_config(&seed, &sim);
    let metrics = Metrics::new();
    let arm = common::arm_with(&cfg, &metrics, RetryBudget::default());
    let p = observe::resolve(&arm, &cfg, &PoolRef::Nodepool("gateway".into()), None)
        .await
        .expect("pool");
    let set: Vec<Config> = common::managed_configs(configs);
    let writes = |sim: &AzureSim| {
        sim.calls()
            .iter()
            .filter(|c| {
                matches!(c.method.as_str(), "PUT" | "DELETE" | "PATCH" | "POST")
                    && !c.path.contains("/oauth2/")
            })
            .count()
    };
    let gets = |sim: &AzureSim| {
        sim.calls()
            .iter()
            .filter(|c| c.method == "GET" && !c.path.contains("/oauth2/"))
            .count()
    };
    let gone: Vec<Config> = set
        .iter()
        .map(|c| Config {
            deleting: true,
            ..c.clone()
        })
        .collect();
    let (c, i) = (configs as u64, u64::from(instances));
    // phase, the configurations it reconciles, upstream's writes, the floor, whether all must end Ready
    let phases = [
        (
            "create",
            &set,
            upstream_create_writes(c, i),
            floor_writes(c, i),
            true,
        ),
        ("no-op resync", &set, upstream_resync_writes(), 0, false),
        (
            "delete",
            &gone,
            upstream_delete_writes(c, i),
            floor_writes(c, i),
            false,
        ),
    ];
    let mut rows = Vec::new();
    for (phase, configs_now, upstream, floor, all_ready) in phases {
        sim.clear_calls();
        // The client's own count tells a poll of a write's operation from a read (docs/operator.md "Metrics").
        let (reads_before, polls_before) = (
            metrics.arm_call_total(&["GET"]),
            metrics.arm_call_total(&["POLL"]),
        );
        let t = Instant::now();
        let out = apply::reconcile(
            &arm,
            &cfg,
            &p,
            configs_now,
            &BTreeMap::new(),
            8082,
            &observe::PassReads::default(),
        )
        .await
        .expect(phase);
        if all_ready {
            assert!(
                out.facts.values().all(|f| f.is_complete()),
                "every configuration is Ready"
            );
        }
        let seconds = t.elapsed().as_secs_f64();
        let reads = metrics.arm_call_total(&["GET"]) - reads_before;
        let polls = metrics.arm_call_total(&["POLL"]) - polls_before;
        assert_eq!(
            usize::try_from(reads + polls).ok(),
            Some(gets(&sim)),
            "every GET the simulator saw is a read or a poll"
        );
        rows.push(Row {
            configs,
            instances,
            phase,
            writes: writes(&sim),
            reads,
            polls,
            upstream,
            floor,
            seconds,
        });
    }
    rows
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let only = |what: &str| {
        let named: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        named.is_empty() || named.iter().any(|a| *a == what)
    };
    if only("writes") {
        write_table(smoke).await;
    }
    if only("steady") {
        steady::table(if smoke { steady::SMOKE } else { steady::PUBLISHED }).await;
    }
}

async fn write_table(smoke: bool) {
    let (instance_counts, config_counts): (&[u32], &[usize]) = if smoke {
        (&[2], &[1])
    } else {
        (&[2, 16], &[1, 10, 50])
    };
    println!(
        "| configurations | instances | phase | ARM writes | floor | upstream writes | ratio | floor / upstream | ARM reads | ARM polls | wall time (s) |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let pct = |a: f64, b: u64| {
        if b == 0 {
            "-".to_string()
        } else {
            format!("{:.1} %", 100.0 * a / b as f64)
        }
    };
    for &instances in instance_counts {
        for &configs in config_counts {
            for r in measure(configs, instances).await {
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
                    r.configs,
                    r.instances,
                    r.phase,
                    r.writes,
                    r.floor,
                    r.upstream,
                    pct(r.writes as f64, r.upstream),
                    pct(r.floor as f64, r.upstream),
                    r.reads,
                    r.polls,
                    r.seconds
                );
            }
        }
    }
}

/// The whole operator's steady-state cost: its work loop (`run::run_operator_with`) with watches on the
/// Kubernetes simulator and the ARM simulator, once every configuration is Ready. Counts what one all-pool
/// pass (what the 5-minute drift repair runs) and one Node heartbeat cost in ARM reads and Kubernetes requests.
mod steady {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
    use operator::pass::Operator;
    use operator::run::{RunOptions, run_operator_with};
    use testbed::kube::KubeSim;

    /// The cluster a run sets up.
    #[derive(Clone, Copy)]
    pub struct Shape {
        pools: usize,
        instances: u32,
        configs_per_pool: usize,
        user_nodes: usize,
    }

    /// The size docs/performance.md reports.
    pub const PUBLISHED: Shape = Shape {
        pools: 3,
        instances: 4,
        configs_per_pool: 5,
        user_nodes: 20,
    };

    /// The smallest that still has every kind of object (`--smoke`).
    pub const SMOKE: Shape = Shape {
        pools: 1,
        instances: 2,
        configs_per_pool: 1,
        user_nodes: 1,
    };
    /// The operator's identity on the Kubernetes simulator (its requests are counted apart from the
    /// benchmark's own).
    const OPERATOR: &str = common::OPERATOR_USER;

    fn pool_name(p: usize) -> String {
        format!("gw{p}")
    }

    /// ARM and Kubernetes counters at one moment.
    #[derive(Clone, Default)]
    struct Counts {
        arm_reads: usize,
        arm_writes: usize,
        kube: BTreeMap<(String, String), u64>,
    }

    impl Counts {
        fn take(azure: &AzureSim, kube: &KubeSim) -> Counts {
            let calls: Vec<_> = azure
                .calls()
                .into_iter()
                .filter(|c| !c.path.contains("/oauth2/"))
                .collect();
            Counts {
                arm_reads: calls.iter().filter(|c| c.method == "GET").count(),
                arm_writes: calls.iter().filter(|c| c.method != "GET").count(),
                kube: kube.verbs_by(OPERATOR),
            }
        }

        /// (ARM reads, ARM writes, Kubernetes LIST, GET, writes, WATCH) since `before`.
        fn since(&self, before: &Counts) -> (usize, usize, u64, u64, u64, u64) {
            let verb = |c: &Counts, pred: &dyn Fn(&str) -> bool| -> u64 {
                c.kube.iter().filter(|((v, _), _)| pred(v)).map(|(_, n)| n).sum()
            };
            let d = |pred: &dyn Fn(&str) -> bool| verb(self, pred) - verb(before, pred);
            (
                self.arm_reads - before.arm_reads,
                self.arm_writes - before.arm_writes,
                d(&|v| v == "list"),
                d(&|v| v == "get"),
                d(&|v| !matches!(v, "list" | "get" | "watch")),
                d(&|v| v == "watch"),
            )
        }
    }

    /// Waits until the work loop has been idle for a while (no pass started in `quiet`).
    async fn settle(op: &Operator, quiet: Duration) {
        loop {
            let started = op.passes.started();
            tokio::time::sleep(quiet).await;
            if op.passes.started() == started && op.passes.idle() {
                return;
            }
        }
    }

    pub async fn table(shape: Shape) {
        let mut seed = Seed::aks_like(shape.instances);
        seed.vm_scale_sets = (0..shape.pools)
            .map(|p| testbed::azure::seed::VmssSeed {
                name: format!("aks-{}-12345678-vmss", pool_name(p)),
                pool_name: pool_name(p),
                gateway_prefix_size: Some(30),
                instances: shape.instances,
                ..seed.vm_scale_sets[0].clone()
            })
            .collect();
        seed.public_ip_ranges = vec!["20.10.0.0/16".parse().expect("range")];
        let azure = AzureSim::start(&seed).await.expect("azure-sim");
        azure.set_latency(Duration::from_millis(5));
        azure.set_lro(LroConfig {
            in_progress_polls: 0,
            max_duration_ms: 0,
            ..Default::default()
        });
        let kube = common::counting_sim(&["kube-egress-gateway-system", "app"]).await;
        let admin = kube.client("admin").expect("client");
        let nodes: Api<Node> = Api::all(admin.clone());
        for p in 0..shape.pools {
            for i in 0..shape.instances {
                let labels = json!({"kubernetes.azure.com/agentpool": pool_name(p), "kubernetes.azure.com/mode": "gateway"});
                nodes
                    .create(
                        &PostParams::default(),
                        &common::ready_node(&format!("aks-{}-12345678-vmss{i:06}", pool_name(p)), labels),
                    )
                    .await
                    .expect("gateway node");
            }
        }
        for i in 0..shape.user_nodes {
            let labels =
                json!({"kubernetes.azure.com/agentpool": "user", "kubernetes.azure.com/mode": "user"});
            nodes
                .create(
                    &PostParams::default(),
                    &common::ready_node(&format!("aks-user-{i}"), labels),
                )
                .await
                .expect("user node");
        }
        let pools: Api<api::GatewayPool> = Api::all(admin.clone());
        let sgcs: Api<api::StaticGatewayConfiguration> = Api::namespaced(admin.clone(), "app");
        for p in 0..shape.pools {
            let gp: api::GatewayPool = serde_json::from_value(json!({
                "metadata": {"name": pool_name(p)},
                "spec": {"gatewayNodepoolName": pool_name(p), "publicIpPrefixSize": 30}
            }))
            .expect("pool");
            pools.create(&PostParams::default(), &gp).await.expect("pool");
            for c in 0..shape.configs_per_pool {
                let s: api::StaticGatewayConfiguration = serde_json::from_value(json!({
                    "metadata": {"name": format!("{}-c{c}", pool_name(p)), "namespace": "app"},
                    "spec": {"gatewayNodepoolName": pool_name(p)}
                }))
                .expect("sgc");
                sgcs.create(&PostParams::default(), &s).await.expect("sgc");
            }
        }

        let cfg = common::cloud_config(&seed, &azure);
        let metrics = Metrics::new();
        let arm = common::arm_with(&cfg, &metrics, RetryBudget::default());
        let op = Arc::new(Operator::new(
            kube.client(OPERATOR).expect("operator client"),
            arm,
            cfg,
            "kube-egress-gateway-system".into(),
            "kube-egress-gateway-system".into(),
            8082,
            metrics,
        ));
        let (leading_tx, leading) = tokio::sync::watch::channel(true);
        let (_shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
        let options = RunOptions {
            converging_recheck: Duration::from_millis(500),
            ..RunOptions::default()
        };
        tokio::spawn(run_operator_with(
            op.clone(),
            leading,
            Default::default(),
            shutdown,
            options,
        ));
        let t = Instant::now();
        loop {
            let ready = sgcs
                .list(&ListParams::default())
                .await
                .expect("list")
                .items
                .iter()
                .filter(|s| s.status.as_ref().is_some_and(|st| st.is_ready_for_pods()))
                .count();
            let pools_ready = pools
                .list(&ListParams::default())
                .await
                .expect("list")
                .items
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .is_some_and(|st| st.ready_instances == shape.instances as i32)
                })
                .count();
            if ready == shape.pools * shape.configs_per_pool && pools_ready == shape.pools {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(120), "never Ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        settle(&op, Duration::from_secs(2)).await;

        println!();
        println!(
            "{} VMSS pools × {} instances, {} configurations per pool, {} gateway + {} other Nodes",
            shape.pools,
            shape.instances,
            shape.configs_per_pool,
            shape.pools as u32 * shape.instances,
            shape.user_nodes
        );
        println!();
        println!(
            "| event | passes | ARM reads | ARM writes | Kubernetes LIST | Kubernetes GET | Kubernetes writes | Kubernetes WATCH (new) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        let row = |what: &str, passes: u64, (r, w, l, g, kw, wa): (usize, usize, u64, u64, u64, u64)| {
            println!("| {what} | {passes} | {r} | {w} | {l} | {g} | {kw} | {wa} |");
        };

        // An all-pool pass: what the periodic drift repair runs (a leadership change runs the same).
        let before = Counts::take(&azure, &kube);
        let passes = op.passes.started();
        leading_tx.send_replace(true);
        while op.passes.finished() <= passes {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        settle(&op, Duration::from_secs(1)).await;
        row(
            "all-pool pass (periodic drift repair), no drift",
            op.passes.started() - passes,
            Counts::take(&azure, &kube).since(&before),
        );

        // Heartbeats: the kubelet's status update (a condition's lastHeartbeatTime) on one Node.
        for (what, name) in [
            (
                "heartbeat of one gateway Node",
                format!("aks-{}-12345678-vmss000000", pool_name(0)),
            ),
            ("heartbeat of one other Node", "aks-user-0".to_string()),
        ] {
            let before = Counts::take(&azure, &kube);
            let passes = op.passes.started();
            let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": "2026-01-01T00:00:10Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
                .expect("heartbeat");
            settle(&op, Duration::from_secs(1)).await;
            row(
                what,
                op.passes.started() - passes,
                Counts::take(&azure, &kube).since(&before),
            );
        }
    }
}
