//! End-to-end data path on real namespaces (root): annotated pod egresses with the gateway's secondary IP,
//! plain pod does not, `excludeCidrs` bypass, re-apply is a no-op, pod deletion removes peer and route.
//! Topology and cleanup: see `netlab`.

mod netlab;

use std::net::Ipv4Addr;

use agent::gateway::plan::gateway_plan;
use agent::object::NamespacedName;
use api::sgc::RouteType;
use dataplane::netns::Netns;
use dataplane::wg::WgHandle;
use netlab::{FRONTEND, INET, INET2, Lab, NodeApplier};

#[test]
fn annotated_pod_egresses_via_gateway_secondary_ip() {
    let secondary = Ipv4Addr::new(10, 0, 0, 6);
    let mut lab = Lab::new();
    let gw = lab.add_gateway();
    lab.route(&format!("{FRONTEND}/32"), gw.ip);
    lab.route(&format!("{secondary}/32"), gw.ip);
    let cfg = lab.add_config("gw1", 6000, RouteType::StaticEgressGateway, &["198.51.100.0/24"]);
    lab.add_pod("pa", Some("gw1"));
    lab.add_pod("pp", None);
    assert_eq!(
        lab.cluster.with(|s| s.pod_endpoints.len()),
        1,
        "only the annotated pod registers"
    );
    let pa = NamespacedName::new("default", "pa");
    let pe = lab
        .cluster
        .with(|s| s.pod_endpoints.get(&pa).cloned())
        .expect("PodEndpoint of pa");
    assert_eq!(
        (pe.recorded_sandbox(), pe.controller_pod_uid()),
        (
            Some(lab.container_id("pa").as_str()),
            Some(lab.pod_uid("pa").as_str())
        ),
        "the plugin told the agent its sandbox and pod uid"
    );

    // The node's network setup put the secondary IP on eth0: the gateway must take it off.
    netlab::sh(&["ip", "-n", &gw.ns, "addr", "add", "10.0.0.6/24", "dev", "eth0"]);
    // Gateway applies the PodEndpoints; a second apply changes nothing.
    let applier = gw.applier();
    let plan = gateway_plan(&lab.gateway_input(&gw, &[(&cfg, secondary)]));
    applier.apply(&plan).expect("gateway apply");
    let again = applier.apply(&plan).expect("gateway re-apply");
    assert!(
        again.changes.is_empty(),
        "re-apply must be a no-op: {:?}",
        again.changes
    );

    let eth0 = Netns::named(&gw.ns)
        .ip(&["-4", "addr", "show", "dev", "eth0"])
        .expect("addr");
    assert!(
        !eth0.contains("10.0.0.6/"),
        "secondary removed from the host: {eth0}"
    );
    assert_eq!(
        lab.source_seen("pa", INET),
        Some(secondary),
        "annotated pod egresses with the secondary IP"
    );
    let plain_src = lab
        .source_seen("pp", INET)
        .expect("plain pod reaches the internet");
    assert!(
        plain_src.octets()[..3] == [10, 244, 0],
        "plain pod keeps its own path, saw {plain_src}"
    );
    let excluded = lab.source_seen("pa", INET2).expect("excluded CIDR reachable");
    assert!(
        excluded.octets()[..3] == [10, 244, 0],
        "excludeCidrs bypass the gateway, saw {excluded}"
    );

    // A late DEL of a former sandbox of the same name (its namespace gone) leaves the live pod's PodEndpoint.
    let ann = std::collections::BTreeMap::from([(
        api::names::POD_GATEWAY_ANNOTATION.to_string(),
        "gw1".to_string(),
    )]);
    lab.stale_del("pa", &ann);
    assert_eq!(
        lab.cluster
            .with(|s| s.pod_endpoints.get(&pa).map(|kept| kept.metadata.clone())),
        Some(pe.metadata),
        "a former sandbox's DEL must not delete the live pod's PodEndpoint"
    );

    // Pod deletion removes its PodEndpoint, and the next apply removes the peer and its route.
    lab.cni("DEL", "pa", &ann);
    assert_eq!(lab.cluster.with(|s| s.pod_endpoints.len()), 0);
    let plan = gateway_plan(&lab.gateway_input(&gw, &[(&cfg, secondary)]));
    applier.apply(&plan).expect("gateway apply after delete");
    let egw = Netns::named(&gw.egw);
    let alias = dataplane::wg::link_alias(&egw, "wg-6000")
        .expect("alias")
        .expect("alias set");
    let state = applier
        .wg
        .device_stats(&WgHandle {
            netns: egw.clone(),
            ifname: "wg-6000".into(),
            control_name: alias,
        })
        .expect("wg state");
    assert!(state.peers.is_empty(), "peer removed: {:?}", state.peers);
    let routes = egw
        .ip(&["-4", "route", "show", "dev", "wg-6000"])
        .expect("routes");
    assert!(routes.trim().is_empty(), "pod route removed: {routes}");
    // DEL again is idempotent.
    lab.cni("DEL", "pa", &ann);
}

/// `auto` picks the kernel backend exactly when the kernel has WireGuard (loaded, built in, or loaded by the
/// probe), and the probe leaves no link behind.
#[test]
fn backend_detection_probes_the_kernel_and_cleans_up() {
    struct NetnsGuard(String);
    impl Drop for NetnsGuard {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let name = format!("kegprobe{}", std::process::id());
    netlab::sh(&["ip", "netns", "add", &name]);
    let _guard = NetnsGuard(name.clone());
    let ns = Netns::named(&name);
    let kind = dataplane::wg::BackendKind::detect_in(&ns);
    assert_eq!(
        kind == dataplane::wg::BackendKind::Kernel,
        std::path::Path::new("/sys/module/wireguard").exists(),
        "kernel backend iff the kernel has WireGuard after the probe"
    );
    let links = ns.ip(&["-o", "link", "show"]).expect("links");
    assert!(!links.contains("wgprobe"), "probe link left behind: {links}");
    assert!(links.contains("lo"), "the listing is of the namespace: {links}");
}
