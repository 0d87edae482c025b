//! The webhook process: its flags and what runs until SIGTERM (certificates, cluster watches, the HTTPS
//! admission server and the plain-HTTP probe and metrics server, then the drain). `main.rs` hands [`Args`] to
//! [`daemon::main`], which parses them and runs them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;

use crate::handlers::Policy;
use crate::server::{AppState, probe_router, serve_tls};
use crate::{cabundle, metrics, tls, watch};

#[derive(Debug, clap::Parser)]
#[command(
    name = "kube-egress-gateway-webhook",
    version,
    about = "Admission webhook for kube-egress-gateway"
)]
pub struct Args {
    /// HTTPS address for admission reviews.
    #[arg(long, env = "WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    pub listen: SocketAddr,
    /// Plain-HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, env = "WEBHOOK_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// PEM certificate chain (e.g. a cert-manager Secret's tls.crt); re-read when it changes.
    #[arg(long, env = "WEBHOOK_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key matching --tls-cert-file.
    #[arg(long, env = "WEBHOOK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// How often certificate files are checked for rotation.
    #[arg(long, env = "WEBHOOK_CERT_RELOAD_SECONDS", default_value_t = 10)]
    pub cert_reload_seconds: u64,
    /// Without certificate files: DNS names for a self-generated certificate (e.g. svc.ns.svc).
    #[arg(long, env = "WEBHOOK_SELF_SIGNED_DNS_NAMES", value_delimiter = ',')]
    pub self_signed_dns_names: Vec<String>,
    /// Secret (in the webhook's namespace; `Opaque`, possibly without data, or `kubernetes.io/tls`) that keeps
    /// the self-generated pair, so restarts reuse it and every replica serves the same one. Without it each
    /// start makes a new CA (one replica only).
    /// Needs the API server: refused with --standalone.
    #[arg(
        long,
        env = "WEBHOOK_SELF_SIGNED_SECRET",
        requires = "self_signed_dns_names",
        conflicts_with = "standalone"
    )]
    pub self_signed_secret: Option<String>,
    /// MutatingWebhookConfiguration to patch the self-generated CA into.
    #[arg(long, env = "WEBHOOK_MUTATING_CONFIG")]
    pub mutating_webhook_configuration: Option<String>,
    /// ValidatingWebhookConfiguration to patch the self-generated CA into.
    #[arg(long, env = "WEBHOOK_VALIDATING_CONFIG")]
    pub validating_webhook_configuration: Option<String>,
    /// Users allowed to write PodEndpoints (the node agent's service account).
    #[arg(long, env = "WEBHOOK_PODENDPOINT_WRITERS", value_delimiter = ',')]
    pub podendpoint_writers: Vec<String>,
    /// Time between turning /readyz to 503 and stopping to accept, so the Service drops this pod first.
    #[arg(long, env = "WEBHOOK_DRAIN_SECONDS", default_value_t = 5)]
    pub drain_seconds: u64,
    /// Serve without a cluster: no watches, so rule 4 and the pod warnings are skipped and namespace defaults
    /// are not injected. For local trials and load benchmarks only.
    #[arg(long, env = "WEBHOOK_STANDALONE")]
    pub standalone: bool,
}

impl daemon::Daemon for Args {
    /// Serves admission reviews until SIGTERM or Ctrl-C, then drains; errors are start-up failures.
    async fn run(self) -> anyhow::Result<()> {
        let args = self;
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

        let certificate = Arc::new(crate::renew::CertExpiry::exported(
            metrics.cert_not_after.clone(),
            metrics.cert_renewal_failures.clone(),
        ));
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
                if let (Some(secret), Some(client)) = (&args.self_signed_secret, &client) {
                    let started = crate::pair_secret::SharedPair {
                        client: client.clone(),
                        namespace: client.default_namespace().to_string(),
                        secret: secret.clone(),
                        dns_names: args.self_signed_dns_names.clone(),
                        mutating: args.mutating_webhook_configuration.clone(),
                        validating: args.validating_webhook_configuration.clone(),
                        lifetime: tls::SELF_SIGNED_LIFETIME,
                        propagation: crate::renew::BUNDLE_PROPAGATION,
                        retry: crate::renew::RETRY,
                    }
                    .start(
                        certificate.clone(),
                        metrics.cert_reloads.clone(),
                        shutdown_rx.clone(),
                    )
                    .await
                    .context("the self-generated certificate's Secret")?;
                    started.store
                } else {
                    per_start_pair(
                        &args,
                        client.clone(),
                        certificate.clone(),
                        &metrics,
                        shutdown_rx.clone(),
                    )
                    .await?
                }
            }
        };
        let tls_config = Arc::new(tls::server_config(store)?);

        let facts: Arc<dyn crate::facts::ClusterFacts> = match client {
            Some(client) => Arc::new(watch::start(client)),
            None => Arc::new(crate::facts::StaticFacts::default()),
        };
        let state = Arc::new(AppState {
            facts,
            policy: Policy {
                podendpoint_writers: args.podendpoint_writers.clone(),
            },
            metrics,
            draining: Default::default(),
            client_timeout: crate::server::DEFAULT_CLIENT_TIMEOUT,
            certificate,
        });

        let https = daemon::http::bind(args.listen).await?;
        let plain = daemon::http::bind(args.metrics_listen).await?;
        tracing::info!(listen = %args.listen, metrics = %args.metrics_listen, "serving");

        let tls_task = tokio::spawn(serve_tls(
            https,
            tls_config,
            state.clone(),
            shutdown_rx.clone(),
            Duration::from_secs(10),
        ));
        let plain_task = tokio::spawn(daemon::http::serve_on(
            plain,
            probe_router(state.clone()),
            shutdown_rx,
        ));

        daemon::shutdown_signal().await;
        tracing::info!("shutting down: draining");
        state.draining.store(true, Ordering::Release);
        tokio::time::sleep(Duration::from_secs(args.drain_seconds)).await;
        let _ = shutdown_tx.send(true);
        let (_, plain) = tokio::join!(tls_task, plain_task);
        if let Ok(Err(error)) = plain {
            tracing::warn!(error = %format!("{error:#}"), "metrics server failed");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// A CA and certificate made at this start, without a Secret to keep them (one replica only): the CA is patched
/// into the webhook configurations and renewed by this replica.
async fn per_start_pair(
    args: &Args,
    client: Option<kube::Client>,
    certificate: Arc<crate::renew::CertExpiry>,
    metrics: &metrics::Metrics,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Arc<tls::CertStore>> {
    let generated = tls::self_signed(&args.self_signed_dns_names)?;
    let patch = {
        let client = client.clone();
        let mutating = args.mutating_webhook_configuration.clone();
        let validating = args.validating_webhook_configuration.clone();
        move |bundle: String| {
            let (client, mutating, validating) = (client.clone(), mutating.clone(), validating.clone());
            async move {
                match client {
                    Some(client) => {
                        cabundle::patch_ca_bundle(client, &bundle, mutating.as_deref(), validating.as_deref())
                            .await
                            .map_err(|e| e.to_string())
                    }
                    None => Ok(0),
                }
            }
        }
    };
    let patched = patch(generated.ca_pem.clone())
        .await
        .map_err(anyhow::Error::msg)
        .context("patching the CA bundle into the webhook configurations")?;
    let store = tls::CertStore::new(generated.key.clone());
    let renewer = crate::renew::Renewer::new(
        args.self_signed_dns_names.clone(),
        &generated,
        tls::SELF_SIGNED_LIFETIME,
        store.clone(),
        certificate,
        metrics.cert_reloads.clone(),
    );
    // Renewal needs a configuration to carry the new CA: a renewal that patched none fails (and is
    // retried) rather than serve a certificate nobody trusts. Without any (standalone, or none
    // found at start) there is nothing to renew into: the certificate lasts its year.
    if patched > 0 {
        let renew_patch = move |bundle: String| {
            let patch = patch.clone();
            async move {
                match patch(bundle).await? {
                    0 => Err("no webhook configuration was found to patch".to_string()),
                    _ => Ok(()),
                }
            }
        };
        tokio::spawn(renewer.run(renew_patch, shutdown));
    } else {
        tracing::warn!(
            "no webhook configuration carries the self-generated CA: the certificate is not renewed"
        );
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Args;

    #[test]
    fn a_secret_without_the_api_server_is_refused() {
        let parsed = Args::try_parse_from([
            "webhook",
            "--self-signed-dns-names=svc.ns.svc",
            "--self-signed-secret=pair",
            "--standalone",
        ]);
        let error = parsed.expect_err("--self-signed-secret with --standalone");
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert!(
            Args::try_parse_from([
                "webhook",
                "--self-signed-dns-names=svc.ns.svc",
                "--self-signed-secret=pair"
            ])
            .is_ok()
        );
    }
}
