//! Which Kubernetes API server a suite or the lab runs on, chosen in one place: the real control plane
//! ([`crate::control_plane`]) when its binaries are found, kube-sim ([`crate::kube`]) otherwise, or what
//! `TESTBED_KUBE=real|sim` says. [`TestCluster`] gives tests the same handle on both: an admin client,
//! kubeconfigs, ServiceAccount identities, fresh namespaces and the product's CRDs. Suites that need a fault
//! only kube-sim can inject (watch compaction, request counts per user) use [`crate::kube::KubeSim`] directly.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::control_plane::{Assets, ControlPlane};
use crate::kube::{KubeSim, KubeSimConfig};

/// The environment variable that overrides the choice: `real` or `sim`.
pub const BACKEND_ENV: &str = "TESTBED_KUBE";

/// A Kubernetes API server implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// etcd, kube-apiserver and kube-controller-manager from the assets folder.
    Real,
    /// The in-process simulator.
    Sim,
}

impl Backend {
    /// `TESTBED_KUBE` when set; otherwise [`Backend::Real`] when the control plane's binaries are found
    /// (`KUBEBUILDER_ASSETS` or `.kubebuilder-assets/`), else [`Backend::Sim`].
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var(BACKEND_ENV) {
            Ok(v) if !v.is_empty() => v.parse(),
            _ => Ok(Self::default_here()),
        }
    }

    /// [`Backend::Real`] when the control plane's binaries are found, else [`Backend::Sim`].
    pub fn default_here() -> Self {
        if Assets::find().is_ok() {
            Self::Real
        } else {
            Self::Sim
        }
    }

    /// `real` or `sim`, as the flag and the environment variable spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Real => "real",
            Self::Sim => "sim",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "real" => Ok(Self::Real),
            "sim" => Ok(Self::Sim),
            other => anyhow::bail!("{BACKEND_ENV}/--kube: {other:?} is not one of: real, sim"),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A running Kubernetes API server of either kind, with the same operations on both.
#[derive(Debug)]
pub enum TestCluster {
    Real(Arc<ControlPlane>),
    Sim(Box<KubeSim>),
}

static SHARED: tokio::sync::OnceCell<Arc<TestCluster>> = tokio::sync::OnceCell::const_new();

impl TestCluster {
    /// The cluster of this test process, started on first use on the [`Backend::from_env`] choice, with the
    /// product's CRDs installed. Panics with the reason, so a test never silently runs elsewhere. Give each
    /// test its own namespace ([`Self::namespace`]).
    pub async fn shared() -> Arc<TestCluster> {
        SHARED
            .get_or_init(|| async {
                let backend = Backend::from_env().unwrap_or_else(|e| panic!("{e:#}"));
                let cluster = Self::start(backend)
                    .await
                    .unwrap_or_else(|e| panic!("starting the {backend} Kubernetes API: {e:#}"));
                cluster
                    .install_crds()
                    .await
                    .unwrap_or_else(|e| panic!("installing the CRDs: {e:#}"));
                eprintln!("Kubernetes API for this test binary: {}", cluster.describe());
                Arc::new(cluster)
            })
            .await
            .clone()
    }

    /// Starts a cluster of `backend`: the real one is this process's shared control plane.
    pub async fn start(backend: Backend) -> anyhow::Result<Self> {
        Ok(match backend {
            Backend::Real => Self::Real(ControlPlane::shared().await),
            Backend::Sim => Self::Sim(Box::new(KubeSim::start(KubeSimConfig::default()).await?)),
        })
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Real(_) => Backend::Real,
            Self::Sim(_) => Backend::Sim,
        }
    }

    /// One line for logs: which server, where.
    pub fn describe(&self) -> String {
        match self {
            Self::Real(cp) => format!(
                "real kube-apiserver ({}) at {}",
                cp.assets().dir.display(),
                cp.url()
            ),
            Self::Sim(sim) => format!("kube-sim at {}", sim.url()),
        }
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        match self {
            Self::Real(cp) => cp.url().to_string(),
            Self::Sim(sim) => sim.url(),
        }
    }

    /// The admin's bearer token.
    pub fn admin_token(&self) -> anyhow::Result<String> {
        match self {
            Self::Real(cp) => Ok(cp.admin_token().to_string()),
            Self::Sim(sim) => sim.token("admin").context("kube-sim has no admin user"),
        }
    }

    /// A kube-rs client for the admin. Build clients inside the test's runtime (they hold its connections).
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        match self {
            Self::Real(cp) => cp.client(),
            Self::Sim(sim) => sim.client("admin"),
        }
    }

    /// A kube-rs config for a bearer token.
    pub fn client_config_for(&self, token: &str) -> anyhow::Result<kube::Config> {
        let mut cfg = match self {
            Self::Real(cp) => return cp.client_config_for(token),
            Self::Sim(sim) => sim.client_config("admin")?,
        };
        cfg.auth_info.token = Some(token.to_string().into());
        Ok(cfg)
    }

    /// A kube-rs client for a bearer token.
    pub fn client_for(&self, token: &str) -> anyhow::Result<kube::Client> {
        kube::Client::try_from(self.client_config_for(token)?).context("building kube client")
    }

    /// A kubeconfig (YAML) for a bearer token, its user named `user`.
    pub fn kubeconfig_for(&self, user: &str, token: &str) -> anyhow::Result<String> {
        match self {
            Self::Real(cp) => cp.kubeconfig_for(user, token),
            Self::Sim(sim) => {
                let mut doc: serde_json::Value = serde_yaml::from_str(&sim.kubeconfig("admin")?)?;
                doc["users"] = serde_json::json!([{"name": user, "user": {"token": token}}]);
                doc["contexts"][0]["context"]["user"] = serde_json::json!(user);
                serde_yaml::to_string(&doc).context("serialising kubeconfig")
            }
        }
    }

    /// Writes the admin's kubeconfig to `path` (mode 0600).
    pub fn write_admin_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        match self {
            Self::Real(cp) => cp.write_admin_kubeconfig(path),
            Self::Sim(sim) => sim.write_kubeconfig(path, "admin"),
        }
    }

    /// A token for ServiceAccount `namespace/name`, the identity its pods get (TokenRequest on the real
    /// server); RBAC decides what it may do on both.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        match self {
            Self::Real(cp) => cp.service_account_token(namespace, name).await,
            Self::Sim(sim) => {
                let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
                    kube::Api::namespaced(sim.client("admin")?, namespace);
                if accounts.get_opt(name).await?.is_none() {
                    let sa = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
                    match accounts.create(&Default::default(), &sa).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 409 => {}
                        Err(e) => {
                            return Err(e).context(format!("creating ServiceAccount {namespace}/{name}"));
                        }
                    }
                }
                Ok(sim.service_account_token(namespace, name))
            }
        }
    }

    /// A fresh namespace `<prefix>-<random>` with `labels`, ready for pods.
    pub async fn namespace(&self, prefix: &str, labels: &[(&str, &str)]) -> anyhow::Result<String> {
        match self {
            Self::Real(cp) => cp.namespace(prefix, labels).await,
            Self::Sim(sim) => {
                let name = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
                let labels: serde_json::Map<String, serde_json::Value> = labels
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), serde_json::json!(v)))
                    .collect();
                let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
                    serde_json::json!({"metadata": {"name": name, "labels": labels}}),
                )?;
                kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(sim.client("admin")?)
                    .create(&Default::default(), &ns)
                    .await
                    .with_context(|| format!("creating namespace {name}"))?;
                Ok(name)
            }
        }
    }

    /// Installs the product's CRDs (idempotent) and waits until they are served.
    pub async fn install_crds(&self) -> anyhow::Result<()> {
        match self {
            Self::Real(cp) => cp.install_crds().await,
            Self::Sim(sim) => {
                use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
                let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(sim.client("admin")?);
                let params = kube::api::PatchParams::apply("testbed").force();
                for crd in api::crd::all() {
                    let name = crd.metadata.name.clone().unwrap_or_default();
                    let mut body = serde_json::to_value(&crd)?;
                    body["apiVersion"] = serde_json::json!("apiextensions.k8s.io/v1");
                    body["kind"] = serde_json::json!("CustomResourceDefinition");
                    crds.patch(&name, &params, &kube::api::Patch::Apply(body))
                        .await
                        .with_context(|| format!("installing CRD {name}"))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip_and_others_are_refused_by_name() {
        for b in [Backend::Real, Backend::Sim] {
            assert_eq!(b.as_str().parse::<Backend>().expect("parses"), b);
        }
        let err = "kind".parse::<Backend>().expect_err("refused").to_string();
        assert!(err.contains("TESTBED_KUBE") && err.contains("real, sim"), "{err}");
    }
}
