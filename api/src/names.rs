//! Every name the product shares with users, Azure, the cluster or the data plane, defined once.
//!
//! Where upstream (Azure/kube-egress-gateway) has a name, we keep it: users' runbooks, dashboards and
//! troubleshooting habits depend on these strings.

use std::fmt::Write as _;

/// API group of every kind in this product (unchanged from upstream).
pub const GROUP: &str = "egressgateway.kubernetes.azure.com";
/// The only served and stored version.
pub const VERSION: &str = "v1alpha1";

// ---------------------------------------------------------------------------------------------
// Annotations, labels, taints
// ---------------------------------------------------------------------------------------------

/// Pod opt-in: the name of a StaticGatewayConfiguration in the pod's namespace.
pub const POD_GATEWAY_ANNOTATION: &str = "kubernetes.azure.com/static-gateway-configuration";
/// Namespace annotation naming the configuration the mutating webhook injects into new pods that have none.
pub const NAMESPACE_DEFAULT_GATEWAY_ANNOTATION: &str =
    "egressgateway.kubernetes.azure.com/default-static-gateway-configuration";

/// AKS node label carrying the node pool name.
pub const NODE_AGENTPOOL_LABEL: &str = "kubernetes.azure.com/agentpool";
/// AKS node label marking gateway-mode node pools (value [`NODE_MODE_GATEWAY`]).
pub const NODE_AKS_MODE_LABEL: &str = "kubernetes.azure.com/mode";
/// Value of [`NODE_AKS_MODE_LABEL`] on AKS gateway pools.
pub const NODE_MODE_GATEWAY: &str = "gateway";
/// Label (and taint key) that self-managed clusters put on gateway nodes (value `"true"`).
pub const NODE_GATEWAY_MODE_LABEL: &str = "kubeegressgateway.azure.com/mode";
/// Taint AKS puts on new nodes until the node agent has installed the CNI configuration.
pub const CNI_NOT_READY_TAINT: &str = "egressgateway.kubernetes.azure.com/cni-not-ready";
/// PodEndpoint annotation: the runtime's id (CNI_CONTAINERID) of the pod sandbox whose CNI ADD wrote it. The
/// node agent deletes the PodEndpoint at CNI DEL only for that sandbox.
pub const POD_ENDPOINT_SANDBOX_ANNOTATION: &str = "egressgateway.kubernetes.azure.com/cni-sandbox-id";

/// Labels on the WireGuard key Secret pointing back at its configuration.
pub const SECRET_OWNER_NAMESPACE_LABEL: &str =
    "egressgateway.kubernetes.azure.com/owning-gateway-config-namespace";
/// See [`SECRET_OWNER_NAMESPACE_LABEL`].
pub const SECRET_OWNER_NAME_LABEL: &str = "egressgateway.kubernetes.azure.com/owning-gateway-config-name";
/// Secret data key of the gateway's WireGuard private key (base64 text, as upstream).
pub const SECRET_PRIVATE_KEY: &str = "PrivateKey";
/// Secret data key of the gateway's WireGuard public key.
pub const SECRET_PUBLIC_KEY: &str = "PublicKey";

/// StaticGatewayConfiguration annotation the operator writes when it adopts the public IP prefix an upstream
/// installation created for the configuration (`egressgateway-<UUID>` in the node resource group, matched by
/// `status.egressIpPrefix`): the prefix's ARM ID. From then on the configuration uses that prefix and the
/// operator deletes it with the configuration. A user may set it by hand to adopt such a prefix deliberately.
pub const ADOPTED_PREFIX_ANNOTATION: &str = "egressgateway.kubernetes.azure.com/adopted-public-ip-prefix";

// ---------------------------------------------------------------------------------------------
// Status conditions (written by the operator, read by kubectl columns and the Terraform provider)
// ---------------------------------------------------------------------------------------------

/// StaticGatewayConfiguration: the spec passed the rules and its pool was found.
pub const CONDITION_ACCEPTED: &str = "Accepted";
/// StaticGatewayConfiguration and GatewayPool: provisioned in Azure and usable.
pub const CONDITION_READY: &str = "Ready";
/// GatewayPool: some instances are not ready. StaticGatewayConfiguration: provisioned and kept as it is, but
/// something needs a look (the pool outgrew its prefix, instances without their egress address).
pub const CONDITION_DEGRADED: &str = "Degraded";

/// Condition reasons (StaticGatewayConfiguration): Accepted=True.
pub const REASON_ACCEPTED: &str = "Accepted";
/// Accepted=False / Ready=False: the spec breaks a rule.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// Accepted=False / Ready=False: no scale set or VM pool matches.
pub const REASON_POOL_NOT_FOUND: &str = "PoolNotFound";
/// Accepted=False / Ready=False: a public IP prefix's length does not fit the pool.
pub const REASON_PREFIX_SIZE_MISMATCH: &str = "PrefixSizeMismatch";
/// Ready=False: writes in flight, addresses not yet known.
pub const REASON_PROVISIONING: &str = "Provisioning";
/// Ready=False: a problem of this configuration only (no free port, BYO prefix unusable).
pub const REASON_BLOCKED: &str = "Blocked";
/// Ready=False: ARM answered 429 beyond the retry budget.
pub const REASON_AZURE_THROTTLED: &str = "AzureThrottled";
/// Ready=False: any other ARM failure.
pub const REASON_AZURE_ERROR: &str = "AzureError";
/// Ready=True: frontend IP, port, egress prefix and key known (the Terraform provider waits for it).
pub const REASON_PROVISIONED: &str = "Provisioned";
/// GatewayPool Ready=True.
pub const REASON_INSTANCES_READY: &str = "InstancesReady";
/// GatewayPool Ready=False.
pub const REASON_INSTANCES_NOT_READY: &str = "InstancesNotReady";
/// GatewayPool Degraded=True.
pub const REASON_SOME_INSTANCES_NOT_READY: &str = "SomeInstancesNotReady";
/// GatewayPool and StaticGatewayConfiguration Degraded=False.
pub const REASON_AS_EXPECTED: &str = "AsExpected";
/// StaticGatewayConfiguration Degraded=True: the pool has more gateway nodes than its public IP prefix has
/// addresses (rule 4 now fails); the configuration stays provisioned as it was, the surplus nodes get no address.
pub const REASON_POOL_EXCEEDS_PREFIX: &str = "PoolExceedsPrefix";
/// StaticGatewayConfiguration Degraded=True: some instances do not have the configuration's IP configuration
/// (secondary IP) yet, so their gateways do not serve it; in private-IP mode the egress IPs listed are the ones
/// that exist.
pub const REASON_INSTANCES_WITHOUT_EGRESS_IP: &str = "InstancesWithoutEgressIp";

// ---------------------------------------------------------------------------------------------
// Finalizers
// ---------------------------------------------------------------------------------------------

/// Finalizer the operator puts on a StaticGatewayConfiguration (upstream's name).
pub const SGC_FINALIZER: &str = "static-gateway-configuration-controller.microsoft.com";
/// Finalizer the operator puts on a GatewayPool while configurations or Azure resources depend on it.
pub const POOL_FINALIZER: &str = "gateway-pool-controller.egressgateway.kubernetes.azure.com";

// ---------------------------------------------------------------------------------------------
// Azure
// ---------------------------------------------------------------------------------------------

/// Prefix of every Azure resource the operator creates (ipConfigurations, public IP prefixes).
pub const MANAGED_RESOURCE_PREFIX: &str = "egressgateway-";
/// Default name of the internal load balancer shared by all gateway pools.
pub const DEFAULT_LOAD_BALANCER_NAME: &str = "kubeegressgateway-ilb";
/// First WireGuard / load-balancer rule port (inclusive).
pub const WIREGUARD_PORT_START: u16 = 6000;
/// End of the WireGuard port range (exclusive): 1000 configurations per pool at most.
pub const WIREGUARD_PORT_END: u16 = 7000;
/// Default port of the gateway agent's load-balancer health-probe server.
pub const DEFAULT_LB_PROBE_PORT: u16 = 8082;
/// Path prefix of the health probe; the full path is `/gw/<configuration uid>`.
pub const LB_PROBE_PATH_PREFIX: &str = "/gw/";
/// Probe interval upstream settled on (#1347): detection of a dead gateway in about five seconds.
pub const LB_PROBE_INTERVAL_SECONDS: i32 = 5;
/// Probe threshold upstream settled on (#1347).
pub const LB_PROBE_THRESHOLD: i32 = 1;

/// VMSS / VM tag AKS sets to the node pool name.
pub const TAG_AKS_POOL_NAME: &str = "aks-managed-poolName";
/// VMSS / VM tag carrying the pool's public IP prefix length.
pub const TAG_GATEWAY_PREFIX_SIZE: &str = "aks-managed-gatewayIPPrefixSize";
/// Tag on NICs pre-created for VM-based (private IP) gateway pools.
pub const TAG_STATIC_GATEWAY_NIC: &str = "aks-managed-static-gateway-nic";
/// VM tag naming the VM's pre-created NIC (VM-based pools).
pub const TAG_AKS_NIC_NAME: &str = "aks-managed-nic-name";
/// Tag the operator puts on every public IP address it creates for a VM-based pool's NIC, set to the pool's
/// uid: it tells its own public IPs from anyone else's also once the NIC (and with it the IP's name) is gone.
/// ARM tag names may not contain `<>%&\?/`.
pub const TAG_GATEWAY_POOL_UID: &str = "egressgateway-pool-uid";

/// Namespace UUID upstream uses to derive a VM-based pool's stable identifier from its name.
pub const VM_POOL_UUID_NAMESPACE: uuid::Uuid = uuid::uuid!("2c96e82c-842f-11f0-8ea5-6bee14278ecd");

// ---------------------------------------------------------------------------------------------
// Data plane
// ---------------------------------------------------------------------------------------------

/// The single network namespace on every gateway node that terminates all WireGuard tunnels.
pub const GATEWAY_NETNS: &str = "ns-static-egress-gateway";
/// Host side of the veth pair between the host and the gateway namespace.
pub const GATEWAY_VETH_HOST: &str = "host-gateway";
/// Gateway-namespace side of the veth pair; carries the secondary (egress) IPs.
pub const GATEWAY_VETH_NS: &str = "host0";
/// WireGuard link-local address of the gateway side of every tunnel.
pub const GATEWAY_WG_ADDRESS: &str = "fe80::1/64";
/// Interface name of the tunnel inside an annotated pod.
pub const POD_WG_INTERFACE: &str = "wg0";
/// Firewall mark (and routing table) that keeps replies to ingress traffic on the pod's eth0.
pub const POD_INGRESS_MARK: u32 = 0x2222;
/// Routing table used with [`POD_INGRESS_MARK`].
pub const POD_INGRESS_TABLE: u32 = 8738;
/// The nftables table (family `ip`) the gateway agent and the CNI plugin own in every namespace they write
/// rules to; replaced whole on each apply.
pub const NFT_TABLE: &str = "kube-egress-gateway";
/// The chained CNI plugin's `type`.
pub const CNI_PLUGIN_TYPE: &str = "kube-egress-cni";
/// File name of the CNI configuration the node agent writes; sorts first in `/etc/cni/net.d`.
pub const CNI_CONF_FILE: &str = "01-egressgateway.conflist";
/// ConfigMap whose `uninstall` key decides whether the node agent removes its CNI config on shutdown.
pub const CNI_UNINSTALL_CONFIGMAP: &str = "cni-uninstall";
/// Exception CIDRs that never traverse the gateway: IMDS and AKS node-local DNS (upstream #1356).
pub const DEFAULT_EXCEPTION_CIDRS: [&str; 2] = ["169.254.169.254/32", "169.254.10.11/32"];

// ---------------------------------------------------------------------------------------------
// Derived names
// ---------------------------------------------------------------------------------------------

/// Secret holding a configuration's WireGuard key pair: `sgw-<uid>` in the operator's namespace.
pub fn key_secret_name(sgc_uid: &str) -> String {
    format!("sgw-{sgc_uid}")
}

/// Managed Azure resource name for a configuration: ipConfiguration and managed public IP prefix.
pub fn managed_resource_name(sgc_uid: &str) -> String {
    format!("{MANAGED_RESOURCE_PREFIX}{sgc_uid}")
}

/// The UUID of a name `egressgateway-<UUID>` (prefix matched without regard to case), as this operator and
/// upstream's name the public IP prefixes they create; `None` for any other name.
pub fn managed_name_uuid(name: &str) -> Option<&str> {
    let prefix = MANAGED_RESOURCE_PREFIX;
    let head = name.get(..prefix.len())?;
    let uuid = name.get(prefix.len()..)?;
    (head.eq_ignore_ascii_case(prefix) && uuid.len() == 36 && uuid::Uuid::try_parse(uuid).is_ok())
        .then_some(uuid)
}

/// Health-probe request path of a configuration.
pub fn lb_probe_path(sgc_uid: &str) -> String {
    format!("{LB_PROBE_PATH_PREFIX}{sgc_uid}")
}

/// WireGuard interface of a configuration inside the gateway namespace.
pub fn gateway_wg_interface(port: u16) -> String {
    format!("wg-{port}")
}

/// Parses `wg-<port>` back to its port; `None` for any other interface name.
pub fn port_of_gateway_wg_interface(ifname: &str) -> Option<u16> {
    let port: u16 = ifname.strip_prefix("wg-")?.parse().ok()?;
    (WIREGUARD_PORT_START..WIREGUARD_PORT_END)
        .contains(&port)
        .then_some(port)
}

/// Stable identifier of a VM-based pool (names its LB frontend and backend pool), as upstream derives it.
pub fn vm_pool_uid(pool_name: &str) -> String {
    uuid::Uuid::new_v3(&VM_POOL_UUID_NAMESPACE, pool_name.as_bytes()).to_string()
}

/// 64-bit FNV-1a, the hash upstream uses to make VM-pool public IP names unique per NIC.
pub fn fnv1a64(data: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    data.iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// Public IP address name for a VM-pool NIC: `<prefixName>-<fnv1a64(nicName) in hex>`.
pub fn vm_pool_public_ip_name(prefix_name: &str, nic_name: &str) -> String {
    let mut s = String::with_capacity(prefix_name.len() + 17);
    s.push_str(prefix_name);
    let _ = write!(s, "-{:x}", fnv1a64(nic_name.as_bytes()));
    s
}

/// Namespaced key `<ns>/<name>` used in GatewayStatus and logs.
pub fn namespaced(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_pool_public_ip_names_match_upstream_golden_values() {
        assert_eq!(
            vm_pool_public_ip_name("test-prefix", "aks-nodepool1-12345678-vmss000000"),
            "test-prefix-65d70f8df610e8df"
        );
        assert_eq!(
            vm_pool_public_ip_name("test-prefix", ""),
            "test-prefix-cbf29ce484222325"
        );
    }

    #[test]
    fn vm_pool_uid_is_a_deterministic_v3_uuid() {
        let a = vm_pool_uid("gwpool");
        assert_eq!(a, vm_pool_uid("gwpool"));
        assert_ne!(a, vm_pool_uid("gwpool2"));
        let parsed = uuid::Uuid::parse_str(&a).expect("uuid");
        assert_eq!(parsed.get_version_num(), 3);
    }

    #[test]
    fn derived_names() {
        assert_eq!(key_secret_name("abc"), "sgw-abc");
        assert_eq!(managed_resource_name("abc"), "egressgateway-abc");
        assert_eq!(lb_probe_path("abc"), "/gw/abc");
        assert_eq!(gateway_wg_interface(6000), "wg-6000");
        assert_eq!(port_of_gateway_wg_interface("wg-6999"), Some(6999));
        assert_eq!(port_of_gateway_wg_interface("wg-7000"), None);
        assert_eq!(port_of_gateway_wg_interface("wg-5999"), None);
        assert_eq!(port_of_gateway_wg_interface("wg0"), None);
        assert_eq!(port_of_gateway_wg_interface("eth0"), None);
    }
}
