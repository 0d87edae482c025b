//! The operator process: its flags and what runs until SIGTERM (the probe and metrics servers, leader
//! election, the work loop). `main.rs` hands [`Args`] to [`daemon::main`], which parses them and runs them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::azure::{Arm, RetryBudget};
use crate::config::CloudConfig;
use crate::leader::{LEASE_NAME, LeaseLock};
use crate::metrics::Metrics;
use crate::pass::Operator;
use crate::run;

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
}

impl daemon::Daemon for Args {
    /// Runs the operator until SIGTERM or Ctrl-C; errors are start-up failures (config, Azure, Kubernetes).
    async fn run(self) -> anyhow::Result<()> {
        let args = self;
        let text = std::fs::read_to_string(&args.cloud_config)
            .with_context(|| format!("reading the cloud config {}", args.cloud_config))?;
        let cfg = CloudConfig::parse(&text, |k| std::env::var(k).ok())
            .with_context(|| format!("cloud config {}", args.cloud_config))?;
        tracing::info!(subscription = %cfg.subscription_id, resource_group = %cfg.resource_group, "cloud config loaded");

        let metrics = Metrics::new();
        let credential = crate::azure::credential(&cfg)?;
        let arm = Arm::new(&cfg, credential, RetryBudget::default(), &metrics)?;
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes")?;
        let op = Arc::new(Operator::new(
            client.clone(),
            arm,
            cfg,
            args.secret_namespace.clone(),
            args.leader_election_namespace.clone(),
            i32::from(args.gateway_lb_probe_port),
            metrics.clone(),
        ));

        let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
        let (leading_tx, leading) = tokio::sync::watch::channel(!args.leader_elect);
        let ready = Arc::new(AtomicBool::new(false));

        let mut tasks = tokio::task::JoinSet::new();
        let metrics_addr = SocketAddr::from(([0, 0, 0, 0], args.metrics_bind_port));
        let health_addr = SocketAddr::from(([0, 0, 0, 0], args.health_probe_bind_port));
        tasks.spawn(daemon::http::serve(
            metrics_addr,
            daemon::http::metrics_router(move || metrics.encode()),
            shutdown.clone(),
        ));
        let work_loop_ready = ready.clone();
        tasks.spawn(daemon::http::serve(
            health_addr,
            daemon::http::probe_router(move || {
                if work_loop_ready.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("not ready")
                }
            }),
            shutdown.clone(),
        ));
        if args.leader_elect {
            let identity = std::env::var("HOSTNAME").unwrap_or_else(|_| uuid::Uuid::new_v4().to_string());
            let lock = LeaseLock::new(
                client,
                &args.leader_election_namespace,
                LEASE_NAME,
                &identity,
                Duration::from_secs(15),
            );
            let s = shutdown.clone();
            tasks.spawn(async move {
                lock.run(leading_tx, s).await;
                Ok(())
            });
        }
        tasks.spawn({
            let s = shutdown.clone();
            async move {
                run::run_operator(op, leading, ready, s).await;
                Ok(())
            }
        });

        daemon::shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown_tx.send_replace(true);
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "task ended with an error");
            }
        }
        Ok(())
    }
}
