//! Azure: the ARM client (raw ARM JSON through the azure_core pipeline), the JSON bridge to the planner's
//! models, reading a pool's state, and applying a plan with its one load-balancer writer and one re-plan loop.
//! Nothing here knows Kubernetes; `pass.rs` joins the two.

pub mod apply;
pub mod client;
pub mod credential;
pub mod json;
pub mod observe;

pub use client::{
    Arm, ArmError, ArmResult, Expect, RetryBudget, Timeouts, api_version, http_client, operation_of,
};
pub use credential::credential;
