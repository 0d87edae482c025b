//! The self-generated pair kept in a Secret (`--self-signed-secret`, the chart's `webhookGenerated` mode), so
//! that restarts and rolling updates serve the CA the webhook configurations already trust, and any number of
//! replicas serve one pair.
//!
//! - At start ([`SharedPair::start`]) a replica reads the Secret (type `Opaque`, as the chart renders it
//!   without data, or `kubernetes.io/tls`: `tls.crt`, `tls.key`, `ca.crt`, and `previous-ca.crt` after a
//!   renewal). A Secret without data is filled like an absent one; an absent one is created when the webhook
//!   may (the chart grants no `create`: it renders the Secret). A pair that verifies against its CA for every
//!   DNS name now is served as it is; otherwise (absent, unusable, another's) a new pair is written, created or
//!   updated with the `resourceVersion` read, so of replicas starting together one wins and the others, on
//!   the conflict, read and serve the winner's. The caBundle is patched only when it lacks a CA of the Secret.
//! - Renewal ([`crate::renew`]) writes the new pair the same way: the replica whose update wins patches the
//!   bundle; every replica watches the Secret, makes sure the bundle holds the new CA and serves the new pair
//!   [`crate::renew::BUNDLE_PROPAGATION`] later.
//!
//! The private key is read and written only as Secret data: it never appears in a log, an error or `Debug`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams, WatchEvent, WatchParams};
use prometheus_client::metrics::counter::Counter;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use time::{Duration, OffsetDateTime};

use crate::cabundle::{Bundled, ensure_ca_bundle};
use crate::renew::{CertExpiry, Publish, Published, Renewer, wait_until};
use crate::tls::{CertStore, SelfSigned, TlsError, Unusable, self_signed_at, stored_pair};

/// The type of a Secret the webhook creates.
pub const SECRET_TYPE: &str = "kubernetes.io/tls";
/// The types of a Secret that can hold the pair (the chart renders an `Opaque` one).
pub const SECRET_TYPES: [&str; 2] = ["Opaque", SECRET_TYPE];
/// The CA of the serving certificate.
pub const CA_CRT: &str = "ca.crt";
/// The serving certificate, then its CA.
pub const TLS_CRT: &str = "tls.crt";
/// The serving key.
pub const TLS_KEY: &str = "tls.key";
/// The CA of the pair a renewal replaced: it stays in the caBundle while replicas may still serve that pair.
pub const PREVIOUS_CA_CRT: &str = "previous-ca.crt";

/// How often a replica reads the Secret again after losing a write to another (bounded: each loss means
/// another replica wrote a pair, which the next read finds).
const ATTEMPTS: usize = 5;

/// Why no pair could be had from the Secret. Never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The API server refused or failed a request.
    #[error("Secret {name}: {source}")]
    Kube {
        /// The Secret.
        name: String,
        /// Why.
        source: kube::Error,
    },
    /// A pair could not be made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The Secret is of another type, which an update cannot change.
    #[error(
        "Secret {name} is of type {found:?}, not Opaque or {SECRET_TYPE}: it is not the webhook's; delete it or \
         name another with --self-signed-secret"
    )]
    WrongType {
        /// The Secret.
        name: String,
        /// Its type.
        found: String,
    },
    /// The Secret does not exist and the webhook may not create it.
    #[error(
        "Secret {name} does not exist in namespace {namespace} and the webhook may not create it: create it (type \
         Opaque, no data; the chart does in webhookGenerated mode) or grant create on Secrets"
    )]
    Absent {
        /// The Secret.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// Every write lost to another writer.
    #[error("Secret {name}: every one of {ATTEMPTS} writes conflicted with another writer")]
    Contended {
        /// The Secret.
        name: String,
    },
}

/// Why a Secret's content cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum Stored {
    /// It is of another type.
    #[error("type {0:?}, not Opaque or {SECRET_TYPE}")]
    WrongType(String),
    /// A key is missing.
    #[error("no {0}")]
    Missing(&'static str),
    /// The pair is unusable.
    #[error(transparent)]
    Unusable(#[from] Unusable),
}

/// The pair in `secret`, if it serves `dns_names` at `now`.
pub fn pair_of(secret: &Secret, dns_names: &[String], now: OffsetDateTime) -> Result<SelfSigned, Stored> {
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    if !SECRET_TYPES.contains(&kind) {
        return Err(Stored::WrongType(kind.to_string()));
    }
    let data = secret.data.as_ref();
    let get = |key: &'static str| {
        data.and_then(|d| d.get(key))
            .map(|b| b.0.as_slice())
            .ok_or(Stored::Missing(key))
    };
    Ok(stored_pair(
        get(CA_CRT)?,
        get(TLS_CRT)?,
        get(TLS_KEY)?,
        dns_names,
        now,
    )?)
}

/// The text of `key` in `secret`, if any.
fn text_of<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| std::str::from_utf8(&b.0).ok())
}

/// The CA certificate (PEM) in `ca.crt` of `secret`, when it holds one.
fn stored_ca(secret: &Secret) -> Option<String> {
    let ca = text_of(secret, CA_CRT)?;
    let parsed = CertificateDer::pem_slice_iter(ca.as_bytes()).next()?.ok()?;
    x509_parser::parse_x509_certificate(&parsed).ok()?;
    Some(ca.to_string())
}

/// The caBundle `secret` needs: its CA, and the one its pair replaced.
pub fn bundle_of(secret: &Secret) -> String {
    let text = |key| text_of(secret, key).unwrap_or_default();
    let (ca, previous) = (text(CA_CRT), text(PREVIOUS_CA_CRT));
    if previous.is_empty() || previous == ca {
        ca.to_string()
    } else {
        format!("{ca}{previous}")
    }
}

/// The Secret `name` holding `pair`, and `previous_ca` when it replaces that CA's pair.
pub fn secret_for(name: &str, pair: &SelfSigned, previous_ca: Option<&str>) -> Secret {
    let mut data = BTreeMap::from([
        (CA_CRT.to_string(), ByteString(pair.ca_pem.clone().into_bytes())),
        (
            TLS_CRT.to_string(),
            ByteString(pair.cert_pem.clone().into_bytes()),
        ),
        (
            TLS_KEY.to_string(),
            ByteString(pair.key_pem.expose().as_bytes().to_vec()),
        ),
    ]);
    if let Some(previous) = previous_ca.filter(|p| *p != pair.ca_pem) {
        data.insert(
            PREVIOUS_CA_CRT.to_string(),
            ByteString(previous.as_bytes().to_vec()),
        );
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_string()),
        data: Some(data),
        ..Secret::default()
    }
}

/// How the served pair was had at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The Secret's pair, as it was.
    Reused,
    /// No Secret: this replica made the pair and created it.
    Created,
    /// The Secret's content could not be served (`why`): this replica made a pair and replaced it.
    Replaced {
        /// Why the old content was unusable.
        why: String,
    },
    /// Another replica wrote the Secret while this one tried to: its pair.
    Joined,
}

/// Where the configurations to patch are.
#[derive(Clone)]
pub struct Bundles {
    client: Client,
    mutating: Option<String>,
    validating: Option<String>,
}

impl std::fmt::Debug for Bundles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundles")
            .field("mutating", &self.mutating)
            .field("validating", &self.validating)
            .finish_non_exhaustive()
    }
}

impl Bundles {
    /// Makes every named configuration trust every CA of `bundle` besides those it trusts, less those of
    /// `remove`; an error when none exists (a CA in no bundle verifies nothing).
    async fn ensure(&self, bundle: &str, remove: &str) -> Result<Bundled, String> {
        let done = ensure_ca_bundle(
            self.client.clone(),
            bundle,
            remove,
            self.mutating.as_deref(),
            self.validating.as_deref(),
        )
        .await
        .map_err(|e| format!("patching the caBundle: {e}"))?;
        if done.found == 0 {
            return Err("no webhook configuration was found to patch".to_string());
        }
        Ok(done)
    }
}

/// The Secret of the pair, read and written by name in its namespace.
#[derive(Clone)]
struct PairSecret {
    api: Api<Secret>,
    namespace: String,
    name: String,
    dns_names: Vec<String>,
    lifetime: Duration,
}

impl PairSecret {
    fn kube(&self, source: kube::Error) -> SecretError {
        SecretError::Kube {
            name: self.name.clone(),
            source,
        }
    }

    /// Writes `pair` (and `previous_ca`) over `current`, the content read (its `resourceVersion` makes a
    /// concurrent writer's update conflict), or creates the Secret when there was none. `Ok(false)`: another
    /// writer came first.
    async fn write(
        &self,
        current: Option<&Secret>,
        pair: &SelfSigned,
        previous_ca: Option<&str>,
    ) -> Result<bool, kube::Error> {
        let mut secret = secret_for(&self.name, pair, previous_ca);
        let written = match current {
            None => self.api.create(&PostParams::default(), &secret).await,
            Some(current) => {
                secret.metadata.resource_version = current.metadata.resource_version.clone();
                // A Secret's type cannot change: an Opaque one (the chart's) stays Opaque.
                secret.type_ = current.type_.clone();
                secret.metadata.labels = current.metadata.labels.clone();
                secret.metadata.annotations = current.metadata.annotations.clone();
                self.api
                    .replace(&self.name, &PostParams::default(), &secret)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The pair to serve at start, the caBundle it needs, and how it was had.
    async fn obtain(&self) -> Result<(SelfSigned, String, Origin), SecretError> {
        let mut lost = false;
        for _ in 0..ATTEMPTS {
            let now = OffsetDateTime::now_utc();
            let current = self.api.get_opt(&self.name).await.map_err(|e| self.kube(e))?;
            let filled = current
                .as_ref()
                .filter(|s| s.data.as_ref().is_some_and(|d| !d.is_empty()));
            let why = match current.as_ref().map(|s| pair_of(s, &self.dns_names, now)) {
                None => None,
                // Rendered by the chart, not filled yet (its type checked).
                Some(Err(Stored::Missing(_))) if filled.is_none() => None,
                Some(Ok(pair)) => {
                    let origin = if lost { Origin::Joined } else { Origin::Reused };
                    let bundle = current.as_ref().map(bundle_of).unwrap_or_default();
                    tracing::info!(secret = %self.name, ?origin, not_after = %pair.not_after, "serving the certificate of the Secret");
                    return Ok((pair, bundle, origin));
                }
                Some(Err(Stored::WrongType(found))) => {
                    return Err(SecretError::WrongType {
                        name: self.name.clone(),
                        found,
                    });
                }
                Some(Err(why)) => Some(why.to_string()),
            };
            if let Some(why) = &why {
                tracing::warn!(secret = %self.name, %why, "the Secret's certificate cannot be served; replacing it with a new self-generated pair");
            }
            let pair = self_signed_at(&self.dns_names, now, self.lifetime)?;
            // Replicas running may serve the replaced pair: its CA stays trusted as after a renewal.
            let replaced_ca = current.as_ref().and_then(stored_ca);
            let written = match self.write(current.as_ref(), &pair, replaced_ca.as_deref()).await {
                Err(kube::Error::Api(status)) if current.is_none() && status.code == 403 => {
                    return Err(SecretError::Absent {
                        name: self.name.clone(),
                        namespace: self.namespace.clone(),
                    });
                }
                written => written.map_err(|e| self.kube(e))?,
            };
            if written {
                let origin = why.map_or(Origin::Created, |why| Origin::Replaced { why });
                tracing::info!(secret = %self.name, ?origin, "wrote a new self-generated pair to the Secret");
                let bundle = format!("{}{}", pair.ca_pem, replaced_ca.unwrap_or_default());
                return Ok((pair, bundle, origin));
            }
            tracing::info!(secret = %self.name, "another replica wrote the Secret first; reading its pair");
            lost = true;
        }
        Err(SecretError::Contended {
            name: self.name.clone(),
        })
    }

    /// Sends the Secret's content (`None`: deleted) on `tx` now and at every change, until `shutdown` flips
    /// or nobody listens. Needs only `get` and `watch` on the Secret by name.
    async fn watch(
        self,
        tx: tokio::sync::mpsc::Sender<Option<Secret>>,
        retry: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", self.name))
            .timeout(290);
        loop {
            let watched = async {
                let current = self.api.get_opt(&self.name).await?;
                let version = current
                    .as_ref()
                    .and_then(|s| s.metadata.resource_version.clone())
                    .unwrap_or_else(|| "0".to_string());
                if tx.send(current).await.is_err() {
                    return Ok(false);
                }
                let stream = self.api.watch(&params, &version).await?;
                futures::pin_mut!(stream);
                while let Some(event) = stream.try_next().await? {
                    let sent = match event {
                        WatchEvent::Added(s) | WatchEvent::Modified(s) => tx.send(Some(s)).await,
                        WatchEvent::Deleted(_) => tx.send(None).await,
                        WatchEvent::Bookmark(_) => Ok(()),
                        // Expired resourceVersion and the like: read again.
                        WatchEvent::Error(_) => break,
                    };
                    if sent.is_err() {
                        return Ok(false);
                    }
                }
                Ok::<_, kube::Error>(true)
            };
            let again = tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                again = watched => again,
            };
            match again {
                Ok(true) => continue,
                Ok(false) => return,
                Err(error) => {
                    tracing::warn!(secret = %self.name, %error, "watching the Secret failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }
}

/// Publishes a renewal: writes the Secret over the pair being served, then patches the bundle.
struct Publisher {
    secret: PairSecret,
    bundles: Bundles,
}

impl Publish for Publisher {
    async fn publish(&self, serving_ca: &str, next: &SelfSigned) -> Result<Published, String> {
        let secret = &self.secret;
        let current = secret
            .api
            .get_opt(&secret.name)
            .await
            .map_err(|e| secret.kube(e).to_string())?;
        if let Some(found) = current
            .as_ref()
            .and_then(|s| s.type_.clone())
            .filter(|t| !SECRET_TYPES.contains(&t.as_str()))
        {
            // Its type cannot change: no update can hold the pair.
            return Err(SecretError::WrongType {
                name: secret.name.clone(),
                found,
            }
            .to_string());
        }
        let now = OffsetDateTime::now_utc();
        let renewed_by_another = current
            .as_ref()
            .and_then(|s| pair_of(s, &secret.dns_names, now).ok())
            .is_some_and(|pair| pair.ca_pem != serving_ca);
        if renewed_by_another
            || !secret
                .write(current.as_ref(), next, Some(serving_ca))
                .await
                .map_err(|e| secret.kube(e).to_string())?
        {
            return Ok(Published::Superseded);
        }
        tracing::info!(secret = %secret.name, "wrote the renewed pair to the Secret");
        // The CA before the one being replaced leaves the bundle: no replica serves its pair any more.
        let before = current
            .as_ref()
            .and_then(|s| text_of(s, PREVIOUS_CA_CRT))
            .filter(|before| *before != serving_ca)
            .unwrap_or_default();
        self.bundles
            .ensure(&format!("{serving_ca}{}", next.ca_pem), before)
            .await?;
        Ok(Published::Done)
    }

    async fn confirm(&self, ca: &str) -> Result<bool, String> {
        Ok(self.bundles.ensure(ca, "").await?.patched > 0)
    }
}

/// The self-generated pair shared through a Secret; see the module documentation.
#[derive(Clone)]
pub struct SharedPair {
    /// Client of the webhook's identity.
    pub client: Client,
    /// The Secret's namespace (the webhook's).
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// DNS names the certificate is for.
    pub dns_names: Vec<String>,
    /// MutatingWebhookConfiguration whose caBundle to keep.
    pub mutating: Option<String>,
    /// ValidatingWebhookConfiguration whose caBundle to keep.
    pub validating: Option<String>,
    /// Lifetime of a new pair ([`crate::tls::SELF_SIGNED_LIFETIME`]).
    pub lifetime: Duration,
    /// Wait between a CA in the bundle and serving its certificate
    /// ([`crate::renew::BUNDLE_PROPAGATION`]).
    pub propagation: Duration,
    /// Wait after a failure ([`crate::renew::RETRY`]).
    pub retry: Duration,
}

impl std::fmt::Debug for SharedPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPair")
            .field("namespace", &self.namespace)
            .field("secret", &self.secret)
            .field("dns_names", &self.dns_names)
            .finish_non_exhaustive()
    }
}

/// What [`SharedPair::start`] serves.
pub struct Started {
    /// Hands rustls the served certificate (replaced on renewal).
    pub store: Arc<CertStore>,
    /// The pair served at start.
    pub serving: SelfSigned,
    /// How it was had.
    pub origin: Origin,
    /// What the caBundle needed.
    pub bundled: Bundled,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("serving", &self.serving)
            .field("origin", &self.origin)
            .field("bundled", &self.bundled)
            .finish_non_exhaustive()
    }
}

impl SharedPair {
    /// Gets the pair to serve from the Secret (writing one when it has none to serve), makes sure the webhook
    /// configurations trust its CA, and keeps it renewed and followed until `shutdown` flips. The served
    /// certificate is tracked in `expiry`, swaps are counted in `reloads`.
    pub async fn start(
        self,
        expiry: Arc<CertExpiry>,
        reloads: Counter,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Started, SecretError> {
        let secret = PairSecret {
            api: Api::namespaced(self.client.clone(), &self.namespace),
            namespace: self.namespace.clone(),
            name: self.secret.clone(),
            dns_names: self.dns_names.clone(),
            lifetime: self.lifetime,
        };
        let (pair, bundle, origin) = secret.obtain().await?;
        let bundles = Bundles {
            client: self.client.clone(),
            mutating: self.mutating.clone(),
            validating: self.validating.clone(),
        };
        let bundled = ensure_ca_bundle(
            self.client.clone(),
            &bundle,
            "",
            self.mutating.as_deref(),
            self.validating.as_deref(),
        )
        .await
        .map_err(|e| secret.kube(e))?;
        let store = CertStore::new(pair.key.clone());
        let renewer = Renewer::new(
            self.dns_names.clone(),
            &pair,
            self.lifetime,
            store.clone(),
            expiry,
            reloads,
        )
        .with_waits(self.propagation, self.retry);
        // As without a Secret: a renewed CA needs a configuration to carry it.
        if bundled.found > 0 {
            tokio::spawn(keep(secret, renewer, bundles, shutdown));
        } else {
            tracing::warn!(
                "no webhook configuration carries the self-generated CA: the certificate is not renewed"
            );
        }
        Ok(Started {
            store,
            serving: pair,
            origin,
            bundled,
        })
    }
}

/// Renews when due and follows the Secret: a pair another replica wrote is served once the bundle holds its
/// CA, [`crate::renew::BUNDLE_PROPAGATION`] later; content that cannot be served is replaced by a renewal.
async fn keep(
    secret: PairSecret,
    mut renewer: Renewer,
    bundles: Bundles,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let retry = renewer.retry();
    let (tx, mut changes) = tokio::sync::mpsc::channel(4);
    tokio::spawn(secret.clone().watch(
        tx,
        std::time::Duration::try_from(retry).unwrap_or(std::time::Duration::from_secs(1)),
        shutdown.clone(),
    ));
    let dns_names = secret.dns_names.clone();
    let publisher = Publisher { secret, bundles };
    // A pair seen in the Secret, with the bundle it needs, not yet handed to the renewer.
    let mut seen: Option<(SelfSigned, String)> = None;
    // The Secret is of a type no update can change (reported once): nothing is written until it changes.
    let mut foreign = false;
    loop {
        let now = OffsetDateTime::now_utc();
        let mut next = if foreign {
            now + Duration::days(1)
        } else {
            renewer.step(now, &publisher).await
        };
        if let Some((pair, bundle)) = seen.take() {
            // The CA served here stays trusted until the adopted pair is served.
            let bundle = format!("{bundle}{}", renewer.serving_ca());
            match publisher.bundles.ensure(&bundle, "").await {
                Ok(_) => {
                    renewer.adopt(pair, OffsetDateTime::now_utc());
                    next = renewer.step(OffsetDateTime::now_utc(), &publisher).await;
                }
                Err(error) => {
                    renewer.failed();
                    tracing::warn!(%error, "cannot put the renewed CA of the Secret into the caBundle; the current certificate is still served, retrying");
                    seen = Some((pair, bundle));
                    next = next.min(now + retry);
                }
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(wait_until(next)) => {}
            change = changes.recv() => match change {
                Some(Some(content)) => match pair_of(&content, &dns_names, OffsetDateTime::now_utc()) {
                    Err(Stored::WrongType(found)) => {
                        if !foreign {
                            foreign = true;
                            renewer.failed();
                            tracing::error!(secret = %publisher.secret.name, %found, "the Secret is of a type that cannot hold the pair (a type cannot change): nothing is written to it until it is deleted or replaced; the current certificate is still served");
                        }
                    }
                    Ok(pair) if !renewer.knows(&pair) => {
                        foreign = false;
                        seen = Some((pair, bundle_of(&content)));
                    }
                    Ok(_) => foreign = false,
                    Err(why) => {
                        foreign = false;
                        tracing::warn!(secret = %publisher.secret.name, %why, "the Secret's certificate cannot be served; replacing it with a new self-generated pair");
                        renewer.renew_now(OffsetDateTime::now_utc());
                    }
                },
                Some(None) => {
                    foreign = false;
                    tracing::warn!(secret = %publisher.secret.name, "the Secret was deleted; writing a new self-generated pair");
                    renewer.renew_now(OffsetDateTime::now_utc());
                }
                // The watcher stopped: shutting down.
                None => return,
            },
        }
    }
}
