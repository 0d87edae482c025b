//! AAD token endpoint, IMDS and the HTTP control API of the simulator, through azure_identity 0.21
//! credentials and azure_core's HTTP client.

mod azure_support;

use std::sync::Arc;

use azure_core::auth::TokenCredential;
use azure_core::{Method, Request, Url};
use azure_identity::{ClientSecretCredential, WorkloadIdentityCredential};
use azure_support::{RG, VMSS, start, status_and_code};
use serde_json::{Value, json};
use testbed::azure::Seed;

/// One HTTP request with azure_core's client; returns status and JSON body (Null when empty).
async fn raw(
    method: Method,
    url: &str,
    headers: &[(&'static str, String)],
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = Request::new(Url::parse(url).expect("url"), method);
    for (k, v) in headers {
        req.insert_header(*k, v.clone());
    }
    if let Some(b) = body {
        req.insert_header("content-type", "application/json");
        req.set_body(serde_json::to_vec(&b).expect("json"));
    }
    let rsp = azure_core::new_http_client()
        .execute_request(&req)
        .await
        .expect("request sent");
    let (status, _, body) = rsp.deconstruct();
    let bytes = body.collect().await.expect("body");
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (u16::from(status), v)
}

fn metadata() -> Vec<(&'static str, String)> {
    vec![("metadata", "true".to_owned())]
}

#[tokio::test]
async fn client_secret_credential_is_checked_and_tokens_gate_arm() {
    let env = start(Seed::aks_like(0)).await;
    let authority = Url::parse(env.sim.url()).expect("url");
    let scope = format!("{}/.default", env.sim.url());
    let good = ClientSecretCredential::new(
        azure_core::new_http_client(),
        authority.clone(),
        env.seed.tenant_id.clone(),
        "sim-client".into(),
        "sim-secret".into(),
    );
    let token = good
        .get_token(&[&scope])
        .await
        .expect("token for the right secret");
    assert!(!token.token.secret().is_empty());

    let wrong_secret = ClientSecretCredential::new(
        azure_core::new_http_client(),
        authority.clone(),
        env.seed.tenant_id.clone(),
        "sim-client".into(),
        "not-the-secret".into(),
    );
    assert!(
        wrong_secret.get_token(&[&scope]).await.is_err(),
        "wrong secret refused"
    );
    let wrong_tenant = ClientSecretCredential::new(
        azure_core::new_http_client(),
        authority,
        "other-tenant".into(),
        "sim-client".into(),
        "sim-secret".into(),
    );
    assert!(
        wrong_tenant.get_token(&[&scope]).await.is_err(),
        "unknown tenant refused"
    );

    // ARM only accepts tokens the simulator issued.
    let lb_url = format!(
        "{}/subscriptions/{}/resourceGroups/{RG}/providers/Microsoft.Network/loadBalancers/x?api-version=2024-03-01",
        env.sim.url(),
        env.sub()
    );
    let (status, body) = raw(
        Method::Get,
        &lb_url,
        &[("authorization", "Bearer forged".into())],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("InvalidAuthenticationToken"))
    );
    let bearer = format!("Bearer {}", token.token.secret());
    let (status, body) = raw(Method::Get, &lb_url, &[("authorization", bearer.clone())], None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("ResourceNotFound"))
    );
    // Missing api-version.
    let no_version = lb_url.split('?').next().expect("path").to_owned();
    let (status, body) = raw(Method::Get, &no_version, &[("authorization", bearer)], None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("MissingApiVersionParameter"))
    );
}

#[tokio::test]
async fn workload_identity_credential_gets_a_usable_token() {
    let env = start(Seed::aks_like(1)).await;
    let cred: Arc<dyn TokenCredential> = Arc::new(WorkloadIdentityCredential::new(
        azure_core::new_http_client(),
        Url::parse(env.sim.url()).expect("url"),
        env.seed.tenant_id.clone(),
        "sim-client".into(),
        "projected-service-account-jwt".to_owned(),
    ));
    let compute = azure_mgmt_compute::Client::builder(cred)
        .endpoint(Url::parse(env.sim.url()).expect("url"))
        .build()
        .expect("client");
    let vmss = compute
        .virtual_machine_scale_sets_client()
        .get(RG, VMSS, env.sub())
        .await
        .expect("authorised call");
    assert_eq!(vmss.resource.name.as_deref(), Some(VMSS));
}

#[tokio::test]
async fn imds_managed_identity_token_requires_metadata_header_and_authorises_arm() {
    let env = start(Seed::aks_like(0)).await;
    let url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
        env.sim.url(),
        env.sim.url()
    );
    let (status, _) = raw(Method::Get, &url, &[], None).await;
    assert_eq!(status, 400, "IMDS refuses requests without Metadata: true");
    let (status, body) = raw(Method::Get, &url, &metadata(), None).await;
    assert_eq!(status, 200);
    let expires_on: u64 = body["expires_on"]
        .as_str()
        .expect("expires_on is a string")
        .parse()
        .expect("unix time");
    assert!(expires_on > 0);
    let token = body["access_token"].as_str().expect("token");
    let vmss_url = format!(
        "{}/subscriptions/{}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets?api-version=2024-07-01",
        env.sim.url(),
        env.sub()
    );
    let (status, body) = raw(
        Method::Get,
        &vmss_url,
        &[("authorization", format!("Bearer {token}"))],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["value"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn imds_instance_metadata_per_node_has_the_fields_the_agent_reads() {
    let env = start(Seed::aks_like(2)).await;
    let node = "aks-gateway-12345678-vmss000001";
    let by_path = format!(
        "{}/metadata/instance?api-version=2021-10-01&format=json",
        env.sim.imds_base(node)
    );
    let (status, md) = raw(Method::Get, &by_path, &metadata(), None).await;
    assert_eq!(status, 200);
    assert_eq!(md["compute"]["osProfile"]["computerName"], json!(node));
    assert_eq!(md["compute"]["vmScaleSetName"], json!(VMSS));
    assert_eq!(md["compute"]["resourceGroupName"], json!(RG));
    let tags = md["compute"]["tags"].as_str().expect("tags string");
    let parsed: Vec<(&str, &str)> = tags.split(';').filter_map(|kv| kv.split_once(':')).collect();
    assert!(parsed.contains(&("aks-managed-poolName", "gateway")), "{tags}");
    let ipv4 = &md["network"]["interface"][0]["ipv4"];
    assert_eq!(
        ipv4["subnet"][0],
        json!({"address": "10.224.0.0", "prefix": "16"})
    );
    assert_eq!(
        ipv4["ipAddress"][0]["privateIpAddress"],
        json!("10.224.0.5"),
        "second instance holds .5"
    );

    // Same document selected by header; load balancer metadata; unknown node.
    let by_header = format!("{}/metadata/instance?api-version=2021-10-01", env.sim.url());
    let mut h = metadata();
    h.push(("x-sim-node", node.to_owned()));
    let (_, md2) = raw(Method::Get, &by_header, &h, None).await;
    assert_eq!(md2["compute"]["vmId"], md["compute"]["vmId"]);
    let lb = format!(
        "{}/metadata/loadbalancer?api-version=2020-10-01",
        env.sim.imds_base(node)
    );
    let (status, lbmd) = raw(Method::Get, &lb, &metadata(), None).await;
    assert_eq!(status, 200);
    assert!(lbmd["loadbalancer"]["publicIpAddresses"].is_array());
    let (status, _) = raw(
        Method::Get,
        &format!("{}/metadata/instance", env.sim.imds_base("no-such-node")),
        &metadata(),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn http_control_api_injects_faults_and_reports_calls_and_inventory() {
    let env = start(Seed::aks_like(1)).await;
    let base = env.sim.url().to_owned();
    let fault = json!({"method": "GET", "pathRegex": "virtualMachineScaleSets/", "count": 1, "status": 409,
        "code": "OperationNotAllowed"});
    let (status, _) = raw(Method::Post, &format!("{base}/_sim/faults"), &[], Some(fault)).await;
    assert_eq!(status, 204);
    let (status, _) = raw(
        Method::Post,
        &format!("{base}/_sim/faults"),
        &[],
        Some(json!({"pathRegex": "(", "count": 1, "status": 500})),
    )
    .await;
    assert_eq!(status, 400, "invalid regex is refused");

    let vmss = env.compute.virtual_machine_scale_sets_client();
    let err = vmss.get(RG, VMSS, env.sub()).await.expect_err("injected");
    assert_eq!(status_and_code(&err), (409, "OperationNotAllowed".to_owned()));
    vmss.get(RG, VMSS, env.sub()).await.expect("fault used up");

    let (_, calls) = raw(Method::Get, &format!("{base}/_sim/calls"), &[], None).await;
    let vmss_calls: Vec<u64> = calls
        .as_array()
        .expect("calls")
        .iter()
        .filter(|c| {
            c["path"]
                .as_str()
                .is_some_and(|p| p.contains("virtualMachineScaleSets/"))
        })
        .filter_map(|c| c["status"].as_u64())
        .collect();
    assert_eq!(vmss_calls, [409, 200]);
    assert!(
        calls
            .as_array()
            .expect("calls")
            .iter()
            .all(|c| !c["path"].as_str().unwrap_or_default().starts_with("/_sim"))
    );

    let (_, inv) = raw(Method::Get, &format!("{base}/_sim/inventory"), &[], None).await;
    let resources = inv["resources"].as_array().expect("resources");
    assert!(
        resources
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.ends_with("/virtualMachines/0")))
    );
    assert_eq!(inv["pendingOperations"], json!(0));
}

#[tokio::test]
async fn binary_serves_a_seed_file() {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("azure-sim-seed-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let seed_path = dir.join("seed.json");
    std::fs::write(&seed_path, serde_json::to_vec(&Seed::aks_like(1)).expect("json")).expect("write seed");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_azure-sim"))
        .args([
            "--seed",
            seed_path.to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("binary starts");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // Logs (and so the `url=` line) go to stderr, like every binary's.
    let stderr = child.stderr.take().expect("stderr");
    let guard = Kill(child);
    let line = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("listening"))
        .expect("listening line");
    let url = line
        .split("url=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("url in log")
        .trim_matches('"')
        .to_owned();
    let (status, body) = raw(Method::Get, &format!("{url}/_sim/healthz"), &[], None).await;
    assert_eq!(status, 200, "{body}");
    let (_, inv) = raw(Method::Get, &format!("{url}/_sim/inventory"), &[], None).await;
    assert!(inv["resources"].as_array().is_some_and(|r| !r.is_empty()));
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn imds_for_a_vm_pool_node_carries_the_nic_name_tag() {
    let mut seed = Seed::aks_like(0);
    seed.vm_scale_sets.clear();
    let seed = seed.with_vm_pool("gwvms", 1, 1);
    let env = start(seed).await;
    let url = format!(
        "{}/metadata/instance?api-version=2021-10-01",
        env.sim.imds_base("aks-gwvms-12345678-vm0")
    );
    let (status, md) = raw(Method::Get, &url, &metadata(), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        md["compute"]["vmScaleSetName"],
        json!(""),
        "not a scale set instance"
    );
    let tags = md["compute"]["tags"].as_str().expect("tags");
    assert!(
        tags.split(';')
            .any(|t| t == "aks-managed-nic-name:aks-gwvms-12345678-nic0"),
        "{tags}"
    );
    assert_eq!(
        md["network"]["interface"][0]["ipv4"]["ipAddress"][0]["privateIpAddress"],
        json!("10.224.0.4")
    );
}

#[tokio::test]
async fn http_control_api_patches_resources_and_tunes_operations() {
    let env = start(Seed::aks_like(1)).await;
    let base = env.sim.url().to_owned();
    let inst = format!("{}/virtualMachines/0", env.seed_vmss_id());
    let (status, v) = raw(
        Method::Post,
        &format!("{base}/_sim/patch"),
        &[],
        Some(json!({"id": inst, "patch": {"properties": {"provisioningState": "Failed"}}})),
    )
    .await;
    assert_eq!(
        (status, v["properties"]["provisioningState"].clone()),
        (200, json!("Failed"))
    );
    let got = env
        .compute
        .virtual_machine_scale_set_v_ms_client()
        .get(RG, VMSS, "0", env.sub())
        .await
        .expect("instance");
    assert_eq!(
        serde_json::to_value(got).expect("json")["properties"]["provisioningState"],
        json!("Failed")
    );
    let (status, v) = raw(
        Method::Post,
        &format!("{base}/_sim/patch"),
        &[],
        Some(json!({"id": "/nope", "patch": {}})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (404, json!("ResourceNotFound"))
    );

    let lro = json!({"enabled": false, "inProgressPolls": 0, "retryAfterMs": 0, "maxDurationMs": 0});
    assert_eq!(
        raw(Method::Put, &format!("{base}/_sim/lro"), &[], Some(lro))
            .await
            .0,
        204
    );
    assert_eq!(
        raw(
            Method::Put,
            &format!("{base}/_sim/latency"),
            &[],
            Some(json!({"ms": 0}))
        )
        .await
        .0,
        204
    );
    env.sim.clear_calls();
    let body: azure_mgmt_compute::models::VirtualMachineScaleSet =
        serde_json::from_value(json!({"location": "eastus", "tags": {"k": "v"}})).expect("model");
    let put = env
        .compute
        .virtual_machine_scale_sets_client()
        .create_or_update(RG, VMSS, body, env.sub())
        .await
        .expect("PUT");
    assert_eq!(put.resource.tags.expect("tags")["k"], json!("v"));
    assert_eq!(
        env.sim.count_calls("GET", "/operations/"),
        0,
        "no operation to poll when LROs are off"
    );
}
