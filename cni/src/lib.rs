//! kube-egress-cni: the chained CNI plugin that gives annotated pods a WireGuard tunnel to their gateway.
//! What it shares with the node and gateway agents (namespaces, WireGuard links, the plugin <-> agent
//! protocol) is the `dataplane` crate.

pub mod conf;
pub mod plugin;
pub mod routes;
