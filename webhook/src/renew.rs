//! Renewal of the self-generated certificate (`--self-signed-dns-names`, the chart's `webhookGenerated` mode)
//! before it expires, without a restart and without a moment in which the API server holds a caBundle that
//! does not verify the served certificate:
//!
//! 1. at two-thirds of the lifetime a new CA and serving certificate are made and published ([`Publish`]): kept
//!    in the shared Secret ([`crate::pair_secret`]; one replica without a Secret skips this), and the webhook
//!    configurations' caBundle is patched to hold the current CA **and** the new one;
//! 2. [`BUNDLE_PROPAGATION`] later (API servers read webhook configurations from a watch cache), the new
//!    certificate is served from the next handshake on ([`CertStore::replace`]);
//! 3. the old CA stays in the bundle until the next renewal replaces it (it verifies nothing any more, and
//!    expires a third of a lifetime later).
//!
//! With several replicas, each tries to publish when its pair is due; the Secret's optimistic concurrency
//! lets one win ([`Published::Superseded`] for the others). Every replica, the winner too, sees the new pair in
//! the Secret, makes sure the bundle holds its CA and hands it to [`Renewer::adopt`], which serves it the same
//! [`BUNDLE_PROPAGATION`] later.
//!
//! A failed publication is retried every [`RETRY`] while the old certificate keeps being served: nothing is
//! swapped before the bundle that verifies it is in place. A renewal that keeps failing is logged at every
//! attempt and counted (`/metrics`, next to the served certificate's expiry); `/healthz` fails only once the
//! served certificate has expired ([`CertExpiry::check`]), when a restart, which makes and patches a new pair,
//! is all that is left.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use time::{Duration, OffsetDateTime};

use crate::tls::{CertStore, SelfSigned, self_signed_at};

/// What came of publishing a renewed pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// The new pair is kept and its CA is in the caBundle: it may be served after [`BUNDLE_PROPAGATION`].
    Done,
    /// Another replica renewed first: its pair is to be adopted ([`Renewer::adopt`]), not this one.
    Superseded,
}

/// Where a renewed pair goes before it is served: the caBundle, and the Secret the replicas share.
pub trait Publish {
    /// Publishes `next`, made while the certificate of `serving_ca` is served (the bundle keeps both).
    fn publish(
        &self,
        serving_ca: &str,
        next: &SelfSigned,
    ) -> impl Future<Output = Result<Published, String>> + Send;

    /// Makes sure the caBundle still holds `ca` (PEM) just before its certificate is served: `Ok(true)` when it
    /// had to be patched back in (another writer dropped it), so serving waits another propagation. The
    /// default (one replica, the bundle's only writer) trusts its own patch.
    fn confirm(&self, ca: &str) -> impl Future<Output = Result<bool, String>> + Send {
        let _ = ca;
        std::future::ready(Ok(false))
    }
}

/// A caBundle patch alone (one replica, no Secret): `patch` gets the bundle to write.
impl<F, Fut, E> Publish for F
where
    F: Fn(String) -> Fut + Sync,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Display,
{
    async fn publish(&self, serving_ca: &str, next: &SelfSigned) -> Result<Published, String> {
        self(format!("{serving_ca}{}", next.ca_pem))
            .await
            .map(|()| Published::Done)
            .map_err(|e| e.to_string())
    }
}

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
    /// The pair being served.
    serving: SelfSigned,
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
            serving: served.clone(),
            due: renewal_due(served),
            pending: None,
        }
    }

    /// Other waits than [`BUNDLE_PROPAGATION`] and [`RETRY`] (tests).
    pub fn with_waits(mut self, propagation: Duration, retry: Duration) -> Self {
        self.propagation = propagation;
        self.retry = retry;
        self
    }

    /// Serves `pair`, renewed by another replica (or by this one) and whose CA the caBundle has held since
    /// `bundled`, [`BUNDLE_PROPAGATION`] after that; nothing when it is already served or waiting.
    pub fn adopt(&mut self, pair: SelfSigned, bundled: OffsetDateTime) {
        if self.knows(&pair) {
            return;
        }
        let serve_at = bundled + self.propagation;
        tracing::info!(%serve_at, not_after = %pair.not_after, "a renewed certificate is in the Secret; serving it after the caBundle propagation wait");
        self.pending = Some((pair, serve_at));
    }

    /// Renews at the next [`Self::step`] (the Secret lost its pair).
    pub fn renew_now(&mut self, now: OffsetDateTime) {
        if self.pending.is_none() {
            self.due = self.due.min(now);
        }
    }

    /// Whether `pair` is served or waiting to be.
    pub fn knows(&self, pair: &SelfSigned) -> bool {
        pair.same_certificate(&self.serving)
            || self
                .pending
                .as_ref()
                .is_some_and(|(waiting, _)| waiting.same_certificate(pair))
    }

    /// Counts a failed renewal step done outside [`Self::step`] (putting an adopted pair's CA in the bundle).
    pub fn failed(&self) {
        self.expiry.renewal_failed();
    }

    /// The CA of the certificate served now (PEM).
    pub fn serving_ca(&self) -> &str {
        &self.serving.ca_pem
    }

    /// The wait after a failure.
    pub fn retry(&self) -> Duration {
        self.retry
    }

    /// Does what is due at `now`, publishing renewed pairs with `publish` (for one replica without a Secret, a
    /// closure patching caBundles); returns when it should be called again.
    pub async fn step<P: Publish>(&mut self, now: OffsetDateTime, publish: &P) -> OffsetDateTime {
        if let Some((next, serve_at)) = &mut self.pending
            && now >= *serve_at
        {
            match publish.confirm(&next.ca_pem).await {
                Ok(false) => {}
                Ok(true) => {
                    *serve_at = now + self.propagation;
                    tracing::warn!(serve_at = %*serve_at, "the caBundle had lost the renewed CA; patched it back in, serving the renewed certificate after another propagation wait");
                    return *serve_at;
                }
                Err(error) => {
                    self.expiry.renewal_failed();
                    tracing::warn!(%error, "cannot check that the caBundle holds the renewed CA; the current certificate is still served, retrying");
                    return now + self.retry;
                }
            }
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|(_, serve_at)| now >= *serve_at)
            && let Some((next, _)) = self.pending.take()
        {
            self.store.replace(next.key.clone());
            self.expiry.track(&next);
            self.reloads.inc();
            self.serving = next.clone();
            self.due = renewal_due(&next);
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
        match publish.publish(&self.serving.ca_pem, &next).await {
            Ok(Published::Done) => {
                let serve_at = now + self.propagation;
                tracing::info!(%serve_at, "renewed the self-generated certificate; its CA is in the caBundle");
                self.pending = Some((next, serve_at));
                serve_at
            }
            Ok(Published::Superseded) => {
                // The winner's pair arrives through the Secret (adopt); this is only the fallback.
                tracing::info!("another replica renewed the certificate first; serving its pair once seen");
                self.due = now + self.retry;
                self.due
            }
            Err(error) => {
                self.expiry.renewal_failed();
                tracing::warn!(
                    error = %error,
                    "cannot publish the renewed certificate (Secret and caBundle); the current certificate is \
                     still served, retrying"
                );
                self.due = now + self.retry;
                self.due
            }
        }
    }

    /// [`Self::step`] on the wall clock until `shutdown` flips.
    pub async fn run<P: Publish>(mut self, publish: P, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let next = self.step(OffsetDateTime::now_utc(), &publish).await;
            tokio::select! {
                () = tokio::time::sleep(wait_until(next)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// How long to sleep until `at` on the wall clock, at most [`MAX_WAIT`].
pub fn wait_until(at: OffsetDateTime) -> std::time::Duration {
    std::time::Duration::try_from(at - OffsetDateTime::now_utc())
        .unwrap_or_default()
        .min(MAX_WAIT)
}

/// Two-thirds into `pair`'s lifetime.
fn renewal_due(pair: &SelfSigned) -> OffsetDateTime {
    pair.issued + (pair.not_after - pair.issued) * 2_i32 / 3_i32
}
