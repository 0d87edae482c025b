//! Network lab on real namespaces for data-plane tests and benchmarks (needs root, wireguard-go or the kernel
//! module, nft, iproute2 and Debian's CNI plugins in /usr/lib/cni: `scripts/install-deps.sh`).
//!
//! Topology only: the node agent, gateways' appliers and the CNI plugin are added by the agent's tests
//! (`agent/tests/netlab`), so this crate depends on none of them. Names are unique per lab and removed by
//! Drop even when the test panics:
//!
//! ```text
//!  pods (bridge+host-local, kube-egress-cni chained) ── node 192.168.1.2 ─┐
//!                                                     gateways 192.168.N.2 ├─ router ── inet 203.0.113.10
//!                                                                          │           198.51.100.10
//! ```
//! The router plays Azure: it routes the pod CIDR to the node, secondary IPs to their gateway node and
//! the load-balancer frontend IP to one gateway (floating IP). `inet` runs UDP echoes that answer
//! `<source address seen> <payload>`.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Where Debian installs the reference CNI plugins.
pub const CNI_DIR: &str = "/usr/lib/cni";
/// The internet echo reached through the gateway.
pub const INET: &str = "203.0.113.10:7777";
/// A second internet address (used for exception CIDRs).
pub const INET2: &str = "198.51.100.10:7777";
/// The load-balancer frontend IP.
pub const FRONTEND: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails with a clear message when a tool is missing.
pub fn require(bin: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin} || test -x {bin}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{bin} is missing: run scripts/install-deps.sh (as root)");
}

/// Runs a command, panicking with its stderr on failure.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a fresh thread that has entered the namespace at `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// A gateway node of the lab.
#[derive(Debug, Clone)]
pub struct GatewayNode {
    /// Its host namespace.
    pub ns: String,
    /// Its gateway namespace (created by the applier).
    pub egw: String,
    /// Its primary IP.
    pub ip: Ipv4Addr,
}

/// The namespaces, links and echo servers of one lab. Drop removes everything.
#[derive(Debug)]
pub struct Network {
    /// Unique id (part of every name).
    pub id: String,
    netns: Vec<String>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tmp: tempfile::TempDir,
    gateways: u8,
}

impl Drop for Network {
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

impl Network {
    /// Router, node and inet with its echoes.
    pub fn start() -> Network {
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
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut lab = Network {
            id: format!("{:05x}{n:x}", std::process::id() & 0xfffff),
            netns: vec![],
            stop: Arc::new(AtomicBool::new(false)),
            threads: vec![],
            tmp,
            gateways: 0,
        };
        for r in ["rt", "node", "inet"] {
            lab.add_ns(r);
        }
        lab.link("rt", "r1", "192.168.1.1/24", "node", "eth0", "192.168.1.2/24");
        lab.link("rt", "r3", "203.0.113.1/24", "inet", "eth0", "203.0.113.10/24");
        let (rt, node, inet) = (lab.ns("rt"), lab.ns("node"), lab.ns("inet"));
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
        lab.echo("inet", INET.parse().expect("addr"));
        lab.echo("inet", INET2.parse().expect("addr"));
        lab
    }

    /// Full name of a role's namespace.
    pub fn ns(&self, role: &str) -> String {
        format!("k{}{role}", self.id)
    }

    /// Path of a role's namespace.
    pub fn path(&self, role: &str) -> PathBuf {
        Path::new("/var/run/netns").join(self.ns(role))
    }

    /// Creates a namespace for `role` (removed on drop).
    pub fn add_ns(&mut self, role: &str) -> String {
        let n = self.ns(role);
        sh(&["ip", "netns", "add", &n]);
        self.netns.push(n.clone());
        sh(&["ip", "-n", &n, "link", "set", "lo", "up"]);
        n
    }

    /// veth `a_if` in `a` ↔ `b_if` in `b`, with addresses.
    pub fn link(&self, a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str) {
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

    /// `ip route replace` in the router.
    pub fn route(&self, dst: &str, via: Ipv4Addr) {
        sh(&[
            "ip",
            "-n",
            &self.ns("rt"),
            "route",
            "replace",
            dst,
            "via",
            &via.to_string(),
        ]);
    }

    /// Adds a gateway node on its own router port; its secondary IPs are routed to it by [`Network::route`].
    pub fn add_gateway(&mut self) -> GatewayNode {
        self.gateways += 1;
        let g = self.gateways;
        let role = format!("gw{g}");
        let ns = self.add_ns(&role);
        let net = 1 + g;
        self.link(
            "rt",
            &format!("rg{g}"),
            &format!("192.168.{net}.1/24"),
            &role,
            "eth0",
            &format!("192.168.{net}.2/24"),
        );
        sh(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("192.168.{net}.1"),
        ]);
        let egw = self.ns(&format!("egw{g}"));
        self.netns.push(egw.clone()); // created by the applier, removed by the guard
        GatewayNode {
            ns,
            egw,
            ip: Ipv4Addr::new(192, 168, net, 2),
        }
    }

    /// A UDP echo in `role`'s namespace answering `<source seen> <payload>`.
    pub fn echo(&mut self, role: &str, bind: SocketAddr) {
        let stop = self.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.threads.push(in_netns(self.path(role), move || {
            let s = UdpSocket::bind(bind).expect("bind echo");
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            tx.send(()).expect("ready");
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let mut reply = format!("{} ", from.ip()).into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = s.send_to(&reply, from);
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(5)).expect("echo ready");
    }

    /// Deletes a namespace created by [`Network::add_ns`] early (benchmarks create many pods).
    pub fn del_ns(&mut self, role: &str) {
        let n = self.ns(role);
        let _ = Command::new("ip").args(["netns", "del", &n]).output();
        self.netns.retain(|x| *x != n);
    }

    /// The lab's temporary directory (sockets, IPAM state), removed on drop.
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// The primary plugin's configuration (bridge + host-local on the pod CIDR), as a runtime passes it.
    pub fn primary_plugin_conf(&self) -> Value {
        json!({"cniVersion":"1.0.0","name":"k8s","type":"bridge","bridge":format!("b{}", self.id),
            "isGateway":true,"ipMasq":false,
            "ipam":{"type":"host-local","dataDir":self.tmp.path().join("ipam"),"ranges":[[{"subnet":"10.244.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}})
    }

    /// Sends from `role` until the echo at `to` answers (or the deadline passes); the source it saw.
    pub fn source_seen(&self, role: &str, to: &str) -> Option<Ipv4Addr> {
        let to: SocketAddr = to.parse().expect("addr");
        in_netns(self.path(role), move || {
            let s = UdpSocket::bind("0.0.0.0:0").ok()?;
            s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
            let end = Instant::now() + Duration::from_secs(8);
            let mut buf = [0u8; 256];
            while Instant::now() < end {
                let _ = s.send_to(b"who", to);
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    return text.split(' ').next()?.parse().ok();
                }
            }
            None
        })
        .join()
        .ok()
        .flatten()
    }
}

/// A steady numbered UDP stream from a namespace to an echo; counts answered sequence numbers.
#[derive(Debug)]
pub struct Stream {
    stop: Arc<AtomicBool>,
    answered: Arc<Mutex<Vec<bool>>>,
    sender: Option<std::thread::JoinHandle<(u32, std::collections::BTreeSet<Ipv4Addr>)>>,
}

impl Stream {
    /// Starts sending `seq` numbers every `interval` from `ns` to `to`.
    pub fn start(ns: PathBuf, to: SocketAddr, interval: Duration) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let (st, an) = (stop.clone(), answered.clone());
        let sender = in_netns(ns, move || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.set_nonblocking(true).expect("nonblocking");
            let mut sent = 0u32;
            let mut sources = std::collections::BTreeSet::new();
            let mut buf = [0u8; 256];
            let mut drain = |sources: &mut std::collections::BTreeSet<Ipv4Addr>| {
                while let Ok((n, _)) = s.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let mut it = text.split(' ');
                    let src = it.next().and_then(|x| x.parse().ok());
                    let seq: Option<usize> = it.next().and_then(|x| x.parse().ok());
                    if let (Some(src), Some(seq)) = (src, seq) {
                        sources.insert(src);
                        let mut a = an.lock().expect("lock");
                        if seq < a.len() {
                            a[seq] = true;
                        }
                    }
                }
            };
            while !st.load(Ordering::SeqCst) {
                an.lock().expect("lock").push(false);
                let _ = s.send_to(sent.to_string().as_bytes(), to);
                sent += 1;
                let next = Instant::now() + interval;
                while Instant::now() < next {
                    drain(&mut sources);
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            // Trailing answers: wait until all are in or a generous deadline passes.
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end && an.lock().expect("lock").iter().any(|x| !x) {
                drain(&mut sources);
                std::thread::sleep(Duration::from_millis(1));
            }
            (sent, sources)
        });
        Stream {
            stop,
            answered,
            sender: Some(sender),
        }
    }

    /// Number of answered packets so far.
    pub fn answered(&self) -> usize {
        self.answered.lock().expect("lock").iter().filter(|x| **x).count()
    }

    /// Stops; returns (sent, sequence numbers never answered, sources seen).
    pub fn finish(mut self) -> (u32, Vec<usize>, std::collections::BTreeSet<Ipv4Addr>) {
        self.stop.store(true, Ordering::SeqCst);
        let (sent, sources) = self.sender.take().expect("once").join().expect("stream thread");
        let lost = self
            .answered
            .lock()
            .expect("lock")
            .iter()
            .enumerate()
            .filter(|(_, a)| !**a)
            .map(|(i, _)| i)
            .collect();
        (sent, lost, sources)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
    }
}

/// Waits for `cond` with a deadline (polling), panicking with `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// HTTP status of the load-balancer probe `GET http://<ip>:<default probe port><path>`, asked from inside `ns`.
pub fn probe_status(ns: PathBuf, ip: Ipv4Addr, path: String) -> Option<u16> {
    in_netns(ns, move || {
        use std::io::{Read as _, Write as _};
        let to = SocketAddr::from((ip, api::names::DEFAULT_LB_PROBE_PORT));
        let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(500)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .ok()?;
        let mut out = String::new();
        c.read_to_string(&mut out).ok()?;
        out.split(' ').nth(1)?.parse().ok()
    })
    .join()
    .ok()
    .flatten()
}

/// Runs CNI plugin `bin` for `cmd` like a runtime does (from the node's namespace, with the CNI variables and
/// `conf` on stdin); returns its JSON output, panicking with its output when it fails.
pub fn run_plugin(
    bin: &Path,
    node: &Path,
    cmd: &str,
    cid: &str,
    podns: &Path,
    args: &str,
    conf: &Value,
) -> Value {
    // Like a runtime: exec the plugin directly in the node's network namespace. The spawning thread enters
    // the namespace first (namespaces are per thread and inherited by the child), so no `nsenter` process
    // start is added to what the benchmark times.
    let node_ns = std::fs::File::open(node).expect("open node netns");
    let bin = bin.to_path_buf();
    let (cmd, cid, podns, args) = (
        cmd.to_string(),
        cid.to_string(),
        podns.to_path_buf(),
        args.to_string(),
    );
    let conf = conf.clone();
    std::thread::spawn(move || {
        nix::sched::setns(node_ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter node netns");
        exec_plugin(&bin, &cmd, &cid, &podns, &args, &conf)
    })
    .join()
    .expect("plugin thread")
}

fn exec_plugin(bin: &Path, cmd: &str, cid: &str, podns: &Path, args: &str, conf: &Value) -> Value {
    let mut c = Command::new(bin);
    c.env("CNI_COMMAND", cmd)
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
