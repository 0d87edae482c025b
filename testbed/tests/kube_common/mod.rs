//! Shared helpers for the simulator's integration tests.
#![allow(dead_code)]

use testbed::kube::{KubeSim, KubeSimConfig};

/// Starts a simulator with the product's CRDs installed.
pub async fn sim_with_crds() -> KubeSim {
    sim_with_crds_config(KubeSimConfig::default()).await
}

pub async fn sim_with_crds_config(cfg: KubeSimConfig) -> KubeSim {
    let sim = KubeSim::start(cfg).await.expect("simulator starts");
    sim.install_crds().await.expect("CRDs install");
    sim
}

/// Polls `cond` until it returns true or the deadline passes.
pub use testbed::wait::eventually;
