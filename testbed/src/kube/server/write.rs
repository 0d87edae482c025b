//! Writing: create, update and patch, with validation, defaulting, pruning and admission.

use super::*;

pub(super) fn parse_body(ctx: &Ctx) -> ApiResult<Value> {
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
pub(super) fn check_type(t: &Target, obj: &Value) -> ApiResult<()> {
    let av = str_at(obj, "/apiVersion").unwrap_or_default();
    let kind = str_at(obj, "/kind").unwrap_or_default();
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

pub(super) static DNS1123: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .unwrap_or_else(|_| unreachable!())
});

/// Server-side validation: names, CRD schema, CRD spec sanity.
pub(super) fn validate(t: &Target, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
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
    causes.extend(event_causes(t, obj));
    if let Some(schema) = t.rt.version(&t.version).and_then(|v| v.schema.as_ref()) {
        causes.extend(if t.sub == "status" {
            schema::validate_status(obj, schema)
        } else {
            schema::validate(obj, schema)
        });
        if causes.is_empty() {
            causes.extend(super::super::cel::validate(obj, old, schema));
        }
    }
    if t.rt.group == "apiextensions.k8s.io" && t.rt.plural == "customresourcedefinitions" {
        let group = str_at(obj, "/spec/group").unwrap_or_default();
        let plural = str_at(obj, "/spec/names/plural").unwrap_or_default();
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

/// The longest Event note (`message` in core/v1) kube-apiserver accepts, in bytes: `NoteLengthLimit` in
/// <https://github.com/kubernetes/kubernetes/blob/v1.28.0/pkg/apis/core/validation/events.go>.
pub(super) const EVENT_NOTE_LIMIT: usize = 1024;

/// An Event's note over [`EVENT_NOTE_LIMIT`], refused as kube-apiserver's `legacyValidateEvent` refuses it: an
/// events.k8s.io Event always, a core/v1 one when it has an `eventTime` (a "new" Event); the field is named
/// by its internal name, `message`, in both.
pub(super) fn event_causes(t: &Target, obj: &Value) -> Vec<(String, String)> {
    let note = match (t.rt.group.as_str(), t.rt.plural.as_str()) {
        ("events.k8s.io", "events") => str_at(obj, "/note"),
        ("", "events") if obj.get("eventTime").is_some_and(|v| !v.is_null()) => str_at(obj, "/message"),
        _ => None,
    };
    match note {
        Some(note) if note.len() > EVENT_NOTE_LIMIT => vec![(
            "message".to_string(),
            format!("Invalid value: \"\": can have at most {EVENT_NOTE_LIMIT} characters"),
        )],
        _ => Vec::new(),
    }
}

/// Immutable fields of the core kinds our components write, as kube-apiserver's `ValidateSecretUpdate` and
/// `ValidateConfigMapUpdate` check them: a Secret's `type`, and the contents of a Secret or ConfigMap
/// marked `immutable: true` (which cannot be unset either).
pub(super) fn builtin_update_causes(t: &Target, obj: &Value, old: &Value) -> Vec<(String, String)> {
    let contents: &[&str] = match (t.rt.group.as_str(), t.rt.plural.as_str()) {
        ("", "secrets") => &["data"],
        ("", "configmaps") => &["data", "binaryData"],
        _ => return Vec::new(),
    };
    let mut causes = Vec::new();
    if t.rt.plural == "secrets" && obj.get("type") != old.get("type") {
        let new_type = str_at(obj, "/type").unwrap_or_default();
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
pub(super) fn default_and_prune(
    ctx: &Ctx,
    t: &Target,
    obj: &mut Value,
    warnings: &mut Vec<String>,
) -> ApiResult<()> {
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
pub(super) fn namespace_labels(shared: &Shared, t: &Target) -> Option<BTreeMap<String, String>> {
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

pub(super) fn webhook_configs(shared: &Shared, plural: &str) -> Vec<Value> {
    let st = shared.lock();
    st.list(&("admissionregistration.k8s.io".into(), plural.into()), None)
        .into_iter()
        .cloned()
        .collect()
}

pub(super) fn options(kind: &str, ctx: &Ctx) -> Value {
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
pub(super) fn default_builtin(t: &Target, obj: &mut Value) {
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
pub(super) fn fold_string_data(obj: &mut Value) {
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
pub(super) async fn admit(
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
        namespace_labels: namespace_labels(&ctx.shared, t),
    };
    let services = ctx.shared.services();
    let mut o = Some(present(&obj, t));
    admission::run(
        &webhook_configs(&ctx.shared, "mutatingwebhookconfigurations"),
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
        &webhook_configs(&ctx.shared, "validatingwebhookconfigurations"),
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
pub(super) fn clear_system_fields(obj: &mut Value) {
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

/// Records a non-apply write (`old`: `None` for a create) in `managedFields` under the request's manager.
fn record_update(ctx: &Ctx, t: &Target, old: Option<&Value>, new: &mut Value) {
    patch::record_update(
        old,
        new,
        &update_manager(ctx),
        t.subresource(),
        &t.api_version(),
        &now(),
    );
}

/// The field manager of a non-apply write: `fieldManager`, else the User-Agent's product, like kube-apiserver.
pub(super) fn update_manager(ctx: &Ctx) -> String {
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

pub(super) fn random_suffix() -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    u.chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(5)
        .collect()
}

pub(super) async fn create(ctx: &Ctx, t: &Target, warnings: &mut Vec<String>) -> ApiResult<Response> {
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
    let (stored, code) = create_admitted(ctx, t, obj, warnings, true).await?;
    Ok(json_response(code, &present(&stored, t), warnings))
}

/// Admission + commit of a new object (shared by POST and apply-creates).
pub(super) async fn create_admitted(
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
    let mut obj = admit(ctx, t, "CREATE", None, obj, warnings).await?;
    if record_manager {
        record_update(ctx, t, None, &mut obj);
    }
    let mut st = ctx.shared.lock();
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
                        super::super::status::qualified(&t.rt.group, &t.rt.plural),
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
pub(super) fn spec_part(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    c
}

pub(super) fn check_name(t: &Target, obj: &Value) -> ApiResult<()> {
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
pub(super) fn check_identity(t: &Target, live: &Value, proposed: &Value) -> ApiResult<()> {
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
pub(super) fn merge_for_update(t: &Target, live: &Value, mut proposed: Value) -> ApiResult<Value> {
    check_identity(t, live, &proposed)?;
    proposed["apiVersion"] = json!(t.api_version());
    proposed["kind"] = json!(t.rt.kind);
    let mut out = if t.sub == "status" {
        let mut o = live.clone();
        // A status write without `status` removes it (the apply that gave up every status field).
        match proposed.get("status") {
            Some(status) => o["status"] = status.clone(),
            None => {
                if let Some(m) = o.as_object_mut() {
                    m.remove("status");
                }
            }
        }
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

pub(super) fn same_ignoring_rv(a: &Value, b: &Value) -> bool {
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

pub(super) fn has_finalizers(o: &Value) -> bool {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// Commits an admitted update if the live object is still at `expected_rv`.
pub(super) fn commit_update(ctx: &Ctx, t: &Target, expected_rv: &str, obj: Value) -> ApiResult<Value> {
    let mut st = ctx.shared.lock();
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

pub(super) async fn update(ctx: &Ctx, t: &Target, warnings: &mut Vec<String>) -> ApiResult<Response> {
    let body = parse_body(ctx)?;
    check_type(t, &body)?;
    check_name(t, &body)?;
    let live = ctx.live(t)?;
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
    let mut admitted = admit(ctx, t, "UPDATE", Some(&live), merged, warnings).await?;
    record_update(ctx, t, Some(&live), &mut admitted);
    let stored = commit_update(ctx, t, &live_rv, admitted)?;
    Ok(json_response(200, &present(&stored, t), warnings))
}

/// The `fieldManager` an apply patch must name.
pub(super) fn apply_manager(ctx: &Ctx) -> ApiResult<&str> {
    ctx.q("fieldManager").ok_or_else(|| {
        ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        )
    })
}

/// Server-side apply of a request's configuration onto the live object (`None`: the apply creates it).
fn apply_patch(ctx: &Ctx, t: &Target, live: Option<&Value>, config: &Value) -> ApiResult<Value> {
    check_type(t, config)?;
    patch::server_side_apply(
        live,
        config,
        apply_manager(ctx)?,
        ctx.flag("force"),
        t.subresource(),
        &t.api_version(),
        &now(),
    )
}

/// An apply that creates is authorized for `create` too, as kube-apiserver's patch handler does: a user who may
/// patch but not create gets 403 Forbidden. The message is the real server's, whose RBAC gives no reason.
fn authorize_create_on_apply(ctx: &Ctx, t: &Target) -> ApiResult<()> {
    let attrs = auth::Attributes {
        verb: "create".to_string(),
        group: t.rt.group.clone(),
        resource: t.rt.plural.clone(),
        subresource: String::new(),
        namespace: t.ns.clone(),
        name: t.name.clone(),
    };
    if auth::authorize(&ctx.shared.lock(), &ctx.user, &attrs) {
        return Ok(());
    }
    let resource = super::super::status::qualified(&t.rt.group, &t.rt.plural);
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!("{resource} \"{}\" is forbidden: ", t.name),
    );
    e.details = Some(json!({"name": t.name, "group": t.rt.group, "kind": t.rt.plural}));
    Err(e)
}

pub(super) async fn patch_verb(ctx: &Ctx, t: &Target, warnings: &mut Vec<String>) -> ApiResult<Response> {
    let ct = ctx
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let ct = ct.split(';').next().unwrap_or_default().trim().to_string();
    let body = parse_body(ctx)?;
    for _attempt in 0..8 {
        let live = ctx.stored(t);
        let Some(live) = live else {
            if ct == "application/apply-patch+yaml" && t.sub.is_empty() {
                authorize_create_on_apply(ctx, t)?;
                let mut obj = apply_patch(ctx, t, None, &body)?;
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
                let (stored, code) = create_admitted(ctx, t, obj, warnings, false).await?;
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
                obj = apply_patch(ctx, t, Some(&obj), &body)?;
                patch::drop_typed_nulls(&mut obj, !t.rt.crd);
            }
            other => return Err(ApiError::unsupported_media(other)),
        }
        let patched_rv = meta_str(&obj, "resourceVersion").to_string();
        if !patched_rv.is_empty() && patched_rv != live_rv {
            return Err(ApiError::conflict(&t.rt.group, &t.rt.plural, &t.name));
        }
        let merged = merge_for_update(t, &live, obj)?;
        let mut admitted = admit(ctx, t, "UPDATE", Some(&live), merged, warnings).await?;
        if ct != "application/apply-patch+yaml" {
            record_update(ctx, t, Some(&live), &mut admitted);
        }
        match commit_update(ctx, t, &live_rv, admitted) {
            Ok(stored) => return Ok(json_response(200, &present(&stored, t), warnings)),
            // Someone else wrote in between: re-apply the patch to the new live object, like GuaranteedUpdate.
            Err(e) if e.reason == "Conflict" && patched_rv.is_empty() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(&t.rt.group, &t.rt.plural, &t.name))
}
