//! The whole operator against a Kubernetes API server (the real kube-apiserver by default, kube-sim with
//! `TESTBED_KUBE=sim`; through kube-rs) and Azure (azure-sim, through the operator's ARM JSON client on the
//! azure_core pipeline). Key Secrets, finalizers, status, rules re-check, deletion without leaks, and leader
//! election. The tests that run an operator take turns on the binary's one cluster (see `turn`).

use std::time::Duration;

use api::StaticGatewayConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, PostParams};
use operator::leader::LeaseLock;
use operator::metrics::Metrics;
use operator::pass::Operator;
use operator::status::{ACCEPTED, READY};
use serde_json::json;
use testbed::azure::{AzureSim, LroConfig, Seed};
use testbed::cluster::TestCluster;
use testbed::wait::eventually_within;

mod common;
mod turn;

struct World {
    azure: AzureSim,
    client: kube::Client,
    op: Operator,
    /// The operator's namespace.
    system: String,
    /// The configurations' namespace.
    app: String,
    _turn: turn::Turn,
}

async fn start() -> World {
    start_with(Seed::aks_like(2)).await
}

async fn start_with(seed: Seed) -> World {
    let turn = turn::take().await;
    let client = turn.client.clone();
    let azure = AzureSim::start(&seed).await.expect("azure-sim");
    let op = common::operator(&client, &common::cloud_config(&seed, &azure), &turn.system);
    World {
        azure,
        client,
        op,
        system: turn.system.clone(),
        app: turn.app.clone(),
        _turn: turn,
    }
}

fn sgc(name: &str, spec: serde_json::Value) -> StaticGatewayConfiguration {
    serde_json::from_value(json!({
        "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
        "kind": "StaticGatewayConfiguration",
        "metadata": {"name": name},
        "spec": spec
    }))
    .expect("sgc")
}

/// Creates a configuration in the namespace of `sgcs`.
async fn create_sgc(sgcs: &Api<StaticGatewayConfiguration>, name: &str, spec: serde_json::Value) {
    sgcs.create(&PostParams::default(), &sgc(name, spec))
        .await
        .expect("create");
}

/// Creates configuration `bad`, whose excludeCidrs entry `10.0.0.1` lacks its prefix length, in a cluster
/// whose CRD predates the schema's per-entry excludeCidrs rule (`helm upgrade` never upgrades a chart's
/// `crds/`): the CRD is replaced by one without that rule first, so only the operator's rules re-check the
/// entry. The CRD stays so for the rest of the test binary (CRDs are cluster-wide; no test here relies on
/// that rule).
async fn create_bad_predating_the_cidr_rule(client: &kube::Client, sgcs: &Api<StaticGatewayConfiguration>) {
    let (name, spec) = (
        "bad",
        json!({"gatewayNodepoolName": "gateway", "excludeCidrs": ["10.0.0.1"]}),
    );
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_name = "staticgatewayconfigurations.egressgateway.kubernetes.azure.com";
    let mut older = serde_json::to_value(crds.get(crd_name).await.expect("CRD")).expect("json");
    if let Some(items) = older
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/excludeCidrs/items")
        .and_then(|items| items.as_object_mut())
    {
        items.remove("x-kubernetes-validations");
    }
    let older: CustomResourceDefinition = serde_json::from_value(older).expect("CRD");
    crds.replace(crd_name, &PostParams::default(), &older)
        .await
        .expect("older CRD");
    // The real server serves a CRD's new schema a moment after the update.
    eventually_within(
        "the older schema takes the configuration",
        Duration::from_secs(30),
        || {
            let (sgcs, spec) = (sgcs.clone(), spec.clone());
            async move {
                match sgcs.create(&PostParams::default(), &sgc(name, spec)).await {
                    Ok(_) => true,
                    Err(kube::Error::Api(s)) if s.code == 422 => false,
                    Err(e) => panic!("create: {e}"),
                }
            }
        },
    )
    .await;
}

/// Creates configuration `private`: private-IP egress on node pool `gateway`.
async fn create_private_sgc(sgcs: &Api<StaticGatewayConfiguration>) {
    let spec = json!({"gatewayNodepoolName": "gateway", "provisionPublicIps": false});
    create_sgc(sgcs, "private", spec).await;
}

/// Creates a GatewayPool on node pool `nodepool` with a /31 prefix.
async fn create_pool(pools: &Api<api::GatewayPool>, name: &str, nodepool: &str) {
    let p: api::GatewayPool = serde_json::from_value(json!({
        "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayPool",
        "metadata": {"name": name}, "spec": {"gatewayNodepoolName": nodepool, "publicIpPrefixSize": 31}
    }))
    .expect("pool");
    pools.create(&PostParams::default(), &p).await.expect("pool");
}

/// Deletes configuration `name` (in the app namespace) and GatewayPool `gateway`, runs one pass, and checks
/// that the configuration is gone (its finalizer released).
async fn delete_sgc_and_pool(w: &World, name: &str) {
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    let pools: Api<api::GatewayPool> = Api::all(w.client.clone());
    sgcs.delete(name, &DeleteParams::default()).await.expect("delete");
    pools
        .delete("gateway", &DeleteParams::default())
        .await
        .expect("delete pool");
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert!(sgcs.get_opt(name).await.expect("get").is_none());
}

/// The status of GatewayPool `gateway`, which must have one.
async fn pool_status(pools: &Api<api::GatewayPool>) -> api::pool::GatewayPoolStatus {
    pools
        .get("gateway")
        .await
        .expect("pool")
        .status
        .expect("pool status")
}

/// (status, reason) of condition `t`.
fn find_condition<'a>(conditions: &'a [Condition], t: &str) -> Option<(&'a str, &'a str)> {
    conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// Creates the configuration `byo` on the `gateway` node pool with the BYO prefix `prefix_id`.
async fn create_byo_sgc(sgcs: &Api<StaticGatewayConfiguration>, prefix_id: &str) {
    create_sgc(
        sgcs,
        "byo",
        json!({"gatewayNodepoolName": "gateway", "publicIpPrefixId": prefix_id}),
    )
    .await;
}

/// The configuration `name`, which must be `Ready=True` (`Provisioned`).
async fn provisioned(sgcs: &Api<StaticGatewayConfiguration>, name: &str) -> StaticGatewayConfiguration {
    let s = sgcs.get(name).await.expect("get");
    assert_eq!(
        condition(&s, READY),
        Some(("True", "Provisioned")),
        "{name}: {:?}",
        s.status
    );
    s
}

fn condition<'a>(s: &'a StaticGatewayConfiguration, t: &str) -> Option<(&'a str, &'a str)> {
    find_condition(&s.status.as_ref()?.conditions, t)
}

fn pool_condition<'a>(p: &'a api::GatewayPool, t: &str) -> Option<(&'a str, &'a str)> {
    find_condition(&p.status.as_ref()?.conditions, t)
}

#[tokio::test]
async fn configurations_get_keys_status_and_leave_nothing_behind() {
    let w = start().await;
    let before = common::resources(&w.azure);
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), &w.system);
    let pools: Api<api::GatewayPool> = Api::all(w.client.clone());
    create_pool(&pools, "gateway", "gateway").await;
    for name in ["a", "b", "c"] {
        create_sgc(&sgcs, name, json!({"gatewayNodepoolName": "gateway"})).await;
    }
    create_sgc(&sgcs, "private", json!({"gatewayNodepoolName": "gateway", "provisionPublicIps": false, "defaultRoute": "azureNetworking", "excludeCidrs": ["10.0.0.0/8"]})).await;
    // Predates the webhook and the schema's per-entry CIDR rule: a CIDR the operator's rules re-check.
    create_bad_predating_the_cidr_rule(&w.client, &sgcs).await;

    w.azure.clear_calls();
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert_eq!(
        w.azure.count_calls("PUT", "(?i)/loadBalancers/[^/]+$"),
        1,
        "one LB PUT for four configurations"
    );
    assert_eq!(
        w.azure.count_calls("PUT", "(?i)/virtualMachineScaleSets/[^/]+$"),
        1
    );
    assert_eq!(w.azure.count_calls("PUT", "(?i)/virtualMachines/[^/]+$"), 2);

    let mut ports = Vec::new();
    for name in ["a", "b", "c", "private"] {
        let s = sgcs.get(name).await.expect("get");
        assert_eq!(condition(&s, ACCEPTED), Some(("True", "Accepted")), "{name}");
        assert_eq!(
            condition(&s, READY),
            Some(("True", "Provisioned")),
            "{name}: {:?}",
            s.status
        );
        let st = s.status.as_ref().expect("status");
        assert!(st.is_ready_for_pods(), "{name}");
        assert_eq!(st.observed_generation, s.metadata.generation);
        assert_eq!(st.gateway_vm_profiles.len(), 2);
        let profile = st.gateway_server_profile.as_ref().expect("profile");
        ports.push(profile.port);
        let uid = s.metadata.uid.clone().expect("uid");
        let secret = secrets.get(&format!("sgw-{uid}")).await.expect("key secret");
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("egressgateway.kubernetes.azure.com/owning-gateway-config-name")
                .map(String::as_str),
            Some(name)
        );
        let data = secret.data.clone().expect("data");
        assert_eq!(data["PublicKey"].0, profile.public_key.as_bytes());
        assert!(
            s.metadata
                .finalizers
                .clone()
                .unwrap_or_default()
                .contains(&api::names::SGC_FINALIZER.to_string())
        );
        if name == "private" {
            assert_eq!(
                st.egress_ip_prefix.as_deref().map(|p| p.split(',').count()),
                Some(2)
            );
        } else {
            assert!(st.egress_ip_prefix.as_deref().is_some_and(|p| p.ends_with("/31")));
        }
    }
    let finalizers = pools
        .get("gateway")
        .await
        .expect("pool")
        .metadata
        .finalizers
        .unwrap_or_default();
    assert!(finalizers.contains(&api::names::POOL_FINALIZER.to_string()));
    // Instance operations finish asynchronously: the operator looks again while converging.
    eventually_within("the pool is ready", Duration::from_secs(20), || {
        let (op, pools) = (&w.op, pools.clone());
        async move {
            let ps = pool_status(&pools).await;
            if ps.ready_instances == 2 {
                return true;
            }
            assert!(
                op.take_converging().contains("nodepool/gateway"),
                "not ready yet must mean converging"
            );
            op.reconcile_pools(None).await.expect("reconcile");
            false
        }
    })
    .await;
    let ps = pool_status(&pools).await;
    assert_eq!(ps.pool_type, Some(api::pool::PoolType::VirtualMachineScaleSet));
    assert_eq!(ps.ready_instances, 2);
    assert_eq!(ps.instances.len(), 2);
    assert!(ps.load_balancer_frontend.is_some_and(|f| !f.ip.is_empty()));
    assert_eq!(
        find_condition(&ps.conditions, READY),
        Some(("True", api::names::REASON_INSTANCES_READY))
    );
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4, "distinct ports");

    let bad = sgcs.get("bad").await.expect("get");
    let (status, reason) = condition(&bad, ACCEPTED).expect("accepted condition");
    assert_eq!((status, reason), ("False", "InvalidSpec"));
    assert!(
        bad.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.message.contains("rule 7")))
    );

    // Steady state: no writes, no status churn.
    w.azure.clear_calls();
    let rv = sgcs.get("a").await.expect("get").metadata.resource_version;
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert_eq!(w.azure.calls().iter().filter(|c| c.method != "GET").count(), 0);
    assert_eq!(sgcs.get("a").await.expect("get").metadata.resource_version, rv);

    // Deleting a Secret rotates the key (upstream's behaviour).
    let a = sgcs.get("a").await.expect("get");
    let old_key = a
        .status
        .as_ref()
        .and_then(|s| s.gateway_server_profile.as_ref())
        .map(|p| p.public_key.clone());
    secrets
        .delete(
            &format!("sgw-{}", a.metadata.uid.clone().expect("uid")),
            &DeleteParams::default(),
        )
        .await
        .expect("delete secret");
    w.op.reconcile_pools(None).await.expect("reconcile");
    let a = sgcs.get("a").await.expect("get");
    let new_key = a
        .status
        .as_ref()
        .and_then(|s| s.gateway_server_profile.as_ref())
        .map(|p| p.public_key.clone());
    assert_ne!(new_key, old_key);

    // Delete everything: finalizers released, Secrets and Azure resources gone.
    for name in ["a", "b", "c", "private", "bad"] {
        sgcs.delete(name, &DeleteParams::default()).await.expect("delete");
    }
    pools
        .delete("gateway", &DeleteParams::default())
        .await
        .expect("delete pool");
    assert!(
        pools.get_opt("gateway").await.expect("get").is_some(),
        "held by its finalizer while in use"
    );
    w.op.reconcile_pools(None).await.expect("reconcile");
    // The pass that deletes the pool's last configurations also releases the pool: no later pass needed.
    assert!(pools.get_opt("gateway").await.expect("get").is_none());
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert!(pools.get_opt("gateway").await.expect("get").is_none());
    assert!(
        sgcs.list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert!(
        secrets
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert_eq!(common::resources(&w.azure), before);
}

#[tokio::test]
async fn a_configuration_on_a_missing_pool_reports_pool_not_found_and_deletes_cleanly() {
    let w = start().await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    create_and_reconcile(&w, &sgcs, "x", json!({"gatewayNodepoolName": "nope"})).await;
    let x = sgcs.get("x").await.expect("get");
    assert_eq!(condition(&x, ACCEPTED), Some(("False", "PoolNotFound")));
    sgcs.delete("x", &DeleteParams::default()).await.expect("delete");
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert!(
        sgcs.get_opt("x").await.expect("get").is_none(),
        "the finalizer does not get stuck"
    );
}

/// ARM as it answers (every PUT and DELETE a long-running operation, here of 3 polls that ends only when
/// polled) and refusing writes while an operation on the resource or its scale set runs: one pass provisions
/// a configuration on a scale-set pool without a refused write, the instance PUTs after the scale set's
/// operation is over; deleting it releases its finalizer only once ARM has deleted its prefix.
#[tokio::test]
async fn writes_wait_for_their_operations_so_one_pass_provisions_and_a_finalizer_goes_after_the_delete() {
    let w = start().await;
    let before = common::resources(&w.azure);
    w.azure.set_lro(LroConfig {
        enabled: true,
        in_progress_polls: 3,
        retry_after_ms: 1,
        max_duration_ms: 600_000,
        fail_next: 0,
        reject_concurrent: true,
        ..LroConfig::default()
    });
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    create_sgc(&sgcs, "slow", json!({"gatewayNodepoolName": "gateway"})).await;
    w.azure.clear_calls();
    w.op.reconcile_pools(None).await.expect("reconcile");
    provisioned(&sgcs, "slow").await;
    let calls = w.azure.calls();
    assert!(
        calls.iter().all(|c| c.status != 409),
        "no write refused: {calls:?}"
    );
    let vmss_put = calls
        .iter()
        .position(|c| {
            c.method == "PUT"
                && c.path.to_ascii_lowercase().contains("/virtualmachinescalesets/")
                && !c.path.contains("/virtualMachines/")
        })
        .expect("the scale set PUT");
    let first_instance_put = calls
        .iter()
        .position(|c| c.method == "PUT" && c.path.contains("/virtualMachines/"))
        .expect("an instance PUT");
    let polls = calls[vmss_put..first_instance_put]
        .iter()
        .filter(|c| c.method == "GET" && c.path.contains("/operations/"))
        .count();
    assert_eq!(
        polls, 4,
        "the scale set's operation is over before an instance is written: {calls:?}"
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.method == "PUT" && c.path.contains("/virtualMachines/") && c.status == 200)
            .count(),
        2
    );

    sgcs.delete("slow", &DeleteParams::default())
        .await
        .expect("delete");
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert!(
        sgcs.get_opt("slow").await.expect("get").is_none(),
        "finalizer released"
    );
    let inventory = w.azure.inventory();
    assert_eq!(inventory["pendingOperations"], json!(0), "{inventory}");
    assert_eq!(
        common::resources(&w.azure),
        before,
        "the prefix is gone, not still being deleted, when the finalizer goes"
    );
}

#[tokio::test]
async fn one_leader_at_a_time_and_takeover_after_release_or_expiry() {
    // Leases only: no operator runs, so no turn is needed; a namespace of its own.
    let cluster = TestCluster::shared().await;
    let client = cluster.client().expect("client");
    let ns = cluster.namespace("leases", &[]).await.expect("namespace");
    let a = LeaseLock::new(client.clone(), &ns, "lock", "a", Duration::from_secs(1));
    let b = LeaseLock::new(client.clone(), &ns, "lock", "b", Duration::from_secs(1));
    assert!(a.try_acquire_or_renew().await.expect("a"));
    assert!(!b.try_acquire_or_renew().await.expect("b"));
    assert!(a.try_acquire_or_renew().await.expect("a renews"));
    a.release().await.expect("release");
    assert!(
        b.try_acquire_or_renew()
            .await
            .expect("b takes over after release")
    );
    assert!(!a.try_acquire_or_renew().await.expect("a waits"));
    // b stops renewing: a takes over once the lease expires.
    testbed::wait::eventually_within(
        "a takes over the expired lease",
        Duration::from_secs(10),
        || async { a.try_acquire_or_renew().await.expect("a") },
    )
    .await;
    assert!(!b.try_acquire_or_renew().await.expect("b lost it"));

    // Racing candidates: exactly one wins a fresh lease.
    let locks: Vec<LeaseLock> = (0..5)
        .map(|i| {
            LeaseLock::new(
                client.clone(),
                &ns,
                "race",
                &format!("c{i}"),
                Duration::from_secs(30),
            )
        })
        .collect();
    let results = futures::future::join_all(locks.iter().map(|l| l.try_acquire_or_renew())).await;
    let winners = results.into_iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn leadership_is_published_on_transitions_not_on_every_renewal() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().expect("client");
    let ns = cluster.namespace("leases", &[]).await.expect("namespace");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), &ns);
    let renewed = || async {
        leases
            .get("lock")
            .await
            .expect("lease")
            .spec
            .and_then(|s| s.renew_time)
            .map(|t| t.0)
    };
    // Renewed every third of a second.
    let lock = LeaseLock::new(client.clone(), &ns, "lock", "a", Duration::from_secs(1));
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { lock.run(leading_tx, shutdown).await });
    leading.changed().await.expect("published");
    assert!(*leading.borrow_and_update(), "became leader");
    let first = renewed().await;
    // The work loop reconciles every pool when this channel signals: renewals must stay silent.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), leading.changed())
            .await
            .is_err(),
        "a renewal that changes nothing is not published"
    );
    assert!(renewed().await > first, "the lease was renewed meanwhile");
    shutdown_tx.send_replace(true);
    task.await.expect("elector ends");
    assert!(!*leading.borrow(), "not leading after shutdown");
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_steps_down_before_another_can_take_over() {
    let cluster = TestCluster::shared().await;
    let client = cluster.client().expect("client");
    let ns = cluster.namespace("leases", &[]).await.expect("namespace");
    // Leader a reaches the API server through a proxy that goes silent; candidate b directly.
    let config = cluster
        .client_config_for(&cluster.admin_token().expect("token"))
        .expect("config");
    let (config, proxy) = testbed::proxy::StallableProxy::in_front_of(config)
        .await
        .expect("proxy");
    let cut_off = kube::Client::try_from(config).expect("client");
    let duration = Duration::from_secs(3);
    let a = LeaseLock::new(cut_off, &ns, "lock", "a", duration);
    let b = LeaseLock::new(client, &ns, "lock", "b", duration);
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let elector = tokio::spawn(async move { a.run(leading_tx, shutdown).await });
    tokio::time::timeout(Duration::from_secs(15), leading.wait_for(|l| *l))
        .await
        .expect("a leads within 15 s")
        .expect("a's elector runs");
    assert!(!b.try_acquire_or_renew().await.expect("b"), "a holds the Lease");

    // Renewals hang from now on: no error ever comes back, only silence.
    proxy.stall();
    let down_before_takeover =
        common::takeover_after(&b, Duration::from_secs(20), || !*leading.borrow()).await;
    assert!(
        down_before_takeover,
        "a still counted itself leader when b took the Lease over"
    );

    // Once the API server answers again, a is a candidate that waits for b.
    proxy.resume();
    assert!(b.try_acquire_or_renew().await.expect("b renews"));
    assert!(!*leading.borrow(), "a does not lead while b holds the Lease");
    shutdown_tx.send_replace(true);
    elector.await.expect("elector ends");
}

#[tokio::test]
async fn an_azure_failure_surfaces_and_a_restarted_operator_converges_without_duplicates() {
    let w = start().await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    for name in ["a", "b"] {
        create_sgc(&sgcs, name, json!({"gatewayNodepoolName": "gateway"})).await;
    }
    // Every instance update fails: the reconcile stops half-way (prefixes, LB and VMSS model written).
    w.azure
        .inject_fault(testbed::azure::FaultSpec::new(
            "PUT",
            "(?i)/virtualMachines/[^/]+$",
            100,
            500,
            "InternalServerError",
        ))
        .expect("fault");
    assert!(w.op.reconcile_pools(None).await.is_err());
    let a = sgcs.get("a").await.expect("get");
    let ready = a
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "AzureError")
    );
    assert!(ready.message.contains("InternalServerError"), "{}", ready.message);
    let lb_before = gateway_lb(&w.op).await;

    // "Restart": a new operator, Azure healthy again.
    w.azure.with_state(|s| s.clear_faults());
    let restarted = common::operator(&w.client, &w.op.cfg, &w.system);
    restarted.reconcile_pools(None).await.expect("reconcile");
    for name in ["a", "b"] {
        let s = sgcs.get(name).await.expect("get");
        assert_eq!(condition(&s, READY), Some(("True", "Provisioned")), "{name}");
    }
    let lb = gateway_lb(&restarted).await;
    let rules = |lb: &serde_json::Value| lb["properties"]["loadBalancingRules"].clone();
    assert_eq!(rules(&lb).as_array().map(Vec::len), Some(2), "no duplicate rules");
    assert_eq!(rules(&lb), rules(&lb_before), "ports survive the restart");
    assert_eq!(
        w.azure.inventory()["publicBlocks"].as_array().map(Vec::len),
        Some(2),
        "no duplicate prefixes"
    );
}

#[tokio::test]
async fn a_vm_pool_reports_the_node_of_each_pre_created_nic() {
    let mut seed = Seed::aks_like(0);
    seed.vm_scale_sets.clear();
    let seed = seed.with_vm_pool("gateway", 2, 2);
    let w = start_with(seed).await;
    // Gateway Nodes as the cloud provider registers them: providerID = the VM's ARM ID (resource group
    // lower-cased); one Node is deliberately not named after its VM, so only the providerID links them.
    let vm_id = |i: usize| {
        format!(
            "azure:///subscriptions/{}/resourceGroups/node-rg/providers/Microsoft.Compute/virtualMachines/aks-gateway-12345678-vm{i}",
            w.op.cfg.subscription_id
        )
    };
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(w.client.clone());
    for (name, i) in [("gw-node-a", 0), ("gw-node-b", 1)] {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.azure.com/agentpool": "gateway", "kubernetes.azure.com/mode": "gateway"}},
            "spec": {"providerID": vm_id(i)}
        }))
        .expect("node");
        nodes.create(&PostParams::default(), &node).await.expect("node");
    }
    let pools: Api<api::GatewayPool> = Api::all(w.client.clone());
    create_pool(&pools, "gateway", "gateway").await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    create_private_sgc(&sgcs).await;
    w.op.reconcile_pools(None).await.expect("reconcile");

    let status = pools.get("gateway").await.expect("pool").status.expect("status");
    assert_eq!(status.pool_type, Some(api::pool::PoolType::VirtualMachines));
    let mut instances: Vec<(String, Option<String>)> = status
        .instances
        .iter()
        .map(|i| (i.name.clone(), i.node_name.clone()))
        .collect();
    instances.sort();
    assert_eq!(
        instances,
        [
            (
                "aks-gateway-12345678-nic0".to_string(),
                Some("gw-node-a".to_string())
            ),
            (
                "aks-gateway-12345678-nic1".to_string(),
                Some("gw-node-b".to_string())
            ),
        ]
    );
    provisioned(&sgcs, "private").await;
}

/// On a VM pool the operator deletes only the public IPs it made: the user's `prod-appgw-pip`, named after the
/// BYO prefix `prod` a configuration uses and allocated from it, stays through the configuration's passes and
/// its deletion (it was deleted as soon as the operator saw it).
#[tokio::test]
async fn a_vm_pool_keeps_a_users_public_ip_named_after_its_byo_prefix() {
    let mut seed = Seed::aks_like(0);
    seed.vm_scale_sets.clear();
    // One NIC: its public IP and the user's fill the /31 prefix.
    let w = start_with(seed.with_vm_pool("gateway", 1, 1)).await;
    let (rg, location) = (w.op.cfg.resource_group.clone(), w.op.cfg.location.clone());
    w.op.arm
        .put_prefix(
            &rg,
            "prod",
            &json!({"location": location, "sku": {"name": "Standard", "tier": "Regional"},
                    "properties": {"prefixLength": 31, "publicIPAddressVersion": "IPv4"}}),
        )
        .await
        .expect("the user's prefix");
    let prefix =
        w.op.arm
            .get_prefix(&rg, "prod")
            .await
            .expect("get")
            .expect("exists");
    let prefix_id = prefix["id"].as_str().expect("id").to_string();
    w.op.arm
        .put_public_ip(
            &rg,
            "prod-appgw-pip",
            &operator::azure::json::public_ip_body(&location, &prefix_id, None),
        )
        .await
        .expect("the user's public IP");
    let users = common::resources(&w.azure);
    let public_ips = || async {
        let mut names: Vec<String> =
            w.op.arm
                .list_public_ips(&rg)
                .await
                .expect("list")
                .iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect();
        names.sort();
        names
    };

    let pools: Api<api::GatewayPool> = Api::all(w.client.clone());
    create_pool(&pools, "gateway", "gateway").await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    create_byo_sgc(&sgcs, &prefix_id).await;
    w.op.reconcile_pools(None).await.expect("reconcile");
    provisioned(&sgcs, "byo").await;
    let ours = api::names::vm_pool_public_ip_name("prod", "aks-gateway-12345678-nic0");
    let mut want = vec!["prod-appgw-pip".to_string(), ours];
    want.sort();
    assert_eq!(public_ips().await, want);

    // Steady state: nothing to delete, pass after pass.
    w.azure.clear_calls();
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert_eq!(w.azure.calls().iter().filter(|c| c.method != "GET").count(), 0);

    delete_sgc_and_pool(&w, "byo").await;
    assert_eq!(
        common::resources(&w.azure),
        users,
        "the operator's public IP is deleted, the user's prefix and public IP stay"
    );
}

/// `base` plus `resource="<resource>"`.
fn with<'a>(base: &[(&'a str, &'a str)], resource: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut v = base.to_vec();
    v.push(("resource", resource));
    v
}

/// The value of the one sample of `metric` whose labels include every `label="value"` pair given.
fn sample(metrics: &Metrics, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = metrics.encode();
    let mut found = text.lines().filter(|l| {
        l.starts_with(&format!("{metric}{{"))
            && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
    });
    let line = found.next()?;
    assert!(
        found.next().is_none(),
        "{metric} {labels:?} is ambiguous:\n{text}"
    );
    line.rsplit(' ').next()?.parse().ok()
}

#[tokio::test]
async fn upstream_metric_series_per_configuration_and_controller() {
    let w = start().await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    create_sgc(&sgcs, "a", json!({"gatewayNodepoolName": "gateway"})).await;
    create_bad_predating_the_cidr_rule(&w.client, &sgcs).await;
    // The load balancer cannot be written: the LB controller's series of "a" fails, its VM series does not.
    w.azure
        .inject_fault(testbed::azure::FaultSpec::new(
            "PUT",
            "(?i)/loadBalancers/[^/]+$",
            100,
            500,
            "InternalServerError",
        ))
        .expect("fault");
    assert!(w.op.reconcile_pools(None).await.is_err());
    let m = &w.op.metrics;
    let (a, bad) = (format!("{}/a", w.app), format!("{}/bad", w.app));
    let sgc_op = [
        ("namespace", w.system.as_str()),
        ("operation", "reconcile_static_gateway_configuration"),
        ("subscription_id", "n/a"),
        ("resource_group", "n/a"),
    ];
    assert_eq!(
        sample(m, "controller_reconcile_latency_count", &sgc_op),
        Some(2.0),
        "one observation per configuration"
    );
    assert_eq!(
        sample(m, "controller_reconcile_fail_count", &with(&sgc_op, &bad)),
        Some(1.0),
        "the invalid spec fails the SGC controller's series"
    );
    assert_eq!(
        sample(m, "controller_reconcile_fail_count", &with(&sgc_op, &a)),
        None
    );
    let sub = w.op.cfg.subscription_id.as_str();
    let lb_op = [
        ("operation", "reconcile_gateway_lb_configuration"),
        ("subscription_id", sub),
        ("resource_group", "node-rg"),
    ];
    let vm_op = [
        ("operation", "reconcile_gateway_vm_configuration"),
        ("subscription_id", sub),
        ("resource_group", "node-rg"),
    ];
    assert_eq!(
        sample(m, "controller_reconcile_fail_count", &with(&lb_op, &a)),
        Some(1.0)
    );
    assert_eq!(
        sample(m, "controller_reconcile_fail_count", &with(&vm_op, &a)),
        None
    );
    assert_eq!(
        sample(m, "controller_reconcile_latency_count", &lb_op),
        Some(1.0),
        "\"bad\" never reached Azure"
    );
    assert_eq!(
        sample(
            m,
            "controller_reconcile_fail_count",
            &[
                ("operation", "reconcile_gateway_pool"),
                ("resource", "nodepool/gateway")
            ]
        ),
        Some(1.0)
    );

    // Healthy again, then deleted: the delete_ operations get their series.
    w.azure.with_state(|s| s.clear_faults());
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert_eq!(sample(m, "controller_reconcile_latency_count", &vm_op), Some(2.0));
    assert_eq!(
        sample(m, "controller_reconcile_fail_count", &with(&lb_op, &a)),
        Some(1.0),
        "fail counts are not reset by a later success (as upstream)"
    );
    for name in ["a", "bad"] {
        sgcs.delete(name, &DeleteParams::default()).await.expect("delete");
    }
    w.op.reconcile_pools(None).await.expect("reconcile");
    for op in [
        "delete_static_gateway_configuration",
        "delete_gateway_lb_configuration",
        "delete_gateway_vm_configuration",
    ] {
        assert_eq!(
            sample(m, "controller_reconcile_latency_count", &[("operation", op)]),
            Some(1.0),
            "{op}"
        );
    }
}

/// A declared GatewayPool reports its instances and Ready before any configuration uses it (so `kubectl wait`
/// and Terraform can wait for it), without writing to Azure; a pool whose node pool is not in Azure says so.
#[tokio::test]
async fn an_unused_gateway_pool_reports_its_instances_without_azure_writes() {
    let w = start().await;
    let pools: Api<api::GatewayPool> = Api::all(w.client.clone());
    for (name, nodepool) in [("gateway", "gateway"), ("missing", "nope")] {
        create_pool(&pools, name, nodepool).await;
    }
    let before = common::resources(&w.azure);
    w.azure.clear_calls();
    w.op.reconcile_pools(None).await.expect("reconcile");
    let writes: Vec<_> = w
        .azure
        .calls()
        .into_iter()
        .filter(|c| c.method != "GET" && c.path.starts_with("/subscriptions/"))
        .collect();
    assert!(writes.is_empty(), "no ARM writes for unused pools: {writes:?}");
    assert_eq!(common::resources(&w.azure), before);

    let gw = pools.get("gateway").await.expect("get");
    let st = gw.status.clone().expect("status written");
    assert_eq!(st.instances.len(), 2, "{st:?}");
    assert_eq!(st.ready_instances, 2);
    assert!(
        st.load_balancer_frontend.is_none(),
        "no frontend until a configuration needs one"
    );
    assert_eq!(st.observed_generation, gw.metadata.generation);
    assert_eq!(
        pool_condition(&gw, READY),
        Some(("True", api::names::REASON_INSTANCES_READY))
    );
    let missing = pools.get("missing").await.expect("get");
    assert_eq!(
        pool_condition(&missing, READY),
        Some(("False", api::names::REASON_POOL_NOT_FOUND))
    );

    // Steady state: a second pass writes nothing anywhere.
    let rv = (
        gw.metadata.resource_version.clone(),
        missing.metadata.resource_version.clone(),
    );
    w.azure.clear_calls();
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert!(
        w.azure
            .calls()
            .iter()
            .all(|c| c.method == "GET" || !c.path.starts_with("/subscriptions/"))
    );
    assert_eq!(
        (
            pools.get("gateway").await.expect("get").metadata.resource_version,
            pools.get("missing").await.expect("get").metadata.resource_version
        ),
        rv
    );
}

const GATEWAY_VMSS: &str = "aks-gateway-12345678-vmss";

/// A gateway Node of node pool `gateway`, named as AKS names the node of scale set instance `i`.
fn gateway_node(i: u32) -> k8s_openapi::api::core::v1::Node {
    common::ready_node(
        &format!("{GATEWAY_VMSS}{i:06}"),
        json!({"kubernetes.azure.com/agentpool": "gateway", "kubernetes.azure.com/mode": "gateway"}),
    )
}

/// Every simulated resource but the scale set's instance `surplus`, with its full JSON (ETags included: a
/// write changes them).
fn azure_except_instance(azure: &AzureSim, surplus: u32) -> Vec<(String, serde_json::Value)> {
    let skip = format!("/virtualmachines/{surplus}");
    common::resources(azure)
        .into_iter()
        .filter(|id| !id.contains(&skip))
        .map(|id| {
            let v = azure.with_state(|s| s.world.get(&id).cloned());
            (id, v.unwrap_or_default())
        })
        .collect()
}

/// (status, reason, message) of condition `t`.
/// A pass in which ARM refuses every update of scale-set instance `instance` (409 `OperationNotAllowed`, until
/// the faults are cleared): it fails neither the pass nor the other instances and configurations.
async fn pass_with_instance_update_refused(w: &World, instance: u32) {
    w.azure
        .inject_fault(testbed::azure::FaultSpec::new(
            "PUT",
            &format!("(?i)/virtualMachines/{instance}$"),
            100,
            409,
            "OperationNotAllowed",
        ))
        .expect("fault");
    w.op.reconcile_pools(None)
        .await
        .expect("one instance's refused update fails neither the pass nor the others");
}

fn condition_message(s: &StaticGatewayConfiguration, t: &str) -> Option<(String, String, String)> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The message of a configuration's condition `t`, which must have `(status, reason)`.
fn message_of(s: &StaticGatewayConfiguration, t: &str, (status, reason): (&str, &str)) -> String {
    let (got_status, got_reason, message) = condition_message(s, t).unwrap_or_else(|| panic!("{t}"));
    assert_eq!(
        (got_status.as_str(), got_reason.as_str()),
        (status, reason),
        "{t}: {message}"
    );
    message
}

/// An AKS surge upgrade of a /31 pool: a third gateway node (and scale set instance, which the full prefix has
/// no address for) for a while, then an old one goes. A configuration provisioned before keeps everything it
/// has in Azure and in its status (rule 4 counts the cluster's nodes: it fails, and is reported, but does not
/// take the configuration off); the surplus instance is reported without failing the pass; once the pool fits
/// again Degraded turns False and the new instance gets its address.
async fn surge_upgrade_keeps_the_configuration(with_gateway_pool: bool) {
    use k8s_openapi::api::core::v1::Node;
    use operator::status::DEGRADED;

    let w = start().await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    let pools: Api<api::GatewayPool> = Api::all(w.client.clone());
    let nodes: Api<Node> = Api::all(w.client.clone());
    if with_gateway_pool {
        create_pool(&pools, "gateway", "gateway").await;
    }
    for i in 0..2 {
        nodes
            .create(&PostParams::default(), &gateway_node(i))
            .await
            .expect("node");
    }
    create_and_reconcile(&w, &sgcs, "a", json!({"gatewayNodepoolName": "gateway"})).await;
    let provisioned = sgcs.get("a").await.expect("a");
    assert_eq!(condition(&provisioned, READY), Some(("True", "Provisioned")));
    let azure_before = azure_except_instance(&w.azure, 2);

    // The surge: a third node, and its instance, made from the model, whose public IP the /31 cannot hold.
    nodes
        .create(&PostParams::default(), &gateway_node(2))
        .await
        .expect("node");
    let added = w
        .azure
        .with_state(|s| s.world.add_vmss_instance("node-rg", GATEWAY_VMSS, 2));
    let refused = added.expect_err("a /31 prefix has no third address");
    assert!(
        refused.to_string().contains("PublicIPPrefixOutOfIpAddresses"),
        "{refused}"
    );
    let surplus = w.azure.with_state(|s| {
        let id = s.world.resource_id(
            "node-rg",
            "Microsoft.Compute/virtualMachineScaleSets",
            GATEWAY_VMSS,
        );
        let id = format!("{id}/virtualMachines/2");
        s.world.set_provisioning_state(&id, "Failed");
        id
    });
    w.op.reconcile_pools(None)
        .await
        .expect("the surplus instance fails neither the pass nor the others");

    assert_eq!(
        azure_except_instance(&w.azure, 2),
        azure_before,
        "rule, probe, port, frontend, backend, ipConfigs and prefix are as they were"
    );
    let a = sgcs.get("a").await.expect("a");
    let (before, now) = (
        provisioned.status.clone().expect("status"),
        a.status.clone().expect("status"),
    );
    assert_eq!(now.gateway_server_profile, before.gateway_server_profile);
    assert_eq!(now.egress_ip_prefix, before.egress_ip_prefix);
    assert_eq!(now.gateway_vm_profiles, before.gateway_vm_profiles);
    assert_eq!(condition(&a, ACCEPTED), Some(("True", "Accepted")));
    assert_eq!(condition(&a, READY), Some(("True", "Provisioned")));
    let message = message_of(&a, DEGRADED, ("True", "PoolExceedsPrefix"));
    for part in [
        "node pool gateway",
        "3 gateway nodes",
        "/31",
        "2 addresses",
        "aks-gateway-12345678-vmss000002",
        "PublicIPPrefixOutOfIpAddressesForPublicIPAddress",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    let warned = common::event_about(&w.client, &w.app, "a", "PoolExceedsPrefix").await;
    assert_eq!(warned.type_.as_deref(), Some("Warning"));
    let note = warned.note.unwrap_or_default();
    assert!(
        note.contains("node pool gateway") && note.contains("3 gateway nodes") && note.contains("holds 2"),
        "{note}"
    );
    if with_gateway_pool {
        let p = pools.get("gateway").await.expect("pool");
        let st = p.status.expect("pool status");
        let surplus = st
            .instances
            .iter()
            .find(|i| i.name == "aks-gateway-12345678-vmss000002")
            .expect("the surplus instance is listed");
        assert!(!surplus.ready, "{surplus:?}");
    }

    // The surge ends: an old node and its instance go, the new instance gets the freed address.
    nodes
        .delete(&format!("{GATEWAY_VMSS}000000"), &DeleteParams::default())
        .await
        .expect("delete node");
    w.azure
        .with_state(|s| s.world.remove_vmss_instance("node-rg", GATEWAY_VMSS, 0))
        .expect("scale-in");
    w.op.reconcile_pools(None).await.expect("reconcile");
    let a = sgcs.get("a").await.expect("a");
    assert_eq!(condition(&a, DEGRADED), Some(("False", "AsExpected")));
    assert_eq!(condition(&a, READY), Some(("True", "Provisioned")));
    let st = a.status.expect("status");
    assert_eq!(
        st.gateway_vm_profiles
            .iter()
            .map(|p| p.node_name.as_str())
            .collect::<Vec<_>>(),
        [
            "aks-gateway-12345678-vmss000001",
            "aks-gateway-12345678-vmss000002"
        ]
    );
    assert_eq!(st.egress_ip_prefix, before.egress_ip_prefix, "the same prefix");
    assert_eq!(
        st.gateway_server_profile, before.gateway_server_profile,
        "same frontend and port"
    );
    let instance = w
        .azure
        .with_state(|s| s.world.get(&surplus).cloned())
        .expect("instance");
    assert_ne!(instance["properties"]["provisioningState"], "Failed");
}

#[tokio::test]
async fn a_surge_upgrade_keeps_a_configuration_on_a_gateway_pool() {
    surge_upgrade_keeps_the_configuration(true).await;
}

#[tokio::test]
async fn a_surge_upgrade_keeps_a_configuration_on_a_node_pool_without_gateway_pool() {
    surge_upgrade_keeps_the_configuration(false).await;
}

/// Private-IP mode: a new instance still without the configuration's secondary IP (here ARM refuses its
/// update for a while) does not take the configuration off the instances that have theirs. The status keeps
/// listing their addresses and stays ready, Degraded names the instance; once it has its address, the
/// address is added and Degraded turns False.
#[tokio::test]
async fn a_private_configuration_stays_ready_while_a_new_instance_lacks_its_address() {
    use operator::status::DEGRADED;

    let w = start().await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    create_private_sgc(&sgcs).await;
    w.op.reconcile_pools(None).await.expect("reconcile");
    let converged = sgcs.get("private").await.expect("get");
    assert_eq!(condition(&converged, READY), Some(("True", "Provisioned")));
    let two = converged.status.clone().expect("status");
    assert_eq!(two.gateway_vm_profiles.len(), 2);
    let listed = |st: &api::StaticGatewayConfigurationStatus| {
        st.egress_ip_prefix
            .clone()
            .unwrap_or_default()
            .split(',')
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(&two).len(), 2);

    // A third instance, made from a model without the configuration's ipConfiguration, whose update ARM
    // refuses for now.
    let id = w.azure.with_state(|s| {
        s.world
            .add_vmss_instance("node-rg", GATEWAY_VMSS, 2)
            .expect("scale-out");
        let vmss = s.world.resource_id(
            "node-rg",
            "Microsoft.Compute/virtualMachineScaleSets",
            GATEWAY_VMSS,
        );
        format!("{vmss}/virtualMachines/2")
    });
    let mut instance = w
        .azure
        .with_state(|s| s.world.get(&id).cloned())
        .expect("instance");
    let configs = instance
        .pointer_mut("/properties/networkProfileConfiguration/networkInterfaceConfigurations/0/properties/ipConfigurations")
        .and_then(serde_json::Value::as_array_mut)
        .expect("ipConfigurations");
    configs.retain(|c| {
        !c["name"]
            .as_str()
            .unwrap_or_default()
            .starts_with("egressgateway-")
    });
    w.azure
        .patch_resource(&id, &json!({"properties": instance["properties"].clone()}))
        .expect("patch");
    pass_with_instance_update_refused(&w, 2).await;
    let s = sgcs.get("private").await.expect("get");
    let st = s.status.clone().expect("status");
    assert_eq!(
        listed(&st),
        listed(&two),
        "the two addresses that exist, as before"
    );
    assert_eq!(st.gateway_vm_profiles, two.gateway_vm_profiles);
    assert!(st.is_ready_for_pods());
    assert_eq!(condition(&s, READY), Some(("True", "Provisioned")));
    let message = message_of(&s, DEGRADED, ("True", "InstancesWithoutEgressIp"));
    assert!(
        message.contains("aks-gateway-12345678-vmss000002") && message.contains("OperationNotAllowed"),
        "{message}"
    );

    // ARM takes the update again: the third address is added.
    w.azure.with_state(|s| s.clear_faults());
    w.op.reconcile_pools(None).await.expect("reconcile");
    let s = sgcs.get("private").await.expect("get");
    let st = s.status.clone().expect("status");
    let three = listed(&st);
    assert_eq!(three.len(), 3, "{three:?}");
    assert!(listed(&two).iter().all(|ip| three.contains(ip)), "{three:?}");
    assert_eq!(
        st.gateway_vm_profiles
            .iter()
            .map(|p| p.secondary_ip.clone())
            .collect::<Vec<_>>(),
        three,
        "listed in node order"
    );
    assert_eq!(condition(&s, DEGRADED), Some(("False", "AsExpected")));
    assert_eq!(condition(&s, READY), Some(("True", "Provisioned")));
}

/// A Degraded Warning whose text outgrows what an Event may carry (the pool overflow, every instance without
/// its address, every refusal): the API server refuses an Event note over 1 KiB outright, so the operator cuts
/// the note (the condition keeps the whole text) and the Event is published.
#[tokio::test]
async fn a_degraded_warning_longer_than_an_event_note_is_published_cut() {
    use k8s_openapi::api::core::v1::ObjectReference;
    use kube::Resource as _;
    use operator::desired::ConfigFacts;
    use operator::kube::EVENT_NOTE_LIMIT;
    use operator::status::{DEGRADED, Outcome};

    let w = start().await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    create_sgc(&sgcs, "long", json!({"gatewayNodepoolName": "gateway"})).await;
    let sgc = sgcs.get("long").await.expect("long");
    let instances: Vec<String> = (0..60).map(|i| format!("{GATEWAY_VMSS}{i:06}")).collect();
    let facts = ConfigFacts {
        frontend_ip: Some("10.224.0.10".into()),
        port: Some(6000),
        egress_ip_prefix: Some("20.10.0.0/31".into()),
        pool_exceeds_prefix: operator::status::pool_exceeds_prefix(
            &api::PoolRef::Nodepool("gateway".into()),
            62,
            31,
        ),
        refused_updates: instances
            .iter()
            .map(|i| format!("{i}: PublicIPPrefixOutOfIpAddressesForPublicIPAddress"))
            .collect(),
        without_address: instances,
        ..ConfigFacts::default()
    };
    let key = ObjectReference {
        name: Some("sgw-long".into()),
        namespace: Some(w.system.clone()),
        ..ObjectReference::default()
    };
    w.op.kube
        .write_status(&sgc, &Outcome::Provisioned(facts), Some(("pub", key)))
        .await
        .expect("status");

    let (_, _, message) =
        condition_message(&sgcs.get("long").await.expect("long"), DEGRADED).expect("Degraded");
    assert!(
        message.len() > EVENT_NOTE_LIMIT,
        "the whole text is longer: {} bytes",
        message.len()
    );
    let warned = common::event_about(&w.client, &w.app, "long", "PoolExceedsPrefix").await;
    assert_eq!(warned.type_.as_deref(), Some("Warning"));
    let note = warned.note.unwrap_or_default();
    assert!(note.len() <= EVENT_NOTE_LIMIT, "{} bytes", note.len());
    let kept = note.strip_suffix('…').expect("a cut note ends with an ellipsis");
    assert!(format!("Degraded=true: {message}").starts_with(kept), "{note}");

    // What the cut avoids: the API server refuses a longer note, naming the field as kube-apiserver does.
    let recorder = kube::runtime::events::Recorder::new(
        w.client.clone(),
        kube::runtime::events::Reporter {
            controller: "uncut".into(),
            instance: None,
        },
    );
    let uncut = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: "Uncut".into(),
        note: Some("x".repeat(EVENT_NOTE_LIMIT + 1)),
        action: "Reconcile".into(),
        secondary: None,
    };
    let refused = recorder
        .publish(&uncut, &sgc.object_ref(&()))
        .await
        .expect_err("a note over the limit is refused");
    let kube::Error::Api(status) = refused else {
        panic!("not an API refusal: {refused:?}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status
            .message
            .contains("message: Invalid value: \"\": can have at most 1024 characters"),
        "{status:?}"
    );
}

/// A configuration migrated from upstream (its `status.egressIpPrefix` is the CIDR of the prefix upstream
/// created, `egressgateway-<UUID of an object that is gone>`) adopts that prefix: the annotation is written,
/// no prefix is created, the egress prefix stays; deleting the configuration deletes the prefix and leaves
/// nothing in Azure that mentions it.
async fn a_migrated_configuration_adopts_upstreams_prefix(w: World) {
    let before = common::resources(&w.azure);
    let pools: Api<api::GatewayPool> = Api::all(w.client.clone());
    create_pool(&pools, "gateway", "gateway").await;
    // Upstream's prefix, as upstream created it.
    let upstream = format!("egressgateway-{}", uuid::Uuid::new_v4());
    w.op.arm
        .put_prefix(
            &w.op.cfg.resource_group,
            &upstream,
            &json!({"location": w.op.cfg.location, "sku": {"name": "Standard", "tier": "Regional"},
                    "properties": {"prefixLength": 31, "publicIPAddressVersion": "IPv4"}}),
        )
        .await
        .expect("upstream's prefix");
    let created =
        w.op.arm
            .get_prefix(&w.op.cfg.resource_group, &upstream)
            .await
            .expect("get")
            .expect("upstream's prefix exists");
    let cidr = created
        .pointer("/properties/ipPrefix")
        .and_then(|v| v.as_str())
        .expect("allocated")
        .to_string();
    let upstream_id = created["id"].as_str().expect("id").to_string();

    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    create_sgc(&sgcs, "migrated", json!({"gatewayNodepoolName": "gateway"})).await;
    sgcs.patch_status(
        "migrated",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {"egressIpPrefix": cidr}})),
    )
    .await
    .expect("upstream's status");

    w.azure.clear_calls();
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert_eq!(
        w.azure.count_calls("PUT", "(?i)/publicIPPrefixes/[^/]+$"),
        0,
        "no prefix created"
    );
    assert_eq!(
        w.azure.count_calls("GET", "(?i)/publicIPPrefixes$"),
        1,
        "one LIST of the prefixes"
    );
    let s = sgcs.get("migrated").await.expect("get");
    assert_eq!(
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(api::names::ADOPTED_PREFIX_ANNOTATION))
            .map(|id| id.to_ascii_lowercase()),
        Some(upstream_id.to_ascii_lowercase())
    );
    assert_eq!(
        condition(&s, READY),
        Some(("True", "Provisioned")),
        "{:?}",
        s.status
    );
    assert_eq!(
        s.status.as_ref().and_then(|st| st.egress_ip_prefix.clone()),
        Some(cidr.clone())
    );
    let uid = s.metadata.uid.clone().expect("uid");
    let own = format!("egressgateway-{uid}/").to_ascii_lowercase();
    assert!(
        !common::resources(&w.azure)
            .iter()
            .any(|r| r.contains("publicipprefixes/") && r.ends_with(&own[..own.len() - 1])),
        "no egressgateway-<uid> prefix"
    );

    // Steady state: no LIST any more (the configuration has its prefix), no writes.
    w.azure.clear_calls();
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert_eq!(w.azure.count_calls("GET", "(?i)/publicIPPrefixes$"), 0);
    assert_eq!(w.azure.calls().iter().filter(|c| c.method != "GET").count(), 0);

    delete_sgc_and_pool(&w, "migrated").await;
    assert_eq!(
        common::resources(&w.azure),
        before,
        "the adopted prefix is deleted"
    );
    let inventory = w.azure.inventory().to_string().to_ascii_lowercase();
    assert!(
        !inventory.contains(&upstream.to_ascii_lowercase()),
        "nothing in Azure mentions the adopted prefix: {inventory}"
    );
}

#[tokio::test]
async fn a_migrated_configuration_on_a_scale_set_adopts_upstreams_prefix() {
    a_migrated_configuration_adopts_upstreams_prefix(start().await).await;
}

#[tokio::test]
async fn a_migrated_configuration_on_a_vm_pool_adopts_upstreams_prefix() {
    let mut seed = Seed::aks_like(0);
    seed.vm_scale_sets.clear();
    a_migrated_configuration_adopts_upstreams_prefix(start_with(seed.with_vm_pool("gateway", 2, 2)).await)
        .await;
}

#[tokio::test]
async fn without_a_matching_prefix_a_configuration_gets_its_own_as_before() {
    let w = start().await;
    let pools: Api<api::GatewayPool> = Api::all(w.client.clone());
    create_pool(&pools, "gateway", "gateway").await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    create_sgc(&sgcs, "migrated", json!({"gatewayNodepoolName": "gateway"})).await;
    sgcs.patch_status(
        "migrated",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {"egressIpPrefix": "203.0.113.0/31"}})),
    )
    .await
    .expect("upstream's status");
    w.azure.clear_calls();
    w.op.reconcile_pools(None).await.expect("reconcile");
    let s = sgcs.get("migrated").await.expect("get");
    let uid = s.metadata.uid.clone().expect("uid");
    assert_eq!(
        w.azure
            .count_calls("PUT", &format!("(?i)/publicIPPrefixes/egressgateway-{uid}$")),
        1
    );
    assert_eq!(w.azure.count_calls("PUT", "(?i)/publicIPPrefixes/[^/]+$"), 1);
    assert!(
        s.metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key(api::names::ADOPTED_PREFIX_ANNOTATION))
    );
    assert_eq!(condition(&s, READY), Some(("True", "Provisioned")));
    assert_ne!(
        s.status.as_ref().and_then(|st| st.egress_ip_prefix.as_deref()),
        Some("203.0.113.0/31")
    );
}

#[tokio::test]
async fn an_adoption_annotation_naming_another_prefix_is_refused_and_nothing_is_deleted() {
    let w = start().await;
    let pools: Api<api::GatewayPool> = Api::all(w.client.clone());
    create_pool(&pools, "gateway", "gateway").await;
    let id = create_users_prefix(&w).await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    let mut s = sgc("hand", json!({"gatewayNodepoolName": "gateway"}));
    s.metadata.annotations = Some([(api::names::ADOPTED_PREFIX_ANNOTATION.to_string(), id)].into());
    sgcs.create(&PostParams::default(), &s).await.expect("create");
    w.op.reconcile_pools(None).await.expect("reconcile");
    let s = sgcs.get("hand").await.expect("get");
    let accepted = s
        .status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == ACCEPTED))
        .expect("Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        accepted.message.contains(api::names::ADOPTED_PREFIX_ANNOTATION)
            && accepted.message.contains("egressgateway-<UUID>"),
        "{}",
        accepted.message
    );
    sgcs.delete("hand", &DeleteParams::default())
        .await
        .expect("delete");
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert!(
        w.op.arm
            .get_prefix(&w.op.cfg.resource_group, "users-prefix")
            .await
            .expect("get")
            .is_some(),
        "a prefix the annotation named but the operator refused is never deleted"
    );
}

/// Creates a user's public IP prefix `users-prefix` (/31, the pool's length) in the node resource group;
/// returns its ID.
async fn create_users_prefix(w: &World) -> String {
    let created =
        w.op.arm
            .put_prefix(
                &w.op.cfg.resource_group,
                "users-prefix",
                &json!({"location": w.op.cfg.location, "sku": {"name": "Standard", "tier": "Regional"},
                    "properties": {"prefixLength": 31, "publicIPAddressVersion": "IPv4"}}),
            )
            .await
            .expect("a user's prefix");
    created["id"].as_str().expect("id").to_string()
}

/// Creates configuration `a` (managed prefix) and `byo`, whose prefix is [`create_users_prefix`]'s, on node
/// pool `gateway`, and provisions them (one pass).
async fn provision_managed_and_byo(w: &World) -> Api<StaticGatewayConfiguration> {
    let prefix_id = create_users_prefix(w).await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    create_sgc(&sgcs, "a", json!({"gatewayNodepoolName": "gateway"})).await;
    create_byo_sgc(&sgcs, &prefix_id).await;
    w.op.reconcile_pools(None).await.expect("reconcile");
    sgcs
}

/// The ARM writes the simulator saw since its calls were last cleared, as `METHOD path`.
fn arm_writes(azure: &AzureSim) -> Vec<String> {
    azure
        .calls()
        .iter()
        .filter(|c| c.method != "GET")
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

/// The load balancer's rules: lower-cased name → frontend port.
async fn rule_ports(w: &World) -> std::collections::BTreeMap<String, i64> {
    let lb = gateway_lb(&w.op).await;
    lb["properties"]["loadBalancingRules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_ascii_lowercase(),
                r["properties"]["frontendPort"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

/// The names (lower-cased, sorted) of the primary NIC configuration's ipConfigurations of the gateway scale
/// set's model and of each of its instances, model first.
async fn ip_config_names(w: &World) -> Vec<Vec<String>> {
    let names = |nic_configs: &serde_json::Value| {
        let mut v: Vec<String> = nic_configs[0]["properties"]["ipConfigurations"]
            .as_array()
            .expect("ipConfigurations")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_ascii_lowercase())
            .collect();
        v.sort();
        v
    };
    let vmss =
        w.op.arm
            .get_vmss("node-rg", GATEWAY_VMSS)
            .await
            .expect("vmss")
            .expect("the scale set exists");
    let mut out = vec![names(
        &vmss["properties"]["virtualMachineProfile"]["networkProfile"]["networkInterfaceConfigurations"],
    )];
    for vm in
        w.op.arm
            .list_instances("node-rg", GATEWAY_VMSS)
            .await
            .expect("instances")
    {
        out.push(names(
            &vm["properties"]["networkProfileConfiguration"]["networkInterfaceConfigurations"],
        ));
    }
    out
}

/// The uid of configuration `name`.
async fn uid_of(sgcs: &Api<StaticGatewayConfiguration>, name: &str) -> String {
    sgcs.get(name)
        .await
        .expect("get")
        .metadata
        .uid
        .expect("uid")
        .to_ascii_lowercase()
}

/// A BYO prefix that cannot be read for a pass (ARM answers 500 beyond the retries) costs its configuration
/// nothing in Azure: no write at all in that pass, its rule keeps its port, its ipConfigurations stay; its
/// status says why, the pass fails (retried), and the next pass finds everything as it was.
#[tokio::test]
async fn a_byo_prefix_unreadable_for_a_pass_keeps_its_configuration_in_azure() {
    let w = start().await;
    let sgcs = provision_managed_and_byo(&w).await;
    let byo = uid_of(&sgcs, "byo").await;
    provisioned(&sgcs, "byo").await;
    let ports = rule_ports(&w).await;
    let configs = ip_config_names(&w).await;
    assert!(ports.contains_key(&byo), "{ports:?}");
    assert!(
        configs
            .iter()
            .all(|c| c.contains(&format!("egressgateway-{byo}"))),
        "{configs:?}"
    );

    w.azure
        .inject_fault(testbed::azure::FaultSpec::new(
            "GET",
            "(?i)/publicIPPrefixes/users-prefix$",
            100,
            500,
            "InternalServerError",
        ))
        .expect("fault");
    w.azure.clear_calls();
    assert!(
        w.op.reconcile_pools(None).await.is_err(),
        "the unread prefix fails the pass, so that it is retried"
    );
    let writes = arm_writes(&w.azure);
    assert!(writes.is_empty(), "no write in that pass: {writes:?}");
    assert_eq!(rule_ports(&w).await, ports, "the rule keeps its port");
    assert_eq!(ip_config_names(&w).await, configs, "the ipConfigurations stay");
    let s = sgcs.get("byo").await.expect("get");
    let message = message_of(&s, READY, ("False", "AzureError"));
    assert!(
        message.contains("users-prefix") && message.contains("InternalServerError"),
        "{message}"
    );
    let a = sgcs.get("a").await.expect("get");
    assert_eq!(condition(&a, READY), Some(("True", "Provisioned")));

    w.azure.with_state(|s| s.clear_faults());
    w.op.reconcile_pools(None).await.expect("reconcile");
    let s = sgcs.get("byo").await.expect("get");
    assert_eq!(condition(&s, READY), Some(("True", "Provisioned")));
    assert_eq!(rule_ports(&w).await, ports);
    assert_eq!(
        s.status
            .as_ref()
            .and_then(|st| st.gateway_server_profile.as_ref())
            .map(|p| i64::from(p.port)),
        ports.get(&byo).copied()
    );
}

/// One scale set named two ways: configuration `by-pool` by its AKS node pool, `by-vmss` by the scale set's
/// resource group and name (as upstream's e2e builds profiles from node providerIDs). Their pool passes keep
/// each other's part: both rules and ipConfigurations exist after two passes and a third writes nothing;
/// deleting one leaves the other's rule, frontend and backend pool.
#[tokio::test]
async fn two_references_to_one_scale_set_keep_each_others_configurations() {
    let w = start().await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    create_sgc(&sgcs, "by-pool", json!({"gatewayNodepoolName": "gateway"})).await;
    create_sgc(
        &sgcs,
        "by-vmss",
        json!({"gatewayVmssProfile": {"vmssResourceGroup": "node-rg", "vmssName": GATEWAY_VMSS,
            "publicIpPrefixSize": 31}}),
    )
    .await;
    for _ in 0..2 {
        w.op.reconcile_pools(None).await.expect("reconcile");
    }
    let (by_pool, by_vmss) = (uid_of(&sgcs, "by-pool").await, uid_of(&sgcs, "by-vmss").await);
    let ports = rule_ports(&w).await;
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_ne!(ports.get(&by_pool), ports.get(&by_vmss));
    for configs in ip_config_names(&w).await {
        for uid in [&by_pool, &by_vmss] {
            assert!(configs.contains(&format!("egressgateway-{uid}")), "{configs:?}");
        }
    }
    for (name, uid) in [("by-pool", &by_pool), ("by-vmss", &by_vmss)] {
        let s = sgcs.get(name).await.expect("get");
        assert_eq!(condition(&s, READY), Some(("True", "Provisioned")), "{name}");
        let port = s
            .status
            .as_ref()
            .and_then(|st| st.gateway_server_profile.as_ref())
            .map(|p| i64::from(p.port));
        assert_eq!(port, ports.get(uid).copied(), "{name}");
    }
    w.azure.clear_calls();
    w.op.reconcile_pools(None).await.expect("reconcile");
    let writes = arm_writes(&w.azure);
    assert!(writes.is_empty(), "steady state: {writes:?}");

    sgcs.delete("by-pool", &DeleteParams::default())
        .await
        .expect("delete");
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert!(sgcs.get_opt("by-pool").await.expect("get").is_none());
    let left = rule_ports(&w).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        left.get(&by_vmss),
        ports.get(&by_vmss),
        "the other rule keeps its port"
    );
    for configs in ip_config_names(&w).await {
        assert!(
            configs.contains(&format!("egressgateway-{by_vmss}")),
            "{configs:?}"
        );
        assert!(
            !configs.contains(&format!("egressgateway-{by_pool}")),
            "{configs:?}"
        );
    }
    w.azure.clear_calls();
    w.op.reconcile_pools(None).await.expect("reconcile");
    let writes = arm_writes(&w.azure);
    assert!(
        writes.is_empty(),
        "the frontend and backend pool stayed for by-vmss: {writes:?}"
    );
    let s = sgcs.get("by-vmss").await.expect("get");
    assert_eq!(condition(&s, READY), Some(("True", "Provisioned")));
}

/// A deleted configuration keeps its finalizer while ARM refuses an instance update of its pool (that
/// instance may still have its ipConfiguration, referencing its prefix); the next pass, with ARM taking the
/// update, releases it.
#[tokio::test]
async fn a_deletion_waits_for_a_refused_instance_update() {
    let w = start().await;
    let sgcs = provision_managed_and_byo(&w).await;
    let byo = format!("egressgateway-{}", uid_of(&sgcs, "byo").await);

    sgcs.delete("byo", &DeleteParams::default())
        .await
        .expect("delete");
    pass_with_instance_update_refused(&w, 1).await;
    let held = sgcs.get_opt("byo").await.expect("get");
    assert!(
        held.and_then(|s| s.metadata.finalizers)
            .is_some_and(|f| f.iter().any(|f| f == api::names::SGC_FINALIZER)),
        "the finalizer stays"
    );
    let configs = ip_config_names(&w).await;
    assert!(!configs[0].contains(&byo), "gone from the model: {configs:?}");
    assert!(
        configs.iter().any(|c| c.contains(&byo)),
        "the refused instance still has it: {configs:?}"
    );

    w.azure.with_state(|s| s.clear_faults());
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert!(sgcs.get_opt("byo").await.expect("get").is_none(), "released");
    assert!(
        ip_config_names(&w).await.iter().all(|c| !c.contains(&byo)),
        "no instance has its ipConfiguration"
    );
    let a = sgcs.get("a").await.expect("get");
    assert_eq!(condition(&a, READY), Some(("True", "Provisioned")));
}

/// The pool's prefix size changes under a provisioned configuration (here the node pool's
/// `aks-managed-gatewayIPPrefixSize` tag; a GatewayPool's is immutable): its managed prefix no longer fits,
/// which its status reports, but it keeps its rule, port and ipConfigurations (no egress outage), and a
/// configuration created meanwhile takes another port. Once the size is back, it is provisioned as before.
#[tokio::test]
async fn a_configuration_whose_prefix_no_longer_fits_the_pool_keeps_its_rule_and_ip_configurations() {
    let w = start().await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    create_and_reconcile(&w, &sgcs, "a", json!({"gatewayNodepoolName": "gateway"})).await;
    let a = uid_of(&sgcs, "a").await;
    let port = advertised_port(&provisioned(&sgcs, "a").await);
    let ports = rule_ports(&w).await;
    let configs = ip_config_names(&w).await;
    assert_eq!(ports.get(&a).copied(), port);
    assert!(
        configs.iter().all(|c| c.contains(&format!("egressgateway-{a}"))),
        "{configs:?}"
    );

    let vmss_id = |vmss: serde_json::Value| vmss["id"].as_str().expect("id").to_string();
    let vmss = w.op.arm.get_vmss("node-rg", GATEWAY_VMSS).await.expect("vmss");
    let vmss_id = vmss_id(vmss.expect("the scale set exists"));
    let resize = |size: &str| {
        w.azure
            .patch_resource(
                &vmss_id,
                &json!({"tags": {api::names::TAG_GATEWAY_PREFIX_SIZE: size}}),
            )
            .expect("tag")
    };
    resize("30");
    create_and_reconcile(&w, &sgcs, "b", json!({"gatewayNodepoolName": "gateway"})).await;
    let b = uid_of(&sgcs, "b").await;
    let s = sgcs.get("a").await.expect("get");
    assert_eq!(condition(&s, READY), Some(("False", "PrefixSizeMismatch")));
    let message = message_of(&s, ACCEPTED, ("False", "PrefixSizeMismatch"));
    assert!(
        message.contains("length 31") && message.contains("requires 30"),
        "{message}"
    );
    let now = rule_ports(&w).await;
    assert_eq!(now.get(&a), ports.get(&a), "a's rule keeps its port");
    assert!(now.get(&b).is_some_and(|p| Some(*p) != port), "{now:?}");
    let with_b = ip_config_names(&w).await;
    for (names, before) in with_b.iter().zip(&configs) {
        let mut expected = before.clone();
        expected.push(format!("egressgateway-{b}"));
        expected.sort();
        assert_eq!(names, &expected, "a's ipConfigurations stay, b's are added");
    }
    provisioned(&sgcs, "b").await;

    resize("31");
    w.op.reconcile_pools(None).await.expect("reconcile");
    let s = provisioned(&sgcs, "a").await;
    assert_eq!(advertised_port(&s), port);
    assert_eq!(rule_ports(&w).await.get(&a).copied(), port);
}

/// A configuration whose rule is gone gets back the port its status advertises (its pods use `wg-<port>`),
/// read from its status by the pass: after `b` (6000) is deleted, `d` gets 6000 while `c`, older, has 6001;
/// both rules removed by hand, in creation order the lowest free ports would swap them.
#[tokio::test]
async fn configurations_whose_rules_are_gone_get_the_ports_their_status_advertises_back() {
    let w = start().await;
    let sgcs: Api<StaticGatewayConfiguration> = Api::namespaced(w.client.clone(), &w.app);
    for name in ["b", "c"] {
        create_and_reconcile(&w, &sgcs, name, json!({"gatewayNodepoolName": "gateway"})).await;
    }
    assert_eq!(advertised_port(&provisioned(&sgcs, "c").await), Some(6001));
    sgcs.delete("b", &DeleteParams::default()).await.expect("delete");
    w.op.reconcile_pools(None).await.expect("reconcile");
    assert!(sgcs.get_opt("b").await.expect("get").is_none());
    create_and_reconcile(&w, &sgcs, "d", json!({"gatewayNodepoolName": "gateway"})).await;
    assert_eq!(advertised_port(&provisioned(&sgcs, "d").await), Some(6000));
    let (c, d) = (uid_of(&sgcs, "c").await, uid_of(&sgcs, "d").await);

    let lb = gateway_lb(&w.op).await;
    let rules: Vec<serde_json::Value> = lb["properties"]["loadBalancingRules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| {
            let name = r["name"].as_str().unwrap_or_default().to_ascii_lowercase();
            name != c && name != d
        })
        .cloned()
        .collect();
    w.azure
        .patch_resource(
            lb["id"].as_str().expect("id"),
            &json!({"properties": {"loadBalancingRules": rules}}),
        )
        .expect("rules removed by hand");
    w.op.reconcile_pools(None).await.expect("reconcile");
    let ports = rule_ports(&w).await;
    assert_eq!((ports.get(&c), ports.get(&d)), (Some(&6001), Some(&6000)));
    assert_eq!(advertised_port(&provisioned(&sgcs, "c").await), Some(6001));
    assert_eq!(advertised_port(&provisioned(&sgcs, "d").await), Some(6000));
}

/// The gateway load balancer as ARM holds it now (it must exist).
async fn gateway_lb(op: &Operator) -> serde_json::Value {
    op.arm
        .get_lb("node-rg", "kubeegressgateway-ilb")
        .await
        .expect("lb")
        .expect("the load balancer exists")
}

/// Creates the configuration `name` and runs one pool pass.
async fn create_and_reconcile(
    w: &World,
    sgcs: &Api<StaticGatewayConfiguration>,
    name: &str,
    spec: serde_json::Value,
) {
    create_sgc(sgcs, name, spec).await;
    w.op.reconcile_pools(None).await.expect("reconcile");
}

/// The WireGuard port a configuration's status advertises (`gatewayServerProfile.port`).
fn advertised_port(s: &StaticGatewayConfiguration) -> Option<i64> {
    s.status
        .as_ref()
        .and_then(|st| st.gateway_server_profile.as_ref())
        .map(|p| i64::from(p.port))
}
