//! Defaults as JSON patches (what the mutating webhook returns). The CRD schema carries the same defaults,
//! so objects written while the webhook is unavailable end up identical.

use std::collections::BTreeMap;

use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use jsonptr::PointerBuf;
use serde_json::Value;

use crate::names::{NAMESPACE_DEFAULT_GATEWAY_ANNOTATION, POD_GATEWAY_ANNOTATION};
use crate::pod::PodView;
use crate::rules::{Verdict, decode_sgc_spec};
use crate::sgc::{GatewayVmssProfile, RouteType};

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

fn is_unset(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null))
}

/// Defaults for a StaticGatewayConfiguration: `defaultRoute: staticEgressGateway`, `provisionPublicIps: true`,
/// and an empty `gatewayVmssProfile` dropped (every rule counts it as absent, see
/// [`GatewayVmssProfile::is_empty`]).
pub fn sgc_defaults(obj: &Value) -> Patch {
    let mut ops = Vec::new();
    let spec = obj.get("spec");
    if !matches!(spec, Some(Value::Object(_))) {
        // A missing spec gets one, so the defaults below have somewhere to go.
        if is_unset(spec) {
            ops.push(add(&["spec"], Value::Object(Default::default())));
        } else {
            return Patch(ops); // wrong type: validation reports it
        }
    }
    let field = |k: &str| spec.and_then(|s| s.get(k));
    if is_unset(field("defaultRoute")) {
        ops.push(add(
            &["spec", "defaultRoute"],
            Value::from(RouteType::default().as_str()),
        ));
    }
    if is_unset(field("provisionPublicIps")) {
        ops.push(add(&["spec", "provisionPublicIps"], Value::Bool(true)));
    }
    if has_empty_vmss_profile(spec) {
        ops.push(PatchOperation::Remove(RemoveOperation {
            path: PointerBuf::from_tokens(["spec", "gatewayVmssProfile"]),
        }));
    }
    Patch(ops)
}

/// `spec.gatewayVmssProfile` is present and empty. A profile with a field of the wrong type stays, for
/// validation to report.
fn has_empty_vmss_profile(spec: Option<&Value>) -> bool {
    let mut wrong_types = Verdict::default();
    let decoded = decode_sgc_spec(spec, &mut wrong_types);
    decoded
        .gateway_vmss_profile
        .as_ref()
        .is_some_and(GatewayVmssProfile::is_empty)
        && !wrong_types
            .violations
            .iter()
            .any(|v| v.path.starts_with("spec.gatewayVmssProfile"))
}

/// Injects the namespace's default configuration into a new pod that names none; `None` when nothing
/// changes (pods without an annotation in namespaces without a default pass untouched). hostNetwork pods are
/// never given one: they cannot use a gateway.
pub fn pod_default_gateway(
    pod: &PodView,
    namespace_annotations: Option<&BTreeMap<String, String>>,
) -> Option<Patch> {
    let default = namespace_annotations?
        .get(NAMESPACE_DEFAULT_GATEWAY_ANNOTATION)
        .filter(|s| !s.is_empty())?;
    if pod.host_network() || pod.gateway().is_some() {
        return None;
    }
    let op = match pod.metadata.annotations {
        Some(_) => add(
            &["metadata", "annotations", POD_GATEWAY_ANNOTATION],
            Value::from(default.as_str()),
        ),
        None => add(
            &["metadata", "annotations"],
            serde_json::json!({ POD_GATEWAY_ANNOTATION: default }),
        ),
    };
    Some(Patch(vec![op]))
}
