//! A simulator of the parts of Azure the egress gateway operator and agent talk to: Azure Resource
//! Manager (network + compute resources), the AAD token endpoint and the Instance Metadata Service.
//!
//! It speaks plain HTTP on loopback, so the production clients (azure_mgmt_network, azure_mgmt_compute,
//! azure_identity 0.21) can be pointed at it with `ClientBuilder::endpoint` and an authority host.
//! See `docs/testbed.md` for what is simulated and what is not.

pub mod error;
pub mod imds;
pub mod ipam;
pub mod seed;
pub mod server;
pub mod world;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

pub use error::ArmError;
pub use seed::{
    LoadBalancerSeed, Seed, ServicePrincipal, SubnetRef, SubnetSeed, VmPoolSeed, VmssSeed, VnetSeed,
};
pub use server::{CallRecord, FaultSpec, LroConfig, LroStyle, PutRecord, SimState, WriteLimit};

/// Shared access to a running simulator's state, independent of the [`AzureSim`] borrow.
#[derive(Debug, Clone)]
pub struct SimHandle(server::Shared);

impl SimHandle {
    /// Runs `f` with the state locked.
    pub fn with_state<T>(&self, f: impl FnOnce(&mut SimState) -> T) -> T {
        f(&mut server::lock(&self.0))
    }
}

/// A running simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct AzureSim {
    base_url: String,
    addr: SocketAddr,
    state: server::Shared,
    shutdown: Option<oneshot::Sender<()>>,
}

impl AzureSim {
    /// Serves `seed` on `127.0.0.1` on an ephemeral port.
    pub async fn start(seed: &Seed) -> anyhow::Result<Self> {
        Self::start_on(seed, "127.0.0.1:0".parse()?).await
    }

    /// Serves `seed` on `addr` (the binary uses a fixed port).
    pub async fn start_on(seed: &Seed, addr: SocketAddr) -> anyhow::Result<Self> {
        let state = SimState::new(seed).map_err(|e| anyhow::anyhow!("seed rejected: {e}"))?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let shared: server::Shared = Arc::new(Mutex::new(state));
        server::lock(&shared).base_url = base_url.clone();
        let app = server::router(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "azure simulator server stopped");
            }
        });
        Ok(Self {
            base_url,
            addr,
            state: shared,
            shutdown: Some(tx),
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`: the ARM endpoint and the AAD authority host.
    pub fn url(&self) -> &str {
        &self.base_url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the IMDS of one node: append `/metadata/instance?...`.
    pub fn imds_base(&self, node: &str) -> String {
        format!("{}/_imds/{node}", self.base_url)
    }

    /// Runs `f` with the state locked (for assertions and out-of-band changes).
    pub fn with_state<T>(&self, f: impl FnOnce(&mut SimState) -> T) -> T {
        f(&mut server::lock(&self.state))
    }

    /// A handle onto the state for background readers (the lab's fabric re-reads Azure as it changes).
    pub fn handle(&self) -> SimHandle {
        SimHandle(self.state.clone())
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        self.with_state(|s| s.calls())
    }

    /// Starts keeping every accepted PUT's body with the resource it replaced (see [`SimState::puts`]).
    pub fn record_puts(&self) {
        self.with_state(|s| s.record_puts = true);
    }

    /// The PUTs recorded since [`AzureSim::record_puts`].
    pub fn puts(&self) -> Vec<PutRecord> {
        self.with_state(|s| s.puts.clone())
    }

    pub fn clear_calls(&self) {
        self.with_state(SimState::clear_calls);
    }

    /// Number of logged calls with `method` whose path matches `path_regex` (case-insensitive).
    pub fn count_calls(&self, method: &str, path_regex: &str) -> usize {
        let Ok(re) = regex::Regex::new(&format!("(?i){path_regex}")) else {
            return 0;
        };
        self.calls()
            .iter()
            .filter(|c| c.method.eq_ignore_ascii_case(method) && re.is_match(&c.path))
            .count()
    }

    pub fn inject_fault(&self, spec: FaultSpec) -> Result<(), String> {
        self.with_state(|s| s.add_fault(spec))
    }

    pub fn set_latency(&self, latency: Duration) {
        self.with_state(|s| s.latency = latency);
    }

    pub fn set_lro(&self, lro: LroConfig) {
        self.with_state(|s| s.lro = lro);
    }

    /// Throttles writes like ARM's per-subscription write limit (`None`: unlimited).
    pub fn set_write_limit(&self, limit: Option<WriteLimit>) {
        self.with_state(|s| s.write_limit = limit);
    }

    /// Splits list answers into pages of `size` with `nextLink` (None: one page).
    pub fn set_page_size(&self, size: Option<usize>) {
        self.with_state(|s| s.page_size = size);
    }

    pub fn inventory(&self) -> Value {
        self.with_state(SimState::inventory)
    }

    /// Out-of-band change of a stored resource (JSON merge), e.g. an instance going `Failed`.
    pub fn patch_resource(&self, id: &str, patch: &Value) -> Result<Value, ArmError> {
        self.with_state(|s| s.world.patch_resource(id, patch))
    }
}

impl Drop for AzureSim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
