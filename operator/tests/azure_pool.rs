//! The Azure half of the operator against the ARM simulator, through the operator's real ARM client (raw
//! JSON on the azure_core pipeline): coalesced writes, steady state without writes, deletion without leaks, and fault injection.

use operator::azure::Arm;
use operator::azure::apply::{self, PoolOutcome};
use operator::azure::observe::{self, ResolvedPool};
use operator::config::CloudConfig;
use operator::desired::{Config, Egress};
use operator::metrics::Metrics;
use serde_json::{Value, json};
use testbed::azure::{AzureSim, CallRecord, FaultSpec, LroConfig, Seed};

mod common;
mod pool_support;

use pool_support::deleting;

struct Env {
    sim: AzureSim,
    cfg: CloudConfig,
    arm: Arm,
    metrics: Metrics,
}

async fn start(seed: Seed) -> Env {
    let sim = AzureSim::start(&seed).await.expect("simulator starts");
    let cfg = common::cloud_config(&seed, &sim);
    let metrics = Metrics::new();
    let arm = common::arm(&cfg, &metrics);
    Env {
        sim,
        cfg,
        arm,
        metrics,
    }
}

fn managed(n: usize) -> Vec<Config> {
    common::managed_configs(n)
}

async fn resolve(env: &Env) -> ResolvedPool {
    pool_support::resolve(&env.arm, &env.cfg).await
}

async fn run(env: &Env, pool: &ResolvedPool, configs: &[Config]) -> PoolOutcome {
    pool_support::reconcile(&env.arm, &env.cfg, pool, configs).await
}

fn writes(env: &Env, method: &str, path: &str) -> usize {
    env.sim.count_calls(method, path)
}

#[tokio::test]
async fn fifty_configurations_converge_with_one_lb_put_one_vmss_put_and_one_update_per_instance() {
    let env = start(Seed::aks_like(2)).await;
    let before = common::resources(&env.sim);
    let pool = resolve(&env).await;
    let configs = managed(50);
    env.sim.clear_calls();
    let out = run(&env, &pool, &configs).await;

    assert_eq!(writes(&env, "PUT", "(?i)/publicIPPrefixes/[^/]+$"), 50);
    assert_eq!(writes(&env, "PUT", "(?i)/loadBalancers/[^/]+$"), 1);
    assert_eq!(writes(&env, "PUT", "(?i)/virtualMachineScaleSets/[^/]+$"), 1);
    assert_eq!(writes(&env, "PUT", "(?i)/virtualMachines/[^/]+$"), 2);
    assert_eq!(out.writes, 54);
    let mut ports: Vec<u16> = out.facts.values().filter_map(|f| f.port).collect();
    ports.sort_unstable();
    assert_eq!(ports, (6000..6050).collect::<Vec<_>>());
    for (uid, f) in &out.facts {
        assert!(f.is_complete(), "{uid}: {f:?}");
        assert!(
            f.egress_ip_prefix.as_deref().is_some_and(|p| p.ends_with("/31")),
            "{f:?}"
        );
        assert_eq!(f.vm_profiles.len(), 2, "{f:?}");
    }
    assert!(env.metrics.arm_call_total(&["PUT"]) >= 54);

    // Steady state: reads only.
    env.sim.clear_calls();
    let again = run(&env, &pool, &configs).await;
    assert_eq!(again.writes, 0);
    assert!(again.plan.is_noop());
    assert_eq!(
        env.sim.calls().iter().filter(|c| c.method != "GET").count(),
        0,
        "{:?}",
        env.sim.calls()
    );

    // Deleting everything at once leaves nothing behind.
    env.sim.clear_calls();
    let gone = run(&env, &pool, &deleting(&configs)).await;
    assert_eq!(writes(&env, "DELETE", "(?i)/loadBalancers/[^/]+$"), 1);
    assert_eq!(writes(&env, "PUT", "(?i)/virtualMachineScaleSets/[^/]+$"), 1);
    assert_eq!(writes(&env, "DELETE", "(?i)/publicIPPrefixes/[^/]+$"), 50);
    assert_eq!(writes(&env, "DELETE", "(?i)/publicIPAddresses/"), 0);
    assert_eq!(gone.writes, 1 + 1 + 2 + 50);
    assert_eq!(
        common::resources(&env.sim),
        before,
        "inventory is back to the seed"
    );
    assert_eq!(env.sim.inventory()["publicBlocks"], json!([]));
}

#[tokio::test]
async fn private_mode_reports_the_secondary_ips_and_switching_cleans_the_prefix() {
    let env = start(Seed::aks_like(2)).await;
    let before = common::resources(&env.sim);
    let pool = resolve(&env).await;
    let mut configs = managed(1);
    let out = run(&env, &pool, &configs).await;
    let public = out.facts.values().next().cloned().expect("facts");
    assert!(
        public
            .egress_ip_prefix
            .as_deref()
            .is_some_and(|p| p.contains('/'))
    );

    configs[0].egress = Egress::Private;
    let out = run(&env, &pool, &configs).await;
    assert_eq!(out.plan.prefixes_to_delete.len(), 1);
    let f = out.facts.values().next().cloned().expect("facts");
    let ips: Vec<&str> = f
        .egress_ip_prefix
        .as_deref()
        .expect("private IPs")
        .split(',')
        .collect();
    assert_eq!(ips.len(), 2);
    assert!(ips.iter().all(|ip| ip.starts_with("10.224.")), "{ips:?}");
    assert_eq!(f.port, public.port, "the port does not move");
    assert_eq!(run(&env, &pool, &configs).await.writes, 0);

    run(&env, &pool, &deleting(&configs)).await;
    assert_eq!(common::resources(&env.sim), before);
}

#[tokio::test]
async fn a_short_429_storm_is_absorbed_and_a_long_one_surfaces_with_the_arm_code() {
    let env = start(Seed::aks_like(2)).await;
    let before = common::resources(&env.sim);
    let pool = resolve(&env).await;
    let configs = managed(3);

    env.sim
        .inject_fault(FaultSpec::throttle("(?i)/loadBalancers/", 3, 10))
        .expect("fault");
    let out = run(&env, &pool, &configs).await;
    assert!(out.facts.values().all(|f| f.is_complete()));

    // More 429s than the retry budget: the error says so, nothing loops silently.
    env.sim
        .inject_fault(FaultSpec::throttle("(?i)/virtualMachineScaleSets/", 50, 1))
        .expect("fault");
    let err = pool_support::try_reconcile(&env.arm, &env.cfg, &pool, &deleting(&configs))
        .await
        .expect_err("throttled");
    let msg = err.to_string();
    assert!(msg.contains("TooManyRequests"), "{msg}");
    match &err {
        observe::PoolError::Arm(a) => assert!(a.is_throttled() && a.reason() == "AzureThrottled"),
        other => panic!("expected an ARM error, got {other:?}"),
    }
    env.sim.with_state(|s| s.clear_faults());
    run(&env, &pool, &deleting(&configs)).await;
    assert_eq!(
        common::resources(&env.sim),
        before,
        "converged without leaks after the storm"
    );
}

#[tokio::test]
async fn server_errors_and_lost_responses_converge_without_duplicates() {
    let env = start(Seed::aks_like(2)).await;
    let before = common::resources(&env.sim);
    let pool = resolve(&env).await;
    let configs = managed(4);
    // 500 on the VMSS PUT (retried by the client), and a lost response on an instance update: the write
    // happened, the operator saw an error; the next reconcile must converge without redoing anything twice.
    env.sim
        .inject_fault(FaultSpec::new(
            "PUT",
            "(?i)/virtualMachineScaleSets/[^/]+$",
            2,
            500,
            "InternalServerError",
        ))
        .expect("fault");
    let mut lost = FaultSpec::new("PUT", "(?i)/virtualMachines/[^/]+$", 1, 409, "Conflict");
    lost.after_apply = true;
    env.sim.inject_fault(lost).expect("fault");
    let first = pool_support::try_reconcile(&env.arm, &env.cfg, &pool, &configs)
        .await
        .expect("a refused instance update is that instance's, not the pool's");
    let refused: Vec<Option<&str>> = first.failed_updates.values().map(|e| e.code.as_deref()).collect();
    assert_eq!(
        refused,
        [Some("Conflict")],
        "the lost response surfaces, for its instance"
    );
    let out = run(&env, &pool, &configs).await;
    assert!(out.facts.values().all(|f| f.is_complete()), "{:?}", out.facts);
    assert_eq!(run(&env, &pool, &configs).await.writes, 0);
    let inv = env.sim.inventory();
    assert_eq!(
        inv["publicBlocks"].as_array().map(Vec::len),
        Some(4),
        "one prefix per configuration"
    );
    run(&env, &pool, &deleting(&configs)).await;
    assert_eq!(common::resources(&env.sim), before);
}

#[tokio::test]
async fn a_failed_instance_is_repaired_and_drift_is_undone() {
    let env = start(Seed::aks_like(2)).await;
    let pool = resolve(&env).await;
    let configs = managed(1);
    run(&env, &pool, &configs).await;
    let instance = env.sim.inventory()["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .find(|r| r.contains("/virtualMachines/") && r.contains("virtualMachineScaleSets"))
        .map(str::to_string)
        .expect("an instance");
    env.sim
        .patch_resource(&instance, &json!({"properties": {"provisioningState": "Failed"}}))
        .expect("patch");
    env.sim.clear_calls();
    let out = run(&env, &pool, &configs).await;
    assert_eq!(out.writes, 1, "{:?}", out.plan);
    assert_eq!(writes(&env, "PUT", "(?i)/virtualMachines/[^/]+$"), 1);
    assert_eq!(run(&env, &pool, &configs).await.writes, 0);
}

fn vm_pool_seed() -> Seed {
    let mut seed = Seed::aks_like(0);
    seed.vm_scale_sets.clear();
    seed.with_vm_pool("gateway", 2, 2)
}

#[tokio::test]
async fn vm_pool_private_and_public_mode_through_the_pre_created_nics() {
    let env = start(vm_pool_seed()).await;
    let before = common::resources(&env.sim);
    let pool = resolve(&env).await;
    assert_eq!(pool.pool.kind, operator::desired::PoolKind::Vm);
    assert_eq!(pool.pool.uid, api::names::vm_pool_uid("gateway"));

    let mut configs = managed(2);
    configs[0].egress = Egress::Private;
    env.sim.clear_calls();
    let out = run(&env, &pool, &configs).await;
    assert_eq!(
        writes(&env, "PUT", "(?i)/networkInterfaces/[^/]+$"),
        2,
        "one PUT per NIC for both configurations"
    );
    assert_eq!(
        writes(&env, "PUT", "(?i)/publicIPAddresses/[^/]+$"),
        2,
        "one public IP per NIC for the public one"
    );
    let private = &out.facts[&configs[0].uid];
    assert_eq!(
        private.egress_ip_prefix.as_deref().map(|p| p.split(',').count()),
        Some(2),
        "{private:?}"
    );
    let public = &out.facts[&configs[1].uid];
    assert!(
        public
            .egress_ip_prefix
            .as_deref()
            .is_some_and(|p| p.ends_with("/31")),
        "{public:?}"
    );
    assert_eq!(run(&env, &pool, &configs).await.writes, 0, "steady state");

    run(&env, &pool, &deleting(&configs)).await;
    assert_eq!(
        common::resources(&env.sim),
        before,
        "NIC ipConfigurations, public IPs, prefix and LB all gone"
    );
}

/// The public IPs of the node resource group: name → (prefix name, `egressgateway-pool-uid` tag), lower-cased.
async fn public_ips(env: &Env) -> std::collections::BTreeMap<String, (String, Option<String>)> {
    env.arm
        .list_public_ips("node-rg")
        .await
        .expect("LIST public IPs")
        .iter()
        .map(|ip| {
            let prefix = ip["properties"]["publicIPPrefix"]["id"]
                .as_str()
                .unwrap_or_default();
            (
                ip["name"].as_str().unwrap_or_default().to_ascii_lowercase(),
                (
                    operator::desired::last_segment(prefix).to_ascii_lowercase(),
                    ip["tags"][api::names::TAG_GATEWAY_POOL_UID]
                        .as_str()
                        .map(str::to_string),
                ),
            )
        })
        .collect()
}

/// A VM pool's NIC that is deleted (after its VM) leaves the public IPs the operator made for it unused: the
/// next reconcile deletes them, the managed prefix's and the BYO prefix's, and nothing else, not the user's
/// public IP on the same BYO prefix.
#[tokio::test]
async fn a_vm_pool_deletes_the_public_ips_of_a_nic_that_is_gone_and_keeps_the_users() {
    // One NIC with its VM, one whose VM is already gone (a spare NIC).
    let mut seed = Seed::aks_like(0);
    seed.vm_scale_sets.clear();
    let env = start(seed.with_vm_pool("gateway", 1, 2)).await;
    let mut pool = resolve(&env).await;
    // A /30 BYO prefix, the user's (room for the user's IP and one per NIC); the managed one the same length.
    pool.pool.prefix_len = 30;
    let location = env.cfg.location.clone();
    let prefix = env
        .arm
        .put_prefix(
            "node-rg",
            "prod",
            &json!({"location": location, "sku": {"name": "Standard", "tier": "Regional"},
                    "properties": {"prefixLength": 30, "publicIPAddressVersion": "IPv4"}}),
        )
        .await
        .expect("the user's prefix");
    let prefix_id = prefix["id"].as_str().expect("id").to_string();
    env.arm
        .put_public_ip(
            "node-rg",
            "prod-appgw-pip",
            &operator::azure::json::public_ip_body(&location, &prefix_id, None),
        )
        .await
        .expect("the user's public IP");
    let mut configs = managed(2);
    configs[0].egress = Egress::Byo {
        prefix: api::arm::parse_public_ip_prefix_id(&prefix_id).expect("prefix ID"),
    };
    let managed_prefix = api::names::managed_resource_name(&configs[1].uid);
    run(&env, &pool, &configs).await;

    let ours = |nic: &str| {
        ["prod", managed_prefix.as_str()]
            .map(|p| api::names::vm_pool_public_ip_name(p, nic).to_ascii_lowercase())
    };
    let (kept_nic, gone_nic) = ("aks-gateway-12345678-nic0", "aks-gateway-12345678-nic1");
    let all = public_ips(&env).await;
    for name in ours(kept_nic).iter().chain(ours(gone_nic).iter()) {
        assert_eq!(
            all.get(name).and_then(|(_, tag)| tag.as_deref()),
            Some(pool.pool.uid.as_str()),
            "{name}: tagged with its pool: {all:?}"
        );
    }
    let users = all.get("prod-appgw-pip").cloned().expect("the user's IP");
    assert_eq!(users, ("prod".to_string(), None));

    // The BYO prefix's IP of the spare NIC as an operator made before the tag made it, since given a tag (by
    // its user or Azure Policy) and properties the operator does not model: the next pass tags it, with one
    // PUT, once, and keeps the rest; also a tag someone adds between its read and the operator's PUT (412,
    // then one re-read).
    let [byo_ip, managed_ip] = ours(gone_nic);
    untag(&env, &byo_ip).await;
    let extras = add_unmodelled(&env, &byo_ip).await;
    env.sim
        .inject_fault(FaultSpec::concurrent_write(
            "PUT",
            &format!("(?i)/publicIPAddresses/{byo_ip}$"),
            1,
            json!({"tags": {"costCenter": "42"}}),
        ))
        .expect("fault");
    env.sim.clear_calls();
    let out = run(&env, &pool, &configs).await;
    assert_eq!((out.writes, out.refetches), (1, 1));
    let ip_puts: Vec<u16> = env
        .sim
        .calls()
        .iter()
        .filter(|c| c.method == "PUT" && c.path.to_ascii_lowercase().contains("/publicipaddresses/"))
        .map(|c| c.status)
        .collect();
    assert_eq!(ip_puts, [412, 200], "conditional on the version read");
    assert_eq!(
        public_ips(&env).await[&byo_ip].1.as_deref(),
        Some(pool.pool.uid.as_str())
    );
    let tagged = public_ip(&env, &byo_ip).await;
    assert_eq!(
        tagged["tags"],
        json!({"owner": "platform", "costCenter": "42", api::names::TAG_GATEWAY_POOL_UID: pool.pool.uid}),
        "the tag is added to the IP's own"
    );
    for (field, value) in extras {
        assert_eq!(tagged["properties"][field], value, "{field} kept: {tagged}");
    }
    assert_eq!(run(&env, &pool, &configs).await.writes, 0, "tagged once");
    // The managed prefix's IP of the spare NIC is never tagged (its NIC goes before a pass sees it).
    untag(&env, &managed_ip).await;

    // The spare NIC is deleted (ARM releases its public IPs, it does not delete them).
    env.sim
        .with_state(|s| s.world.delete_network_interface("node-rg", gone_nic))
        .expect("NIC deleted");
    env.sim.clear_calls();
    let out = run(&env, &pool, &configs).await;
    assert_eq!(out.plan.public_ips_to_delete, std::slice::from_ref(&byo_ip));
    assert_eq!(writes(&env, "DELETE", "(?i)/publicIPAddresses/"), 1);
    let left: Vec<String> = public_ips(&env).await.into_keys().collect();
    let mut expected: Vec<String> = ours(kept_nic).to_vec();
    expected.push("prod-appgw-pip".into());
    expected.push(managed_ip.clone());
    expected.sort();
    assert_eq!(
        left, expected,
        "the untagged one cannot be told from a user's any more"
    );
    assert_eq!(run(&env, &pool, &configs).await.writes, 0, "steady state");

    run(&env, &pool, &deleting(&configs)).await;
    let left: Vec<String> = public_ips(&env).await.into_keys().collect();
    assert_eq!(
        left,
        ["prod-appgw-pip"],
        "the user's IP stays to the end (the untagged one goes with its managed prefix)"
    );
}

/// PUTs the public IP `name` again without tags, as the operator made its public IPs before it tagged them.
async fn untag(env: &Env, name: &str) {
    let ip = public_ip(env, name).await;
    let prefix = ip["properties"]["publicIPPrefix"]["id"]
        .as_str()
        .expect("its prefix");
    let location = env.cfg.location.clone();
    env.arm
        .put_public_ip(
            "node-rg",
            name,
            &operator::azure::json::public_ip_body(&location, prefix, None),
        )
        .await
        .expect("untagged");
}

/// The public IP `name` of the node resource group, as listed.
async fn public_ip(env: &Env, name: &str) -> Value {
    let ips = env.arm.list_public_ips("node-rg").await.expect("LIST public IPs");
    ips.into_iter()
        .find(|ip| ip["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .expect("the public IP exists")
}

/// Gives the public IP `name` a tag of its user's and properties the operator does not model, as its user or
/// Azure Policy may; returns those properties.
async fn add_unmodelled(env: &Env, name: &str) -> Vec<(&'static str, Value)> {
    let extras = vec![
        ("idleTimeoutInMinutes", json!(17)),
        (
            "ipTags",
            json!([{"ipTagType": "FirstPartyUsage", "tagValue": "/Unprivileged"}]),
        ),
        ("dnsSettings", json!({"domainNameLabel": "gw-spare"})),
    ];
    let mut ip = public_ip(env, name).await;
    ip["tags"] = json!({"owner": "platform"});
    for (field, value) in &extras {
        ip["properties"][*field] = value.clone();
    }
    env.arm
        .put_public_ip("node-rg", name, &ip)
        .await
        .expect("the user's changes");
    extras
}

/// The load balancer's tags, as Azure holds them now.
async fn lb_tags(env: &Env) -> Value {
    env.arm
        .get_lb("node-rg", "kubeegressgateway-ilb")
        .await
        .expect("GET LB")
        .expect("LB exists")["tags"]
        .clone()
}

#[tokio::test]
async fn a_concurrent_write_to_the_load_balancer_gives_412_and_is_kept_after_a_refetch() {
    let env = start(Seed::aks_like(2)).await;
    let before = common::resources(&env.sim);
    let pool = resolve(&env).await;
    // Another pool's (or a person's) change lands between our GET and our PUT of the shared load balancer,
    // first when it is created and again when a second configuration is added.
    let mut configs = managed(1);
    run(&env, &pool, &configs).await;
    configs.extend(managed(2).into_iter().skip(1));
    env.sim
        .inject_fault(FaultSpec::concurrent_write(
            "PUT",
            "(?i)/loadBalancers/[^/]+$",
            1,
            json!({"tags": {"owner": "someone-else"}}),
        ))
        .expect("fault");
    env.sim.clear_calls();
    let out = run(&env, &pool, &configs).await;

    assert_eq!(out.refetches, 1, "one stale ETag, one re-read");
    let lb_puts: Vec<u16> = env
        .sim
        .calls()
        .iter()
        .filter(|c| {
            c.method == "PUT"
                && c.path
                    .to_ascii_lowercase()
                    .ends_with("/loadbalancers/kubeegressgateway-ilb")
        })
        .map(|c| c.status)
        .collect();
    assert_eq!(
        lb_puts,
        [412, 200],
        "the conditional PUT failed, the re-planned one went through"
    );
    assert_eq!(
        lb_tags(&env).await["owner"],
        json!("someone-else"),
        "the other write was not overwritten"
    );
    assert!(out.facts.values().all(|f| f.is_complete()), "{:?}", out.facts);
    assert!(
        env.metrics
            .encode()
            .contains("arm_calls_total{operation=\"PUT loadBalancers\",status=\"412\"} 1"),
        "{}",
        env.metrics.encode()
    );
    assert_eq!(run(&env, &pool, &configs).await.writes, 0, "converged");

    // The same race on the deletion of the whole load balancer: the DELETE is conditional too.
    env.sim
        .inject_fault(FaultSpec::concurrent_write(
            "DELETE",
            "(?i)/loadBalancers/[^/]+$",
            1,
            json!({"tags": {"owner": "someone-else-again"}}),
        ))
        .expect("fault");
    let gone = run(&env, &pool, &deleting(&configs)).await;
    assert_eq!(gone.refetches, 1);
    assert_eq!(common::resources(&env.sim), before, "no leaks");
}

#[tokio::test]
async fn concurrent_writes_to_the_scale_set_and_an_instance_are_refetched_not_overwritten() {
    let env = start(Seed::aks_like(2)).await;
    let pool = resolve(&env).await;
    let configs = managed(2);
    env.sim
        .inject_fault(FaultSpec::concurrent_write(
            "PUT",
            "(?i)/virtualMachineScaleSets/[^/]+$",
            1,
            json!({"tags": {"drift": "model"}}),
        ))
        .expect("fault");
    env.sim
        .inject_fault(FaultSpec::concurrent_write(
            "PUT",
            "(?i)/virtualMachineScaleSets/[^/]+/virtualMachines/[^/]+$",
            1,
            json!({"tags": {"drift": "instance"}}),
        ))
        .expect("fault");
    env.sim.clear_calls();
    let out = run(&env, &pool, &configs).await;
    assert_eq!(out.refetches, 2, "one per stale ETag");
    assert_eq!(env.sim.calls().iter().filter(|c| c.status == 412).count(), 2);
    assert!(out.facts.values().all(|f| f.is_complete()), "{:?}", out.facts);
    let vmss = env
        .arm
        .get_vmss("node-rg", &pool.name)
        .await
        .expect("GET VMSS")
        .expect("VMSS");
    assert_eq!(vmss["tags"]["drift"], json!("model"), "the other write is kept");
    let tagged: Vec<Value> = env
        .arm
        .list_instances("node-rg", &pool.name)
        .await
        .expect("instances")
        .into_iter()
        .filter(|i| i["tags"]["drift"] == json!("instance"))
        .collect();
    assert_eq!(tagged.len(), 1, "the instance change is kept");
    // Each object was written exactly once successfully: the re-plan did not redo what had succeeded.
    assert_eq!(
        env.sim
            .calls()
            .iter()
            .filter(|c| c.method == "PUT" && c.status < 300)
            .count(),
        out.writes
    );
    assert_eq!(out.writes, 2 + 1 + 1 + 2, "2 prefixes, LB, VMSS, 2 instances");
    assert_eq!(run(&env, &pool, &configs).await.writes, 0);
}

#[tokio::test]
async fn a_412_storm_beyond_the_refetch_budget_surfaces_as_precondition_failed_and_converges_later() {
    let env = start(Seed::aks_like(2)).await;
    let before = common::resources(&env.sim);
    let pool = resolve(&env).await;
    let mut configs = managed(1);
    run(&env, &pool, &configs).await;
    configs = managed(2);
    let storm = u32::try_from(apply::MAX_PRECONDITION_REFETCHES + 1).expect("small");
    env.sim
        .inject_fault(FaultSpec::concurrent_write(
            "PUT",
            "(?i)/loadBalancers/[^/]+$",
            storm,
            json!({"tags": {"busy": "yes"}}),
        ))
        .expect("fault");
    let err = pool_support::try_reconcile(&env.arm, &env.cfg, &pool, &configs)
        .await
        .expect_err("bounded");
    match &err {
        observe::PoolError::Arm(a) => {
            assert!(a.is_precondition_failed(), "{a}");
            assert_eq!(a.code.as_deref(), Some("PreconditionFailed"));
            assert_eq!(a.reason(), "AzureError");
        }
        other => panic!("expected an ARM error, got {other:?}"),
    }
    env.sim.with_state(|s| s.clear_faults());
    assert_eq!(
        env.sim.count_calls("PUT", "(?i)/loadBalancers/[^/]+$") - 1,
        apply::MAX_PRECONDITION_REFETCHES + 1
    );
    // The race is over: the next pass converges, and everything is removed again without leaks.
    let out = run(&env, &pool, &configs).await;
    assert!(out.facts.values().all(|f| f.is_complete()));
    run(&env, &pool, &deleting(&configs)).await;
    assert_eq!(common::resources(&env.sim), before);
}

#[tokio::test]
async fn a_concurrent_write_to_a_vm_pool_nic_is_refetched_not_overwritten() {
    let env = start(vm_pool_seed()).await;
    let before = common::resources(&env.sim);
    let pool = resolve(&env).await;
    let mut configs = managed(1);
    configs[0].egress = Egress::Private;
    env.sim
        .inject_fault(FaultSpec::concurrent_write(
            "PUT",
            "(?i)/networkInterfaces/[^/]+$",
            1,
            json!({"tags": {"drift": "nic"}}),
        ))
        .expect("fault");
    let out = run(&env, &pool, &configs).await;
    assert_eq!(out.refetches, 1);
    assert!(out.facts.values().all(|f| f.is_complete()), "{:?}", out.facts);
    let nics = env.arm.list_nics("node-rg").await.expect("NICs");
    assert_eq!(
        nics.iter().filter(|n| n["tags"]["drift"] == json!("nic")).count(),
        1,
        "the other write is kept"
    );
    assert_eq!(run(&env, &pool, &configs).await.writes, 0);
    run(&env, &pool, &deleting(&configs)).await;
    assert_eq!(common::resources(&env.sim), before);
}

#[tokio::test]
async fn failed_long_running_operations_surface_and_are_redone_without_leaks() {
    let env = start(Seed::aks_like(2)).await;
    let before = common::resources(&env.sim);
    let pool = resolve(&env).await;
    // Operations finish at the simulator's next request; the next `fail_next` of them end Failed.
    let lro = |fail_next| LroConfig {
        enabled: true,
        in_progress_polls: 0,
        retry_after_ms: 1,
        max_duration_ms: 0,
        fail_next,
        reject_concurrent: false,
        ..LroConfig::default()
    };
    let lb_state = || async {
        env.arm
            .get_lb("node-rg", "kubeegressgateway-ilb")
            .await
            .expect("GET LB")
            .expect("LB")["properties"]["provisioningState"]
            .clone()
    };

    // A private configuration: the load balancer PUT is the first operation, and the client polls it.
    let mut configs = managed(1);
    configs[0].egress = Egress::Private;
    env.sim.set_lro(lro(1));
    let err = pool_support::try_reconcile(&env.arm, &env.cfg, &pool, &configs)
        .await
        .expect_err("the load balancer operation failed");
    assert!(err.to_string().contains("PUT loadBalancers"), "{err}");
    assert_eq!(lb_state().await, json!("Failed"));
    env.sim.set_lro(lro(0));
    env.sim.clear_calls();
    let out = run(&env, &pool, &configs).await;
    assert!(out.facts.values().all(|f| f.is_complete()), "{:?}", out.facts);
    assert_eq!(
        writes(&env, "PUT", "(?i)/loadBalancers/[^/]+$"),
        1,
        "the Failed load balancer is PUT again"
    );
    assert_eq!(lb_state().await, json!("Succeeded"));

    // A managed configuration: the prefix PUT's operation ends Failed; the client polls it (ARM answers the
    // PUT with Azure-AsyncOperation alone) and reports ARM's code.
    configs.extend(managed(2).into_iter().skip(1));
    env.sim.set_lro(lro(1));
    let err = pool_support::try_reconcile(&env.arm, &env.cfg, &pool, &configs)
        .await
        .expect_err("the prefix operation failed");
    assert!(
        err.to_string().contains("PUT publicIPPrefixes") && err.to_string().contains("InternalServerError"),
        "{err}"
    );
    let prefix = api::names::managed_resource_name(&configs[1].uid);
    let state = env
        .arm
        .get_prefix("node-rg", &prefix)
        .await
        .expect("GET prefix")
        .expect("prefix")["properties"]["provisioningState"]
        .clone();
    assert_eq!(state, json!("Failed"));
    env.sim.clear_calls();
    let out = run(&env, &pool, &configs).await;
    // The failed pass stopped at the prefix: nothing was pointed at it. This one writes the prefix again,
    // then what depends on it (the load balancer's rule, the scale set, its 2 instances).
    assert_eq!(out.writes, 5, "{:?}", out.plan);
    assert_eq!(
        writes(&env, "PUT", "(?i)/publicIPPrefixes/[^/]+$"),
        1,
        "created again"
    );
    assert!(out.facts.values().all(|f| f.is_complete()), "{:?}", out.facts);
    assert_eq!(run(&env, &pool, &configs).await.writes, 0, "converged");
    run(&env, &pool, &deleting(&configs)).await;
    assert_eq!(common::resources(&env.sim), before, "no leaks");
}

/// Operations that answer `InProgress` 3 times and never finish by themselves; `reject_concurrent`: the
/// simulator refuses a write while an operation on the resource (or on its scale set) runs, as ARM does.
fn slow_operations(reject_concurrent: bool) -> LroConfig {
    LroConfig {
        enabled: true,
        in_progress_polls: 3,
        retry_after_ms: 1,
        max_duration_ms: 600_000,
        fail_next: 0,
        reject_concurrent,
        ..LroConfig::default()
    }
}

/// `method` on a resource of type `ty` (`publicIPPrefixes`): one resource, not a collection.
fn is(method: &'static str, ty: &'static str) -> impl Fn(&CallRecord) -> bool {
    move |c| {
        let parent = c.path.rsplit_once('/').map_or("", |(parent, _)| parent);
        c.method == method
            && parent
                .to_ascii_lowercase()
                .ends_with(&format!("/{}", ty.to_ascii_lowercase()))
    }
}

/// The calls after the first that is `from`, up to the first after it that is `to`.
fn calls_between(
    env: &Env,
    from: impl Fn(&CallRecord) -> bool,
    to: impl Fn(&CallRecord) -> bool,
) -> Vec<CallRecord> {
    env.sim
        .calls()
        .into_iter()
        .skip_while(|c| !from(c))
        .skip(1)
        .take_while(|c| !to(c))
        .collect()
}

/// Polls of an operation status that answered while the operation ran, and the one that said it was over.
fn operation_polls(calls: &[CallRecord]) -> usize {
    calls
        .iter()
        .filter(|c| c.method == "GET" && c.path.contains("/operations/"))
        .count()
}

#[tokio::test]
async fn a_scale_sets_instances_are_written_once_its_operation_is_over_and_provisioning_takes_one_pass() {
    let env = start(Seed::aks_like(2)).await;
    let pool = resolve(&env).await;
    let configs = managed(1);
    env.sim.set_lro(slow_operations(true));
    env.sim.clear_calls();

    // The instance PUTs come after the scale set's operation was polled to its end, so the simulator (which
    // refuses an instance write while its scale set's operation runs, and finishes an operation only when
    // polled) accepts them.
    let out = run(&env, &pool, &configs).await;
    assert!(out.failed_updates.is_empty(), "{:?}", out.failed_updates);
    assert!(out.facts.values().all(|f| f.is_complete()), "{:?}", out.facts);
    let calls = env.sim.calls();
    assert!(
        calls.iter().all(|c| c.status != 409),
        "no write was refused: {calls:?}"
    );
    assert_eq!(writes(&env, "PUT", "(?i)/virtualMachines/[^/]+$"), 2);
    let between = calls_between(
        &env,
        is("PUT", "virtualMachineScaleSets"),
        is("PUT", "virtualMachines"),
    );
    assert_eq!(
        operation_polls(&between),
        4,
        "the scale set's operation polled to its end (3 InProgress, then Succeeded) before any instance PUT: {between:?}"
    );
    // So was the prefix's (ARM answers a prefix PUT with Azure-AsyncOperation alone): its 4 polls come before
    // the next write of any kind (the load balancer's).
    let after_prefix = calls_between(&env, is("PUT", "publicIPPrefixes"), |c: &CallRecord| {
        c.method != "GET"
    });
    assert_eq!(operation_polls(&after_prefix), 4, "{after_prefix:?}");
    assert_eq!(
        env.sim.inventory()["pendingOperations"],
        json!(0),
        "no write left running"
    );
    env.sim.clear_calls();
    assert_eq!(
        run(&env, &pool, &configs).await.writes,
        0,
        "converged in one pass"
    );
}

#[tokio::test]
async fn a_deletion_returns_once_the_prefix_is_gone_not_while_its_delete_runs() {
    let env = start(Seed::aks_like(2)).await;
    let before = common::resources(&env.sim);
    let pool = resolve(&env).await;
    let configs = managed(1);
    run(&env, &pool, &configs).await;
    env.sim.set_lro(slow_operations(false));
    env.sim.clear_calls();

    // The pass returns (and the configuration's finalizer may go) only when ARM has deleted the prefix.
    let gone = run(&env, &pool, &deleting(&configs)).await;
    assert!(gone.failed_updates.is_empty(), "{:?}", gone.failed_updates);
    assert_eq!(writes(&env, "DELETE", "(?i)/publicIPPrefixes/[^/]+$"), 1);
    let after_delete = calls_between(&env, is("DELETE", "publicIPPrefixes"), |_| false);
    assert_eq!(operation_polls(&after_delete), 4, "{after_delete:?}");
    assert_eq!(env.sim.inventory()["pendingOperations"], json!(0));
    assert_eq!(
        common::resources(&env.sim),
        before,
        "nothing left, nothing still being deleted"
    );
}
