//! The lab's "Azure fabric": the network namespace that plays Azure's software-defined network between the
//! VMs, computed from what the Azure simulator holds.
//!
//! * Every VM's NIC is a veth into the fabric. The VM has its primary IP without a subnet route
//!   (`noprefixroute`), so everything goes through the fabric as it goes through Azure's host SDN.
//! * Secondary private IPs are routed to their VM; the Kubernetes pod CIDRs to their node (kubenet's route
//!   table).
//! * Internal load-balancer rules with floating IP: a packet to `<frontend>:<port>` is routed unchanged
//!   (destination still the frontend) to one healthy backend, chosen by a hash of the flow. Health comes from
//!   the rule's HTTP probe, sent from the fabric at the probe's interval; `probeThreshold` consecutive
//!   failures take a backend out, one success puts it back. Other traffic to a frontend is dropped.
//! * The edge to the internet maps each private IP that has a public IP (a gateway's secondary IP with its
//!   address from the public IP prefix) to that public IP, and every other private source to the cluster's
//!   outbound IP (AKS's default outbound SNAT).
//!
//! The desired state is plain data ([`desired`], unit-tested); [`Applier`] makes the namespace match it
//! (routes through one `ip -batch`, the nft table rewritten in one transaction, each only when changed).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use ipnet::Ipv4Net;
use serde_json::Value;

use crate::azure::SimHandle;
use crate::azure::world::{LB_TYPE, PIP_TYPE, World};

/// The fabric's nftables table.
pub const NFT_TABLE: &str = "kube-egress-lab-fabric";
/// Tag (as AKS sets it) marking the cluster's outbound public IP.
pub const OUTBOUND_TAG: (&str, &str) = ("aks-managed-type", "aks-slb-managed-outbound-ip");

/// One VM's primary NIC as Azure holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNic {
    pub vm: String,
    pub primary: Ipv4Addr,
    /// Public IP of the primary ipConfiguration, if any.
    pub primary_public: Option<Ipv4Addr>,
    /// Other ipConfigurations: (private, public).
    pub secondaries: Vec<(Ipv4Addr, Option<Ipv4Addr>)>,
}

/// Protocol of a load-balancing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
    All,
}

/// A load-balancing rule with what it refers to resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbRule {
    /// `<lb>/<rule>`.
    pub name: String,
    pub frontend: Ipv4Addr,
    pub proto: Proto,
    pub port: u16,
    pub floating_ip: bool,
    /// Lower-cased probe ID.
    pub probe: Option<String>,
    /// Private IPs of the backend pool's members.
    pub backends: Vec<Ipv4Addr>,
}

/// A health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Lower-cased ID.
    pub id: String,
    pub http: bool,
    pub port: u16,
    pub path: String,
    pub interval: Duration,
    /// Consecutive failures that take a backend out.
    pub threshold: u32,
}

/// What the fabric needs from the Azure simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AzureView {
    pub vms: Vec<VmNic>,
    pub frontends: Vec<Ipv4Addr>,
    pub rules: Vec<LbRule>,
    pub probes: Vec<Probe>,
    pub outbound: Option<Ipv4Addr>,
}

/// How the lab plugged things into the fabric.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wiring {
    /// VM name → (fabric interface, its mark/routing table number).
    pub nics: BTreeMap<String, (String, u32)>,
    /// Pod CIDR → node (VM) name.
    pub pod_cidrs: Vec<(Ipv4Net, String)>,
    /// Interface towards the internet.
    pub edge: String,
    /// Sources the edge SNATs to the outbound IP when they have no public IP of their own.
    pub private_space: Vec<Ipv4Net>,
}

/// Probe results: (probe ID, backend IP) → healthy.
pub type Health = BTreeMap<(String, Ipv4Addr), bool>;

/// The fabric's desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// `ip route` arguments (for `replace` / `del`).
    pub routes: BTreeSet<String>,
    /// The whole nft table.
    pub nft: String,
    /// Per rule: the healthy backends that get its traffic.
    pub serving: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Rules the fabric cannot realise (e.g. without floating IP), with why.
    pub skipped: Vec<String>,
}

fn lc(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn ip_at(v: &Value, ptr: &str) -> Option<Ipv4Addr> {
    v.pointer(ptr)?.as_str()?.parse().ok()
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Reads the VMs named in `vms` and every load balancer from the simulator's world.
pub fn read_view<'a>(w: &World, vms: impl IntoIterator<Item = &'a String>) -> AzureView {
    let public_of = |c: &Value| {
        let pid = c.pointer("/properties/publicIPAddress/id")?.as_str()?;
        w.public_address_of(pid)
            .or_else(|| w.get(pid).and_then(|p| ip_at(p, "/properties/ipAddress")))
    };
    let mut view = AzureView::default();
    for name in vms {
        let Some(nic) = w.node(name).and_then(|n| w.node_primary_nic(&n)) else {
            continue;
        };
        let mut primary = None;
        let mut secondaries = Vec::new();
        for c in arr(&nic, "/properties/ipConfigurations") {
            let Some(ip) = ip_at(c, "/properties/privateIPAddress") else {
                continue;
            };
            if c.pointer("/properties/primary").and_then(Value::as_bool) == Some(true) {
                primary = Some((ip, public_of(c)));
            } else {
                secondaries.push((ip, public_of(c)));
            }
        }
        if let Some((ip, public)) = primary {
            view.vms.push(VmNic {
                vm: name.clone(),
                primary: ip,
                primary_public: public,
                secondaries,
            });
        }
    }
    let mut ids = w.resource_ids();
    ids.sort();
    for id in ids {
        let Some(r) = w.get(&id) else { continue };
        let ty = r["type"].as_str().unwrap_or_default();
        if ty.eq_ignore_ascii_case(PIP_TYPE)
            && r.pointer(&format!("/tags/{}", OUTBOUND_TAG.0))
                .and_then(Value::as_str)
                == Some(OUTBOUND_TAG.1)
        {
            view.outbound = view.outbound.or(ip_at(r, "/properties/ipAddress"));
        }
        if !ty.eq_ignore_ascii_case(LB_TYPE) {
            continue;
        }
        let lb = w.decorate_lb(r.clone());
        let lb_name = lb["name"].as_str().unwrap_or_default();
        let frontends: BTreeMap<String, Ipv4Addr> = arr(&lb, "/properties/frontendIPConfigurations")
            .iter()
            .filter_map(|f| Some((lc(f["id"].as_str()?), ip_at(f, "/properties/privateIPAddress")?)))
            .collect();
        view.frontends.extend(frontends.values().copied());
        let pools: BTreeMap<String, Vec<Ipv4Addr>> = arr(&lb, "/properties/backendAddressPools")
            .iter()
            .filter_map(|p| {
                let members = arr(p, "/properties/backendIPConfigurations")
                    .iter()
                    .filter_map(|m| w.private_address_of(m["id"].as_str()?))
                    .collect();
                Some((lc(p["id"].as_str()?), members))
            })
            .collect();
        for p in arr(&lb, "/properties/probes") {
            let Some(id) = p["id"].as_str() else { continue };
            let num = |ptr: &str| p.pointer(ptr).and_then(Value::as_u64);
            view.probes.push(Probe {
                id: lc(id),
                http: p
                    .pointer("/properties/protocol")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.eq_ignore_ascii_case("http")),
                port: num("/properties/port")
                    .and_then(|n| u16::try_from(n).ok())
                    .unwrap_or(0),
                path: p
                    .pointer("/properties/requestPath")
                    .and_then(Value::as_str)
                    .unwrap_or("/")
                    .to_string(),
                interval: Duration::from_secs(num("/properties/intervalInSeconds").unwrap_or(15).max(1)),
                threshold: num("/properties/probeThreshold")
                    .or(num("/properties/numberOfProbes"))
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(1)
                    .max(1),
            });
        }
        for r in arr(&lb, "/properties/loadBalancingRules") {
            let s = |ptr: &str| r.pointer(ptr).and_then(Value::as_str).map(lc);
            let Some(frontend) =
                s("/properties/frontendIPConfiguration/id").and_then(|f| frontends.get(&f).copied())
            else {
                continue;
            };
            let proto = match s("/properties/protocol").as_deref() {
                Some("udp") => Proto::Udp,
                Some("tcp") => Proto::Tcp,
                _ => Proto::All,
            };
            let mut pool_ids: Vec<String> = s("/properties/backendAddressPool/id").into_iter().collect();
            pool_ids.extend(
                arr(r, "/properties/backendAddressPools")
                    .iter()
                    .filter_map(|p| p["id"].as_str().map(lc)),
            );
            let mut backends: Vec<Ipv4Addr> = pool_ids
                .iter()
                .filter_map(|p| pools.get(p))
                .flatten()
                .copied()
                .collect();
            backends.sort();
            backends.dedup();
            view.rules.push(LbRule {
                name: format!("{lb_name}/{}", r["name"].as_str().unwrap_or_default()),
                frontend,
                proto,
                port: r
                    .pointer("/properties/frontendPort")
                    .and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok())
                    .unwrap_or(0),
                floating_ip: r.pointer("/properties/enableFloatingIP").and_then(Value::as_bool) == Some(true),
                probe: s("/properties/probe/id"),
                backends,
            });
        }
    }
    view
}

/// The fabric's desired state from Azure's state, the lab's wiring and the probe results.
pub fn desired(view: &AzureView, wiring: &Wiring, health: &Health) -> Desired {
    let mut d = Desired::default();
    let mut nic_of: BTreeMap<Ipv4Addr, (&str, u32)> = BTreeMap::new();
    for vm in &view.vms {
        let Some((dev, table)) = wiring.nics.get(&vm.vm) else {
            continue;
        };
        nic_of.insert(vm.primary, (dev, *table));
        d.routes.insert(format!("{}/32 dev {dev} scope link", vm.primary));
        d.routes.insert(format!(
            "default via {} dev {dev} onlink table {table}",
            vm.primary
        ));
        for (ip, _) in &vm.secondaries {
            d.routes
                .insert(format!("{ip}/32 via {} dev {dev} onlink", vm.primary));
        }
        for (cidr, node) in &wiring.pod_cidrs {
            if *node == vm.vm {
                d.routes
                    .insert(format!("{cidr} via {} dev {dev} onlink", vm.primary));
            }
        }
    }

    let mut lb = String::new();
    for rule in &view.rules {
        if !rule.floating_ip {
            d.skipped.push(format!(
                "{}: floating IP off (the lab only realises floating-IP rules)",
                rule.name
            ));
            continue;
        }
        let healthy: Vec<(Ipv4Addr, u32)> = rule
            .backends
            .iter()
            .filter(|ip| match &rule.probe {
                Some(p) => health.get(&(p.clone(), **ip)).copied().unwrap_or(false),
                None => true,
            })
            .filter_map(|ip| nic_of.get(ip).map(|(_, t)| (*ip, *t)))
            .collect();
        d.serving
            .insert(rule.name.clone(), healthy.iter().map(|(ip, _)| *ip).collect());
        if healthy.is_empty() {
            continue;
        }
        let (matcher, hash) = match rule.proto {
            Proto::Udp => (format!("udp dport {}", rule.port), "ip saddr . udp sport"),
            Proto::Tcp => (format!("tcp dport {}", rule.port), "ip saddr . tcp sport"),
            Proto::All => (
                format!("meta l4proto {{ tcp, udp }} th dport {}", rule.port),
                "ip saddr . th sport",
            ),
        };
        let map = healthy
            .iter()
            .enumerate()
            .map(|(i, (_, t))| format!("{i} : {t:#x}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            lb,
            "    ip daddr {} {matcher} meta mark set jhash {hash} mod {} seed 0x6c6162 map {{ {map} }} comment \"{}\"",
            rule.frontend,
            healthy.len(),
            rule.name
        );
    }
    let mut frontends = view.frontends.clone();
    frontends.sort();
    frontends.dedup();
    if !frontends.is_empty() {
        let list = frontends
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(lb, "    ip daddr {{ {list} }} meta mark 0 drop");
    }

    let mut edge = String::new();
    for vm in &view.vms {
        let own = std::iter::once((vm.primary, vm.primary_public)).chain(vm.secondaries.iter().copied());
        for (private, public) in own {
            if let Some(public) = public {
                let _ = writeln!(
                    edge,
                    "    oifname \"{}\" ip saddr {private} snat to {public}",
                    wiring.edge
                );
            }
        }
    }
    if let (Some(out), false) = (view.outbound, wiring.private_space.is_empty()) {
        let space = wiring
            .private_space
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            edge,
            "    oifname \"{}\" ip saddr {{ {space} }} snat to {out}",
            wiring.edge
        );
    }
    d.nft = format!(
        "table ip {NFT_TABLE} {{\n  chain load_balancer {{\n    type filter hook prerouting priority mangle; policy accept;\n{lb}  }}\n  chain edge {{\n    type nat hook postrouting priority srcnat; policy accept;\n{edge}  }}\n}}\n"
    );
    d
}

/// Makes the fabric namespace match a [`Desired`], touching only what changed since the last apply.
#[derive(Debug)]
pub struct Applier {
    pub ns: String,
    routes: BTreeSet<String>,
    nft: Option<String>,
}

impl Applier {
    pub fn new(ns: &str) -> Self {
        Self {
            ns: ns.to_string(),
            routes: BTreeSet::new(),
            nft: None,
        }
    }

    /// Applies `d`; returns whether anything changed. Via routes are `onlink` (the VM's /32 needs no order).
    pub fn apply(&mut self, d: &Desired) -> anyhow::Result<bool> {
        let mut batch = String::new();
        for r in self.routes.difference(&d.routes) {
            let _ = writeln!(batch, "route del {r}");
        }
        for r in d.routes.difference(&self.routes) {
            let _ = writeln!(batch, "route replace {r}");
        }
        let mut changed = false;
        if !batch.is_empty() {
            super::dataplane::run_in(&self.ns, "ip", &["-force", "-batch", "-"], &batch)
                .context("fabric routes")?;
            self.routes = d.routes.clone();
            changed = true;
        }
        if self.nft.as_deref() != Some(d.nft.as_str()) {
            let script = format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n{}", d.nft);
            super::dataplane::run_in(&self.ns, "nft", &["-f", "-"], &script).context("fabric nftables")?;
            self.nft = Some(d.nft.clone());
            changed = true;
        }
        Ok(changed)
    }
}

/// What the running fabric reports after each pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub desired: Desired,
    /// The last apply error, if the last pass failed.
    pub error: Option<String>,
}

/// The fabric running in the background: re-reads Azure, probes backends, re-applies.
#[derive(Debug)]
pub struct Running {
    pub status: tokio::sync::watch::Receiver<Status>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the loop and every prober.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Starts the fabric loop in namespace `ns`: every `tick` it reads Azure, starts/stops one prober per (probe,
/// backend), and applies the desired state.
pub fn start(ns: &str, azure: SimHandle, wiring: Wiring, tick: Duration) -> Running {
    let (tx, rx) = tokio::sync::watch::channel(Status::default());
    let ns = ns.to_string();
    let task = tokio::spawn(async move {
        let health: Arc<Mutex<Health>> = Arc::default();
        // Dropping an entry (or the whole map when this task is aborted) stops its prober.
        let mut probers: BTreeMap<(String, Ipv4Addr), (Probe, AbortOnDrop)> = BTreeMap::new();
        let mut applier = Applier::new(&ns);
        let vms: Vec<String> = wiring.nics.keys().cloned().collect();
        loop {
            let view = azure.with_state(|s| read_view(&s.world, &vms));
            let mut wanted = BTreeMap::new();
            for rule in &view.rules {
                let Some(p) = rule
                    .probe
                    .as_ref()
                    .and_then(|id| view.probes.iter().find(|p| p.id == *id))
                else {
                    continue;
                };
                for b in &rule.backends {
                    wanted.insert((p.id.clone(), *b), p.clone());
                }
            }
            probers.retain(|k, (p, _)| {
                let keep = wanted.get(k) == Some(p);
                if !keep && let Ok(mut g) = health.lock() {
                    g.remove(k);
                }
                keep
            });
            for (k, p) in wanted {
                if let std::collections::btree_map::Entry::Vacant(e) = probers.entry(k) {
                    let h = tokio::spawn(prober(ns.clone(), e.key().1, p.clone(), health.clone()));
                    e.insert((p, AbortOnDrop(h)));
                }
            }
            let snapshot = health.lock().map(|g| g.clone()).unwrap_or_default();
            let d = desired(&view, &wiring, &snapshot);
            let ns2 = ns.clone();
            let (res, back) = match tokio::task::spawn_blocking(move || {
                let r = applier.apply(&d);
                (r, applier, d)
            })
            .await
            {
                Ok((r, a, d)) => {
                    applier = a;
                    (r, d)
                }
                Err(e) => {
                    applier = Applier::new(&ns2);
                    (
                        Err(anyhow::anyhow!("fabric apply panicked: {e}")),
                        Desired::default(),
                    )
                }
            };
            let status = Status {
                desired: back,
                error: res.err().map(|e| format!("{e:#}")),
            };
            tx.send_if_modified(|s| {
                let changed = *s != status;
                *s = status;
                changed
            });
            tokio::time::sleep(tick).await;
            if tx.is_closed() {
                break;
            }
        }
    });
    Running { status: rx, task }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Probes `ip` every `p.interval` from the fabric; healthy after one success, unhealthy after
/// `p.threshold` consecutive failures (or before the first success).
async fn prober(ns: String, ip: Ipv4Addr, p: Probe, health: Arc<Mutex<Health>>) {
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(p.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = if p.http {
            super::dataplane::probe_from(&ns, ip, p.port, &p.path).await == Some(200)
        } else {
            tcp_connects(&ns, ip, p.port).await
        };
        failures = if ok { 0 } else { failures.saturating_add(1) };
        if let Ok(mut g) = health.lock() {
            let key = (p.id.clone(), ip);
            if ok {
                g.insert(key, true);
            } else if failures >= p.threshold || !g.contains_key(&key) {
                g.insert(key, false);
            }
        }
    }
}

/// Whether a TCP connection to `ip:port` from inside `ns` succeeds within 500 ms (a TCP probe).
async fn tcp_connects(ns: &str, ip: Ipv4Addr, port: u16) -> bool {
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || {
        super::dataplane::in_netns(&ns, move || {
            Ok(std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(500)).is_ok())
        })
        .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asserts::{assert_contains, assert_lacks};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    /// Two gateways (one secondary each with a public IP), one node, one floating-IP UDP rule.
    fn world() -> (AzureView, Wiring) {
        let view = AzureView {
            vms: vec![
                VmNic {
                    vm: "gw0".into(),
                    primary: ip("10.224.0.4"),
                    primary_public: None,
                    secondaries: vec![(ip("10.224.0.8"), Some(ip("20.10.0.2")))],
                },
                VmNic {
                    vm: "gw1".into(),
                    primary: ip("10.224.0.5"),
                    primary_public: None,
                    secondaries: vec![(ip("10.224.0.9"), Some(ip("20.10.0.3")))],
                },
                VmNic {
                    vm: "node0".into(),
                    primary: ip("10.224.0.6"),
                    primary_public: None,
                    secondaries: vec![],
                },
            ],
            frontends: vec![ip("10.224.0.7")],
            rules: vec![LbRule {
                name: "lb/rule".into(),
                frontend: ip("10.224.0.7"),
                proto: Proto::Udp,
                port: 6000,
                floating_ip: true,
                probe: Some("probe".into()),
                backends: vec![ip("10.224.0.4"), ip("10.224.0.5")],
            }],
            probes: vec![Probe {
                id: "probe".into(),
                http: true,
                port: 8082,
                path: "/gw/u".into(),
                interval: Duration::from_secs(5),
                threshold: 1,
            }],
            outbound: Some(ip("20.10.0.1")),
        };
        let wiring = Wiring {
            nics: BTreeMap::from([
                ("gw0".into(), ("gw0".into(), 0x100)),
                ("gw1".into(), ("gw1".into(), 0x101)),
                ("node0".into(), ("node0".into(), 0x102)),
            ]),
            pod_cidrs: vec![("10.244.0.0/24".parse().expect("cidr"), "node0".into())],
            edge: "edge0".into(),
            private_space: vec!["10.0.0.0/8".parse().expect("cidr")],
        };
        (view, wiring)
    }

    fn healthy(list: &[(&str, bool)]) -> Health {
        list.iter()
            .map(|(i, h)| (("probe".to_string(), ip(i)), *h))
            .collect()
    }

    #[test]
    fn routes_reach_every_nic_secondary_ip_and_pod_cidr() {
        let (view, wiring) = world();
        let d = desired(&view, &wiring, &Health::new());
        for r in [
            "10.224.0.4/32 dev gw0 scope link",
            "default via 10.224.0.4 dev gw0 onlink table 256",
            "10.224.0.8/32 via 10.224.0.4 dev gw0 onlink",
            "10.224.0.9/32 via 10.224.0.5 dev gw1 onlink",
            "10.244.0.0/24 via 10.224.0.6 dev node0 onlink",
        ] {
            assert!(d.routes.contains(r), "missing {r}: {:?}", d.routes);
        }
        assert_eq!(d.routes.len(), 3 * 2 + 2 + 1);
    }

    #[test]
    fn only_healthy_backends_get_the_floating_ip_traffic() {
        let (view, wiring) = world();
        let none = desired(&view, &wiring, &Health::new());
        assert_eq!(none.serving["lb/rule"], Vec::<Ipv4Addr>::new());
        assert_lacks(&none.nft, "jhash");
        assert_contains(&none.nft, "ip daddr { 10.224.0.7 } meta mark 0 drop");

        let both = desired(
            &view,
            &wiring,
            &healthy(&[("10.224.0.4", true), ("10.224.0.5", true)]),
        );
        assert_eq!(both.serving["lb/rule"], vec![ip("10.224.0.4"), ip("10.224.0.5")]);
        assert_contains(
            &both.nft,
            "ip daddr 10.224.0.7 udp dport 6000 meta mark set jhash ip saddr . udp sport mod 2 seed 0x6c6162 map { 0 : 0x100, 1 : 0x101 }",
        );

        let one = desired(
            &view,
            &wiring,
            &healthy(&[("10.224.0.4", false), ("10.224.0.5", true)]),
        );
        assert_eq!(one.serving["lb/rule"], vec![ip("10.224.0.5")]);
        assert_contains(&one.nft, "mod 1 seed 0x6c6162 map { 0 : 0x101 }");
        // Routes do not depend on health.
        assert_eq!(one.routes, both.routes);
    }

    #[test]
    fn the_edge_maps_secondaries_to_their_public_ip_and_the_rest_to_the_outbound_ip() {
        let (view, wiring) = world();
        let d = desired(&view, &wiring, &Health::new());
        let gw0 = d
            .nft
            .find("ip saddr 10.224.0.8 snat to 20.10.0.2")
            .expect("gw0 mapping");
        let gw1 = d
            .nft
            .find("ip saddr 10.224.0.9 snat to 20.10.0.3")
            .expect("gw1 mapping");
        let rest = d
            .nft
            .find("oifname \"edge0\" ip saddr { 10.0.0.0/8 } snat to 20.10.0.1")
            .expect("outbound");
        assert!(gw0 < rest && gw1 < rest, "specific mappings first:\n{}", d.nft);
    }

    #[test]
    fn unwired_vms_unknown_backends_and_non_floating_rules_are_left_out() {
        let (mut view, mut wiring) = world();
        wiring.nics.remove("gw1");
        view.rules.push(LbRule {
            name: "lb/plain".into(),
            floating_ip: false,
            ..view.rules[0].clone()
        });
        let d = desired(
            &view,
            &wiring,
            &healthy(&[("10.224.0.4", true), ("10.224.0.5", true)]),
        );
        assert!(!d.routes.iter().any(|r| r.contains("gw1")), "{:?}", d.routes);
        assert_eq!(d.serving["lb/rule"], vec![ip("10.224.0.4")]);
        assert_eq!(d.skipped.len(), 1, "{:?}", d.skipped);
        assert!(!d.serving.contains_key("lb/plain"));
    }

    #[test]
    fn no_outbound_ip_means_no_catch_all_snat() {
        let (mut view, wiring) = world();
        view.outbound = None;
        let d = desired(&view, &wiring, &Health::new());
        assert_lacks(&d.nft, "10.0.0.0/8");
    }

    #[test]
    fn read_view_takes_vm_addresses_and_the_outbound_ip_from_the_world() {
        let mut seed = crate::azure::Seed::aks_like(2);
        seed.vm_scale_sets[0].name = "aks-gw-1-vmss".into();
        let mut w = seed.build().expect("world");
        w.put_public_ip(
            "node-rg",
            "outbound",
            serde_json::json!({"location": "eastus", "tags": {OUTBOUND_TAG.0: OUTBOUND_TAG.1}}),
        )
        .expect("public ip");
        let names = vec!["aks-gw-1-vmss000000".to_string(), "missing".to_string()];
        let v = read_view(&w, &names);
        assert_eq!(v.vms.len(), 1, "{v:?}");
        assert!(
            "10.224.0.0/16"
                .parse::<Ipv4Net>()
                .expect("cidr")
                .contains(&v.vms[0].primary)
        );
        assert!(v.vms[0].secondaries.is_empty());
        let out = v.outbound.expect("outbound ip");
        assert!("20.10.0.0/24".parse::<Ipv4Net>().expect("cidr").contains(&out));
        assert!(v.rules.is_empty() && v.frontends.is_empty());
    }

    #[test]
    fn read_view_takes_a_vm_based_pools_nics_secondaries_and_its_floating_ip_rule() {
        use serde_json::json;
        let seed = crate::azure::Seed::aks_like(1).with_vm_pool("gwvms", 1, 1);
        let mut w = seed.build().expect("world");
        let vm = "aks-gwvms-12345678-vm0".to_string();
        let sub = "/subscriptions/00000000-0000-0000-0000-00000000a5b1/resourceGroups/node-rg";
        let subnet = format!("{sub}/providers/Microsoft.Network/virtualNetworks/aks-vnet/subnets/aks-subnet");
        let lb_id = format!("{sub}/providers/Microsoft.Network/loadBalancers/ilb");
        w.put_load_balancer(
            "node-rg",
            "ilb",
            json!({"location": "eastus", "sku": {"name": "Standard"}, "properties": {
                "frontendIPConfigurations": [{"name": "fe", "properties": {"subnet": {"id": subnet},
                    "privateIPAllocationMethod": "Dynamic", "privateIPAddressVersion": "IPv4"}}],
                "backendAddressPools": [{"name": "be", "properties": {}}],
                "probes": [{"name": "p", "properties": {"protocol": "Http", "port": 8082,
                    "requestPath": "/gw/x", "intervalInSeconds": 5, "probeThreshold": 1}}],
                "loadBalancingRules": [{"name": "r", "properties": {"protocol": "Udp",
                    "frontendPort": 6000, "backendPort": 6000, "enableFloatingIP": true,
                    "frontendIPConfiguration": {"id": format!("{lb_id}/frontendIPConfigurations/fe")},
                    "backendAddressPool": {"id": format!("{lb_id}/backendAddressPools/be")},
                    "probe": {"id": format!("{lb_id}/probes/p")}}}]}}),
        )
        .expect("load balancer");
        // What the operator does to a pre-created NIC: a secondary ipConfiguration (private mode: no public
        // IP) and the pool's backend pool on the primary one.
        w.put_network_interface(
            "node-rg",
            "aks-gwvms-12345678-nic0",
            json!({"location": "eastus", "properties": {"ipConfigurations": [
                {"name": "ipconfig1", "properties": {"primary": true, "subnet": {"id": subnet},
                    "loadBalancerBackendAddressPools": [{"id": format!("{lb_id}/backendAddressPools/be")}]}},
                {"name": "egressgateway-x", "properties": {"primary": false, "subnet": {"id": subnet},
                    "privateIPAddressVersion": "IPv4"}}]}}),
        )
        .expect("nic");
        let v = read_view(&w, [&vm]);
        assert_eq!(v.vms.len(), 1, "{v:?}");
        let nic = &v.vms[0];
        assert_eq!(nic.secondaries.len(), 1, "{nic:?}");
        assert_eq!(nic.secondaries[0].1, None, "private mode: no public IP");
        assert_eq!(v.rules.len(), 1, "{v:?}");
        assert_eq!(v.rules[0].backends, vec![nic.primary]);
        assert!(v.rules[0].floating_ip && v.rules[0].port == 6000 && v.rules[0].proto == Proto::Udp);
        assert_eq!(v.frontends, vec![v.rules[0].frontend]);
        // Realised like a VMSS pool: the secondary routed to its VM, the rule to the healthy VM.
        let mut wiring = Wiring::default();
        wiring.nics.insert(vm.clone(), ("gwvm0".into(), 0x120));
        let mut health = Health::new();
        health.insert((v.probes[0].id.clone(), nic.primary), true);
        let d = desired(&v, &wiring, &health);
        assert!(
            d.routes.contains(&format!(
                "{}/32 via {} dev gwvm0 onlink",
                nic.secondaries[0].0, nic.primary
            )),
            "{:?}",
            d.routes
        );
        assert_eq!(d.serving.get("ilb/r"), Some(&vec![nic.primary]));
    }
}
