//! Shared setup for the Azure simulator tests: production clients pointed at the simulator.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use azure_core::auth::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::{ExponentialRetryOptions, RetryOptions, Url};
use azure_identity::ClientSecretCredential;
use azure_mgmt_network::models::{PublicIpAddress, PublicIpPrefix};
use serde_json::json;
use testbed::azure::{AzureSim, Seed};

pub const RG: &str = "node-rg";
pub const VMSS: &str = "aks-gateway-12345678-vmss";
/// The internal load balancer, named as the operator names it.
pub const LB: &str = api::names::DEFAULT_LOAD_BALANCER_NAME;

pub struct Env {
    pub sim: AzureSim,
    pub seed: Seed,
    pub network: azure_mgmt_network::Client,
    pub compute: azure_mgmt_compute::Client,
}

impl Env {
    pub fn sub(&self) -> String {
        self.seed.subscription_id.clone()
    }

    pub fn subnet_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{RG}/providers/Microsoft.Network/virtualNetworks/aks-vnet/subnets/aks-subnet",
            self.sub()
        )
    }

    pub fn seed_vmss_id(&self) -> String {
        self.id("Microsoft.Compute/virtualMachineScaleSets", VMSS)
    }

    pub fn id(&self, ty: &str, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{RG}/providers/{ty}/{name}",
            self.sub()
        )
    }
}

/// Fast retry policy so throttling tests take milliseconds, not seconds.
pub fn fast_retry() -> RetryOptions {
    RetryOptions::exponential(
        ExponentialRetryOptions::default()
            .initial_delay(Duration::from_millis(5))
            .max_delay(Duration::from_secs(2))
            .max_retries(4u32),
    )
}

pub fn credential(sim: &AzureSim, seed: &Seed) -> Arc<dyn TokenCredential> {
    let sp = &seed.service_principals[0];
    Arc::new(ClientSecretCredential::new(
        azure_core::new_http_client(),
        Url::parse(sim.url()).expect("simulator URL"),
        seed.tenant_id.clone(),
        sp.client_id.clone(),
        sp.client_secret.clone(),
    ))
}

pub async fn start(seed: Seed) -> Env {
    let sim = AzureSim::start(&seed).await.expect("simulator starts");
    let endpoint = Url::parse(sim.url()).expect("simulator URL");
    let cred = credential(&sim, &seed);
    let network = azure_mgmt_network::Client::builder(cred.clone())
        .endpoint(endpoint.clone())
        .retry(fast_retry())
        .build()
        .expect("network client");
    let compute = azure_mgmt_compute::Client::builder(cred)
        .endpoint(endpoint)
        .retry(fast_retry())
        .build()
        .expect("compute client");
    Env {
        sim,
        seed,
        network,
        compute,
    }
}

/// HTTP status and ARM error code of a failed client call.
pub fn status_and_code(e: &azure_core::Error) -> (u16, String) {
    match e.kind() {
        ErrorKind::HttpResponse { status, error_code } => {
            (u16::from(*status), error_code.clone().unwrap_or_default())
        }
        other => panic!("expected an HTTP error, got {other:?}: {e}"),
    }
}

/// HTTP status and ARM error code of a client call that must fail; `what` names the call when it succeeded.
pub fn refusal<T: std::fmt::Debug>(result: azure_core::Result<T>, what: &str) -> (u16, String) {
    status_and_code(&result.expect_err(what))
}

/// Asserts that a client call failed with HTTP `status` and ARM error `code`; `what` names the call.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: azure_core::Result<T>,
    what: &str,
    status: u16,
    code: &str,
) {
    assert_eq!(refusal(result, what), (status, code.to_owned()), "{what}");
}

/// Deleting prefix `name` is refused while public IPs handed out from it exist.
pub async fn assert_prefix_in_use(env: &Env, name: &str) {
    assert_eq!(
        env.delete(Network::PublicIpPrefix, name).await,
        Err((400, "InUsePublicIpPrefixCannotBeDeleted".to_owned())),
        "{name} in use"
    );
}

/// A Standard IPv4 public IP prefix of length `len`.
pub fn prefix_body(len: i32) -> PublicIpPrefix {
    serde_json::from_value(
        json!({"location": "eastus", "sku": {"name": "Standard", "tier": "Regional"},
        "properties": {"prefixLength": len, "publicIPAddressVersion": "IPv4"}}),
    )
    .expect("valid PublicIpPrefix model")
}

/// A Standard, static IPv4 public IP whose address comes from prefix `prefix_id`.
pub fn prefix_pip_body(prefix_id: &str) -> PublicIpAddress {
    serde_json::from_value(
        json!({"location": "eastus", "sku": {"name": "Standard", "tier": "Regional"},
        "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4",
            "publicIPPrefix": {"id": prefix_id}}}),
    )
    .expect("valid PublicIpAddress model")
}

/// A network resource type the tests delete.
#[derive(Debug, Clone, Copy)]
pub enum Network {
    LoadBalancer,
    PublicIpPrefix,
    PublicIp,
}

impl Env {
    /// DELETE of a network resource of the seed's resource group, its operation followed to the end as an ARM
    /// client does (the resource is gone when this returns): the HTTP status ARM answered the DELETE with, or
    /// the status and ARM error code of a refusal.
    pub async fn delete(&self, kind: Network, name: &str) -> Result<u16, (u16, String)> {
        let sub = self.sub();
        let sent = match kind {
            Network::LoadBalancer => {
                let lbs = self.network.load_balancers_client();
                lbs.delete(RG, name, sub)
                    .send()
                    .await
                    .map(|r| r.into_raw_response())
            }
            Network::PublicIpPrefix => {
                let prefixes = self.network.public_ip_prefixes_client();
                prefixes
                    .delete(RG, name, sub)
                    .send()
                    .await
                    .map(|r| r.into_raw_response())
            }
            Network::PublicIp => {
                let pips = self.network.public_ip_addresses_client();
                pips.delete(RG, name, sub)
                    .send()
                    .await
                    .map(|r| r.into_raw_response())
            }
        };
        let rsp = sent.map_err(|e| status_and_code(&e))?;
        if rsp.status() == azure_core::StatusCode::Accepted {
            assert_eq!(self.follow(&rsp).await, "Succeeded", "DELETE {name}");
        }
        Ok(u16::from(rsp.status()))
    }

    /// Polls the `Azure-AsyncOperation` of `accepted` (honouring its `retry-after-ms`) until the operation is
    /// over; its final `status`.
    pub async fn follow(&self, accepted: &azure_core::Response) -> String {
        let url = accepted
            .headers()
            .get_optional_str(&azure_core::headers::AZURE_ASYNCOPERATION)
            .expect("Azure-AsyncOperation header");
        let url = Url::parse(url).expect("operation URL");
        let token = credential(&self.sim, &self.seed)
            .get_token(&[&format!("{}/.default", self.sim.url())])
            .await
            .expect("token");
        let http = azure_core::new_http_client();
        for _ in 0..200 {
            let mut req = azure_core::Request::new(url.clone(), azure_core::Method::Get);
            req.insert_header("authorization", format!("Bearer {}", token.token.secret()));
            let rsp = http.execute_request(&req).await.expect("poll sent");
            let delay = rsp
                .headers()
                .get_optional_str(&azure_core::headers::RETRY_AFTER_MS)
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis);
            let body = rsp.into_body().collect().await.expect("poll body");
            let status: serde_json::Value = serde_json::from_slice(&body).expect("operation status");
            let status = status["status"].as_str().expect("status").to_owned();
            if status != "InProgress" {
                return status;
            }
            tokio::time::sleep(delay.unwrap_or(Duration::from_millis(20))).await;
        }
        panic!("the operation at {url} did not end within 200 polls");
    }
}
