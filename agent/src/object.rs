//! Identities of Kubernetes objects, shared by gateway mode and node mode.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// A namespaced object's identity: a pod, its PodEndpoint (which has the pod's namespace and name), or a
/// configuration. One value instead of two string arguments, so a namespace and a name cannot be swapped.
/// Orders by namespace, then name.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespacedName {
    /// The namespace.
    pub namespace: String,
    /// The name within it.
    pub name: String,
}

impl NamespacedName {
    /// `<namespace>/<name>`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        NamespacedName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The identity an object's metadata gives; a missing namespace or name is empty, as the API server
    /// never sends such an object for a namespaced kind.
    pub fn of(meta: &ObjectMeta) -> Self {
        NamespacedName::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

impl std::fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_and_orders_by_namespace_then_name() {
        let a = NamespacedName::new("a", "z");
        let b = NamespacedName::new("b", "a");
        assert_eq!(a.to_string(), "a/z");
        assert!(a < b, "namespace orders first");
        let meta = ObjectMeta {
            namespace: Some("ns".into()),
            name: Some("gw".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(NamespacedName::of(&meta), NamespacedName::new("ns", "gw"));
        assert_eq!(NamespacedName::of(&ObjectMeta::default()).to_string(), "/");
    }
}
