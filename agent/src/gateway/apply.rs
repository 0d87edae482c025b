//! Applies a [`GatewayPlan`] by diffing it against what the kernel has. Idempotent: applying the same plan
//! twice changes nothing the second time (links, keys, peers and routes that are already right are left
//! alone), so with kernel WireGuard traffic keeps flowing across an agent restart (wireguard-go's links end
//! with the agent's container; the restarted agent re-creates them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use api::names::{GATEWAY_VETH_HOST, GATEWAY_VETH_NS, GATEWAY_WG_ADDRESS, port_of_gateway_wg_interface};
use dataplane::netns::{CmdError, Netns};
use dataplane::wg::{DeviceChange, PeerSpec, WgError, WgHandle, WireGuard, link_alias};
use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;

use super::plan::{GatewayPlan, LinkPlan, NsRoute, ObservedGateway, ObservedLink};

/// Errors of the applier.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A command failed.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// A WireGuard operation failed.
    #[error(transparent)]
    Wg(#[from] WgError),
}

/// A WireGuard link that could not be applied. Its configuration is left out of this apply (no link, routes,
/// addresses or nftables rules of it remain); every other configuration is applied.
#[derive(Debug, thiserror::Error)]
#[error(
    "configuration {configuration}: link {ifname}: {source}{}",
    .left_behind.as_deref().map(|e| format!(" (and the link could not be removed: {e})")).unwrap_or_default()
)]
pub struct LinkError {
    /// `<namespace>/<name>` of the configuration; empty for a leftover link of no configuration in the plan.
    pub configuration: String,
    /// The link, `wg-<port>`.
    pub ifname: String,
    /// What failed.
    #[source]
    pub source: ApplyError,
    /// Why the half-built link could not be removed afterwards, when it could not: it is then still there, with
    /// whatever key, port and peers it had (its routes and nftables rules are gone all the same).
    pub left_behind: Option<String>,
}

/// What an apply changed (for logs, metrics and idempotency tests).
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Human-readable changes, empty when everything was already right.
    pub changes: Vec<String>,
    /// Links that could not be applied, each with its configuration: the rest of the plan was applied without
    /// them ([`GatewayPlan::without_links`] of [`ApplyReport::failed_links`]).
    pub failed: Vec<LinkError>,
}

impl ApplyReport {
    /// The interface names of the links that could not be applied.
    pub fn failed_links(&self) -> BTreeSet<String> {
        self.failed.iter().map(|f| f.ifname.clone()).collect()
    }
}

/// Where to apply.
#[derive(Debug, Clone)]
pub struct GatewayApplier {
    /// The node's namespace (the agent's own in production).
    pub host: Netns,
    /// Name of the gateway namespace.
    pub netns_name: String,
    /// Host interface for frontend IPs.
    pub host_interface: String,
    /// WireGuard driver.
    pub wg: WireGuard,
}

impl GatewayApplier {
    fn gw(&self) -> Netns {
        Netns::named(&self.netns_name)
    }

    /// Applies `plan`. Each WireGuard link is applied on its own: one that fails is removed (no half-built link
    /// stays) and reported in [`ApplyReport::failed`], and the rest of the plan is applied without it, so one
    /// configuration that cannot be served never stops the others. `Err` is for what every configuration
    /// needs (the namespace, the veth pair, addresses, routes, nftables).
    pub fn apply(&self, plan: &GatewayPlan) -> Result<ApplyReport, ApplyError> {
        let mut r = ApplyReport::default();
        let gw = self.gw();
        self.ensure_namespace(&gw, &mut r)?;
        self.ensure_veth(&gw, &mut r)?;
        self.sync_links(&gw, &plan.links, &mut r)?;
        let pruned;
        let plan = if r.failed.iter().any(|f| plan.links.contains_key(&f.ifname)) {
            pruned = plan.without_links(&r.failed_links());
            &pruned
        } else {
            plan
        };
        sync_addresses(
            &self.host,
            &self.host_interface,
            &plan.host_addresses,
            Some(&format!("{}:egress", self.host_interface)),
            &mut r,
        )?;
        self.remove_secondaries_from_host(&plan.ns_addresses, &mut r)?;
        sync_addresses(&gw, GATEWAY_VETH_NS, &plan.ns_addresses, None, &mut r)?;
        let host_routes: Vec<NsRoute> = plan
            .host_routes
            .iter()
            .map(|ip| NsRoute {
                dst: Ipv4Net::from(*ip),
                via: None,
                dev: GATEWAY_VETH_HOST.into(),
            })
            .collect();
        sync_routes(&self.host, &host_routes, |dev| dev == GATEWAY_VETH_HOST, &mut r)?;
        sync_routes(
            &gw,
            &plan.ns_routes,
            |dev| dev == GATEWAY_VETH_NS || port_of_gateway_wg_interface(dev).is_some(),
            &mut r,
        )?;
        gw.nft(&plan.gateway_nft)?;
        self.host.nft(&plan.host_nft)?;
        Ok(r)
    }

    /// What the gateway namespace has now (nothing when it does not exist): the veth pair's state, `host0`'s
    /// addresses, the namespace's routes and its WireGuard links (`wg-<port>`), each with its state. A link whose
    /// device cannot be read is left out: it cannot carry traffic as planned. `Err` when the links, addresses or
    /// routes cannot be listed.
    pub fn observe(&self) -> Result<ObservedGateway, ApplyError> {
        let gw = self.gw();
        let mut found = ObservedGateway::default();
        if !gw.exists() {
            return Ok(found);
        }
        let links = gw.ip_json(&["link", "show"])?;
        let host_links = self.host.ip_json(&["link", "show"])?;
        found.veth_up = is_up(&links, GATEWAY_VETH_NS) && is_up(&host_links, GATEWAY_VETH_HOST);
        if found.veth_up {
            found.ns_addresses = addresses(&gw, GATEWAY_VETH_NS)?.into_keys().collect();
        }
        found.ns_routes = routes(&gw)?;
        for l in links.as_array().into_iter().flatten() {
            let Some(name) = l["ifname"]
                .as_str()
                .filter(|n| port_of_gateway_wg_interface(n).is_some())
            else {
                continue;
            };
            let control = l["ifalias"].as_str().unwrap_or(name).to_string();
            let handle = WgHandle {
                netns: gw.clone(),
                ifname: name.to_string(),
                control_name: control,
            };
            let Ok(device) = self.wg.device_stats(&handle) else {
                continue;
            };
            found.links.insert(
                name.to_string(),
                ObservedLink {
                    up: is_up(&links, name),
                    listen_port: device.listen_port,
                    public_key: device.public_key,
                    peers: device
                        .peers
                        .into_iter()
                        .map(|p| (p.peer.public_key, p.peer.allowed_ips))
                        .collect(),
                },
            );
        }
        Ok(found)
    }

    /// A secondary IP must live only in the gateway namespace (docs/dataplane.md, as upstream's daemon): if the node's
    /// network setup put it on the host interface, the host would answer for it and bypass the SNAT path.
    fn remove_secondaries_from_host(
        &self,
        secondaries: &BTreeSet<Ipv4Addr>,
        r: &mut ApplyReport,
    ) -> Result<(), ApplyError> {
        let v = self
            .host
            .ip_json(&["-4", "addr", "show", "dev", &self.host_interface])?;
        for a in v
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
        {
            let (Some(ip), Some(len)) = (
                a["local"].as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()),
                a["prefixlen"].as_u64(),
            ) else {
                continue;
            };
            if secondaries.contains(&ip) {
                let cidr = format!("{ip}/{len}");
                self.host
                    .ip(&["-4", "addr", "del", &cidr, "dev", &self.host_interface])?;
                r.changes
                    .push(format!("removed secondary {cidr} from {}", self.host_interface));
            }
        }
        Ok(())
    }

    fn ensure_namespace(&self, gw: &Netns, r: &mut ApplyReport) -> Result<(), ApplyError> {
        if !gw.exists() {
            Netns::Current.ip(&["netns", "add", &self.netns_name])?;
            r.changes.push(format!("created namespace {}", self.netns_name));
        }
        gw.ip(&["link", "set", "lo", "up"])?;
        // Written only when needed: in an unprivileged container /proc/sys is read-only and the chart's
        // init container has already enabled forwarding.
        for ns in [gw, &self.host] {
            let on = ns
                .run("sysctl", &["-n", "net.ipv4.ip_forward"])
                .is_ok_and(|v| v.trim() == "1");
            if !on {
                ns.sysctl("net/ipv4/ip_forward", "1")?;
                r.changes.push("enabled IPv4 forwarding".into());
            }
        }
        Ok(())
    }

    fn ensure_veth(&self, gw: &Netns, r: &mut ApplyReport) -> Result<(), ApplyError> {
        let host_has = self.host.link_exists(GATEWAY_VETH_HOST)?;
        let ns_has = gw.link_exists(GATEWAY_VETH_NS)?;
        if !(host_has && ns_has) {
            if host_has {
                self.host.ip(&["link", "del", GATEWAY_VETH_HOST])?;
            }
            if ns_has {
                gw.ip(&["link", "del", GATEWAY_VETH_NS])?;
            }
            self.host.ip(&[
                "link",
                "add",
                GATEWAY_VETH_HOST,
                "type",
                "veth",
                "peer",
                "name",
                GATEWAY_VETH_NS,
                "netns",
                &self.netns_name,
            ])?;
            r.changes
                .push(format!("created veth {GATEWAY_VETH_HOST}/{GATEWAY_VETH_NS}"));
        }
        self.host.ip(&["link", "set", GATEWAY_VETH_HOST, "up"])?;
        gw.ip(&["link", "set", GATEWAY_VETH_NS, "up"])?;
        Ok(())
    }

    /// Brings every link of `links` to its plan and deletes the links of no configuration. A link that fails is
    /// deleted and recorded in `r.failed`; the others go on. `Err` only when the links cannot be listed.
    fn sync_links(
        &self,
        gw: &Netns,
        links: &BTreeMap<String, LinkPlan>,
        r: &mut ApplyReport,
    ) -> Result<(), ApplyError> {
        let existing = wg_links(gw)?;
        for name in existing.iter().filter(|n| !links.contains_key(*n)) {
            match gw.ip(&["link", "del", name]) {
                Ok(_) => r.changes.push(format!("deleted {name}")),
                Err(e) => r.failed.push(LinkError {
                    configuration: String::new(),
                    ifname: name.clone(),
                    source: e.into(),
                    left_behind: None,
                }),
            }
        }
        for l in links.values() {
            let had = existing.contains(&l.ifname);
            if let Err(source) = self.sync_link(gw, l, had, r) {
                // Nothing half-built stays: a link not at its plan would carry traffic with a stale key, port or
                // peers. Its configuration is left out of this apply and retried with the next.
                let mut left_behind = None;
                if gw.link_exists(&l.ifname).unwrap_or(true) {
                    match gw.ip(&["link", "del", &l.ifname]) {
                        Ok(_) => r.changes.push(format!("removed {} (not applied)", l.ifname)),
                        Err(e) => left_behind = Some(e.to_string()),
                    }
                }
                // A creation that failed before the move leaves the new link in the host namespace.
                if !had && self.host.link_exists(&l.control_name).unwrap_or(false) {
                    match self.host.ip(&["link", "del", &l.control_name]) {
                        Ok(_) => r
                            .changes
                            .push(format!("removed {} (not applied)", l.control_name)),
                        Err(e) => left_behind = Some(format!("{}: {e}", l.control_name)),
                    }
                }
                r.failed.push(LinkError {
                    configuration: l.configuration.clone(),
                    ifname: l.ifname.clone(),
                    source,
                    left_behind,
                });
            }
        }
        Ok(())
    }

    /// Brings one link to its plan; `existing` when the link is already there.
    fn sync_link(
        &self,
        gw: &Netns,
        l: &LinkPlan,
        existing: bool,
        r: &mut ApplyReport,
    ) -> Result<(), ApplyError> {
        let handle = if existing {
            let control = link_alias(gw, &l.ifname)?.unwrap_or_else(|| l.control_name.clone());
            WgHandle {
                netns: gw.clone(),
                ifname: l.ifname.clone(),
                control_name: control,
            }
        } else {
            let h = self
                .wg
                .create_and_move(&self.host, &l.control_name, gw, &l.ifname)?;
            r.changes.push(format!("created {}", l.ifname));
            h
        };
        gw.ip(&[
            "-6",
            "addr",
            "replace",
            GATEWAY_WG_ADDRESS,
            "dev",
            &l.ifname,
            "nodad",
        ])?;
        let state = self.wg.device_stats(&handle)?;
        let mut change = DeviceChange::default();
        if state.public_key.as_deref() != Some(l.private_key.public_base64().as_str()) {
            change.private_key = Some(l.private_key.clone());
            r.changes.push(format!("{}: private key", l.ifname));
        }
        if state.listen_port != Some(l.port) {
            change.listen_port = Some(l.port);
            r.changes.push(format!("{}: listen port {}", l.ifname, l.port));
        }
        let current: BTreeMap<&str, &Vec<IpNet>> = state
            .peers
            .iter()
            .map(|p| (p.peer.public_key.as_str(), &p.peer.allowed_ips))
            .collect();
        for (key, ip) in &l.peers {
            let want = vec![IpNet::V4(*ip)];
            if current.get(key.as_str()).map(|v| **v != want).unwrap_or(true) {
                change.upsert_peers.push(PeerSpec {
                    public_key: key.clone(),
                    endpoint: None,
                    allowed_ips: want,
                });
            }
        }
        for key in current.keys().filter(|k| !l.peers.contains_key(**k)) {
            change.remove_peers.push((*key).to_string());
        }
        if !change.upsert_peers.is_empty() || !change.remove_peers.is_empty() {
            r.changes.push(format!(
                "{}: +{} -{} peers",
                l.ifname,
                change.upsert_peers.len(),
                change.remove_peers.len()
            ));
        }
        self.wg.apply(&handle, &change)?;
        gw.ip(&["link", "set", &l.ifname, "up"])?;
        Ok(())
    }
}

fn wg_links(ns: &Netns) -> Result<BTreeSet<String>, CmdError> {
    Ok(ns
        .ip_json(&["link", "show"])?
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["ifname"].as_str())
                .filter(|n| port_of_gateway_wg_interface(n).is_some())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default())
}

/// The IPv4 addresses on `dev`, each with its prefix length and label.
fn addresses(ns: &Netns, dev: &str) -> Result<BTreeMap<Ipv4Addr, (u8, Option<String>)>, CmdError> {
    let v = ns.ip_json(&["-4", "addr", "show", "dev", dev])?;
    let mut have = BTreeMap::new();
    for a in v
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
    {
        if let (Some(ip), Some(len)) = (
            a["local"].as_str().and_then(|s| s.parse().ok()),
            a["prefixlen"].as_u64(),
        ) {
            have.insert(ip, (len as u8, a["label"].as_str().map(str::to_string)));
        }
    }
    Ok(have)
}

/// Whether `ip -j link show`'s `links` has `name`, administratively up.
fn is_up(links: &Value, name: &str) -> bool {
    links.as_array().into_iter().flatten().any(|l| {
        l["ifname"].as_str() == Some(name)
            && l["flags"].as_array().is_some_and(|f| f.iter().any(|f| f == "UP"))
    })
}

fn sync_addresses(
    ns: &Netns,
    dev: &str,
    want: &BTreeSet<Ipv4Addr>,
    label: Option<&str>,
    r: &mut ApplyReport,
) -> Result<(), ApplyError> {
    let have = addresses(ns, dev)?;
    for ip in want {
        if have.get(ip).map(|(l, _)| *l) != Some(32) {
            let cidr = format!("{ip}/32");
            let mut args = vec!["-4", "addr", "replace", cidr.as_str(), "dev", dev];
            if let Some(l) = label {
                args.extend(["label", l]);
            }
            ns.ip(&args)?;
            r.changes.push(format!("address {cidr} on {dev}"));
        }
    }
    // Remove only what we own: on host0 everything, on the host interface only our labelled /32s.
    for (ip, (len, l)) in &have {
        let ours = match label {
            None => true,
            Some(want_label) => l.as_deref() == Some(want_label),
        };
        if ours && !want.contains(ip) {
            ns.ip(&["-4", "addr", "del", &format!("{ip}/{len}"), "dev", dev])?;
            r.changes.push(format!("removed address {ip}/{len} from {dev}"));
        }
    }
    Ok(())
}

fn route_key(v: &Value) -> Option<NsRoute> {
    let dst = v["dst"].as_str()?;
    let dst: Ipv4Net = if dst == "default" {
        Ipv4Net::default()
    } else if dst.contains('/') {
        dst.parse().ok()?
    } else {
        Ipv4Net::from(dst.parse::<Ipv4Addr>().ok()?)
    };
    Some(NsRoute {
        dst,
        via: v["gateway"].as_str().and_then(|g| g.parse().ok()),
        dev: v["dev"].as_str()?.to_string(),
    })
}

/// The IPv4 routes of `ns`'s main table, but the kernel's own.
fn routes(ns: &Netns) -> Result<BTreeSet<NsRoute>, CmdError> {
    Ok(ns
        .ip_json(&["-4", "route", "show", "table", "main"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["protocol"].as_str() != Some("kernel"))
        .filter_map(route_key)
        .collect())
}

fn sync_routes(
    ns: &Netns,
    want: &[NsRoute],
    owned_dev: impl Fn(&str) -> bool,
    r: &mut ApplyReport,
) -> Result<(), ApplyError> {
    let have = routes(ns)?;
    let want_set: BTreeSet<&NsRoute> = want.iter().collect();
    // One `ip -batch` per direction instead of one process per route: 1000 peers are 1000 routes.
    let adds: Vec<&NsRoute> = want.iter().filter(|w| !have.contains(w)).collect();
    if !adds.is_empty() {
        let script: String = adds
            .iter()
            .map(|w| format!("route replace {}\n", w.ip_args().join(" ")))
            .collect();
        ns.run_with_stdin("ip", &["-4", "-batch", "-"], Some(&script))?;
        r.changes
            .extend(adds.iter().map(|w| format!("route {}", w.ip_args().join(" "))));
    }
    let stale: Vec<&NsRoute> = have
        .iter()
        .filter(|h| owned_dev(&h.dev) && !want_set.contains(h))
        .collect();
    if !stale.is_empty() {
        // Deleting by destination and device removes exactly the stale route. `-force` goes on past a
        // route that vanished meanwhile (its link was deleted); the next apply re-checks anyway.
        let script: String = stale
            .iter()
            .map(|h| format!("route del {} dev {}\n", h.dst, h.dev))
            .collect();
        let _ = ns.run_with_stdin("ip", &["-4", "-force", "-batch", "-"], Some(&script));
        r.changes.extend(
            stale
                .iter()
                .map(|h| format!("removed route {} dev {}", h.dst, h.dev)),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_error_says_when_the_half_built_link_is_still_there() {
        let err = |left_behind: Option<&str>| {
            LinkError {
                configuration: "app/egress".into(),
                ifname: "wg-6000".into(),
                source: ApplyError::Wg(WgError::Control {
                    op: "configure",
                    link: "wg-6000".into(),
                    msg: "Address already in use".into(),
                }),
                left_behind: left_behind.map(str::to_string),
            }
            .to_string()
        };
        let removed = err(None);
        assert!(
            removed.starts_with("configuration app/egress: link wg-6000: "),
            "{removed}"
        );
        assert!(!removed.contains("could not be removed"), "{removed}");
        let stuck = err(Some("Device or resource busy"));
        assert!(
            stuck.ends_with(" (and the link could not be removed: Device or resource busy)"),
            "{stuck}"
        );
    }
}
