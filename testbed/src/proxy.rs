//! A TCP proxy that a test can stall: while stalled, bytes stop flowing both ways and connections stay open,
//! as when a server stops answering (new connections are still accepted, so a client's connect timeout does
//! not fire; its request and read timeouts do). No real server does that on demand; tests put this in front
//! of one (TLS passes through untouched, so a client keeps verifying the server's certificate).

use std::net::SocketAddr;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A proxy on 127.0.0.1 forwarding every connection to `upstream`; dropping it closes every connection.
#[derive(Debug)]
pub struct StallableProxy {
    addr: SocketAddr,
    stalled: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl StallableProxy {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let addr = listener.local_addr().context("the proxy's address")?;
        let (stalled, stalled_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every connection's pumps.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        // A listener that fails (out of descriptors) ends the proxy: its clients then fail
                        // visibly instead of the loop spinning.
                        let Ok((client, _)) = accepted else { break };
                        let stalled = stalled_rx.clone();
                        connections.spawn(async move {
                            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
                            let (client_read, client_write) = client.into_split();
                            let (server_read, server_write) = server.into_split();
                            tokio::join!(
                                pump(client_read, server_write, stalled.clone()),
                                pump(server_read, client_write, stalled),
                            );
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(StallableProxy { addr, stalled, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forwards nothing from now on until [`resume`](Self::resume): each direction holds the chunk it read last,
    /// and the rest waits in the sockets' buffers.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwards again, held bytes first.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// `config` with its API server reached through a new proxy (kept alive by the returned value). For URLs of
    /// the form `https://<IP>:<port>`, as both test API servers have: a host name would need `tls_server_name`.
    pub async fn in_front_of(mut config: kube::Config) -> anyhow::Result<(kube::Config, StallableProxy)> {
        let url = &config.cluster_url;
        let host = url.host().context("the API server URL has no host")?;
        let port = url.port_u16().context("the API server URL has no port")?;
        let upstream = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let proxy = StallableProxy::start(upstream).await?;
        config.cluster_url = format!("{}://{}", url.scheme_str().unwrap_or("https"), proxy.addr())
            .parse()
            .context("the proxied URL")?;
        Ok((config, proxy))
    }
}

impl Drop for StallableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while the proxy is stalled.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut stalled: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
