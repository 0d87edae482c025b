//! Reading: get, list (with selectors and table output) and watch streams.

use super::*;

/// The object as served in `version` (storage is version-agnostic; no conversion).
pub(super) fn present(obj: &Value, t: &Target) -> Value {
    let mut o = obj.clone();
    o["apiVersion"] = json!(t.api_version());
    o["kind"] = json!(t.rt.kind);
    o
}

/// The representation the client asked for in `Accept`.
#[derive(Debug, Clone)]
pub(super) enum Render {
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

pub(super) fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(Value::Null)})
}

pub(super) fn accept(ctx: &Ctx) -> String {
    ctx.headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

pub(super) fn get(ctx: &Ctx, t: &Target) -> ApiResult<Response> {
    let st = ctx.shared.lock();
    let obj = st.get(&t.res(), &t.key()).ok_or_else(|| t.not_found())?;
    Ok(json_response(
        200,
        &Render::of(ctx).one(t, obj, &st.rv.to_string()),
        &[],
    ))
}

pub(super) fn selectors(ctx: &Ctx) -> ApiResult<(LabelSelector, FieldSelector)> {
    Ok((
        LabelSelector::parse(ctx.q("labelSelector").unwrap_or_default())?,
        FieldSelector::parse(ctx.q("fieldSelector").unwrap_or_default())?,
    ))
}

pub(super) fn list(ctx: &Ctx, t: &Target) -> ApiResult<Response> {
    let (ls, fs) = selectors(ctx)?;
    let st = ctx.shared.lock();
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
pub(super) fn visible(t: &Target, ls: &LabelSelector, fs: &FieldSelector, o: &Value) -> bool {
    (t.ns.is_empty() || meta_str(o, "namespace") == t.ns) && ls.matches_object(o) && fs.matches(o)
}

pub(super) fn watch_line(etype: &str, obj: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": etype, "object": obj})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

pub(super) fn watch(ctx: &Ctx, t: &Target) -> ApiResult<Response> {
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
        let st = ctx.shared.lock();
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
    let shared2 = ctx.shared.clone();
    let interval = ctx.shared.bookmark_interval;
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
pub(super) fn event_line(
    t: &Target,
    ls: &LabelSelector,
    fs: &FieldSelector,
    render: &Render,
    ev: &super::super::store::Event,
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
