//! Thin wrappers over the azure_mgmt_network / azure_mgmt_compute 0.21 clients.
//!
//! Every call goes through the SDK's retry policy (429 and 503 honour `Retry-After`, other 5xx back off
//! exponentially, bounded) and through a counting transport (`arm_calls{operation,status}`). Objects cross
//! this boundary as ARM JSON (`arm_json.rs` reads and merges them); errors keep the HTTP status and the ARM
//! error code so that conditions and Events can say what Azure answered.

use std::sync::Arc;
use std::time::Duration;

use azure_core::auth::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::{
    ExponentialRetryOptions, HttpClient, Request, Response, RetryOptions, TransportOptions, Url,
};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{AzureAuth, CloudConfig};
use crate::metrics::{ArmCallLabels, Metrics};

/// An ARM failure, with what Azure said.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation} {resource}: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct ArmError {
    /// e.g. `PUT loadBalancers`.
    pub operation: String,
    /// Resource name.
    pub resource: String,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// ARM error code (`TooManyRequests`, `InUsePublicIpPrefixCannotBeDeleted`, ...).
    pub code: Option<String>,
    /// Details.
    pub message: String,
}

impl ArmError {
    fn from_sdk(operation: &str, resource: &str, e: &azure_core::Error) -> Self {
        let (status, code) = match e.kind() {
            ErrorKind::HttpResponse { status, error_code } => (Some(u16::from(*status)), error_code.clone()),
            _ => (None, None),
        };
        ArmError {
            operation: operation.to_string(),
            resource: resource.to_string(),
            status,
            code,
            message: e.to_string(),
        }
    }

    fn local(operation: &str, resource: &str, message: impl Into<String>) -> Self {
        ArmError {
            operation: operation.to_string(),
            resource: resource.to_string(),
            status: None,
            code: None,
            message: message.into(),
        }
    }

    /// 404.
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }

    /// 429 after the retry budget.
    pub fn is_throttled(&self) -> bool {
        self.status == Some(429)
    }

    /// 412: someone else changed the object; re-read and re-plan.
    pub fn is_precondition_failed(&self) -> bool {
        self.status == Some(412)
    }

    /// The condition reason this error reports.
    pub fn reason(&self) -> &'static str {
        if self.is_throttled() {
            api::names::REASON_AZURE_THROTTLED
        } else {
            api::names::REASON_AZURE_ERROR
        }
    }
}

/// Result of an ARM call.
pub type ArmResult<T> = Result<T, ArmError>;

/// What a conditional write expects to find: the version of the object read in the same pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect<'a> {
    /// No condition (the object was read without an ETag).
    Anything,
    /// The object as read: `If-Match: <etag>`.
    Version(&'a str),
    /// No object (it was absent when read): `If-None-Match: *`, so a concurrent creation is not overwritten.
    Absent,
}

impl<'a> Expect<'a> {
    /// The condition for writing back an object read as `read` (`None`: it did not exist).
    pub fn read_as(read: Option<&'a Value>) -> Self {
        match read {
            None => Expect::Absent,
            Some(v) => v
                .get("etag")
                .and_then(Value::as_str)
                .filter(|e| !e.is_empty())
                .map_or(Expect::Anything, Expect::Version),
        }
    }

    /// `(header, value)`, if any.
    fn header(self) -> Option<(&'static str, String)> {
        match self {
            Expect::Anything => None,
            Expect::Version(etag) => Some(("if-match", etag.to_string())),
            Expect::Absent => Some(("if-none-match", "*".to_string())),
        }
    }
}

tokio::task_local! {
    /// The precondition of the one conditional write running in this scope (see [`conditional`]).
    static PRECONDITION: Precondition;
}

/// A precondition header for one method on one resource path.
#[derive(Clone, Debug)]
struct Precondition {
    method: &'static str,
    /// ARM resource ID of the written resource (the request path), compared case-insensitively.
    resource_id: String,
    header: (&'static str, String),
}

impl Precondition {
    fn applies_to(&self, request: &Request) -> bool {
        request.method().to_string().eq_ignore_ascii_case(self.method)
            && request
                .url()
                .path()
                .to_ascii_lowercase()
                .ends_with(&self.resource_id.to_ascii_lowercase())
    }
}

/// Runs `fut` (one ARM write) with the precondition header of `expect` on its `method` request to
/// `resource_id`. The azure_mgmt_network 0.21 builders have no `if_match` option for load balancers and NICs,
/// so the transport adds the header; the long-running-operation polls of the same call (GETs on other paths)
/// are left alone.
async fn conditional<T>(
    method: &'static str,
    resource_id: String,
    expect: Expect<'_>,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match expect.header() {
        Some(header) => {
            PRECONDITION
                .scope(
                    Precondition {
                        method,
                        resource_id,
                        header,
                    },
                    fut,
                )
                .await
        }
        None => fut.await,
    }
}

/// The transport under both clients: counts every HTTP call by operation (`<METHOD> <resource type>`) and
/// status, and adds the `If-Match` of a [`conditional`] write.
#[derive(Debug)]
struct CountingClient {
    inner: Arc<dyn HttpClient>,
    metrics: Metrics,
}

/// `<METHOD> <last resource type in the path>`, e.g. `PUT virtualMachineScaleSets` or `GET virtualMachines`.
pub fn operation_of(method: &str, path: &str) -> String {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // ARM paths alternate type/name after the provider; a trailing type (list) has no name after it.
    let ty = match segs.iter().rposition(|s| s.eq_ignore_ascii_case("providers")) {
        Some(p) => {
            let rest = &segs[p + 2..];
            if rest.len() % 2 == 1 {
                rest.last().copied()
            } else {
                rest.len().checked_sub(2).and_then(|i| rest.get(i).copied())
            }
        }
        None => segs.last().copied(),
    };
    format!("{method} {}", ty.unwrap_or("unknown"))
}

#[async_trait::async_trait]
impl HttpClient for CountingClient {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<Response> {
        let op = operation_of(&request.method().to_string().to_uppercase(), request.url().path());
        let precondition = PRECONDITION
            .try_with(|p| p.applies_to(request).then(|| p.header.clone()))
            .ok()
            .flatten();
        let result = match precondition {
            Some((name, value)) => {
                let mut conditional = request.clone();
                conditional.insert_header(name, value);
                self.inner.execute_request(&conditional).await
            }
            None => self.inner.execute_request(request).await,
        };
        let status = match &result {
            Ok(r) => u16::from(r.status()).to_string(),
            Err(_) => "error".to_string(),
        };
        self.metrics
            .arm_calls
            .get_or_create(&ArmCallLabels {
                operation: op,
                status,
            })
            .inc();
        result
    }
}

/// Retry budget: bounded, so a throttling storm surfaces as a condition instead of a silent loop.
#[derive(Clone, Copy, Debug)]
pub struct RetryBudget {
    /// First delay.
    pub initial: Duration,
    /// Longest delay (Retry-After larger than this is still honoured by the SDK).
    pub max_delay: Duration,
    /// Retries per call.
    pub max_retries: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            initial: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_retries: 6,
        }
    }
}

/// Builds the credential the cloud config asks for.
pub fn credential(cfg: &CloudConfig) -> Result<Arc<dyn TokenCredential>, ArmError> {
    let http = azure_core::new_http_client();
    let authority = Url::parse(&cfg.authority_host)
        .map_err(|e| ArmError::local("credential", "activeDirectoryAuthorityHost", e.to_string()))?;
    Ok(match &cfg.auth {
        AzureAuth::ServicePrincipal {
            tenant_id,
            client_id,
            client_secret,
        } => Arc::new(azure_identity::ClientSecretCredential::new(
            http,
            authority,
            tenant_id.clone(),
            client_id.clone(),
            client_secret.clone(),
        )),
        AzureAuth::ManagedIdentity {
            user_assigned_identity_id,
        } => {
            let endpoint = cfg
                .imds_endpoint
                .clone()
                .unwrap_or_else(|| "http://169.254.169.254/metadata/identity/oauth2/token".to_string());
            let endpoint = Url::parse(&endpoint)
                .map_err(|e| ArmError::local("credential", "imdsEndpoint", e.to_string()))?;
            Arc::new(ImdsCredential {
                endpoint,
                client_id: user_assigned_identity_id.clone(),
                cache: tokio::sync::Mutex::new(None),
            })
        }
        AzureAuth::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
        } => Arc::new(FileWorkloadIdentity {
            authority,
            tenant_id: tenant_id.clone(),
            client_id: client_id.clone(),
            token_file: token_file.clone(),
            current: tokio::sync::Mutex::new(None),
        }),
    })
}

/// Managed identity through IMDS (system-assigned, or user-assigned by client ID — what AKS uses). The
/// azure_identity 0.21 IMDS credential has neither a client ID nor an endpoint override, hence this one.
struct ImdsCredential {
    endpoint: Url,
    client_id: Option<String>,
    cache: tokio::sync::Mutex<Option<azure_core::auth::AccessToken>>,
}

impl std::fmt::Debug for ImdsCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImdsCredential")
            .field("endpoint", &self.endpoint.as_str())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct ImdsToken {
    access_token: String,
    #[serde(default)]
    expires_on: Option<Value>,
    #[serde(default)]
    expires_in: Option<Value>,
}

fn number(v: &Option<Value>) -> Option<i64> {
    match v {
        Some(Value::String(s)) => s.parse().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    }
}

#[async_trait::async_trait]
impl TokenCredential for ImdsCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<azure_core::auth::AccessToken> {
        let mut cache = self.cache.lock().await;
        let now = time::OffsetDateTime::now_utc();
        if let Some(t) = &*cache
            && t.expires_on > now + time::Duration::minutes(5)
        {
            return Ok(t.clone());
        }
        let resource = scopes.first().map_or("", |s| s.trim_end_matches("/.default"));
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("api-version", "2018-02-01")
            .append_pair("resource", resource);
        if let Some(id) = &self.client_id {
            url.query_pairs_mut().append_pair("client_id", id);
        }
        let mut req = Request::new(url, azure_core::Method::Get);
        req.insert_header("metadata", "true");
        let rsp = azure_core::new_http_client().execute_request(&req).await?;
        let status = rsp.status();
        let body = rsp.into_body().collect().await?;
        if !status.is_success() {
            return Err(azure_core::Error::message(
                ErrorKind::Credential,
                format!("IMDS token request failed with HTTP {}", u16::from(status)),
            ));
        }
        let t: ImdsToken = serde_json::from_slice(&body)
            .map_err(|e| azure_core::Error::full(ErrorKind::Credential, e, "IMDS token response"))?;
        let expires_on = number(&t.expires_on)
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .or_else(|| number(&t.expires_in).map(|s| now + time::Duration::seconds(s)))
            .unwrap_or(now + time::Duration::minutes(10));
        let token = azure_core::auth::AccessToken::new(t.access_token, expires_on);
        *cache = Some(token.clone());
        Ok(token)
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.cache.lock().await = None;
        Ok(())
    }
}

/// Workload identity whose projected token file is re-read when it rotates (the kubelet refreshes it hourly).
struct FileWorkloadIdentity {
    authority: Url,
    tenant_id: String,
    client_id: String,
    token_file: String,
    current: tokio::sync::Mutex<Option<(String, Arc<azure_identity::WorkloadIdentityCredential>)>>,
}

impl std::fmt::Debug for FileWorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWorkloadIdentity")
            .field("client_id", &self.client_id)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TokenCredential for FileWorkloadIdentity {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<azure_core::auth::AccessToken> {
        let token = tokio::fs::read_to_string(&self.token_file).await.map_err(|e| {
            azure_core::Error::full(
                ErrorKind::Credential,
                e,
                format!("reading the federated token file {}", self.token_file),
            )
        })?;
        let token = token.trim().to_string();
        let cred = {
            let mut cur = self.current.lock().await;
            match &*cur {
                Some((t, c)) if *t == token => c.clone(),
                _ => {
                    let c = Arc::new(azure_identity::WorkloadIdentityCredential::new(
                        azure_core::new_http_client(),
                        self.authority.clone(),
                        self.tenant_id.clone(),
                        self.client_id.clone(),
                        token.clone(),
                    ));
                    *cur = Some((token, c.clone()));
                    c
                }
            }
        };
        cred.get_token(scopes).await
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.current.lock().await = None;
        Ok(())
    }
}

/// The ARM calls the operator makes (upstream's `pkg/azmanager`, on JSON; docs/operator.md lists them).
#[derive(Clone)]
pub struct Arm {
    network: azure_mgmt_network::Client,
    compute: azure_mgmt_compute::Client,
    subscription: String,
}

impl std::fmt::Debug for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arm")
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn from_json<T: DeserializeOwned>(op: &str, name: &str, v: Value) -> ArmResult<T> {
    serde_json::from_value(v)
        .map_err(|e| ArmError::local(op, name, format!("body does not fit the ARM model: {e}")))
}

/// Turns a 404 into `None`.
fn optional<T>(r: ArmResult<T>) -> ArmResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

macro_rules! call {
    ($op:expr, $name:expr, $fut:expr) => {
        $fut.await.map_err(|e| ArmError::from_sdk($op, $name, &e))
    };
}

macro_rules! list_all {
    ($op:expr, $name:expr, $builder:expr) => {{
        let mut stream = $builder.into_stream();
        let mut out = Vec::new();
        while let Some(page) = stream.next().await {
            let page = page.map_err(|e| ArmError::from_sdk($op, $name, &e))?;
            out.extend(page.value.iter().map(to_json));
        }
        Ok::<Vec<Value>, ArmError>(out)
    }};
}

impl Arm {
    /// Clients for the cloud config's endpoint and subscription.
    pub fn new(
        cfg: &CloudConfig,
        credential: Arc<dyn TokenCredential>,
        retry: RetryBudget,
        metrics: &Metrics,
    ) -> ArmResult<Self> {
        let endpoint = Url::parse(&cfg.resource_manager_endpoint)
            .map_err(|e| ArmError::local("client", "resourceManagerEndpoint", e.to_string()))?;
        let retry = RetryOptions::exponential(
            ExponentialRetryOptions::default()
                .initial_delay(retry.initial)
                .max_delay(retry.max_delay)
                .max_retries(retry.max_retries),
        );
        let transport = TransportOptions::new(Arc::new(CountingClient {
            inner: azure_core::new_http_client(),
            metrics: metrics.clone(),
        }));
        let scope = format!("{}/.default", cfg.resource_manager_endpoint);
        let network = azure_mgmt_network::Client::builder(credential.clone())
            .endpoint(endpoint.clone())
            .scopes(&[&scope])
            .retry(retry.clone())
            .transport(transport.clone())
            .build()
            .map_err(|e| ArmError::from_sdk("client", "network", &e))?;
        let compute = azure_mgmt_compute::Client::builder(credential)
            .endpoint(endpoint)
            .scopes(&[&scope])
            .retry(retry)
            .transport(transport)
            .build()
            .map_err(|e| ArmError::from_sdk("client", "compute", &e))?;
        Ok(Arm {
            network,
            compute,
            subscription: cfg.subscription_id.clone(),
        })
    }

    fn sub(&self) -> String {
        self.subscription.clone()
    }

    // --- load balancer ---------------------------------------------------------------------------------

    /// GET the load balancer (None: 404).
    pub async fn get_lb(&self, rg: &str, name: &str) -> ArmResult<Option<Value>> {
        let c = self.network.load_balancers_client();
        optional(call!("GET loadBalancers", name, c.get(rg, name, self.sub())).map(|v| to_json(&v)))
    }

    /// ARM ID of a resource in the subscription.
    fn id(&self, rg: &str, provider_type: &str, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/{provider_type}/{name}",
            self.subscription
        )
    }

    /// PUT the load balancer; returns what ARM stored (frontend IPs allocated). `expect` is the version read
    /// in the same pass: a concurrent change (or creation) of the load balancer fails the PUT with 412 instead
    /// of being overwritten.
    pub async fn put_lb(&self, rg: &str, name: &str, body: Value, expect: Expect<'_>) -> ArmResult<Value> {
        let lb: azure_mgmt_network::models::LoadBalancer = from_json("PUT loadBalancers", name, body)?;
        let c = self.network.load_balancers_client();
        let id = self.id(rg, "Microsoft.Network/loadBalancers", name);
        conditional("PUT", id, expect, async {
            call!(
                "PUT loadBalancers",
                name,
                c.create_or_update(rg, name, lb, self.sub())
            )
        })
        .await
        .map(|v| to_json(&v))
    }

    /// DELETE the load balancer (404 is success); only the version `expect`ed (412 otherwise).
    pub async fn delete_lb(&self, rg: &str, name: &str, expect: Expect<'_>) -> ArmResult<()> {
        let c = self.network.load_balancers_client();
        let id = self.id(rg, "Microsoft.Network/loadBalancers", name);
        ignore_404(
            conditional("DELETE", id, expect, async {
                call!(
                    "DELETE loadBalancers",
                    name,
                    c.delete(rg, name, self.sub()).send()
                )
            })
            .await,
        )
    }

    // --- scale sets --------------------------------------------------------------------------------------

    /// LIST scale sets of a resource group.
    pub async fn list_vmss(&self, rg: &str) -> ArmResult<Vec<Value>> {
        let c = self.compute.virtual_machine_scale_sets_client();
        list_all!("LIST virtualMachineScaleSets", rg, c.list(rg, self.sub()))
    }

    /// GET a scale set (None: 404).
    pub async fn get_vmss(&self, rg: &str, name: &str) -> ArmResult<Option<Value>> {
        let c = self.compute.virtual_machine_scale_sets_client();
        optional(call!("GET virtualMachineScaleSets", name, c.get(rg, name, self.sub())).map(|v| to_json(&v)))
    }

    /// PUT a scale set's network interface configurations (body: location + network profile only, as
    /// upstream; everything else in the model is untouched).
    pub async fn put_vmss_nics(
        &self,
        rg: &str,
        name: &str,
        location: &str,
        nic_configs: Value,
        expect: Expect<'_>,
    ) -> ArmResult<()> {
        let body = serde_json::json!({
            "location": location,
            "properties": {"virtualMachineProfile": {"networkProfile": {"networkInterfaceConfigurations": nic_configs}}}
        });
        let vmss: azure_mgmt_compute::models::VirtualMachineScaleSet =
            from_json("PUT virtualMachineScaleSets", name, body)?;
        let c = self.compute.virtual_machine_scale_sets_client();
        let mut put = c.create_or_update(rg, name, vmss, self.sub());
        match expect {
            Expect::Version(etag) => put = put.if_match(etag),
            Expect::Absent => put = put.if_none_match("*"),
            Expect::Anything => {}
        }
        call!("PUT virtualMachineScaleSets", name, put).map(|_| ())
    }

    /// LIST the instances of a scale set.
    pub async fn list_instances(&self, rg: &str, vmss: &str) -> ArmResult<Vec<Value>> {
        let c = self.compute.virtual_machine_scale_set_v_ms_client();
        list_all!("LIST virtualMachines", vmss, c.list(rg, vmss, self.sub()))
    }

    /// Update one instance's network interface configurations.
    pub async fn update_instance(
        &self,
        rg: &str,
        vmss: &str,
        instance_id: &str,
        location: &str,
        nic_configs: Value,
        expect: Expect<'_>,
    ) -> ArmResult<()> {
        let body = serde_json::json!({
            "location": location,
            "properties": {"networkProfileConfiguration": {"networkInterfaceConfigurations": nic_configs}}
        });
        let vm: azure_mgmt_compute::models::VirtualMachineScaleSetVm =
            from_json("PUT virtualMachines", instance_id, body)?;
        let c = self.compute.virtual_machine_scale_set_v_ms_client();
        let mut put = c.update(rg, vmss, instance_id, vm, self.sub());
        match expect {
            Expect::Version(etag) => put = put.if_match(etag),
            Expect::Absent => put = put.if_none_match("*"),
            Expect::Anything => {}
        }
        call!("PUT virtualMachines", instance_id, put).map(|_| ())
    }

    /// GET an instance's NIC (its actual addresses).
    pub async fn get_instance_nic(
        &self,
        rg: &str,
        vmss: &str,
        instance_id: &str,
        nic: &str,
    ) -> ArmResult<Option<Value>> {
        let c = self.network.network_interfaces_client();
        optional(
            call!(
                "GET networkInterfaces",
                nic,
                c.get_virtual_machine_scale_set_network_interface(rg, vmss, instance_id, nic, self.sub())
            )
            .map(|v| to_json(&v)),
        )
    }

    // --- VM pools ----------------------------------------------------------------------------------------

    /// LIST VMs of a resource group.
    pub async fn list_vms(&self, rg: &str) -> ArmResult<Vec<Value>> {
        let c = self.compute.virtual_machines_client();
        list_all!("LIST virtualMachines", rg, c.list(rg, self.sub()))
    }

    /// LIST NICs of a resource group.
    pub async fn list_nics(&self, rg: &str) -> ArmResult<Vec<Value>> {
        let c = self.network.network_interfaces_client();
        list_all!("LIST networkInterfaces", rg, c.list(rg, self.sub()))
    }

    /// PUT a NIC, conditional on the version read in the same pass.
    pub async fn put_nic(&self, rg: &str, name: &str, body: Value, expect: Expect<'_>) -> ArmResult<Value> {
        let nic: azure_mgmt_network::models::NetworkInterface =
            from_json("PUT networkInterfaces", name, body)?;
        let c = self.network.network_interfaces_client();
        let id = self.id(rg, "Microsoft.Network/networkInterfaces", name);
        conditional("PUT", id, expect, async {
            call!(
                "PUT networkInterfaces",
                name,
                c.create_or_update(rg, name, nic, self.sub())
            )
        })
        .await
        .map(|v| to_json(&v))
    }

    /// LIST public IP addresses of a resource group.
    pub async fn list_public_ips(&self, rg: &str) -> ArmResult<Vec<Value>> {
        let c = self.network.public_ip_addresses_client();
        list_all!("LIST publicIPAddresses", rg, c.list(rg, self.sub()))
    }

    /// PUT a public IP address.
    pub async fn put_public_ip(&self, rg: &str, name: &str, body: Value) -> ArmResult<()> {
        let pip: azure_mgmt_network::models::PublicIpAddress =
            from_json("PUT publicIPAddresses", name, body)?;
        let c = self.network.public_ip_addresses_client();
        call!(
            "PUT publicIPAddresses",
            name,
            c.create_or_update(rg, name, pip, self.sub())
        )
        .map(|_| ())
    }

    /// DELETE a public IP address (404 is success), waiting until it is gone.
    pub async fn delete_public_ip(&self, rg: &str, name: &str) -> ArmResult<()> {
        let c = self.network.public_ip_addresses_client();
        ignore_404(call!(
            "DELETE publicIPAddresses",
            name,
            c.delete(rg, name, self.sub()).send()
        ))?;
        self.wait_gone("GET publicIPAddresses", name, || async {
            let c = self.network.public_ip_addresses_client();
            optional(call!("GET publicIPAddresses", name, c.get(rg, name, self.sub())).map(|_| ()))
        })
        .await
    }

    // --- prefixes ----------------------------------------------------------------------------------------

    /// GET a public IP prefix (None: 404).
    pub async fn get_prefix(&self, rg: &str, name: &str) -> ArmResult<Option<Value>> {
        let c = self.network.public_ip_prefixes_client();
        optional(call!("GET publicIPPrefixes", name, c.get(rg, name, self.sub())).map(|v| to_json(&v)))
    }

    /// PUT a public IP prefix.
    pub async fn put_prefix(&self, rg: &str, name: &str, body: Value) -> ArmResult<Value> {
        let p: azure_mgmt_network::models::PublicIpPrefix = from_json("PUT publicIPPrefixes", name, body)?;
        let c = self.network.public_ip_prefixes_client();
        call!(
            "PUT publicIPPrefixes",
            name,
            c.create_or_update(rg, name, p, self.sub())
        )
        .map(|v| to_json(&v))
    }

    /// DELETE a public IP prefix (404 is success).
    pub async fn delete_prefix(&self, rg: &str, name: &str) -> ArmResult<()> {
        let c = self.network.public_ip_prefixes_client();
        ignore_404(call!(
            "DELETE publicIPPrefixes",
            name,
            c.delete(rg, name, self.sub()).send()
        ))
    }

    async fn wait_gone<F, Fut>(&self, op: &str, name: &str, get: F) -> ArmResult<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ArmResult<Option<()>>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut delay = Duration::from_millis(50);
        loop {
            if get().await?.is_none() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ArmError::local(op, name, "still exists two minutes after DELETE"));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

fn ignore_404<T>(r: ArmResult<T>) -> ArmResult<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_named_by_method_and_resource_type() {
        let lb = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/ilb";
        assert_eq!(operation_of("PUT", lb), "PUT loadBalancers");
        assert_eq!(
            operation_of(
                "GET",
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets"
            ),
            "GET virtualMachineScaleSets"
        );
        assert_eq!(
            operation_of(
                "PUT",
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/v/virtualMachines/3"
            ),
            "PUT virtualMachines"
        );
        assert_eq!(
            operation_of(
                "GET",
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/v/virtualMachines"
            ),
            "GET virtualMachines"
        );
    }

    #[test]
    fn writes_expect_the_version_they_read() {
        let read = serde_json::json!({"name": "ilb", "etag": "W/\"1\""});
        assert_eq!(Expect::read_as(Some(&read)), Expect::Version("W/\"1\""));
        assert_eq!(
            Expect::read_as(Some(&read)).header(),
            Some(("if-match", "W/\"1\"".to_string()))
        );
        assert_eq!(
            Expect::read_as(None).header(),
            Some(("if-none-match", "*".to_string()))
        );
        let unversioned = serde_json::json!({"name": "ilb"});
        assert_eq!(Expect::read_as(Some(&unversioned)), Expect::Anything);
        assert_eq!(Expect::Anything.header(), None);
    }

    #[test]
    fn errors_carry_the_arm_code() {
        let e = ArmError {
            operation: "DELETE publicIPPrefixes".into(),
            resource: "egressgateway-x".into(),
            status: Some(400),
            code: Some("InUsePublicIpPrefixCannotBeDeleted".into()),
            message: "in use".into(),
        };
        assert_eq!(
            e.to_string(),
            "DELETE publicIPPrefixes egressgateway-x: InUsePublicIpPrefixCannotBeDeleted: in use"
        );
        assert_eq!(e.reason(), "AzureError");
        assert!(
            ArmError {
                status: Some(429),
                ..e
            }
            .is_throttled()
        );
    }
}
