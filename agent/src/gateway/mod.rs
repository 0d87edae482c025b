//! Gateway mode: desired state ([`plan`]), its applier ([`apply`]) and the load-balancer health probe ([`probe`]),
//! tunnel readings for metrics and the shutdown drain ([`tunnels`]).
pub mod apply;
pub mod plan;
pub mod probe;
pub mod run;
pub mod select;
pub mod tunnels;
