//! The lab: the whole system on one machine, driven the way a user would (`kubectl`), with every step named
//! as it runs and everything torn down afterwards (also on failure or Ctrl-C) unless `--keep`.
//!
//! Steps: the Kubernetes API server (the real control plane, or kube-sim: `--kube`, [`kube_api`]; the lab
//! plays the node components it lacks, [`kubelet`]) and the Azure simulator and the Helm chart rendered and applied with kubectl ([`chart`]:
//! every component is then started from its rendered workload, as its service account), webhook + operator
//! as real processes, `kubectl apply` of a
//! GatewayPool and a StaticGatewayConfiguration (and an invalid one refused by the webhook), wait for Ready;
//! then the data plane: the Azure fabric computed from the Azure simulator ([`fabric`]), gateway VMs with the
//! real gateway agent, regular nodes (own network + mount namespace) with the real node agent and the CNI
//! chain, an annotated and a plain pod created as kubelet would ([`runtime`]), and the source address an
//! "internet" echo host sees from each. The fabric also reaches an "on-premises" echo host over a private
//! link (no SNAT), which scenario 6 (private mode on the VM-based pool `gwvms`) uses.
//!
//! # Modules, imported one way (each row imports only rows below it, never one above)
//!
//! | module | what | imports (lab modules) |
//! | --- | --- | --- |
//! | `cli` | the `lab` binary's flags | `run`, `harness`, `catalog`, `images`, `leftovers` |
//! | `run` | [`run`]: the default steps, then the scenarios, then teardown | `steps`, `scenarios`, `harness`, leaves |
//! | `scenarios/` | scenarios 2, 3, 5, 6, 9, 10, one file per group; 8 is `terraform` | `terraform`, `harness`, `catalog`, leaves |
//! | `terraform` | scenario 8 | `harness`, leaves |
//! | `steps` | steps 1–8, in order | `harness`, `report` |
//! | `harness/` | the `Lab`, its constants, kubectl / wait / apply / check-egress; its jobs `boot`, `cluster`, `network` (the node fabric), `pods`, `checks`, `teardown` | `catalog`, leaves |
//! | `catalog` | the scenarios' numbers and titles, `--scenarios` parsing | — |
//! | leaves | `chart`, `images`, `runtime`, `leftovers`, `fabric`, `dataplane`, `azure_view`, `kube_api`, `kubelet`, `procs`, `report` | only leaves further down: `images` → `chart`, `runtime`, `dataplane`; `leftovers` → `runtime`, `dataplane`; `runtime` → `dataplane`, `procs`; `fabric` → `dataplane`; `dataplane` → `procs`; `azure_view` → `report` |
//!
//! This file only declares the modules and re-exports the public entry points. Checked by reading every
//! file's `crate::lab::` / `super::` paths: no cycle.

mod azure_view;
pub mod catalog;
pub mod chart;
pub mod cli;
mod dataplane;
pub mod fabric;
mod harness;
pub mod images;
mod kube_api;
mod kubelet;
pub mod leftovers;
mod procs;
mod report;
mod run;
pub mod runtime;
pub mod scenarios;
mod steps;
mod terraform;

pub use harness::Options;
pub use procs::Children;
pub use report::{info, ok, step};
pub use run::run;
