//! The lab's Kubernetes API server: the real control plane (etcd, kube-apiserver, kube-controller-manager,
//! [`crate::control_plane`]) or kube-sim ([`crate::kube`]), chosen by `--kube` (default
//! [`Backend::from_env`]). The steps use it through this one type: the admin's and the chart's service
//! accounts' kubeconfigs, the port the agents' namespaces forward to, and the requests it answered each
//! identity (kube-sim counts them; the real apiserver writes them to its audit log).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;

use crate::cluster::Backend;
use crate::control_plane::{Assets, ControlPlane, StartOptions};
use crate::files::write_private;
use crate::kube::{KubeSim, KubeSimConfig, User};

/// A running API server of either kind.
pub(super) enum KubeApi {
    Sim(Box<KubeSim>),
    Real(Box<ControlPlane>),
}

impl KubeApi {
    /// The kubectl to drive this server with: the control plane's own on the real server, as
    /// [`crate::cluster::TestCluster::kubectl`] chooses.
    pub(super) fn kubectl(&self) -> std::path::PathBuf {
        match self {
            Self::Real(cp) => cp.assets().kubectl.clone(),
            Self::Sim(_) => "kubectl".into(),
        }
    }

    /// Starts `backend`; on kube-sim, with a user for each of `accounts` (ServiceAccount namespace, name), as
    /// the token controller would issue (the real server hands out tokens by TokenRequest, see
    /// [`KubeApi::write_service_account_kubeconfig`]).
    pub(super) async fn start(backend: Backend, accounts: &[(String, String)]) -> anyhow::Result<Self> {
        Ok(match backend {
            Backend::Sim => {
                let mut cfg = KubeSimConfig::default();
                for (ns, name) in accounts {
                    cfg.users
                        .push(User::service_account(ns, name, &crate::kube::random_token()));
                }
                Self::Sim(Box::new(
                    KubeSim::start(cfg)
                        .await
                        .context("starting the Kubernetes API simulator")?,
                ))
            }
            Backend::Real => {
                let assets = Assets::find().map_err(|e| anyhow::anyhow!("no control plane binaries: {e}"))?;
                Self::Real(Box::new(
                    ControlPlane::start_with(&assets, &StartOptions { audit_log: true })
                        .await
                        .context("starting the real control plane")?,
                ))
            }
        })
    }

    pub(super) fn backend(&self) -> Backend {
        match self {
            Self::Sim(_) => Backend::Sim,
            Self::Real(_) => Backend::Real,
        }
    }

    /// One line: which server, where from, where it listens.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Sim(sim) => format!("kube-sim (the in-process simulator) at {}", sim.url()),
            Self::Real(cp) => format!(
                "real etcd + kube-apiserver + kube-controller-manager (from {}) at {}; logs and audit log in {}",
                cp.assets().dir.display(),
                cp.url(),
                cp.dir().display()
            ),
        }
    }

    /// The loopback port it listens on (the VMs' namespaces forward their 127.0.0.1 to it).
    pub(super) fn port(&self) -> anyhow::Result<u16> {
        match self {
            Self::Sim(sim) => Ok(sim.addr().port()),
            Self::Real(cp) => cp
                .url()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("no port in {}", cp.url())),
        }
    }

    /// A client for the admin.
    pub(super) fn client(&self) -> anyhow::Result<kube::Client> {
        match self {
            Self::Sim(sim) => sim.client("admin"),
            Self::Real(cp) => cp.client(),
        }
    }

    /// Writes the admin's kubeconfig (0600).
    pub(super) fn write_admin_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        match self {
            Self::Sim(sim) => sim.write_kubeconfig(path, "admin"),
            Self::Real(cp) => cp.write_admin_kubeconfig(path),
        }
    }

    /// Writes a kubeconfig (0600) holding a token of ServiceAccount `ns/name`: on the real server from the
    /// TokenRequest API (what a kubelet mounts into the account's pods), on kube-sim the user it was started
    /// with.
    pub(super) async fn write_service_account_kubeconfig(
        &self,
        path: &Path,
        ns: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        let user = format!("system:serviceaccount:{ns}:{name}");
        match self {
            Self::Sim(sim) => sim.write_kubeconfig(path, &user),
            Self::Real(cp) => {
                let token = cp.service_account_token(ns, name).await?;
                write_private(path, &cp.kubeconfig_for(&user, &token)?)
            }
        }
    }

    /// The requests answered `user` so far by (method or verb, status code): kube-sim counts them by HTTP
    /// method, the real apiserver's audit log by verb.
    pub(super) fn requests_by(&self, user: &str) -> anyhow::Result<BTreeMap<(String, u16), u64>> {
        match self {
            Self::Sim(sim) => Ok(sim.requests_by(user)),
            Self::Real(cp) => cp.requests_by(user),
        }
    }

    /// Stops it (the real control plane's folder goes with it).
    pub(super) async fn shutdown(self) {
        match self {
            Self::Sim(sim) => sim.shutdown().await,
            Self::Real(mut cp) => tokio::task::spawn_blocking(move || cp.stop())
                .await
                .unwrap_or_default(),
        }
    }
}

/// Whether a request counted by [`KubeApi::requests_by`] only read (`GET` on kube-sim; get, list and watch in
/// the audit log).
pub(super) fn is_read(method_or_verb: &str) -> bool {
    matches!(method_or_verb, "GET" | "HEAD" | "get" | "list" | "watch")
}
