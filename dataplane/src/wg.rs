//! WireGuard behind one interface, two backends.
//!
//! * Kernel: `ip link add type wireguard`, configured over generic netlink by `wireguard-control`
//!   (`Backend::Kernel`) from a thread that has entered the link's network namespace.
//! * Userspace: a `wireguard-go` process per link, configured over its UAPI socket
//!   `/var/run/wireguard/<control name>.sock` (`Backend::Userspace`). The socket path is a file, so it is
//!   reachable from any network namespace; the control name is the name the link had when it was created.
//!
//! Both backends create a link in the *host* namespace and then move it (renaming it) into its final
//! namespace: the UDP socket stays in the host namespace, which is what lets the tunnel cross the node's
//! network while the decrypted packets live in the pod or gateway namespace.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use ipnet::IpNet;
use wireguard_control::{AllowedIp, Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

use crate::netns::{CmdError, Netns};

/// Which implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// In-kernel WireGuard (production).
    Kernel,
    /// `wireguard-go` (hosts without the module).
    Userspace,
}

impl BackendKind {
    /// Kernel when the kernel has WireGuard, userspace otherwise; probed in this process's namespace.
    pub fn detect() -> Self {
        Self::detect_in(&Netns::Current)
    }

    /// Kernel when the module is loaded (or built in) or loads on first use, userspace otherwise.
    ///
    /// `/sys/module/wireguard` alone is not enough: on a fresh node the module is available but not loaded
    /// until the first WireGuard link is created, and choosing userspace there would need `wireguard-go` on a
    /// node that does not need it. So when it is absent, a throw-away link is created in `ns` (which makes the
    /// kernel load the module) and deleted again.
    pub fn detect_in(ns: &Netns) -> Self {
        if Path::new("/sys/module/wireguard").exists() {
            return BackendKind::Kernel;
        }
        let probe = format!("wgprobe{}", std::process::id() % 100_000);
        if ns.ip(&["link", "add", &probe, "type", "wireguard"]).is_ok() {
            if let Err(e) = ns.ip(&["link", "del", &probe]) {
                eprintln!("kube-egress: could not delete the WireGuard probe link {probe}: {e}");
            }
            BackendKind::Kernel
        } else {
            BackendKind::Userspace
        }
    }

    /// Whether this backend can create links here: `wireguard-go` needs the TUN device at `tun`
    /// (`/dev/net/tun`), which a container has only when it is mounted. Checked at start-up, so a gateway agent
    /// without it says so once, instead of failing every link it creates.
    pub fn check_usable(self, tun: &Path) -> Result<(), String> {
        match self {
            BackendKind::Userspace if !tun.exists() => Err(format!(
                "wireguard backend: userspace (wireguard-go) needs {}, which is missing here; in a container, \
                 mount it (the chart does unless gatewayDaemonManager.wireguardBackend is kernel)",
                tun.display()
            )),
            _ => Ok(()),
        }
    }

    /// Parses `kernel`, `userspace` or `auto`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "kernel" => Ok(BackendKind::Kernel),
            "userspace" => Ok(BackendKind::Userspace),
            "auto" => Ok(Self::detect()),
            other => Err(format!(
                "wireguard backend: {other:?} is not one of kernel, userspace, auto"
            )),
        }
    }
}

/// Errors of WireGuard operations.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    /// A command failed.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// A configuration call failed.
    #[error("wireguard {op} on {link}: {msg}")]
    Control {
        /// What was attempted.
        op: &'static str,
        /// Link (interface or control name).
        link: String,
        /// Cause.
        msg: String,
    },
}

/// Where a link lives and how to reach its configuration interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgHandle {
    /// The namespace the link lives in now.
    pub netns: Netns,
    /// Its interface name there.
    pub ifname: String,
    /// Name it was created with (UAPI socket name of the userspace backend).
    pub control_name: String,
}

/// A WireGuard private key that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey(pub Key);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        PrivateKey(Key::generate_private())
    }
    /// Parses base64; the error does not echo the input.
    pub fn from_base64(s: &str) -> Result<Self, String> {
        Key::from_base64(s.trim())
            .map(PrivateKey)
            .map_err(|_| "private key: not a base64 WireGuard key (32 bytes)".to_string())
    }
    /// The matching public key (base64).
    pub fn public_base64(&self) -> String {
        self.0.get_public().to_base64()
    }
}

/// Desired peer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerSpec {
    /// Base64 public key.
    pub public_key: String,
    /// Endpoint, when known (pods know the gateway's; gateways learn pods' by roaming).
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs.
    pub allowed_ips: Vec<IpNet>,
}

impl PeerSpec {
    /// The key and allowed IPs as the WireGuard library takes them; `op` and `link` name the change in the error.
    fn key_and_ips(&self, op: &'static str, link: &str) -> Result<(Key, Vec<AllowedIp>), WgError> {
        let key = Key::from_base64(&self.public_key).map_err(|_| WgError::Control {
            op,
            link: link.into(),
            msg: format!(
                "peer public key {:?} is not a base64 WireGuard key",
                self.public_key
            ),
        })?;
        let ips = self
            .allowed_ips
            .iter()
            .map(|n| AllowedIp {
                address: n.addr(),
                cidr: n.prefix_len(),
            })
            .collect();
        Ok((key, ips))
    }
}

/// A change to a device. Only what is set is changed.
#[derive(Debug, Clone, Default)]
pub struct DeviceChange {
    /// New private key.
    pub private_key: Option<PrivateKey>,
    /// New listen port.
    pub listen_port: Option<u16>,
    /// Peers to add or update (allowed IPs replaced).
    pub upsert_peers: Vec<PeerSpec>,
    /// Public keys (base64) of peers to remove.
    pub remove_peers: Vec<String>,
}

impl DeviceChange {
    fn is_empty(&self) -> bool {
        self.private_key.is_none()
            && self.listen_port.is_none()
            && self.upsert_peers.is_empty()
            && self.remove_peers.is_empty()
    }
}

/// The interface both backends implement.
#[derive(Debug, Clone)]
pub struct WireGuard {
    kind: BackendKind,
}

impl WireGuard {
    /// A driver for `kind`.
    pub fn new(kind: BackendKind) -> Self {
        WireGuard { kind }
    }

    /// The backend in use.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// Creates link `control_name` in `host`, moves it to `target` renamed to `ifname`. The link is down.
    pub fn create_and_move(
        &self,
        host: &Netns,
        control_name: &str,
        target: &Netns,
        ifname: &str,
    ) -> Result<WgHandle, WgError> {
        match self.kind {
            BackendKind::Kernel => {
                host.ip(&["link", "add", control_name, "type", "wireguard"])?;
            }
            BackendKind::Userspace => {
                // wireguard-go daemonizes, but stays a process of our PID namespace: in a container it ends,
                // and its link with it, when the container does (the gateway agent's tunnels do not outlive
                // the agent; docs/dataplane.md).
                let mut c = host.command("wireguard-go");
                c.arg(control_name)
                    .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
                    .env_remove("WG_PROCESS_FOREGROUND")
                    .stdin(std::process::Stdio::null());
                let out = c.output().map_err(|e| WgError::Control {
                    op: "start wireguard-go",
                    link: control_name.into(),
                    msg: e.to_string(),
                })?;
                if !out.status.success() {
                    return Err(WgError::Control {
                        op: "start wireguard-go",
                        link: control_name.into(),
                        msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
                wait_userspace_ready(control_name)?;
            }
        }
        let handle = WgHandle {
            netns: target.clone(),
            ifname: ifname.to_string(),
            control_name: control_name.to_string(),
        };
        let moved = (|| -> Result<(), CmdError> {
            host.ip(&["link", "set", control_name, "down"])?;
            if let Netns::Path(p) = target {
                let p = p.display().to_string();
                host.ip(&["link", "set", control_name, "netns", &p])?;
            }
            if control_name != ifname {
                target.ip(&["link", "set", control_name, "name", ifname])?;
            }
            // The alias records the control name so a restarted agent can find the UAPI socket.
            target.ip(&["link", "set", ifname, "alias", control_name])?;
            Ok(())
        })();
        if let Err(e) = moved {
            let _ = host.ip(&["link", "del", control_name]);
            let _ = target.ip(&["link", "del", ifname]);
            return Err(e.into());
        }
        Ok(handle)
    }

    /// Applies a change.
    pub fn apply(&self, h: &WgHandle, change: &DeviceChange) -> Result<(), WgError> {
        if change.is_empty() {
            return Ok(());
        }
        let mut u = DeviceUpdate::new();
        if let Some(k) = &change.private_key {
            u = u.set_private_key(k.0.clone());
        }
        if let Some(p) = change.listen_port {
            u = u.set_listen_port(p);
        }
        for p in &change.upsert_peers {
            let (key, ips) = p.key_and_ips("add peer", &h.ifname)?;
            let mut b = PeerConfigBuilder::new(&key)
                .replace_allowed_ips()
                .add_allowed_ips(&ips);
            if let Some(e) = p.endpoint {
                b = b.set_endpoint(e);
            }
            u = u.add_peer(b);
        }
        for k in &change.remove_peers {
            if let Ok(key) = Key::from_base64(k) {
                u = u.remove_peer_by_key(&key);
            }
        }
        let name = self.control_iface(h)?;
        let kind = self.kind;
        self.in_netns(h, move || u.apply(&name, backend(kind)))
            .map_err(|msg| WgError::Control {
                op: "configure",
                link: h.ifname.clone(),
                msg,
            })
    }

    /// The name to address the device by: the interface for the kernel, the UAPI socket for userspace.
    fn control_iface(&self, h: &WgHandle) -> Result<InterfaceName, WgError> {
        let n = match self.kind {
            BackendKind::Kernel => &h.ifname,
            BackendKind::Userspace => &h.control_name,
        };
        n.parse().map_err(|_| WgError::Control {
            op: "name",
            link: n.clone(),
            msg: "not a valid interface name (1-15 bytes, no '/' or whitespace)".into(),
        })
    }

    /// Runs `f` in the handle's namespace (kernel: netlink is per namespace) or here (userspace: UAPI socket).
    fn in_netns<T: Send + 'static>(
        &self,
        h: &WgHandle,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        match (&self.kind, &h.netns) {
            (BackendKind::Userspace, _) | (_, Netns::Current) => f().map_err(|e| e.to_string()),
            (BackendKind::Kernel, Netns::Path(p)) => {
                let p = p.clone();
                std::thread::spawn(move || -> Result<T, String> {
                    let file = std::fs::File::open(&p).map_err(|e| format!("open {}: {e}", p.display()))?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("setns {}: {e}", p.display()))?;
                    f().map_err(|e| e.to_string())
                })
                .join()
                .map_err(|_| "netlink thread panicked".to_string())?
            }
        }
    }
}

fn backend(kind: BackendKind) -> Backend {
    match kind {
        BackendKind::Kernel => Backend::Kernel,
        BackendKind::Userspace => Backend::Userspace,
    }
}

/// Reads a link's alias (the control name recorded at creation), if any.
pub fn link_alias(ns: &Netns, ifname: &str) -> Result<Option<String>, CmdError> {
    let v = ns.ip_json(&["link", "show", "dev", ifname])?;
    Ok(v.as_array()
        .and_then(|a| a.first())
        .and_then(|l| l["ifalias"].as_str())
        .map(str::to_string))
}

/// IP of an endpoint for the pod's peer.
pub fn endpoint(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// `wireguard-go` returns once its background child is started, but the child still looks the TUN device
/// up by name in *this* namespace. Moving the link before that makes the child exit and the link vanish.
/// The child answers on its UAPI socket only after that lookup, so an answered `get` means it is safe.
fn wait_userspace_ready(control_name: &str) -> Result<(), WgError> {
    let name: InterfaceName = control_name.parse().map_err(|_| WgError::Control {
        op: "name",
        link: control_name.into(),
        msg: "not a valid interface name (1-15 bytes, no '/' or whitespace)".into(),
    })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Device::get(&name, Backend::Userspace) {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(WgError::Control {
                    op: "wait for wireguard-go",
                    link: control_name.into(),
                    msg: format!("no answer on its UAPI socket within 5s: {e}"),
                });
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
    }
}

/// What a device currently has: its key, its port, and its peers with their counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStats {
    /// Public key of the device's private key, if set.
    pub public_key: Option<String>,
    /// Listen port.
    pub listen_port: Option<u16>,
    /// Peers.
    pub peers: Vec<PeerStats>,
}

/// One peer's configuration and counters, as read for health checks and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer as configured now (its endpoint: a pod's, the gateway frontend; a gateway's, where the pod was
    /// last heard from).
    pub peer: PeerSpec,
    /// Persistent keepalive interval (seconds), if set.
    pub persistent_keepalive: Option<u16>,
    /// Bytes received from the peer (handshakes included).
    pub rx_bytes: u64,
    /// Bytes sent to the peer (handshakes included).
    pub tx_bytes: u64,
    /// Time of the last completed handshake, if any.
    pub last_handshake: Option<std::time::SystemTime>,
}

impl WireGuard {
    /// Every peer of a device with its counters.
    pub fn peer_stats(&self, h: &WgHandle) -> Result<Vec<PeerStats>, WgError> {
        self.device_stats(h).map(|d| d.peers)
    }

    /// The device's public key, listen port and every peer with its counters, in one read.
    pub fn device_stats(&self, h: &WgHandle) -> Result<DeviceStats, WgError> {
        let name = self.control_iface(h)?;
        let kind = self.kind;
        let dev = self
            .in_netns(h, move || Device::get(&name, backend(kind)))
            .map_err(|msg| WgError::Control {
                op: "read",
                link: h.ifname.clone(),
                msg,
            })?;
        let peers = dev
            .peers
            .iter()
            .map(|p| PeerStats {
                peer: PeerSpec {
                    public_key: p.config.public_key.to_base64(),
                    endpoint: p.config.endpoint,
                    allowed_ips: p
                        .config
                        .allowed_ips
                        .iter()
                        .filter_map(|a| IpNet::new(a.address, a.cidr).ok())
                        .collect(),
                },
                persistent_keepalive: p.config.persistent_keepalive_interval,
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
                last_handshake: p.stats.last_handshake_time,
            })
            .collect();
        Ok(DeviceStats {
            public_key: dev.public_key.map(|k| k.to_base64()),
            listen_port: dev.listen_port,
            peers,
        })
    }

    /// Makes the device start a new handshake with `peer` at its next packet: the peer is removed and added
    /// again with the same endpoint, allowed IPs and keepalive, in one configuration call. Its session keys go
    /// with it, so the next packet the device sends (the caller only does this while the device is sending)
    /// starts a handshake to the endpoint instead of waiting for WireGuard's own timers
    /// (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT, 15 s). Packets sent in the meantime are queued until the handshake
    /// completes, as for any new peer.
    pub fn restart_session(&self, h: &WgHandle, peer: &PeerStats) -> Result<(), WgError> {
        let (key, ips) = peer.peer.key_and_ips("restart session", &h.ifname)?;
        let name = self.control_iface(h)?;
        if self.kind == BackendKind::Userspace {
            // Not through `DeviceUpdate::apply`: for a socket that is gone (the pod was just deleted) it
            // would start a new wireguard-go under that name.
            return uapi_set(&h.control_name, &restart_session_uapi(peer, key.as_bytes())).map_err(|msg| {
                WgError::Control {
                    op: "restart session",
                    link: h.ifname.clone(),
                    msg,
                }
            });
        }
        let mut again = PeerConfigBuilder::new(&key).add_allowed_ips(&ips);
        if let Some(e) = peer.peer.endpoint {
            again = again.set_endpoint(e);
        }
        if let Some(k) = peer.persistent_keepalive {
            again = again.set_persistent_keepalive_interval(k);
        }
        let u = DeviceUpdate::new().remove_peer_by_key(&key).add_peer(again);
        let kind = self.kind;
        self.in_netns(h, move || u.apply(&name, backend(kind)))
            .map_err(|msg| WgError::Control {
                op: "restart session",
                link: h.ifname.clone(),
                msg,
            })
    }
}

/// Control names of the userspace (`wireguard-go`) devices whose name starts with `prefix`, from the UAPI
/// sockets in `dir` (`/var/run/wireguard`). Sorted; empty when the directory does not exist.
pub fn userspace_devices(dir: &Path, prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".sock")?;
            stem.starts_with(prefix).then(|| stem.to_string())
        })
        .collect();
    out.sort();
    out
}

/// Directory of the userspace backend's UAPI sockets (as `wireguard-control` and `wg` pick it).
pub fn userspace_socket_dir() -> std::path::PathBuf {
    let var = Path::new("/var/run/wireguard");
    if var.exists() {
        var.to_path_buf()
    } else {
        Path::new("/run/wireguard").to_path_buf()
    }
}

/// The UAPI `set` request that removes `peer` and adds it back unchanged (see [`WireGuard::restart_session`]).
fn restart_session_uapi(peer: &PeerStats, key: &[u8]) -> String {
    use std::fmt::Write as _;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut req = format!("set=1\npublic_key={hex}\nremove=true\npublic_key={hex}\n");
    if let Some(e) = peer.peer.endpoint {
        let _ = writeln!(req, "endpoint={e}");
    }
    if let Some(k) = peer.persistent_keepalive {
        let _ = writeln!(req, "persistent_keepalive_interval={k}");
    }
    for ip in &peer.peer.allowed_ips {
        let _ = writeln!(req, "allowed_ip={ip}");
    }
    req.push('\n');
    req
}

/// Sends one UAPI `set` request to an existing `wireguard-go` socket and checks its `errno=0` answer.
fn uapi_set(control_name: &str, request: &str) -> Result<(), String> {
    use std::io::{BufRead as _, Write as _};
    let path = userspace_socket_dir().join(format!("{control_name}.sock"));
    let mut sock = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| format!("connect {}: {e}", path.display()))?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    sock.write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    for line in std::io::BufReader::new(sock).lines() {
        let line = line.map_err(|e| format!("read: {e}"))?;
        if let Some(errno) = line.strip_prefix("errno=") {
            return if errno == "0" {
                Ok(())
            } else {
                Err(format!("wireguard-go answered errno={errno}"))
            };
        }
        if line.is_empty() {
            break;
        }
    }
    Err("wireguard-go closed the socket without an errno".into())
}

#[cfg(test)]
mod restart_tests {
    use super::*;

    #[test]
    fn restart_session_request_removes_then_re_adds_the_same_peer() {
        let peer = PeerStats {
            peer: PeerSpec {
                public_key: String::new(),
                endpoint: Some("10.0.0.4:6000".parse().expect("endpoint")),
                allowed_ips: vec!["0.0.0.0/0".parse().expect("net"), "::/0".parse().expect("net")],
            },
            persistent_keepalive: None,
            rx_bytes: 1,
            tx_bytes: 2,
            last_handshake: None,
        };
        let req = restart_session_uapi(&peer, &[0xab, 0x01]);
        assert_eq!(
            req,
            "set=1\npublic_key=ab01\nremove=true\npublic_key=ab01\nendpoint=10.0.0.4:6000\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0\n\n"
        );
    }

    #[test]
    fn userspace_needs_the_tun_device_and_kernel_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("tun");
        let err = BackendKind::Userspace
            .check_usable(&missing)
            .expect_err("no TUN device");
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(
            err.contains("unless gatewayDaemonManager.wireguardBackend is kernel"),
            "{err}"
        );
        assert_eq!(BackendKind::Kernel.check_usable(&missing), Ok(()));
        std::fs::write(&missing, "").expect("stand-in device");
        assert_eq!(BackendKind::Userspace.check_usable(&missing), Ok(()));
    }

    #[test]
    fn userspace_devices_lists_matching_sockets_sorted() {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in ["wgpb.sock", "wgpa.sock", "wgga.sock", "wgpc.name", "other"] {
            std::fs::write(dir.path().join(f), "").expect("write");
        }
        assert_eq!(userspace_devices(dir.path(), "wgp"), vec!["wgpa", "wgpb"]);
        assert!(userspace_devices(&dir.path().join("missing"), "wgp").is_empty());
    }
}
