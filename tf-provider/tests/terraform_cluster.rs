//! Acceptance tests with the real `terraform` CLI against the Kubernetes API server of `TestCluster` (the real
//! control plane, or kube-sim with `TESTBED_KUBE=sim`), the real admission webhook registered by Service as the
//! chart registers it and (where the scenario needs Ready objects) the real operator against the Azure simulator.
//! Each scenario follows terraform-plugin-testing's steps: apply, check `terraform show -json`, a follow-up
//! `plan -detailed-exitcode` that is empty, an import round-trip, destroy, and nothing left in the cluster.

mod support;

use std::time::{Duration, Instant};

use api::StaticGatewayConfiguration;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{APP_NS, Cluster, NODEPOOL, VMSS, Workspace, pool_tf, pool_tf_sized};
use testbed::wait::eventually_within;

const POOL: &str = "egressgateway_gateway_pool.gw";
const SGC: &str = "egressgateway_static_gateway_configuration.egress";
const DENIED_SGC: &str = "admission webhook \"validate.staticgatewayconfigurations.egressgateway.kubernetes.azure.com\" denied the request: ";

fn sgcs(c: &Cluster) -> Api<StaticGatewayConfiguration> {
    Api::namespaced(c.admin.clone(), APP_NS)
}

fn pools(c: &Cluster) -> Api<api::GatewayPool> {
    Api::all(c.admin.clone())
}

/// The pool of [`lifecycle_config`], which must exist.
async fn remote_pool(c: &Cluster) -> api::GatewayPool {
    pools(c).get(NODEPOOL).await.expect("the pool")
}

/// The configuration of [`lifecycle_config`], which must exist.
async fn remote_sgc(c: &Cluster) -> StaticGatewayConfiguration {
    sgcs(c).get("egress").await.expect("the configuration")
}

/// The HCL of the pool's node pool name: a configuration that names it depends on the pool.
const POOL_NODEPOOL: &str = "egressgateway_gateway_pool.gw.gateway_nodepool_name";

/// The configuration [`SGC`] in [`APP_NS`] on the gateway node pool `nodepool` (an HCL expression), `extra`
/// added to its block, and its egress prefix as the output `egress_prefix`.
fn sgc_tf(nodepool: &str, extra: &str) -> String {
    format!(
        r#"
resource "egressgateway_static_gateway_configuration" "egress" {{
  namespace             = "{APP_NS}"
  name                  = "egress"
  gateway_nodepool_name = {nodepool}
{extra}
}}

output "egress_prefix" {{
  value = egressgateway_static_gateway_configuration.egress.egress_ip_prefix
}}
"#
    )
}

/// A pool on the seed's gateway node pool and a configuration on it, with the configuration's server-side
/// values used in outputs. `pool_extra` and `sgc_extra` are added to the two resource blocks.
fn lifecycle_config(pool_extra: &str, sgc_extra: &str, more: &str) -> String {
    let pool = pool_tf(pool_extra);
    let sgc = sgc_tf(POOL_NODEPOOL, sgc_extra);
    format!(
        r#"{pool}{sgc}
output "firewall_rule" {{
  value = "allow ${{egressgateway_static_gateway_configuration.egress.egress_ip_prefix}} port ${{egressgateway_static_gateway_configuration.egress.gateway_server_profile.port}}"
}}

output "server_public_key" {{
  value = egressgateway_static_gateway_configuration.egress.gateway_server_profile.public_key
}}
{more}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_drift_import_and_destroy_with_the_operator() {
    let mut cluster = Cluster::start().await;
    cluster.start_operator().await;
    let ws = Workspace::new(
        cluster.credentials("admin").await,
        &lifecycle_config("", r#"  exclude_cidrs = ["10.0.0.0/8"]"#, ""),
    );

    // Create: the pool waits for the operator to take it on, the configuration for Ready.
    ws.apply().await;
    let pool = remote_pool(&cluster).await;
    assert!(
        pool.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&api::names::POOL_FINALIZER.to_string()),
        "apply returned before the operator took the pool on"
    );
    let remote = remote_sgc(&cluster).await;
    let status = remote.status.clone().expect("status");
    let prefix = status.egress_ip_prefix.clone().expect("egress prefix");
    let profile = status.gateway_server_profile.clone().expect("server profile");
    assert!(prefix.ends_with("/31"), "{prefix}");
    let shown = ws.show().await;
    let sgc = shown.resource(SGC);
    assert_eq!(sgc["id"], "app/egress");
    assert_eq!(sgc["exclude_cidrs"], json!(["10.0.0.0/8"]));
    assert_eq!(sgc["default_route"], "staticEgressGateway");
    assert_eq!(sgc["provision_public_ips"], true);
    assert_eq!(sgc["egress_ip_prefix"], prefix.as_str());
    assert_eq!(
        sgc["gateway_server_profile"]["public_key"],
        profile.public_key.as_str()
    );
    assert_eq!(sgc["gateway_server_profile"]["ip"], profile.ip.as_str());
    assert_eq!(sgc["gateway_server_profile"]["port"], profile.port);
    assert!(
        sgc["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "{sgc}"
    );
    assert_eq!(shown.output("egress_prefix"), prefix.as_str());
    assert_eq!(
        shown.output("firewall_rule"),
        format!("allow {prefix} port {}", profile.port).as_str()
    );
    assert_eq!(shown.output("server_public_key"), profile.public_key.as_str());
    let pool = shown.resource(POOL);
    assert_eq!(pool["id"], NODEPOOL);
    assert_eq!(pool["public_ip_prefix_size"], 31);
    assert!(pool["instance_count"].is_null(), "{pool}");
    ws.assert_plan_empty("after create").await;
    ws.assert_import_round_trip(&[(POOL, NODEPOOL), (SGC, "app/egress")])
        .await;

    // Update in place: more excluded CIDRs, the other route mode, a declared pool size; and a data source.
    ws.write(&lifecycle_config(
        "  instance_count = 2",
        r#"  exclude_cidrs = ["10.0.0.0/8", "192.168.0.0/16"]
  default_route = "azureNetworking""#,
        r#"
data "egressgateway_static_gateway_configuration" "read" {
  namespace = egressgateway_static_gateway_configuration.egress.namespace
  name      = egressgateway_static_gateway_configuration.egress.name
}

output "read_prefix" {
  value = data.egressgateway_static_gateway_configuration.read.egress_ip_prefix
}
"#,
    ));
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{plan}");
    assert!(
        plan.stdout.contains("2 to change, 0 to destroy"),
        "updates in place, no replacement:\n{plan}"
    );
    // None of these edits can move the egress prefix or the server profile (only the egress mode can): the
    // plan shows them known, as they are, so nothing fed from them (firewall allowlists) changes; the UIDs
    // are the objects'.
    let saved = ws.saved_plan("update.tfplan").await;
    let change = &planned_change(&saved, SGC)["change"];
    assert_eq!(change["actions"], json!(["update"]), "{change}");
    assert_eq!(change["after"]["egress_ip_prefix"], prefix.as_str(), "{change}");
    assert_eq!(
        change["after"]["gateway_server_profile"]["public_key"],
        profile.public_key.as_str(),
        "{change}"
    );
    assert_eq!(
        change["after"]["uid"],
        remote.metadata.uid.as_deref().expect("uid"),
        "{change}"
    );
    for known in ["egress_ip_prefix", "gateway_server_profile", "uid"] {
        assert!(!has_unknown(&change["after_unknown"][known]), "{known}: {change}");
    }
    assert_eq!(change["after_unknown"]["conditions"], true, "{change}");
    for output in ["egress_prefix", "firewall_rule", "server_public_key"] {
        assert_eq!(
            saved["output_changes"][output]["actions"],
            json!(["no-op"]),
            "{output}: {}",
            saved["output_changes"]
        );
    }
    let pool_change = &planned_change(&saved, POOL)["change"];
    assert_eq!(
        pool_change["after"]["uid"],
        remote_pool(&cluster).await.metadata.uid.as_deref().expect("uid"),
        "{pool_change}"
    );
    ws.apply_saved("update.tfplan").await;
    assert_eq!(ws.show().await.resource(SGC)["egress_ip_prefix"], prefix.as_str());
    let remote = remote_sgc(&cluster).await;
    assert_eq!(
        remote.status.as_ref().and_then(|s| s.egress_ip_prefix.as_deref()),
        Some(prefix.as_str()),
        "the operator kept the prefix, as planned"
    );
    assert_eq!(
        remote.spec.exclude_cidrs,
        vec!["10.0.0.0/8".to_string(), "192.168.0.0/16".to_string()]
    );
    assert_eq!(remote.spec.default_route.as_str(), "azureNetworking");
    let shown = ws.show().await;
    assert_eq!(shown.resource(SGC)["default_route"], "azureNetworking");
    assert_eq!(shown.resource(POOL)["instance_count"], 2);
    assert_eq!(
        shown.output("read_prefix"),
        remote
            .status
            .as_ref()
            .and_then(|s| s.egress_ip_prefix.as_deref())
            .expect("prefix")
    );
    ws.assert_plan_empty("after update").await;

    // Drift on a field Terraform sets: refresh shows it, plan proposes the configured value, apply restores it.
    sgcs(&cluster)
        .patch(
            "egress",
            &PatchParams::apply("kubectl-edit"),
            &Patch::Merge(json!({"spec": {"excludeCidrs": ["172.16.0.0/12"]}})),
        )
        .await
        .expect("out-of-band change");
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{plan}");
    assert!(plan.flat().contains(r#"~ exclude_cidrs = ["#), "{plan}");
    assert!(plan.flat().contains(r#"- "172.16.0.0/12","#), "{plan}");
    ws.apply().await;
    assert_eq!(
        remote_sgc(&cluster).await.spec.exclude_cidrs,
        vec!["10.0.0.0/8".to_string(), "192.168.0.0/16".to_string()]
    );
    ws.assert_plan_empty("after repairing drift").await;

    // Drift on a field the configuration leaves unset: someone declares a pool size Terraform does not.
    ws.write(&lifecycle_config(
        "",
        r#"  exclude_cidrs = ["10.0.0.0/8", "192.168.0.0/16"]
  default_route = "azureNetworking""#,
        "",
    ));
    ws.apply().await;
    assert_eq!(
        remote_pool(&cluster).await.spec.instance_count,
        None,
        "removing instance_count from the configuration removes it from the pool"
    );
    pools(&cluster)
        .patch(
            NODEPOOL,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"instanceCount": 1}})),
        )
        .await
        .expect("out-of-band change");
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{plan}");
    assert!(plan.flat().contains("- instance_count = 1 -> null"), "{plan}");
    ws.apply().await;
    assert_eq!(
        remote_pool(&cluster).await.spec.instance_count,
        None,
        "apply removes a field the configuration does not set"
    );
    ws.assert_plan_empty("after removing an out-of-band field").await;

    // Deleted out of band: plan recreates it.
    sgcs(&cluster)
        .delete("egress", &DeleteParams::default())
        .await
        .expect("out-of-band delete");
    let api = sgcs(&cluster);
    eventually_within(
        "the operator released the configuration",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            async move { api.get_opt("egress").await.expect("get").is_none() }
        },
    )
    .await;
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{plan}");
    assert!(
        plan.stdout.contains(&format!("# {SGC} will be created")),
        "{plan}"
    );
    ws.apply().await;
    assert!(ws.show().await.resource(SGC)["egress_ip_prefix"].is_string());
    ws.assert_plan_empty("after recreating").await;

    ws.destroy().await;
    assert!(ws.show().await.addresses().is_empty());
    cluster.assert_empty().await;
}

/// Does a plan's `after_unknown` value mark anything unknown (`true`, or an object or list holding one)?
fn has_unknown(after_unknown: &serde_json::Value) -> bool {
    match after_unknown {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Array(items) => items.iter().any(has_unknown),
        serde_json::Value::Object(m) => m.values().any(has_unknown),
        _ => false,
    }
}

/// The entry of `resource_changes` for an address in a saved plan (`terraform show -json <plan>`).
fn planned_change<'a>(plan: &'a serde_json::Value, address: &str) -> &'a serde_json::Value {
    plan["resource_changes"]
        .as_array()
        .and_then(|changes| changes.iter().find(|c| c["address"] == address))
        .unwrap_or_else(|| panic!("no change for {address} in the plan: {plan}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_pool_fails_fast_while_configurations_use_it_and_replaces_them_when_triggered() {
    let mut cluster = Cluster::start().await;
    cluster.start_operator().await;
    const TRIGGER: &str =
        "  lifecycle {\n    replace_triggered_by = [egressgateway_gateway_pool.gw.uid]\n  }";
    let config =
        |prefix_size: u8, sgc_extra: &str| pool_tf_sized(prefix_size, "") + &sgc_tf(POOL_NODEPOOL, sgc_extra);
    let ws = Workspace::new(cluster.credentials("admin").await, &config(31, ""));
    ws.apply().await;
    let old_pool = remote_pool(&cluster).await;
    let old_sgc = remote_sgc(&cluster).await;
    let shown = ws.show().await;
    assert_eq!(
        shown.resource(POOL)["uid"],
        old_pool.metadata.uid.as_deref().expect("uid")
    );
    assert_eq!(
        shown.resource(SGC)["uid"],
        old_sgc.metadata.uid.as_deref().expect("uid")
    );

    // A new prefix size replaces the pool, but the configuration sees an unchanged node pool name: deleting
    // the pool first is refused before anything is deleted (the operator would keep the pool while the
    // configuration uses it, and the apply would wait out timeouts.delete, 5 minutes).
    ws.write(&config(30, ""));
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{plan}");
    assert!(
        plan.stdout.contains("1 to add, 0 to change, 1 to destroy"),
        "{plan}"
    );
    let started = Instant::now();
    let run = ws.apply_result().await;
    let took = started.elapsed();
    assert_eq!(run.code, 1, "{run}");
    assert!(
        took < Duration::from_secs(60),
        "waited for the delete: {took:?}\n{run}"
    );
    let flat = run.flat();
    assert!(
        flat.contains("Error: GatewayPool gateway is still in use")
            && flat.contains("the StaticGatewayConfigurations app/egress still use it")
            && flat.contains("replace_triggered_by = [egressgateway_gateway_pool.<pool>.uid]"),
        "{run}"
    );
    let pool = remote_pool(&cluster).await;
    assert_eq!(pool.metadata.uid, old_pool.metadata.uid);
    assert!(
        pool.metadata.deletion_timestamp.is_none(),
        "the pool was deleted: {pool:?}"
    );
    assert_eq!(pool.spec.public_ip_prefix_size, 31);
    assert_eq!(remote_sgc(&cluster).await.metadata.uid, old_sgc.metadata.uid);
    let shown = ws.show().await;
    assert_eq!(shown.resource(POOL)["public_ip_prefix_size"], 31, "{}", shown.0);
    assert!(shown.entry(POOL)["tainted"].is_null(), "{}", shown.0);

    // With the pool's UID as the configuration's replacement trigger, Terraform replaces both: the
    // configuration goes first, and comes back on the new pool with a /30.
    ws.write(&config(30, TRIGGER));
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{plan}");
    assert!(
        plan.stdout.contains(&format!(
            "# {SGC} will be replaced due to changes in replace_triggered_by"
        )) && plan.stdout.contains("2 to add, 0 to change, 2 to destroy"),
        "{plan}"
    );
    ws.apply().await;
    let new_pool = remote_pool(&cluster).await;
    let new_sgc = remote_sgc(&cluster).await;
    assert_ne!(
        new_pool.metadata.uid, old_pool.metadata.uid,
        "the pool was replaced"
    );
    assert_ne!(
        new_sgc.metadata.uid, old_sgc.metadata.uid,
        "the configuration was replaced"
    );
    assert_eq!(new_pool.spec.public_ip_prefix_size, 30);
    let shown = ws.show().await;
    assert_eq!(
        shown.resource(POOL)["uid"],
        new_pool.metadata.uid.as_deref().expect("uid")
    );
    assert_eq!(
        shown.resource(SGC)["uid"],
        new_sgc.metadata.uid.as_deref().expect("uid")
    );
    assert!(
        shown
            .output("egress_prefix")
            .as_str()
            .is_some_and(|p| p.ends_with("/30")),
        "{}",
        shown.0
    );
    ws.assert_plan_empty("after replacing the pool").await;

    // State from a provider that had no `uid` yet: an in-place pool edit planned without a refresh must not
    // replace the configuration (its trigger names the pool's UID, which the edit keeps).
    let state_file = ws.path().join("terraform.tfstate");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).expect("state")).expect("state is JSON");
    for r in state["resources"].as_array_mut().expect("resources") {
        for i in r["instances"].as_array_mut().expect("instances") {
            i["attributes"].as_object_mut().expect("attributes").remove("uid");
        }
    }
    std::fs::write(&state_file, serde_json::to_vec(&state).expect("JSON")).expect("write state");
    ws.write(&(pool_tf_sized(30, "  instance_count = 2") + &sgc_tf(POOL_NODEPOOL, TRIGGER)));
    let saved = ws.saved_plan_with("no-refresh.tfplan", &["-refresh=false"]).await;
    assert_eq!(
        planned_change(&saved, POOL)["change"]["actions"],
        json!(["update"]),
        "{saved}"
    );
    assert_eq!(
        planned_change(&saved, SGC)["change"]["actions"],
        json!(["no-op"]),
        "{saved}"
    );
    assert_eq!(
        planned_change(&saved, POOL)["change"]["after"]["uid"],
        new_pool.metadata.uid.as_deref().expect("uid")
    );
    ws.apply_saved("no-refresh.tfplan").await;
    assert_eq!(remote_pool(&cluster).await.metadata.uid, new_pool.metadata.uid);
    assert_eq!(remote_sgc(&cluster).await.metadata.uid, new_sgc.metadata.uid);
    assert_eq!(
        ws.show().await.resource(POOL)["uid"],
        new_pool.metadata.uid.as_deref().expect("uid")
    );

    ws.destroy().await;
    cluster.assert_empty().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_denial_is_an_apply_diagnostic_with_the_servers_message() {
    let mut cluster = Cluster::start().await;
    cluster.start_operator().await;
    let (rg, vmss) = VMSS;
    let pool_tf = format!(
        r#"
resource "egressgateway_gateway_pool" "gw" {{
  name                  = "self-managed"
  public_ip_prefix_size = 31
  gateway_vmss_profile {{
    vmss_resource_group = "{rg}"
    vmss_name           = "{vmss}"
  }}
}}
"#
    );
    let ws = Workspace::new(cluster.credentials("admin").await, &pool_tf);
    ws.apply().await;
    let shown = ws.show().await;
    assert_eq!(
        shown.resource(POOL)["gateway_vmss_profile"],
        json!([{"vmss_resource_group": rg, "vmss_name": vmss}])
    );
    ws.assert_plan_empty("after creating the pool").await;
    ws.assert_import_round_trip(&[(POOL, "self-managed")]).await;
    cluster.await_webhook_sees_vmss_pool(rg, vmss).await;

    // A /30 configuration on a /31 pool: only the cluster knows the pool's size, so plan cannot tell.
    let sgc_tf = |size: u8| {
        format!(
            r#"{pool_tf}
resource "egressgateway_static_gateway_configuration" "egress" {{
  namespace = "{APP_NS}"
  name      = "egress"
  gateway_vmss_profile {{
    vmss_resource_group   = egressgateway_gateway_pool.gw.gateway_vmss_profile[0].vmss_resource_group
    vmss_name             = egressgateway_gateway_pool.gw.gateway_vmss_profile[0].vmss_name
    public_ip_prefix_size = {size}
  }}
}}
"#
        )
    };
    ws.write(&sgc_tf(30));
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "plan-time rules cannot see the pool:\n{plan}");
    let run = ws.apply_result().await;
    assert_eq!(run.code, 1, "{run}");
    let flat = run.flat();
    assert!(
        flat.contains("Error: Cannot apply StaticGatewayConfiguration app/egress"),
        "{run}"
    );
    assert!(
        flat.contains(&format!(
            "{DENIED_SGC}StaticGatewayConfiguration app/egress is invalid: spec.gatewayVmssProfile.publicIpPrefixSize: rule 4 (instances fit the prefix): is 30 but the GatewayPool of this VMSS uses /31; set publicIpPrefixSize: 31"
        )),
        "the server's message, verbatim:\n{run}"
    );
    assert_eq!(ws.show().await.addresses(), vec![POOL.to_string()]);
    assert!(sgcs(&cluster).get_opt("egress").await.expect("get").is_none());

    // Fixed: accepted, Ready, importable.
    ws.write(&sgc_tf(31));
    ws.apply().await;
    let shown = ws.show().await;
    assert!(
        shown.resource(SGC)["egress_ip_prefix"]
            .as_str()
            .is_some_and(|p| p.ends_with("/31")),
        "{}",
        shown.0
    );
    ws.assert_plan_empty("after the fix").await;
    ws.assert_import_round_trip(&[(SGC, "app/egress")]).await;
    ws.destroy().await;
    cluster.assert_empty().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_operator_apply_times_out_and_records_tainted_objects() {
    let mut cluster = Cluster::start().await;
    // `nodepool` is the configuration's gateway_nodepool_name: a literal first, so that the two creates
    // are independent and both time out; then a reference to the pool, so that replacing both deletes the
    // configuration before the pool (the operator keeps a pool that a configuration uses).
    let with_timeouts = |nodepool: &str, timeouts: &str| pool_tf(timeouts) + &sgc_tf(nodepool, timeouts);
    let ws = Workspace::new(
        cluster.credentials("admin").await,
        &with_timeouts(
            &format!("\"{NODEPOOL}\""),
            "  timeouts {\n    create = \"2s\"\n  }",
        ),
    );
    let started = Instant::now();
    let run = ws.apply_result().await;
    let took = started.elapsed();
    assert_eq!(run.code, 1, "{run}");
    assert!(took >= Duration::from_secs(2), "gave up early: {took:?}");
    assert!(took < Duration::from_secs(30), "waited far too long: {took:?}");
    let flat = run.flat();
    assert!(
        flat.contains("Error: StaticGatewayConfiguration app/egress did not become Ready")
            && flat.contains(
                "gave up after 2s: the operator has not reported any condition yet (is it running?)"
            ),
        "{run}"
    );
    assert!(
        flat.contains("Error: GatewayPool gateway is not ready")
            && flat.contains("the operator has not taken the pool on")
            && flat.contains("is the operator running?"),
        "{run}"
    );
    assert!(
        !flat.contains("inconsistent result") && !flat.contains("invalid result object"),
        "{run}"
    );
    // Both objects exist, so both are in the state, tainted, as Terraform does for a create that failed.
    let shown = ws.show().await;
    for address in [POOL, SGC] {
        assert_eq!(shown.entry(address)["tainted"], true, "{}", shown.0);
    }
    assert!(shown.resource(SGC)["egress_ip_prefix"].is_null());
    assert!(sgcs(&cluster).get_opt("egress").await.expect("get").is_some());
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{plan}");
    assert!(
        plan.stdout
            .contains(&format!("# {SGC} is tainted, so must be replaced")),
        "{plan}"
    );

    // Once the operator runs, the next apply replaces them and succeeds (with the default timeouts: the
    // recreated pool waits for its instances to be Ready).
    cluster.start_operator().await;
    ws.write(&with_timeouts(POOL_NODEPOOL, ""));
    ws.apply().await;
    let shown = ws.show().await;
    assert!(shown.entry(SGC)["tainted"].is_null(), "{}", shown.0);
    assert!(shown.output("egress_prefix").is_string(), "{}", shown.0);
    ws.assert_plan_empty("after recovering").await;
    ws.assert_import_round_trip(&[(POOL, NODEPOOL), (SGC, "app/egress")])
        .await;
    ws.destroy().await;
    cluster.assert_empty().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_and_connection_errors_are_diagnostics_with_the_servers_message() {
    let cluster = Cluster::start().await;
    let sgc_tf = format!(
        r#"
resource "egressgateway_static_gateway_configuration" "egress" {{
  namespace             = "{APP_NS}"
  name                  = "egress"
  gateway_nodepool_name = "{NODEPOOL}"
}}
"#
    );
    let forbidden = |user: &str, verb: &str| {
        let user = cluster.user_name(user);
        format!(
            r#"staticgatewayconfigurations.egressgateway.kubernetes.azure.com "egress" is forbidden: User "{user}" cannot {verb} resource "staticgatewayconfigurations" in API group "egressgateway.kubernetes.azure.com" in the namespace "app""#
        )
    };
    // A create first checks that the object does not exist yet (`get`), then applies it (`patch`).
    for (user, verb) in [("nobody", "get"), ("viewer", "patch")] {
        let ws = Workspace::new(cluster.credentials(user).await, &sgc_tf);
        let run = ws.apply_result().await;
        assert_eq!(run.code, 1, "{run}");
        assert!(
            run.flat()
                .contains("Error: Cannot apply StaticGatewayConfiguration app/egress")
                && run.flat().contains(&format!(
                    "the Kubernetes API server answered 403: {}",
                    forbidden(user, verb)
                )),
            "{user}:\n{run}"
        );
        assert!(ws.show().await.addresses().is_empty());
    }

    let mut bad_token = cluster.credentials("admin").await;
    bad_token[1].1 = "not-a-token".into();
    let ws = Workspace::new(bad_token, &sgc_tf);
    let run = ws.apply_result().await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.flat()
            .contains("the Kubernetes API server answered 401: Unauthorized"),
        "{run}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let mut unreachable = cluster.credentials("admin").await;
    unreachable[0].1 = format!("https://127.0.0.1:{port}");
    let ws = Workspace::new(unreachable, &sgc_tf);
    let run = ws.apply_result().await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.flat()
            .contains("Cannot apply StaticGatewayConfiguration app/egress")
            && run.flat().contains("Connection refused"),
        "the cause, not just 'client error':\n{run}"
    );
    assert!(sgcs(&cluster).get_opt("egress").await.expect("get").is_none());

    // Reading needs rights too: import and refresh report the server's refusal.
    let obj: StaticGatewayConfiguration = serde_json::from_value(json!({
        "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
        "metadata": {"name": "egress", "namespace": APP_NS}, "spec": {"gatewayNodepoolName": NODEPOOL}
    }))
    .expect("configuration");
    sgcs(&cluster)
        .create(&PostParams::default(), &obj)
        .await
        .expect("create out of band");
    let ws = Workspace::new(cluster.credentials("nobody").await, &sgc_tf);
    let run = ws
        .run(&["import", "-no-color", "-input=false", SGC, "app/egress"])
        .await;
    assert_eq!(run.code, 1, "{run}");
    assert!(run.flat().contains(&forbidden("nobody", "get")), "{run}");
    let mut ws = ws;
    ws = ws.with_env(cluster.credentials("admin").await);
    ws.import(SGC, "app/egress").await;
    let shown = ws.show().await;
    assert_eq!(shown.resource(SGC)["gateway_nodepool_name"], NODEPOOL);
    assert_eq!(shown.resource(SGC)["default_route"], "staticEgressGateway");
    ws.assert_plan_empty("after importing an object created out of band")
        .await;
    let ws = ws.with_env(cluster.credentials("nobody").await);
    let run = ws.plan().await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.flat()
            .contains("Cannot read StaticGatewayConfiguration app/egress")
            && run.flat().contains(&forbidden("nobody", "get")),
        "{run}"
    );
    let ws = ws.with_env(cluster.credentials("admin").await);
    ws.destroy().await;
    cluster.assert_empty().await;
}

/// The names of the field managers of an object.
fn managers(meta: &kube::api::ObjectMeta) -> Vec<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect()
}

/// Asserts that an object is the one it was (same UID, spec and generation) and that the provider manages
/// none of its fields.
fn assert_untouched<K>(now: &K, before: &K)
where
    K: kube::Resource + serde::Serialize,
{
    let spec = |o: &K| serde_json::to_value(o).expect("serialise")["spec"].clone();
    let (m, b) = (now.meta(), before.meta());
    assert_eq!(m.uid, b.uid, "{:?}", m.name);
    assert_eq!(m.generation, b.generation, "{:?}: the spec was written", m.name);
    assert_eq!(spec(now), spec(before), "{:?}", m.name);
    assert!(
        !managers(m)
            .iter()
            .any(|n| n == tf_provider::cluster::FIELD_MANAGER),
        "{:?}: the provider took fields over: {:?}",
        m.name,
        managers(m)
    );
}

/// Objects applied outside Terraform (kubectl, a chart, another state) are not taken over by a create: apply
/// fails, naming each object and the import to run, and leaves them as they are (so a later destroy cannot
/// delete them, nor the operator release their egress prefixes). Imported, they are Terraform's to update and
/// destroy. An object still being deleted is not taken over either; once it is gone, the create goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_objects_that_exist_fails_and_leaves_them_alone_until_imported() {
    let mut cluster = Cluster::start().await;
    cluster.start_operator().await;
    let kubectl = PatchParams::apply("kubectl");
    let group_version = format!("{}/v1alpha1", api::names::GROUP);
    pools(&cluster)
        .patch(
            NODEPOOL,
            &kubectl,
            &Patch::Apply(json!({"apiVersion": group_version, "kind": "GatewayPool",
                "metadata": {"name": NODEPOOL},
                "spec": {"gatewayNodepoolName": NODEPOOL, "publicIpPrefixSize": 31, "instanceCount": 2}})),
        )
        .await
        .expect("pool applied out of band");
    let sgc_manifest = |finalizers: &[&str]| {
        json!({"apiVersion": group_version, "kind": "StaticGatewayConfiguration",
            "metadata": {"name": "egress", "namespace": APP_NS, "finalizers": finalizers},
            "spec": {"gatewayNodepoolName": NODEPOOL, "excludeCidrs": ["172.16.0.0/12"]}})
    };
    sgcs(&cluster)
        .patch("egress", &kubectl, &Patch::Apply(sgc_manifest(&[])))
        .await
        .expect("configuration applied out of band");
    let api = sgcs(&cluster);
    let ready_prefix = || {
        let api = api.clone();
        async move {
            let sgc = api.get("egress").await.expect("get");
            sgc.status.and_then(|s| s.egress_ip_prefix)
        }
    };
    eventually_within(
        "the operator gave the configuration its prefix",
        Duration::from_secs(60),
        || async { ready_prefix().await.is_some() },
    )
    .await;
    let prefix = ready_prefix().await.expect("prefix");
    let (pool_before, sgc_before) = (remote_pool(&cluster).await, remote_sgc(&cluster).await);

    // Both declared, neither in the state: Terraform plans two creates. The configuration names the node
    // pool literally, so that both creates are attempted.
    let config = |sgc_extra: &str| pool_tf("") + &sgc_tf(&format!("\"{NODEPOOL}\""), sgc_extra);
    let ws = Workspace::new(
        cluster.credentials("admin").await,
        &config(r#"  exclude_cidrs = ["10.0.0.0/8"]"#),
    );
    let run = ws.apply_result().await;
    assert_eq!(run.code, 1, "{run}");
    let flat = run.flat();
    for (kind, id, address) in [
        ("GatewayPool", NODEPOOL, POOL),
        ("StaticGatewayConfiguration", "app/egress", SGC),
    ] {
        let type_name = address.split('.').next().expect("type");
        assert!(
            flat.contains(&format!("Error: {kind} {id} already exists"))
                && flat.contains(&format!("with {address},"))
                && flat.contains(&format!(
                    "import it into the state first: `terraform import {type_name}.<name> {id}`"
                ))
                && flat.contains("It was left as it is."),
            "{kind}:\n{run}"
        );
    }
    assert!(ws.show().await.addresses().is_empty());
    assert_untouched(&remote_pool(&cluster).await, &pool_before);
    assert_untouched(&remote_sgc(&cluster).await, &sgc_before);

    // Imported, they are Terraform's: apply brings them to the configuration, keeping the configuration's
    // prefix, and destroy deletes them.
    ws.import(POOL, NODEPOOL).await;
    ws.import(SGC, "app/egress").await;
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{plan}");
    assert!(
        plan.stdout.contains("0 to add, 2 to change, 0 to destroy"),
        "{plan}"
    );
    ws.apply().await;
    let pool = remote_pool(&cluster).await;
    assert_eq!(pool.metadata.uid, pool_before.metadata.uid);
    assert_eq!(pool.spec.instance_count, None);
    let sgc = remote_sgc(&cluster).await;
    assert_eq!(sgc.metadata.uid, sgc_before.metadata.uid);
    assert_eq!(sgc.spec.exclude_cidrs, vec!["10.0.0.0/8".to_string()]);
    assert_eq!(
        sgc.status.and_then(|s| s.egress_ip_prefix).as_deref(),
        Some(prefix.as_str())
    );
    ws.assert_plan_empty("after importing and applying").await;
    ws.destroy().await;
    cluster.assert_empty().await;

    // Out of band again, held by a finalizer of its own while being deleted.
    const HOLD: &str = "tf-acceptance/hold";
    sgcs(&cluster)
        .patch("egress", &kubectl, &Patch::Apply(sgc_manifest(&[HOLD])))
        .await
        .expect("configuration applied out of band");
    sgcs(&cluster)
        .delete("egress", &DeleteParams::default())
        .await
        .expect("delete");
    let terminating = remote_sgc(&cluster).await;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let run = ws.apply_result().await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.flat()
            .contains("Error: StaticGatewayConfiguration app/egress is being deleted")
            && run.flat().contains(&format!("with {SGC},"))
            && run.flat().contains("Apply again once it is gone."),
        "{run}"
    );
    assert_eq!(ws.show().await.addresses(), vec![POOL.to_string()]);
    assert_untouched(&remote_sgc(&cluster).await, &terminating);
    // Released once the operator is done with it (its own finalizer gone).
    eventually_within(
        "only the test's finalizer holds the configuration",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            async move {
                let sgc = api.get("egress").await.expect("get");
                sgc.metadata.finalizers == Some(vec![HOLD.to_string()])
            }
        },
    )
    .await;
    sgcs(&cluster)
        .patch(
            "egress",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("release the finalizer");
    eventually_within("the configuration is gone", Duration::from_secs(30), || {
        let api = api.clone();
        async move { api.get_opt("egress").await.expect("get").is_none() }
    })
    .await;
    ws.apply().await;
    assert_eq!(
        remote_sgc(&cluster).await.spec.exclude_cidrs,
        vec!["10.0.0.0/8".to_string()]
    );
    ws.assert_plan_empty("after creating").await;
    ws.destroy().await;
    cluster.assert_empty().await;
}

/// StopProvider (Terraform's answer to Ctrl-C) ends a create's wait for readiness at once, with an error and
/// the object as it is in the cluster, so that Terraform records it (tainted) rather than forget an object that
/// exists. Driven in process: the `terraform` CLI only sends StopProvider on an interrupt signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_provider_ends_a_create_waiting_for_readiness_and_records_the_object() {
    use tf_provider::proto::tfplugin6 as pb;
    use tf_provider::proto::tfplugin6::provider_server::Provider as _;
    use tf_provider::resources::{Kind, object, sgc};
    use tf_provider::value::Value as TfValue;

    // No operator: the configuration never becomes Ready, so the create waits (10 minutes by default).
    let cluster = Cluster::start().await;
    let provider = std::sync::Arc::new(tf_provider::provider::Provider::new());
    let credentials: std::collections::BTreeMap<String, String> =
        cluster.credentials("admin").await.into_iter().collect();
    let provider_config = tf_provider::provider::provider_schema().normalise(object(
        ["host", "token", "cluster_ca_certificate"]
            .map(|k| (k, TfValue::str(&credentials[&format!("TF_VAR_{k}")]))),
    ));
    let dynamic = |v: &TfValue| pb::DynamicValue {
        msgpack: v.to_msgpack(),
        json: vec![],
    };
    let configured = provider
        .configure_provider(tonic::Request::new(pb::configure_provider::Request {
            config: Some(dynamic(&provider_config)),
            ..Default::default()
        }))
        .await
        .expect("answered");
    assert!(configured.get_ref().diagnostics.is_empty(), "{configured:?}");

    let config = Kind::Sgc.resource_schema().normalise(object([
        ("namespace", TfValue::str(APP_NS)),
        ("name", TfValue::str("egress")),
        ("gateway_nodepool_name", TfValue::str(NODEPOOL)),
    ]));
    let (planned, _) = sgc::plan(&TfValue::Null, &config);
    let create = {
        let provider = provider.clone();
        let request = pb::apply_resource_change::Request {
            type_name: Kind::Sgc.type_name().into(),
            prior_state: Some(dynamic(&TfValue::Null)),
            planned_state: Some(dynamic(&planned)),
            config: Some(dynamic(&config)),
            ..Default::default()
        };
        tokio::spawn(async move { provider.apply_resource_change(tonic::Request::new(request)).await })
    };
    let api = sgcs(&cluster);
    eventually_within(
        "the create wrote the configuration",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            async move { api.get_opt("egress").await.expect("get").is_some() }
        },
    )
    .await;
    assert!(!create.is_finished(), "the create must be waiting for readiness");

    provider
        .stop_provider(tonic::Request::new(pb::Empty {}))
        .await
        .expect("answered");
    let applied = tokio::time::timeout(Duration::from_secs(30), create)
        .await
        .expect("the create returns once stopped, not after its 10 minute wait")
        .expect("task")
        .expect("answered")
        .into_inner();
    assert_eq!(applied.diagnostics.len(), 1, "{:?}", applied.diagnostics);
    let d = &applied.diagnostics[0];
    assert_eq!(d.severity, pb::diagnostic::Severity::Error as i32);
    assert_eq!(
        d.summary,
        "Stopped waiting for StaticGatewayConfiguration app/egress"
    );
    assert_eq!(d.detail, "interrupted: Terraform asked the provider to stop");
    let state =
        TfValue::from_msgpack(&applied.new_state.expect("the object is recorded").msgpack).expect("msgpack");
    let remote = remote_sgc(&cluster).await;
    assert_eq!(state.get("id").as_str(), Some("app/egress"));
    assert_eq!(state.get("uid").as_str(), remote.metadata.uid.as_deref());
    assert!(state.is_wholly_known(), "{state:?}");

    sgcs(&cluster)
        .delete("egress", &DeleteParams::default())
        .await
        .expect("clean up");
    eventually_within("the configuration is gone", Duration::from_secs(30), || {
        let api = api.clone();
        async move { api.get_opt("egress").await.expect("get").is_none() }
    })
    .await;
    cluster.assert_empty().await;
}
