//! kube-egress-gateway agent: gateway mode (terminates pods' WireGuard tunnels and SNATs to the egress IP)
//! and node mode (serves the CNI plugin, writes PodEndpoints, installs the CNI configuration).
//!
//! Data-plane logic is computed as data ([`gateway::plan`], [`node::chained_conflist`]) and applied by small
//! idempotent appliers; the Kubernetes-facing parts sit behind [`node::Cluster`].

pub mod admin;
pub mod cli;
pub mod cniconf;
pub mod error;
pub mod gateway;
pub mod imds;
pub mod metrics;
pub mod node;
pub mod object;
