//! Internal kinds written by the agents. Names and fields are upstream's (troubleshooting guides show them).

use kube::CustomResource;

use crate::names::POD_ENDPOINT_SANDBOX_ANNOTATION;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A pod's WireGuard peer registration, written by the node agent when the CNI plugin sets up an annotated
/// pod; read by gateway agents to add the peer. Owned by (and garbage-collected with) its Pod.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[kube(
    group = "egressgateway.kubernetes.azure.com",
    version = "v1alpha1",
    kind = "PodEndpoint",
    plural = "podendpoints",
    namespaced,
    status = "PodEndpointStatus",
    category = "egressgateway",
    doc = "PodEndpoint registers an annotated pod's WireGuard public key and IP with its gateway. Written by the \
           node agent only.",
    printcolumn = r#"{"name": "Gateway", "type": "string", "jsonPath": ".spec.staticGatewayConfiguration"}"#,
    printcolumn = r#"{"name": "Pod IP", "type": "string", "jsonPath": ".spec.podIpAddress"}"#,
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PodEndpointSpec {
    /// Name of the StaticGatewayConfiguration (same namespace) the pod uses.
    #[serde(default)]
    pub static_gateway_configuration: String,
    /// The pod's IPv4 address as a /32 (the peer's allowed IP on the gateway).
    #[serde(default)]
    pub pod_ip_address: String,
    /// The pod's WireGuard public key (base64).
    #[serde(default)]
    pub pod_public_key: String,
}

impl PodEndpoint {
    /// The uid of the Pod controlling it (its controller owner reference), if recorded: the pod it belongs to.
    pub fn controller_pod_uid(&self) -> Option<&str> {
        self.metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "Pod" && o.controller == Some(true))
            .map(|o| o.uid.as_str())
            .filter(|u| !u.is_empty())
    }

    /// The pod sandbox whose CNI ADD wrote it ([`POD_ENDPOINT_SANDBOX_ANNOTATION`]), if recorded.
    pub fn recorded_sandbox(&self) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POD_ENDPOINT_SANDBOX_ANNOTATION))
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// PodEndpoint has no status (kept as an empty object for upstream compatibility).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct PodEndpointStatus {}

/// Debug view of what one gateway node has applied. Kept small: entries are removed as soon as the
/// configuration or peer is gone (upstream once grew past etcd's 1.5 MB object limit).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[kube(
    group = "egressgateway.kubernetes.azure.com",
    version = "v1alpha1",
    kind = "GatewayStatus",
    plural = "gatewaystatuses",
    namespaced,
    status = "GatewayStatusStatus",
    category = "egressgateway",
    doc = "GatewayStatus lists the configurations and peers a gateway node has applied (one object per node, in \
           the agent's namespace)."
)]
#[serde(rename_all = "camelCase")]
// Both lists are written even when empty: the agent server-side applies this object, and an applied
// `spec: {}` owns only `spec` itself (`f:spec: {}` in managedFields), not the lists, so kube-apiserver removes
// the lists the agent owned and leaves `spec: null`, which the schema refuses (`spec` is a required object):
// the last entry could never be removed.
pub struct GatewayStatusSpec {
    /// Configurations whose WireGuard interface is up on this node.
    #[serde(default)]
    pub ready_gateway_configurations: Vec<GatewayConfigurationStatus>,
    /// Pod peers configured on this node.
    #[serde(default)]
    pub ready_peer_configurations: Vec<PeerConfigurationStatus>,
}

/// One applied configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayConfigurationStatus {
    /// `<namespace>/<name>` of the StaticGatewayConfiguration.
    pub static_gateway_configuration: String,
    /// The WireGuard interface, `wg-<port>`.
    pub interface_name: String,
}

/// One applied pod peer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerConfigurationStatus {
    /// `<namespace>/<name>` of the PodEndpoint.
    pub pod_endpoint: String,
    /// The WireGuard interface, `wg-<port>`.
    pub interface_name: String,
    /// The peer's public key.
    pub public_key: String,
}

/// GatewayStatus has no status (kept as an empty object for upstream compatibility).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct GatewayStatusStatus {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_gateway_status_spec_still_names_both_lists() {
        // What the agent server-side applies once the last configuration is gone: the applier must keep
        // owning the (empty) lists, or kube-apiserver leaves `spec: null` and refuses the object.
        let v = serde_json::to_value(GatewayStatusSpec::default()).expect("serialises");
        assert_eq!(
            v,
            serde_json::json!({"readyGatewayConfigurations": [], "readyPeerConfigurations": []})
        );
    }
}
