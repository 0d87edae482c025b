//! Fields the operator does not own survive its writes. The simulator seeds properties no model of the
//! operator knows (top-level and nested: the scale set's model, its network profile, NIC configurations and
//! ipConfigurations, instances, VM-pool NICs, and a load balancer that already holds someone else's entries);
//! the operator creates, updates, repairs and deletes its configurations; every one of those properties is
//! still there, and no PUT ever lacked a field the object had, other than the entries the operator owns.

use std::collections::{BTreeMap, BTreeSet};

use operator::azure::Arm;
use operator::azure::observe::ResolvedPool;
use operator::config::CloudConfig;
use operator::desired::{Config, Egress};
use operator::metrics::Metrics;
use serde_json::{Value, json};
use testbed::azure::world::{dropped_fields, foreign_fields};
use testbed::azure::{AzureSim, Seed};

mod common;
mod pool_support;

use pool_support::deleting;

const LB_ID: &str = "/subscriptions/00000000-0000-0000-0000-00000000a5b1/resourceGroups/node-rg/providers/Microsoft.Network/loadBalancers/kubeegressgateway-ilb";

struct Env {
    sim: AzureSim,
    cfg: CloudConfig,
    arm: Arm,
}

async fn start(seed: Seed) -> Env {
    let sim = AzureSim::start(&seed).await.expect("simulator starts");
    sim.record_puts();
    let cfg = common::cloud_config(&seed, &sim);
    let arm = common::arm(&cfg, &Metrics::new());
    Env { sim, cfg, arm }
}

fn configs(uids: &[&str], egress: &Egress) -> Vec<Config> {
    uids.iter()
        .map(|u| Config {
            uid: format!("00000000-0000-0000-0000-{u:0>12}"),
            egress: egress.clone(),
            deleting: false,
            kept: false,
            adopted: None,
            status_port: None,
        })
        .collect()
}

/// Every resource's unknown properties, by resource ID.
fn foreign(sim: &AzureSim) -> BTreeMap<String, Vec<String>> {
    sim.with_state(|s| {
        s.world
            .resource_ids()
            .into_iter()
            .filter_map(|id| {
                let fields = foreign_fields(s.world.get(&id)?);
                (!fields.is_empty()).then_some((id, fields))
            })
            .collect()
    })
}

/// Every unknown property seeded is still on its resource.
fn assert_kept(env: &Env, seeded: &BTreeMap<String, Vec<String>>, step: &str) {
    let now = foreign(&env.sim);
    for (id, fields) in seeded {
        let kept = now.get(id).cloned().unwrap_or_default();
        for f in fields {
            assert!(kept.contains(f), "{step}: {id} lost {f}");
        }
    }
}

/// No PUT lacked a field of the object it replaced, except inside entries the operator owns (named by a
/// configuration uid, its managed prefix name, or the pool uid).
fn assert_puts_keep_everything(env: &Env, owned: &BTreeSet<String>) {
    let puts = env.sim.puts();
    assert!(!puts.is_empty(), "the operator wrote");
    for put in puts {
        let Some(before) = &put.before else { continue };
        for dropped in dropped_fields(before, &put.body) {
            let in_owned_entry = dropped
                .split('[')
                .skip(1)
                .filter_map(|s| s.split(']').next())
                .any(|name| owned.contains(&name.to_ascii_lowercase()));
            assert!(in_owned_entry, "PUT {} dropped {dropped}", put.id);
        }
    }
}

fn owned_names(pool: &ResolvedPool, configs: &[Config]) -> BTreeSet<String> {
    configs
        .iter()
        .flat_map(|c| [c.uid.clone(), api::names::managed_resource_name(&c.uid)])
        .chain([pool.pool.uid.clone()])
        .map(|n| n.to_ascii_lowercase())
        .collect()
}

/// Someone removes the operator's entries with `remove` (keeping everything else as stored).
fn drift(env: &Env, id: &str, remove: impl FnOnce(&mut Value)) {
    let mut v = env
        .sim
        .with_state(|s| s.world.get(id).cloned())
        .expect("resource exists");
    remove(&mut v);
    let properties = v["properties"].clone();
    env.sim
        .patch_resource(id, &json!({ "properties": properties }))
        .expect("patch");
}

fn retain_named(v: &mut Value, ptr: &str, keep: impl Fn(&str) -> bool) {
    if let Some(Value::Array(items)) = v.pointer_mut(ptr) {
        items.retain(|i| keep(i["name"].as_str().unwrap_or_default()));
    }
}

#[tokio::test]
async fn a_scale_set_pool_keeps_every_field_it_does_not_own() {
    let env = start(Seed::aks_like(2).with_foreign_fields()).await;
    let seeded = foreign(&env.sim);
    let lower: Vec<String> = seeded.keys().map(|k| k.to_ascii_lowercase()).collect();
    assert!(
        lower
            .iter()
            .any(|k| k.ends_with("/loadbalancers/kubeegressgateway-ilb"))
    );
    assert!(lower.iter().any(|k| k.ends_with("-vmss")));
    assert_eq!(
        lower.iter().filter(|k| k.contains("/virtualmachines/")).count(),
        2,
        "{seeded:?}"
    );
    let before = common::resources(&env.sim);
    let pool = pool_support::resolve(&env.arm, &env.cfg).await;

    // Create.
    let mut all = configs(&["a", "b"], &Egress::Managed);
    let out = pool_support::reconcile(&env.arm, &env.cfg, &pool, &all).await;
    assert!(out.writes > 0);
    assert_kept(&env, &seeded, "create");

    // Update: one more configuration, one fewer.
    all.extend(configs(&["c"], &Egress::Managed));
    all[0].deleting = true;
    pool_support::reconcile(&env.arm, &env.cfg, &pool, &all).await;
    all.remove(0);
    assert_kept(&env, &seeded, "update");

    // Drift repair: someone removes a rule and probe, and an instance's egress ipConfiguration.
    let victim = all[0].uid.clone();
    drift(&env, LB_ID, |lb| {
        retain_named(lb, "/properties/loadBalancingRules", |n| n != victim);
        retain_named(lb, "/properties/probes", |n| n != victim);
    });
    let instance = format!(
        "/subscriptions/00000000-0000-0000-0000-00000000a5b1/resourceGroups/node-rg/providers/Microsoft.Compute/virtualMachineScaleSets/{}/virtualMachines/0",
        pool.name
    );
    let ip_config = api::names::managed_resource_name(&victim);
    drift(&env, &instance, |vm| {
        retain_named(
            vm,
            "/properties/networkProfileConfiguration/networkInterfaceConfigurations/0/properties/ipConfigurations",
            |n| !n.eq_ignore_ascii_case(&ip_config),
        );
    });
    let repaired = pool_support::reconcile(&env.arm, &env.cfg, &pool, &all).await;
    assert!(repaired.writes >= 2, "{:?}", repaired.plan);
    assert_kept(&env, &seeded, "drift repair");

    // Delete every configuration: the load balancer stays for its other owner.
    pool_support::reconcile(&env.arm, &env.cfg, &pool, &deleting(&all)).await;
    assert_kept(&env, &seeded, "delete");
    let lb = env
        .arm
        .get_lb("node-rg", "kubeegressgateway-ilb")
        .await
        .expect("GET");
    let lb = lb.expect("the load balancer still serves its other owner");
    assert_eq!(lb["properties"]["loadBalancingRules"][0]["name"], "other-rule");
    assert_eq!(common::resources(&env.sim), before, "nothing of ours is left");

    let every = configs(&["a", "b", "c"], &Egress::Managed);
    assert_puts_keep_everything(&env, &owned_names(&pool, &every));
}

#[tokio::test]
async fn a_vm_pool_keeps_every_field_of_its_nics() {
    let mut seed = Seed::aks_like(0);
    seed.vm_scale_sets.clear();
    let env = start(seed.with_vm_pool("gateway", 2, 2).with_foreign_fields()).await;
    let seeded = foreign(&env.sim);
    assert_eq!(
        seeded
            .keys()
            .filter(|k| k.to_ascii_lowercase().contains("/networkinterfaces/"))
            .count(),
        2,
        "{seeded:?}"
    );
    let before = common::resources(&env.sim);
    let pool = pool_support::resolve(&env.arm, &env.cfg).await;

    let mut all = configs(&["a"], &Egress::Private);
    all.extend(configs(&["b"], &Egress::Managed));
    pool_support::reconcile(&env.arm, &env.cfg, &pool, &all).await;
    assert_kept(&env, &seeded, "create");
    assert_eq!(
        pool_support::reconcile(&env.arm, &env.cfg, &pool, &all)
            .await
            .writes,
        0,
        "steady state"
    );

    pool_support::reconcile(&env.arm, &env.cfg, &pool, &deleting(&all)).await;
    assert_kept(&env, &seeded, "delete");
    assert_eq!(common::resources(&env.sim), before, "nothing of ours is left");
    assert_puts_keep_everything(&env, &owned_names(&pool, &all));
}
