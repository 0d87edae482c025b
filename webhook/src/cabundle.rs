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

/// Sets `clientConfig.caBundle` of every webhook in the named configurations to `ca_pem` (absent ones are
/// skipped with a warning: the chart may not install both). Returns how many configurations it patched: a
/// renewal that patched none must not serve a certificate of the new CA, which nobody would trust.
pub async fn patch_ca_bundle(
    client: Client,
    ca_pem: &str,
    mutating: Option<&str>,
    validating: Option<&str>,
) -> Result<usize, kube::Error> {
    let bundled = bundle_into(client, ca_pem, mutating, validating, Change::Replace).await?;
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

/// Makes every webhook of the named configurations trust every CA of `add` (PEM) besides the CAs it already
/// trusts, less those of `remove` (a renewal drops the CA before the one it replaces; nothing else removes a
/// CA, so a replica still serving an older pair stays trusted). A configuration already so is left alone: a
/// restart that finds its CA in place changes nothing. Each patch holds a `test` of every webhook's
/// `clientConfig` as read, so a concurrent writer's CA is never overwritten: the patch fails and is made
/// again from a fresh read.
pub async fn ensure_ca_bundle(
    client: Client,
    add: &str,
    remove: &str,
    mutating: Option<&str>,
    validating: Option<&str>,
) -> Result<Bundled, kube::Error> {
    let remove = certificates(remove.as_bytes());
    bundle_into(client, add, mutating, validating, Change::Merge(&remove)).await
}

/// How a configuration's caBundles change.
#[derive(Clone, Copy)]
enum Change<'a> {
    /// Every caBundle becomes the given bundle.
    Replace,
    /// The given bundle's CAs are added to each caBundle, these removed.
    Merge(&'a BTreeSet<Vec<u8>>),
}

/// How often a patch whose `test` failed is made from a fresh read. Each failure means another writer's patch
/// went in (replicas starting or renewing together), so a few more than the replicas there are.
const ATTEMPTS: usize = 12;

async fn bundle_into(
    client: Client,
    ca_pem: &str,
    mutating: Option<&str>,
    validating: Option<&str>,
    change: Change<'_>,
) -> Result<Bundled, kube::Error> {
    let wanted = certificates(ca_pem.as_bytes());
    let mut done = Bundled::default();
    if let Some(name) = mutating {
        let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
        done.add(patch_one(&api, name, ca_pem, &wanted, change).await?);
    }
    if let Some(name) = validating {
        let api = Api::<ValidatingWebhookConfiguration>::all(client);
        done.add(patch_one(&api, name, ca_pem, &wanted, change).await?);
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

/// A certificate (DER) as PEM.
fn pem(der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// The caBundle (PEM) a webhook trusting `current` (PEM, if any) gets: `None` when it stays as it is.
pub fn merged(current: Option<&[u8]>, add: &BTreeSet<Vec<u8>>, remove: &BTreeSet<Vec<u8>>) -> Option<String> {
    let held: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(current.unwrap_or_default())
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect();
    let kept: Vec<&Vec<u8>> = held.iter().filter(|c| !remove.contains(*c)).collect();
    let added: Vec<&Vec<u8>> = add.iter().filter(|c| !held.contains(c)).collect();
    if kept.len() == held.len() && added.is_empty() && current.is_some() {
        return None;
    }
    Some(kept.into_iter().chain(added).map(|c| pem(c)).collect())
}

/// A webhook configuration kind: the client configuration of each of its webhooks.
trait CaBundles:
    kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned
{
    fn client_configs(&self) -> Vec<&WebhookClientConfig>;
}

impl CaBundles for MutatingWebhookConfiguration {
    fn client_configs(&self) -> Vec<&WebhookClientConfig> {
        self.webhooks.iter().flatten().map(|w| &w.client_config).collect()
    }
}

impl CaBundles for ValidatingWebhookConfiguration {
    fn client_configs(&self) -> Vec<&WebhookClientConfig> {
        self.webhooks.iter().flatten().map(|w| &w.client_config).collect()
    }
}

/// Changes the caBundle of every webhook of configuration `name` of `api`'s kind as `change` says with `bundle`
/// (PEM; its certificates `wanted`). Returns `None` when the configuration does not exist, else whether it was
/// patched.
async fn patch_one<K: CaBundles>(
    api: &Api<K>,
    name: &str,
    bundle: &str,
    wanted: &BTreeSet<Vec<u8>>,
    change: Change<'_>,
) -> Result<Option<bool>, kube::Error> {
    let kind = K::kind(&());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(cfg) = api.get_opt(name).await? else {
            tracing::warn!(name, %kind, "webhook configuration not found; caBundle not patched");
            return Ok(None);
        };
        let clients = cfg.client_configs();
        let bundles: Vec<Option<String>> = clients
            .iter()
            .map(|c| match change {
                Change::Replace => Some(bundle.to_string()),
                Change::Merge(remove) => merged(c.ca_bundle.as_ref().map(|b| b.0.as_slice()), wanted, remove),
            })
            .collect();
        if bundles.iter().all(Option::is_none) {
            tracing::info!(name, %kind, "the webhook configuration already trusts the CA; not patched");
            return Ok(Some(false));
        }
        let n = clients.len();
        match api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Json::<()>(ops(&clients, &bundles)),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(name, webhooks = n, %kind, "patched caBundle into the webhook configuration");
                return Ok(Some(true));
            }
            // Another writer changed the configuration since it was read: read it again.
            Err(kube::Error::Api(status))
                if (status.code == 409 || status.code == 422) && attempt < ATTEMPTS =>
            {
                tracing::info!(name, %kind, "the webhook configuration changed while patching its caBundle; patching again");
            }
            Err(e) => return Err(e),
        }
    }
}

/// A JSON patch setting each webhook's caBundle to its `bundles` entry (`None`: unchanged), each `test`ing the
/// webhook's `clientConfig` as read first.
fn ops(clients: &[&WebhookClientConfig], bundles: &[Option<String>]) -> json_patch::Patch {
    let at = |i: usize, tail: &[&str]| {
        jsonptr::PointerBuf::from_tokens(
            ["webhooks".to_string(), i.to_string(), "clientConfig".into()]
                .into_iter()
                .chain(tail.iter().map(|t| t.to_string())),
        )
    };
    let mut ops = Vec::new();
    for (i, (client, bundle)) in clients.iter().zip(bundles).enumerate() {
        let Some(bundle) = bundle else { continue };
        ops.push(json_patch::PatchOperation::Test(json_patch::TestOperation {
            path: at(i, &[]),
            value: serde_json::to_value(client).unwrap_or_default(),
        }));
        ops.push(json_patch::PatchOperation::Add(json_patch::AddOperation {
            path: at(i, &["caBundle"]),
            value: serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bundle)),
        }));
    }
    json_patch::Patch(ops)
}
