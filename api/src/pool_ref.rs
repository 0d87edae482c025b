//! Which gateway nodes a configuration or pool refers to, and how the cluster's Nodes are matched to it.

use std::collections::BTreeMap;
use std::fmt;

/// Identity of a gateway pool: an AKS node pool, or a VMSS by resource group and name. Azure names compare
/// case-insensitively, as ARM does.
#[derive(Clone, Debug)]
pub enum PoolRef {
    /// AKS node pool name (Azure tag aks-managed-poolName, node label kubernetes.azure.com/agentpool).
    Nodepool(String),
    /// A VMSS.
    Vmss {
        /// Resource group.
        resource_group: String,
        /// VMSS name.
        name: String,
    },
}

impl PartialEq for PoolRef {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PoolRef::Nodepool(a), PoolRef::Nodepool(b)) => a.eq_ignore_ascii_case(b),
            (
                PoolRef::Vmss {
                    resource_group: ra,
                    name: na,
                },
                PoolRef::Vmss {
                    resource_group: rb,
                    name: nb,
                },
            ) => ra.eq_ignore_ascii_case(rb) && na.eq_ignore_ascii_case(nb),
            _ => false,
        }
    }
}
impl Eq for PoolRef {}

impl fmt::Display for PoolRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolRef::Nodepool(n) => write!(f, "node pool {n}"),
            PoolRef::Vmss { resource_group, name } => write!(f, "VMSS {resource_group}/{name}"),
        }
    }
}

/// Normalised key of a pool reference: equal for every spelling ARM treats as the same pool (names compare
/// case-insensitively), so that maps, sets, work queues and metrics agree on which pool is which.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolKey(String);

impl PoolKey {
    /// `nodepool/<name>` or `vmss/<resource group>/<name>`, lower-cased.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for PoolKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PoolRef {
    /// The pool's normalised key.
    pub fn key(&self) -> PoolKey {
        PoolKey(match self {
            PoolRef::Nodepool(n) => format!("nodepool/{}", n.to_ascii_lowercase()),
            PoolRef::Vmss { resource_group, name } => format!(
                "vmss/{}/{}",
                resource_group.to_ascii_lowercase(),
                name.to_ascii_lowercase()
            ),
        })
    }

    /// Is this Node one of the pool's gateway nodes: a gateway node ([`is_gateway_node`]) that belongs to the
    /// pool ([`PoolRef::matches_node`])? The one definition admission (rule 4) and the operator count by.
    pub fn has_gateway_node(&self, labels: &BTreeMap<String, String>, provider_id: Option<&str>) -> bool {
        is_gateway_node(labels) && self.matches_node(labels, provider_id)
    }

    /// How many of `nodes` (labels and `spec.providerID` of each) are the pool's gateway nodes.
    pub fn gateway_node_count<'a>(
        &self,
        nodes: impl IntoIterator<Item = (&'a BTreeMap<String, String>, Option<&'a str>)>,
    ) -> u32 {
        let n = nodes
            .into_iter()
            .filter(|(labels, provider_id)| self.has_gateway_node(labels, *provider_id))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Does this Node (labels and `spec.providerID`) belong to the pool?
    ///
    /// Node pools match on the agentpool label; VMSS pools on the provider ID
    /// `azure:///subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachineScaleSets/<vmss>/virtualMachines/<n>`.
    pub fn matches_node(&self, labels: &BTreeMap<String, String>, provider_id: Option<&str>) -> bool {
        match self {
            PoolRef::Nodepool(pool) => labels
                .get(crate::names::NODE_AGENTPOOL_LABEL)
                .is_some_and(|v| v.eq_ignore_ascii_case(pool)),
            PoolRef::Vmss { resource_group, name } => {
                provider_id
                    .and_then(vmss_of_provider_id)
                    .is_some_and(|(rg, vmss)| {
                        rg.eq_ignore_ascii_case(resource_group) && vmss.eq_ignore_ascii_case(name)
                    })
            }
        }
    }
}

/// `(resource group, vmss name)` of a VMSS node's provider ID.
pub fn vmss_of_provider_id(provider_id: &str) -> Option<(&str, &str)> {
    let path = provider_id.strip_prefix("azure://")?;
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let idx = |key: &str| segs.iter().position(|s| s.eq_ignore_ascii_case(key));
    let rg = segs.get(idx("resourceGroups")? + 1)?;
    let vmss = segs.get(idx("virtualMachineScaleSets")? + 1)?;
    Some((rg, vmss))
}

/// Is this Node a gateway node (either the AKS gateway mode label or the self-managed label)?
pub fn is_gateway_node(labels: &BTreeMap<String, String>) -> bool {
    labels
        .get(crate::names::NODE_AKS_MODE_LABEL)
        .is_some_and(|v| v.eq_ignore_ascii_case(crate::names::NODE_MODE_GATEWAY))
        || labels
            .get(crate::names::NODE_GATEWAY_MODE_LABEL)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const VMSS_NODE: &str = "azure:///subscriptions/3fa85f64-5717-4562-b3fc-2c963f66afa6/resourceGroups/MC_rg_aks_eastus/providers/Microsoft.Compute/virtualMachineScaleSets/aks-gwpool-123-vmss/virtualMachines/0";

    #[test]
    fn nodepool_matches_agentpool_label_case_insensitively() {
        let pool = PoolRef::Nodepool("GwPool".into());
        assert!(pool.matches_node(&labels(&[("kubernetes.azure.com/agentpool", "gwpool")]), None));
        assert!(!pool.matches_node(&labels(&[("kubernetes.azure.com/agentpool", "other")]), None));
        assert!(!pool.matches_node(&labels(&[]), Some(VMSS_NODE)));
    }

    #[test]
    fn vmss_matches_provider_id() {
        let pool = PoolRef::Vmss {
            resource_group: "mc_rg_aks_eastus".into(),
            name: "AKS-GWPOOL-123-VMSS".into(),
        };
        assert!(pool.matches_node(&labels(&[]), Some(VMSS_NODE)));
        let other = PoolRef::Vmss {
            resource_group: "mc_rg_aks_eastus".into(),
            name: "other".into(),
        };
        assert!(!other.matches_node(&labels(&[]), Some(VMSS_NODE)));
        assert!(!pool.matches_node(&labels(&[]), None));
        assert!(!pool.matches_node(&labels(&[]), Some("aws:///us-east-1a/i-123")));
    }

    #[test]
    fn pool_refs_compare_like_arm() {
        assert_eq!(PoolRef::Nodepool("A".into()), PoolRef::Nodepool("a".into()));
        assert_ne!(
            PoolRef::Nodepool("a".into()),
            PoolRef::Vmss {
                resource_group: "a".into(),
                name: "a".into()
            }
        );
    }

    #[test]
    fn pool_keys_ignore_case() {
        assert_eq!(
            PoolRef::Nodepool("GW".into()).key(),
            PoolRef::Nodepool("gw".into()).key()
        );
        assert_eq!(PoolRef::Nodepool("GW".into()).key().as_str(), "nodepool/gw");
        assert_ne!(
            PoolRef::Nodepool("gw".into()).key(),
            PoolRef::Vmss {
                resource_group: "rg".into(),
                name: "gw".into()
            }
            .key()
        );
    }

    #[test]
    fn a_pools_gateway_nodes_are_gateway_nodes_of_that_pool() {
        let pool = PoolRef::Nodepool("gwpool".into());
        let gateway = labels(&[
            ("kubernetes.azure.com/agentpool", "gwpool"),
            ("kubernetes.azure.com/mode", "gateway"),
        ]);
        let unlabelled = labels(&[("kubernetes.azure.com/agentpool", "gwpool")]);
        let elsewhere = labels(&[
            ("kubernetes.azure.com/agentpool", "other"),
            ("kubernetes.azure.com/mode", "gateway"),
        ]);
        assert!(pool.has_gateway_node(&gateway, None));
        assert!(!pool.has_gateway_node(&unlabelled, None));
        assert!(!pool.has_gateway_node(&elsewhere, None));
        let nodes = [
            (&gateway, None),
            (&unlabelled, None),
            (&elsewhere, None),
            (&gateway, None),
        ];
        assert_eq!(pool.gateway_node_count(nodes), 2);
    }

    #[test]
    fn gateway_node_labels() {
        assert!(is_gateway_node(&labels(&[(
            "kubernetes.azure.com/mode",
            "Gateway"
        )])));
        assert!(is_gateway_node(&labels(&[(
            "kubeegressgateway.azure.com/mode",
            "true"
        )])));
        assert!(!is_gateway_node(&labels(&[(
            "kubernetes.azure.com/mode",
            "system"
        )])));
    }
}
