//! The data plane the node agent, the gateway agent and the CNI plugin share: network namespaces
//! ([`netns`], links over [`netlink`]), WireGuard links on either backend ([`wg`]), our nftables table ([`nft`]) and the
//! plugin <-> agent protocol with its client ([`proto`], [`client`]).

pub mod client;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod wg;

/// Generated protocol (proto/cni.proto).
#[allow(missing_docs, clippy::all, missing_debug_implementations, rust_2018_idioms)]
pub mod proto {
    tonic::include_proto!("kubeegressgateway.cni.v1");
}

/// The CNI capability under which the runtime hands the plugin the pod's annotations (CRI-O, containerd ≥ 2
/// with the capability enabled): the agent enables it in the configuration it writes, the plugin reads it
/// from `runtimeConfig`.
pub const ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";
