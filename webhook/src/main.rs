//! `kube-egress-gateway-webhook`: see the library for what it does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use webhook::handlers::Policy;
use webhook::server::{AppState, admission_router, probe_router, serve_plain, serve_tls};
use webhook::{cabundle, metrics, tls, watch};

#[derive(Debug, Parser)]
#[command(
    name = "kube-egress-gateway-webhook",
    version,
    about = "Admission webhook for kube-egress-gateway"
)]
struct Args {
    /// HTTPS address for admission reviews.
    #[arg(long, env = "WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    listen: SocketAddr,
    /// Plain-HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, env = "WEBHOOK_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// PEM certificate chain (e.g. a cert-manager Secret's tls.crt); re-read when it changes.
    #[arg(long, env = "WEBHOOK_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key matching --tls-cert-file.
    #[arg(long, env = "WEBHOOK_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// How often certificate files are checked for rotation.
    #[arg(long, env = "WEBHOOK_CERT_RELOAD_SECONDS", default_value_t = 10)]
    cert_reload_seconds: u64,
    /// Without certificate files: DNS names for a self-generated certificate (e.g. svc.ns.svc).
    #[arg(long, env = "WEBHOOK_SELF_SIGNED_DNS_NAMES", value_delimiter = ',')]
    self_signed_dns_names: Vec<String>,
    /// MutatingWebhookConfiguration to patch the self-generated CA into.
    #[arg(long, env = "WEBHOOK_MUTATING_CONFIG")]
    mutating_webhook_configuration: Option<String>,
    /// ValidatingWebhookConfiguration to patch the self-generated CA into.
    #[arg(long, env = "WEBHOOK_VALIDATING_CONFIG")]
    validating_webhook_configuration: Option<String>,
    /// Users allowed to write PodEndpoints (the node agent's service account).
    #[arg(long, env = "WEBHOOK_PODENDPOINT_WRITERS", value_delimiter = ',')]
    podendpoint_writers: Vec<String>,
    /// Time between turning /readyz to 503 and stopping to accept, so the Service drops this pod first.
    #[arg(long, env = "WEBHOOK_DRAIN_SECONDS", default_value_t = 5)]
    drain_seconds: u64,
    /// Serve without a cluster: no watches, so rule 4 and the pod warnings are skipped and namespace defaults
    /// are not injected. For local trials and load benchmarks only.
    #[arg(long, env = "WEBHOOK_STANDALONE")]
    standalone: bool,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    api::logging::init(args.log_format == "json");

    let client = if args.standalone {
        None
    } else {
        Some(
            kube::Client::try_default()
                .await
                .context("cannot build a Kubernetes client")?,
        )
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);

    let store = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => {
            let files = tls::CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            };
            let store = tls::CertStore::new(files.load().context("loading the serving certificate")?);
            let reloads = metrics.cert_reloads.clone();
            tokio::spawn(files.watch(
                store.clone(),
                Duration::from_secs(args.cert_reload_seconds.max(1)),
                move |outcome| {
                    if outcome == tls::Reload::Swapped {
                        reloads.inc();
                    }
                },
                shutdown_rx.clone(),
            ));
            store
        }
        _ => {
            anyhow::ensure!(
                !args.self_signed_dns_names.is_empty(),
                "give --tls-cert-file/--tls-key-file, or --self-signed-dns-names for a self-generated certificate"
            );
            let generated = tls::self_signed(&args.self_signed_dns_names)?;
            if let Some(client) = &client {
                cabundle::patch_ca_bundle(
                    client.clone(),
                    &generated.ca_pem,
                    args.mutating_webhook_configuration.as_deref(),
                    args.validating_webhook_configuration.as_deref(),
                )
                .await
                .context("patching the CA bundle into the webhook configurations")?;
            }
            tls::CertStore::new(generated.key)
        }
    };
    let tls_config = Arc::new(tls::server_config(store)?);

    let facts: Arc<dyn webhook::facts::ClusterFacts> = match client {
        Some(client) => Arc::new(watch::start(client)),
        None => Arc::new(webhook::facts::StaticFacts::default()),
    };
    let state = Arc::new(AppState {
        facts,
        policy: Policy {
            podendpoint_writers: args.podendpoint_writers.clone(),
        },
        metrics,
        draining: Default::default(),
    });

    let https = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let plain = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    tracing::info!(listen = %args.listen, metrics = %args.metrics_listen, "serving");

    let tls_task = tokio::spawn(serve_tls(
        https,
        tls_config,
        admission_router(state.clone()),
        shutdown_rx.clone(),
        Duration::from_secs(10),
    ));
    let plain_task = tokio::spawn(serve_plain(
        plain,
        probe_router().with_state(state.clone()),
        shutdown_rx,
    ));

    shutdown_signal().await;
    tracing::info!("shutting down: draining");
    state.draining.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_secs(args.drain_seconds)).await;
    let _ = shutdown_tx.send(true);
    let _ = tokio::join!(tls_task, plain_task);
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
