//! Deleting: delete and deletecollection, finalizers, garbage collection of dependents and foreground deletion.

use super::*;

pub(super) fn delete_options(ctx: &Ctx) -> Value {
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

pub(super) async fn delete(ctx: &Ctx, t: &Target, warnings: &mut Vec<String>) -> ApiResult<Response> {
    let opts = delete_options(ctx);
    let live = ctx.live(t)?;
    for (field, meta) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
        let live_value = meta_str(&live, field);
        if let Some(pre) = str_at(&opts, &format!("/preconditions/{field}"))
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
        namespace_labels: namespace_labels(&ctx.shared, t),
    };
    let services = ctx.shared.services();
    let mut none = None;
    admission::run(
        &webhook_configs(&ctx.shared, "mutatingwebhookconfigurations"),
        true,
        &req,
        &mut none,
        &services,
        warnings,
    )
    .await?;
    admission::run(
        &webhook_configs(&ctx.shared, "validatingwebhookconfigurations"),
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
    let policy = str_at(&opts, "/propagationPolicy")
        .unwrap_or("Background")
        .to_string();
    let mut st = ctx.shared.lock();
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

pub(super) fn dependents(st: &State, uid: &str) -> Vec<(ResKey, ObjKey)> {
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
pub(super) const FOREGROUND_DELETION: &str = "foregroundDeletion";

/// Owners of `removed` in foreground deletion that no longer have dependents lose `foregroundDeletion`, and go
/// when that was their last finalizer.
pub(super) fn release_foreground_owners(st: &mut State, removed: &Value) {
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
pub(super) fn after_removal(st: &mut State, removed: &[Value], policy: &str) {
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

pub(super) async fn delete_collection(
    ctx: &Ctx,
    t: &Target,
    warnings: &mut Vec<String>,
) -> ApiResult<Response> {
    let (ls, fs) = selectors(ctx)?;
    let names: Vec<(String, String)> = {
        let st = ctx.shared.lock();
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
        delete(ctx, &tt, warnings).await?;
        items.push(json!({"metadata": {"name": tt.name, "namespace": tt.ns}}));
    }
    let st = ctx.shared.lock();
    let body = json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.api_version(), "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
    Ok(json_response(200, &body, warnings))
}
