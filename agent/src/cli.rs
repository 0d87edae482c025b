//! The agent process (`--mode gateway|node`): its flags, the servers and loops each mode runs, and how it
//! stops. `main.rs` hands [`Args`] to [`daemon::main`], which parses them and runs them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::admin::{self, AdminState};
use crate::cniconf::{ConfManager, should_uninstall};
use crate::gateway::apply::GatewayApplier;
use crate::gateway::probe::{self, ProbeState};
use crate::gateway::run::GatewayLoop;
use crate::gateway::select::NodeSettings;
use crate::gateway::tunnels::{TunnelReader, TunnelView, drain, run_metrics};
use crate::node::kube_cluster::{KubeCluster, remove_cni_taint, uninstall_setting, watch_gateway_keys};
use crate::node::peer_watch::{self, WatchSettings};
use anyhow::Context as _;
use clap::ValueEnum;
use dataplane::netns::Netns;
use dataplane::wg::{BackendKind, WireGuard};
use futures::FutureExt as _;
use tokio::sync::watch;

/// Drain delay when the flag is absent or 0 (upstream #1347).
const DEFAULT_DRAIN_DELAY_SECONDS: u64 = 10;
/// A draining gateway whose pods sent nothing for this long (after the load balancer saw a 503) has no pods.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Terminate pods' tunnels and SNAT to the egress IP (gateway node pools).
    Gateway,
    /// Serve the CNI plugin and install its configuration (every node).
    Node,
}

/// The agent's flags (upstream's where upstream has one).
#[derive(Debug, clap::Parser)]
#[command(name = "kube-egress-gateway-agent", version, about)]
pub struct Args {
    /// What this agent does on its node.
    #[arg(long, env = "AGENT_MODE", value_enum)]
    pub mode: Mode,
    /// This node's Kubernetes name.
    #[arg(long, env = "MY_NODE_NAME")]
    pub node_name: String,
    /// The agent's namespace (GatewayStatus, cni-uninstall ConfigMap).
    #[arg(long, env = "MY_POD_NAMESPACE")]
    pub namespace: String,
    /// Namespace of the gateway key Secrets (default: the agent's namespace).
    #[arg(long, env = "SECRET_NAMESPACE")]
    pub secret_namespace: Option<String>,
    /// Port of /metrics, /healthz, /readyz on all addresses (upstream's flag).
    #[arg(long, env = "METRICS_BIND_PORT", default_value_t = 8080)]
    pub metrics_bind_port: u16,
    /// Full address for /metrics instead of `0.0.0.0:<metrics-bind-port>` (tests, loopback-only setups).
    #[arg(long, env = "METRICS_BIND_ADDRESS")]
    pub metrics_bind_address: Option<SocketAddr>,
    /// Port of /healthz and /readyz for the kubelet (same handlers as on the metrics port).
    #[arg(long, env = "HEALTH_PROBE_BIND_PORT", default_value_t = 8081)]
    pub health_probe_bind_port: u16,
    /// Full address for the health endpoints instead of `0.0.0.0:<health-probe-bind-port>`.
    #[arg(long, env = "HEALTH_PROBE_BIND_ADDRESS")]
    pub health_probe_bind_address: Option<SocketAddr>,
    /// Gateway mode: load-balancer probe port (`/gw/<uid>`).
    #[arg(long, env = "GATEWAY_LB_PROBE_PORT", default_value_t = api::names::DEFAULT_LB_PROBE_PORT)]
    pub gateway_lb_probe_port: u16,
    /// Gateway mode: on SIGTERM the probe answers 503 and the agent keeps its node forwarding until its pods
    /// have moved to other gateways, at most this many seconds (0 means the default, as upstream).
    #[arg(long, env = "LB_PROBE_DRAIN_DELAY_SECONDS", default_value_t = DEFAULT_DRAIN_DELAY_SECONDS)]
    pub lb_probe_drain_delay_seconds: u64,
    /// Azure Instance Metadata Service base URL (the lab serves a fake).
    #[arg(long, env = "IMDS_ENDPOINT", default_value = "http://169.254.169.254")]
    pub imds_endpoint: String,
    /// Gateway mode: gateway network namespace.
    #[arg(long, env = "GATEWAY_NETNS", default_value = api::names::GATEWAY_NETNS)]
    pub netns_name: String,
    /// Gateway mode: host interface that receives load-balancer traffic.
    #[arg(long, env = "HOST_INTERFACE", default_value = "eth0")]
    pub host_interface: String,
    /// WireGuard backend: kernel, userspace (wireguard-go) or auto.
    #[arg(long, env = "WIREGUARD_BACKEND", default_value = "auto")]
    pub wireguard_backend: String,
    /// Gateway mode: quiet time (ms) collecting watch events into one apply.
    #[arg(long, env = "APPLY_DEBOUNCE_MS", default_value_t = 200)]
    pub apply_debounce_ms: u64,
    /// Gateway mode: full re-apply interval without events (seconds).
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,
    /// Node mode: CNI configuration directory.
    #[arg(long, env = "CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Node mode: our conflist's file name.
    #[arg(long, env = "CNI_CONF_FILE", default_value = api::names::CNI_CONF_FILE)]
    pub cni_conf_file: String,
    /// Node mode: unix socket the CNI plugin talks to (mode 0600).
    #[arg(long, visible_alias = "socket-path", env = "CNI_SOCKET", default_value = dataplane::client::DEFAULT_SOCKET)]
    pub cni_socket: PathBuf,
    /// Node mode: CIDRs that bypass the gateway for every pod.
    #[arg(long, env = "EXCEPTION_CIDRS", value_delimiter = ',', default_values_t = api::names::DEFAULT_EXCEPTION_CIDRS.map(String::from))]
    pub exception_cidrs: Vec<String>,
    /// Node mode: ConfigMap whose `data.uninstall` decides whether our conflist is removed on shutdown.
    #[arg(long, env = "CNI_UNINSTALL_CONFIGMAP_NAME", default_value = api::names::CNI_UNINSTALL_CONFIGMAP)]
    pub cni_uninstall_configmap_name: String,
    /// Node mode: poll interval of the CNI configuration directory (ms).
    #[arg(long, env = "CNI_CONF_POLL_MS", default_value_t = 1000)]
    pub cni_conf_poll_ms: u64,
    /// Node mode: restart a pod's tunnel session when it sends without hearing back (fast failover), and give
    /// pods their gateway's current key after a key rotation.
    #[arg(long, env = "POD_TUNNEL_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub pod_tunnel_watch: bool,
    /// Node mode: where the pods' network namespaces are, for pods on kernel WireGuard (absent: userspace pods
    /// only, found by their sockets in /var/run/wireguard).
    #[arg(long, env = "POD_NETNS_DIR")]
    pub pod_netns_dir: Option<PathBuf>,
}

/// Why the agent stops: a signal (graceful) or an essential task that failed, such as a server that could not
/// bind. A failure ends the process non-zero, so kubelet restarts it and the failure is visible, instead of the
/// agent reporting ready while it cannot serve the CNI plugin or the load balancer's probe.
struct StopReasons {
    failures: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl StopReasons {
    /// Waits for a signal (`None`) or the first essential failure (`Some(message)`).
    async fn wait(&mut self) -> Option<String> {
        tokio::select! {
            _ = daemon::shutdown_signal() => None,
            Some(failure) = self.failures.recv() => Some(failure),
        }
    }
}

impl daemon::Daemon for Args {
    /// Runs the agent in its mode until SIGTERM or Ctrl-C (then drains) or until an essential task fails.
    async fn run(self) -> anyhow::Result<()> {
        let args = &self;
        let client = kube::Client::try_default()
            .await
            .context("cannot build a Kubernetes client")?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (failures, failures_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut ctx = RunContext {
            args,
            client,
            admin_state: AdminState::default(),
            stop_tx,
            stop_rx,
            failures,
            stop: StopReasons {
                failures: failures_rx,
            },
            tasks: tokio::task::JoinSet::new(),
        };
        let any = |port: u16| SocketAddr::from(([0, 0, 0, 0], port));
        for (what, addr) in [
            (
                "metrics server",
                args.metrics_bind_address.unwrap_or(any(args.metrics_bind_port)),
            ),
            (
                "health server",
                args.health_probe_bind_address
                    .unwrap_or(any(args.health_probe_bind_port)),
            ),
        ] {
            let server =
                daemon::http::serve(addr, admin::router(ctx.admin_state.clone()), ctx.stop_rx.clone());
            ctx.spawn_essential(what, server);
        }
        let failure = match args.mode {
            Mode::Gateway => ctx.run_gateway().await?,
            Mode::Node => ctx.run_node().await?,
        };
        while let Some(r) = ctx.tasks.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "task ended with an error");
            }
        }
        if let Some(failure) = failure {
            tracing::error!(error = %failure, "stopped after a failure");
            anyhow::bail!("{failure}");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// What both modes share: the flags, the cluster client, the admin servers' state, and the tasks with how
/// they stop.
struct RunContext<'a> {
    args: &'a Args,
    client: kube::Client,
    admin_state: AdminState,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    failures: tokio::sync::mpsc::UnboundedSender<String>,
    stop: StopReasons,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
}

impl RunContext<'_> {
    /// Spawns a task whose error stops the agent (see [`StopReasons`]).
    fn spawn_essential(
        &mut self,
        what: &'static str,
        task: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let failures = self.failures.clone();
        self.tasks.spawn(async move {
            let r = task.await;
            if let Err(e) = &r {
                let _ = failures.send(format!("{what}: {e:#}"));
            }
            r
        });
    }

    /// Runs gateway mode until a signal or an essential failure (returned).
    async fn run_gateway(&mut self) -> anyhow::Result<Option<String>> {
        let args = self.args;
        let admin_state = self.admin_state.clone();
        let stop_rx = self.stop_rx.clone();
        let identity = crate::imds::fetch(&args.imds_endpoint, Duration::from_secs(10))
            .await
            .context("reading the node's identity from IMDS")?;
        tracing::info!(computer_name = %identity.computer_name, vmss = %identity.vmss_name, "node identity");
        let backend = BackendKind::parse(&args.wireguard_backend).map_err(anyhow::Error::msg)?;
        backend
            .check_usable(std::path::Path::new("/dev/net/tun"))
            .map_err(anyhow::Error::msg)?;
        let probe_state = ProbeState::default();
        self.spawn_essential(
            "load-balancer probe server",
            daemon::http::serve(
                SocketAddr::from(([0, 0, 0, 0], args.gateway_lb_probe_port)),
                probe::router(probe_state.clone()),
                stop_rx.clone(),
            ),
        );
        let tunnels = TunnelReader {
            wg: WireGuard::new(backend),
            netns: Netns::named(&args.netns_name),
            view: TunnelView::default(),
        };
        self.tasks.spawn(
            run_metrics(
                tunnels.clone(),
                admin_state.metrics.clone(),
                Duration::from_secs(5),
                stop_rx.clone(),
            )
            .map(Ok),
        );
        let lp = GatewayLoop {
            node_name: args.node_name.clone(),
            agent_namespace: args.namespace.clone(),
            secret_namespace: args
                .secret_namespace
                .clone()
                .unwrap_or_else(|| args.namespace.clone()),
            settings: NodeSettings {
                identity,
                netns_name: args.netns_name.clone(),
            },
            applier: std::sync::Arc::new(GatewayApplier {
                host: Netns::Current,
                netns_name: args.netns_name.clone(),
                host_interface: args.host_interface.clone(),
                wg: WireGuard::new(backend),
            }),
            probe: probe_state.clone(),
            tunnels: tunnels.view.clone(),
            metrics: admin_state.metrics.clone(),
            ready: admin_state.ready.clone(),
            debounce: Duration::from_millis(args.apply_debounce_ms),
            resync: Duration::from_secs(args.resync_seconds.max(1)),
        };
        let loop_task = tokio::spawn(lp.run(self.client.clone(), stop_rx));
        let failure = self.stop.wait().await;
        probe_state.drain();
        admin_state.draining.store(true, Ordering::Release);
        if failure.is_none() {
            // Drain: the load balancer sees 503 and moves the flows to other gateways; we keep forwarding until the
            // pods' traffic has stopped arriving (they re-handshook there), at most the drain delay. With kernel
            // WireGuard the data plane stays in place (the kernel keeps forwarding after we exit); wireguard-go's
            // tunnels are processes of this container and end with it (docs/dataplane.md, "On SIGTERM").
            let delay = match args.lb_probe_drain_delay_seconds {
                0 => DEFAULT_DRAIN_DELAY_SECONDS,
                d => d,
            };
            admin_state.metrics.gateway_draining.set(1);
            tracing::info!(
                max_seconds = delay,
                "shutting down: probe answers 503; forwarding until the pods have moved"
            );
            let end = drain(&tunnels, &probe_state, DRAIN_QUIET, Duration::from_secs(delay)).await;
            tracing::info!(?end, "drain finished");
        }
        let _ = self.stop_tx.send(true);
        let _ = loop_task.await;
        Ok(failure)
    }

    /// Runs node mode until a signal or an essential failure (returned).
    async fn run_node(&mut self) -> anyhow::Result<Option<String>> {
        let args = self.args;
        let admin_state = self.admin_state.clone();
        let stop_rx = self.stop_rx.clone();
        let metrics = admin_state.metrics.clone();
        let cluster = KubeCluster::new(self.client.clone(), metrics.clone());
        let socket = args.cni_socket.clone();
        let mut grpc_stop = stop_rx.clone();
        self.spawn_essential("CNI socket server", async move {
            crate::node::serve_unix(&socket, cluster, async move {
                let _ = grpc_stop.wait_for(|v| *v).await;
            })
            .await
            .map_err(anyhow::Error::from)
        });
        if args.pod_tunnel_watch {
            let devices = peer_watch::Devices {
                socket_dir: dataplane::wg::userspace_socket_dir(),
                netns_dir: args.pod_netns_dir.clone(),
                skip_netns: args.netns_name.clone(),
            };
            let (keys_tx, keys_rx) = watch::channel(Default::default());
            self.tasks
                .spawn(watch_gateway_keys(self.client.clone(), keys_tx, stop_rx.clone()).map(Ok));
            self.tasks.spawn(
                peer_watch::run(
                    WatchSettings::default(),
                    devices,
                    keys_rx,
                    metrics.clone(),
                    stop_rx.clone(),
                )
                .map(Ok),
            );
        }
        let conf = ConfManager {
            dir: args.cni_conf_dir.clone(),
            file_name: args.cni_conf_file.clone(),
            entry: crate::node::plugin_entry(&args.exception_cidrs, &args.cni_socket),
        };
        let (installed_tx, mut installed_rx) = watch::channel(false);
        let conf_task = tokio::spawn(conf.clone().run(
            Duration::from_millis(args.cni_conf_poll_ms.max(10)),
            metrics.clone(),
            installed_tx,
            admin_state.not_ready.clone(),
            stop_rx.clone(),
        ));
        // Once installed: ready, and the node may take pods.
        let node = args.node_name.clone();
        let taint_client = self.client.clone();
        let ready = admin_state.ready.clone();
        let taint_metrics = metrics.clone();
        let mut taint_stop = stop_rx.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                r = installed_rx.wait_for(|v| *v) => { if r.is_err() { return Ok(()); } }
                _ = taint_stop.wait_for(|v| *v) => return Ok(()),
            }
            ready.store(true, Ordering::Release);
            let mut backoff = Duration::from_secs(1);
            loop {
                match remove_cni_taint(&taint_client, &node).await {
                    Ok(removed) => {
                        if removed {
                            tracing::info!(node = %node, "removed taint {}", api::names::CNI_NOT_READY_TAINT);
                        }
                        return Ok(());
                    }
                    Err(e) => {
                        taint_metrics
                            .node_taint_failures
                            .get_or_create(&crate::metrics::NodeLabels { node: node.clone() })
                            .inc();
                        tracing::warn!(error = %e, reason = e.reason(), "removing the cni-not-ready taint");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = taint_stop.wait_for(|v| *v) => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
        let failure = self.stop.wait().await;
        tracing::info!("shutting down");
        admin_state.draining.store(true, Ordering::Release);
        let _ = self.stop_tx.send(true);
        let _ = conf_task.await;
        match uninstall_setting(&self.client, &args.namespace, &args.cni_uninstall_configmap_name).await {
            Ok(setting) if should_uninstall(setting.as_ref().map(|o| o.as_deref())) => {
                if let Err(e) = conf.uninstall() {
                    metrics.cni_config_failed("uninstall");
                    tracing::error!(error = %e, "uninstalling the CNI configuration");
                } else {
                    tracing::info!(file = %conf.path().display(), "CNI configuration removed");
                }
            }
            Ok(_) => tracing::info!("keeping the CNI configuration"),
            Err(e) => {
                metrics.cni_config_failed("uninstall");
                tracing::error!(error = %e, "cannot read the uninstall ConfigMap; keeping the CNI configuration");
            }
        }
        Ok(failure)
    }
}
