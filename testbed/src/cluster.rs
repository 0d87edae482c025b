//! Which Kubernetes API server a suite or the lab runs on, chosen in one place: the real control plane
//! ([`crate::control_plane`]) when its binaries are found, kube-sim ([`crate::kube`]) otherwise, or what
//! `TESTBED_KUBE=real|sim` says. [`TestCluster`] gives tests the same handle on both: an admin client,
//! kubeconfigs, ServiceAccount identities, fresh namespaces and the product's CRDs. Suites that need a fault
//! only kube-sim can inject (watch compaction, request counts per user) use [`crate::kube::KubeSim`] directly.

use std::path::{Path, PathBuf};
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
                let cluster = match backend {
                    // Each #[tokio::test] has its own runtime, which stops the tasks it spawned when the test
                    // ends: the process's kube-sim serves from a runtime of its own.
                    Backend::Sim => Self::start_sim_for_process()
                        .await
                        .map(|sim| Self::Sim(Box::new(sim))),
                    Backend::Real => Self::start(backend).await,
                };
                let cluster =
                    cluster.unwrap_or_else(|e| panic!("starting the {backend} Kubernetes API: {e:#}"));
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

    /// kube-sim on a thread and runtime that live as long as the process.
    async fn start_sim_for_process() -> anyhow::Result<KubeSim> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("kube-sim".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(async move {
                        let started = KubeSim::start(KubeSimConfig::default()).await;
                        let serving = started.is_ok();
                        let _ = tx.send(started);
                        if serving {
                            std::future::pending::<()>().await;
                        }
                    }),
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::Error::from(e).context("kube-sim's runtime")));
                    }
                }
            })
            .context("kube-sim's thread")?;
        rx.await.context("kube-sim's thread ended before starting it")?
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

    /// The PEM of the CA that signed the server's serving certificate (a client's trust anchor).
    pub fn ca_pem(&self) -> String {
        match self {
            Self::Real(cp) => cp.ca_pem().to_string(),
            Self::Sim(sim) => sim.ca().cert_pem().to_string(),
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

/// A turn on the binary's shared cluster ([`TestCluster::exclusive`]), held until dropped.
#[derive(Debug)]
pub struct Exclusive {
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl TestCluster {
    /// Waits until no other test of this binary holds a turn, and holds one. Namespaces keep the tests of a
    /// binary apart on the one cluster they share, but nothing keeps apart what is cluster-wide: the webhook
    /// configurations, GatewayPools, Nodes, CRDs, and an operator that watches every namespace. A test that
    /// writes or watches those takes a turn for its whole length, so that two such tests never see each
    /// other's objects; tests that only use their own namespaces need none.
    pub async fn exclusive() -> Exclusive {
        static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        Exclusive {
            _turn: TURNS.lock().await,
        }
    }

    /// The `kubectl` to drive this cluster with: the assets' on the real server (the same version), else
    /// the one on `PATH`.
    pub fn kubectl(&self) -> PathBuf {
        match self {
            Self::Real(cp) => cp.assets().kubectl.clone(),
            Self::Sim(_) => "kubectl".into(),
        }
    }

    /// [`Self::kubectl`] as the admin, its kubeconfig (`admin.kubeconfig`) and discovery cache in `dir`.
    pub fn admin_kubectl(&self, dir: &Path) -> anyhow::Result<Kubectl> {
        let kubeconfig = dir.join("admin.kubeconfig");
        self.write_admin_kubeconfig(&kubeconfig)?;
        Ok(Kubectl::new(self.kubectl(), kubeconfig, dir.join("cache")))
    }

    /// Namespace `name` with `annotations`, created unless it exists (tests of one binary share the
    /// cluster; a fixed name is for manifests that name their namespace), ready for pods.
    pub async fn ensure_namespace(&self, name: &str, annotations: &[(&str, &str)]) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Namespace;
        let namespaces: kube::Api<Namespace> = kube::Api::all(self.client()?);
        if namespaces.get_opt(name).await?.is_some() {
            return Ok(());
        }
        match self {
            Self::Real(cp) => cp.create_namespace(name, &[], annotations).await,
            Self::Sim(_) => {
                let annotations: serde_json::Map<String, serde_json::Value> = annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), serde_json::json!(v)))
                    .collect();
                let ns: Namespace = serde_json::from_value(
                    serde_json::json!({"metadata": {"name": name, "annotations": annotations}}),
                )?;
                namespaces
                    .create(&Default::default(), &ns)
                    .await
                    .with_context(|| format!("creating namespace {name}"))?;
                Ok(())
            }
        }
    }

    /// A local address the API server reaches and a Service's Endpoints may hold, for a process of this test
    /// that serves as the backend of a Service (a webhook registered by Service, as the chart registers it).
    /// kube-apiserver refuses loopback endpoints, so on the real server this is a fresh non-loopback address
    /// on the host's `lo` (root), removed when the returned guard drops; kube-sim maps
    /// Services to any address, so there it is `127.0.0.1`.
    pub fn endpoint_address(&self) -> anyhow::Result<EndpointAddress> {
        match self {
            Self::Real(_) => EndpointAddress::on_loopback_device(),
            Self::Sim(_) => Ok(EndpointAddress {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                on_lo: false,
            }),
        }
    }

    /// Makes Service `namespace/name` (port 443, named `https`, as the chart's webhook Service) lead to
    /// `backend`: on the real server a selector-less Service and its Endpoints (kube-apiserver calls webhooks
    /// at an endpoint, `--enable-aggregator-routing`); on kube-sim its service map. `backend`'s IP must come
    /// from [`Self::endpoint_address`].
    pub async fn route_service(
        &self,
        namespace: &str,
        name: &str,
        backend: std::net::SocketAddr,
    ) -> anyhow::Result<()> {
        let cp = match self {
            Self::Real(cp) => cp,
            Self::Sim(sim) => {
                sim.map_service(namespace, name, backend);
                return Ok(());
            }
        };
        use k8s_openapi::api::core::v1::{Endpoints, Service};
        let client = cp.client()?;
        let params = kube::api::PatchParams::apply("testbed").force();
        let service = serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"type": "ClusterIP", "ports": [{"name": "https", "port": 443, "targetPort": backend.port(), "protocol": "TCP"}]}});
        kube::Api::<Service>::namespaced(client.clone(), namespace)
            .patch(name, &params, &kube::api::Patch::Apply(service))
            .await
            .with_context(|| format!("applying Service {namespace}/{name}"))?;
        let endpoints = serde_json::json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "namespace": namespace},
            "subsets": [{"addresses": [{"ip": backend.ip().to_string()}],
                         "ports": [{"name": "https", "port": backend.port(), "protocol": "TCP"}]}]});
        kube::Api::<Endpoints>::namespaced(client, namespace)
            .patch(name, &params, &kube::api::Patch::Apply(endpoints))
            .await
            .with_context(|| format!("applying Endpoints {namespace}/{name} ({backend})"))?;
        Ok(())
    }
}

/// `kubectl` as a test runs it: with one kubeconfig and a discovery cache of its own, the environment's
/// `KUBECONFIG` ignored, so that a test never reads or writes the user's `~/.kube` nor another test's cache.
#[derive(Debug, Clone)]
pub struct Kubectl {
    program: PathBuf,
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
    /// Where it runs (relative file arguments resolve there); the caller's directory when `None`.
    dir: Option<PathBuf>,
}

/// What one `kubectl` run printed, and whether it succeeded.
#[derive(Debug)]
pub struct KubectlOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    /// `program` (a path, or a name looked up on `PATH`) with `kubeconfig`, caching discovery in `cache_dir`.
    pub fn new(
        program: impl Into<PathBuf>,
        kubeconfig: impl Into<PathBuf>,
        cache_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            program: program.into(),
            kubeconfig: kubeconfig.into(),
            cache_dir: cache_dir.into(),
            dir: None,
        }
    }

    /// The same `kubectl` and cache with another kubeconfig (another user).
    pub fn with_kubeconfig(&self, kubeconfig: impl Into<PathBuf>) -> Self {
        Self {
            kubeconfig: kubeconfig.into(),
            ..self.clone()
        }
    }

    /// The same `kubectl` run in `dir`, so that `-f file` names a file there.
    pub fn in_dir(self, dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
            ..self
        }
    }

    /// The kubeconfig it uses.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs `kubectl <args>` to its end. Panics when `kubectl` cannot be started: no test that drives it can
    /// go on without it (see [`Kubectl::try_run`] for a caller that reports it instead).
    pub async fn run(&self, args: &[&str]) -> KubectlOutput {
        self.try_run(args).await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs `kubectl <args>` to its end; an error only when `kubectl` cannot be started (a failed command is
    /// an output that is not `ok`).
    pub async fn try_run(&self, args: &[&str]) -> anyhow::Result<KubectlOutput> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(args)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        let out = cmd.output().await.with_context(|| {
            format!(
                "running {} (scripts/install-deps.sh installs kubectl)",
                self.program.display()
            )
        })?;
        Ok(KubectlOutput {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A local IPv4 address for Service endpoints (see [`TestCluster::endpoint_address`]); on the real server
/// an extra address of the host's `lo`, removed on drop (also when the test fails).
#[derive(Debug)]
pub struct EndpointAddress {
    ip: std::net::IpAddr,
    on_lo: bool,
}

impl EndpointAddress {
    /// The address to bind to and to put into the Endpoints.
    pub fn ip(&self) -> std::net::IpAddr {
        self.ip
    }

    /// One address of 198.18.0.0/15 (RFC 2544, benchmarking: nothing routes it) added to `lo`, chosen from
    /// the pid and a counter and skipped when the host already has it. Not in 127/8, so Endpoints may hold
    /// it; on `lo`, so it never leaves the host. (A dummy link would do too, where the kernel has the module.)
    fn on_loopback_device() -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        for _ in 0..64 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let slot = (pid.wrapping_mul(64).wrapping_add(n)) % (1 << 17);
            let [_, _, hi, lo] = slot.to_be_bytes();
            let ip = std::net::Ipv4Addr::new(198, 18 + u8::from(slot >= 1 << 16), hi, lo);
            if lo == 0 || lo == 255 || address_in_use(ip)? {
                continue;
            }
            ip_cmd(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
            return Ok(Self {
                ip: ip.into(),
                on_lo: true,
            });
        }
        anyhow::bail!("no free address in 198.18.0.0/15 for a Service endpoint after 64 tries")
    }
}

impl Drop for EndpointAddress {
    fn drop(&mut self) {
        if self.on_lo
            && let Err(e) = ip_cmd(&["addr", "del", &format!("{}/32", self.ip), "dev", "lo"])
        {
            eprintln!("removing the endpoint address {}: {e:#}", self.ip);
        }
    }
}

fn address_in_use(ip: std::net::Ipv4Addr) -> anyhow::Result<bool> {
    let out = std::process::Command::new("ip")
        .args(["-o", "addr", "show", "to", &format!("{ip}/32")])
        .output()
        .context("running ip (iproute2)")?;
    Ok(!out.stdout.is_empty())
}

fn ip_cmd(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {} (a Service endpoint on the real control plane needs root for an address on lo)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
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
