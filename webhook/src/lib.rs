//! The kube-egress-gateway admission webhook: refuses invalid StaticGatewayConfigurations and GatewayPools at
//! `kubectl apply` with the rules from `api`, fills in defaults, injects namespace default configurations into
//! pods, and keeps PodEndpoints to the node agent.

pub mod cabundle;
pub mod cli;
pub mod facts;
pub mod handlers;
pub mod metrics;
pub mod pair_secret;
pub mod renew;
pub mod review;
pub mod server;
pub mod tls;
pub mod watch;
