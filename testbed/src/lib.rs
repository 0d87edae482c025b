//! testbed: simulators the product's components run against in tests and the lab.

pub mod kube;
