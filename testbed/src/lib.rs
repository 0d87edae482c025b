//! Test infrastructure: faithful simulators of what cannot run here (Azure Resource Manager with its token
//! endpoint and IMDS; the Kubernetes API server with admission webhooks), used by integration tests and the
//! lab through the product's real clients.

pub mod asserts;
pub mod azure;
pub mod cluster;
pub mod control_plane;
pub mod files;
pub mod kube;
pub mod lab;
pub mod netlab;
pub mod provider_release;
pub mod proxy;
pub mod wait;
pub mod workspace_bins;
