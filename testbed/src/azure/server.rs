//! HTTP face of the simulator: ARM routing and mechanics (api-version, bearer tokens, ETags, long-running
//! operations), the AAD token endpoint, IMDS, fault injection, the call log and the `/_sim` control API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::ArmError;
use super::seed::{Seed, ServicePrincipal};
use super::world::{self, PutOutcome, World};

/// One request as the simulator saw it (control API calls excluded).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CallRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
}

/// One accepted PUT: what the client sent and what it replaced (as a GET answered just before).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PutRecord {
    pub id: String,
    /// The resource as a GET returned it before the PUT (`None`: it did not exist).
    pub before: Option<Value>,
    pub body: Value,
}

/// "The next `count` calls matching `method` + `path_regex` fail with `status`/`code`."
/// A 429 storm is a fault with status 429 and a `Retry-After`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FaultSpec {
    /// HTTP method to match (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Regex matched against the request path (case-insensitive).
    pub path_regex: String,
    pub count: u32,
    pub status: u16,
    #[serde(default = "default_fault_code")]
    pub code: String,
    #[serde(default)]
    pub message: Option<String>,
    /// Sent as `Retry-After` (seconds, what ARM sends).
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
    /// Sent as `retry-after-ms` (honoured by azure_core; keeps tests fast).
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    /// Extra latency before answering the matching calls.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Let the request take effect, then answer with the fault anyway (a lost response: the caller
    /// must cope with a write that happened although it saw an error).
    #[serde(default)]
    pub after_apply: bool,
    /// Another client's write racing this request: before the matching request is handled, this JSON is
    /// merged into the resource the request addresses and the resource gets a new ETag (as any write does).
    /// The request itself then proceeds normally, so a write that carries the `If-Match` it read earlier
    /// gets 412 `PreconditionFailed`, and one without `If-Match` silently overwrites the other write. Give
    /// the fault a status below 400 (e.g. 200) so that nothing else is injected.
    #[serde(default)]
    pub concurrent_patch: Option<Value>,
}

fn default_fault_code() -> String {
    "InjectedFault".to_owned()
}

impl FaultSpec {
    pub fn new(method: &str, path_regex: &str, count: u32, status: u16, code: &str) -> Self {
        Self {
            method: Some(method.to_owned()),
            path_regex: path_regex.to_owned(),
            count,
            status,
            code: code.to_owned(),
            message: None,
            retry_after_seconds: None,
            retry_after_ms: None,
            latency_ms: None,
            after_apply: false,
            concurrent_patch: None,
        }
    }

    /// `count` throttled answers (429 `TooManyRequests`) for any method on paths matching `path_regex`.
    pub fn throttle(path_regex: &str, count: u32, retry_after_ms: u64) -> Self {
        Self {
            method: None,
            retry_after_ms: Some(retry_after_ms),
            ..Self::new("", path_regex, count, 429, "TooManyRequests")
        }
    }

    /// Before each of the next `count` `method` calls on paths matching `path_regex`, someone else writes the
    /// addressed resource: `patch` is merged into it and its ETag changes (the race between a caller's GET
    /// and its PUT/DELETE). The call itself is then answered normally.
    pub fn concurrent_write(method: &str, path_regex: &str, count: u32, patch: Value) -> Self {
        Self {
            concurrent_patch: Some(patch),
            ..Self::new(method, path_regex, count, 200, "ConcurrentWrite")
        }
    }
}

#[derive(Debug, Clone)]
struct Fault {
    spec: FaultSpec,
    re: Regex,
}

/// How long-running operations behave.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LroConfig {
    /// Answer PUT/DELETE as long-running operations (201/202 + polling headers).
    pub enabled: bool,
    /// Number of polls answered `InProgress` before `Succeeded`.
    pub in_progress_polls: u32,
    /// `retry-after-ms` on operation responses (azure_core sleeps that long between polls).
    pub retry_after_ms: u64,
    /// An operation nobody polls completes on its own after this long.
    pub max_duration_ms: u64,
    /// The next this-many operations end `Failed` (the resource's provisioningState becomes `Failed`).
    #[serde(default)]
    pub fail_next: u32,
    /// Refuse a write to a resource while an operation on it, or on the resource it belongs to (a scale set's
    /// instance while the scale set's own operation runs), is still running: 409 `AnotherOperationInProgress`
    /// from the network resource provider, 409 `OperationNotAllowed` from the compute one (the codes each
    /// answers, <https://github.com/MicrosoftDocs/azure-docs/blob/main/articles/virtual-machines/troubleshooting/error-messages.md>
    /// lists Compute's "... since another operation is in progress").
    #[serde(default)]
    pub reject_concurrent: bool,
    /// How PUT and DELETE answers say what to poll (ARM's resource providers differ).
    #[serde(default)]
    pub style: LroStyle,
    /// The status a failed operation's `Location` answers with, as the resource provider would have refused
    /// the write had it run synchronously (400 `BadRequest` by default; a 5xx one makes the poll a server
    /// error that clients retry).
    #[serde(default = "default_location_failure_status")]
    pub location_failure_status: u16,
}

fn default_location_failure_status() -> u16 {
    400
}

/// How a write's answer says what to poll, the styles of ARM's asynchronous-operation contract
/// (<https://github.com/Azure/azure-resource-manager-rpc/blob/master/v1.0/async-api-reference.md>).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum LroStyle {
    /// PUT: 201/200 with `provisioningState: Updating` and `Azure-AsyncOperation`; DELETE: 202 with
    /// `Azure-AsyncOperation` and `Location`. The operation status answers `{"status": ...}`.
    #[default]
    AsyncOperation,
    /// PUT and DELETE: 202 with `Location` alone, whose URL answers 202 while the operation runs and, once it
    /// is over, what the write would have answered had it run synchronously: for a PUT 200 with the resource
    /// (as a GET shows it), for a DELETE 204, and the operation's error (status
    /// [`LroConfig::location_failure_status`]) when it failed.
    Location,
    /// PUT: 201/200 with `provisioningState: Updating` and no polling header, the resource's GET showing it
    /// `Updating` until the operation ends (`Succeeded` or `Failed`) (ARM's contract makes the header optional on
    /// a PUT); DELETE: 202 with no header, the resource's GET showing it `Deleting` until it is gone (outside the
    /// contract, which requires `Location` on an asynchronous DELETE: an answer a client may tolerate). Each GET of the resource while its operation runs counts as
    /// a poll of it.
    ProvisioningState,
}

impl Default for LroConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            in_progress_polls: 1,
            retry_after_ms: 20,
            max_duration_ms: 2000,
            fail_next: 0,
            reject_concurrent: false,
            style: LroStyle::AsyncOperation,
            location_failure_status: default_location_failure_status(),
        }
    }
}

#[derive(Debug, Clone)]
struct Operation {
    resource_id: Option<String>,
    /// A PUT's (a DELETE's otherwise).
    put: bool,
    /// A DELETE's: the resource as a GET showed it, `provisioningState` `Deleting`. The world has let it go
    /// (its addresses, its references), but GET and LIST still show it, as ARM does, until the operation
    /// completes. A DELETE whose operation ends `Failed` has deleted the resource all the same.
    deleting: Option<Value>,
    polls: u32,
    started: Instant,
    done: bool,
    fails: bool,
    style: LroStyle,
}

/// Bearer tokens handed out by the simulated AAD/IMDS; `Debug` shows only how many.
#[derive(Default)]
struct IssuedTokens(HashSet<String>);

impl std::fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuedTokens({} redacted)", self.0.len())
    }
}

/// Mutable simulator state behind one lock (requests never hold it across an await).
#[derive(Debug)]
pub struct SimState {
    pub world: World,
    tenant_id: String,
    principals: Vec<ServicePrincipal>,
    issued_tokens: IssuedTokens,
    pub require_auth: bool,
    calls: Vec<CallRecord>,
    faults: Vec<Fault>,
    pub latency: Duration,
    pub lro: LroConfig,
    /// Split list answers into pages of this size (exercises `nextLink` handling); `None` = one page.
    pub page_size: Option<usize>,
    /// Write throttling (`None`: unlimited).
    pub write_limit: Option<WriteLimit>,
    write_times: std::collections::VecDeque<Instant>,
    operations: HashMap<String, Operation>,
    pub base_url: String,
    /// Keep accepted PUTs in `puts` (off by default: bodies are large).
    pub record_puts: bool,
    pub puts: Vec<PutRecord>,
}

pub type Shared = Arc<Mutex<SimState>>;

pub fn lock(s: &Shared) -> MutexGuard<'_, SimState> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SimState {
    pub fn new(seed: &Seed) -> Result<Self, ArmError> {
        Ok(Self {
            world: seed.build()?,
            tenant_id: seed.tenant_id.clone(),
            principals: seed.service_principals.clone(),
            issued_tokens: IssuedTokens::default(),
            require_auth: true,
            calls: Vec::new(),
            faults: Vec::new(),
            latency: Duration::ZERO,
            page_size: None,
            write_limit: None,
            write_times: std::collections::VecDeque::new(),
            lro: LroConfig::default(),
            operations: HashMap::new(),
            base_url: String::new(),
            record_puts: false,
            puts: Vec::new(),
        })
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        self.calls.clone()
    }

    pub fn clear_calls(&mut self) {
        self.calls.clear();
    }

    pub fn add_fault(&mut self, spec: FaultSpec) -> Result<(), String> {
        let re = Regex::new(&format!("(?i){}", spec.path_regex))
            .map_err(|e| format!("pathRegex '{}' is not a valid regex: {e}", spec.path_regex))?;
        self.faults.push(Fault { spec, re });
        Ok(())
    }

    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// Completes operations that ran past their maximum duration.
    fn settle(&mut self) {
        let max = Duration::from_millis(self.lro.max_duration_ms);
        let due: Vec<String> = self
            .operations
            .iter()
            .filter(|(_, o)| !o.done && o.started.elapsed() >= max)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.complete(&k);
        }
    }

    /// One poll of operation `op_id`: where it is now (`None`: no such operation).
    fn poll(&mut self, op_id: &str) -> Option<Polled> {
        let in_progress_polls = self.lro.in_progress_polls;
        let op = self.operations.get_mut(op_id)?;
        op.polls += 1;
        let polled = Polled {
            finished: op.done || op.polls > in_progress_polls,
            fails: op.fails,
            put_of: op.put.then(|| op.resource_id.clone()).flatten(),
        };
        if polled.finished && !op.done {
            self.complete(op_id);
        }
        Some(polled)
    }

    /// A GET of resource `id`, which polls its running operation when that answered in
    /// [`LroStyle::ProvisioningState`] style: whether the operation still runs after it.
    fn poll_by_get(&mut self, id: &str) -> bool {
        let key = world::key(id);
        let running = self
            .operations
            .iter()
            .find(|(_, o)| {
                !o.done
                    && o.style == LroStyle::ProvisioningState
                    && o.resource_id.as_deref().map(world::key) == Some(key.clone())
            })
            .map(|(op_id, _)| op_id.clone());
        running
            .and_then(|op_id| self.poll(&op_id))
            .is_some_and(|p| !p.finished)
    }

    fn complete(&mut self, op_id: &str) {
        if let Some(op) = self.operations.get_mut(op_id) {
            op.done = true;
            if op.deleting.take().is_some() {
                return;
            }
            let state = if op.fails { "Failed" } else { "Succeeded" };
            if let Some(rid) = op.resource_id.clone() {
                self.world.set_provisioning_state(&rid, state);
            }
        }
    }

    /// The resources whose DELETE's operation still runs (see [`Operation::deleting`]).
    fn being_deleted(&self) -> impl Iterator<Item = &Value> {
        self.operations
            .values()
            .filter(|o| !o.done)
            .filter_map(|o| o.deleting.as_ref())
    }

    /// `id` while its DELETE's operation runs.
    fn being_deleted_as(&self, id: &str) -> Option<Value> {
        self.being_deleted()
            .find(|v| {
                v.get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|i| i.eq_ignore_ascii_case(id))
            })
            .cloned()
    }

    /// The resources of collection `collection_id` whose DELETE's operation still runs.
    fn being_deleted_in(&self, collection_id: &str) -> Vec<Value> {
        let prefix = format!("{}/", world::key(collection_id));
        self.being_deleted()
            .filter(|v| {
                v.get("id")
                    .and_then(Value::as_str)
                    .map(world::key)
                    .is_some_and(|k| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
            })
            .cloned()
            .collect()
    }

    /// The running operation that a write to `id` must wait for: one on `id` itself or on a resource `id`
    /// belongs to (a scale set, for its instance).
    fn operation_blocking(&self, id: &str) -> Option<&str> {
        let id = world::key(id);
        self.operations
            .values()
            .filter(|o| !o.done)
            .filter_map(|o| o.resource_id.as_deref())
            .find(|rid| {
                let rid = world::key(rid);
                id == rid || id.starts_with(&format!("{rid}/"))
            })
    }

    /// What a test wants to see to assert that nothing leaked.
    pub fn inventory(&mut self) -> Value {
        self.settle();
        let mut resources = self.world.resource_ids();
        resources.extend(
            self.being_deleted()
                .filter_map(|v| v.get("id").and_then(Value::as_str).map(str::to_owned)),
        );
        json!({
            "resources": resources,
            "privateAddresses": addresses_json(self.world.subnet_allocations()),
            "publicBlocks": self.world.public_allocations().into_iter().map(|(n, o)| json!({"block": n, "owner": o})).collect::<Vec<_>>(),
            "prefixAddresses": addresses_json(self.world.prefix_allocations()),
            "pendingOperations": self.operations.values().filter(|o| !o.done).count(),
        })
    }
}

/// Addresses handed out of each pool (a subnet, a prefix), as `{pool: [{"ip", "owner"}]}`.
fn addresses_json(pools: BTreeMap<String, Vec<(Ipv4Addr, String)>>) -> Value {
    pools
        .into_iter()
        .map(|(pool, addresses)| {
            let listed = addresses
                .into_iter()
                .map(|(ip, owner)| json!({"ip": ip, "owner": owner}))
                .collect::<Vec<_>>();
            (pool, json!(listed))
        })
        .collect()
}

/// ARM-style write throttling: at most `max_writes` writes per sliding `window_ms`; the rest get 429
/// `SubscriptionRequestsThrottled` with `Retry-After` until the window frees up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WriteLimit {
    pub max_writes: u32,
    pub window_ms: u64,
}

impl SimState {
    /// Spends one write from the budget, or returns the 429 to answer with.
    fn take_write_budget(&mut self) -> Option<FaultSpec> {
        let limit = self.write_limit?;
        let window = Duration::from_millis(limit.window_ms);
        let now = Instant::now();
        while self
            .write_times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.write_times.pop_front();
        }
        if self.write_times.len() < limit.max_writes as usize {
            self.write_times.push_back(now);
            return None;
        }
        let wait = self
            .write_times
            .front()
            .map_or(window, |t| window.saturating_sub(now.duration_since(*t)));
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        Some(FaultSpec {
            method: None,
            path_regex: String::new(),
            count: 1,
            status: 429,
            code: "SubscriptionRequestsThrottled".into(),
            message: Some(format!(
                "Number of write requests for subscription exceeded the limit of {} per {} ms. Retry after {wait_ms} ms.",
                limit.max_writes, limit.window_ms
            )),
            retry_after_seconds: Some(wait_ms.div_ceil(1000)),
            retry_after_ms: Some(wait_ms),
            latency_ms: None,
            after_apply: false,
            concurrent_patch: None,
        })
    }
}

/// Builds the router; `state` must already hold `base_url`.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(aad_token))
        .route("/metadata/identity/oauth2/token", get(imds_token))
        .route("/metadata/instance", get(imds_instance_by_header))
        .route("/metadata/loadbalancer", get(imds_lb_by_header))
        .route("/_imds/{node}/metadata/instance", get(imds_instance_by_path))
        .route("/_imds/{node}/metadata/loadbalancer", get(imds_lb_by_path))
        .route("/_imds/{node}/metadata/identity/oauth2/token", get(imds_token))
        .route("/_sim/healthz", get(|| async { "ok" }))
        .route("/_sim/calls", get(ctl_calls).delete(ctl_clear_calls))
        .route("/_sim/faults", post(ctl_add_fault).delete(ctl_clear_faults))
        .route("/_sim/latency", put(ctl_latency))
        .route("/_sim/lro", put(ctl_lro))
        .route("/_sim/paging", put(ctl_paging))
        .route("/_sim/write-limit", put(ctl_write_limit))
        .route("/_sim/inventory", get(ctl_inventory))
        .route("/_sim/patch", post(ctl_patch))
        .fallback(arm)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

fn arm_error(e: &ArmError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, Json(e.body())).into_response();
    r.headers_mut()
        .insert("x-ms-failure-cause", HeaderValue::from_static("gateway"));
    r
}

/// Faults, latency and the call log, around every non-control request.
async fn observe(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path.starts_with("/_sim/") {
        return next.run(req).await;
    }
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let (fault, delay) = {
        let mut s = lock(&state);
        s.settle();
        let mut hit = None;
        for f in s.faults.iter_mut() {
            let method_ok = f
                .spec
                .method
                .as_deref()
                .is_none_or(|m| m.is_empty() || m.eq_ignore_ascii_case(&method));
            if f.spec.count > 0 && method_ok && f.re.is_match(&path) {
                f.spec.count -= 1;
                hit = Some(f.spec.clone());
                break;
            }
        }
        s.faults.retain(|f| f.spec.count > 0);
        let is_write = matches!(method.as_str(), "PUT" | "DELETE" | "PATCH" | "POST")
            && path.starts_with("/subscriptions/");
        if hit.is_none() && is_write {
            hit = s.take_write_budget();
        }
        if let Some(patch) = hit.as_ref().and_then(|f| f.concurrent_patch.as_ref()) {
            // A resource that does not exist has nobody racing on it: nothing to change.
            let _ = s.world.patch_resource(&path, patch);
        }
        let extra = hit
            .as_ref()
            .and_then(|f| f.latency_ms)
            .map(Duration::from_millis)
            .unwrap_or_default();
        (hit, s.latency + extra)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = match fault.filter(|f| f.status >= 400) {
        Some(f) => {
            if f.after_apply {
                let _applied = next.run(req).await;
            }
            let message = f
                .message
                .clone()
                .unwrap_or_else(|| format!("Injected fault {} for {method} {path}", f.code));
            let mut r = arm_error(&ArmError::new(f.status, f.code.clone(), message));
            if let Some(s) = f.retry_after_seconds
                && let Ok(v) = HeaderValue::from_str(&s.to_string())
            {
                r.headers_mut().insert("retry-after", v);
            }
            if let Some(ms) = f.retry_after_ms
                && let Ok(v) = HeaderValue::from_str(&ms.to_string())
            {
                r.headers_mut().insert("retry-after-ms", v);
            }
            r
        }
        None => next.run(req).await,
    };
    lock(&state).calls.push(CallRecord {
        method,
        path,
        query,
        status: response.status().as_u16(),
    });
    response
}

// ------------------------------------------------------------------------------------------ AAD / IMDS

fn new_token(s: &mut SimState) -> String {
    let token = format!("sim.{}", uuid::Uuid::new_v4().simple());
    s.issued_tokens.0.insert(token.clone());
    token
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// Client-credentials flow as azure_identity's ClientSecretCredential posts it (client secret in the body),
/// plus the client-assertion variant used by workload identity.
async fn aad_token(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = lock(&state);
    if !tenant.eq_ignore_ascii_case(&s.tenant_id) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("AADSTS90002: Tenant '{tenant}' not found."),
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: grant_type must be client_credentials.",
        );
    }
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let Some(sp) = s.principals.iter().find(|p| p.client_id == client_id).cloned() else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the directory."
            ),
        );
    };
    let secret_ok = form
        .get("client_secret")
        .is_some_and(|sec| *sec == sp.client_secret);
    let assertion_ok = form.get("client_assertion_type").map(String::as_str)
        == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        && form.get("client_assertion").is_some_and(|a| !a.is_empty());
    if !secret_ok && !assertion_ok {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    if form.get("scope").is_none_or(|sc| sc.is_empty()) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS1002012: The provided value for scope is not valid.",
        );
    }
    let token = new_token(&mut s);
    Json(json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}))
        .into_response()
}

/// Managed identity token (IMDS path; also reachable as App Service `IDENTITY_ENDPOINT`).
async fn imds_token(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !headers
        .get("metadata")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()).cloned() else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    let mut s = lock(&state);
    let token = new_token(&mut s);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Json(json!({
        "access_token": token, "client_id": "sim-managed-identity", "expires_in": "86399",
        "expires_on": (now + 86399).to_string(), "ext_expires_in": "86399", "not_before": now.to_string(),
        "resource": resource, "token_type": "Bearer",
    }))
    .into_response()
}

fn node_from_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-sim-node")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn imds_guard(headers: &HeaderMap) -> Option<Response> {
    if headers
        .get("metadata")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        None
    } else {
        Some(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        ))
    }
}

async fn imds_instance_by_header(State(state): State<Shared>, headers: HeaderMap) -> Response {
    imds_instance(&state, &headers, node_from_header(&headers))
}

async fn imds_instance_by_path(
    State(state): State<Shared>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    imds_instance(&state, &headers, Some(node))
}

async fn imds_lb_by_header(State(state): State<Shared>, headers: HeaderMap) -> Response {
    imds_lb(&state, &headers, node_from_header(&headers))
}

async fn imds_lb_by_path(
    State(state): State<Shared>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Response {
    imds_lb(&state, &headers, Some(node))
}

fn imds_instance(state: &Shared, headers: &HeaderMap, node: Option<String>) -> Response {
    if let Some(r) = imds_guard(headers) {
        return r;
    }
    let s = lock(state);
    match node.and_then(|n| super::imds::instance_metadata(&s.world, &n)) {
        Some(v) => Json(v).into_response(),
        None => oauth_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "No simulated node: use /_imds/<node>/metadata/... or header x-sim-node",
        ),
    }
}

fn imds_lb(state: &Shared, headers: &HeaderMap, node: Option<String>) -> Response {
    if let Some(r) = imds_guard(headers) {
        return r;
    }
    let s = lock(state);
    match node.and_then(|n| super::imds::loadbalancer_metadata(&s.world, &n)) {
        Some(v) => Json(v).into_response(),
        None => oauth_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "No simulated node: use /_imds/<node>/metadata/... or header x-sim-node",
        ),
    }
}

// ------------------------------------------------------------------------------------------ control API

async fn ctl_calls(State(state): State<Shared>) -> Json<Vec<CallRecord>> {
    Json(lock(&state).calls())
}

async fn ctl_clear_calls(State(state): State<Shared>) -> StatusCode {
    lock(&state).clear_calls();
    StatusCode::NO_CONTENT
}

async fn ctl_add_fault(State(state): State<Shared>, Json(spec): Json<FaultSpec>) -> Response {
    match lock(&state).add_fault(spec) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn ctl_clear_faults(State(state): State<Shared>) -> StatusCode {
    lock(&state).clear_faults();
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
struct LatencyBody {
    ms: u64,
}

async fn ctl_latency(State(state): State<Shared>, Json(b): Json<LatencyBody>) -> StatusCode {
    lock(&state).latency = Duration::from_millis(b.ms);
    StatusCode::NO_CONTENT
}

async fn ctl_lro(State(state): State<Shared>, Json(b): Json<LroConfig>) -> StatusCode {
    lock(&state).lro = b;
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PagingBody {
    page_size: Option<usize>,
}

async fn ctl_paging(State(state): State<Shared>, Json(b): Json<PagingBody>) -> StatusCode {
    lock(&state).page_size = b.page_size;
    StatusCode::NO_CONTENT
}

async fn ctl_write_limit(State(state): State<Shared>, Json(b): Json<Option<WriteLimit>>) -> StatusCode {
    let mut s = lock(&state);
    s.write_limit = b;
    s.write_times.clear();
    StatusCode::NO_CONTENT
}

async fn ctl_inventory(State(state): State<Shared>) -> Json<Value> {
    Json(lock(&state).inventory())
}

#[derive(Debug, Deserialize)]
struct PatchBody {
    id: String,
    patch: Value,
}

async fn ctl_patch(State(state): State<Shared>, Json(b): Json<PatchBody>) -> Response {
    match lock(&state).world.patch_resource(&b.id, &b.patch) {
        Ok(v) => Json(v).into_response(),
        Err(e) => arm_error(&e),
    }
}

// ------------------------------------------------------------------------------------------ ARM

const NETWORK_API_VERSIONS: &[&str] = &[
    "2020-11-01",
    "2022-07-01",
    "2022-09-01",
    "2023-02-01",
    "2023-04-01",
    "2023-05-01",
    "2023-06-01",
    "2023-09-01",
    "2023-11-01",
    "2024-01-01",
    "2024-03-01",
    "2024-05-01",
    "2024-07-01",
];
const COMPUTE_API_VERSIONS: &[&str] = &[
    "2022-03-01",
    "2022-08-01",
    "2022-11-01",
    "2023-03-01",
    "2023-07-01",
    "2023-09-01",
    "2024-03-01",
    "2024-07-01",
    "2024-11-01",
];
/// Scale set NIC operations live under Microsoft.Compute but only exist in these network API versions.
const VMSS_NIC_API_VERSIONS: &[&str] = &["2017-03-30", "2018-10-01"];
const RESOURCES_API_VERSIONS: &[&str] = &["2021-04-01", "2022-09-01", "2024-03-01"];

fn check_api_version(
    version: Option<&str>,
    allowed: &[&str],
    ty: &str,
    location: &str,
) -> Result<(), ArmError> {
    match version {
        None | Some("") => Err(ArmError::bad_request(
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )),
        Some(v) if allowed.contains(&v) => Ok(()),
        // ARM itself answers a version that is no date, and one of its own types (resource groups) it does
        // not serve; a resource provider's type in a version the provider does not register is the second.
        Some(v) if !is_api_version(v) || ty.eq_ignore_ascii_case("resourceGroups") => {
            Err(ArmError::bad_request(
                "InvalidApiVersionParameter",
                format!(
                    "The api-version '{v}' is invalid. The supported versions are '{}'.",
                    allowed.join(",")
                ),
            ))
        }
        Some(v) => Err(ArmError::bad_request(
            "NoRegisteredProviderFound",
            format!(
                "No registered resource provider found for location '{location}' and API version '{v}' for type '{ty}'. The supported api-versions are '{}'.",
                allowed.join(", ")
            ),
        )),
    }
}

/// `YYYY-MM-DD`, optionally followed by `-preview` (or another `-suffix`).
fn is_api_version(v: &str) -> bool {
    let (date, suffix) = v.split_at(v.len().min(10));
    let b = date.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && (suffix.is_empty() || suffix.len() > 1 && suffix.starts_with('-'))
}

/// Everything of a request the ARM layer needs, parsed once.
struct ArmRequest {
    method: Method,
    segs: Vec<String>,
    lower: Vec<String>,
    api_version: Option<String>,
    if_match: Option<String>,
    if_none_match: Option<String>,
    body: Value,
    /// Request path (for `nextLink`s) and the page offset from `$skiptoken`.
    path: String,
    skip: usize,
}

async fn arm(State(state): State<Shared>, method: Method, headers: HeaderMap, req: Request) -> Response {
    let uri = req.uri().clone();
    let bytes: Bytes = match axum::body::to_bytes(req.into_body(), 16 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return arm_error(&ArmError::bad_request(
                "InvalidRequestContent",
                "Request body could not be read.",
            ));
        }
    };
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return arm_error(&ArmError::bad_request(
                    "InvalidRequestContent",
                    format!("The request content was invalid and could not be deserialized: {e}"),
                ));
            }
        }
    };
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let segs: Vec<String> = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let r = ArmRequest {
        method,
        lower: segs.iter().map(|s| s.to_ascii_lowercase()).collect(),
        segs,
        api_version: query.get("api-version").cloned(),
        if_match: header("if-match"),
        if_none_match: header("if-none-match"),
        body,
        path: uri.path().to_owned(),
        skip: query
            .get("$skiptoken")
            .or_else(|| query.get("%24skiptoken"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    };
    let mut s = lock(&state);
    if s.require_auth {
        let token = header("authorization").and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned));
        if !token.is_some_and(|t| s.issued_tokens.0.contains(&t)) {
            return arm_error(&ArmError::new(
                401,
                "InvalidAuthenticationToken",
                "The access token is missing or was not issued by the simulated AAD token endpoint.",
            ));
        }
    }
    match dispatch(&mut s, &r) {
        Ok(resp) => resp,
        Err(e) => arm_error(&e),
    }
}

fn ok_json(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, Json(v.clone())).into_response();
    if let Some(etag) = v.get("etag").and_then(Value::as_str)
        && let Ok(h) = HeaderValue::from_str(etag)
    {
        r.headers_mut().insert("etag", h);
    }
    r
}

/// List answers, split into pages of `page_size` with ARM's `nextLink` when paging is on.
struct Paging {
    size: Option<usize>,
    base: String,
}

impl Paging {
    fn list(&self, r: &ArmRequest, items: Vec<Value>) -> Response {
        let Some(size) = self.size.filter(|s| *s > 0) else {
            return list_json(items);
        };
        let page: Vec<Value> = items.iter().skip(r.skip).take(size).cloned().collect();
        let next = r.skip + size;
        let mut body = json!({"value": page});
        if next < items.len() {
            body["nextLink"] = json!(format!(
                "{}{}?api-version={}&$skiptoken={next}",
                self.base,
                r.path,
                r.api_version.as_deref().unwrap_or_default()
            ));
        }
        (StatusCode::OK, Json(body)).into_response()
    }
}

fn list_json(items: Vec<Value>) -> Response {
    (StatusCode::OK, Json(json!({"value": items}))).into_response()
}

fn dispatch(s: &mut SimState, r: &ArmRequest) -> Result<Response, ArmError> {
    let l: Vec<&str> = r.lower.iter().map(String::as_str).collect();
    let seg = |i: usize| r.segs.get(i).map(String::as_str).unwrap_or_default();
    let location = s.world.location.clone();
    match l.as_slice() {
        [
            "subscriptions",
            _,
            "providers",
            _,
            "locations",
            _,
            kind @ ("operations" | "operationresults"),
            op,
        ] => {
            s.world.check_subscription(seg(1))?;
            poll_operation(s, r, op, *kind == "operationresults")
        }
        ["subscriptions", _, "resourcegroups", _] => {
            s.world.check_subscription(seg(1))?;
            check_api_version(
                r.api_version.as_deref(),
                RESOURCES_API_VERSIONS,
                "resourceGroups",
                &location,
            )?;
            match r.method {
                Method::GET => Ok(ok_json(StatusCode::OK, &s.world.get_resource_group(seg(3))?)),
                Method::PUT => {
                    let out = s
                        .world
                        .put_resource_group(seg(3), r.body.get("location").and_then(Value::as_str));
                    let st = if out.created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    Ok(ok_json(st, &out.resource))
                }
                _ => Err(method_not_allowed(&r.method)),
            }
        }
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            ns,
            ty,
            rest @ ..,
        ] => {
            s.world.check_subscription(seg(1))?;
            let rg = seg(3).to_owned();
            let ty_name = format!("{}/{}", seg(5), seg(6));
            let is_vmss_nic =
                *ty == "virtualmachinescalesets" && rest.len() >= 4 && rest[3] == "networkinterfaces";
            let versions = match *ns {
                _ if is_vmss_nic => VMSS_NIC_API_VERSIONS,
                "microsoft.network" => NETWORK_API_VERSIONS,
                "microsoft.compute" => COMPUTE_API_VERSIONS,
                _ => {
                    return Err(ArmError::bad_request(
                        "NoRegisteredProviderFound",
                        format!("Resource provider '{}' is not simulated.", seg(5)),
                    ));
                }
            };
            check_api_version(r.api_version.as_deref(), versions, &ty_name, &location)?;
            s.world.check_rg(&rg)?;
            let names: Vec<String> = (7..r.segs.len()).map(|i| seg(i).to_owned()).collect();
            route_resource(s, r, &rg, ns, ty, rest, &names)
        }
        _ => Err(ArmError::new(
            404,
            "InvalidResourceType",
            format!("The resource path '/{}' is not simulated.", r.segs.join("/")),
        )),
    }
}

fn method_not_allowed(m: &Method) -> ArmError {
    ArmError::new(
        405,
        "MethodNotAllowed",
        format!("The HTTP method '{m}' is not supported for this resource."),
    )
}

#[allow(clippy::too_many_arguments)]
fn route_resource(
    s: &mut SimState,
    r: &ArmRequest,
    rg: &str,
    ns: &str,
    ty: &str,
    rest: &[&str],
    names: &[String],
) -> Result<Response, ArmError> {
    let page = Paging {
        size: s.page_size,
        base: s.base_url.clone(),
    };
    let w = &s.world;
    let name = names.first().map(String::as_str).unwrap_or_default();
    let rg_scope = format!(
        "/subscriptions/{}/resourceGroups/{rg}/providers",
        w.subscription_id
    );
    let routed = RESOURCE_KINDS
        .iter()
        .find(|k| k.arm_type.eq_ignore_ascii_case(&format!("{ns}/{ty}")));
    if let Some(kind) = routed {
        match (rest.len(), &r.method, kind.writes) {
            (0, &Method::GET, _) => {
                let collection = format!("{rg_scope}/{}", kind.arm_type);
                let mut listed: Vec<Value> = w
                    .list(&collection)
                    .into_iter()
                    .map(|v| (kind.shown)(w, v))
                    .collect();
                listed.extend(s.being_deleted_in(&collection));
                return Ok(page.list(r, listed));
            }
            (1, &Method::GET, None) => {
                let id = w.resource_id(rg, kind.arm_type, name);
                return Ok(ok_json(StatusCode::OK, &kind.get(w, &id)?));
            }
            (1, m, Some(writes)) => {
                let id = w.resource_id(rg, kind.arm_type, name);
                return crud(
                    s,
                    r,
                    m,
                    &id,
                    kind.provider(),
                    |w| (writes.put)(w, rg, name, r.body.clone()),
                    |w| (writes.delete)(w, rg, name),
                    |w| kind.get(w, &id),
                );
            }
            _ => {}
        }
    }
    match (ns, ty, rest.len(), &r.method) {
        // virtual networks (read-only)
        ("microsoft.network", "virtualnetworks", 1, &Method::GET) => {
            let id = w.resource_id(rg, world::VNET_TYPE, name);
            Ok(ok_json(StatusCode::OK, &w.get_or_404(&id)?))
        }
        ("microsoft.network", "virtualnetworks", 2, &Method::GET) if rest[1] == "subnets" => {
            Ok(page.list(r, w.list_subnets(rg, name)?))
        }
        ("microsoft.network", "virtualnetworks", 3, &Method::GET) if rest[1] == "subnets" => {
            Ok(ok_json(StatusCode::OK, &w.get_subnet(rg, name, &names[2])?))
        }
        // scale set instances
        ("microsoft.compute", "virtualmachinescalesets", 2, &Method::GET) if rest[1] == "virtualmachines" => {
            Ok(page.list(
                r,
                w.list(&format!(
                    "{}/virtualMachines",
                    w.resource_id(rg, world::VMSS_TYPE, name)
                )),
            ))
        }
        ("microsoft.compute", "virtualmachinescalesets", 3, m) if rest[1] == "virtualmachines" => {
            let instance = names[2].clone();
            let id = format!(
                "{}/virtualMachines/{instance}",
                w.resource_id(rg, world::VMSS_TYPE, name)
            );
            crud(
                s,
                r,
                m,
                &id,
                "Microsoft.Compute",
                |w| w.put_vmss_vm(rg, name, &instance, r.body.clone()),
                |_| Err(not_simulated("DELETE virtualMachineScaleSets/virtualMachines")),
                |w| w.get_or_404(&id),
            )
        }
        ("microsoft.compute", "virtualmachinescalesets", 5, &Method::GET) if rest[1] == "virtualmachines" => {
            Ok(ok_json(
                StatusCode::OK,
                &w.get_vmss_nic(rg, name, &names[2], &names[4])?,
            ))
        }
        (_, _, _, m) if *m == Method::GET || *m == Method::PUT || *m == Method::DELETE => Err(ArmError::new(
            404,
            "InvalidResourceType",
            format!("The resource type '{ns}/{ty}' with this path shape is not simulated."),
        )),
        (_, _, _, m) => Err(method_not_allowed(m)),
    }
}

/// A resource type directly under a resource group: its collection lists (`GET .../<type>`), and one
/// resource is read or, with `writes`, goes through [`crud`] (ETags, long-running operations).
struct ResourceKind {
    /// The ARM type (`Microsoft.Network/loadBalancers`): routed case-insensitively, its provider is the part
    /// before the slash.
    arm_type: &'static str,
    /// How a stored resource is shown, alone or listed: with the fields ARM derives from other resources
    /// (a load balancer's backend members, a public IP's user).
    shown: fn(&World, Value) -> Value,
    writes: Option<Writes>,
}

impl ResourceKind {
    /// A kind read, written and deleted through the world's methods of that kind.
    const fn writable(
        arm_type: &'static str,
        shown: fn(&World, Value) -> Value,
        put: fn(&mut World, &str, &str, Value) -> Result<PutOutcome, ArmError>,
        delete: fn(&mut World, &str, &str) -> Result<bool, ArmError>,
    ) -> Self {
        Self {
            arm_type,
            shown,
            writes: Some(Writes { put, delete }),
        }
    }

    /// `Microsoft.Network` of `Microsoft.Network/loadBalancers`.
    fn provider(&self) -> &'static str {
        self.arm_type.split('/').next().unwrap_or(self.arm_type)
    }

    /// One resource as a GET shows it.
    fn get(&self, w: &World, id: &str) -> Result<Value, ArmError> {
        Ok((self.shown)(w, w.get_or_404(id)?))
    }
}

/// PUT and DELETE of one resource: `(world, resource group, name[, body])`.
#[derive(Clone, Copy)]
struct Writes {
    put: fn(&mut World, &str, &str, Value) -> Result<PutOutcome, ArmError>,
    delete: fn(&mut World, &str, &str) -> Result<bool, ArmError>,
}

fn as_stored(_: &World, v: Value) -> Value {
    v
}

/// The routing table of the resource types served as plain collections of a resource group.
const RESOURCE_KINDS: &[ResourceKind] = &[
    ResourceKind::writable(
        world::LB_TYPE,
        World::decorate_lb,
        World::put_load_balancer,
        World::delete_load_balancer,
    ),
    ResourceKind::writable(
        world::PREFIX_TYPE,
        World::decorate_prefix,
        World::put_public_ip_prefix,
        World::delete_public_ip_prefix,
    ),
    ResourceKind::writable(
        world::PIP_TYPE,
        World::decorate_public_ip,
        World::put_public_ip,
        World::delete_public_ip,
    ),
    ResourceKind::writable(
        world::NIC_TYPE,
        as_stored,
        World::put_network_interface,
        World::delete_network_interface,
    ),
    ResourceKind::writable(world::VMSS_TYPE, as_stored, World::put_vmss, |_, _, _| {
        Err(not_simulated("DELETE virtualMachineScaleSets"))
    }),
    ResourceKind {
        arm_type: world::VM_TYPE,
        shown: as_stored,
        writes: None,
    },
];

fn not_simulated(what: &str) -> ArmError {
    ArmError::new(405, "OperationNotSimulated", format!("{what} is not simulated."))
}

/// GET/PUT/DELETE of one resource with ETag preconditions and long-running-operation answers.
#[allow(clippy::too_many_arguments)]
fn crud(
    s: &mut SimState,
    r: &ArmRequest,
    m: &Method,
    id: &str,
    provider: &str,
    put: impl FnOnce(&mut World) -> Result<PutOutcome, ArmError>,
    delete: impl FnOnce(&mut World) -> Result<bool, ArmError>,
    get: impl Fn(&World) -> Result<Value, ArmError>,
) -> Result<Response, ArmError> {
    match *m {
        Method::GET => {
            let running = s.poll_by_get(id);
            let mut resp = match get(&s.world) {
                Err(e) if e.status == 404 => s
                    .being_deleted_as(id)
                    .map(|v| ok_json(StatusCode::OK, &v))
                    .ok_or(e)?,
                other => ok_json(StatusCode::OK, &other?),
            };
            if running {
                retry_headers(s, &mut resp);
            }
            Ok(resp)
        }
        Method::PUT | Method::DELETE => {
            check_preconditions(&s.world, r, id)?;
            if s.lro.reject_concurrent
                && let Some(running) = s.operation_blocking(id)
            {
                return Err(another_operation_in_progress(provider, m, id, running));
            }
            if *m == Method::PUT {
                if !r.body.is_object() {
                    return Err(ArmError::bad_request(
                        "InvalidRequestContent",
                        "The request body must be a JSON object.",
                    ));
                }
                if s.record_puts {
                    let before = get(&s.world).ok();
                    s.puts.push(PutRecord {
                        id: id.to_owned(),
                        before,
                        body: r.body.clone(),
                    });
                }
                let out = put(&mut s.world)?;
                let status = if out.created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                if !s.lro.enabled {
                    return Ok(ok_json(status, &out.resource));
                }
                s.world.set_provisioning_state(id, "Updating");
                let mut body = out.resource;
                if let Some(p) = body.get_mut("properties").and_then(Value::as_object_mut) {
                    p.insert("provisioningState".into(), json!("Updating"));
                }
                let op = start_operation(s, Some(id.to_owned()), true);
                let mut resp = match s.lro.style {
                    LroStyle::Location => StatusCode::ACCEPTED.into_response(),
                    LroStyle::AsyncOperation | LroStyle::ProvisioningState => ok_json(status, &body),
                };
                let headers = match s.lro.style {
                    LroStyle::AsyncOperation => Polling::ASYNC_OPERATION,
                    LroStyle::Location => Polling::LOCATION,
                    LroStyle::ProvisioningState => Polling::NONE,
                };
                lro_headers(s, &mut resp, provider, &op, r.api_version.as_deref(), headers);
                Ok(resp)
            } else {
                let shown = get(&s.world).ok();
                if !delete(&mut s.world)? {
                    return Ok(StatusCode::NO_CONTENT.into_response());
                }
                if !s.lro.enabled {
                    return Ok(StatusCode::OK.into_response());
                }
                let op = start_operation(s, Some(id.to_owned()), false);
                if let (Some(mut shown), Some(o)) = (shown, s.operations.get_mut(&op)) {
                    if let Some(p) = shown.get_mut("properties").and_then(Value::as_object_mut) {
                        p.insert("provisioningState".into(), json!("Deleting"));
                    }
                    o.deleting = Some(shown);
                }
                let mut resp = StatusCode::ACCEPTED.into_response();
                let headers = match s.lro.style {
                    LroStyle::AsyncOperation => Polling::BOTH,
                    LroStyle::Location => Polling::LOCATION,
                    LroStyle::ProvisioningState => Polling::NONE,
                };
                lro_headers(s, &mut resp, provider, &op, r.api_version.as_deref(), headers);
                Ok(resp)
            }
        }
        _ => Err(method_not_allowed(m)),
    }
}

/// 409 for a write to `id` while operation on `running` (`id` or the resource it belongs to) runs, as the
/// resource provider answers it.
fn another_operation_in_progress(provider: &str, m: &Method, id: &str, running: &str) -> ArmError {
    if provider.eq_ignore_ascii_case("Microsoft.Compute") {
        ArmError::new(
            409,
            "OperationNotAllowed",
            format!(
                "Operation '{m}' is not allowed on {id} since another operation is in progress on {running}."
            ),
        )
    } else {
        ArmError::new(
            409,
            "AnotherOperationInProgress",
            format!(
                "Another operation on resource {id} or a resource it depends on is in progress; retry later."
            ),
        )
    }
}

fn check_preconditions(w: &World, r: &ArmRequest, id: &str) -> Result<(), ArmError> {
    let current = w.etag(id);
    let failed = || {
        ArmError::new(
            412,
            "PreconditionFailed",
            format!("The condition specified using HTTP conditional header(s) is not met for resource {id}."),
        )
    };
    if let Some(im) = r.if_match.as_deref() {
        let ok = match (&current, im.trim()) {
            (None, _) => false,
            (Some(_), "*") => true,
            (Some(c), given) => given.split(',').any(|g| g.trim() == c),
        };
        if !ok {
            return Err(failed());
        }
    }
    if r.if_none_match.as_deref().map(str::trim) == Some("*") && current.is_some() {
        return Err(failed());
    }
    Ok(())
}

/// Starts the operation of a PUT (`put`) or DELETE of `resource_id`.
fn start_operation(s: &mut SimState, resource_id: Option<String>, put: bool) -> String {
    let op = uuid::Uuid::new_v4().to_string();
    let fails = s.lro.fail_next > 0;
    s.lro.fail_next = s.lro.fail_next.saturating_sub(1);
    s.operations.insert(
        op.clone(),
        Operation {
            resource_id,
            put,
            deleting: None,
            polls: 0,
            started: Instant::now(),
            done: false,
            fails,
            style: s.lro.style,
        },
    );
    op
}

fn retry_headers(s: &SimState, resp: &mut Response) {
    let ms = s.lro.retry_after_ms;
    if let Ok(v) = HeaderValue::from_str(&ms.to_string()) {
        resp.headers_mut().insert("retry-after-ms", v);
    }
    if let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string()) {
        resp.headers_mut().insert("retry-after", v);
    }
}

/// Which polling headers a write's answer carries.
#[derive(Clone, Copy)]
struct Polling {
    async_operation: bool,
    location: bool,
}

impl Polling {
    const ASYNC_OPERATION: Self = Self {
        async_operation: true,
        location: false,
    };
    const LOCATION: Self = Self {
        async_operation: false,
        location: true,
    };
    const BOTH: Self = Self {
        async_operation: true,
        location: true,
    };
    const NONE: Self = Self {
        async_operation: false,
        location: false,
    };
}

/// The polling headers `polling` asks for, naming operation `op`, and the retry headers.
fn lro_headers(
    s: &SimState,
    resp: &mut Response,
    provider: &str,
    op: &str,
    api: Option<&str>,
    polling: Polling,
) {
    let base = format!(
        "{}/subscriptions/{}/providers/{provider}/locations/{}",
        s.base_url, s.world.subscription_id, s.world.location
    );
    let api = api.unwrap_or_default();
    if polling.async_operation
        && let Ok(v) = HeaderValue::from_str(&format!("{base}/operations/{op}?api-version={api}"))
    {
        resp.headers_mut().insert("azure-asyncoperation", v);
    }
    if polling.location
        && let Ok(v) = HeaderValue::from_str(&format!("{base}/operationResults/{op}?api-version={api}"))
    {
        resp.headers_mut().insert("location", v);
    }
    retry_headers(s, resp);
}

fn operation_failure() -> ArmError {
    ArmError::new(
        500,
        "InternalServerError",
        "The simulated long-running operation failed (injected via LroConfig.fail_next).",
    )
}

/// Where a polled operation is.
struct Polled {
    finished: bool,
    fails: bool,
    /// The resource a PUT's operation writes (`None`: a DELETE's).
    put_of: Option<String>,
}

/// The error a failed operation's Location answers with: `status`, with its reason as the code
/// (`BadRequest`, `InternalServerError`, ...).
fn location_failure(status: u16) -> ArmError {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let code: String = status
        .canonical_reason()
        .unwrap_or("BadRequest")
        .split_whitespace()
        .collect();
    ArmError {
        status: status.as_u16(),
        code,
        ..operation_failure()
    }
}

/// A GET of resource `id` (at the api-version of `r`, the poll of the operation that wrote it), answered as
/// any GET of it is.
fn get_resource(s: &mut SimState, r: &ArmRequest, id: &str) -> Result<Response, ArmError> {
    let segs: Vec<String> = id
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let get = ArmRequest {
        method: Method::GET,
        lower: segs.iter().map(|p| p.to_ascii_lowercase()).collect(),
        segs,
        api_version: r.api_version.clone(),
        if_match: None,
        if_none_match: None,
        body: Value::Null,
        path: id.to_owned(),
        skip: 0,
    };
    dispatch(s, &get)
}

/// Azure-AsyncOperation answers `{"status": …}`; the Location (operationResults) URL answers 202 while
/// running and then what the write would have answered synchronously, as ARM's contract has it
/// (<https://github.com/Azure/azure-resource-manager-rpc/blob/master/v1.0/async-api-reference.md>): a PUT's
/// the resource (200), a DELETE's 204, a failed operation's the error
/// ([`LroConfig::location_failure_status`]).
fn poll_operation(
    s: &mut SimState,
    r: &ArmRequest,
    op_id: &str,
    location_style: bool,
) -> Result<Response, ArmError> {
    let Polled {
        finished,
        fails,
        put_of,
    } = s
        .poll(op_id)
        .ok_or_else(|| ArmError::not_found(&format!("operation {op_id}")))?;
    let mut resp = if location_style {
        match (finished, fails, put_of) {
            (false, _, _) => StatusCode::ACCEPTED.into_response(),
            (true, false, Some(id)) => get_resource(s, r, &id)?,
            (true, false, None) => StatusCode::NO_CONTENT.into_response(),
            (true, true, _) => arm_error(&location_failure(s.lro.location_failure_status)),
        }
    } else {
        let body = match (finished, fails) {
            (false, _) => json!({"name": op_id, "status": "InProgress"}),
            (true, false) => json!({"name": op_id, "status": "Succeeded"}),
            (true, true) => {
                json!({"name": op_id, "status": "Failed", "error": operation_failure().body()["error"].clone()})
            }
        };
        (StatusCode::OK, Json(body)).into_response()
    };
    if !finished {
        retry_headers(s, &mut resp);
    }
    Ok(resp)
}
