//! Calling admission webhooks the way kube-apiserver does: rule matching, selectors, AdmissionReview v1 over
//! TLS verified with the configuration's caBundle, JSONPatch responses, warnings, failure policies.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::auth::User;
use super::registry::ResourceType;
use super::selectors::LabelSelector;
use super::status::{ApiError, ApiResult};
use super::store::str_at;

/// Where in-cluster webhook Services (`clientConfig.service`) are reachable: `(namespace, name)` -> address.
pub type ServiceMap = HashMap<(String, String), SocketAddr>;

/// One admission request, before any webhook has seen it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub operation: &'a str,
    pub rt: &'a ResourceType,
    pub version: &'a str,
    pub subresource: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
    pub old: Option<&'a Value>,
    pub user: &'a User,
    pub dry_run: bool,
    pub options: Value,
    /// Labels of the request's namespace (for namespaceSelector); None for cluster-scoped objects.
    pub namespace_labels: Option<BTreeMap<String, String>>,
}

fn strs(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn rule_matches(rule: &Value, req: &Request<'_>) -> bool {
    let ops = strs(rule.get("operations"));
    let groups = strs(rule.get("apiGroups"));
    let versions = strs(rule.get("apiVersions"));
    let resources = strs(rule.get("resources"));
    let scope = str_at(rule, "/scope").unwrap_or("*");
    let any = |list: &[&str], v: &str| list.iter().any(|x| *x == "*" || *x == v);
    // "x" matches the resource only, "x/sub" one subresource, "x/*" all its subresources, "*/*" everything.
    let res_ok = resources.iter().any(|r| {
        let (rr, rs) = r.split_once('/').unwrap_or((r, ""));
        let resource_ok = rr == "*" || rr == req.rt.plural;
        let sub_ok = if *r == "*/*" {
            true
        } else if rs == "*" {
            !req.subresource.is_empty()
        } else {
            rs == req.subresource
        };
        resource_ok && sub_ok
    });
    let scope_ok = match scope {
        "Cluster" => !req.rt.namespaced,
        "Namespaced" => req.rt.namespaced,
        _ => true,
    };
    any(&ops, req.operation)
        && any(&groups, &req.rt.group)
        && any(&versions, req.version)
        && res_ok
        && scope_ok
}

/// Whether a webhook applies to the request (rules, namespaceSelector, objectSelector).
fn webhook_matches(hook: &Value, req: &Request<'_>, object: Option<&Value>) -> ApiResult<bool> {
    let rules = hook
        .get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !rules.iter().any(|r| rule_matches(r, req)) {
        return Ok(false);
    }
    let ns_sel = LabelSelector::from_object(hook.get("namespaceSelector"))?;
    let ns_labels = if req.rt.group.is_empty() && req.rt.plural == "namespaces" {
        object.or(req.old).map(super::selectors::labels_of)
    } else {
        req.namespace_labels.clone()
    };
    if let Some(labels) = ns_labels
        && !ns_sel.matches(&labels)
    {
        return Ok(false);
    }
    let obj_sel = LabelSelector::from_object(hook.get("objectSelector"))?;
    let any_match = [object, req.old]
        .iter()
        .flatten()
        .any(|o| obj_sel.matches_object(o));
    let none_present = object.is_none() && req.old.is_none();
    Ok(any_match || none_present)
}

/// Resolves `clientConfig` into (address, TLS server name, URL shown in errors, request path).
fn endpoint(cc: &Value, services: &ServiceMap) -> Result<(SocketAddr, String, String, String), String> {
    if let Some(url) = cc.get("url").and_then(Value::as_str) {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("invalid clientConfig.url {url:?}: {e}"))?;
        let host = uri
            .host()
            .ok_or_else(|| format!("clientConfig.url {url:?} has no host"))?
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let host_trim = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let addr = if host_trim == "localhost" {
            SocketAddr::from(([127, 0, 0, 1], port))
        } else {
            let ip: std::net::IpAddr = host_trim.parse().map_err(|_| format!("clientConfig.url host {host:?}: only loopback addresses and localhost are reachable from the simulator"))?;
            SocketAddr::new(ip, port)
        };
        let path = uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into());
        return Ok((addr, host_trim, url.to_string(), path));
    }
    let svc = cc.get("service").ok_or("clientConfig needs url or service")?;
    let ns = str_at(svc, "/namespace").unwrap_or_default();
    let name = str_at(svc, "/name").unwrap_or_default();
    let port = svc.get("port").and_then(Value::as_u64).unwrap_or(443);
    let path = str_at(svc, "/path").unwrap_or("/").to_string();
    let server_name = format!("{name}.{ns}.svc");
    let url = format!("https://{server_name}:{port}{path}");
    let addr = services
        .get(&(ns.to_string(), name.to_string()))
        .copied()
        .ok_or_else(|| {
            format!("dial tcp: lookup {server_name}: no such host (service not mapped in the simulator)")
        })?;
    Ok((addr, server_name, url, path))
}

async fn post(cc: &Value, services: &ServiceMap, body: Vec<u8>, timeout: Duration) -> Result<Value, String> {
    let (addr, server_name, url, path) = endpoint(cc, services)?;
    let fail = |e: String| format!("failed to call webhook: Post \"{url}\": {e}");
    let call = async {
        let ca = match cc.get("caBundle").and_then(Value::as_str) {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("invalid caBundle: {e}"))?,
            None => return Err("x509: certificate signed by unknown authority (no caBundle)".to_string()),
        };
        let cfg = super::tls::client_config(&ca).map_err(|e| format!("invalid caBundle: {e:#}"))?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        let sn = rustls_pki_types::ServerName::try_from(server_name.clone())
            .map_err(|e| format!("invalid server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(sn, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::post(path)
            .header("host", server_name)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("received non-2xx status {status} from webhook"));
        }
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| format!("the server responded with a body that is not an AdmissionReview: {e}"))
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r.map_err(fail),
        Err(_) => Err(fail("context deadline exceeded".into())),
    }
}

/// The `AdmissionReview` v1 request kube-apiserver would send.
fn review(req: &Request<'_>, object: Option<&Value>, uid: &str) -> Value {
    let gvk = json!({"group": req.rt.group, "version": req.version, "kind": req.rt.kind});
    let gvr = json!({"group": req.rt.group, "version": req.version, "resource": req.rt.plural});
    let mut r = json!({
        "uid": uid, "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "name": req.name, "operation": req.operation,
        "userInfo": {"username": req.user.name, "groups": req.user.all_groups()},
        "object": object.cloned().unwrap_or(Value::Null), "oldObject": req.old.cloned().unwrap_or(Value::Null),
        "dryRun": req.dry_run, "options": req.options,
    });
    if !req.namespace.is_empty() {
        r["namespace"] = json!(req.namespace);
    }
    if !req.subresource.is_empty() {
        r["subResource"] = json!(req.subresource);
        r["requestSubResource"] = json!(req.subresource);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": r})
}

/// kube-apiserver's wording for a denial (`webhookerrors.ToStatusErr`).
pub fn denial(name: &str, result: Option<&Value>) -> ApiError {
    let denied_by = format!("admission webhook \"{name}\" denied the request");
    let msg = result
        .and_then(|r| r.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty());
    let reason = result
        .and_then(|r| r.get("reason"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let code = result
        .and_then(|r| r.get("code"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let message = match (msg, reason.is_empty()) {
        (Some(m), _) => format!("{denied_by}: {m}"),
        (None, false) => format!("{denied_by}: {reason}"),
        (None, true) => format!("{denied_by} without explanation"),
    };
    let mut e = ApiError::new(
        if code < 400 { 400 } else { code.min(599) as u16 },
        reason,
        message,
    );
    e.details = result.and_then(|r| r.get("details")).cloned();
    e
}

/// Runs the mutating (`mutating = true`) or validating webhooks of all configurations, in name order.
/// Mutations are applied to `object`; warnings are appended.
pub async fn run(
    configs: &[Value],
    mutating: bool,
    req: &Request<'_>,
    object: &mut Option<Value>,
    services: &ServiceMap,
    warnings: &mut Vec<String>,
) -> ApiResult<()> {
    let mut sorted: Vec<&Value> = configs.iter().collect();
    sorted.sort_by_key(|c| super::store::meta_str(c, "name").to_string());
    for cfg in sorted {
        for hook in cfg
            .get("webhooks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = str_at(hook, "/name").unwrap_or_default();
            if !webhook_matches(hook, req, object.as_ref())? {
                continue;
            }
            let side_effects = str_at(hook, "/sideEffects").unwrap_or("Unknown");
            if req.dry_run && !matches!(side_effects, "None" | "NoneOnDryRun") {
                return Err(ApiError::bad_request(format!(
                    "admission webhook \"{name}\" does not support dry run"
                )));
            }
            let ignore = hook.get("failurePolicy").and_then(Value::as_str) == Some("Ignore");
            let timeout = Duration::from_secs(
                hook.get("timeoutSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(10)
                    .clamp(1, 30),
            );
            let uid = uuid::Uuid::new_v4().to_string();
            let body = serde_json::to_vec(&review(req, object.as_ref(), &uid))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let cc = hook.get("clientConfig").cloned().unwrap_or(Value::Null);
            let outcome = post(&cc, services, body, timeout).await.and_then(|resp| {
                let r = resp
                    .get("response")
                    .cloned()
                    .ok_or("webhook response was absent")?;
                if r.get("uid").and_then(Value::as_str) != Some(uid.as_str()) {
                    return Err(format!(
                        "expected response.uid=\"{uid}\", got {}",
                        r.get("uid").unwrap_or(&Value::Null)
                    ));
                }
                Ok(r)
            });
            let resp = match outcome {
                Ok(r) => r,
                Err(_) if ignore => continue,
                Err(e) => {
                    return Err(ApiError::internal(format!(
                        "Internal error occurred: failed calling webhook \"{name}\": {e}"
                    )));
                }
            };
            for w in resp
                .get("warnings")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                warnings.push(w.to_string());
            }
            if resp.get("allowed").and_then(Value::as_bool) != Some(true) {
                return Err(denial(name, resp.get("status")));
            }
            if let Some(p) = resp.get("patch").and_then(Value::as_str) {
                if !mutating {
                    continue;
                }
                if resp.get("patchType").and_then(Value::as_str) != Some("JSONPatch") {
                    return Err(ApiError::internal(format!(
                        "Internal error occurred: failed calling webhook \"{name}\": unsupported patch type {:?}",
                        resp.get("patchType")
                    )));
                }
                let raw = base64::engine::general_purpose::STANDARD.decode(p).map_err(|e| {
                    ApiError::internal(format!(
                        "Internal error occurred: failed calling webhook \"{name}\": invalid patch: {e}"
                    ))
                })?;
                let patch: Value = serde_json::from_slice(&raw).map_err(|e| {
                    ApiError::internal(format!(
                        "Internal error occurred: failed calling webhook \"{name}\": invalid patch: {e}"
                    ))
                })?;
                if let Some(obj) = object.as_mut() {
                    super::patch::json_patch(obj, &patch).map_err(|e| {
                        ApiError::internal(format!(
                            "Internal error occurred: failed calling webhook \"{name}\": {}",
                            e.message
                        ))
                    })?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_rules_cover_subresources_like_kube_apiserver() {
        let rt = super::super::registry::builtins()
            .into_iter()
            .find(|t| t.plural == "pods")
            .expect("pods");
        let user = User::new("u", "t", super::super::auth::Access::Admin);
        let req = |sub: &'static str| Request {
            operation: "UPDATE",
            rt: &rt,
            version: "v1",
            subresource: sub,
            name: "p",
            namespace: "default",
            old: None,
            user: &user,
            dry_run: false,
            options: Value::Null,
            namespace_labels: None,
        };
        let rule = |res: &str| json!({"operations": ["*"], "apiGroups": [""], "apiVersions": ["v1"], "resources": [res]});
        let cases = [
            ("pods", "", true),
            ("pods", "status", false),
            ("pods/status", "status", true),
            ("pods/status", "", false),
            ("pods/*", "status", true),
            ("pods/*", "", false),
            ("*", "", true),
            ("*", "status", false),
            ("*/*", "", true),
            ("*/*", "status", true),
            ("nodes", "", false),
        ];
        for (res, sub, want) in cases {
            assert_eq!(
                rule_matches(&rule(res), &req(sub)),
                want,
                "{res} vs subresource {sub:?}"
            );
        }
    }

    #[test]
    fn denial_wording_matches_kube_apiserver() {
        let e = denial("v.example.com", Some(&json!({"message": "no", "code": 403})));
        assert_eq!(
            e.message,
            "admission webhook \"v.example.com\" denied the request: no"
        );
        assert_eq!(e.code, 403);
        let e = denial("v.example.com", None);
        assert_eq!(
            e.message,
            "admission webhook \"v.example.com\" denied the request without explanation"
        );
        assert_eq!(e.code, 400);
    }
}
