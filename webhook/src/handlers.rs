//! Admission decisions per endpoint: pure functions of the request, the cluster facts and the policy.

use api::pod::PodView;
use api::rules::{self, Verdict};
use serde_json::Value;

use crate::facts::ClusterFacts;
use crate::review::{Cause, Denial, Request, Response};

/// The webhook's endpoints: one path per kind and purpose, so each webhook configuration is narrow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/validate-staticgatewayconfiguration`
    ValidateSgc,
    /// `/mutate-staticgatewayconfiguration`
    MutateSgc,
    /// `/validate-gatewaypool`
    ValidatePool,
    /// `/mutate-pod`: inject the namespace default.
    MutatePod,
    /// `/validate-pod`: deny annotated hostNetwork pods, warn about missing configurations.
    ValidatePod,
    /// `/validate-podendpoint`: only the node agent writes PodEndpoints.
    ValidatePodEndpoint,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 6] = [
        Endpoint::ValidateSgc,
        Endpoint::MutateSgc,
        Endpoint::ValidatePool,
        Endpoint::MutatePod,
        Endpoint::ValidatePod,
        Endpoint::ValidatePodEndpoint,
    ];

    /// URL path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ValidateSgc => "/validate-staticgatewayconfiguration",
            Endpoint::MutateSgc => "/mutate-staticgatewayconfiguration",
            Endpoint::ValidatePool => "/validate-gatewaypool",
            Endpoint::MutatePod => "/mutate-pod",
            Endpoint::ValidatePod => "/validate-pod",
            Endpoint::ValidatePodEndpoint => "/validate-podendpoint",
        }
    }

    /// `(group, kind)` the endpoint admits.
    pub fn kind(self) -> (&'static str, &'static str) {
        match self {
            Endpoint::ValidateSgc | Endpoint::MutateSgc => (api::names::GROUP, "StaticGatewayConfiguration"),
            Endpoint::ValidatePool => (api::names::GROUP, "GatewayPool"),
            Endpoint::MutatePod | Endpoint::ValidatePod => ("", "Pod"),
            Endpoint::ValidatePodEndpoint => (api::names::GROUP, "PodEndpoint"),
        }
    }
}

/// Who may do what: configuration from flags.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Users allowed to create/update PodEndpoints: the node agent's service account(s).
    pub podendpoint_writers: Vec<String>,
}

/// Reviews one decoded request.
pub fn review(endpoint: Endpoint, req: &Request<'_>, facts: &dyn ClusterFacts, policy: &Policy) -> Response {
    let (group, kind) = endpoint.kind();
    if req.kind.group != group || req.kind.kind != kind {
        return Response::deny(
            &req.uid,
            bad_request(format!(
                "{} admits {kind} objects, got {}/{}; check the webhook configuration's rules",
                endpoint.path(),
                if req.kind.group.is_empty() {
                    "core"
                } else {
                    &req.kind.group
                },
                req.kind.kind
            )),
        );
    }
    // Subresources (status, scale, ...) are written by controllers, not users: nothing to check.
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return Response::allow(&req.uid);
    }
    if !matches!(req.operation.as_str(), "CREATE" | "UPDATE") {
        return Response::allow(&req.uid);
    }
    match endpoint {
        Endpoint::ValidateSgc => validate_sgc(req, facts),
        Endpoint::MutateSgc => mutate(req, api::defaults::sgc_defaults),
        Endpoint::ValidatePool => validate_pool(req, facts),
        Endpoint::MutatePod => mutate_pod(req, facts),
        Endpoint::ValidatePod => validate_pod(req, facts),
        Endpoint::ValidatePodEndpoint => validate_podendpoint(req, policy),
    }
}

fn bad_request(message: String) -> Denial {
    Denial {
        code: 400,
        reason: "BadRequest",
        message,
        causes: Vec::new(),
    }
}

/// Parses `request.object` or `request.oldObject`; the error is the message of a BadRequest denial.
fn parse_object(req: &Request<'_>, which: &str) -> Result<Option<Value>, String> {
    let raw = if which == "object" {
        req.object
    } else {
        req.old_object
    };
    match raw {
        None => Ok(None),
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Null) => Ok(None),
            Ok(v) if v.is_object() => Ok(Some(v)),
            Ok(_) => Err(format!("request.{which} is not a JSON object")),
            Err(e) => Err(format!("request.{which} is not a JSON object: {e}")),
        },
    }
}

fn new_and_old(req: &Request<'_>) -> Result<(Value, Option<Value>), Box<Response>> {
    let refuse = |m: String| Box::new(Response::deny(&req.uid, bad_request(m)));
    let new = parse_object(req, "object")
        .map_err(refuse)?
        .ok_or_else(|| refuse("request.object is missing".into()))?;
    let old = parse_object(req, "oldObject").map_err(refuse)?;
    Ok((new, old))
}

fn verdict_response(req: &Request<'_>, kind: &str, verdict: Verdict) -> Response {
    let warnings = verdict.warnings.iter().map(ToString::to_string).collect();
    if verdict.is_allowed() {
        return Response {
            warnings,
            ..Response::allow(&req.uid)
        };
    }
    let name = req
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("<generated>");
    let id = match req.namespace.as_deref().filter(|n| !n.is_empty()) {
        Some(ns) => api::names::namespaced(ns, name),
        None => name.to_string(),
    };
    let causes = verdict
        .violations
        .iter()
        .map(|v| Cause {
            field: v.path.clone(),
            message: v.message.clone(),
            reason: "FieldValueInvalid",
        })
        .collect();
    Response {
        warnings,
        ..Response::deny(
            &req.uid,
            // 400/BadRequest, not 422/Invalid: for Invalid, kubectl prints only the causes as "The request is
            // invalid" and drops which webhook denied it; users know webhook denials by that line.
            Denial {
                code: 400,
                reason: "BadRequest",
                message: format!("{kind} {id} is invalid: {}", verdict.message()),
                causes,
            },
        )
    }
}

fn validate_sgc(req: &Request<'_>, facts: &dyn ClusterFacts) -> Response {
    let (new, old) = match new_and_old(req) {
        Ok(pair) => pair,
        Err(resp) => return *resp,
    };
    let mut deleting = None;
    let mut verdict = rules::validate_sgc_object_with(&new, old.as_ref(), |spec| {
        // Only a new configuration can land on a deleting pool: the pool reference is immutable, and existing
        // configurations must stay updatable (the operator removes their finalizers) while the pool goes.
        if old.is_none() {
            deleting = spec
                .pool_ref()
                .and_then(|p| facts.deleting_pool(&p))
                .map(|name| rules::pool_deleting_violation(spec, &name));
        }
        facts.pool_facts(spec.pool_ref().as_ref())
    });
    verdict.violations.extend(deleting);
    verdict_response(req, "StaticGatewayConfiguration", verdict)
}

fn validate_pool(req: &Request<'_>, facts: &dyn ClusterFacts) -> Response {
    let (new, old) = match new_and_old(req) {
        Ok(pair) => pair,
        Err(resp) => return *resp,
    };
    let verdict = rules::validate_pool_object_with(&new, old.as_ref(), |spec| {
        spec.pool_ref().and_then(|p| facts.node_count(&p))
    });
    verdict_response(req, "GatewayPool", verdict)
}

fn mutate(req: &Request<'_>, defaults: fn(&Value) -> json_patch::Patch) -> Response {
    let obj = match parse_object(req, "object") {
        Ok(Some(obj)) => obj,
        Ok(None) => return Response::allow(&req.uid),
        Err(message) => return Response::deny(&req.uid, bad_request(message)),
    };
    let patch = defaults(&obj);
    Response {
        patch: (!patch.0.is_empty()).then_some(patch),
        ..Response::allow(&req.uid)
    }
}

/// The part of the gateway annotation key after its `/` (which JSON may escape as `\/`). JSON may write any
/// character as `\uXXXX`, but kube-apiserver's encoder escapes only `<`, `>`, `&`, control characters and
/// U+2028/9, none of which is in this tail, so searching the raw text for it is exact.
const ANNOTATION_KEY_TAIL: &str = "static-gateway-configuration";

fn pod_view(req: &Request<'_>) -> Result<PodView, String> {
    let Some(raw) = req.object else {
        return Ok(PodView::default());
    };
    serde_json::from_str(raw.get()).map_err(|e| format!("request.object is not a Pod: {e}"))
}

fn mutate_pod(req: &Request<'_>, facts: &dyn ClusterFacts) -> Response {
    if req.operation != "CREATE" {
        return Response::allow(&req.uid);
    }
    // Most namespaces name no default: answer from the namespace alone, without decoding the pod.
    let Some(ns) = req.namespace.as_deref() else {
        return Response::allow(&req.uid);
    };
    let Some(annotations) = facts.namespace_annotations(ns) else {
        return Response::allow(&req.uid);
    };
    if !annotations.contains_key(api::names::NAMESPACE_DEFAULT_GATEWAY_ANNOTATION) {
        return Response::allow(&req.uid);
    }
    let pod = match pod_view(req) {
        Ok(p) => p,
        Err(message) => return Response::deny(&req.uid, bad_request(message)),
    };
    if pod.gateway().is_some() || pod.host_network() {
        return Response::allow(&req.uid);
    }
    let patch = api::defaults::pod_default_gateway(&pod, Some(&annotations));
    Response {
        patch,
        ..Response::allow(&req.uid)
    }
}

fn validate_pod(req: &Request<'_>, facts: &dyn ClusterFacts) -> Response {
    if req.operation != "CREATE" {
        return Response::allow(&req.uid);
    }
    // A pod whose JSON never mentions the annotation key cannot carry it (see ANNOTATION_KEY_TAIL): allow
    // without decoding.
    if !req
        .object
        .is_some_and(|raw| raw.get().contains(ANNOTATION_KEY_TAIL))
    {
        return Response::allow(&req.uid);
    }
    let pod = match pod_view(req) {
        Ok(p) => p,
        Err(message) => return Response::deny(&req.uid, bad_request(message)),
    };
    let Some(gateway) = pod.gateway() else {
        return Response::allow(&req.uid);
    };
    let mut verdict = rules::validate_pod(&pod);
    if verdict.is_allowed()
        && let Some(ns) = req.namespace.as_deref()
        && facts.sgc_exists(ns, gateway) == Some(false)
    {
        verdict.warnings.push(rules::missing_sgc_warning(ns, gateway));
    }
    verdict_response(req, "Pod", verdict)
}

fn validate_podendpoint(req: &Request<'_>, policy: &Policy) -> Response {
    let user = &req.user_info.username;
    if policy.podendpoint_writers.iter().any(|w| w == user) {
        return Response::allow(&req.uid);
    }
    Response::deny(
        &req.uid,
        Denial {
            code: 403,
            reason: "Forbidden",
            message: format!(
                "PodEndpoints register WireGuard peers on gateway nodes and are written only by the node agent ({}); \
                 user \"{user}\" may not {} them",
                if policy.podendpoint_writers.is_empty() {
                    "none configured".to_string()
                } else {
                    policy.podendpoint_writers.join(", ")
                },
                req.operation.to_lowercase()
            ),
            causes: Vec::new(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::ANNOTATION_KEY_TAIL;

    /// The pod fast path searches for this tail: if the annotation key changed and the tail did not, every pod
    /// would be allowed without a look.
    #[test]
    fn annotation_key_tail_is_the_annotation_keys_name() {
        assert_eq!(
            api::names::POD_GATEWAY_ANNOTATION
                .rsplit_once('/')
                .map(|(_, n)| n),
            Some(ANNOTATION_KEY_TAIL)
        );
    }
}
