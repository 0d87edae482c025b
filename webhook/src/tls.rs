//! Serving certificates: from files (cert-manager / Secret volume) re-read on rotation without a restart, or
//! self-generated (and kept in a Secret, [`crate::pair_secret`]) with the CA bundle patched into the webhook
//! configurations.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// TLS set-up failures. Never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate PEM holds no certificate.
    #[error("{0}: no PEM certificate found")]
    NoCertificate(String),
    /// The key PEM holds no usable private key.
    #[error(
        "{0}: no usable PEM private key found (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA P-256/P-384 or Ed25519)"
    )]
    BadKey(String),
    /// Certificate generation failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds a rustls certified key from PEM text.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8], origin: &str) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(origin.to_string()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::BadKey(origin.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| TlsError::BadKey(origin.to_string()))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Hands rustls the current certificate; replaced in place on rotation.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// A store serving `key`.
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(CertStore {
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Serve `key` from the next handshake on.
    pub fn replace(&self, key: CertifiedKey) {
        if let Ok(mut cur) = self.current.write() {
            *cur = Arc::new(key);
        }
    }

    /// The certificate being served.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// rustls server configuration: TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1, certificate from `store`.
pub fn server_config(store: Arc<CertStore>) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Certificate and key files, re-read when their contents change.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// PEM certificate chain (`tls.crt`).
    pub cert: PathBuf,
    /// PEM private key (`tls.key`).
    pub key: PathBuf,
}

impl CertFiles {
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    /// Loads the current pair.
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        let (c, k) = self.read()?;
        certified_key(&c, &k, &self.cert.display().to_string())
    }

    /// Polls the files every `interval` and swaps the served certificate when they change. A half-written
    /// or mismatched pair (cert-manager writes two files) is retried on the next tick; the old certificate
    /// keeps being served meanwhile. `on_change` hears every outcome of a change.
    pub async fn watch(
        self,
        store: Arc<CertStore>,
        interval: Duration,
        mut on_change: impl FnMut(Reload) + Send + 'static,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut last = self.read().ok();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            let Ok(now) = self.read() else { continue };
            if last.as_ref() == Some(&now) {
                continue;
            }
            let outcome = match certified_key(&now.0, &now.1, &self.cert.display().to_string()) {
                Ok(key) if key.keys_match().is_ok() => {
                    store.replace(key);
                    tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                    Reload::Swapped
                }
                Ok(_) => {
                    tracing::warn!(cert = %self.cert.display(), "certificate and key do not match; keeping the old pair");
                    Reload::Rejected
                }
                Err(error) => {
                    tracing::warn!(%error, "new certificate unusable; keeping the old one");
                    Reload::Rejected
                }
            };
            // Judge each content once: a half-written pair is judged again when the second file lands.
            last = Some(now);
            on_change(outcome);
        }
    }
}

/// What the file watcher did with a change on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// The new pair is being served.
    Swapped,
    /// The new files are unusable (yet); the previous pair is still served.
    Rejected,
}

/// A private key in PEM. Never printed: its `Debug` says only that it is redacted, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPem(String);

impl KeyPem {
    /// The PEM text, to write it where it is kept (the Secret's `tls.key`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPem(<redacted>)")
    }
}

/// A self-generated CA and serving certificate.
#[derive(Clone)]
pub struct SelfSigned {
    /// CA certificate PEM: the caBundle of the webhook configurations.
    pub ca_pem: String,
    /// The serving certificate's chain in PEM (the certificate, then the CA): a Secret's `tls.crt`.
    pub cert_pem: String,
    /// The serving key in PEM: a Secret's `tls.key`.
    pub key_pem: KeyPem,
    /// The serving key.
    pub key: CertifiedKey,
    /// When they were made (their `notBefore` is [`CLOCK_SKEW`] earlier).
    pub issued: time::OffsetDateTime,
    /// When the CA and the serving certificate expire.
    pub not_after: time::OffsetDateTime,
}

impl SelfSigned {
    /// Whether `self` and `other` serve the same certificate.
    pub fn same_certificate(&self, other: &SelfSigned) -> bool {
        self.key.cert.first() == other.key.cert.first()
    }
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfSigned")
            .field("ca_pem", &self.ca_pem)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// How long a self-generated CA and serving certificate are valid. The webhook renews them at two-thirds of it
/// ([`crate::renew`]).
pub const SELF_SIGNED_LIFETIME: time::Duration = time::Duration::days(365);

/// How much earlier than their making self-generated certificates become valid: small clock skew between the
/// webhook and the API server.
pub const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// Generates a CA and a serving certificate for `dns_names` (e.g. `svc.ns.svc`), valid
/// [`SELF_SIGNED_LIFETIME`] from now.
pub fn self_signed(dns_names: &[String]) -> Result<SelfSigned, TlsError> {
    self_signed_at(dns_names, time::OffsetDateTime::now_utc(), SELF_SIGNED_LIFETIME)
}

/// [`self_signed`] as made at `now`, valid for `lifetime`.
pub fn self_signed_at(
    dns_names: &[String],
    now: time::OffsetDateTime,
    lifetime: time::Duration,
) -> Result<SelfSigned, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let not_before = now - CLOCK_SKEW;
    let not_after = now + lifetime;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kube-egress-gateway webhook CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut leaf_params = CertificateParams::new(dns_names.to_vec())?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, dns_names.first().cloned().unwrap_or_default());
    leaf_params.not_before = not_before;
    leaf_params.not_after = not_after;
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    let chain = format!("{}{}", leaf.pem(), ca_cert.pem());
    let key_pem = KeyPem(leaf_key.serialize_pem());
    let key = certified_key(chain.as_bytes(), key_pem.expose().as_bytes(), "self-generated")?;
    Ok(SelfSigned {
        ca_pem: ca_cert.pem(),
        cert_pem: chain,
        key_pem,
        key,
        issued: now,
        not_after,
    })
}

/// Why a stored CA, certificate and key cannot be served. Never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    /// A part is not valid PEM of its kind, or the key is not the certificate's.
    #[error(transparent)]
    Pem(#[from] TlsError),
    /// The key does not belong to the certificate.
    #[error("the private key is not the certificate's")]
    KeyMismatch,
    /// The CA is not exactly one certificate.
    #[error("the CA holds {0} certificates, not one")]
    CaCount(usize),
    /// The certificate does not verify for a name against the CA at that time (signed by another CA, not
    /// for the name, expired or not yet valid).
    #[error("the certificate does not verify for {name} against the CA: {why}")]
    Untrusted {
        /// The DNS name.
        name: String,
        /// rustls's reason.
        why: String,
    },
    /// The certificate's validity could not be read.
    #[error("the certificate's validity cannot be read: {0}")]
    Validity(String),
}

/// A stored CA (`ca_pem`), serving chain (`cert_pem`) and key (`key_pem`), checked to be a pair that clients
/// trusting the CA accept at `now` for every one of `dns_names`.
pub fn stored_pair(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
    dns_names: &[String],
    now: time::OffsetDateTime,
) -> Result<SelfSigned, Unusable> {
    use rustls::client::danger::ServerCertVerifier as _;
    let key = certified_key(cert_pem, key_pem, "the stored certificate")?;
    key.keys_match().map_err(|_| Unusable::KeyMismatch)?;
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem)
        .filter_map(Result::ok)
        .collect();
    let [ca] = cas.as_slice() else {
        return Err(Unusable::CaCount(cas.len()));
    };
    let untrusted = |name: &str, why: String| Unusable::Untrusted {
        name: name.to_string(),
        why,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| untrusted("any name", e.to_string()))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| untrusted("any name", e.to_string()))?;
    let seconds = u64::try_from(now.unix_timestamp()).unwrap_or_default();
    let at = rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(seconds));
    let (leaf, intermediates) = key
        .cert
        .split_first()
        .ok_or_else(|| Unusable::Pem(TlsError::NoCertificate("the stored certificate".into())))?;
    for name in dns_names {
        let server = rustls_pki_types::ServerName::try_from(name.as_str())
            .map_err(|e| untrusted(name, e.to_string()))?;
        verifier
            .verify_server_cert(leaf, intermediates, &server, &[], at)
            .map_err(|e| untrusted(name, e.to_string()))?;
    }
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| Unusable::Validity(e.to_string()))?;
    let (not_before, not_after) = (
        parsed.validity().not_before.to_datetime(),
        parsed.validity().not_after.to_datetime(),
    );
    let ca_text = std::str::from_utf8(ca_pem).map_err(|e| Unusable::Validity(e.to_string()))?;
    let cert_text = std::str::from_utf8(cert_pem).map_err(|e| Unusable::Validity(e.to_string()))?;
    let key_text = std::str::from_utf8(key_pem).map_err(|_| TlsError::BadKey("the stored key".into()))?;
    Ok(SelfSigned {
        ca_pem: ca_text.to_string(),
        cert_pem: cert_text.to_string(),
        key_pem: KeyPem(key_text.to_string()),
        key,
        issued: not_before + CLOCK_SKEW,
        not_after,
    })
}
