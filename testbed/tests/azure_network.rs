//! Network resources through azure_mgmt_network 0.21 against the simulator.

mod azure_support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use azure_mgmt_network::models::{LoadBalancer, PublicIpAddress, PublicIpPrefix};
use azure_support::{
    LB, Network, RG, assert_prefix_in_use, assert_refused, prefix_body, prefix_pip_body, refusal, start,
    status_and_code,
};
use futures::StreamExt;
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use testbed::azure::{FaultSpec, LroConfig, Seed, WriteLimit};

fn lb_body(env: &azure_support::Env, rules: Value, probes: Value) -> LoadBalancer {
    serde_json::from_value(json!({
        "location": "eastus",
        "sku": {"name": "Standard", "tier": "Regional"},
        "properties": {
            "frontendIPConfigurations": [{"name": "fe1", "properties": {
                "privateIPAddressVersion": "IPv4", "privateIPAllocationMethod": "Dynamic",
                "subnet": {"id": env.subnet_id()}}}],
            "backendAddressPools": [{"name": "be1", "properties": {}}],
            "probes": probes,
            "loadBalancingRules": rules,
        }
    }))
    .expect("valid LoadBalancer model")
}

fn rule(env: &azure_support::Env, name: &str, port: u16, probe: &str) -> Value {
    let lb_id = env.id("Microsoft.Network/loadBalancers", LB);
    json!({"name": name, "properties": {
        "protocol": "Udp", "enableFloatingIP": true, "frontendPort": port, "backendPort": port,
        "frontendIPConfiguration": {"id": format!("{lb_id}/frontendIPConfigurations/fe1")},
        "backendAddressPool": {"id": format!("{lb_id}/backendAddressPools/be1")},
        "probe": {"id": format!("{lb_id}/probes/{probe}")}}})
}

/// PUT of load balancer `LB` with `rules` and `probes`: the stored LB, or ARM's status and error code.
async fn put_lb(
    env: &azure_support::Env,
    rules: Value,
    probes: Value,
) -> Result<LoadBalancer, (u16, String)> {
    env.network
        .load_balancers_client()
        .create_or_update(RG, LB, lb_body(env, rules, probes), env.sub())
        .await
        .map_err(|e| status_and_code(&e))
}

/// PUT of load balancer `name` with no rules or probes, as the client returns it.
async fn put_bare_lb(env: &azure_support::Env, name: &str) -> azure_core::Result<LoadBalancer> {
    env.network
        .load_balancers_client()
        .create_or_update(RG, name, lb_body(env, json!([]), json!([])), env.sub())
        .await
}

/// How many addresses the simulator inventory's `table` (owner → list of addresses) hands out.
fn addresses_in(inv: &Value, table: &str) -> usize {
    inv[table]
        .as_object()
        .expect("map")
        .values()
        .map(|v| v.as_array().map_or(0, Vec::len))
        .sum()
}

fn probe(name: &str) -> Value {
    json!({"name": name, "properties": {"protocol": "Http", "port": 8082, "requestPath": "/gw/abc",
        "intervalInSeconds": 5, "probeThreshold": 1}})
}

#[tokio::test]
async fn load_balancer_create_polls_lro_and_allocates_frontend_ip_from_subnet() {
    let env = start(Seed::aks_like(2)).await;
    let lbs = env.network.load_balancers_client();
    let body = lb_body(&env, json!([rule(&env, "r1", 6000, "p1")]), json!([probe("p1")]));
    let created = lbs
        .create_or_update(RG, LB, body, env.sub())
        .await
        .expect("LB created");

    let props = created.properties.expect("properties");
    let fe_ip: Ipv4Addr = props.frontend_ip_configurations[0]
        .properties
        .as_ref()
        .and_then(|p| p.private_ip_address.clone())
        .expect("frontend private IP")
        .parse()
        .expect("IPv4");
    let subnet: Ipv4Net = "10.224.0.0/16".parse().expect("cidr");
    assert!(subnet.contains(&fe_ip), "{fe_ip} must come from the subnet");
    // Two VMSS instances already hold .4 and .5; the five reserved addresses are never handed out.
    assert_eq!(fe_ip, Ipv4Addr::new(10, 224, 0, 6));
    assert_eq!(props.load_balancing_rules.len(), 1);
    // The client polled the Azure-AsyncOperation URL until Succeeded, then re-read the resource.
    assert!(
        env.sim.count_calls("GET", r"/operations/") >= 2,
        "calls: {:?}",
        env.sim.calls()
    );
    assert_eq!(env.sim.count_calls("PUT", r"/loadBalancers/"), 1);

    let got = lbs.get(RG, LB, env.sub()).await.expect("LB get");
    let state = serde_json::to_value(&got).expect("json")["properties"]["provisioningState"].clone();
    assert_eq!(state, json!("Succeeded"));
    assert!(got.etag.is_some(), "ARM returns an etag");

    // Delete: ARM answers 202 + Location; the LB stays visible, Deleting, until its operation is over; the
    // address goes back to the subnet.
    let rsp = lbs
        .delete(RG, LB, env.sub())
        .send()
        .await
        .expect("delete accepted");
    assert_eq!(u16::from(rsp.as_raw_response().status()), 202);
    let deleting =
        serde_json::to_value(lbs.get(RG, LB, env.sub()).await.expect("LB while deleting")).expect("json");
    assert_eq!(deleting["properties"]["provisioningState"], json!("Deleting"));
    assert_eq!(env.follow(rsp.as_raw_response()).await, "Succeeded");
    assert_refused(
        lbs.get(RG, LB, env.sub()).await,
        "LB gone",
        404,
        "ResourceNotFound",
    );
    let inv = env.sim.inventory();
    assert!(
        !inv.to_string().to_lowercase().contains("loadbalancers/"),
        "nothing of the LB left: {inv}"
    );
}

#[tokio::test]
async fn load_balancer_update_keeps_frontend_ip_and_etag_changes() {
    let env = start(Seed::aks_like(0)).await;
    let first = put_lb(&env, json!([rule(&env, "r1", 6000, "p1")]), json!([probe("p1")]))
        .await
        .expect("create");
    let rules = json!([rule(&env, "r1", 6000, "p1"), rule(&env, "r2", 6001, "p1")]);
    let second = put_lb(&env, rules, json!([probe("p1")])).await.expect("update");
    let ip = |lb: &LoadBalancer| {
        lb.properties
            .as_ref()
            .and_then(|p| p.frontend_ip_configurations[0].properties.clone())
            .and_then(|p| p.private_ip_address)
    };
    assert_eq!(
        ip(&first),
        ip(&second),
        "dynamic frontend IP is stable across updates"
    );
    assert_ne!(first.etag, second.etag);
    assert_eq!(second.properties.expect("props").load_balancing_rules.len(), 2);
}

#[tokio::test]
async fn load_balancer_refusals_match_arm() {
    let env = start(Seed::aks_like(0)).await;
    let lbs = env.network.load_balancers_client();
    // (what, rules, probes, the refusal's status and ARM code; `None`: any code)
    let refusals = [
        (
            "a rule referencing a probe that is not in the body",
            json!([rule(&env, "r1", 6000, "missing")]),
            json!([probe("p1")]),
            (400, Some("InvalidResourceReference")),
        ),
        (
            "two rules on the same frontend, protocol and port",
            json!([rule(&env, "r1", 6000, "p1"), rule(&env, "r2", 6000, "p1")]),
            json!([probe("p1")]),
            (400, Some("LoadBalancingRulesWithSameFrontendPortAndProtocol")),
        ),
        (
            "an Http probe without request path",
            json!([]),
            json!([{"name": "p1", "properties": {"protocol": "Http", "port": 8082}}]),
            (400, None),
        ),
    ];
    for (what, rules, probes, (status, code)) in refusals {
        let (got_status, got_code) = put_lb(&env, rules, probes).await.expect_err(what);
        assert_eq!(got_status, status, "{what}");
        if let Some(code) = code {
            assert_eq!(got_code, code, "{what}");
        }
    }
    put_lb(&env, json!([rule(&env, "r1", 6000, "p1")]), json!([probe("p1")]))
        .await
        .expect("valid LB");
    let err = put_lb(&env, json!([rule(&env, "r1", 6000, "p1")]), json!([]))
        .await
        .expect_err("removing a probe that a rule still references");
    assert_eq!(err, (400, "InvalidResourceReference".to_owned()));
    // Refused requests did not change anything: only the valid LB's frontend holds an address.
    let inv = env.sim.inventory();
    let held = addresses_in(&inv, "privateAddresses");
    assert_eq!(held, 1, "{inv}");
    // Missing resource group / resource.
    assert_refused(
        lbs.get("no-such-rg", LB, env.sub()).await,
        "rg",
        404,
        "ResourceGroupNotFound",
    );
    assert_refused(
        lbs.get(RG, "nope", env.sub()).await,
        "lb",
        404,
        "ResourceNotFound",
    );
}

#[tokio::test]
async fn resource_names_outside_arm_rules_are_refused_and_change_nothing() {
    let env = start(Seed::aks_like(0)).await;
    let prefixes = env.network.public_ip_prefixes_client();
    let prefix_body = prefix_body(31);
    // 80 characters is the longest name ARM takes.
    let longest = format!("p{}", "x".repeat(79));
    let prefix = prefixes
        .create_or_update(RG, &longest, prefix_body.clone(), env.sub())
        .await
        .expect("an 80-character name is valid");
    for bad in ["-starts-with-hyphen", "ends-with-dot.", "has,comma"] {
        assert_refused(
            prefixes
                .create_or_update(RG, bad, prefix_body.clone(), env.sub())
                .await,
            bad,
            400,
            "InvalidResourceName",
        );
    }
    // A VM-pool public IP name derived from a long prefix name is longer than ARM allows.
    let pip_name = api::names::vm_pool_public_ip_name(&longest, "aks-gwpool-nic-0");
    assert!(pip_name.len() > 80);
    let pip_body = prefix_pip_body(&prefix.resource.id.clone().expect("id"));
    assert_refused(
        env.network
            .public_ip_addresses_client()
            .create_or_update(RG, &pip_name, pip_body, env.sub())
            .await,
        "name too long",
        400,
        "InvalidResourceName",
    );
    // Child resource names follow the same rules.
    let lbs = env.network.load_balancers_client();
    let bad_probe = json!([{"name": "probe!", "properties": {"protocol": "Tcp", "port": 8082}}]);
    assert_refused(
        lbs.create_or_update(RG, LB, lb_body(&env, json!([]), bad_probe), env.sub())
            .await,
        "bad probe name",
        400,
        "InvalidResourceName",
    );
    // Nothing but the valid prefix exists, and no public address was handed out.
    let inv = env.sim.inventory();
    let ids = inv["resources"].to_string().to_ascii_lowercase();
    assert!(!ids.contains("/loadbalancers/"), "{inv}");
    assert!(!ids.contains("/publicipaddresses/"), "{inv}");
    let handed_out = addresses_in(&inv, "prefixAddresses");
    assert_eq!(handed_out, 0, "{inv}");
}

#[tokio::test]
async fn subnet_get_reports_prefix_and_exhaustion_is_an_arm_error() {
    let mut seed = Seed::aks_like(0);
    seed.virtual_networks[0].subnets[0].address_prefix = "10.224.0.0/29".parse().expect("cidr");
    let env = start(seed).await;
    let subnet = env
        .network
        .subnets_client()
        .get(RG, "aks-vnet", "aks-subnet", env.sub())
        .await
        .expect("subnet");
    assert_eq!(
        subnet
            .properties
            .as_ref()
            .and_then(|p| p.address_prefix.clone())
            .as_deref(),
        Some("10.224.0.0/29")
    );
    // /29: 8 addresses - 5 reserved = 3 usable. Three one-frontend LBs fit, the fourth does not.
    let lbs = env.network.load_balancers_client();
    let mut ips = Vec::new();
    for i in 0..3 {
        let lb = lbs
            .create_or_update(
                RG,
                format!("lb{i}"),
                lb_body(&env, json!([]), json!([])),
                env.sub(),
            )
            .await
            .expect("fits");
        ips.push(
            lb.properties
                .and_then(|p| p.frontend_ip_configurations[0].properties.clone())
                .and_then(|p| p.private_ip_address),
        );
    }
    assert_eq!(
        ips,
        ["10.224.0.4", "10.224.0.5", "10.224.0.6"].map(|s| Some(s.to_owned()))
    );
    assert_refused(put_bare_lb(&env, "lb3").await, "full", 400, "SubnetIsFull");
}

#[tokio::test]
async fn public_ip_prefix_lifecycle_and_in_use_refusal() {
    let env = start(Seed::aks_like(0)).await;
    let prefixes = env.network.public_ip_prefixes_client();
    let body = prefix_body(31);
    // Prefixes are handed out in order from the simulator's public range.
    let mut ids = Vec::new();
    for (name, block) in [
        ("egressgateway-uid1", "20.10.0.0/31"),
        ("egressgateway-uid2", "20.10.0.2/31"),
    ] {
        let p = prefixes
            .create_or_update(RG, name, body.clone(), env.sub())
            .await
            .expect(name);
        assert_eq!(
            p.properties.and_then(|p| p.ip_prefix).as_deref(),
            Some(block),
            "{name}"
        );
        ids.push(p.resource.id.expect("id"));
    }

    let pip_body = prefix_pip_body(&ids[0]);
    let pips = env.network.public_ip_addresses_client();
    let pip = pips
        .create_or_update(RG, "egressgateway-uid1-abc", pip_body, env.sub())
        .await
        .expect("pip");
    assert_eq!(
        pip.properties.and_then(|p| p.ip_address).as_deref(),
        Some("20.10.0.0")
    );

    assert_prefix_in_use(&env, "egressgateway-uid1").await;
    let got = prefixes
        .get(RG, "egressgateway-uid1", env.sub())
        .await
        .expect("get");
    assert_eq!(got.properties.expect("props").public_ip_addresses.len(), 1);

    env.delete(Network::PublicIp, "egressgateway-uid1-abc")
        .await
        .expect("pip deleted");
    env.delete(Network::PublicIpPrefix, "egressgateway-uid1")
        .await
        .expect("prefix deleted");
    env.delete(Network::PublicIpPrefix, "egressgateway-uid2")
        .await
        .expect("prefix 2 deleted");
    let inv = env.sim.inventory();
    assert_eq!(inv["publicBlocks"], json!([]), "{inv}");
}

#[tokio::test]
async fn public_ip_prefixes_list_in_pages_as_a_get_shows_them() {
    let env = start(Seed::aks_like(0)).await;
    let prefixes = env.network.public_ip_prefixes_client();
    for name in ["egressgateway-uid1", "egressgateway-uid2", "other"] {
        prefixes
            .create_or_update(RG, name, prefix_body(31), env.sub())
            .await
            .expect(name);
    }
    let id = prefixes
        .get(RG, "egressgateway-uid1", env.sub())
        .await
        .expect("get")
        .resource
        .id
        .expect("id");
    let pips = env.network.public_ip_addresses_client();
    pips.create_or_update(RG, "egressgateway-uid1-abc", prefix_pip_body(&id), env.sub())
        .await
        .expect("pip");
    env.sim.set_page_size(Some(2));
    env.sim.clear_calls();
    let mut stream = prefixes.list(RG, env.sub()).into_stream();
    let mut listed = Vec::new();
    while let Some(page) = stream.next().await {
        for p in page.expect("page").value {
            let props = p.properties.expect("properties");
            listed.push((
                p.resource.name.expect("name"),
                props.ip_prefix,
                props.prefix_length,
                props.public_ip_addresses.len(),
            ));
        }
    }
    listed.sort();
    assert_eq!(
        listed,
        [
            (
                "egressgateway-uid1".to_string(),
                Some("20.10.0.0/31".to_string()),
                Some(31),
                1
            ),
            (
                "egressgateway-uid2".to_string(),
                Some("20.10.0.2/31".to_string()),
                Some(31),
                0
            ),
            ("other".to_string(), Some("20.10.0.4/31".to_string()), Some(31), 0),
        ]
    );
    assert_eq!(
        env.sim.count_calls("GET", r"(?i)/publicIPPrefixes$"),
        2,
        "two pages of at most 2, the second by nextLink"
    );
}

#[tokio::test]
async fn throttling_with_retry_after_is_retried_by_the_client() {
    let env = start(Seed::aks_like(0)).await;
    let lbs = env.network.load_balancers_client();
    put_bare_lb(&env, LB).await.expect("LB");
    env.sim.clear_calls();
    env.sim
        .inject_fault(FaultSpec::throttle(r"/loadBalancers/", 2, 300))
        .expect("fault");
    let started = Instant::now();
    lbs.get(RG, LB, env.sub())
        .await
        .expect("succeeds after throttling");
    let statuses: Vec<u16> = env.sim.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [429, 429, 200]);
    // The client waited at least the server's retry-after twice (its own backoff is 5 ms).
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn injected_faults_surface_as_arm_errors_after_client_retries() {
    let env = start(Seed::aks_like(0)).await;
    let mut fault = FaultSpec::new("GET", r"/loadBalancers/", 10, 500, "InternalServerError");
    fault.message = Some("simulated outage".into());
    env.sim.inject_fault(fault).expect("fault");
    assert_refused(
        env.network.load_balancers_client().get(RG, LB, env.sub()).await,
        "fails",
        500,
        "InternalServerError",
    );
    // fast_retry(): 1 attempt + 4 retries.
    assert_eq!(env.sim.count_calls("GET", r"/loadBalancers/"), 5);
    // A non-retriable injected status is seen once.
    env.sim.clear_calls();
    env.sim
        .inject_fault(FaultSpec::new(
            "PUT",
            r"/loadBalancers/",
            1,
            409,
            "AnotherOperationInProgress",
        ))
        .expect("fault");
    assert_refused(
        put_bare_lb(&env, LB).await,
        "conflict",
        409,
        "AnotherOperationInProgress",
    );
    assert_eq!(env.sim.count_calls("PUT", r"/loadBalancers/"), 1);
}

/// What ARM answers a load-balancer GET in `api_version`.
async fn get_lb_in_version(api_version: &str) -> (u16, String) {
    let env = start(Seed::aks_like(0)).await;
    let endpoint =
        azure_core::Url::parse(&format!("{}/?api-version={api_version}", env.sim.url())).expect("url");
    let client = azure_mgmt_network::Client::builder(azure_support::credential(&env.sim, &env.seed))
        .endpoint(endpoint)
        .scopes(&["http://sim/.default"])
        .build()
        .expect("client");
    refusal(
        client.load_balancers_client().get(RG, LB, env.sub()).await,
        "refused",
    )
}

#[tokio::test]
async fn unknown_api_version_is_refused() {
    assert_eq!(
        get_lb_in_version("1999-01-01").await,
        (400, "NoRegisteredProviderFound".to_owned())
    );
}

#[tokio::test]
async fn malformed_api_version_is_refused_as_invalid() {
    assert_eq!(
        get_lb_in_version("latest").await,
        (400, "InvalidApiVersionParameter".to_owned())
    );
}

#[tokio::test]
async fn list_returns_created_resources() {
    let env = start(Seed::aks_like(0)).await;
    let lbs = env.network.load_balancers_client();
    put_bare_lb(&env, "a").await.expect("a");
    put_bare_lb(&env, "b").await.expect("b");
    let mut stream = lbs.list(RG, env.sub()).into_stream();
    let page = stream.next().await.expect("a page").expect("list ok");
    let mut names: Vec<String> = page.value.into_iter().filter_map(|l| l.resource.name).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
}

#[tokio::test]
async fn retry_after_in_seconds_as_arm_sends_it_is_honoured() {
    let env = start(Seed::aks_like(0)).await;
    let mut storm = FaultSpec::throttle(r"/publicIPPrefixes/", 1, 0);
    storm.retry_after_ms = None;
    storm.retry_after_seconds = Some(1);
    env.sim.inject_fault(storm).expect("fault");
    let started = Instant::now();
    assert_refused(
        env.network
            .public_ip_prefixes_client()
            .get(RG, "none", env.sub())
            .await,
        "404 after the retry",
        404,
        "ResourceNotFound",
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
    let statuses: Vec<u16> = env
        .sim
        .calls()
        .iter()
        .filter(|c| c.path.contains("publicIPPrefixes"))
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, [429, 404]);
}

/// Reads the AKS subnet, which must succeed, and asserts the answer took at least `min`.
async fn subnet_get_takes_at_least(env: &azure_support::Env, min: Duration) {
    let started = Instant::now();
    env.network
        .subnets_client()
        .get(RG, "aks-vnet", "aks-subnet", env.sub())
        .await
        .expect("slow but fine");
    assert!(started.elapsed() >= min, "{:?} < {min:?}", started.elapsed());
}

#[tokio::test]
async fn added_latency_delays_answers_without_failing_them() {
    let env = start(Seed::aks_like(0)).await;
    env.sim.set_latency(Duration::from_millis(150));
    subnet_get_takes_at_least(&env, Duration::from_millis(150)).await;
    env.sim.set_latency(Duration::ZERO);
    let mut slow = FaultSpec::new("GET", r"/subnets/", 1, 200, "Slow");
    slow.latency_ms = Some(200);
    env.sim.inject_fault(slow).expect("fault");
    subnet_get_takes_at_least(&env, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn failed_long_running_operation_is_reported_and_leaves_resource_failed() {
    let env = start(Seed::aks_like(0)).await;
    env.sim.set_lro(LroConfig {
        fail_next: 1,
        ..LroConfig::default()
    });
    let lbs = env.network.load_balancers_client();
    let err = put_bare_lb(&env, LB).await.expect_err("LRO fails");
    assert!(err.to_string().contains("Long running operation failed"), "{err}");
    let got = serde_json::to_value(lbs.get(RG, LB, env.sub()).await.expect("get")).expect("json");
    assert_eq!(got["properties"]["provisioningState"], json!("Failed"));
    // The next PUT succeeds and repairs it.
    let ok = serde_json::to_value(put_bare_lb(&env, LB).await.expect("retry")).expect("json");
    assert_eq!(ok["properties"]["provisioningState"], json!("Succeeded"));
}

/// ARM answers DELETE with 202 + Location + Azure-AsyncOperation (the 0.21 network client exposes only
/// `send()` for deletes); the resource stays visible, `Deleting`, in a GET and a LIST until the operation is
/// over, and is gone after; deleting again is 204.
#[tokio::test]
async fn delete_is_accepted_with_polling_headers_and_is_idempotent() {
    let env = start(Seed::aks_like(0)).await;
    env.sim.set_lro(LroConfig {
        in_progress_polls: 2,
        max_duration_ms: 60_000,
        ..LroConfig::default()
    });
    let lbs = env.network.load_balancers_client();
    let created = lbs
        .create_or_update(RG, LB, lb_body(&env, json!([]), json!([])), env.sub())
        .send()
        .await
        .expect("accepted");
    assert_eq!(env.follow(created.as_raw_response()).await, "Succeeded");
    let rsp = lbs.delete(RG, LB, env.sub()).send().await.expect("accepted");
    let raw = rsp.as_raw_response();
    assert_eq!(u16::from(raw.status()), 202);
    let location = raw
        .headers()
        .get_optional_str(&azure_core::headers::LOCATION)
        .expect("Location header");
    assert!(location.contains("/operationResults/"), "{location}");
    assert!(
        raw.headers()
            .get_optional_str(&azure_core::headers::AZURE_ASYNCOPERATION)
            .is_some()
    );
    let shown = serde_json::to_value(lbs.get(RG, LB, env.sub()).await.expect("still there")).expect("json");
    assert_eq!(shown["properties"]["provisioningState"], json!("Deleting"));
    let listed = lbs
        .list(RG, env.sub())
        .into_stream()
        .next()
        .await
        .expect("page")
        .expect("list");
    let listed = serde_json::to_value(listed).expect("json");
    assert_eq!(
        listed["value"][0]["properties"]["provisioningState"],
        json!("Deleting")
    );
    assert!(
        env.sim.inventory()["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.ends_with(LB))),
        "the inventory lists it while its DELETE runs"
    );
    assert_eq!(env.follow(raw).await, "Succeeded");
    let refused = refusal(lbs.get(RG, LB, env.sub()).await, "deleted");
    assert_eq!(refused.0, 404);
    let rsp = lbs
        .delete(RG, LB, env.sub())
        .send()
        .await
        .expect("idempotent delete");
    assert_eq!(u16::from(rsp.as_raw_response().status()), 204);
}

#[tokio::test]
async fn write_during_a_running_operation_conflicts_when_enabled() {
    let env = start(Seed::aks_like(0)).await;
    env.sim.set_lro(LroConfig {
        reject_concurrent: true,
        in_progress_polls: 100,
        max_duration_ms: 60_000,
        ..LroConfig::default()
    });
    let lbs = env.network.load_balancers_client();
    // send(): submit without polling, so the operation stays in progress.
    let first = lbs
        .create_or_update(RG, LB, lb_body(&env, json!([]), json!([])), env.sub())
        .send()
        .await
        .expect("accepted");
    assert_eq!(u16::from(first.as_raw_response().status()), 201);
    assert_refused(
        lbs.create_or_update(RG, LB, lb_body(&env, json!([]), json!([])), env.sub())
            .send()
            .await,
        "busy",
        409,
        "AnotherOperationInProgress",
    );
    let state = serde_json::to_value(lbs.get(RG, LB, env.sub()).await.expect("get")).expect("json");
    assert_eq!(state["properties"]["provisioningState"], json!("Updating"));
}

#[tokio::test]
async fn lost_response_fault_applies_the_write_but_reports_an_error() {
    let env = start(Seed::aks_like(0)).await;
    let mut lost = FaultSpec::new("PUT", r"/publicIPPrefixes/", 1, 504, "GatewayTimeout");
    lost.after_apply = true;
    env.sim.inject_fault(lost).expect("fault");
    // Fail fast: no client retries, so the caller sees the 504 of the applied write.
    let client = azure_mgmt_network::Client::builder(azure_support::credential(&env.sim, &env.seed))
        .endpoint(azure_core::Url::parse(env.sim.url()).expect("url"))
        .retry(azure_core::RetryOptions::none())
        .build()
        .expect("client");
    let body: PublicIpPrefix =
        serde_json::from_value(json!({"location": "eastus", "properties": {"prefixLength": 30}}))
            .expect("model");
    assert_refused(
        client
            .public_ip_prefixes_client()
            .create_or_update(RG, "p", body, env.sub())
            .await,
        "lost response",
        504,
        "GatewayTimeout",
    );
    let got = client
        .public_ip_prefixes_client()
        .get(RG, "p", env.sub())
        .await
        .expect("write happened");
    assert_eq!(
        got.properties.and_then(|p| p.ip_prefix).as_deref(),
        Some("20.10.0.0/30")
    );
}

#[tokio::test]
async fn write_limit_throttles_bursts_and_the_client_waits_it_out() {
    let env = start(Seed::aks_like(0)).await;
    env.sim.set_write_limit(Some(WriteLimit {
        max_writes: 2,
        window_ms: 400,
    }));
    let lbs = env.network.load_balancers_client();
    for name in ["a", "b", "c"] {
        let rsp = lbs
            .create_or_update(RG, name, lb_body(&env, json!([]), json!([])), env.sub())
            .send()
            .await
            .expect("eventually accepted");
        assert_eq!(u16::from(rsp.as_raw_response().status()), 201);
    }
    let statuses: Vec<u16> = env
        .sim
        .calls()
        .iter()
        .filter(|c| c.method == "PUT")
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 3);
    assert!(
        statuses.contains(&429),
        "the third write within the window was throttled: {statuses:?}"
    );
    // Reads are not limited.
    for _ in 0..5 {
        lbs.get(RG, "a", env.sub()).await.expect("read");
    }
}

/// A public IP body with the given allocation method and IP version, as a client may spell them.
fn pip_body(method: &str, version: &str) -> PublicIpAddress {
    serde_json::from_value(json!({"location": "eastus", "sku": {"name": "Standard"},
        "properties": {"publicIPAllocationMethod": method, "publicIPAddressVersion": version}}))
    .expect("valid PublicIpAddress model")
}

#[tokio::test]
async fn public_ip_enum_values_are_taken_in_any_case_and_refused_by_meaning() {
    let env = start(Seed::aks_like(0)).await;
    let pips = env.network.public_ip_addresses_client();
    // ARM takes enum values in any case and answers in its own spelling.
    let pip = pips
        .create_or_update(RG, "lower-case", pip_body("static", "ipv4"), env.sub())
        .await
        .expect("lower-case enum values are accepted");
    let raw = serde_json::to_value(&pip).expect("encodes");
    assert_eq!(raw["properties"]["publicIPAllocationMethod"], "Static", "{raw}");
    assert_eq!(raw["properties"]["publicIPAddressVersion"], "IPv4", "{raw}");

    // What is refused is refused by meaning, whatever the case.
    for method in ["Dynamic", "dynamic"] {
        assert_refused(
            pips.create_or_update(RG, "dynamic", pip_body(method, "IPv4"), env.sub())
                .await,
            method,
            400,
            "StandardSkuPublicIPAddressesMustBeStatic",
        );
    }
    assert_refused(
        pips.create_or_update(RG, "v6", pip_body("Static", "IPv6"), env.sub())
            .await,
        "IPv6",
        400,
        "UnsupportedPublicIPAddressVersion",
    );
    let inv = env.sim.inventory();
    let pip_ids: Vec<&str> = inv["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|id| id.contains("/publicIPAddresses/"))
        .collect();
    assert_eq!(pip_ids.len(), 1, "refused bodies store nothing: {inv}");
    assert!(pip_ids[0].ends_with("/lower-case"), "{inv}");
    assert_eq!(
        inv["publicBlocks"].as_array().map(Vec::len),
        Some(1),
        "refused bodies take no address: {inv}"
    );
}
