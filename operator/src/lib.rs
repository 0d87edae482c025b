//! The kube-egress-gateway operator: turns StaticGatewayConfigurations and GatewayPools into Azure state
//! (internal load balancer, VMSS / NIC ipConfigurations, public IP prefixes) per gateway pool, and reports it
//! back in their status.

pub mod arm_json;
pub mod azure;
pub mod cli;
pub mod config;
pub mod desired;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod run;
