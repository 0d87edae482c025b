//! Network-namespace plumbing the lab's steps and the fabric share: running `ip`, a program or a closure
//! inside a namespace, loopback forwarders that let components inside a VM reach the simulators, the per-node
//! IMDS relay, HTTP probes, the "internet" echo host and the source-address checks against it, and finding the
//! processes left in the lab's namespaces. The VMs' links and the load balancer are [`super::fabric`]'s.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Runs `ip` with `args`; the error carries its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    super::procs::run_checked(
        std::process::Command::new("ip").args(args),
        "running ip (iproute2)",
        format_args!("ip {}", args.join(" ")),
    )?;
    Ok(())
}

/// Runs `program args` in network namespace `ns` with `stdin`.
pub fn run_in(ns: &str, program: &str, args: &[&str], stdin: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} in {ns}"))?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("{program} in {ns}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} in {ns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Network namespace names (`ip netns`) that start with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Where `ip netns` keeps its named namespaces.
pub(super) const NETNS_DIR: &str = "/var/run/netns";

/// The file of `ip netns` namespace `name` (what `nsenter --net=` and `CNI_NETNS` take).
pub(super) fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Runs `f` on a thread inside network namespace `ns`.
pub(super) fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = netns_path(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// A TCP listener bound to `addr` inside network namespace `ns`, served by the lab's runtime.
pub fn tcp_listener_in(ns: &str, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let l = in_netns(ns, move || {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding TCP {addr}"))?;
        l.set_nonblocking(true).context("nonblocking")?;
        Ok(l)
    })
    .with_context(|| format!("in {ns}"))?;
    tokio::net::TcpListener::from_std(l).context("tokio listener")
}

/// Makes `127.0.0.1:<port>` inside `ns` reach `127.0.0.1:<port>` of the lab's own namespace (where the
/// simulators listen), so the components inside use the same URLs and certificates.
pub fn forward_loopback(ns: &str, port: u16) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tcp_listener_in(ns, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    Ok(tokio::spawn(async move {
        while let Ok((mut inside, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outside) =
                    tokio::net::TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                }
            });
        }
    }))
}

/// `GET http://<ip>:<port><path>` from inside `ns`: the HTTP status, or None when nothing answers within 1 s
/// (the fabric's health probe).
pub async fn probe_from(ns: &str, ip: Ipv4Addr, port: u16, path: &str) -> Option<u16> {
    http_get_in(ns, ip, port, path, Duration::from_secs(1))
        .await
        .map(|(status, _)| status)
}

/// The inode of network namespace `ns` (what `/proc/<pid>/ns/net` links to as `net:[<inode>]`).
pub fn netns_inode(ns: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(netns_path(ns)).ok().map(|m| m.ino())
}

/// Processes (pid, name) living in any of the network namespaces with these inodes.
pub fn processes_in(inodes: &[u64]) -> Vec<(i32, String)> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("net:[{i}]")).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(link) = std::fs::read_link(e.path().join("ns/net")) else {
            continue;
        };
        if wanted.iter().any(|w| link.as_os_str() == w.as_str()) {
            let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            out.push((pid, name.trim().to_string()));
        }
    }
    out
}

/// Serves IMDS at `http://127.0.0.1:<port>` inside `ns` (what the agent expects: a bare host) by passing every
/// request on to azure-sim's per-node IMDS under `/_imds/<node>`.
pub fn imds_for_node(
    ns: &str,
    azure: SocketAddr,
    node: &str,
) -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tcp_listener_in(ns, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let port = listener.local_addr().context("IMDS address")?.port();
    let prefix = format!("/_imds/{node}");
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let path = format!(
            "{prefix}{}",
            req.uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default()
        );
        async move {
            match http_get(azure, &path, &[("Metadata", "true")]).await {
                Some((status, body)) => (
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY),
                    [(http::header::CONTENT_TYPE, "application/json")],
                    body,
                ),
                None => (
                    http::StatusCode::BAD_GATEWAY,
                    [(http::header::CONTENT_TYPE, "text/plain")],
                    "azure-sim did not answer".to_string(),
                ),
            }
        }
    });
    Ok((
        port,
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }),
    ))
}

/// `GET path` over plain HTTP/1.0 to `addr` (in the lab's own namespace) with `headers`: (status, body), or
/// None when it does not answer.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The "internet" echo host's service, in namespace `ns` on each of `addrs` at `port`: UDP answers
/// `<source address> <payload>` and TCP writes `<source address>\n`, so a client learns the address it was seen
/// from. One socket per address, so a UDP answer comes from the address that was asked.
pub fn echo_server(
    ns: &str,
    addrs: &[Ipv4Addr],
    port: u16,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for addr in addrs {
        let at = SocketAddr::from((*addr, port));
        let (udp, tcp) = in_netns(ns, move || {
            let u = std::net::UdpSocket::bind(at).with_context(|| format!("binding UDP {at}"))?;
            u.set_nonblocking(true).context("nonblocking")?;
            let t = std::net::TcpListener::bind(at).with_context(|| format!("binding TCP {at}"))?;
            t.set_nonblocking(true).context("nonblocking")?;
            Ok((u, t))
        })?;
        let udp = tokio::net::UdpSocket::from_std(udp).context("tokio UDP socket")?;
        let tcp = tokio::net::TcpListener::from_std(tcp).context("tokio TCP listener")?;
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let mut reply = format!("{} ", from.ip()).into_bytes();
                reply.extend_from_slice(&buf[..n.min(256)]);
                let _ = udp.send_to(&reply, from).await;
            }
        }));
        tasks.push(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            while let Ok((mut s, from)) = tcp.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(format!("{}\n", from.ip()).as_bytes()).await;
                });
            }
        }));
    }
    Ok(tasks)
}

/// From inside `ns`, asks the UDP echo at `to` (resending every 200 ms until `timeout`) which source address it
/// saw.
pub async fn udp_source_seen(ns: &str, to: SocketAddr, timeout: Duration) -> Option<Ipv4Addr> {
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || {
        in_netns(&ns, move || {
            let s = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            let end = std::time::Instant::now() + timeout;
            let mut buf = [0u8; 512];
            while std::time::Instant::now() < end {
                // Sending fails while no route exists yet (e.g. before the tunnel is up); keep trying.
                let _ = s.send_to(b"who-am-i", to);
                if let Ok((n, from)) = s.recv_from(&mut buf)
                    && from == to
                {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    return Ok(text.split(' ').next().and_then(|a| a.parse().ok()));
                }
            }
            Ok(None)
        })
        .ok()
        .flatten()
    })
    .await
    .ok()
    .flatten()
}

/// From inside `ns`, asks the TCP echo at `to` which source address it saw: a new connection (2 s each) until
/// one answers or `timeout` passes, as the UDP check resends (a first SYN can meet a tunnel still settling).
pub async fn tcp_source_seen(ns: &str, to: SocketAddr, timeout: Duration) -> Option<Ipv4Addr> {
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || {
        in_netns(&ns, move || {
            use std::io::Read as _;
            let end = std::time::Instant::now() + timeout;
            loop {
                let attempt = (|| -> std::io::Result<Option<Ipv4Addr>> {
                    let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
                    c.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut out = String::new();
                    c.read_to_string(&mut out)?;
                    Ok(out.trim().parse().ok())
                })();
                match attempt {
                    Ok(Some(a)) => return Ok(Some(a)),
                    _ if std::time::Instant::now() >= end => return Ok(None),
                    // Poll interval, so a refused connection does not spin.
                    _ => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })
        .ok()
        .flatten()
    })
    .await
    .ok()
    .flatten()
}

/// `GET http://<ip>:<port><path>` from inside `ns`: (status, body), or None when nothing answers.
pub async fn get_from(ns: &str, ip: Ipv4Addr, port: u16, path: &str) -> Option<(u16, String)> {
    http_get_in(ns, ip, port, path, Duration::from_secs(2)).await
}

/// One HTTP/1.0 GET from inside `ns`, waiting at most `read_timeout` for the answer.
async fn http_get_in(
    ns: &str,
    ip: Ipv4Addr,
    port: u16,
    path: &str,
    read_timeout: Duration,
) -> Option<(u16, String)> {
    let (ns, path) = (ns.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || {
        in_netns(&ns, move || {
            use std::io::{Read as _, Write as _};
            let mut c = std::net::TcpStream::connect_timeout(
                &SocketAddr::from((ip, port)),
                Duration::from_millis(500),
            )?;
            c.set_read_timeout(Some(read_timeout))?;
            c.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())?;
            let mut out = String::new();
            c.read_to_string(&mut out)?;
            let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out.as_str(), ""));
            Ok(head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .map(|code| (code, body.to_string())))
        })
        .ok()
        .flatten()
    })
    .await
    .ok()
    .flatten()
}

/// The nft table that cuts a VM off (see [`cut_off`]).
const CUT_TABLE: &str = "kube-egress-lab-cut";

/// Cuts VM namespace `ns` off the network, as a VM that lost power looks from outside: every packet in or
/// out is dropped before anything else sees it (its processes, links and addresses stay, so [`reconnect`]
/// brings it back as it was).
pub fn cut_off(ns: &str) -> anyhow::Result<()> {
    run_in(
        ns,
        "nft",
        &["-f", "-"],
        &format!(
            "table inet {CUT_TABLE} {{\n  chain in {{ type filter hook prerouting priority -500; policy drop; }}\n  chain out {{ type filter hook output priority -500; policy drop; }}\n}}\n"
        ),
    )
}

/// Undoes [`cut_off`].
pub fn reconnect(ns: &str) -> anyhow::Result<()> {
    run_in(ns, "nft", &["delete", "table", "inet", CUT_TABLE], "")
}
