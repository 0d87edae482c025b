//! Reconcilers: the Azure half per pool (`pool`), and the Kubernetes half per configuration (`sgc`).

pub mod pool;
pub mod sgc;
