//! Renewal of the self-generated certificate (`--self-signed-dns-names`, the chart's `webhookGenerated` mode)
//! before it expires, without a restart and without a moment in which the API server holds a caBundle that
//! does not verify the served certificate:
//!
//! 1. at two-thirds of the lifetime a new CA and serving certificate are made, and the webhook configurations'
//!    caBundle is patched to hold the current CA **and** the new one;
//! 2. [`BUNDLE_PROPAGATION`] later (API servers read webhook configurations from a watch cache), the new
//!    certificate is served from the next handshake on ([`CertStore::replace`]);
//! 3. the old CA stays in the bundle until the next renewal replaces it (it verifies nothing any more, and
//!    expires a third of a lifetime later).
//!
//! A failed patch is retried every [`RETRY`] while the old certificate keeps being served: nothing is
//! swapped before the bundle that verifies it is in place. The model is the one of the start-up patch: the
//! chart runs one replica in this mode (each replica would make its own CA), and that replica owns the bundle.
//! A renewal that keeps failing is logged at every attempt and counted (`/metrics`, next to the served
//! certificate's expiry); `/healthz` fails only once the served certificate has expired
//! ([`CertExpiry::check`]), when a restart, which makes and patches a new pair, is all that is left.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use time::{Duration, OffsetDateTime};

use crate::tls::{CertStore, SelfSigned, self_signed_at};

/// Time between patching a bundle with the new CA and serving the certificate it signed.
pub const BUNDLE_PROPAGATION: Duration = Duration::minutes(5);

/// Time between attempts after a failed renewal.
pub const RETRY: Duration = Duration::minutes(1);

/// Longest single wait of [`Renewer::run`]: the wall clock is looked at again at least this often (a
/// suspended node or a clock step does not push renewal back by months).
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The self-generated serving certificate's expiry and its renewal failures, for `/healthz` and `/metrics`.
/// Untracked (certificate files, whose renewal is cert-manager's or the operator's of the Secret) it is always
/// healthy.
#[derive(Debug, Default)]
pub struct CertExpiry {
    /// Unix seconds of the served certificate's `notAfter`; 0: untracked
    /// (`admission_certificate_expiry_timestamp_seconds`).
    not_after: Gauge,
    /// Failed renewal attempts (`admission_certificate_renewal_failures_total`).
    failures: Counter,
}

impl CertExpiry {
    /// Tracks into these metrics (registered by [`crate::metrics::Metrics`]).
    pub fn exported(not_after: Gauge, failures: Counter) -> Self {
        CertExpiry { not_after, failures }
    }

    /// Tracks `served`.
    pub fn track(&self, served: &SelfSigned) {
        self.not_after.set(served.not_after.unix_timestamp());
    }

    /// Counts a failed renewal attempt.
    pub fn renewal_failed(&self) {
        self.failures.inc();
    }

    /// Failed renewal attempts so far.
    pub fn renewal_failures(&self) -> u64 {
        self.failures.get()
    }

    /// What `/healthz` says at `now`: unhealthy only once the served certificate has expired. A renewal that
    /// keeps failing before that is a warning (logged each attempt, counted, and visible as the expiry
    /// gauge), not a reason to restart: the start-up would make the same patch that fails, and a webhook
    /// that cannot start fails every write its `failurePolicy: Fail` covers, while the old certificate is
    /// still good for weeks.
    pub fn check(&self, now: OffsetDateTime) -> Result<(), String> {
        let not_after = self.not_after.get();
        if not_after == 0 || now.unix_timestamp() < not_after {
            return Ok(());
        }
        let at = OffsetDateTime::from_unix_timestamp(not_after)
            .map_or_else(|_| not_after.to_string(), |t| t.to_string());
        Err(format!(
            "the self-generated serving certificate expired at {at} and was not renewed (see the log); a restart \
             makes a new one"
        ))
    }
}

/// Renews a self-generated certificate; see the module documentation.
pub struct Renewer {
    dns_names: Vec<String>,
    lifetime: Duration,
    propagation: Duration,
    retry: Duration,
    store: Arc<CertStore>,
    expiry: Arc<CertExpiry>,
    reloads: Counter,
    /// CA of the certificate being served.
    serving_ca: String,
    /// When the served certificate is due for renewal (or the next attempt after a failure).
    due: OffsetDateTime,
    /// A new pair whose CA is in the bundle, and when it may be served.
    pending: Option<(SelfSigned, OffsetDateTime)>,
}

impl std::fmt::Debug for Renewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewer")
            .field("dns_names", &self.dns_names)
            .field("lifetime", &self.lifetime)
            .field("due", &self.due)
            .field("pending", &self.pending.as_ref().map(|(_, at)| at))
            .finish_non_exhaustive()
    }
}

impl Renewer {
    /// A renewer of `served` (made for `dns_names`, valid `lifetime`, its CA in the bundle and its key in
    /// `store`). It tracks the served certificate in `expiry` and counts swaps in `reloads`.
    pub fn new(
        dns_names: Vec<String>,
        served: &SelfSigned,
        lifetime: Duration,
        store: Arc<CertStore>,
        expiry: Arc<CertExpiry>,
        reloads: Counter,
    ) -> Self {
        expiry.track(served);
        Renewer {
            dns_names,
            lifetime,
            propagation: BUNDLE_PROPAGATION,
            retry: RETRY,
            store,
            expiry,
            reloads,
            serving_ca: served.ca_pem.clone(),
            due: renewal_due(served, lifetime),
            pending: None,
        }
    }

    /// Other waits than [`BUNDLE_PROPAGATION`] and [`RETRY`] (tests).
    pub fn with_waits(mut self, propagation: Duration, retry: Duration) -> Self {
        self.propagation = propagation;
        self.retry = retry;
        self
    }

    /// Does what is due at `now`, patching caBundles with `patch`; returns when it should be called again.
    pub async fn step<F, Fut, E>(&mut self, now: OffsetDateTime, patch: &F) -> OffsetDateTime
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        if self
            .pending
            .as_ref()
            .is_some_and(|(_, serve_at)| now >= *serve_at)
            && let Some((next, _)) = self.pending.take()
        {
            self.store.replace(next.key.clone());
            self.expiry.track(&next);
            self.reloads.inc();
            self.serving_ca = next.ca_pem.clone();
            self.due = renewal_due(&next, self.lifetime);
            tracing::info!(not_after = %next.not_after, "serving the renewed self-generated certificate");
        }
        if let Some((_, serve_at)) = &self.pending {
            return *serve_at;
        }
        if now < self.due {
            return self.due;
        }
        let next = match self_signed_at(&self.dns_names, now, self.lifetime) {
            Ok(next) => next,
            Err(error) => {
                tracing::warn!(%error, "cannot renew the self-generated certificate; retrying");
                self.expiry.renewal_failed();
                self.due = now + self.retry;
                return self.due;
            }
        };
        // The current CA stays: the API server must verify the served certificate until the swap.
        let bundle = format!("{}{}", self.serving_ca, next.ca_pem);
        match patch(bundle).await {
            Ok(()) => {
                let serve_at = now + self.propagation;
                tracing::info!(%serve_at, "renewed the self-generated certificate; its CA is in the caBundle");
                self.pending = Some((next, serve_at));
                serve_at
            }
            Err(error) => {
                self.expiry.renewal_failed();
                tracing::warn!(
                    error = %error,
                    "cannot patch the renewed CA into the webhook configurations; the current certificate is \
                     still served, retrying"
                );
                self.due = now + self.retry;
                self.due
            }
        }
    }

    /// [`Self::step`] on the wall clock until `shutdown` flips.
    pub async fn run<F, Fut, E>(mut self, patch: F, mut shutdown: tokio::sync::watch::Receiver<bool>)
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        loop {
            let next = self.step(OffsetDateTime::now_utc(), &patch).await;
            let wait = std::time::Duration::try_from(next - OffsetDateTime::now_utc())
                .unwrap_or_default()
                .min(MAX_WAIT);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Two-thirds into `pair`'s lifetime.
fn renewal_due(pair: &SelfSigned, lifetime: Duration) -> OffsetDateTime {
    pair.issued + lifetime * 2_i32 / 3_i32
}
