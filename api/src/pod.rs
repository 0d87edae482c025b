//! The pod fields this product reads: the gateway annotation and `hostNetwork`. The pod rules and defaults
//! take this typed view, which the webhook decodes straight from the admission request (decoding only these
//! fields costs less than a whole PodSpec).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::names::POD_GATEWAY_ANNOTATION;

/// A pod, as far as the gateway is concerned. Absent fields decode as empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PodView {
    /// `metadata` (its annotations).
    #[serde(default)]
    pub metadata: PodMetaView,
    /// `spec` (its `hostNetwork`).
    #[serde(default)]
    pub spec: PodSpecView,
}

/// `metadata` of a [`PodView`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PodMetaView {
    /// `metadata.annotations`; `None` when absent or null (a patch must then add the whole map).
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `spec` of a [`PodView`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PodSpecView {
    /// `spec.hostNetwork`.
    #[serde(default, rename = "hostNetwork")]
    pub host_network: Option<bool>,
}

impl PodView {
    /// The configuration the pod's gateway annotation names, if it has one.
    pub fn gateway(&self) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()?
            .get(POD_GATEWAY_ANNOTATION)
            .map(String::as_str)
    }

    /// Whether the pod shares its node's network (it then cannot use a gateway).
    pub fn host_network(&self) -> bool {
        self.spec.host_network.unwrap_or(false)
    }
}
