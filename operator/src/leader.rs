//! Leader election with a coordination.k8s.io Lease, so that two replicas never both write to Azure.
//!
//! kube-rs has no built-in elector. This one follows client-go's rules: the holder renews `renewTime`; another
//! candidate takes over only when `renewTime + leaseDurationSeconds` has passed; every write carries the
//! resourceVersion it read, so of two racing candidates exactly one wins (the other gets 409 Conflict); the
//! holder steps down when it has not renewed within the renew deadline, a third of the lease duration before the
//! others may take over, so a leader cut off from the API server stops before anyone else starts.

use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};

/// Upstream's leader election ID (controller-runtime).
pub const LEASE_NAME: &str = "0a299682.microsoft.com";

/// A Lease-based lock held by `identity`.
#[derive(Clone, Debug)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    /// A lock on Lease `name` in `namespace`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX).max(1)),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Acquires or renews the lease; true while this candidate holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renew), Some(secs)) => renew.0 + SignedDuration::from_secs(i64::from(secs)) < now,
            _ => true,
        };
        if !ours && holder.is_some() && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { spec.acquire_time.clone() } else { None };
        lease.spec = Some(self.spec(now, acquired, transitions));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on graceful shutdown) so that another replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// How long leadership lasts after a renewal was sent without a newer one succeeding: two thirds of the
    /// lease duration, as client-go's renew deadline (10 s of 15 s). The rest of the duration is the margin
    /// before another candidate may take the Lease over, so this replica has stepped down by then.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// How often the Lease is renewed (or, by a candidate, tried): 2/15 of the lease duration, as client-go's
    /// retry period (2 s of 15 s), so several renewals fit in the renew deadline.
    pub fn retry_period(&self) -> Duration {
        self.duration * 2 / 15
    }

    /// Keeps trying to lead until `shutdown`; publishes leadership on `leading`. Leadership is dropped when no
    /// renewal sent in the last [`renew_deadline`](Self::renew_deadline) succeeded, or the Lease is found with
    /// another holder. Every attempt is bounded, so an API server that stops answering cannot keep a stale
    /// leader: it steps down before the Lease can expire for the other candidates.
    pub async fn run(
        &self,
        leading: tokio::sync::watch::Sender<bool>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let deadline = self.renew_deadline();
        let retry = self.retry_period();
        // While leading: until when leadership holds without a further successful renewal. Counted from when
        // the renewal was sent, since the renewTime it wrote is from then.
        let mut valid_until: Option<Instant> = None;
        // Receivers hear only real transitions: the work loop reconciles every pool when leadership changes,
        // so a renewal that changes nothing must not wake it.
        let set = |value: bool| {
            leading.send_if_modified(|v| std::mem::replace(v, value) != value);
        };
        let step_down_if_expired = |valid_until: &mut Option<Instant>| {
            if valid_until.is_some_and(|t| Instant::now() >= t) {
                *valid_until = None;
                tracing::warn!(
                    identity = %self.identity,
                    lease = %self.name,
                    renew_deadline_seconds = deadline.as_secs_f64(),
                    "leadership lost: the Lease was not renewed within the renew deadline"
                );
                set(false);
            }
        };
        loop {
            let sent = Instant::now();
            // A leader's attempt may last until its leadership ends; a candidate's, one renew deadline.
            let limit = valid_until.map_or(deadline, |t| t.saturating_duration_since(sent));
            // Shutdown does not wait for an attempt that hangs.
            let attempt = tokio::select! {
                r = tokio::time::timeout(limit, self.try_acquire_or_renew()) => r,
                _ = shutdown.changed() => break,
            };
            match attempt {
                Ok(Ok(true)) => {
                    if valid_until.is_none() {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                    }
                    valid_until = Some(sent + deadline);
                    set(true);
                }
                Ok(Ok(false)) => {
                    if valid_until.take().is_some() {
                        tracing::warn!(identity = %self.identity, lease = %self.name, "leadership lost: another candidate holds the Lease");
                    }
                    set(false);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed"),
                Err(_) => tracing::warn!(
                    timeout_seconds = limit.as_secs_f64(),
                    "lease renewal did not answer in time"
                ),
            }
            step_down_if_expired(&mut valid_until);
            // The next attempt; a leader wakes at the end of its leadership at the latest.
            let next = valid_until.map_or(sent + retry, |t| (sent + retry).min(t));
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.changed() => break,
            }
            step_down_if_expired(&mut valid_until);
        }
        if *leading.borrow() {
            set(false);
            if let Err(e) = self.release().await {
                tracing::warn!(error = %e, "releasing the lease failed");
            }
        }
    }
}
