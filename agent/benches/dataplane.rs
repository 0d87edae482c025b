//! Data-plane benchmark (root; a bench binary, not a timed test). Prints a Markdown report:
//! CNI ADD/DEL latency (plain and annotated pods), time to apply 1000 peers on a gateway, and tunnel
//! throughput vs direct with iperf3. Run: `cargo bench -p agent --bench dataplane` (see docs/performance.md).
//! `--smoke` runs every step once at the smallest size, with the same checks (scripts/test.sh does, as root).

#[path = "../tests/netlab/mod.rs"]
mod netlab;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::gateway::plan::{PeerInput, gateway_plan};
use agent::object::NamespacedName;
use api::sgc::RouteType;
use netlab::{FRONTEND, Lab, NodeApplier};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn row(name: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "| {name} | {} | {} | {} | {} |",
        v.len(),
        ms(pct(&v, 0.5)),
        ms(pct(&v, 0.99)),
        ms(*v.last().unwrap_or(&Duration::ZERO))
    );
}

fn cni_latency(lab: &mut Lab, annotated: bool, n: usize) {
    let ann: BTreeMap<String, String> = if annotated {
        BTreeMap::from([(api::names::POD_GATEWAY_ANNOTATION.to_string(), "gw1".to_string())])
    } else {
        BTreeMap::new()
    };
    let (mut add_primary, mut add_ours, mut del_primary, mut del_ours) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let role = format!("b{i}");
        lab.add_ns(&role);
        lab.cluster.with(|s| {
            s.pods
                .insert(NamespacedName::new("default", role.as_str()), ann.clone())
        });
        let (_, p, o) = lab.cni_timed("ADD", &role, &ann);
        add_primary.push(p);
        add_ours.push(o);
        let (_, p, o) = lab.cni_timed("DEL", &role, &ann);
        del_primary.push(p);
        del_ours.push(o);
        lab.del_ns(&role);
    }
    let kind = if annotated { "annotated" } else { "plain" };
    row(&format!("ADD {kind}: bridge+host-local (baseline)"), add_primary);
    row(&format!("ADD {kind}: kube-egress-cni"), add_ours);
    row(&format!("DEL {kind}: kube-egress-cni"), del_ours);
    row(&format!("DEL {kind}: bridge+host-local (baseline)"), del_primary);
}

fn peers_apply(lab: &mut Lab, peers: u32) {
    let gw = lab.add_gateway();
    let cfg = lab.add_config("big", 6100, RouteType::StaticEgressGateway, &[]);
    let secondary = Ipv4Addr::new(10, 0, 0, 9);
    let empty = lab.gateway_input(&gw, &[(&cfg, secondary)]);
    let applier = gw.applier();
    let t = Instant::now();
    applier.apply(&gateway_plan(&empty)).expect("empty apply");
    let setup = t.elapsed();
    let mut full = empty.clone();
    full.configs[0].peers = (0..peers)
        .map(|i| PeerInput {
            pod_endpoint: format!("default/p{i}"),
            public_key: dataplane::wg::PrivateKey::generate().public_base64(),
            pod_ip: Ipv4Addr::new(10, 250, (i / 250) as u8, (i % 250 + 1) as u8),
            created: None,
        })
        .collect();
    let plan = gateway_plan(&full);
    let t = Instant::now();
    applier.apply(&plan).expect("the peers");
    let add = t.elapsed();
    let t = Instant::now();
    let again = applier.apply(&plan).expect("no-op");
    let noop = t.elapsed();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    let t = Instant::now();
    applier.apply(&gateway_plan(&empty)).expect("remove all");
    let remove = t.elapsed();
    println!(
        "| gateway setup (namespace, veth, link, nft), no peers | {} |",
        ms(setup)
    );
    println!(
        "| add {peers} peers + {peers} routes to a running link | {} |",
        ms(add)
    );
    println!(
        "| re-apply with {peers} peers, nothing to change (restart) | {} |",
        ms(noop)
    );
    println!("| remove {peers} peers + routes | {} |", ms(remove));
}

fn iperf(lab: &Lab, client_role: &str, seconds: u32) -> f64 {
    let inet = lab.ns("inet");
    let mut server = Command::new("ip")
        .args(["netns", "exec", &inet, "iperf3", "-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    let client = lab.ns(client_role);
    let mut out = None;
    // The server needs a moment to listen: retry the client until it connects (iperf3 -J may exit 0 with
    // an "error" field when the connection is refused).
    for _ in 0..50 {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &client,
                "iperf3",
                "-c",
                "203.0.113.10",
                "-p",
                "5201",
                "-J",
            ])
            .args(["-t", &seconds.to_string()])
            .output()
            .expect("iperf3 client");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if o.status.success() && v.get("error").is_none() {
            out = Some(v);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    let v = out.expect("iperf3 client connected within 5 s");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: then do nothing (no root needed).
    let smoke = std::env::args().any(|a| a == "--smoke");
    if !smoke && !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // (plain pods, annotated pods, peers, iperf3 seconds)
    let (plain, annotated, peers, seconds) = if smoke { (1, 1, 10, 1) } else { (100, 50, 1000, 5) };
    let mut lab = Lab::new();
    let gw = lab.add_gateway();
    lab.route(&format!("{FRONTEND}/32"), gw.ip);
    lab.route("10.0.0.6/32", gw.ip);
    let cfg = lab.add_config("gw1", 6000, RouteType::StaticEgressGateway, &[]);
    gw.applier()
        .apply(&gateway_plan(
            &lab.gateway_input(&gw, &[(&cfg, Ipv4Addr::new(10, 0, 0, 6))]),
        ))
        .expect("gateway");
    println!("### CNI latency (ms)\n");
    println!("| step | n | p50 | p99 | max |\n|---|---|---|---|---|");
    cni_latency(&mut lab, false, plain);
    cni_latency(&mut lab, true, annotated);

    println!("\n### Gateway apply, {peers} peers (ms)\n");
    println!("| step | ms |\n|---|---|");
    peers_apply(&mut lab, peers);

    println!("\n### Throughput, pod to internet host (iperf3 TCP, {seconds} s)\n");
    lab.add_pod("pp", None);
    lab.add_pod("pa", Some("gw1"));
    gw.applier()
        .apply(&gateway_plan(
            &lab.gateway_input(&gw, &[(&cfg, Ipv4Addr::new(10, 0, 0, 6))]),
        ))
        .expect("gateway peers");
    assert_eq!(
        lab.source_seen("pa", netlab::INET),
        Some(Ipv4Addr::new(10, 0, 0, 6))
    );
    let direct = iperf(&lab, "pp", seconds);
    let tunnel = iperf(&lab, "pa", seconds);
    println!(
        "| path | Gbit/s |\n|---|---|\n| direct (plain pod) | {direct:.2} |\n| WireGuard tunnel via gateway ({:?} backend) | {tunnel:.2} |",
        dataplane::wg::BackendKind::detect()
    );
}
