//! The spec rules (docs/design.md, section "Rules"), as pure functions.
//!
//! One implementation, three enforcers: the admission webhook denies, the operator reports a condition and a
//! Warning event (for objects that predate the webhook), and the Terraform provider reports at plan time.
//! Every violation names a JSON field path and a message that says which rule failed and how to fix it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::arm::valid_resource_group;
use crate::pod::PodView;
use crate::pool::{GatewayPoolSpec, PoolVmssProfile};
use crate::sgc::{GatewayVmssProfile, RouteType, StaticGatewayConfigurationSpec};

/// Smallest public IP prefix (largest length) Azure supports for gateways.
pub const MIN_PREFIX_SIZE: i32 = 28;
/// Largest prefix length Azure supports for gateways.
pub const MAX_PREFIX_SIZE: i32 = 31;

/// Which rule a violation breaks. Numbers are those of docs/design.md's rules table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// 1. Exactly one of gatewayNodepoolName and gatewayVmssProfile.
    OnePool,
    /// 2. A VMSS profile needs vmssResourceGroup, vmssName and publicIpPrefixSize.
    VmssProfileComplete,
    /// 3. Prefix size is one Azure supports: /28 to /31.
    PrefixSize,
    /// 4. The pool's instance count fits the prefix (and agrees with the pool's prefix size).
    InstancesFitPrefix,
    /// 5. Private-IP mode requires gatewayNodepoolName.
    PrivateNeedsNodepool,
    /// 6. publicIpPrefixId empty in private mode; otherwise a well-formed publicIPPrefixes ARM ID.
    PublicIpPrefixId,
    /// 7. Every excludeCidrs entry is a valid IPv4 CIDR, of at most 64 characters; at most 256 entries.
    ExcludeCidrs,
    /// 8. defaultRoute is one of the two values.
    DefaultRoute,
    /// Fields that cannot change after creation.
    Immutable,
    /// A field has the wrong JSON type (normally caught by the CRD schema first).
    FieldType,
    /// A hostNetwork pod names a gateway configuration (it shares the node's network).
    HostNetworkPod,
    /// A new configuration names a GatewayPool that is being deleted (a cluster fact the webhook knows).
    PoolDeleting,
    /// The adopted-prefix annotation names a public IP prefix the operator may adopt: `egressgateway-<UUID>`.
    AdoptedPrefixAnnotation,
}

impl Rule {
    /// The rule's number in docs/design.md, where the rule has one.
    pub fn number(self) -> Option<u8> {
        Some(match self {
            Rule::OnePool => 1,
            Rule::VmssProfileComplete => 2,
            Rule::PrefixSize => 3,
            Rule::InstancesFitPrefix => 4,
            Rule::PrivateNeedsNodepool => 5,
            Rule::PublicIpPrefixId => 6,
            Rule::ExcludeCidrs => 7,
            Rule::DefaultRoute => 8,
            Rule::Immutable
            | Rule::FieldType
            | Rule::HostNetworkPod
            | Rule::PoolDeleting
            | Rule::AdoptedPrefixAnnotation => {
                return None;
            }
        })
    }

    /// Short title used in messages.
    pub fn title(self) -> &'static str {
        match self {
            Rule::OnePool => "one gateway pool",
            Rule::VmssProfileComplete => "complete VMSS profile",
            Rule::PrefixSize => "supported prefix size",
            Rule::InstancesFitPrefix => "instances fit the prefix",
            Rule::PrivateNeedsNodepool => "private IPs need a VM-based node pool",
            Rule::PublicIpPrefixId => "public IP prefix ID",
            Rule::ExcludeCidrs => "valid excludeCidrs",
            Rule::DefaultRoute => "defaultRoute value",
            Rule::Immutable => "immutable field",
            Rule::FieldType => "field type",
            Rule::HostNetworkPod => "hostNetwork pod",
            Rule::PoolDeleting => "pool being deleted",
            Rule::AdoptedPrefixAnnotation => "adopted public IP prefix",
        }
    }

    /// Stable machine-readable reason (condition reasons, metrics labels).
    pub fn reason(self) -> &'static str {
        match self {
            Rule::OnePool => "OnePool",
            Rule::VmssProfileComplete => "VmssProfileIncomplete",
            Rule::PrefixSize => "UnsupportedPrefixSize",
            Rule::InstancesFitPrefix => "PrefixSizeMismatch",
            Rule::PrivateNeedsNodepool => "PrivateNeedsNodepool",
            Rule::PublicIpPrefixId => "InvalidPublicIpPrefixId",
            Rule::ExcludeCidrs => "InvalidExcludeCidrs",
            Rule::DefaultRoute => "InvalidDefaultRoute",
            Rule::Immutable => "ImmutableField",
            Rule::FieldType => "InvalidFieldType",
            Rule::HostNetworkPod => "HostNetworkPod",
            Rule::PoolDeleting => "PoolDeleting",
            Rule::AdoptedPrefixAnnotation => "InvalidAdoptedPrefixAnnotation",
        }
    }

    fn label(self) -> String {
        match self.number() {
            Some(n) => format!("rule {n} ({})", self.title()),
            None => self.title().to_string(),
        }
    }
}

/// A rule broken at a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// JSON field path, e.g. `spec.gatewayVmssProfile.publicIpPrefixSize` or `spec.excludeCidrs[1]`.
    pub path: String,
    /// The rule broken.
    pub rule: Rule,
    /// What is wrong and how to fix it; starts with the rule's label.
    pub message: String,
}

impl Violation {
    fn new(path: impl Into<String>, rule: Rule, detail: impl fmt::Display) -> Self {
        Violation {
            path: path.into(),
            rule,
            message: format!("{}: {detail}", rule.label()),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Advice that does not block the request (returned as admission warnings / Terraform warnings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// JSON field path.
    pub path: String,
    /// The advice.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Outcome of validating one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Rule violations: any of them means "refuse".
    pub violations: Vec<Violation>,
    /// Non-blocking advice.
    pub warnings: Vec<Warning>,
}

impl Verdict {
    /// No violations.
    pub fn is_allowed(&self) -> bool {
        self.violations.is_empty()
    }

    /// All violations in one line, each with its path, as a user reads them in `kubectl apply`.
    pub fn message(&self) -> String {
        self.violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Distinct rules broken.
    pub fn rules(&self) -> BTreeSet<Rule> {
        self.violations.iter().map(|v| v.rule).collect()
    }

    fn deny(&mut self, path: impl Into<String>, rule: Rule, detail: impl fmt::Display) {
        self.violations.push(Violation::new(path, rule, detail));
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Warning {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Adds `other`'s violations as warnings, each followed by `why` it does not refuse the request.
    fn warn_instead(&mut self, other: Verdict, why: &str) {
        for violation in other.violations {
            self.warn(violation.path, format!("{} ({why})", violation.message));
        }
        self.warnings.extend(other.warnings);
    }
}

/// What the enforcer knows about the pool a configuration runs on. Never obtained from Azure in the
/// admission path: the webhook fills it from cached Nodes and GatewayPools.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolFacts {
    /// The GatewayPool describing the configuration's pool, if one exists.
    pub pool: Option<GatewayPoolSpec>,
    /// Gateway nodes of that pool the cluster knows (None: unknown, the check is skipped).
    pub node_count: Option<u32>,
}

/// Addresses in a prefix of the given length.
pub fn prefix_capacity(prefix_size: i32) -> u64 {
    if (0..=32).contains(&prefix_size) {
        1u64 << (32 - prefix_size)
    } else {
        0
    }
}

/// Longest supported prefix length that holds `instances` addresses, if any.
pub fn prefix_size_for(instances: u64) -> Option<i32> {
    (MIN_PREFIX_SIZE..=MAX_PREFIX_SIZE)
        .rev()
        .find(|p| prefix_capacity(*p) >= instances)
}

fn supported_prefix_size(size: i32) -> bool {
    (MIN_PREFIX_SIZE..=MAX_PREFIX_SIZE).contains(&size)
}

fn prefix_size_detail(size: i32) -> String {
    format!(
        "/{size} is not a size Azure supports for gateway public IP prefixes; use 28 to 31 \
         (/31: 2 addresses, /30: 4, /29: 8, /28: 16 — the pool may have at most that many instances)"
    )
}

// ---------------------------------------------------------------------------------------------
// StaticGatewayConfiguration
// ---------------------------------------------------------------------------------------------

/// The spec fields, besides the one a violation names, that [`validate_sgc`]'s verdict on `rule` reads. An
/// enforcer that does not know all of them yet (Terraform at plan, before other resources exist) holds the
/// finding back until it does.
pub fn sgc_rule_inputs(rule: Rule) -> &'static [&'static str] {
    match rule {
        Rule::OnePool => &["spec.gatewayNodepoolName", "spec.gatewayVmssProfile"],
        Rule::InstancesFitPrefix => &[
            "spec.provisionPublicIps",
            "spec.gatewayNodepoolName",
            "spec.gatewayVmssProfile.publicIpPrefixSize",
        ],
        Rule::PrivateNeedsNodepool => &["spec.provisionPublicIps", "spec.gatewayVmssProfile"],
        Rule::PublicIpPrefixId => &["spec.provisionPublicIps", "spec.publicIpPrefixId"],
        _ => &[],
    }
}

/// Rule 1, shared by configurations and pools: exactly one of a node pool name and a VMSS profile.
fn one_pool(v: &mut Verdict, nodepool: bool, profile: bool) {
    match (nodepool, profile) {
        (false, false) => v.deny(
            "spec.gatewayNodepoolName",
            Rule::OnePool,
            "neither gatewayNodepoolName nor gatewayVmssProfile is set; set gatewayNodepoolName to an AKS gateway \
             node pool, or gatewayVmssProfile to a self-managed VMSS",
        ),
        (true, true) => v.deny(
            "spec.gatewayNodepoolName",
            Rule::OnePool,
            "both gatewayNodepoolName and gatewayVmssProfile are set; keep only one",
        ),
        _ => {}
    }
}
/// Validates a configuration spec on create (`old` = None) or update.
pub fn validate_sgc(
    new: &StaticGatewayConfigurationSpec,
    old: Option<&StaticGatewayConfigurationSpec>,
    facts: &PoolFacts,
) -> Verdict {
    let mut v = Verdict::default();
    let nodepool = new.nodepool_name();
    let profile = new.vmss_profile();

    // Rule 1
    one_pool(&mut v, nodepool.is_some(), profile.is_some());

    // Rules 2 and 3
    if let Some(p) = profile {
        check_vmss_profile(&mut v, p);
    }

    // Rule 5
    if !new.provision_public_ips && profile.is_some() {
        v.deny(
            "spec.gatewayVmssProfile",
            Rule::PrivateNeedsNodepool,
            "provisionPublicIps: false (private-IP egress) works only with gatewayNodepoolName naming a VM-based \
             AKS gateway node pool; replace gatewayVmssProfile with gatewayNodepoolName, or set provisionPublicIps: true",
        );
    }

    // Rule 6
    match (new.provision_public_ips, new.byo_prefix_id()) {
        (false, Some(_)) => v.deny(
            "spec.publicIpPrefixId",
            Rule::PublicIpPrefixId,
            "must be empty when provisionPublicIps is false (private-IP egress uses no public prefix); remove it, \
             or set provisionPublicIps: true",
        ),
        (true, Some(id)) => {
            if let Some(Err(e)) = new.byo_prefix() {
                v.deny("spec.publicIpPrefixId", Rule::PublicIpPrefixId, format!("'{id}' {e}"));
            }
        }
        _ => {}
    }

    // Rule 4. The pool's size is a cluster fact, not part of the request: an update that keeps the configuration
    // public on the same pool is warned, not refused, so that the operator's finalizer writes, labels and
    // unrelated edits go through while the pool is over its prefix (an AKS surge upgrade adds a node).
    if new.provision_public_ips {
        let mut fit = Verdict::default();
        check_sgc_fits_pool(&mut fit, new, facts);
        if old.is_some_and(|old| old.provision_public_ips && same_pool(new, old)) {
            v.warn_instead(
                fit,
                "this update does not change the pool, so it is not refused for it",
            );
        } else {
            v.violations.extend(fit.violations);
        }
    }

    // Rule 7
    check_exclude_cidrs(&mut v, &new.exclude_cidrs, new.default_route);

    if new.default_route == RouteType::AzureNetworking && new.exclude_cidrs.is_empty() {
        v.warn(
            "spec.excludeCidrs",
            "defaultRoute azureNetworking sends only excludeCidrs through the gateway, and excludeCidrs is empty: \
             no traffic will use the gateway",
        );
    }

    if let Some(old) = old {
        check_sgc_update(&mut v, new, old);
    }
    v
}

fn check_vmss_profile(v: &mut Verdict, p: &GatewayVmssProfile) {
    if p.vmss_resource_group.is_empty() {
        v.deny(
            "spec.gatewayVmssProfile.vmssResourceGroup",
            Rule::VmssProfileComplete,
            "is required with gatewayVmssProfile; set the gateway VMSS's resource group",
        );
    } else if !valid_resource_group(&p.vmss_resource_group) {
        v.deny(
            "spec.gatewayVmssProfile.vmssResourceGroup",
            Rule::VmssProfileComplete,
            format!(
                "'{}' is not a valid resource group name (1-90 letters, digits, '_', '-', '.', '(' or ')', not \
                 ending in '.')",
                p.vmss_resource_group
            ),
        );
    }
    if p.vmss_name.is_empty() {
        v.deny(
            "spec.gatewayVmssProfile.vmssName",
            Rule::VmssProfileComplete,
            "is required with gatewayVmssProfile; set the gateway VMSS's name",
        );
    }
    if p.public_ip_prefix_size == 0 {
        v.deny(
            "spec.gatewayVmssProfile.publicIpPrefixSize",
            Rule::VmssProfileComplete,
            "is required with gatewayVmssProfile; set 28 to 31 (at least the VMSS's instance count in addresses)",
        );
    } else if !supported_prefix_size(p.public_ip_prefix_size) {
        v.deny(
            "spec.gatewayVmssProfile.publicIpPrefixSize",
            Rule::PrefixSize,
            prefix_size_detail(p.public_ip_prefix_size),
        );
    }
}

fn check_sgc_fits_pool(v: &mut Verdict, new: &StaticGatewayConfigurationSpec, facts: &PoolFacts) {
    let (prefix_size, path) = match (new.vmss_profile(), &facts.pool) {
        (Some(p), pool) => {
            if let Some(pool) = pool
                && supported_prefix_size(p.public_ip_prefix_size)
                && pool.public_ip_prefix_size != p.public_ip_prefix_size
            {
                v.deny(
                    "spec.gatewayVmssProfile.publicIpPrefixSize",
                    Rule::InstancesFitPrefix,
                    format!(
                        "is {} but the GatewayPool of this VMSS uses /{}; set publicIpPrefixSize: {}",
                        p.public_ip_prefix_size, pool.public_ip_prefix_size, pool.public_ip_prefix_size
                    ),
                );
                return;
            }
            (
                p.public_ip_prefix_size,
                "spec.gatewayVmssProfile.publicIpPrefixSize",
            )
        }
        (None, Some(pool)) if new.nodepool_name().is_some() => {
            (pool.public_ip_prefix_size, "spec.gatewayNodepoolName")
        }
        // Nodepool without a GatewayPool: the prefix size lives in an Azure tag the operator checks.
        _ => return,
    };
    if !supported_prefix_size(prefix_size) {
        return; // reported by rule 3 (here, or on the pool)
    }
    let declared = facts
        .pool
        .as_ref()
        .and_then(|p| p.instance_count)
        .map(|c| c.max(0) as u64);
    let known = facts.node_count.map(u64::from);
    let Some(instances) = declared.into_iter().chain(known).max() else {
        return;
    };
    let capacity = prefix_capacity(prefix_size);
    if instances > capacity {
        let source = match (known, declared) {
            (Some(k), _) if k == instances => format!("the pool has {instances} gateway nodes"),
            _ => format!("the GatewayPool declares {instances} instances"),
        };
        let fix = match prefix_size_for(instances) {
            Some(fit) if path.starts_with("spec.gatewayVmssProfile") => {
                format!("use publicIpPrefixSize: {fit} or a smaller pool")
            }
            Some(fit) => format!(
                "the pool needs a /{fit} prefix: use a pool with publicIpPrefixSize {fit}, or shrink it"
            ),
            None => {
                format!("no supported prefix holds {instances} addresses (/28 holds 16): shrink the pool")
            }
        };
        v.deny(
            path,
            Rule::InstancesFitPrefix,
            format!("{source} but a /{prefix_size} prefix has only {capacity} addresses; {fix}"),
        );
    }
}

fn check_exclude_cidrs(v: &mut Verdict, cidrs: &[String], route: RouteType) {
    use crate::cidr::{MAX_CIDR_LENGTH, MAX_EXCLUDE_CIDRS};
    if cidrs.len() > MAX_EXCLUDE_CIDRS as usize {
        v.deny(
            "spec.excludeCidrs",
            Rule::ExcludeCidrs,
            format!(
                "has {} entries, more than the {MAX_EXCLUDE_CIDRS} the CRD accepts; merge adjacent ranges into \
                 shorter prefixes",
                cidrs.len()
            ),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, raw) in cidrs.iter().enumerate() {
        let path = format!("spec.excludeCidrs[{i}]");
        // The CRD bounds an entry in characters (an IPv4 CIDR has at most 18); too long to quote in full.
        let length = raw.chars().count();
        if length > MAX_CIDR_LENGTH as usize {
            v.deny(
                path,
                Rule::ExcludeCidrs,
                format!(
                    "is {length} characters long, more than the {MAX_CIDR_LENGTH} the CRD accepts; write an IPv4 \
                     CIDR such as 10.0.0.0/16"
                ),
            );
            continue;
        }
        match parse_ipv4_cidr(raw) {
            Ok(net) => {
                if net.addr() != net.network() {
                    v.warn(
                        &path,
                        format!("'{raw}' has host bits set; it is treated as {}", net.trunc()),
                    );
                }
                if !seen.insert(net.trunc()) {
                    v.warn(&path, format!("'{raw}' repeats an earlier entry"));
                }
                if net.prefix_len() == 0 && route == RouteType::StaticEgressGateway {
                    v.warn(
                        &path,
                        "0.0.0.0/0 excludes all traffic: nothing will use the gateway",
                    );
                }
            }
            Err(why) => v.deny(path, Rule::ExcludeCidrs, format!("'{raw}' {why}")),
        }
    }
}

/// Parses an IPv4 CIDR strictly (no spaces, no bare addresses, no IPv6), so admission refuses anything ambiguous.
/// The CNI plugin uses it too (its excludedCIDRs and a configuration's excludeCidrs), so a bad entry is
/// refused with the same words wherever it appears.
pub fn parse_ipv4_cidr(raw: &str) -> Result<Ipv4Net, String> {
    if raw.is_empty() {
        return Err("is empty; write an IPv4 CIDR such as 10.0.0.0/16".to_string());
    }
    if raw.trim() != raw {
        return Err("has surrounding spaces; remove them".to_string());
    }
    if raw.contains(':') {
        return Err("is an IPv6 CIDR; egress gateways are IPv4-only: remove it".to_string());
    }
    let Some((addr, len)) = raw.split_once('/') else {
        return match raw.parse::<Ipv4Addr>() {
            Ok(_) => Err(format!("is an address, not a CIDR; write {raw}/32")),
            Err(_) => Err("is not a CIDR; write an IPv4 CIDR such as 10.0.0.0/16".to_string()),
        };
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("is not a CIDR: '{addr}' is not an IPv4 address; write e.g. 10.0.0.0/16"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32 && !len.starts_with('+') && (len == "0" || !len.starts_with('0')))
        .ok_or_else(|| format!("is not a CIDR: '/{len}' is not a prefix length from 0 to 32"))?;
    Ipv4Net::new(addr, len).map_err(|e| format!("is not a CIDR: {e}"))
}

/// Whether two node pool names (or their absence) are the same pool: Azure names are case-insensitive.
fn same_nodepool(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        (a, b) => a == b,
    }
}

/// Whether an update keeps a configuration on the same pool: the same node pool and the same VMSS profile.
fn same_pool(new: &StaticGatewayConfigurationSpec, old: &StaticGatewayConfigurationSpec) -> bool {
    same_nodepool(new.nodepool_name(), old.nodepool_name()) && new.vmss_profile() == old.vmss_profile()
}

fn check_sgc_update(
    v: &mut Verdict,
    new: &StaticGatewayConfigurationSpec,
    old: &StaticGatewayConfigurationSpec,
) {
    if !same_nodepool(new.nodepool_name(), old.nodepool_name()) {
        v.deny(
            "spec.gatewayNodepoolName",
            Rule::Immutable,
            format!(
                "cannot change from {} to {}: create a new StaticGatewayConfiguration on the other pool, move the \
                 pods to it, then delete this one",
                quoted(old.nodepool_name()),
                quoted(new.nodepool_name())
            ),
        );
    }
    if new.vmss_profile() != old.vmss_profile() {
        v.deny(
            "spec.gatewayVmssProfile",
            Rule::Immutable,
            "cannot change (the VMSS and its prefix size fix the egress prefix; Azure cannot resize prefixes): \
             create a new StaticGatewayConfiguration, move the pods to it, then delete this one",
        );
    }
    if new.default_route != old.default_route || new.exclude_cidrs != old.exclude_cidrs {
        v.warn(
            "spec",
            "defaultRoute and excludeCidrs are applied when a pod starts: existing pods keep their routes until they \
             are recreated",
        );
    }
    if new.provision_public_ips != old.provision_public_ips || new.byo_prefix_id() != old.byo_prefix_id() {
        v.warn(
            "spec",
            "changing provisionPublicIps or publicIpPrefixId changes the egress addresses of this configuration's pods",
        );
    }
}

fn quoted(s: Option<&str>) -> String {
    s.map_or_else(|| "(unset)".to_string(), |s| format!("'{s}'"))
}

// ---------------------------------------------------------------------------------------------
// GatewayPool
// ---------------------------------------------------------------------------------------------

/// As [`sgc_rule_inputs`], for [`validate_pool`]. Rule 4 reads the declared instance count and the prefix
/// size (the node pool's name does not matter to it).
pub fn pool_rule_inputs(rule: Rule) -> &'static [&'static str] {
    match rule {
        Rule::OnePool => &["spec.gatewayNodepoolName", "spec.gatewayVmssProfile"],
        Rule::InstancesFitPrefix => &["spec.instanceCount", "spec.publicIpPrefixSize"],
        _ => &[],
    }
}

/// Validates a pool spec on create (`old` = None) or update; `node_count` is the pool's nodes as the cluster
/// knows them.
pub fn validate_pool(
    new: &GatewayPoolSpec,
    old: Option<&GatewayPoolSpec>,
    node_count: Option<u32>,
) -> Verdict {
    let mut v = Verdict::default();
    let nodepool = new.gateway_nodepool_name.as_deref().filter(|s| !s.is_empty());
    one_pool(&mut v, nodepool.is_some(), new.gateway_vmss_profile.is_some());
    if let Some(PoolVmssProfile {
        vmss_resource_group,
        vmss_name,
    }) = &new.gateway_vmss_profile
    {
        if vmss_resource_group.is_empty() {
            v.deny(
                "spec.gatewayVmssProfile.vmssResourceGroup",
                Rule::VmssProfileComplete,
                "is required with gatewayVmssProfile; set the gateway VMSS's resource group",
            );
        } else if !valid_resource_group(vmss_resource_group) {
            v.deny(
                "spec.gatewayVmssProfile.vmssResourceGroup",
                Rule::VmssProfileComplete,
                format!("'{vmss_resource_group}' is not a valid resource group name"),
            );
        }
        if vmss_name.is_empty() {
            v.deny(
                "spec.gatewayVmssProfile.vmssName",
                Rule::VmssProfileComplete,
                "is required with gatewayVmssProfile; set the gateway VMSS's name",
            );
        }
    }
    let size = new.public_ip_prefix_size;
    if !supported_prefix_size(size) {
        v.deny(
            "spec.publicIpPrefixSize",
            Rule::PrefixSize,
            prefix_size_detail(size),
        );
    } else {
        let capacity = prefix_capacity(size);
        if let Some(count) = new.instance_count {
            if count < 1 {
                v.deny(
                    "spec.instanceCount",
                    Rule::InstancesFitPrefix,
                    format!("{count} must be at least 1"),
                );
            } else if count as u64 > capacity {
                let fix = match prefix_size_for(count as u64) {
                    Some(fit) => {
                        format!("use publicIpPrefixSize: {fit} (a new pool), or declare at most {capacity}")
                    }
                    None => format!("no supported prefix holds {count} addresses; declare at most 16"),
                };
                v.deny(
                    "spec.instanceCount",
                    Rule::InstancesFitPrefix,
                    format!("{count} instances do not fit a /{size} prefix of {capacity} addresses; {fix}"),
                );
            }
        }
        if let Some(nodes) = node_count
            && u64::from(nodes) > capacity
        {
            // The node count is a cluster fact the request does not change (the pool's nodes and prefix size are
            // immutable): an update is warned, not refused, so the operator's finalizer writes and other edits
            // go through while the pool is over its prefix (an AKS surge upgrade adds a node).
            let mut fit = Verdict::default();
            fit.deny(
                "spec.publicIpPrefixSize",
                Rule::InstancesFitPrefix,
                format!(
                    "the pool has {nodes} gateway nodes but a /{size} prefix has only {capacity} addresses; {}",
                    match prefix_size_for(u64::from(nodes)) {
                        Some(fit) => format!("use publicIpPrefixSize: {fit}, or scale the node pool down to {capacity}"),
                        None => format!("scale the node pool down to at most {capacity}"),
                    }
                ),
            );
            if old.is_some() {
                v.warn_instead(
                    fit,
                    "an update does not change the pool's nodes, so it is not refused for them",
                );
            } else {
                v.violations.extend(fit.violations);
            }
        }
        if let (Some(declared), Some(nodes)) = (new.instance_count, node_count)
            && declared >= 1
            && (nodes as i64) > i64::from(declared)
        {
            v.warn(
                "spec.instanceCount",
                format!(
                    "the pool has {nodes} gateway nodes, more than the declared instanceCount {declared}"
                ),
            );
        }
    }
    if let Some(old) = old {
        let old_np = old.gateway_nodepool_name.as_deref().filter(|s| !s.is_empty());
        if !same_nodepool(nodepool, old_np) {
            v.deny(
                "spec.gatewayNodepoolName",
                Rule::Immutable,
                format!(
                    "cannot change from {} to {}: a GatewayPool always describes the same nodes; create another \
                     GatewayPool instead",
                    quoted(old_np),
                    quoted(nodepool)
                ),
            );
        }
        if new.gateway_vmss_profile != old.gateway_vmss_profile {
            v.deny(
                "spec.gatewayVmssProfile",
                Rule::Immutable,
                "cannot change: a GatewayPool always describes the same nodes; create another GatewayPool instead",
            );
        }
        if new.public_ip_prefix_size != old.public_ip_prefix_size {
            v.deny(
                "spec.publicIpPrefixSize",
                Rule::Immutable,
                format!(
                    "cannot change from {} to {}: Azure cannot resize the public IP prefixes of this pool's \
                     configurations; create another pool",
                    old.public_ip_prefix_size, new.public_ip_prefix_size
                ),
            );
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Objects as admission sees them: lenient decoding that reports wrong types at their paths
// ---------------------------------------------------------------------------------------------

/// Validates a StaticGatewayConfiguration object as JSON (`{"spec": …}`), reporting wrong field types and
/// enum values at their paths before applying [`validate_sgc`].
pub fn validate_sgc_object(new: &Value, old: Option<&Value>, facts: &PoolFacts) -> Verdict {
    validate_sgc_object_with(new, old, |_| facts.clone())
}

/// [`validate_sgc_object`] for callers that look the pool's facts up from the decoded spec (the webhook):
/// the spec is decoded once.
pub fn validate_sgc_object_with(
    new: &Value,
    old: Option<&Value>,
    facts: impl FnOnce(&StaticGatewayConfigurationSpec) -> PoolFacts,
) -> Verdict {
    let mut type_errors = Verdict::default();
    let new_spec = decode_sgc_spec(new.get("spec"), &mut type_errors);
    let mut old_type_errors = Verdict::default();
    let old_spec = old.map(|o| decode_sgc_spec(o.get("spec"), &mut old_type_errors));
    // Unchanged as stored after the mutating webhook's defaults, which the decoder fills in too; a spec that
    // does not decode cleanly (a field of the wrong type) is compared as it is.
    let decoded_cleanly = type_errors.violations.is_empty() && old_type_errors.violations.is_empty();
    let unchanged = match (old, &old_spec) {
        (Some(_), Some(old_spec)) if decoded_cleanly => same_sgc_spec(&new_spec, old_spec),
        (Some(old), _) => new.get("spec") == old.get("spec"),
        (None, _) => false,
    };
    let facts = facts(&new_spec);
    let spec_verdict = merge_decoded(type_errors, validate_sgc(&new_spec, old_spec.as_ref(), &facts));
    let mut verdict = keep_unchanged_spec(spec_verdict, unchanged);
    verdict.violations.extend(adopted_prefix_violation(new, old));
    verdict
}

/// Why an update that leaves the spec as it was is not refused for the spec's rules.
pub const UNCHANGED_SPEC_WHY: &str = "this update does not change the spec, so it is not refused for it";

/// An update that leaves the spec as it was (`unchanged`) is not refused for the spec's rules: its violations
/// become warnings ([`UNCHANGED_SPEC_WHY`]). Objects admitted before these rules (upstream's CRD accepted specs
/// they refuse) stay writable, above all for the operator's finalizer removal, without which deleting them
/// would wait forever. Only the admission entry points ([`validate_sgc_object_with`],
/// [`validate_pool_object_with`]) relax: the typed checks [`validate_sgc`] (which the operator re-checks
/// admitted configurations with, so their status says what is wrong) and [`validate_pool`] still report the
/// violations.
fn keep_unchanged_spec(verdict: Verdict, unchanged: bool) -> Verdict {
    if !unchanged || verdict.is_allowed() {
        return verdict;
    }
    let mut kept = Verdict::default();
    kept.warn_instead(verdict, UNCHANGED_SPEC_WHY);
    kept
}

/// Whether two decoded configuration specs are the same as stored after the mutating webhook's defaults
/// ([`crate::defaults::sgc_defaults`]): the decoder fills `defaultRoute` and `provisionPublicIps` as they do,
/// and an empty `gatewayVmssProfile` (which the defaults drop) counts as none, so an object written before
/// them (upstream's `gatewayVmssProfile: {}`) is the same as itself as the webhook passes it on.
fn same_sgc_spec(a: &StaticGatewayConfigurationSpec, b: &StaticGatewayConfigurationSpec) -> bool {
    let as_stored = |s: &StaticGatewayConfigurationSpec| StaticGatewayConfigurationSpec {
        gateway_vmss_profile: s.vmss_profile().cloned(),
        ..s.clone()
    };
    as_stored(a) == as_stored(b)
}

/// The adopted-prefix annotation ([`crate::names::ADOPTED_PREFIX_ANNOTATION`]), when it is set or changed:
/// the ARM ID of a public IP prefix named `egressgateway-<UUID>`, the UUID not the configuration's own uid
/// (that is its own prefix). Which resource group holds it only the operator knows, and checks. A value that
/// is kept is not judged again, so an object is never stuck on it (the operator's finalizer removal).
fn adopted_prefix_violation(new: &Value, old: Option<&Value>) -> Option<Violation> {
    let key = crate::names::ADOPTED_PREFIX_ANNOTATION;
    let annotation = |o: &Value| {
        o.get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(key))
            .cloned()
    };
    let value = annotation(new)?;
    if old.and_then(annotation).as_ref() == Some(&value) {
        return None;
    }
    let path = format!("metadata.annotations[{key}]");
    let Some(value) = value.as_str() else {
        return Some(Violation::new(
            path,
            Rule::AdoptedPrefixAnnotation,
            "must be a string",
        ));
    };
    let own_uid = new
        .get("metadata")
        .and_then(|m| m.get("uid"))
        .and_then(Value::as_str);
    adopted_prefix_id(value, |uuid| {
        own_uid.is_some_and(|u| u.eq_ignore_ascii_case(uuid))
    })
    .err()
    .map(|e| Violation::new(path, Rule::AdoptedPrefixAnnotation, e))
}

/// The prefix an adopted-prefix annotation's `value` names: the ARM ID of a public IP prefix named
/// `egressgateway-<UUID>` whose UUID is not `taken` (a StaticGatewayConfiguration's uid: its own prefix). The
/// one check of the value's shape, for the webhook (`taken`: the configuration's own uid) and the operator
/// (every configuration's uid; it checks the resource group too). `Err`: what is wrong, with the rule.
pub fn adopted_prefix_id(
    value: &str,
    taken: impl Fn(&str) -> bool,
) -> Result<crate::arm::PublicIpPrefixId, String> {
    let managed = crate::names::MANAGED_RESOURCE_PREFIX;
    let rule = format!(
        "it must be the ARM ID of a public IP prefix in the cluster's node resource group named {managed}<UUID> \
         (as upstream kube-egress-gateway named its prefixes), the UUID not a StaticGatewayConfiguration's uid"
    );
    let id = crate::arm::parse_public_ip_prefix_id(value.trim()).map_err(|e| format!("{e}; {rule}"))?;
    match crate::names::managed_name_uuid(&id.name) {
        None => Err(format!(
            "prefix '{}' is not named {managed}<UUID>; {rule}",
            id.name
        )),
        Some(uuid) if taken(uuid) => Err(format!(
            "prefix '{}' is a StaticGatewayConfiguration's own managed prefix; {rule}",
            id.name
        )),
        Some(_) => Ok(id),
    }
}

/// Decoding errors first; a field the decoder already refused is not reported again as "missing".
fn merge_decoded(mut decoded: Verdict, rules: Verdict) -> Verdict {
    let reported: BTreeSet<String> = decoded.violations.iter().map(|v| v.path.clone()).collect();
    decoded.violations.extend(
        rules
            .violations
            .into_iter()
            .filter(|v| !reported.contains(&v.path)),
    );
    decoded.warnings.extend(rules.warnings);
    decoded
}

/// Validates a GatewayPool object as JSON, like [`validate_sgc_object`].
pub fn validate_pool_object(new: &Value, old: Option<&Value>, node_count: Option<u32>) -> Verdict {
    validate_pool_object_with(new, old, |_| node_count)
}

/// [`validate_pool_object`] for callers that count the pool's nodes from the decoded spec (the webhook).
pub fn validate_pool_object_with(
    new: &Value,
    old: Option<&Value>,
    node_count: impl FnOnce(&GatewayPoolSpec) -> Option<u32>,
) -> Verdict {
    let mut type_errors = Verdict::default();
    let new_spec = decode_pool_spec(new.get("spec"), &mut type_errors);
    let old_spec = old.map(|o| decode_pool_spec(o.get("spec"), &mut Verdict::default()));
    let nodes = node_count(&new_spec);
    let unchanged = old.is_some_and(|old| {
        new.get("spec").filter(|s| !s.is_null()) == old.get("spec").filter(|s| !s.is_null())
    });
    keep_unchanged_spec(
        merge_decoded(type_errors, validate_pool(&new_spec, old_spec.as_ref(), nodes)),
        unchanged,
    )
}

struct Fields<'a> {
    obj: Option<&'a serde_json::Map<String, Value>>,
    base: &'a str,
}

impl<'a> Fields<'a> {
    fn of(value: Option<&'a Value>, base: &'a str, v: &mut Verdict) -> Self {
        let obj = match value {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                v.deny(
                    base,
                    Rule::FieldType,
                    format!("must be an object, got {}", json_type(other)),
                );
                None
            }
        };
        Fields { obj, base }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.base)
    }

    fn string(&self, key: &str, v: &mut Verdict) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                v.deny(
                    self.path(key),
                    Rule::FieldType,
                    format!("must be a string, got {}", json_type(other)),
                );
                None
            }
        }
    }

    fn bool(&self, key: &str, v: &mut Verdict) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                v.deny(
                    self.path(key),
                    Rule::FieldType,
                    format!("must be a boolean, got {}", json_type(other)),
                );
                None
            }
        }
    }

    fn int(&self, key: &str, rule_for_range: Rule, v: &mut Verdict) -> Option<i32> {
        let value = self.get(key)?;
        match value.as_i64() {
            Some(i) => match i32::try_from(i) {
                Ok(i) => Some(i),
                Err(_) => {
                    v.deny(self.path(key), rule_for_range, format!("{i} is out of range"));
                    None
                }
            },
            None => {
                v.deny(
                    self.path(key),
                    Rule::FieldType,
                    format!("must be an integer, got {}", json_type(value)),
                );
                None
            }
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer out of range",
        Value::Number(_) => "a number with a fraction",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Decodes a configuration spec leniently: wrong types become violations and the field is treated as unset.
pub fn decode_sgc_spec(spec: Option<&Value>, v: &mut Verdict) -> StaticGatewayConfigurationSpec {
    let f = Fields::of(spec, "spec", v);
    let profile_value = f.get("gatewayVmssProfile");
    let gateway_vmss_profile = profile_value.and_then(|pv| {
        let pf = Fields::of(Some(pv), "spec.gatewayVmssProfile", v);
        pf.obj?;
        let size = pf.int("publicIpPrefixSize", Rule::PrefixSize, v).unwrap_or(0);
        Some(GatewayVmssProfile {
            vmss_resource_group: pf.string("vmssResourceGroup", v).unwrap_or_default(),
            vmss_name: pf.string("vmssName", v).unwrap_or_default(),
            public_ip_prefix_size: size,
        })
    });
    let default_route = match f.string("defaultRoute", v) {
        None => RouteType::default(),
        Some(s) => RouteType::parse(&s).unwrap_or_else(|| {
            v.deny(
                "spec.defaultRoute",
                Rule::DefaultRoute,
                format!("'{s}' is not a route type; use staticEgressGateway (default) or azureNetworking"),
            );
            RouteType::default()
        }),
    };
    let exclude_cidrs = match f.get("excludeCidrs") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item {
                Value::String(s) => Some(s.clone()),
                other => {
                    v.deny(
                        format!("spec.excludeCidrs[{i}]"),
                        Rule::FieldType,
                        format!("must be a string, got {}", json_type(other)),
                    );
                    None
                }
            })
            .collect(),
        Some(other) => {
            v.deny(
                "spec.excludeCidrs",
                Rule::FieldType,
                format!("must be an array of strings, got {}", json_type(other)),
            );
            Vec::new()
        }
    };
    StaticGatewayConfigurationSpec {
        gateway_nodepool_name: f.string("gatewayNodepoolName", v),
        gateway_vmss_profile,
        default_route,
        provision_public_ips: f.bool("provisionPublicIps", v).unwrap_or(true),
        public_ip_prefix_id: f.string("publicIpPrefixId", v),
        exclude_cidrs,
    }
}

/// Decodes a pool spec leniently, like [`decode_sgc_spec`].
pub fn decode_pool_spec(spec: Option<&Value>, v: &mut Verdict) -> GatewayPoolSpec {
    let f = Fields::of(spec, "spec", v);
    let gateway_vmss_profile = f.get("gatewayVmssProfile").and_then(|pv| {
        let pf = Fields::of(Some(pv), "spec.gatewayVmssProfile", v);
        pf.obj?;
        Some(PoolVmssProfile {
            vmss_resource_group: pf.string("vmssResourceGroup", v).unwrap_or_default(),
            vmss_name: pf.string("vmssName", v).unwrap_or_default(),
        })
    });
    let size = f.int("publicIpPrefixSize", Rule::PrefixSize, v);
    if size.is_none() && f.get("publicIpPrefixSize").is_none() {
        v.deny(
            "spec.publicIpPrefixSize",
            Rule::PrefixSize,
            "is required; set 28 to 31 (/31: 2 instances, /30: 4, /29: 8, /28: 16)",
        );
    }
    GatewayPoolSpec {
        gateway_nodepool_name: f.string("gatewayNodepoolName", v),
        gateway_vmss_profile,
        // Unset (already reported) is decoded as a valid size so the other rules still run.
        public_ip_prefix_size: size.unwrap_or(MAX_PREFIX_SIZE),
        instance_count: f.int("instanceCount", Rule::InstancesFitPrefix, v),
    }
}

// ---------------------------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------------------------

/// Validates a pod's use of the gateway annotation. Pods without the annotation always pass.
pub fn validate_pod(pod: &PodView) -> Verdict {
    let mut v = Verdict::default();
    let Some(name) = pod.gateway() else {
        return v;
    };
    let path = format!("metadata.annotations[{}]", crate::names::POD_GATEWAY_ANNOTATION);
    if pod.host_network() {
        v.deny(
            path.clone(),
            Rule::HostNetworkPod,
            format!(
                "it shares its node's network and cannot use a static egress gateway; remove the annotation (it \
                 names '{name}') or set hostNetwork: false"
            ),
        );
    } else if !is_dns1123_subdomain(name) {
        v.warn(
            path,
            format!("'{name}' is not a valid object name, so it cannot name a StaticGatewayConfiguration"),
        );
    }
    v
}

/// The warning users see when a pod names a configuration that does not exist in its namespace.
pub fn missing_sgc_warning(namespace: &str, name: &str) -> Warning {
    Warning {
        path: format!("metadata.annotations[{}]", crate::names::POD_GATEWAY_ANNOTATION),
        message: format!(
            "StaticGatewayConfiguration '{name}' does not exist in namespace '{namespace}'; the pod will not start \
             until it exists and is ready"
        ),
    }
}

/// Refusal of a new configuration whose pool's GatewayPool `pool_name` is being deleted: the configuration would
/// hold the pool's deletion (its finalizer waits for the configurations on it) and never become Ready.
pub fn pool_deleting_violation(spec: &StaticGatewayConfigurationSpec, pool_name: &str) -> Violation {
    let path = if spec.vmss_profile().is_some() {
        "spec.gatewayVmssProfile"
    } else {
        "spec.gatewayNodepoolName"
    };
    Violation::new(
        path,
        Rule::PoolDeleting,
        format!(
            "GatewayPool '{pool_name}' is being deleted; a configuration created on it would hold its deletion. \
             Wait until it is gone and create the pool again, or name another pool"
        ),
    )
}

/// Kubernetes object name syntax (RFC 1123 subdomain).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Namespace name syntax (RFC 1123 label: no dots, at most 63 characters).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
