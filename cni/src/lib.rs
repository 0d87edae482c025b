//! kube-egress-cni: the chained CNI plugin that gives annotated pods a WireGuard tunnel to their gateway,
//! plus the data-plane building blocks the node and gateway agents share (namespaces, WireGuard backends,
//! the plugin <-> agent protocol).

pub mod client;
pub mod conf;
pub mod netns;
pub mod plugin;
pub mod routes;
pub mod wg;

/// Generated protocol (proto/cni.proto).
#[allow(missing_docs, clippy::all, missing_debug_implementations, rust_2018_idioms)]
pub mod proto {
    tonic::include_proto!("kubeegressgateway.cni.v1");
}
