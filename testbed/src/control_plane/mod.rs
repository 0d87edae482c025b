//! A real Kubernetes control plane on loopback for tests and the lab: etcd, kube-apiserver and
//! kube-controller-manager from the envtest-style assets folder ([`Assets`]), with fresh certificates, RBAC
//! (`Node,RBAC` authorization), service-account token signing and the controllers that garbage-collect,
//! delete namespaces and create service accounts. Identities: `admin` (a static token in `system:masters`)
//! and any ServiceAccount (a token from the TokenRequest API, as a kubelet would mount it).
//!
//! Start one per test binary with [`ControlPlane::shared`] and give each test its own namespace
//! ([`ControlPlane::namespace`]); the processes stop and the folder goes when the test process exits, even
//! on a panic or a kill (see [`process`]). How suites choose it over kube-sim: docs/testbed.md.

pub mod assets;
pub mod process;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

pub use assets::Assets;
use process::Guarded;

use crate::files::write_private;
use crate::kube::TestCa;

/// What a start may add to the defaults.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Write the apiserver's audit log (every request at `Metadata` level: user, verb, resource, response
    /// code) to `<dir>/audit.log`; [`ControlPlane::requests_by`] reads it.
    pub audit_log: bool,
}

/// The audit log's file name in the control plane's folder.
const AUDIT_LOG: &str = "audit.log";

/// Every request at `Metadata` level (no bodies: tokens and secrets stay out of the log), once answered.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
";

/// How long a cold start may take before it is reported as failed (with the processes' last log lines).
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running control plane. Dropping it stops the processes and removes its folder.
pub struct ControlPlane {
    url: String,
    ca_pem: String,
    admin_token: String,
    dir: PathBuf,
    assets: Assets,
    // Stopped in reverse start order; etcd's guard removes the folder.
    processes: Vec<Guarded>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

static SHARED: tokio::sync::OnceCell<Arc<ControlPlane>> = tokio::sync::OnceCell::const_new();

impl ControlPlane {
    /// The control plane of this test process, started on first use. Panics with the reason (missing assets
    /// or a failed start with log lines) so a test never silently runs elsewhere.
    pub async fn shared() -> Arc<ControlPlane> {
        SHARED
            .get_or_init(|| async {
                let assets =
                    Assets::find().unwrap_or_else(|e| panic!("no Kubernetes control plane binaries: {e}"));
                Arc::new(
                    Self::start(&assets)
                        .await
                        .unwrap_or_else(|e| panic!("starting the control plane: {e:#}")),
                )
            })
            .await
            .clone()
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager in a fresh temporary folder and waits until
    /// the apiserver's `/readyz` is ok and the controllers have created the `default` ServiceAccount.
    pub async fn start(assets: &Assets) -> anyhow::Result<Self> {
        Self::start_with(assets, &StartOptions::default()).await
    }

    /// [`ControlPlane::start`] with options (e.g. the audit log).
    pub async fn start_with(assets: &Assets, options: &StartOptions) -> anyhow::Result<Self> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("control-plane-")
            .tempdir()
            .context("temporary folder")?
            .keep();
        let mut cp = Self {
            url: String::new(),
            ca_pem: String::new(),
            admin_token: crate::kube::random_token(),
            dir: dir.clone(),
            assets: assets.clone(),
            processes: Vec::new(),
        };
        let file = |name: &str| dir.join(name);
        let write = |name: &str, text: &str| -> anyhow::Result<String> {
            write_private(&file(name), text)?;
            Ok(file(name).display().to_string())
        };

        // Certificates: one CA for serving and clients, the serving certificate for 127.0.0.1, and the key
        // pair service-account tokens are signed with.
        let ca = TestCa::new("control-plane-ca")?;
        cp.ca_pem = ca.cert_pem().to_string();
        let serving = ca.issue(&["127.0.0.1", "localhost", "kubernetes", "kubernetes.default.svc"])?;
        let sa_key = rcgen::KeyPair::generate().context("service-account key")?;
        let ca_file = write("ca.crt", ca.cert_pem())?;
        let tls_cert = write("apiserver.crt", &serving.cert_pem)?;
        let tls_key = write("apiserver.key", &serving.key_pem)?;
        let sa_pub = write("sa.pub", &sa_key.public_key_pem())?;
        let sa_priv = write("sa.key", &sa_key.serialize_pem())?;
        let tokens = write(
            "tokens.csv",
            &format!("{},admin,admin,system:masters\n", cp.admin_token),
        )?;

        let mut audit_args = Vec::new();
        if options.audit_log {
            let policy = write("audit-policy.yaml", AUDIT_POLICY)?;
            audit_args = vec![
                format!("--audit-policy-file={policy}"),
                format!("--audit-log-path={}", file(AUDIT_LOG).display()),
                // One JSON event per line, written before the response (blocking), never rotated.
                "--audit-log-format=json".to_string(),
                "--audit-log-mode=blocking".to_string(),
            ];
        }

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let apiserver_port = free_port()?;
        cp.url = format!("https://127.0.0.1:{apiserver_port}");

        let args = |a: &[&str]| a.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        cp.processes.push(Guarded::spawn(
            "etcd",
            &assets.etcd,
            &args(&[
                "--data-dir",
                &file("etcd").display().to_string(),
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("default={peer_url}"),
                "--log-level",
                "warn",
            ]),
            &file("etcd.log"),
            Some(&dir),
        )?);
        cp.processes.push(Guarded::spawn(
            "kube-apiserver",
            &assets.kube_apiserver,
            &args(&[
                "--etcd-servers",
                &etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                &apiserver_port.to_string(),
                "--cert-dir",
                &file("certs").display().to_string(),
                "--tls-cert-file",
                &tls_cert,
                "--tls-private-key-file",
                &tls_key,
                "--client-ca-file",
                &ca_file,
                "--token-auth-file",
                &tokens,
                "--service-account-key-file",
                &sa_pub,
                "--service-account-signing-key-file",
                &sa_priv,
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--authorization-mode",
                "Node,RBAC",
                "--service-cluster-ip-range",
                "10.96.0.0/16",
                "--allow-privileged=true",
                // Webhooks and aggregated APIs registered by Service are called at an endpoint of the
                // Service (no kube-proxy here to route a ClusterIP).
                "--enable-aggregator-routing=true",
                "--profiling=false",
            ])
            .into_iter()
            .chain(audit_args)
            .collect::<Vec<_>>(),
            &file("kube-apiserver.log"),
            None,
        )?);
        cp.wait_ready(started).await?;

        // The controller manager gives up when the apiserver is not healthy within seconds: start it now.
        write_private(
            &file("controller-manager.kubeconfig"),
            &cp.kubeconfig_for("admin", &cp.admin_token)?,
        )?;
        cp.processes.push(Guarded::spawn(
            "kube-controller-manager",
            &assets.kube_controller_manager,
            &args(&[
                "--kubeconfig",
                &file("controller-manager.kubeconfig").display().to_string(),
                "--secure-port",
                "0",
                "--leader-elect=false",
                "--use-service-account-credentials",
                "--root-ca-file",
                &ca_file,
                "--service-account-private-key-file",
                &sa_priv,
                "--cluster-name",
                "control-plane",
            ]),
            &file("kube-controller-manager.log"),
            None,
        )?);
        let client = cp.client()?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
        cp.wait_for(
            "the controllers to create ServiceAccount default/default",
            started,
            || {
                let accounts = accounts.clone();
                async move { accounts.get_opt("default").await.ok().flatten().is_some() }
            },
        )
        .await?;
        tracing::info!(url = %cp.url, elapsed = ?started.elapsed(), "control plane ready");
        Ok(cp)
    }

    async fn wait_ready(&self, started: Instant) -> anyhow::Result<()> {
        let client = self.client()?;
        self.wait_for("kube-apiserver /readyz", started, || {
            let client = client.clone();
            async move {
                let req = http::Request::get("/readyz").body(Vec::new());
                match req {
                    Ok(req) => client.request_text(req).await.is_ok_and(|t| t == "ok"),
                    Err(_) => false,
                }
            }
        })
        .await
    }

    async fn wait_for<F, Fut>(&self, what: &str, started: Instant, mut cond: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        loop {
            if cond().await {
                return Ok(());
            }
            let stopped: Vec<&Guarded> = self.processes.iter().filter(|p| !p.running()).collect();
            if !stopped.is_empty() || started.elapsed() > START_TIMEOUT {
                let logs: Vec<String> = self.processes.iter().map(|p| p.log_tail(15)).collect();
                anyhow::bail!(
                    "waiting for {what}: {} after {:?}\n{}",
                    if stopped.is_empty() {
                        "timed out"
                    } else {
                        "a process exited"
                    },
                    started.elapsed(),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA that signed the apiserver's serving certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The assets it runs from (`kubectl` among them).
    pub fn assets(&self) -> &Assets {
        &self.assets
    }

    /// The folder holding its certificates, data and logs (`<process>.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin's bearer token (`system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A kube-rs config for a bearer token.
    pub fn client_config_for(&self, token: &str) -> anyhow::Result<kube::Config> {
        let mut cfg = kube::Config::new(self.url.parse().context("apiserver URL")?);
        cfg.root_cert = Some(
            crate::kube::tls::certs_from_pem(self.ca_pem.as_bytes())?
                .into_iter()
                .map(|c| c.to_vec())
                .collect(),
        );
        cfg.auth_info.token = Some(token.to_string().into());
        Ok(cfg)
    }

    /// A kube-rs client for the admin. Build clients inside the test's runtime (they hold its connections).
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        kube::Client::try_from(self.client_config_for(&self.admin_token)?).context("building kube client")
    }

    /// A kube-rs client for a bearer token.
    pub fn client_for(&self, token: &str) -> anyhow::Result<kube::Client> {
        kube::Client::try_from(self.client_config_for(token)?).context("building kube client")
    }

    /// A kubeconfig (YAML) for a bearer token, named `user`.
    pub fn kubeconfig_for(&self, user: &str, token: &str) -> anyhow::Result<String> {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let doc = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "control-plane", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "control-plane", "context": {"cluster": "control-plane", "user": user, "namespace": "default"}}],
            "current-context": "control-plane",
        });
        serde_yaml::to_string(&doc).context("serialising kubeconfig")
    }

    /// Writes the admin's kubeconfig to `path` (mode 0600).
    pub fn write_admin_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        write_private(path, &self.kubeconfig_for("admin", &self.admin_token)?)
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest API (valid for a day), creating the
    /// account when absent: what a kubelet mounts into the account's pods.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client()?, namespace);
        if accounts.get_opt(name).await?.is_none() {
            let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
            match accounts.create(&PostParams::default(), &sa).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e).context(format!("creating ServiceAccount {namespace}/{name}")),
            }
        }
        let req = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400}});
        let body = serde_json::to_vec(&req)?;
        let url = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token");
        let resp: serde_json::Value = self
            .client()?
            .request(
                http::Request::post(url)
                    .header("content-type", "application/json")
                    .body(body)?,
            )
            .await
            .with_context(|| format!("TokenRequest for {namespace}/{name}"))?;
        resp.pointer("/status/token")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .context("TokenRequest answered without status.token")
    }

    /// A fresh namespace `<prefix>-<random>` (labels as given), once its `default` ServiceAccount exists (the
    /// ServiceAccount admission plugin refuses pods before that, as in any cluster).
    pub async fn namespace(&self, prefix: &str, labels: &[(&str, &str)]) -> anyhow::Result<String> {
        let name = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        self.create_namespace(&name, labels, &[]).await?;
        Ok(name)
    }

    /// Creates namespace `name` with labels and annotations and waits for its `default` ServiceAccount.
    pub async fn create_namespace(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let client = self.client()?;
        let map = |kv: &[(&str, &str)]| -> serde_json::Map<String, serde_json::Value> {
            kv.iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect()
        };
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name,
            "labels": map(labels), "annotations": map(annotations)}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while accounts.get_opt("default").await?.is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "namespace {name}: no default ServiceAccount after 30 s (is kube-controller-manager running? {})",
                self.dir.join("kube-controller-manager.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Installs the product's CRDs (`api::crd::all()`) by server-side apply (idempotent, so every test of a
    /// binary may call it) and waits until each is Established.
    pub async fn install_crds(&self) -> anyhow::Result<()> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let crds: Api<CustomResourceDefinition> = Api::all(self.client()?);
        let params = PatchParams::apply("testbed").force();
        for crd in api::crd::all() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let mut body = serde_json::to_value(&crd)?;
            body["apiVersion"] = json!("apiextensions.k8s.io/v1");
            body["kind"] = json!("CustomResourceDefinition");
            crds.patch(&name, &params, &Patch::Apply(body))
                .await
                .with_context(|| format!("installing CRD {name}"))?;
            let established = kube::runtime::wait::await_condition(
                crds.clone(),
                &name,
                kube::runtime::wait::conditions::is_crd_established(),
            );
            tokio::time::timeout(Duration::from_secs(30), established)
                .await
                .with_context(|| format!("CRD {name} not Established after 30 s"))?
                .with_context(|| format!("watching CRD {name}"))?;
        }
        // Established serves the resources; their OpenAPI (what `kubectl explain` and `kubectl apply`'s validation read) is
        // published a moment later. Await that too, so a caller's next step sees the whole CRD.
        let client = self.client()?;
        let started = Instant::now();
        for crd in api::crd::all() {
            let spec = &crd.spec;
            for version in spec.versions.iter().filter(|v| v.served) {
                let path = format!("/openapi/v3/apis/{}/{}", spec.group, version.name);
                let suffix = format!(".{}", spec.names.kind);
                let what = format!(
                    "kube-apiserver publishing the OpenAPI of {} {}",
                    spec.names.kind, version.name
                );
                self.wait_for(&what, started, || {
                    let (client, path, suffix) = (client.clone(), path.clone(), suffix.clone());
                    async move { openapi_has_kind(&client, &path, &suffix).await }
                })
                .await?;
            }
        }
        Ok(())
    }

    /// The audit log, when started with [`StartOptions::audit_log`].
    pub fn audit_log(&self) -> Option<PathBuf> {
        let path = self.dir.join(AUDIT_LOG);
        path.exists().then_some(path)
    }

    /// The requests the apiserver answered `user` so far, counted by (verb, response code), from the audit
    /// log (kube-sim's `KubeSim::requests_by` counts by HTTP method instead). A watch counts once, with the
    /// code it started with. `Err` when the control plane writes no audit log.
    pub fn requests_by(&self, user: &str) -> anyhow::Result<std::collections::BTreeMap<(String, u16), u64>> {
        let path = self
            .audit_log()
            .context("this control plane writes no audit log (StartOptions::audit_log)")?;
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(count_audit_events(&text, user))
    }

    /// Stops the processes and removes the folder (also done on drop).
    pub fn stop(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            p.stop();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counts the audit events (JSON lines) of `user` by (verb, response code), one per request: a request logged
/// at several stages (a watch: ResponseStarted, then ResponseComplete) counts once, with its first code.
fn count_audit_events(text: &str, user: &str) -> std::collections::BTreeMap<(String, u16), u64> {
    let mut seen = std::collections::HashSet::new();
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue; // a line being written
        };
        if event.pointer("/user/username").and_then(|u| u.as_str()) != Some(user) {
            continue;
        }
        let (Some(id), Some(verb), Some(code)) = (
            event["auditID"].as_str(),
            event["verb"].as_str(),
            event
                .pointer("/responseStatus/code")
                .and_then(|c| c.as_u64())
                .and_then(|c| u16::try_from(c).ok()),
        ) else {
            continue;
        };
        if seen.insert(id.to_string()) {
            *counts.entry((verb.to_string(), code)).or_insert(0) += 1;
        }
    }
    counts
}

/// A port free on 127.0.0.1 right now (the OS picks it; the process binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Whether the OpenAPI v3 document at `path` has a schema whose name ends in `suffix` (`.<Kind>`).
async fn openapi_has_kind(client: &kube::Client, path: &str, suffix: &str) -> bool {
    let Ok(req) = http::Request::get(path).body(Vec::new()) else {
        return false;
    };
    let Ok(text) = client.request_text(req).await else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|doc| {
            doc.pointer("/components/schemas")
                .and_then(serde_json::Value::as_object)
                .map(|schemas| schemas.keys().any(|k| k.ends_with(suffix)))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_events_count_once_per_request_by_verb_and_code_for_one_user() {
        let sa = "system:serviceaccount:ns:agent";
        let ev = |id: &str, user: &str, verb: &str, stage: &str, code: u16| {
            json!({"kind": "Event", "auditID": id, "stage": stage, "verb": verb,
                "user": {"username": user}, "responseStatus": {"code": code}})
            .to_string()
        };
        let text = [
            ev("1", sa, "watch", "ResponseStarted", 200),
            ev("2", sa, "create", "ResponseComplete", 403),
            ev("1", sa, "watch", "ResponseComplete", 200),
            ev("3", "admin", "create", "ResponseComplete", 403),
            ev("4", sa, "get", "ResponseComplete", 200),
            "{\"kind\": \"Ev".to_string(),
        ]
        .join("\n");
        let counts = count_audit_events(&text, sa);
        let want: std::collections::BTreeMap<(String, u16), u64> = [
            (("watch".to_string(), 200), 1),
            (("create".to_string(), 403), 1),
            (("get".to_string(), 200), 1),
        ]
        .into();
        assert_eq!(counts, want);
    }
}
