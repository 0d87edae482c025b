//! The kube-egress-gateway operator: turns StaticGatewayConfigurations and GatewayPools into Azure state
//! (internal load balancer, VMSS / NIC ipConfigurations, public IP prefixes) per gateway pool, and reports it
//! back in their status.
//!
//! Layers, as the data flows: `desired` plans a pool's Azure state and `status` computes what to report (both
//! pure); `azure` reads, merges and writes ARM JSON and `kube` reads and writes Kubernetes objects (neither
//! knows the other); `pass` is the one place that joins them; `run` is the work loop around passes.

pub mod azure;
pub mod cli;
pub mod config;
pub mod desired;
pub mod kube;
pub mod leader;
pub mod metrics;
pub mod pass;
pub mod run;
pub mod status;
