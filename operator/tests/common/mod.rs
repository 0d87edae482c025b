//! Set-up shared by the integration tests that run the operator against the ARM simulator.

use std::time::Duration;

use operator::azure::{Arm, RetryBudget};
use operator::config::CloudConfig;
use operator::metrics::Metrics;
use testbed::azure::{AzureSim, Seed};

/// The cloud config of the seed's cluster, with the simulator as ARM and AAD endpoint (service principal).
pub fn cloud_config(seed: &Seed, sim: &AzureSim) -> CloudConfig {
    let text = seed.cloud_config(sim.url()).to_string();
    CloudConfig::parse(&text, |_| None).expect("config")
}

/// ARM clients with a short retry budget, so that injected faults surface quickly.
pub fn arm(cfg: &CloudConfig, metrics: &Metrics) -> Arm {
    let retry = RetryBudget {
        initial: Duration::from_millis(5),
        max_delay: Duration::from_millis(200),
        max_retries: 4,
    };
    Arm::new(
        cfg,
        operator::azure::credential(cfg).expect("credential"),
        retry,
        metrics,
    )
    .expect("clients")
}

/// Every resource ID in the simulator, lower-cased and sorted.
pub fn resources(sim: &AzureSim) -> Vec<String> {
    let mut v: Vec<String> = sim.inventory()["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str().map(str::to_ascii_lowercase))
        .collect();
    v.sort();
    v
}
