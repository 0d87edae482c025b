//! Azure that never answers: an ARM or token endpoint that accepts the connection and then says nothing, a
//! long-running operation that never finishes. Each call fails within its bound (short ones here) into the
//! pool's usual retry, instead of stopping the operator while its probes still answer; and a pass stuck
//! anyway (bounds longer than the liveness bound) fails `/healthz`, so kubelet restarts the operator. And an
//! answer naming an operation to poll elsewhere than at the ARM endpoint is not followed (a poll carries the
//! bearer token).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use azure_core::auth::{AccessToken, TokenCredential};
use operator::azure::{Arm, RetryBudget, Timeouts};
use operator::config::CloudConfig;
use operator::metrics::Metrics;
use serde_json::json;
use testbed::azure::{AzureSim, LroConfig, Seed};
use testbed::wait::eventually;

mod common;

/// An endpoint that accepts every connection and never answers (nor closes one); its base URL.
async fn silent_endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

/// Bounds short enough for a test.
fn short() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(500),
        request: Duration::from_millis(300),
        operation: Duration::from_millis(500),
    }
}

/// No retries: one exchange per call.
fn no_retries() -> RetryBudget {
    RetryBudget {
        initial: Duration::from_millis(5),
        max_delay: Duration::from_millis(10),
        max_retries: 0,
    }
}

/// A token that is always valid, so that only ARM itself is in question.
#[derive(Debug)]
struct FixedToken;

#[async_trait::async_trait]
impl TokenCredential for FixedToken {
    async fn get_token(&self, _scopes: &[&str]) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            "token".to_string(),
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        Ok(())
    }
}

/// The cloud config of the seed's cluster with `url` as ARM and AAD endpoint, changed by `edit`.
fn cloud_config(url: &str, edit: impl FnOnce(&mut serde_json::Value)) -> CloudConfig {
    let mut cfg = Seed::aks_like(1).cloud_config(url);
    edit(&mut cfg);
    CloudConfig::parse(&cfg.to_string(), |_| None).expect("config")
}

/// Awaits `call`, which must return at all (a generous outer bound keeps a regression from hanging the suite).
async fn returns<T>(what: &str, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .unwrap_or_else(|_| panic!("{what} never returned"))
}

/// An ARM client (short bounds, no retries, a fixed token) of a [`silent_endpoint`], and the endpoint's task.
async fn arm_on_silent_endpoint() -> (Arm, tokio::task::JoinHandle<()>) {
    let (url, endpoint) = silent_endpoint().await;
    (quick_client(&url), endpoint)
}

#[tokio::test]
async fn every_arm_call_that_returns_is_progress_of_the_pass() {
    let (arm, _endpoint) = arm_on_silent_endpoint().await;
    let heartbeat = daemon::liveness::Heartbeat::new("reconcile pass", Duration::from_secs(900));
    arm.report_progress_to(&heartbeat);
    let _ = returns("an ARM call outside a pass", arm.list_vmss("node-rg")).await;
    assert_eq!(heartbeat.last_progress(), None, "no pass under way, no progress");

    let busy = heartbeat.begin();
    let started = heartbeat.last_progress().expect("a pass under way");
    // A call that fails (here: its request timeout) has returned too: slow ARM is not a stuck pass.
    let err = returns("an ARM call in a pass", arm.list_vmss("node-rg")).await;
    assert!(err.is_err());
    let progressed = heartbeat.last_progress().expect("still under way");
    assert!(
        progressed > started,
        "the call's return was not recorded as progress"
    );
    drop(busy);
}

#[tokio::test]
async fn an_arm_endpoint_that_never_answers_fails_the_call() {
    let (arm, _endpoint) = arm_on_silent_endpoint().await;
    let err = returns("the ARM call", arm.list_vmss("node-rg"))
        .await
        .expect_err("no answer is an error");
    assert_eq!(
        (err.operation.as_str(), err.status),
        ("LIST virtualMachineScaleSets", None),
        "{err}"
    );
    assert!(err.message.contains("timed out"), "the error says why: {err}");
}

#[tokio::test]
async fn token_endpoints_that_never_answer_fail_the_token_request() {
    let (url, _endpoint) = silent_endpoint().await;
    // Service principal: the token endpoint is the authority host.
    let cfg = cloud_config(&url, |_| {});
    let credential = operator::azure::credential(&cfg, &short()).expect("credential");
    let scope = format!("{url}/.default");
    returns("the AAD token request", credential.get_token(&[&scope]))
        .await
        .expect_err("no answer is an error");
    // Managed identity through IMDS.
    let cfg = cloud_config(&url, |cfg| {
        if let Some(o) = cfg.as_object_mut() {
            o.remove("aadClientId");
            o.remove("aadClientSecret");
        }
        cfg["useManagedIdentityExtension"] = json!(true);
        cfg["imdsEndpoint"] = json!(format!("{url}/metadata/identity/oauth2/token"));
    });
    let credential = operator::azure::credential(&cfg, &short()).expect("credential");
    returns("the IMDS token request", credential.get_token(&[&scope]))
        .await
        .expect_err("no answer is an error");
}

#[tokio::test]
async fn a_long_running_operation_that_never_finishes_fails_at_its_deadline() {
    let seed = Seed::aks_like(1);
    let azure = AzureSim::start(&seed).await.expect("azure-sim");
    azure.set_lro(LroConfig {
        in_progress_polls: u32::MAX,
        retry_after_ms: 20,
        max_duration_ms: 3_600_000,
        ..LroConfig::default()
    });
    let cfg = common::cloud_config(&seed, &azure);
    let timeouts = Timeouts {
        request: Duration::from_secs(10),
        ..short()
    };
    let credential = operator::azure::credential(&cfg, &timeouts).expect("credential");
    let arm = Arm::new(&cfg, credential, no_retries(), &timeouts, &Metrics::new()).expect("client");
    let ip = json!({"location": seed.location, "sku": {"name": "Standard"},
        "properties": {"publicIPAllocationMethod": "Static"}});
    let err = returns("the public IP write", arm.put_public_ip("node-rg", "ip", &ip))
        .await
        .expect_err("an operation that never finishes is an error");
    assert_eq!(err.operation, "PUT publicIPAddresses");
    assert!(err.message.contains("did not finish within 0.5s"), "{err}");
}

#[tokio::test]
async fn a_pass_stuck_on_azure_fails_healthz_with_the_reason() {
    let (url, _endpoint) = silent_endpoint().await;
    let kube = common::counting_sim(&["keg-system", "app"]).await;
    let client = kube.client("admin").expect("client");
    let sgcs: kube::Api<api::StaticGatewayConfiguration> = kube::Api::namespaced(client.clone(), "app");
    let sgc = serde_json::from_value(json!({
        "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
        "metadata": {"name": "gw"}, "spec": {"gatewayNodepoolName": "gateway"}}))
    .expect("sgc");
    sgcs.create(&Default::default(), &sgc).await.expect("create");
    // Default bounds (a minute per call): the pass waits on ARM far longer than its liveness bound.
    let cfg = cloud_config(&url, |_| {});
    let timeouts = Timeouts::default();
    let arm = Arm::new(
        &cfg,
        Arc::new(FixedToken),
        no_retries(),
        &timeouts,
        &Metrics::new(),
    )
    .expect("client");
    let op = operator::pass::Operator::new(
        client,
        arm,
        cfg,
        "keg-system".into(),
        "keg-system".into(),
        i32::from(api::names::DEFAULT_LB_PROBE_PORT),
        Metrics::new(),
    )
    .with_liveness_bound(Duration::from_millis(200));
    let op = Arc::new(op);
    let router = operator::cli::health_router(&op, Arc::new(AtomicBool::new(true)));
    assert_eq!(daemon::http::get_in_process(&router, "/healthz").await.0, 200);

    let stuck = op.clone();
    let pass = tokio::spawn(async move { stuck.reconcile_pools(None).await });
    eventually("/healthz fails", || async {
        daemon::http::get_in_process(&router, "/healthz").await.0 == 503
    })
    .await;
    let (_, _, reason) = daemon::http::get_in_process(&router, "/healthz").await;
    assert!(
        reason.starts_with("reconcile pass stuck: no progress for "),
        "{reason}"
    );
    assert_eq!(daemon::http::get_in_process(&router, "/readyz").await.0, 200);
    assert!(!pass.is_finished(), "the pass is still waiting on ARM");
    pass.abort();
    let _ = pass.await;
    assert_eq!(
        daemon::http::get_in_process(&router, "/healthz").await.0,
        200,
        "no pass under way"
    );
}

/// An endpoint that answers every request (reading it whole first) with `status` and `headers`, an empty
/// JSON object as body; its base URL and the number of requests it got.
async fn answering_endpoint(
    status: &'static str,
    headers: String,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    answering_endpoint_with(status, headers, "{}".to_string()).await
}

/// [`answering_endpoint`] answering `body`.
async fn answering_endpoint_with(
    status: &'static str,
    headers: String,
    body: String,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (count, headers, body) = (counted.clone(), headers.clone(), body.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 {status}\r\n{headers}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, count)
}

#[tokio::test]
async fn an_operation_to_poll_elsewhere_than_at_the_arm_endpoint_is_not_polled() {
    use std::sync::atomic::Ordering;
    // Another origin (another port): it would get the bearer token with every poll.
    let (elsewhere, polls) = answering_endpoint("200 OK", String::new()).await;
    let (arm_url, writes) = answering_endpoint(
        "201 Created",
        format!("azure-asyncoperation: {elsewhere}/operations/1\r\nretry-after-ms: 1\r\n"),
    )
    .await;
    let arm = quick_client(&arm_url);
    let prefix = json!({"location": "eastus", "properties": {"prefixLength": 31}});
    let err = returns("the prefix write", arm.put_prefix("node-rg", "p", &prefix))
        .await
        .expect_err("not polled");
    assert_eq!(err.operation, "PUT publicIPPrefixes");
    assert!(
        err.message.contains("not at the resource manager endpoint"),
        "{err}"
    );
    assert_eq!(writes.load(Ordering::SeqCst), 1);
    assert_eq!(
        polls.load(Ordering::SeqCst),
        0,
        "nothing sent to the other origin"
    );
}

#[tokio::test]
async fn a_next_page_elsewhere_than_at_the_arm_endpoint_is_not_fetched() {
    use std::sync::atomic::Ordering;
    // Another origin (another port): it would get the bearer token with the request.
    let (elsewhere, fetched) = answering_endpoint("200 OK", String::new()).await;
    let (arm_url, listed) = answering_endpoint_with(
        "200 OK",
        String::new(),
        json!({"value": [], "nextLink": format!("{elsewhere}/page2")}).to_string(),
    )
    .await;
    let arm = quick_client(&arm_url);
    let err = returns("the listing", arm.list_vmss("node-rg"))
        .await
        .expect_err("the next page is not fetched");
    assert!(
        err.message.contains("nextLink is at")
            && err.message.contains("not at the resource manager endpoint"),
        "{err}"
    );
    assert_eq!(listed.load(Ordering::SeqCst), 1);
    assert_eq!(
        fetched.load(Ordering::SeqCst),
        0,
        "nothing sent to the other origin"
    );
}

/// A client of the ARM endpoint at `url`: a fixed token, no retries, short timeouts.
fn quick_client(url: &str) -> Arm {
    Arm::new(
        &cloud_config(url, |_| {}),
        Arc::new(FixedToken),
        no_retries(),
        &short(),
        &Metrics::new(),
    )
    .expect("client")
}
