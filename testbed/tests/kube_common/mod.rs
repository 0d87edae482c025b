//! Shared helpers for the simulator's integration tests.
#![allow(dead_code)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;
use testbed::kube::{KubeSim, KubeSimConfig};

/// Starts a simulator with the product's CRDs installed.
pub async fn sim_with_crds() -> KubeSim {
    sim_with_crds_config(KubeSimConfig::default()).await
}

pub async fn sim_with_crds_config(cfg: KubeSimConfig) -> KubeSim {
    let sim = KubeSim::start(cfg).await.expect("simulator starts");
    let crds: Api<CustomResourceDefinition> = Api::all(sim.client("admin").expect("client"));
    for crd in api::crd::all() {
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("CRD installs");
    }
    sim
}

/// Polls `cond` until it returns true or the deadline passes.
pub use testbed::wait::eventually;
