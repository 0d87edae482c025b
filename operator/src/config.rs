//! The Azure cloud configuration, in upstream's JSON format (`azure.json`, the Helm value
//! `config.azureCloudConfig`).
//!
//! Upstream decodes it with Go's `encoding/json`, which matches object keys case-insensitively: the Helm chart
//! writes `subscriptionId` while the struct tag says `subscriptionID`, and both must load. Unknown keys are
//! ignored so that a complete AKS `azure.json` loads too. Every string is trimmed before validation, as
//! upstream's `DefaultAndValidate` does, and validation errors use upstream's messages.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

/// Default user agent (upstream's).
pub const DEFAULT_USER_AGENT: &str = "kube-egress-gateway-controller";
/// Public-cloud Resource Manager endpoint.
pub const DEFAULT_RESOURCE_MANAGER_ENDPOINT: &str = "https://management.azure.com";
/// Public-cloud Entra ID authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// An Azure cloud the `cloud` key names: where its Resource Manager and Entra ID authority are. The ARM token's
/// scope is `<resource manager endpoint>/.default`, as azure_mgmt_* clients derive it, so it follows the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AzureCloud {
    /// Resource Manager endpoint.
    pub resource_manager_endpoint: &'static str,
    /// Entra ID authority host.
    pub authority_host: &'static str,
}

/// The names `cloud` accepts, compared case-insensitively (cloud-provider-azure's, from go-autorest's
/// `EnvironmentFromName`), and the endpoints of each (the values of azure_core's `resource_manager_endpoint`
/// and `authority_hosts` statics, which are lazily built URLs and so cannot serve as constants here).
const AZURE_CLOUDS: &[(&str, AzureCloud)] = &[
    ("AzurePublicCloud", PUBLIC_CLOUD),
    ("AzureCloud", PUBLIC_CLOUD),
    ("AzureChinaCloud", CHINA_CLOUD),
    ("AzureUSGovernmentCloud", US_GOVERNMENT_CLOUD),
    ("AzureUSGovernment", US_GOVERNMENT_CLOUD),
];
const PUBLIC_CLOUD: AzureCloud = AzureCloud {
    resource_manager_endpoint: DEFAULT_RESOURCE_MANAGER_ENDPOINT,
    authority_host: DEFAULT_AUTHORITY_HOST,
};
const CHINA_CLOUD: AzureCloud = AzureCloud {
    resource_manager_endpoint: "https://management.chinacloudapi.cn",
    authority_host: "https://login.chinacloudapi.cn",
};
const US_GOVERNMENT_CLOUD: AzureCloud = AzureCloud {
    resource_manager_endpoint: "https://management.usgovcloudapi.net",
    authority_host: "https://login.microsoftonline.us",
};

impl AzureCloud {
    /// The cloud `name` names (case-insensitive, surrounding blanks ignored; empty: the public cloud).
    pub fn named(name: &str) -> Result<Self, ConfigError> {
        let name = name.trim();
        if name.is_empty() {
            return Ok(PUBLIC_CLOUD);
        }
        AZURE_CLOUDS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, c)| *c)
            .ok_or_else(|| ConfigError::UnknownCloud(name.to_string()))
    }
}

/// How the operator authenticates to Azure.
#[derive(Clone, PartialEq, Eq)]
pub enum AzureAuth {
    /// `aadClientId` + `aadClientSecret` in `tenantId`.
    ServicePrincipal {
        /// Tenant ID.
        tenant_id: String,
        /// Application (client) ID.
        client_id: String,
        /// Client secret (never printed).
        client_secret: String,
    },
    /// `useManagedIdentityExtension`, optionally a user-assigned identity's client ID.
    ManagedIdentity {
        /// `userAssignedIdentityID`; `None` for the system-assigned identity.
        user_assigned_identity_id: Option<String>,
    },
    /// Workload identity: a federated service-account token exchanged for an Azure token.
    WorkloadIdentity {
        /// Tenant ID.
        tenant_id: String,
        /// Client ID of the federated identity.
        client_id: String,
        /// Path of the projected service-account token.
        token_file: String,
    },
}

impl fmt::Debug for AzureAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureAuth::ServicePrincipal {
                tenant_id, client_id, ..
            } => f
                .debug_struct("ServicePrincipal")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("client_secret", &"<redacted>")
                .finish(),
            AzureAuth::ManagedIdentity {
                user_assigned_identity_id,
            } => f
                .debug_struct("ManagedIdentity")
                .field("user_assigned_identity_id", user_assigned_identity_id)
                .finish(),
            AzureAuth::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => f
                .debug_struct("WorkloadIdentity")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("token_file", token_file)
                .finish(),
        }
    }
}

/// The validated cloud configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudConfig {
    /// `cloud`, e.g. `AzurePublicCloud`.
    pub cloud: String,
    /// `location` of the created resources (load balancer, prefixes).
    pub location: String,
    /// `subscriptionID` of the cluster.
    pub subscription_id: String,
    /// `resourceGroup`: the cluster's node resource group (VMSS, VMs, NICs, managed prefixes).
    pub resource_group: String,
    /// `gatewayLoadBalancerName` (default `kubeegressgateway-ilb`).
    pub load_balancer_name: String,
    /// `loadBalancerResourceGroup` (default `resourceGroup`).
    pub load_balancer_resource_group: String,
    /// `vnetName`.
    pub vnet_name: String,
    /// `vnetResourceGroup` (default `resourceGroup`).
    pub vnet_resource_group: String,
    /// `subnetName`: the subnet of the load-balancer frontends.
    pub subnet_name: String,
    /// `userAgent` (default `kube-egress-gateway-controller`).
    pub user_agent: String,
    /// `resourceManagerEndpoint` (default: `cloud`'s); tests point it at the simulator. The ARM token's
    /// scope is this endpoint + `/.default`.
    pub resource_manager_endpoint: String,
    /// `activeDirectoryAuthorityHost` (or `AZURE_AUTHORITY_HOST`; default: `cloud`'s); tests point it at the
    /// simulator.
    pub authority_host: String,
    /// `imdsEndpoint` (or `AZURE_POD_IDENTITY_AUTHORITY_HOST`-style override) for managed identity in tests.
    pub imds_endpoint: Option<String>,
    /// Credentials.
    pub auth: AzureAuth,
}

/// A cloud configuration that cannot be used; the message says which field and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, or not a JSON object.
    #[error("cloud config is not a JSON object: {0}")]
    NotJson(String),
    /// A key has the wrong JSON type.
    #[error("cloud config key {key}: expected {expected}")]
    WrongType {
        /// The key as written in the file.
        key: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A rule of upstream's `DefaultAndValidate` (message is upstream's).
    #[error("{0}")]
    Invalid(&'static str),
    /// `cloud` names no Azure cloud the operator knows the endpoints of.
    #[error(
        "cloud config key cloud: '{0}' is not a known Azure cloud; use AzurePublicCloud (or AzureCloud), \
         AzureChinaCloud, or AzureUSGovernmentCloud (or AzureUSGovernment), or set resourceManagerEndpoint and \
         activeDirectoryAuthorityHost for another cloud"
    )]
    UnknownCloud(String),
}

/// Case-insensitive view of the JSON object (Go `encoding/json` semantics: later keys win).
struct Keys(HashMap<String, (String, Value)>);

impl Keys {
    fn string(&self, key: &str) -> Result<String, ConfigError> {
        match self.0.get(&key.to_ascii_lowercase()) {
            None | Some((_, Value::Null)) => Ok(String::new()),
            Some((_, Value::String(s))) => Ok(s.trim().to_string()),
            Some((k, _)) => Err(ConfigError::WrongType {
                key: k.clone(),
                expected: "a string",
            }),
        }
    }

    fn boolean(&self, key: &str) -> Result<bool, ConfigError> {
        match self.0.get(&key.to_ascii_lowercase()) {
            None | Some((_, Value::Null)) => Ok(false),
            Some((_, Value::Bool(b))) => Ok(*b),
            Some((k, _)) => Err(ConfigError::WrongType {
                key: k.clone(),
                expected: "true or false",
            }),
        }
    }
}

fn or_default(s: String, default: &str) -> String {
    if s.is_empty() { default.to_string() } else { s }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl CloudConfig {
    /// Parses and validates the JSON text; `env` looks up environment variables (workload identity's
    /// `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`).
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::NotJson(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(ConfigError::NotJson("the top level is not an object".into()));
        };
        let keys = Keys(
            map.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), (k, v)))
                .collect(),
        );
        let env = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());

        let cloud = keys.string("cloud")?;
        let location = keys.string("location")?;
        let subscription_id = keys.string("subscriptionID")?;
        let resource_group = keys.string("resourceGroup")?;
        let vnet_name = keys.string("vnetName")?;
        let subnet_name = keys.string("subnetName")?;
        let use_msi = keys.boolean("useManagedIdentityExtension")?;
        let use_wi = keys.boolean("useFederatedWorkloadIdentityExtension")?;
        let user_assigned = keys.string("userAssignedIdentityID")?;
        let mut tenant_id = keys.string("tenantId")?;
        let mut client_id = keys.string("aadClientId")?;
        let client_secret = keys.string("aadClientSecret")?;
        let mut token_file = keys.string("aadFederatedTokenFile")?;

        if cloud.is_empty() {
            return Err(ConfigError::Invalid("cloud is empty"));
        }
        if location.is_empty() {
            return Err(ConfigError::Invalid("location is empty"));
        }
        if subscription_id.is_empty() {
            return Err(ConfigError::Invalid("subscription ID is empty"));
        }

        // Workload identity: explicit flag, or the webhook-injected token file (as azclient does).
        if token_file.is_empty() {
            token_file = env("AZURE_FEDERATED_TOKEN_FILE").unwrap_or_default();
        }
        let auth = if use_msi {
            AzureAuth::ManagedIdentity {
                user_assigned_identity_id: non_empty(user_assigned),
            }
        } else if use_wi || (client_secret.is_empty() && !token_file.is_empty()) {
            if client_id.is_empty() {
                client_id = env("AZURE_CLIENT_ID").unwrap_or_default();
            }
            if tenant_id.is_empty() {
                tenant_id = env("AZURE_TENANT_ID").unwrap_or_default();
            }
            if !user_assigned.is_empty() {
                return Err(ConfigError::Invalid(
                    "useManagedIdentityExtension needs to be true when userAssignedIdentityID is provided",
                ));
            }
            if client_id.is_empty() {
                return Err(ConfigError::Invalid(
                    "workload identity needs aadClientId or AZURE_CLIENT_ID",
                ));
            }
            if tenant_id.is_empty() {
                return Err(ConfigError::Invalid(
                    "workload identity needs tenantId or AZURE_TENANT_ID",
                ));
            }
            if token_file.is_empty() {
                return Err(ConfigError::Invalid(
                    "workload identity needs aadFederatedTokenFile or AZURE_FEDERATED_TOKEN_FILE",
                ));
            }
            AzureAuth::WorkloadIdentity {
                tenant_id: tenant_id.clone(),
                client_id,
                token_file,
            }
        } else {
            if !user_assigned.is_empty() {
                return Err(ConfigError::Invalid(
                    "useManagedIdentityExtension needs to be true when userAssignedIdentityID is provided",
                ));
            }
            if client_id.is_empty() || client_secret.is_empty() {
                return Err(ConfigError::Invalid(
                    "AAD client ID or AAD client secret is empty",
                ));
            }
            if tenant_id.is_empty() {
                return Err(ConfigError::Invalid("tenant ID is empty"));
            }
            AzureAuth::ServicePrincipal {
                tenant_id: tenant_id.clone(),
                client_id,
                client_secret,
            }
        };

        if resource_group.is_empty() {
            return Err(ConfigError::Invalid("resource group is empty"));
        }
        if vnet_name.is_empty() {
            return Err(ConfigError::Invalid("virtual network name is empty"));
        }
        if subnet_name.is_empty() {
            return Err(ConfigError::Invalid("virtual network subnet name is empty"));
        }

        // `cloud` chooses the endpoints (and so the token scope); explicit endpoints override it. A cloud the
        // operator has no endpoints for is usable only with both given.
        let explicit_arm = non_empty(keys.string("resourceManagerEndpoint")?);
        let explicit_authority =
            non_empty(keys.string("activeDirectoryAuthorityHost")?).or_else(|| env("AZURE_AUTHORITY_HOST"));
        let known = match AzureCloud::named(&cloud) {
            Ok(c) => Some(c),
            Err(_) if explicit_arm.is_some() && explicit_authority.is_some() => None,
            Err(e) => return Err(e),
        };
        let authority_host = explicit_authority
            .or_else(|| known.map(|c| c.authority_host.to_string()))
            .unwrap_or_default();
        let resource_manager_endpoint = explicit_arm
            .or_else(|| known.map(|c| c.resource_manager_endpoint.to_string()))
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_string();
        Ok(CloudConfig {
            cloud,
            location,
            subscription_id,
            load_balancer_name: or_default(
                keys.string("gatewayLoadBalancerName")?,
                api::names::DEFAULT_LOAD_BALANCER_NAME,
            ),
            load_balancer_resource_group: or_default(
                keys.string("loadBalancerResourceGroup")?,
                &resource_group,
            ),
            vnet_resource_group: or_default(keys.string("vnetResourceGroup")?, &resource_group),
            resource_group,
            vnet_name,
            subnet_name,
            user_agent: or_default(keys.string("userAgent")?, DEFAULT_USER_AGENT),
            resource_manager_endpoint,
            authority_host,
            imds_endpoint: non_empty(keys.string("imdsEndpoint")?),
            auth,
        })
    }

    /// ARM ID of the subnet load-balancer frontends are allocated from.
    pub fn subnet_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/virtualNetworks/{}/subnets/{}",
            self.subscription_id, self.vnet_resource_group, self.vnet_name, self.subnet_name
        )
    }

    /// ARM ID of the gateway load balancer.
    pub fn load_balancer_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/loadBalancers/{}",
            self.subscription_id, self.load_balancer_resource_group, self.load_balancer_name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const HELM: &str = r#"{
        "cloud": "AzurePublicCloud", "tenantId": " t ", "subscriptionId": "sub",
        "useManagedIdentityExtension": false, "userAssignedIdentityID": "",
        "aadClientId": "cid", "aadClientSecret": "s3cret", "userAgent": "",
        "resourceGroup": "rg", "location": "eastus", "gatewayLoadBalancerName": "",
        "loadBalancerResourceGroup": "", "vnetName": "vnet", "vnetResourceGroup": "", "subnetName": "gw"
    }"#;

    #[test]
    fn helm_values_load_with_upstream_defaults() {
        let c = CloudConfig::parse(HELM, no_env).expect("helm config loads");
        assert_eq!(c.subscription_id, "sub");
        assert_eq!(c.load_balancer_name, "kubeegressgateway-ilb");
        assert_eq!(c.load_balancer_resource_group, "rg");
        assert_eq!(c.vnet_resource_group, "rg");
        assert_eq!(c.user_agent, "kube-egress-gateway-controller");
        assert_eq!(c.resource_manager_endpoint, "https://management.azure.com");
        assert_eq!(
            c.auth,
            AzureAuth::ServicePrincipal {
                tenant_id: "t".into(),
                client_id: "cid".into(),
                client_secret: "s3cret".into()
            }
        );
        assert_eq!(
            c.subnet_id(),
            "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/gw"
        );
    }

    #[test]
    fn keys_match_case_insensitively_and_unknown_keys_are_ignored() {
        let text = r#"{"CLOUD":"AzurePublicCloud","subscriptionID":"sub","LOCATION":"westeurope",
            "tenantid":"t","AADCLIENTID":"c","aadclientsecret":"s","resourcegroup":"rg","vnetname":"v",
            "SubnetName":"s","vmType":"vmss","routeTableName":"rt","cloudProviderBackoff":true,
            "loadBalancerSku":"standard","excludeMasterFromStandardLB":false,"maximumLoadBalancerRuleCount":250,
            "resourceManagerEndpoint":"http://127.0.0.1:1234/","activeDirectoryAuthorityHost":"http://127.0.0.1:1235"}"#;
        let c = CloudConfig::parse(text, no_env).expect("AKS-style azure.json loads");
        assert_eq!(c.location, "westeurope");
        assert_eq!(c.subscription_id, "sub");
        assert_eq!(c.resource_manager_endpoint, "http://127.0.0.1:1234");
        assert_eq!(c.authority_host, "http://127.0.0.1:1235");
    }

    #[test]
    fn validation_errors_use_upstream_messages() {
        let base: Value = serde_json::from_str(HELM).expect("json");
        let cases: &[(&str, Value, &str)] = &[
            ("cloud", Value::from(" "), "cloud is empty"),
            ("location", Value::from(""), "location is empty"),
            ("subscriptionId", Value::from(""), "subscription ID is empty"),
            (
                "aadClientSecret",
                Value::from(""),
                "AAD client ID or AAD client secret is empty",
            ),
            (
                "aadClientId",
                Value::from(""),
                "AAD client ID or AAD client secret is empty",
            ),
            (
                "userAssignedIdentityID",
                Value::from("uai"),
                "useManagedIdentityExtension needs to be true when userAssignedIdentityID is provided",
            ),
            ("resourceGroup", Value::from(""), "resource group is empty"),
            ("vnetName", Value::from(""), "virtual network name is empty"),
            (
                "subnetName",
                Value::from(""),
                "virtual network subnet name is empty",
            ),
        ];
        for (key, value, want) in cases {
            let mut v = base.clone();
            v[*key] = value.clone();
            let err = CloudConfig::parse(&v.to_string(), no_env).expect_err(key);
            assert_eq!(err.to_string(), *want, "{key}");
        }
    }

    #[test]
    fn wrong_types_name_the_key() {
        let mut v: Value = serde_json::from_str(HELM).expect("json");
        v["useManagedIdentityExtension"] = Value::from("yes");
        let err = CloudConfig::parse(&v.to_string(), no_env).expect_err("string for bool");
        assert_eq!(
            err.to_string(),
            "cloud config key useManagedIdentityExtension: expected true or false"
        );
        assert!(matches!(
            CloudConfig::parse("[]", no_env),
            Err(ConfigError::NotJson(_))
        ));
    }

    #[test]
    fn managed_identity_needs_no_secret() {
        let mut v: Value = serde_json::from_str(HELM).expect("json");
        v["useManagedIdentityExtension"] = Value::Bool(true);
        v["userAssignedIdentityID"] = Value::from("uai-client");
        v["aadClientSecret"] = Value::from("");
        let c = CloudConfig::parse(&v.to_string(), no_env).expect("msi");
        assert_eq!(
            c.auth,
            AzureAuth::ManagedIdentity {
                user_assigned_identity_id: Some("uai-client".into())
            }
        );
    }

    #[test]
    fn workload_identity_from_the_injected_environment() {
        let mut v: Value = serde_json::from_str(HELM).expect("json");
        v["aadClientSecret"] = Value::from("");
        v["aadClientId"] = Value::from("");
        v["tenantId"] = Value::from("");
        let env = |k: &str| match k {
            "AZURE_FEDERATED_TOKEN_FILE" => Some("/var/run/secrets/azure/tokens/azure-identity-token".into()),
            "AZURE_CLIENT_ID" => Some("wi-client".into()),
            "AZURE_TENANT_ID" => Some("wi-tenant".into()),
            "AZURE_AUTHORITY_HOST" => Some("http://127.0.0.1:9/".into()),
            _ => None,
        };
        let c = CloudConfig::parse(&v.to_string(), env).expect("workload identity");
        assert_eq!(
            c.auth,
            AzureAuth::WorkloadIdentity {
                tenant_id: "wi-tenant".into(),
                client_id: "wi-client".into(),
                token_file: "/var/run/secrets/azure/tokens/azure-identity-token".into()
            }
        );
        assert_eq!(c.authority_host, "http://127.0.0.1:9/");

        v["useFederatedWorkloadIdentityExtension"] = Value::Bool(true);
        let err = CloudConfig::parse(&v.to_string(), no_env).expect_err("no client id");
        assert_eq!(
            err.to_string(),
            "workload identity needs aadClientId or AZURE_CLIENT_ID"
        );
    }

    #[test]
    fn cloud_selects_the_endpoints_unless_they_are_given() {
        let china = (
            "https://management.chinacloudapi.cn",
            "https://login.chinacloudapi.cn",
        );
        let usgov = (
            "https://management.usgovcloudapi.net",
            "https://login.microsoftonline.us",
        );
        let public = (
            "https://management.azure.com",
            "https://login.microsoftonline.com",
        );
        let explicit = ("http://127.0.0.1:1234", "http://127.0.0.1:1235");
        let given = Some(("http://127.0.0.1:1234/", "http://127.0.0.1:1235"));
        /// (Resource Manager endpoint, authority host).
        type Endpoints = (&'static str, &'static str);
        let cases: &[(&str, Option<Endpoints>, Endpoints)] = &[
            ("AzurePublicCloud", None, public),
            ("azurecloud", None, public),
            ("AzureChinaCloud", None, china),
            ("AZURECHINACLOUD", None, china),
            (" AzureUSGovernmentCloud ", None, usgov),
            ("AzureUSGovernment", None, usgov),
            ("AzureChinaCloud", given, explicit),
            ("AzureStackCloud", given, explicit),
        ];
        for (cloud, endpoints, (arm, authority)) in cases {
            let mut v: Value = serde_json::from_str(HELM).expect("json");
            v["cloud"] = Value::from(*cloud);
            if let Some((arm, authority)) = endpoints {
                v["resourceManagerEndpoint"] = Value::from(*arm);
                v["activeDirectoryAuthorityHost"] = Value::from(*authority);
            }
            let c = CloudConfig::parse(&v.to_string(), no_env).expect(cloud);
            assert_eq!(
                (c.resource_manager_endpoint.as_str(), c.authority_host.as_str()),
                (*arm, *authority),
                "{cloud} {endpoints:?}"
            );
        }
        assert_eq!(AzureCloud::named("").expect("empty"), PUBLIC_CLOUD);

        // The environment's authority host overrides the cloud's too (workload identity's webhook sets it).
        let mut v: Value = serde_json::from_str(HELM).expect("json");
        v["cloud"] = Value::from("AzureChinaCloud");
        let env = |k: &str| (k == "AZURE_AUTHORITY_HOST").then(|| "https://login.example".to_string());
        let c = CloudConfig::parse(&v.to_string(), env).expect("china");
        assert_eq!(c.authority_host, "https://login.example");
        assert_eq!(c.resource_manager_endpoint, china.0);

        // An unknown cloud without both endpoints is refused, naming the key and the accepted names.
        for endpoint in [None, Some("resourceManagerEndpoint")] {
            let mut v: Value = serde_json::from_str(HELM).expect("json");
            v["cloud"] = Value::from("AzureGermanCloud");
            if let Some(k) = endpoint {
                v[k] = Value::from("https://management.example");
            }
            let err = CloudConfig::parse(&v.to_string(), no_env).expect_err("unknown cloud");
            let msg = err.to_string();
            assert!(
                msg.starts_with("cloud config key cloud: 'AzureGermanCloud'"),
                "{msg}"
            );
            for name in ["AzurePublicCloud", "AzureChinaCloud", "AzureUSGovernmentCloud"] {
                assert!(msg.contains(name), "{msg}");
            }
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = CloudConfig::parse(HELM, no_env).expect("loads");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }
}
