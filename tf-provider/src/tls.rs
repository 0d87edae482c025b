//! go-plugin AutoMTLS.
//!
//! Terraform sends its client certificate (self-signed ECDSA P-521, CA:TRUE) in `PLUGIN_CLIENT_CERT` and
//! trusts only the server certificate we print in the handshake line. Two things stop stock rustls from
//! authenticating that client: webpki refuses a CA certificate as an end-entity certificate, and ring
//! cannot verify P-521 signatures. So the verifier here pins the exact certificate Terraform announced
//! (no chain building needed) and verifies the TLS handshake signature with RustCrypto's `p521` for
//! ECDSA-P521-SHA512, delegating every other scheme to ring. Anyone else on the loopback port cannot
//! complete the handshake.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, PrivateKeyDer, PrivatePkcs8KeyDer,
    SignatureVerificationAlgorithm, UnixTime, alg_id,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// A TLS setup failure.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// PLUGIN_CLIENT_CERT is not a PEM certificate.
    #[error("PLUGIN_CLIENT_CERT does not hold a PEM certificate: {0}")]
    ClientCert(String),
    /// Generating the server certificate failed.
    #[error("cannot generate the server certificate: {0}")]
    ServerCert(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// ECDSA P-521 with SHA-512, verified with the pure-Rust `p521` crate.
#[derive(Debug)]
struct EcdsaP521Sha512;

impl SignatureVerificationAlgorithm for EcdsaP521Sha512 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        use p521::ecdsa::signature::Verifier;
        let key = p521::ecdsa::VerifyingKey::from_sec1_bytes(public_key).map_err(|_| InvalidSignature)?;
        let sig = p521::ecdsa::Signature::from_der(signature).map_err(|_| InvalidSignature)?;
        key.verify(message, &sig).map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P521
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_SHA512
    }
}

static P521: &[&dyn SignatureVerificationAlgorithm] = &[&EcdsaP521Sha512];

/// ring's algorithms plus P-521 (built once; the tables must be `'static` for rustls).
fn algorithms() -> &'static WebPkiSupportedAlgorithms {
    static ALGS: OnceLock<WebPkiSupportedAlgorithms> = OnceLock::new();
    ALGS.get_or_init(|| {
        let ring = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        let mut all: Vec<&'static dyn SignatureVerificationAlgorithm> = ring.all.to_vec();
        all.extend_from_slice(P521);
        let mut mapping = ring.mapping.to_vec();
        mapping.insert(0, (SignatureScheme::ECDSA_NISTP521_SHA512, P521));
        WebPkiSupportedAlgorithms {
            all: Vec::leak(all),
            mapping: Vec::leak(mapping),
        }
    })
}

/// Accepts exactly the client certificate Terraform announced, with a valid handshake signature.
#[derive(Debug)]
pub struct PinnedClientCert {
    expected: CertificateDer<'static>,
}

impl PinnedClientCert {
    /// Pins the certificate in `pem` (the value of PLUGIN_CLIENT_CERT).
    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        let expected = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| TlsError::ClientCert(e.to_string()))?;
        Ok(PinnedClientCert { expected })
    }
}

impl ClientCertVerifier for PinnedClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "client certificate is not the one Terraform announced in PLUGIN_CLIENT_CERT".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// A fresh self-signed server certificate for `localhost` (what the Go client checks) and its key.
pub fn server_certificate() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "kube-egress-gateway");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key_der))
}

/// The rustls server configuration: our certificate, Terraform's pinned client certificate, HTTP/2.
pub fn server_config(
    client_cert_pem: &str,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier = Arc::new(PinnedClientCert::from_pem(client_cert_pem)?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p521_is_offered_and_pinning_is_exact() {
        assert!(
            algorithms()
                .supported_schemes()
                .contains(&SignatureScheme::ECDSA_NISTP521_SHA512)
        );
        let (cert, _) = server_certificate().expect("cert");
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cert.as_ref())
        );
        let v = PinnedClientCert::from_pem(&pem).expect("pem");
        assert!(v.verify_client_cert(&cert, &[], UnixTime::now()).is_ok());
        let (other, _) = server_certificate().expect("cert");
        assert!(v.verify_client_cert(&other, &[], UnixTime::now()).is_err());
        assert!(PinnedClientCert::from_pem("not a cert").is_err());
    }

    #[test]
    fn p521_signatures_verify() {
        use p521::ecdsa::signature::Signer;
        let sk = p521::ecdsa::SigningKey::from_slice(&[1u8; 66]).expect("key");
        let vk = p521::ecdsa::VerifyingKey::from(&sk);
        let sig: p521::ecdsa::Signature = sk.sign(b"handshake transcript");
        let der = sig.to_der();
        let pk = vk.to_encoded_point(false);
        assert!(
            EcdsaP521Sha512
                .verify_signature(pk.as_bytes(), b"handshake transcript", der.as_bytes())
                .is_ok()
        );
        assert!(
            EcdsaP521Sha512
                .verify_signature(pk.as_bytes(), b"another transcript", der.as_bytes())
                .is_err()
        );
    }
}
