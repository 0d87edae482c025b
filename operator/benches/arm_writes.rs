//! ARM writes and time-to-Ready of the per-pool operator on the ARM simulator, next to what upstream's
//! per-configuration algorithm issues for the same work.
//!
//! Run: `cargo bench -p operator --bench arm_writes` (or `--profile dev` to skip the release build; the
//! simulated ARM latency dominates either way). Prints a Markdown table for docs/performance.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use api::PoolRef;
use operator::azure::{Arm, RetryBudget};
use operator::config::CloudConfig;
use operator::desired::{Config, Egress};
use operator::metrics::Metrics;
use operator::reconcile::pool;
use serde_json::json;
use testbed::azure::{AzureSim, LroConfig, Seed};

/// Per-request latency of the simulated ARM front door.
const ARM_LATENCY: Duration = Duration::from_millis(40);

/// Upstream's writes for N new configurations with managed prefixes on an I-instance VMSS pool, from its
/// algorithm (upstream.md §3.2-3.3), per configuration:
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
    });
    let text = json!({
        "cloud": "AzurePublicCloud", "location": seed.location, "subscriptionId": seed.subscription_id,
        "tenantId": seed.tenant_id, "aadClientId": seed.service_principals[0].client_id,
        "aadClientSecret": seed.service_principals[0].client_secret, "resourceGroup": "node-rg",
        "vnetName": "aks-vnet", "subnetName": "aks-subnet", "resourceManagerEndpoint": sim.url(),
        "activeDirectoryAuthorityHost": sim.url()
    })
    .to_string();
    let cfg = CloudConfig::parse(&text, |_| None).expect("config");
    let metrics = Metrics::new();
    let arm = Arm::new(
        &cfg,
        operator::azure::credential(&cfg).expect("credential"),
        RetryBudget::default(),
        &metrics,
    )
    .expect("clients");
    let p = pool::resolve(&arm, &cfg, &PoolRef::Nodepool("gateway".into()), None)
        .await
        .expect("pool");
    let set: Vec<Config> = (0..configs)
        .map(|i| Config {
            uid: format!("00000000-0000-0000-0000-{i:012}"),
            egress: Egress::Managed,
            deleting: false,
        })
        .collect();
    let writes = |sim: &AzureSim| {
        sim.calls()
            .iter()
            .filter(|c| {
                matches!(c.method.as_str(), "PUT" | "DELETE" | "PATCH" | "POST")
                    && !c.path.contains("/oauth2/")
            })
            .count()
    };
    let mut rows = Vec::new();
    let (c, i) = (configs as u64, u64::from(instances));

    sim.clear_calls();
    let t = Instant::now();
    let out = pool::reconcile(&arm, &cfg, &p, &set, &BTreeMap::new(), 8082)
        .await
        .expect("create");
    assert!(
        out.facts.values().all(|f| f.is_complete()),
        "every configuration is Ready"
    );
    rows.push(Row {
        configs,
        instances,
        phase: "create",
        writes: writes(&sim),
        upstream: upstream_create_writes(c, i),
        floor: floor_writes(c, i),
        seconds: t.elapsed().as_secs_f64(),
    });

    sim.clear_calls();
    let t = Instant::now();
    pool::reconcile(&arm, &cfg, &p, &set, &BTreeMap::new(), 8082)
        .await
        .expect("resync");
    rows.push(Row {
        configs,
        instances,
        phase: "no-op resync",
        writes: writes(&sim),
        upstream: upstream_resync_writes(),
        floor: 0,
        seconds: t.elapsed().as_secs_f64(),
    });

    let gone: Vec<Config> = set
        .iter()
        .map(|c| Config {
            deleting: true,
            ..c.clone()
        })
        .collect();
    sim.clear_calls();
    let t = Instant::now();
    pool::reconcile(&arm, &cfg, &p, &gone, &BTreeMap::new(), 8082)
        .await
        .expect("delete");
    rows.push(Row {
        configs,
        instances,
        phase: "delete",
        writes: writes(&sim),
        upstream: upstream_delete_writes(c, i),
        floor: floor_writes(c, i),
        seconds: t.elapsed().as_secs_f64(),
    });
    rows
}

#[tokio::main]
async fn main() {
    println!(
        "| configurations | instances | phase | ARM writes | floor | upstream writes | ratio | floor / upstream | wall time (s) |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    let pct = |a: f64, b: u64| {
        if b == 0 {
            "-".to_string()
        } else {
            format!("{:.1} %", 100.0 * a / b as f64)
        }
    };
    for instances in [2, 16] {
        for configs in [1, 10, 50] {
            for r in measure(configs, instances).await {
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
                    r.configs,
                    r.instances,
                    r.phase,
                    r.writes,
                    r.floor,
                    r.upstream,
                    pct(r.writes as f64, r.upstream),
                    pct(r.floor as f64, r.upstream),
                    r.seconds
                );
            }
        }
    }
}
