//! Gateway mode: desired state ([`plan`]), its applier ([`apply`]) and the load-balancer health probe ([`probe`]).
pub mod apply;
pub mod plan;
pub mod probe;
pub mod run;
pub mod select;
