//! Routing: authenticated requests to discovery, the verbs and their targets.

use super::*;

pub(super) async fn handle_inner(
    shared: &Arc<Shared>,
    req: http::Request<Body>,
    user: Option<User>,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_string();
    if path == "/metrics" {
        let mut r = Response::new(Body::from(metrics(shared)));
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
        shared: shared.clone(),
    };
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let mut warnings = Vec::new();
    match route(&ctx, &segs, &mut warnings).await {
        Ok(mut r) => {
            append_warnings(&mut r, &warnings);
            r
        }
        Err(e) => error_response(&e, &warnings),
    }
}

pub(super) fn discovery_ok(v: Value) -> ApiResult<Response> {
    Ok(json_response(200, &v, &[]))
}

pub(super) async fn route(ctx: &Ctx, segs: &[String], warnings: &mut Vec<String>) -> ApiResult<Response> {
    let shared = &ctx.shared;
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
        ["openapi", "v3"] if get => discovery_ok(super::super::openapi::root(&shared.types())),
        ["openapi", "v3", rest @ ..] if get => {
            let gv = rest.join("/");
            super::super::openapi::group_version(&shared.types(), &gv)
                .map(|d| json_response(200, &d, &[]))
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    )
                })
        }
        ["api", "v1", rest @ ..] => resource(ctx, "", "v1", rest, warnings).await,
        ["apis", g, v, rest @ ..] => resource(ctx, g, v, rest, warnings).await,
        _ => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    }
}

pub(super) fn parse_target(
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

pub(super) fn verb_of(ctx: &Ctx, t: &Target) -> &'static str {
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

pub(super) async fn resource(
    ctx: &Ctx,
    group: &str,
    version: &str,
    rest: &[&str],
    warnings: &mut Vec<String>,
) -> ApiResult<Response> {
    let shared = &ctx.shared;
    let types = shared.types();
    let (t, all_ns) = parse_target(&types, group, version, rest)?;
    let verb = verb_of(ctx, &t);
    if verb == "unknown" {
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
    // As in kube-apiserver, a method the resource has no handler for is refused after authorization: a
    // user who may not make the request gets 403, one who may gets 405.
    if (t.name.is_empty() && matches!(verb, "update" | "patch"))
        || (!t.name.is_empty() && verb == "create")
        // A subresource (status) is only read, updated and patched; the object itself is created and deleted.
        || (t.subresource().is_some() && !matches!(verb, "get" | "update" | "patch"))
    {
        return Err(ApiError::method_not_allowed());
    }
    if all_ns && !matches!(verb, "list" | "watch" | "deletecollection") {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    match verb {
        "get" => get(ctx, &t),
        "list" => list(ctx, &t),
        "watch" => watch(ctx, &t),
        "create" => create(ctx, &t, warnings).await,
        "update" => update(ctx, &t, warnings).await,
        "patch" => patch_verb(ctx, &t, warnings).await,
        "delete" => delete(ctx, &t, warnings).await,
        _ => delete_collection(ctx, &t, warnings).await,
    }
}
