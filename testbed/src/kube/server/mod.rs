//! HTTP handling: the shared state, authentication and responses; routing, reading (get, list, watch),
//! writing (create, update, patch, admission) and deleting are its submodules.

mod delete;
mod read;
mod routing;
mod write;

use delete::*;
use read::*;
use routing::*;
use write::*;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use hyper::body::Bytes;
use serde_json::{Value, json};

use super::admission::{self, ServiceMap};
use super::auth::{self, Attributes, User};
use super::patch;
use super::registry::{self, ResourceType};
use super::schema;
use super::selectors::{FieldSelector, LabelSelector, labels_of};
use super::status::{ApiError, ApiResult};
use super::store::{EventType, ObjKey, ResKey, State, meta_str, now, obj_key, str_at};
use super::table;

/// Server state shared by all connections.
#[derive(Debug)]
pub struct Shared {
    pub state: Mutex<State>,
    /// Configured users plus service-account tokens handed out later (`KubeSim::service_account_token`).
    pub users: RwLock<Vec<User>>,
    pub services: RwLock<ServiceMap>,
    pub addr: SocketAddr,
    pub bookmark_interval: Duration,
    /// Requests served, by (method, status code), for `/metrics`.
    pub requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Requests served, by (authenticated user, method, status code): who did what (see `KubeSim::requests_by`).
    pub requests_by_user: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Resource requests, by (authenticated user, verb, resource plural), counted once authorized: what a
    /// component asked for (`list` vs `watch` vs `get`), see `KubeSim::verbs_by`.
    pub verbs_by_user: Mutex<BTreeMap<(String, String, String), u64>>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn services(&self) -> ServiceMap {
        self.services
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Built-in kinds plus one per stored CRD.
    pub fn types(&self) -> Vec<ResourceType> {
        let st = self.lock();
        types_of(&st)
    }
}

pub fn crd_key() -> ResKey {
    ("apiextensions.k8s.io".into(), "customresourcedefinitions".into())
}

fn types_of(st: &State) -> Vec<ResourceType> {
    let mut t = registry::builtins();
    t.extend(
        st.list(&crd_key(), None)
            .into_iter()
            .filter_map(registry::from_crd),
    );
    t
}

/// A parsed request and the server it came to: what every handler works with.
struct Ctx {
    shared: Arc<Shared>,
    method: Method,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
    user: User,
}

impl Ctx {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.q(k), Some("true" | "1"))
    }
    fn dry_run(&self) -> bool {
        self.q("dryRun") == Some("All")
    }
    /// The stored object `t` addresses, as it is now (`None`: there is none).
    fn stored(&self, t: &Target) -> Option<Value> {
        self.shared.lock().get(&t.res(), &t.key()).cloned()
    }
    /// The stored object `t` addresses, or kube-apiserver's NotFound.
    fn live(&self, t: &Target) -> ApiResult<Value> {
        self.stored(t).ok_or_else(|| t.not_found())
    }
}

/// The resource a request addresses.
#[derive(Debug, Clone)]
struct Target {
    rt: ResourceType,
    version: String,
    ns: String,
    name: String,
    sub: String,
}

impl Target {
    fn res(&self) -> ResKey {
        (self.rt.group.clone(), self.rt.plural.clone())
    }
    fn key(&self) -> ObjKey {
        (
            if self.rt.namespaced {
                self.ns.clone()
            } else {
                String::new()
            },
            self.name.clone(),
        )
    }
    fn api_version(&self) -> String {
        self.rt.api_version(&self.version)
    }
    fn not_found(&self) -> ApiError {
        ApiError::not_found(&self.rt.group, &self.rt.plural, &self.name)
    }
    /// The subresource addressed (`status`), if any.
    fn subresource(&self) -> Option<&str> {
        (!self.sub.is_empty()).then_some(self.sub.as_str())
    }
}

fn json_response(code: u16, body: &Value, warnings: &[String]) -> Response {
    let mut resp = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    append_warnings(&mut resp, warnings);
    resp
}

/// Adds each warning as a `Warning: 299 - "<text>"` header, as kube-apiserver sends them (kubectl and
/// kube-rs show them); a warning that cannot be a header value is dropped.
fn append_warnings(resp: &mut Response, warnings: &[String]) {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
}

fn error_response(e: &ApiError, warnings: &[String]) -> Response {
    json_response(e.code, &e.to_status(), warnings)
}

/// Entry point for every request.
pub async fn handle(shared: Arc<Shared>, req: http::Request<Body>) -> Response {
    let method = req.method().to_string();
    let user = authenticate(&shared, req.headers());
    let name = user.as_ref().map(|u| u.name.clone());
    let resp = handle_inner(&shared, req, user).await;
    let code = resp.status().as_u16();
    if let Some(name) = name {
        let mut by_user = shared.requests_by_user.lock().unwrap_or_else(|p| p.into_inner());
        *by_user.entry((name, method.clone(), code)).or_default() += 1;
    }
    let mut counts = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
    *counts.entry((method, code)).or_default() += 1;
    resp
}

/// Prometheus text exposition of the simulator's counters.
fn metrics(shared: &Shared) -> String {
    let mut out = String::from(
        "# HELP kubesim_requests_total API requests served, by method and status code.\n# TYPE kubesim_requests_total counter\n",
    );
    for ((m, c), n) in shared.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        out.push_str(&format!(
            "kubesim_requests_total{{method=\"{m}\",code=\"{c}\"}} {n}\n"
        ));
    }
    out.push_str(
        "# HELP kubesim_requests_by_user_total API requests served to authenticated users, by user, method and status code.\n# TYPE kubesim_requests_by_user_total counter\n",
    );
    for ((u, m, c), n) in shared
        .requests_by_user
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        out.push_str(&format!(
            "kubesim_requests_by_user_total{{user=\"{}\",method=\"{m}\",code=\"{c}\"}} {n}\n",
            label_value(u)
        ));
    }
    let st = shared.lock();
    out.push_str("# HELP kubesim_resource_version The current global resourceVersion.\n# TYPE kubesim_resource_version gauge\n");
    out.push_str(&format!("kubesim_resource_version {}\n", st.rv));
    out.push_str("# HELP kubesim_objects Stored objects, by resource.\n# TYPE kubesim_objects gauge\n");
    for ((g, p), m) in &st.objects {
        out.push_str(&format!(
            "kubesim_objects{{resource=\"{}\"}} {}\n",
            super::status::qualified(g, p),
            m.len()
        ));
    }
    out
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The user whose bearer token the request carries, if the token is one kube-sim issued.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Option<User> {
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)?;
    shared
        .users
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|u| u.token == token)
        .cloned()
}
