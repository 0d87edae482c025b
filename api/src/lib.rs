//! The kube-egress-gateway API: CRD types, rules, defaults and names.
//!
//! This crate is the single source of truth shared by the webhook, the operator, the agents, the CNI plugin
//! and the Terraform provider, so that what admission accepts, what the operator understands and what
//! Terraform plans cannot drift apart.

pub mod arm;
pub mod cache;
pub mod cidr;
pub mod crd;
pub mod defaults;
pub mod internal;
pub mod names;
pub mod pod;
pub mod pool;
pub mod pool_ref;
pub mod rules;
pub mod sgc;

pub use internal::{GatewayStatus, GatewayStatusSpec, PodEndpoint, PodEndpointSpec};
pub use pool::{GatewayPool, GatewayPoolSpec, GatewayPoolStatus, PoolVmssProfile};
pub use pool_ref::{PoolKey, PoolRef};
pub use sgc::{
    GatewayServerProfile, GatewayVmProfile, GatewayVmssProfile, RouteType, StaticGatewayConfiguration,
    StaticGatewayConfigurationSpec, StaticGatewayConfigurationStatus,
};
