//! Patches the self-generated CA into the webhook configurations, so no cert-manager is needed.

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

/// Sets `clientConfig.caBundle` of every webhook in the named configurations (absent ones are skipped with
/// a warning: the chart may not install both). Returns how many configurations it patched: a renewal that
/// patched none must not serve a certificate of the new CA, which nobody would trust.
pub async fn patch_ca_bundle(
    client: Client,
    ca_pem: &str,
    mutating: Option<&str>,
    validating: Option<&str>,
) -> Result<usize, kube::Error> {
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut patched = 0;
    if let Some(name) = mutating {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let count = |c: &MutatingWebhookConfiguration| c.webhooks.as_ref().map_or(0, Vec::len);
        patched += usize::from(patch_one(&api, name, &bundle, count).await?);
    }
    if let Some(name) = validating {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(client);
        let count = |c: &ValidatingWebhookConfiguration| c.webhooks.as_ref().map_or(0, Vec::len);
        patched += usize::from(patch_one(&api, name, &bundle, count).await?);
    }
    Ok(patched)
}

/// Patches `bundle` into every webhook of configuration `name` of `api`'s kind; `webhooks` counts them. Returns
/// whether the configuration exists (and was patched).
async fn patch_one<K>(
    api: &Api<K>,
    name: &str,
    bundle: &str,
    webhooks: impl Fn(&K) -> usize,
) -> Result<bool, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let kind = K::kind(&());
    match api.get_opt(name).await? {
        Some(cfg) => {
            let n = webhooks(&cfg);
            api.patch(name, &PatchParams::default(), &Patch::Json::<()>(ops(n, bundle)))
                .await?;
            tracing::info!(name, webhooks = n, %kind, "patched caBundle into the webhook configuration");
            Ok(true)
        }
        None => {
            tracing::warn!(name, %kind, "webhook configuration not found; caBundle not patched");
            Ok(false)
        }
    }
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
