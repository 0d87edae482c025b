//! Data-plane behaviour on real namespaces (root): azureNetworking mode, ingress to annotated pods, two
//! configurations on one gateway, zero loss across an agent restart, and probe-driven failover.
//! Topology and cleanup: see `netlab`.

mod netlab;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agent::gateway::plan::gateway_plan;
use agent::gateway::probe::{self, ProbeState};
use api::sgc::RouteType;
use netlab::{
    FRONTEND, GatewayNode, INET, INET2, Lab, LabConfig, NodeApplier, in_netns, probe_status, wait_until,
};

const SECONDARY_1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 6);
const SECONDARY_2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 7);

fn is_pod_ip(ip: Option<Ipv4Addr>) -> bool {
    ip.is_some_and(|i| i.octets()[..3] == [10, 244, 0])
}

#[test]
fn azure_networking_routes_only_listed_cidrs_through_the_gateway() {
    let mut lab = Lab::new();
    let gw = lab.add_gateway();
    lab.route(&format!("{FRONTEND}/32"), gw.ip);
    lab.route(&format!("{SECONDARY_1}/32"), gw.ip);
    let cfg = lab.add_config("az", 6000, RouteType::AzureNetworking, &["203.0.113.0/24"]);
    lab.add_pod("pa", Some("az"));
    let plan = gateway_plan(&lab.gateway_input(&gw, &[(&cfg, SECONDARY_1)]));
    gw.applier().apply(&plan).expect("gateway apply");
    assert_eq!(
        lab.source_seen("pa", INET),
        Some(SECONDARY_1),
        "listed CIDR goes through the gateway"
    );
    let other = lab.source_seen("pa", INET2);
    assert!(
        is_pod_ip(other),
        "unlisted CIDR keeps the pod's own path, saw {other:?}"
    );
}

#[test]
fn ingress_to_an_annotated_pod_still_works() {
    let mut lab = Lab::new();
    let gw = lab.add_gateway();
    lab.route(&format!("{FRONTEND}/32"), gw.ip);
    lab.route(&format!("{SECONDARY_1}/32"), gw.ip);
    let cfg = lab.add_config("gw1", 6000, RouteType::StaticEgressGateway, &[]);
    let pa = lab.add_pod("pa", Some("gw1"));
    lab.add_pod("pp", None);
    let plan = gateway_plan(&lab.gateway_input(&gw, &[(&cfg, SECONDARY_1)]));
    gw.applier().apply(&plan).expect("gateway apply");
    // The annotated pod serves; a plain pod on the same node and a host on the internet connect to it.
    lab.echo("pa", SocketAddr::from((pa, 8080)));
    let to = format!("{pa}:8080");
    let from_plain = lab.source_seen("pp", &to);
    assert!(
        is_pod_ip(from_plain),
        "plain pod gets a reply, saw {from_plain:?}"
    );
    assert_eq!(
        lab.source_seen("inet", &to),
        Some(Ipv4Addr::new(203, 0, 113, 10)),
        "an outside client gets a reply (reply leaves via eth0, not the tunnel)"
    );
    // Egress of the same pod still goes through the gateway.
    assert_eq!(lab.source_seen("pa", INET), Some(SECONDARY_1));
}

/// A lab with one gateway node routed for both secondary IPs and two configurations on it, `one` (port 6000,
/// [`SECONDARY_1`]) and `two` (port 6001, [`SECONDARY_2`]); no pods yet.
fn two_configurations() -> (Lab, GatewayNode, LabConfig, LabConfig) {
    let mut lab = Lab::new();
    let gw = lab.add_gateway();
    lab.route(&format!("{FRONTEND}/32"), gw.ip);
    lab.route(&format!("{SECONDARY_1}/32"), gw.ip);
    lab.route(&format!("{SECONDARY_2}/32"), gw.ip);
    let one = lab.add_config("one", 6000, RouteType::StaticEgressGateway, &[]);
    let two = lab.add_config("two", 6001, RouteType::StaticEgressGateway, &[]);
    (lab, gw, one, two)
}

#[test]
fn two_configurations_on_one_gateway_each_use_their_own_secondary_ip() {
    let (mut lab, gw, one, two) = two_configurations();
    lab.add_pod("pa", Some("one"));
    lab.add_pod("pb", Some("two"));
    let plan = gateway_plan(&lab.gateway_input(&gw, &[(&one, SECONDARY_1), (&two, SECONDARY_2)]));
    assert_eq!(plan.links.len(), 2);
    gw.applier().apply(&plan).expect("gateway apply");
    assert_eq!(lab.source_seen("pa", INET), Some(SECONDARY_1));
    assert_eq!(lab.source_seen("pb", INET), Some(SECONDARY_2));
}

#[test]
fn a_configuration_whose_port_is_taken_does_not_stop_the_others() {
    let (mut lab, gw, one, two) = two_configurations();
    // Something else on the gateway node holds configuration one's UDP port.
    let taken = in_netns(lab.path("gw1"), || {
        std::net::UdpSocket::bind(("0.0.0.0", 6000)).expect("bind 6000")
    })
    .join()
    .expect("bind thread");
    let pa = lab.add_pod("pa", Some("one"));
    let pb = lab.add_pod("pb", Some("two"));
    let plan = gateway_plan(&lab.gateway_input(&gw, &[(&one, SECONDARY_1), (&two, SECONDARY_2)]));
    let report = gw.applier().apply(&plan).expect("the rest of the plan applies");
    let failed: Vec<(&str, &str)> = report
        .failed
        .iter()
        .map(|f| (f.configuration.as_str(), f.ifname.as_str()))
        .collect();
    assert_eq!(failed, vec![("default/one", "wg-6000")], "{:?}", report.failed);
    let egw = dataplane::netns::Netns::named(&gw.egw);
    assert!(
        !egw.link_exists("wg-6000").expect("links"),
        "no half-built link is left for the failed configuration"
    );
    let routes = egw.ip_json(&["-4", "route", "show"]).expect("routes").to_string();
    assert!(
        routes.contains(&format!("\"{pb}\"")),
        "the healthy pod's return route: {routes}"
    );
    assert!(
        !routes.contains(&format!("\"{pa}\"")),
        "no route into the failed link: {routes}"
    );
    assert_eq!(
        lab.source_seen("pb", INET),
        Some(SECONDARY_2),
        "the healthy configuration serves"
    );
    // Once the port is free, the next apply brings the configuration up.
    drop(taken);
    let report = gw.applier().apply(&plan).expect("apply");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(lab.source_seen("pa", INET), Some(SECONDARY_1));
}

#[test]
fn no_packet_is_lost_across_an_agent_restart() {
    let mut lab = Lab::new();
    let gw = lab.add_gateway();
    lab.route(&format!("{FRONTEND}/32"), gw.ip);
    lab.route(&format!("{SECONDARY_1}/32"), gw.ip);
    let cfg = lab.add_config("gw1", 6000, RouteType::StaticEgressGateway, &[]);
    lab.add_pod("pa", Some("gw1"));
    gw.applier()
        .apply(&gateway_plan(&lab.gateway_input(&gw, &[(&cfg, SECONDARY_1)])))
        .expect("first agent applies");
    // Tunnel established before the stream starts (the first handshake is not what this test is about).
    assert_eq!(lab.source_seen("pa", INET), Some(SECONDARY_1));
    let stream = lab.flowing_stream("pa");
    // "Restart": a new applier with no memory rebuilds the plan from the cluster and applies it, twice
    // (startup apply and first resync). It must leave the working data plane alone.
    for round in 0..2 {
        let report = gw
            .applier()
            .apply(&gateway_plan(&lab.gateway_input(&gw, &[(&cfg, SECONDARY_1)])))
            .expect("restarted agent applies");
        assert!(
            report.changes.is_empty(),
            "round {round}: restart changed {:?}",
            report.changes
        );
    }
    let seen = stream.answered();
    wait_until("stream continues after restart", Duration::from_secs(5), || {
        stream.answered() >= seen + 100
    });
    let (sent, lost, sources) = stream.finish();
    assert!(sent >= 200, "sent {sent}");
    assert!(
        lost.is_empty(),
        "lost {} of {sent}: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(sources.into_iter().collect::<Vec<_>>(), vec![SECONDARY_1]);
}

/// Serves the LB probe inside a gateway node's namespace.
fn probe_server(
    ns: std::path::PathBuf,
    state: ProbeState,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(("0.0.0.0", api::names::DEFAULT_LB_PROBE_PORT))
                .await
                .expect("bind probe");
            let server = axum::serve(l, probe::router(state)).with_graceful_shutdown(async move {
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let _ = server.await;
        });
    })
}

/// Stops the probe servers (its flag) and waits for them when dropped.
struct StopGuard(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

/// Two configurations applied and served on one gateway node (pods `pa` on `one`, `pb` on `two`), their probe
/// answering 200 on both paths.
struct ServedPair {
    lab: Lab,
    gw: GatewayNode,
    one: LabConfig,
    two: LabConfig,
    served: agent::gateway::plan::GatewayPlan,
    probe: ProbeState,
    _server: StopGuard,
}

impl ServedPair {
    fn start() -> ServedPair {
        let (mut lab, gw, one, two) = two_configurations();
        lab.add_pod("pa", Some("one"));
        lab.add_pod("pb", Some("two"));
        let plan = gateway_plan(&lab.gateway_input(&gw, &[(&one, SECONDARY_1), (&two, SECONDARY_2)]));
        let report = gw.applier().apply(&plan).expect("gateway apply");
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        let probe = ProbeState::default();
        probe.set_active(agent::gateway::select::active_uids(&plan));
        let stop = Arc::new(AtomicBool::new(false));
        let server = StopGuard(
            stop.clone(),
            vec![probe_server(
                std::path::Path::new("/var/run/netns").join(&gw.ns),
                probe.clone(),
                stop,
            )],
        );
        let pair = ServedPair {
            lab,
            gw,
            one,
            two,
            served: plan,
            probe,
            _server: server,
        };
        wait_until("both probes answer 200", Duration::from_secs(5), || {
            pair.status(&pair.one) == Some(200) && pair.status(&pair.two) == Some(200)
        });
        pair
    }

    /// What `cfg`'s probe path answers, asked from the router.
    fn status(&self, cfg: &LabConfig) -> Option<u16> {
        probe_status(
            self.lab.path("rt"),
            self.gw.ip,
            api::names::lb_probe_path(&cfg.uid),
        )
    }

    /// An applier whose every apply fails as a whole after the links (the node's interface is not there).
    fn failing_applier(&self) -> agent::gateway::apply::GatewayApplier {
        let mut broken = self.gw.applier();
        broken.host_interface = "absent0".into();
        broken
    }

    /// Applies the served plan with `broken`, which fails as a whole, and hands the probe what the node still
    /// serves then.
    fn fail_and_read_back(
        &self,
        broken: &agent::gateway::apply::GatewayApplier,
    ) -> agent::gateway::plan::GatewayPlan {
        broken
            .apply(&self.served)
            .expect_err("the apply fails as a whole");
        let now = agent::gateway::run::still_serving(broken, &self.served, &self.served);
        self.probe.set_active(agent::gateway::select::active_uids(&now));
        now
    }
}

/// A configuration whose link a failing apply removed (its port taken meanwhile, then the whole apply failed)
/// answers 503 on its probe path; the configuration whose link is still there keeps answering 200.
#[test]
fn a_configuration_whose_link_a_failed_apply_removed_answers_503_on_its_probe() {
    let pair = ServedPair::start();
    let gw = &pair.gw;
    // Configuration one's link goes away (its wireguard-go ended) and something else takes its port.
    let egw = dataplane::netns::Netns::named(&gw.egw);
    egw.ip(&["link", "del", "wg-6000"]).expect("delete wg-6000");
    let gw_ns = pair.lab.path("gw1");
    let mut taken = None;
    wait_until("port 6000 free on the node", Duration::from_secs(5), || {
        taken = in_netns(gw_ns.clone(), || {
            std::net::UdpSocket::bind(("0.0.0.0", 6000)).ok()
        })
        .join()
        .expect("bind thread");
        taken.is_some()
    });
    // The next apply re-creates the link, which fails and is removed, then fails as a whole (the node's
    // interface is not there).
    let broken = pair.failing_applier();
    pair.fail_and_read_back(&broken);
    assert!(
        !egw.link_exists("wg-6000").expect("links"),
        "the failed link is removed"
    );
    assert_eq!(
        pair.status(&pair.one),
        Some(503),
        "the configuration without its link is not served"
    );
    assert_eq!(
        pair.status(&pair.two),
        Some(200),
        "the configuration whose link is there still is"
    );
    assert_eq!(
        pair.lab.source_seen("pb", INET),
        Some(SECONDARY_2),
        "and it really carries its pods' traffic"
    );
    drop(taken);
}

/// A link a failing apply re-created is up with its port, key and peers, but the peers' routes went with the
/// old link: those peers are not counted. A veth pair a failing apply re-created has lost the secondary IPs
/// and the routes via the primary: no configuration is served, every probe answers 503.
#[test]
fn after_a_failed_apply_re_created_links_count_only_routed_peers_and_a_re_created_veth_serves_nothing() {
    let pair = ServedPair::start();
    let gw = &pair.gw;
    let egw = dataplane::netns::Netns::named(&gw.egw);
    let broken = pair.failing_applier();

    egw.ip(&["link", "del", "wg-6000"]).expect("delete wg-6000");
    let now = pair.fail_and_read_back(&broken);
    assert!(
        egw.link_exists("wg-6000").expect("links"),
        "the failing apply re-created the link"
    );
    assert!(
        now.links["wg-6000"].peers.is_empty(),
        "its peer has no route: not counted"
    );
    assert_eq!(
        now.links["wg-6001"].peers.len(),
        1,
        "the untouched link keeps its peer"
    );
    assert!(!now.ns_routes.iter().any(|r| r.dev == "wg-6000"));

    let node = dataplane::netns::Netns::named(&gw.ns);
    node.ip(&["link", "del", api::names::GATEWAY_VETH_HOST])
        .expect("delete the veth pair");
    let now = pair.fail_and_read_back(&broken);
    assert!(
        egw.link_exists(api::names::GATEWAY_VETH_NS).expect("links"),
        "the failing apply re-created the veth pair"
    );
    assert!(now.links.is_empty(), "{:?}", now.links.keys());
    assert_eq!(pair.status(&pair.one), Some(503));
    assert_eq!(pair.status(&pair.two), Some(503));
}

#[test]
fn draining_gateway_answers_503_and_the_router_moves_traffic_to_the_other() {
    let mut lab = Lab::new();
    let g1 = lab.add_gateway();
    let g2 = lab.add_gateway();
    let secondary_g2 = Ipv4Addr::new(10, 0, 0, 8);
    lab.route(&format!("{SECONDARY_1}/32"), g1.ip);
    lab.route(&format!("{secondary_g2}/32"), g2.ip);
    lab.route(&format!("{FRONTEND}/32"), g1.ip);
    let cfg = lab.add_config("gw1", 6000, RouteType::StaticEgressGateway, &[]);
    lab.add_pod("pa", Some("gw1"));
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = vec![];
    let mut probes = vec![];
    for (g, secondary) in [(&g1, SECONDARY_1), (&g2, secondary_g2)] {
        let plan = gateway_plan(&lab.gateway_input(g, &[(&cfg, secondary)]));
        g.applier().apply(&plan).expect("gateway apply");
        let p = ProbeState::default();
        p.set_active(agent::gateway::select::active_uids(&plan));
        servers.push(probe_server(
            std::path::Path::new("/var/run/netns").join(&g.ns),
            p.clone(),
            stop.clone(),
        ));
        probes.push(p);
    }
    let _servers = StopGuard(stop.clone(), servers);
    let path = api::names::lb_probe_path(&cfg.uid);
    let rt_ns = lab.path("rt");
    wait_until("both probes answer 200", Duration::from_secs(5), || {
        [g1.ip, g2.ip]
            .iter()
            .all(|ip| probe_status(rt_ns.clone(), *ip, path.clone()) == Some(200))
    });
    assert_eq!(
        lab.source_seen("pa", INET),
        Some(SECONDARY_1),
        "flows use gateway 1 first"
    );

    // The load balancer: one poll round sends the frontend to the first healthy gateway.
    let poll_once = |lab: &Lab| -> Option<Ipv4Addr> {
        let healthy = [g1.ip, g2.ip]
            .into_iter()
            .find(|ip| probe_status(rt_ns.clone(), *ip, path.clone()) == Some(200))?;
        lab.route(&format!("{FRONTEND}/32"), healthy);
        Some(healthy)
    };
    assert_eq!(poll_once(&lab), Some(g1.ip));
    probes[0].drain();
    assert_eq!(
        probe_status(rt_ns.clone(), g1.ip, path.clone()),
        Some(503),
        "draining gateway answers 503"
    );
    assert_eq!(
        poll_once(&lab),
        Some(g2.ip),
        "router moves the frontend to the healthy gateway"
    );
    // WireGuard moves the session to the new gateway on its next handshake; re-setting the pod's peer
    // starts that handshake now instead of after WireGuard's 5-15 s rekey timeout.
    let pod_wg = dataplane::netns::Netns::Path(lab.path("pa"));
    let alias = dataplane::wg::link_alias(&pod_wg, "wg0")
        .expect("alias")
        .expect("alias set");
    let wg = dataplane::wg::WireGuard::new(dataplane::wg::BackendKind::detect());
    let handle = dataplane::wg::WgHandle {
        netns: pod_wg,
        ifname: "wg0".into(),
        control_name: alias,
    };
    let state = wg.device_stats(&handle).expect("pod wg state");
    let peer = state
        .peers
        .first()
        .expect("pod has the gateway peer")
        .peer
        .clone();
    let mut change = dataplane::wg::DeviceChange {
        remove_peers: vec![peer.public_key.clone()],
        ..Default::default()
    };
    wg.apply(&handle, &change).expect("remove peer");
    change = dataplane::wg::DeviceChange {
        upsert_peers: vec![dataplane::wg::PeerSpec {
            public_key: peer.public_key,
            endpoint: Some(SocketAddr::from((FRONTEND, cfg.port))),
            allowed_ips: peer.allowed_ips,
        }],
        ..Default::default()
    };
    wg.apply(&handle, &change).expect("re-add peer");
    assert_eq!(
        lab.source_seen("pa", INET),
        Some(secondary_g2),
        "after the move, egress leaves through gateway 2"
    );
}

/// A gateway key rotation (the key Secret deleted, the operator publishes a new key, the gateways take it)
/// breaks running pods, which still have the old key as their peer, until the node agent's pod tunnel watch
/// gives them the key the configuration now publishes: same endpoint and allowed IPs, new key.
#[test]
fn running_pods_follow_a_gateway_key_rotation() {
    use agent::node::peer_watch::{self, Devices};
    use agent::node::rekey::GatewayKeys;
    use dataplane::netns::Netns;
    use dataplane::wg::{BackendKind, PrivateKey, WgHandle, WireGuard};

    let mut lab = Lab::new();
    let gw = lab.add_gateway();
    lab.route(&format!("{FRONTEND}/32"), gw.ip);
    lab.route(&format!("{SECONDARY_1}/32"), gw.ip);
    let mut cfg = lab.add_config("gw1", 6000, RouteType::StaticEgressGateway, &[]);
    lab.add_pod("pa", Some("gw1"));
    let applier = gw.applier();
    let apply = |cfg: &netlab::LabConfig| {
        let plan = gateway_plan(&lab.gateway_input(&gw, &[(cfg, SECONDARY_1)]));
        applier.apply(&plan).expect("gateway apply");
    };
    apply(&cfg);
    assert_eq!(
        lab.source_seen("pa", INET),
        Some(SECONDARY_1),
        "before the rotation"
    );

    // The pod's device as the node agent finds it: only this lab's pod (a private listing directory).
    let pod_ns = Netns::Path(lab.path("pa"));
    let control = dataplane::wg::link_alias(&pod_ns, "wg0")
        .expect("alias")
        .expect("alias set");
    let listing = tempfile::tempdir().expect("tempdir");
    let (sockets, netns) = (listing.path().join("sockets"), listing.path().join("netns"));
    std::fs::create_dir_all(&sockets).expect("mkdir");
    std::fs::create_dir_all(&netns).expect("mkdir");
    let kind = BackendKind::detect();
    let handle = if kind == BackendKind::Userspace {
        std::fs::write(sockets.join(format!("{control}.sock")), b"").expect("listing entry");
        WgHandle {
            netns: Netns::Current,
            ifname: control.clone(),
            control_name: control.clone(),
        }
    } else {
        std::os::unix::fs::symlink(lab.path("pa"), netns.join("pa")).expect("listing entry");
        WgHandle {
            netns: pod_ns.clone(),
            ifname: "wg0".into(),
            control_name: "wg0".into(),
        }
    };
    let devices = Devices {
        socket_dir: sockets,
        netns_dir: Some(netns),
        skip_netns: String::new(),
    };
    let before = WireGuard::new(kind).device_stats(&handle).expect("pod wg").peers;
    assert_eq!(before.len(), 1);
    let keys = || GatewayKeys::of(&lab.cluster.with(|s| s.sgcs.values().cloned().collect::<Vec<_>>()));
    assert!(
        peer_watch::rekey_once(&devices, &keys()).is_empty(),
        "a current key is left alone"
    );

    // Rotation.
    cfg.key = PrivateKey::generate();
    let new_public = cfg.key.public_base64();
    lab.cluster.with(|s| {
        let sgc = s
            .sgcs
            .get_mut(&agent::object::NamespacedName::new("default", "gw1"))
            .expect("configuration");
        if let Some(p) = sgc
            .status
            .as_mut()
            .and_then(|st| st.gateway_server_profile.as_mut())
        {
            p.public_key = new_public.clone();
        }
    });
    apply(&cfg);
    assert_eq!(
        lab.source_seen("pa", INET),
        None,
        "the pod still has the old key: its egress is broken"
    );

    // The node agent's pod tunnel watch, given the configurations' keys as node mode's watch of them does.
    let (keys_tx, keys_rx) = tokio::sync::watch::channel(GatewayKeys::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let watch = rt.spawn(peer_watch::run(
        peer_watch::WatchSettings::default(),
        devices.clone(),
        keys_rx,
        Arc::new(agent::metrics::Metrics::default()),
        stop_rx,
    ));
    keys_tx.send(keys()).expect("the watch runs");
    wait_until("the pod's peer has the new key", Duration::from_secs(5), || {
        WireGuard::new(kind)
            .device_stats(&handle)
            .is_ok_and(|d| d.peers.iter().any(|p| p.peer.public_key == new_public))
    });
    stop_tx.send(true).expect("the watch runs");
    rt.block_on(watch).expect("the watch stops");
    let after = WireGuard::new(kind).device_stats(&handle).expect("pod wg").peers;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].peer.public_key, new_public);
    assert_eq!(after[0].peer.endpoint, before[0].peer.endpoint);
    let sorted = |mut v: Vec<ipnet::IpNet>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(after[0].peer.allowed_ips.clone()),
        sorted(before[0].peer.allowed_ips.clone())
    );
    assert_eq!(
        lab.source_seen("pa", INET),
        Some(SECONDARY_1),
        "re-keyed, the pod egresses again"
    );
    assert!(peer_watch::rekey_once(&devices, &keys()).is_empty(), "done once");
}
