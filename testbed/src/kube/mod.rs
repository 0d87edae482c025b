//! An in-memory Kubernetes API server for tests and the lab: HTTPS on loopback, bearer-token users, discovery,
//! CRDs with schema validation/defaulting/pruning, watches, patches, server-side apply, finalizers, garbage
//! collection and admission webhooks. kube-rs clients and the real `kubectl` use it unchanged.
//! Fidelity and known gaps: docs/testbed.md, section "Kubernetes API simulator".

pub mod admission;
pub mod auth;
pub mod cel;
pub mod cli;
pub mod openapi;
pub mod patch;
pub mod registry;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod status;
pub mod store;
pub mod table;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

pub use admission::ServiceMap;
pub use auth::{Access, User};
pub use tls::{LeafCert, TestCa};

/// How to start the simulator.
#[derive(Debug, Clone)]
pub struct KubeSimConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Users accepted by bearer token. Default: `admin` (Admin), `viewer` (ReadOnly), `nobody` (RBAC, no bindings).
    pub users: Vec<User>,
    /// Where webhook `clientConfig.service` references are reachable.
    pub services: ServiceMap,
    /// How many changes are kept for watches; older resourceVersions get `410 Gone`.
    pub watch_history: usize,
    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Namespaces that exist at start.
    pub namespaces: Vec<String>,
}

/// A fresh bearer token (two random UUIDs).
pub fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Default for KubeSimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            users: vec![
                User::new("admin", &random_token(), Access::Admin),
                User::new("viewer", &random_token(), Access::ReadOnly),
                User::new("nobody", &random_token(), Access::Rbac),
            ],
            services: ServiceMap::new(),
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(2),
            namespaces: ["default", "kube-system", "kube-public", "kube-node-lease"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// A running simulator. Dropping it stops the server.
pub struct KubeSim {
    shared: Arc<server::Shared>,
    addr: SocketAddr,
    ca: TestCa,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for KubeSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl KubeSim {
    /// Starts a simulator on the configured address.
    pub async fn start(cfg: KubeSimConfig) -> anyhow::Result<Self> {
        let ca = TestCa::new("kube-sim-ca")?;
        let leaf = ca.issue(&["localhost", "127.0.0.1", "kubernetes", "kubernetes.default.svc"])?;
        let tls = tokio_rustls::TlsAcceptor::from(leaf.server_config(&[b"h2", b"http/1.1"])?);
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        let addr = listener.local_addr().context("local address")?;
        let mut state = store::State::new(cfg.watch_history);
        for ns in &cfg.namespaces {
            state.insert(
                &(String::new(), "namespaces".into()),
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                    "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
                false,
            );
        }
        let shared = Arc::new(server::Shared {
            state: Mutex::new(state),
            users: RwLock::new(cfg.users),
            services: RwLock::new(cfg.services),
            addr,
            bookmark_interval: cfg.bookmark_interval,
            requests: Mutex::default(),
            requests_by_user: Mutex::default(),
            verbs_by_user: Mutex::default(),
        });
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let app = axum::Router::new().fallback({
            let shared = shared.clone();
            move |req: axum::extract::Request| {
                let shared = shared.clone();
                async move { server::handle(shared, req).await }
            }
        });
        let task = tokio::spawn(serve(listener, tls, app, stop_rx));
        tracing::info!(%addr, "kube-sim listening");
        Ok(Self {
            shared,
            addr,
            ca,
            stop,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA that signed the serving certificate (also usable to issue webhook certificates in tests).
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// The bearer token of a configured user.
    pub fn token(&self, user: &str) -> Option<String> {
        self.shared
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|u| u.name == user)
            .map(|u| u.token.clone())
    }

    /// A bearer token for ServiceAccount `namespace/name` (user `system:serviceaccount:<ns>:<name>` with its
    /// groups, authorized by RBAC), made on first request like the TokenRequest API would: the same identity
    /// a pod of that account gets in a real cluster.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let mut users = self.shared.users.write().unwrap_or_else(|p| p.into_inner());
        let user = User::service_account(namespace, name, &random_token());
        if let Some(u) = users.iter().find(|u| u.name == user.name) {
            return u.token.clone();
        }
        let token = user.token.clone();
        users.push(user);
        token
    }

    /// Requests `user` made so far, by (HTTP method, status code): which identity a component really used.
    pub fn requests_by(&self, user: &str) -> BTreeMap<(String, u16), u64> {
        counts_of(&self.shared.requests_by_user, user)
    }

    /// Authorized resource requests `user` made so far, by (verb, resource plural), e.g. `("list", "nodes")`:
    /// tells a LIST from a WATCH or a GET, which [`Self::requests_by`] (HTTP methods) cannot.
    pub fn verbs_by(&self, user: &str) -> BTreeMap<(String, String), u64> {
        counts_of(&self.shared.verbs_by_user, user)
    }

    /// Makes webhook `clientConfig.service` `<namespace>/<name>` reachable at `addr`.
    pub fn map_service(&self, namespace: &str, name: &str, addr: SocketAddr) {
        let mut s = self.shared.services.write().unwrap_or_else(|p| p.into_inner());
        s.insert((namespace.to_string(), name.to_string()), addr);
    }

    /// Forgets the watch history, so any earlier resourceVersion gets `410 Gone` (like etcd compaction).
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.log.clear();
        st.compacted_rv = st.rv;
    }

    /// A kubeconfig (YAML) for `user`, trusting the simulator's CA.
    pub fn kubeconfig(&self, user: &str) -> anyhow::Result<String> {
        let token = self
            .token(user)
            .with_context(|| format!("no user named {user:?}"))?;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca.cert_pem());
        let doc = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "kube-sim", "cluster": {"server": self.url(), "certificate-authority-data": ca}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "kube-sim", "context": {"cluster": "kube-sim", "user": user, "namespace": "default"}}],
            "current-context": "kube-sim",
        });
        serde_yaml::to_string(&doc).context("serialising kubeconfig")
    }

    /// Writes [`Self::kubeconfig`] to `path` (mode 0600).
    pub fn write_kubeconfig(&self, path: &Path, user: &str) -> anyhow::Result<()> {
        let text = self.kubeconfig(user)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .context("chmod kubeconfig")?;
        }
        Ok(())
    }

    /// A kube-rs config for `user`, built directly (no kubeconfig file).
    pub fn client_config(&self, user: &str) -> anyhow::Result<::kube::Config> {
        let token = self
            .token(user)
            .with_context(|| format!("no user named {user:?}"))?;
        let mut cfg = ::kube::Config::new(self.url().parse().context("simulator URL")?);
        cfg.root_cert = Some(vec![self.ca.cert_der().to_vec()]);
        cfg.auth_info.token = Some(token.to_string().into());
        Ok(cfg)
    }

    /// A kube-rs client for `user`.
    pub fn client(&self, user: &str) -> anyhow::Result<::kube::Client> {
        ::kube::Client::try_from(self.client_config(user)?).context("building kube client")
    }

    /// Installs the product's CRDs (`api::crd::all()`) as `admin`, as `kubectl apply -f crds/` would.
    pub async fn install_crds(&self) -> anyhow::Result<()> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let crds: ::kube::Api<CustomResourceDefinition> = ::kube::Api::all(self.client("admin")?);
        for crd in api::crd::all() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            crds.create(&Default::default(), &crd)
                .await
                .with_context(|| format!("installing CRD {name}"))?;
        }
        Ok(())
    }

    /// Creates plain namespaces as `admin`.
    pub async fn create_namespaces(&self, names: &[&str]) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Namespace;
        let namespaces: ::kube::Api<Namespace> = ::kube::Api::all(self.client("admin")?);
        for name in names {
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
            namespaces
                .create(&Default::default(), &ns)
                .await
                .with_context(|| format!("creating namespace {name}"))?;
        }
        Ok(())
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Serves `app` over HTTPS on `listener` (h2 and http/1.1) until the returned task is aborted; handy for test
/// webhook servers.
pub fn spawn_https(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
) -> tokio::task::JoinHandle<()> {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _keep_open = stop;
        serve(listener, tokio_rustls::TlsAcceptor::from(tls), app, stop_rx).await
    })
}

async fn serve(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let tls = tls.clone();
                let app = app.clone();
                let mut stop = stop.clone();
                conns.spawn(async move {
                    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await else { return };
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stop.changed() => conn.as_mut().graceful_shutdown(),
                    }
                });
            }
        }
    }
    conns.abort_all();
}

/// One user's rows of a `(user, a, b) -> count` table.
fn counts_of<A: Clone + Ord, B: Clone + Ord>(
    table: &Mutex<BTreeMap<(String, A, B), u64>>,
    user: &str,
) -> BTreeMap<(A, B), u64> {
    table
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|((u, _, _), _)| u == user)
        .map(|((_, a, b), n)| ((a.clone(), b.clone()), *n))
        .collect()
}
