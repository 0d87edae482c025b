//! End-to-end data path on real network namespaces (needs root, wireguard-go or the kernel module, nft,
//! iproute2 and Debian's CNI plugins in /usr/lib/cni: `scripts/install-deps.sh`).
//!
//! Topology (all names unique per test run, removed by a Drop guard):
//!
//! ```text
//!  pod-a (annotated) ─┐                       ┌─ gw node ── ns-egw (wg-6000, host0 10.0.0.6)
//!  pod-p (plain) ─────┤ node 192.168.1.2 ── router ── 192.168.2.2 (frontend 10.0.0.100/32)
//!        bridge+host-local + kube-egress-cni     └─ inet 203.0.113.10, 198.51.100.10 (UDP echo of source)
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent::gateway::apply::GatewayApplier;
use agent::gateway::plan::{ConfigInput, GatewayInput, PeerInput, gateway_plan};
use agent::node::MemoryCluster;
use api::names::POD_GATEWAY_ANNOTATION;
use api::sgc::{
    GatewayServerProfile, StaticGatewayConfiguration, StaticGatewayConfigurationSpec,
    StaticGatewayConfigurationStatus,
};
use cni::netns::Netns;
use cni::wg::{BackendKind, PrivateKey, WgHandle, WireGuard};
use serde_json::{Value, json};

const CNI_DIR: &str = "/usr/lib/cni";

fn require(bin: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin} || test -x {bin}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{bin} is missing: run scripts/install-deps.sh (as root)");
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes every namespace and thread the test created, even when it panics.
struct Topo {
    id: String,
    netns: Vec<String>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    _tmp: tempfile::TempDir,
}

impl Drop for Topo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for n in self.netns.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

impl Topo {
    fn ns(&self, role: &str) -> String {
        format!("k{}{role}", self.id)
    }
    fn path(&self, role: &str) -> PathBuf {
        Path::new("/var/run/netns").join(self.ns(role))
    }
    fn add_ns(&mut self, role: &str) -> String {
        let n = self.ns(role);
        sh(&["ip", "netns", "add", &n]);
        self.netns.push(n.clone());
        sh(&["ip", "-n", &n, "link", "set", "lo", "up"]);
        n
    }
    /// veth `a_if` in `a` ↔ `b_if` in `b`, with addresses.
    fn link(&self, a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str) {
        let tmp = format!("t{}{}", self.id, a_if.len() + b_if.len());
        let (na, nb) = (self.ns(a), self.ns(b));
        sh(&[
            "ip", "-n", &na, "link", "add", a_if, "type", "veth", "peer", "name", &tmp,
        ]);
        sh(&["ip", "-n", &na, "link", "set", &tmp, "netns", &nb]);
        sh(&["ip", "-n", &nb, "link", "set", &tmp, "name", b_if]);
        for (n, i, ip) in [(&na, a_if, a_ip), (&nb, b_if, b_ip)] {
            sh(&["ip", "-n", n, "addr", "add", ip, "dev", i]);
            sh(&["ip", "-n", n, "link", "set", i, "up"]);
        }
    }
    /// UDP echo in the inet namespace: replies with the source address it saw.
    fn echo(&mut self, bind: SocketAddr) {
        let path = self.path("inet");
        let stop = self.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.threads.push(std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let s = UdpSocket::bind(bind).expect("bind echo");
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            tx.send(()).expect("ready");
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((_, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(from.ip().to_string().as_bytes(), from);
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(5)).expect("echo ready");
    }
}

/// Sends from inside `ns` until the echo answers (or the deadline passes); returns the source it saw.
fn source_seen_from(ns: PathBuf, to: SocketAddr, deadline: Duration) -> Option<Ipv4Addr> {
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).ok()?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let s = UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
        let end = Instant::now() + deadline;
        let mut buf = [0u8; 64];
        while Instant::now() < end {
            let _ = s.send_to(b"who", to);
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return String::from_utf8_lossy(&buf[..n]).parse().ok();
            }
        }
        None
    })
    .join()
    .ok()
    .flatten()
}

fn run_plugin(
    bin: &Path,
    node: &Path,
    cmd: &str,
    cid: &str,
    podns: &Path,
    args: &str,
    conf: &Value,
) -> Value {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", node.display()))
        .arg("--")
        .arg(bin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", podns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", args)
        .env("CNI_PATH", CNI_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn plugin");
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write conf");
    }
    let out = child.wait_with_output().expect("plugin");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} {cmd} failed: {stdout} {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    if stdout.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(&stdout).expect("plugin JSON")
    }
}

#[allow(clippy::too_many_arguments)]
fn chain(
    topo: &Topo,
    cmd: &str,
    pod: &str,
    annotations: &BTreeMap<String, String>,
    socket: &Path,
    ipam_dir: &Path,
    ours: &Path,
) -> Value {
    let bridge = Path::new(CNI_DIR).join("bridge");
    let node = topo.path("node");
    let podns = topo.path(pod);
    let cid = format!("{}{pod}container", topo.id);
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}");
    let primary = json!({"cniVersion":"1.0.0","name":"k8s","type":"bridge","bridge":format!("b{}", topo.id),
        "isGateway":true,"ipMasq":false,
        "ipam":{"type":"host-local","dataDir":ipam_dir,"ranges":[[{"subnet":"10.244.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}});
    let our_conf = |prev: Option<Value>| {
        let mut c = json!({"cniVersion":"1.0.0","name":"k8s","type":"kube-egress-cni",
            "excludedCIDRs":["169.254.169.254/32","169.254.10.11/32"],"socketPath":socket,
            "runtimeConfig":{"io.kubernetes.cri.pod-annotations":annotations}});
        if let Some(p) = prev {
            c["prevResult"] = p;
        }
        c
    };
    if cmd == "ADD" {
        let prev = run_plugin(&bridge, &node, "ADD", &cid, &podns, &args, &primary);
        run_plugin(ours, &node, "ADD", &cid, &podns, &args, &our_conf(Some(prev)))
    } else {
        let r = run_plugin(ours, &node, "DEL", &cid, &podns, &args, &our_conf(None));
        run_plugin(&bridge, &node, "DEL", &cid, &podns, &args, &primary);
        r
    }
}

fn gateway_input(topo: &Topo, cluster: &MemoryCluster, key: &PrivateKey) -> GatewayInput {
    let peers = cluster.with(|s| {
        s.pod_endpoints
            .iter()
            .map(|((ns, name), pe)| PeerInput {
                pod_endpoint: format!("{ns}/{name}"),
                public_key: pe.pod_public_key.clone(),
                pod_ip: pe.pod_ip_address.trim_end_matches("/32").parse().expect("pod ip"),
            })
            .collect()
    });
    GatewayInput {
        netns_name: topo.ns("egw"),
        host_interface: "eth0".into(),
        primary_ip: Ipv4Addr::new(192, 168, 2, 2),
        frontend_ips: vec![Ipv4Addr::new(10, 0, 0, 100)],
        configs: vec![ConfigInput {
            uid: "uid-1".into(),
            sgc: "default/gw1".into(),
            port: 6000,
            private_key: key.clone(),
            secondary_ip: Ipv4Addr::new(10, 0, 0, 6),
            peers,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_pod_egresses_via_gateway_secondary_ip() {
    for b in [
        "nsenter",
        "ip",
        "nft",
        "wireguard-go",
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
    ] {
        require(b);
    }
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_kube-egress-cni"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let id = format!("{:05x}", std::process::id() & 0xfffff);
    let mut topo = Topo {
        id,
        netns: vec![],
        stop: Arc::new(AtomicBool::new(false)),
        threads: vec![],
        _tmp: tempfile::tempdir().expect("tmp"),
    };
    for r in ["rt", "node", "gw", "inet", "pa", "pp"] {
        topo.add_ns(r);
    }
    topo.netns.push(topo.ns("egw")); // created by the applier, removed by the guard
    topo.link("rt", "r1", "192.168.1.1/24", "node", "eth0", "192.168.1.2/24");
    topo.link("rt", "r2", "192.168.2.1/24", "gw", "eth0", "192.168.2.2/24");
    topo.link("rt", "r3", "203.0.113.1/24", "inet", "eth0", "203.0.113.10/24");
    let (rt, node, gw, inet) = (topo.ns("rt"), topo.ns("node"), topo.ns("gw"), topo.ns("inet"));
    sh(&["ip", "-n", &rt, "addr", "add", "198.51.100.1/24", "dev", "r3"]);
    sh(&[
        "ip",
        "-n",
        &inet,
        "addr",
        "add",
        "198.51.100.10/24",
        "dev",
        "eth0",
    ]);
    sh(&["ip", "-n", &inet, "route", "add", "default", "via", "203.0.113.1"]);
    sh(&["ip", "-n", &node, "route", "add", "default", "via", "192.168.1.1"]);
    sh(&["ip", "-n", &gw, "route", "add", "default", "via", "192.168.2.1"]);
    // The router plays Azure: frontend IP to the gateway (floating IP), secondary IP to its node, pods to their node.
    sh(&[
        "ip",
        "-n",
        &rt,
        "route",
        "add",
        "10.0.0.100/32",
        "via",
        "192.168.2.2",
    ]);
    sh(&[
        "ip",
        "-n",
        &rt,
        "route",
        "add",
        "10.0.0.6/32",
        "via",
        "192.168.2.2",
    ]);
    sh(&[
        "ip",
        "-n",
        &rt,
        "route",
        "add",
        "10.244.0.0/24",
        "via",
        "192.168.1.2",
    ]);
    for n in [&rt, &node] {
        sh(&[
            "ip",
            "netns",
            "exec",
            n,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ]);
    }
    topo.echo("203.0.113.10:7777".parse().expect("addr"));
    topo.echo("198.51.100.10:7777".parse().expect("addr"));

    // Cluster state and node agent.
    let gw_key = PrivateKey::generate();
    let cluster = MemoryCluster::default();
    let mut sgc = StaticGatewayConfiguration::new(
        "gw1",
        StaticGatewayConfigurationSpec {
            exclude_cidrs: vec!["198.51.100.0/24".into()],
            ..Default::default()
        },
    );
    sgc.status = Some(StaticGatewayConfigurationStatus {
        egress_ip_prefix: Some("10.0.0.6/32".into()),
        gateway_server_profile: Some(GatewayServerProfile {
            ip: "10.0.0.100".into(),
            port: 6000,
            public_key: gw_key.public_base64(),
            private_key_secret_ref: None,
        }),
        ..Default::default()
    });
    cluster.with(|s| s.sgcs.insert(("default".into(), "gw1".into()), sgc));
    let socket = tmp.path().join("cni.sock");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (c2, s2) = (cluster.clone(), socket.clone());
    let server = tokio::spawn(async move {
        agent::node::serve_unix(&s2, c2, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "agent socket never appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let ipam = tmp.path().join("ipam");
    let annotated = BTreeMap::from([(POD_GATEWAY_ANNOTATION.to_string(), "gw1".to_string())]);
    let res = tokio::task::block_in_place(|| chain(&topo, "ADD", "pa", &annotated, &socket, &ipam, &ours));
    assert!(
        res["interfaces"]
            .as_array()
            .expect("interfaces")
            .iter()
            .any(|i| i["name"] == "wg0"),
        "{res}"
    );
    let plain =
        tokio::task::block_in_place(|| chain(&topo, "ADD", "pp", &BTreeMap::new(), &socket, &ipam, &ours));
    assert!(
        !plain["interfaces"]
            .as_array()
            .expect("interfaces")
            .iter()
            .any(|i| i["name"] == "wg0")
    );
    assert_eq!(
        cluster.with(|s| s.pod_endpoints.len()),
        1,
        "only the annotated pod registers"
    );

    // Gateway applies the PodEndpoints; a second apply changes nothing.
    let applier = GatewayApplier {
        host: Netns::named(&gw),
        netns_name: topo.ns("egw"),
        host_interface: "eth0".into(),
        wg: WireGuard::new(BackendKind::detect()),
    };
    let plan = gateway_plan(&gateway_input(&topo, &cluster, &gw_key));
    applier.apply(&plan).expect("gateway apply");
    let again = applier.apply(&plan).expect("gateway re-apply");
    assert!(
        again.changes.is_empty(),
        "re-apply must be a no-op: {:?}",
        again.changes
    );

    let seen = |pod: &str, to: &str| {
        source_seen_from(topo.path(pod), to.parse().expect("addr"), Duration::from_secs(8))
    };
    assert_eq!(
        seen("pa", "203.0.113.10:7777"),
        Some(Ipv4Addr::new(10, 0, 0, 6)),
        "annotated pod egresses with the secondary IP"
    );
    let plain_src = seen("pp", "203.0.113.10:7777").expect("plain pod reaches the internet");
    assert!(
        plain_src.octets()[..3] == [10, 244, 0],
        "plain pod keeps its own path, saw {plain_src}"
    );
    let excluded = seen("pa", "198.51.100.10:7777").expect("excluded CIDR reachable");
    assert!(
        excluded.octets()[..3] == [10, 244, 0],
        "excludeCidrs bypass the gateway, saw {excluded}"
    );

    // Pod deletion removes its PodEndpoint, and the next apply removes the peer and its route.
    tokio::task::block_in_place(|| chain(&topo, "DEL", "pa", &annotated, &socket, &ipam, &ours));
    assert_eq!(cluster.with(|s| s.pod_endpoints.len()), 0);
    let plan = gateway_plan(&gateway_input(&topo, &cluster, &gw_key));
    applier.apply(&plan).expect("gateway apply after delete");
    let egw = Netns::Path(topo.path("egw"));
    let alias = cni::wg::link_alias(&egw, "wg-6000")
        .expect("alias")
        .expect("alias set");
    let state = applier
        .wg
        .state(&WgHandle {
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
    tokio::task::block_in_place(|| chain(&topo, "DEL", "pa", &annotated, &socket, &ipam, &ours));

    let _ = stop_tx.send(());
    server.await.expect("join").expect("server");
    drop(topo);
}
