//! Pod-side desired state (pure): which routes, rules, sysctls and firewall rules an annotated pod gets.
//!
//! Layout as upstream documents it (https://github.com/Azure/kube-egress-gateway/blob/main/docs/cni.md):
//! * `staticEgressGateway`: every eth0 route is replaced by `<gw>/32 dev eth0 scope link`, a default route
//!   `via inet6 fe80::1 dev wg0`, and one route per exception CIDR `via <gw> dev eth0`. Exceptions are the
//!   configuration's excludeCidrs plus the CNI config's excludedCIDRs (which include the node agent's
//!   defaults, IMDS and node-local DNS).
//! * `azureNetworking`: eth0 is left alone; only the configuration's excludeCidrs go `via fe80::1 dev wg0`
//!   (the CNI config's excludedCIDRs are ignored, as upstream).
//! * Both: connections that arrive on eth0 are marked [`POD_INGRESS_MARK`], their replies follow
//!   `fwmark 0x2222 lookup 8738` whose default route is eth0's original default route, and rp_filter is loose (2)
//!   so such asymmetric paths are accepted.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use api::names::{GATEWAY_WG_ADDRESS, NFT_TABLE, POD_INGRESS_MARK, POD_INGRESS_TABLE, POD_WG_INTERFACE};
use api::sgc::RouteType;
use ipnet::Ipv4Net;

/// Gateway-side link-local address every pod routes through: [`GATEWAY_WG_ADDRESS`] without its prefix length.
pub fn gateway_link_local() -> &'static str {
    GATEWAY_WG_ADDRESS
        .split_once('/')
        .map_or(GATEWAY_WG_ADDRESS, |(addr, _)| addr)
}

/// Where a route sends packets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum NextHop {
    /// Directly on the link (`scope link`, no gateway).
    OnLink,
    /// Through an IPv4 gateway on the link.
    Via(Ipv4Addr),
    /// Through the gateway's IPv6 link-local address (IPv4 route with an IPv6 nexthop, RTA_VIA).
    ViaGatewayLinkLocal,
}

/// One IPv4 route in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRoute {
    /// Destination.
    pub dst: Ipv4Net,
    /// Next hop.
    pub next_hop: NextHop,
    /// Output device.
    pub dev: String,
    /// Routing table; `None` means main.
    pub table: Option<u32>,
}

impl PodRoute {
    /// Arguments for `ip -4 route replace …`.
    pub fn ip_args(&self) -> Vec<String> {
        let mut a = vec![self.dst.to_string()];
        match &self.next_hop {
            NextHop::OnLink => a.extend(["scope".into(), "link".into()]),
            NextHop::Via(gw) => a.extend(["via".into(), gw.to_string(), "proto".into(), "static".into()]),
            NextHop::ViaGatewayLinkLocal => {
                a.extend(["via".into(), "inet6".into(), gateway_link_local().into()]);
            }
        }
        a.extend(["dev".into(), self.dev.clone()]);
        if let Some(t) = self.table {
            a.extend(["table".into(), t.to_string()]);
        }
        a
    }
}

/// Everything the plugin changes in an annotated pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    /// Delete every existing main-table route on eth0 before adding [`PodPlan::routes`].
    pub flush_eth0_routes: bool,
    /// Routes to add, in order (the on-link gateway route comes before routes via it).
    pub routes: Vec<PodRoute>,
    /// `ip rule add fwmark <mark> lookup <table>`.
    pub ingress_rule: (u32, u32),
    /// The default route of the ingress table (eth0's original default route).
    pub ingress_default: PodRoute,
    /// sysctl files under /proc/sys and their values.
    pub sysctls: Vec<(String, String)>,
    /// nftables script (atomically replaces our table).
    pub nft: String,
}

/// Inputs of [`pod_plan`].
#[derive(Debug, Clone)]
pub struct PodPlanInput<'a> {
    /// The configuration's route mode.
    pub default_route: RouteType,
    /// The configuration's excludeCidrs (from the node agent's answer).
    pub sgc_exception_cidrs: &'a [Ipv4Net],
    /// The CNI config's excludedCIDRs (node agent's defaults and cluster CIDRs).
    pub cni_excluded_cidrs: &'a [Ipv4Net],
    /// The pod's primary interface (eth0).
    pub eth: &'a str,
    /// The gateway of eth0's IPv4 default route.
    pub eth_gateway: Ipv4Addr,
}

/// Parses a list of IPv4 CIDRs with the admission rules' parser ([`api::rules::parse_ipv4_cidr`]: no bare
/// addresses, no spaces, no IPv6), normalised to their network address; the error names the field and entry.
pub fn parse_cidrs(field: &str, raw: &[String]) -> Result<Vec<Ipv4Net>, String> {
    raw.iter()
        .map(|s| {
            api::rules::parse_ipv4_cidr(s)
                .map(|n| n.trunc())
                .map_err(|e| format!("{field}: {s:?} {e}"))
        })
        .collect()
}

/// Computes the pod-side plan.
pub fn pod_plan(input: &PodPlanInput<'_>) -> PodPlan {
    let eth = input.eth.to_string();
    let wg = POD_WG_INTERFACE.to_string();
    let mut routes = Vec::new();
    let flush = match input.default_route {
        RouteType::StaticEgressGateway => {
            routes.push(PodRoute {
                dst: Ipv4Net::from(input.eth_gateway),
                next_hop: NextHop::OnLink,
                dev: eth.clone(),
                table: None,
            });
            routes.push(PodRoute {
                dst: Ipv4Net::default(),
                next_hop: NextHop::ViaGatewayLinkLocal,
                dev: wg.clone(),
                table: None,
            });
            let exceptions: BTreeSet<Ipv4Net> = input
                .sgc_exception_cidrs
                .iter()
                .chain(input.cni_excluded_cidrs)
                .copied()
                .collect();
            routes.extend(exceptions.into_iter().map(|dst| PodRoute {
                dst,
                next_hop: NextHop::Via(input.eth_gateway),
                dev: eth.clone(),
                table: None,
            }));
            true
        }
        RouteType::AzureNetworking => {
            let only: BTreeSet<Ipv4Net> = input.sgc_exception_cidrs.iter().copied().collect();
            routes.extend(only.into_iter().map(|dst| PodRoute {
                dst,
                next_hop: NextHop::ViaGatewayLinkLocal,
                dev: wg.clone(),
                table: None,
            }));
            false
        }
    };
    PodPlan {
        flush_eth0_routes: flush,
        routes,
        ingress_rule: (POD_INGRESS_MARK, POD_INGRESS_TABLE),
        ingress_default: PodRoute {
            dst: Ipv4Net::default(),
            next_hop: NextHop::Via(input.eth_gateway),
            dev: eth.clone(),
            table: Some(POD_INGRESS_TABLE),
        },
        sysctls: vec![
            ("net/ipv4/conf/all/rp_filter".into(), "2".into()),
            (format!("net/ipv4/conf/{eth}/rp_filter"), "2".into()),
        ],
        nft: pod_nft(&eth),
    }
}

/// nftables script for the pod namespace: mark connections that arrive on eth0 so their replies leave via eth0.
pub fn pod_nft(eth: &str) -> String {
    let mut s = dataplane::nft::replace_table_preamble();
    let _ = write!(
        s,
        "table ip {NFT_TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\tiifname \"{eth}\" meta mark set {POD_INGRESS_MARK:#x} comment \"ingress on {eth}: replies go back via {eth}\"\n\
         \t\tct mark set meta mark\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype route hook output priority mangle; policy accept;\n\
         \t\tct mark {POD_INGRESS_MARK:#x} meta mark set ct mark\n\
         \t}}\n\
         }}\n"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<Ipv4Net> {
        v.iter().map(|s| s.parse().expect("test cidr")).collect()
    }

    fn input<'a>(mode: RouteType, sgc: &'a [Ipv4Net], cni: &'a [Ipv4Net]) -> PodPlanInput<'a> {
        PodPlanInput {
            default_route: mode,
            sgc_exception_cidrs: sgc,
            cni_excluded_cidrs: cni,
            eth: "eth0",
            eth_gateway: Ipv4Addr::new(10, 244, 0, 1),
        }
    }

    fn args(plan: &PodPlan) -> Vec<String> {
        plan.routes.iter().map(|r| r.ip_args().join(" ")).collect()
    }

    #[test]
    fn static_egress_gateway_routes_everything_through_wg0_except_exceptions() {
        let sgc = nets(&["1.2.3.0/24"]);
        let cni = nets(&["169.254.169.254/32", "169.254.10.11/32", "10.244.0.0/16"]);
        let plan = pod_plan(&input(RouteType::StaticEgressGateway, &sgc, &cni));
        assert!(plan.flush_eth0_routes);
        assert_eq!(
            args(&plan),
            vec![
                "10.244.0.1/32 scope link dev eth0",
                "0.0.0.0/0 via inet6 fe80::1 dev wg0",
                "1.2.3.0/24 via 10.244.0.1 proto static dev eth0",
                "10.244.0.0/16 via 10.244.0.1 proto static dev eth0",
                "169.254.10.11/32 via 10.244.0.1 proto static dev eth0",
                "169.254.169.254/32 via 10.244.0.1 proto static dev eth0",
            ]
        );
    }

    #[test]
    fn static_egress_gateway_without_exceptions_has_only_gateway_and_default() {
        let plan = pod_plan(&input(RouteType::StaticEgressGateway, &[], &[]));
        assert_eq!(
            args(&plan),
            vec![
                "10.244.0.1/32 scope link dev eth0",
                "0.0.0.0/0 via inet6 fe80::1 dev wg0"
            ]
        );
    }

    #[test]
    fn duplicate_exceptions_are_routed_once() {
        let sgc = nets(&["169.254.169.254/32"]);
        let cni = nets(&["169.254.169.254/32"]);
        let plan = pod_plan(&input(RouteType::StaticEgressGateway, &sgc, &cni));
        assert_eq!(plan.routes.len(), 3);
    }

    #[test]
    fn azure_networking_routes_only_sgc_cidrs_through_wg0_and_ignores_cni_exclusions() {
        let sgc = nets(&["1.2.3.0/24", "5.6.7.8/32"]);
        let cni = nets(&["169.254.169.254/32"]);
        let plan = pod_plan(&input(RouteType::AzureNetworking, &sgc, &cni));
        assert!(!plan.flush_eth0_routes);
        assert_eq!(
            args(&plan),
            vec![
                "1.2.3.0/24 via inet6 fe80::1 dev wg0",
                "5.6.7.8/32 via inet6 fe80::1 dev wg0"
            ]
        );
    }

    #[test]
    fn azure_networking_without_cidrs_changes_no_routes() {
        let plan = pod_plan(&input(RouteType::AzureNetworking, &[], &nets(&["10.0.0.0/8"])));
        assert!(plan.routes.is_empty());
        assert!(!plan.flush_eth0_routes);
    }

    #[test]
    fn ingress_preservation_is_present_in_both_modes() {
        for mode in [RouteType::StaticEgressGateway, RouteType::AzureNetworking] {
            let plan = pod_plan(&input(mode, &[], &[]));
            assert_eq!(plan.ingress_rule, (0x2222, 8738));
            assert_eq!(
                plan.ingress_default.ip_args().join(" "),
                "0.0.0.0/0 via 10.244.0.1 proto static dev eth0 table 8738"
            );
            assert_eq!(
                plan.sysctls,
                vec![
                    ("net/ipv4/conf/all/rp_filter".to_string(), "2".to_string()),
                    ("net/ipv4/conf/eth0/rp_filter".to_string(), "2".to_string())
                ]
            );
            assert!(plan.nft.contains("iifname \"eth0\" meta mark set 0x2222"));
            assert!(plan.nft.contains("ct mark 0x2222 meta mark set ct mark"));
        }
    }

    #[test]
    fn nft_script_replaces_our_table_atomically() {
        let s = pod_nft("eth0");
        assert!(s.starts_with("table ip kube-egress-gateway\ndelete table ip kube-egress-gateway\n"));
        assert_eq!(s.matches("table ip kube-egress-gateway {").count(), 1);
    }

    #[test]
    fn parse_cidrs_normalises_to_the_network_address() {
        let raw = vec!["10.0.0.5/32".to_string(), "10.1.2.3/16".to_string()];
        assert_eq!(
            parse_cidrs("excludedCIDRs", &raw).expect("valid"),
            nets(&["10.0.0.5/32", "10.1.0.0/16"])
        );
    }

    #[test]
    fn parse_cidrs_refuses_bare_addresses_and_spaces_like_admission() {
        let err = parse_cidrs("excludedCIDRs", &["10.0.0.5".to_string()]).expect_err("bare address");
        assert!(
            err.contains("excludedCIDRs") && err.contains("\"10.0.0.5\"") && err.contains("10.0.0.5/32"),
            "{err}"
        );
        assert!(parse_cidrs("excludedCIDRs", &[" 10.0.0.0/8 ".to_string()]).is_err());
    }

    #[test]
    fn parse_cidrs_error_names_field_and_entry() {
        let raw = vec!["10.0.0.0/8".to_string(), "nope".to_string()];
        let err = parse_cidrs("excludedCIDRs", &raw).expect_err("invalid");
        assert!(err.contains("excludedCIDRs") && err.contains("\"nope\""), "{err}");
        let v6 = vec!["fd00::/8".to_string()];
        assert!(parse_cidrs("excludeCidrs", &v6).is_err());
    }
}
