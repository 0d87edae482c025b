//! Scale sets, instances, their NICs and VM-based pools through azure_mgmt_compute / azure_mgmt_network 0.21.

mod azure_support;

use std::collections::BTreeSet;
use std::time::Duration;

use azure_mgmt_compute::models::{VirtualMachineScaleSet, VirtualMachineScaleSetVm};
use azure_mgmt_network::models::{LoadBalancer, NetworkInterface};
use azure_support::{
    Env, LB, Network, RG, VMSS, assert_prefix_in_use, assert_refused, prefix_body, prefix_pip_body, refusal,
    start,
};
use futures::StreamExt;
use serde_json::{Value, json};
use testbed::azure::{LroConfig, Seed};

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("serialisable model")
}

async fn vmss_json(env: &Env) -> Value {
    to_json(
        &env.compute
            .virtual_machine_scale_sets_client()
            .get(RG, VMSS, env.sub())
            .await
            .expect("VMSS get"),
    )
}

async fn instances(env: &Env) -> Vec<Value> {
    let mut stream = env
        .compute
        .virtual_machine_scale_set_v_ms_client()
        .list(RG, VMSS, env.sub())
        .into_stream();
    let page = stream.next().await.expect("a page").expect("list instances");
    page.value.iter().map(to_json).collect()
}

/// The gateway NIC of scale-set instance `iid`, as JSON.
async fn gateway_nic(env: &Env, iid: &str) -> Value {
    to_json(
        &env.network
            .network_interfaces_client()
            .get_virtual_machine_scale_set_network_interface(
                RG,
                VMSS,
                iid,
                "aks-gateway-12345678-nic",
                env.sub(),
            )
            .await
            .expect("instance NIC"),
    )
}

/// LB with a backend pool named after the scale set's uniqueId (what the operator creates first).
async fn create_lb(env: &Env, pool: &str) -> String {
    let lb: LoadBalancer = serde_json::from_value(json!({"location": "eastus", "properties": {
        "frontendIPConfigurations": [{"name": pool, "properties": {"privateIPAllocationMethod": "Dynamic", "subnet": {"id": env.subnet_id()}}}],
        "backendAddressPools": [{"name": pool}]}}))
    .expect("model");
    env.network
        .load_balancers_client()
        .create_or_update(RG, LB, lb, env.sub())
        .await
        .expect("LB");
    format!(
        "{}/backendAddressPools/{pool}",
        env.id("Microsoft.Network/loadBalancers", LB)
    )
}

async fn create_prefix(env: &Env, name: &str, len: i32) -> String {
    let p = env
        .network
        .public_ip_prefixes_client()
        .create_or_update(RG, name, prefix_body(len), env.sub())
        .await
        .expect("prefix");
    p.resource.id.expect("prefix id")
}

/// The NIC configuration the operator writes: primary ipConfig in the backend pool, plus a secondary
/// ipConfig whose public address comes from the prefix.
fn gateway_nic_configs(env: &Env, pool_id: &str, prefix_id: Option<&str>) -> Value {
    let mut secondary = json!({"name": "egressgateway-uid1", "properties": {"primary": false, "privateIPAddressVersion": "IPv4",
        "subnet": {"id": env.subnet_id()}}});
    if let Some(prefix) = prefix_id {
        secondary["properties"]["publicIPAddressConfiguration"] =
            json!({"name": "egressgateway-uid1", "properties": {"publicIPPrefix": {"id": prefix}}});
    }
    json!([{"name": "aks-gateway-12345678-nic", "properties": {"primary": true, "ipConfigurations": [
        {"name": "ipconfig1", "properties": {"primary": true, "privateIPAddressVersion": "IPv4", "subnet": {"id": env.subnet_id()},
            "loadBalancerBackendAddressPools": [{"id": pool_id}]}},
        secondary
    ]}}])
}

#[tokio::test]
async fn scale_set_list_and_get_show_aks_tags_and_unique_id() {
    let env = start(Seed::aks_like(2)).await;
    let mut stream = env
        .compute
        .virtual_machine_scale_sets_client()
        .list(RG, env.sub())
        .into_stream();
    let page = stream.next().await.expect("page").expect("list");
    assert_eq!(page.value.len(), 1);
    let v = to_json(&page.value[0]);
    assert_eq!(v["tags"]["aks-managed-poolName"], json!("gateway"));
    assert_eq!(v["tags"]["aks-managed-gatewayIPPrefixSize"], json!("31"));
    let unique = v["properties"]["uniqueId"].as_str().expect("uniqueId").to_owned();
    assert!(uuid::Uuid::parse_str(&unique).is_ok());
    assert_eq!(vmss_json(&env).await["properties"]["uniqueId"], json!(unique));
    let inst = instances(&env).await;
    let names: Vec<&str> = inst
        .iter()
        .filter_map(|i| i["properties"]["osProfile"]["computerName"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "aks-gateway-12345678-vmss000000",
            "aks-gateway-12345678-vmss000001"
        ]
    );
}

#[tokio::test]
async fn partial_model_put_merges_and_instance_update_allocates_addresses() {
    let env = start(Seed::aks_like(2)).await;
    let unique = vmss_json(&env).await["properties"]["uniqueId"]
        .as_str()
        .expect("uniqueId")
        .to_owned();
    let pool = create_lb(&env, &unique).await;
    let prefix = create_prefix(&env, "egressgateway-uid1", 31).await;
    let configs = gateway_nic_configs(&env, &pool, Some(&prefix));

    // The operator's partial body: location + networkProfile only.
    let body: VirtualMachineScaleSet = serde_json::from_value(json!({"location": "eastus", "properties": {
        "virtualMachineProfile": {"networkProfile": {"networkInterfaceConfigurations": configs.clone()}}}}))
    .expect("model");
    let updated = env
        .compute
        .virtual_machine_scale_sets_client()
        .create_or_update(RG, VMSS, body, env.sub())
        .await
        .expect("PUT VMSS");
    let v = to_json(&updated);
    assert_eq!(
        v["tags"]["aks-managed-poolName"],
        json!("gateway"),
        "tags survive a partial PUT"
    );
    assert_eq!(
        v["properties"]["uniqueId"],
        json!(unique),
        "uniqueId is server-owned"
    );
    assert!(
        v["properties"]["virtualMachineProfile"]["osProfile"].is_object(),
        "untouched model parts survive"
    );
    assert!(
        instances(&env)
            .await
            .iter()
            .all(|i| i["properties"]["latestModelApplied"] == json!(false))
    );

    let vms = env.compute.virtual_machine_scale_set_v_ms_client();
    let mut secondaries = BTreeSet::new();
    let mut publics = BTreeSet::new();
    for inst in instances(&env).await {
        let iid = inst["instanceId"].as_str().expect("instanceId").to_owned();
        let mut model: VirtualMachineScaleSetVm = serde_json::from_value(inst.clone()).expect("model");
        let body: VirtualMachineScaleSetVm =
            serde_json::from_value(json!({"location": "eastus", "properties": {
            "networkProfileConfiguration": {"networkInterfaceConfigurations": configs.clone()}}}))
            .expect("model");
        model.properties = body.properties;
        let after = vms
            .update(RG, VMSS, &iid, model, env.sub())
            .await
            .expect("instance update");
        assert_eq!(to_json(&after)["properties"]["latestModelApplied"], json!(true));

        let nic = gateway_nic(&env, &iid).await;
        let ipcs = nic["properties"]["ipConfigurations"]
            .as_array()
            .expect("ipConfigurations")
            .clone();
        assert_eq!(ipcs.len(), 2);
        let secondary = ipcs
            .iter()
            .find(|c| c["name"] == json!("egressgateway-uid1"))
            .expect("secondary");
        secondaries.insert(
            secondary["properties"]["privateIPAddress"]
                .as_str()
                .expect("secondary IP")
                .to_owned(),
        );
        let pip = secondary["properties"]["publicIPAddress"]["id"]
            .as_str()
            .expect("public IP id")
            .to_owned();
        publics.insert(pip);
    }
    // Primaries hold .4/.5, the LB frontend .6; secondaries are new, distinct addresses.
    assert_eq!(
        secondaries,
        BTreeSet::from(["10.224.0.7".to_owned(), "10.224.0.8".to_owned()])
    );
    assert_eq!(publics.len(), 2);
    let p = env
        .network
        .public_ip_prefixes_client()
        .get(RG, "egressgateway-uid1", env.sub())
        .await
        .expect("prefix");
    assert_eq!(
        p.properties.expect("props").public_ip_addresses.len(),
        2,
        "both instance public IPs come from the /31"
    );
    assert_prefix_in_use(&env, "egressgateway-uid1").await;
    // The backend pool is in use by the scale set, so the LB cannot go away.
    assert_eq!(
        env.delete(Network::LoadBalancer, LB).await,
        Err((400, "LoadBalancerInUseByVirtualMachineScaleSet".to_owned())),
        "LB in use"
    );
}

#[tokio::test]
async fn stale_if_match_is_refused_with_412() {
    let env = start(Seed::aks_like(1)).await;
    let vmss = env.compute.virtual_machine_scale_sets_client();
    let current = vmss.get(RG, VMSS, env.sub()).await.expect("get");
    let etag = current.etag.clone().expect("etag");
    let body: VirtualMachineScaleSet = serde_json::from_value(
        json!({"location": "eastus", "tags": {"aks-managed-poolName": "gateway", "x": "1"}}),
    )
    .expect("model");
    vmss.create_or_update(RG, VMSS, body.clone(), env.sub())
        .if_match(etag.clone())
        .await
        .expect("matching etag accepted");
    assert_refused(
        vmss.create_or_update(RG, VMSS, body, env.sub())
            .if_match(etag)
            .await,
        "stale etag",
        412,
        "PreconditionFailed",
    );
}

#[tokio::test]
async fn a_concurrent_write_between_get_and_put_changes_the_etag_and_the_content() {
    let env = start(Seed::aks_like(1)).await;
    let vmss = env.compute.virtual_machine_scale_sets_client();
    let etag = vmss
        .get(RG, VMSS, env.sub())
        .await
        .expect("get")
        .etag
        .expect("etag");
    // Someone else tags the scale set right before our PUT (which carries the ETag we read).
    env.sim
        .inject_fault(testbed::azure::FaultSpec::concurrent_write(
            "PUT",
            "(?i)/virtualMachineScaleSets/[^/]+$",
            1,
            json!({"tags": {"owner": "someone-else"}}),
        ))
        .expect("fault");
    let body: VirtualMachineScaleSet =
        serde_json::from_value(json!({"location": "eastus", "tags": {"aks-managed-poolName": "gateway"}}))
            .expect("model");
    assert_refused(
        vmss.create_or_update(RG, VMSS, body.clone(), env.sub())
            .if_match(etag.clone())
            .await,
        "the other write changed the ETag",
        412,
        "PreconditionFailed",
    );
    let now = vmss_json(&env).await;
    assert_eq!(
        now["tags"]["owner"],
        json!("someone-else"),
        "the other write is kept"
    );
    assert_ne!(now["etag"], json!(etag));
    // Out-of-band patches are writes too: the ETag read before them is stale afterwards.
    let before = vmss_json(&env).await["etag"].clone();
    env.sim
        .patch_resource(&env.seed_vmss_id(), &json!({"tags": {"x": "1"}}))
        .expect("patch");
    assert_ne!(vmss_json(&env).await["etag"], before);
    // The fault was used up: the next conditional PUT with a fresh ETag goes through.
    let fresh = vmss_json(&env).await["etag"].as_str().expect("etag").to_owned();
    vmss.create_or_update(RG, VMSS, body, env.sub())
        .if_match(fresh)
        .await
        .expect("fresh etag accepted");
}

#[tokio::test]
async fn scale_set_model_with_dangling_references_is_refused() {
    let env = start(Seed::aks_like(1)).await;
    let missing_pool = format!(
        "{}/backendAddressPools/nope",
        env.id("Microsoft.Network/loadBalancers", LB)
    );
    let body: VirtualMachineScaleSet = serde_json::from_value(json!({"location": "eastus", "properties": {
        "virtualMachineProfile": {"networkProfile": {"networkInterfaceConfigurations": gateway_nic_configs(&env, &missing_pool, None)}}}}))
    .expect("model");
    let vmss = env.compute.virtual_machine_scale_sets_client();
    assert_refused(
        vmss.create_or_update(RG, VMSS, body, env.sub()).await,
        "dangling pool",
        400,
        "InvalidResourceReference",
    );
    let unique = vmss_json(&env).await["properties"]["uniqueId"]
        .as_str()
        .expect("uniqueId")
        .to_owned();
    let pool = create_lb(&env, &unique).await;
    let missing_prefix = env.id("Microsoft.Network/publicIPPrefixes", "nope");
    let body: VirtualMachineScaleSet = serde_json::from_value(json!({"location": "eastus", "properties": {
        "virtualMachineProfile": {"networkProfile": {"networkInterfaceConfigurations": gateway_nic_configs(&env, &pool, Some(&missing_prefix))}}}}))
    .expect("model");
    assert_refused(
        vmss.create_or_update(RG, VMSS, body, env.sub()).await,
        "dangling prefix",
        400,
        "InvalidResourceReference",
    );
    // Nothing changed: the model still has one ipConfiguration.
    let v = vmss_json(&env).await;
    let ipcs = &v["properties"]["virtualMachineProfile"]["networkProfile"]["networkInterfaceConfigurations"]
        [0]["properties"]["ipConfigurations"];
    assert_eq!(ipcs.as_array().map(Vec::len), Some(1));
}

/// With `reject_concurrent`, an instance refuses writes while its scale set's own operation runs, with the 409
/// Compute answers (`OperationNotAllowed`), and takes them once that operation is over.
#[tokio::test]
async fn an_instance_refuses_writes_while_its_scale_sets_operation_runs_when_enabled() {
    let env = start(Seed::aks_like(1)).await;
    env.sim.set_lro(LroConfig {
        reject_concurrent: true,
        in_progress_polls: 2,
        max_duration_ms: 60_000,
        ..LroConfig::default()
    });
    let model: VirtualMachineScaleSet = serde_json::from_value(
        json!({"location": "eastus", "tags": {"aks-managed-poolName": "gateway", "x": "1"}}),
    )
    .expect("model");
    let instance: VirtualMachineScaleSetVm =
        serde_json::from_value(instances(&env).await.remove(0)).expect("model");
    let vms = env.compute.virtual_machine_scale_set_v_ms_client();
    // send(): submit without waiting, so the scale set's operation stays in progress.
    let running = env
        .compute
        .virtual_machine_scale_sets_client()
        .create_or_update(RG, VMSS, model, env.sub())
        .send()
        .await
        .expect("accepted");
    assert_refused(
        vms.update(RG, VMSS, "0", instance.clone(), env.sub())
            .send()
            .await,
        "the scale set's operation runs",
        409,
        "OperationNotAllowed",
    );
    assert_eq!(env.follow(running.as_raw_response()).await, "Succeeded");
    vms.update(RG, VMSS, "0", instance, env.sub())
        .send()
        .await
        .expect("taken once the scale set's operation is over");
}

#[tokio::test]
async fn failed_instance_is_visible_and_an_update_recovers_it() {
    let env = start(Seed::aks_like(1)).await;
    let inst_id = format!(
        "{}/virtualMachines/0",
        env.id("Microsoft.Compute/virtualMachineScaleSets", VMSS)
    );
    env.sim
        .patch_resource(&inst_id, &json!({"properties": {"provisioningState": "Failed"}}))
        .expect("patch");
    let inst = instances(&env).await.remove(0);
    assert_eq!(inst["properties"]["provisioningState"], json!("Failed"));
    let model: VirtualMachineScaleSetVm = serde_json::from_value(inst).expect("model");
    // The compute client does not poll Azure-AsyncOperation: the PUT answer says "Updating" (as ARM does)
    // and the operation finishes on its own after the configured duration.
    env.sim.set_lro(LroConfig {
        max_duration_ms: 50,
        ..LroConfig::default()
    });
    let vms = env.compute.virtual_machine_scale_set_v_ms_client();
    let after = vms.update(RG, VMSS, "0", model, env.sub()).await.expect("update");
    assert_eq!(
        to_json(&after)["properties"]["provisioningState"],
        json!("Updating")
    );
    assert_eq!(env.sim.count_calls("PUT", r"/virtualMachines/0$"), 1);
    testbed::wait::eventually_within(
        "the instance's update finishes (provisioningState Succeeded)",
        Duration::from_secs(5),
        || {
            let (vms, sub) = (&vms, env.sub());
            async move {
                let inst = to_json(&vms.get(RG, VMSS, "0", sub).await.expect("get instance"));
                inst["properties"]["provisioningState"] == json!("Succeeded")
            }
        },
    )
    .await;
}

fn vm_pool_seed() -> Seed {
    let mut seed = Seed::aks_like(0);
    seed.vm_scale_sets.clear();
    seed.with_vm_pool("gwpool", 2, 3)
}

#[tokio::test]
async fn vm_pool_lists_vms_and_tagged_nics_and_nic_put_adds_secondary_ip_with_public_ip() {
    let env = start(vm_pool_seed()).await;
    let mut stream = env
        .compute
        .virtual_machines_client()
        .list(RG, env.sub())
        .into_stream();
    let vms = stream.next().await.expect("page").expect("list VMs").value;
    assert_eq!(vms.len(), 2);
    assert!(
        vms.iter()
            .all(|v| to_json(v)["tags"]["aks-managed-poolName"] == json!("gwpool"))
    );

    let nics_client = env.network.network_interfaces_client();
    let mut stream = nics_client.list(RG, env.sub()).into_stream();
    let nics = stream.next().await.expect("page").expect("list NICs").value;
    assert_eq!(nics.len(), 3);
    assert!(
        nics.iter()
            .all(|n| to_json(n)["tags"]["aks-managed-static-gateway-nic"] == json!("true"))
    );

    let prefix = create_prefix(&env, "egressgateway-uid1", 31).await;
    let pip = env
        .network
        .public_ip_addresses_client()
        .create_or_update(
            RG,
            "egressgateway-uid1-65d70f8df610e8df",
            prefix_pip_body(&prefix),
            env.sub(),
        )
        .await
        .expect("pip");
    let pip_id = pip.resource.id.clone().expect("pip id");

    let nic_name = "aks-gwpool-12345678-nic0";
    let mut nic = to_json(&nics_client.get(RG, nic_name, env.sub()).await.expect("get NIC"));
    let primary_ip = nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"].clone();
    nic["properties"]["ipConfigurations"].as_array_mut().expect("array").push(json!({"name": "egressgateway-uid1", "properties": {
        "primary": false, "privateIPAddressVersion": "IPv4", "subnet": {"id": env.subnet_id()}, "publicIPAddress": {"id": pip_id}}}));
    let body: NetworkInterface = serde_json::from_value(nic).expect("model");
    let after = to_json(
        &nics_client
            .create_or_update(RG, nic_name, body, env.sub())
            .await
            .expect("PUT NIC"),
    );
    let ipcs = after["properties"]["ipConfigurations"].as_array().expect("array");
    assert_eq!(
        ipcs[0]["properties"]["privateIPAddress"], primary_ip,
        "primary address is stable"
    );
    let secondary = ipcs[1]["properties"]["privateIPAddress"]
        .as_str()
        .expect("secondary");
    // 3 pre-created NICs hold .4-.6, so the secondary gets .7.
    assert_eq!(secondary, "10.224.0.7");

    // An attached public IP cannot be deleted; the prefix cannot either.
    assert_eq!(
        env.delete(Network::PublicIp, "egressgateway-uid1-65d70f8df610e8df")
            .await
            .map_err(|(status, _)| status),
        Err(400),
        "attached"
    );
    assert_prefix_in_use(&env, "egressgateway-uid1").await;
}

/// The upstream operator's order of calls for one gateway configuration on a VMSS pool with a managed
/// prefix, then its teardown; asserts the write count and that nothing leaks.
#[tokio::test]
async fn operator_style_provision_and_teardown_leaves_no_leaks() {
    let env = start(Seed::aks_like(2)).await;
    let before = env.sim.inventory();
    let lbs = env.network.load_balancers_client();
    let vmss = env.compute.virtual_machine_scale_sets_client();
    let vms = env.compute.virtual_machine_scale_set_v_ms_client();
    let prefixes = env.network.public_ip_prefixes_client();
    env.sim.clear_calls();

    // LB controller.
    assert_eq!(refusal(lbs.get(RG, LB, env.sub()).await, "no LB yet").0, 404);
    let mut stream = vmss.list(RG, env.sub()).into_stream();
    let pool_vmss = to_json(&stream.next().await.expect("page").expect("list").value[0]);
    let unique = pool_vmss["properties"]["uniqueId"]
        .as_str()
        .expect("uniqueId")
        .to_owned();
    env.network
        .subnets_client()
        .get(RG, "aks-vnet", "aks-subnet", env.sub())
        .await
        .expect("subnet");
    let pool = create_lb(&env, &unique).await;

    // VM controller.
    assert_eq!(
        refusal(
            prefixes.get(RG, "egressgateway-uid1", env.sub()).await,
            "no prefix"
        )
        .0,
        404
    );
    let prefix = create_prefix(&env, "egressgateway-uid1", 31).await;
    let put_model = |configs: Value| -> VirtualMachineScaleSet {
        serde_json::from_value(
            json!({"location": "eastus", "properties": {"virtualMachineProfile": {"networkProfile": {
            "networkInterfaceConfigurations": configs}}}}),
        )
        .expect("model")
    };
    let with_gateway = gateway_nic_configs(&env, &pool, Some(&prefix));
    vmss.create_or_update(RG, VMSS, put_model(with_gateway.clone()), env.sub())
        .await
        .expect("PUT VMSS");
    let apply = |configs: Value| -> VirtualMachineScaleSetVm {
        serde_json::from_value(
            json!({"location": "eastus", "properties": {"networkProfileConfiguration": {
            "networkInterfaceConfigurations": configs}}}),
        )
        .expect("model")
    };
    for inst in instances(&env).await {
        let iid = inst["instanceId"].as_str().expect("id").to_owned();
        gateway_nic(&env, &iid).await;
        vms.update(RG, VMSS, &iid, apply(with_gateway.clone()), env.sub())
            .await
            .expect("instance");
        gateway_nic(&env, &iid).await;
    }
    let lb = to_json(&lbs.get(RG, LB, env.sub()).await.expect("LB"));
    let members = lb["properties"]["backendAddressPools"][0]["properties"]["backendIPConfigurations"]
        .as_array()
        .map(Vec::len);
    assert_eq!(
        members,
        Some(2),
        "both instances' primary ipConfigs are in the pool"
    );
    let writes = env.sim.calls().iter().filter(|c| c.method == "PUT").count();
    assert_eq!(writes, 1 + 1 + 1 + 2, "LB, prefix, VMSS model, two instances");

    // The agent's view of one gateway node: public address from the prefix on the secondary ipConfig.
    let node = to_json(&env.sim.with_state(|s| {
        testbed::azure::imds::instance_metadata(&s.world, "aks-gateway-12345678-vmss000000")
    }));
    let addrs = node["network"]["interface"][0]["ipv4"]["ipAddress"]
        .as_array()
        .expect("addresses")
        .clone();
    assert_eq!(addrs.len(), 2);
    assert!(
        addrs[1]["publicIpAddress"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("20.10.0.")),
        "{addrs:?}"
    );

    // Teardown: instances and model back to the seeded NIC config, then prefix and LB.
    let original = json!([{"name": "aks-gateway-12345678-nic", "properties": {"primary": true, "ipConfigurations": [
        {"name": "ipconfig1", "properties": {"primary": true, "privateIPAddressVersion": "IPv4", "subnet": {"id": env.subnet_id()}}}]}}]);
    vmss.create_or_update(RG, VMSS, put_model(original.clone()), env.sub())
        .await
        .expect("PUT VMSS");
    for iid in ["0", "1"] {
        let after = vms
            .update(RG, VMSS, iid, apply(original.clone()), env.sub())
            .await
            .expect("instance");
        assert_eq!(to_json(&after)["properties"]["latestModelApplied"], json!(true));
    }
    env.delete(Network::PublicIpPrefix, "egressgateway-uid1")
        .await
        .expect("prefix deleted");
    env.delete(Network::LoadBalancer, LB).await.expect("LB deleted");

    let after = env.sim.inventory();
    assert_eq!(
        after["privateAddresses"], before["privateAddresses"],
        "only the seeded addresses remain"
    );
    assert_eq!(after["publicBlocks"], json!([]));
    assert_eq!(after["resources"], before["resources"]);
}

#[tokio::test]
async fn paged_lists_are_followed_by_the_client_via_next_link() {
    let mut seed = vm_pool_seed();
    seed.vm_pools[0].nics = 5;
    let env = start(seed).await;
    env.sim.set_page_size(Some(2));
    let mut stream = env
        .network
        .network_interfaces_client()
        .list(RG, env.sub())
        .into_stream();
    let mut names = Vec::new();
    while let Some(page) = stream.next().await {
        names.extend(
            page.expect("page")
                .value
                .into_iter()
                .filter_map(|n| n.resource.name),
        );
    }
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(
        names.iter().collect::<BTreeSet<_>>().len(),
        5,
        "no duplicates across pages"
    );
    assert_eq!(
        env.sim.count_calls("GET", r"/networkInterfaces$"),
        3,
        "three pages of at most 2"
    );
}

#[tokio::test]
async fn wrong_subscription_and_unsimulated_operations_are_explicit_errors() {
    let env = start(Seed::aks_like(1)).await;
    let vmss = env.compute.virtual_machine_scale_sets_client();
    assert_refused(
        vmss.get(RG, VMSS, "00000000-0000-0000-0000-000000000000").await,
        "other subscription",
        404,
        "SubscriptionNotFound",
    );
    assert_refused(
        vmss.get(RG, "no-such-vmss", env.sub()).await,
        "missing VMSS",
        404,
        "ResourceNotFound",
    );
    assert_refused(
        env.network
            .network_interfaces_client()
            .get_virtual_machine_scale_set_network_interface(RG, VMSS, "0", "no-such-nic", env.sub())
            .await,
        "missing instance NIC",
        404,
        "ResourceNotFound",
    );
    // Creating a scale set is not simulated, and says so.
    let body: VirtualMachineScaleSet = serde_json::from_value(json!({"location": "eastus"})).expect("model");
    assert_refused(
        vmss.create_or_update(RG, "new-vmss", body, env.sub()).await,
        "not simulated",
        400,
        "ScaleSetCreationNotSimulated",
    );
}
