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

impl PoolRef {
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
