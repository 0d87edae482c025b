//! HTTP handling: routing, authentication, authorization, the verbs, admission and watch streaming.

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
use super::store::{EventType, ObjKey, ResKey, State, meta_str, now, obj_key};
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

/// A parsed request.
struct Ctx {
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
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
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

async fn handle_inner(shared: &Arc<Shared>, req: http::Request<Body>, user: Option<User>) -> Response {
    let shared = shared.clone();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_string();
    if path == "/metrics" {
        let mut r = Response::new(Body::from(metrics(&shared)));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return r;
    }
    if matches!(path.as_str(), "/healthz" | "/readyz" | "/livez") {
        let mut r = Response::new(Body::from("ok"));
        r.headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return r;
    }
    let Some(user) = user else {
        return error_response(&ApiError::unauthorized(), &[]);
    };
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::bad_request(format!("reading body: {e}")), &[]),
    };
    let query: HashMap<String, String> =
        form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let ctx = Ctx {
        method: parts.method,
        query,
        headers: parts.headers,
        body,
        user,
    };
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let mut warnings = Vec::new();
    match route(&shared, &ctx, &segs, &mut warnings).await {
        Ok(r) => {
            let mut r = r;
            for w in &warnings {
                let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
                if let Ok(v) = HeaderValue::from_str(&text) {
                    r.headers_mut().append("warning", v);
                }
            }
            r
        }
        Err(e) => error_response(&e, &warnings),
    }
}

fn discovery_ok(v: Value) -> ApiResult<Response> {
    Ok(json_response(200, &v, &[]))
}

async fn route(
    shared: &Arc<Shared>,
    ctx: &Ctx,
    segs: &[String],
    warnings: &mut Vec<String>,
) -> ApiResult<Response> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get = ctx.method == Method::GET;
    match s.as_slice() {
        ["version"] if get => discovery_ok(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-kubesim", "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
            "platform": "linux/amd64",
        })),
        ["api"] if get => discovery_ok(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}],
        })),
        ["apis"] if get => discovery_ok(
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": registry::groups(&shared.types())}),
        ),
        ["api", "v1"] if get => discovery_ok(registry::resource_list("", "v1", &shared.types())),
        ["apis", g] if get => {
            let types = shared.types();
            if !types.iter().any(|t| t.group == *g) {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ));
            }
            discovery_ok(registry::group(g, &types))
        }
        ["apis", g, v] if get => {
            let types = shared.types();
            if !types.iter().any(|t| t.group == *g && t.version(v).is_some()) {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ));
            }
            discovery_ok(registry::resource_list(g, v, &types))
        }
        ["openapi", "v3"] if get => discovery_ok(super::openapi::root(&shared.types())),
        ["openapi", "v3", rest @ ..] if get => {
            let gv = rest.join("/");
            super::openapi::group_version(&shared.types(), &gv)
                .map(|d| json_response(200, &d, &[]))
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    )
                })
        }
        ["api", "v1", rest @ ..] => resource(shared, ctx, "", "v1", rest, warnings).await,
        ["apis", g, v, rest @ ..] => resource(shared, ctx, g, v, rest, warnings).await,
        _ => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    }
}

fn parse_target(
    types: &[ResourceType],
    group: &str,
    version: &str,
    rest: &[&str],
) -> ApiResult<(Target, bool)> {
    let nf = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let (ns, tail): (&str, &[&str]) = match rest {
        ["namespaces", ns, plural, ..] if !matches!(*plural, "status" | "finalize") => (ns, &rest[2..]),
        _ => ("", rest),
    };
    let (plural, name, sub) = match tail {
        [p] => (*p, "", ""),
        [p, n] => (*p, *n, ""),
        [p, n, s] => (*p, *n, *s),
        _ => return Err(nf()),
    };
    let rt = types
        .iter()
        .find(|t| t.group == group && t.plural == plural && t.version(version).is_some())
        .ok_or_else(nf)?;
    if !ns.is_empty() && !rt.namespaced {
        return Err(nf());
    }
    if !(sub.is_empty() || sub == "status" && rt.has_status(version)) {
        return Err(nf());
    }
    let all_namespaces = rt.namespaced && ns.is_empty();
    Ok((
        Target {
            rt: rt.clone(),
            version: version.to_string(),
            ns: ns.to_string(),
            name: name.to_string(),
            sub: sub.to_string(),
        },
        all_namespaces,
    ))
}

fn verb_of(ctx: &Ctx, t: &Target) -> &'static str {
    match (&ctx.method, t.name.is_empty()) {
        (&Method::GET, true) if ctx.flag("watch") => "watch",
        (&Method::GET, true) => "list",
        (&Method::GET, false) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "deletecollection",
        (&Method::DELETE, false) => "delete",
        _ => "unknown",
    }
}

async fn resource(
    shared: &Arc<Shared>,
    ctx: &Ctx,
    group: &str,
    version: &str,
    rest: &[&str],
    warnings: &mut Vec<String>,
) -> ApiResult<Response> {
    let types = shared.types();
    let (t, all_ns) = parse_target(&types, group, version, rest)?;
    let verb = verb_of(ctx, &t);
    if verb == "unknown"
        || (t.name.is_empty() && matches!(verb, "update" | "patch"))
        || (!t.name.is_empty() && verb == "create")
    {
        return Err(ApiError::method_not_allowed());
    }
    let attrs = Attributes {
        verb: verb.to_string(),
        group: t.rt.group.clone(),
        resource: t.rt.plural.clone(),
        subresource: t.sub.clone(),
        namespace: t.ns.clone(),
        name: t.name.clone(),
    };
    if !auth::authorize(&shared.lock(), &ctx.user, &attrs) {
        let mut e = ApiError::new(403, "Forbidden", attrs.forbidden_message(&ctx.user.name));
        e.details = Some(json!({"name": t.name, "group": t.rt.group, "kind": t.rt.plural}));
        return Err(e);
    }
    {
        let mut verbs = shared.verbs_by_user.lock().unwrap_or_else(|p| p.into_inner());
        *verbs
            .entry((ctx.user.name.clone(), verb.to_string(), t.rt.plural.clone()))
            .or_default() += 1;
    }
    if all_ns && !matches!(verb, "list" | "watch" | "deletecollection") {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    match verb {
        "get" => get(shared, ctx, &t),
        "list" => list(shared, ctx, &t),
        "watch" => watch(shared, ctx, &t),
        "create" => create(shared, ctx, &t, warnings).await,
        "update" => update(shared, ctx, &t, warnings).await,
        "patch" => patch_verb(shared, ctx, &t, warnings).await,
        "delete" => delete(shared, ctx, &t, warnings).await,
        _ => delete_collection(shared, ctx, &t, warnings).await,
    }
}

/// The object as served in `version` (storage is version-agnostic; no conversion).
fn present(obj: &Value, t: &Target) -> Value {
    let mut o = obj.clone();
    o["apiVersion"] = json!(t.api_version());
    o["kind"] = json!(t.rt.kind);
    o
}

/// The representation the client asked for in `Accept`.
#[derive(Debug, Clone)]
enum Render {
    Full,
    /// `as=Table`, with the `includeObject` policy.
    Table(String),
    /// `as=PartialObjectMetadata` (kube-rs metadata watchers).
    Meta,
}

impl Render {
    fn of(ctx: &Ctx) -> Self {
        let a = accept(ctx);
        let first = a.split(',').next().unwrap_or_default();
        if first.contains("as=Table") {
            Render::Table(ctx.q("includeObject").unwrap_or("Metadata").to_string())
        } else if first.contains("as=PartialObjectMetadata") {
            Render::Meta
        } else {
            Render::Full
        }
    }

    fn one(&self, t: &Target, obj: &Value, rv: &str) -> Value {
        let o = present(obj, t);
        match self {
            Render::Full => o,
            Render::Meta => partial(&o),
            Render::Table(include) => table::table(&t.rt, &t.version, &[o], rv, include),
        }
    }
}

fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(Value::Null)})
}

fn accept(ctx: &Ctx) -> String {
    ctx.headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn get(shared: &Arc<Shared>, ctx: &Ctx, t: &Target) -> ApiResult<Response> {
    let st = shared.lock();
    let obj = st.get(&t.res(), &t.key()).ok_or_else(|| t.not_found())?;
    Ok(json_response(
        200,
        &Render::of(ctx).one(t, obj, &st.rv.to_string()),
        &[],
    ))
}

fn selectors(ctx: &Ctx) -> ApiResult<(LabelSelector, FieldSelector)> {
    Ok((
        LabelSelector::parse(ctx.q("labelSelector").unwrap_or_default())?,
        FieldSelector::parse(ctx.q("fieldSelector").unwrap_or_default())?,
    ))
}

fn list(shared: &Arc<Shared>, ctx: &Ctx, t: &Target) -> ApiResult<Response> {
    let (ls, fs) = selectors(ctx)?;
    let st = shared.lock();
    let ns = if t.ns.is_empty() {
        None
    } else {
        Some(t.ns.as_str())
    };
    let mut items: Vec<&Value> = st
        .list(&t.res(), ns)
        .into_iter()
        .filter(|o| ls.matches_object(o) && fs.matches(o))
        .collect();
    if let Some(cont) = ctx.q("continue").filter(|c| !c.is_empty()) {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cont)
            .ok()
            .and_then(|b| serde_json::from_slice::<(String, String)>(&b).ok())
            .ok_or_else(|| ApiError::bad_request("continue key is not valid: illegal base64 data"))?;
        items.retain(|o| obj_key(o) > raw);
    }
    let limit = ctx
        .q("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let mut meta = json!({"resourceVersion": st.rv.to_string()});
    if let Some(l) = limit
        && items.len() > l
    {
        let remaining = items.len() - l;
        items.truncate(l);
        if let Some(last) = items.last() {
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&obj_key(last)).unwrap_or_default());
            meta["continue"] = json!(token);
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    let objs: Vec<Value> = items.into_iter().map(|o| present(o, t)).collect();
    match Render::of(ctx) {
        Render::Table(include) => {
            let mut tbl = table::table(&t.rt, &t.version, &objs, &st.rv.to_string(), &include);
            tbl["metadata"] = meta;
            return Ok(json_response(200, &tbl, &[]));
        }
        Render::Meta => {
            let items: Vec<Value> = objs.iter().map(partial).collect();
            let body = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items});
            return Ok(json_response(200, &body, &[]));
        }
        Render::Full => {}
    }
    let body = json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.api_version(), "metadata": meta, "items": objs});
    Ok(json_response(200, &body, &[]))
}

/// Whether an object is visible to a watch (namespace + selectors).
fn visible(t: &Target, ls: &LabelSelector, fs: &FieldSelector, o: &Value) -> bool {
    (t.ns.is_empty() || meta_str(o, "namespace") == t.ns) && ls.matches_object(o) && fs.matches(o)
}

fn watch_line(etype: &str, obj: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": etype, "object": obj})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn watch(shared: &Arc<Shared>, ctx: &Ctx, t: &Target) -> ApiResult<Response> {
    let (ls, mut fs) = selectors(ctx)?;
    let mut t = t.clone();
    if !t.name.is_empty() {
        fs = FieldSelector::parse(&format!("metadata.name={}", t.name))?;
        t.name.clear();
    }
    let bookmarks = ctx.flag("allowWatchBookmarks");
    let initial_events = ctx.flag("sendInitialEvents");
    let timeout = Duration::from_secs(
        ctx.q("timeoutSeconds")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1800),
    );
    let rv_param = ctx.q("resourceVersion").unwrap_or_default().to_string();
    let render = Render::of(ctx);
    let (tx, mut rx_lines) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut backlog: Vec<Bytes> = Vec::new();
    let mut events_rx;
    let current_rv;
    {
        let st = shared.lock();
        events_rx = st.tx.subscribe();
        current_rv = st.rv;
        let snapshot = |backlog: &mut Vec<Bytes>| {
            let ns = if t.ns.is_empty() {
                None
            } else {
                Some(t.ns.as_str())
            };
            for o in st.list(&t.res(), ns) {
                if visible(&t, &ls, &fs, o) {
                    backlog.push(watch_line(
                        "ADDED",
                        &render.one(&t, o, meta_str(o, "resourceVersion")),
                    ));
                }
            }
        };
        if rv_param.is_empty() || rv_param == "0" || initial_events {
            snapshot(&mut backlog);
            if initial_events && bookmarks {
                backlog.push(watch_line(
                    "BOOKMARK",
                    &json!({"kind": t.rt.kind, "apiVersion": t.api_version(),
                        "metadata": {"resourceVersion": current_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}),
                ));
            }
        } else {
            let from: u64 = rv_param
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv_param:?}")))?;
            if from < st.compacted_rv {
                let e = ApiError::gone(format!("too old resource version: {from} ({})", st.compacted_rv));
                backlog.push(watch_line("ERROR", &e.to_status()));
                drop(st);
                let body = futures::stream::iter(backlog.into_iter().map(Ok::<_, Infallible>));
                let mut r = Response::new(Body::from_stream(body));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                return Ok(r);
            }
            for ev in st.log.iter().filter(|e| e.rv > from && e.res == t.res()) {
                if let Some(line) = event_line(&t, &ls, &fs, &render, ev) {
                    backlog.push(line);
                }
            }
        }
    }
    let kind = t.rt.kind.clone();
    let api_version = t.api_version();
    let shared2 = shared.clone();
    let interval = shared.bookmark_interval;
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    let rv = shared2.lock().rv;
                    let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}});
                    if tx.send(watch_line("BOOKMARK", &bm)).await.is_err() { return; }
                }
                ev = events_rx.recv() => match ev {
                    Ok(ev) => {
                        if ev.res != t.res() { continue; }
                        if let Some(line) = event_line(&t, &ls, &fs, &render, &ev)
                            && tx.send(line).await.is_err() { return; }
                    }
                    // Lagged or closed: end the watch; the client re-watches from its last resourceVersion.
                    Err(_) => return,
                }
            }
        }
    });
    let stream =
        futures::stream::poll_fn(move |cx| rx_lines.poll_recv(cx).map(|o| o.map(Ok::<_, Infallible>)));
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// The watch line for a stored event, translating selector transitions into ADDED/DELETED like the cacher.
fn event_line(
    t: &Target,
    ls: &LabelSelector,
    fs: &FieldSelector,
    render: &Render,
    ev: &super::store::Event,
) -> Option<Bytes> {
    let now_visible = visible(t, ls, fs, &ev.object);
    let was_visible = ev.old.as_ref().is_some_and(|o| visible(t, ls, fs, o));
    let etype = match ev.etype {
        EventType::Added if now_visible => "ADDED",
        EventType::Deleted if now_visible => "DELETED",
        EventType::Modified if now_visible && was_visible => "MODIFIED",
        EventType::Modified if now_visible => "ADDED",
        EventType::Modified if was_visible => "DELETED",
        _ => return None,
    };
    Some(watch_line(etype, &render.one(t, &ev.object, &ev.rv.to_string())))
}

fn parse_body(ctx: &Ctx) -> ApiResult<Value> {
    let ct = ctx
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    // Protobuf (what kubectl's typed commands such as `kubectl create namespace` send) and CBOR are not
    // decoded: refused the way kube-apiserver refuses a media type it does not accept, naming the ones it does.
    if !ct.contains("json") && !ct.contains("yaml") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
        ));
    }
    if ct.contains("yaml") {
        serde_yaml::from_slice(&ctx.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(&ctx.body).map_err(|e| {
            ApiError::bad_request(format!("the body of the request was in an unknown format: {e}"))
        })
    }
}

/// Checks `apiVersion`/`kind` of a request body against the endpoint.
fn check_type(t: &Target, obj: &Value) -> ApiResult<()> {
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    if (!av.is_empty() && av != t.api_version()) || (!kind.is_empty() && kind != t.rt.kind) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            t.api_version()
        )));
    }
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    Ok(())
}

static DNS1123: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .unwrap_or_else(|_| unreachable!())
});

/// Server-side validation: names, CRD schema, CRD spec sanity.
fn validate(t: &Target, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    let name = meta_str(obj, "name");
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push((
            "metadata.name".to_string(),
            "Required value: name or generateName is required".to_string(),
        ));
    } else if name.len() > 253 || !DNS1123.is_match(name) {
        causes.push((
            "metadata.name".to_string(),
            format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"),
        ));
    }
    if let Some(old) = old {
        causes.extend(builtin_update_causes(t, obj, old));
    }
    if let Some(schema) = t.rt.version(&t.version).and_then(|v| v.schema.as_ref()) {
        causes.extend(schema::validate(obj, schema));
        if causes.is_empty() {
            causes.extend(super::cel::validate(obj, old, schema));
        }
    }
    if t.rt.group == "apiextensions.k8s.io" && t.rt.plural == "customresourcedefinitions" {
        let group = obj
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let plural = obj
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if registry::from_crd(obj).is_none() {
            causes.push((
                "spec".into(),
                "Required value: group, names.plural, names.kind and versions are required".into(),
            ));
        } else if name != format!("{plural}.{group}") {
            causes.push((
                "metadata.name".into(),
                format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
            ));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&t.rt.group, &t.rt.kind, name, &causes))
    }
}

/// Immutable fields of the core kinds our components write, as kube-apiserver's `ValidateSecretUpdate` and
/// `ValidateConfigMapUpdate` check them: a Secret's `type`, and the contents of a Secret or ConfigMap
/// marked `immutable: true` (which cannot be unset either).
fn builtin_update_causes(t: &Target, obj: &Value, old: &Value) -> Vec<(String, String)> {
    let contents: &[&str] = match (t.rt.group.as_str(), t.rt.plural.as_str()) {
        ("", "secrets") => &["data"],
        ("", "configmaps") => &["data", "binaryData"],
        _ => return Vec::new(),
    };
    let mut causes = Vec::new();
    if t.rt.plural == "secrets" && obj.get("type") != old.get("type") {
        let new_type = obj.get("type").and_then(Value::as_str).unwrap_or_default();
        causes.push((
            "type".to_string(),
            format!("Invalid value: \"{new_type}\": field is immutable"),
        ));
    }
    let immutable = |o: &Value| o.get("immutable").and_then(Value::as_bool) == Some(true);
    if immutable(old) {
        const FORBIDDEN: &str = "Forbidden: field is immutable when `immutable` is set";
        if !immutable(obj) {
            causes.push(("immutable".to_string(), FORBIDDEN.to_string()));
        }
        // Absent, null and empty maps are the same contents.
        let field = |o: &Value, f: &str| {
            o.get(f)
                .filter(|v| v.as_object().is_some_and(|m| !m.is_empty()))
                .cloned()
        };
        for f in contents {
            if field(obj, f) != field(old, f) {
                causes.push(((*f).to_string(), FORBIDDEN.to_string()));
            }
        }
    }
    causes
}

/// Defaulting and pruning from the CRD schema; strict field validation turns pruned fields into errors.
fn default_and_prune(ctx: &Ctx, t: &Target, obj: &mut Value, warnings: &mut Vec<String>) -> ApiResult<()> {
    let Some(schema) = t.rt.version(&t.version).and_then(|v| v.schema.as_ref()) else {
        return Ok(());
    };
    schema::apply_defaults(obj, schema);
    let pruned = schema::prune_object(obj, schema);
    if pruned.is_empty() {
        return Ok(());
    }
    match ctx.q("fieldValidation") {
        Some("Strict") => Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            t.rt.kind,
            t.version,
            t.rt.kind,
            pruned
                .iter()
                .map(|p| format!("unknown field \"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        Some("Warn") => {
            warnings.extend(pruned.iter().map(|p| format!("unknown field \"{p}\"")));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Labels of a namespace, for webhook namespaceSelectors.
fn namespace_labels(shared: &Shared, t: &Target) -> Option<BTreeMap<String, String>> {
    if !t.rt.namespaced {
        return None;
    }
    let st = shared.lock();
    Some(
        st.get(
            &(String::new(), "namespaces".into()),
            &(String::new(), t.ns.clone()),
        )
        .map(labels_of)
        .unwrap_or_default(),
    )
}

fn webhook_configs(shared: &Shared, plural: &str) -> Vec<Value> {
    let st = shared.lock();
    st.list(&("admissionregistration.k8s.io".into(), plural.into()), None)
        .into_iter()
        .cloned()
        .collect()
}

fn options(kind: &str, ctx: &Ctx) -> Value {
    let mut o = json!({"kind": kind, "apiVersion": "meta.k8s.io/v1"});
    if let Some(fm) = ctx.q("fieldManager") {
        o["fieldManager"] = json!(fm);
    }
    if ctx.dry_run() {
        o["dryRun"] = json!(["All"]);
    }
    o
}

/// Built-in defaulting: Namespaces always carry `kubernetes.io/metadata.name` (webhook namespaceSelectors rely
/// on it); a Secret without a `type` is `Opaque`.
fn default_builtin(t: &Target, obj: &mut Value) {
    if t.rt.group.is_empty() && t.rt.plural == "namespaces" {
        let name = meta_str(obj, "name").to_string();
        if !name.is_empty() {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        }
    }
    if t.rt.group.is_empty() && t.rt.plural == "secrets" {
        fold_string_data(obj);
        if obj.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
            obj["type"] = json!("Opaque");
        }
    }
}

/// kube-apiserver folds a Secret's write-only `stringData` into `data` (base64, `stringData` winning on
/// conflicts) and never stores or returns `stringData`.
fn fold_string_data(obj: &mut Value) {
    use base64::Engine as _;
    let Some(map) = obj.as_object_mut() else { return };
    let Some(Value::Object(string_data)) = map.remove("stringData") else {
        return;
    };
    if !map.get("data").is_some_and(Value::is_object) {
        map.insert("data".into(), json!({}));
    }
    if let Some(Value::Object(data)) = map.get_mut("data") {
        for (k, v) in string_data {
            let text = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            data.insert(
                k,
                Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
}

/// Mutating webhooks, re-defaulting, validation, validating webhooks: the admission chain.
async fn admit(
    shared: &Shared,
    ctx: &Ctx,
    t: &Target,
    operation: &str,
    old: Option<&Value>,
    mut obj: Value,
    warnings: &mut Vec<String>,
) -> ApiResult<Value> {
    default_and_prune(ctx, t, &mut obj, warnings)?;
    default_builtin(t, &mut obj);
    let name = meta_str(&obj, "name").to_string();
    let opts_kind = match operation {
        "CREATE" => "CreateOptions",
        "UPDATE" if ctx.method == Method::PATCH => "PatchOptions",
        _ => "UpdateOptions",
    };
    let old_presented = old.map(|o| present(o, t));
    let req = admission::Request {
        operation,
        rt: &t.rt,
        version: &t.version,
        subresource: &t.sub,
        name: &name,
        namespace: if t.rt.namespaced { &t.ns } else { "" },
        old: old_presented.as_ref(),
        user: &ctx.user,
        dry_run: ctx.dry_run(),
        options: options(opts_kind, ctx),
        namespace_labels: namespace_labels(shared, t),
    };
    let services = shared.services();
    let mut o = Some(present(&obj, t));
    admission::run(
        &webhook_configs(shared, "mutatingwebhookconfigurations"),
        true,
        &req,
        &mut o,
        &services,
        warnings,
    )
    .await?;
    let mut obj = o.unwrap_or(obj);
    default_and_prune(ctx, t, &mut obj, warnings)?;
    default_builtin(t, &mut obj);
    validate(t, &obj, old)?;
    let mut o = Some(obj);
    admission::run(
        &webhook_configs(shared, "validatingwebhookconfigurations"),
        false,
        &req,
        &mut o,
        &services,
        warnings,
    )
    .await?;
    o.ok_or_else(|| ApiError::internal("object vanished during admission"))
}

/// Strips fields only the server sets.
fn clear_system_fields(obj: &mut Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
        ] {
            m.remove(f);
        }
    }
}

/// The field manager of a non-apply write: `fieldManager`, else the User-Agent's product, like kube-apiserver.
fn update_manager(ctx: &Ctx) -> String {
    if let Some(m) = ctx.q("fieldManager").filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    let ua = ctx
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    ua.split('/')
        .next()
        .unwrap_or("unknown")
        .chars()
        .take(128)
        .collect()
}

fn random_suffix() -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    u.chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(5)
        .collect()
}

async fn create(
    shared: &Arc<Shared>,
    ctx: &Ctx,
    t: &Target,
    warnings: &mut Vec<String>,
) -> ApiResult<Response> {
    if !t.sub.is_empty() {
        return Err(ApiError::method_not_allowed());
    }
    let mut obj = parse_body(ctx)?;
    check_type(t, &obj)?;
    obj["apiVersion"] = json!(t.api_version());
    obj["kind"] = json!(t.rt.kind);
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    clear_system_fields(&mut obj);
    if t.rt.namespaced {
        let body_ns = meta_str(&obj, "namespace");
        if !body_ns.is_empty() && body_ns != t.ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        obj["metadata"]["namespace"] = json!(t.ns);
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    if meta_str(&obj, "name").is_empty() {
        let gen_name = meta_str(&obj, "generateName").to_string();
        if !gen_name.is_empty() {
            obj["metadata"]["name"] = json!(format!("{gen_name}{}", random_suffix()));
        }
    }
    if t.rt.has_status(&t.version)
        && t.rt.crd
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    let (stored, code) = create_admitted(shared, ctx, t, obj, warnings, true).await?;
    Ok(json_response(code, &present(&stored, t), warnings))
}

/// Admission + commit of a new object (shared by POST and apply-creates).
async fn create_admitted(
    shared: &Arc<Shared>,
    ctx: &Ctx,
    t: &Target,
    obj: Value,
    warnings: &mut Vec<String>,
    record_manager: bool,
) -> ApiResult<(Value, u16)> {
    let t = &Target {
        name: meta_str(&obj, "name").to_string(),
        ..t.clone()
    };
    let mut obj = admit(shared, ctx, t, "CREATE", None, obj, warnings).await?;
    if record_manager {
        patch::record_update(
            None,
            &mut obj,
            &update_manager(ctx),
            None,
            &t.api_version(),
            &now(),
        );
    }
    let mut st = shared.lock();
    if t.rt.namespaced {
        let ns = st.get(
            &(String::new(), "namespaces".into()),
            &(String::new(), t.ns.clone()),
        );
        match ns {
            None => return Err(ApiError::not_found("", "namespaces", &t.ns)),
            Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                        super::status::qualified(&t.rt.group, &t.rt.plural),
                        t.name,
                        t.ns
                    ),
                ));
            }
            _ => {}
        }
    }
    if st.get(&t.res(), &obj_key(&obj)).is_some() {
        return Err(ApiError::already_exists(&t.rt.group, &t.rt.plural, &t.name));
    }
    if t.rt.group.is_empty() && t.rt.plural == "namespaces" {
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
        obj["status"] = json!({"phase": "Active"});
    }
    if t.rt.group.is_empty() && t.rt.plural == "pods" && obj.pointer("/status/phase").is_none() {
        obj["status"]["phase"] = json!("Pending");
    }
    if t.rt.group == "apiextensions.k8s.io" && t.rt.plural == "customresourcedefinitions" {
        let names = obj.pointer("/spec/names").cloned().unwrap_or(Value::Null);
        let ts = now();
        obj["status"] = json!({
            "acceptedNames": names,
            "storedVersions": obj.pointer("/spec/versions").and_then(Value::as_array).map(|vs| vs.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>()).unwrap_or_default(),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": ts},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": ts},
            ],
        });
    }
    if ctx.dry_run() {
        obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
        obj["metadata"]["creationTimestamp"] = json!(now());
        return Ok((obj, 201));
    }
    Ok((st.insert(&t.res(), obj, t.rt.bumps_generation), 201))
}

/// Everything outside metadata and status (what `generation` tracks).
fn spec_part(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    c
}

fn check_name(t: &Target, obj: &Value) -> ApiResult<()> {
    let name = meta_str(obj, "name");
    if name == t.name {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            t.name
        )))
    }
}

/// What kube-apiserver refuses in an update or patch result before keeping the stored metadata: another
/// name than the URL's (400), another namespace than the request's (400), another `uid` (422, immutable).
fn check_identity(t: &Target, live: &Value, proposed: &Value) -> ApiResult<()> {
    check_name(t, proposed)?;
    let ns = meta_str(proposed, "namespace");
    if t.rt.namespaced && !ns.is_empty() && ns != t.ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let uid = meta_str(proposed, "uid");
    if !uid.is_empty() && uid != meta_str(live, "uid") {
        return Err(ApiError::invalid(
            &t.rt.group,
            &t.rt.kind,
            &t.name,
            &[(
                "metadata.uid".into(),
                format!("Invalid value: \"{uid}\": field is immutable"),
            )],
        ));
    }
    Ok(())
}

/// Combines a proposed object with the live one per subresource semantics and keeps server-owned metadata.
fn merge_for_update(t: &Target, live: &Value, mut proposed: Value) -> ApiResult<Value> {
    check_identity(t, live, &proposed)?;
    proposed["apiVersion"] = json!(t.api_version());
    proposed["kind"] = json!(t.rt.kind);
    let mut out = if t.sub == "status" {
        let mut o = live.clone();
        o["status"] = proposed.get("status").cloned().unwrap_or(Value::Null);
        if let Some(mf) = proposed.pointer("/metadata/managedFields") {
            o["metadata"]["managedFields"] = mf.clone();
        }
        o
    } else {
        if t.rt.has_status(&t.version) {
            match live.get("status") {
                Some(s) => proposed["status"] = s.clone(),
                None => {
                    if let Some(m) = proposed.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        proposed
    };
    if !out.get("metadata").is_some_and(Value::is_object) {
        out["metadata"] = json!({});
    }
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
        "name",
    ] {
        match live.pointer(&format!("/metadata/{f}")) {
            Some(v) => out["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = out["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    if t.rt.bumps_generation && spec_part(live) != spec_part(&out) {
        let g = live
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        out["metadata"]["generation"] = json!(g + 1);
    }
    if live.pointer("/metadata/deletionTimestamp").is_some() {
        let before: HashSet<&str> = live
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let added: Vec<&str> = out
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter(|f| !before.contains(f))
                    .collect()
            })
            .unwrap_or_default();
        if !added.is_empty() {
            return Err(ApiError::invalid(
                &t.rt.group,
                &t.rt.kind,
                &t.name,
                &[(
                    "metadata.finalizers".into(),
                    "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                )],
            ));
        }
    }
    Ok(out)
}

fn same_ignoring_rv(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut c = v.clone();
        if let Some(m) = c.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            if let Some(Value::Array(entries)) = m.get_mut("managedFields") {
                for e in entries.iter_mut().filter_map(Value::as_object_mut) {
                    e.remove("time");
                }
            }
        }
        c
    };
    strip(a) == strip(b)
}

fn has_finalizers(o: &Value) -> bool {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// Commits an admitted update if the live object is still at `expected_rv`.
fn commit_update(shared: &Shared, ctx: &Ctx, t: &Target, expected_rv: &str, obj: Value) -> ApiResult<Value> {
    let mut st = shared.lock();
    let live = st.get(&t.res(), &t.key()).ok_or_else(|| t.not_found())?;
    if meta_str(live, "resourceVersion") != expected_rv {
        return Err(ApiError::conflict(&t.rt.group, &t.rt.plural, &t.name));
    }
    if same_ignoring_rv(live, &obj) || ctx.dry_run() {
        let mut o = obj;
        o["metadata"]["resourceVersion"] = json!(expected_rv);
        return Ok(o);
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(&obj) {
        st.replace(&t.res(), obj);
        let removed = st.remove(&t.res(), &t.key()).ok_or_else(|| t.not_found())?;
        after_removal(&mut st, std::slice::from_ref(&removed), "Background");
        return Ok(removed);
    }
    Ok(st.replace(&t.res(), obj))
}

async fn update(
    shared: &Arc<Shared>,
    ctx: &Ctx,
    t: &Target,
    warnings: &mut Vec<String>,
) -> ApiResult<Response> {
    let body = parse_body(ctx)?;
    check_type(t, &body)?;
    check_name(t, &body)?;
    let live = shared
        .lock()
        .get(&t.res(), &t.key())
        .cloned()
        .ok_or_else(|| t.not_found())?;
    let live_rv = meta_str(&live, "resourceVersion").to_string();
    let body_rv = meta_str(&body, "resourceVersion").to_string();
    if body_rv.is_empty() && t.rt.crd {
        return Err(ApiError::invalid(
            &t.rt.group,
            &t.rt.kind,
            &t.name,
            &[(
                "metadata.resourceVersion".into(),
                "Invalid value: 0x0: must be specified for an update".into(),
            )],
        ));
    }
    if !body_rv.is_empty() && body_rv != live_rv {
        return Err(ApiError::conflict(&t.rt.group, &t.rt.plural, &t.name));
    }
    // A PUT carrying a uid makes it a precondition, as kube-apiserver's update path does.
    let uid = meta_str(&body, "uid");
    let live_uid = meta_str(&live, "uid");
    if !uid.is_empty() && uid != live_uid {
        return Err(ApiError::conflict_because(
            &t.rt.group,
            &t.rt.plural,
            &t.name,
            &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {live_uid}"),
        ));
    }
    let merged = merge_for_update(t, &live, body)?;
    let mut admitted = admit(shared, ctx, t, "UPDATE", Some(&live), merged, warnings).await?;
    let sub = t.subresource();
    patch::record_update(
        Some(&live),
        &mut admitted,
        &update_manager(ctx),
        sub,
        &t.api_version(),
        &now(),
    );
    let stored = commit_update(shared, ctx, t, &live_rv, admitted)?;
    Ok(json_response(200, &present(&stored, t), warnings))
}

/// The `fieldManager` an apply patch must name.
fn apply_manager(ctx: &Ctx) -> ApiResult<&str> {
    ctx.q("fieldManager").ok_or_else(|| {
        ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        )
    })
}

async fn patch_verb(
    shared: &Arc<Shared>,
    ctx: &Ctx,
    t: &Target,
    warnings: &mut Vec<String>,
) -> ApiResult<Response> {
    let ct = ctx
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let ct = ct.split(';').next().unwrap_or_default().trim().to_string();
    let body = parse_body(ctx)?;
    for _attempt in 0..8 {
        let live = shared.lock().get(&t.res(), &t.key()).cloned();
        let Some(live) = live else {
            if ct == "application/apply-patch+yaml" && t.sub.is_empty() {
                check_type(t, &body)?;
                let manager = apply_manager(ctx)?;
                let mut obj = patch::server_side_apply(
                    None,
                    &body,
                    manager,
                    ctx.flag("force"),
                    None,
                    &t.api_version(),
                    &now(),
                )?;
                obj["metadata"]["name"] = json!(t.name);
                if t.rt.namespaced {
                    obj["metadata"]["namespace"] = json!(t.ns);
                }
                clear_system_fields(&mut obj);
                if t.rt.crd
                    && let Some(m) = obj.as_object_mut()
                {
                    m.remove("status");
                }
                let (stored, code) = create_admitted(shared, ctx, t, obj, warnings, false).await?;
                return Ok(json_response(code, &present(&stored, t), warnings));
            }
            return Err(t.not_found());
        };
        let live_rv = meta_str(&live, "resourceVersion").to_string();
        let mut obj = present(&live, t);
        match ct.as_str() {
            "application/merge-patch+json" => patch::merge_patch(&mut obj, &body),
            "application/json-patch+json" => patch::json_patch(&mut obj, &body)?,
            "application/strategic-merge-patch+json" => {
                if t.rt.crd {
                    return Err(ApiError::unsupported_media(&ct));
                }
                patch::strategic_merge(&mut obj, &body)
            }
            "application/apply-patch+yaml" => {
                check_type(t, &body)?;
                let manager = apply_manager(ctx)?;
                let sub = t.subresource();
                obj = patch::server_side_apply(
                    Some(&obj),
                    &body,
                    manager,
                    ctx.flag("force"),
                    sub,
                    &t.api_version(),
                    &now(),
                )?;
            }
            other => return Err(ApiError::unsupported_media(other)),
        }
        let patched_rv = meta_str(&obj, "resourceVersion").to_string();
        if !patched_rv.is_empty() && patched_rv != live_rv {
            return Err(ApiError::conflict(&t.rt.group, &t.rt.plural, &t.name));
        }
        let merged = merge_for_update(t, &live, obj)?;
        let mut admitted = admit(shared, ctx, t, "UPDATE", Some(&live), merged, warnings).await?;
        if ct != "application/apply-patch+yaml" {
            let sub = t.subresource();
            patch::record_update(
                Some(&live),
                &mut admitted,
                &update_manager(ctx),
                sub,
                &t.api_version(),
                &now(),
            );
        }
        match commit_update(shared, ctx, t, &live_rv, admitted) {
            Ok(stored) => return Ok(json_response(200, &present(&stored, t), warnings)),
            // Someone else wrote in between: re-apply the patch to the new live object, like GuaranteedUpdate.
            Err(e) if e.reason == "Conflict" && patched_rv.is_empty() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(&t.rt.group, &t.rt.plural, &t.name))
}

fn delete_options(ctx: &Ctx) -> Value {
    let mut o: Value = if ctx.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&ctx.body).unwrap_or_else(|_| json!({}))
    };
    if let Some(p) = ctx.q("propagationPolicy") {
        o["propagationPolicy"] = json!(p);
    }
    o
}

async fn delete(
    shared: &Arc<Shared>,
    ctx: &Ctx,
    t: &Target,
    warnings: &mut Vec<String>,
) -> ApiResult<Response> {
    if !t.sub.is_empty() {
        return Err(ApiError::method_not_allowed());
    }
    let opts = delete_options(ctx);
    let live = shared
        .lock()
        .get(&t.res(), &t.key())
        .cloned()
        .ok_or_else(|| t.not_found())?;
    for (field, meta) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
        let live_value = meta_str(&live, field);
        if let Some(pre) = opts
            .pointer(&format!("/preconditions/{field}"))
            .and_then(Value::as_str)
            && pre != live_value
        {
            return Err(ApiError::conflict_because(
                &t.rt.group,
                &t.rt.plural,
                &t.name,
                &format!(
                    "Precondition failed: {meta} in precondition: {pre}, {meta} in object meta: {live_value}"
                ),
            ));
        }
    }
    // kubectl sends dryRun in the DeleteOptions body rather than the query.
    let dry_run = ctx.dry_run()
        || opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    let presented = present(&live, t);
    let name = t.name.clone();
    let mut dopts = options("DeleteOptions", ctx);
    if let Some(p) = opts.get("propagationPolicy") {
        dopts["propagationPolicy"] = p.clone();
    }
    let req = admission::Request {
        operation: "DELETE",
        rt: &t.rt,
        version: &t.version,
        subresource: "",
        name: &name,
        namespace: if t.rt.namespaced { &t.ns } else { "" },
        old: Some(&presented),
        user: &ctx.user,
        dry_run,
        options: dopts,
        namespace_labels: namespace_labels(shared, t),
    };
    let services = shared.services();
    let mut none = None;
    admission::run(
        &webhook_configs(shared, "mutatingwebhookconfigurations"),
        true,
        &req,
        &mut none,
        &services,
        warnings,
    )
    .await?;
    admission::run(
        &webhook_configs(shared, "validatingwebhookconfigurations"),
        false,
        &req,
        &mut none,
        &services,
        warnings,
    )
    .await?;
    if dry_run {
        return Ok(json_response(200, &presented, warnings));
    }
    let policy = opts
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Background")
        .to_string();
    let mut st = shared.lock();
    let res = delete_object(&mut st, &t.res(), &t.key(), &policy).ok_or_else(|| t.not_found())?;
    Ok(json_response(200, &present(&res, t), warnings))
}

/// Deletes one object: marks it if it has finalizers, otherwise removes it and collects garbage.
/// Returns the object as it was marked or removed.
pub fn delete_object(st: &mut State, res: &ResKey, key: &ObjKey, policy: &str) -> Option<Value> {
    let live = st.get(res, key)?.clone();
    let is_ns = res.0.is_empty() && res.1 == "namespaces";
    if is_ns {
        // Delete the namespace's contents; the namespace goes once it is empty.
        let contents: Vec<(ResKey, ObjKey)> = st
            .all()
            .into_iter()
            .filter(|(_, k, _)| k.0 == key.1)
            .map(|(r, k, _)| (r, k))
            .collect();
        for (r, k) in contents {
            delete_object(st, &r, &k, policy);
        }
        let still_has = st.all().iter().any(|(_, k, _)| k.0 == key.1);
        if still_has || has_finalizers(&live) {
            let mut o = live.clone();
            if o.pointer("/metadata/deletionTimestamp").is_none() {
                o["metadata"]["deletionTimestamp"] = json!(now());
                o["status"]["phase"] = json!("Terminating");
                return Some(st.replace(res, o));
            }
            return Some(live);
        }
    }
    if *res == crd_key()
        && let Some(rt) = registry::from_crd(&live)
    {
        // Deleting a CRD deletes all its objects; the CRD waits for those held by finalizers.
        let kind_key: ResKey = (rt.group, rt.plural);
        let instances: Vec<ObjKey> = st
            .objects
            .get(&kind_key)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for k in instances {
            delete_object(st, &kind_key, &k, policy);
        }
        if st.objects.get(&kind_key).is_some_and(|m| !m.is_empty()) {
            if live.pointer("/metadata/deletionTimestamp").is_some() {
                return Some(live);
            }
            let mut o = live;
            o["metadata"]["deletionTimestamp"] = json!(now());
            return Some(st.replace(res, o));
        }
    }
    // Foreground: dependents go first; an owner whose dependents are held by finalizers waits with the
    // garbage collector's `foregroundDeletion` finalizer, removed once the last dependent is gone.
    let mut waiting_for_dependents = false;
    if policy == "Foreground" {
        let uid = meta_str(&live, "uid").to_string();
        for (r, k) in dependents(st, &uid) {
            delete_object(st, &r, &k, "Foreground");
        }
        waiting_for_dependents = !dependents(st, &uid).is_empty();
    }
    if has_finalizers(&live) || waiting_for_dependents {
        let mut o = live;
        if waiting_for_dependents {
            let finalizers = o["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !finalizers.iter().any(|f| f == FOREGROUND_DELETION) {
                let mut finalizers = finalizers;
                finalizers.push(json!(FOREGROUND_DELETION));
                o["metadata"]["finalizers"] = Value::Array(finalizers);
            }
        }
        if o.pointer("/metadata/deletionTimestamp").is_none() {
            o["metadata"]["deletionTimestamp"] = json!(now());
            o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        }
        return Some(st.replace(res, o));
    }
    let removed = st.remove(res, key)?;
    after_removal(st, std::slice::from_ref(&removed), policy);
    Some(removed)
}

fn dependents(st: &State, uid: &str) -> Vec<(ResKey, ObjKey)> {
    st.all()
        .into_iter()
        .filter(|(_, _, o)| {
            o.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| {
                    refs.iter()
                        .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
                })
        })
        .map(|(r, k, _)| (r, k))
        .collect()
}

/// The finalizer the garbage collector puts on an owner deleted with `propagationPolicy: Foreground`.
const FOREGROUND_DELETION: &str = "foregroundDeletion";

/// Owners of `removed` in foreground deletion that no longer have dependents lose `foregroundDeletion`, and go
/// when that was their last finalizer.
fn release_foreground_owners(st: &mut State, removed: &Value) {
    let owner_uids: Vec<String> = removed
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for owner_uid in owner_uids {
        let Some((res, key, owner)) = st
            .all()
            .into_iter()
            .find(|(_, _, o)| meta_str(o, "uid") == owner_uid)
            .map(|(r, k, o)| (r, k, o.clone()))
        else {
            continue;
        };
        let waiting = owner.pointer("/metadata/deletionTimestamp").is_some()
            && owner["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == FOREGROUND_DELETION));
        if !waiting || !dependents(st, &owner_uid).is_empty() {
            continue;
        }
        let mut o = owner;
        let rest: Vec<Value> = o["metadata"]["finalizers"]
            .as_array()
            .map(|f| f.iter().filter(|f| *f != FOREGROUND_DELETION).cloned().collect())
            .unwrap_or_default();
        if rest.is_empty() {
            if let Some(gone) = st.remove(&res, &key) {
                after_removal(st, std::slice::from_ref(&gone), "Foreground");
            }
        } else {
            o["metadata"]["finalizers"] = Value::Array(rest);
            st.replace(&res, o);
        }
    }
}

/// Garbage collection after objects are gone: dependents whose owners all vanished are deleted (or orphaned),
/// owners waiting in foreground deletion are released, and terminating namespaces that became empty are
/// removed.
fn after_removal(st: &mut State, removed: &[Value], policy: &str) {
    for r in removed {
        release_foreground_owners(st, r);
        let uid = meta_str(r, "uid").to_string();
        for (res, key) in dependents(st, &uid) {
            let Some(dep) = st.get(&res, &key).cloned() else {
                continue;
            };
            let live_uids: HashSet<String> = st
                .all()
                .iter()
                .map(|(_, _, o)| meta_str(o, "uid").to_string())
                .collect();
            let refs = dep
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let remaining: Vec<Value> = refs
                .iter()
                .filter(|o| o.get("uid").and_then(Value::as_str) != Some(uid.as_str()))
                .cloned()
                .collect();
            let others_alive = remaining.iter().any(|o| {
                o.get("uid")
                    .and_then(Value::as_str)
                    .is_some_and(|u| live_uids.contains(u))
            });
            if policy == "Orphan" || others_alive {
                let mut d = dep;
                d["metadata"]["ownerReferences"] = Value::Array(remaining);
                st.replace(&res, d);
            } else {
                delete_object(st, &res, &key, "Background");
            }
        }
        let crds: Vec<Value> = st.list(&crd_key(), None).into_iter().cloned().collect();
        for crd in crds
            .iter()
            .filter(|c| c.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(c))
        {
            if let Some(rt) = registry::from_crd(crd)
                && st
                    .objects
                    .get(&(rt.group, rt.plural))
                    .is_none_or(|m| m.is_empty())
            {
                st.remove(&crd_key(), &obj_key(crd));
            }
        }
        let ns = meta_str(r, "namespace").to_string();
        if !ns.is_empty() {
            let ns_res: ResKey = (String::new(), "namespaces".into());
            let ns_key: ObjKey = (String::new(), ns.clone());
            let terminating = st
                .get(&ns_res, &ns_key)
                .is_some_and(|n| n.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(n));
            if terminating && !st.all().iter().any(|(_, k, _)| k.0 == ns) {
                st.remove(&ns_res, &ns_key);
            }
        }
    }
}

async fn delete_collection(
    shared: &Arc<Shared>,
    ctx: &Ctx,
    t: &Target,
    warnings: &mut Vec<String>,
) -> ApiResult<Response> {
    let (ls, fs) = selectors(ctx)?;
    let names: Vec<(String, String)> = {
        let st = shared.lock();
        let ns = if t.ns.is_empty() {
            None
        } else {
            Some(t.ns.as_str())
        };
        st.list(&t.res(), ns)
            .into_iter()
            .filter(|o| ls.matches_object(o) && fs.matches(o))
            .map(obj_key)
            .collect()
    };
    let mut items = Vec::new();
    for (ns, name) in names {
        let tt = Target {
            ns,
            name,
            ..t.clone()
        };
        delete(shared, ctx, &tt, warnings).await?;
        items.push(json!({"metadata": {"name": tt.name, "namespace": tt.ns}}));
    }
    let st = shared.lock();
    let body = json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.api_version(), "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
    Ok(json_response(200, &body, warnings))
}
