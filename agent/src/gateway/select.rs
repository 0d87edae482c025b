//! From cluster objects to the gateway plan's input (pure).
//!
//! Which configurations apply to this node, their private keys, this node's secondary IP for each
//! (`status.gatewayVMProfiles`), and their peers (PodEndpoints). Anything not usable yet is skipped with a
//! reason instead of failing the whole node: one broken configuration must not stop the others.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use api::internal::{GatewayConfigurationStatus, GatewayStatusSpec, PeerConfigurationStatus};
use api::names::{TAG_AKS_NIC_NAME, TAG_AKS_POOL_NAME, gateway_wg_interface};
use api::{PodEndpoint, StaticGatewayConfiguration};
use dataplane::wg::PrivateKey;
use ipnet::Ipv4Net;

use super::plan::{ConfigInput, GatewayInput, GatewayPlan, PeerInput};
use crate::error::NodeIpsError;
use crate::imds::NodeIdentity;
use crate::object::NamespacedName;

/// Secrets by identity: the value of their `PrivateKey` entry (base64 key text).
pub type KeySecrets = BTreeMap<NamespacedName, String>;

/// The input built from cluster objects, and why some objects were left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Input of [`super::plan::gateway_plan`].
    pub input: GatewayInput,
    /// Configurations or PodEndpoints left out, with the reason (logged and counted, not fatal).
    pub skipped: Vec<Skipped>,
}

/// A configuration, or a PodEndpoint of one, this gateway node cannot serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `<namespace>/<name>` of the configuration (of the PodEndpoint's configuration for a PodEndpoint).
    pub configuration: String,
    /// A short fixed label: `not_ready`, `missing_uid`, `invalid_port`, `invalid_frontend_ip`,
    /// `key_secret_missing`, `key_secret_invalid`, `node_not_listed`, `invalid_ip`, `invalid_pod_ip` or
    /// `invalid_pod_public_key`.
    pub reason: &'static str,
    /// What is wrong, naming the object and field (never a key).
    pub message: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Static settings of the gateway node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// Identity from IMDS.
    pub identity: NodeIdentity,
    /// Gateway namespace name.
    pub netns_name: String,
}

/// Whether `sgc` runs on this node's pool: the node pool name matches the `aks-managed-poolName` tag, or the
/// VMSS name and resource group match (case-insensitively, as Azure names are).
pub fn applies_to_node(sgc: &StaticGatewayConfiguration, node: &NodeIdentity) -> bool {
    if let Some(pool) = sgc.spec.nodepool_name() {
        return node
            .tags
            .get(TAG_AKS_POOL_NAME)
            .is_some_and(|t| t.eq_ignore_ascii_case(pool));
    }
    match sgc.spec.vmss_profile() {
        Some(p) => {
            !node.vmss_name.is_empty()
                && p.vmss_name.eq_ignore_ascii_case(&node.vmss_name)
                && p.vmss_resource_group.eq_ignore_ascii_case(&node.resource_group)
        }
        None => false,
    }
}

/// This node's `(primary, secondary)` IPs for `sgc`: the `gatewayVMProfiles` entry named after the computer
/// name or, for VM pools, the NIC name tag.
pub fn node_ips(
    sgc: &StaticGatewayConfiguration,
    node: &NodeIdentity,
) -> Result<(Ipv4Addr, Ipv4Addr), NodeIpsError> {
    let nic = node.tags.get(TAG_AKS_NIC_NAME);
    let profiles = sgc
        .status
        .as_ref()
        .map(|s| s.gateway_vm_profiles.as_slice())
        .unwrap_or_default();
    let p = profiles
        .iter()
        .find(|p| {
            p.node_name.eq_ignore_ascii_case(&node.computer_name)
                || nic.is_some_and(|n| p.node_name.eq_ignore_ascii_case(n))
        })
        .ok_or_else(|| NodeIpsError::NotListed {
            node: node.computer_name.clone(),
        })?;
    let parse = |field: &'static str, value: &str| {
        value.parse().map_err(|_| NodeIpsError::NotIpv4 {
            node: p.node_name.clone(),
            field,
            value: value.to_string(),
        })
    };
    Ok((
        parse("primaryIP", &p.primary_ip)?,
        parse("secondaryIP", &p.secondary_ip)?,
    ))
}

fn skip(skipped: &mut Vec<Skipped>, configuration: &NamespacedName, reason: &'static str, message: String) {
    skipped.push(Skipped {
        configuration: configuration.to_string(),
        reason,
        message,
    });
}

/// Builds the plan input.
pub fn select(
    settings: &NodeSettings,
    sgcs: &[StaticGatewayConfiguration],
    secrets: &KeySecrets,
    pod_endpoints: &[PodEndpoint],
) -> Selection {
    let node = &settings.identity;
    let mut skipped = Vec::new();
    let mut configs = Vec::new();
    let mut frontends = BTreeSet::new();
    let mut primary = node.primary_ip;
    let mut sorted: Vec<&StaticGatewayConfiguration> = sgcs.iter().collect();
    sorted.sort_by_key(|s| NamespacedName::of(&s.metadata));
    for sgc in sorted {
        let id = NamespacedName::of(&sgc.metadata);
        if sgc.metadata.deletion_timestamp.is_some() || !applies_to_node(sgc, node) {
            continue;
        }
        let Some(status) = sgc.status.as_ref().filter(|s| s.is_ready_for_pods()) else {
            skip(
                &mut skipped,
                &id,
                "not_ready",
                format!("StaticGatewayConfiguration {id}: not ready yet"),
            );
            continue;
        };
        let Some(profile) = status.gateway_server_profile.as_ref() else {
            continue;
        };
        let Some(uid) = sgc.metadata.uid.clone() else {
            skip(
                &mut skipped,
                &id,
                "missing_uid",
                format!("StaticGatewayConfiguration {id}: metadata.uid is empty"),
            );
            continue;
        };
        let Ok(port) = u16::try_from(profile.port) else {
            skip(
                &mut skipped,
                &id,
                "invalid_port",
                format!(
                    "StaticGatewayConfiguration {id}: status.gatewayServerProfile.port {} is not a port",
                    profile.port
                ),
            );
            continue;
        };
        let frontend: Ipv4Addr = match profile.ip.parse() {
            Ok(ip) => ip,
            Err(_) => {
                skip(
                    &mut skipped,
                    &id,
                    "invalid_frontend_ip",
                    format!(
                        "StaticGatewayConfiguration {id}: status.gatewayServerProfile.ip {:?} is not an IPv4 address",
                        profile.ip
                    ),
                );
                continue;
            }
        };
        let secret_key = profile.private_key_secret_ref.as_ref().map(|r| {
            NamespacedName::new(
                r.namespace.clone().unwrap_or_else(|| id.namespace.clone()),
                r.name.clone().unwrap_or_default(),
            )
        });
        let private_key = match secret_key.as_ref().and_then(|k| secrets.get(k)) {
            Some(text) => match PrivateKey::from_base64(text.trim()) {
                Ok(k) => k,
                Err(_) => {
                    let secret = secret_key.unwrap_or_default();
                    skip(
                        &mut skipped,
                        &id,
                        "key_secret_invalid",
                        format!(
                            "StaticGatewayConfiguration {id}: Secret {secret} key PrivateKey is not a base64 WireGuard key"
                        ),
                    );
                    continue;
                }
            },
            None => {
                let secret = secret_key.unwrap_or_default();
                skip(
                    &mut skipped,
                    &id,
                    "key_secret_missing",
                    format!(
                        "StaticGatewayConfiguration {id}: private key Secret {secret} (key PrivateKey) not found"
                    ),
                );
                continue;
            }
        };
        let (node_primary, secondary) = match node_ips(sgc, node) {
            Ok(ips) => ips,
            Err(e) => {
                skip(
                    &mut skipped,
                    &id,
                    e.reason(),
                    format!("StaticGatewayConfiguration {id}: {e}"),
                );
                continue;
            }
        };
        primary = primary.or(Some(node_primary));
        let mut peers = Vec::new();
        for pe in pod_endpoints.iter().filter(|pe| {
            pe.metadata.namespace.as_deref() == Some(id.namespace.as_str())
                && pe.spec.static_gateway_configuration == id.name
                && pe.metadata.deletion_timestamp.is_none()
        }) {
            let pe_id = NamespacedName::of(&pe.metadata);
            let ip = match pe.spec.pod_ip_address.parse::<Ipv4Net>() {
                Ok(n) if n.prefix_len() == 32 => n.addr(),
                _ => match pe.spec.pod_ip_address.parse::<Ipv4Addr>() {
                    Ok(a) => a,
                    Err(_) => {
                        skip(
                            &mut skipped,
                            &id,
                            "invalid_pod_ip",
                            format!(
                                "PodEndpoint {pe_id}: spec.podIpAddress {:?} is not an IPv4 /32",
                                pe.spec.pod_ip_address
                            ),
                        );
                        continue;
                    }
                },
            };
            if wireguard_control::Key::from_base64(&pe.spec.pod_public_key).is_err() {
                skip(
                    &mut skipped,
                    &id,
                    "invalid_pod_public_key",
                    format!("PodEndpoint {pe_id}: spec.podPublicKey is not a base64 WireGuard key"),
                );
                continue;
            }
            peers.push(PeerInput {
                pod_endpoint: pe_id.to_string(),
                public_key: pe.spec.pod_public_key.clone(),
                pod_ip: ip,
                created: pe.metadata.creation_timestamp.as_ref().map(|t| t.0),
            });
        }
        frontends.insert(frontend);
        configs.push(ConfigInput {
            uid,
            sgc: id.to_string(),
            port,
            private_key,
            secondary_ip: secondary,
            peers,
        });
    }
    Selection {
        input: GatewayInput {
            netns_name: settings.netns_name.clone(),
            primary_ip: primary.unwrap_or(Ipv4Addr::UNSPECIFIED),
            frontend_ips: frontends.into_iter().collect(),
            configs,
        },
        skipped,
    }
}

/// The GatewayStatus spec for what `plan` applied: only current entries, so the object stays small.
pub fn gateway_status(input: &GatewayInput, plan: &GatewayPlan) -> GatewayStatusSpec {
    let mut spec = GatewayStatusSpec::default();
    for c in &input.configs {
        let ifname = gateway_wg_interface(c.port);
        let Some(link) = plan.links.get(&ifname).filter(|l| l.uid == c.uid) else {
            continue;
        };
        spec.ready_gateway_configurations
            .push(GatewayConfigurationStatus {
                static_gateway_configuration: c.sgc.clone(),
                interface_name: ifname.clone(),
            });
        for p in &c.peers {
            if link.peers.get(&p.public_key) == Some(&Ipv4Net::from(p.pod_ip)) {
                spec.ready_peer_configurations.push(PeerConfigurationStatus {
                    pod_endpoint: p.pod_endpoint.clone(),
                    interface_name: ifname.clone(),
                    public_key: p.public_key.clone(),
                });
            }
        }
    }
    spec
}

/// UIDs of the configurations the plan makes active (the probe answers 200 for these).
pub fn active_uids(plan: &GatewayPlan) -> Vec<String> {
    plan.links.values().map(|l| l.uid.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::sgc::{
        GatewayServerProfile, GatewayVmProfile, GatewayVmssProfile, StaticGatewayConfigurationSpec,
        StaticGatewayConfigurationStatus,
    };
    use k8s_openapi::api::core::v1::ObjectReference;

    fn pubkey() -> String {
        wireguard_control::Key::generate_private()
            .get_public()
            .to_base64()
    }

    fn node() -> NodeIdentity {
        NodeIdentity {
            computer_name: "gw-vmss000001".into(),
            vmss_name: "gw-vmss".into(),
            resource_group: "MC_RG".into(),
            tags: BTreeMap::from([
                (TAG_AKS_POOL_NAME.to_string(), "GwPool".to_string()),
                (TAG_AKS_NIC_NAME.to_string(), "nic-7".to_string()),
            ]),
            primary_ip: None,
        }
    }

    fn settings() -> NodeSettings {
        NodeSettings {
            identity: node(),
            netns_name: "ns-static-egress-gateway".into(),
        }
    }

    fn sgc(
        name: &str,
        pool: Option<&str>,
        port: i32,
        node_name: &str,
        secondary: &str,
    ) -> StaticGatewayConfiguration {
        let mut s = StaticGatewayConfiguration::new(
            name,
            StaticGatewayConfigurationSpec {
                gateway_nodepool_name: pool.map(str::to_string),
                gateway_vmss_profile: pool.is_none().then(|| GatewayVmssProfile {
                    vmss_resource_group: "mc_rg".into(),
                    vmss_name: "GW-VMSS".into(),
                    public_ip_prefix_size: 31,
                }),
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("app".into());
        s.metadata.uid = Some(format!("uid-{name}"));
        s.status = Some(StaticGatewayConfigurationStatus {
            egress_ip_prefix: Some("20.0.0.0/31".into()),
            gateway_server_profile: Some(GatewayServerProfile {
                ip: "10.0.0.100".into(),
                port,
                public_key: pubkey(),
                private_key_secret_ref: Some(ObjectReference {
                    namespace: Some("kube-egress-gateway-system".into()),
                    name: Some(format!("sgw-uid-{name}")),
                    ..Default::default()
                }),
            }),
            gateway_vm_profiles: vec![
                GatewayVmProfile {
                    node_name: "other".into(),
                    primary_ip: "10.0.0.9".into(),
                    secondary_ip: "10.0.0.19".into(),
                },
                GatewayVmProfile {
                    node_name: node_name.into(),
                    primary_ip: "10.0.0.4".into(),
                    secondary_ip: secondary.into(),
                },
            ],
            ..Default::default()
        });
        s
    }

    fn secrets(names: &[&str]) -> KeySecrets {
        names
            .iter()
            .map(|n| {
                (
                    NamespacedName::new("kube-egress-gateway-system", format!("sgw-uid-{n}")),
                    PrivateKey::generate().0.to_base64(),
                )
            })
            .collect()
    }

    fn pe(name: &str, sgc: &str, ip: &str, key: &str) -> PodEndpoint {
        let mut p = PodEndpoint::new(
            name,
            api::PodEndpointSpec {
                static_gateway_configuration: sgc.into(),
                pod_ip_address: ip.into(),
                pod_public_key: key.into(),
            },
        );
        p.metadata.namespace = Some("app".into());
        p
    }

    #[test]
    fn selects_by_pool_tag_or_vmss_case_insensitively() {
        let n = node();
        assert!(applies_to_node(
            &sgc("a", Some("gwpool"), 6000, "x", "1.1.1.1"),
            &n
        ));
        assert!(!applies_to_node(
            &sgc("a", Some("other"), 6000, "x", "1.1.1.1"),
            &n
        ));
        assert!(applies_to_node(&sgc("a", None, 6000, "x", "1.1.1.1"), &n));
        let mut other_rg = node();
        other_rg.resource_group = "elsewhere".into();
        assert!(!applies_to_node(&sgc("a", None, 6000, "x", "1.1.1.1"), &other_rg));
        let mut no_tag = node();
        no_tag.tags.clear();
        assert!(!applies_to_node(
            &sgc("a", Some("gwpool"), 6000, "x", "1.1.1.1"),
            &no_tag
        ));
    }

    #[test]
    fn secondary_ip_by_computer_name_or_nic_tag() {
        let n = node();
        let by_name = sgc("a", Some("gwpool"), 6000, "GW-VMSS000001", "10.0.0.6");
        assert_eq!(
            node_ips(&by_name, &n),
            Ok((Ipv4Addr::new(10, 0, 0, 4), Ipv4Addr::new(10, 0, 0, 6)))
        );
        let by_nic = sgc("a", Some("gwpool"), 6000, "nic-7", "10.0.0.8");
        assert_eq!(node_ips(&by_nic, &n).map(|x| x.1), Ok(Ipv4Addr::new(10, 0, 0, 8)));
        let missing = sgc("a", Some("gwpool"), 6000, "someone-else", "10.0.0.8");
        let not_listed = node_ips(&missing, &n).expect_err("not listed");
        assert_eq!(
            not_listed.to_string(),
            "failed to find primary or secondary IP for node gw-vmss000001"
        );
        assert_eq!(not_listed.reason(), "node_not_listed");
        let bad = sgc("a", Some("gwpool"), 6000, "nic-7", "nope");
        let bad = node_ips(&bad, &n).expect_err("bad ip");
        assert_eq!(
            bad.to_string(),
            "gatewayVMProfiles[nic-7].secondaryIP: \"nope\" is not an IPv4 address"
        );
        assert_eq!(bad.reason(), "invalid_ip");
    }

    #[test]
    fn builds_configs_with_their_own_peers_and_skips_with_reasons() {
        let (k1, k2, k3) = (pubkey(), pubkey(), pubkey());
        let sgcs = vec![
            sgc("one", Some("gwpool"), 6000, "gw-vmss000001", "10.0.0.6"),
            sgc("two", None, 6001, "gw-vmss000001", "10.0.0.7"),
            sgc("nokey", Some("gwpool"), 6002, "gw-vmss000001", "10.0.0.8"),
            sgc("elsewhere", Some("otherpool"), 6003, "gw-vmss000001", "10.0.0.9"),
        ];
        let mut unready = sgc("unready", Some("gwpool"), 6004, "gw-vmss000001", "10.0.0.10");
        if let Some(s) = unready.status.as_mut() {
            s.egress_ip_prefix = None;
        }
        let mut all = sgcs.clone();
        all.push(unready);
        let mut p1 = pe("p1", "one", "10.244.0.5/32", &k1);
        let created: k8s_openapi::jiff::Timestamp = "2026-12-07T10:00:00Z".parse().expect("timestamp");
        p1.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created));
        let pes = vec![
            p1,
            pe("p2", "two", "10.244.0.6", &k2),
            pe("p3", "one", "10.244.0.0/24", &k3),
            pe("p4", "one", "10.244.0.8/32", "not-a-key"),
        ];
        let sel = select(&settings(), &all, &secrets(&["one", "two"]), &pes);
        let names: Vec<&str> = sel.input.configs.iter().map(|c| c.sgc.as_str()).collect();
        assert_eq!(names, vec!["app/one", "app/two"]);
        assert_eq!(sel.input.primary_ip, Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(sel.input.frontend_ips, vec![Ipv4Addr::new(10, 0, 0, 100)]);
        let one = &sel.input.configs[0];
        assert_eq!(one.secondary_ip, Ipv4Addr::new(10, 0, 0, 6));
        assert_eq!(one.peers.len(), 1);
        assert_eq!(one.peers[0].public_key, k1);
        assert_eq!(
            one.peers[0].created,
            Some(created),
            "the newest claim of a pod IP wins"
        );
        assert_eq!(sel.input.configs[1].peers[0].pod_ip, Ipv4Addr::new(10, 244, 0, 6));
        let joined = sel
            .skipped
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        let reasons: Vec<(&str, &str)> = sel
            .skipped
            .iter()
            .map(|s| (s.configuration.as_str(), s.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("app/nokey", "key_secret_missing"),
                ("app/one", "invalid_pod_ip"),
                ("app/one", "invalid_pod_public_key"),
                ("app/unready", "not_ready"),
            ]
        );
        assert!(
            joined.contains("app/nokey: private key Secret kube-egress-gateway-system/sgw-uid-nokey"),
            "{joined}"
        );
        assert!(joined.contains("app/unready: not ready yet"), "{joined}");
        assert!(
            joined.contains("PodEndpoint app/p3: spec.podIpAddress"),
            "{joined}"
        );
        assert!(
            joined.contains("PodEndpoint app/p4: spec.podPublicKey"),
            "{joined}"
        );
        assert!(!joined.contains("elsewhere"), "{joined}");
        // the private key never shows up in the reasons
        for k in secrets(&["one"]).values() {
            assert!(!joined.contains(k.as_str()));
        }
    }

    #[test]
    fn status_lists_only_what_the_plan_applied() {
        let k1 = pubkey();
        let sgcs = vec![sgc("one", Some("gwpool"), 6000, "gw-vmss000001", "10.0.0.6")];
        let pes = vec![pe("p1", "one", "10.244.0.5/32", &k1)];
        let sel = select(&settings(), &sgcs, &secrets(&["one"]), &pes);
        let plan = super::super::plan::gateway_plan(&sel.input);
        let st = gateway_status(&sel.input, &plan);
        assert_eq!(st.ready_gateway_configurations.len(), 1);
        assert_eq!(st.ready_gateway_configurations[0].interface_name, "wg-6000");
        assert_eq!(st.ready_peer_configurations.len(), 1);
        assert_eq!(st.ready_peer_configurations[0].pod_endpoint, "app/p1");
        assert_eq!(active_uids(&plan), vec!["uid-one".to_string()]);
        let none = select(&settings(), &sgcs, &secrets(&["one"]), &[]);
        let st = gateway_status(&none.input, &super::super::plan::gateway_plan(&none.input));
        assert!(st.ready_peer_configurations.is_empty());
    }
}
