//! Gateway-side desired state (pure).
//!
//! Layout (upstream's gateway daemon, https://github.com/Azure/kube-egress-gateway/tree/main/controllers/daemon; names users see in
//! troubleshooting kept; docs/dataplane.md):
//! * host: the pool's load-balancer frontend IPs as /32 on the host interface (floating IP: packets arrive
//!   with the frontend as destination); `<secondary>/32 dev host-gateway`; a NAT exemption so the host's own
//!   masquerading leaves the secondary source alone.
//! * gateway namespace `ns-static-egress-gateway`: `host0` (veth peer of `host-gateway`) with every
//!   configuration's secondary IP as /32, `<primary>/32 dev host0 scope link`, `default via <primary> dev host0`;
//!   one `wg-<port>` per configuration with `fe80::1/64`, its peers, and `<pod>/32 dev wg-<port>`;
//!   connections entering on `wg-<port>` get conntrack mark `<port>` and leave `host0` SNATed to that
//!   configuration's secondary IP.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use api::names::{GATEWAY_VETH_HOST, GATEWAY_VETH_NS, NFT_TABLE, fnv1a64, gateway_wg_interface};
use dataplane::nft::replace_table_preamble;
use dataplane::wg::PrivateKey;
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::jiff::Timestamp;

/// A pod peer (from a PodEndpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInput {
    /// `<namespace>/<name>` of the PodEndpoint.
    pub pod_endpoint: String,
    /// Pod's WireGuard public key (base64).
    pub public_key: String,
    /// Pod's IPv4 address.
    pub pod_ip: Ipv4Addr,
    /// The PodEndpoint's creationTimestamp: of two claiming one pod IP, the newest wins.
    pub created: Option<Timestamp>,
}

/// Of the peers claiming one pod IP, the one that gets it: the newest PodEndpoint (a stale one whose CNI DEL
/// never ran must not shadow the pod that reuses its IP), of equally new ones the first by name. A missing
/// creationTimestamp counts as oldest.
fn claims_before(a: &PeerInput, b: &PeerInput) -> std::cmp::Ordering {
    b.created
        .cmp(&a.created)
        .then_with(|| a.pod_endpoint.cmp(&b.pod_endpoint))
}

/// Why `loser` does not get its pod IP, which `winner` has.
fn shadowed(loser: &PeerInput, winner: &PeerInput) -> String {
    let created = |p: &PeerInput| {
        p.created
            .map_or_else(|| "no creationTimestamp".to_string(), |t| format!("created {t}"))
    };
    let why = if winner.created == loser.created {
        "as new and first by name".to_string()
    } else {
        format!("newer: {} against {}", created(winner), created(loser))
    };
    format!(
        "PodEndpoint {} has pod IP {} also claimed by PodEndpoint {} ({why}); ignored: the newest claim of a pod \
         IP wins",
        loser.pod_endpoint, loser.pod_ip, winner.pod_endpoint
    )
}

/// One configuration active on this gateway node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigInput {
    /// UID of the StaticGatewayConfiguration (probe path, link alias).
    pub uid: String,
    /// `<namespace>/<name>`.
    pub sgc: String,
    /// WireGuard / load-balancer port.
    pub port: u16,
    /// Gateway private key for this configuration.
    pub private_key: PrivateKey,
    /// This node's secondary IP for this configuration (the egress source).
    pub secondary_ip: Ipv4Addr,
    /// Peers.
    pub peers: Vec<PeerInput>,
}

/// Everything the gateway agent needs to compute its desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayInput {
    /// Name of the gateway namespace (default `ns-static-egress-gateway`).
    pub netns_name: String,
    /// This node's primary IP (next hop of the gateway namespace).
    pub primary_ip: Ipv4Addr,
    /// Load-balancer frontend IPs to accept as local (floating IP).
    pub frontend_ips: Vec<Ipv4Addr>,
    /// Active configurations.
    pub configs: Vec<ConfigInput>,
}

/// One WireGuard link's desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    /// `wg-<port>`.
    pub ifname: String,
    /// Name the link is created with in the host namespace (UAPI socket name for userspace).
    pub control_name: String,
    /// Listen port.
    pub port: u16,
    /// Private key.
    pub private_key: PrivateKey,
    /// Peers: public key → pod /32.
    pub peers: BTreeMap<String, Ipv4Net>,
    /// Configuration UID.
    pub uid: String,
    /// `<namespace>/<name>` of the configuration (errors and metrics name it).
    pub configuration: String,
    /// This node's secondary IP for the configuration (its egress source).
    pub secondary_ip: Ipv4Addr,
}

/// A route in the gateway namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NsRoute {
    /// Destination.
    pub dst: Ipv4Net,
    /// Gateway, if any.
    pub via: Option<Ipv4Addr>,
    /// Device.
    pub dev: String,
}

impl NsRoute {
    /// Arguments for `ip -4 route replace`.
    pub fn ip_args(&self) -> Vec<String> {
        let mut a = vec![self.dst.to_string()];
        match self.via {
            Some(v) => a.extend(["via".into(), v.to_string()]),
            None => a.extend(["scope".into(), "link".into()]),
        }
        a.extend(["dev".into(), self.dev.clone()]);
        a
    }
}

/// The whole desired state of a gateway node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPlan {
    /// Frontend IPs (/32) on the host interface.
    pub host_addresses: BTreeSet<Ipv4Addr>,
    /// `<secondary>/32 dev host-gateway` routes on the host.
    pub host_routes: BTreeSet<Ipv4Addr>,
    /// Secondary IPs on host0.
    pub ns_addresses: BTreeSet<Ipv4Addr>,
    /// Routes in the gateway namespace (ordered: on-link before via).
    pub ns_routes: Vec<NsRoute>,
    /// WireGuard links by interface name.
    pub links: BTreeMap<String, LinkPlan>,
    /// nftables script for the gateway namespace.
    pub gateway_nft: String,
    /// nftables script for the host.
    pub host_nft: String,
    /// Problems found in the input (duplicate ports or pod IPs); the rest is still applied.
    pub warnings: Vec<String>,
    /// This node's primary IP (kept to re-plan without some links, [`GatewayPlan::without_links`]).
    pub primary_ip: Ipv4Addr,
    /// The load-balancer frontend IPs of the input.
    pub frontend_ips: Vec<Ipv4Addr>,
}

impl GatewayPlan {
    /// The plan without the links `failed` names (interface names): their configurations' routes, addresses and
    /// nftables rules go too, as if they were not in the input. What the applier makes of a plan whose links
    /// could not all be applied, so that every other configuration is still served.
    pub fn without_links(&self, failed: &BTreeSet<String>) -> GatewayPlan {
        let links = self
            .links
            .iter()
            .filter(|(name, _)| !failed.contains(*name))
            .map(|(name, l)| (name.clone(), l.clone()))
            .collect();
        assemble(links, self.primary_ip, &self.frontend_ips, self.warnings.clone())
    }
}

/// A WireGuard link as found in the gateway namespace (part of an [`ObservedGateway`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedLink {
    /// Administratively up.
    pub up: bool,
    /// Its listen port, when it has one.
    pub listen_port: Option<u16>,
    /// Public key of its private key, when it has one (base64).
    pub public_key: Option<String>,
    /// Its peers: public key → allowed IPs.
    pub peers: BTreeMap<String, Vec<IpNet>>,
}

impl ObservedLink {
    /// A link exactly at its plan `l`: up, with its port, key and peers.
    pub fn at_plan(l: &LinkPlan) -> ObservedLink {
        ObservedLink {
            up: true,
            listen_port: Some(l.port),
            public_key: Some(l.private_key.public_base64()),
            peers: l
                .peers
                .iter()
                .map(|(k, ip)| (k.clone(), vec![IpNet::V4(*ip)]))
                .collect(),
        }
    }
}

/// The gateway namespace as found after an apply that failed as a whole (what [`serving_after_failure`]
/// trusts): its WireGuard links and the shared parts every configuration needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedGateway {
    /// The veth pair (`host-gateway` on the host, `host0` in the namespace) exists and both ends are up.
    pub veth_up: bool,
    /// The IPv4 addresses on `host0`.
    pub ns_addresses: BTreeSet<Ipv4Addr>,
    /// The IPv4 routes of the namespace's main table (not the kernel's own).
    pub ns_routes: BTreeSet<NsRoute>,
    /// The WireGuard links (`wg-<port>`) by interface name.
    pub links: BTreeMap<String, ObservedLink>,
}

impl ObservedGateway {
    /// A gateway namespace exactly at `plan`: veth up, its addresses, routes and links.
    pub fn at_plan(plan: &GatewayPlan) -> ObservedGateway {
        ObservedGateway {
            veth_up: true,
            ns_addresses: plan.ns_addresses.clone(),
            ns_routes: plan.ns_routes.iter().cloned().collect(),
            links: plan
                .links
                .values()
                .map(|l| (l.ifname.clone(), ObservedLink::at_plan(l)))
                .collect(),
        }
    }
}

/// What the node still serves after an apply that failed as a whole (or whose task died), from what was
/// `found` in the gateway namespace. Nothing unless the shared parts are there: the veth pair up, and
/// `<primary>/32 dev host0` and `default via <primary> dev host0`. Then a configuration of `serving` (what the
/// node served before) whose link is there, up, with the listen port and key of its plan (the attempted one,
/// for the same configuration, or the one before) and whose secondary IP is on `host0`, keeping only the peers
/// that link really has with their `<pod>/32 dev wg-<port>` route (a link the failed apply re-created has lost
/// its routes). A configuration the failed apply was adding is not served yet (its routes and nftables rules
/// may not be there); one whose link is gone, down or not at its plan is not served any more, so the load
/// balancer stops sending its flows here.
pub fn serving_after_failure(
    serving: &GatewayPlan,
    attempted: &GatewayPlan,
    found: &ObservedGateway,
) -> GatewayPlan {
    let shared = base_routes(serving.primary_ip);
    let carried = found.veth_up && shared.iter().all(|r| found.ns_routes.contains(r));
    let links = serving
        .links
        .iter()
        .filter(|_| carried)
        .filter_map(|(name, before)| {
            let seen = found.links.get(name).filter(|l| l.up)?;
            let at_plan = |l: &&LinkPlan| {
                seen.listen_port == Some(l.port)
                    && seen.public_key.as_deref() == Some(l.private_key.public_base64().as_str())
                    && found.ns_addresses.contains(&l.secondary_ip)
            };
            let planned = attempted.links.get(name).filter(|l| l.uid == before.uid);
            let mut link = planned.into_iter().chain([before]).find(at_plan)?.clone();
            link.peers.retain(|key, ip| {
                let route = NsRoute {
                    dst: *ip,
                    via: None,
                    dev: name.clone(),
                };
                seen.peers.get(key).is_some_and(|ips| ips[..] == [IpNet::V4(*ip)])
                    && found.ns_routes.contains(&route)
            });
            Some((name.clone(), link))
        })
        .collect();
    assemble(
        links,
        serving.primary_ip,
        &serving.frontend_ips,
        attempted.warnings.clone(),
    )
}

/// The routes every configuration needs in the gateway namespace: `<primary>/32 dev host0` (on-link) and
/// `default via <primary> dev host0`.
fn base_routes(primary_ip: Ipv4Addr) -> [NsRoute; 2] {
    [
        NsRoute {
            dst: Ipv4Net::from(primary_ip),
            via: None,
            dev: GATEWAY_VETH_NS.into(),
        },
        NsRoute {
            dst: Ipv4Net::default(),
            via: Some(primary_ip),
            dev: GATEWAY_VETH_NS.into(),
        },
    ]
}

/// Control name of a gateway link: unique per (namespace, port) so userspace sockets never collide.
pub fn gateway_control_name(netns_name: &str, port: u16) -> String {
    let h = fnv1a64(format!("{netns_name}/{port}").as_bytes());
    format!("wgg{:012x}", h & 0xffff_ffff_ffff)
}

/// Computes the plan.
pub fn gateway_plan(input: &GatewayInput) -> GatewayPlan {
    let mut warnings = Vec::new();
    let mut links = BTreeMap::new();
    let mut configs: Vec<&ConfigInput> = input.configs.iter().collect();
    configs.sort_by(|a, b| a.port.cmp(&b.port).then(a.sgc.cmp(&b.sgc)));
    let mut used: Vec<&ConfigInput> = Vec::new();
    for c in configs {
        if used.iter().any(|u| u.port == c.port) {
            warnings.push(format!(
                "configuration {} uses port {} already used by another configuration; ignored",
                c.sgc, c.port
            ));
            continue;
        }
        used.push(c);
    }
    // One owner per pod IP across all links (each gets a `<pod>/32` route in the one gateway namespace).
    let mut claims: Vec<&PeerInput> = used.iter().flat_map(|c| &c.peers).collect();
    claims.sort_by(|a, b| claims_before(a, b));
    let mut owners: BTreeMap<Ipv4Addr, &PeerInput> = BTreeMap::new();
    for p in claims {
        match owners.get(&p.pod_ip) {
            Some(winner) => warnings.push(shadowed(p, winner)),
            None => {
                owners.insert(p.pod_ip, p);
            }
        }
    }
    for c in &used {
        let ifname = gateway_wg_interface(c.port);
        let peers = c
            .peers
            .iter()
            .filter(|p| {
                owners
                    .get(&p.pod_ip)
                    .is_some_and(|o| o.pod_endpoint == p.pod_endpoint)
            })
            .map(|p| (p.public_key.clone(), Ipv4Net::from(p.pod_ip)))
            .collect();
        links.insert(
            ifname.clone(),
            LinkPlan {
                ifname,
                control_name: gateway_control_name(&input.netns_name, c.port),
                port: c.port,
                private_key: c.private_key.clone(),
                peers,
                uid: c.uid.clone(),
                configuration: c.sgc.clone(),
                secondary_ip: c.secondary_ip,
            },
        );
    }
    assemble(links, input.primary_ip, &input.frontend_ips, warnings)
}

/// Everything else of the plan follows from its links: addresses, routes and nftables rules.
fn assemble(
    links: BTreeMap<String, LinkPlan>,
    primary_ip: Ipv4Addr,
    frontend_ips: &[Ipv4Addr],
    warnings: Vec<String>,
) -> GatewayPlan {
    // By port, as the configurations were chosen (rule order in the nftables scripts).
    let mut used: Vec<&LinkPlan> = links.values().collect();
    used.sort_by_key(|l| l.port);
    let secondaries: BTreeSet<Ipv4Addr> = used.iter().map(|l| l.secondary_ip).collect();
    let mut ns_routes = Vec::new();
    if !used.is_empty() {
        ns_routes.extend(base_routes(primary_ip));
    }
    for l in links.values() {
        for ip in l.peers.values() {
            ns_routes.push(NsRoute {
                dst: *ip,
                via: None,
                dev: l.ifname.clone(),
            });
        }
    }
    GatewayPlan {
        host_addresses: if used.is_empty() {
            BTreeSet::new()
        } else {
            frontend_ips.iter().copied().collect()
        },
        host_routes: secondaries.clone(),
        ns_addresses: secondaries,
        ns_routes,
        gateway_nft: gateway_nft(&used),
        host_nft: host_nft(&used, frontend_ips, primary_ip),
        warnings,
        primary_ip,
        frontend_ips: frontend_ips.to_vec(),
        links,
    }
}

fn gateway_nft(configs: &[&LinkPlan]) -> String {
    let mut s = replace_table_preamble();
    let _ = writeln!(s, "table ip {NFT_TABLE} {{");
    s.push_str("\tchain prerouting {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n");
    for c in configs {
        let wg = gateway_wg_interface(c.port);
        let _ = writeln!(
            s,
            "\t\tiifname \"{wg}\" ct mark set {port} comment \"kube-egress-gateway mark packets from gateway link {wg}\"",
            port = c.port
        );
    }
    s.push_str("\t}\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
    for c in configs {
        let wg = gateway_wg_interface(c.port);
        let _ = writeln!(
            s,
            "\t\toifname \"{GATEWAY_VETH_NS}\" ct mark {port} snat to {ip} comment \"kube-egress-gateway sNAT packets from gateway link {wg}\"",
            port = c.port,
            ip = c.secondary_ip
        );
    }
    s.push_str("\t}\n}\n");
    s
}

/// Host rules: an identity SNAT at a priority before the usual masquerade chains claims the connection's
/// NAT binding, so kube-proxy's / iptables' MASQUERADE never rewrites the egress source.
///
/// And the tunnels' own packets keep the frontend (floating IP) as their address: a tunnel packet arrives with
/// the frontend as destination, is DNATed to the primary IP (where the WireGuard socket answers from, as
/// routing picks it), so conntrack rewrites the answer's source back to the frontend; a packet the gateway
/// starts on a tunnel port leaves from the frontend too. Otherwise the pod's WireGuard roams its endpoint to
/// this node's primary IP (WireGuard follows the address answers come from) and the pod's tunnel stops going
/// through the load balancer: when this node dies its pods never move to another gateway.
///
/// Gateways never start a WireGuard handshake (pods always do, and rekey on their own timers even when they
/// only receive). A gateway whose agent died but whose data plane lives would otherwise, 15 s after the load
/// balancer moved its pods away, keep sending them handshake initiations (every 5 s for 90 s): each resets the
/// pod's own re-handshake timer, and the pod's answers go through the load balancer to the other gateway,
/// which drops them, so the pod never moves.
fn host_nft(configs: &[&LinkPlan], frontends: &[Ipv4Addr], primary: Ipv4Addr) -> String {
    let mut s = replace_table_preamble();
    let _ = writeln!(s, "table ip {NFT_TABLE} {{");
    let ports = configs
        .iter()
        .map(|c| c.port.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(", ");
    let tunnels = !configs.is_empty() && !frontends.is_empty();
    if tunnels {
        let list = frontends
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        s.push_str(
            "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat - 10; policy accept;\n",
        );
        let _ = writeln!(
            s,
            "\t\tip daddr {{ {list} }} udp dport {{ {ports} }} dnat to {primary} comment \"kube-egress-gateway tunnels answer from the frontend\""
        );
        s.push_str("\t}\n");
        // A WireGuard handshake initiation is 148 bytes with message type 1 in its first byte.
        s.push_str("\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n");
        let _ = writeln!(
            s,
            "\t\tudp sport {{ {ports} }} udp length 156 @th,64,8 1 drop comment \"kube-egress-gateway gateways never start a handshake\""
        );
        s.push_str("\t}\n");
    }
    s.push_str("\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat - 10; policy accept;\n");
    let ips: BTreeSet<Ipv4Addr> = configs.iter().map(|c| c.secondary_ip).collect();
    for ip in ips {
        let _ = writeln!(
            s,
            "\t\tiifname \"{GATEWAY_VETH_HOST}\" ip saddr {ip} snat to {ip} comment \"kube-egress-gateway no sNAT packet from ip {ip}\""
        );
    }
    if let (true, Some(frontend)) = (tunnels, frontends.first()) {
        let _ = writeln!(
            s,
            "\t\tip saddr {primary} udp sport {{ {ports} }} snat to {frontend} comment \"kube-egress-gateway tunnels start from the frontend\""
        );
    }
    s.push_str("\t}\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PrivateKey {
        PrivateKey(wireguard_control::Key::from_base64(&base64_of([n; 32])).expect("test key"))
    }

    fn base64_of(b: [u8; 32]) -> String {
        wireguard_control::Key::from_hex(&b.iter().map(|x| format!("{x:02x}")).collect::<String>())
            .expect("hex key")
            .to_base64()
    }

    fn peer(name: &str, key: &str, ip: [u8; 4]) -> PeerInput {
        PeerInput {
            pod_endpoint: format!("ns/{name}"),
            public_key: key.into(),
            pod_ip: Ipv4Addr::from(ip),
            created: None,
        }
    }

    fn created_at(mut p: PeerInput, rfc3339: &str) -> PeerInput {
        p.created = Some(rfc3339.parse().expect("timestamp"));
        p
    }

    fn config(port: u16, secondary: [u8; 4], peers: Vec<PeerInput>) -> ConfigInput {
        ConfigInput {
            uid: format!("uid-{port}"),
            sgc: format!("ns/sgc-{port}"),
            port,
            private_key: key(port as u8),
            secondary_ip: Ipv4Addr::from(secondary),
            peers,
        }
    }

    fn input(configs: Vec<ConfigInput>) -> GatewayInput {
        GatewayInput {
            netns_name: "ns-static-egress-gateway".into(),
            primary_ip: Ipv4Addr::new(10, 0, 0, 4),
            frontend_ips: vec![Ipv4Addr::new(10, 0, 0, 100)],
            configs,
        }
    }

    #[test]
    fn one_configuration_full_layout() {
        let plan = gateway_plan(&input(vec![config(
            6000,
            [10, 0, 0, 6],
            vec![peer("a", "KA", [10, 244, 0, 5]), peer("b", "KB", [10, 244, 1, 7])],
        )]));
        assert!(plan.warnings.is_empty());
        assert_eq!(
            plan.host_addresses,
            BTreeSet::from([Ipv4Addr::new(10, 0, 0, 100)])
        );
        assert_eq!(plan.host_routes, BTreeSet::from([Ipv4Addr::new(10, 0, 0, 6)]));
        assert_eq!(plan.ns_addresses, BTreeSet::from([Ipv4Addr::new(10, 0, 0, 6)]));
        let routes: Vec<String> = plan.ns_routes.iter().map(|r| r.ip_args().join(" ")).collect();
        assert_eq!(
            routes,
            vec![
                "10.0.0.4/32 scope link dev host0",
                "0.0.0.0/0 via 10.0.0.4 dev host0",
                "10.244.0.5/32 scope link dev wg-6000",
                "10.244.1.7/32 scope link dev wg-6000",
            ]
        );
        let link = &plan.links["wg-6000"];
        assert_eq!(link.port, 6000);
        assert_eq!(link.uid, "uid-6000");
        assert_eq!(link.peers.len(), 2);
        assert_eq!(link.peers["KA"], "10.244.0.5/32".parse::<Ipv4Net>().expect("net"));
        assert!(plan.gateway_nft.contains(
            "iifname \"wg-6000\" ct mark set 6000 comment \"kube-egress-gateway mark packets from gateway link wg-6000\""
        ));
        assert!(
            plan.gateway_nft
                .contains("oifname \"host0\" ct mark 6000 snat to 10.0.0.6")
        );
        assert!(
            plan.host_nft
                .contains("iifname \"host-gateway\" ip saddr 10.0.0.6 snat to 10.0.0.6")
        );
        assert!(plan.host_nft.contains("priority srcnat - 10"));
    }

    #[test]
    fn tunnel_packets_keep_the_frontend_address() {
        // Found by the lab's failover scenario: wireguard-go answered from the node's primary IP, the pod's
        // WireGuard roamed to it, and the pod's tunnel bypassed the load balancer (no failover when the node died).
        let plan = gateway_plan(&input(vec![
            config(6001, [10, 0, 0, 7], vec![]),
            config(6000, [10, 0, 0, 6], vec![]),
        ]));
        assert!(
            plan.host_nft.contains(
                "ip daddr { 10.0.0.100 } udp dport { 6000, 6001 } dnat to 10.0.0.4 comment \"kube-egress-gateway tunnels answer from the frontend\""
            ),
            "{}",
            plan.host_nft
        );
        assert!(
            plan.host_nft
                .contains("type nat hook prerouting priority dstnat - 10;")
        );
        assert!(
            plan.host_nft.contains(
                "ip saddr 10.0.0.4 udp sport { 6000, 6001 } snat to 10.0.0.100 comment \"kube-egress-gateway tunnels start from the frontend\""
            ),
            "{}",
            plan.host_nft
        );
        assert!(
            plan.host_nft.contains(
                "udp sport { 6000, 6001 } udp length 156 @th,64,8 1 drop comment \"kube-egress-gateway gateways never start a handshake\""
            ),
            "{}",
            plan.host_nft
        );
        // Without a configuration nothing is rewritten.
        let none = gateway_plan(&input(vec![]));
        assert!(!none.host_nft.contains("dnat"), "{}", none.host_nft);
    }

    #[test]
    fn two_configurations_each_snat_to_their_own_ip() {
        let plan = gateway_plan(&input(vec![
            config(6001, [10, 0, 0, 7], vec![peer("b", "KB", [10, 244, 0, 9])]),
            config(6000, [10, 0, 0, 6], vec![peer("a", "KA", [10, 244, 0, 5])]),
        ]));
        assert_eq!(plan.links.keys().collect::<Vec<_>>(), vec!["wg-6000", "wg-6001"]);
        assert!(plan.gateway_nft.contains("ct mark 6000 snat to 10.0.0.6"));
        assert!(plan.gateway_nft.contains("ct mark 6001 snat to 10.0.0.7"));
        assert_eq!(plan.ns_addresses.len(), 2);
        // one default route for the node, not one per configuration
        assert_eq!(
            plan.ns_routes.iter().filter(|r| r.dst.prefix_len() == 0).count(),
            1
        );
        assert_ne!(
            plan.links["wg-6000"].control_name,
            plan.links["wg-6001"].control_name
        );
    }

    #[test]
    fn no_configuration_means_no_frontend_no_routes_and_empty_tables() {
        let plan = gateway_plan(&input(vec![]));
        assert!(plan.host_addresses.is_empty());
        assert!(plan.ns_routes.is_empty());
        assert!(plan.links.is_empty());
        assert!(!plan.gateway_nft.contains("snat"));
        assert!(!plan.host_nft.contains("snat"));
        assert!(
            plan.gateway_nft
                .starts_with("table ip kube-egress-gateway\ndelete table ip kube-egress-gateway\n")
        );
    }

    #[test]
    fn duplicate_port_and_duplicate_pod_ip_are_reported_not_applied() {
        let mut dup = config(6000, [10, 0, 0, 9], vec![]);
        dup.sgc = "ns/zzz".into();
        let plan = gateway_plan(&input(vec![
            config(
                6000,
                [10, 0, 0, 6],
                vec![peer("a", "KA", [10, 244, 0, 5]), peer("b", "KB", [10, 244, 0, 5])],
            ),
            dup,
        ]));
        assert_eq!(plan.links.len(), 1);
        assert_eq!(plan.links["wg-6000"].peers.len(), 1);
        assert!(plan.links["wg-6000"].peers.contains_key("KA"));
        assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
        assert!(!plan.ns_addresses.contains(&Ipv4Addr::new(10, 0, 0, 9)));
    }

    #[test]
    fn of_two_pod_endpoints_claiming_one_pod_ip_the_newest_wins_whatever_the_order() {
        // web-0's stale PodEndpoint (its DEL never ran) and the new pod that got its IP.
        let stale = created_at(peer("a-stale", "KS", [10, 244, 0, 5]), "2026-12-01T10:00:00Z");
        let new = created_at(peer("b-new", "KN", [10, 244, 0, 5]), "2026-12-07T10:00:00Z");
        for peers in [vec![stale.clone(), new.clone()], vec![new.clone(), stale.clone()]] {
            let plan = gateway_plan(&input(vec![config(6000, [10, 0, 0, 6], peers)]));
            let link = &plan.links["wg-6000"];
            assert_eq!(
                link.peers.keys().collect::<Vec<_>>(),
                vec!["KN"],
                "the newest PodEndpoint gets the IP"
            );
            assert_eq!(
                plan.warnings,
                vec![
                    "PodEndpoint ns/a-stale has pod IP 10.244.0.5 also claimed by PodEndpoint ns/b-new (newer: \
                     created 2026-12-07T10:00:00Z against created 2026-12-01T10:00:00Z); ignored: the newest \
                     claim of a pod IP wins"
                ]
            );
        }
        // Across configurations too: the pod IP has one route in the gateway namespace.
        let plan = gateway_plan(&input(vec![
            config(6000, [10, 0, 0, 6], vec![stale.clone()]),
            config(6001, [10, 0, 0, 7], vec![new.clone()]),
        ]));
        assert!(plan.links["wg-6000"].peers.is_empty());
        assert_eq!(plan.links["wg-6001"].peers.len(), 1);
        assert_eq!(
            plan.ns_routes
                .iter()
                .filter(|r| r.dst == "10.244.0.5/32".parse::<Ipv4Net>().expect("net"))
                .map(|r| r.dev.as_str())
                .collect::<Vec<_>>(),
            vec!["wg-6001"]
        );
        // Equally new: the first by name, reported as such; no timestamp counts as oldest.
        let twin = created_at(peer("c-twin", "KT", [10, 244, 0, 5]), "2026-12-07T10:00:00Z");
        let untimed = peer("0-untimed", "KU", [10, 244, 0, 5]);
        let plan = gateway_plan(&input(vec![config(
            6000,
            [10, 0, 0, 6],
            vec![twin, untimed, new],
        )]));
        assert_eq!(plan.links["wg-6000"].peers.keys().collect::<Vec<_>>(), vec!["KN"]);
        assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
        assert!(
            plan.warnings[0].starts_with("PodEndpoint ns/c-twin has pod IP 10.244.0.5 also claimed by PodEndpoint ns/b-new (as new and first by name)"),
            "{:?}",
            plan.warnings
        );
        assert!(
            plan.warnings[1].contains("ns/0-untimed")
                && plan.warnings[1].contains("against no creationTimestamp"),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn of_pod_endpoints_claiming_one_pod_ip_in_the_same_second_the_first_by_name_wins_in_any_list_order() {
        let same = "2026-12-07T10:00:00Z";
        let claims = [
            created_at(peer("b-two", "K2", [10, 244, 0, 5]), same),
            created_at(peer("a-one", "K1", [10, 244, 0, 5]), same),
            created_at(peer("c-three", "K3", [10, 244, 0, 5]), same),
        ];
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let peers = order.iter().map(|&i| claims[i].clone()).collect();
            let plan = gateway_plan(&input(vec![config(6000, [10, 0, 0, 6], peers)]));
            assert_eq!(
                plan.links["wg-6000"].peers.keys().collect::<Vec<_>>(),
                vec!["K1"],
                "{order:?}"
            );
        }
    }

    #[test]
    fn control_names_are_deterministic_valid_and_distinct() {
        let a = gateway_control_name("ns-static-egress-gateway", 6000);
        assert_eq!(a, gateway_control_name("ns-static-egress-gateway", 6000));
        assert_ne!(a, gateway_control_name("other", 6000));
        assert_eq!(a.len(), 15);
    }

    #[test]
    fn private_keys_never_print() {
        let plan = gateway_plan(&input(vec![config(6000, [10, 0, 0, 6], vec![])]));
        let dbg = format!("{plan:?}");
        assert!(dbg.contains("<redacted>"));
        assert!(!dbg.contains(&plan.links["wg-6000"].private_key.0.to_base64()));
    }

    #[test]
    fn after_a_failed_apply_only_configurations_whose_link_is_up_at_its_plan_are_served() {
        let a = config(6000, [10, 0, 0, 6], vec![peer("a", "KA", [10, 244, 0, 5])]);
        let b = config(6001, [10, 0, 0, 7], vec![peer("b", "KB", [10, 244, 0, 6])]);
        let serving = gateway_plan(&input(vec![a.clone(), b.clone()]));
        let links = |plan: &GatewayPlan| plan.links.keys().cloned().collect::<Vec<_>>();
        let found = ObservedGateway::at_plan(&serving);
        assert_eq!(
            serving_after_failure(&serving, &serving, &found),
            serving,
            "links untouched: what was served still is"
        );

        // The failed apply removed a's link: only b is served, and everything of a goes.
        let mut gone = found.clone();
        gone.links.remove("wg-6000");
        let after = serving_after_failure(&serving, &serving, &gone);
        assert_eq!(links(&after), vec!["wg-6001"]);
        assert_eq!(after, gateway_plan(&input(vec![b.clone()])));

        // Down, on another port, or with a key of neither plan: not at its plan, not served.
        for broken in [
            ObservedLink {
                up: false,
                ..found.links["wg-6000"].clone()
            },
            ObservedLink {
                listen_port: Some(6009),
                ..found.links["wg-6000"].clone()
            },
            ObservedLink {
                public_key: Some(key(99).public_base64()),
                ..found.links["wg-6000"].clone()
            },
            ObservedLink {
                public_key: None,
                ..found.links["wg-6000"].clone()
            },
        ] {
            let mut f = found.clone();
            f.links.insert("wg-6000".into(), broken.clone());
            assert_eq!(
                links(&serving_after_failure(&serving, &serving, &f)),
                vec!["wg-6001"],
                "{broken:?}"
            );
        }

        // A key rotation the failed apply did or did not get to: either key is a's own.
        let mut rotated = a.clone();
        rotated.private_key = key(77);
        let attempted = gateway_plan(&input(vec![rotated, b.clone()]));
        for link in [&attempted.links["wg-6000"], &serving.links["wg-6000"]] {
            let mut f = found.clone();
            f.links.insert("wg-6000".into(), ObservedLink::at_plan(link));
            let after = serving_after_failure(&serving, &attempted, &f);
            assert_eq!(after.links["wg-6000"], *link);
        }
        // The same port now another configuration's: the old one's link is served only with its own key.
        let mut other = a.clone();
        other.uid = "uid-other".into();
        other.private_key = key(78);
        let attempted = gateway_plan(&input(vec![other, b.clone()]));
        let mut f = found.clone();
        f.links.insert(
            "wg-6000".into(),
            ObservedLink::at_plan(&attempted.links["wg-6000"]),
        );
        assert_eq!(
            links(&serving_after_failure(&serving, &attempted, &f)),
            vec!["wg-6001"]
        );

        // A configuration the failed apply was adding is not served yet, even with its link up.
        let c = config(6002, [10, 0, 0, 8], vec![]);
        let attempted = gateway_plan(&input(vec![a.clone(), b.clone(), c]));
        let mut f = found.clone();
        f.links.insert(
            "wg-6002".into(),
            ObservedLink::at_plan(&attempted.links["wg-6002"]),
        );
        assert_eq!(
            links(&serving_after_failure(&serving, &attempted, &f)),
            vec!["wg-6000", "wg-6001"]
        );

        // Only the peers the link really has.
        let mut f = found.clone();
        if let Some(l) = f.links.get_mut("wg-6001") {
            l.peers.clear();
        }
        let after = serving_after_failure(&serving, &serving, &f);
        assert!(after.links["wg-6001"].peers.is_empty());
        assert_eq!(after.links["wg-6000"].peers.len(), 1);
        assert!(!after.ns_routes.iter().any(|r| r.dev == "wg-6001"));

        // A link the failed apply re-created has its peers but lost their routes: those peers are not counted.
        let mut f = found.clone();
        f.ns_routes.retain(|r| r.dev != "wg-6001");
        let after = serving_after_failure(&serving, &serving, &f);
        assert!(after.links["wg-6001"].peers.is_empty());
        assert_eq!(after.links["wg-6000"].peers.len(), 1);

        // Without its secondary IP on host0, a configuration is not served.
        let mut f = found.clone();
        f.ns_addresses.remove(&Ipv4Addr::new(10, 0, 0, 6));
        assert_eq!(
            links(&serving_after_failure(&serving, &serving, &f)),
            vec!["wg-6001"]
        );

        // Without the shared parts (the veth pair up, the on-link and default routes via the primary), none is.
        let mut down = found.clone();
        down.veth_up = false;
        let mut no_default = found.clone();
        no_default.ns_routes.retain(|r| r.dst.prefix_len() != 0);
        let mut no_onlink = found.clone();
        no_onlink
            .ns_routes
            .retain(|r| r.dst != Ipv4Net::from(serving.primary_ip));
        for f in [down, no_default, no_onlink] {
            assert!(
                serving_after_failure(&serving, &serving, &f).links.is_empty(),
                "{f:?}"
            );
        }
    }

    #[test]
    fn a_plan_without_a_failed_link_is_the_plan_of_the_other_configurations() {
        let a = config(6000, [10, 0, 0, 6], vec![peer("a", "KA", [10, 244, 0, 5])]);
        let b = config(6001, [10, 0, 0, 7], vec![peer("b", "KB", [10, 244, 0, 6])]);
        let both = gateway_plan(&input(vec![a.clone(), b.clone()]));
        let without_a = both.without_links(&BTreeSet::from(["wg-6000".to_string()]));
        assert_eq!(without_a, gateway_plan(&input(vec![b])));
        assert!(
            !without_a.gateway_nft.contains("wg-6000"),
            "{}",
            without_a.gateway_nft
        );
        assert!(!without_a.host_nft.contains("10.0.0.6"), "{}", without_a.host_nft);
        let none = both.without_links(&BTreeSet::from(["wg-6000".to_string(), "wg-6001".to_string()]));
        assert_eq!(none, gateway_plan(&input(vec![])));
        assert!(none.host_addresses.is_empty() && none.ns_routes.is_empty());
        assert_eq!(both.without_links(&BTreeSet::new()), both);
    }
}
