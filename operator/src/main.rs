//! `kube-egress-gateway-operator`: flags, wiring, shutdown. The logic lives in the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use operator::azure::{Arm, RetryBudget};
use operator::config::CloudConfig;
use operator::leader::{LEASE_NAME, LeaseLock};
use operator::metrics::Metrics;
use operator::pass::Operator;
use operator::run;

/// Flags are upstream's (`kube-egress-gateway-controller`), so existing manifests keep working.
#[derive(Debug, Parser)]
#[command(name = "kube-egress-gateway-operator", version)]
struct Args {
    /// Azure cloud config (upstream's JSON).
    #[arg(
        long,
        env = "CLOUD_CONFIG",
        default_value = "/etc/kubernetes/kube-egress-gateway/azure.json"
    )]
    cloud_config: String,
    /// Port of /metrics.
    #[arg(long, default_value_t = 8080)]
    metrics_bind_port: u16,
    /// Port of /healthz and /readyz.
    #[arg(long, default_value_t = 8081)]
    health_probe_bind_port: u16,
    /// Port of the gateway agents' load-balancer health probe.
    #[arg(long, default_value_t = api::names::DEFAULT_LB_PROBE_PORT)]
    gateway_lb_probe_port: u16,
    /// Run leader election (for more than one replica).
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "MY_POD_NAMESPACE", default_value = "kube-egress-gateway-system")]
    leader_election_namespace: String,
    /// Namespace of the WireGuard key Secrets.
    #[arg(long, env = "MY_POD_NAMESPACE", default_value = "kube-egress-gateway-system")]
    secret_namespace: String,
    /// Log as JSON lines (same as --log-format json).
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    log_json: bool,
    /// Log format, as the other components take it.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run_main(Args::parse()).await {
        // One line with the whole cause chain: start-up errors name the field and the rule.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run_main(args: Args) -> anyhow::Result<()> {
    api::logging::init(args.log_json || args.log_format == "json");

    let text = std::fs::read_to_string(&args.cloud_config)
        .with_context(|| format!("reading the cloud config {}", args.cloud_config))?;
    let cfg = CloudConfig::parse(&text, |k| std::env::var(k).ok())
        .with_context(|| format!("cloud config {}", args.cloud_config))?;
    tracing::info!(subscription = %cfg.subscription_id, resource_group = %cfg.resource_group, "cloud config loaded");

    let metrics = Metrics::new();
    let credential = operator::azure::credential(&cfg)?;
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
    tasks.spawn(run::serve(
        metrics_addr,
        run::metrics_router(metrics),
        shutdown.clone(),
    ));
    tasks.spawn(run::serve(
        health_addr,
        run::health_router(ready.clone()),
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

    shutdown_signal().await;
    tracing::info!("shutting down");
    shutdown_tx.send_replace(true);
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "task ended with an error");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
