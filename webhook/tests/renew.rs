//! Renewal of the self-generated certificate on an injected clock: years of uptime never serve a certificate
//! that the API server's caBundle (even one a few minutes stale) cannot verify or that has expired, and a
//! failing caBundle patch keeps the old pair served, counted, and `/healthz` fails only once it has expired.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};
use webhook::renew::{CertExpiry, Renewer};
use webhook::tls::{CertStore, self_signed_at};

const DNS: &str = "webhook.test.svc";
const PROPAGATION: Duration = Duration::minutes(5);
const RETRY: Duration = Duration::minutes(1);

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time")
}

/// Whether a client trusting `bundle` (PEM CAs, as in caBundle) accepts `served` for [`DNS`] at `at`.
fn verifies(bundle: &str, served: &CertifiedKey, at: OffsetDateTime) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots
            .add(ca.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let seconds = u64::try_from(at.unix_timestamp()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(
            &served.cert[0],
            &[],
            &ServerName::try_from(DNS).map_err(|e| e.to_string())?,
            &[],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Patches the test records: every bundle asked for, and whether to refuse it.
#[derive(Clone, Default)]
struct Patches {
    asked: Arc<Mutex<Vec<String>>>,
    refuse: Arc<Mutex<bool>>,
}

impl Patches {
    fn patcher(&self) -> impl Fn(String) -> std::future::Ready<Result<(), String>> + use<> {
        let this = self.clone();
        move |bundle| {
            this.asked.lock().expect("lock").push(bundle);
            std::future::ready(if *this.refuse.lock().expect("lock") {
                Err("webhook configuration patch refused".to_string())
            } else {
                Ok(())
            })
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("lock").clone()
    }
}

/// A pair made at [`t0`] valid for `lifetime`, served from a store, and its renewer (which counts swaps in the
/// returned counter).
struct Fixture {
    first: webhook::tls::SelfSigned,
    store: Arc<CertStore>,
    expiry: Arc<CertExpiry>,
    reloads: prometheus_client::metrics::counter::Counter,
    renewer: Renewer,
}

fn fixture(lifetime: Duration) -> Fixture {
    let first = self_signed_at(&[DNS.to_string()], t0(), lifetime).expect("certificate");
    let store = CertStore::new(first.key.clone());
    let expiry = Arc::new(CertExpiry::default());
    let reloads = prometheus_client::metrics::counter::Counter::default();
    let renewer = Renewer::new(
        vec![DNS.to_string()],
        &first,
        lifetime,
        store.clone(),
        expiry.clone(),
        reloads.clone(),
    )
    .with_waits(PROPAGATION, RETRY);
    Fixture {
        first,
        store,
        expiry,
        reloads,
        renewer,
    }
}

#[tokio::test]
async fn renewal_keeps_the_served_certificate_verifiable_for_years() {
    let lifetime = Duration::days(30);
    let Fixture {
        first,
        store,
        expiry,
        mut renewer,
        ..
    } = fixture(lifetime);
    let patches = Patches::default();
    let patch = patches.patcher();
    // Every bundle the API server may hold, with when it was patched (the start-up patch first).
    let mut bundles = vec![(t0(), first.ca_pem.clone())];
    let mut served = Vec::new();
    let mut now = t0();
    while now < t0() + lifetime * 4_i32 {
        let next = renewer.step(now, &patch).await;
        assert!(next > now, "{next} after {now}");
        let asked = patches.asked();
        bundles.extend(asked[bundles.len() - 1..].iter().map(|b| (now, b.clone())));
        let key = store.current().expect("a certificate");
        if served.last() != Some(&key.cert[0]) {
            served.push(key.cert[0].clone());
        }
        for at in [now, next - Duration::seconds(1)] {
            let newest = &bundles.last().expect("a bundle").1;
            // An API server whose cache lags by the propagation wait still holds a bundle that verifies.
            let stale = &bundles
                .iter()
                .rev()
                .find(|(patched, _)| *patched <= at - PROPAGATION)
                .unwrap_or(&bundles[0])
                .1;
            for (which, bundle) in [("newest", newest), ("stale", stale)] {
                if let Err(why) = verifies(bundle, &key, at) {
                    panic!("at {at}, the {which} caBundle does not verify the served certificate: {why}");
                }
            }
            assert_eq!(expiry.check(at), Ok(()), "at {at}");
        }
        now = next;
    }
    // Renewed at two-thirds of each lifetime: five times in four lifetimes.
    assert!(served.len() >= 6, "{} certificates served", served.len());
    // Each patched bundle holds the served CA and the new one.
    for bundle in &bundles[1..] {
        assert_eq!(CertificateDer::pem_slice_iter(bundle.1.as_bytes()).count(), 2);
    }
}

#[tokio::test]
async fn a_failing_patch_keeps_the_old_certificate_and_health_says_so_before_it_expires() {
    let lifetime = Duration::days(30);
    let Fixture {
        first,
        store,
        expiry,
        reloads,
        mut renewer,
    } = fixture(lifetime);
    let patches = Patches::default();
    *patches.refuse.lock().expect("lock") = true;
    let patch = patches.patcher();

    // Not due before two-thirds of the lifetime: nothing is asked.
    let due = t0() + lifetime * 2_i32 / 3_i32;
    assert_eq!(renewer.step(t0(), &patch).await, due);
    assert!(patches.asked().is_empty());

    // Due, refused: the old certificate is still served and the attempt comes again after RETRY.
    assert_eq!(renewer.step(due, &patch).await, due + RETRY);
    assert_eq!(patches.asked().len(), 1);
    assert!(
        patches.asked()[0].starts_with(&first.ca_pem),
        "the bundle keeps the served CA"
    );
    assert_eq!(store.current().expect("served").cert[0], first.key.cert[0]);
    assert_eq!(expiry.check(due), Ok(()), "a third of the lifetime is left");

    // Still failing at five-sixths: every attempt is counted, but /healthz stays healthy while the served
    // certificate is valid (a restart would make the same failing patch, and a webhook that cannot start
    // fails every write); it fails only once the certificate has expired.
    let late = t0() + lifetime * 5_i32 / 6_i32;
    assert_eq!(renewer.step(late, &patch).await, late + RETRY);
    assert_eq!(store.current().expect("served").cert[0], first.key.cert[0]);
    assert_eq!(expiry.renewal_failures(), 2, "each failed attempt is counted");
    assert_eq!(expiry.check(late), Ok(()), "still valid");
    assert_eq!(
        expiry.check(t0() + lifetime - Duration::seconds(1)),
        Ok(()),
        "valid to the last second"
    );
    assert!(
        expiry
            .check(t0() + lifetime)
            .is_err_and(|m| m.contains("expired")),
        "expired"
    );

    // The patch goes through: the new certificate is served only after the propagation wait.
    *patches.refuse.lock().expect("lock") = false;
    let retried = late + RETRY;
    assert_eq!(renewer.step(retried, &patch).await, retried + PROPAGATION);
    assert_eq!(store.current().expect("served").cert[0], first.key.cert[0]);
    assert_eq!(
        renewer
            .step(retried + PROPAGATION - Duration::seconds(1), &patch)
            .await,
        retried + PROPAGATION
    );
    assert_eq!(store.current().expect("served").cert[0], first.key.cert[0]);
    let next_due = renewer.step(retried + PROPAGATION, &patch).await;
    assert_eq!(next_due, retried + lifetime * 2_i32 / 3_i32);
    let served = store.current().expect("served");
    assert_ne!(served.cert[0], first.key.cert[0], "the renewed certificate");
    let bundle = patches.asked().last().cloned().expect("a bundle");
    verifies(&bundle, &served, retried + PROPAGATION).expect("verifies");
    assert_eq!(expiry.check(retried + PROPAGATION), Ok(()), "healthy again");
    assert_eq!(reloads.get(), 1);
}

#[test]
fn certificate_files_are_not_tracked() {
    assert_eq!(
        CertExpiry::default().check(OffsetDateTime::from_unix_timestamp(i64::from(i32::MAX)).expect("time")),
        Ok(())
    );
}

/// A publisher whose caBundle lost the renewed CA once before it was served (another writer dropped it).
struct LosesTheCaOnce {
    patches: Patches,
    lost: Mutex<bool>,
    confirmed: Mutex<Vec<String>>,
}

impl webhook::renew::Publish for LosesTheCaOnce {
    async fn publish(
        &self,
        serving_ca: &str,
        next: &webhook::tls::SelfSigned,
    ) -> Result<webhook::renew::Published, String> {
        self.patches.patcher().publish(serving_ca, next).await
    }

    async fn confirm(&self, ca: &str) -> Result<bool, String> {
        self.confirmed.lock().expect("lock").push(ca.to_string());
        Ok(std::mem::replace(&mut *self.lost.lock().expect("lock"), false))
    }
}

#[tokio::test]
async fn a_renewed_ca_dropped_from_the_bundle_is_patched_back_and_waited_for_before_serving() {
    let lifetime = Duration::days(365);
    let Fixture {
        first,
        store,
        reloads,
        mut renewer,
        ..
    } = fixture(lifetime);
    let publisher = LosesTheCaOnce {
        patches: Patches::default(),
        lost: Mutex::new(true),
        confirmed: Mutex::default(),
    };
    let due = renewer.step(t0(), &publisher).await;
    let serve_at = renewer.step(due, &publisher).await;
    assert_eq!(serve_at, due + PROPAGATION);
    // At the swap the bundle lacks the new CA: patched back, the swap waits another propagation.
    assert_eq!(renewer.step(serve_at, &publisher).await, serve_at + PROPAGATION);
    assert_eq!(store.current().expect("served").cert[0], first.key.cert[0]);
    assert_eq!(reloads.get(), 0);
    renewer.step(serve_at + PROPAGATION, &publisher).await;
    assert_ne!(store.current().expect("served").cert[0], first.key.cert[0]);
    assert_eq!(reloads.get(), 1);
    let confirmed = publisher.confirmed.lock().expect("lock").clone();
    assert_eq!(confirmed.len(), 2);
    assert!(publisher.patches.asked()[0].ends_with(&confirmed[0]));
}
