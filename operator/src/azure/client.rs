//! The ARM client: raw ARM JSON through an azure_core pipeline.
//!
//! Every resource is read as the JSON ARM returns and written back as JSON: the caller merges the entries the
//! operator owns into the object it read and PUTs that object, so every other field (including fields that
//! no SDK model knows) goes back byte for byte. Every call goes through the pipeline's retry policy (429 and
//! 503 honour `Retry-After`, other 5xx back off exponentially, bounded), a bearer token from the configured
//! credential, and a counting policy under the retry policy (`arm_calls{operation,status}`, polls of
//! long-running operations apart from reads). Writes to objects the operator shares carry the ETag they were
//! read with. Errors keep the HTTP status and the ARM error code so that conditions
//! and Events can say what Azure answered.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use azure_core::auth::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::headers::{
    AZURE_ASYNCOPERATION, HeaderName, Headers, LOCATION, RETRY_AFTER, RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS,
};
use azure_core::{
    Context, ExponentialRetryOptions, HttpClient, Method, Pipeline, Policy, PolicyResult, Request, Response,
    RetryOptions, StatusCode, TransportOptions, Url,
};
use serde_json::Value;

use crate::config::CloudConfig;
use crate::metrics::{ArmCallLabels, Metrics};

/// The ARM API versions the operator speaks, one per resource provider: the ones current AKS clusters use
/// (and the only place they are written down).
pub mod api_version {
    /// `Microsoft.Network`: load balancers, network interfaces, public IP addresses and prefixes.
    pub const NETWORK: &str = "2024-05-01";
    /// `Microsoft.Compute`: scale sets, their instances, virtual machines.
    pub const COMPUTE: &str = "2024-07-01";
    /// The network interfaces of scale-set instances: served by the network provider under
    /// `Microsoft.Compute/virtualMachineScaleSets`, in these API versions only.
    pub const SCALE_SET_INSTANCE_NIC: &str = "2018-10-01";
}

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
    /// ARM accepted the write and its long-running operation ended `Failed` or `Canceled` (what went wrong is
    /// then about the resource itself, not the request).
    pub operation_ended: bool,
}

impl ArmError {
    pub(crate) fn from_sdk(operation: &str, resource: &str, e: &azure_core::Error) -> Self {
        let (status, code) = match e.kind() {
            ErrorKind::HttpResponse { status, error_code } => (Some(u16::from(*status)), error_code.clone()),
            _ => (None, None),
        };
        // With its causes: azure_core's own text of a transport failure does not say what failed (a timeout, a
        // refused connection).
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.contains(&text) {
                message = format!("{message}: {text}");
            }
            cause = c.source();
        }
        ArmError {
            operation: operation.to_string(),
            resource: resource.to_string(),
            status,
            code,
            message,
            operation_ended: false,
        }
    }

    pub(crate) fn local(operation: &str, resource: &str, message: impl Into<String>) -> Self {
        ArmError {
            operation: operation.to_string(),
            resource: resource.to_string(),
            status: None,
            code: None,
            message: message.into(),
            operation_ended: false,
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
    pub(crate) fn header(self) -> Option<(&'static str, String)> {
        match self {
            Expect::Anything => None,
            Expect::Version(etag) => Some(("if-match", etag.to_string())),
            Expect::Absent => Some(("if-none-match", "*".to_string())),
        }
    }
}

/// A per-retry policy, after the retry policy so that it sees each attempt (other per-retry policies may sit
/// between it and the transport): counts every HTTP call (retries and long-running-operation polls included)
/// by operation (`<METHOD> <resource type>`, or `POLL <resource type written>` for a request marked [`Poll`]
/// in its context) and status.
#[derive(Debug)]
struct Counting {
    metrics: Metrics,
    /// Told of every call that returned (see [`Arm::report_progress_to`]).
    progress: Arc<OnceLock<daemon::liveness::Heartbeat>>,
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

/// In a request's context: the request polls the long-running operation of a write to a resource of this
/// type (`loadBalancers`), whatever URL it polls (an operation status, a Location, the resource itself).
#[derive(Clone, Copy, Debug)]
struct Poll(&'static str);

#[async_trait::async_trait]
impl Policy for Counting {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        let op = match ctx.get::<Poll>() {
            Some(Poll(kind)) => format!("POLL {kind}"),
            None => operation_of(&request.method().to_string().to_uppercase(), request.url().path()),
        };
        let Some((next_policy, rest)) = next.split_first() else {
            return Err(azure_core::Error::message(
                ErrorKind::Other,
                "the ARM pipeline has no policy after its counting policy",
            ));
        };
        let result = next_policy.send(ctx, request, rest).await;
        if let Some(heartbeat) = self.progress.get() {
            heartbeat.progress();
        }
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

/// How long ARM and token endpoints may take, so that an endpoint that accepts a connection and never answers
/// fails the call (into the pool's retry and backoff) instead of stopping the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a connection (TCP and TLS).
    pub connect: Duration,
    /// One HTTP exchange, from sending the request to the last byte of the answer. Every retry and every poll
    /// of a long-running operation is an exchange of its own.
    pub request: Duration,
    /// Waiting for a long-running operation (a PUT's completion, polls included; a wait that would end past it
    /// ends at it for one last poll, bounded by `request`). Past it the write is reported as failed and retried
    /// later; ARM may still complete it, and the next pass reads what it did.
    pub operation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(60),
            operation: Duration::from_secs(300),
        }
    }
}

/// The HTTP client of every ARM and token call: azure_core's reqwest client (no idle connections kept, as
/// azure_core keeps none), with `timeouts`' connect and request bounds, which azure_core's own lacks.
pub fn http_client(timeouts: &Timeouts) -> Result<Arc<dyn HttpClient>, ArmError> {
    let client = reqwest::ClientBuilder::new()
        .pool_max_idle_per_host(0)
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.request)
        .build()
        .map_err(|e| ArmError::local("client", "http", e.to_string()))?;
    Ok(Arc::new(client))
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

/// The ARM calls the operator makes (upstream's `pkg/azmanager`, on ARM JSON; docs/operator.md lists them).
#[derive(Clone)]
pub struct Arm {
    pipeline: Pipeline,
    credential: Arc<dyn TokenCredential>,
    scope: String,
    endpoint: Url,
    subscription: String,
    /// [`Timeouts::operation`].
    operation_deadline: Duration,
    /// [`Timeouts::request`]: how long the last poll, at the operation's deadline, may take.
    request_timeout: Duration,
    /// Shared with the counting policy: the heartbeat told of every ARM call that returned.
    progress: Arc<OnceLock<daemon::liveness::Heartbeat>>,
}

impl std::fmt::Debug for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arm")
            .field("endpoint", &self.endpoint.as_str())
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

/// Turns a 404 into `None`.
fn optional<T>(r: ArmResult<T>) -> ArmResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn ignore_404<T>(r: ArmResult<T>) -> ArmResult<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// How the end of a write is awaited, by what ARM's answer to it carries (ARM's asynchronous-operation
/// contract, <https://github.com/Azure/azure-resource-manager-rpc/blob/master/v1.0/async-api-reference.md>,
/// as the Azure SDKs' generic pollers follow it): never by resource type, since a provider answers a PUT of
/// a type whose SDK says `final-state-via: location` with `Azure-AsyncOperation` alone.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Completion {
    /// The answer is the end.
    Done,
    /// The answer already says the write ended unsuccessfully (`Failed`, `Canceled`).
    Ended(String),
    /// `Azure-AsyncOperation`: an operation status, whose body's `status` says when it is over.
    AsyncOperation(Url),
    /// `Location` (and no `Azure-AsyncOperation`): 202 while the operation runs, 200/204 when it is done.
    Location(Url),
    /// A PUT answered with a running `provisioningState` and no header: GET the resource until it is terminal.
    ProvisioningState,
    /// A DELETE accepted (202) without a header: GET the resource until it is 404.
    Gone,
}

/// ARM's answer to `method` (`status`, `headers`, the JSON `body` for a PUT): what to wait for. A header whose
/// value is no URL is ignored as if absent (the next rule applies).
fn completion_of(method: &Method, status: StatusCode, headers: &Headers, body: &Value) -> Completion {
    let url = |name: &HeaderName| headers.get_optional_str(name).and_then(|v| Url::parse(v).ok());
    // A PUT answered 200/201 whose resource already says it is done is done, whatever headers come with it
    // (as the Azure SDKs' pollers take it): no wait, no poll.
    if *method != Method::Delete && matches!(status, StatusCode::Ok | StatusCode::Created) {
        match provisioning_state(body).map(progress) {
            Some(Progress::Succeeded) => return Completion::Done,
            Some(Progress::Ended(state)) => return Completion::Ended(state),
            Some(Progress::Running) | None => {}
        }
    }
    if let Some(url) = url(&AZURE_ASYNCOPERATION) {
        return Completion::AsyncOperation(url);
    }
    if let Some(url) = url(&LOCATION) {
        return Completion::Location(url);
    }
    if *method == Method::Delete {
        return if status == StatusCode::Accepted {
            Completion::Gone
        } else {
            Completion::Done
        };
    }
    match provisioning_state(body).map(progress) {
        Some(Progress::Running) => Completion::ProvisioningState,
        Some(Progress::Ended(state)) => Completion::Ended(state),
        Some(Progress::Succeeded) | None => Completion::Done,
    }
}

/// Where an operation (or a resource's provisioning) is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Progress {
    Running,
    Succeeded,
    /// `Failed` or `Canceled`, as ARM spelled it.
    Ended(String),
}

/// An operation status's `status` or a resource's `provisioningState`: terminal are `Succeeded`, `Failed` and
/// `Canceled` (`Cancelled` too, which some providers send); anything else (`InProgress`, `Updating`,
/// `Deleting`, ...) is still running.
fn progress(state: &str) -> Progress {
    if state.eq_ignore_ascii_case("Succeeded") {
        Progress::Succeeded
    } else if ["Failed", "Canceled", "Cancelled"]
        .iter()
        .any(|s| state.eq_ignore_ascii_case(s))
    {
        Progress::Ended(state.to_string())
    } else {
        Progress::Running
    }
}

fn provisioning_state(resource: &Value) -> Option<&str> {
    resource
        .pointer("/properties/provisioningState")
        .and_then(Value::as_str)
}

/// The error of an operation that ended `state` (`Failed`, `Canceled`): ARM's code and message from the
/// operation status's (or the resource's) `error`, when it has one.
fn ended(op: &str, name: &str, state: &str, answer: &Value) -> ArmError {
    let error = answer.get("error");
    let text = |field: &str| error.and_then(|e| e.get(field)).and_then(Value::as_str);
    ArmError {
        operation: op.to_string(),
        resource: name.to_string(),
        status: None,
        code: text("code").map(str::to_string),
        message: format!(
            "the operation ended {state}: {}",
            text("message").unwrap_or("ARM said no more")
        ),
        operation_ended: true,
    }
}

/// Whether a `Location` poll answering `status` (an error) reports the end of the operation, which failed with
/// that error (ARM's Location answers a finished operation as the write would have been answered had it run
/// synchronously): any 4xx but those about the poll itself (401, 403: its token; 404: no such operation or URL;
/// 408, 429: try again). A 5xx, or no answer, says nothing of the operation.
fn location_error_ends_operation(status: Option<u16>) -> bool {
    status.is_some_and(|s| (400..500).contains(&s) && !matches!(s, 401 | 403 | 404 | 408 | 429))
}

/// How long to wait before polling when no answer said (azure_core's default for long-running operations).
const DEFAULT_POLL_DELAY: Duration = Duration::from_secs(30);

/// The answer's `retry-after-ms`, `x-ms-retry-after-ms` or `Retry-After`, if it has one. Zero counts as none
/// (as the Azure SDKs take it): polling back to back would spend the read quota until the deadline.
fn retry_after(headers: &Headers) -> Option<Duration> {
    [RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS, RETRY_AFTER]
        .iter()
        .any(|h| headers.get_optional_str(h).is_some())
        .then(|| azure_core::lro::get_retry_after(headers))
        .filter(|d| !d.is_zero())
}

/// One ARM resource or collection: how calls on it are named, where it is, which API version serves it.
#[derive(Clone, Debug)]
struct Target<'a> {
    /// Resource type in operation names, e.g. `loadBalancers`.
    kind: &'static str,
    /// Resource name in errors.
    name: &'a str,
    /// Request path.
    path: String,
    api_version: &'static str,
}

impl Target<'_> {
    fn op(&self, verb: &str) -> String {
        format!("{verb} {}", self.kind)
    }
}

impl Arm {
    /// A client for the cloud config's endpoint and subscription.
    pub fn new(
        cfg: &CloudConfig,
        credential: Arc<dyn TokenCredential>,
        retry: RetryBudget,
        timeouts: &Timeouts,
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
        let progress = Arc::new(OnceLock::new());
        let counting: Arc<dyn Policy> = Arc::new(Counting {
            metrics: metrics.clone(),
            progress: progress.clone(),
        });
        let options = azure_core::ClientOptions::default()
            .retry(retry)
            .transport(TransportOptions::new(http_client(timeouts)?));
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            options,
            Vec::new(),
            vec![counting],
        );
        Ok(Arm {
            pipeline,
            credential,
            scope: format!("{}/.default", cfg.resource_manager_endpoint),
            endpoint,
            subscription: cfg.subscription_id.clone(),
            operation_deadline: timeouts.operation,
            request_timeout: timeouts.request,
            progress,
        })
    }

    /// Every ARM call that returns (an answer or an error, retries and operation polls included) is progress
    /// of `heartbeat`'s work: a pool whose writes are slow (throttled, long operations) is not stuck, only one
    /// whose calls stop returning. The first heartbeat given stays.
    pub fn report_progress_to(&self, heartbeat: &daemon::liveness::Heartbeat) {
        let _ = self.progress.set(heartbeat.clone());
    }

    // --- the raw calls -----------------------------------------------------------------------------------

    /// A resource (or, without `name`, a collection) of `provider_type` in a resource group.
    fn target<'a>(
        &self,
        rg: &str,
        provider_type: &str,
        kind: &'static str,
        name: &'a str,
        api_version: &'static str,
    ) -> Target<'a> {
        let mut path = format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/{provider_type}",
            self.subscription
        );
        if !name.is_empty() {
            path.push('/');
            path.push_str(name);
        }
        Target {
            kind,
            name,
            path,
            api_version,
        }
    }

    fn url(&self, t: &Target<'_>) -> Url {
        let mut url = self.endpoint.clone();
        url.set_path(&t.path);
        url.query_pairs_mut().append_pair("api-version", t.api_version);
        url
    }

    /// Sends one request through the pipeline with a bearer token, the precondition of `expect` and `body`.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        expect: Expect<'_>,
    ) -> azure_core::Result<Response> {
        self.send_in(&Context::new(), method, url, body, expect).await
    }

    /// [`Arm::send`] in context `ctx`.
    async fn send_in(
        &self,
        ctx: &Context,
        method: Method,
        url: Url,
        body: Option<&Value>,
        expect: Expect<'_>,
    ) -> azure_core::Result<Response> {
        let mut req = Request::new(url, method);
        let token = self.credential.get_token(&[self.scope.as_str()]).await?;
        req.insert_header(
            azure_core::headers::AUTHORIZATION,
            format!("Bearer {}", token.token.secret()),
        );
        if let Some((name, value)) = expect.header() {
            req.insert_header(name, value);
        }
        if let Some(body) = body {
            req.insert_header("content-type", "application/json");
            req.set_body(azure_core::to_json(body)?);
        }
        self.pipeline.send(ctx, &mut req).await
    }

    /// The JSON body of a response.
    async fn json(op: &str, name: &str, rsp: Response) -> ArmResult<Value> {
        let bytes = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| ArmError::from_sdk(op, name, &e))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ArmError::local(op, name, format!("the answer is not JSON: {e}")))
    }

    /// GET a resource as ARM returns it (None: 404).
    async fn get(&self, t: &Target<'_>) -> ArmResult<Option<Value>> {
        let op = t.op("GET");
        let url = self.url(t);
        optional(
            async {
                let rsp = self
                    .send(Method::Get, url, None, Expect::Anything)
                    .await
                    .map_err(|e| ArmError::from_sdk(&op, t.name, &e))?;
                Self::json(&op, t.name, rsp).await
            }
            .await,
        )
    }

    /// Every item of a collection, following `nextLink`.
    async fn list(&self, t: &Target<'_>) -> ArmResult<Vec<Value>> {
        let op = t.op("LIST");
        let mut next = Some(self.url(t));
        let mut out = Vec::new();
        while let Some(url) = next.take() {
            let rsp = self
                .send(Method::Get, url, None, Expect::Anything)
                .await
                .map_err(|e| ArmError::from_sdk(&op, t.name, &e))?;
            let mut page = Self::json(&op, t.name, rsp).await?;
            if let Some(Value::Array(items)) = page.get_mut("value").map(Value::take) {
                out.extend(items);
            }
            next = match page.get("nextLink").and_then(Value::as_str) {
                Some(link) if !link.is_empty() => {
                    let url = Url::parse(link)
                        .map_err(|e| ArmError::local(&op, t.name, format!("nextLink: {e}")))?;
                    self.at_endpoint(&url, &op, t.name, "nextLink")?;
                    Some(url)
                }
                _ => None,
            };
        }
        Ok(out)
    }

    /// Every resource of `t`'s type in resource group `rg` (named by the group in errors).
    async fn list_group<'a>(&self, rg: &'a str, t: Target<'a>) -> ArmResult<Vec<Value>> {
        self.list(&Target { name: rg, ..t }).await
    }

    /// PUT `body` as it is, conditional on `expect`; waits for the long-running operation (at most
    /// [`Timeouts::operation`]) and returns the resource as ARM then stores it.
    async fn put(&self, t: &Target<'_>, body: &Value, expect: Expect<'_>) -> ArmResult<Value> {
        let op = t.op("PUT");
        let rsp = self
            .send(Method::Put, self.url(t), Some(body), expect)
            .await
            .map_err(|e| ArmError::from_sdk(&op, t.name, &e))?;
        let (status, headers) = (rsp.status(), rsp.headers().clone());
        let answer = Self::json(&op, t.name, rsp).await?;
        match completion_of(&Method::Put, status, &headers, &answer) {
            Completion::Done => Ok(answer),
            Completion::Ended(state) => Err(ended(&op, t.name, &state, &answer)),
            pending => {
                if let Some(last) = self.wait(t, &op, pending, retry_after(&headers)).await? {
                    return Ok(last);
                }
                self.get(t)
                    .await?
                    .ok_or_else(|| ArmError::local(&op, t.name, "gone after the write succeeded"))
            }
        }
    }

    /// DELETE, conditional on `expect` (404 is success); waits for the long-running operation (at most
    /// [`Timeouts::operation`]), so that the resource is gone when this returns.
    async fn delete(&self, t: &Target<'_>, expect: Expect<'_>) -> ArmResult<()> {
        let op = t.op("DELETE");
        let rsp = match self.send(Method::Delete, self.url(t), None, expect).await {
            Ok(rsp) => rsp,
            Err(e) => return ignore_404::<()>(Err(ArmError::from_sdk(&op, t.name, &e))),
        };
        let (status, headers) = (rsp.status(), rsp.headers().clone());
        match completion_of(&Method::Delete, status, &headers, &Value::Null) {
            Completion::Done => Ok(()),
            Completion::Ended(state) => Err(ended(&op, t.name, &state, &Value::Null)),
            pending => self
                .wait(t, &op, pending, retry_after(&headers))
                .await
                .map(|_| ()),
        }
    }

    /// Waits (at most [`Timeouts::operation`], and the last poll's exchange) for the operation of a write whose
    /// answer asked for `pending` polling, first `delay` (the answer's `Retry-After`) after the answer. Returns
    /// the resource when the last poll read it (a PUT followed through its provisioningState, or whose
    /// `Location` answered the resource when the operation was over).
    async fn wait(
        &self,
        t: &Target<'_>,
        op: &str,
        pending: Completion,
        delay: Option<Duration>,
    ) -> ArmResult<Option<Value>> {
        let deadline = tokio::time::Instant::now() + self.operation_deadline;
        // The last poll starts at the deadline at the latest; one exchange's bound after it, the wait is over
        // whatever that poll (and the pipeline's retries of it) still does.
        tokio::time::timeout(
            self.operation_deadline + self.request_timeout,
            self.poll_until_done(t, op, pending, delay, deadline),
        )
        .await
        .map_err(|_| {
            self.not_finished(
                op,
                t.name,
                &format!(
                    ", and its last poll had no answer {}s after",
                    self.request_timeout.as_secs_f64()
                ),
            )
        })?
    }

    /// The error of an operation still running at its deadline (`detail`: what else happened, after a comma).
    fn not_finished(&self, op: &str, name: &str, detail: &str) -> ArmError {
        ArmError::local(
            op,
            name,
            format!(
                "the operation did not finish within {}s{detail}; it is retried later (ARM may still complete it)",
                self.operation_deadline.as_secs_f64()
            ),
        )
    }

    /// `Ok` when `url` (`what`, from an ARM answer) is at the resource manager endpoint's origin: a request to it
    /// carries the bearer token, which goes to the ARM endpoint it is for and nowhere else.
    fn at_endpoint(&self, url: &Url, op: &str, name: &str, what: &str) -> ArmResult<()> {
        if url.origin() == self.endpoint.origin() {
            return Ok(());
        }
        Err(ArmError::local(
            op,
            name,
            format!(
                "{what} is at {}, not at the resource manager endpoint",
                url.host_str().unwrap_or("a URL without a host")
            ),
        ))
    }

    /// Polls as `pending` says until the operation is over: `Ok` when it succeeded, an error naming `op` and
    /// ARM's code and message when it failed or was canceled, or still ran at the poll at `deadline` (or at a
    /// poll that answered after it). Each poll waits the `Retry-After` of the last answer that had one
    /// (azure_core's default before any did); a wait that would end past `deadline` ends at it, for one last
    /// poll.
    async fn poll_until_done(
        &self,
        t: &Target<'_>,
        op: &str,
        pending: Completion,
        mut delay: Option<Duration>,
        deadline: tokio::time::Instant,
    ) -> ArmResult<Option<Value>> {
        let fail = |e: azure_core::Error| ArmError::from_sdk(op, t.name, &e);
        if let Completion::AsyncOperation(url) | Completion::Location(url) = &pending {
            self.at_endpoint(url, op, t.name, "the operation to poll")?;
        }
        let mut ctx = Context::new();
        ctx.insert(Poll(t.kind));
        loop {
            let wake = tokio::time::Instant::now() + delay.unwrap_or(DEFAULT_POLL_DELAY);
            let last = wake >= deadline;
            tokio::time::sleep_until(wake.min(deadline)).await;
            let url = match &pending {
                Completion::AsyncOperation(url) | Completion::Location(url) => url.clone(),
                _ => self.url(t),
            };
            let rsp = match self.send_in(&ctx, Method::Get, url, None, Expect::Anything).await {
                Ok(rsp) => rsp,
                Err(e) => {
                    let mut e = fail(e);
                    return match pending {
                        Completion::Gone if e.is_not_found() => Ok(None),
                        Completion::Location(_) => {
                            e.operation_ended = location_error_ends_operation(e.status);
                            Err(e)
                        }
                        _ => Err(e),
                    };
                }
            };
            delay = retry_after(rsp.headers()).or(delay);
            let status = rsp.status();
            match &pending {
                // Over: the write's answer had it run synchronously, for a PUT the resource.
                Completion::Location(_) => {
                    if status != StatusCode::Accepted {
                        return Ok(Self::json(op, t.name, rsp).await.ok().filter(Value::is_object));
                    }
                }
                Completion::AsyncOperation(_) => {
                    let body = Self::json(op, t.name, rsp).await?;
                    match body.get("status").and_then(Value::as_str).map(progress) {
                        Some(Progress::Succeeded) => return Ok(None),
                        Some(Progress::Ended(state)) => return Err(ended(op, t.name, &state, &body)),
                        Some(Progress::Running) => {}
                        None => {
                            return Err(ArmError::local(
                                op,
                                t.name,
                                "the operation's status answer has no `status`",
                            ));
                        }
                    }
                }
                Completion::ProvisioningState => {
                    let body = Self::json(op, t.name, rsp).await?;
                    match provisioning_state(&body).map_or(Progress::Succeeded, progress) {
                        Progress::Succeeded => return Ok(Some(body)),
                        Progress::Ended(state) => return Err(ended(op, t.name, &state, &body)),
                        Progress::Running => {}
                    }
                }
                // Still there: the DELETE's operation still runs.
                Completion::Gone => {}
                Completion::Done | Completion::Ended(_) => return Ok(None),
            }
            // A poll that answered at or after the deadline was the last one, whenever it started.
            if last || tokio::time::Instant::now() >= deadline {
                return Err(self.not_finished(op, t.name, ""));
            }
        }
    }

    // --- load balancer -----------------------------------------------------------------------------------

    fn lb<'a>(&self, rg: &str, name: &'a str) -> Target<'a> {
        self.target(
            rg,
            "Microsoft.Network/loadBalancers",
            "loadBalancers",
            name,
            api_version::NETWORK,
        )
    }

    /// GET the load balancer (None: 404).
    pub async fn get_lb(&self, rg: &str, name: &str) -> ArmResult<Option<Value>> {
        self.get(&self.lb(rg, name)).await
    }

    /// PUT the load balancer; returns what ARM stored (frontend IPs allocated). `expect` is the version read
    /// in the same pass: a concurrent change (or creation) of the load balancer fails the PUT with 412 instead
    /// of being overwritten.
    pub async fn put_lb(&self, rg: &str, name: &str, body: &Value, expect: Expect<'_>) -> ArmResult<Value> {
        self.put(&self.lb(rg, name), body, expect).await
    }

    /// DELETE the load balancer (404 is success), waiting until it is gone; only the version `expect`ed (412
    /// otherwise).
    pub async fn delete_lb(&self, rg: &str, name: &str, expect: Expect<'_>) -> ArmResult<()> {
        self.delete(&self.lb(rg, name), expect).await
    }

    // --- scale sets ----------------------------------------------------------------------------------------

    fn vmss<'a>(&self, rg: &str, name: &'a str) -> Target<'a> {
        self.target(
            rg,
            "Microsoft.Compute/virtualMachineScaleSets",
            "virtualMachineScaleSets",
            name,
            api_version::COMPUTE,
        )
    }

    /// LIST scale sets of a resource group.
    pub async fn list_vmss(&self, rg: &str) -> ArmResult<Vec<Value>> {
        self.list_group(rg, self.vmss(rg, "")).await
    }

    /// GET a scale set (None: 404).
    pub async fn get_vmss(&self, rg: &str, name: &str) -> ArmResult<Option<Value>> {
        self.get(&self.vmss(rg, name)).await
    }

    /// PUT a scale set: `body` is the scale set as read, with the operator's entries merged in.
    pub async fn put_vmss(&self, rg: &str, name: &str, body: &Value, expect: Expect<'_>) -> ArmResult<()> {
        self.put(&self.vmss(rg, name), body, expect).await.map(|_| ())
    }

    fn instances<'a>(&self, rg: &str, vmss: &str, instance_id: &'a str) -> Target<'a> {
        let mut t = self.target(
            rg,
            "Microsoft.Compute/virtualMachineScaleSets",
            "virtualMachines",
            instance_id,
            api_version::COMPUTE,
        );
        t.path = format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/{vmss}/virtualMachines",
            self.subscription
        );
        if !instance_id.is_empty() {
            t.path = format!("{}/{instance_id}", t.path);
        }
        t
    }

    /// LIST the instances of a scale set.
    pub async fn list_instances(&self, rg: &str, vmss: &str) -> ArmResult<Vec<Value>> {
        let mut t = self.instances(rg, vmss, "");
        t.name = vmss;
        self.list(&t).await
    }

    /// PUT one instance: `body` is the instance as read, with the operator's entries merged in.
    pub async fn put_instance(
        &self,
        rg: &str,
        vmss: &str,
        instance_id: &str,
        body: &Value,
        expect: Expect<'_>,
    ) -> ArmResult<()> {
        self.put(&self.instances(rg, vmss, instance_id), body, expect)
            .await
            .map(|_| ())
    }

    /// GET an instance's NIC (its actual addresses).
    pub async fn get_instance_nic(
        &self,
        rg: &str,
        vmss: &str,
        instance_id: &str,
        nic: &str,
    ) -> ArmResult<Option<Value>> {
        let mut t = self.instances(rg, vmss, instance_id);
        t.kind = "networkInterfaces";
        t.name = nic;
        t.path = format!("{}/networkInterfaces/{nic}", t.path);
        t.api_version = api_version::SCALE_SET_INSTANCE_NIC;
        self.get(&t).await
    }

    // --- VM pools ------------------------------------------------------------------------------------------

    /// LIST VMs of a resource group.
    pub async fn list_vms(&self, rg: &str) -> ArmResult<Vec<Value>> {
        let t = self.target(
            rg,
            "Microsoft.Compute/virtualMachines",
            "virtualMachines",
            "",
            api_version::COMPUTE,
        );
        self.list_group(rg, t).await
    }

    fn nic<'a>(&self, rg: &str, name: &'a str) -> Target<'a> {
        self.target(
            rg,
            "Microsoft.Network/networkInterfaces",
            "networkInterfaces",
            name,
            api_version::NETWORK,
        )
    }

    /// LIST NICs of a resource group.
    pub async fn list_nics(&self, rg: &str) -> ArmResult<Vec<Value>> {
        self.list_group(rg, self.nic(rg, "")).await
    }

    /// PUT a NIC (`body`: the NIC as read, with the operator's entries merged in), conditional on `expect`.
    pub async fn put_nic(&self, rg: &str, name: &str, body: &Value, expect: Expect<'_>) -> ArmResult<Value> {
        self.put(&self.nic(rg, name), body, expect).await
    }

    fn public_ip<'a>(&self, rg: &str, name: &'a str) -> Target<'a> {
        self.target(
            rg,
            "Microsoft.Network/publicIPAddresses",
            "publicIPAddresses",
            name,
            api_version::NETWORK,
        )
    }

    /// LIST public IP addresses of a resource group.
    pub async fn list_public_ips(&self, rg: &str) -> ArmResult<Vec<Value>> {
        self.list_group(rg, self.public_ip(rg, "")).await
    }

    /// PUT a public IP address (created by the operator: the body is the whole resource).
    pub async fn put_public_ip(&self, rg: &str, name: &str, body: &Value) -> ArmResult<()> {
        self.update_public_ip(rg, name, body, Expect::Anything).await
    }

    /// PUT a public IP address as read with the operator's change merged in, only over the version
    /// `expect`ed (412 otherwise).
    pub async fn update_public_ip(
        &self,
        rg: &str,
        name: &str,
        body: &Value,
        expect: Expect<'_>,
    ) -> ArmResult<()> {
        self.put(&self.public_ip(rg, name), body, expect)
            .await
            .map(|_| ())
    }

    /// DELETE a public IP address (404 is success), waiting until it is gone.
    pub async fn delete_public_ip(&self, rg: &str, name: &str) -> ArmResult<()> {
        self.delete(&self.public_ip(rg, name), Expect::Anything).await
    }

    // --- prefixes ------------------------------------------------------------------------------------------

    fn prefix<'a>(&self, rg: &str, name: &'a str) -> Target<'a> {
        self.target(
            rg,
            "Microsoft.Network/publicIPPrefixes",
            "publicIPPrefixes",
            name,
            api_version::NETWORK,
        )
    }

    /// LIST the public IP prefixes of a resource group.
    pub async fn list_prefixes(&self, rg: &str) -> ArmResult<Vec<Value>> {
        self.list_group(rg, self.prefix(rg, "")).await
    }

    /// GET a public IP prefix (None: 404).
    pub async fn get_prefix(&self, rg: &str, name: &str) -> ArmResult<Option<Value>> {
        self.get(&self.prefix(rg, name)).await
    }

    /// PUT a public IP prefix (created by the operator: the body is the whole resource).
    pub async fn put_prefix(&self, rg: &str, name: &str, body: &Value) -> ArmResult<Value> {
        self.put(&self.prefix(rg, name), body, Expect::Anything).await
    }

    /// DELETE a public IP prefix (404 is success), waiting until it is gone.
    pub async fn delete_prefix(&self, rg: &str, name: &str) -> ArmResult<()> {
        self.delete(&self.prefix(rg, name), Expect::Anything).await
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
            operation_ended: false,
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

    fn headers(pairs: &[(&'static str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (name, value) in pairs {
            h.insert(HeaderName::from_static(name), value.to_string());
        }
        h
    }

    const OPERATION: &str = "https://management.azure.com/subscriptions/s/providers/Microsoft.Compute/locations/eastus/operations/1?api-version=2024-07-01";
    const RESULT: &str = "https://management.azure.com/subscriptions/s/providers/Microsoft.Compute/locations/eastus/operationResults/1?api-version=2024-07-01";

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn a_write_is_awaited_by_the_header_its_answer_carries_whatever_the_resource_type() {
        let updating = serde_json::json!({"properties": {"provisioningState": "Updating"}});
        // What ARM answers a scale set's, an instance's or a prefix's PUT: Azure-AsyncOperation alone.
        let async_only = headers(&[("azure-asyncoperation", OPERATION)]);
        for status in [StatusCode::Ok, StatusCode::Created] {
            assert_eq!(
                completion_of(&Method::Put, status, &async_only, &updating),
                Completion::AsyncOperation(url(OPERATION))
            );
        }
        // Both: the operation status (Location is for the final result, which a PUT reads from its own URI).
        let both = headers(&[("location", RESULT), ("azure-asyncoperation", OPERATION)]);
        assert_eq!(
            completion_of(&Method::Delete, StatusCode::Accepted, &both, &Value::Null),
            Completion::AsyncOperation(url(OPERATION))
        );
        let location_only = headers(&[("location", RESULT)]);
        assert_eq!(
            completion_of(
                &Method::Delete,
                StatusCode::Accepted,
                &location_only,
                &Value::Null
            ),
            Completion::Location(url(RESULT))
        );
        assert_eq!(
            completion_of(&Method::Put, StatusCode::Accepted, &location_only, &Value::Null),
            Completion::Location(url(RESULT))
        );
        // An answer whose resource already says it is done is done, with whatever header.
        let succeeded = serde_json::json!({"properties": {"provisioningState": "Succeeded"}});
        let failed = serde_json::json!({"properties": {"provisioningState": "Failed"}});
        for status in [StatusCode::Ok, StatusCode::Created] {
            assert_eq!(
                completion_of(&Method::Put, status, &async_only, &succeeded),
                Completion::Done
            );
            assert_eq!(
                completion_of(&Method::Put, status, &both, &failed),
                Completion::Ended("Failed".into())
            );
        }
        // A header that is no URL counts as absent.
        let garbage = headers(&[("azure-asyncoperation", "not a url"), ("location", RESULT)]);
        assert_eq!(
            completion_of(&Method::Delete, StatusCode::Accepted, &garbage, &Value::Null),
            Completion::Location(url(RESULT))
        );
    }

    #[test]
    fn without_a_header_a_put_follows_its_provisioning_state_and_a_delete_its_status() {
        let none = Headers::new();
        let state = |s: &str| serde_json::json!({"properties": {"provisioningState": s}});
        for running in ["Updating", "Creating", "Accepted"] {
            assert_eq!(
                completion_of(&Method::Put, StatusCode::Created, &none, &state(running)),
                Completion::ProvisioningState,
                "{running}"
            );
        }
        assert_eq!(
            completion_of(&Method::Put, StatusCode::Ok, &none, &state("Succeeded")),
            Completion::Done
        );
        assert_eq!(
            completion_of(
                &Method::Put,
                StatusCode::Ok,
                &none,
                &serde_json::json!({"name": "x"})
            ),
            Completion::Done,
            "no provisioningState: the answer is the end"
        );
        assert_eq!(
            completion_of(&Method::Put, StatusCode::Ok, &none, &state("Failed")),
            Completion::Ended("Failed".into())
        );
        assert_eq!(
            completion_of(&Method::Delete, StatusCode::Accepted, &none, &Value::Null),
            Completion::Gone
        );
        for done in [StatusCode::Ok, StatusCode::NoContent] {
            assert_eq!(
                completion_of(&Method::Delete, done, &none, &Value::Null),
                Completion::Done
            );
        }
    }

    #[test]
    fn operation_states_and_the_error_of_one_that_failed() {
        assert_eq!(progress("InProgress"), Progress::Running);
        assert_eq!(progress("Deleting"), Progress::Running);
        assert_eq!(progress("Succeeded"), Progress::Succeeded);
        assert_eq!(progress("Cancelled"), Progress::Ended("Cancelled".into()));
        let status = serde_json::json!({"status": "Failed", "error": {"code": "OperationNotAllowed", "message": "busy"}});
        let e = ended("PUT virtualMachineScaleSets", "gw", "Failed", &status);
        assert_eq!(
            e.to_string(),
            "PUT virtualMachineScaleSets gw: OperationNotAllowed: the operation ended Failed: busy"
        );
        assert_eq!(e.status, None);
        let e = ended("PUT publicIPPrefixes", "p", "Canceled", &Value::Null);
        assert_eq!(e.code, None);
        assert!(e.message.contains("ended Canceled"), "{e}");
    }

    #[test]
    fn polls_wait_what_the_answer_says() {
        assert_eq!(retry_after(&Headers::new()), None);
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "20"), ("retry-after", "1")])),
            Some(Duration::from_millis(20))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        // Zero is no answer: polling back to back would spend the read quota.
        assert_eq!(retry_after(&headers(&[("retry-after", "0")])), None);
        assert_eq!(retry_after(&headers(&[("retry-after-ms", "0")])), None);
    }
}
