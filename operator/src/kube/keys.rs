//! WireGuard key Secrets: one per configuration, in `--secret-namespace`, holding the gateway's key pair.

use std::collections::BTreeMap;

use api::StaticGatewayConfiguration;
use api::names::{
    SECRET_OWNER_NAME_LABEL, SECRET_OWNER_NAMESPACE_LABEL, SECRET_PRIVATE_KEY, SECRET_PUBLIC_KEY,
    key_secret_name,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::{Kube, MANAGER};

/// A WireGuard key pair as base64 text (wg(8) format).
pub struct KeyPair {
    /// Private key (never logged).
    pub private: String,
    /// Public key.
    pub public: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("private", &"<redacted>")
            .field("public", &self.public)
            .finish()
    }
}

/// Generates a fresh x25519 key pair.
pub fn generate_key_pair() -> KeyPair {
    let secret = x25519_dalek::StaticSecret::random();
    let public = x25519_dalek::PublicKey::from(&secret);
    KeyPair {
        private: B64.encode(secret.to_bytes()),
        public: B64.encode(public.as_bytes()),
    }
}

/// The public key of a stored private key; None when the text is not a 32-byte base64 key.
pub fn public_key_of(private_b64: &str) -> Option<String> {
    let bytes: [u8; 32] = B64.decode(private_b64.trim()).ok()?.try_into().ok()?;
    let secret = x25519_dalek::StaticSecret::from(bytes);
    Some(B64.encode(x25519_dalek::PublicKey::from(&secret).as_bytes()))
}

impl Kube {
    /// Ensures the configuration's key Secret; returns its public key. A Secret without a usable private key
    /// gets a new key pair (as upstream: deleting the Secret rotates the key). With `cache`, a Secret the cache
    /// has is not read again; one it does not have is read from the API server (it may just not have arrived
    /// yet) before anything is created.
    pub async fn ensure_key_secret(
        &self,
        sgc: &StaticGatewayConfiguration,
        cache: Option<&kube::runtime::reflector::Store<Secret>>,
    ) -> Result<(String, ObjectReference), kube::Error> {
        let uid = sgc.uid().unwrap_or_default();
        let name = key_secret_name(&uid);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.secret_namespace);
        let labels = BTreeMap::from([
            (
                SECRET_OWNER_NAMESPACE_LABEL.to_string(),
                sgc.namespace().unwrap_or_default(),
            ),
            (SECRET_OWNER_NAME_LABEL.to_string(), sgc.name_any()),
        ]);
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            name: Some(name.clone()),
            namespace: Some(self.secret_namespace.clone()),
            ..ObjectReference::default()
        };
        let cached = cache.and_then(|c| {
            c.get(&kube::runtime::reflector::ObjectRef::new(&name).within(&self.secret_namespace))
        });
        let existing = match cached {
            Some(s) => Some(Secret::clone(&s)),
            None => api.get_opt(&name).await?,
        };
        let stored = existing.as_ref().and_then(|s| {
            let data = s.data.as_ref()?;
            let private = String::from_utf8(data.get(SECRET_PRIVATE_KEY)?.0.clone()).ok()?;
            let public = public_key_of(&private)?;
            Some((private, public))
        });
        if let (Some(s), Some((_, public))) = (&existing, &stored) {
            let labelled = labels.iter().all(|(k, v)| s.labels().get(k) == Some(v));
            let public_ok = s
                .data
                .as_ref()
                .and_then(|d| d.get(SECRET_PUBLIC_KEY))
                .is_some_and(|p| p.0 == public.as_bytes());
            if labelled && public_ok {
                return Ok((public.clone(), reference));
            }
        }
        let (private, public) = match stored {
            Some(pair) => pair,
            None => {
                let k = generate_key_pair();
                (k.private, k.public)
            }
        };
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.secret_namespace.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                (SECRET_PRIVATE_KEY.to_string(), ByteString(private.into_bytes())),
                (
                    SECRET_PUBLIC_KEY.to_string(),
                    ByteString(public.clone().into_bytes()),
                ),
            ])),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        match existing {
            None => {
                api.create(&PostParams::default(), &secret).await?;
            }
            Some(_) => {
                api.patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await?;
            }
        }
        tracing::info!(secret = %name, "WireGuard key Secret written");
        Ok((public, reference))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pairs_are_valid_and_private_keys_redacted() {
        let k = generate_key_pair();
        assert_eq!(public_key_of(&k.private).as_deref(), Some(k.public.as_str()));
        assert_eq!(B64.decode(&k.public).expect("base64").len(), 32);
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&k.private) && dbg.contains("<redacted>"));
        assert_ne!(generate_key_pair().private, k.private);
        assert_eq!(public_key_of("not a key"), None);
    }
}
