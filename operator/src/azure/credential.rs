//! The token credentials the cloud config can ask for: service principal, managed identity (IMDS, with a
//! user-assigned client ID) and workload identity (a projected token file that rotates).

use std::sync::Arc;

use azure_core::auth::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::{HttpClient, Request, Url};
use serde_json::Value;

use super::client::{ArmError, Timeouts, http_client};
use crate::config::{AzureAuth, CloudConfig};

/// Builds the credential the cloud config asks for; its token requests are bounded by `timeouts`' connect and
/// request times (a token endpoint that never answers fails the ARM call instead of stopping the operator).
pub fn credential(cfg: &CloudConfig, timeouts: &Timeouts) -> Result<Arc<dyn TokenCredential>, ArmError> {
    let http = http_client(timeouts)?;
    let authority = Url::parse(&cfg.authority_host)
        .map_err(|e| ArmError::local("credential", "activeDirectoryAuthorityHost", e.to_string()))?;
    Ok(match &cfg.auth {
        AzureAuth::ServicePrincipal {
            tenant_id,
            client_id,
            client_secret,
        } => Arc::new(azure_identity::ClientSecretCredential::new(
            http,
            authority,
            tenant_id.clone(),
            client_id.clone(),
            client_secret.clone(),
        )),
        AzureAuth::ManagedIdentity {
            user_assigned_identity_id,
        } => {
            let endpoint = cfg
                .imds_endpoint
                .clone()
                .unwrap_or_else(|| "http://169.254.169.254/metadata/identity/oauth2/token".to_string());
            let endpoint = Url::parse(&endpoint)
                .map_err(|e| ArmError::local("credential", "imdsEndpoint", e.to_string()))?;
            Arc::new(ImdsCredential {
                http,
                endpoint,
                client_id: user_assigned_identity_id.clone(),
                cache: tokio::sync::Mutex::new(None),
            })
        }
        AzureAuth::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
        } => Arc::new(FileWorkloadIdentity {
            http,
            authority,
            tenant_id: tenant_id.clone(),
            client_id: client_id.clone(),
            token_file: token_file.clone(),
            current: tokio::sync::Mutex::new(None),
        }),
    })
}

/// Managed identity through IMDS (system-assigned, or user-assigned by client ID — what AKS uses). The
/// azure_identity 0.21 IMDS credential has neither a client ID nor an endpoint override, hence this one.
struct ImdsCredential {
    http: Arc<dyn HttpClient>,
    endpoint: Url,
    client_id: Option<String>,
    cache: tokio::sync::Mutex<Option<azure_core::auth::AccessToken>>,
}

impl std::fmt::Debug for ImdsCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImdsCredential")
            .field("endpoint", &self.endpoint.as_str())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct ImdsToken {
    access_token: String,
    #[serde(default)]
    expires_on: Option<Value>,
    #[serde(default)]
    expires_in: Option<Value>,
}

fn number(v: &Option<Value>) -> Option<i64> {
    match v {
        Some(Value::String(s)) => s.parse().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    }
}

#[async_trait::async_trait]
impl TokenCredential for ImdsCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<azure_core::auth::AccessToken> {
        let mut cache = self.cache.lock().await;
        let now = time::OffsetDateTime::now_utc();
        if let Some(t) = &*cache
            && t.expires_on > now + time::Duration::minutes(5)
        {
            return Ok(t.clone());
        }
        let resource = scopes.first().map_or("", |s| s.trim_end_matches("/.default"));
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("api-version", "2018-02-01")
            .append_pair("resource", resource);
        if let Some(id) = &self.client_id {
            url.query_pairs_mut().append_pair("client_id", id);
        }
        let mut req = Request::new(url, azure_core::Method::Get);
        req.insert_header("metadata", "true");
        let rsp = self.http.execute_request(&req).await?;
        let status = rsp.status();
        let body = rsp.into_body().collect().await?;
        if !status.is_success() {
            return Err(azure_core::Error::message(
                ErrorKind::Credential,
                format!("IMDS token request failed with HTTP {}", u16::from(status)),
            ));
        }
        let t: ImdsToken = serde_json::from_slice(&body)
            .map_err(|e| azure_core::Error::full(ErrorKind::Credential, e, "IMDS token response"))?;
        let expires_on = number(&t.expires_on)
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .or_else(|| number(&t.expires_in).map(|s| now + time::Duration::seconds(s)))
            .unwrap_or(now + time::Duration::minutes(10));
        let token = azure_core::auth::AccessToken::new(t.access_token, expires_on);
        *cache = Some(token.clone());
        Ok(token)
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.cache.lock().await = None;
        Ok(())
    }
}

/// Workload identity whose projected token file is re-read when it rotates (the kubelet refreshes it hourly).
struct FileWorkloadIdentity {
    http: Arc<dyn HttpClient>,
    authority: Url,
    tenant_id: String,
    client_id: String,
    token_file: String,
    current: tokio::sync::Mutex<Option<(String, Arc<azure_identity::WorkloadIdentityCredential>)>>,
}

impl std::fmt::Debug for FileWorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWorkloadIdentity")
            .field("client_id", &self.client_id)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TokenCredential for FileWorkloadIdentity {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<azure_core::auth::AccessToken> {
        let token = tokio::fs::read_to_string(&self.token_file).await.map_err(|e| {
            azure_core::Error::full(
                ErrorKind::Credential,
                e,
                format!("reading the federated token file {}", self.token_file),
            )
        })?;
        let token = token.trim().to_string();
        let cred = {
            let mut cur = self.current.lock().await;
            match &*cur {
                Some((t, c)) if *t == token => c.clone(),
                _ => {
                    let c = Arc::new(azure_identity::WorkloadIdentityCredential::new(
                        self.http.clone(),
                        self.authority.clone(),
                        self.tenant_id.clone(),
                        self.client_id.clone(),
                        token.clone(),
                    ));
                    *cur = Some((token, c.clone()));
                    c
                }
            }
        };
        cred.get_token(scopes).await
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.current.lock().await = None;
        Ok(())
    }
}
