//! Node mode: running pods follow a rotation of their gateway's key.
//!
//! Deleting a configuration's key Secret `sgw-<uid>` makes the operator generate a new key pair and publish the
//! public key in the configuration's `status.gatewayServerProfile.publicKey` (docs/operator.md); the gateways
//! take the new private key. A running pod still has the old public key as its `wg0` peer (the CNI plugin
//! set it at ADD), so its handshakes fail and its egress stops. The node agent's pod tunnel watch compares
//! each pod device's gateway peer with the current key and replaces the peer, keeping its endpoint and
//! allowed IPs ([`rekey`]). The configuration of a peer is found by the peer's endpoint: the load-balancer
//! frontend IP and port the configuration's profile names (a pod's peer keeps that endpoint: the gateways
//! answer from the frontend, docs/dataplane.md).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use api::sgc::StaticGatewayConfiguration;
use dataplane::wg::{DeviceChange, PeerSpec};

/// The current gateway public key of each configuration, by its WireGuard endpoint (frontend IP, port).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayKeys {
    by_endpoint: BTreeMap<SocketAddr, String>,
}

impl GatewayKeys {
    /// The keys the configurations' statuses publish. An endpoint two configurations publish different keys
    /// for is left out (never guess which gateway a pod talks to); so is a profile that is not a valid
    /// endpoint and key.
    pub fn of(sgcs: &[StaticGatewayConfiguration]) -> Self {
        let mut by_endpoint: BTreeMap<SocketAddr, String> = BTreeMap::new();
        let mut ambiguous = Vec::new();
        for sgc in sgcs {
            let Some(p) = sgc
                .status
                .as_ref()
                .and_then(|s| s.gateway_server_profile.as_ref())
            else {
                continue;
            };
            let (Ok(ip), Ok(port)) = (p.ip.parse::<IpAddr>(), u16::try_from(p.port)) else {
                continue;
            };
            if wireguard_control::Key::from_base64(&p.public_key).is_err() {
                continue;
            }
            let ep = SocketAddr::new(ip, port);
            match by_endpoint.get(&ep) {
                Some(k) if *k != p.public_key => ambiguous.push(ep),
                _ => {
                    by_endpoint.insert(ep, p.public_key.clone());
                }
            }
        }
        for ep in ambiguous {
            by_endpoint.remove(&ep);
        }
        GatewayKeys { by_endpoint }
    }

    /// The current key of the configuration whose WireGuard endpoint is `endpoint`, if known.
    pub fn get(&self, endpoint: &SocketAddr) -> Option<&str> {
        self.by_endpoint.get(endpoint).map(String::as_str)
    }

    /// Whether no key is known (nothing to compare with).
    pub fn is_empty(&self) -> bool {
        self.by_endpoint.is_empty()
    }
}

/// One gateway peer of a pod device to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The peer's key now (the gateway's old key).
    pub old_key: String,
    /// The peer to put in its place: the current key, the same endpoint and allowed IPs.
    pub peer: PeerSpec,
}

/// The peers of a pod device to replace: each whose endpoint is a configuration's and whose key is not that
/// configuration's current one. Empty when every peer is current (or its configuration unknown).
pub fn rekey(peers: &[PeerSpec], keys: &GatewayKeys) -> Vec<Replacement> {
    peers
        .iter()
        .filter_map(|p| {
            let current = keys.by_endpoint.get(&p.endpoint?)?;
            (*current != p.public_key && !peers.iter().any(|q| q.public_key == *current)).then(|| {
                Replacement {
                    old_key: p.public_key.clone(),
                    peer: PeerSpec {
                        public_key: current.clone(),
                        endpoint: p.endpoint,
                        allowed_ips: p.allowed_ips.clone(),
                    },
                }
            })
        })
        .collect()
}

/// The device change making `replacements` (one update: the new peer takes over the allowed IPs, the old
/// one goes).
pub fn change(replacements: &[Replacement]) -> DeviceChange {
    DeviceChange {
        upsert_peers: replacements.iter().map(|r| r.peer.clone()).collect(),
        remove_peers: replacements.iter().map(|r| r.old_key.clone()).collect(),
        ..DeviceChange::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::sgc::{GatewayServerProfile, StaticGatewayConfigurationSpec, StaticGatewayConfigurationStatus};

    fn key() -> String {
        wireguard_control::Key::generate_private()
            .get_public()
            .to_base64()
    }

    fn sgc(name: &str, ip: &str, port: i32, public_key: &str) -> StaticGatewayConfiguration {
        let mut s = StaticGatewayConfiguration::new(name, StaticGatewayConfigurationSpec::default());
        s.status = Some(StaticGatewayConfigurationStatus {
            gateway_server_profile: Some(GatewayServerProfile {
                ip: ip.into(),
                port,
                public_key: public_key.into(),
                private_key_secret_ref: None,
            }),
            ..Default::default()
        });
        s
    }

    fn pod_peer(public_key: &str, endpoint: &str) -> PeerSpec {
        PeerSpec {
            public_key: public_key.into(),
            endpoint: Some(endpoint.parse().expect("endpoint")),
            allowed_ips: vec!["0.0.0.0/0".parse().expect("net"), "::/0".parse().expect("net")],
        }
    }

    #[test]
    fn a_pod_with_the_old_key_gets_the_current_one_with_the_same_endpoint_and_allowed_ips() {
        let (old, new) = (key(), key());
        let keys = GatewayKeys::of(&[sgc("gw", "10.0.0.100", 6000, &new)]);
        let r = rekey(&[pod_peer(&old, "10.0.0.100:6000")], &keys);
        assert_eq!(
            r,
            vec![Replacement {
                old_key: old.clone(),
                peer: pod_peer(&new, "10.0.0.100:6000")
            }]
        );
        let c = change(&r);
        assert_eq!(c.remove_peers, vec![old.clone()]);
        assert_eq!(c.upsert_peers, vec![pod_peer(&new, "10.0.0.100:6000")]);
        assert!(c.private_key.is_none() && c.listen_port.is_none());
        assert_eq!(
            rekey(&[pod_peer(&new, "10.0.0.100:6000")], &keys),
            vec![],
            "current"
        );
        assert_eq!(
            rekey(&[pod_peer(&old, "10.0.0.100:6001")], &keys),
            vec![],
            "another configuration's endpoint, unknown here"
        );
    }

    #[test]
    fn ambiguous_or_invalid_profiles_are_never_used() {
        let (a, b, old) = (key(), key(), key());
        let keys = GatewayKeys::of(&[
            sgc("one", "10.0.0.100", 6000, &a),
            sgc("two", "10.0.0.100", 6000, &b),
            sgc("bad-key", "10.0.0.100", 6001, "not-a-key"),
            sgc("bad-ip", "nope", 6002, &a),
            sgc("bad-port", "10.0.0.100", 70000, &a),
        ]);
        assert!(keys.is_empty(), "{keys:?}");
        assert_eq!(rekey(&[pod_peer(&old, "10.0.0.100:6000")], &keys), vec![]);
        let same = GatewayKeys::of(&[
            sgc("one", "10.0.0.100", 6000, &a),
            sgc("one-again", "10.0.0.100", 6000, &a),
        ]);
        assert_eq!(rekey(&[pod_peer(&old, "10.0.0.100:6000")], &same).len(), 1);
    }
}
