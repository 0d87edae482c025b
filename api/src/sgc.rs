//! StaticGatewayConfiguration: the user-facing kind. Field names are upstream's, byte for byte, so that
//! existing manifests keep working.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a static egress gateway for pods of one namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "egressgateway.kubernetes.azure.com",
    version = "v1alpha1",
    kind = "StaticGatewayConfiguration",
    plural = "staticgatewayconfigurations",
    namespaced,
    status = "StaticGatewayConfigurationStatus",
    shortname = "sgc",
    category = "egressgateway",
    doc = "StaticGatewayConfiguration gives the pods of its namespace that name it in the annotation \
           kubernetes.azure.com/static-gateway-configuration a static egress IP prefix, routed over WireGuard \
           through a gateway node pool.",
    printcolumn = r#"{"name": "Pool", "type": "string", "description": "AKS gateway node pool", "jsonPath": ".spec.gatewayNodepoolName"}"#,
    printcolumn = r#"{"name": "VMSS", "type": "string", "description": "Gateway VMSS (when not an AKS node pool)", "jsonPath": ".spec.gatewayVmssProfile.vmssName"}"#,
    printcolumn = r#"{"name": "Egress Prefix", "type": "string", "description": "Source addresses the configuration's pods egress with", "jsonPath": ".status.egressIpPrefix"}"#,
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = crate::sgc::one_pool_rule())]
#[x_kube(validation = crate::sgc::private_needs_nodepool_rule())]
#[x_kube(validation = Rule::new("self.provisionPublicIps || !has(self.publicIpPrefixId) || self.publicIpPrefixId == ''")
    .message("rule 6 (public IP prefix ID): publicIpPrefixId must be empty when provisionPublicIps is false")
    .field_path(".publicIpPrefixId"))]
#[x_kube(validation = crate::sgc::nodepool_immutable_rule(
    "gatewayNodepoolName is immutable: create a new StaticGatewayConfiguration on the other pool, move the pods, then delete this one"))]
#[x_kube(validation = crate::sgc::vmss_profile_immutable_rule())]
#[serde(rename_all = "camelCase")]
pub struct StaticGatewayConfigurationSpec {
    /// Name of the AKS gateway node pool (matched case-insensitively against the Azure tag
    /// aks-managed-poolName, and against a GatewayPool of that node pool). Exactly one of
    /// gatewayNodepoolName and gatewayVmssProfile must be set. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_nodepool_name: Option<String>,

    /// Gateway VMSS outside AKS node pools (self-managed clusters). Exactly one of gatewayNodepoolName and
    /// gatewayVmssProfile must be set. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_vmss_profile: Option<GatewayVmssProfile>,

    /// Which traffic of annotated pods goes through the gateway. staticEgressGateway (default): all traffic
    /// except excludeCidrs. azureNetworking: only excludeCidrs go through the gateway, everything else keeps
    /// the node's normal path. Takes effect for pods created after a change.
    #[serde(default)]
    pub default_route: RouteType,

    /// Egress with a public IP prefix (true, default) or with the gateway nodes' static private secondary
    /// IPs (false, private-IP mode; needs a VM-based gateway node pool named by gatewayNodepoolName).
    #[serde(default = "default_true")]
    #[schemars(default = "default_true")]
    pub provision_public_ips: bool,

    /// ARM ID of an existing (bring-your-own) Microsoft.Network/publicIPPrefixes resource in the cluster's
    /// subscription, whose length matches the pool's prefix size. Only with provisionPublicIps: true. When
    /// empty, the operator creates and owns a prefix named egressgateway-<uid>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip_prefix_id: Option<String>,

    /// IPv4 CIDRs that bypass the gateway (staticEgressGateway), or the only CIDRs that use it
    /// (azureNetworking); at most 256. Takes effect for pods created after a change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = crate::sgc::exclude_cidrs_schema)]
    pub exclude_cidrs: Vec<String>,
}

/// Rule 1 in the CRD: exactly one of a non-empty gatewayNodepoolName and a non-empty gatewayVmssProfile.
pub(crate) fn one_pool_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!(
        "(has(self.gatewayNodepoolName) && self.gatewayNodepoolName != '') != {}",
        GatewayVmssProfile::cel_is_set("self")
    ))
    .message(
        "rule 1 (one gateway pool): set exactly one of spec.gatewayNodepoolName and spec.gatewayVmssProfile",
    )
}

/// Rule 5 in the CRD: private-IP mode has no (non-empty) gatewayVmssProfile.
pub(crate) fn private_needs_nodepool_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!(
        "self.provisionPublicIps || !{}",
        GatewayVmssProfile::cel_is_set("self")
    ))
    .message(
        "rule 5 (private IPs need a VM-based pool): provisionPublicIps: false requires gatewayNodepoolName, not \
         gatewayVmssProfile",
    )
    .field_path(".gatewayVmssProfile")
}

/// gatewayNodepoolName cannot change or go once set, the case aside: Azure's node pool names are
/// case-insensitive, and so are the webhook (`rules::same_nodepool`), the pool lookups and the Terraform
/// provider. The CRDs of both kinds share it, each with its `message`. (A null name has no `lowerAscii`: the
/// plain comparison first lets null stay null; null to a name or back fails evaluation, which refuses too.)
pub(crate) fn nodepool_immutable_rule(message: &str) -> kube::core::Rule {
    kube::core::Rule::new(
        "!has(oldSelf.gatewayNodepoolName) || (has(self.gatewayNodepoolName) && (self.gatewayNodepoolName == \
         oldSelf.gatewayNodepoolName || self.gatewayNodepoolName.lowerAscii() == \
         oldSelf.gatewayNodepoolName.lowerAscii()))",
    )
    .message(message)
    .field_path(".gatewayNodepoolName")
}

/// A set profile cannot change or go. An empty one was never set: an upstream-written configuration on a node
/// pool (`gatewayVmssProfile: {}`) may lose it, as the mutating webhook's defaults do on every update.
pub(crate) fn vmss_profile_immutable_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!(
        "!{} || ({} && self.gatewayVmssProfile == oldSelf.gatewayVmssProfile)",
        GatewayVmssProfile::cel_is_set("oldSelf"),
        GatewayVmssProfile::cel_is_set("self")
    ))
    .message(
        "gatewayVmssProfile is immutable: create a new StaticGatewayConfiguration on the other VMSS, move the \
         pods, then delete this one",
    )
    .field_path(".gatewayVmssProfile")
}

/// Missing profile fields must reach the rules as missing (rule 2), not be defaulted to values the schema
/// itself refuses (an apiserver rejects a CRD whose defaults fail its own schema).
pub(crate) fn without_defaults(schema: &mut schemars::Schema) {
    if let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
        for prop in props.values_mut() {
            if let Some(o) = prop.as_object_mut() {
                o.remove("default");
            }
        }
    }
}

/// Rule 7 in the schema, per entry, so the apiserver reports a bad entry together with every other schema and
/// CEL violation (validating webhooks run only after the schema passed). The bounds keep the rule's estimated
/// CEL cost within the apiserver's budget.
pub(crate) fn exclude_cidrs_schema(schema: &mut schemars::Schema) {
    schema.insert("maxItems".into(), crate::cidr::MAX_EXCLUDE_CIDRS.into());
    if let Some(items) = schema.get_mut("items").and_then(|i| i.as_object_mut()) {
        items.insert("maxLength".into(), crate::cidr::MAX_CIDR_LENGTH.into());
        items.insert(
            "x-kubernetes-validations".into(),
            serde_json::json!([{
                "rule": format!("self.matches('{}')", crate::cidr::IPV4_CIDR_PATTERN),
                "message": crate::cidr::EXCLUDE_CIDR_SCHEMA_MESSAGE,
            }]),
        );
    }
}

fn default_true() -> bool {
    true
}

/// A gateway VMSS named by resource group and name (same subscription as the cluster).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::sgc::without_defaults)]
pub struct GatewayVmssProfile {
    /// Resource group of the gateway VMSS; must be in the cluster's subscription.
    #[serde(default)]
    pub vmss_resource_group: String,
    /// Name of the gateway VMSS.
    #[serde(default)]
    pub vmss_name: String,
    /// Length of the public IP prefix each configuration on this VMSS gets: 28 to 31. The VMSS may have at
    /// most 2^(32 - publicIpPrefixSize) instances (/31: 2, /30: 4, /29: 8, /28: 16).
    #[serde(default)]
    #[schemars(range(min = 28, max = 31))]
    pub public_ip_prefix_size: i32,
}

impl GatewayVmssProfile {
    /// Each field's JSON name and its zero value as a CEL literal: what [`Self::default`] holds, and what
    /// upstream's Go type leaves out (`omitempty`).
    pub const ZERO_FIELDS: [(&'static str, &'static str); 3] = [
        ("vmssResourceGroup", "''"),
        ("vmssName", "''"),
        ("publicIpPrefixSize", "0"),
    ];

    /// Upstream treats a profile whose fields are all empty as absent, and writes one: its Go type embeds the
    /// profile as a struct value, which `omitempty` never drops, so every configuration its clients write on a
    /// node pool carries `gatewayVmssProfile: {}`. Every rule counts an empty profile as absent.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// [`Self::is_empty`]'s negation for the CRD's CEL rules: `object` (`self` or `oldSelf`, the spec) has a
    /// gatewayVmssProfile with some field set to a value other than its zero value.
    pub fn cel_is_set(object: &str) -> String {
        let profile = format!("{object}.gatewayVmssProfile");
        let fields = Self::ZERO_FIELDS
            .iter()
            .map(|(field, zero)| format!("(has({profile}.{field}) && {profile}.{field} != {zero})"))
            .collect::<Vec<_>>()
            .join(" || ");
        format!("(has({profile}) && ({fields}))")
    }
}

/// Route selection for annotated pods.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RouteType {
    /// Everything except excludeCidrs goes through the gateway.
    #[default]
    #[serde(rename = "staticEgressGateway")]
    StaticEgressGateway,
    /// Only excludeCidrs go through the gateway.
    #[serde(rename = "azureNetworking")]
    AzureNetworking,
}

impl RouteType {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteType::StaticEgressGateway => "staticEgressGateway",
            RouteType::AzureNetworking => "azureNetworking",
        }
    }
    /// Parses the JSON spelling exactly (case matters, as in the CRD enum).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "staticEgressGateway" => Some(RouteType::StaticEgressGateway),
            "azureNetworking" => Some(RouteType::AzureNetworking),
            _ => None,
        }
    }
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticGatewayConfigurationStatus {
    /// Egress source addresses: the public IP prefix CIDR (e.g. 20.1.2.4/31), or in private-IP mode the
    /// comma-separated private secondary IPs of the gateway nodes (e.g. 10.0.1.8,10.0.1.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_ip_prefix: Option<String>,

    /// Where pods' WireGuard tunnels terminate: the pool's load-balancer frontend and this configuration's port
    /// and public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_server_profile: Option<GatewayServerProfile>,

    /// Per gateway node: its primary IP and the secondary IP this configuration egresses from.
    #[serde(default, rename = "gatewayVMProfiles", skip_serializing_if = "Vec::is_empty")]
    pub gateway_vm_profiles: Vec<GatewayVmProfile>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Accepted (the spec passed the rules and the pool was found) and Ready (Azure is provisioned and the
    /// egress prefix is known), each with the generation it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Gateway endpoint handed to pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayServerProfile {
    /// Private IP of the pool's internal load-balancer frontend (the WireGuard endpoint).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
    /// UDP port of this configuration's load-balancer rule and WireGuard interface (6000-6999).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: i32,
    /// Gateway WireGuard public key (base64).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key: String,
    /// The Secret holding the gateway's WireGuard private key (sgw-<uid> in the operator's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-map-type" = "atomic"))]
    pub private_key_secret_ref: Option<ObjectReference>,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// One gateway node's addresses for a configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayVmProfile {
    /// VMSS instance computer name, or NIC name for VM-based pools (matches the node's identity).
    pub node_name: String,
    /// The node's primary private IP.
    #[serde(rename = "primaryIP", default)]
    pub primary_ip: String,
    /// The private secondary IP this configuration egresses from on that node.
    #[serde(rename = "secondaryIP", default)]
    pub secondary_ip: String,
}

impl StaticGatewayConfigurationSpec {
    /// The VMSS profile, unless absent or (as upstream treats it) all-empty.
    pub fn vmss_profile(&self) -> Option<&GatewayVmssProfile> {
        self.gateway_vmss_profile.as_ref().filter(|p| !p.is_empty())
    }

    /// The node pool name, unless absent or empty.
    pub fn nodepool_name(&self) -> Option<&str> {
        self.gateway_nodepool_name.as_deref().filter(|s| !s.is_empty())
    }

    /// The BYO prefix ID, unless absent or empty.
    pub fn byo_prefix_id(&self) -> Option<&str> {
        self.public_ip_prefix_id.as_deref().filter(|s| !s.is_empty())
    }

    /// The BYO prefix, parsed: the one parse rule 6 checks and the operator carries (None: no BYO prefix).
    pub fn byo_prefix(&self) -> Option<Result<crate::arm::PublicIpPrefixId, crate::arm::ArmIdError>> {
        self.byo_prefix_id().map(crate::arm::parse_public_ip_prefix_id)
    }

    /// Which pool this configuration runs on, when the spec names exactly one.
    pub fn pool_ref(&self) -> Option<crate::PoolRef> {
        match (self.nodepool_name(), self.vmss_profile()) {
            (Some(np), None) => Some(crate::PoolRef::Nodepool(np.to_string())),
            (None, Some(p)) => Some(crate::PoolRef::Vmss {
                resource_group: p.vmss_resource_group.clone(),
                name: p.vmss_name.clone(),
            }),
            _ => None,
        }
    }
}

impl StaticGatewayConfigurationStatus {
    /// What pods need before they can use this configuration (upstream's readiness test, plus the key ref).
    pub fn is_ready_for_pods(&self) -> bool {
        let Some(p) = &self.gateway_server_profile else {
            return false;
        };
        self.egress_ip_prefix.as_deref().is_some_and(|s| !s.is_empty())
            && !p.ip.is_empty()
            && p.port != 0
            && !p.public_key.is_empty()
            && p.private_key_secret_ref.is_some()
    }
}
