//! What the components' watch caches keep of an object: the webhook's, the operator's and the agents' caches
//! all drop what none of them reads.

/// Drops `metadata.managedFields`: server-side apply's bookkeeping, never read by a cache's users and often
/// most of an object's size.
pub fn strip_managed_fields<K: kube::Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}
