//! Patches the self-generated CA into the webhook configurations, so no cert-manager is needed.

use std::collections::BTreeSet;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// Sets `clientConfig.caBundle` of every webhook in the named configurations (absent ones are skipped with
/// a warning: the chart may not install both). Returns how many configurations it patched: a renewal that
/// patched none must not serve a certificate of the new CA, which nobody would trust.
pub async fn patch_ca_bundle(
    client: Client,
    ca_pem: &str,
    mutating: Option<&str>,
    validating: Option<&str>,
) -> Result<usize, kube::Error> {
    let bundled = bundle_into(client, ca_pem, mutating, validating, Only::Always).await?;
    Ok(bundled.found)
}

/// What [`ensure_ca_bundle`] found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bundled {
    /// Named configurations that exist: all of them hold the bundle's CAs now.
    pub found: usize,
    /// Of those, the ones that had to be patched.
    pub patched: usize,
}

/// Makes every webhook of the named configurations trust every CA of `bundle` (PEM), patching `bundle` in only
/// where a webhook's caBundle lacks one: a restart that finds its CA in place changes nothing.
pub async fn ensure_ca_bundle(
    client: Client,
    bundle: &str,
    mutating: Option<&str>,
    validating: Option<&str>,
) -> Result<Bundled, kube::Error> {
    bundle_into(client, bundle, mutating, validating, Only::WhenMissing).await
}

/// Whether to patch a configuration that already trusts every CA of the bundle.
#[derive(Clone, Copy)]
enum Only {
    Always,
    WhenMissing,
}

async fn bundle_into(
    client: Client,
    ca_pem: &str,
    mutating: Option<&str>,
    validating: Option<&str>,
    only: Only,
) -> Result<Bundled, kube::Error> {
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let wanted = certificates(ca_pem.as_bytes());
    let mut done = Bundled::default();
    if let Some(name) = mutating {
        let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
        done.add(patch_one(&api, name, &bundle, &wanted, only).await?);
    }
    if let Some(name) = validating {
        let api = Api::<ValidatingWebhookConfiguration>::all(client);
        done.add(patch_one(&api, name, &bundle, &wanted, only).await?);
    }
    Ok(done)
}

impl Bundled {
    fn add(&mut self, one: Option<bool>) {
        if let Some(patched) = one {
            self.found += 1;
            self.patched += usize::from(patched);
        }
    }
}

/// The certificates (DER) of a PEM bundle.
fn certificates(pem: &[u8]) -> BTreeSet<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

/// A webhook configuration kind: the caBundle of each of its webhooks.
trait CaBundles:
    kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned
{
    fn ca_bundles(&self) -> Vec<Option<Vec<u8>>>;
}

fn ca_bundles<'a>(clients: impl Iterator<Item = &'a WebhookClientConfig>) -> Vec<Option<Vec<u8>>> {
    clients
        .map(|c| c.ca_bundle.as_ref().map(|b| b.0.clone()))
        .collect()
}

impl CaBundles for MutatingWebhookConfiguration {
    fn ca_bundles(&self) -> Vec<Option<Vec<u8>>> {
        ca_bundles(self.webhooks.iter().flatten().map(|w| &w.client_config))
    }
}

impl CaBundles for ValidatingWebhookConfiguration {
    fn ca_bundles(&self) -> Vec<Option<Vec<u8>>> {
        ca_bundles(self.webhooks.iter().flatten().map(|w| &w.client_config))
    }
}

/// Patches `bundle` (base64) into every webhook of configuration `name` of `api`'s kind, unless `only` says to
/// leave a configuration whose every webhook trusts all of `wanted`. Returns `None` when the configuration does
/// not exist, else whether it was patched.
async fn patch_one<K: CaBundles>(
    api: &Api<K>,
    name: &str,
    bundle: &str,
    wanted: &BTreeSet<Vec<u8>>,
    only: Only,
) -> Result<Option<bool>, kube::Error> {
    let kind = K::kind(&());
    let Some(cfg) = api.get_opt(name).await? else {
        tracing::warn!(name, %kind, "webhook configuration not found; caBundle not patched");
        return Ok(None);
    };
    let current = cfg.ca_bundles();
    let trusted = current
        .iter()
        .all(|b| b.as_deref().is_some_and(|b| certificates(b).is_superset(wanted)));
    if matches!(only, Only::WhenMissing) && trusted {
        tracing::info!(name, %kind, "the webhook configuration already trusts the CA; not patched");
        return Ok(Some(false));
    }
    let n = current.len();
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(ops(n, bundle)))
        .await?;
    tracing::info!(name, webhooks = n, %kind, "patched caBundle into the webhook configuration");
    Ok(Some(true))
}

fn ops(webhooks: usize, bundle: &str) -> json_patch::Patch {
    json_patch::Patch(
        (0..webhooks)
            .map(|i| {
                json_patch::PatchOperation::Add(json_patch::AddOperation {
                    path: jsonptr::PointerBuf::from_tokens([
                        "webhooks".to_string(),
                        i.to_string(),
                        "clientConfig".into(),
                        "caBundle".into(),
                    ]),
                    value: serde_json::Value::String(bundle.to_string()),
                })
            })
            .collect(),
    )
}
