//! Prometheus metrics of the agent. Node-mode names are upstream's (dashboards and alerts keep working);
//! gateway-mode metrics are new and prefixed `gateway_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `cnimanager_podendpoint_operation_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodEndpointLabels {
    /// Pod namespace.
    pub namespace: String,
    /// `create_or_update` or `delete`.
    pub operation: String,
    /// Pod name.
    pub pod: String,
}

/// Labels of `cnimanager_cni_config_operation_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `install`, `regenerate` or `uninstall`.
    pub operation: String,
}

/// Labels of `cnimanager_node_taint_operation_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// Node name.
    pub node: String,
}

/// The agent's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `cnimanager_podendpoint_operation_failures_total`.
    pub podendpoint_failures: Family<PodEndpointLabels, Counter>,
    /// `cnimanager_cni_config_operation_failures_total`.
    pub cni_config_failures: Family<OperationLabels, Counter>,
    /// `cnimanager_node_taint_operation_failures_total`.
    pub node_taint_failures: Family<NodeLabels, Counter>,
    /// `gateway_apply_total` (successful applies).
    pub gateway_applies: Counter,
    /// `gateway_apply_failures_total`.
    pub gateway_apply_failures: Counter,
    /// `gateway_apply_duration_seconds`.
    pub gateway_apply_duration: Histogram,
    /// `gateway_peers`: peers configured after the last apply.
    pub gateway_peers: Gauge,
    /// `gateway_configurations`: active configurations after the last apply.
    pub gateway_configurations: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let podendpoint_failures = Family::<PodEndpointLabels, Counter>::default();
        registry.register(
            "cnimanager_podendpoint_operation_failures",
            "PodEndpoint create/update/delete failures",
            podendpoint_failures.clone(),
        );
        let cni_config_failures = Family::<OperationLabels, Counter>::default();
        registry.register(
            "cnimanager_cni_config_operation_failures",
            "CNI configuration install/regenerate/uninstall failures",
            cni_config_failures.clone(),
        );
        let node_taint_failures = Family::<NodeLabels, Counter>::default();
        registry.register(
            "cnimanager_node_taint_operation_failures",
            "Failures removing the cni-not-ready taint from the node",
            node_taint_failures.clone(),
        );
        let gateway_applies = Counter::default();
        registry.register(
            "gateway_apply",
            "Successful gateway applies",
            gateway_applies.clone(),
        );
        let gateway_apply_failures = Counter::default();
        registry.register(
            "gateway_apply_failures",
            "Failed gateway applies",
            gateway_apply_failures.clone(),
        );
        // 1 ms .. ~32 s
        let gateway_apply_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "gateway_apply_duration_seconds",
            "Time to apply the gateway's desired state",
            gateway_apply_duration.clone(),
        );
        let gateway_peers = Gauge::default();
        registry.register("gateway_peers", "Pod peers configured", gateway_peers.clone());
        let gateway_configurations = Gauge::default();
        registry.register(
            "gateway_configurations",
            "Configurations active on this gateway",
            gateway_configurations.clone(),
        );
        Metrics {
            registry,
            podendpoint_failures,
            cni_config_failures,
            node_taint_failures,
            gateway_applies,
            gateway_apply_failures,
            gateway_apply_duration,
            gateway_peers,
            gateway_configurations,
        }
    }
}

impl Metrics {
    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a CNI configuration failure (`install`, `regenerate`, `uninstall`).
    pub fn cni_config_failed(&self, operation: &str) {
        self.cni_config_failures
            .get_or_create(&OperationLabels {
                operation: operation.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_metric_names_are_exposed() {
        let m = Metrics::default();
        m.podendpoint_failures
            .get_or_create(&PodEndpointLabels {
                namespace: "ns".into(),
                operation: "delete".into(),
                pod: "p".into(),
            })
            .inc();
        m.cni_config_failed("install");
        m.node_taint_failures
            .get_or_create(&NodeLabels { node: "n1".into() })
            .inc();
        let text = m.encode();
        assert!(text.contains(
            "cnimanager_podendpoint_operation_failures_total{namespace=\"ns\",operation=\"delete\",pod=\"p\"} 1"
        ));
        assert!(text.contains("cnimanager_cni_config_operation_failures_total{operation=\"install\"} 1"));
        assert!(text.contains("cnimanager_node_taint_operation_failures_total{node=\"n1\"} 1"));
        assert!(text.contains("gateway_apply_duration_seconds_bucket"));
    }
}
