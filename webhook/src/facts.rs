//! What the webhook knows about the cluster, from watches: never an API or Azure call in the admission path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use api::rules::PoolFacts;
use api::{GatewayPool, PoolRef, StaticGatewayConfiguration};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

/// The facts handlers consult. Answers are `None` while the underlying watch has not synced, so that a
/// freshly started webhook never denies or warns on incomplete knowledge.
pub trait ClusterFacts: Send + Sync {
    /// Gateway nodes of a pool ([`PoolRef::gateway_node_count`], as the operator counts them).
    fn node_count(&self, pool: &PoolRef) -> Option<u32>;
    /// The GatewayPool describing a pool, if one exists (None also while unsynced).
    fn gateway_pool(&self, pool: &PoolRef) -> Option<api::GatewayPoolSpec>;
    /// Name of the GatewayPool describing a pool when that GatewayPool is being deleted (None: not deleting, no
    /// such GatewayPool, or unsynced).
    fn deleting_pool(&self, pool: &PoolRef) -> Option<String>;
    /// Annotations of a namespace (None: unknown namespace or unsynced).
    fn namespace_annotations(&self, namespace: &str) -> Option<BTreeMap<String, String>>;
    /// Does this configuration exist? (None: unsynced.)
    fn sgc_exists(&self, namespace: &str, name: &str) -> Option<bool>;
    /// All watches synced.
    fn synced(&self) -> bool;

    /// Facts for rule 4 about the pool a configuration names.
    fn pool_facts(&self, pool: Option<&PoolRef>) -> PoolFacts {
        let Some(pool) = pool else {
            return PoolFacts::default();
        };
        PoolFacts {
            pool: self.gateway_pool(pool),
            node_count: self.node_count(pool),
        }
    }
}

/// In-memory facts for tests and benchmarks.
#[derive(Debug, Default, Clone)]
pub struct StaticFacts {
    /// `(labels, providerID)` per node.
    pub nodes: Vec<(BTreeMap<String, String>, Option<String>)>,
    /// Pool specs.
    pub pools: Vec<api::GatewayPoolSpec>,
    /// Namespace annotations.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// `(namespace, name)` of existing configurations.
    pub sgcs: Vec<(String, String)>,
    /// `(name, pool)` of GatewayPools being deleted.
    pub deleting_pools: Vec<(String, PoolRef)>,
}

impl ClusterFacts for StaticFacts {
    fn node_count(&self, pool: &PoolRef) -> Option<u32> {
        Some(pool.gateway_node_count(self.nodes.iter().map(|(l, p)| (l, p.as_deref()))))
    }
    fn gateway_pool(&self, pool: &PoolRef) -> Option<api::GatewayPoolSpec> {
        self.pools
            .iter()
            .find(|p| p.pool_ref().as_ref() == Some(pool))
            .cloned()
    }
    fn deleting_pool(&self, pool: &PoolRef) -> Option<String> {
        self.deleting_pools
            .iter()
            .find(|(_, p)| p == pool)
            .map(|(name, _)| name.clone())
    }
    fn namespace_annotations(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces.get(namespace).cloned()
    }
    fn sgc_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        Some(self.sgcs.iter().any(|(ns, n)| ns == namespace && n == name))
    }
    fn synced(&self) -> bool {
        true
    }
}

/// Facts backed by kube reflector stores; see `crate::watch` for the watches that fill them.
#[derive(Clone)]
pub struct ReflectorFacts {
    /// Nodes.
    pub nodes: Store<Node>,
    /// GatewayPools.
    pub pools: Store<GatewayPool>,
    /// Namespaces (metadata only).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Configurations (metadata only).
    pub sgcs: Store<PartialObjectMeta<StaticGatewayConfiguration>>,
    /// Set once every store has received its first full list.
    pub ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for ReflectorFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReflectorFacts")
            .field("ready", &self.synced())
            .finish_non_exhaustive()
    }
}

impl ClusterFacts for ReflectorFacts {
    fn node_count(&self, pool: &PoolRef) -> Option<u32> {
        if !self.synced() {
            return None;
        }
        const NO_LABELS: &BTreeMap<String, String> = &BTreeMap::new();
        let nodes = self.nodes.state();
        Some(pool.gateway_node_count(nodes.iter().map(|node| {
            (
                node.metadata.labels.as_ref().unwrap_or(NO_LABELS),
                node.spec.as_ref().and_then(|s| s.provider_id.as_deref()),
            )
        })))
    }
    fn gateway_pool(&self, pool: &PoolRef) -> Option<api::GatewayPoolSpec> {
        self.pools
            .state()
            .iter()
            .map(|p| &p.spec)
            .find(|s| s.pool_ref().as_ref() == Some(pool))
            .cloned()
    }
    fn deleting_pool(&self, pool: &PoolRef) -> Option<String> {
        self.pools
            .state()
            .iter()
            .find(|p| p.metadata.deletion_timestamp.is_some() && p.spec.pool_ref().as_ref() == Some(pool))
            .map(|p| p.metadata.name.clone().unwrap_or_default())
    }
    fn namespace_annotations(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        if !self.synced() {
            return None;
        }
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .map(|ns| ns.metadata.annotations.clone().unwrap_or_default())
    }
    fn sgc_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        if !self.synced() {
            return None;
        }
        Some(self.sgcs.get(&ObjectRef::new(name).within(namespace)).is_some())
    }
    fn synced(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
