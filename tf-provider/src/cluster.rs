//! The provider's Kubernetes side: credentials from the provider block, and the calls Read, Apply, Import
//! and Delete make. Validate and Plan never come here.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use base64::Engine as _;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::config::{
    AuthInfo, Cluster, Context, ExecConfig, ExecInteractiveMode, KubeConfigOptions, Kubeconfig,
    NamedAuthInfo, NamedCluster, NamedContext,
};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::value::Value;

/// Field manager of the provider's server-side applies.
pub const FIELD_MANAGER: &str = "terraform-provider-egressgateway";
/// How often waits poll the object.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The provider block, as the kubernetes provider spells it.
#[derive(Clone, Default, PartialEq)]
pub struct ProviderConfig {
    /// API server URL.
    pub host: Option<String>,
    /// Bearer token (secret).
    pub token: Option<String>,
    /// PEM client certificate.
    pub client_certificate: Option<String>,
    /// PEM client key (secret).
    pub client_key: Option<String>,
    /// PEM CA bundle of the API server.
    pub cluster_ca_certificate: Option<String>,
    /// Path of a kubeconfig file.
    pub config_path: Option<String>,
    /// Context in that kubeconfig.
    pub config_context: Option<String>,
    /// A credential plugin that prints the token (kubelogin for AKS with Entra ID), with `host`.
    pub exec: Option<ExecPlugin>,
}

/// The `exec {}` block: a client-go credential plugin, run when the client is built and again when the
/// credential it printed expires.
#[derive(Clone, Default, PartialEq)]
pub struct ExecPlugin {
    /// The ExecCredential version the plugin speaks, e.g. `client.authentication.k8s.io/v1beta1`.
    pub api_version: String,
    /// The program.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
}

impl fmt::Debug for ExecPlugin {
    /// Arguments and environment values may carry secrets (a client secret for kubelogin): only their
    /// number and the variables' names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecPlugin")
            .field("api_version", &self.api_version)
            .field("command", &self.command)
            .field("args", &format_args!("<{} redacted>", self.args.len()))
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ExecPlugin {
    /// Reads an `exec` block (a list of at most one object); `None` when absent.
    fn from_value(v: &Value) -> Option<ExecPlugin> {
        let block = match v {
            Value::List(items) => items.first()?,
            Value::Map(_) => v,
            _ => return None,
        };
        let strings = |v: &Value| match v {
            Value::List(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let env = match block.get("env") {
            Value::Map(m) => m
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
            _ => BTreeMap::new(),
        };
        Some(ExecPlugin {
            api_version: block.get("api_version").as_str().unwrap_or_default().to_string(),
            command: block.get("command").as_str().unwrap_or_default().to_string(),
            args: strings(block.get("args")),
            env,
        })
    }

    /// The kubeconfig form. Never interactive: the provider has no terminal, so a plugin that would prompt
    /// fails with its own message instead of waiting for input.
    fn to_exec_config(&self) -> ExecConfig {
        ExecConfig {
            api_version: Some(self.api_version.clone()),
            command: Some(self.command.clone()),
            args: Some(self.args.clone()),
            env: Some(
                self.env
                    .iter()
                    .map(|(name, value)| {
                        std::collections::HashMap::from([
                            ("name".to_string(), name.clone()),
                            ("value".to_string(), value.clone()),
                        ])
                    })
                    .collect(),
            ),
            interactive_mode: Some(ExecInteractiveMode::Never),
            ..Default::default()
        }
    }
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("ProviderConfig")
            .field("host", &self.host)
            .field("token", &redacted(&self.token))
            .field(
                "client_certificate",
                &self.client_certificate.as_ref().map(|_| "<set>"),
            )
            .field("client_key", &redacted(&self.client_key))
            .field(
                "cluster_ca_certificate",
                &self.cluster_ca_certificate.as_ref().map(|_| "<set>"),
            )
            .field("config_path", &self.config_path)
            .field("config_context", &self.config_context)
            .field("exec", &self.exec)
            .finish()
    }
}

impl ProviderConfig {
    /// Reads the provider block. `None` when any value is still unknown (planning before the cluster
    /// exists): the provider then works offline until Terraform configures it again with known values.
    pub fn from_value(v: &Value) -> Option<ProviderConfig> {
        if !v.is_wholly_known() {
            return None;
        }
        let s = |k: &str| v.get(k).as_str().filter(|s| !s.is_empty()).map(str::to_string);
        Some(ProviderConfig {
            host: s("host"),
            token: s("token"),
            client_certificate: s("client_certificate"),
            client_key: s("client_key"),
            cluster_ca_certificate: s("cluster_ca_certificate"),
            config_path: s("config_path"),
            config_context: s("config_context"),
            exec: ExecPlugin::from_value(v.get("exec")),
        })
    }

    /// Builds a client. Creating it does not contact the cluster.
    pub async fn client(&self) -> Result<Client, String> {
        let config = if let Some(host) = &self.host {
            let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem.as_bytes());
            let kc = Kubeconfig {
                clusters: vec![NamedCluster {
                    name: "terraform".into(),
                    cluster: Some(Cluster {
                        server: Some(host.clone()),
                        certificate_authority_data: self.cluster_ca_certificate.as_deref().map(b64),
                        ..Default::default()
                    }),
                    other: Default::default(),
                }],
                auth_infos: vec![NamedAuthInfo {
                    name: "terraform".into(),
                    auth_info: Some(AuthInfo {
                        token: self.token.clone().map(Into::into),
                        client_certificate_data: self.client_certificate.as_deref().map(b64),
                        client_key_data: self.client_key.as_deref().map(|k| b64(k).into()),
                        exec: self.exec.as_ref().map(ExecPlugin::to_exec_config),
                        ..Default::default()
                    }),
                    other: Default::default(),
                }],
                contexts: vec![NamedContext {
                    name: "terraform".into(),
                    context: Some(Context {
                        cluster: "terraform".into(),
                        user: Some("terraform".into()),
                        ..Default::default()
                    }),
                    other: Default::default(),
                }],
                current_context: Some("terraform".into()),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("provider credentials (host = {host}): {e}"))?
        } else if let Some(path) = &self.config_path {
            let kc = Kubeconfig::read_from(path).map_err(|e| format!("config_path = {path}: {e}"))?;
            let opts = KubeConfigOptions {
                context: self.config_context.clone(),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| format!("config_path = {path}: {e}"))?
        } else if self.config_context.is_some() {
            let opts = KubeConfigOptions {
                context: self.config_context.clone(),
                ..Default::default()
            };
            kube::Config::from_kubeconfig(&opts)
                .await
                .map_err(|e| e.to_string())?
        } else {
            kube::Config::infer().await.map_err(|e| {
                format!("no host or config_path in the provider block, and no kubeconfig or in-cluster config: {e}")
            })?
        };
        let exec = self.exec.as_ref().map(|e| e.command.clone());
        // Building the client runs an exec plugin, a blocking child process.
        tokio::task::spawn_blocking(move || Client::try_from(config))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| match exec {
                Some(command) => format!("exec credential plugin `{command}`: {}", with_causes(&e)),
                None => e.to_string(),
            })
    }
}

/// A failure talking to the cluster, worded for a Terraform diagnostic.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The API server refused the request (webhook denial, RBAC, validation): its message verbatim.
    #[error("{message}")]
    Api {
        /// Server message.
        message: String,
        /// HTTP status code.
        code: u16,
    },
    /// Could not reach or talk to the API server.
    #[error("{0}")]
    Transport(String),
    /// A wait ran out of time.
    #[error("{0}")]
    Timeout(String),
    /// Terraform asked the provider to stop.
    #[error("interrupted: Terraform asked the provider to stop")]
    Stopped,
}

impl From<kube::Error> for ClusterError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => ClusterError::Api {
                message: if s.message.is_empty() {
                    s.reason.clone()
                } else {
                    s.message.clone()
                },
                code: s.code,
            },
            other => ClusterError::Transport(with_causes(&other)),
        }
    }
}

/// An error with its whole source chain: kube-rs and hyper put the useful part (`Connection refused`, a
/// certificate problem) in the sources, and their own message alone says only `client error (Connect)`.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    text
}

/// Reads an object; `None` when it does not exist.
pub async fn get<K>(api: &Api<K>, name: &str) -> Result<Option<K>, ClusterError>
where
    K: kube::Resource + Clone + DeserializeOwned + fmt::Debug,
{
    Ok(api.get_opt(name).await?)
}

/// Lists every object of the API (all namespaces for an `Api::all`).
pub async fn list<K>(api: &Api<K>) -> Result<Vec<K>, ClusterError>
where
    K: kube::Resource + Clone + DeserializeOwned + fmt::Debug,
{
    Ok(api.list(&Default::default()).await?.items)
}

/// Waits one poll interval, or fails with [`ClusterError::Stopped`] when Terraform asks the provider to stop.
pub async fn pause(stop: &mut watch::Receiver<bool>) -> Result<(), ClusterError> {
    tokio::select! {
        _ = tokio::time::sleep(POLL_INTERVAL) => Ok(()),
        _ = stop.wait_for(|s| *s) => Err(ClusterError::Stopped),
    }
}

/// Server-side applies a manifest under the provider's field manager, then removes the `managed` spec fields
/// the manifest leaves out but the object still has. Server-side apply alone keeps those when another manager
/// set them (`kubectl edit`, a merge patch): the configuration would never win over that drift, and the state
/// Terraform records would not be the object. With `take_over` (an update of an object in Terraform's state)
/// the apply takes over conflicting fields: Terraform's configuration is the source of truth for the fields it
/// sets. Without it (a create) a field another manager set to another value is a conflict error.
pub async fn apply<K>(
    api: &Api<K>,
    name: &str,
    manifest: &serde_json::Value,
    managed: &[String],
    take_over: bool,
) -> Result<K, ClusterError>
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + fmt::Debug,
{
    let params = PatchParams::apply(FIELD_MANAGER);
    let params = if take_over { params.force() } else { params };
    let obj = api.patch(name, &params, &Patch::Apply(manifest)).await?;
    let spec = serde_json::to_value(&obj)
        .ok()
        .and_then(|v| v.get("spec").cloned())
        .unwrap_or_default();
    let stale = stale_fields(&spec, &manifest["spec"], managed);
    if stale.is_empty() {
        return Ok(obj);
    }
    let removal: serde_json::Map<String, serde_json::Value> =
        stale.into_iter().map(|f| (f, serde_json::Value::Null)).collect();
    let patch = serde_json::json!({ "spec": removal });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    Ok(api.patch(name, &params, &Patch::Merge(&patch)).await?)
}

/// The `managed` fields `remote` has and `wanted` does not.
fn stale_fields(remote: &serde_json::Value, wanted: &serde_json::Value, managed: &[String]) -> Vec<String> {
    managed
        .iter()
        .filter(|f| wanted.get(f.as_str()).is_none_or(serde_json::Value::is_null))
        .filter(|f| remote.get(f.as_str()).is_some_and(|v| !v.is_null()))
        .cloned()
        .collect()
}

/// Polls until `done` holds for the object, bounded by `timeout`; `describe` explains the last state seen
/// when time runs out.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    stop: &mut watch::Receiver<bool>,
    done: impl Fn(&K) -> bool,
    describe: impl Fn(Option<&K>) -> String,
) -> Result<K, ClusterError>
where
    K: kube::Resource + Clone + DeserializeOwned + fmt::Debug,
{
    let deadline = Instant::now() + timeout;
    loop {
        let current = api.get_opt(name).await?;
        if let Some(obj) = current.as_ref().filter(|o| done(o)) {
            return Ok(obj.clone());
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout(format!(
                "gave up after {}: {}",
                humantime::format_duration(timeout),
                describe(current.as_ref())
            )));
        }
        pause(stop).await?;
    }
}

/// Deletes an object and waits until it is gone (finalizers have run), bounded by `timeout`.
pub async fn delete_and_wait<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ClusterError>
where
    K: kube::Resource + Clone + DeserializeOwned + fmt::Debug,
{
    match api.delete(name, &DeleteParams::foreground()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let deadline = Instant::now() + timeout;
    loop {
        if api.get_opt(name).await?.is_none() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout(format!(
                "{name} still exists after {} (a finalizer has not completed; check the operator's logs)",
                humantime::format_duration(timeout)
            )));
        }
        pause(stop).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::object;

    #[test]
    fn unknown_credentials_mean_offline() {
        let cfg = object([("host", Value::unknown()), ("token", Value::str("t"))]);
        assert!(ProviderConfig::from_value(&cfg).is_none());
        let cfg = object([
            ("host", Value::str("https://k")),
            ("token", Value::str("secret-token")),
        ]);
        let pc = ProviderConfig::from_value(&cfg).expect("known");
        assert_eq!(pc.host.as_deref(), Some("https://k"));
        let dbg = format!("{pc:?}");
        assert!(!dbg.contains("secret-token"), "{dbg}");
    }

    #[test]
    fn fields_left_out_of_the_manifest_are_removed_when_the_object_has_them() {
        let managed = [
            "excludeCidrs".to_string(),
            "defaultRoute".to_string(),
            "publicIpPrefixId".to_string(),
        ];
        let remote = serde_json::json!({"excludeCidrs": ["10.0.0.0/8"], "defaultRoute": "staticEgressGateway", "other": 1});
        let wanted = serde_json::json!({"defaultRoute": "staticEgressGateway"});
        assert_eq!(
            stale_fields(&remote, &wanted, &managed),
            vec!["excludeCidrs".to_string()]
        );
        let wanted =
            serde_json::json!({"defaultRoute": "staticEgressGateway", "excludeCidrs": ["10.0.0.0/8"]});
        assert!(stale_fields(&remote, &wanted, &managed).is_empty());
    }

    #[test]
    fn transport_errors_name_their_cause() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        assert_eq!(
            with_causes(&e),
            "client error (Connect): Connection refused (os error 111)"
        );
    }

    /// Answers one HTTP request with a Kubernetes version document; returns the request's head.
    async fn answer_one_version_request(listener: tokio::net::TcpListener) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "the client closed before sending a request");
            head.extend_from_slice(&buf[..n]);
        }
        let body = r#"{"major":"1","minor":"33","gitVersion":"v1.33.0","gitCommit":"","gitTreeState":"","buildDate":"","goVersion":"","compiler":"","platform":""}"#;
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(response.as_bytes()).await.expect("write");
        String::from_utf8_lossy(&head).into_owned()
    }

    #[tokio::test]
    async fn an_exec_plugin_supplies_the_token_and_its_failure_names_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let host = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(answer_one_version_request(listener));
        // A plugin as kubelogin is one: it reads its settings from its arguments and environment and prints
        // an ExecCredential.
        let plugin = |script: &str| ExecPlugin {
            api_version: "client.authentication.k8s.io/v1beta1".into(),
            command: "sh".into(),
            args: vec!["-c".into(), script.into(), "plugin".into(), "from-args".into()],
            env: BTreeMap::from([("TOKEN_SUFFIX".to_string(), "from-env".to_string())]),
        };
        let pc = ProviderConfig {
            host: Some(host.clone()),
            exec: Some(plugin(
                r#"echo "{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\"kind\":\"ExecCredential\",\"status\":{\"token\":\"$1-$TOKEN_SUFFIX\"}}""#,
            )),
            ..Default::default()
        };
        let client = pc.client().await.expect("a client");
        let version = client.apiserver_version().await.expect("version");
        assert_eq!(version.git_version, "v1.33.0");
        let head = server.await.expect("server").to_ascii_lowercase();
        assert!(
            head.contains("authorization: bearer from-args-from-env\r\n"),
            "the plugin's token is sent: {head}"
        );
        let dbg = format!("{pc:?}");
        assert!(
            !dbg.contains("from-args") && dbg.contains("TOKEN_SUFFIX"),
            "{dbg}"
        );

        let failing = ProviderConfig {
            host: Some(host),
            exec: Some(plugin("echo 'not logged in' >&2; exit 3")),
            ..Default::default()
        };
        let Err(err) = failing.client().await else {
            panic!("a failing plugin must be an error")
        };
        assert!(err.starts_with("exec credential plugin `sh`: "), "{err}");
        assert!(err.contains("not logged in"), "the plugin's own message: {err}");
    }

    #[test]
    fn the_exec_block_is_read_from_the_provider_configuration() {
        let cfg = object([
            ("host", Value::str("https://k")),
            (
                "exec",
                Value::List(vec![object([
                    ("api_version", Value::str("client.authentication.k8s.io/v1beta1")),
                    ("command", Value::str("kubelogin")),
                    (
                        "args",
                        Value::List(vec![
                            Value::str("get-token"),
                            Value::str("--login"),
                            Value::str("azurecli"),
                        ]),
                    ),
                    ("env", object([("AAD_LOGIN_METHOD", Value::str("azurecli"))])),
                ])]),
            ),
        ]);
        let exec = ProviderConfig::from_value(&cfg)
            .and_then(|pc| pc.exec)
            .expect("exec");
        assert_eq!(exec.command, "kubelogin");
        assert_eq!(exec.args, vec!["get-token", "--login", "azurecli"]);
        assert_eq!(exec.env["AAD_LOGIN_METHOD"], "azurecli");
        let no_exec = object([("host", Value::str("https://k")), ("exec", Value::List(vec![]))]);
        assert!(
            ProviderConfig::from_value(&no_exec)
                .expect("known")
                .exec
                .is_none()
        );
    }

    #[tokio::test]
    async fn host_credentials_build_a_client_without_contacting_the_cluster() {
        let pc = ProviderConfig {
            host: Some("https://127.0.0.1:1".into()),
            token: Some("t".into()),
            ..Default::default()
        };
        assert!(pc.client().await.is_ok());
        let bad = ProviderConfig {
            config_path: Some("/nonexistent/kubeconfig".into()),
            ..Default::default()
        };
        let Err(err) = bad.client().await else {
            panic!("a missing kubeconfig must be an error")
        };
        assert!(err.contains("config_path = /nonexistent/kubeconfig"), "{err}");
    }
}
