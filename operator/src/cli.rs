//! The operator process: its flags and what runs until SIGTERM (the probe and metrics servers, leader
//! election, the work loop). `main.rs` hands [`Args`] to [`daemon::main`], which parses them and runs them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::azure::{Arm, RetryBudget, Timeouts};
use crate::config::CloudConfig;
use crate::leader::{LEASE_NAME, LeaseLock};
use crate::metrics::Metrics;
use crate::pass::Operator;
use crate::run::{self, RunOptions};

/// Flags are upstream's (`kube-egress-gateway-controller`), so existing manifests keep working.
#[derive(Debug, clap::Parser)]
#[command(name = "kube-egress-gateway-operator", version)]
pub struct Args {
    /// Azure cloud config (upstream's JSON).
    #[arg(
        long,
        env = "CLOUD_CONFIG",
        default_value = "/etc/kubernetes/kube-egress-gateway/azure.json"
    )]
    pub cloud_config: String,
    /// Port of /metrics.
    #[arg(long, env = "METRICS_BIND_PORT", default_value_t = 8080)]
    pub metrics_bind_port: u16,
    /// Port of /healthz and /readyz.
    #[arg(long, env = "HEALTH_PROBE_BIND_PORT", default_value_t = 8081)]
    pub health_probe_bind_port: u16,
    /// Port of the gateway agents' load-balancer health probe.
    #[arg(long, env = "GATEWAY_LB_PROBE_PORT", default_value_t = api::names::DEFAULT_LB_PROBE_PORT)]
    pub gateway_lb_probe_port: u16,
    /// Run leader election (for more than one replica).
    #[arg(long, env = "LEADER_ELECT", default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "MY_POD_NAMESPACE", default_value = "kube-egress-gateway-system")]
    pub leader_election_namespace: String,
    /// Namespace of the WireGuard key Secrets.
    #[arg(long, env = "MY_POD_NAMESPACE", default_value = "kube-egress-gateway-system")]
    pub secret_namespace: String,
    /// /healthz fails (and kubelet restarts the operator) when a reconcile pass goes this many seconds without
    /// progress: no pool finished and no ARM call returned. At least 60.
    #[arg(
        long,
        env = "STUCK_PASS_SECONDS",
        default_value_t = crate::pass::DEFAULT_LIVENESS_BOUND.as_secs(),
        value_parser = clap::value_parser!(u64).range(60..)
    )]
    pub stuck_pass_seconds: u64,
    /// On SIGTERM the pool being reconciled may finish for at most this many seconds before the Lease is
    /// released; keep it below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 7)]
    pub shutdown_grace_seconds: u64,
}

impl daemon::Daemon for Args {
    /// Runs the operator until SIGTERM or Ctrl-C; errors are start-up failures (config, Azure, Kubernetes, a
    /// taken port) or a server or the work loop that ended on its own.
    async fn run(self) -> anyhow::Result<()> {
        let args = self;
        let text = std::fs::read_to_string(&args.cloud_config)
            .with_context(|| format!("reading the cloud config {}", args.cloud_config))?;
        let cfg = CloudConfig::parse(&text, |k| std::env::var(k).ok())
            .with_context(|| format!("cloud config {}", args.cloud_config))?;
        tracing::info!(subscription = %cfg.subscription_id, resource_group = %cfg.resource_group, "cloud config loaded");

        let metrics = Metrics::new();
        let timeouts = Timeouts::default();
        let credential = crate::azure::credential(&cfg, &timeouts)?;
        let arm = Arm::new(&cfg, credential, RetryBudget::default(), &timeouts, &metrics)?;
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes")?;
        let op = Operator::new(
            client.clone(),
            arm,
            cfg,
            args.secret_namespace.clone(),
            args.leader_election_namespace.clone(),
            i32::from(args.gateway_lb_probe_port),
            metrics.clone(),
        )
        .with_liveness_bound(Duration::from_secs(args.stuck_pass_seconds));
        let op = Arc::new(op);

        // A taken port ends the start-up with the address in the error.
        let metrics_listener =
            daemon::http::bind(SocketAddr::from(([0, 0, 0, 0], args.metrics_bind_port))).await?;
        let health_listener =
            daemon::http::bind(SocketAddr::from(([0, 0, 0, 0], args.health_probe_bind_port))).await?;
        let (stop_servers, servers_stopping) = tokio::sync::watch::channel(false);
        let stop_servers = Arc::new(stop_servers);
        let (stop_work, work_stopping) = tokio::sync::watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));
        let mut tasks = daemon::tasks::Essential::default();
        tasks.spawn(
            "metrics server",
            daemon::http::serve_on(
                metrics_listener,
                daemon::http::metrics_router(move || metrics.encode()),
                servers_stopping.clone(),
            ),
        );
        tasks.spawn(
            "health server",
            daemon::http::serve_on(
                health_listener,
                health_router(&op, ready.clone()),
                servers_stopping,
            ),
        );
        let lock = args.leader_elect.then(|| {
            let identity = std::env::var("HOSTNAME").unwrap_or_else(|_| uuid::Uuid::new_v4().to_string());
            LeaseLock::new(
                client,
                &args.leader_election_namespace,
                LEASE_NAME,
                &identity,
                Duration::from_secs(15),
            )
        });
        let grace = Duration::from_secs(args.shutdown_grace_seconds);
        let stop_servers_after_work = stop_servers.clone();
        tasks.spawn("work loop", async move {
            let mut work_stopping = work_stopping;
            let stop = async move {
                let _ = work_stopping.wait_for(|stop| *stop).await;
            };
            let ended = run::run_until(op, lock, ready, RunOptions::default(), grace, stop).await;
            // The servers answer probes and scrapes until the work loop has stopped. After a failure they
            // stay until it is reported, so that the report names the work loop, not a server it stopped.
            if ended.is_ok() {
                stop_servers_after_work.send_replace(true);
            }
            ended
        });

        // A failure is logged where it is found, and ends the process non-zero once the rest has stopped.
        let stopped = tasks.until(daemon::shutdown_signal()).await;
        match &stopped {
            Ok(()) => tracing::info!("shutting down"),
            // The work loop then stops (it may be what ended) and the servers with it.
            Err(_) => {
                stop_servers.send_replace(true);
            }
        }
        stop_work.send_replace(true);
        tasks.join().await;
        stopped
    }
}

/// `/readyz`: the work loop's caches are filled (`ready`); `/healthz`: no pass is stuck (see
/// [`Operator::heartbeat`]).
pub fn health_router(op: &Operator, ready: Arc<AtomicBool>) -> axum::Router {
    let heartbeat = op.heartbeat.clone();
    daemon::http::probe_router_with_liveness(
        move || {
            if ready.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("not ready")
            }
        },
        move || heartbeat.check(),
    )
}
