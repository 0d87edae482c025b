//! Upstream's end-to-end scenarios (https://github.com/Azure/kube-egress-gateway/tree/main/e2e) and ours, run on the lab after its default steps when
//! asked (`lab --scenarios all` or e.g. `--scenarios 2,3,9`). Scenarios 1 (egress via the gateway, plain pods
//! isolated), 4 (excludeCidrs bypass) and 7 (an invalid configuration refused with the rule's message) are
//! part of every run (steps 3 and 8). Each scenario here creates what it needs, checks behaviour (source
//! addresses the echo host sees, the Azure simulator's inventory, Kubernetes objects), and removes what it
//! created, so the next one starts from the default run's state. Scenario 8 (Terraform) is in [`crate::lab::terraform`].

mod cleanup;
mod failover;
mod private;
mod public;

use crate::lab::catalog::Scenario;
use crate::lab::harness::{Lab, Options};

pub use failover::Outage;

/// Runs the chosen scenarios (steps 9, 10, ... of the lab).
pub(in crate::lab) async fn run(lab: &mut Lab, opts: &Options) -> anyhow::Result<()> {
    for (i, s) in opts.scenarios.iter().enumerate() {
        lab.begin(9 + i, s.title());
        match s {
            Scenario::ByoPrefix => public::byo_prefix(lab, opts).await?,
            Scenario::Ingress => public::ingress(lab, opts).await?,
            Scenario::TwoConfigs => public::two_configs(lab, opts).await?,
            Scenario::Private => private::private(lab, opts).await?,
            Scenario::Terraform => crate::lab::terraform::scenario(lab, opts).await?,
            Scenario::Failover => failover::failover(lab, opts).await?,
            Scenario::Cleanup => cleanup::cleanup(lab, opts).await?,
        }
    }
    Ok(())
}
