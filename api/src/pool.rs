//! GatewayPool: new in this product. A cluster-scoped object per gateway node pool that carries the
//! pool-level facts (identity, public IP prefix size, declared size) that upstream kept in Azure tags, and
//! reports the pool's instances and load-balancer frontend.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a gateway pool.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "egressgateway.kubernetes.azure.com",
    version = "v1alpha1",
    kind = "GatewayPool",
    plural = "gatewaypools",
    status = "GatewayPoolStatus",
    shortname = "gwp",
    category = "egressgateway",
    doc = "GatewayPool is a set of gateway nodes (an AKS gateway node pool, VMSS- or VM-based, or a self-managed \
           VMSS) that terminates the WireGuard tunnels of StaticGatewayConfigurations and egresses their traffic.",
    printcolumn = r#"{"name": "Nodepool", "type": "string", "jsonPath": ".spec.gatewayNodepoolName"}"#,
    printcolumn = r#"{"name": "VMSS", "type": "string", "jsonPath": ".spec.gatewayVmssProfile.vmssName"}"#,
    printcolumn = r#"{"name": "Prefix", "type": "integer", "description": "Public IP prefix length per configuration", "jsonPath": ".spec.publicIpPrefixSize"}"#,
    printcolumn = r#"{"name": "Instances", "type": "integer", "description": "Ready gateway instances", "jsonPath": ".status.readyInstances"}"#,
    printcolumn = r#"{"name": "Frontend", "type": "string", "jsonPath": ".status.loadBalancerFrontend.ip", "priority": 1}"#,
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("(has(self.gatewayNodepoolName) && self.gatewayNodepoolName != '') != has(self.gatewayVmssProfile)")
    .message("rule 1 (one pool identity): set exactly one of spec.gatewayNodepoolName and spec.gatewayVmssProfile"))]
#[x_kube(validation = crate::sgc::nodepool_immutable_rule(
    "gatewayNodepoolName is immutable: a GatewayPool always describes the same nodes; create another GatewayPool instead"))]
#[x_kube(validation = Rule::new("!has(oldSelf.gatewayVmssProfile) || (has(self.gatewayVmssProfile) && self.gatewayVmssProfile == oldSelf.gatewayVmssProfile)")
    .message("gatewayVmssProfile is immutable: a GatewayPool always describes the same nodes; create another GatewayPool instead")
    .field_path(".gatewayVmssProfile"))]
#[x_kube(validation = Rule::new("self.publicIpPrefixSize == oldSelf.publicIpPrefixSize")
    .message("publicIpPrefixSize is immutable: Azure cannot resize public IP prefixes; create another pool")
    .field_path(".publicIpPrefixSize"))]
#[x_kube(validation = Rule::new("!has(self.instanceCount) || self.publicIpPrefixSize < 28 || self.publicIpPrefixSize > 31 || self.instanceCount <= [16, 8, 4, 2][self.publicIpPrefixSize - 28]")
    .message("rule 4 (instances fit the prefix): instanceCount exceeds the addresses of a /publicIpPrefixSize prefix")
    .field_path(".instanceCount"))]
#[serde(rename_all = "camelCase")]
pub struct GatewayPoolSpec {
    /// AKS node pool name (matched case-insensitively against the Azure tag aks-managed-poolName and the node
    /// label kubernetes.azure.com/agentpool). Exactly one of gatewayNodepoolName and gatewayVmssProfile.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_nodepool_name: Option<String>,

    /// A self-managed gateway VMSS. Exactly one of gatewayNodepoolName and gatewayVmssProfile. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_vmss_profile: Option<PoolVmssProfile>,

    /// Length of the public IP prefix each configuration on this pool gets: 28 to 31. Bounds the pool size:
    /// at most 2^(32 - publicIpPrefixSize) instances. Immutable (Azure cannot resize prefixes).
    #[schemars(range(min = 28, max = 31))]
    pub public_ip_prefix_size: i32,

    /// Declared maximum number of gateway instances (optional). Checked against the prefix size, so that a
    /// pool that is planned to grow is refused before its nodes exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub instance_count: Option<i32>,
}

/// A self-managed gateway VMSS.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolVmssProfile {
    /// Resource group of the VMSS (cluster's subscription).
    #[schemars(length(min = 1))]
    pub vmss_resource_group: String,
    /// Name of the VMSS.
    #[schemars(length(min = 1))]
    pub vmss_name: String,
}

/// Observed state of a pool, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayPoolStatus {
    /// How the pool's nodes are provisioned in Azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_type: Option<PoolType>,
    /// Stable identifier that names the pool's load-balancer frontend and backend pool (VMSS uniqueId, or a
    /// name-derived UUID for VM-based pools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_uid: Option<String>,
    /// The gateway instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<PoolInstance>,
    /// Number of instances that are provisioned and ready.
    #[serde(default)]
    pub ready_instances: i32,
    /// The internal load-balancer frontend all of this pool's configurations share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_frontend: Option<LoadBalancerFrontend>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (Azure resources provisioned, instances healthy) and Degraded, each with the generation it
    /// describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// How a pool's nodes exist in Azure.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PoolType {
    /// Virtual machine scale set (public or private IP mode).
    VirtualMachineScaleSet,
    /// AKS VirtualMachines pool with pre-created NICs (private IP mode).
    VirtualMachines,
}

/// One gateway instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolInstance {
    /// Instance name as Azure knows it (VMSS instance computer name, or NIC name for VM-based pools).
    pub name: String,
    /// Kubernetes Node name, when the node is registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Primary private IP.
    #[serde(rename = "primaryIP", default, skip_serializing_if = "String::is_empty")]
    pub primary_ip: String,
    /// Azure provisioning state (Succeeded, Updating, Failed, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provisioning_state: String,
    /// Provisioned and up to date with the pool's model.
    #[serde(default)]
    pub ready: bool,
}

/// An internal load-balancer frontend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerFrontend {
    /// Frontend IP configuration name.
    pub name: String,
    /// Private IP of the frontend.
    pub ip: String,
}

impl GatewayPoolSpec {
    /// Which nodes this pool describes, when the spec names exactly one identity.
    pub fn pool_ref(&self) -> Option<crate::PoolRef> {
        let np = self.gateway_nodepool_name.as_deref().filter(|s| !s.is_empty());
        match (np, &self.gateway_vmss_profile) {
            (Some(np), None) => Some(crate::PoolRef::Nodepool(np.to_string())),
            (None, Some(p)) => Some(crate::PoolRef::Vmss {
                resource_group: p.vmss_resource_group.clone(),
                name: p.vmss_name.clone(),
            }),
            _ => None,
        }
    }
}
