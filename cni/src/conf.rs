//! CNI configuration, arguments, results and errors (spec 1.0.0; older result versions accepted).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use dataplane::ANNOTATIONS_CAPABILITY;

/// Versions this plugin understands (VERSION reply).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Our entry of the network configuration list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Version the runtime speaks.
    #[serde(default = "default_version")]
    pub cni_version: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// Plugin type.
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// CIDRs that always bypass the gateway (staticEgressGateway mode).
    #[serde(default, rename = "excludedCIDRs")]
    pub excluded_cidrs: Vec<String>,
    /// Unix socket of the node agent.
    #[serde(default)]
    pub socket_path: String,
    /// WireGuard backend: kernel, userspace, auto (default).
    #[serde(default)]
    pub wireguard_backend: Option<String>,
    /// Result of the previous plugins.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// Runtime capabilities (pod annotations).
    #[serde(default)]
    pub runtime_config: Option<Value>,
    /// GC (CNI 1.1.0): the attachments the runtime still has; whatever the plugin made for any other is stale.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// One attachment of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    /// The sandbox (CNI_CONTAINERID of its ADD).
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface (CNI_IFNAME).
    #[serde(default)]
    pub ifname: String,
}

fn default_version() -> String {
    "1.0.0".into()
}

impl NetConf {
    /// Parses stdin; the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                CniError::DECODING,
                "invalid network configuration on stdin",
                e.to_string(),
            )
        })
    }

    /// Pod annotations handed over by the runtime, if the capability is enabled.
    pub fn runtime_annotations(&self) -> Option<BTreeMap<String, String>> {
        let v = self.runtime_config.as_ref()?.get(ANNOTATIONS_CAPABILITY)?;
        serde_json::from_value(v.clone()).ok()
    }
}

/// Kubernetes identity from `CNI_ARGS` (`K8S_POD_NAME=a;K8S_POD_NAMESPACE=b;…`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct K8sArgs {
    /// Pod name.
    pub pod_name: String,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod uid (`K8S_POD_UID`: containerd and CRI-O give it); empty when the runtime does not.
    pub pod_uid: String,
}

impl K8sArgs {
    /// Parses CNI_ARGS; unknown keys are ignored, as runtimes add their own.
    pub fn parse(cni_args: &str) -> Self {
        let mut a = K8sArgs::default();
        for kv in cni_args.split(';') {
            if let Some((k, v)) = kv.split_once('=') {
                match k.trim() {
                    "K8S_POD_NAME" => a.pod_name = v.trim().into(),
                    "K8S_POD_NAMESPACE" => a.pod_namespace = v.trim().into(),
                    "K8S_POD_UID" => a.pod_uid = v.trim().into(),
                    _ => {}
                }
            }
        }
        a
    }

    /// Whether this is a Kubernetes pod at all.
    pub fn is_pod(&self) -> bool {
        !self.pod_name.is_empty() && !self.pod_namespace.is_empty()
    }
}

/// A CNI error result (printed on stdout, exit code 1).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CniError {
    /// Spec error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Details.
    pub details: String,
}

impl CniError {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Failed to decode content.
    pub const DECODING: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS (CNI 1.1.0): the plugin is not available (cannot serve ADD).
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific: the node agent refused or is unreachable.
    pub const AGENT: u32 = 100;
    /// Plugin-specific: a data-plane operation failed.
    pub const DATAPLANE: u32 = 101;

    /// Builds an error.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// JSON for stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.msg, self.details)
    }
}

/// The parts of a previous result we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrevResultView {
    /// IPv4 address (without prefix) assigned to the sandbox interface `ifname`.
    pub pod_ipv4: std::net::Ipv4Addr,
}

/// Finds the pod's IPv4 address on `ifname` in a previous result (0.3.x, 0.4.0 and 1.x layouts).
pub fn pod_ipv4(prev: &Value, ifname: &str) -> Result<PrevResultView, CniError> {
    let ifaces = prev.get("interfaces").and_then(Value::as_array);
    let sandbox_index = ifaces.and_then(|a| {
        a.iter().position(|i| {
            i.get("name").and_then(Value::as_str) == Some(ifname)
                && i.get("sandbox")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
        })
    });
    let ips = prev.get("ips").and_then(Value::as_array).ok_or_else(|| {
        CniError::new(
            CniError::INVALID_CONFIG,
            "prevResult has no ips",
            "kube-egress-cni must be chained after a plugin that assigns the pod's IPv4 address",
        )
    })?;
    for ip in ips {
        let on_iface = match (ip.get("interface").and_then(Value::as_u64), sandbox_index) {
            (Some(i), Some(s)) => i as usize == s,
            _ => true,
        };
        if let Some(Ok(net)) = ip
            .get("address")
            .and_then(Value::as_str)
            .map(str::parse::<ipnet::IpNet>)
            && let ipnet::IpNet::V4(v4) = net
            && on_iface
        {
            return Ok(PrevResultView { pod_ipv4: v4.addr() });
        }
    }
    Err(CniError::new(
        CniError::INVALID_CONFIG,
        "failed to find pod ipv4 ip",
        format!("prevResult.ips has no IPv4 address on {ifname}"),
    ))
}

/// Appends the WireGuard interface (and its IPv6 link-local address) to a previous result.
pub fn add_wg_to_result(prev: &Value, cni_version: &str, ifname: &str, netns: &str, addr6: &str) -> Value {
    let mut out = prev.clone();
    if !out.is_object() {
        out = json!({});
    }
    out["cniVersion"] = Value::from(cni_version);
    let ifaces = out.get_mut("interfaces").and_then(Value::as_array_mut).map(|a| {
        a.push(json!({"name": ifname, "sandbox": netns}));
        a.len() - 1
    });
    let index = match ifaces {
        Some(i) => i,
        None => {
            out["interfaces"] = json!([{"name": ifname, "sandbox": netns}]);
            0
        }
    };
    let mut ip = json!({"address": addr6, "interface": index});
    if cni_version.starts_with("0.") {
        ip["version"] = Value::from("6");
    }
    match out.get_mut("ips").and_then(Value::as_array_mut) {
        Some(a) => a.push(ip),
        None => out["ips"] = json!([ip]),
    }
    out
}

/// prevResult as-is with the runtime's cniVersion (what a pass-through prints).
pub fn passthrough(prev: Option<&Value>, cni_version: &str) -> Value {
    let mut out = prev.cloned().unwrap_or_else(|| json!({}));
    if out.is_object() {
        out["cniVersion"] = Value::from(cni_version);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prev() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb"},
                {"name": "veth1", "mac": "cc:dd"},
                {"name": "eth0", "mac": "ee:ff", "sandbox": "/var/run/netns/p"}
            ],
            "ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}]
        })
    }

    #[test]
    fn k8s_args_parse_ignores_unknown_keys() {
        let a = K8sArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc",
        );
        assert_eq!(a.pod_name, "web-0");
        assert_eq!(a.pod_namespace, "ns");
        assert_eq!(a.pod_uid, "", "not given");
        assert!(a.is_pod());
        let with_uid = K8sArgs::parse("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_UID=9f1c-77");
        assert_eq!(with_uid.pod_uid, "9f1c-77");
        assert!(!K8sArgs::parse("").is_pod());
    }

    #[test]
    fn netconf_reads_runtime_annotations_capability() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"n","type":"kube-egress-cni","excludedCIDRs":["10.0.0.0/8"],
                "socketPath":"/run/x.sock","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":"b"}}}"#,
        )
        .expect("valid config");
        assert_eq!(c.cni_version, "0.4.0");
        assert_eq!(c.excluded_cidrs, vec!["10.0.0.0/8"]);
        assert_eq!(c.runtime_annotations().expect("annotations")["a"], "b");
        let bare = NetConf::parse(br#"{"type":"kube-egress-cni"}"#).expect("minimal config");
        assert_eq!(bare.cni_version, "1.0.0");
        assert!(bare.runtime_annotations().is_none());
    }

    #[test]
    fn netconf_error_is_a_decoding_error() {
        let e = NetConf::parse(b"{not json").expect_err("invalid");
        assert_eq!(e.code, CniError::DECODING);
    }

    #[test]
    fn pod_ipv4_found_on_sandbox_interface() {
        assert_eq!(
            pod_ipv4(&prev(), "eth0").expect("ip").pod_ipv4,
            std::net::Ipv4Addr::new(10, 244, 0, 5)
        );
    }

    #[test]
    fn pod_ipv4_ignores_ipv6_and_other_interfaces() {
        let p = json!({
            "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [
                {"address": "10.9.9.9/24", "interface": 0},
                {"address": "fd00::5/64", "interface": 1},
                {"address": "10.244.0.7/24", "interface": 1}
            ]
        });
        assert_eq!(
            pod_ipv4(&p, "eth0").expect("ip").pod_ipv4,
            std::net::Ipv4Addr::new(10, 244, 0, 7)
        );
    }

    #[test]
    fn pod_ipv4_missing_is_an_error() {
        let p = json!({"ips": [{"address": "fd00::5/64"}]});
        assert_eq!(
            pod_ipv4(&p, "eth0").expect_err("no v4").msg,
            "failed to find pod ipv4 ip"
        );
        assert_eq!(
            pod_ipv4(&json!({}), "eth0").expect_err("no ips").code,
            CniError::INVALID_CONFIG
        );
    }

    #[test]
    fn wg_interface_is_appended_with_its_address() {
        let out = add_wg_to_result(&prev(), "1.0.0", "wg0", "/var/run/netns/p", "fe80::1234/64");
        assert_eq!(out["interfaces"][3]["name"], "wg0");
        assert_eq!(out["ips"][1]["interface"], 3);
        assert_eq!(out["ips"][1]["address"], "fe80::1234/64");
        assert!(out["ips"][1].get("version").is_none());
        let old = add_wg_to_result(&prev(), "0.4.0", "wg0", "/p", "fe80::1/64");
        assert_eq!(old["ips"][1]["version"], "6");
        assert_eq!(old["cniVersion"], "0.4.0");
    }

    #[test]
    fn passthrough_keeps_prev_result_and_sets_version() {
        let out = passthrough(Some(&prev()), "0.4.0");
        assert_eq!(out["interfaces"], prev()["interfaces"]);
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(passthrough(None, "1.0.0"), json!({"cniVersion": "1.0.0"}));
    }

    #[test]
    fn error_json_has_spec_fields() {
        let e = CniError::new(CniError::AGENT, "m", "d");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion":"1.0.0","code":100,"msg":"m","details":"d"})
        );
    }
}
